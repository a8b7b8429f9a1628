"""Streaming a whole matrix into a factorization (the incremental paper's Algorithm 3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmf_stream import _validation as V
from mmf_stream._factorization import Factorization, InsertionReport, factorize
from mmf_stream._fingerprint import of_matrix
from mmf_stream.engine.incremental import permute
from mmf_stream.engine.options import EngineOptions, resolve_options

__all__ = ["InsertionReport", "factorize_incremental"]

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
