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
``norm``, ``relative_error``, ``labels`` (true/false), ``seed``, ``candidates``
and ``library_version``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream._io import as_str_array, one_line, open_tagged_group

FORMAT = "factorization"
FORMAT_VERSION = 2
#: versions this release reads (1 has no insertion state)
READABLE_VERSIONS = (1, 2)
_ARRAYS = ("tuples", "wavelets", "rotations", "level_errors", "diagonal", "core", "core_block")


def save_factorization(factorization: Any, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    import zarr

    from mmf_stream import __version__

    target = Path(path)
    if target.exists() and not overwrite:
        raise ValueError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        group = zarr.open_group(str(staging), mode="w")
        for name in _ARRAYS:
            data = np.ascontiguousarray(getattr(factorization, name))
            array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=_chunks(data.shape))
            if data.size:
                array[...] = data
        snapshot_levels = []
        for number, (level, indices, block) in enumerate(factorization._raw.snapshots):
            snapshot_levels.append(int(level))
            for suffix, data in (("indices", indices), ("block", block)):
                data = np.ascontiguousarray(data)
                array = group.create_array(
                    f"snapshot_{number}_{suffix}", shape=data.shape, dtype=data.dtype, chunks=_chunks(data.shape)
                )
                array[...] = data
        labels = factorization.labels
        if labels is not None:
            dtype = str if labels.dtype.kind == "U" else labels.dtype
            array = group.create_array("labels", shape=labels.shape, dtype=dtype)
            array[...] = labels
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
            "labels": labels is not None,
            "seed": factorization.metadata.get("seed"),
            "candidates": factorization.metadata.get("candidates"),
            "library_version": __version__,
            "snapshot_levels": snapshot_levels,
            "since_repair": int(factorization.metadata.get("since_repair", 0)),
            "drift": float(factorization.metadata.get("drift", 0.0)),
        }
        if target.exists():
            backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """About 8 MB chunks along the first axis (at least one row)."""
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    first = max(1, min(shape[0] if shape[0] else 1, (1 << 20) // max(row, 1)))
    return (first, *[max(1, s) for s in shape[1:]])


def load_factorization(path: str | os.PathLike):
    """Read a factorization written by :meth:`Factorization.save`."""
    from mmf_stream._engine import RawFactorization
    from mmf_stream._factorization import Factorization

    source, group, meta = open_tagged_group(path, FORMAT, READABLE_VERSIONS, "factorization")
    version = meta["format_version"]
    try:
        arrays = {name: np.asarray(group[name][...]) for name in _ARRAYS}
        labels = np.asarray(group["labels"][...]) if meta.get("labels") else None
        snapshots = [
            (int(level), np.asarray(group[f"snapshot_{i}_indices"][...]), np.asarray(group[f"snapshot_{i}_block"][...]))
            for i, level in enumerate(meta.get("snapshot_levels", []))
        ]
    except Exception as exc:  # noqa: BLE001
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
        },
    )
