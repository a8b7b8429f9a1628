"""The project at scale: what a class store and its coordinator cost as the number of classes m grows.

Run:  python benchmarks/project_scale.py [--sizes 20000 50000 100000] [--dim 512] [--seconds 20] [--markdown]
      python benchmarks/project_scale.py --code /path/to/an/older/checkout ...   (the baseline)

For each m, as a new user would: ``Store.create`` + ``add_means`` of m class
means (``ms.class_means(m, D, seed=0)``); ``ms.submit`` called 40 times from
this process (p50 / p99 per call); then ``mmf-stream serve PROJECT --order 5``
as its own process (it factorizes the project first: full depth, factored),
offered new classes at 5 and 50 classes/s for ``--seconds`` each (sustained
rate, submit-to-commit latency p50 / p99 from the project's ingest log); a
backlog of ``--backlog`` (default 1% of m, below the catch-up threshold of 5%,
so it is inserted) queued at once (drain rate); then, where the code has them,
single removals and single updates (a known label with a new mean) offered one
every ``--op-interval`` seconds (median submit-to-commit). The coordinator's
peak RSS (VmHWM) and the bytes it wrote (``/proc/PID/io`` wchar, every write
call: store chunks, layers, SQLite) per class applied are reported.

``--code DIR`` runs everything (this process's imports and the coordinator)
from another checkout of mmf_stream, e.g. ``git worktree add /tmp/base
c69d5fe`` for the code before the means became the source of truth; what that
code lacks (removal) is shown as "-". Needs about 3 GB of memory and, for the
old code, about m^2 x 8 bytes of disk (20,000 classes: 2 GB).
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _root_from_argv() -> Path:
    if "--code" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
    return Path(__file__).resolve().parents[1]


ROOT = _root_from_argv()
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmf_stream as ms  # noqa: E402
from _common import print_table  # noqa: E402
from mmf_stream.store.generations import Project  # noqa: E402
from mmf_stream.service.queues.embedded import EmbeddedQueue, encode_array  # noqa: E402

ORDER = 5
#: calls of ms.submit timed per size
SUBMIT_CALLS = 40
#: offered loads (classes/s)
LOADS = (5.0, 50.0)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _proc(pid: int, name: str, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


class Coordinator:
    """``mmf-stream serve`` as its own process, with its memory and write counters."""

    def __init__(self, project: Path) -> None:
        self.project = project
        launched = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mmf_stream.cli", "serve", str(project), "--order", str(ORDER)],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t = time.monotonic()
        while True:
            with Project(project) as log:
                if any(at >= launched for at, _, _ in log.events("start", limit=1)):
                    break
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}: {self.process.stderr.read()[-2000:]}")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - t

    def written(self) -> float:
        return _proc(self.process.pid, "io", "wchar:")

    def peak_mb(self) -> float:
        return _proc(self.process.pid, "status", "VmHWM:") / 1024

    def stop(self) -> float:
        peak = self.peak_mb()
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=900)
        if self.process.returncode != 0:
            raise RuntimeError(f"serve exited {self.process.returncode}: {err[-2000:]}")
        return peak


def applied(project: Path) -> int:
    with Project(project) as log:
        return int(log.counters().get("applied", 0))


def wait_applied(project: Path, target: int, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while applied(project) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{project}: {applied(project)} of {target} applied after {timeout} s")
        time.sleep(0.05)


def offer(project: Path, messages: list[tuple[str, np.ndarray | None]], rate: float | None) -> list[str]:
    """Queue ``(label, mean)`` messages (``mean`` None: a removal) at ``rate`` per second (None: at once)."""
    ids = []
    start = time.monotonic()
    with EmbeddedQueue.of_project(project) as queue:
        for i, (label, mean) in enumerate(messages):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            message_id = f"{label}-{time.monotonic_ns()}"
            if mean is None:
                ids.append(queue.put(label, "remove", b"", message_id=message_id))
            else:
                ids.append(queue.put(label, "mean", encode_array(mean), message_id=message_id))
    return ids


def latencies(project: Path, ids: list[str]) -> tuple[np.ndarray, float]:
    wanted = set(ids)
    with Project(project) as log:
        rows = [row for row in log.applied() if row[1] in wanted]
    submitted = np.array([row[3] for row in rows])
    committed = np.array([row[4] for row in rows])
    return committed - submitted, len(rows) / max(float(committed.max() - submitted.min()), 1e-9)


def one_size(m: int, args: argparse.Namespace, root: Path) -> list:
    rng = np.random.default_rng(1)
    extra = int(sum(rate * args.seconds for rate in LOADS)) + args.backlog + SUBMIT_CALLS + args.ops
    pool = ms.class_means(m + extra, args.dim, seed=0)
    project = root / f"p{m}"
    shutil.rmtree(project, ignore_errors=True)
    t = time.perf_counter()
    store = ms.Store.create(project)
    store.add_means(pool[:m], labels=[f"c{i}" for i in range(m)])
    del store
    created = time.perf_counter() - t
    size_mb = disk_mb(project)
    print(f"m = {m}: created in {created:.1f} s, {size_mb:.0f} MB", flush=True)
    used = m
    calls = []
    for i in range(SUBMIT_CALLS):
        t = time.perf_counter()
        ms.submit(project, f"s{i}", mean=pool[used + i])
        calls.append(time.perf_counter() - t)
    used += SUBMIT_CALLS
    coordinator = Coordinator(project)
    print(f"  submit p50 {1e3 * np.median(calls):.1f} ms; serve started in {coordinator.start_seconds:.1f} s "
          "(first factorization included)", flush=True)
    wait_applied(project, SUBMIT_CALLS)
    written_before, applied_before = coordinator.written(), applied(project)
    loads = []
    for rate in LOADS:
        count = int(rate * args.seconds)
        before = applied(project)
        ids = offer(project, [(f"l{rate:g}-{i}", pool[used + i]) for i in range(count)], rate)
        used += count
        wait_applied(project, before + count)
        latency, sustained = latencies(project, ids)
        loads.append((sustained, np.percentile(latency, 50), np.percentile(latency, 99)))
        print(f"  {rate:g}/s offered: {sustained:.1f}/s sustained, p50 {loads[-1][1]:.2f} s, p99 {loads[-1][2]:.2f} s",
              flush=True)
    before = applied(project)
    t = time.monotonic()
    offer(project, [(f"b-{i}", pool[used + i]) for i in range(args.backlog)], None)
    used += args.backlog
    wait_applied(project, before + args.backlog)
    drain = args.backlog / (time.monotonic() - t)
    written = (coordinator.written() - written_before) / max(applied(project) - applied_before, 1)
    print(f"  backlog of {args.backlog}: {drain:.1f}/s; {written / 1e3:.0f} kB written per class", flush=True)
    can_remove = "remove" in inspect.signature(ms.submit).parameters
    removal = update = float("nan")
    known = [f"c{i}" for i in rng.choice(m, size=2 * args.ops, replace=False)]
    if args.ops:
        before = applied(project)
        ids = offer(project, [(label, pool[used + i]) for i, label in enumerate(known[: args.ops])],
                    1.0 / args.op_interval)
        wait_applied(project, before + args.ops)
        update = float(np.median(latencies(project, ids)[0]))
        if can_remove:
            before = applied(project)
            ids = offer(project, [(label, None) for label in known[args.ops:]], 1.0 / args.op_interval)
            wait_applied(project, before + args.ops)
            removal = float(np.median(latencies(project, ids)[0]))
        print(f"  update median {update:.2f} s, removal median {removal:.2f} s", flush=True)
    peak = coordinator.stop()
    shutil.rmtree(project, ignore_errors=True)
    fmt = (lambda x: "-" if x != x else f"{x:.2f}")  # noqa: E731 - NaN: not available
    return [m, f"{size_mb:,.0f}", f"{created:.1f}", f"{1e3 * np.median(calls):.1f}",
            f"{1e3 * np.percentile(calls, 99):.1f}", f"{coordinator.start_seconds:.1f}",
            *(f"{s:.1f} / {p50:.2f} / {p99:.2f}" for s, p50, p99 in loads), f"{drain:.1f}", fmt(removal), fmt(update),
            f"{peak:,.0f}", f"{written / 1e3:,.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of each offered load")
    parser.add_argument("--backlog", type=int, default=None, help="classes queued at once (default 1%% of m)")
    parser.add_argument("--ops", type=int, default=10, help="removals and updates measured (each)")
    parser.add_argument("--op-interval", type=float, default=2.0, help="seconds between two removals/updates")
    parser.add_argument("--code", default=None, help="run another checkout of mmf_stream (the baseline)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"# project at scale, {datetime.date.today()}, {os.cpu_count()} cores, D = {args.dim}, order {ORDER}, "
          f"code {ROOT} ({commit})")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmf-stream-scale-"))
    rows = []
    for m in args.sizes:
        backlog = args.backlog if args.backlog is not None else max(100, m // 100)
        rows.append(one_size(m, argparse.Namespace(**{**vars(args), "backlog": backlog}), root))
    print_table(f"Project at scale (code {commit})",
                ["m", "project MB", "create s", "submit p50 ms", "submit p99 ms", "serve start s",
                 "5/s: sustained / p50 / p99", "50/s: sustained / p50 / p99", "backlog drain /s",
                 "removal median s", "update median s", "coordinator peak MB", "kB written / class"],
                rows, args.markdown)


if __name__ == "__main__":
    main()
