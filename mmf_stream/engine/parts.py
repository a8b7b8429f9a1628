"""Row-block arithmetic shared by the local and the Dask staged engines.

The Dask engine (:mod:`mmf_stream.engine.dask_stages`) keeps the compression
as blocks of rows on workers; the local engine keeps it whole. Both must give
the same numbers bit for bit, whatever the blocks. These helpers compute
every row-wise quantity so that a row's result does not depend on which
other rows it is stored with:

* :func:`stable_matmul`: ``a @ b`` with the rows of ``a`` and the columns of
  ``b`` padded with zeros to a multiple of :data:`ROW_MULTIPLE`. OpenBLAS
  computes the edges of an odd-sized product with other kernels than its
  main one, and where the edges fall depends on the shape and on how many
  threads share the product; they round differently. On padded shapes every
  entry comes from the same kernel: the numbers no longer depend on the
  other rows, nor on the BLAS thread count (workers run one thread, the
  local engine several);
* :func:`blocked_gram`: ``M' M`` summed over fixed blocks of rows, in order
  (a reduction over rows must not depend on how rows are split);
* :func:`dense_cluster_inputs`, :func:`factored_cluster_inputs`: a cluster's
  ``A`` and ``P`` from its own rows.

Pure functions on arrays, no I/O.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import ThreadpoolController


#: rows of the left factor of :func:`stable_matmul` are padded to a multiple of this
ROW_MULTIPLE = 16


_controller: ThreadpoolController | None = None


def _one_blas_thread():
    """A context in which BLAS runs one thread (the controller is made once: about 25 us a use)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def stable_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` whose entry ``(i, j)`` depends only on ``a[i]`` and ``b[:, j]``: not on the
    other rows and columns, nor on the number of BLAS threads."""
    rows, columns = a.shape[0], b.shape[1]
    pad_rows, pad_columns = -rows % ROW_MULTIPLE, -columns % ROW_MULTIPLE
    if pad_rows:
        a = np.concatenate([a, np.zeros((pad_rows, a.shape[1]), dtype=a.dtype)])
    if pad_columns:
        b = np.concatenate([b, np.zeros((b.shape[0], pad_columns), dtype=b.dtype)], axis=1)
    with _one_blas_thread():
        product = a @ b
    return product[:rows, :columns] if pad_rows or pad_columns else product


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
    return np.einsum("ij,ij->i", stable_matmul(x, inner), x)
