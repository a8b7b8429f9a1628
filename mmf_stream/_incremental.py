"""Incremental MMF: fold new rows/columns into an existing factorization.

Method (mmf-math.md section 6, with a different repair rule):

* The factorization keeps *snapshots*: the active block of the compression at
  a few cut levels (e.g. when 30% and 6% of the indices are still active).
* A new index ``z`` (column ``u``, diagonal ``v``) is active from the start.
  Every level before the cut keeps its tuple and rotation; ``u`` is rotated
  through them in O(k) per level and the new entry of each wavelet's row,
  ``w[s_l]``, is dropped: that level's error grows by exactly ``2 w[s_l]^2``.
  Snapshots above the cut stay valid by appending ``z``'s row (``w`` at that
  cut) and column.
* From the cut on, the levels are recomputed by the batch engine on the
  snapshot block grown by ``z`` (the "tail"). Near the core, where a new
  class's couplings are large, this re-optimises everything; far from it the
  old levels are kept. Every result is an exact MMF: the stated error equals
  the reconstruction error.
* Each insertion re-runs the tail from the deepest snapshot (cheap); every
  ``repair_every`` insertions, or when the error has drifted, the tail is
  re-run from the shallowest snapshot (a repair of the affected part).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from mmf_stream._engine import RawFactorization, greedy_factorize
from mmf_stream._fingerprint import extend, of_matrix
from mmf_stream._kernels import rotate_rows_inplace

#: fractions of the size at which snapshots are kept (shallowest first)
SNAPSHOT_FRACTIONS = (0.30, 0.04)
#: smallest snapshot kept (indices)
_MIN_SNAPSHOT = 24


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
        energy = 0.0
        for c in range(columns.shape[1]):
            energy += columns[s, c] * columns[s, c]
        extras[level] += 2.0 * energy


def snapshot_sizes(size: int, order: int, core_size: int | None = None) -> tuple[int, ...]:
    """Active-set sizes at which snapshots are taken (above the core, below ``size``)."""
    floor = max(_MIN_SNAPSHOT, order + 1, (order - 1 if core_size is None else core_size) + order)
    sizes = []
    for fraction in SNAPSHOT_FRACTIONS:
        target = max(floor, int(round(fraction * size)))
        if target < size and target not in sizes:
            sizes.append(target)
    # small matrices: the whole matrix is the snapshot (insertions re-run the batch)
    return tuple(sizes) if sizes else (size,)


@dataclass
class InsertionReport:
    """What an insertion did.

    Attributes
    ----------
    labels : list
        Labels (or indices) of the inserted classes.
    indices : list of int
        Their row indices in the new factorization.
    cut_level : int
        Levels ``1..cut_level`` were kept; later levels were recomputed.
    repaired : bool
        Whether the tail was re-run from the shallowest snapshot.
    changed_levels : int
        Number of levels (after the cut) whose tuple differs from before.
    wavelet_levels : list of int or None
        For each inserted index, the level at which it became a wavelet
        (None: it is in the core).
    partners : list of list
        For each inserted index, the other members of its wavelet level's tuple
        (the classes it is composed with).
    error_added : float
        New error minus old error (Frobenius; may be negative after a repair).
    novelty : list of float
        For each inserted index, in [0, 1]: how late it becomes a wavelet
        among the recomputed levels (``(level - cut) / (levels - cut)``; 1 for
        the core). Classes composed of existing ones become wavelets early
        (low novelty); distinct classes survive to the last levels or the core
        (high novelty).
    drift : float
        Energy dropped in kept levels above the shallow cut since the last batch
        factorization, relative to the error^2; a batch refresh is advisable
        above about 0.05.
    """

    labels: list
    indices: list[int]
    cut_level: int
    repaired: bool
    changed_levels: int
    wavelet_levels: list[int | None]
    partners: list[list]
    error_added: float
    novelty: list[float] = field(default_factory=list)
    drift: float = 0.0


def insert_block(
    raw: RawFactorization,
    order: int,
    columns: np.ndarray,
    block: np.ndarray,
    *,
    shallow: bool,
    seed: int = 0,
) -> tuple[RawFactorization, int]:
    """Insert ``b`` new indices (``columns``: m x b, ``block``: b x b) and return
    the new raw factorization and the cut level."""
    if not raw.snapshots:
        raise ValueError("this factorization has no insertion state (snapshots)")
    size = raw.diagonal.shape[0]
    count = columns.shape[1]
    new_size = size + count
    if not np.any(columns):
        return _append_unrelated(raw, order, block, seed), raw.wavelets.shape[0]
    if shallow:  # the snapshot closest to the shallow target size
        target = SNAPSHOT_FRACTIONS[0] * new_size
        cut_index = int(np.argmin([abs(snap[1].shape[0] - target) for snap in raw.snapshots]))
    else:
        cut_index = len(raw.snapshots) - 1
    cut_level, cut_indices, _ = raw.snapshots[cut_index]
    work = np.array(columns, dtype=np.float64, order="C", copy=True)
    extras = np.zeros(raw.wavelets.shape[0])
    grown = []
    position = 0
    new_ids = np.arange(size, new_size)
    for level, indices, snap in raw.snapshots[: cut_index + 1]:
        head_pass(work, raw.tuples, raw.rotations, raw.wavelets, position, level, extras)
        position = level
        n = indices.shape[0]
        bigger = np.empty((n + count, n + count))
        bigger[:n, :n] = snap
        bigger[:n, n:] = work[indices]
        bigger[n:, :n] = work[indices].T
        bigger[n:, n:] = block
        grown.append((level, np.concatenate([indices, new_ids]), bigger))
    tail_indices = grown[-1][1]
    tail_matrix = grown[-1][2]
    n_tail = tail_indices.shape[0]
    core_size = raw.core.shape[0]  # kept: the result has the same core size
    wanted = tuple(s for s in snapshot_sizes(new_size, order, core_size) if s < n_tail)
    tail = greedy_factorize(tail_matrix.copy(), order, n_tail - core_size, seed=seed, snapshot_sizes=wanted)
    tuples = np.vstack([raw.tuples[:cut_level], tail_indices[tail.tuples]])
    wavelets = np.concatenate([raw.wavelets[:cut_level], tail_indices[tail.wavelets]])
    rotations = np.concatenate([raw.rotations[:cut_level], tail.rotations])
    level_errors = np.concatenate([raw.level_errors[:cut_level] + extras[:cut_level], tail.level_errors])
    diagonal = np.zeros(new_size)
    diagonal[:size] = raw.diagonal
    diagonal[tail_indices] = tail.diagonal
    core = tail_indices[tail.core]
    order_core = np.argsort(core)
    snapshots = grown + [
        (cut_level + level, tail_indices[indices], snap) for level, indices, snap in tail.snapshots
    ]
    # keep two: the one nearest the shallow target and the deepest
    target = SNAPSHOT_FRACTIONS[0] * new_size
    nearest = int(np.argmin([abs(snap[1].shape[0] - target) for snap in snapshots[:-1]])) if len(snapshots) > 1 else 0
    snapshots = [snapshots[nearest], snapshots[-1]] if nearest != len(snapshots) - 1 else [snapshots[-1]]
    result = RawFactorization(
        tuples=tuples,
        wavelets=wavelets,
        rotations=rotations,
        level_errors=level_errors,
        diagonal=diagonal,
        core=core[order_core],
        core_block=tail.core_block[np.ix_(order_core, order_core)],
        snapshots=snapshots,
    )
    return result, cut_level


def _append_unrelated(raw: RawFactorization, order: int, block: np.ndarray, seed: int) -> RawFactorization:
    """New indices coupled to nothing old: every old level stays; they join the core's levels."""
    size = raw.diagonal.shape[0]
    count = block.shape[0]
    core = raw.core
    n = core.shape[0] + count
    matrix = np.zeros((n, n))
    matrix[: core.shape[0], : core.shape[0]] = raw.core_block
    matrix[core.shape[0] :, core.shape[0] :] = block
    indices = np.concatenate([core, np.arange(size, size + count)])
    tail = greedy_factorize(matrix, order, n - core.shape[0], seed=seed)
    diagonal = np.concatenate([raw.diagonal, np.zeros(count)])
    diagonal[indices] = tail.diagonal
    new_core = indices[tail.core]
    ordering = np.argsort(new_core)
    snapshots = []
    for level, snap_indices, snap in raw.snapshots:  # still valid: the new rows are zero there
        m = snap_indices.shape[0]
        grown = np.zeros((m + count, m + count))
        grown[:m, :m] = snap
        grown[m:, m:] = block
        snapshots.append((level, np.concatenate([snap_indices, np.arange(size, size + count)]), grown))
    return RawFactorization(
        tuples=np.vstack([raw.tuples, indices[tail.tuples]]),
        wavelets=np.concatenate([raw.wavelets, indices[tail.wavelets]]),
        rotations=np.concatenate([raw.rotations, tail.rotations]),
        level_errors=np.concatenate([raw.level_errors, tail.level_errors]),
        diagonal=diagonal,
        core=new_core[ordering],
        core_block=tail.core_block[np.ix_(ordering, ordering)],
        snapshots=snapshots,
    )


def changed_levels(old: RawFactorization, new: RawFactorization, start: int) -> int:
    """Levels from ``start`` whose tuple (as a set) differs between two runs."""
    changed = 0
    for level in range(start, new.tuples.shape[0]):
        if level >= old.tuples.shape[0] or set(old.tuples[level].tolist()) != set(new.tuples[level].tolist()):
            changed += 1
    return changed


#: by default every REPAIR_EVERY-th inserted index triggers a repair
REPAIR_EVERY = 10
#: dropped energy above the shallow cut, relative to error^2, past which a
#: fresh batch factorization is recommended (factorize_incremental does it)
REFRESH_DRIFT = 0.05


def _check_new_labels(factorization: Any, labels: Any, count: int) -> np.ndarray | None:
    from mmf_stream._validation import labels_for

    if factorization.labels is None:
        if labels is not None:
            raise ValueError("this factorization has no labels; insert without labels")
        return None
    if labels is None:
        raise ValueError("this factorization has labels; give a label for each new class")
    new = labels_for(labels, count)
    if (new.dtype.kind == "U") != (factorization.labels.dtype.kind == "U"):
        raise TypeError("new labels must be of the same kind (int or str) as the existing ones")
    clash = set(new.tolist()) & set(factorization.labels.tolist())
    if clash:
        raise ValueError(f"label {sorted(clash)[0]!r} is already in the factorization")
    return np.concatenate([factorization.labels, new])


def _split_columns(columns: Any, diagonals: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(columns, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"columns must be 2-D (size x b or (size + b) x b), got shape {array.shape}")
    count = array.shape[1]
    if count < 1:
        raise ValueError("columns holds no new index")
    if array.shape[0] == size + count:
        if diagonals is not None:
            given = np.asarray(diagonals, dtype=np.float64)
            if given.shape != (count, count) or not np.allclose(given, array[size:]):
                raise ValueError("columns already holds the block among the new indices; leave diagonals out")
        old, block = array[:size], array[size:]
    elif array.shape[0] == size:
        if diagonals is None:
            raise ValueError(f"give the {count} x {count} block among the new indices (diagonals)")
        block = np.asarray(diagonals, dtype=np.float64)
        if block.ndim == 1 and block.shape == (1,):
            block = block.reshape(1, 1)
        if block.shape != (count, count):
            raise ValueError(f"diagonals must be the {count} x {count} block among the new indices, got shape {block.shape}")
        old = array
    else:
        raise ValueError(f"columns must have {size} rows (or {size + count} with the new block), got {array.shape[0]}")
    if not (np.all(np.isfinite(old)) and np.all(np.isfinite(block))):
        raise ValueError("new columns have non-finite entries (NaN or Inf)")
    asymmetry = np.max(np.abs(block - block.T)) if count > 1 else 0.0
    if asymmetry > 1e-8 * max(1.0, np.max(np.abs(block))):
        raise ValueError(f"the block among the new indices is not symmetric (largest asymmetry {asymmetry:.3g})")
    return np.ascontiguousarray(old), 0.5 * (block + block.T)


def build_insertion(factorization: Any, columns: Any, diagonals: Any, labels: Any, *, repair: bool | None,
                    repair_every: int = REPAIR_EVERY) -> Any:
    """The work behind ``Factorization.insert`` / ``insert_many``."""
    from mmf_stream._factorization import Factorization

    raw = factorization._raw
    if not raw.snapshots:
        version = factorization.metadata.get("format_version")
        where = f" (loaded from format version {version})" if version is not None and version < 2 else ""
        raise ValueError(
            f"this factorization has no insertion state{where}; factor the matrix again "
            "with this version (factorize(..., incremental=True)) to insert into it"
        )
    size = factorization.size
    old, block = _split_columns(columns, diagonals, size)
    count = old.shape[1]
    all_labels = _check_new_labels(factorization, labels, count)
    since = int(factorization.metadata.get("since_repair", 0)) + count
    shallow = repair if repair is not None else (count >= repair_every or since >= repair_every)
    new_raw, cut_level = insert_block(raw, factorization.order, old, block, shallow=shallow,
                                      seed=int(factorization.metadata.get("seed") or 0))
    new_norm = float(np.sqrt(factorization.norm**2 + 2.0 * np.sum(old**2) + np.sum(block**2)))
    extras = new_raw.level_errors[:cut_level] - raw.level_errors[:cut_level]
    shallow_cut = new_raw.snapshots[0][0]
    drift = float(factorization.metadata.get("drift", 0.0)) + float(np.sum(extras[: min(cut_level, shallow_cut)]))
    fingerprint = factorization.metadata.get("fingerprint")
    result = Factorization(
        new_raw,
        order=factorization.order,
        norm=new_norm,
        labels=all_labels,
        metadata={
            **{k: v for k, v in factorization.metadata.items() if k != "insertion_report"},
            "since_repair": 0 if shallow else since,
            "drift": drift,
            "fingerprint": None if fingerprint is None else extend(fingerprint, old, block),
        },
    )
    new_ids = list(range(size, size + count))
    wavelet_level = {int(s): level + 1 for level, s in enumerate(new_raw.wavelets.tolist())}
    names = (lambda idx: all_labels[idx].item()) if all_labels is not None else (lambda idx: int(idx))
    levels, partners, novelty = [], [], []
    for index in new_ids:
        level = wavelet_level.get(index)
        levels.append(level)
        if level is None:
            partners.append([names(i) for i in result.core.tolist() if i != index])
            novelty.append(1.0)
        else:
            partners.append([names(i) for i in new_raw.tuples[level - 1].tolist() if i != index])
            novelty.append((level - cut_level) / max(1, result.n_levels - cut_level))
    result.metadata["insertion_report"] = InsertionReport(
        labels=[names(i) for i in new_ids],
        indices=new_ids,
        cut_level=cut_level,
        repaired=bool(shallow),
        changed_levels=changed_levels(raw, new_raw, cut_level),
        wavelet_levels=levels,
        partners=partners,
        error_added=result.error - factorization.error,
        novelty=novelty,
        drift=drift / max(result.error**2, 1e-300),
    )
    return result


def permute(raw: RawFactorization, new_index: np.ndarray) -> RawFactorization:
    """The same factorization with index ``i`` renamed ``new_index[i]``."""
    core = new_index[raw.core]
    order = np.argsort(core)
    diagonal = np.empty_like(raw.diagonal)
    diagonal[new_index] = raw.diagonal
    return RawFactorization(
        tuples=new_index[raw.tuples],
        wavelets=new_index[raw.wavelets],
        rotations=raw.rotations,
        level_errors=raw.level_errors,
        diagonal=diagonal,
        core=core[order],
        core_block=raw.core_block[np.ix_(order, order)],
        snapshots=[(level, new_index[indices], block) for level, indices, block in raw.snapshots],
    )


def factorize_incremental(
    C: Any,
    order: int = 5,
    initial_size: int | None = None,
    *,
    seed: int = 0,
    labels: Any = None,
    repair_every: int = REPAIR_EVERY,
    refresh_drift: float | None = REFRESH_DRIFT,
    progress: Any = None,
):
    """The incremental paper's Algorithm 3: batch MMF of a random block, then stream in the rest.

    Parameters
    ----------
    C : array-like (m x m), symmetric
    order : int
    initial_size : int, optional
        Size of the random initial block (default ``m // 2``).
    seed : int
        Seed of the random order.
    labels : sequence, optional
    repair_every : int
        Re-run from the shallow snapshot every this many insertions.
    refresh_drift : float or None
        When the energy dropped above the shallow cut exceeds this fraction of
        the error^2, factor everything inserted so far afresh (None: never).
    progress : callable, optional
        Called with 1 after each insertion.

    Returns
    -------
    Factorization
        Of ``C`` (indices in ``C``'s order), full depth (core ``order - 1``).
    """
    from mmf_stream import _validation as V
    from mmf_stream._factorization import Factorization, factorize

    work = V.symmetric_matrix(C)
    size = work.shape[0]
    order, _ = V.order_and_core(order, None, size)
    label_array = V.labels_for(labels, size)
    if initial_size is None:
        initial_size = max(order, size // 2)
    if not order <= initial_size <= size:
        raise ValueError(f"initial_size must be between order = {order} and the size {size}, got {initial_size}")
    permutation = np.random.default_rng(seed).permutation(size)

    def batch(count: int):
        chosen = permutation[:count]
        return factorize(
            work[np.ix_(chosen, chosen)], order=order, seed=seed,
            labels=None if label_array is None else label_array[chosen],
        )

    current = batch(initial_size)
    refreshes = 0
    for step in range(initial_size, size):
        index = permutation[step]
        column = work[permutation[:step], index]
        current = current.insert(column, work[index, index],
                                 label=None if label_array is None else label_array[index].item(),
                                 repair=None if repair_every else False)
        if refresh_drift is not None and current.insertion_report.drift > refresh_drift:
            current = batch(step + 1)
            refreshes += 1
        if progress is not None:
            progress(1)
    raw = permute(current._raw, permutation)
    return Factorization(
        raw,
        order=order,
        norm=float(np.linalg.norm(work)),
        labels=label_array,
        metadata={"seed": seed, "candidates": "neighbors", "refreshes": refreshes, "since_repair": 0, "drift": 0.0,
                  "fingerprint": of_matrix(work)},
    )
