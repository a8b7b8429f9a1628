"""Class covariance of representations (docs/math.md, section 7).

``C[i, j] = mu_i' mu_j`` with ``mu_i`` the mean representation of class ``i``:
one streaming pass of group-by sums over the instances, then an ``m x m``
product. Features may be NumPy, Zarr or Dask arrays of any size; they are
read in row blocks (the next block is fetched while the current one is summed),
so memory stays bounded by the block size and ``m x D``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from mmf_stream.common.limits import INT_LABEL_MAX, int_label_problem, normalize_labels

#: target bytes per row block read from a chunked array
_BLOCK_BYTES = 128 * 2**20


@njit(cache=True, nogil=True)
def group_sums(block, codes, keep, sums, counts):
    """Add each kept row of ``block`` to ``sums[codes[row]]`` (float64 accumulation).

    Returns False if a non-finite value was met (the sums are then unusable).
    """
    dim = block.shape[1]
    for r in range(block.shape[0]):
        if not keep[r]:
            continue
        c = codes[r]
        counts[c] += 1
        row = block[r]
        target = sums[c]
        for d in range(dim):
            value = row[d]
            target[d] += value
    for c in range(sums.shape[0]):
        for d in range(dim):
            if not np.isfinite(sums[c, d]):
                return False
    return True


@dataclass
class ClassCovariance:
    """Class covariance of representations.

    Attributes
    ----------
    matrix : ndarray of shape (m, m)
        ``C[i, j] = mu_i' mu_j`` (after centring / normalising if asked).
    labels : ndarray of shape (m,)
        Sorted unique class labels; row ``i`` of ``matrix`` is ``labels[i]``.
    means : ndarray of shape (m, D)
        Class means (uncentred).
    counts : ndarray of shape (m,)
        Instances used per class.
    center, normalize : bool
        The options the matrix was made with.
    """

    matrix: np.ndarray
    labels: np.ndarray
    means: np.ndarray
    counts: np.ndarray
    center: bool = False
    normalize: bool = False


def covariance_from_means(
    means: np.ndarray,
    counts: np.ndarray,
    *,
    center: bool = False,
    normalize: bool = False,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """``M M'`` with optional centring (instance-weighted global mean) and cosine normalisation.

    ``gram`` may pass a precomputed ``M M'`` (it is modified in place).
    """
    matrix = means @ means.T if gram is None else gram
    if center:
        total = counts.sum()
        centre = (counts @ means) / total if total else np.zeros(means.shape[1])
        h = means @ centre
        matrix -= h[:, None]
        matrix -= h[None, :]
        matrix += centre @ centre
    if normalize:
        diag = np.sqrt(np.clip(np.diag(matrix).copy(), 0, None))
        zero = diag == 0
        if zero.any():
            raise ValueError(
                f"cannot normalize: {int(zero.sum())} class(es) have a zero vector "
                "(after centring), so their cosine similarity is undefined"
            )
        matrix /= diag[:, None]
        matrix /= diag[None, :]
    matrix = 0.5 * (matrix + matrix.T)
    return matrix


def encode_labels(labels: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique labels and each row's code; checks length and kind."""
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a 1-D array of labels, not a single string")
    array = np.asarray(labels[...] if hasattr(labels, "dtype") and not isinstance(labels, np.ndarray) else labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.shape[0] != n_rows:
        raise ValueError(f"got {array.shape[0]} labels for {n_rows} feature rows")
    if array.dtype.kind in "OT":
        items = array.tolist()
        if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):  # beyond int64
            raise ValueError(next(filter(None, map(int_label_problem, items)), "labels are not int64 integers"))
        if not all(isinstance(x, str) for x in items):
            raise TypeError("labels must be all integers or all strings")
        array = np.array(items, dtype=str)
    if array.dtype.kind == "S":  # ASCII bytes: the policy checks them as text
        array = array.astype(str)
    if array.dtype.kind not in "iuUb":
        raise TypeError(f"labels must be integers or strings, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > INT_LABEL_MAX:
        raise ValueError(int_label_problem(int(array.max())))
    if array.dtype.kind in "bu":
        array = array.astype(np.int64)
    unique, codes = np.unique(array, return_inverse=True)
    codes = codes.astype(np.int64)
    if unique.dtype.kind == "U":  # the label policy: one spelling (NFC), printable, bounded length
        normal, index, reason = normalize_labels(unique)
        if reason:
            raise ValueError(reason)
        if normal is not unique:  # two spellings of one label are one class
            unique, remap = np.unique(normal, return_inverse=True)
            codes = remap.astype(np.int64)[codes]
    return unique, codes


def sample_mask(codes: np.ndarray, n_classes: int, max_per_class: int | None, seed: int) -> np.ndarray:
    """Keep every row, or at most ``max_per_class`` random rows of each class."""
    if max_per_class is None:
        return np.ones(codes.shape[0], dtype=np.bool_)
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, (int, np.integer)):
        raise TypeError(f"max_per_class must be an integer, got {type(max_per_class).__name__}")
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be at least 1, got {max_per_class}")
    rng = np.random.default_rng(seed)
    # a random priority per row; keep the max_per_class smallest within each class
    priority = rng.random(codes.shape[0])
    order = np.lexsort((priority, codes))
    sorted_codes = codes[order]
    starts = np.searchsorted(sorted_codes, np.arange(n_classes))
    rank = np.arange(codes.shape[0]) - starts[sorted_codes]
    keep = np.zeros(codes.shape[0], dtype=np.bool_)
    keep[order[rank < max_per_class]] = True
    return keep


def feature_shape(features: Any) -> tuple[int, int]:
    shape = getattr(features, "shape", None)
    if shape is None:
        raise TypeError(f"features must be an array (NumPy, Zarr or Dask), got {type(features).__name__}")
    if len(shape) != 2:
        raise ValueError(f"features must be 2-D (instances x dimensions), got shape {tuple(shape)}")
    dtype = np.dtype(features.dtype)
    if dtype.kind not in "fiub":
        raise TypeError(f"features must be real numbers, got dtype {dtype}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"features are empty (shape {tuple(shape)})")
    return int(shape[0]), int(shape[1])


def _row_blocks(features: Any, n_rows: int, dim: int) -> Iterator[tuple[int, int]]:
    dtype = np.dtype(features.dtype)
    itemsize = dtype.itemsize if dtype in _KERNEL_DTYPES else 8  # upcast blocks are float64
    rows = max(1, _BLOCK_BYTES // max(1, dim * itemsize))
    chunks = getattr(features, "chunks", None)
    if chunks is not None and len(chunks) and isinstance(chunks[0], tuple):  # dask: per-axis tuples
        step = max(chunks[0])
    elif chunks is not None and len(chunks):  # zarr: one chunk shape
        step = int(chunks[0])
    else:
        step = 1
    rows = max(step, (rows // step) * step)
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


#: dtypes the summing kernel takes as they are; any other real dtype (float16,
#: integers, booleans, non-native byte order) is upcast to float64 block by block
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _kernel_ready(block: np.ndarray) -> np.ndarray:
    """``block`` as a C-contiguous float32/float64 array (upcast otherwise)."""
    if block.dtype not in _KERNEL_DTYPES:  # dtype equality includes the byte order
        block = block.astype(np.float64)
    return np.ascontiguousarray(block)


def _read_block(features: Any, start: int, stop: int) -> np.ndarray:
    block = features[start:stop]
    if hasattr(block, "compute"):  # dask
        block = block.compute()
    return _kernel_ready(np.asarray(block))


def accumulate_class_sums(
    features: Any, codes: np.ndarray, keep: np.ndarray, n_classes: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums (float64) and counts of the kept rows, streaming over row blocks.

    Any real dtype is accepted (float16, integers and booleans are upcast to
    float64 one block at a time, so memory stays bounded by the block size).
    Arrays on disk (memory-mapped ``.npy``, Zarr, Dask) are streamed;
    ``progress(rows)`` is called after each block.
    """
    n_rows, dim = feature_shape(features)
    sums = np.zeros((n_classes, dim))
    counts = np.zeros(n_classes, dtype=np.int64)
    in_memory = isinstance(features, np.ndarray) and not isinstance(features, np.memmap)
    if in_memory and features.dtype in _KERNEL_DTYPES:
        if not group_sums(np.ascontiguousarray(features), codes, keep, sums, counts):
            raise ValueError("features have non-finite values (NaN or Inf)")
        if progress is not None:
            progress(n_rows)
        return sums, counts
    blocks = list(_row_blocks(features, n_rows, dim))
    with ThreadPoolExecutor(max_workers=1) as reader:  # read the next block while summing this one
        pending = reader.submit(_read_block, features, *blocks[0])
        for index, (start, stop) in enumerate(blocks):
            block = pending.result()
            if index + 1 < len(blocks):
                pending = reader.submit(_read_block, features, *blocks[index + 1])
            if not group_sums(block, codes[start:stop], keep[start:stop], sums, counts):
                raise ValueError(f"features have non-finite values (NaN or Inf) in rows {start}..{stop - 1}")
            if progress is not None:
                progress(stop - start)
    return sums, counts


def class_covariance(
    features: Any,
    labels: Any,
    *,
    center: bool = False,
    normalize: bool = False,
    max_per_class: int | None = None,
    seed: int = 0,
) -> ClassCovariance:
    """Class covariance of representations (the paper's equation 7).

    ``C[i, j] = 1/(|i||j|) sum_a sum_b d_a' d_b = mu_i' mu_j``, computed from the
    class means in one streaming pass.

    Parameters
    ----------
    features : array of shape (n, D)
        NumPy, Zarr or Dask array (any size: read in row blocks).
    labels : array-like of shape (n,)
        Class of each row, integers or strings.
    center : bool
        Subtract the global mean of the (sampled) instances first.
    normalize : bool
        Cosine similarities ``C_ij / sqrt(C_ii C_jj)``.
    max_per_class : int, optional
        Use at most this many random instances per class (the paper used 2000).
    seed : int
        Seed for the sampling.

    Returns
    -------
    ClassCovariance
        ``.matrix``, ``.labels`` (sorted unique), ``.means``, ``.counts``.
    """
    n_rows, _ = feature_shape(features)
    unique, codes = encode_labels(labels, n_rows)
    keep = sample_mask(codes, unique.shape[0], max_per_class, seed)
    sums, counts = accumulate_class_sums(features, codes, keep, unique.shape[0])
    means = sums / counts[:, None]
    matrix = covariance_from_means(means, counts, center=center, normalize=normalize)
    return ClassCovariance(matrix=matrix, labels=unique, means=means, counts=counts, center=center, normalize=normalize)
