"""The public entry points: ``factorize`` (picks the engine and the input's path), ``load``,
``factorize_incremental`` (streaming a whole matrix into a factorization, the incremental paper's Algorithm 3)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mmf_stream import validation as V
from mmf_stream.store.fingerprint import of_matrix, of_means
from mmf_stream.store.result_format import load_stored
from mmf_stream.engine.options import EngineOptions, resolve_options
from mmf_stream.engine.raw import InsertionState
from mmf_stream.engine.schedule import SCHEDULES, factor_dense, factor_means, resolve_schedule, snapshot_sizes
from mmf_stream.engine.staged import MapClusters
from mmf_stream.engine.insertion import permute

from mmf_stream.factorization import Factorization

CANDIDATE_METHODS = ("neighbors", "exhaustive")
#: exhaustive search refuses to score more tuples than this (over all levels)
EXHAUSTIVE_MAX_TUPLES = 2_000_000
#: exhaustive search warns when its estimated time exceeds this many seconds
EXHAUSTIVE_WARN_SECONDS = 10.0
#: measured cost of scoring one k-tuple exhaustively (2-core machine): a fixed part in
#: seconds, plus a part in seconds per k**3 (k = 5: 0.4 ms, k = 8: 0.7 ms a tuple)
EXHAUSTIVE_SECONDS_PER_TUPLE = 2e-4
EXHAUSTIVE_SECONDS_PER_K3 = 1e-6


def _check_exhaustive_cost(size: int, order: int, n_levels: int) -> None:
    """Refuse exhaustive searches that cannot finish; warn before long ones."""
    import warnings
    from math import comb

    scorings = sum(comb(size - level, order) for level in range(n_levels))
    if scorings > EXHAUSTIVE_MAX_TUPLES:
        raise ValueError(
            f"exhaustive search would score {scorings:,} tuples; use candidates='neighbors' "
            "for matrices of this size"
        )
    seconds = scorings * (EXHAUSTIVE_SECONDS_PER_TUPLE + order**3 * EXHAUSTIVE_SECONDS_PER_K3)
    if seconds > EXHAUSTIVE_WARN_SECONDS:
        warnings.warn(
            f"exhaustive search scores {scorings:,} tuples of {order}: about {seconds:.0f} s "
            "(candidates='neighbors' takes well under a second)",
            stacklevel=3,
        )



def _class_store(source: Any):
    """The class store ``source`` is or names (read-only), else None."""
    from mmf_stream.store.class_store import Store

    if isinstance(source, Store):
        return source
    if isinstance(source, (str, os.PathLike)):
        from pathlib import Path

        from mmf_stream.store.durability import own_format

        if own_format(Path(source)) == "class-store":
            return Store.open(source, mode="r")
    return None


def factorize(
    C: Any = None,
    order: int = 5,
    core_size: int | None = None,
    seed: int = 0,
    *,
    means: Any = None,
    labels: Sequence[Any] | np.ndarray | None = None,
    schedule: str = "auto",
    candidates: str = "neighbors",
    options: EngineOptions | dict[str, Any] | None = None,
    symmetry_tolerance: float = 1e-8,
    progress: Callable[[int], None] | None = None,
    incremental: bool = True,
    map_clusters: MapClusters | None = None,
    client: Any = None,
    connect_timeout: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Factorization:
    """Multiresolution matrix factorization of a symmetric matrix or of class means.

    Parameters
    ----------
    C : array-like, Zarr array, SciPy sparse matrix, class store, path or URL
        The symmetric ``m x m`` matrix. A path is read with
        :func:`mmf_stream.read_matrix` (``.npy``, Zarr, Matrix Market); a URL
        (``s3://bucket/C.zarr``, ``file:///...``) names a Zarr array, read
        through fsspec (``s3://`` needs ``s3fs``: ``pip install
        'mmf_stream[s3]'``; see ``storage_options``). A class
        store (:class:`mmf_stream.Store` or its path) is factored from its
        means (``C = M M'``, centred/normalised as the store says): its dense
        covariance is never read; its labels are used unless ``labels`` is given.
    order : int, default 5
        ``k``, the number of indices each rotation mixes (2 <= k <= m).
    core_size : int, optional
        Size ``d`` of the dense core; ``m - d`` levels are computed. Defaults
        to ``order - 1`` (full depth).
    seed : int, default 0
        Seed for tie-breaking and clustering; results are deterministic for a seed.
    means : array-like of shape (m, D), or URL, optional
        Instead of ``C``: class means (NumPy, Zarr, Dask, or the URL of a Zarr
        array, as for ``C``). ``C = M M'`` is never formed; memory is
        O(m D + D^2) (docs/math.md, section 9). The
        result inserts new classes from their means alone
        (``f.insert(mean=mu, label=...)``).
    labels : sequence, optional
        One unique label (int or str) per row; travels with the result.
    schedule : {"auto", "greedy", "staged"}, default "auto"
        ``"greedy"``: one level at a time over the whole active set.
        ``"staged"``: levels in stages of independent clusters
        (docs/math.md, section 4), each tuple still scored with its exact Gram
        over the whole active set; for large m. ``"auto"``: greedy up to
        ``options.auto_dense_greedy_max`` (dense) or
        ``options.auto_factored_greedy_max`` (means) indices, staged above.
    candidates : {"neighbors", "exhaustive"}
        ``"neighbors"``: every active index is a pivot whose tuple is itself
        and its most strongly coupled active neighbours, candidates cached
        across levels. ``"exhaustive"``: every k-subset of the active set at
        every level (tiny matrices only; always greedy).
    options : EngineOptions or dict, optional
        Policy numbers of the engine (:class:`mmf_stream.EngineOptions`).
    symmetry_tolerance : float, default 1e-8
        Largest accepted ``|C - C'|`` relative to ``max |C|``.
    progress : callable, optional
        Called with the number of levels finished since its last call. With
        ``client=``, a ``stage(number, active)`` method of the same object,
        if it has one, is called as each stage starts (progress bars).
    incremental : bool, default True
        Keep the insertion state (snapshots at about 30% of the size and at
        ``options.max_deep_snapshot`` indices: dense blocks for a matrix,
        rotated means for class means) so that :meth:`Factorization.insert`
        can extend the result.
    map_clusters : callable, optional
        ``map_clusters(function, tasks)`` runs a stage's cluster tasks (default:
        in turn, in this process); any order gives the same result.
    client : distributed.Client or str, optional
        Run the staged levels on a Dask cluster: a ``Client`` or a scheduler
        address (``"tcp://HOST:PORT"``). Give ``C`` (or ``means``) as a Zarr
        array, path or URL: every worker reads its own blocks of rows; only
        cluster memberships, rotations and small summaries pass through the
        client. The result is bit-identical to the local staged engine's for
        the same input and seed, whatever the number of workers. Where the
        schedule resolves to greedy (small inputs), the client is not used.
        ``f.metadata["dask"]`` records every stage (seconds, bytes moved).
    connect_timeout : float, optional
        Seconds to wait for the scheduler when ``client`` is an address
        (default ``mmf_stream.dask_client.CONNECT_TIMEOUT``, 5 s); past it a
        ``ConnectionError`` names the address.
    storage_options : mapping, optional
        For ``C`` or ``means`` given by URL: the fsspec filesystem's keyword
        arguments (for ``s3fs``: ``endpoint_url``, ``key``, ``secret``,
        ``anon``, ``client_kwargs``, ...). Without them each process, the
        workers included, reads its own environment (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...). They travel with
        the array to the workers (credentials too: prefer the environment or
        instance roles for secrets).

    Returns
    -------
    Factorization

    Raises
    ------
    ValueError, TypeError
        On invalid input (see :mod:`mmf_stream.validation`), or a URL that
        does not open as a Zarr array (one line naming it: a missing bucket or
        object, a missing ``s3fs``, an unreachable endpoint).
    OSError
        If a Dask worker cannot read its rows of a Zarr input (one line naming it).
    ConnectionError
        If the scheduler at ``client`` does not answer within ``connect_timeout``.
    """
    if C is not None and means is not None:
        raise ValueError("give either C or means=, not both")
    if C is None and means is None:
        raise TypeError("factorize() needs a matrix C or class means (means=...)")
    C, means = _open_urls(C, means, storage_options)
    store_labels = None
    if C is not None:
        store = _class_store(C)
        if store is not None:
            if store.size < 2:
                raise ValueError(f"{store.path} holds {store.size} class(es); MMF needs at least 2 (and at least "
                                 "the order)")
            means, store_labels, C = store.factor(), store.labels, None
        elif isinstance(C, (str, os.PathLike)):
            from mmf_stream.io import read_matrix

            opened = _zarr_array(C) if client is not None else None
            C = opened if opened is not None else read_matrix(C)  # Zarr on a cluster: the workers read it
    V.check_choice("candidates", candidates, CANDIDATE_METHODS)
    V.check_choice("schedule", schedule, SCHEDULES)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    opts = resolve_options(options)
    factored = means is not None
    if client is not None and candidates != "exhaustive":
        from mmf_stream.dask_client import open_source

        source = open_source(means if factored else C, dense=not factored)
        if resolve_schedule(schedule, int(source.shape[0]), factored, opts) == "staged":
            return _factorize_on_dask(client, source, factored=factored, order=order, core_size=core_size,
                                         seed=int(seed), labels=labels if labels is not None else store_labels,
                                         label_policy=labels is not None, options=opts,
                                         symmetry_tolerance=symmetry_tolerance, progress=progress,
                                         incremental=incremental, candidates=candidates,
                                         connect_timeout=connect_timeout)
    if factored:
        work = V.means_matrix(means)
    else:
        work = V.symmetric_matrix(C, tolerance=symmetry_tolerance)
    size = work.shape[0]
    order, core_size = V.order_and_core(order, core_size, size)
    labels_array = V.labels_for(labels, size) if labels is not None else \
        V.labels_for(store_labels, size, policy=False)  # a store's labels stay usable as they were stored
    n_levels = size - core_size
    if candidates == "exhaustive":
        _check_exhaustive_cost(size, order, n_levels)
    chosen = "greedy" if candidates == "exhaustive" else resolve_schedule(schedule, size, factored, opts)
    if factored:
        norm = float(np.linalg.norm(work.T @ work))  # ||M M'||_F = ||M' M||_F
        fingerprint = of_means(work)
        run = factor_means
    else:
        norm = float(np.linalg.norm(work))
        fingerprint = of_matrix(work)  # before the engine consumes ``work``
        run = factor_dense
    raw, state = run(
        work, order, n_levels, schedule=chosen, seed=int(seed), options=opts, exhaustive=candidates == "exhaustive",
        progress=progress, snapshot_sizes=snapshot_sizes(size, order, core_size, opts) if incremental else (),
        map_clusters=map_clusters,
    )
    del work
    if not incremental:
        state = InsertionState()
    return Factorization(
        raw,
        order=order,
        norm=norm,
        labels=labels_array,
        metadata={"seed": int(seed), "candidates": candidates, "fingerprint": fingerprint, "schedule": chosen,
                  "input": "means" if factored else "matrix", "options": opts},
        insertion_state=state,
    )


def _zarr_array(path: Any) -> Any:
    """The Zarr array at the local ``path``, or None."""
    from mmf_stream.dask_client import open_zarr_array

    return open_zarr_array(path)


def _open_urls(C: Any, means: Any, storage_options: Any) -> tuple[Any, Any]:
    """``C`` and ``means`` with a URL opened as its Zarr array (read where it is used: on the
    workers with a client, here without); ``storage_options`` only with a URL."""
    from mmf_stream.store.object_stores import check_storage_options, is_url, open_url_array

    options = check_storage_options(storage_options)
    if not (is_url(C) or is_url(means)):
        if options is not None:
            raise ValueError("storage_options= applies to a matrix or means given by URL (s3://...), "
                             "not to a local path or an array")
        return C, means
    return (open_url_array(C, options) if is_url(C) else C), (open_url_array(means, options) if is_url(means) else means)


def _factorize_on_dask(client: Any, source: Any, *, factored: bool, order: Any, core_size: Any, seed: int,
                          labels: Any, options: EngineOptions, symmetry_tolerance: float,
                          progress: Callable[[int], None] | None, incremental: bool, candidates: str,
                          connect_timeout: float | None = None, label_policy: bool = True) -> Factorization:
    """:func:`factorize` with the staged levels on a Dask cluster (:mod:`mmf_stream.dask_client`)."""
    from mmf_stream.dask_client import connect_client, worker_failures, factor_on_dask

    size = int(source.shape[0])
    order, core_size = V.order_and_core(order, core_size, size)
    labels_array = V.labels_for(labels, size, policy=label_policy)
    with connect_client(client, connect_timeout=connect_timeout) as dask_client, \
            worker_failures(_scheduler_address(dask_client)):
        raw, state, norm, fingerprint, compression = factor_on_dask(
            dask_client, source, factored=factored, order=order, core_size=core_size, seed=seed, options=options,
            symmetry_tolerance=symmetry_tolerance, progress=progress,
            snapshot_sizes=snapshot_sizes(size, order, core_size, options) if incremental else (),
        )
    if not incremental:
        state = InsertionState()
    stages = [vars(record).copy() for record in compression.stages]
    return Factorization(
        raw,
        order=order,
        norm=norm,
        labels=labels_array,
        metadata={"seed": seed, "candidates": candidates, "fingerprint": fingerprint, "schedule": "staged",
                  "input": "means" if factored else "matrix", "options": options,
                  "dask": {"stages": stages, "bytes_result": int(compression.bytes_result),
                           "input_bytes": int(size * source.shape[1] * 8)}},
        insertion_state=state,
    )


def _scheduler_address(client: Any) -> str:
    try:
        return str(client.scheduler.address)
    except AttributeError:
        return "the scheduler"


def project_factorization(path: str | os.PathLike) -> Factorization | None:
    """The last committed factorization of the project (class store) at ``path``, or None before one."""
    from mmf_stream.store.generations import Project, has_log

    if not has_log(path):
        return None
    with Project(path, readonly=True) as project:  # a reader writes nothing (a read-only project works)
        stored = project.load_stored()
    if stored is None:
        return None
    return Factorization.from_stored(stored)


def load(path: str | os.PathLike) -> Factorization:
    """Read a factorization written by :meth:`Factorization.save`.

    Parameters
    ----------
    path : str or path-like
        The result's Zarr group, or a project (a class store the service
        ``mmf-stream serve`` maintains): its last committed factorization.

    Returns
    -------
    Factorization
        With its insertion state (results of format version 1 have none).
    """
    from pathlib import Path

    from mmf_stream.store.durability import own_format

    if own_format(Path(path)) == "class-store":  # a project: its current factorization
        found = project_factorization(path)
        if found is None:
            raise ValueError(f"{path} is a project without a factorization yet (run 'mmf-stream serve {path}')")
        return found
    return Factorization.from_stored(load_stored(path))



#: ``refresh_drift`` left out: use ``options.refresh_drift`` (None means "never")
_FROM_OPTIONS: Any = object()


def factorize_incremental(
    C: Any,
    order: int = 5,
    initial_size: int | None = None,
    *,
    seed: int = 0,
    labels: Any = None,
    repair_every: int | None = None,
    refresh_drift: float | None = _FROM_OPTIONS,
    options: EngineOptions | dict[str, Any] | None = None,
    progress: Any = None,
) -> Factorization:
    """Batch MMF of a random block, then stream the remaining indices in one at a time.

    Parameters
    ----------
    C : array-like (m x m), symmetric
    order : int
    initial_size : int, optional
        Size of the random initial block (default ``m // 2``).
    seed : int
        Seed of the random order.
    labels : sequence, optional
    repair_every : int, optional
        Re-run from the shallow snapshot every this many insertions; 0 never
        repairs. Default ``options.repair_every`` (10).
    refresh_drift : float or None, optional
        When the energy dropped above the shallow cut exceeds this fraction of
        the error^2, factor everything inserted so far afresh (None: never).
        Default ``options.refresh_drift`` (0.05).
    options : EngineOptions or dict, optional
        Policy numbers of the engine.
    progress : callable, optional
        Called with 1 after each insertion.

    Returns
    -------
    Factorization
        Of ``C`` (indices in ``C``'s order), full depth (core ``order - 1``).
        ``metadata["repairs"]`` and ``metadata["refreshes"]`` count the repairs
        and batch refreshes done on the way.
    """
    overrides: dict[str, Any] = {}
    if repair_every is not None:
        if isinstance(repair_every, bool) or not isinstance(repair_every, (int, np.integer)) or repair_every < 0:
            raise ValueError(f"repair_every must be an integer >= 0, got {repair_every!r}")
        overrides["repair_every"] = int(repair_every)
    opts = resolve_options(options, **overrides)
    if refresh_drift is _FROM_OPTIONS:
        refresh_drift = opts.refresh_drift
    work = V.symmetric_matrix(C)
    size = work.shape[0]
    order, _ = V.order_and_core(order, None, size)
    label_array = V.labels_for(labels, size)
    if initial_size is None:
        initial_size = max(order, size // 2)
    if not order <= initial_size <= size:
        raise ValueError(f"initial_size must be between order = {order} and the size {size}, got {initial_size}")
    permutation = np.random.default_rng(seed).permutation(size)

    def batch(count: int) -> Factorization:
        chosen = permutation[:count]
        return factorize(
            work[np.ix_(chosen, chosen)], order=order, seed=seed, options=opts, schedule="greedy",
            labels=None if label_array is None else label_array[chosen],
        )

    current = batch(initial_size)
    refreshes = repairs = 0
    for step in range(initial_size, size):
        index = permutation[step]
        column = work[permutation[:step], index]
        current = current.insert(column, work[index, index],
                                 label=None if label_array is None else label_array[index].item(), options=opts)
        repairs += int(current.insertion_report.repaired)
        if refresh_drift is not None and current.insertion_report.drift > refresh_drift:
            current = batch(step + 1)
            refreshes += 1
        if progress is not None:
            progress(1)
    raw, state = permute(current._raw, current.insertion_state, permutation)
    return Factorization(
        raw,
        order=order,
        norm=float(np.linalg.norm(work)),
        labels=label_array,
        metadata={"seed": seed, "candidates": "neighbors", "refreshes": refreshes, "repairs": repairs,
                  "since_repair": 0, "drift": 0.0, "fingerprint": of_matrix(work), "schedule": "greedy",
                  "input": "matrix", "options": opts},
        insertion_state=state,
    )
