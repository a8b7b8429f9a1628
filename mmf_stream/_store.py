"""Factorizations on disk: one Zarr (v3) group per result.

Layout (format version 2; ``docs/format.md`` is the user-facing copy):

==============  ===========  =========  ==========================================
array           shape        dtype      content
==============  ===========  =========  ==========================================
tuples          (L, k)       int64      tuple of each level, rotation row order
wavelets        (L,)         int64      wavelet index of each level
rotations       (L, k, k)    float64    rotation block O_l of each level
level_errors    (L,)         float64    squared Frobenius error of each level
diagonal        (m,)         float64    diagonal of H
core            (d,)         int64      core indices, sorted
core_block      (d, d)       float64    H on the core
labels          (m,)         int64/str  optional class labels
snapshot_i_*    (n_i,),      int64,     insertion state: indices active at cut
                (n_i, n_i)   float64    level i and their block of the compression
==============  ===========  =========  ==========================================

Group attribute ``mmf_stream`` holds ``format`` ("factorization"),
``format_version``, ``order``, ``size``, ``n_levels``, ``core_size``, ``error``,
``norm``, ``relative_error``, ``labels`` (true/false), ``seed``, ``candidates``,
``library_version`` and ``fingerprint_scale`` (with the arrays
``fingerprint_diagonal`` and ``fingerprint_probe``: see
:mod:`mmf_stream._fingerprint`). Every chunk is written (zeros too), so a
missing chunk file is detected on load.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream._fingerprint import Fingerprint
from mmf_stream._integrity import (
    EVERY_CHUNK_KEY,
    check_replaceable,
    fsync_tree,
    recover_interrupted_swap,
    require_complete,
    staging_path,
    swap_into_place,
    writing_every_chunk,
)
from mmf_stream._io import as_str_array, one_line, open_tagged_group

FORMAT = "factorization"
FORMAT_VERSION = 2
#: versions this release reads (1 has no insertion state)
READABLE_VERSIONS = (1, 2)
_ARRAYS = ("tuples", "wavelets", "rotations", "level_errors", "diagonal", "core", "core_block")


def save_factorization(factorization: Any, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write ``factorization`` at ``path`` atomically and durably.

    The group is written beside ``path`` (``.NAME.tmp-PID-XXXX``), every file and
    directory is fsynced, and it is then swapped into place: with Linux's
    ``renameat2(RENAME_EXCHANGE)`` in one step, elsewhere in two renames with the
    old result kept aside as ``.NAME.replaced-XXXX`` until the new one is in
    place. :func:`load_factorization` restores such an aside copy if a crash
    came between the two renames. ``overwrite`` replaces only an existing
    mmf_stream factorization.
    """
    import zarr

    from mmf_stream import __version__

    target = Path(path)
    check_replaceable(target, overwrite, kinds=(FORMAT,))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    try:
        with writing_every_chunk():
            group = zarr.open_group(str(staging), mode="w")
            for name, data in _arrays_to_save(factorization):
                data = np.ascontiguousarray(data)
                dtype = str if data.dtype.kind == "U" else data.dtype
                array = group.create_array(name, shape=data.shape, dtype=dtype, chunks=_chunks(data.shape))
                if data.size:
                    array[...] = data
        fingerprint = factorization.fingerprint
        group.attrs["mmf_stream"] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "order": factorization.order,
            "size": factorization.size,
            "n_levels": factorization.n_levels,
            "core_size": int(factorization.core.shape[0]),
            "error": factorization.error,
            "norm": factorization.norm,
            "relative_error": factorization.relative_error,
            "labels": factorization.labels is not None,
            "seed": factorization.metadata.get("seed"),
            "candidates": factorization.metadata.get("candidates"),
            "library_version": __version__,
            "snapshot_levels": [int(level) for level, _, _ in factorization._raw.snapshots],
            "since_repair": int(factorization.metadata.get("since_repair", 0)),
            "drift": float(factorization.metadata.get("drift", 0.0)),
            "fingerprint_scale": None if fingerprint is None else float(fingerprint.scale),
            EVERY_CHUNK_KEY: True,
        }
        fsync_tree(staging)
        swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _arrays_to_save(factorization: Any) -> list[tuple[str, np.ndarray]]:
    arrays = [(name, getattr(factorization, name)) for name in _ARRAYS]
    for number, (_level, indices, block) in enumerate(factorization._raw.snapshots):
        arrays += [(f"snapshot_{number}_indices", indices), (f"snapshot_{number}_block", block)]
    if factorization.labels is not None:
        arrays.append(("labels", factorization.labels))
    fingerprint = factorization.fingerprint
    if fingerprint is not None:
        arrays += [("fingerprint_diagonal", fingerprint.diagonal), ("fingerprint_probe", fingerprint.probe)]
    return arrays


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """About 8 MB chunks along the first axis (at least one row)."""
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    first = max(1, min(shape[0] if shape[0] else 1, (1 << 20) // max(row, 1)))
    return (first, *[max(1, s) for s in shape[1:]])


def load_factorization(path: str | os.PathLike):
    """Read a factorization written by :meth:`Factorization.save`."""
    from mmf_stream._engine import RawFactorization
    from mmf_stream._factorization import Factorization

    recover_interrupted_swap(path)
    source, group, meta = open_tagged_group(path, FORMAT, READABLE_VERSIONS, "factorization")
    version = meta["format_version"]

    def read(name: str) -> np.ndarray:
        if name not in group:
            raise ValueError(f"{source} is corrupt: array {name!r} is missing")
        array = group[name]
        if meta.get(EVERY_CHUNK_KEY):  # older results may lack all-zero chunks legitimately
            require_complete(array, f"{source}: {name}")
        return np.asarray(array[...])

    has_fingerprint = meta.get("fingerprint_scale") is not None
    try:
        arrays = {name: read(name) for name in _ARRAYS}
        labels = read("labels") if meta.get("labels") else None
        snapshots = [
            (int(level), read(f"snapshot_{i}_indices"), read(f"snapshot_{i}_block"))
            for i, level in enumerate(meta.get("snapshot_levels", []))
        ]
        fingerprint_arrays = (read("fingerprint_diagonal"), read("fingerprint_probe")) if has_fingerprint else None
    except ValueError as exc:
        if str(exc).startswith(str(source)):
            raise
        raise ValueError(f"{source} is corrupt: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - codec and store errors on damaged chunks
        raise ValueError(f"{source} is corrupt: {one_line(exc)}") from None
    order, size = int(meta["order"]), int(meta["size"])
    n_levels, core_size = int(meta["n_levels"]), int(meta["core_size"])
    expected = {
        "tuples": (n_levels, order),
        "wavelets": (n_levels,),
        "rotations": (n_levels, order, order),
        "level_errors": (n_levels,),
        "diagonal": (size,),
        "core": (core_size,),
        "core_block": (core_size, core_size),
    }
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ValueError(f"{source} is corrupt: {name} has shape {arrays[name].shape}, expected {shape}")
    if labels is not None:
        if labels.shape != (size,):
            raise ValueError(f"{source} is corrupt: labels has shape {labels.shape}, expected {(size,)}")
        if labels.dtype.kind in "OT":  # zarr returns variable-length strings
            labels = as_str_array(labels)
    for name in ("tuples", "wavelets", "core"):
        values = arrays[name]
        if values.size and (values.min() < 0 or values.max() >= size):
            raise ValueError(f"{source} is corrupt: {name} holds indices outside 0..{size - 1}")
    for level, indices, block in snapshots:
        n = indices.shape[0]
        if block.shape != (n, n) or not 0 <= level <= n_levels or (n and (indices.min() < 0 or indices.max() >= size)):
            raise ValueError(f"{source} is corrupt: an insertion snapshot does not fit the factorization")
    fingerprint = None
    if fingerprint_arrays is not None:
        if any(a.shape != (size,) for a in fingerprint_arrays):
            raise ValueError(f"{source} is corrupt: the fingerprint does not fit the factorization")
        fingerprint = Fingerprint(*fingerprint_arrays, scale=float(meta["fingerprint_scale"]))
    for name in ("rotations", "level_errors", "diagonal", "core_block"):
        if not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{source} is corrupt: {name} has non-finite values")
    raw = RawFactorization(**arrays, snapshots=snapshots)
    return Factorization(
        raw,
        order=order,
        norm=float(meta["norm"]),
        labels=labels,
        metadata={
            "seed": meta.get("seed"),
            "candidates": meta.get("candidates"),
            "format_version": version,
            "since_repair": int(meta.get("since_repair", 0)),
            "drift": float(meta.get("drift", 0.0)),
            "fingerprint": fingerprint,
        },
    )
