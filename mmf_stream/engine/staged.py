"""Staged levels for large m (docs/math.md, section 4).

A stage partitions the active set into clusters of at most
``options.stage_cluster_size`` rows that are similar (a principal-direction tree on
a sketch of the rows), runs greedy levels inside every cluster independently,
then applies every cluster's levels to the compression in a fixed order.

A cluster scores each tuple with its exact Gram over the *whole* active set:
it receives ``A = C[c, c]`` and ``P = C[c, S] C[S, c]`` at the start of the
stage. Rotations inside other clusters leave ``P`` unchanged; the cluster's
own wavelets down-date it exactly. So the cluster's work,
:func:`factor_cluster`, is a pure function of ``(A, P)`` and the stage's
shared numbers, and the stage's result does not depend on the order in which
clusters run: ``map_clusters`` may run them in any order, in threads, or as
Dask tasks.

The error of every level is computed exactly when its cluster is applied, in
the recorded sequential order (docs/math.md, section 4), from the compression
itself: it equals the reconstruction error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmf_stream.engine import kernels as K
from mmf_stream.engine import row_blocks as P
from mmf_stream.engine.compression import GramCompression
from mmf_stream.engine.greedy import LevelLog, greedy_levels
from mmf_stream.engine.options import DEFAULT_OPTIONS, EngineOptions
from mmf_stream.engine.raw import Snapshot

#: power iterations for a tree node's principal direction
_POWER_ITERATIONS = 8

#: a factored compression holds ``A`` and ``P`` explicitly for the final greedy
#: levels when at most this many times ``options.greedy_below`` indices are active;
#: a stage without levels hands over to the final greedy levels at this size
_EXPLICIT_FACTOR = 4

#: a stage in which no cluster made a level (every winner decoupled) is followed
#: by one that passes decoupled tuples over, then by one that does not check
_DECOUPLED_LADDER = {"stop": "skip", "skip": None}

MapClusters = Callable[[Callable, Iterable], Iterable]


@dataclass(frozen=True)
class ClusterTask:
    """Everything one cluster's work depends on."""

    block: np.ndarray  # A = C[c, c]
    gram: np.ndarray  # P = C[c, S] C[S, c]
    tie_break: np.ndarray  # (c,) tie-break values of the members
    quota: int  # levels to run
    order: int
    options: EngineOptions
    fresh: np.ndarray | None = None  # (c,) members never rotated before (None: all)
    decoupled: str | None = "stop"  # what a decoupled winning tuple does (greedy_levels)


@dataclass(frozen=True)
class ClusterLevels:
    """A cluster's levels in local positions (0..c-1), in the order they were made."""

    tuples: np.ndarray  # (q, k)
    wavelets: np.ndarray  # (q,)
    rotations: np.ndarray  # (q, k, k)

    def mixing(self, size: int) -> np.ndarray:
        """The product ``Q_q ... Q_1`` as a ``size x size`` orthogonal matrix."""
        out = np.eye(size)
        K.apply_rotations(out, self.tuples, self.rotations, False)
        return out


def factor_cluster(task: ClusterTask) -> ClusterLevels:
    """Greedy levels inside one cluster: a pure function of ``task``.

    At most ``task.quota`` levels: by default (``task.decoupled="stop"``) the
    cluster stops before a level whose tuple would be decoupled (rows of
    unrelated groups padding a smaller tuple, because the cluster holds fewer
    than ``order`` rows of the pivot's group); those rows stay active for the
    next stage.
    """
    compression = GramCompression(task.block, task.gram)
    size = compression.n
    log = LevelLog(size, task.order, task.quota)
    greedy_levels(compression, task.order, task.quota, log, tie_break=task.tie_break, options=task.options,
                  fresh=task.fresh, decoupled=task.decoupled)
    n = log.count
    return ClusterLevels(tuples=log.tuples[:n].copy(), wavelets=log.wavelets[:n].copy(),
                         rotations=log.rotations[:n].copy())


def partition(features: np.ndarray, cluster_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split the rows of ``features`` into groups of at most ``cluster_size`` similar rows.

    A principal-direction tree: a node's rows (normalised, centred) are split
    at the point along their principal direction that leaves each side a
    whole number of clusters' worth. Deterministic for a given ``rng`` state.
    """
    norms = np.linalg.norm(features, axis=1)
    unit = features / np.where(norms > 0, norms, 1.0)[:, None]
    del features  # the caller's temporary: freed here (at 1,000,000 classes each copy is 0.5 GB)
    groups: list[np.ndarray] = []
    stack = [np.arange(unit.shape[0])]
    while stack:
        members = stack.pop()
        if members.shape[0] <= cluster_size:
            groups.append(np.sort(members))
            continue
        rows = unit if members.shape[0] == unit.shape[0] else unit[members]  # the root: every row, in order
        centred = rows - rows.mean(axis=0)
        direction = rng.standard_normal(rows.shape[1])
        for _ in range(_POWER_ITERATIONS):
            # row-wise kernels, not BLAS: the same split on every CPU
            direction = P.stable_matmul(centred.T, P.stable_matmul(centred, direction[:, None]))[:, 0]
            norm = math.sqrt(float(P.stable_matmul(direction[None, :], direction[:, None])[0, 0]))
            if norm == 0.0:
                break
            direction /= norm
        projection = P.stable_matmul(centred, direction[:, None])[:, 0]
        leaves = math.ceil(members.shape[0] / cluster_size)
        left = int(round(members.shape[0] * (leaves // 2) / leaves))
        ranking = np.argsort(projection, kind="stable")
        stack.append(members[ranking[left:]])
        stack.append(members[ranking[:left]])
    return groups


def _quotas(sizes: np.ndarray, order: int, fraction: float, allowed: int) -> np.ndarray:
    quotas = np.minimum(np.floor(fraction * sizes).astype(np.int64), np.maximum(sizes - order, 0))
    total = int(quotas.sum())
    if total > allowed:
        quotas = np.floor(quotas * (allowed / total)).astype(np.int64)
    return quotas


def staged_levels(
    compression,
    order: int,
    n_levels: int,
    log: LevelLog,
    *,
    tie_break: np.ndarray,
    seed: int = 0,
    options: EngineOptions = DEFAULT_OPTIONS,
    progress: Callable[[int], None] | None = None,
    snapshot_sizes: tuple[int, ...] = (),
    snapshots: list[Snapshot] | None = None,
    map_clusters: MapClusters | None = None,
    fresh: np.ndarray | None = None,
) -> Any:
    """Run ``n_levels`` levels in stages, then greedy levels below ``options.greedy_below``.

    ``fresh`` marks the rows never rotated before (default: all); clusters and
    the final greedy levels receive it for the ``"faithful"`` neighbour rule.

    Clusters stop before a decoupled tuple (:func:`factor_cluster`). A stage
    in which no cluster made a level ends the stages when at most
    ``4 * options.greedy_below`` indices are active (the final greedy levels
    take over); above, the next stage passes decoupled tuples over
    (``"skip"``), and if that makes no level either, the one after does not
    check; after a stage with levels, clusters stop again.

    ``map_clusters(function, tasks)`` runs :func:`factor_cluster` on every
    :class:`ClusterTask` and returns the results in the tasks' order (default:
    in turn, in this process). A compression with a ``factor_stage`` method
    runs its clusters itself (the Dask engine's, whose ``to_local()`` gives
    the in-process compression for the final greedy levels). Returns the
    compression the run finished on.
    """
    run_map = map_clusters if map_clusters is not None else map
    rng = np.random.default_rng([seed, 0x5EED])
    wanted = sorted({int(s) for s in snapshot_sizes}, reverse=True)
    fresh = np.ones(compression.n, dtype=np.bool_) if fresh is None else np.array(fresh, dtype=np.bool_)
    done = 0
    decoupled: str | None = "stop"
    while done < n_levels:
        n_active = int(np.count_nonzero(compression.active))
        allowed = min(n_levels - done, n_active - options.greedy_below)
        if allowed <= 0 or getattr(compression, "explicit", None) is not None:
            break
        live = np.flatnonzero(compression.active)
        groups = partition(compression.features(options.sketch_width, rng), options.stage_cluster_size, rng)
        members = [live[g] for g in groups]
        quotas = _quotas(np.array([g.shape[0] for g in groups]), order, options.stage_fraction, allowed)
        if int(quotas.sum()) == 0:
            break
        tie_breaks = [tie_break[group] for group in members]
        freshes = [fresh[group] for group in members]
        if hasattr(compression, "factor_stage"):  # the compression runs its clusters itself (Dask)
            results = compression.factor_stage(members, quotas, tie_breaks, order, options, freshes,
                                               decoupled=decoupled)
        else:
            tasks = (
                ClusterTask(*compression.cluster_inputs(group), tie_break=group_tie_break, quota=int(quota),
                            order=order, options=options, fresh=group_fresh, decoupled=decoupled)
                for group, group_tie_break, quota, group_fresh in zip(members, tie_breaks, quotas, freshes)
            )
            results = list(run_map(factor_cluster, tasks))
        # fixed cluster order: the recorded sequence of levels
        tuples, wavelets, diagonal, row_energy = compression.apply_stage(members, results)
        fresh[tuples.ravel()] = False
        rotations = np.concatenate([result.rotations for result in results])
        for i in range(tuples.shape[0]):
            log.add(compression.index[tuples[i]], int(compression.index[wavelets[i]]), rotations[i],
                    2.0 * row_energy[i], diagonal[i])
        stage_levels = int(tuples.shape[0])
        done += stage_levels
        n_after = n_active - stage_levels
        if snapshots is not None and any(n_after <= size < n_active for size in wanted):
            snapshots.append(compression.snapshot(log.count))
        wanted = [size for size in wanted if size < n_after]
        keep = np.flatnonzero(compression.active)
        compression.compact(keep)
        tie_break = tie_break[keep]
        fresh = fresh[keep]
        if progress is not None:
            progress(stage_levels)
        if stage_levels == 0:  # every cluster stopped before a decoupled tuple
            if decoupled is None or n_active <= _EXPLICIT_FACTOR * options.greedy_below:
                break  # the final greedy levels take over (cheap at this size)
            decoupled = _DECOUPLED_LADDER[decoupled]
        else:
            decoupled = "stop"
    if hasattr(compression, "to_local"):  # distributed: the last levels run here
        compression = compression.to_local()
    if done < n_levels:
        compression.prepare_greedy(_EXPLICIT_FACTOR * options.greedy_below)
        greedy_levels(compression, order, n_levels - done, log, tie_break=tie_break, options=options,
                      progress=progress, snapshot_sizes=tuple(wanted), snapshots=snapshots, fresh=fresh)
    return compression
