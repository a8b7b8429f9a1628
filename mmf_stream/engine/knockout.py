"""Knock-out of classes: an exact MMF of the covariance with some rows/columns deleted.

Method (docs/math.md, sections 2, 4, 6, 9 and 10). Let ``X`` be the removed indices
and ``c`` the level of the deepest insertion snapshot (the *cut*); as for an
insertion, the levels from the cut on are recomputed on the snapshot, and the
levels before it are kept, changed only where ``X`` forces it.

*Plan* (data free, :func:`plan_removal`). A level before the cut whose tuple
misses ``X`` keeps its tuple and rotation. A level holding a removed member
keeps its wavelet; the removed member is replaced in the tuple by an active
*padding* index on which the rotation is the identity, and the rotation of
the remaining members is chosen afresh (below). A level whose wavelet was
removed becomes a *rotation-only level* (wavelet -1, error 0): its remaining
members keep a rotation, so every later level still sees the rows it was
chosen for. (Giving such a level another member as its wavelet instead makes
that member leave early and loses the row the later levels expected: on
planted hierarchies that multiplied the error by 2-90 after 1% removals.) A
level with no member left is dropped.

*Ghost run.* Keep the removed indices as zero rows. The new run differs from
the old one only at the *modified* levels. Its rows differ from the old rows
by ``Delta = P Z``: ``Z`` (R x D) holds one row per *seed* (``-m_x`` for each
removed mean at time 0, and ``(O'_l - O_l) Y'_t`` for each row of a modified
level's tuple) and the column of ``P`` (m x R) for a seed is the unit vector
of its row propagated through the old rotations after the seed's level up to
the cut (an O(k^2 R) scalar sweep per level, skipping levels the propagated
vectors do not reach). The old rows a modified level needs follow from the
rows at the cut (``Y_t(l) = P_l' Y(c)``: the final rows of the indices that
left before the cut, the snapshot's rows for the others), so old
intermediate rows are never stored.

*Rotations of modified levels.* The wavelet direction is optimised on the
remaining members (docs/math.md, section 2: their exact rows, their Gram with
the active set taken from the old rows), and the other rows are the nearest
ones to the old rotation's rows (each member keeps the row the later levels
were chosen for); the nearest rotation to the old block when that scores
better.

*Exact level errors.* ``r_l^2 = f_s' W_{S_l} f_s`` (section 4, ``W_{S_l}`` the
Gram of the rows still active after level ``l``, at the cut). With
``F' = F + P Z``,

    r'_l^2 = r_l^2 + 2 u_s . (f_s' K_l) + u_s' N_l u_s,

where ``v_j = [P_j, Z f_j]``, ``u_s = [Z f_s + Z Z' P_s, P_s]``, ``K_l =
sum_{j in S_l} f_j v_j'`` and ``N_l = sum_{j in S_l} v_j v_j'``: suffix sums,
swept backward from the cut in blocks of levels (BLAS products). Levels
before the first modified one only lose ``(f_s . m_x)^2`` per removed ``x``.
The tail from the cut is an ordinary exact run.

*Waking* (:func:`_wake`). The removed mean's contribution, propagated through
the kept rotations, couples many earlier wavelets to the rest (above all to the
core, which carries the classes' shared offset): one removal could add as much
error as the whole factorization had. The wavelets whose error grew most (the
fewest holding ``removal_wake_capture`` of the growth, at most
``removal_wake_budget``) are woken: their levels become rotation-only and their
rows, final since those levels, join the tail, which re-runs them with the
others. Exact: each later level before the cut adds ``2 (f_s . f_w)^2`` for
every woken ``w`` that left before it (O(L D r) for ``r`` woken rows). Both
role-swap plans are scored first and the one with the lower error before the
cut is woken and finished.

Cost per removal: O(m D) for
the rows, O((c - l_1)(R D + B D)) for the sweep (``l_1`` the first level
holding a removed index, ``R`` = 1 + ``k`` times the levels holding it, ``B`` =
:data:`ERROR_BLOCK`), plus the tail.

Dense results need the matrix itself (the compression's dropped entries are
not kept): :func:`remove_dense` replays the planned levels on it exactly
(O(k m^2)) and re-runs the tail.

The index order of the result is the caller's: ``new_index[i]`` is the new
index of old index ``i`` (-1 for removed ones); :func:`compact_index` and
:func:`swap_last_index` build the two usual ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from mmf_stream.engine.insertion import keep_two, permute, renumber, snapshot_for_cut
from mmf_stream.engine.kernels import rotate_rows_inplace
from mmf_stream.engine.options import DEFAULT_OPTIONS, EngineOptions
from mmf_stream.engine.raw import InsertionState, RawFactorization, Snapshot
from mmf_stream.engine.schedule import factor_dense, factor_means, never_rotated, resolve_schedule, snapshot_sizes

#: levels per block of the backward error sweep (BLAS products of this many rows)
ERROR_BLOCK = 128
#: at most this many seeds (columns of ``P``) per pass; larger removals run in several passes
MAX_SEEDS = 192


# ------------------------------------------------------------------ index maps
def compact_index(size: int, removed: np.ndarray) -> np.ndarray:
    """``new_index`` keeping the remaining indices in their original relative order."""
    keep = np.ones(size, dtype=np.bool_)
    keep[np.asarray(removed, dtype=np.int64)] = False
    new_index = np.full(size, -1, dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()), dtype=np.int64)
    return new_index


def swap_last_index(size: int, removed: np.ndarray) -> np.ndarray:
    """``new_index`` moving the last remaining indices into the removed slots.

    The removed slots below the new size, lowest first, receive the remaining
    indices at or above it, highest first (removing one index ``x`` moves the
    last index ``size - 1`` to ``x``). Every other index keeps its number, so
    only ``len(removed)`` stored rows change place.
    """
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    new_size = size - removed.shape[0]
    new_index = np.arange(size, dtype=np.int64)
    new_index[removed] = -1
    holes = removed[removed < new_size]
    movers = np.setdiff1d(np.arange(new_size, size, dtype=np.int64), removed)[::-1]
    new_index[movers] = holes
    new_index[new_size:][new_index[new_size:] >= new_size] = -1  # unreachable: movers cover them
    return new_index


def check_index(new_index: np.ndarray, size: int, removed: np.ndarray) -> np.ndarray:
    """Validate a caller's ``new_index``: -1 exactly at ``removed``, a bijection elsewhere."""
    new_index = np.asarray(new_index, dtype=np.int64)
    if new_index.shape != (size,):
        raise ValueError(f"new_index must have {size} entries, got shape {new_index.shape}")
    gone = np.flatnonzero(new_index < 0)
    if not np.array_equal(gone, np.unique(removed)):
        raise ValueError("new_index must be -1 exactly at the removed indices")
    kept = new_index[new_index >= 0]
    if not np.array_equal(np.sort(kept), np.arange(size - gone.shape[0])):
        raise ValueError("new_index must map the remaining indices onto 0..size-len(removed)-1")
    return new_index


# ------------------------------------------------------------------ role swap
@dataclass
class _Swapped:
    """The same factorization with roles swapped (:func:`swap_roles`): ``raw`` and ``snapshots`` are
    relabelled; index ``i``'s final row is ``sign[i] * final_rows[source[i]]`` of the original."""

    raw: RawFactorization
    snapshots: list
    source: np.ndarray
    sign: np.ndarray


def swap_roles(raw: RawFactorization, snapshots: list[Snapshot], removed: np.ndarray, cut: int) -> _Swapped:
    """Relabel the factorization (exactly: same matrix, same errors) so that each removed index leaves
    at its first level before the cut that has a wavelet.

    At that level ``l`` the removed ``x`` and the wavelet ``w`` swap their outputs (two rows of the
    rotation swap, one changes sign to keep the determinant): ``x`` becomes the wavelet and ``w``
    carries on in ``x``'s place (every later level naming ``x`` names ``w``). The knock-out then
    turns ``l`` into a rotation-only level: whatever the rotations routed through ``x``'s row after
    ``l`` stays, under ``w``'s name, so the later levels see nearly the rows they were chosen for.
    """
    size = raw.diagonal.shape[0]
    source = np.arange(size, dtype=np.int64)
    sign = np.ones(size)
    gone = set(np.asarray(removed).tolist())
    tuples = wavelets = rotations = diagonal = core = None
    snaps = list(snapshots)
    for x in sorted(gone):
        current = raw.tuples if tuples is None else tuples
        levels = np.flatnonzero((current[:cut] == x).any(axis=1))
        level = -1
        for candidate in levels.tolist():
            w = int((raw.wavelets if wavelets is None else wavelets)[candidate])
            if w == x:
                break
            if w >= 0 and w not in gone:
                level = candidate
                break
        if level < 0:
            continue
        if tuples is None:  # copy on first use
            tuples, wavelets, rotations = raw.tuples.copy(), raw.wavelets.copy(), raw.rotations.copy()
            diagonal, core = raw.diagonal.copy(), raw.core.copy()
        w = int(wavelets[level])
        t = tuples[level]
        px, pw = int(np.flatnonzero(t == x)[0]), int(np.flatnonzero(t == w)[0])
        rotations[level][[px, pw]] = rotations[level][[pw, px]]
        rotations[level][px] *= -1.0
        wavelets[level] = x
        later = tuples[level + 1:]
        later[later == x] = w
        tail_wavelets = wavelets[level + 1:]
        tail_wavelets[tail_wavelets == x] = w
        core[core == x] = w
        diagonal[[x, w]] = diagonal[[w, x]]
        source[[x, w]] = source[[w, x]]
        sign[x], sign[w] = -sign[w], sign[x]
        for number, snap in enumerate(snaps):
            if snap.level > level:
                indices = snap.indices.copy()
                indices[indices == x] = w
                snaps[number] = Snapshot(snap.level, indices, block=snap.block, rows=snap.rows)
    if tuples is None:
        return _Swapped(raw, snaps, source, sign)
    relabelled = RawFactorization(tuples=tuples, wavelets=wavelets, rotations=rotations,
                                  level_errors=raw.level_errors, diagonal=diagonal, core=core,
                                  core_block=raw.core_block)
    return _Swapped(relabelled, snaps, source, sign)


# ------------------------------------------------------------------------ plan
@dataclass
class RemovalPlan:
    """The levels before the cut, in old indices (data free).

    Attributes
    ----------
    removed : ndarray of int
        Sorted removed indices.
    cut : int
        Levels from this one on are recomputed.
    tuples, rotations, wavelets : ndarray
        Each old level's new tuple (padding indices in place of removed
        members), rotation (identity on paddings and on dropped levels; the
        sweep chooses the modified levels' rotations afresh) and wavelet (-1
        for a rotation-only level).
    dropped : ndarray of bool
        Levels that disappear (before the cut: no member left).
    modified : ndarray of int
        Levels before the cut holding a removed index, sorted.
    left_at : ndarray of int
        The level at which each index leaves (``L``: the core; -1: removed).
    first_level : int
        The first modified level (``cut`` when none).
    woken_at : ndarray of int or None
        Set by the wake step: each woken index's old level (-1 for the others).
    """

    removed: np.ndarray
    cut: int
    tuples: np.ndarray
    rotations: np.ndarray
    wavelets: np.ndarray
    dropped: np.ndarray
    modified: np.ndarray
    left_at: np.ndarray
    first_level: int
    woken_at: np.ndarray | None = None

    @property
    def rotation_only(self) -> int:
        """Levels before the cut that lost their wavelet."""
        kept = ~self.dropped[: self.cut]
        return int(np.count_nonzero((self.wavelets[: self.cut] < 0) & kept))


def death_levels(raw: RawFactorization) -> np.ndarray:
    """The level at which each index is a wavelet (``L`` for the core)."""
    death = np.full(raw.diagonal.shape[0], raw.wavelets.shape[0], dtype=np.int64)
    has = raw.wavelets >= 0
    death[raw.wavelets[has]] = np.flatnonzero(has)
    return death


def plan_removal(raw: RawFactorization, removed: np.ndarray, cut: int) -> RemovalPlan:
    """The levels before ``cut`` (old indices) after removing ``removed`` from ``raw``."""
    n_levels, k = raw.tuples.shape
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    gone = np.zeros(raw.diagonal.shape[0], dtype=np.bool_)
    gone[removed] = True
    death = death_levels(raw)
    left_at = death.copy()
    left_at[removed] = -1
    head = raw.tuples[:cut]
    modified = np.flatnonzero(gone[head].any(axis=1))
    wavelets = raw.wavelets.copy()
    dropped = np.zeros(n_levels, dtype=np.bool_)
    late = np.argsort(-left_at, kind="stable")  # paddings: active indices outside the tuple, latest leavers first
    tuples = raw.tuples.copy()
    rotations = raw.rotations.copy()
    eye = np.eye(k)
    for level in modified.tolist():
        t = raw.tuples[level]
        out = gone[t]
        live = np.flatnonzero(~out)
        if live.size == 0:
            dropped[level] = True
            rotations[level] = eye
            continue
        if wavelets[level] >= 0 and gone[wavelets[level]]:
            wavelets[level] = -1  # a rotation-only level
        rotation = eye.copy()
        rotation[np.ix_(live, live)] = nearest_rotation(raw.rotations[level][np.ix_(live, live)])
        rotations[level] = rotation
        members = set(t.tolist())
        cursor = 0
        for position in np.flatnonzero(out).tolist():
            while int(late[cursor]) in members:
                cursor += 1
            if left_at[late[cursor]] <= level:
                raise AssertionError("no active padding index")  # counting makes this impossible
            tuples[level, position] = late[cursor]
            members.add(int(late[cursor]))
    first = int(modified[0]) if modified.size else cut
    return RemovalPlan(removed, cut, tuples, rotations, wavelets, dropped, modified, left_at, first)


# ------------------------------------------------------------------- rotations
def nearest_rotation(block: np.ndarray) -> np.ndarray:
    """The rotation (orthogonal, det +1) nearest ``block`` in Frobenius norm."""
    if block.shape[0] == 1:
        return np.ones((1, 1))
    u, _, vt = np.linalg.svd(block)
    if np.linalg.det(u) * np.linalg.det(vt) < 0.0:
        u[:, -1] = -u[:, -1]  # flip the direction of the smallest singular value
    return u @ vt


# ---------------------------------------------------------------- ghost sweep
@njit(cache=True)
def _propagate(rows, support, tuples, rotations, start, stop):
    """Rotate ``rows`` (m x R) through levels ``start..stop-1``, skipping levels that
    miss ``support`` (the rows that may be non-zero), which grows as levels go by."""
    k = tuples.shape[1]
    tmp = np.empty((k, rows.shape[1]))
    for level in range(start, stop):
        t = tuples[level]
        hit = False
        for a in range(k):
            if support[t[a]]:
                hit = True
        if not hit:
            continue
        for a in range(k):
            support[t[a]] = True
        rotate_rows_inplace(rows, t, rotations[level], False, tmp)


@dataclass
class _Sweep:
    propagators: np.ndarray  # (m, R): every seed's propagator at the cut
    support: np.ndarray  # (m,) bool: rows any propagator reaches
    before: list  # per modified level: propagator values on its tuple just before it (k x R)
    at_snapshots: list  # per snapshot: propagator values on its indices at its level
    columns: np.ndarray  # first seed column of each modified level


def _sweep(raw: RawFactorization, plan: RemovalPlan, snapshots: list[Snapshot]) -> _Sweep:
    """Propagate the seeds' unit vectors through the old levels up to the cut (``snapshots``:
    those at or above the cut, the last one at it)."""
    size = raw.diagonal.shape[0]
    k = raw.tuples.shape[1]
    b = plan.removed.shape[0]
    columns = b + k * np.arange(plan.modified.shape[0], dtype=np.int64)
    rows = np.zeros((size, b + k * plan.modified.shape[0]))
    rows[plan.removed, np.arange(b)] = 1.0
    support = np.zeros(size, dtype=np.bool_)
    support[plan.removed] = True
    events = sorted([(int(level), 1, i) for i, level in enumerate(plan.modified.tolist())]
                    + [(int(snap.level), 0, i) for i, snap in enumerate(snapshots)])
    before: list = [None] * plan.modified.shape[0]
    at_snapshots: list = [None] * len(snapshots)
    position = plan.first_level
    for level, kind, number in events:
        if level > position:
            _propagate(rows, support, raw.tuples, raw.rotations, position, level)
            position = level
        if kind == 0:
            at_snapshots[number] = rows[snapshots[number].indices].copy()
            continue
        t = raw.tuples[level]
        before[number] = rows[t].copy()
        _propagate(rows, support, raw.tuples, raw.rotations, level, level + 1)
        support[t] = True
        rows[t, columns[number] + np.arange(k)] = 1.0
        position = level + 1
    return _Sweep(rows, support, before, at_snapshots, columns)


class _RowsAtCut:
    """The old rows at the cut: final rows of the indices that left before it, the snapshot's rows
    of those still active (their Gram is what every earlier level's error is measured against)."""

    def __init__(self, final_rows: np.ndarray, snapshot: Snapshot, source: np.ndarray, sign: np.ndarray) -> None:
        self.final = final_rows
        self.snapshot = snapshot
        self.source = source
        self.sign = sign
        self.swapped = np.flatnonzero((source != np.arange(source.shape[0])) | (sign != 1.0))
        self.where = np.full(final_rows.shape[0], -1, dtype=np.int64)
        self.where[snapshot.indices] = np.arange(snapshot.size)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        out = self.final[self.source[indices]] * self.sign[indices][:, None]
        where = self.where[indices]
        inside = where >= 0
        out[inside] = self.snapshot.rows[where[inside]]
        return out

    def times(self, matrix: np.ndarray) -> np.ndarray:
        """``rows @ matrix`` for every index (m x r)."""
        out = self.final @ matrix
        if self.swapped.size:
            out[self.swapped] = self.final[self.source[self.swapped]] @ matrix * self.sign[self.swapped][:, None]
        out[self.snapshot.indices] = self.snapshot.rows @ matrix
        return out

    def relocated(self, new_index: np.ndarray) -> np.ndarray:
        """The final rows placed as ``new_index`` says (the removed left out), roles swapped."""
        out = _relocate(self.final, new_index)
        moved = self.swapped[new_index[self.swapped] >= 0]
        out[new_index[moved]] = self.final[self.source[moved]] * self.sign[moved][:, None]
        return out


def _seed_rows(raw: RawFactorization, plan: RemovalPlan, sweep: _Sweep, old_rows: np.ndarray) -> np.ndarray:
    """``Z`` (R x D): ``-m_x`` for each removed index, then ``(O'_l - O_l) Y'_t`` per modified level.

    ``old_rows`` (R x D) is ``P' Y(c)``: the old row of each seed's index right after its level.
    Each modified level gets the rotation of its remaining members that takes their new rows
    nearest their old rows after the level (Procrustes: the later levels were chosen for those),
    written into ``plan.rotations``.
    """
    b = plan.removed.shape[0]
    k = raw.tuples.shape[1]
    seeds = np.zeros_like(old_rows)
    seeds[:b] = -old_rows[:b]  # p_x' Y(c) = m_x
    gone = np.zeros(raw.diagonal.shape[0], dtype=np.bool_)
    gone[plan.removed] = True
    for number, level in enumerate(plan.modified.tolist()):
        cols = sweep.columns[number] + np.arange(k)
        t = raw.tuples[level]
        after = old_rows[cols]  # old rows of t after the level
        prior = raw.rotations[level].T @ after + sweep.before[number] @ seeds  # the new rows before it
        prior[gone[t]] = 0.0  # exactly zero: the removed rows are ghosts
        if not plan.dropped[level]:
            live = np.flatnonzero(~gone[t])
            plan.rotations[level][np.ix_(live, live)] = nearest_rotation(after[live] @ prior[live].T)
        seeds[cols] = (plan.rotations[level] - raw.rotations[level]) @ prior
    return seeds


def _level_errors(raw: RawFactorization, plan: RemovalPlan, rows_at_cut: _RowsAtCut, propagators: np.ndarray,
                  seeds: np.ndarray, removed_means: np.ndarray) -> np.ndarray:
    """Exact squared error of every level before the cut in the new run (dropped levels: meaningless)."""
    cut, first = plan.cut, plan.first_level
    errors = raw.level_errors[:cut].copy()
    if first > 0:  # untouched levels lose the removed rows' couplings only
        coupling = rows_at_cut[np.maximum(raw.wavelets[:first], 0)] @ removed_means.T
        errors[:first] -= 2.0 * np.einsum("ij,ij->i", coupling, coupling) * (raw.wavelets[:first] >= 0)
    if first >= cut:
        return np.maximum(errors, 0.0)
    gram = seeds @ seeds.T

    def parts(indices):
        has = (indices >= 0)[:, None]  # rotation-only levels take no row out
        indices = np.maximum(indices, 0)
        f = rows_at_cut[indices] * has
        p = propagators[indices] * has
        a = f @ seeds.T
        return f, np.hstack([p, a]), np.hstack([a + p @ gram, p])

    _, v_cut, _ = parts(rows_at_cut.snapshot.indices)
    suffix = rows_at_cut.snapshot.rows.T @ v_cut  # K over the active set (D x 2R)
    outer = v_cut.T @ v_cut  # N (2R x 2R)
    stop = cut
    while stop > first:
        start = max(first, stop - ERROR_BLOCK)
        f, v, u = parts(raw.wavelets[start:stop])
        inner = np.triu(f @ f.T, 1)
        cross = np.triu(u @ v.T, 1)
        linear = f @ suffix + inner @ v
        quadratic = np.einsum("ij,ij->i", u @ outer, u) + np.einsum("ij,ij->i", cross, cross)
        errors[start:stop] += 2.0 * (2.0 * np.einsum("ij,ij->i", u, linear) + quadratic)
        suffix += f.T @ v
        outer += v.T @ v
        stop = start
    errors[plan.wavelets[:cut] < 0] = 0.0  # rotation-only levels drop nothing
    return np.maximum(errors, 0.0)


# --------------------------------------------------------------- factored results
@dataclass
class RemovalInfo:
    """What a removal did, in engine terms.

    Attributes
    ----------
    first_level : int
        Levels before this one kept their tuple, rotation and rows.
    cut_level : int
        Levels from this one (old numbering) were recomputed.
    modified_levels : int
        Levels before the cut whose rotation changed (including dropped ones).
    dropped_levels : int
        Levels before the cut that disappeared.
    rotation_only : int
        Levels before the cut that lost their wavelet (kept as rotations).
    woken : int
        Wavelets before the cut woken into the tail (factored results).
    removed_means : ndarray of shape (b, D) or None
        Factored results: the removed classes' means (original basis).
    couplings : ndarray of shape (b, m) or None
        Dense results: ``C[removed, :]`` in the old order.
    """

    first_level: int
    cut_level: int
    modified_levels: int
    dropped_levels: int
    rotation_only: int
    woken: int = 0
    removed_means: np.ndarray | None = None
    couplings: np.ndarray | None = None


def _plan_at_a_cut(raw: RawFactorization, snapshots: list[Snapshot], removed: np.ndarray, cut_index: int,
                   tail_floor: int) -> tuple[int, RemovalPlan]:
    """The plan at the given snapshot, or a shallower one when too few indices would be left below it."""
    while True:
        snap = snapshots[cut_index]
        plan = plan_removal(raw, removed, snap.level)
        remaining = int(np.count_nonzero(plan.left_at[snap.indices] >= snap.level))
        if remaining >= tail_floor or cut_index == 0:
            return cut_index, plan
        cut_index -= 1


def remove_means(raw: RawFactorization, state: InsertionState, order: int, removed: np.ndarray,
                 new_index: np.ndarray, *, shallow: bool = False, seed: int = 0,
                 options: EngineOptions = DEFAULT_OPTIONS) -> tuple[RawFactorization, InsertionState, RemovalInfo]:
    """Remove indices ``removed`` of a factored result (class means, ``C = M M'``) exactly.

    The levels before the cut are planned twice, with and without :func:`swap_roles` (whether a
    removed class's row after its first level is carried on by that level's wavelet or dropped),
    and the plan whose kept levels have the lower exact error is finished (its tail re-run): which
    is better depends on how much of that row was the removed class's own. Parameters and returns
    as :func:`knock_out_means`.
    """
    return knock_out_means(raw, state, order, removed, new_index, shallow=shallow, seed=seed, options=options,
                           swap=None)


@dataclass
class _Head:
    """A planned knock-out before its tail is re-run (:func:`_plan_head`)."""

    raw: RawFactorization
    snapshots: list
    cut_index: int
    plan: RemovalPlan
    rows_at_cut: _RowsAtCut
    sweep: _Sweep
    reached: np.ndarray
    seeds: np.ndarray
    removed_means: np.ndarray
    errors: np.ndarray

    @property
    def head_error(self) -> float:
        return float(np.sum(self.errors[~self.plan.dropped[: self.plan.cut]]))


def _plan_head(raw: RawFactorization, state: InsertionState, order: int, removed: np.ndarray, shallow: bool,
               options: EngineOptions, swap: bool) -> _Head | int:
    """Plan, sweep and score the levels before the cut; or the number of passes a removal of this
    many seeds needs (an int)."""
    size = raw.diagonal.shape[0]
    b = removed.shape[0]
    core_size = raw.core.shape[0]
    cut_index = snapshot_for_cut(state, size - b, shallow, options)
    swapped = swap_roles(raw, state.snapshots, removed, state.snapshots[cut_index].level if swap else 0)
    raw, snapshots = swapped.raw, swapped.snapshots
    cut_index, plan = _plan_at_a_cut(raw, snapshots, removed, cut_index, max(order, core_size + 1))
    if b > 1 and b + order * plan.modified.shape[0] > MAX_SEEDS:  # several passes keep P (m x R) small
        return -(-(b + order * plan.modified.shape[0]) // MAX_SEEDS)
    snap = snapshots[cut_index]
    rows_at_cut = _RowsAtCut(state.final_rows, snap, swapped.source, swapped.sign)
    sweep = _sweep(raw, plan, snapshots[: cut_index + 1])
    reached = np.flatnonzero(sweep.support)
    old_rows = sweep.propagators[reached].T @ rows_at_cut[reached]  # (R, D)
    seeds = _seed_rows(raw, plan, sweep, old_rows)
    removed_means = old_rows[:b].copy()
    errors = _level_errors(raw, plan, rows_at_cut, sweep.propagators, seeds, removed_means)
    return _Head(raw, snapshots, cut_index, plan, rows_at_cut, sweep, reached, seeds, removed_means, errors)


def knock_out_means(raw: RawFactorization, state: InsertionState, order: int, removed: np.ndarray,
                    new_index: np.ndarray, *, shallow: bool = False, seed: int = 0,
                    options: EngineOptions = DEFAULT_OPTIONS,
                    swap: bool | None = True) -> tuple[RawFactorization, InsertionState, RemovalInfo]:
    """Remove indices ``removed`` of a factored result (class means, ``C = M M'``) exactly.

    Parameters
    ----------
    raw, state : RawFactorization, InsertionState
        The factorization and its insertion state (``state.final_rows`` set).
    order : int
        The rotations' order ``k``.
    removed : ndarray of int
        Indices to remove (distinct).
    new_index : ndarray of int, shape (m,)
        New index of every old index, -1 for removed ones (see
        :func:`compact_index`, :func:`swap_last_index`).
    shallow : bool
        Recompute the levels from the shallow (repair) snapshot instead of the deepest.
    seed : int
        Seed of the tail's run.
    options : EngineOptions
    swap : bool or None
        Swap roles first (:func:`swap_roles`); None: plan both ways, finish the better.

    Returns
    -------
    raw, state, info
        The new factorization (``m - len(removed)`` indices, order as
        ``new_index`` says), its insertion state and a :class:`RemovalInfo`.
    """
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    heads = [_plan_head(raw, state, order, removed, shallow, options, choice)
             for choice in ((True, False) if swap is None else (swap,))]
    passes = max((h for h in heads if isinstance(h, int)), default=0)
    if passes:
        return _in_passes(raw, state, order, removed, new_index, -(-removed.shape[0] // passes), shallow, seed,
                          options, swap)
    head = min(heads, key=lambda h: h.head_error)
    woken, woken_rows = _wake(head, options)
    return _finish(head, woken, woken_rows, state, order, new_index, seed, options)


def _finish(head: _Head, woken: np.ndarray, woken_rows: np.ndarray, state: InsertionState, order: int,
            new_index: np.ndarray, seed: int, options: EngineOptions
            ) -> tuple[RawFactorization, InsertionState, RemovalInfo]:
    """Re-run the tail of a planned knock-out, with the woken rows, and assemble the result."""
    raw, plan, sweep, seeds, rows_at_cut = head.raw, head.plan, head.sweep, head.seeds, head.rows_at_cut
    snap = head.snapshots[head.cut_index]
    cut = snap.level
    new_size = raw.diagonal.shape[0] - plan.removed.shape[0]
    core_size = raw.core.shape[0]
    # the tail: the levels from the cut, recomputed on the new rows of the indices still active there
    in_tail = plan.left_at[snap.indices] >= cut
    tail_indices = np.concatenate([snap.indices[in_tail], woken])
    tail_rows = np.ascontiguousarray(np.vstack([(snap.rows + sweep.at_snapshots[-1] @ seeds)[in_tail], woken_rows]))
    n_tail = tail_indices.shape[0]
    wanted = tuple(s for s in snapshot_sizes(new_size, order, core_size, options) if s < n_tail)
    schedule = resolve_schedule("auto", n_tail, True, options)
    tail, tail_state = factor_means(tail_rows.copy(), order, n_tail - core_size, seed=seed, options=options,
                                    snapshot_sizes=wanted, schedule=schedule,
                                    fresh=never_rotated(plan.tuples[:cut], tail_indices))
    # rows that changed: those that left before the cut and were reached, then the tail's
    reached = head.reached
    departed = reached[(plan.left_at[reached] >= 0) & (plan.left_at[reached] < cut)]
    changed = rows_at_cut[departed] + sweep.propagators[departed] @ seeds
    final_rows = rows_at_cut.relocated(new_index)
    final_rows[new_index[departed]] = changed
    final_rows[new_index[tail_indices]] = tail_state.final_rows
    diagonal = raw.diagonal.copy()
    diagonal[departed] = np.einsum("ij,ij->i", changed, changed)
    diagonal[tail_indices] = tail.diagonal
    kept_levels = np.flatnonzero(~plan.dropped[:cut])
    result = _joined(plan, kept_levels, head.errors, diagonal, tail, tail_indices, new_index)
    kept = []
    for number, above in enumerate(head.snapshots[: head.cut_index]):
        rows = above.rows + sweep.at_snapshots[number] @ seeds
        active = plan.left_at[above.indices] >= above.level
        level = above.level - int(np.count_nonzero(plan.dropped[: above.level]))
        late = plan.woken_at[woken] < above.level  # a woken row is final from its old level on
        indices = np.concatenate([above.indices[active], woken[late]])
        rows = np.vstack([rows[active], woken_rows[late]])
        kept.append(Snapshot(level, new_index[indices], rows=np.ascontiguousarray(rows)))
    kept.append(Snapshot(kept_levels.shape[0], new_index[tail_indices], rows=tail_rows))
    kept += [Snapshot(kept_levels.shape[0] + deeper.level, new_index[tail_indices[deeper.indices]], rows=deeper.rows)
             for deeper in tail_state.snapshots]
    info = RemovalInfo(plan.first_level, cut, int(plan.modified.shape[0]), int(np.count_nonzero(plan.dropped[:cut])),
                       plan.rotation_only, removed_means=head.removed_means, woken=int(woken.shape[0]))
    return result, InsertionState(snapshots=keep_two(kept, new_size, options), final_rows=final_rows), info


def _wake(head: _Head, options: EngineOptions) -> tuple[np.ndarray, np.ndarray]:
    """Wake the wavelets before the cut whose error grew most (updates ``head.plan`` and ``head.errors``).

    A woken wavelet's level becomes rotation-only and its row (final from that level on, as no
    later level touches it) joins the tail. Exact: every later level before the cut now also
    couples to the woken rows, ``+ 2 (f_s . f_w)^2`` for each woken ``w`` that left before ``s``.
    Returns the woken indices (old numbering) and their rows.
    """
    raw, plan, errors, rows_at_cut, seeds = head.raw, head.plan, head.errors, head.rows_at_cut, head.seeds
    propagators = head.sweep.propagators
    cut = plan.cut
    plan.woken_at = np.full(raw.diagonal.shape[0], -1, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64), np.zeros((0, seeds.shape[1]))
    growth = errors - raw.level_errors[:cut]
    candidates = np.flatnonzero((plan.wavelets[:cut] >= 0) & ~plan.dropped[:cut] & (growth > 0))
    if options.removal_wake_budget == 0 or candidates.size == 0:
        return none
    ranked = candidates[np.argsort(-growth[candidates], kind="stable")]
    captured = np.cumsum(growth[ranked]) / float(np.sum(growth[ranked]))
    count = min(options.removal_wake_budget, int(np.searchsorted(captured, options.removal_wake_capture)) + 1)
    chosen = np.sort(ranked[:count])
    woken = plan.wavelets[chosen].copy()
    rows = rows_at_cut[woken] + propagators[woken] @ seeds
    levels = np.arange(int(chosen[0]) + 1, cut)  # only these levels come after a woken one
    wavelets = plan.wavelets[levels]
    has = wavelets >= 0
    levels, wavelets = levels[has], wavelets[has]
    couplings = rows_at_cut.times(rows.T)[wavelets] + propagators[wavelets] @ (seeds @ rows.T)  # one BLAS product
    couplings[levels[:, None] <= chosen[None, :]] = 0.0
    errors[levels] += 2.0 * np.einsum("ij,ij->i", couplings, couplings)
    errors[chosen] = 0.0
    plan.wavelets[chosen] = -1
    plan.left_at[woken] = raw.wavelets.shape[0]
    plan.woken_at[woken] = chosen
    return woken, rows


def _joined(plan: RemovalPlan, head: np.ndarray, errors: np.ndarray, diagonal: np.ndarray,
            tail: RawFactorization, tail_indices: np.ndarray, new_index: np.ndarray) -> RawFactorization:
    """The kept levels before the cut, then the recomputed tail, in the new indices."""
    core = new_index[tail_indices[tail.core]]
    ordering = np.argsort(core)
    keep = new_index >= 0
    new_diagonal = np.empty(int(np.count_nonzero(keep)))
    new_diagonal[new_index[keep]] = diagonal[keep]
    return RawFactorization(
        tuples=np.vstack([new_index[plan.tuples[head]], new_index[tail_indices[tail.tuples]]]).astype(np.int64),
        wavelets=np.concatenate([renumber(new_index, plan.wavelets[head]), new_index[tail_indices[tail.wavelets]]]),
        rotations=np.concatenate([plan.rotations[head], tail.rotations]),
        level_errors=np.concatenate([errors[head], tail.level_errors]),
        diagonal=new_diagonal,
        core=core[ordering],
        core_block=tail.core_block[np.ix_(ordering, ordering)],
    )


def _relocate(rows: np.ndarray, new_index: np.ndarray) -> np.ndarray:
    """``out[new_index[i]] = rows[i]`` for the remaining ``i``, with as little copying as the map allows."""
    keep = new_index >= 0
    new_size = int(np.count_nonzero(keep))
    removed = np.flatnonzero(~keep)
    if np.array_equal(new_index, compact_index(rows.shape[0], removed)):
        return np.delete(rows, removed, axis=0)
    out = rows[:new_size].copy()
    moved = np.flatnonzero(keep & (new_index != np.arange(rows.shape[0])))
    out[new_index[moved]] = rows[moved]
    return out


def _in_passes(raw, state, order, removed, new_index, per_pass, shallow, seed, options, swap):
    """Remove in several passes of at most ``per_pass`` indices, then place as ``new_index`` says."""
    alive = np.arange(raw.diagonal.shape[0], dtype=np.int64)  # current index -> original index
    means, infos = [], []
    for start in range(0, removed.shape[0], per_pass):
        current = np.flatnonzero(np.isin(alive, removed[start: start + per_pass]))
        step = compact_index(alive.shape[0], current)
        raw, state, info = knock_out_means(raw, state, order, current, step, shallow=shallow, seed=seed,
                                           options=options, swap=swap)
        alive = alive[step >= 0]
        means.append(info.removed_means)
        infos.append(info)
    target = new_index[alive]  # current (compact) index -> requested index
    if not np.array_equal(target, np.arange(target.shape[0])):
        raw, state = permute(raw, state, target)
    info = RemovalInfo(min(i.first_level for i in infos), min(i.cut_level for i in infos),
                       sum(i.modified_levels for i in infos), sum(i.dropped_levels for i in infos),
                       sum(i.rotation_only for i in infos), woken=sum(i.woken for i in infos),
                       removed_means=np.vstack(means))
    return raw, state, info


# ----------------------------------------------------------------------- dense
@njit(cache=True)
def _replay(matrix, active, tuples, rotations, wavelets, kept, start, stop, errors, diagonal):
    """Apply levels ``start..stop-1`` (kept ones) to the dense compression, recording each
    wavelet's exact squared error ``2 r^2`` and diagonal, and taking it out of the active set."""
    k = tuples.shape[1]
    n = matrix.shape[0]
    tmp = np.empty((k, n))
    for level in range(start, stop):
        if not kept[level]:
            continue
        t = tuples[level]
        rotate_rows_inplace(matrix, t, rotations[level], False, tmp)
        for a in range(k):  # columns: C <- C O' on the tuple's columns
            for r in range(n):
                total = 0.0
                for b in range(k):
                    total += matrix[r, t[b]] * rotations[level][a, b]
                tmp[a, r] = total
        for a in range(k):
            for r in range(n):
                matrix[r, t[a]] = tmp[a, r]
        s = wavelets[level]
        if s < 0:  # a rotation-only level
            errors[level] = 0.0
            continue
        energy = 0.0
        for j in range(n):
            if active[j] and j != s:
                energy += matrix[s, j] * matrix[s, j]
        errors[level] = 2.0 * energy
        diagonal[s] = matrix[s, s]
        active[s] = False


def remove_dense(raw: RawFactorization, state: InsertionState, order: int, removed: np.ndarray,
                 new_index: np.ndarray, matrix: np.ndarray, *, shallow: bool = False, seed: int = 0,
                 options: EngineOptions = DEFAULT_OPTIONS) -> tuple[RawFactorization, InsertionState, RemovalInfo]:
    """Remove indices ``removed`` of a dense result exactly, given its matrix ``C`` (m x m).

    The planned levels before the cut (:func:`plan_removal`) are replayed on
    ``C`` with the removed rows and columns zeroed (O(k m) a level), each
    modified level taking the rotation of its remaining members nearest the
    old run's rows (replayed alongside); the levels from the cut are
    recomputed on the active block. As :func:`remove_means`, with and without :func:`swap_roles`, keeping
    the lower error. Parameters and returns as :func:`remove_means`.
    """
    best = None
    for swap in (True, False):
        result = _knock_out_dense(raw, state, order, removed, new_index, matrix, shallow, seed, options, swap)
        if best is None or float(np.sum(result[0].level_errors)) < float(np.sum(best[0].level_errors)):
            best = result
    return best


def _knock_out_dense(raw, state, order, removed, new_index, matrix, shallow, seed, options, swap):
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    size = raw.diagonal.shape[0]
    new_size = size - removed.shape[0]
    core_size = raw.core.shape[0]
    cut_index = snapshot_for_cut(state, new_size, shallow, options)
    swapped = swap_roles(raw, state.snapshots, removed, state.snapshots[cut_index].level if swap else 0)
    raw, snapshots = swapped.raw, swapped.snapshots
    cut_index, plan = _plan_at_a_cut(raw, snapshots, removed, cut_index, max(order, core_size + 1))
    cut = snapshots[cut_index].level
    work = np.array(matrix, dtype=np.float64, order="C", copy=True)
    couplings = work[removed].copy()
    work[removed] = 0.0
    work[:, removed] = 0.0
    active = np.ones(size, dtype=np.bool_)
    active[removed] = False
    errors = np.zeros(cut)
    diagonal = raw.diagonal.copy()
    kept = ~plan.dropped
    # the old compression alongside, for the rows each modified level's rotation aims at (Procrustes)
    old_work = np.array(matrix, dtype=np.float64, order="C", copy=True)
    old_active = np.ones(size, dtype=np.bool_)
    scratch_errors, scratch_diagonal = np.zeros(raw.wavelets.shape[0]), np.zeros(size)
    everything = np.ones(raw.wavelets.shape[0], dtype=np.bool_)
    snapshot_levels = {int(s.level) for s in snapshots[:cut_index]}
    modified = set(int(level) for level in plan.modified.tolist() if not plan.dropped[level])
    columns = np.ones(size, dtype=np.bool_)
    columns[removed] = False
    blocks = {}
    position = 0
    for stop in sorted(snapshot_levels | modified | {cut}):
        _replay(work, active, plan.tuples, plan.rotations, plan.wavelets, kept, position, stop, errors, diagonal)
        _replay(old_work, old_active, raw.tuples, raw.rotations, raw.wavelets, everything, position, stop,
                scratch_errors, scratch_diagonal)
        position = stop
        if stop in snapshot_levels:
            live = np.flatnonzero(active)
            blocks[stop] = (live, work[np.ix_(live, live)].copy())
        if stop in modified and stop < cut:
            t = raw.tuples[stop]
            live = np.flatnonzero(columns[t])
            target = (raw.rotations[stop] @ old_work[t][:, columns])[live]
            plan.rotations[stop][np.ix_(live, live)] = nearest_rotation(target @ work[t[live]][:, columns].T)
            _replay(work, active, plan.tuples, plan.rotations, plan.wavelets, kept, stop, stop + 1, errors, diagonal)
            _replay(old_work, old_active, raw.tuples, raw.rotations, raw.wavelets, everything, stop, stop + 1,
                    scratch_errors, scratch_diagonal)
            position = stop + 1
    tail_indices = np.flatnonzero(active)
    block = work[np.ix_(tail_indices, tail_indices)].copy()
    n_tail = tail_indices.shape[0]
    wanted = tuple(s for s in snapshot_sizes(new_size, order, core_size, options) if s < n_tail)
    tail, tail_state = factor_dense(block.copy(), order, n_tail - core_size, seed=seed, options=options,
                                    snapshot_sizes=wanted, fresh=never_rotated(plan.tuples[:cut], tail_indices))
    diagonal[tail_indices] = tail.diagonal
    head = np.flatnonzero(~plan.dropped[:cut])
    result = _joined(plan, head, errors, diagonal, tail, tail_indices, new_index)
    kept = []
    for above in snapshots[:cut_index]:
        live, kept_block = blocks[int(above.level)]
        level = above.level - int(np.count_nonzero(plan.dropped[: above.level]))
        kept.append(Snapshot(level, new_index[live], block=kept_block))
    kept.append(Snapshot(head.shape[0], new_index[tail_indices], block=block))
    kept += [Snapshot(head.shape[0] + deeper.level, new_index[tail_indices[deeper.indices]], block=deeper.block)
             for deeper in tail_state.snapshots]
    info = RemovalInfo(plan.first_level, cut, int(plan.modified.shape[0]), int(np.count_nonzero(plan.dropped[:cut])),
                       plan.rotation_only, couplings=couplings)
    return result, InsertionState(snapshots=keep_two(kept, new_size, options)), info
