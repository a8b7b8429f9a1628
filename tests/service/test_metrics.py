"""``mmf-stream serve --metrics-port``: Prometheus metrics and health checks, scraped over HTTP on 127.0.0.1.

A real coordinator process serves a small project; the test scrapes
``/metrics``, parses it with prometheus_client's own text parser, applies
classes (added, updated, removed, one dead letter) and checks the values moved
by exactly that much; ``/healthz`` and ``/readyz`` answer as documented; the
server is gone once SIGTERM stopped the coordinator.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import pytest

import mmf_stream as ms
from mmf_stream.service.metrics import NoMetrics, ServiceMetrics, check_metrics_available
from mmf_stream.service.options import DEFAULT_METRICS_HOST, ServeOptions
from mmf_stream.service.status import project_status
from service_helpers import DIM, INITIAL, env, make_project, start_coordinator

from prometheus_client.parser import text_string_to_metric_families

#: seconds the test waits for the coordinator to start, apply or stop
WAIT = 120


class Lines:
    """The coordinator's stderr, read by a thread (so that waiting for a line has a deadline)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s; stderr so far: {''.join(self.seen)}")


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, labels) -> value`` of every sample at /metrics, parsed by prometheus_client."""
    status, text = _get(port, "/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _until(condition, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


@pytest.fixture
def coordinator(tmp_path):
    """A coordinator serving a 60-class project with metrics on a free port of 127.0.0.1; stopped at the end."""
    project = make_project(tmp_path / "project")
    process = start_coordinator(project, "--metrics-port", "0", "--batch-wait", "0.05", "--catch-up-fraction", "0")
    lines = Lines(process)
    try:
        line = lines.wait_for("metrics on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        yield project, process, lines, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_metrics_are_scraped_and_move_when_classes_are_applied(coordinator):
    project, process, lines, port = coordinator
    assert _get(port, "/healthz") == (200, "ok\n")  # liveness: from the start, during the first factorization
    assert _get(port, "/nothing")[0] == 404
    lines.wait_for("ready: serving")
    assert _until(lambda: _get(port, "/readyz") == (200, "ready\n"), 30, "/readyz 200")

    before = scrape(port)
    assert value(before, "mmf_stream_classes") == INITIAL
    assert value(before, "mmf_stream_queue_depth") == 0
    assert value(before, "mmf_stream_ready") == 1
    generation = value(before, "mmf_stream_generation")
    assert generation >= 1
    assert 0 <= value(before, "mmf_stream_relative_error") < 1
    for change in ("added", "updated", "removed"):
        assert value(before, "mmf_stream_applied_total", change=change) == 0
    assert value(before, "mmf_stream_dead_letters_total") == 0
    assert value(before, "mmf_stream_batch_seconds_count") == 0
    assert value(before, "mmf_stream_latency_seconds_count") == 0
    assert value(before, "mmf_stream_last_commit_timestamp_seconds") == 0
    assert value(before, "mmf_stream_info", version=ms.__version__, queue="embedded") == 1

    submitted = time.time()
    for i in range(4):
        ms.submit(project, f"new{i}", mean=[1.0 + i] * DIM)
    ms.submit(project, "c0", mean=[2.0] * DIM)  # an update
    ms.submit(project, "c1", remove=True)
    ms.submit(project, "ghost", remove=True)  # no such class: a dead letter

    def applied():
        samples = scrape(port)
        done = sum(value(samples, "mmf_stream_applied_total", change=c) for c in ("added", "updated", "removed"))
        return samples if done + value(samples, "mmf_stream_dead_letters_total") >= 7 else None

    after = _until(applied, what="7 messages applied or dead-lettered")
    assert value(after, "mmf_stream_applied_total", change="added") == 4
    assert value(after, "mmf_stream_applied_total", change="updated") == 1
    assert value(after, "mmf_stream_applied_total", change="removed") == 1
    assert value(after, "mmf_stream_dead_letters_total") == 1
    assert value(after, "mmf_stream_classes") == INITIAL + 4 - 1
    assert value(after, "mmf_stream_generation") > generation
    assert value(after, "mmf_stream_queue_depth") == 0
    batches = value(after, "mmf_stream_batch_seconds_count")
    assert batches >= 1
    assert 0 < value(after, "mmf_stream_batch_seconds_sum") < WAIT
    assert value(after, "mmf_stream_batch_seconds_bucket", le="+Inf") == batches
    # one latency per applied message, each from its submit to the commit
    assert value(after, "mmf_stream_latency_seconds_count") == 6
    assert 0 < value(after, "mmf_stream_latency_seconds_sum") < 6 * (time.time() - submitted)
    assert value(after, "mmf_stream_latency_seconds_bucket", le="+Inf") == 6
    assert submitted <= value(after, "mmf_stream_last_commit_timestamp_seconds") <= time.time()
    # the metrics agree with the project's own totals
    status = project_status(project)
    assert status["dead_letters"] == 1 and status["queue_depth"] == 0 and status["classes"] == INITIAL + 3

    # SIGTERM: /readyz turns 503 or the server is gone; the process exits 0 and frees the port
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=WAIT) == 0
    stop_seconds = time.monotonic() - began
    print(f"coordinator stopped {stop_seconds:.2f} s after SIGTERM")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_metrics_port_in_use_is_one_line_exit_2(tmp_path):
    project = make_project(tmp_path / "project", size=10)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "mmf_stream.cli", "serve", str(project), "--metrics-port",
                                 str(port)], env=env(), capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("mmf-stream: error: cannot serve metrics on 127.0.0.1:") and str(port) in line, result.stderr
    assert "Traceback" not in result.stderr
    # the project's lock is released: a coordinator starts on it next (and stops at once: idle)
    again = subprocess.run([sys.executable, "-m", "mmf_stream.cli", "serve", str(project), "--idle-exit", "0.5"],
                           env=env(), capture_output=True, text=True, timeout=WAIT)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_a_bad_metrics_port_is_one_line_exit_2(tmp_path, port):
    result = subprocess.run([sys.executable, "-m", "mmf_stream.cli", "serve", str(tmp_path), "--metrics-port", port],
                            env=env(), capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) <= 2 and "--metrics-port" in result.stderr  # usage + error
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("options, message", [
    (dict(metrics_port=-1), "metrics_port"),
    (dict(metrics_port=70000), "metrics_port"),
    (dict(metrics_port=True), "metrics_port"),
    (dict(metrics_port=9464, metrics_host=""), "metrics_host"),
])
def test_bad_metrics_options_are_value_errors(options, message):
    with pytest.raises(ValueError, match=message):
        ServeOptions(**options).check()
    assert ServeOptions(metrics_port=0).check().metrics_host == DEFAULT_METRICS_HOST == "127.0.0.1"


def test_without_prometheus_client_a_one_line_value_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # the import fails
    with pytest.raises(ValueError, match="prometheus_client") as caught:
        check_metrics_available()
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="prometheus_client"):
        ServeOptions(metrics_port=9464).check()
    ServeOptions().check()  # without a metrics port it is not needed


def test_each_coordinator_has_its_own_registry():
    from prometheus_client import REGISTRY, generate_latest

    first, second = ServiceMetrics(), ServiceMetrics()  # the same names twice: no clash
    first.batch_committed(seconds=0.5, changes={"added": 3}, dead_letters=2, latencies=[1.0, 2.0, 3.0],
                          committed_at=1.0)
    one = generate_latest(first.registry).decode()
    two = generate_latest(second.registry).decode()
    assert 'mmf_stream_applied_total{change="added"} 3.0' in one
    assert 'mmf_stream_applied_total{change="added"} 0.0' in two
    assert "mmf_stream_dead_letters_total 2.0" in one
    assert "mmf_stream_applied" not in generate_latest(REGISTRY).decode()  # never the global registry
    first.set_stopping()
    first.set_ready(True)  # once stopping, never ready again
    assert "mmf_stream_ready 0.0" in generate_latest(first.registry).decode()
    assert NoMetrics().enabled is False and NoMetrics().serve("127.0.0.1", 0) is None
