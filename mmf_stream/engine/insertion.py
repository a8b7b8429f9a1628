"""Incremental MMF on the engine's arrays: fold new rows/columns into a factorization.

Method (docs/math.md, section 6, with a different repair rule):

* A result keeps *snapshots*: the compression at a few cut levels (e.g. when
  30% of the indices and at most ``options.max_deep_snapshot`` are still
  active). Dense results keep the active block; factored results (class means,
  ``C = M M'``) keep the active rows of the rotated means, and every index's
  final rotated row.
* A new index ``z`` is active from the start. Every level before the cut keeps
  its tuple and rotation; the new column is rotated through them (dense) or,
  factored, its coupling with wavelet ``s_l`` is simply ``final_rows[s_l] @ mu``
  (no kept level rotates ``z``). That level's error grows by exactly twice the
  square of that coupling. Snapshots above the cut stay valid by appending
  ``z``'s row and column (dense) or its mean (factored).
* From the cut on, the levels are recomputed on the snapshot grown by ``z``
  (the "tail"). Every result is an exact MMF: the stated error equals the
  reconstruction error.
* Each insertion re-runs the tail from the deepest snapshot (cheap); a repair
  re-runs it from the shallowest.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mmf_stream.engine.kernels import rotate_rows_inplace
from mmf_stream.engine.options import DEFAULT_OPTIONS, EngineOptions
from mmf_stream.engine.raw import InsertionState, RawFactorization, Snapshot
from mmf_stream.engine.schedule import (factor_dense, factor_means, never_rotated, resolve_schedule, shallow_target,
                                       snapshot_sizes)


@njit(cache=True)
def head_pass(columns, tuples, rotations, wavelets, start, stop, extras):
    """Rotate the new columns through levels ``start..stop-1``; record dropped energy.

    ``columns`` (m x b) holds the new indices' columns in the current basis;
    ``extras[l]`` receives ``2 * sum_j columns[s_l, j]^2`` after level ``l``.
    """
    tmp = np.empty((tuples.shape[1], columns.shape[1]))
    for level in range(start, stop):
        rotate_rows_inplace(columns, tuples[level], rotations[level], False, tmp)
        s = wavelets[level]
        if s < 0:  # a rotation-only level (its wavelet was knocked out) drops nothing
            continue
        energy = 0.0
        for c in range(columns.shape[1]):
            energy += columns[s, c] * columns[s, c]
        extras[level] += 2.0 * energy


def snapshot_for_cut(state: InsertionState, new_size: int, shallow: bool, options: EngineOptions) -> int:
    """The snapshot a change recomputes from: the deepest, or (``shallow``) the one nearest the repair target."""
    if not shallow:
        return len(state.snapshots) - 1
    target = shallow_target(new_size, options)
    return int(np.argmin([abs(snap.size - target) for snap in state.snapshots]))


def keep_two(snapshots: list[Snapshot], new_size: int, options: EngineOptions) -> list[Snapshot]:
    """The snapshot nearest the shallow target and the deepest."""
    if len(snapshots) <= 1:
        return snapshots
    target = shallow_target(new_size, options)
    nearest = int(np.argmin([abs(snap.size - target) for snap in snapshots[:-1]]))
    return [snapshots[nearest], snapshots[-1]]


def _assemble(raw, cut_level, extras, tail, tail_state, tail_indices, grown, new_size, options, final_rows=None):
    size = raw.diagonal.shape[0]
    diagonal = np.zeros(new_size)
    diagonal[:size] = raw.diagonal
    diagonal[tail_indices] = tail.diagonal
    core = tail_indices[tail.core]
    ordering = np.argsort(core)
    snapshots = grown + [
        Snapshot(cut_level + snap.level, tail_indices[snap.indices], block=snap.block, rows=snap.rows)
        for snap in tail_state.snapshots
    ]
    result = RawFactorization(
        tuples=np.vstack([raw.tuples[:cut_level], tail_indices[tail.tuples]]),
        wavelets=np.concatenate([raw.wavelets[:cut_level], tail_indices[tail.wavelets]]),
        rotations=np.concatenate([raw.rotations[:cut_level], tail.rotations]),
        level_errors=np.concatenate([raw.level_errors[:cut_level] + extras[:cut_level], tail.level_errors]),
        diagonal=diagonal,
        core=core[ordering],
        core_block=tail.core_block[np.ix_(ordering, ordering)],
    )
    return result, InsertionState(snapshots=keep_two(snapshots, new_size, options), final_rows=final_rows)


def insert_dense(raw: RawFactorization, state: InsertionState, order: int, columns: np.ndarray, block: np.ndarray, *,
                 shallow: bool, seed: int = 0, options: EngineOptions = DEFAULT_OPTIONS):
    """Insert ``b`` new indices (``columns``: m x b couplings, ``block``: b x b among them).

    Returns ``(raw, state, cut_level)`` of the grown factorization.
    """
    size = raw.diagonal.shape[0]
    count = columns.shape[1]
    new_size = size + count
    if not np.any(columns):
        raw_new, state_new = _append_unrelated(raw, state, order, block, seed, options)
        return raw_new, state_new, raw.wavelets.shape[0]
    cut_index = snapshot_for_cut(state, new_size, shallow, options)
    cut_level = state.snapshots[cut_index].level
    work = np.array(columns, dtype=np.float64, order="C", copy=True)
    extras = np.zeros(raw.wavelets.shape[0])
    grown = []
    position = 0
    new_ids = np.arange(size, new_size)
    for snap in state.snapshots[: cut_index + 1]:
        head_pass(work, raw.tuples, raw.rotations, raw.wavelets, position, snap.level, extras)
        position = snap.level
        n = snap.size
        bigger = np.empty((n + count, n + count))
        bigger[:n, :n] = snap.block
        bigger[:n, n:] = work[snap.indices]
        bigger[n:, :n] = work[snap.indices].T
        bigger[n:, n:] = block
        grown.append(Snapshot(snap.level, np.concatenate([snap.indices, new_ids]), block=bigger))
    tail_indices = grown[-1].indices
    n_tail = tail_indices.shape[0]
    core_size = raw.core.shape[0]  # kept: the result has the same core size
    wanted = tuple(s for s in snapshot_sizes(new_size, order, core_size, options) if s < n_tail)
    tail, tail_state = factor_dense(grown[-1].block.copy(), order, n_tail - core_size, seed=seed, options=options,
                                    snapshot_sizes=wanted, fresh=never_rotated(raw.tuples[:cut_level], tail_indices))
    result, new_state = _assemble(raw, cut_level, extras, tail, tail_state, tail_indices, grown, new_size, options)
    return result, new_state, cut_level


def insert_means(raw: RawFactorization, state: InsertionState, order: int, means: np.ndarray, *, shallow: bool,
                 seed: int = 0, options: EngineOptions = DEFAULT_OPTIONS):
    """Insert ``b`` new classes of a factored result from their means alone (``means``: b x D).

    Returns ``(raw, state, cut_level, rotated)`` of the grown factorization, with
    ``rotated = final_rows @ means.T`` (the new columns ``Q u`` in the final basis).
    """
    size = raw.diagonal.shape[0]
    count = means.shape[0]
    new_size = size + count
    cut_index = snapshot_for_cut(state, new_size, shallow, options)
    cut_level = state.snapshots[cut_index].level
    rotated = state.final_rows @ means.T  # (m, b): the new columns in the final basis
    head = raw.wavelets[:cut_level]
    couplings = rotated[np.maximum(head, 0)]
    extras = np.zeros(raw.wavelets.shape[0])
    extras[:cut_level] = 2.0 * np.einsum("ij,ij->i", couplings, couplings) * (head >= 0)  # rotation-only: nothing
    new_ids = np.arange(size, new_size)
    grown = [
        Snapshot(snap.level, np.concatenate([snap.indices, new_ids]), rows=np.vstack([snap.rows, means]))
        for snap in state.snapshots[: cut_index + 1]
    ]
    tail_indices = grown[-1].indices
    n_tail = tail_indices.shape[0]
    core_size = raw.core.shape[0]
    wanted = tuple(s for s in snapshot_sizes(new_size, order, core_size, options) if s < n_tail)
    schedule = resolve_schedule("auto", n_tail, True, options)
    tail, tail_state = factor_means(grown[-1].rows.copy(), order, n_tail - core_size, seed=seed, options=options,
                                    snapshot_sizes=wanted, schedule=schedule,
                                    fresh=never_rotated(raw.tuples[:cut_level], tail_indices))
    final_rows = np.vstack([state.final_rows, np.zeros((count, means.shape[1]))])
    final_rows[tail_indices] = tail_state.final_rows
    result, new_state = _assemble(raw, cut_level, extras, tail, tail_state, tail_indices, grown, new_size, options,
                                  final_rows=final_rows)
    return result, new_state, cut_level, rotated


def _append_unrelated(raw: RawFactorization, state: InsertionState, order: int, block: np.ndarray, seed: int,
                      options: EngineOptions):
    """New indices coupled to nothing old: every old level stays; they join the core's levels."""
    size = raw.diagonal.shape[0]
    count = block.shape[0]
    core = raw.core
    n = core.shape[0] + count
    matrix = np.zeros((n, n))
    matrix[: core.shape[0], : core.shape[0]] = raw.core_block
    matrix[core.shape[0] :, core.shape[0] :] = block
    indices = np.concatenate([core, np.arange(size, size + count)])
    tail, _ = factor_dense(matrix, order, n - core.shape[0], seed=seed, options=options,
                           fresh=never_rotated(raw.tuples, indices))
    diagonal = np.concatenate([raw.diagonal, np.zeros(count)])
    diagonal[indices] = tail.diagonal
    new_core = indices[tail.core]
    ordering = np.argsort(new_core)
    snapshots = []
    for snap in state.snapshots:  # still valid: the new rows are zero there
        m = snap.size
        grown = np.zeros((m + count, m + count))
        grown[:m, :m] = snap.block
        grown[m:, m:] = block
        snapshots.append(Snapshot(snap.level, np.concatenate([snap.indices, np.arange(size, size + count)]),
                                  block=grown))
    result = RawFactorization(
        tuples=np.vstack([raw.tuples, indices[tail.tuples]]),
        wavelets=np.concatenate([raw.wavelets, indices[tail.wavelets]]),
        rotations=np.concatenate([raw.rotations, tail.rotations]),
        level_errors=np.concatenate([raw.level_errors, tail.level_errors]),
        diagonal=diagonal,
        core=new_core[ordering],
        core_block=tail.core_block[np.ix_(ordering, ordering)],
    )
    return result, InsertionState(snapshots=snapshots)


def renumber(new_index: np.ndarray, wavelets: np.ndarray) -> np.ndarray:
    """``new_index[wavelets]``, keeping -1 (rotation-only levels) as -1."""
    return np.where(wavelets >= 0, new_index[np.maximum(wavelets, 0)], -1)


def changed_levels(old: RawFactorization, new: RawFactorization, start: int) -> int:
    """Levels from ``start`` whose tuple (as a set) differs between two runs."""
    changed = 0
    for level in range(start, new.tuples.shape[0]):
        if level >= old.tuples.shape[0] or set(old.tuples[level].tolist()) != set(new.tuples[level].tolist()):
            changed += 1
    return changed


def permute(raw: RawFactorization, state: InsertionState, new_index: np.ndarray):
    """The same factorization with index ``i`` renamed ``new_index[i]``."""
    core = new_index[raw.core]
    order = np.argsort(core)
    diagonal = np.empty_like(raw.diagonal)
    diagonal[new_index] = raw.diagonal
    final_rows = None
    if state.final_rows is not None:
        final_rows = np.empty_like(state.final_rows)
        final_rows[new_index] = state.final_rows
    permuted = RawFactorization(
        tuples=new_index[raw.tuples],
        wavelets=renumber(new_index, raw.wavelets),
        rotations=raw.rotations,
        level_errors=raw.level_errors,
        diagonal=diagonal,
        core=core[order],
        core_block=raw.core_block[np.ix_(order, order)],
    )
    snapshots = [Snapshot(s.level, new_index[s.indices], block=s.block, rows=s.rows) for s in state.snapshots]
    return permuted, InsertionState(snapshots=snapshots, final_rows=final_rows)
