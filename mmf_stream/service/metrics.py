"""The coordinator's Prometheus metrics and health checks (``mmf-stream serve --metrics-port PORT``).

With a metrics port, the coordinator serves over HTTP (on ``--metrics-host``,
by default 127.0.0.1):

* ``/metrics``: the metrics below, in the Prometheus text format (or
  OpenMetrics, when the scraper asks for it);
* ``/healthz``: ``200 ok`` while the process runs (a liveness probe);
* ``/readyz``: ``200 ready`` once the coordinator has recovered the project,
  made its first factorization and serves the queue, ``503 starting`` before
  and ``503 stopping`` after SIGTERM/SIGINT (a readiness probe).

The server starts right after the coordinator takes the project's lock, before
the recovery and the first factorization, so the liveness probe answers while
they run. Its requests are answered by a thread of the coordinator's process:
while an engine kernel holds the interpreter (a batch run, seconds at a time),
an answer waits for it, so give probes a timeout of several seconds.

Metrics (every counter and histogram counts from this coordinator's start, as
Prometheus expects; ``mmf-stream status`` has the project's totals):

=============================================  =========  ==================================================
``mmf_stream_queue_depth``                     gauge      messages waiting after the committed queue
                                                          position (measured after each batch, and at most
                                                          every :data:`QUEUE_DEPTH_INTERVAL` s when idle)
``mmf_stream_applied_total{change}``           counter    messages applied, by change: ``added``,
                                                          ``updated``, ``removed``
``mmf_stream_dead_letters_total``              counter    messages dead-lettered
``mmf_stream_batch_seconds``                   histogram  seconds per committed batch, from its first
                                                          message read to its commit
``mmf_stream_latency_seconds``                 histogram  per applied message, submit to commit (the
                                                          producer's clock to the coordinator's)
``mmf_stream_last_commit_timestamp_seconds``   gauge      Unix time of the last commit (0: none yet)
``mmf_stream_classes``                         gauge      classes in the project
``mmf_stream_generation``                      gauge      the project's current generation
``mmf_stream_relative_error``                  gauge      relative error of the current factorization
``mmf_stream_refresh_running``                 gauge      1 while a background refresh runs
``mmf_stream_refreshes_total``                 counter    refreshes committed
``mmf_stream_ready``                           gauge      1 while ``/readyz`` answers 200
``mmf_stream_info{version,queue}``             info       the package version and the queue (no password)
=============================================  =========  ==================================================

Each coordinator has its own registry (never prometheus_client's global
one), so several coordinators, or tests, run side by side in one process.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["BATCH_SECONDS_BUCKETS", "LATENCY_SECONDS_BUCKETS", "QUEUE_DEPTH_INTERVAL", "NoMetrics",
           "ServiceMetrics", "check_metrics_available"]

#: histogram buckets of ``mmf_stream_batch_seconds`` (an insertion batch takes 0.01 to a few seconds, a batch
#: run of the whole project minutes)
BATCH_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: histogram buckets of ``mmf_stream_latency_seconds`` (submit to commit: batch_wait plus a batch when the
#: coordinator keeps up, the backlog's time when it does not)
LATENCY_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                           3600.0)
#: seconds between two measurements of the queue depth while the queue is idle (one query each)
QUEUE_DEPTH_INTERVAL = 1.0
#: the change kinds of ``mmf_stream_applied_total`` (:class:`~mmf_stream.service.changes.BatchChanges`)
CHANGES = ("added", "updated", "removed")


def check_metrics_available() -> None:
    """A one-line ValueError when prometheus_client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ValueError("serving metrics (--metrics-port) needs the prometheus_client package: pip install "
                         "prometheus-client (or pip install 'mmf_stream[metrics]')") from None


class NoMetrics:
    """What the coordinator records into without a metrics port: nothing (the same methods as
    :class:`ServiceMetrics`)."""

    #: whether anything is recorded (the coordinator skips the queue depth queries when not)
    enabled = False
    #: ``(host, port)`` of the metrics server; None when none runs
    address: tuple[str, int] | None = None

    def serve(self, host: str, port: int) -> tuple[str, int] | None:
        return None

    def set_info(self, **labels: str) -> None:
        pass

    def set_ready(self, ready: bool) -> None:
        pass

    def set_stopping(self) -> None:
        pass

    def project_state(self, *, classes: int, generation: int | None, relative_error: float | None) -> None:
        pass

    def batch_committed(self, *, seconds: float, changes: Mapping[str, int], dead_letters: int,
                        latencies: Iterable[float], committed_at: float) -> None:
        pass

    def queue_depth_due(self, now: float) -> bool:
        return False

    def set_queue_depth(self, depth: int, now: float) -> None:
        pass

    def track_refresh(self, running: Callable[[], bool]) -> None:
        pass

    def refresh_committed(self, committed_at: float) -> None:
        pass

    def close(self) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request (a slow scrape never holds up a probe); threads die with the process."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no line per request on stderr
        pass


class ServiceMetrics(NoMetrics):
    """The coordinator's metrics in a registry of their own (see the module docstring), and the HTTP
    server that exposes them with the health checks (:meth:`serve`).

    :meth:`set_stopping` only assigns an attribute (no lock): a signal handler may call it.
    """

    enabled = True

    def __init__(self) -> None:
        check_metrics_available()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._queue_depth = Gauge("mmf_stream_queue_depth", "Messages waiting after the committed queue position",
                                  registry=r)
        self._applied = Counter("mmf_stream_applied", "Messages applied since the coordinator started, by change",
                                ["change"], registry=r)
        for change in CHANGES:
            self._applied.labels(change=change)
        self._dead = Counter("mmf_stream_dead_letters", "Messages dead-lettered since the coordinator started",
                             registry=r)
        self._batch = Histogram("mmf_stream_batch_seconds", "Seconds per committed batch, first read to commit",
                                buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self._latency = Histogram("mmf_stream_latency_seconds", "Submit-to-commit seconds per applied message",
                                  buckets=LATENCY_SECONDS_BUCKETS, registry=r)
        self._last_commit = Gauge("mmf_stream_last_commit_timestamp_seconds",
                                  "Unix time of the coordinator's last commit (0: none yet)", registry=r)
        self._classes = Gauge("mmf_stream_classes", "Classes in the project", registry=r)
        self._generation = Gauge("mmf_stream_generation", "The project's current generation", registry=r)
        self._error = Gauge("mmf_stream_relative_error", "Relative error of the current factorization", registry=r)
        self._refresh_running = Gauge("mmf_stream_refresh_running", "1 while a background refresh runs", registry=r)
        self._refreshes = Counter("mmf_stream_refreshes", "Refreshes committed since the coordinator started",
                                  registry=r)
        self._ready = Gauge("mmf_stream_ready", "1 while the coordinator serves the queue (/readyz answers 200)",
                            registry=r)
        self._info = Info("mmf_stream", "The package version and the queue served", registry=r)
        self._error.set(float("nan"))
        self._state = "starting"  # "ready", "stopping": read by /readyz and mmf_stream_ready at each request
        self._ready.set_function(lambda: 1.0 if self._state == "ready" else 0.0)
        self._depth_at = float("-inf")
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the HTTP server
    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (0: a free port) from a
        background thread; returns the address bound. A port that cannot be bound is a one-line OSError."""
        from prometheus_client import make_wsgi_app

        metrics_app = make_wsgi_app(self.registry)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                return _text(start_response, "200 OK", "ok\n")
            if path == "/readyz":
                state = self._state
                return _text(start_response, "200 OK" if state == "ready" else "503 Service Unavailable",
                             f"{state}\n")
            if path == "/metrics":
                return metrics_app(environ, start_response)
            return _text(start_response, "404 Not Found", "not found: try /metrics, /healthz or /readyz\n")

        server_class = _ThreadingServer
        if ":" in host:  # an IPv6 address
            server_class = type("_ThreadingServer6", (_ThreadingServer,), {"address_family": socket.AF_INET6})
        try:
            self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as error:
            raise OSError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mmf-metrics", daemon=True)
        self._thread.start()
        self.address = (host, int(self._server.server_address[1]))
        return self.address

    def close(self) -> None:
        """Stop the HTTP server (the port is free when this returns)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ what the coordinator records
    def set_info(self, **labels: str) -> None:
        self._info.info({name: str(value) for name, value in labels.items()})

    def set_ready(self, ready: bool) -> None:
        if self._state != "stopping":
            self._state = "ready" if ready else "starting"

    def set_stopping(self) -> None:
        self._state = "stopping"

    def project_state(self, *, classes: int, generation: int | None, relative_error: float | None) -> None:
        self._classes.set(classes)
        if generation is not None:
            self._generation.set(generation)
        self._error.set(float("nan") if relative_error is None else float(relative_error))

    def batch_committed(self, *, seconds: float, changes: Mapping[str, int], dead_letters: int,
                        latencies: Iterable[float], committed_at: float) -> None:
        self._batch.observe(max(0.0, seconds))
        for change, count in changes.items():
            if count:
                self._applied.labels(change=change).inc(count)
        if dead_letters:
            self._dead.inc(dead_letters)
        for latency in latencies:
            self._latency.observe(max(0.0, latency))  # a producer's clock ahead of ours: 0, not negative
        self._last_commit.set(committed_at)

    def queue_depth_due(self, now: float) -> bool:
        return now - self._depth_at >= QUEUE_DEPTH_INTERVAL

    def set_queue_depth(self, depth: int, now: float) -> None:
        self._queue_depth.set(depth)
        self._depth_at = now

    def track_refresh(self, running: Callable[[], bool]) -> None:
        """``mmf_stream_refresh_running`` is ``running()`` at each scrape."""
        self._refresh_running.set_function(lambda: 1.0 if running() else 0.0)

    def refresh_committed(self, committed_at: float) -> None:
        self._refreshes.inc()
        self._last_commit.set(committed_at)


def _text(start_response, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
