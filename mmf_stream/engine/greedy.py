"""The greedy level loop, over any compression (:mod:`mmf_stream.engine.compression`).

Each level (docs/math.md, sections 1-3) is four steps:

1. *candidates*: every active position is a pivot; its tuple is the pivot and
   its ``k - 1`` most strongly coupled active neighbours. Each candidate's
   Gram over the active set, wavelet direction and error are cached;
2. *scoring*: the best cached candidates are rescored exactly from the current
   compression and the wavelet direction re-optimised; the smallest error wins;
3. *rotation*: the compression applies the winning rotation, reports the
   wavelet's exact row energy over the active set, and the wavelet leaves;
4. *cache update*: candidates disjoint from the winner are down-dated exactly
   in O(k^2) each (their Gram loses the wavelet's column); candidates that met
   the winner go stale. Few stale candidates are rebuilt at once; many (the
   hub classes of uncentred class covariances) are rebuilt lazily, only when
   they reach the top of the ranking, at most ``options.max_rebuilds`` a level.

Compressions that can shrink are compacted whenever half of their positions
have become wavelets, so the work per level shrinks with the active set.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from mmf_stream.engine import gram_kernels as GK
from mmf_stream.engine import kernels as K
from mmf_stream.engine.options import DEFAULT_OPTIONS, EngineOptions
from mmf_stream.engine.raw import RawFactorization, Snapshot

#: stale candidates examined per round of a lazy refresh
_LAZY_WINDOW = 16
#: a compression is compacted once this fraction of its positions are wavelets
#: (and it has at least ``_COMPACT_MIN`` positions)
_COMPACT_FRACTION = 0.5
_COMPACT_MIN = 64
#: the values of ``greedy_levels(decoupled=...)``
DECOUPLED_RULES = (None, "stop", "skip")


class LevelLog:
    """Levels in original indices, in the order they were applied."""

    def __init__(self, size: int, order: int, capacity: int) -> None:
        self.tuples = np.empty((capacity, order), dtype=np.int64)
        self.wavelets = np.empty(capacity, dtype=np.int64)
        self.rotations = np.empty((capacity, order, order))
        self.errors = np.empty(capacity)
        self.diagonal = np.zeros(size)
        self.count = 0

    def add(self, t: np.ndarray, s: int, rotation: np.ndarray, squared_error: float, diagonal: float) -> None:
        i = self.count
        self.tuples[i] = t
        self.wavelets[i] = s
        self.rotations[i] = rotation
        self.errors[i] = squared_error
        self.diagonal[s] = diagonal
        self.count += 1

    def finish(self, compression) -> RawFactorization:
        """The levels so far, with the compression's active positions as the core."""
        live = np.flatnonzero(compression.active)
        core = compression.index[live]
        core_block = compression.active_block()
        ordering = np.argsort(core)
        core = core[ordering]
        core_block = core_block[np.ix_(ordering, ordering)]
        self.diagonal[core] = np.diagonal(core_block)
        n = self.count
        return RawFactorization(
            tuples=self.tuples[:n].copy(),
            wavelets=self.wavelets[:n].copy(),
            rotations=self.rotations[:n].copy(),
            level_errors=self.errors[:n].copy(),
            diagonal=self.diagonal,
            core=core,
            core_block=core_block,
        )


class CandidateCache:
    """One candidate tuple per position, with its Gram, wavelet direction and error.

    With ``fresh`` (a mask of the positions never rotated so far: the
    ``"faithful"`` neighbour rule of :class:`EngineOptions`), a fresh pivot's
    tuple is itself and its most similar active positions in its identity
    list (``lists``, computed once from the rows as they are when the cache is
    made); every other pivot takes the energy rule among rotated positions.
    """

    def __init__(self, n: int, order: int, fresh: np.ndarray | None = None) -> None:
        self.tuples = np.zeros((n, order), dtype=np.int64)
        self.grams = np.zeros((n, order, order))
        self.directions = np.zeros((n, order))
        self.scores = np.full(n, np.inf)
        self.stale = np.zeros(n, dtype=np.bool_)
        self.fresh = fresh
        self.lists: np.ndarray | None = None

    def make_lists(self, compression, count: int) -> None:
        """Identity lists of the fresh positions (from the compression's current rows)."""
        self.lists = np.full((compression.n, count), -1, dtype=np.int64)
        fresh = np.flatnonzero(self.fresh & compression.active)
        if fresh.size:
            self.lists[fresh] = compression.identity_lists(fresh, count)

    def rebuild(self, compression, pivots: np.ndarray, order: int, iterations: int) -> None:
        if self.fresh is None:
            compression.rebuild(pivots, order, self.tuples, self.grams, self.directions, self.scores, iterations)
            self.stale[pivots] = False
            return
        pivots = np.asarray(pivots, dtype=np.int64)
        listed = pivots[self.fresh[pivots]]
        rest = pivots[~self.fresh[pivots]]
        if listed.size:
            tuples, ok = K.tuples_from_lists(self.lists, compression.active, listed, order)
            rest = np.concatenate([rest, listed[~ok]])
            listed, tuples = listed[ok], tuples[ok]
        if listed.size:
            grams, blocks = compression.tuple_inputs(tuples)
            directions = np.empty((listed.shape[0], order))
            scores = np.empty(listed.shape[0])
            GK.score_candidates(grams, blocks, iterations, directions, scores)
            self.tuples[listed] = tuples
            self.grams[listed] = grams
            self.directions[listed] = directions
            self.scores[listed] = scores
        if rest.size:
            compression.rebuild(np.sort(rest), order, self.tuples, self.grams, self.directions, self.scores,
                                iterations, self.fresh)
        self.stale[pivots] = False

    def compact(self, keep: np.ndarray, previous: int) -> None:
        remap = np.full(previous, -1, dtype=np.int64)
        remap[keep] = np.arange(keep.shape[0])
        if self.fresh is not None:
            self.fresh = self.fresh[keep]
            lists = self.lists[keep]
            self.lists = np.where(lists >= 0, remap[np.maximum(lists, 0)], -1)
        self.tuples = remap[self.tuples[keep]]
        self.stale = self.stale[keep]
        self.grams = self.grams[keep]
        self.directions = self.directions[keep]
        self.scores = self.scores[keep]


def greedy_levels(
    compression,
    order: int,
    n_levels: int,
    log: LevelLog,
    *,
    tie_break: np.ndarray,
    options: EngineOptions = DEFAULT_OPTIONS,
    exhaustive: bool = False,
    progress: Callable[[int], None] | None = None,
    snapshot_sizes: tuple[int, ...] = (),
    snapshots: list[Snapshot] | None = None,
    fresh: np.ndarray | None = None,
    decoupled: str | None = None,
) -> np.ndarray:
    """Run ``n_levels`` greedy levels on ``compression``, appending them to ``log``.

    ``tie_break`` (one value per position) orders candidates of equal score.
    ``fresh`` marks the positions never rotated before (default: all of
    them); the ``"faithful"`` neighbour rule (``options.neighbours``) uses a
    copy of it.
    ``decoupled`` (a staged cluster, :data:`DECOUPLED_RULES`) handles a
    winning tuple that falls apart into groups with no coupling between them
    (:func:`is_decoupled` with ``options.decoupled_tolerance``; None there:
    never): such a tuple is a smaller one padded with unrelated rows, because
    the cluster holds too few rows of the pivot's group. ``"stop"``: the loop
    stops before it; ``"skip"``: its pivot is passed over for the rest of the
    run, and the loop stops when every candidate left is passed over; None:
    no check. Either way fewer than ``n_levels`` levels may be run; the rows
    left stay active for the next stage, whose clusters are formed anew.
    For each of ``snapshot_sizes``, a :class:`Snapshot` of the compression is
    appended to ``snapshots`` when that many positions are still active.
    Returns ``tie_break`` for the compression's positions at the end (it
    follows compactions).
    """
    k = order
    if options.neighbours == "energy" or exhaustive:
        fresh = None
    elif fresh is None:
        fresh = np.ones(compression.n, dtype=np.bool_)
    else:
        fresh = np.array(fresh, dtype=np.bool_)
    cache = None if exhaustive else CandidateCache(compression.n, k, fresh)
    if cache is not None:
        if fresh is not None:
            cache.make_lists(compression, options.identity_list)
        cache.rebuild(compression, np.flatnonzero(compression.active), k, options.rebuild_iter)
    n_active = int(np.count_nonzero(compression.active))
    wanted = {int(size) for size in snapshot_sizes}
    pending = 0
    if decoupled not in DECOUPLED_RULES:
        raise ValueError(f"decoupled must be one of {DECOUPLED_RULES}, got {decoupled!r}")
    skip_decoupled = decoupled is not None and cache is not None and options.decoupled_tolerance is not None
    passed = np.zeros(compression.n, dtype=np.bool_) if skip_decoupled else None  # pivots of decoupled tuples
    for level in range(n_levels):
        if exhaustive:
            t, direction = _best_exhaustive(compression, k, options)
            block = compression.block(t)
        elif not skip_decoupled:
            t, direction, _ = _best_cached(compression, cache, tie_break, k, options)
            block = compression.block(t)
        else:
            while True:
                chosen = _best_cached(compression, cache, tie_break, k, options, passed)
                if chosen is None:
                    break
                t, direction, pivot = chosen
                block = compression.block(t)
                # the winner's Gram was just computed exactly (cache.grams[pivot]): not again
                if not is_decoupled(cache.grams[pivot], block, options.decoupled_tolerance):
                    break
                if decoupled == "stop":
                    chosen = None
                    break
                passed[pivot] = True
            if chosen is None:  # decoupled (every candidate left, for "skip"): the rows wait for the next stage
                break
        rotation, pos = K.rotation_from_wavelet(direction, block)
        s, diag_s, row_energy, column = compression.rotate(t, rotation, pos)
        log.add(compression.index[t], int(compression.index[s]), rotation, 2.0 * row_energy, diag_s)
        if cache is not None:
            K.candidate_downdate(cache.tuples, cache.grams, cache.directions, cache.scores, compression.active,
                                 cache.stale, t, column)
            if cache.fresh is not None:
                cache.fresh[t] = False
        compression.remove(s, column)
        if cache is not None:
            cache.stale &= compression.active
        n_active -= 1
        if snapshots is not None and n_active in wanted:
            snapshots.append(compression.snapshot(log.count))
        n = compression.n
        if n_active <= _COMPACT_FRACTION * n and n >= _COMPACT_MIN and level + 1 < n_levels:
            keep = np.flatnonzero(compression.active)
            compression.compact(keep)
            tie_break = tie_break[keep]
            if cache is not None:
                cache.compact(keep, n)
            if passed is not None:
                passed = passed[keep]
        pending += 1
        if progress is not None and (pending >= 64 or level + 1 == n_levels):
            progress(pending)
            pending = 0
    return tie_break


def is_decoupled(gram: np.ndarray, block: np.ndarray, tolerance: float) -> bool:
    """Whether a tuple's members fall apart into groups with no coupling between them.

    Parameters
    ----------
    gram : ndarray, shape (k, k)
        The tuple's Gram over the active set, ``C[t, S] C[S, t]``.
    block : ndarray, shape (k, k)
        ``C[t, t]``.
    tolerance : float
        Members ``i, j`` are coupled when ``|gram[i, j]|`` exceeds ``tolerance``
        times ``sqrt(gram[i, i] gram[j, j])`` or ``|block[i, j]|`` exceeds it
        times ``sqrt(|block[i, i] block[j, j]|)``
        (``EngineOptions.decoupled_tolerance``).

    Returns
    -------
    bool
        True when the graph whose edges are the coupled pairs is disconnected.
    """
    k = gram.shape[0]
    g_scale = np.sqrt(np.maximum(np.diagonal(gram), 0.0))
    a_scale = np.sqrt(np.abs(np.diagonal(block)))
    coupled = (np.abs(gram) > tolerance * np.outer(g_scale, g_scale)) | (
        np.abs(block) > tolerance * np.outer(a_scale, a_scale))
    reached = np.zeros(k, dtype=np.bool_)
    reached[0] = True
    frontier = [0]
    while frontier:
        i = frontier.pop()
        new = np.flatnonzero(coupled[i] & ~reached)
        reached[new] = True
        frontier.extend(new.tolist())
    return not bool(reached.all())


def _ranked(cache: CandidateCache, active: np.ndarray) -> np.ndarray:
    """The scores the level ranks: under the ``"faithful"`` rule, only fresh pivots' candidates
    while any fresh index is active (every index's first tuple comes before any tuple of rotated
    indices alone, so a class meets its nearest classes before they are removed)."""
    if cache.fresh is None:
        return cache.scores
    fresh_active = cache.fresh & active
    if not fresh_active.any():
        return cache.scores
    return np.where(fresh_active, cache.scores, np.inf)


def _best_cached(compression, cache: CandidateCache, tie_break, k, options: EngineOptions,
                 passed: np.ndarray | None = None):
    """Select the level's tuple from the candidate cache: ``(tuple, direction, pivot)``.

    Pivots marked in ``passed`` are not ranked; None when no pivot is left.

    Stale candidates are rebuilt first: all of them when at most
    ``options.eager_rebuilds``; else that many with the best estimated scores,
    then lazily those reaching the top of the ranking (``options.max_rebuilds``
    at most);
    the best ``options.rescore`` are then rescored exactly.
    """
    stale = cache.stale
    rebuild = np.flatnonzero(compression.active & stale)
    active = compression.active if passed is None else compression.active & ~passed
    if rebuild.size <= options.eager_rebuilds:
        if rebuild.size:
            cache.rebuild(compression, rebuild, k, options.rebuild_iter)
    else:  # bounded: the most promising stale candidates now, the others when they reach the top
        promising = rebuild[np.argpartition(cache.scores[rebuild], options.eager_rebuilds - 1)[: options.eager_rebuilds]]
        cache.rebuild(compression, promising, k, options.rebuild_iter)
        budget = options.max_rebuilds
        window = max(options.rescore, _LAZY_WINDOW)
        while budget > 0:
            top = K.smallest_scores(_ranked(cache, active), active, tie_break, window)
            todo = top[stale[top]][:budget]
            if not todo.size:
                break
            cache.rebuild(compression, todo, k, options.rebuild_iter)
            budget -= todo.size
    # fewer fresh pivots than ``rescore``: the window is filled with rotated ones, which may win
    # on the exact score (the last never-rotated indices then meet their tuple a little later)
    top = K.smallest_scores(_ranked(cache, active), active, tie_break, options.rescore)
    unusable = top[stale[top]]  # the lazy budget ran out: a stale tuple may hold a removed index
    if unusable.size:
        cache.rebuild(compression, unusable, k, options.rebuild_iter)
    best = None
    for p in top:
        t = cache.tuples[p]
        gram = compression.gram(t)
        block = compression.block(t)
        direction, value = K.wavelet_direction(gram, block, options.starts, options.max_iter)
        cache.grams[p] = gram
        cache.directions[p] = direction
        cache.scores[p] = max(value, 0.0)
        if best is None or value < best[0]:
            best = (value, t.copy(), direction, int(p))
    if best is None:
        return None
    return best[1], best[2], best[3]


def _best_exhaustive(compression, k, options: EngineOptions):
    best = None
    for combo in itertools.combinations(np.flatnonzero(compression.active).tolist(), k):
        t = np.array(combo, dtype=np.int64)
        gram = compression.gram(t)
        block = compression.block(t)
        direction, energy = K.wavelet_direction(gram, block, k, options.max_iter)
        if best is None or energy < best[0] - 1e-12 * max(abs(best[0]), 1e-300):
            best = (energy, t, direction)
    return best[1], best[2]
