"""Factorizations on disk: one Zarr (v3) group per result.

Layout (format version 3; ``docs/format.md`` is the user-facing copy):

==============  ===========  =========  ==========================================
array           shape        dtype      content
==============  ===========  =========  ==========================================
tuples          (L, k)       int64      tuple of each level, rotation row order
wavelets        (L,)         int64      wavelet index of each level (-1: a rotation-only level)
rotations       (L, k, k)    float64    rotation block O_l of each level
level_errors    (L,)         float64    squared Frobenius error of each level
diagonal        (m,)         float64    diagonal of H
core            (d,)         int64      core indices, sorted
core_block      (d, d)       float64    H on the core
labels          (m,)         int64/str  optional class labels
snapshot_i_*    (n_i,),      int64,     insertion state: indices active at cut
                (n_i, n_i)   float64    level i and their block of the compression
                or (n_i, D)             (dense), or their rotated means (factored)
final_rows      (m, D)       float64    factored results: every index's final
                                        rotated mean (insertion from a mean)
==============  ===========  =========  ==========================================

Group attribute ``mmf_stream`` holds ``format`` ("factorization"),
``format_version``, ``order``, ``size``, ``n_levels``, ``core_size``, ``error``,
``norm``, ``relative_error``, ``labels`` (true/false), ``seed``, ``candidates``,
``library_version``, ``input`` ("matrix" or "means"), ``schedule``, ``options``
(the engine options, a dict) and ``fingerprint_scale`` (with the arrays
``fingerprint_diagonal`` and ``fingerprint_probe``: see
:mod:`mmf_stream.store.fingerprint`). Every chunk is written (zeros too), so a
missing chunk file is detected on load.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmf_stream.store.fingerprint import Fingerprint
from mmf_stream.engine.options import EngineOptions, resolve_options
from mmf_stream.engine.raw import InsertionState, RawFactorization, Snapshot
from mmf_stream.store.durability import (
    EVERY_CHUNK_KEY,
    check_replaceable,
    fsync_tree,
    recover_interrupted_swap,
    require_complete,
    staging_path,
    swap_into_place,
    writing_every_chunk,
)
from mmf_stream.common.formats import as_str_array, one_line, open_tagged_group

FORMAT = "factorization"
FORMAT_VERSION = 3
#: versions this release reads (1 has no insertion state; 2 has dense snapshots only)
READABLE_VERSIONS = (1, 2, 3)
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

    target = Path(path)
    check_replaceable(target, overwrite, kinds=(FORMAT,))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    try:
        with writing_every_chunk():
            group = zarr.open_group(str(staging), mode="w")
            for name, data in factorization_arrays(factorization):
                data = np.ascontiguousarray(data)
                dtype = str if data.dtype.kind == "U" else data.dtype
                array = group.create_array(name, shape=data.shape, dtype=dtype, chunks=_chunks(data.shape))
                if data.size:
                    array[...] = data
        group.attrs["mmf_stream"] = {**factorization_attrs(factorization), EVERY_CHUNK_KEY: True}
        fsync_tree(staging)
        swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def factorization_attrs(factorization: Any) -> dict[str, Any]:
    """The ``mmf_stream`` attribute of a saved factorization (JSON; see the module docstring)."""
    from mmf_stream.common.version import __version__

    fingerprint = factorization.fingerprint
    return {
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
        "snapshot_levels": [int(snap.level) for snap in factorization.insertion_state.snapshots],
        "input": factorization.metadata.get("input", "matrix"),
        "schedule": factorization.metadata.get("schedule"),
        "options": _options_dict(factorization.metadata.get("options")),
        "since_repair": int(factorization.metadata.get("since_repair", 0)),
        "drift": float(factorization.metadata.get("drift", 0.0)),
        "fingerprint_scale": None if fingerprint is None else float(fingerprint.scale),
    }


def _options_dict(options: Any) -> dict[str, Any] | None:
    if not isinstance(options, EngineOptions):
        return None
    from dataclasses import asdict

    values = asdict(options)
    values["snapshot_fractions"] = list(values["snapshot_fractions"])
    return values


def factorization_arrays(factorization: Any) -> list[tuple[str, np.ndarray]]:
    """``(name, array)`` of every array a saved factorization holds (see the module docstring)."""
    arrays = [(name, getattr(factorization, name)) for name in _ARRAYS]
    state = factorization.insertion_state
    for number, snap in enumerate(state.snapshots):
        data = snap.block if snap.block is not None else snap.rows
        kind = "block" if snap.block is not None else "rows"
        arrays += [(f"snapshot_{number}_indices", snap.indices), (f"snapshot_{number}_{kind}", data)]
    if state.final_rows is not None:
        arrays.append(("final_rows", state.final_rows))
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


@dataclass
class StoredFactorization:
    """What a saved factorization holds, checked; :func:`mmf_stream.load` wraps it in a ``Factorization``."""

    raw: RawFactorization
    insertion_state: InsertionState
    order: int
    norm: float
    labels: np.ndarray | None
    metadata: dict[str, Any]


def load_stored(path: str | os.PathLike) -> StoredFactorization:
    """Read a factorization written by :meth:`Factorization.save` (its checked parts)."""
    recover_interrupted_swap(path)
    source, group, meta = open_tagged_group(path, FORMAT, READABLE_VERSIONS, "factorization")

    def read(name: str) -> np.ndarray:
        if name not in group:
            raise ValueError(f"{source} is corrupt: array {name!r} is missing")
        array = group[name]
        if meta.get(EVERY_CHUNK_KEY):  # older results may lack all-zero chunks legitimately
            require_complete(array, f"{source}: {name}")
        return np.asarray(array[...])

    return stored_from_arrays(read, meta, source)


def stored_from_arrays(read: Callable[[str], np.ndarray], meta: dict[str, Any], source: Any) -> StoredFactorization:
    """Check and assemble a factorization's parts from ``read(name)`` (an array by name) and its
    ``mmf_stream`` attribute ``meta``; errors name ``source``. Returns what :func:`load_stored` does."""
    version = meta["format_version"]
    factored = meta.get("input") == "means"
    has_fingerprint = meta.get("fingerprint_scale") is not None
    try:
        arrays = {name: read(name) for name in _ARRAYS}
        labels = read("labels") if meta.get("labels") else None
        kind = "rows" if factored else "block"
        snapshots = []
        for i, level in enumerate(meta.get("snapshot_levels", [])):
            data = read(f"snapshot_{i}_{kind}")
            snapshots.append(Snapshot(int(level), read(f"snapshot_{i}_indices"), **{kind: data}))
        final_rows = read("final_rows") if factored and snapshots else None  # no insertion state: none
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
        lowest = -1 if name == "wavelets" else 0  # -1: a rotation-only level (its wavelet was knocked out)
        if values.size and (values.min() < lowest or values.max() >= size):
            raise ValueError(f"{source} is corrupt: {name} holds indices outside 0..{size - 1}")
    width = None if final_rows is None else final_rows.shape[1]
    if final_rows is not None and (final_rows.ndim != 2 or final_rows.shape[0] != size):
        raise ValueError(f"{source} is corrupt: final_rows has shape {final_rows.shape}, expected ({size}, D)")
    for snap in snapshots:
        n = snap.size
        data = snap.rows if factored else snap.block
        fits = data.shape == ((n, width) if factored else (n, n))
        if not fits or not 0 <= snap.level <= n_levels or (n and (snap.indices.min() < 0 or snap.indices.max() >= size)):
            raise ValueError(f"{source} is corrupt: an insertion snapshot does not fit the factorization")
    fingerprint = None
    if fingerprint_arrays is not None:
        if any(a.shape != (size,) for a in fingerprint_arrays):
            raise ValueError(f"{source} is corrupt: the fingerprint does not fit the factorization")
        fingerprint = Fingerprint(*fingerprint_arrays, scale=float(meta["fingerprint_scale"]))
    finite = [arrays[name] for name in ("rotations", "level_errors", "diagonal", "core_block")]
    if final_rows is not None:
        finite.append(final_rows)
    if not all(np.all(np.isfinite(a)) for a in finite):
        raise ValueError(f"{source} is corrupt: it has non-finite values")
    options = None
    if isinstance(meta.get("options"), dict):
        try:
            # results written before the neighbour rule was an option used the energy rule
            options = resolve_options({"neighbours": "energy", **meta["options"],
                                       "snapshot_fractions": tuple(meta["options"]["snapshot_fractions"])})
        except (TypeError, ValueError, KeyError):
            options = None  # written by another version: the defaults apply
    raw = RawFactorization(**arrays)
    metadata = {
        "seed": meta.get("seed"),
        "candidates": meta.get("candidates"),
        "format_version": version,
        "since_repair": int(meta.get("since_repair", 0)),
        "drift": float(meta.get("drift", 0.0)),
        "fingerprint": fingerprint,
        "input": "means" if factored else "matrix",
        "schedule": meta.get("schedule"),
        "options": options,
    }
    state = InsertionState(snapshots=snapshots, final_rows=final_rows)
    return StoredFactorization(raw, state, order, float(meta["norm"]), labels, metadata)
