"""Row-block arithmetic shared by the local and the Dask staged engines.

The Dask engine (:mod:`mmf_stream.engine.dask_stages`) keeps the compression
as blocks of rows on workers; the local engine keeps it whole. Both must give
the same numbers bit for bit, whatever the blocks. These helpers compute
every row-wise quantity so that a row's result does not depend on which
other rows it is stored with:

* :func:`stable_matmul`: ``a @ b`` through
  :func:`~mmf_stream.engine.ordered_products.ordered_matmul`, every entry one
  sum in a fixed order. BLAS is not used: OpenBLAS picks its kernels by CPU and
  by shape (small-matrix and edge kernels round differently from the main one,
  and SkylakeX's differ from Haswell's), so a row of a BLAS product depends on
  the other rows it is multiplied with. Here it depends on nothing else, on any
  CPU and for any BLAS thread count (workers run one thread, the local engine
  several);
* :func:`blocked_gram`: ``M' M`` summed over fixed blocks of rows, in order
  (a reduction over rows must not depend on how rows are split);
* :func:`dense_cluster_inputs`, :func:`factored_cluster_inputs`: a cluster's
  ``A`` and ``P`` from its own rows.

Pure functions on arrays, no I/O.
"""

from __future__ import annotations

import numpy as np

from mmf_stream.engine.ordered_products import ordered_matmul, ordered_row_quadratic


def stable_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` whose entry ``(i, j)`` depends only on ``a[i]`` and ``b[:, j]``: not on the
    other rows and columns, the BLAS library, its kernel or its thread count."""
    return ordered_matmul(np.asarray(a, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64))


def stable_gram(x: np.ndarray) -> np.ndarray:
    """``x x'`` through :func:`stable_matmul`."""
    return stable_matmul(x, x.T)


def stable_cogram(x: np.ndarray) -> np.ndarray:
    """``x' x`` through :func:`stable_matmul`."""
    return stable_matmul(x.T, x)


def block_bounds(size: int, block: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: rows ``0..size`` in consecutive blocks of ``block`` rows."""
    return [(start, min(start + block, size)) for start in range(0, size, block)] or [(0, 0)]


def sum_in_order(partials: list[np.ndarray]) -> np.ndarray:
    """``partials[0] + partials[1] + ...``, added left to right."""
    total = np.array(partials[0], dtype=np.float64, copy=True)
    for partial in partials[1:]:
        total += partial
    return total


def blocked_gram(rows: np.ndarray, block: int) -> np.ndarray:
    """``rows' rows`` as the in-order sum over blocks of ``block`` rows (see :func:`block_bounds`)."""
    return sum_in_order([stable_cogram(rows[start:stop]) for start, stop in block_bounds(rows.shape[0], block)])


def dense_cluster_inputs(rows: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense cluster's ``A = C[c, c]`` and ``P = C[c, S] C[S, c]`` from its full rows ``rows = C[c, :]``."""
    return rows[:, members].copy(), stable_gram(rows)


def factored_cluster_inputs(x: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A factored cluster's ``A = X X'`` and ``P = X W X'`` from its rows ``X`` of ``M`` and ``W = M_S' M_S``."""
    return stable_gram(x), stable_matmul(stable_matmul(x, inner), x.T)


def wavelet_energies(x: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``x_i W x_i'`` for every row of ``x``: squared norms of the rows' couplings over the active set."""
    return ordered_row_quadratic(np.asarray(x, dtype=np.float64), np.asarray(inner, dtype=np.float64))
