"""Streaming service benchmark: sustained ingest rate and submit-to-commit latency of ``mmf-stream serve``.

Run:  python benchmarks/stream.py [--sizes 5000 20000] [--dim 512] [--loads 1 5 50] [--seconds 30] [--markdown]

For each size m0: a project (class store) of m0 class means (``ms.class_means``,
D = 512) is factorized by the coordinator (order 5, full depth, factored). Then,
with the coordinator running as its own process (``mmf-stream serve``, default
settings, embedded queue), a producer thread offers new classes at 1, 5 and 50
classes/s for ``--seconds`` each; the rows report the sustained ingest rate
(classes / (last commit - first submit)) and the latency from submit to commit
(p50, p99) from the project's ingest log, and the coordinator's peak memory.
The producer starts once the coordinator has recorded its start (the project
loaded); the start-up time is printed, not counted as latency.

Baselines in the same run:
* **batch per class**: re-running batch MMF for every new class (one batch
  factorization of m0 classes, timed in this process: its rate is 1/time);
* **single inserts**: the same coordinator with ``--batch-max 1`` (one
  insertion and one commit per class), 100 classes offered at the highest load.

Error after +10% classes: on copies of the freshly factorized project, 0.1 m0
new classes are queued at once and served: with the default settings (a
backlog that long is caught up by one batch run of the project), with
insertions and the background refresh (``--catch-up-fraction 0``), with
insertions only (refreshes off too), and with ``--inline-repair`` (the
engine's repair policy, insertions only). The error is read when the queue
has drained (a refresh may still be running) and compared with batch MMF of
the same final classes, and again once the refresh that the growth started
has been committed.

Producers put checked messages straight on the embedded queue (what
``ms.submit`` does after opening the project, which costs about 30 ms a call).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import print_table  # noqa: E402
from mmf_stream.store.generations import Project  # noqa: E402
from mmf_stream.service.queues.embedded import EmbeddedQueue, encode_array  # noqa: E402

ORDER = 5
#: the +10% runs: label in the table, serve's options
GROWTH_POLICIES = {
    "default": ("default (catch-up by one batch run)", ()),
    "refresh": ("insertions + background refresh (--catch-up-fraction 0)", ("--catch-up-fraction", "0")),
    "norefresh": ("insertions only", ("--catch-up-fraction", "0", "--refresh-growth", "0", "--refresh-drift", "1e9")),
    "inline": ("--inline-repair, insertions only",
               ("--inline-repair", "--catch-up-fraction", "0", "--refresh-growth", "0", "--refresh-drift", "1e9")),
}
#: classes offered to the single-insert baseline (it falls far behind: more would only make it longer)
SINGLE_INSERTS = 100


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_serve(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmf_stream.cli", "serve", str(project), "--order", str(ORDER),
                             *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stop(process: subprocess.Popen) -> float:
    peak = peak_mb(process.pid)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"serve exited {process.returncode}: {err[-2000:]}")
    return peak


def applied_count(project: Path) -> int:
    with Project(project) as log:
        return int(log.counters().get("applied", 0))


def wait_applied(project: Path, target: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while applied_count(project) < target:
        with Project(project) as log:
            if log.dead_letters():
                raise RuntimeError(f"{project}: dead letters: {log.dead_letters()[:3]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{project}: {applied_count(project)} of {target} applied after {timeout} s")
        time.sleep(0.1)


def wait_started(project: Path, process: subprocess.Popen, timeout: float = 600) -> float:
    """Seconds until the coordinator records its start (the project loaded, ready to read the queue)."""
    launched, t = time.time(), time.monotonic()
    while True:
        with Project(project) as log:
            if any(at >= launched for at, _, _ in log.events("start", limit=1)):
                return time.monotonic() - t
        if process.poll() is not None:
            raise RuntimeError(f"serve exited {process.returncode}: {process.stderr.read()[-2000:]}")
        if time.monotonic() - t > timeout:
            raise RuntimeError(f"{project}: serve did not start in {timeout} s")
        time.sleep(0.05)


def produce(project: Path, means: np.ndarray, prefix: str, rate: float | None) -> list[str]:
    """Put one class per row at ``rate`` classes/s (None: all at once); returns the ids."""
    ids = []
    start = time.monotonic()
    with EmbeddedQueue.of_project(project) as queue:
        for i, mean in enumerate(means):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            label = f"{prefix}-{i}"
            ids.append(queue.put(label, "mean", encode_array(mean), message_id=label))
    return ids


def measure(project: Path, ids: list[str]) -> dict[str, float]:
    wanted = set(ids)
    with Project(project) as log:
        rows = [row for row in log.applied() if row[1] in wanted]
    submitted = np.array([row[3] for row in rows])
    committed = np.array([row[4] for row in rows])
    latency = committed - submitted
    return {"n": len(rows), "rate": len(rows) / max(committed.max() - submitted.min(), 1e-9),
            "p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99))}


def load_phase(project: Path, means: np.ndarray, prefix: str, rate: float, serve_args: tuple[str, ...] = ()):
    before = applied_count(project)
    process = start_serve(project, *serve_args)
    started = wait_started(project, process)  # start-up (imports, loading the factorization) is not part of the load
    ids = produce(project, means, prefix, rate)
    wait_applied(project, before + len(ids))
    peak = stop(process)
    return {**measure(project, ids), "peak_mb": peak, "start_s": started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--loads", type=float, nargs="+", default=[1.0, 5.0, 50.0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of offered load per row")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--workdir", default=None, help="where the projects go (default: a temporary folder)")
    args = parser.parse_args()
    print(f"# mmf-stream serve benchmark, {datetime.date.today()}, {os.cpu_count()} cores, D = {args.dim}, "
          f"order {ORDER}, full depth, factored, embedded queue")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmf-stream-bench-"))
    load_rows, error_rows = [], []
    for m0 in args.sizes:
        extra = m0 // 10
        per_load = [int(round(rate * args.seconds)) for rate in args.loads]
        pool = ms.class_means(m0 + max(extra, sum(per_load) + SINGLE_INSERTS), args.dim, seed=7)
        project = root / f"p{m0}"
        shutil.rmtree(project, ignore_errors=True)
        t = time.perf_counter()
        store = ms.Store.create(project)
        store.add_means(pool[:m0], labels=[f"c{i}" for i in range(m0)])
        del store
        created = time.perf_counter() - t
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mmf_stream.cli", "serve", str(project), "--order", str(ORDER),
                               "--idle-exit", "0.5"], env=_env(), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr)
        first = time.perf_counter() - t
        t = time.perf_counter()
        batch = ms.factorize(means=pool[:m0], order=ORDER)
        batch_seconds = time.perf_counter() - t
        print(f"m0 = {m0}: project created in {created:.1f} s, first factorization by serve {first:.1f} s "
              f"(process included), batch MMF in this process {batch_seconds:.1f} s", flush=True)
        copies = {name: root / f"p{m0}-{name}" for name in GROWTH_POLICIES}
        for copy in copies.values():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(project, copy)
        load_rows.append([m0, "batch per class (baseline)", "-", f"{1 / batch_seconds:.3f}",
                          f"{batch_seconds:.2f}", f"{batch_seconds:.2f}", "-"])
        offset = m0
        labels_used = 0
        for rate, count in zip(args.loads, per_load):
            result = load_phase(project, pool[offset: offset + count], f"load{rate:g}", rate)
            offset += count
            labels_used += count
            load_rows.append([m0, "serve (batches)", f"{rate:g}", f"{result['rate']:.2f}", f"{result['p50']:.3f}",
                              f"{result['p99']:.3f}", f"{result['peak_mb']:.0f}"])
            print(f"  load {rate:g}/s: {result}", flush=True)
        rate, count = args.loads[-1], min(per_load[-1], SINGLE_INSERTS)
        result = load_phase(project, pool[offset: offset + count], "single", rate, ("--batch-max", "1"))
        load_rows.append([m0, "single inserts (--batch-max 1, baseline)", f"{rate:g}", f"{result['rate']:.2f}",
                          f"{result['p50']:.3f}", f"{result['p99']:.3f}", f"{result['peak_mb']:.0f}"])
        print(f"  single inserts {rate:g}/s: {result}", flush=True)
        new = pool[m0: m0 + extra]
        for name, copy in copies.items():
            policy, serve_args = GROWTH_POLICIES[name]
            produce(copy, new, "grow", None)
            t = time.perf_counter()
            process = start_serve(copy, *serve_args)
            wait_applied(copy, extra)
            seconds = time.perf_counter() - t
            f = ms.load(copy)
            with Project(copy) as log:
                refreshes = int(log.counters().get("refreshes", 0))
            later = None
            if name == "refresh":  # the refresh the growth started: wait for its commit
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline and later is None:
                    with Project(copy) as log:
                        if int(log.counters().get("refreshes", 0)) > refreshes:
                            later = ms.load(copy)
                    time.sleep(0.2)
            stop(process)
            final = ms.Store.open(copy, "r")
            reference = ms.factorize(means=final.factor(), order=ORDER)
            error_rows.append([m0, f"+{extra} (+10%)", policy,
                               f"{seconds:.1f}", f"{extra / seconds:.1f}", refreshes,
                               f"{f.error / reference.error:.3f}",
                               "-" if later is None else f"{later.error / reference.error:.3f}"])
            print(f"  +10% {name}: {error_rows[-1]}", flush=True)
        shutil.rmtree(project, ignore_errors=True)
        for copy in copies.values():
            shutil.rmtree(copy, ignore_errors=True)
    print_table("Ingest: sustained rate and submit-to-commit latency",
                ["m0", "method", "offered /s", "sustained /s", "p50 s", "p99 s", "peak MB"], load_rows,
                args.markdown)
    print_table("Error after +10% classes, against batch MMF of the same classes",
                ["m0", "added", "policy", "seconds to drain (start-up included)", "classes/s",
                 "batch runs at drain", "error / batch at drain", "after the next refresh"], error_rows,
                args.markdown)


if __name__ == "__main__":
    main()
