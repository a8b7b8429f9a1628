"""Checks on user input, each failing with a one-line ``ValueError``/``TypeError``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmf_stream.engine import kernels as K
from mmf_stream.common.formats import as_str_array
# MAX_ABS_ENTRY is defined in mmf_stream.common.limits (one bound for every check) and still importable from here
from mmf_stream.common.limits import INT_LABEL_MAX, MAX_ABS_ENTRY, int_label_problem, means_overflow, normalize_labels


def _as_2d_array(matrix: Any) -> np.ndarray:
    """Bring any array-like (NumPy, Zarr, SciPy sparse, nested lists) to a NumPy array."""
    if hasattr(matrix, "toarray") and callable(matrix.toarray):  # SciPy sparse
        matrix = matrix.toarray()
    try:
        array = np.asarray(matrix)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise TypeError(f"matrix must be array-like, got {type(matrix).__name__}: {exc}") from None
    return array


def symmetric_matrix(matrix: Any, *, tolerance: float = 1e-8) -> np.ndarray:
    """Validate a symmetric real matrix and return a float64 C-ordered symmetric copy.

    The copy is the symmetric part ``(C + C') / 2``; the input is never modified.

    Raises
    ------
    TypeError
        If the input is not a real numeric array.
    ValueError
        If it is empty, not square, has NaN/Inf, or is asymmetric beyond
        ``tolerance`` relative to its largest entry.
    """
    array = _as_2d_array(matrix)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise TypeError(f"matrix must hold real numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError("matrix must be real, got a complex dtype")
    if array.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got {array.ndim} dimension(s) with shape {array.shape}")
    rows, cols = array.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"matrix is empty (shape {array.shape})")
    if rows != cols:
        raise ValueError(f"matrix must be square, got shape {rows} x {cols}")
    if array.dtype not in (np.float64, np.float32):
        array = array.astype(np.float64)
    worst, i, j, largest, finite = K.max_asymmetry(array)
    if not finite:
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(
            f"matrix has non-finite entries (NaN or Inf), first at ({bad[0]}, {bad[1]})"
        )
    if largest > MAX_ABS_ENTRY:
        raise ValueError(
            f"matrix entries reach {largest:.3g}: beyond {MAX_ABS_ENTRY:g} their squares overflow in the "
            "error; rescale the matrix (for example divide it by its largest entry)"
        )
    if worst > tolerance * max(largest, np.finfo(np.float64).tiny):
        raise ValueError(
            f"matrix is not symmetric: largest asymmetry |C[{i},{j}] - C[{j},{i}]| = {worst:.3g} "
            f"exceeds {tolerance:g} x max|C| = {tolerance * largest:.3g}"
        )
    out = np.empty((rows, rows), dtype=np.float64)
    K.symmetrize_into(array, out)
    return out


def means_matrix(means: Any) -> np.ndarray:
    """Validate class means (m x D: NumPy, Zarr, Dask or nested lists); return a float64 C-ordered copy."""
    if hasattr(means, "compute") and callable(means.compute) and hasattr(means, "chunks"):  # Dask array
        means = means.compute()
    array = _as_2d_array(means)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"means must hold real numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError("means must be real, got a complex dtype")
    if array.ndim != 2:
        raise ValueError(f"means must be 2-D (classes x features), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("means holds no classes (0 rows)")
    if array.shape[1] == 0:
        raise ValueError(f"means has no features (shape {array.shape}, D = 0)")
    out = np.ascontiguousarray(array, dtype=np.float64)
    finite = np.isfinite(out)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise ValueError(f"means has non-finite entries (NaN or Inf), first at ({bad[0]}, {bad[1]})")
    largest = float(np.max(np.abs(out))) if out.size else 0.0
    if means_overflow(largest, out.shape[1]):
        raise ValueError(
            f"means entries reach {largest:.3g}: the covariance entries would overflow in the error; "
            "rescale the means"
        )
    return out.copy() if out is array else out


def order_and_core(order: Any, core_size: Any, size: int) -> tuple[int, int]:
    """Check the MMF order ``k`` and core size ``d`` for an ``size x size`` matrix."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(f"order must be an integer, got {type(order).__name__}")
    order = int(order)
    if order < 2:
        raise ValueError(f"order must be at least 2, got {order}")
    if order > size:
        raise ValueError(f"order {order} exceeds the matrix size {size}")
    if core_size is None:
        core_size = order - 1
    if isinstance(core_size, bool) or not isinstance(core_size, (int, np.integer)):
        raise TypeError(f"core_size must be an integer or None, got {type(core_size).__name__}")
    core_size = int(core_size)
    if not order - 1 <= core_size <= size - 1:
        raise ValueError(
            f"core_size must be between order - 1 = {order - 1} and size - 1 = {size - 1}, "
            f"got {core_size}"
        )
    return order, core_size


def labels_for(labels: Any, size: int, *, policy: bool = True) -> np.ndarray | None:
    """Validate class labels: one per row, unique, integers (int64) or strings.

    With ``policy`` (labels a caller gives), string labels follow the label policy of
    :func:`mmf_stream.common.limits.normalize_label` (NFC, printable, at most ``MAX_LABEL_LENGTH``
    characters; two spellings of one label are then not unique); ``policy=False`` is for labels
    read from a store, which stay usable as they were stored.
    """
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a sequence of labels, not a single string")
    if not isinstance(labels, np.ndarray):
        items = list(labels)
        kinds = {str if isinstance(x, (str, np.str_)) else int if isinstance(x, (int, np.integer)) and
                 not isinstance(x, (bool, np.bool_)) else type(x) for x in items}
        if len(kinds) > 1 or not kinds <= {str, int}:
            raise TypeError("labels must be all integers or all strings")
        if kinds == {int}:
            problem = next(filter(None, (int_label_problem(int(x)) for x in items)), None)
            if problem:
                raise ValueError(problem)
        labels = np.array(items, dtype=str if kinds == {str} else np.int64) if items else np.array([])
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.shape[0] != size:
        raise ValueError(f"got {array.shape[0]} labels for a matrix of size {size}")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        if array.dtype.kind == "u" and array.size and int(array.max()) > INT_LABEL_MAX:
            raise ValueError(int_label_problem(int(array.max())))
        array = array.astype(np.int64)
    elif array.dtype.kind in "UST":
        array = as_str_array(array)
    elif array.dtype == object:
        if not all(isinstance(x, str) for x in array):
            raise TypeError("labels must be all integers or all strings")
        array = array.astype(str)
    else:
        raise TypeError(f"labels must be integers or strings, got dtype {array.dtype}")
    if policy and array.dtype.kind == "U":
        array, index, reason = normalize_labels(array)
        if reason:
            raise ValueError(f"labels[{index}]: {reason}")
    unique, counts = np.unique(array, return_counts=True)
    if unique.shape[0] != size:
        raise ValueError(f"labels must be unique; {unique[counts > 1][0].item()!r} appears {counts.max()} times")
    return array


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
