"""Small helpers shared by the readers and writers: one-line errors, string arrays, tagged groups."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def as_str_array(values: np.ndarray) -> np.ndarray:
    """Fixed-width ``str`` array from object or NumPy variable-length strings (as Zarr returns)."""
    return np.array([str(x) for x in values.tolist()], dtype=str)


def open_tagged_group(path: str | os.PathLike, fmt: str, versions: tuple[int, ...], kind: str, mode: str = "r"):
    """Open an mmf_stream Zarr group; check its ``format`` and ``format_version``.

    Returns ``(path, group, metadata)``; one-line ValueErrors otherwise.
    """
    import zarr

    source = existing_path(path)
    try:
        group = zarr.open_group(str(source), mode=mode)
        meta = group.attrs.get("mmf_stream")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for non-groups
        raise ValueError(f"{source} is not a Zarr group: {one_line(exc)}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ValueError(f"{source} is not an mmf_stream {kind} (no matching 'mmf_stream' format attribute)")
    version = meta.get("format_version")
    if version not in versions:
        readable = ", ".join(map(str, versions))
        raise ValueError(f"{source} has {kind} format version {version}; this mmf_stream reads version {readable}")
    return source, group, dict(meta)


def existing_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a one-line ValueError if nothing is there."""
    source = Path(path)
    if not source.exists():
        raise ValueError(f"{source}: no such file or directory")
    return source
