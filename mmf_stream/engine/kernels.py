"""Numba kernels of the MMF level loop.

Every function here is a pure function on arrays: no I/O, no Dask, no Python
objects. The batch engine calls them on the whole in-memory compression; a
distributed engine calls the same kernels on the row blocks its workers hold
(``tuple_gram`` and ``rotate_tuple_rows`` need only the ``k`` rows of a tuple,
``write_tuple_rows`` and ``candidate_downdate`` work on any row block).

Notation (docs/math.md, section 2): ``A`` is the current compression of
the active set (rows/columns of indices that already became wavelets are zero),
``t`` a tuple of ``k`` positions, ``G = A[t, :] A[:, t]`` the tuple's Gram over
the active set, ``At = A[t, t]`` and ``f(o) = o' G o - (o' At o)^2`` the
off-diagonal energy of the wavelet row when the wavelet direction is ``o``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JACOBI_SWEEPS = 60


# Compile time: the first factorization in a fresh environment compiles every
# kernel (then Numba caches them on disk), and LLVM re-optimises a callee's code
# inside every caller. So the kernels avoid NumPy functions with large Numba
# implementations (argsort, det, eye, fancy indexing, array expressions, array
# assignment with its error messages) in favour of loops giving the same numbers,
# pass arrays of one layout, and small helpers are inlined (inline="always").
# mmf_stream.warmup.warm_up() (mmf-stream warmup) compiles everything ahead of the first run.


@njit(cache=True)
def _argsort(values):
    """``np.argsort(values)`` by the same algorithm as Numba's (quicksort, insertion
    sort below 16 elements, NaN last), so ties come out in the same order."""
    n = values.shape[0]
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[i] = i
    if n < 2:
        return order
    stack = np.empty((100, 2), dtype=np.int64)
    stack[0, 0] = 0
    stack[0, 1] = n - 1
    top = 1
    while top > 0:
        top -= 1
        low = stack[top, 0]
        high = stack[top, 1]
        while high - low >= 15:
            # median of three; x < y below is NumPy's float order: x < y, or y is NaN and x is not
            mid = (low + high) >> 1
            x = values[order[mid]]
            y = values[order[low]]
            if x < y or (y != y and x == x):
                order[low], order[mid] = order[mid], order[low]
            x = values[order[high]]
            y = values[order[mid]]
            if x < y or (y != y and x == x):
                order[high], order[mid] = order[mid], order[high]
            x = values[order[mid]]
            y = values[order[low]]
            if x < y or (y != y and x == x):
                order[low], order[mid] = order[mid], order[low]
            pivot = values[order[mid]]
            order[high], order[mid] = order[mid], order[high]
            i = low
            j = high - 1
            while True:
                while i < high:
                    x = values[order[i]]
                    if not (x < pivot or (pivot != pivot and x == x)):
                        break
                    i += 1
                while j >= low:
                    y = values[order[j]]
                    if not (pivot < y or (y != y and pivot == pivot)):
                        break
                    j -= 1
                if i >= j:
                    break
                order[i], order[j] = order[j], order[i]
                i += 1
                j -= 1
            order[i], order[high] = order[high], order[i]
            if high - i > i - low:
                if high > i:
                    stack[top, 0] = i + 1
                    stack[top, 1] = high
                    top += 1
                high = i - 1
            else:
                if i > low:
                    stack[top, 0] = low
                    stack[top, 1] = i - 1
                    top += 1
                low = i + 1
        for i in range(low + 1, high + 1):
            item = order[i]
            x = values[item]
            j = i
            while j > low:
                y = values[order[j - 1]]
                if not (x < y or (y != y and x == x)):
                    break
                order[j] = order[j - 1]
                j -= 1
            order[j] = item
    return order


@njit(cache=True, inline="always")
def _column(matrix, c):
    """``matrix[:, c].copy()``."""
    out = np.empty(matrix.shape[0])
    for r in range(matrix.shape[0]):
        out[r] = matrix[r, c]
    return out


@njit(cache=True)
def _small_matmul(a, b):
    """``a @ b`` for small matrices, summed left to right: not BLAS, so the same on every CPU."""
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            total = 0.0
            for p in range(a.shape[1]):
                total += a[i, p] * b[p, j]
            out[i, j] = total
    return out


@njit(cache=True, inline="always")
def _det(matrix):
    """Determinant of a small matrix (LU with partial pivoting)."""
    n = matrix.shape[0]
    a = matrix.copy()
    det = 1.0
    for c in range(n):
        p = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[p, c]):
                p = r
        if p != c:
            for j in range(n):
                a[c, j], a[p, j] = a[p, j], a[c, j]
            det = -det
        pivot = a[c, c]
        det *= pivot
        if pivot == 0.0:
            return det
        for r in range(c + 1, n):
            factor = a[r, c] / pivot
            for j in range(c + 1, n):
                a[r, j] -= factor * a[c, j]
    return det


@njit(cache=True)
def small_eigh(matrix):
    """Eigen-decomposition of a small symmetric matrix by cyclic Jacobi.

    Returns ``(values, vectors)`` with ascending ``values`` and eigenvectors in
    the columns of ``vectors``. Faster than a LAPACK call for k <= 8.
    """
    n = matrix.shape[0]
    a = matrix.copy()
    v = np.zeros((n, n))
    for i in range(n):
        v[i, i] = 1.0
    scale = 0.0
    for i in range(n):
        for j in range(n):
            scale += a[i, j] * a[i, j]
    for _ in range(_JACOBI_SWEEPS):
        off = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                off += a[i, j] * a[i, j]
        if off <= 1e-32 * scale or off == 0.0:
            break
        for p in range(n - 1):
            for q in range(p + 1, n):
                apq = a[p, q]
                if apq == 0.0:
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                if theta >= 0.0:
                    tan = 1.0 / (theta + np.sqrt(theta * theta + 1.0))
                else:
                    tan = -1.0 / (-theta + np.sqrt(theta * theta + 1.0))
                c = 1.0 / np.sqrt(tan * tan + 1.0)
                s = tan * c
                for r in range(n):
                    arp = a[r, p]
                    arq = a[r, q]
                    a[r, p] = c * arp - s * arq
                    a[r, q] = s * arp + c * arq
                for r in range(n):
                    apr = a[p, r]
                    aqr = a[q, r]
                    a[p, r] = c * apr - s * aqr
                    a[q, r] = s * apr + c * aqr
                for r in range(n):
                    vrp = v[r, p]
                    vrq = v[r, q]
                    v[r, p] = c * vrp - s * vrq
                    v[r, q] = s * vrp + c * vrq
    values = np.empty(n)
    for i in range(n):
        values[i] = a[i, i]
    order = _argsort(values)
    sorted_values = np.empty(n)
    vectors = np.empty((n, n))
    for c in range(n):
        sorted_values[c] = values[order[c]]
        for r in range(n):
            vectors[r, c] = v[r, order[c]]
    return sorted_values, vectors


@njit(cache=True, inline="always")
def quadratic(matrix, vector):
    """``vector' matrix vector`` for a small matrix."""
    n = vector.shape[0]
    total = 0.0
    for i in range(n):
        row = 0.0
        for j in range(n):
            row += matrix[i, j] * vector[j]
        total += vector[i] * row
    return total


@njit(cache=True, inline="always")
def wavelet_energy(gram, block, direction):
    """``f(o) = o' G o - (o' At o)^2``: the wavelet row's off-diagonal energy."""
    diagonal = quadratic(block, direction)
    return quadratic(gram, direction) - diagonal * diagonal


@njit(cache=True)
def wavelet_direction(gram, block, starts, max_iter):
    """Wavelet direction ``o`` minimising ``f(o)`` on the unit sphere.

    Starts from the Jacobi choice (eigenvectors of ``block``); ``starts`` of
    them, best first, are refined by majorisation-minimisation: since
    ``-(o' A o)^2 <= a^2 - 2 a o' A o`` with equality at ``a = o' A o``, the
    smallest eigenvector of ``G - 2 a A`` never increases ``f``. Returns
    ``(o, f(o))``.
    """
    k = block.shape[0]
    values, vectors = small_eigh(block)
    energies = np.empty(k)
    for i in range(k):
        energies[i] = quadratic(gram, _column(vectors, i)) - values[i] * values[i]
    ranking = _argsort(energies)
    best = _column(vectors, ranking[0])
    best_energy = energies[ranking[0]]
    n_starts = min(starts, k)
    majorant = np.empty((k, k))
    for start in range(n_starts):
        current = _column(vectors, ranking[start])
        energy = energies[ranking[start]]
        for _ in range(max_iter):
            a = quadratic(block, current)
            twice = 2.0 * a
            for r in range(k):
                for c in range(k):
                    majorant[r, c] = gram[r, c] - twice * block[r, c]
            _, w = small_eigh(majorant)
            candidate = np.empty(k)
            for r in range(k):
                candidate[r] = w[r, 0]
            candidate_energy = wavelet_energy(gram, block, candidate)
            if candidate_energy < energy - 1e-14 * abs(energy) - 1e-300:
                current = candidate
                energy = candidate_energy
            else:
                break
        if energy < best_energy:
            best_energy = energy
            best = current
    return best, best_energy


@njit(cache=True)
def rotation_from_wavelet(direction, block):
    """Rotation ``O`` (det +1) whose row ``pos`` is the wavelet direction.

    ``pos`` is the tuple member with the largest weight in the direction; the
    other rows diagonalise ``block`` on the direction's orthogonal complement
    and are assigned to the members they weigh most. Returns ``(O, pos)``.
    """
    k = direction.shape[0]
    pos = 0
    for i in range(1, k):
        if abs(direction[i]) > abs(direction[pos]):
            pos = i
    basis = np.zeros((k, k - 1))
    column = 0
    for j in range(k):
        if j == pos:
            continue
        vec = np.zeros(k)
        vec[j] = 1.0
        for _ in range(2):  # modified Gram-Schmidt, twice for stability
            dot = 0.0
            for i in range(k):
                dot += direction[i] * vec[i]
            for i in range(k):
                vec[i] -= dot * direction[i]
            for c in range(column):
                dot = 0.0
                for i in range(k):
                    dot += basis[i, c] * vec[i]
                for i in range(k):
                    vec[i] -= dot * basis[i, c]
        norm = 0.0
        for i in range(k):
            norm += vec[i] * vec[i]
        norm = np.sqrt(norm)
        for i in range(k):
            basis[i, column] = vec[i] / norm
        column += 1
    # basis' as a C-contiguous array: one layout of matmul to compile (same result)
    basis_t = np.empty((k - 1, k))
    for i in range(k):
        for c in range(k - 1):
            basis_t[c, i] = basis[i, c]
    reduced = _small_matmul(_small_matmul(basis_t, block), basis)
    _, w = small_eigh(reduced)
    complement = _small_matmul(basis, w)
    rotation = np.zeros((k, k))
    for j in range(k):
        rotation[pos, j] = direction[j]
    taken = np.zeros(k, dtype=np.int64)  # flags (an int64 array: one array type less to compile)
    taken[pos] = 1
    for c in range(k - 1):
        target = -1
        weight = -1.0
        for i in range(k):
            if taken[i] == 0 and abs(complement[i, c]) > weight:
                weight = abs(complement[i, c])
                target = i
        taken[target] = 1
        for j in range(k):
            rotation[target, j] = complement[j, c]
    if _det(rotation) < 0.0:
        other = 1 if pos == 0 else 0
        for j in range(k):
            rotation[other, j] = -rotation[other, j]
    return rotation, pos


@njit(cache=True, fastmath=True, inline="always")
def _cross4(a0, a1, a2, a3, b0, b1, b2, b3, out):
    """4 x 4 inner products of rows a* with rows b* in one pass over the columns."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = 0.0
    for j in range(a0.shape[0]):
        x0 = a0[j]
        x1 = a1[j]
        x2 = a2[j]
        x3 = a3[j]
        y0 = b0[j]
        y1 = b1[j]
        y2 = b2[j]
        y3 = b3[j]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s03 += x0 * y3
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s13 += x1 * y3
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s23 += x2 * y3
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
        s33 += x3 * y3
    out[0, 0] = s00
    out[0, 1] = s01
    out[0, 2] = s02
    out[0, 3] = s03
    out[1, 0] = s10
    out[1, 1] = s11
    out[1, 2] = s12
    out[1, 3] = s13
    out[2, 0] = s20
    out[2, 1] = s21
    out[2, 2] = s22
    out[2, 3] = s23
    out[3, 0] = s30
    out[3, 1] = s31
    out[3, 2] = s32
    out[3, 3] = s33


@njit(cache=True, fastmath=True)
def tuple_gram(matrix, t):
    """``G = A[t, :] A[t, :]'`` from the tuple's rows (inactive columns are 0).

    Rows are taken four at a time so that each pass over the columns does 16
    multiply-adds per column read; the tuple is padded with repeats of its
    first member.
    """
    k = t.shape[0]
    groups = (k + 3) // 4
    padded = np.empty(groups * 4, dtype=np.int64)
    for i in range(groups * 4):
        padded[i] = t[i] if i < k else t[0]
    full = np.empty((groups * 4, groups * 4))
    block = np.empty((4, 4))
    for ga in range(groups):
        a = padded[4 * ga : 4 * ga + 4]
        for gb in range(ga, groups):
            b = padded[4 * gb : 4 * gb + 4]
            _cross4(
                matrix[a[0]], matrix[a[1]], matrix[a[2]], matrix[a[3]],
                matrix[b[0]], matrix[b[1]], matrix[b[2]], matrix[b[3]],
                block,
            )
            for i in range(4):
                for j in range(4):
                    full[4 * ga + i, 4 * gb + j] = block[i, j]
                    full[4 * gb + j, 4 * ga + i] = block[i, j]
    return full[:k, :k].copy()


@njit(cache=True)
def tuple_block(matrix, t):
    """``A[t, t]``."""
    k = t.shape[0]
    block = np.empty((k, k))
    for a in range(k):
        for b in range(k):
            block[a, b] = matrix[t[a], t[b]]
    return block


@njit(cache=True, inline="always")
def _filled(positions):
    """The leading slots of a top-``count`` list that were filled (not -1)."""
    found = 0
    for i in range(positions.shape[0]):
        if positions[i] >= 0:
            found += 1
    return positions[:found].copy()


@njit(cache=True, inline="always")
def nearest_neighbours(row, scale, active, pivot, count):
    """The ``count`` active positions ``j != pivot`` with largest ``|row[j]| * scale[j]``.

    ``row`` is the pivot's row of the compression and ``scale`` the inverse of a
    per-position norm, so the ranking is by normalised coupling. Returns
    positions sorted by decreasing similarity (fewer if too few are active).
    """
    best_pos = np.empty(count, dtype=np.int64)
    best_val = np.empty(count)
    for i in range(count):
        best_pos[i] = -1
        best_val[i] = -1.0
    n = row.shape[0]
    for j in range(n):
        if not active[j] or j == pivot:
            continue
        value = abs(row[j]) * scale[j]
        if value <= best_val[count - 1]:
            continue
        slot = count - 1
        while slot > 0 and best_val[slot - 1] < value:
            best_val[slot] = best_val[slot - 1]
            best_pos[slot] = best_pos[slot - 1]
            slot -= 1
        best_val[slot] = value
        best_pos[slot] = j
    return _filled(best_pos)


def neighbour_scale(energy: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """``1 / sqrt(energy)`` (0 where the energy is 0, and at ``exclude``): the neighbour rule's scale."""
    scale = np.zeros(energy.shape[0])
    positive = energy > 0.0
    scale[positive] = 1.0 / np.sqrt(energy[positive])
    if exclude is not None:
        scale[exclude] = 0.0
    return scale


@njit(cache=True)
def identity_lists(rows, scale, active, pivots, count):
    """Per pivot, the ``count`` active positions ``j`` with the largest ``|rows[i, j]| * scale[j]``
    (``rows[i]`` is pivot ``pivots[i]``'s row), best first, padded with -1."""
    out = np.full((pivots.shape[0], count), -1, dtype=np.int64)
    for i in range(pivots.shape[0]):
        found = nearest_neighbours(rows[i], scale, active, pivots[i], count)
        for a in range(found.shape[0]):
            out[i, a] = found[a]
    return out


@njit(cache=True, inline="always")
def _pooled_order(blocks, i, lists, row):
    """Reorder the filled entries of ``lists[row]`` by greedy average linkage (``blocks[i]``:
    ``C[t, t]`` of the pivot, at 0, and the list's entries, at 1..L)."""
    n = 1
    while n <= lists.shape[1] and lists[row, n - 1] >= 0:
        n += 1
    if n <= 2:
        return
    scale = np.empty(n)
    for a in range(n):
        scale[a] = 1.0 / math.sqrt(max(abs(blocks[i, a, a]), 1e-300))
    chosen = np.zeros(n, dtype=np.bool_)
    chosen[0] = True
    total = np.empty(n)
    for a in range(n):
        total[a] = abs(blocks[i, 0, a]) * scale[0] * scale[a]
    entries = lists[row, : n - 1].copy()
    for step in range(n - 1):
        best = -1
        for a in range(1, n):  # ties: the earlier (more similar to the pivot) entry
            if not chosen[a] and (best < 0 or total[a] > total[best]):
                best = a
        chosen[best] = True
        lists[row, step] = entries[best - 1]
        for a in range(n):
            total[a] += abs(blocks[i, best, a]) * scale[best] * scale[a]


@njit(cache=True)
def pool_lists(blocks, lists, rows):
    """Reorder each identity list ``lists[rows[i]]`` so that every entry is the one most similar on
    average (``|cosine|`` from ``blocks[i]``, see :func:`_pooled_order`) to the pivot and the
    entries before it: a tuple completed from the list's first active entries is a tight group,
    not the pivot's nearest rows one by one (a noisy row's list pools its neighbours' views)."""
    for i in range(rows.shape[0]):
        _pooled_order(blocks, i, lists, rows[i])


@njit(cache=True)
def list_blocks(matrix, pivots, lists):
    """``A[t, t]`` for each ``t`` = pivot ``pivots[i]`` followed by ``lists[i]`` (-1 padding: the pivot)."""
    b, count = lists.shape
    out = np.empty((b, count + 1, count + 1))
    t = np.empty(count + 1, dtype=np.int64)
    for i in range(b):
        t[0] = pivots[i]
        for a in range(count):
            t[a + 1] = lists[i, a] if lists[i, a] >= 0 else pivots[i]
        for a in range(count + 1):
            for c in range(count + 1):
                out[i, a, c] = matrix[t[a], t[c]]
    return out


@njit(cache=True)
def tuples_from_lists(lists, active, pivots, k):
    """Per pivot, itself and the first ``k - 1`` active entries of its list; ``ok[i]`` is False
    (and the tuple unusable) when fewer than ``k - 1`` entries are active."""
    tuples = np.zeros((pivots.shape[0], k), dtype=np.int64)
    ok = np.zeros(pivots.shape[0], dtype=np.bool_)
    for i in range(pivots.shape[0]):
        p = pivots[i]
        tuples[i, 0] = p
        filled = 1
        for a in range(lists.shape[1]):
            j = lists[p, a]
            if j < 0:  # removed by a compaction (or padding)
                continue
            if active[j] and j != p:
                tuples[i, filled] = j
                filled += 1
                if filled == k:
                    break
        ok[i] = filled == k
    return tuples, ok


@njit(cache=True)
def dense_tuple_inputs(matrix, tuples):
    """``(G, A[t, t])`` of each tuple (rows of ``tuples``) of a dense compression."""
    b, k = tuples.shape
    grams = np.empty((b, k, k))
    blocks = np.empty((b, k, k))
    for i in range(b):
        t = tuples[i].copy()
        grams[i] = tuple_gram(matrix, t)
        blocks[i] = tuple_block(matrix, t)
    return grams, blocks


@njit(cache=True, inline="always")
def rotate_tuple_rows(rows, t, rotation):
    """New rows ``t`` of ``Q A Q'`` from the old rows ``A[t, :]`` (k x n).

    Rows mix as ``O @ rows``; the ``t x t`` block additionally mixes its
    columns, giving ``O A[t, t] O'``.
    """
    k = t.shape[0]
    n = rows.shape[1]
    out = np.zeros((k, n))
    for a in range(k):
        for b in range(k):
            weight = rotation[a, b]
            if weight == 0.0:
                continue
            src = rows[b]
            dst = out[a]
            for j in range(n):
                dst[j] += weight * src[j]
    mixed = np.zeros((k, k))
    for a in range(k):
        for c in range(k):
            total = 0.0
            for b in range(k):
                total += out[a, t[b]] * rotation[c, b]
            mixed[a, c] = total
    for a in range(k):
        for c in range(k):
            out[a, t[c]] = mixed[a, c]
    return out


@njit(cache=True, inline="always")
def write_tuple_rows(block, row_offset, t, new_rows):
    """Write rotated rows ``t`` into a row block and, by symmetry, columns ``t``.

    ``block`` holds rows ``row_offset .. row_offset + len(block)`` of the
    compression; ``new_rows`` is the output of :func:`rotate_tuple_rows`.
    """
    k = t.shape[0]
    nrows = block.shape[0]
    for i in range(nrows):
        g = row_offset + i
        for a in range(k):
            block[i, t[a]] = new_rows[a, g]
    for a in range(k):
        local = t[a] - row_offset
        if 0 <= local < nrows:
            for j in range(block.shape[1]):
                block[local, j] = new_rows[a, j]


@njit(cache=True, fastmath=True)
def update_row_energy(energy, old_rows, new_rows, t, active):
    """Maintain ``energy[j] = sum over active i of A[j, i]^2`` after a rotation."""
    k = t.shape[0]
    n = energy.shape[0]
    for j in range(n):
        if not active[j]:
            continue
        delta = 0.0
        for a in range(k):
            delta += new_rows[a, j] * new_rows[a, j] - old_rows[a, j] * old_rows[a, j]
        energy[j] += delta
    for a in range(k):
        total = 0.0
        row = new_rows[a]
        for j in range(n):
            total += row[j] * row[j]
        energy[t[a]] = total


@njit(cache=True, fastmath=True)
def row_energies(matrix):
    """Squared row norms."""
    n = matrix.shape[0]
    out = np.empty(n)
    for i in range(n):
        total = 0.0
        for j in range(matrix.shape[1]):
            total += matrix[i, j] * matrix[i, j]
        out[i] = total
    return out


@njit(cache=True)
def remove_index(matrix, energy, active, s):
    """Take position ``s`` out of the active set: down-date energies, zero row/column."""
    n = matrix.shape[0]
    active[s] = False
    for j in range(n):
        value = matrix[j, s]
        energy[j] -= value * value
        if energy[j] < 0.0:
            energy[j] = 0.0
        matrix[j, s] = 0.0
    matrix[s, :] = 0.0
    energy[s] = 0.0


@njit(cache=True)
def candidate_downdate(tuples, grams, directions, scores, active, stale, t, column):
    """Update cached candidate tuples after a level.

    For every cached tuple disjoint from the rotated tuple ``t`` the Gram over
    the active set loses exactly the removed wavelet's column:
    ``G -= v v'`` with ``v = column[tuple]`` (rotations of disjoint tuples leave
    ``G`` unchanged), so ``f(o)`` drops by ``(o . v)^2``. Tuples meeting ``t``
    are marked ``stale`` (their pivots must be rebuilt before they are used;
    their score is kept as an estimate). Already stale tuples are skipped.
    """
    n, k = tuples.shape
    kt = t.shape[0]
    v = np.empty(k)
    for p in range(n):
        if not active[p] or stale[p]:
            continue
        meets = False
        for a in range(k):
            member = tuples[p, a]
            for b in range(kt):
                if member == t[b]:
                    meets = True
        if meets:
            stale[p] = True
            continue
        dot = 0.0
        for a in range(k):
            v[a] = column[tuples[p, a]]
            dot += directions[p, a] * v[a]
        for a in range(k):
            for b in range(k):
                grams[p, a, b] -= v[a] * v[b]
        scores[p] -= dot * dot
        if scores[p] < 0.0:
            scores[p] = 0.0


@njit(cache=True)
def smallest_scores(scores, active, tie_break, count):
    """Positions of the ``count`` active candidates with the smallest scores."""
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    best_pos = np.empty(count, dtype=np.int64)
    best_val = np.empty(count)
    best_tie = np.empty(count)
    for i in range(count):
        best_pos[i] = -1
        best_val[i] = np.inf
        best_tie[i] = np.inf
    n = scores.shape[0]
    for p in range(n):
        if not active[p]:
            continue
        value = scores[p]
        tie = tie_break[p]
        last = count - 1
        if value > best_val[last] or (value == best_val[last] and tie >= best_tie[last]):
            continue
        slot = last
        while slot > 0 and (
            best_val[slot - 1] > value
            or (best_val[slot - 1] == value and best_tie[slot - 1] > tie)
        ):
            best_val[slot] = best_val[slot - 1]
            best_tie[slot] = best_tie[slot - 1]
            best_pos[slot] = best_pos[slot - 1]
            slot -= 1
        best_val[slot] = value
        best_tie[slot] = tie
        best_pos[slot] = p
    return _filled(best_pos)


@njit(cache=True)
def compact_square(buffer, n, keep):
    """Compact the ``n x n`` matrix stored flat in ``buffer`` to ``keep x keep`` in place.

    Writes never overtake reads because kept positions are increasing, so no
    second matrix is allocated. Returns the new side length.
    """
    m = keep.shape[0]
    for i in range(m):
        src_row = keep[i] * n
        dst_row = i * m
        for j in range(m):
            buffer[dst_row + j] = buffer[src_row + keep[j]]
    return m


@njit(cache=True)
def max_asymmetry(matrix):
    """``(max |A - A'|, i, j, max |A|, all finite)`` without temporaries."""
    n = matrix.shape[0]
    worst = 0.0
    wi = 0
    wj = 0
    largest = 0.0
    finite = True
    for i in range(n):
        for j in range(n):
            value = matrix[i, j]
            if not np.isfinite(value):
                finite = False
            elif abs(value) > largest:
                largest = abs(value)
            if j > i:
                diff = abs(value - matrix[j, i])
                if diff > worst:
                    worst = diff
                    wi = i
                    wj = j
    return worst, wi, wj, largest, finite


@njit(cache=True)
def symmetrize_into(source, out):
    """``out = (source + source') / 2`` blockwise (source may be float32)."""
    n = source.shape[0]
    for i in range(n):
        for j in range(i, n):
            value = 0.5 * (float(source[i, j]) + float(source[j, i]))
            out[i, j] = value
            out[j, i] = value


@njit(cache=True, inline="always")
def rotate_rows_inplace(matrix, t, rotation, transpose, tmp):
    """``matrix[t, :] = O @ matrix[t, :]`` (or ``O' @ ...``), using ``tmp`` (k x ncols)."""
    k = t.shape[0]
    ncols = matrix.shape[1]
    for a in range(k):
        for c in range(ncols):
            total = 0.0
            for b in range(k):
                weight = rotation[b, a] if transpose else rotation[a, b]
                total += weight * matrix[t[b], c]
            tmp[a, c] = total
    for a in range(k):
        for c in range(ncols):
            matrix[t[a], c] = tmp[a, c]


@njit(cache=True)
def apply_rotations(matrix, tuples, rotations, inverse):
    """Apply ``Q_L ... Q_1`` (or its transpose) to the rows of ``matrix`` in place."""
    levels = tuples.shape[0]
    tmp = np.empty((tuples.shape[1], matrix.shape[1]))
    for step in range(levels):
        level = levels - 1 - step if inverse else step
        rotate_rows_inplace(matrix, tuples[level], rotations[level], inverse, tmp)
