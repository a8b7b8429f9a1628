"""Reading matrices and labels from files (.npy, Zarr, Matrix Market, text)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from mmf_stream.store.class_store import Store
from mmf_stream.common.formats import existing_path, one_line
from mmf_stream.common.limits import normalize_labels

__all__ = ["read_features", "read_labels", "read_matrix"]


def load_npy(source: Path, *, mmap: bool) -> np.ndarray:
    """Load a ``.npy`` file (never unpickling), with one-line errors that say what is wrong."""
    with open(source, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise ValueError(f"{source} is not a .npy file (it does not start with the NumPy header)")
    try:
        return np.load(source, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower() or "Python objects" in str(exc):
            raise ValueError(
                f"{source} holds Python objects, not numbers or strings (object arrays are not read, for safety)"
            ) from None
        raise ValueError(f"{source} is not a valid .npy file: {one_line(exc)}") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{source} is not a valid .npy file: {one_line(exc)}") from None


def read_matrix(path: str | os.PathLike) -> np.ndarray:
    """Read a matrix from ``.npy``, a Zarr array, a class store (its covariance,
    centred/normalised per the store's options), a Zarr group with a
    ``covariance`` array, or Matrix Market ``.mtx`` (dense or sparse).

    Raises
    ------
    ValueError
        If the file is missing, of an unknown kind, unreadable or corrupt.
    """
    source = existing_path(path)
    suffix = source.suffix.lower()
    try:
        if suffix == ".npy":
            return load_npy(source, mmap=True)
        if suffix == ".mtx":
            import scipy.io

            matrix = scipy.io.mmread(source)
            return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
        if source.is_dir() or suffix == ".zarr":
            return _read_zarr(source)
    except ValueError as exc:
        if str(exc).startswith(str(source)):
            raise
        raise ValueError(f"cannot read {source}: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is "corrupt input"
        raise ValueError(f"cannot read {source}: {one_line(exc)}") from None
    raise ValueError(f"{source}: unknown matrix format {suffix or '(no suffix)'}; use .npy, .zarr or .mtx")


def read_features(path: str | os.PathLike, role: str = "FEATURES"):
    """Open features (n x D) without loading them: ``.npy`` (memory-mapped) or a Zarr array.

    ``role`` names the argument in error messages (``--means`` reads class means this way).
    """
    source = existing_path(path)
    suffix = source.suffix.lower()
    if suffix not in (".npy", ".zarr") and not source.is_dir():
        kind = "means" if role == "--means" else "features"
        raise ValueError(f"{source}: unknown {kind} format {suffix or '(no suffix)'}; {role} takes .npy or a Zarr array")
    try:
        if suffix == ".npy":
            return load_npy(source, mmap=True)
        import zarr

        node = zarr.open(str(source), mode="r")
    except Exception as exc:  # noqa: BLE001 - any parser failure is "corrupt input"
        raise ValueError(f"cannot read {source}: {one_line(exc)}") from None
    if not isinstance(node, zarr.Array):
        raise ValueError(f"{source} is a Zarr group; {role} must be a Zarr array")
    return node


def _read_zarr(source: Path):
    import zarr

    node = zarr.open(str(source), mode="r")
    if isinstance(node, zarr.Array):
        return node
    meta = node.attrs.get("mmf_stream", {})
    if isinstance(meta, dict) and meta.get("format") == "class-store":
        return Store.open(source, mode="r").matrix()
    if isinstance(meta, dict) and meta.get("format") == "factorization":
        raise ValueError(f"{source} is a factorization result, not a matrix")
    if "covariance" in node:
        return node["covariance"]
    raise ValueError(f"{source} is a Zarr group without a 'covariance' array")


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read labels: ``.npy`` (1-D), or ``.txt``/``.csv`` with one label per line.

    Text labels are kept as strings (first column for ``.csv``); blank lines
    are an error, except at the end of the file. String labels follow the
    label policy (:func:`mmf_stream.common.limits.normalize_label`): they come back
    in Unicode NFC, and one with a control character or more than
    ``MAX_LABEL_LENGTH`` characters is an error naming its line (``.npy``:
    its row).
    """
    source = existing_path(path)
    suffix = source.suffix.lower()
    try:
        if suffix == ".npy":
            labels = load_npy(source, mmap=False)
            if labels.dtype.kind in "US" and labels.ndim == 1:
                labels = labels.astype(str)
                normal, index, reason = normalize_labels(labels)
                if reason:
                    raise ValueError(f"{source}: row {index}: {reason}")
                return normal
            return labels
        if suffix in (".txt", ".csv", ""):
            # utf-8-sig: a byte-order mark (as some editors write) is not part of the first label
            with open(source, newline="", encoding="utf-8-sig") as handle:
                if suffix == ".csv":
                    reader = csv.reader(handle)
                    rows, lines = [], []
                    for row in reader:  # a quoted field may span lines: name the line its row ends on
                        rows.append(row[0].strip() if row else "")
                        lines.append(reader.line_num)
                else:
                    rows = [line.rstrip("\r\n").strip() for line in handle]
                    lines = list(range(1, len(rows) + 1))
            while rows and rows[-1] == "":
                rows.pop()
            if "" in rows:
                raise ValueError(f"{source}: line {lines[rows.index('')]} is empty")
            normal, index, reason = normalize_labels(rows)
            if reason:
                raise ValueError(f"{source}: line {lines[index]}: {reason}")
            return normal
    except ValueError as exc:
        if str(exc).startswith(str(source)):
            raise
        raise ValueError(f"cannot read labels from {source}: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read labels from {source}: {one_line(exc)}") from None
    raise ValueError(f"{source}: unknown labels format {suffix}; use .npy, .txt or .csv")
