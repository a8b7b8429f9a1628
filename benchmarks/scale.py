"""MMF at scale: dense and factored inputs, greedy and staged schedules, insertion, against C++.

Run:  python benchmarks/scale.py [--markdown] [--repeats 1] [--timeout 900] [--threads 1]
                                 [--only SUBSTRING ...] [--quick] [--inserts 1000] [--tmpdir DIR] [--list]

Prints one table (Markdown with ``--markdown``; the title carries the date and
the settings) with, per row: case, m, D (``-`` for a covariance given
directly), mode (``dense``: the ``m x m`` matrix is given; ``factored``: the
class means ``M`` are given, ``C = M M'``), schedule (``-``: the default of
``factorize``), seconds (median over ``--repeats``), peak resident MB above a
baseline, the absolute error ``||C - M(C)||_F``, the relative error, and a
reference quoted where there is one. Below the table: the fitted growth
exponent of time in m and the insertion details.

Rows (``--list`` prints their names; ``--only`` keeps the rows whose name
contains one of the given substrings, e.g. ``--only staged``, ``--only
hierarchical/dense/greedy``, ``--only m=4000``, ``--only insert``):

* ``hierarchical``: ``ms.hierarchical_covariance(m, seed=0)``, order 4, core
  ``m // 8``, m = 4000, 8000, 16000, 32000, each with
  ``ms.factorize(C, order=4, core_size=m // 8, schedule="greedy")`` and
  ``schedule="staged"``. Reference: the C++ MMF implementation on the same
  machine kind, same matrix and settings (quoted, it cannot be run here):
  m=4000: 6.2 s, error 38.5, 0.43 GB; 8000: 53.7 s, 53.5, 2.45 GB; 16000:
  348 s, 114.8, 10.3 GB.
* ``class_means``: ``M = ms.datasets.class_means(m, 512, seed=0)``, order 4,
  core ``m // 8`` (the setting of the hierarchical rows), m = 4000, 8000,
  16000, ``dense``: ``ms.factorize(M @ M.T, order=4, core_size=m // 8)`` (the
  seconds and the peak include forming ``C = M @ M.T``) and ``factored``:
  ``ms.factorize(means=M, order=4, core_size=m // 8)``.
* ``class_means-order5``: factored, D = 512, order 5, full depth (default
  core): ``ms.factorize(means=M, order=5)``, m = 25000, 50000, 100000. Below
  the table: the exponent ``a`` of ``time ~ m^a`` (least squares of log time
  against log m over the rows that finished), likewise for the dense greedy
  hierarchical rows (and the C++ reference's, from its quoted times).
* ``insert``: ``M = ms.datasets.class_means(100000 + inserts, 512, seed=0)``;
  ``f = ms.factorize(means=M[:100000], order=5, labels=range(100000))``, then
  the remaining ``--inserts`` (default 1000) classes one by one with
  ``f = f.insert(mean=M[i], label=i)``, each timed: the seconds cell holds the
  median and the p99 per class; the reference cell the batch
  ``ms.factorize(means=M, order=5)`` of all the classes and the ratio
  ``f.error / batch.error``. Peak and errors are those after the insertions
  (the initial factorization included, the batch excluded).

``--quick`` runs small sizes only (a smoke test: hierarchical m = 500, 1000;
class_means m = 500, 1000; order 5 m = 1000, 2000; insertion into 1000 with at
most 50 inserts); no reference is quoted there.

Peak memory: every row runs in fresh subprocesses. A first one generates the
input (the ``m x m`` covariance or the means) and saves it to a temporary
``.npy`` file (in ``--tmpdir``, default the system's: the m=32000 covariance
takes 8 GB there), so that generating leaves no trace in the measured peak. A
second one runs the same call on a tiny input (compiles the kernels; a call the
package does not support fails there), reads its resident memory (``VmRSS``)
as the baseline, loads the input and runs the row; its peak is ``VmHWM`` (the
peak resident memory of that process image, from ``/proc/self/status``) minus
the baseline, so it counts the input. Threads: NUMBA_NUM_THREADS and the
OMP/OPENBLAS/MKL thread counts are set to ``--threads`` (default 1, as
``benchmarks/batch.py``).

Each row has ``--timeout`` seconds (default 900) for both subprocesses; a row
that runs out is killed and shows ``> timeout``, a row that fails shows
``error: <message>``; the script goes on with the next row either way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import STATUS_MB, print_table  # noqa: E402

exec(STATUS_MB)  # defines status_mb(key), the /proc/self/status probe shared with the other benchmarks

#: feature dimension of the class-means rows
DIM = 512

#: C++ MMF on the same machine kind, hierarchical_covariance(m, seed=0), order 4, core m // 8:
#: m -> (seconds, absolute error, peak GB)
REFERENCE = {4000: (6.2, 38.5, 0.43), 8000: (53.7, 53.5, 2.45), 16000: (348.0, 114.8, 10.3)}


@dataclass(frozen=True)
class Row:
    """One row of the table: what is generated and how it is factored."""

    case: str  # "hierarchical", "class_means", "class_means-order5", "insert"
    m: int
    dim: int | None  # None: the covariance is generated directly
    mode: str  # "dense" or "factored"
    schedule: str | None  # None: factorize's default (the argument is not passed)
    order: int
    core: int | None  # None: factorize's default (full depth)
    inserts: int = 0

    @property
    def name(self) -> str:
        return "/".join([self.case, self.mode, *([self.schedule] if self.schedule else []), f"m={self.m}"])


def plan(quick: bool, inserts: int) -> list[Row]:
    """All the rows, in the order they are run and printed."""
    rows = []
    for m in (500, 1000) if quick else (4000, 8000, 16000, 32000):
        for schedule in ("greedy", "staged"):
            rows.append(Row("hierarchical", m, None, "dense", schedule, 4, m // 8))
    for m in (500, 1000) if quick else (4000, 8000, 16000):
        for mode in ("dense", "factored"):
            rows.append(Row("class_means", m, DIM, mode, None, 4, m // 8))
        if m <= 8000:  # staged against greedy on the same matrix
            rows.append(Row("class_means", m, DIM, "dense", "staged" if m <= 6000 else "greedy", 4, m // 8))
    for m in (1000, 2000) if quick else (25000, 50000, 100000):
        rows.append(Row("class_means-order5", m, DIM, "factored", None, 5, None))
    rows.append(Row("insert", 1000 if quick else 100000, DIM, "factored", None, 5, None,
                    min(inserts, 50) if quick else inserts))
    return rows


# ------------------------------------------------------------------ child side
def _generate(row: Row) -> np.ndarray:
    if row.case == "hierarchical":
        return ms.hierarchical_covariance(row.m, seed=0)
    return ms.datasets.class_means(row.m + row.inserts, row.dim, seed=0)


def _factor(row: Row, data: np.ndarray):
    """The row's call: ``data`` is the covariance (hierarchical) or the class means."""
    kwargs = {"order": row.order}
    if row.core is not None:
        kwargs["core_size"] = row.core
    if row.schedule is not None:
        kwargs["schedule"] = row.schedule
    if row.mode == "dense":
        return ms.factorize(data if row.case == "hierarchical" else data @ data.T, **kwargs)
    return ms.factorize(means=data, **kwargs)


def _warm_up(row: Row) -> None:
    """The row's calls on a tiny input: compiles the kernels before the baseline is read."""
    tiny = Row(row.case, 40, None if row.dim is None else 8, row.mode, row.schedule, row.order,
               None if row.core is None else 6, min(row.inserts, 2))
    data = _generate(tiny)
    if row.case != "insert":
        _factor(tiny, data)
        return
    f = ms.factorize(means=data[: tiny.m], order=row.order, labels=range(tiny.m))
    for i in range(tiny.m, len(data)):
        f = f.insert(mean=data[i], label=i)


def _measure(row: Row, path: str, repeats: int) -> dict:
    _warm_up(row)
    baseline = status_mb("VmRSS")  # noqa: F821 - defined by exec(STATUS_MB)
    data = np.load(path)
    if row.case == "insert":
        start = time.perf_counter()
        f = ms.factorize(means=data[: row.m], order=row.order, labels=range(row.m))
        initial = time.perf_counter() - start
        times = []
        repairs = 0
        schedule = f.metadata.get("schedule")
        for i in range(row.m, row.m + row.inserts):
            start = time.perf_counter()
            f = f.insert(mean=data[i], label=i)
            times.append(time.perf_counter() - start)
            repairs += int(f.insertion_report.repaired)
        peak = status_mb("VmHWM")  # noqa: F821
        error, relative = f.error, f.relative_error
        del f
        start = time.perf_counter()
        batch = ms.factorize(means=data, order=row.order)
        return {"times": times, "initial_s": initial, "batch_s": time.perf_counter() - start,
                "batch_error": batch.error, "schedule": schedule, "repairs": repairs, "peak_mb": peak - baseline, "error": error, "relative": relative}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f = _factor(row, data)
        times.append(time.perf_counter() - start)
        error, relative, schedule = f.error, f.relative_error, f.metadata.get("schedule")
        del f
    peak = status_mb("VmHWM")  # noqa: F821
    return {"times": times, "peak_mb": peak - baseline, "error": error, "relative": relative, "schedule": schedule}


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def child_main(argv: list[str]) -> None:
    """``_child gen ROW PATH``: save the input; ``_child run ROW PATH REPEATS``: print the result as JSON."""
    step, row, path = argv[0], Row(**json.loads(argv[1])), argv[2]
    if step == "gen":
        np.save(path, _generate(row))
        return
    try:
        result = _measure(row, path, int(argv[3]))
    except Exception as exc:  # noqa: BLE001 - reported in the row's cells
        result = {"failure": _one_line(f"{type(exc).__name__}: {exc}")}
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------- parent side
def run_row(row: Row, args: argparse.Namespace) -> dict:
    """The row's result, or ``{"timeout": True}``, or ``{"failure": one line}``."""
    threads = str(args.threads)
    env = {
        **os.environ,
        "NUMBA_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory(prefix="mmf-scale-", dir=args.tmpdir) as tmp:
        path = str(Path(tmp) / "input.npy")
        for step, extra in (("gen", []), ("run", [str(args.repeats)])):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"timeout": True}
            try:
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "_child", step, json.dumps(asdict(row)), path, *extra],
                    capture_output=True, text=True, env=env, timeout=remaining, check=False,
                )
            except subprocess.TimeoutExpired:
                return {"timeout": True}
            if done.returncode:
                if done.returncode < 0:
                    signal = -done.returncode
                    return {"failure": f"{step} step killed by signal {signal}" + (" (out of memory?)" if signal == 9 else "")}
                lines = [line for line in done.stderr.splitlines() if line.strip()]
                return {"failure": _one_line(lines[-1] if lines else f"{step} step exited with {done.returncode}")}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"failure": "no result from the run step"}
    return json.loads(lines[-1])


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _reference(row: Row, result: dict, quick: bool) -> str:
    if row.case == "insert":
        if "batch_error" not in result:
            return "-"
        ratio = result["error"] / result["batch_error"] if result["batch_error"] > 0 else float("nan")
        return f"batch: {_seconds(result['batch_s'])} s, error {result['batch_error']:.5g}; f/batch error {ratio:.3f}"
    if row.case == "hierarchical" and not quick and row.m in REFERENCE:
        seconds, error, gigabytes = REFERENCE[row.m]
        return f"C++: {seconds:g} s, error {error:g}, {gigabytes:g} GB"
    return "-"


def cells(row: Row, result: dict, markdown: bool, quick: bool) -> list[str]:
    """The table row: failures and timeouts fill the measurement cells with one message."""
    head = [row.case, f"{row.m} + {row.inserts}" if row.case == "insert" else str(row.m),
            "-" if row.dim is None else str(row.dim), row.mode, row.schedule or result.get("schedule") or "-"]
    if "timeout" in result or "failure" in result:
        message = "> timeout" if "timeout" in result else "error: " + result["failure"]
        if markdown:
            message = message.replace("|", "\\|")
        return [*head, message, "-", "-", "-", _reference(row, {}, quick)]
    times = np.asarray(result["times"])
    if row.case == "insert":
        seconds = f"median {np.median(times) * 1000:.2f} ms, p99 {np.percentile(times, 99) * 1000:.2f} ms per class"
    else:
        seconds = _seconds(float(np.median(times)))
    return [*head, seconds, f"{max(result['peak_mb'], 0):.0f}", f"{result['error']:.5g}",
            f"{result['relative']:.4g}", _reference(row, result, quick)]


def growth(points: list[tuple[int, float]]) -> str:
    """``time ~ m^a`` fitted by least squares on logs, with the sizes it used."""
    if len(points) < 2:
        return f"n/a ({len(points)} row(s) finished, 2 needed)"
    m, seconds = np.array(points, dtype=float).T
    exponent = np.polyfit(np.log(m), np.log(seconds), 1)[0]
    return f"time ~ m^{exponent:.2f} (m = {', '.join(str(int(x)) for x in m)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the median is reported (default 1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per row (default 900)")
    parser.add_argument("--only", action="append", metavar="SUBSTRING",
                        help="run the rows whose name contains SUBSTRING (repeatable; see --list)")
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    parser.add_argument("--inserts", type=int, default=1000, help="classes inserted one by one (default 1000)")
    parser.add_argument("--threads", type=int, default=1, help="numba and BLAS threads (default 1)")
    parser.add_argument("--tmpdir", help="where the inputs are saved (default: the system's temporary directory)")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")
    args = parser.parse_args()
    for name, value, minimum in (("repeats", args.repeats, 1), ("inserts", args.inserts, 1),
                                 ("threads", args.threads, 1), ("timeout", args.timeout, 1)):
        if value < minimum:
            parser.error(f"--{name} must be at least {minimum}")

    rows = [row for row in plan(args.quick, args.inserts)
            if not args.only or any(part in row.name for part in args.only)]
    if args.list or not rows:
        print("\n".join(row.name for row in plan(args.quick, args.inserts)) if args.list
              else f"no row name contains {' or '.join(map(repr, args.only))} (see --list)")
        return

    table, results = [], []
    for row in rows:
        print(f"  running {row.name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        result = run_row(row, args)
        results.append((row, result))
        table.append(cells(row, result, args.markdown, args.quick))
        print(f"  done in {time.monotonic() - start:.0f} s:", " | ".join(table[-1]), file=sys.stderr, flush=True)

    print_table(
        f"MMF at scale, {datetime.date.today().isoformat()}, mmf_stream {ms.__version__}, median of "
        f"{args.repeats} run(s), {args.threads} thread(s), timeout {args.timeout:g} s per row; "
        "peak = resident MB above the baseline, input included; reference = C++ MMF (same machine kind, quoted)",
        ["case", "m", "D", "mode", "schedule", "seconds", "peak MB", "abs. error", "rel. error", "reference"],
        table, args.markdown,
    )

    def finished(case: str, mode: str, schedule: str | None) -> list[tuple[int, float]]:
        return [(row.m, float(np.median(result["times"]))) for row, result in results
                if (row.case, row.mode, row.schedule) == (case, mode, schedule) and "times" in result]

    notes = []
    if any(row.case == "class_means-order5" for row in rows):
        notes.append(f"growth, factored class_means, order 5, full depth: {growth(finished('class_means-order5', 'factored', None))}")
    if any(row.case == "hierarchical" and row.schedule == "greedy" for row in rows):
        line = f"growth, dense greedy hierarchical: {growth(finished('hierarchical', 'dense', 'greedy'))}"
        if not args.quick:
            line += f"; C++ reference: {growth([(m, ref[0]) for m, ref in REFERENCE.items()])}"
        notes.append(line)
    for row, result in results:
        if row.case == "insert" and "times" in result:
            times = np.asarray(result["times"])
            notes.append(
                f"insertion: initial factorization of {row.m} classes {_seconds(result['initial_s'])} s; "
                f"{row.inserts} inserts one by one: median {np.median(times) * 1000:.2f} ms, "
                f"p99 {np.percentile(times, 99) * 1000:.2f} ms, mean {times.mean() * 1000:.2f} ms, "
                f"total {times.sum():.2f} s ({result.get('repairs', 0)} repairs); batch of {row.m + row.inserts}: {_seconds(result['batch_s'])} s; "
                f"error after inserts / batch error = {result['error'] / result['batch_error']:.3f}"
            )
    if notes:
        print()
        for note in notes:
            print(("- " if args.markdown else "") + note)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        child_main(sys.argv[2:])
    else:
        main()
