"""Row-block arithmetic shared by the local and the Dask staged engines.

The Dask engine (:mod:`mmf_stream.engine.dask_stages`) keeps the compression
as blocks of rows on workers; the local engine keeps it whole. Both must give
the same numbers bit for bit, whatever the blocks. These helpers compute
every row-wise quantity so that a row's result does not depend on which
other rows it is stored with:

* :func:`stable_matmul`: ``a @ b`` with the rows of ``a`` padded to a
  multiple of :data:`ROW_MULTIPLE` (OpenBLAS picks edge kernels for odd row
  counts that round differently from its main kernel);
* :func:`blocked_gram`: ``M' M`` summed over fixed blocks of rows, in order
  (a reduction over rows must not depend on how rows are split);
* :func:`dense_cluster_inputs`, :func:`factored_cluster_inputs`: a cluster's
  ``A`` and ``P`` from its own rows.

Pure functions on arrays, no I/O.
"""

from __future__ import annotations

import numpy as np


#: rows of the left factor of :func:`stable_matmul` are padded to a multiple of this
ROW_MULTIPLE = 16


def stable_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` whose row ``i`` depends only on ``a[i]`` and ``b`` (not on the other rows of ``a``)."""
    rows = a.shape[0]
    pad = -rows % ROW_MULTIPLE
    if pad:
        a = np.concatenate([a, np.zeros((pad, a.shape[1]), dtype=a.dtype)])
    return (a @ b)[:rows]


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
    return sum_in_order([rows[start:stop].T @ rows[start:stop] for start, stop in block_bounds(rows.shape[0], block)])


def dense_cluster_inputs(rows: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense cluster's ``A = C[c, c]`` and ``P = C[c, S] C[S, c]`` from its full rows ``rows = C[c, :]``."""
    return rows[:, members].copy(), rows @ rows.T


def factored_cluster_inputs(x: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A factored cluster's ``A = X X'`` and ``P = X W X'`` from its rows ``X`` of ``M`` and ``W = M_S' M_S``."""
    return x @ x.T, (x @ inner) @ x.T
