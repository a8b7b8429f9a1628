"""Every policy number of the engines, in one documented options object."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


#: the values of ``EngineOptions.neighbours``
NEIGHBOUR_RULES = ("faithful", "energy")
#: staged clusters under ``neighbours="energy"`` when ``cluster_size`` is None
ENERGY_CLUSTER_SIZE = 256
#: staged clusters under ``neighbours="faithful"`` when ``cluster_size`` is None: large enough that
#: a class's siblings rarely fall in another cluster before its first tuple
FAITHFUL_CLUSTER_SIZE = 1024


@dataclass(frozen=True)
class EngineOptions:
    """Policy numbers of the level loops, stages and insertion.

    The defaults are what the benchmarks measured; change them with
    ``ms.factorize(..., options=EngineOptions(cluster_size=512))`` or
    ``options={"cluster_size": 512}``.

    Attributes
    ----------
    neighbours : {"energy", "faithful"}, default "energy"
        How a pivot's candidate tuple is completed. ``"energy"``: the pivot's
        ``k - 1`` active positions of largest ``|C[p, j]| / ||C[j, :]||``
        (normalised coupling of the current rows; the only rule up
        to 0.6). ``"faithful"``: a pivot that was never rotated takes the
        ``k - 1`` active positions most similar to it *in the input*
        (``|C[p, j]| / sqrt(C[p, p] C[j, j])``, the cosine of class means),
        whatever they became since; a rotated pivot takes the energy rule
        among rotated positions only; and while any never-rotated index is
        active, a level ranks only never-rotated pivots' candidates.
        So every index joins its first tuple with its nearest classes, before
        they can leave as wavelets of unrelated tuples: the tuples follow a
        planted hierarchy as an average-linkage dendrogram does (see
        docs/fidelity.md). The price is error: measured 4-18% higher than
        ``"energy"`` on the benchmarks' inputs (up to 33%), which is why
        ``"energy"`` stays the default; choose ``"faithful"`` to read the graph
        as a hierarchy.
    identity_list : int, default 16
        ``neighbours="faithful"``: the input's most similar positions kept per
        index (computed once, from the rows at the start of the greedy levels,
        and ordered by average linkage: each entry is the one of largest mean
        cosine to the index and the entries before it; a never-rotated pivot
        takes the first ``k - 1`` active entries, and one whose list has fewer
        left falls back to the energy rule).
    rescore : int, default 2
        Cached candidates rescored exactly at each greedy level (guards against
        drift of the cached scores and lets the multi-start optimiser choose).
    max_iter : int, default 10
        Iterations of the wavelet-direction refinement of a rescored candidate.
    rebuild_iter : int, default 1
        Refinement iterations for a candidate whose cache entry is rebuilt.
    starts : int, default 2
        Jacobi vectors refined when a candidate is rescored exactly.
    eager_rebuilds : int, default 256
        When at most this many cached candidates went stale at a level, all are
        rebuilt; above it (uncentred class covariances, where every pivot's
        neighbours are the same few hub classes) only this many, those with the
        best estimated scores, plus the stale candidates that reach the top of
        the score ranking (lazy refresh, at most ``max_rebuilds``). This bounds
        the work per level.
    max_rebuilds : int, default 64
        Cap on lazy rebuilds per level.
    cluster_size : int or None, default None
        Largest cluster of a staged run (docs/math.md, section 4). None:
        ``ENERGY_CLUSTER_SIZE`` (256) under ``neighbours="energy"``,
        ``FAITHFUL_CLUSTER_SIZE`` (1024) under ``neighbours="faithful"``, whose
        first tuples need a class's siblings in its cluster (with 256, staged
        partners score 0.92-0.95x greedy's on trees of 2,401 and 3,125
        classes; with 1024, 0.97-0.98x, at about twice the staged time;
        docs/fidelity.md). See :attr:`stage_cluster_size`.
    stage_fraction : float, default 0.5
        Fraction of each cluster's indices that become wavelets in one stage.
    decoupled_tolerance : float or None, default 1e-10
        A staged cluster stops its levels before a tuple whose members fall
        apart into groups with no coupling between them: no entry of the
        tuple's block ``C[t, t]`` or Gram ``C[t, S] C[S, t]`` between the groups
        exceeds this fraction of the geometric mean of the two diagonal entries.
        Such a tuple is a smaller one padded with unrelated rows (the cluster
        holds fewer than ``k`` rows of a block); its rows wait for the next
        stage. When no cluster of a stage made a level, the final greedy
        levels take over at most ``4 * greedy_below`` active indices; above,
        the next stage passes such tuples over instead of stopping, and the
        one after that does not check. None: clusters never stop early.
    greedy_below : int, default 1024
        A staged run finishes with plain greedy levels once this few indices
        are active.
    sketch_width : int, default 64
        Columns of the random sketch ``C R`` used to cluster rows of a dense
        compression.
    auto_dense_greedy_max : int, default 6000
        ``schedule="auto"``: dense matrices up to this size use plain greedy.
    auto_factored_greedy_max : int, default 1024
        ``schedule="auto"``: class means up to this many classes use plain greedy.
    snapshot_fractions : tuple of float, default (0.30, 0.04)
        Insertion state: fractions of the size at which snapshots are kept
        (shallowest first).
    min_snapshot : int, default 24
        Smallest snapshot kept (indices).
    max_deep_snapshot : int, default 256
        Largest deepest snapshot (indices): every insertion re-runs the levels
        below it, so it bounds the cost of one insertion on large results.
    max_shallow_snapshot : int, default 12000
        Largest shallowest snapshot (indices): a repair re-runs the levels below
        it, so it bounds the cost of a repair (and the snapshot's memory) on
        large results.
    repair_every : int, default 10
        Every this many inserted indices (at least), the tail is re-run from the
        shallowest snapshot (a repair); 0 never repairs unless asked.
    repair_budget : int, default 120
        Levels a repair may cost per inserted index, amortised: on large
        results a repair re-running ``n`` levels waits for at least
        ``n / repair_budget`` insertions (100,000 classes: every 100).
    gram_block : int, default 4096
        Rows per block when the Gram ``W = M' M`` of class means is summed:
        blocks are summed in a fixed order, so the result does not depend on
        how rows are spread over Dask workers (the Dask engine reads inputs in
        blocks of this many rows).
    removal_wake_budget : int, default 256
        Knock-out: at most this many wavelets before the cut whose error grew
        most (the removed class's contribution, propagated through the kept
        rotations, couples them to the rest) are *woken*: their levels become
        rotation-only and their rows join the re-run tail. 0 wakes none.
    removal_wake_capture : float, default 0.99
        Knock-out: wake the fewest wavelets (within the budget) whose error
        growth sums to this fraction of the total growth.
    refresh_drift : float or None, default 0.05
        ``factorize_incremental``: when the energy dropped above the shallow cut
        exceeds this fraction of the error^2, factor everything so far afresh.
    """

    neighbours: str = "energy"
    identity_list: int = 16
    rescore: int = 2
    max_iter: int = 10
    rebuild_iter: int = 1
    starts: int = 2
    eager_rebuilds: int = 256
    max_rebuilds: int = 64
    cluster_size: int | None = None
    stage_fraction: float = 0.5
    decoupled_tolerance: float | None = 1e-10
    greedy_below: int = 1024
    sketch_width: int = 64
    auto_dense_greedy_max: int = 6000
    auto_factored_greedy_max: int = 1024
    snapshot_fractions: tuple[float, ...] = (0.30, 0.04)
    min_snapshot: int = 24
    max_deep_snapshot: int = 256
    max_shallow_snapshot: int = 12000
    repair_every: int = 10
    repair_budget: int = 120
    removal_wake_budget: int = 256
    removal_wake_capture: float = 0.99
    refresh_drift: float | None = 0.05
    gram_block: int = 4096

    @property
    def stage_cluster_size(self) -> int:
        """The largest cluster of a staged run: ``cluster_size``, or the neighbour rule's default."""
        if self.cluster_size is not None:
            return self.cluster_size
        return FAITHFUL_CLUSTER_SIZE if self.neighbours == "faithful" else ENERGY_CLUSTER_SIZE

    def __post_init__(self) -> None:
        if self.neighbours not in NEIGHBOUR_RULES:
            raise ValueError(f"options.neighbours must be one of {', '.join(NEIGHBOUR_RULES)}, got {self.neighbours!r}")
        positive = ("identity_list", "rescore", "max_iter", "rebuild_iter", "starts", "max_rebuilds", "sketch_width",
                    "min_snapshot", "max_deep_snapshot", "max_shallow_snapshot", "repair_budget", "gram_block")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"options.{name} must be an integer >= 1, got {value!r}")
        if self.eager_rebuilds < 1:
            raise ValueError(f"options.eager_rebuilds must be an integer >= 1, got {self.eager_rebuilds!r}")
        for name in ("eager_rebuilds", "repair_every", "removal_wake_budget", "auto_dense_greedy_max",
                     "auto_factored_greedy_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"options.{name} must be an integer >= 0, got {value!r}")
        if self.cluster_size is not None and (isinstance(self.cluster_size, bool) or not isinstance(self.cluster_size, int)
                                              or self.cluster_size < 16):
            raise ValueError(f"options.cluster_size must be None or an integer >= 16, got {self.cluster_size!r}")
        if isinstance(self.greedy_below, bool) or not isinstance(self.greedy_below, int) or self.greedy_below < 2:
            raise ValueError(f"options.greedy_below must be an integer >= 2, got {self.greedy_below!r}")
        if not 0.0 < float(self.stage_fraction) <= 0.9:
            raise ValueError(f"options.stage_fraction must be in (0, 0.9], got {self.stage_fraction!r}")
        fractions = tuple(float(x) for x in self.snapshot_fractions)
        if not fractions or any(not 0.0 < x < 1.0 for x in fractions) or list(fractions) != sorted(fractions, reverse=True):
            raise ValueError("options.snapshot_fractions must be decreasing fractions in (0, 1)")
        if not 0.0 < float(self.removal_wake_capture) <= 1.0:
            raise ValueError(f"options.removal_wake_capture must be in (0, 1], got {self.removal_wake_capture!r}")
        if self.decoupled_tolerance is not None and not 0.0 <= float(self.decoupled_tolerance) < 1.0:
            raise ValueError(f"options.decoupled_tolerance must be in [0, 1) or None, got {self.decoupled_tolerance!r}")
        if self.refresh_drift is not None and not float(self.refresh_drift) > 0.0:
            raise ValueError(f"options.refresh_drift must be positive or None, got {self.refresh_drift!r}")


DEFAULT_OPTIONS = EngineOptions()


def resolve_options(options: EngineOptions | dict[str, Any] | None, **overrides: Any) -> EngineOptions:
    """An :class:`EngineOptions` from None, an instance or a dict, with ``overrides`` applied."""
    if options is None:
        base = DEFAULT_OPTIONS
    elif isinstance(options, EngineOptions):
        base = options
    elif isinstance(options, dict):
        known = {f.name for f in fields(EngineOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown engine option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        base = EngineOptions(**options)
    else:
        raise TypeError(f"options must be an EngineOptions or a dict, got {type(options).__name__}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **overrides) if overrides else base
