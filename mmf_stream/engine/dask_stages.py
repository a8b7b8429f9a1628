"""Staged levels on a Dask cluster: the compression lives on the workers as blocks of rows.

Design (docs/math.md, section 4):

* The compression is a list of *shards*, each a :class:`RowShard` (sorted
  positions and their full rows: ``C[rows, S]`` dense, ``M[rows]`` factored)
  held by Dask futures on the workers. Workers read the first shards straight
  from the input (a Zarr array by path or URL); the client never holds the
  matrix.
* A stage is a fixed batch of tasks per round, not per level: *features*
  (the rows' sketch, ``n x sketch_width`` numbers back to the client, which
  partitions them exactly as the local engine does); *factor* (rows are
  regrouped into buckets, contiguous runs of clusters in the recorded order,
  on the workers; each bucket factors its clusters and rotates their rows;
  only the levels, ``k x k`` rotations, come back); *apply* (every row's
  columns are rotated by the stage's levels, the wavelets' exact row energies
  computed, the wavelets dropped; only energies come back). Factored runs add
  a *chain* of small tasks that down-dates ``W = M_S' M_S`` cluster by
  cluster in the recorded order (``D x D`` matrices between workers).
* Data stays resident as ordinary task results (futures), not actors: Dask
  keeps the lineage, so a worker lost mid-stage has its shards recomputed from
  the tasks before them, back to the Zarr reads, and the result is unchanged.
  Actors would lose their state with the worker.
* Results are bit-identical to the local engine's for the same input and
  seed, whatever the number of workers: every quantity is computed by the
  same function on the same rows (row-wise kernels, :func:`stable_matmul
  <mmf_stream.engine.row_blocks.stable_matmul>`, reductions over fixed blocks in a
  fixed order), and buckets never change the arithmetic.

The final greedy levels (at most ``options.greedy_below`` indices) and the
insertion snapshots run in the client process on gathered shards
(:meth:`DaskCompression.to_local`).
"""

from __future__ import annotations

import operator
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmf_stream.engine import gram_kernels as GK
from mmf_stream.engine import kernels as K
from mmf_stream.engine import row_blocks as P
from mmf_stream.engine.compression import DenseCompression, FactoredCompression, _sequential_row_energy
from mmf_stream.engine.options import DEFAULT_OPTIONS, EngineOptions
from mmf_stream.engine.raw import Snapshot
from mmf_stream.engine.staged import ClusterLevels, ClusterTask, factor_cluster

#: buckets (groups of clusters that travel together) per worker in a stage on small
#: clusters: two even out the load when clusters differ in cost
BUCKETS_PER_WORKER = 2
#: a dense input is read in blocks of this many rows (no sum runs across the rows of a
#: dense input, so the block only sets how many tasks share the reads and the first
#: stage's features; class means are read in blocks of ``options.gram_block`` rows, the
#: blocks of the Gram's fixed-order sum)
DENSE_READ_ROWS = 1024
#: from this many workers on, one bucket per worker: regrouping rows costs a task per
#: (shard, bucket) pair, so tasks grow like buckets^2
ONE_BUCKET_FROM = 4


@dataclass
class RowShard:
    """Some rows of the compression: their positions (sorted) and the rows themselves."""

    positions: np.ndarray
    rows: np.ndarray


@dataclass
class BucketWork:
    """A bucket after its clusters were factored: rows rotated, levels, factored extras."""

    bucket: Bucket
    levels: list[ClusterLevels]
    wavelet_rows: list[np.ndarray | None] = field(default_factory=list)  # factored: X of each cluster
    grams: list[np.ndarray | None] = field(default_factory=list)  # factored: X' X
    inners: list[np.ndarray | None] = field(default_factory=list)  # factored: X X'


# ------------------------------------------------------------------ worker tasks (pure)
def read_shard(source: Any, start: int, stop: int, factored: bool) -> tuple[RowShard, dict]:
    """Rows ``start:stop`` of the input, checked; returns the shard and a small summary.

    Dense rows come with a symmetry signature (:func:`symmetry_signature
    <mmf_stream.engine.gram_kernels.symmetry_signature>`): when the whole
    matrix's signatures agree it is exactly symmetric and the rows are its
    symmetric shard; otherwise :func:`symmetrize_shard` reads the matching columns.
    """
    rows = np.asarray(source.rows(start, stop))
    summary: dict[str, Any] = {"start": start, "bad": None}
    data = np.ascontiguousarray(rows, dtype=np.float64)
    if factored:
        if not np.isfinite(data).all():
            return _non_finite(data, start, stop, summary)
        summary["largest"] = float(np.max(np.abs(data), initial=0.0))
        summary["diagonal"] = np.einsum("ij,ij->i", data, data)
        return RowShard(np.arange(start, stop, dtype=np.int64), data), summary
    left, right = signature_multipliers(data.shape[1])
    forward, backward, finite, largest, squares = GK.symmetry_signature(
        data, np.arange(start, stop, dtype=np.int64), left, right)
    if not finite:
        return _non_finite(data, start, stop, summary)
    summary["signature"] = (forward, backward)
    summary["largest"] = float(largest)
    summary["sumsq"] = float(squares)
    summary["diagonal"] = data[np.arange(stop - start), np.arange(start, stop)].copy()
    return RowShard(np.arange(start, stop, dtype=np.int64), data), summary


def _non_finite(data: np.ndarray, start: int, stop: int, summary: dict) -> tuple[RowShard, dict]:
    bad = np.argwhere(~np.isfinite(data))[0]
    summary["bad"] = (int(bad[0]) + start, int(bad[1]))
    return RowShard(np.arange(start, stop), np.empty((0, 0))), summary


def signature_multipliers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The symmetry signature's random odd 64-bit multipliers for an ``size x size`` matrix."""
    rng = np.random.default_rng(GK.SIGNATURE_SEED)
    return rng.integers(0, 2**64, size=size, dtype=np.uint64), rng.integers(0, 2**64, size=size, dtype=np.uint64)


def symmetrize_shard(source: Any, start: int, stop: int) -> tuple[RowShard, dict]:
    """Rows ``start:stop`` of ``(C + C') / 2`` from the rows and the matching columns (not exactly symmetric C)."""
    rows = np.asarray(source.rows(start, stop))
    columns = np.asarray(source.columns(start, stop))  # C[:, start:stop]
    summary: dict[str, Any] = {"start": start, "bad": None}
    data, worst, i, j, largest, finite = GK.symmetric_rows(rows, columns)
    if not finite:
        bad = np.argwhere(~np.isfinite(columns))[0]
        summary["bad"] = (int(bad[0]), int(bad[1]) + start)
        return RowShard(np.arange(start, stop), np.empty((0, 0))), summary
    first, second = sorted((int(i) + start, int(j)))  # named upper triangle first, as the local check does
    summary["asymmetry"] = (float(worst), first, second)
    summary["largest"] = float(largest)
    summary["diagonal"] = data[np.arange(stop - start), np.arange(start, stop)].copy()
    summary["sumsq"] = float(np.einsum("ij,ij->", data, data))
    return RowShard(np.arange(start, stop, dtype=np.int64), data), summary


def shard_gram(shard: RowShard) -> np.ndarray:
    """``X' X`` of a shard (one block of :func:`mmf_stream.engine.row_blocks.blocked_gram`)."""
    return P.stable_cogram(shard.rows)


def shard_probe(shard: RowShard, vector: np.ndarray) -> np.ndarray:
    """``X v`` row by row."""
    return shard.rows @ vector


def shard_transpose_probe(shard: RowShard, vector: np.ndarray) -> np.ndarray:
    """``X' v[positions]``."""
    return shard.rows.T @ vector[shard.positions]


def frobenius(matrix: np.ndarray) -> float:
    return float(np.linalg.norm(matrix))


def sum_partials(*partials: np.ndarray) -> np.ndarray:
    return P.sum_in_order(list(partials))


def shard_features(shard: RowShard, sketch_state: dict | None, width: int, sketch: np.ndarray | None) -> np.ndarray:
    """Rows of the stage's features: ``C[rows] R`` (dense, R regenerated from the rng state) or ``M[rows] R``."""
    if sketch_state is not None:
        generator = np.random.Generator(np.random.PCG64())
        generator.bit_generator.state = sketch_state
        sketch = generator.standard_normal((shard.rows.shape[1], width))
    if sketch is None:
        return shard.rows.copy()
    return P.stable_matmul(shard.rows, sketch)


def split_shard(shard: RowShard, buckets: np.ndarray) -> dict[int, RowShard]:
    """The shard's rows by bucket (``buckets[i]`` is row ``i``'s)."""
    return {int(b): RowShard(shard.positions[buckets == b], shard.rows[buckets == b]) for b in np.unique(buckets)}


class Bucket:
    """A stage's group of clusters: the pieces its rows came in (not copied together), and
    where each of its positions lives (sorted positions -> piece, row)."""

    def __init__(self, pieces: list[RowShard]) -> None:
        self.pieces = pieces
        positions = np.concatenate([piece.positions for piece in pieces])
        owner = np.concatenate([np.full(piece.positions.shape[0], number, dtype=np.int64)
                                for number, piece in enumerate(pieces)])
        row = np.concatenate([np.arange(piece.positions.shape[0], dtype=np.int64) for piece in pieces])
        ordering = np.argsort(positions, kind="stable")
        self.positions = positions[ordering]
        self.piece_of = owner[ordering]
        self.row_of = row[ordering]

    def take(self, local: np.ndarray) -> np.ndarray:
        """The rows at sorted indices ``local``, copied into one array."""
        out = np.empty((local.shape[0], self.pieces[0].rows.shape[1]))
        for number, piece in enumerate(self.pieces):
            chosen = np.flatnonzero(self.piece_of[local] == number)
            if chosen.shape[0]:
                out[chosen] = piece.rows[self.row_of[local[chosen]]]
        return out

    def put(self, local: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` back as the rows at sorted indices ``local``."""
        for number, piece in enumerate(self.pieces):
            chosen = np.flatnonzero(self.piece_of[local] == number)
            if chosen.shape[0]:
                piece.rows[self.row_of[local[chosen]]] = values[chosen]


def assemble(*pieces: RowShard) -> Bucket:
    """A bucket from its pieces (no rows copied)."""
    return Bucket(list(pieces))


def factor_bucket(bucket: Bucket, clusters: list[tuple[np.ndarray, np.ndarray, int, np.ndarray | None]], factored: bool,
                  inner: np.ndarray | None, order: int, options: EngineOptions,
                  decoupled: str | None = "stop") -> BucketWork:
    """Factor every cluster of a bucket (members in positions, tie-break values, quota, fresh mask) and rotate its rows.

    ``decoupled`` is :attr:`ClusterTask.decoupled` of every cluster.
    """
    # the bucket's only consumer is this task, on the same worker: its rows are rotated in
    # place (a lost bucket is rebuilt from its pieces, never reused half-rotated)
    work = BucketWork(bucket, [])
    for members, tie_break, quota, fresh in clusters:
        local = np.searchsorted(bucket.positions, members)
        x = bucket.take(local)
        if factored:
            block, gram = P.factored_cluster_inputs(x, inner)
        else:
            block, gram = P.dense_cluster_inputs(x, members)
        result = factor_cluster(ClusterTask(block, gram, tie_break=tie_break, quota=int(quota), order=order,
                                            options=options, fresh=fresh, decoupled=decoupled))
        work.levels.append(result)
        if not factored:
            K.apply_rotations(x, result.tuples, result.rotations, False)
            bucket.put(local, x)
            continue
        if not result.wavelets.shape[0]:
            work.wavelet_rows.append(None)
            work.grams.append(None)
            work.inners.append(None)
            continue
        x = P.stable_matmul(result.mixing(members.shape[0]), x)
        bucket.put(local, x)
        wavelet_rows = x[result.wavelets]
        work.wavelet_rows.append(wavelet_rows)
        work.grams.append(P.stable_cogram(wavelet_rows))
        work.inners.append(P.stable_gram(wavelet_rows))
    return work


def bucket_levels(work: BucketWork) -> list[ClusterLevels]:
    return work.levels


def chain_link(inner: np.ndarray, work: BucketWork) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """``W`` before each of the bucket's clusters, down-dated cluster by cluster in order; and ``W`` after."""
    current = inner.copy()
    before: list[np.ndarray | None] = []
    for gram in work.grams:
        if gram is None:
            before.append(None)
            continue
        before.append(current.copy())
        current -= gram
    return current, before


def apply_dense(work: BucketWork, tuples: np.ndarray, rotations: np.ndarray, wavelets: np.ndarray,
                first: int, keep: np.ndarray) -> tuple[RowShard, np.ndarray, np.ndarray]:
    """Rotate the bucket's columns by the stage's levels, take its wavelets' energies, drop every wavelet.

    The bucket's wavelets are ``wavelets[first:first + q]`` (recorded order).
    Returns the compacted shard (new positions) and the wavelets' diagonal and ``r^2``.
    """
    bucket = work.bucket
    count = sum(int(result.wavelets.shape[0]) for result in work.levels)
    recorded = np.arange(first, first + count, dtype=np.int64)
    local = np.searchsorted(bucket.positions, wavelets[recorded])
    owner, row = bucket.piece_of[local], bucket.row_of[local]
    diagonal, energy = np.empty(count), np.empty(count)
    active = np.ones(keep.shape[0] + wavelets.shape[0], dtype=np.bool_)
    is_wavelet = np.zeros(bucket.positions.shape[0], dtype=np.bool_)
    is_wavelet[local] = True
    new_positions = np.searchsorted(keep, bucket.positions[~is_wavelet])  # sorted: the output's order
    destination = np.full(bucket.positions.shape[0], -1, dtype=np.int64)
    destination[~is_wavelet] = np.arange(new_positions.shape[0])
    out = np.empty((new_positions.shape[0], keep.shape[0]))
    for number, piece in enumerate(bucket.pieces):
        GK.rotate_columns(piece.rows, tuples, rotations)  # in place: this task is the rows' last consumer
        chosen = np.flatnonzero(owner == number)
        if chosen.shape[0]:
            diagonal[chosen], energy[chosen] = GK.ordered_row_energy(piece.rows, row[chosen], recorded[chosen],
                                                                     active, wavelets)
        mine = np.flatnonzero((bucket.piece_of == number) & ~is_wavelet)  # sorted indices of kept rows
        GK.take_block_into(piece.rows, bucket.row_of[mine], keep, out, destination[mine])
    return RowShard(new_positions, out), diagonal, energy


def apply_factored(work: BucketWork, chain: tuple[np.ndarray, list], keep: np.ndarray):
    """The bucket's wavelets' exact energies (``W`` from the chain), their final rows, the compacted shard."""
    bucket = work.bucket
    diagonals, energies, finals = [], [], []
    for wavelet_rows, inner, before in zip(work.wavelet_rows, work.inners, chain[1]):
        if wavelet_rows is None:
            continue
        energy = P.wavelet_energies(wavelet_rows, before)
        diagonals.append(np.diagonal(inner).copy())
        energies.append(_sequential_row_energy(energy, inner))
        finals.append(wavelet_rows)
    kept = np.flatnonzero(np.isin(bucket.positions, keep, assume_unique=True))  # sorted
    empty = np.empty(0)
    width = bucket.pieces[0].rows.shape[1]
    return (RowShard(np.searchsorted(keep, bucket.positions[kept]), bucket.take(kept)),
            np.concatenate(diagonals) if diagonals else empty, np.concatenate(energies) if energies else empty,
            np.concatenate(finals) if finals else np.empty((0, width)))


# ------------------------------------------------------------------ the client's side
@dataclass
class StageRecord:
    """What one stage cost and moved (bytes between the client and the cluster)."""

    stage: int
    active: int
    clusters: int = 0
    buckets: int = 0
    levels: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    rounds: int = 0


def _nbytes(value: Any) -> int:
    from dask.sizeof import sizeof

    return int(sizeof(value))


class DaskCompression:
    """The staged engine's compression held by Dask workers (see the module docstring).

    Build it with :meth:`from_source`. ``stages`` records every stage's cost;
    ``bytes_result`` what was gathered for the result (snapshots, the final
    rows, the last indices).
    """

    def __init__(self, client: Any, factored: bool, size: int, width: int, shards: list, shard_positions: list,
                 inner: Any, explicit_max: int, options: EngineOptions, token: str) -> None:
        self.client = client
        self.factored = factored
        self.n = size
        self.size = size  # the input's
        self.width = width  # columns of a factored row (D); dense: n
        self.shards = shards
        self.shard_positions = shard_positions
        self.inner = inner  # factored: future of W = M_S' M_S
        self.explicit_max = explicit_max
        self.options = options
        self.token = token
        self.active = np.ones(size, dtype=np.bool_)
        self.index = np.arange(size, dtype=np.int64)
        self.final_rows: list[tuple[Any, np.ndarray]] = []  # factored: (future of rows, original indices)
        self.stages: list[StageRecord] = []
        self.bytes_result = 0
        self._work: list = []
        self._runs: list[list[int]] = []
        self._names: list[str] = []
        self._stage = 0
        #: called with (stage, active indices) when a stage starts (progress bars)
        self.on_stage = None

    # ------------------------------------------------------------- set-up
    @classmethod
    def from_source(cls, client: Any, source: Any, size: int, width: int, *, factored: bool,
                    explicit_max: int = 0, options: EngineOptions = DEFAULT_OPTIONS) -> tuple[DaskCompression, list]:
        """Submit the reads of ``source`` in blocks of rows (``options.gram_block`` for class
        means, :data:`DENSE_READ_ROWS` for a dense matrix); returns the compression and the
        read summaries.

        ``source.for_block(start, stop)`` gives what a read task needs (a picklable
        object with ``rows(start, stop)`` and, dense, ``columns(start, stop)``).
        """
        token = uuid.uuid4().hex[:8]
        # class means: the Gram's fixed blocks; a dense matrix: the source's row chunks (a read
        # never decompresses a chunk another read decompresses too), else DENSE_READ_ROWS
        block = options.gram_block if factored else int(getattr(source, "row_chunk", 0) or DENSE_READ_ROWS)
        bounds = P.block_bounds(size, block)
        reads = [client.submit(read_shard, source.for_block(start, stop), start, stop, factored,
                               key=task_key("read", 0, f"rows{start}to{stop}", token), pure=False)
                 for start, stop in bounds]
        shards = [client.submit(operator.getitem, read, 0, key=task_key("shard", 0, f"rows{start}to{stop}", token))
                 for read, (start, stop) in zip(reads, bounds)]
        summaries = client.gather([client.submit(operator.getitem, read, 1,
                                                 key=task_key("summary", 0, f"shard{i}", token))
                                   for i, read in enumerate(reads)])
        if not factored and not any(summary["bad"] for summary in summaries):
            forward = backward = np.uint64(0)
            for summary in summaries:
                forward ^= summary["signature"][0]
                backward ^= summary["signature"][1]
            if forward == backward:  # exactly symmetric: the rows are the symmetric shard
                for summary in summaries:
                    summary["asymmetry"] = (0.0, 0, 0)
            else:  # read the matching columns too
                reads = [client.submit(symmetrize_shard, source.for_block(start, stop), start, stop,
                                       key=task_key("symmetrize", 0, f"rows{start}to{stop}", token), pure=False)
                         for i, (start, stop) in enumerate(bounds)]
                shards = [client.submit(operator.getitem, read, 0, key=task_key("shard", 0, f"symmetric{i}", token))
                         for i, read in enumerate(reads)]
                summaries = client.gather([client.submit(operator.getitem, read, 1,
                                                         key=task_key("summary", 0, f"symmetric{i}", token))
                                           for i, read in enumerate(reads)])
        inner = None
        if factored and not any(summary["bad"] for summary in summaries):
            grams = [client.submit(shard_gram, shard, key=task_key("gram", 0, f"shard{i}", token))
                     for i, shard in enumerate(shards)]
            inner = client.submit(sum_partials, *grams, key=task_key("inner", 0, "all", token))
        del reads
        compression = cls(client, factored, size, width if factored else size, shards,
                          [np.arange(start, stop, dtype=np.int64) for start, stop in bounds], inner, explicit_max,
                          options, token)
        compression.bytes_result += sum(_nbytes(summary) for summary in summaries)
        return compression, summaries

    def probe(self, vector: np.ndarray) -> np.ndarray:
        """``C v`` (dense) or ``M (M' v)`` (factored), computed on the workers."""
        client = self.client
        if self.factored:
            partials = [client.submit(shard_transpose_probe, shard, vector, pure=False) for shard in self.shards]
            vector_future = client.submit(sum_partials, *partials, pure=False)
            pieces = client.gather([client.submit(shard_probe, shard, vector_future, pure=False)
                                    for shard in self.shards])
        else:
            pieces = client.gather([client.submit(shard_probe, shard, vector, pure=False) for shard in self.shards])
        return np.concatenate(pieces)

    def inner_norm(self) -> float:
        """``||W||_F`` of the factored input (``= ||M M'||_F``)."""
        return float(self.client.submit(frobenius, self.inner, pure=False).result())

    # ------------------------------------------------------------- stages
    @property
    def explicit(self) -> str | None:
        """Not None once a factored run is small enough for the local explicit compression."""
        return "local" if self.factored and self.n <= self.explicit_max else None

    def _record(self) -> StageRecord:
        if not self.stages or self.stages[-1].stage != self._stage:
            self.stages.append(StageRecord(stage=self._stage, active=self.n))
        return self.stages[-1]

    def _key(self, phase: str, detail: str) -> str:
        return task_key(phase, self._stage, detail, self.token)

    def _workers(self) -> list[str]:
        return sorted(self.client.scheduler_info()["workers"])

    def features(self, width: int, rng: np.random.Generator) -> np.ndarray:
        self._stage += 1
        if self.on_stage is not None:
            self.on_stage(self._stage, self.n)
        record = self._record()
        started = time.perf_counter()
        client = self.client
        if self.factored:
            sketch = None if self.width <= width else rng.standard_normal((self.width, width))
            state = None
        else:
            state = rng.bit_generator.state
            rng.standard_normal((self.n, width))  # the local engine draws the same sketch here
            sketch = None
        futures = [client.submit(shard_features, shard, state, width, sketch,
                                 key=self._key("features", f"shard{i}"))
                   for i, shard in enumerate(self.shards)]
        record.bytes_sent += (_nbytes(state) + _nbytes(sketch)) * len(futures)
        pieces = client.gather(futures)
        record.bytes_received += sum(_nbytes(piece) for piece in pieces)
        out = np.empty((self.n, pieces[0].shape[1]))
        for positions, piece in zip(self.shard_positions, pieces):
            out[positions] = piece
        record.rounds += 1
        record.seconds += time.perf_counter() - started
        return out

    def _bucket_runs(self, sizes: list[int]) -> list[list[int]]:
        """Contiguous runs of clusters with about equal rows, one per bucket."""
        workers = len(self._workers())
        per_worker = 1 if workers >= ONE_BUCKET_FROM else BUCKETS_PER_WORKER
        count = min(len(sizes), max(1, per_worker * workers))
        target = sum(sizes) / count
        runs: list[list[int]] = [[]]
        filled = 0.0
        for number, size in enumerate(sizes):
            if runs[-1] and filled + size / 2 > target * len(runs) and len(runs) < count:
                runs.append([])
            runs[-1].append(number)
            filled += size
        return runs

    def factor_stage(self, members: list[np.ndarray], quotas: np.ndarray, tie_breaks: list[np.ndarray],
                     order: int, options: EngineOptions,
                     freshes: list[np.ndarray] | None = None,
                     decoupled: str | None = "stop") -> list[ClusterLevels]:
        record = self._record()
        started = time.perf_counter()
        client = self.client
        runs = self._bucket_runs([group.shape[0] for group in members])
        names = [f"bucket{b}-clusters{run[0]}to{run[-1]}" for b, run in enumerate(runs)]
        bucket_of = np.full(self.n, -1, dtype=np.int64)
        for b, run in enumerate(runs):
            for number in run:
                bucket_of[members[number]] = b
        workers = self._workers()
        pieces: dict[int, list] = {b: [] for b in range(len(runs))}
        for i, (shard, positions) in enumerate(zip(self.shards, self.shard_positions)):
            buckets = bucket_of[positions]
            split = client.submit(split_shard, shard, buckets, key=self._key("split", f"shard{i}"))
            record.bytes_sent += _nbytes(buckets)
            for b in np.unique(buckets):
                pieces[int(b)].append(client.submit(operator.getitem, split, int(b),
                                                    key=self._key("piece", f"shard{i}-bucket{b}")))
        self._work = []
        self._hints = []
        level_futures = []
        for b, run in enumerate(runs):
            hint = dict(workers=[workers[b % len(workers)]], allow_other_workers=True)
            bucket = client.submit(assemble, *pieces[b], key=self._key("bucket", names[b]), **hint)
            clusters = [(members[number], tie_breaks[number], int(quotas[number]),
                         None if freshes is None else freshes[number]) for number in run]
            record.bytes_sent += _nbytes(clusters)
            work = client.submit(factor_bucket, bucket, clusters, self.factored, self.inner, order, options,
                                 decoupled, key=self._key("factor", names[b]), **hint)
            self._work.append(work)
            self._hints.append(hint)
            level_futures.append(client.submit(bucket_levels, work, key=self._key("levels", names[b])))
        self._runs = runs
        self._names = names
        results = [result for levels in client.gather(level_futures) for result in levels]
        record.bytes_received += sum(_nbytes(result) for result in results)
        record.clusters = len(members)
        record.buckets = len(runs)
        record.rounds += 1
        record.seconds += time.perf_counter() - started
        return results

    def apply_stage(self, groups: list[np.ndarray], results: list[ClusterLevels]):
        record = self._record()
        started = time.perf_counter()
        client = self.client
        tuples = np.concatenate([group[result.tuples] for group, result in zip(groups, results)])
        rotations = np.concatenate([result.rotations for result in results])
        wavelets = np.concatenate([group[result.wavelets] for group, result in zip(groups, results)])
        keep_mask = np.ones(self.n, dtype=np.bool_)
        keep_mask[wavelets] = False
        keep = np.flatnonzero(keep_mask)
        counts = [sum(int(results[number].wavelets.shape[0]) for number in run) for run in self._runs]
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        if self.factored:
            shared = client.submit(_identity, keep, key=self._key("keep", "all"))
            record.bytes_sent += _nbytes(keep)
            outputs = []
            inner = self.inner
            for b, work in enumerate(self._work):
                hint = self._hints[b]
                chain = client.submit(chain_link, inner, work, key=self._key("chain", self._names[b]), **hint)
                inner = client.submit(operator.getitem, chain, 0, key=self._key("inner", self._names[b]),
                                      **hint)
                outputs.append(client.submit(apply_factored, work, chain, shared,
                                             key=self._key("apply", self._names[b]), **hint))
            self.inner = inner
        else:
            shared = client.submit(_identity, (tuples, rotations, wavelets, keep),
                                   key=self._key("stagelevels", "all"))
            record.bytes_sent += _nbytes((tuples, rotations, wavelets, keep))
            outputs = [client.submit(_apply_dense_shared, work, shared, int(first),
                                     key=self._key("apply", self._names[b]), **self._hints[b])
                       for b, (work, first) in enumerate(zip(self._work, firsts))]
        new_shards, new_positions, diagonal, energy = [], [], [], []
        summaries = client.gather([client.submit(_energies, output, key=self._key("energy", self._names[b]))
                                   for b, output in enumerate(outputs)])
        for b, (output, (shard_diagonal, shard_energy)) in enumerate(zip(outputs, summaries)):
            new_shards.append(client.submit(operator.getitem, output, 0, key=self._key("shard", self._names[b])))
            diagonal.append(shard_diagonal)
            energy.append(shard_energy)
            record.bytes_received += _nbytes(shard_diagonal) + _nbytes(shard_energy)
            members = np.concatenate([groups[number] for number in self._runs[b]])
            members = np.sort(members[keep_mask[members]])
            new_positions.append(np.searchsorted(keep, members))
            if self.factored:
                start = int(firsts[b])
                self.final_rows.append((client.submit(operator.getitem, output, 3,
                                                      key=self._key("final", self._names[b])),
                                        self.index[wavelets[start:start + counts[b]]]))
        self.shards, self.shard_positions = new_shards, new_positions
        self._work = []
        self.active[wavelets] = False
        record.levels = int(wavelets.shape[0])
        record.rounds += 1
        record.seconds += time.perf_counter() - started
        return tuples, wavelets, np.concatenate(diagonal), np.concatenate(energy)

    def compact(self, keep: np.ndarray) -> None:
        """The shards were compacted on the workers with the stage; the positions follow."""
        self.index = self.index[keep]
        self.n = keep.shape[0]
        self.active = np.ones(self.n, dtype=np.bool_)

    # ------------------------------------------------------------- gathering
    def _gather_rows(self) -> np.ndarray:
        shards = self.client.gather(self.shards)
        count = int(np.count_nonzero(self.active))  # the shards hold the active positions only
        out = np.empty((count, self.width if self.factored else count))
        for shard in shards:
            out[shard.positions] = shard.rows
        self.bytes_result += out.nbytes
        return out

    def snapshot(self, level: int) -> Snapshot:
        """After a stage's wavelets left and before the positions are compacted."""
        rows = self._gather_rows()
        live = self.index[self.active].copy()
        return Snapshot(level, live, rows=rows) if self.factored else Snapshot(level, live, block=rows)

    def to_local(self) -> DenseCompression | FactoredCompression:
        """The in-process compression in exactly the state the local engine would have."""
        rows = self._gather_rows()
        if not self.factored:
            local = DenseCompression(rows)
            local.index = self.index.copy()
            return local
        local = FactoredCompression.__new__(FactoredCompression)
        local.rows = rows
        local.n = self.n
        local.active = np.ones(self.n, dtype=np.bool_)
        local.index = self.index.copy()
        final_rows = np.zeros((self.size, self.width))
        if self.final_rows:
            gathered = self.client.gather([future for future, _ in self.final_rows])
            for block, (_, original) in zip(gathered, self.final_rows):
                final_rows[original] = block
                self.bytes_result += block.nbytes
        local.final_rows = final_rows
        local.explicit_max = self.explicit_max
        local.explicit = None
        local.inner = self.client.gather(self.inner) if self.inner is not None else rows.T @ rows
        local.energy = np.zeros(self.n)
        local._maybe_explicit()
        self.shards = []
        self.final_rows = []
        return local


def task_key(phase: str, stage: int, detail: str, token: str) -> str:
    """``mmf-<phase>-stage<N>-<detail>-<token>``: the dashboard groups tasks by ``mmf-<phase>``
    (Dask's key prefix), and each key names its stage and its clusters or rows."""
    return f"mmf-{phase}-stage{stage}-{detail}-{token}"


def _identity(value: Any) -> Any:
    return value


def _apply_dense_shared(work: BucketWork, shared: tuple, first: int):
    tuples, rotations, wavelets, keep = shared
    return apply_dense(work, tuples, rotations, wavelets, first, keep)


def _energies(output: tuple) -> tuple[np.ndarray, np.ndarray]:
    return output[1], output[2]
