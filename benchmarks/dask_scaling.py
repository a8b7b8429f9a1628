"""MMF on a Dask cluster: time against the local staged engine, cost per stage, and a projection to more workers.

Run:  python benchmarks/dask_scaling.py [--markdown] [--quick] [--only SUBSTRING ...] [--workers 1,2]
                                        [--repeats 1] [--tmpdir DIR] [--timeout 1800] [--no-local] [--list]

Cases (``--list`` prints the row names; ``--only`` keeps the rows whose name
contains one of the given substrings, e.g. ``--only dense``, ``--only dask-2``):

* ``dense``: ``ms.hierarchical_covariance(16000, seed=0)``, order 4, core
  ``m // 8``: ``ms.factorize(path, order=4, core_size=m // 8, schedule="staged", client=client)``.
* ``factored``: ``ms.class_means(100000, 512, seed=0)``, order 5, full depth
  (default core): ``ms.factorize(means=path, order=5, schedule="staged", client=client)``;
  ``C = M M'`` is never formed.

``--quick`` (a smoke test): dense m = 1500, factored m = 3000 with D = 64, and
``options={"cluster_size": 64, "greedy_below": 128, "gram_block": 512}`` in
every run of those sizes, local and Dask alike.

Every case's input is generated once, in its own subprocess (not timed), and
written as a Zarr array (chunks of 4096 rows x all columns) under ``--tmpdir``
(default: the system's temporary directory; the dense m = 16000 matrix takes
about 2 GB there). Each row then runs in a fresh subprocess:

* ``local``: the local staged engine. Compiles the kernels
  (:func:`mmf_stream.warmup.warm_up` and the row's call on a tiny input, not
  timed), then times loading the Zarr array into NumPy plus
  ``ms.factorize(array, ...)``. NUMBA and the
  OMP/OPENBLAS/MKL thread counts are the machine's cores (also in the Dask
  rows' client process; Dask's nannies start the workers with 1 BLAS thread).
* ``dask-N``: starts ``LocalCluster(n_workers=N, threads_per_worker=1,
  processes=True, host="127.0.0.1", dashboard_address=None)``, warms the
  client process and every worker (``warm_up``, then the row's call on a tiny
  input on the cluster, since ``warm_up`` does not run the Dask engine's own
  kernels; not timed), then times
  ``ms.factorize(path, ..., client=client)`` while recording
  ``distributed.get_task_stream``.

``--repeats`` runs per row (in the same subprocess): the seconds are the
median; the per-stage details are those of the median run. Each row has
``--timeout`` seconds (default 1800; the input generation has its own); a row
that runs out is killed with its cluster and shows ``> timeout``, one that
fails shows ``error: <message>``.

Printed (Markdown with ``--markdown``; each title carries the date and the settings):

1. One row per case and engine: seconds (median), time relative to the local
   engine, speedup against 1 worker, whether the result is bit-identical to
   the local engine's (sha256 of the tuples, rotations, level errors and core
   block, and the same error), the number of stages, the most bytes one stage
   sent through the scheduler (client <-> cluster, ``bytes_sent +
   bytes_received`` of ``f.metadata["dask"]["stages"]``) as a share of the
   input (dense: of ``C``; factored: of ``M`` and of ``C = M M'``, ``m^2 x 8``
   bytes, never formed), and the bytes gathered for the result.
2. For the 1- and 2-worker runs of each case, one row per stage (``read`` =
   the reads and the set-up before stage 1, from the task stream): active
   indices, clusters, buckets, levels, client round trips, tasks, the stage's
   wall seconds (the client's, from the stage record; ``read``: the task
   stream's span) and the task stream's span, factor compute per cluster, task
   compute per phase group (read, features, shuffle = split/piece/bucket,
   factor = factor/levels, chain = the sequential ``W`` down-date, apply =
   apply/energy/keep/parts/final rows), transfer seconds (the task stream's
   ``transfer`` records), data moved between workers -- an *estimate*, the rows
   regrouped into buckets: ``(1 - 1/N) active^2 x 8`` bytes dense,
   ``(1 - 1/N) active x D x 8`` factored (transfer records carry no bytes) --
   and the overhead: wall minus the parallel compute time (clamped at 0).
3. A model fitted to those tables, projected to 4 ... 64 workers (a model,
   not a measurement):

       T(N) = S + read(N) + sum over stages s of [ sum_g C_sg / min(N, width_sg(N)) + O_s(N) ]
       O_s(N) = rounds_s x round_trip + tasks_s(N) x per_task + moved_s(N) / bandwidth

   ``S``: the client's serial seconds of the 1-worker run (total minus the
   stages' wall and the reads' span: partitions, gathers, the final greedy
   levels, snapshots); ``C_sg``: the stage's task compute in phase group ``g``
   on 1 worker; ``width_sg(N)``: how many tasks of the group can run at once
   (features, shuffle: the stage's parts; factor, apply: its buckets,
   ``min(2N, clusters)``; chain: 1, it is sequential); ``tasks_s(N)``: the
   1-worker count plus the growth with the buckets (``2N``) and the parts
   (the previous stage's buckets; pieces = parts x buckets at most);
   ``read(N)``: the reads' compute over ``min(N, blocks)`` plus their tasks x
   per_task. ``round_trip``, ``per_task`` and ``1 / bandwidth`` are fitted by
   non-negative least squares to every stage's measured overhead in the 1-
   and 2-worker runs. With ``--workers`` above 2 the measured times stand
   beside the model's (those runs are not used in the fit).
4. The targets, met or not: 1 worker at most 1.15x the local engine; 2 workers
   at least 1.6x faster than 1 (dense, m = 16000); at most 1% of the matrix
   through the scheduler per stage.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import print_table  # noqa: E402
from mmf_stream.engine.dask_stages import BUCKETS_PER_WORKER, ONE_BUCKET_FROM  # noqa: E402

#: engine options of every ``--quick`` run (small clusters and read blocks: several stages on small inputs)
QUICK_OPTIONS = {"cluster_size": 64, "greedy_below": 128, "gram_block": 512}
#: the tiny staged run that compiles every kernel of a row's path before it is timed (several stages)
WARM_SIZE, WARM_OPTIONS = 320, {"cluster_size": 32, "greedy_below": 40, "gram_block": 128}
#: rows per Zarr chunk (all the columns in each chunk)
CHUNK_ROWS = 1024
#: worker counts the model projects to (besides the measured ones)
PROJECTED = (1, 2, 4, 8, 16, 32, 64)
#: phase (from the task key) -> phase group of the per-stage table
PHASE_GROUP = {"features": "features", "split": "shuffle", "piece": "shuffle", "bucket": "shuffle",
               "factor": "factor", "levels": "factor", "chain": "chain", "inner": "chain", "apply": "apply",
               "energy": "apply", "keep": "apply", "part": "apply", "final": "apply", "stagelevels": "apply"}
GROUPS = ("read", "features", "shuffle", "factor", "chain", "apply")
#: targets: 1 worker / local, 2 workers' speedup over 1 (dense), bytes per stage through the scheduler / matrix
TARGET_ONE_WORKER, TARGET_TWO_WORKERS, TARGET_BYTES = 1.15, 1.6, 0.01

#: the engine's task keys: mmf-<phase>-stage<N>-<detail>-<token> (stage 0: the reads)
_TASK_KEY = re.compile(r"^mmf-([a-z]+)-stage(\d+)-")


@dataclass(frozen=True)
class Case:
    """One input and its call: dense (``dim`` None: ``C`` is given) or factored (class means, ``C = M M'``)."""

    name: str
    m: int
    dim: int | None
    order: int
    core: int | None  # None: factorize's default (full depth)
    options: dict | None = field(default=None, compare=False)  # None: the engine's defaults (not hashed)

    @property
    def columns(self) -> int:
        return self.m if self.dim is None else self.dim

    @property
    def input_bytes(self) -> int:
        return self.m * self.columns * 8

    @property
    def matrix_bytes(self) -> int:
        """Bytes of ``C`` (``m x m``; for a factored case it is never formed)."""
        return self.m * self.m * 8


@dataclass(frozen=True)
class Row:
    """One row of the main table: a case run by the local engine (``workers`` 0) or on N Dask workers."""

    case: Case
    workers: int

    @property
    def engine(self) -> str:
        return "local staged" if not self.workers else f"dask {self.workers} worker{'s' if self.workers > 1 else ''}"

    @property
    def name(self) -> str:
        return f"{self.case.name}/{'local' if not self.workers else f'dask-{self.workers}'}"


def cases(quick: bool) -> list[Case]:
    """The two cases at full or ``--quick`` size."""
    if quick:
        return [Case("dense", 1500, None, 4, 1500 // 8, QUICK_OPTIONS),
                Case("factored", 3000, 64, 5, None, QUICK_OPTIONS)]
    return [Case("dense", 16000, None, 4, 16000 // 8, None), Case("factored", 100000, 512, 5, None, None)]


def plan(quick: bool, workers: list[int], local: bool) -> list[Row]:
    """Every row, in the order it is run and printed."""
    return [Row(case, n) for case in cases(quick) for n in ([0] if local else []) + workers]


# ------------------------------------------------------------------ child side
def _data(case: Case) -> np.ndarray:
    """The case's input: the covariance (dense) or the class means (factored)."""
    if case.dim is None:
        return ms.hierarchical_covariance(case.m, seed=0)
    return ms.class_means(case.m, case.dim, seed=0)


def _generate(case: Case, path: str) -> None:
    """Write the case's input as a Zarr array at ``path``."""
    import zarr

    data = _data(case)
    array = zarr.create_array(path, shape=data.shape, chunks=(min(CHUNK_ROWS, case.m), case.columns), dtype="f8")
    array[:] = data


def _warm(case: Case, client=None) -> None:
    """Compile the kernels before the timed runs: :func:`mmf_stream.warmup.warm_up` here (and on every worker),
    then the case's call on a tiny input (on the cluster, too: warm_up does not run the Dask engine's own
    kernels, e.g. the reads' symmetry signature and the compaction's block take)."""
    from mmf_stream.warmup import warm_up

    warm_up()
    if client is not None:
        client.run(warm_up)
    tiny = Case(case.name, WARM_SIZE, case.dim, case.order, None if case.core is None else WARM_SIZE // 8,
                WARM_OPTIONS)
    _factorize(tiny, _data(tiny), client=client)


def _factorize(case: Case, data, client=None):
    """The case's call on ``data`` (an array, or the Zarr path with a client)."""
    kwargs = {"order": case.order, "schedule": "staged"}
    if case.core is not None:
        kwargs["core_size"] = case.core
    if case.options is not None:
        kwargs["options"] = case.options
    if client is not None:
        kwargs["client"] = client
    return ms.factorize(means=data, **kwargs) if case.dim is not None else ms.factorize(data, **kwargs)


def _digest(f) -> str:
    """sha256 of what must be bit-identical between the engines."""
    raw = f._raw
    digest = hashlib.sha256()
    for array in (raw.tuples, raw.rotations, raw.level_errors, raw.core_block):
        digest.update(b"" if array is None else np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def classify(key: str) -> tuple[int, str, str]:
    """``(stage, phase, group)`` of a task key; stage 0 is the reads and the set-up before stage 1."""
    match = _TASK_KEY.match(key)
    if not match:
        return 0, "setup", "read"  # the probes and norms (unnamed keys)
    phase, stage = match.group(1), int(match.group(2))
    return stage, phase, "read" if stage == 0 else PHASE_GROUP.get(phase, "apply")


def stream_by_stage(records: list[dict]) -> dict[str, dict]:
    """Task stream records summed per stage: compute per group, tasks (and per phase), transfer and spill
    seconds, span."""
    stages: dict[str, dict] = {}
    for record in records:
        stage, phase, group = classify(str(record["key"]))
        entry = stages.setdefault(str(stage), {"compute": dict.fromkeys(GROUPS, 0.0), "tasks": 0, "phases": {},
                                               "transfer": 0.0, "spill": 0.0, "start": math.inf,
                                               "stop": -math.inf})
        entry["tasks"] += 1
        entry["phases"][phase] = entry["phases"].get(phase, 0) + 1
        for step in record.get("startstops", ()):
            duration = step["stop"] - step["start"]
            if step["action"] == "compute":
                entry["compute"][group] += duration
            elif step["action"] == "transfer":
                entry["transfer"] += duration
            elif step["action"] in ("disk-read", "disk-write"):  # a worker spilled (memory limit)
                entry["spill"] += duration
            entry["start"] = min(entry["start"], step["start"])
            entry["stop"] = max(entry["stop"], step["stop"])
    for entry in stages.values():
        entry["span"] = max(entry.pop("stop") - entry.pop("start"), 0.0)
    return stages


def _quiet_dask() -> None:
    import logging

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _measure_local(case: Case, path: str, repeats: int) -> dict:
    import zarr

    _warm(case)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        f = _factorize(case, np.asarray(zarr.open_array(path, mode="r")[:]))
        runs.append({"seconds": time.perf_counter() - start, "error": f.error, "digest": _digest(f)})
        del f
    return {"runs": runs}


def _measure_dask(case: Case, path: str, workers: int, repeats: int) -> dict:
    from distributed import Client, LocalCluster, get_task_stream

    _quiet_dask()
    runs = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(workers)
        _warm(case, client)  # the workers and this process (partitions, final greedy levels, snapshots)
        for _ in range(repeats):
            with get_task_stream(client=client) as stream:
                start = time.perf_counter()
                f = _factorize(case, path, client=client)
                seconds = time.perf_counter() - start
            dask = f.metadata["dask"]
            runs.append({"seconds": seconds, "error": f.error, "digest": _digest(f), "stages": dask["stages"],
                         "bytes_result": dask["bytes_result"], "input_bytes": dask["input_bytes"],
                         "stream": stream_by_stage(stream.data)})
            del f
    return {"runs": runs}


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def child_main(argv: list[str]) -> None:
    """``_child gen CASE PATH``: write the input; ``_child run CASE PATH WORKERS REPEATS``: print the result as JSON."""
    step, case, path = argv[0], Case(**json.loads(argv[1])), argv[2]
    if step == "gen":
        _generate(case, path)
        return
    workers, repeats = int(argv[3]), int(argv[4])
    try:
        result = _measure_dask(case, path, workers, repeats) if workers else _measure_local(case, path, repeats)
    except Exception as exc:  # noqa: BLE001 - reported in the row's cells
        result = {"failure": _one_line(f"{type(exc).__name__}: {exc}")}
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------- parent side
def _child_env() -> dict[str, str]:
    threads = str(os.cpu_count() or 1)
    return {**os.environ, "NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_child(arguments: list[str], timeout: float) -> dict:
    """Run ``_child ARGUMENTS`` in its own process group (a timeout kills its cluster too); its JSON result,
    ``{}`` for a step without one, ``{"timeout": True}`` or ``{"failure": one line}``."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_child", *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(),
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"timeout": True}
    if process.returncode:
        if process.returncode < 0:
            number = -process.returncode
            return {"failure": f"killed by signal {number}" + (" (out of memory?)" if number == 9 else "")}
        lines = [line for line in stderr.splitlines() if line.strip()]
        return {"failure": _one_line(lines[-1] if lines else f"exited with {process.returncode}")}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def run_case(case: Case, rows: list[Row], args: argparse.Namespace) -> dict[Row, dict]:
    """Generate the case's input, then run its rows; each row's result (or failure)."""
    results: dict[Row, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mmf-dask-scaling-", dir=args.tmpdir) as tmp:
        path = str(Path(tmp) / f"{case.name}.zarr")
        print(f"  generating {case.name} m={case.m} ...", file=sys.stderr, flush=True)
        made = run_child(["gen", json.dumps(asdict(case)), path], args.timeout)
        for row in rows:
            if "timeout" in made or "failure" in made:
                results[row] = {"failure": "input generation: " + ("timed out" if "timeout" in made
                                                                    else made["failure"])}
                continue
            print(f"  running {row.name} ...", file=sys.stderr, flush=True)
            start = time.monotonic()
            results[row] = run_child(["run", json.dumps(asdict(case)), path, str(row.workers), str(args.repeats)],
                                     args.timeout)
            state = ("timeout" if "timeout" in results[row] else results[row].get("failure")
                     or f"{median_run(results[row])['seconds']:.2f} s")
            print(f"  done in {time.monotonic() - start:.0f} s: {state}", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------ reporting
def ok(result: dict | None) -> bool:
    return bool(result) and "runs" in result


def median_run(result: dict) -> dict:
    """The run with the median seconds (the lower one of an even count)."""
    runs = sorted(result["runs"], key=lambda run: run["seconds"])
    return runs[(len(runs) - 1) // 2]


def median_seconds(result: dict) -> float:
    return float(np.median([run["seconds"] for run in result["runs"]]))


def fmt_seconds(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def fmt_bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def fmt_share(value: float) -> str:
    return f"{value:.3g}%"


def stage_bytes(run: dict) -> int:
    """The most bytes one stage sent through the scheduler (client <-> cluster)."""
    return max((record["bytes_sent"] + record["bytes_received"] for record in run["stages"]), default=0)


def scheduler_share(case: Case, run: dict) -> str:
    """Max bytes per stage, and as a share of the input (factored: of M and of C)."""
    top = stage_bytes(run)
    if case.dim is None:
        return f"{fmt_bytes(top)} ({fmt_share(100 * top / case.input_bytes)} of C)"
    return (f"{fmt_bytes(top)} ({fmt_share(100 * top / case.input_bytes)} of M, "
            f"{fmt_share(100 * top / case.matrix_bytes)} of C)")


def identical(result: dict, local: dict | None) -> str:
    """``yes`` when every run's result (digest and error) is the local engine's first run's (for the local row:
    when its repeats agree); ``-`` with nothing to compare."""
    outcomes = {(run["digest"], run["error"]) for run in result["runs"]}
    if local is result:
        return "-" if len(result["runs"]) == 1 else ("yes" if len(outcomes) == 1 else "no (repeats differ)")
    if not ok(local):
        return "-"
    reference = local["runs"][0]
    return "yes" if outcomes == {(reference["digest"], reference["error"])} else "no"


def main_rows(results: dict[Row, dict], markdown: bool) -> list[list[str]]:
    """The main table's rows."""
    table = []
    for row, result in results.items():
        case = row.case
        head = [case.name, str(case.m), "-" if case.dim is None else str(case.dim), row.engine]
        if not ok(result):
            message = "> timeout" if "timeout" in result else "error: " + result.get("failure", "no result")
            table.append([*head, message.replace("|", "\\|") if markdown else message, *["-"] * 7])
            continue
        seconds = median_seconds(result)
        local, one = results.get(Row(case, 0)), results.get(Row(case, 1))
        cells = [fmt_seconds(seconds), f"{seconds / median_seconds(local):.2f}x" if ok(local) else "-",
                 f"{median_seconds(one) / seconds:.2f}x" if ok(one) else "-", identical(result, local)]
        if row.workers:
            run = median_run(result)
            cells += [str(len(run["stages"])), scheduler_share(case, run), fmt_bytes(run["bytes_result"])]
        else:
            cells += ["-", "-", "-"]
        table.append([*head, *cells])
    return table


# --------------------------------------------------------------- per-stage costs and the model
@dataclass
class StageCost:
    """One stage of one Dask run, as the tables and the model see it (stage 0: the reads and the set-up)."""

    stage: int
    active: int
    clusters: int
    buckets: int
    levels: int
    rounds: int
    tasks: int
    wall: float  # the client's seconds in the stage's rounds (stage 0: the task stream's span)
    span: float
    transfer: float
    compute: dict[str, float]  # task compute seconds per phase group
    parts: int  # stage 0: read blocks; stage s: the parts it starts from (one features task each)

    def widths(self, parts: int, buckets: int) -> dict[str, int]:
        """How many tasks of each group can run at once."""
        if self.stage == 0:
            return dict.fromkeys(GROUPS, max(parts, 1))
        return {"read": 1, "features": max(parts, 1), "shuffle": max(parts, 1), "factor": max(buckets, 1),
                "chain": 1, "apply": max(buckets, 1)}

    def parallel_compute(self, workers: int, parts: int | None = None, buckets: int | None = None) -> float:
        """The task compute spread over ``workers``, each group over at most its width (default: as measured)."""
        widths = self.widths(self.parts if parts is None else parts, self.buckets if buckets is None else buckets)
        return sum(seconds / min(workers, widths[group]) for group, seconds in self.compute.items())

    def moved(self, workers: int, dim: int | None) -> float:
        """Bytes regrouped between workers (an estimate: the active rows, a share 1 - 1/N of them); 0 for the
        reads and for a stage without clusters (its features round only)."""
        if self.stage == 0 or not self.clusters:
            return 0.0
        return (1 - 1 / workers) * self.active * (self.active if dim is None else dim) * 8

    def overhead(self, workers: int) -> float:
        """Wall seconds beyond the parallel compute (clamped at 0)."""
        return max(self.wall - self.parallel_compute(workers), 0.0)


def stage_costs(run: dict) -> list[StageCost]:
    """The read pseudo-stage and every stage of a Dask run (stage records + task stream)."""
    stream = run["stream"]
    empty = {"compute": dict.fromkeys(GROUPS, 0.0), "tasks": 0, "phases": {}, "transfer": 0.0, "span": 0.0}
    read = stream.get("0", empty)
    blocks = read["phases"].get("read", 0) or read["phases"].get("symmetrize", 0)
    costs = [StageCost(0, 0, 0, 0, 0, 0, read["tasks"], read["span"], read["span"], read["transfer"],
                       dict(read["compute"]), blocks)]
    for record in run["stages"]:
        entry = stream.get(str(record["stage"]), empty)
        costs.append(StageCost(record["stage"], record["active"], record["clusters"], record["buckets"],
                               record["levels"], record["rounds"], entry["tasks"], record["seconds"], entry["span"],
                               entry["transfer"], dict(entry["compute"]), entry["phases"].get("features", 0)))
    return costs


def serial_seconds(run: dict, costs: list[StageCost]) -> float:
    """The client's own seconds: the total minus the stages' wall and the reads' span."""
    return max(run["seconds"] - sum(cost.wall for cost in costs), 0.0)


STAGE_HEADER = ["stage", "active", "clusters", "buckets", "levels", "rounds", "tasks", "wall s", "span s",
                "factor ms/cluster", *(f"{group} s" for group in GROUPS), "transfer s", "moved (est.)",
                "overhead s"]


def stage_rows(case: Case, run: dict, workers: int) -> list[list[str]]:
    """The per-stage table of one Dask run."""
    table = []
    for cost in stage_costs(run):
        staged = cost.stage > 0
        table.append([
            str(cost.stage) if staged else "read",
            *(str(value) if staged else "-" for value in (cost.active, cost.clusters, cost.buckets, cost.levels,
                                                          cost.rounds)),
            str(cost.tasks), fmt_seconds(cost.wall), fmt_seconds(cost.span),
            f"{1000 * cost.compute['factor'] / cost.clusters:.2f}" if cost.clusters else "-",
            *(fmt_seconds(cost.compute[group]) for group in GROUPS),
            fmt_seconds(cost.transfer), fmt_bytes(cost.moved(workers, case.dim)) if staged else "-",
            fmt_seconds(cost.overhead(workers)),
        ])
    return table


@dataclass
class Model:
    """``T(N) = S + sum over stages of [parallel compute + rounds x round_trip + tasks x per_task + moved / bandwidth]``."""

    round_trip: float
    per_task: float
    inverse_bandwidth: float  # seconds per byte moved between workers (0: not resolved by the fit)
    serial: float
    costs: list[StageCost]  # the 1-worker run's
    dim: int | None
    observations: int
    residual: float  # rms of the fitted overheads, seconds

    def seconds(self, workers: int) -> float:
        """The projected seconds on ``workers`` workers."""
        total = self.serial
        previous_buckets = None
        for cost in self.costs:
            if cost.stage == 0:
                total += cost.parallel_compute(workers) + cost.tasks * self.per_task
                continue
            per_worker = 1 if workers >= ONE_BUCKET_FROM else BUCKETS_PER_WORKER
            buckets = min(per_worker * workers, cost.clusters)
            parts = cost.parts if previous_buckets is None else previous_buckets
            tasks = cost.tasks + stage_tasks(parts, buckets, self.dim) - stage_tasks(cost.parts, cost.buckets, self.dim)
            total += (cost.parallel_compute(workers, parts, buckets) + cost.rounds * self.round_trip
                      + tasks * self.per_task + cost.moved(workers, self.dim) * self.inverse_bandwidth)
            previous_buckets = buckets
        return total


def stage_tasks(parts: int, buckets: int, dim: int | None) -> int:
    """Tasks of one stage: features and split per part, pieces per part and bucket (at most; so far every part
    held rows of every bucket), the rest per bucket (bucket, factor, levels, apply, energy, new part; factored
    also chain, inner, final rows), one shared; a stage without clusters runs its features only."""
    if not buckets:
        return parts
    return 2 * parts + parts * buckets + (6 if dim is None else 9) * buckets + 1


def fit_model(case: Case, runs: dict[int, dict]) -> Model | None:
    """Fit round_trip, per_task and 1 / bandwidth (non-negative least squares) to the stages' overheads of the
    1- and 2-worker runs; None without a 1-worker run."""
    from scipy.optimize import nnls

    if 1 not in runs:
        return None
    rows, targets = [], []
    for workers, run in runs.items():
        if workers > 2:
            continue
        for cost in stage_costs(run):
            rows.append([cost.rounds, cost.tasks, cost.moved(workers, case.dim)])
            targets.append(cost.wall - cost.parallel_compute(workers))
    design, observed = np.array(rows, dtype=float), np.array(targets)
    scale = np.where(design.max(axis=0) > 0, design.max(axis=0), 1.0)  # bytes and counts on one footing
    solution, _ = nnls(design / scale, observed)
    solution = solution / scale
    residual = float(np.sqrt(np.mean((design @ solution - observed) ** 2)))
    costs = stage_costs(runs[1])
    return Model(*map(float, solution), serial_seconds(runs[1], costs), costs, case.dim, len(observed), residual)


def model_lines(case: Case, model: Model, measured: dict[int, float], markdown: bool) -> None:
    """Print the fitted constants and the projection table (measured times beside it where there are some)."""
    bandwidth = (f"{1e-6 / model.inverse_bandwidth:.4g} MB/s" if model.inverse_bandwidth > 0
                 else "not resolved (no cost of moved bytes in the fit)")
    print()
    print(("- " if markdown else "") +
          f"model for {case.name} m={case.m} (fitted on the 1- and 2-worker runs: {model.observations} stage "
          f"overheads, rms residual {model.residual:.3g} s): S = {fmt_seconds(model.serial)} s serial, "
          f"round_trip = {1000 * model.round_trip:.3g} ms, per_task = {1000 * model.per_task:.3g} ms, "
          f"bandwidth = {bandwidth}")
    base = model.seconds(1)
    table = []
    for workers in sorted(set(PROJECTED) | set(measured)):
        projected = model.seconds(workers)
        row = [str(workers), fmt_seconds(projected), f"{base / projected:.2f}x"]
        if workers in measured:
            row += [fmt_seconds(measured[workers]),
                    f"{measured[1] / measured[workers]:.2f}x" if 1 in measured else "-",
                    "fit" if workers <= 2 else "check (not in the fit)"]
        else:
            row += ["-", "-", "projection"]
        table.append(row)
    print()
    print_table(f"Projection for {case.name} m={case.m}: a MODEL, NOT A MEASUREMENT (rows marked 'projection'); "
                "T(N) = S + sum over stages [compute / min(N, width) + rounds x round_trip + tasks(N) x per_task "
                "+ moved(N) / bandwidth]",
                ["workers", "model s", "model speedup vs 1", "measured s", "measured speedup vs 1", "row"],
                table, markdown)


# ------------------------------------------------------------------ targets
def target_lines(results: dict[Row, dict], quick: bool) -> list[str]:
    """The targets, each met or not (or not measured)."""
    def verdict(good: bool) -> str:
        return "met" if good else "NOT met"

    lines = []
    for case in {row.case: None for row in results}:
        local, one, two = (results.get(Row(case, n)) for n in (0, 1, 2))
        if ok(local) and ok(one):
            ratio = median_seconds(one) / median_seconds(local)
            lines.append(f"target: 1 worker at most {TARGET_ONE_WORKER}x local, {case.name} m={case.m}: "
                         f"{ratio:.2f}x, {verdict(ratio <= TARGET_ONE_WORKER)}")
        if case.dim is None and ok(one) and ok(two):
            speedup = median_seconds(one) / median_seconds(two)
            size = " (quick size; the target is set for m = 16000)" if quick else ""
            lines.append(f"target: 2 workers at least {TARGET_TWO_WORKERS}x faster than 1, dense m={case.m}: "
                         f"{speedup:.2f}x, {verdict(speedup >= TARGET_TWO_WORKERS)}{size}")
        dask_runs = [run for row, result in results.items() if row.case == case and row.workers and ok(result)
                     for run in result["runs"]]
        if dask_runs:
            top = max(stage_bytes(run) for run in dask_runs)
            bases = [("C", case.input_bytes)] if case.dim is None else [("M", case.input_bytes), ("C", case.matrix_bytes)]
            parts = [f"{fmt_share(100 * top / size)} of {name}, {verdict(top <= TARGET_BYTES * size)}"
                     for name, size in bases]
            lines.append(f"target: at most {100 * TARGET_BYTES:g}% of the matrix through the scheduler per stage, "
                         f"{case.name} m={case.m}: {fmt_bytes(top)} at most; " + "; ".join(parts))
    return lines


# ------------------------------------------------------------------ main
def parse_workers(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts >= 1 separated by commas, got {text!r}")
    return values


def print_case_details(case: Case, results: dict[Row, dict], markdown: bool) -> None:
    """The per-stage tables of the case's 1- and 2-worker runs, then the model fitted to them."""
    bullet = "- " if markdown else ""
    finished = {row.workers: result for row, result in results.items()
                if row.case == case and row.workers and ok(result)}
    runs = {workers: median_run(result) for workers, result in finished.items()}
    for workers in detailed(sorted(runs)):
        run = runs[workers]
        print()
        print_table(
            f"Per stage, {case.name} m={case.m}, dask {workers} worker(s), median run: task compute seconds "
            "per phase group (task stream), moved = bytes regrouped between workers (ESTIMATE: "
            "(1 - 1/N) x active rows x row bytes), overhead = wall - compute / min(N, group's width) "
            "(chain is sequential), clamped at 0",
            STAGE_HEADER, stage_rows(case, run, workers), markdown)
        costs = stage_costs(run)
        print(f"{bullet}total {fmt_seconds(run['seconds'])} s = reads {fmt_seconds(costs[0].wall)} s + stages "
              f"{fmt_seconds(sum(cost.wall for cost in costs[1:]))} s + client serial "
              f"{fmt_seconds(serial_seconds(run, costs))} s (partitions, gathers, final greedy levels, snapshots)")
        spilled = sum(entry.get("spill", 0.0) for entry in run["stream"].values())
        if spilled:
            print(f"{bullet}WARNING: workers spilled to disk for {spilled:.2f} s in this run (memory limit per "
                  "worker = machine memory / N); its timings include that")
    model = fit_model(case, runs)
    if model is None:
        if runs:
            print(f"\n{bullet}model for {case.name}: needs a 1-worker run (--workers 1,...)")
        return
    model_lines(case, model, {workers: median_seconds(result) for workers, result in finished.items()}, markdown)
    cores = os.cpu_count() or 1
    crowded = [workers for workers in runs if workers <= 2 and workers + 1 > cores]
    if crowded:
        print(f"{bullet}caveat: the {'/'.join(map(str, crowded))}-worker run(s) shared this machine's {cores} cores "
              "with the scheduler and the client process: the fitted constants absorb that contention")


def detailed(workers: list[int]) -> list[int]:
    """The worker counts with a per-stage table: 1 and 2 (the smallest two where neither ran)."""
    small = [n for n in workers if n <= 2]
    return small or workers[:2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    parser.add_argument("--only", action="append", metavar="SUBSTRING",
                        help="run the rows whose name contains SUBSTRING (repeatable; see --list)")
    parser.add_argument("--workers", type=parse_workers, default=[1, 2], help="Dask worker counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the median is reported (default 1)")
    parser.add_argument("--tmpdir", help="where the Zarr inputs are written (default: the system's temporary directory)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per row (default 1800)")
    parser.add_argument("--no-local", action="store_true", help="skip the local staged engine's rows")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")
    args = parser.parse_args()
    for name, value in (("repeats", args.repeats), ("timeout", args.timeout)):
        if value < 1:
            parser.error(f"--{name} must be at least 1")

    everything = plan(args.quick, args.workers, not args.no_local)
    rows = [row for row in everything if not args.only or any(part in row.name for part in args.only)]
    if args.list or not rows:
        print("\n".join(row.name for row in everything) if args.list
              else f"no row name contains {' or '.join(map(repr, args.only))} (see --list)")
        return

    results: dict[Row, dict] = {}
    for case in {row.case: None for row in rows}:
        results.update(run_case(case, [row for row in rows if row.case == case], args))

    threads = os.cpu_count() or 1
    settings = (f"{datetime.date.today().isoformat()}, mmf_stream {ms.__version__}, median of {args.repeats} run(s), "
                f"local: {threads} numba/BLAS threads; dask: LocalCluster of N processes x 1 thread on this machine "
                f"({threads} cores); timeout {args.timeout:g} s per row"
                + (f"; quick sizes, options {QUICK_OPTIONS}" if args.quick else ""))
    print_table(
        f"MMF on Dask against the local staged engine, {settings}. via scheduler = the most bytes one stage sent "
        "between the client and the cluster (factored: as a share of M and of C = M M', never formed)",
        ["case", "m", "D", "engine", "seconds", "x local", "speedup vs 1 worker", "identical", "stages",
         "max bytes/stage via scheduler", "bytes gathered for the result"],
        main_rows(results, args.markdown), args.markdown,
    )

    for case in {row.case: None for row in results}:
        print_case_details(case, results, args.markdown)

    lines = target_lines(results, args.quick)
    if lines:
        print()
        for line in lines:
            print(("- " if args.markdown else "") + line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        child_main(sys.argv[2:])
    else:
        main()
