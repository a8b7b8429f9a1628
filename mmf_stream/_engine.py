"""The batch MMF engine: the greedy level loop on one machine.

Each level (mmf-math.md sections 1-3) is four separate steps over the current
compression, each a kernel from :mod:`mmf_stream._kernels`:

1. *candidates*: every active position is a pivot; its tuple is the pivot and
   its ``k - 1`` most strongly coupled active neighbours. Each candidate's
   Gram over the active set, wavelet direction and error are cached;
2. *scoring*: the best cached candidates are rescored exactly from the current
   rows and the wavelet direction re-optimised; the smallest error wins;
3. *rotation*: the winning rotation is applied to the tuple's rows and columns
   (O(k m)), the wavelet's exact row energy is recorded and it leaves the
   active set;
4. *cache update*: tuples disjoint from the winner are down-dated exactly in
   O(k^2) each (their Gram loses the wavelet's column), tuples that met the
   winner are rebuilt.

The compression is compacted in place whenever half of it has become wavelets,
so the work per level shrinks with the active set.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from mmf_stream import _kernels as K

#: candidates rescored exactly at each level (cheap; guards against drift of
#: the cached scores and lets the multi-start wavelet optimiser choose)
_RESCORE = 2
#: iterations of the wavelet-direction refinement
_MAX_ITER = 10
#: refinement iterations for cached (estimated) candidates
_REBUILD_ITER = 1
#: Jacobi vectors refined when a candidate is rescored exactly
_STARTS = 2


@dataclass
class RawFactorization:
    """Arrays produced by the engine (original indices)."""

    tuples: np.ndarray  # (L, k) int64
    wavelets: np.ndarray  # (L,) int64
    rotations: np.ndarray  # (L, k, k) float64
    level_errors: np.ndarray  # (L,) float64: squared Frobenius error of each level
    diagonal: np.ndarray  # (m,) float64: diagonal of the final compression
    core: np.ndarray  # (d,) int64
    core_block: np.ndarray  # (d, d) float64
    #: insertion state: snapshots (levels before it, active indices, their block of
    #: the compression), shallowest first
    snapshots: list = field(default_factory=list)


@njit(cache=True, inline="always")
def _build_candidate(matrix, scale, active, pivot, k, starts, max_iter):
    neighbours = K.nearest_neighbours(matrix[pivot], scale, active, pivot, k - 1)
    t = np.empty(k, dtype=np.int64)
    t[0] = pivot
    for i in range(k - 1):  # loops, not array assignment: much less to compile
        t[1 + i] = neighbours[i]
    gram = K.tuple_gram(matrix, t)
    block = K.tuple_block(matrix, t)
    direction, energy = K.wavelet_direction(gram, block, starts, max_iter)
    return t, gram, direction, max(energy, 0.0)


@njit(cache=True)
def _rebuild(matrix, energy, active, pivots, k, tuples, grams, directions, scores):
    scale = np.empty(energy.shape[0])
    for j in range(energy.shape[0]):
        scale[j] = 1.0 / np.sqrt(energy[j]) if energy[j] > 0.0 else 0.0
    for p in pivots:
        # int64, not literal, arguments: wavelet_direction is compiled once
        t, gram, direction, value = _build_candidate(
            matrix, scale, active, p, k, np.int64(1), np.int64(_REBUILD_ITER)
        )
        for a in range(k):
            tuples[p, a] = t[a]
            directions[p, a] = direction[a]
            for b in range(k):
                grams[p, a, b] = gram[a, b]
        scores[p] = value


@njit(cache=True)
def _apply_level(matrix, energy, active, t, rotation, pos):
    """Rotate tuple ``t``; return (wavelet position, its diagonal, its squared row
    energy over the active set, its rotated column)."""
    old_rows = np.empty((t.shape[0], matrix.shape[1]))
    for a in range(t.shape[0]):
        for j in range(matrix.shape[1]):
            old_rows[a, j] = matrix[t[a], j]
    new_rows = K.rotate_tuple_rows(old_rows, t, rotation)
    K.write_tuple_rows(matrix, 0, t, new_rows)
    K.update_row_energy(energy, old_rows, new_rows, t, active)
    s = t[pos]
    row = new_rows[pos]
    total = 0.0
    for j in range(row.shape[0]):
        if active[j] and j != s:
            total += row[j] * row[j]
    return s, row[s], total, row.copy()


def _compact(buffer: np.ndarray, n: int, active: np.ndarray):
    keep = np.flatnonzero(active)
    m = K.compact_square(buffer, n, keep)
    return keep, m


def greedy_factorize(
    matrix: np.ndarray,
    order: int,
    levels: int,
    *,
    candidates: str = "neighbors",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    snapshot_sizes: tuple[int, ...] = (),
) -> RawFactorization:
    """Run the greedy level loop on a symmetric float64 matrix.

    ``matrix`` is consumed: it is used as the working buffer. ``progress`` is
    called with the number of levels completed since its last call. For each of
    ``snapshot_sizes``, the active block of the compression is copied when that
    many indices are still active (the insertion state of incremental MMF).
    """
    m = matrix.shape[0]
    k = order
    rng = np.random.default_rng(seed)
    buffer = matrix.reshape(-1)
    n = m
    work = matrix
    positions = np.arange(m, dtype=np.int64)  # position -> original index
    active = np.ones(m, dtype=np.bool_)
    energy = K.row_energies(work)
    tie_break = rng.permutation(m).astype(np.float64)

    tuples_out = np.empty((levels, k), dtype=np.int64)
    wavelets_out = np.empty(levels, dtype=np.int64)
    rotations_out = np.empty((levels, k, k))
    errors_out = np.empty(levels)
    diagonal = np.zeros(m)

    exhaustive = candidates == "exhaustive"
    if not exhaustive:
        tuples = np.zeros((m, k), dtype=np.int64)
        grams = np.zeros((m, k, k))
        directions = np.zeros((m, k))
        scores = np.full(m, np.inf)
        stale = np.zeros(m, dtype=np.bool_)
        _rebuild(work, energy, active, np.arange(m), k, tuples, grams, directions, scores)

    wanted = {int(size) for size in snapshot_sizes if k - 1 < int(size) <= m}
    snapshots = []
    if m in wanted:
        snapshots.append((0, positions.copy(), work.copy()))
    pending = 0
    for level in range(levels):
        if exhaustive:
            t, direction = _best_exhaustive(work, active, k)
        else:
            t, direction = _best_cached(
                work, energy, active, stale, tie_break, tuples, grams, directions, scores, k
            )
        block = K.tuple_block(work, t)
        rotation, pos = K.rotation_from_wavelet(direction, block)
        s, diag_s, row_energy, column = _apply_level(work, energy, active, t, rotation, pos)
        tuples_out[level] = positions[t]
        wavelets_out[level] = positions[s]
        rotations_out[level] = rotation
        errors_out[level] = 2.0 * row_energy
        diagonal[positions[s]] = diag_s
        if not exhaustive:
            K.candidate_downdate(tuples, grams, directions, scores, active, stale, t, column)
        K.remove_index(work, energy, active, s)
        if not exhaustive:
            stale &= active

        n_active = m - level - 1
        if n_active in wanted:
            live = np.flatnonzero(active)
            snapshots.append((level + 1, positions[live].copy(), work[np.ix_(live, live)].copy()))
        if n_active * 2 <= n and n >= 64 and level + 1 < levels:
            previous = n
            keep, n = _compact(buffer, n, active)
            work = buffer[: n * n].reshape(n, n)
            positions = positions[keep]
            energy = energy[keep]
            tie_break = tie_break[keep]
            active = np.ones(n, dtype=np.bool_)
            if not exhaustive:
                remap = np.full(previous, -1, dtype=np.int64)
                remap[keep] = np.arange(n)
                tuples = remap[tuples[keep]]
                stale = stale[keep]
                grams = grams[keep]
                directions = directions[keep]
                scores = scores[keep]
        pending += 1
        if progress is not None and (pending >= 64 or level + 1 == levels):
            progress(pending)
            pending = 0

    core_pos = np.flatnonzero(active)
    core = positions[core_pos]
    core_block = work[np.ix_(core_pos, core_pos)].copy()
    diagonal[core] = np.diagonal(core_block)
    return RawFactorization(
        tuples=tuples_out,
        wavelets=wavelets_out,
        rotations=rotations_out,
        level_errors=errors_out,
        diagonal=diagonal,
        core=core,
        core_block=core_block,
        snapshots=snapshots,
    )


def _best_cached(work, energy, active, stale, tie_break, tuples, grams, directions, scores, k):
    """Select the level's tuple from the candidate cache.

    Stale candidates (their tuple met an earlier winner) are rebuilt first; the
    best ``_RESCORE`` are then rescored exactly.
    """
    rebuild = np.flatnonzero(active & stale)
    if rebuild.size:
        _rebuild(work, energy, active, rebuild, k, tuples, grams, directions, scores)
        stale[rebuild] = False
    top = K.smallest_scores(scores, active, tie_break, _RESCORE)
    best = None
    for p in top:
        t = tuples[p]
        gram = K.tuple_gram(work, t)
        block = K.tuple_block(work, t)
        direction, value = K.wavelet_direction(gram, block, _STARTS, _MAX_ITER)
        grams[p] = gram
        directions[p] = direction
        scores[p] = max(value, 0.0)
        if best is None or value < best[0]:
            best = (value, t.copy(), direction)
    return best[1], best[2]


def _best_exhaustive(work, active, k):
    best = None
    for combo in itertools.combinations(np.flatnonzero(active).tolist(), k):
        t = np.array(combo, dtype=np.int64)
        gram = K.tuple_gram(work, t)
        block = K.tuple_block(work, t)
        direction, energy = K.wavelet_direction(gram, block, k, _MAX_ITER)
        if best is None or energy < best[0] - 1e-12 * max(abs(best[0]), 1e-300):
            best = (energy, t, direction)
    return best[1], best[2]
