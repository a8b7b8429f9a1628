"""``mmf-stream status PROJECT``: what the service has done and what waits."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream.service.queues.backends import open_queue
from mmf_stream.service.lock import serving_pid
from mmf_stream.service.policy import drift, growth
from mmf_stream.store.generations import Project, has_log, log_path, read_log_id

#: seconds of recent commits the ingest rate and latencies are measured over
INGEST_WINDOW = 60.0
#: dead letters listed (the newest)
DEAD_LETTERS_SHOWN = 20


def project_status(project: str | os.PathLike, *, queue: str | None = None) -> dict[str, Any]:
    """The service's state in ``project`` as a JSON-ready dict.

    Keys: ``project``, ``serving`` (the coordinator's pid or None),
    ``generation``, ``classes`` (in the store), ``factorized`` (classes in the
    factorization), ``queue``, ``position``, ``queue_depth``, ``applied``,
    ``ingest_rate`` (classes/s over the last :data:`INGEST_WINDOW` seconds),
    ``latency_p50``/``latency_p99`` (submit to commit, seconds, same window),
    ``error`` (current relative error), ``batch_error`` (relative error of
    the last batch run), ``error_vs_batch`` (their ratio), ``drift``,
    ``growth``, ``refreshes``, ``dead_letters`` (count),
    ``recent_dead_letters`` ([{position, id, reason}], newest last),
    ``last_error`` (the latest error message, or None), ``problems`` (one
    line each: what would make ``serve`` refuse the project; empty when all
    is well) and ``queue_error``
    (None, or why the queue could not be measured: then ``queue_depth`` is
    None and the rest, what the project itself records, is still given).

    A reader: nothing is written to the project or the queue
    (docs/service.md, "Readers write nothing"). ``queue`` never appears with
    its password (``queue`` is the queue's :attr:`url`).
    """
    from mmf_stream.store.class_store import Store
    from mmf_stream.store.durability import own_format

    path = Path(project)
    if own_format(path) != "class-store":
        raise ValueError(f"{path} is not a project (a class store written by 'mmf-stream covariance ... --out')")
    store = Store.open(path, mode="r")
    status: dict[str, Any] = {"project": str(path), "serving": serving_pid(path), "classes": store.size}
    if not has_log(path):
        queue_url, depth, queue_error, _ = measure_queue(path, queue, None if queue else 0)
        return {**status, "generation": None, "factorized": 0, "queue": queue_url, "position": None,
                "queue_depth": depth, "queue_error": queue_error, "applied": 0, "ingest_rate": 0.0, "latency_p50": None, "latency_p99": None,
                "error": None, "batch_error": None, "error_vs_batch": None, "drift": 0.0, "growth": 0.0,
                "refreshes": 0, "dead_letters": 0, "recent_dead_letters": [], "last_error": None,
                "problems": project_problems(path, store, None, None)}
    with Project(path, readonly=True) as log:
        current = log.current()
        counters = current.counters if current else {}
        attrs = current.attrs if current else {}
        now = time.time()
        recent = log.applied(since=now - INGEST_WINDOW)
        dead = log.dead_letters()
        errors = log.events("error", limit=1)
        last_start = log.events("start", limit=1)
        problems = [f"layer file {name} of generation {current.number} is missing" for name in log.missing_layers()]
    position = current.position if current else None
    queue_url, depth, queue_error, identity = measure_queue(
        path, queue or (current.queue if current else "embedded"), position if position is not None else 0)
    problems += project_problems(path, store, current, identity)
    latencies = np.array([committed - submitted for _, _, _, submitted, committed in recent])
    window = min(INGEST_WINDOW, now - last_start[0][0]) if last_start else INGEST_WINDOW
    size, error = int(attrs.get("size", 0)), attrs.get("error")
    relative = attrs.get("relative_error")
    batch_relative = counters.get("batch_relative_error")
    return {
        **status,
        "generation": current.number if current else None,
        "factorized": size,
        "queue": queue_url,
        "position": position,
        "queue_depth": depth,
        "queue_error": queue_error,
        "applied": int(counters.get("applied", 0)),
        "ingest_rate": float(len(recent) / max(window, 1e-9)),
        "latency_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
        "latency_p99": float(np.percentile(latencies, 99)) if latencies.size else None,
        "error": relative,
        "batch_error": batch_relative,
        "error_vs_batch": (relative / batch_relative) if relative is not None and batch_relative else None,
        "drift": drift(error or 0.0, size, counters),
        "growth": growth(size, counters),
        "refreshes": int(counters.get("refreshes", 0)),
        "dead_letters": len(dead),
        "recent_dead_letters": [{"position": p, "id": i, "reason": r} for p, i, r in dead[-DEAD_LETTERS_SHOWN:]],
        "last_error": errors[0][2] if errors else None,
        "problems": problems,
    }


def project_problems(path: Path, store: Any, current: Any, identity: str | None) -> list[str]:
    """What would make ``serve`` refuse the project (docs/service.md, "Operator faults"), one line each:
    a commit log that is not the class store's, a store that does not match the factorization committed
    for its generation, a queue (of identity ``identity``; None: unknown) that is not the one the committed
    position refers to."""
    problems = []
    record = store.service_record
    if record is not None and read_log_id(path) != record.get("log"):
        problems.append(f"{log_path(path)} is not the log this class store was served with (run 'mmf-stream "
                        "serve --rebuild-log', docs/service.md)")
    if current is None:
        return problems
    factorized = int(current.attrs.get("size", 0)) if current.layout else None
    if current.store_generation == store.generation and factorized is not None and factorized != store.size:
        problems.append(f"the class store shows {store.size} classes at generation {store.generation}, the "
                        f"factorization committed for it {factorized}: was zarr.json edited?")
    if identity is not None and current.queue_identity is not None and identity != current.queue_identity:
        problems.append(f"the queue {current.queue} is not the one the committed position {current.position!r} "
                        "refers to (deleted and created again?): run 'mmf-stream serve --adopt-queue'")
    return problems


def measure_queue(project: Path, url: str | None, position: Any
                  ) -> tuple[str, int | None, str | None, str | None]:
    """The queue's printable URL, its depth after ``position``, None and its identity; or, when it
    cannot be measured (Redis down or refusing, a damaged database), the URL, None, why (one line)
    and None.

    A URL that names no queue is still a ValueError (bad input).
    """
    with open_queue(project, url, readonly=True) as waiting:
        try:
            return waiting.url, int(waiting.depth(position)), None, waiting.identity()
        except (ConnectionError, ValueError, sqlite3.DatabaseError) as error:
            return waiting.url, None, str(error).splitlines()[0] if str(error) else type(error).__name__, None


def format_status(status: dict[str, Any]) -> str:
    """``status`` as a few readable lines."""
    def number(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    lines = [
        f"project      {status['project']} ({'served by pid ' + str(status['serving']) if status['serving'] else 'not served'})",
        f"classes      {status['classes']} in the store, {status['factorized']} factorized (generation {status['generation']})",
        f"queue        {status['queue']}: {status['queue_depth']} waiting after position {status['position']}"
        if status.get("queue_depth") is not None else
        f"queue        {status['queue']}: unreachable ({status.get('queue_error')}); position {status['position']}",
        f"applied      {status['applied']}; ingest rate {number(status['ingest_rate'], 3)} classes/s; latency "
        f"p50 {number(status['latency_p50'], 3)} s, p99 {number(status['latency_p99'], 3)} s",
        f"error        {number(status['error'])} relative; last batch run {number(status['batch_error'])} "
        f"(x{number(status['error_vs_batch'], 3)})",
        f"drift        {number(status['drift'], 3)}; growth since the batch run {number(status['growth'], 3)}; "
        f"refreshes {status['refreshes']}",
        f"dead letters {status['dead_letters']}",
    ]
    lines += [f"  {d['id']} at {d['position']}: {d['reason']}" for d in status["recent_dead_letters"]]
    lines.append(f"last error   {status['last_error'] or '-'}")
    lines += [f"PROBLEM      {problem}" for problem in status.get("problems", [])]
    return "\n".join(lines)
