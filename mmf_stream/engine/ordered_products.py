"""Matrix products whose every entry is one sum in a fixed order.

BLAS libraries pick their kernels by CPU and by shape: OpenBLAS, for one,
multiplies small or odd-shaped products with other kernels than large ones
(and SkylakeX's differ from Haswell's), so the same row of ``a @ b`` can round
differently depending on which other rows it is multiplied with. The Dask
engine needs the opposite: a row's numbers must depend on that row alone, on
any CPU, whatever else a worker holds. These kernels compute

    out[i, j] = (...((a[i, 0] b[0, j] + a[i, 1] b[1, j]) + a[i, 2] b[2, j]) + ...)

left to right, with separate multiplies and adds (no fused multiply-add, no
reassociation): the result is a function of ``a[i]`` and ``b[:, j]`` only, and
the same on every machine. They vectorise over ``j`` and reuse each loaded
value over a 4 x 4 block of ``(i, k)``, which keeps them within about 2-3x of a
single-threaded BLAS product.

Pure functions on arrays, no I/O.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: inner indices per block (a block of ``b`` stays in cache while every row uses it)
INNER_BLOCK = 64
#: output columns per block
COLUMN_BLOCK = 256


@njit(cache=True, nogil=True)
def _accumulate_row(out_row, a_block, i, first, stop, k0, b, j0, j1):
    """``out_row[j] += a_block[i, k - k0] * b[k, j0 + j]`` for ``k = first..stop-1``, in order."""
    for k in range(first, stop):
        aik = a_block[i, k - k0]
        b_row = b[k, j0:j1]
        for j in range(j1 - j0):
            out_row[j] += aik * b_row[j]


@njit(cache=True, nogil=True)
def ordered_matmul(a, b):
    """``a @ b`` with every entry summed over the inner index in ascending order.

    Parameters
    ----------
    a : ndarray, shape (rows, inner), float64, any layout
    b : ndarray, shape (inner, columns), float64, any layout

    Returns
    -------
    ndarray, shape (rows, columns)
        ``out[i, j]`` is the left-to-right sum of ``a[i, k] * b[k, j]``: bit for bit a
        function of ``a[i]`` and ``b[:, j]`` alone.
    """
    rows, inner = a.shape
    columns = b.shape[1]
    out = np.zeros((rows, columns))
    for k0 in range(0, inner, INNER_BLOCK):
        k1 = min(k0 + INNER_BLOCK, inner)
        a_block = np.ascontiguousarray(a[:, k0:k1])
        k4 = k0 + (k1 - k0) // 4 * 4
        for j0 in range(0, columns, COLUMN_BLOCK):
            j1 = min(j0 + COLUMN_BLOCK, columns)
            width = j1 - j0
            i = 0
            while i + 4 <= rows:
                o0 = out[i, j0:j1]
                o1 = out[i + 1, j0:j1]
                o2 = out[i + 2, j0:j1]
                o3 = out[i + 3, j0:j1]
                for k in range(k0, k4, 4):
                    c = k - k0
                    b0 = b[k, j0:j1]
                    b1 = b[k + 1, j0:j1]
                    b2 = b[k + 2, j0:j1]
                    b3 = b[k + 3, j0:j1]
                    a00, a01, a02, a03 = a_block[i, c], a_block[i, c + 1], a_block[i, c + 2], a_block[i, c + 3]
                    a10, a11, a12, a13 = (a_block[i + 1, c], a_block[i + 1, c + 1], a_block[i + 1, c + 2],
                                          a_block[i + 1, c + 3])
                    a20, a21, a22, a23 = (a_block[i + 2, c], a_block[i + 2, c + 1], a_block[i + 2, c + 2],
                                          a_block[i + 2, c + 3])
                    a30, a31, a32, a33 = (a_block[i + 3, c], a_block[i + 3, c + 1], a_block[i + 3, c + 2],
                                          a_block[i + 3, c + 3])
                    for j in range(width):
                        v0, v1, v2, v3 = b0[j], b1[j], b2[j], b3[j]
                        o0[j] = (((o0[j] + a00 * v0) + a01 * v1) + a02 * v2) + a03 * v3
                        o1[j] = (((o1[j] + a10 * v0) + a11 * v1) + a12 * v2) + a13 * v3
                        o2[j] = (((o2[j] + a20 * v0) + a21 * v1) + a22 * v2) + a23 * v3
                        o3[j] = (((o3[j] + a30 * v0) + a31 * v1) + a32 * v2) + a33 * v3
                for r in range(i, i + 4):
                    _accumulate_row(out[r, j0:j1], a_block, r, k4, k1, k0, b, j0, j1)
                i += 4
            while i < rows:
                _accumulate_row(out[i, j0:j1], a_block, i, k0, k1, k0, b, j0, j1)
                i += 1
    return out


@njit(cache=True, nogil=True)
def ordered_row_quadratic(x, inner):
    """``x[i] @ inner @ x[i]`` for every row, each a function of ``x[i]`` alone.

    ``y = x[i] @ inner`` is summed as :func:`ordered_matmul` sums it, then
    ``sum_j y[j] x[i, j]`` left to right.
    """
    y = ordered_matmul(x, inner)
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        total = 0.0
        for j in range(x.shape[1]):
            total += y[i, j] * x[i, j]
        out[i] = total
    return out
