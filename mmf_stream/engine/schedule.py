"""Run the levels of one factorization on a compression: greedy or staged."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmf_stream.engine.compression import DenseCompression, FactoredCompression
from mmf_stream.engine.greedy import LevelLog, greedy_levels
from mmf_stream.engine.options import DEFAULT_OPTIONS, EngineOptions
from mmf_stream.engine.raw import InsertionState, RawFactorization
from mmf_stream.engine.staged import MapClusters, staged_levels

SCHEDULES = ("auto", "greedy", "staged")


def resolve_schedule(schedule: str, size: int, factored: bool, options: EngineOptions) -> str:
    """``"auto"``: plain greedy where it is fast (small m), staged above."""
    if schedule != "auto":
        return schedule
    limit = options.auto_factored_greedy_max if factored else options.auto_dense_greedy_max
    return "greedy" if size <= limit else "staged"


def shallow_target(size: int, options: EngineOptions = DEFAULT_OPTIONS) -> float:
    """The size a repair's (shallowest) snapshot aims at, for a result of ``size`` indices."""
    return min(options.snapshot_fractions[0] * size, float(options.max_shallow_snapshot))


def snapshot_sizes(size: int, order: int, core_size: int, options: EngineOptions = DEFAULT_OPTIONS) -> tuple[int, ...]:
    """Active-set sizes at which insertion snapshots are taken (above the core, below ``size``).

    The deepest is at most ``options.max_deep_snapshot`` (it bounds the work of
    one insertion), the shallowest at most ``options.max_shallow_snapshot`` (it
    bounds the work of a repair).
    """
    floor = max(options.min_snapshot, order + 1, core_size + order)
    fractions = options.snapshot_fractions
    sizes: list[int] = []
    for number, fraction in enumerate(fractions):
        target = max(floor, int(round(fraction * size)))
        if number == len(fractions) - 1 and len(fractions) > 1:
            target = max(floor, min(target, options.max_deep_snapshot))
        elif number == 0:
            target = max(floor, min(target, options.max_shallow_snapshot))
        if target < size and target not in sizes:
            sizes.append(target)
    # small matrices: the whole matrix is the snapshot (insertions re-run the batch)
    return tuple(sorted(sizes, reverse=True)) if sizes else (size,)


def factor(
    compression: DenseCompression | FactoredCompression,
    order: int,
    n_levels: int,
    *,
    schedule: str = "greedy",
    seed: int = 0,
    options: EngineOptions = DEFAULT_OPTIONS,
    exhaustive: bool = False,
    progress: Callable[[int], None] | None = None,
    snapshot_sizes: tuple[int, ...] = (),
    map_clusters: MapClusters | None = None,
    fresh: np.ndarray | None = None,
) -> tuple[RawFactorization, InsertionState]:
    """``n_levels`` levels of MMF on ``compression`` (consumed), with the insertion state.

    ``fresh`` marks the rows never rotated before (default: all; a re-run tail
    passes those of its rows that no earlier level touched), for the
    ``"faithful"`` neighbour rule.
    """
    size = compression.n
    log = LevelLog(size, order, n_levels)
    tie_break = np.random.default_rng(seed).permutation(size).astype(np.float64)
    snapshots = []
    if size in snapshot_sizes:
        snapshots.append(compression.snapshot(0))
    common = dict(tie_break=tie_break, options=options, progress=progress, snapshot_sizes=snapshot_sizes,
                  snapshots=snapshots, fresh=fresh)
    if schedule == "staged" and not exhaustive:
        compression = staged_levels(compression, order, n_levels, log, seed=seed, map_clusters=map_clusters,
                                    **common)
    else:
        greedy_levels(compression, order, n_levels, log, exhaustive=exhaustive, **common)
    raw = log.finish(compression)
    final_rows = None
    if compression.factored:
        live = compression.active
        compression.final_rows[compression.index[live]] = compression.rows[live]
        final_rows = compression.final_rows
    return raw, InsertionState(snapshots=snapshots, final_rows=final_rows)


def never_rotated(tuples: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mask of ``indices`` that no tuple of ``tuples`` (the levels before a re-run tail) contains:
    the ``fresh`` rows of the tail for the ``"faithful"`` neighbour rule."""
    indices = np.asarray(indices, dtype=np.int64)
    return ~np.isin(indices, np.asarray(tuples, dtype=np.int64).ravel())


def factor_dense(matrix: np.ndarray, order: int, n_levels: int, **kwargs) -> tuple[RawFactorization, InsertionState]:
    """:func:`factor` on a dense symmetric float64 matrix (used as the working buffer)."""
    return factor(DenseCompression(matrix), order, n_levels, **kwargs)


def factor_means(means: np.ndarray, order: int, n_levels: int, **kwargs) -> tuple[RawFactorization, InsertionState]:
    """:func:`factor` on ``C = M M'`` from the rows of ``means`` (float64, consumed)."""
    options = kwargs.get("options", DEFAULT_OPTIONS)
    staged = kwargs.get("schedule") == "staged"
    explicit_max = options.greedy_below if staged else max(options.greedy_below, options.auto_factored_greedy_max)
    return factor(FactoredCompression(means, explicit_max=explicit_max, gram_block=options.gram_block), order, n_levels,
                  **kwargs)
