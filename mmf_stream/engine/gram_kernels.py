"""Numba kernels for compressions that hold a tuple's Gram explicitly.

A staged cluster (docs/math.md, section 4) holds two small matrices over its
``c`` members: ``A = C[c, c]`` and ``P = C[c, S] C[S, c]``, the Gram of its rows
over the *whole* active set ``S``. A tuple's Gram is then ``P[t, t]``, exactly;
removing a wavelet ``s`` down-dates ``P`` by ``a a'`` with ``a = A[:, s]``.
Factored compressions (class means) batch their candidates' rows through BLAS
and only need the per-candidate steps here. Pure functions on arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mmf_stream.engine import kernels as K


@njit(cache=True)
def rebuild_from_gram(block_matrix, gram_matrix, scale, active, pivots, k, tuples, grams, directions, scores,
                      iterations):
    """Cache entries for ``pivots``: the pivot and its ``k - 1`` most strongly
    coupled active neighbours (``|A[p, j]| * scale[j]``, see
    :func:`mmf_stream.engine.kernels.neighbour_scale`), scored with the exact Gram ``P[t, t]``."""
    for p in pivots:
        neighbours = K.nearest_neighbours(block_matrix[p], scale, active, p, k - 1)
        t = np.empty(k, dtype=np.int64)
        t[0] = p
        for i in range(k - 1):
            t[1 + i] = neighbours[i]
        gram = K.tuple_block(gram_matrix, t)
        block = K.tuple_block(block_matrix, t)
        direction, value = K.wavelet_direction(gram, block, np.int64(1), np.int64(iterations))
        for a in range(k):
            tuples[p, a] = t[a]
            directions[p, a] = direction[a]
            for b in range(k):
                grams[p, a, b] = gram[a, b]
        scores[p] = max(value, 0.0)


@njit(cache=True)
def neighbour_tuples(rows, scale, active, pivots, k):
    """Tuples for ``pivots`` from their coupling rows (``rows[i] = C[pivots[i], :]``), neighbours
    ranked by ``|C[p, j]| * scale[j]``."""
    out = np.empty((pivots.shape[0], k), dtype=np.int64)
    for i in range(pivots.shape[0]):
        p = pivots[i]
        neighbours = K.nearest_neighbours(rows[i], scale, active, p, k - 1)
        out[i, 0] = p
        for j in range(k - 1):
            out[i, 1 + j] = neighbours[j]
    return out


@njit(cache=True)
def gram_tuple_inputs(block_matrix, gram_matrix, tuples):
    """``(P[t, t], A[t, t])`` of each tuple (rows of ``tuples``)."""
    b, k = tuples.shape
    grams = np.empty((b, k, k))
    blocks = np.empty((b, k, k))
    for i in range(b):
        t = tuples[i]
        grams[i] = K.tuple_block(gram_matrix, t)
        blocks[i] = K.tuple_block(block_matrix, t)
    return grams, blocks


@njit(cache=True)
def score_candidates(grams, blocks, iterations, directions, scores):
    """Wavelet direction and error of each candidate from its Gram and block."""
    for i in range(grams.shape[0]):
        direction, value = K.wavelet_direction(grams[i], blocks[i], np.int64(1), np.int64(iterations))
        for a in range(direction.shape[0]):
            directions[i, a] = direction[a]
        scores[i] = max(value, 0.0)


@njit(cache=True)
def rotate_symmetric(matrix, t, rotation):
    """``matrix <- Q matrix Q'`` for the k-point rotation ``(t, rotation)``; returns the new rows ``t``."""
    k = t.shape[0]
    old = np.empty((k, matrix.shape[1]))
    for a in range(k):
        old[a] = matrix[t[a]]
    new = K.rotate_tuple_rows(old, t, rotation)
    K.write_tuple_rows(matrix, 0, t, new)
    return new


@njit(cache=True)
def remove_from_gram(block_matrix, gram_matrix, energy, active, s, column):
    """Take ``s`` out: ``P -= a a'`` (``a = A[:, s]``, given as ``column``), zero row and
    column ``s`` of both matrices, ``energy = diag(P)``."""
    n = energy.shape[0]
    active[s] = False
    for i in range(n):
        if not active[i]:
            continue
        ai = column[i]
        if ai == 0.0:
            continue
        for j in range(n):
            gram_matrix[i, j] -= ai * column[j]
    for i in range(n):
        block_matrix[i, s] = 0.0
        block_matrix[s, i] = 0.0
        gram_matrix[i, s] = 0.0
        gram_matrix[s, i] = 0.0
    for i in range(n):
        energy[i] = gram_matrix[i, i] if active[i] else 0.0
        if energy[i] < 0.0:
            energy[i] = 0.0


@njit(cache=True)
def rotate_columns(rows, tuples, rotations):
    """Apply ``Q_1, ..., Q_L`` in turn to the *columns* of ``rows`` in place: ``rows Q'``.

    Row by row (each row stays in cache), so a block of rows gives the same
    numbers whatever other rows it is stored with: the Dask engine's parts
    and the local engine's whole buffer agree bit for bit.
    """
    levels, k = tuples.shape
    flat_tuples = tuples.ravel()
    flat_rotations = rotations.ravel()
    values = np.empty(k)
    for r in range(rows.shape[0]):
        row = rows[r]
        for level in range(levels):
            first = level * k
            weights = level * k * k
            for b in range(k):
                values[b] = row[flat_tuples[first + b]]
            for a in range(k):
                total = 0.0
                for b in range(k):
                    total += flat_rotations[weights + a * k + b] * values[b]
                row[flat_tuples[first + a]] = total


@njit(cache=True)
def ordered_row_energy(rows, local_rows, recorded, active, wavelets):
    """Exact ``r_i^2`` of some of a stage's wavelets (docs/math.md, section 4), row by row.

    ``wavelets`` are all the stage's wavelets (positions) in recorded order;
    wavelet ``recorded[i]`` is row ``local_rows[i]`` of ``rows`` (after all
    the stage's levels). Its squared norm over the active set, minus its
    entries at the wavelets recorded up to and including itself. Returns
    ``(diagonal, r2)`` for the given wavelets.
    """
    q = recorded.shape[0]
    n = rows.shape[1]
    diagonal = np.empty(q)
    out = np.empty(q)
    for i in range(q):
        row = rows[local_rows[i]]
        total = 0.0
        for j in range(n):
            if active[j]:
                total += row[j] * row[j]
        for j in range(recorded[i] + 1):
            value = row[wavelets[j]]
            total -= value * value
        diagonal[i] = row[wavelets[recorded[i]]]
        out[i] = max(total, 0.0)
    return diagonal, out


#: tile side of the blocked transposed reads below
_TILE = 64


@njit(cache=True)
def symmetric_rows(rows, columns):
    """Rows of ``(C + C') / 2`` from ``rows = C[r, :]`` and ``columns = C[:, r]``, in one pass.

    Returns ``(out, worst, i, j, largest, finite)``: the largest ``|C[i, j] -
    C[j, i]|`` (``i`` local to the block), the largest ``|C|`` over both
    blocks, and whether every entry is finite. ``out[i, j] = 0.5 * (C[i, j] +
    C[j, i])``, exactly as the local validation computes it.
    """
    count, n = rows.shape
    out = np.empty((count, n))
    worst = 0.0
    wi = 0
    wj = 0
    largest = 0.0
    finite = True
    for jb in range(0, n, _TILE):
        for ib in range(0, count, _TILE):
            for j in range(jb, min(jb + _TILE, n)):
                for i in range(ib, min(ib + _TILE, count)):
                    upper = float(rows[i, j])
                    lower = float(columns[j, i])
                    if not (np.isfinite(upper) and np.isfinite(lower)):
                        finite = False
                    difference = abs(upper - lower)
                    if difference > worst:
                        worst = difference
                        wi = i
                        wj = j
                    if abs(upper) > largest:
                        largest = abs(upper)
                    if abs(lower) > largest:
                        largest = abs(lower)
                    out[i, j] = 0.5 * (upper + lower)
    return out, worst, wi, wj, largest, finite


@njit(cache=True)
def take_block_into(rows, row_index, column_index, out, out_rows):
    """``out[out_rows[a], b] = rows[row_index[a], column_index[b]]`` in one pass."""
    for a in range(row_index.shape[0]):
        source = rows[row_index[a]]
        target = out[out_rows[a]]
        for b in range(column_index.shape[0]):
            target[b] = source[column_index[b]]


#: a symmetry signature's multipliers are odd 64-bit numbers drawn with this seed
SIGNATURE_SEED = 0x5EB5


@njit(cache=True)
def symmetry_signature(rows, row_ids, left, right):
    """Two XOR-folded signatures of ``rows`` (rows ``row_ids`` of ``C``, all columns), and the
    block's checks, in one pass.

    ``forward`` folds ``bits(C[r, c]) * (left[r] * right[c] | 1)``, ``backward``
    the same with ``left[c] * right[r]``. Folded over the whole matrix they are
    equal when ``C`` is exactly symmetric (bit for bit) and, with random
    multipliers, differ when it is not (a false match has probability about
    2^-64); each block of rows contributes its part, in any order (XOR).
    Returns ``(forward, backward, all finite, max |C|, sum of squares)``.
    """
    forward = np.uint64(0)
    backward = np.uint64(0)
    one = np.uint64(1)
    finite = True
    largest = 0.0
    squares = 0.0
    for a in range(rows.shape[0]):
        r = row_ids[a]
        row = rows[a]
        bits = row.view(np.uint64)
        left_r = left[r]
        right_r = right[r]
        for c in range(bits.shape[0]):
            value = row[c]
            if not np.isfinite(value):
                finite = False
            magnitude = abs(value)
            if magnitude > largest:
                largest = magnitude
            squares += value * value
            forward ^= bits[c] * ((left_r * right[c]) | one)
            backward ^= bits[c] * ((left[c] * right_r) | one)
    return forward, backward, finite, largest, squares
