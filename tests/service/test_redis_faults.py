"""Redis faults (issue 18, items 5 and 9), against real redis-server processes: a password is never printed or
stored, a restarted server is ridden out, status works with the server down, a server that persists nothing is
warned about."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest

import mmf_stream as ms
from mmf_stream import cli
from mmf_stream.service.coordinator import Coordinator, ServeOptions
from mmf_stream.service.queues.embedded import encode_array
from mmf_stream.service.queues.redis_streams import RedisQueue
from mmf_stream.service.status import project_status

from redis_server import free_port, redis_server_binary, running_redis  # noqa: E402
from service_helpers import DIM, INITIAL, check_exact, make_project, run_coordinator, start_coordinator  # noqa: E402

#: the test server's password: it must appear in no output and no file of the project
PASSWORD = "s3cret-Pw-9f2c"


def _means(count: int, seed: int = 1) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(size=(count, DIM))) + 0.1


def _wait_for(condition, process, timeout: float = 120.0) -> None:
    """Until ``condition()``, while ``process`` (the coordinator) lives."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the coordinator exited {process.returncode}: {process.stderr.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_password_is_never_printed_or_stored(tmp_path, capsys, monkeypatch):
    with running_redis(tmp_path / "redis", ("--requirepass", PASSWORD)) as server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        project = make_project(tmp_path / "p")
        for i, mean in enumerate(_means(3)):
            ms.submit(project, f"n{i}", mean=mean, queue=url)
        served = run_coordinator(project, "--order", "4", "--queue", url, "--idle-exit", "0.5")
        assert served.returncode == 0, served.stderr
        outputs = [served.stdout, served.stderr]
        assert cli.main(["status", str(project), "--queue", url]) == 0
        outputs.append("".join(capsys.readouterr()))
        assert cli.main(["status", str(project), "--queue", url, "--json"]) == 0
        text = capsys.readouterr()
        outputs += [text.out, text.err]
        status = json.loads(text.out)
        assert status["applied"] == 3 and status["queue_depth"] == 0 and status["queue"] == server.url

        # the recorded URL has no password: status finds it in the environment, or says it cannot measure
        assert cli.main(["status", str(project), "--json"]) == 0
        text = capsys.readouterr()
        outputs += [text.out, text.err]
        unauthenticated = json.loads(text.out)
        assert unauthenticated["queue_depth"] is None and unauthenticated["queue_error"]  # no password: refused
        assert unauthenticated["applied"] == 3
        monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
        assert project_status(project)["queue_depth"] == 0
        monkeypatch.delenv("REDIS_PASSWORD")
        secret = tmp_path / "redis-password"
        secret.write_text(PASSWORD + "\n")
        monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
        ms.submit(project, "n9", mean=np.ones(DIM), queue=server.url)
        assert project_status(project)["queue_depth"] == 1

        monkeypatch.setenv("REDIS_PASSWORD_FILE", str(tmp_path / "none"))
        assert cli.main(["status", str(project)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "REDIS_PASSWORD_FILE" in err and "Traceback" not in err
    for output in outputs:
        assert PASSWORD not in output
    for path in project.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    from mmf_stream.service.queues.redis_streams import public_url

    assert public_url("redis://user:pw@host:1/0?stream=k") == "redis://user@host:1/0?stream=k"


def test_the_coordinator_rides_out_a_redis_restart_and_status_works_with_redis_down(tmp_path, capsys):
    with running_redis(tmp_path / "redis") as server:
        project = make_project(tmp_path / "p")
        means = _means(6)
        coordinator = start_coordinator(project, "--order", "4", "--queue", server.url)
        try:
            for i in range(3):
                ms.submit(project, f"n{i}", mean=means[i], queue=server.url)
            _wait_for(lambda: project_status(project, queue=server.url)["applied"] == 3, coordinator)
            server.restart()  # SIGKILL and start again on the same port (its AOF keeps the stream)
            for i in range(3, 6):
                ms.submit(project, f"n{i}", mean=means[i], queue=server.url)
            _wait_for(lambda: project_status(project, queue=server.url)["applied"] == 6, coordinator, timeout=90)
            assert coordinator.poll() is None
        finally:
            coordinator.send_signal(signal.SIGTERM)
            out, err = coordinator.communicate(timeout=60)
        assert coordinator.returncode == 0, err
        assert "lost the connection to Redis" in err and "reconnected to Redis" in err
        store, _ = check_exact(project)
        assert store.size == INITIAL + 6
        server.kill()
        status = project_status(project)
        assert status["queue_depth"] is None and "cannot reach Redis" in status["queue_error"]
        assert status["generation"] is not None and status["factorized"] == INITIAL + 6 and status["applied"] == 6
        assert cli.main(["status", str(project)]) == 0
        assert "unreachable (cannot reach Redis" in capsys.readouterr().out


def test_status_of_a_new_project_with_redis_down(tmp_path, capsys):
    redis_server_binary()  # redis-py installed (or skip / fail)
    project = make_project(tmp_path / "p")
    url = f"redis://127.0.0.1:{free_port()}/0"
    status = project_status(project, queue=url)
    assert status["queue_depth"] is None and status["queue_error"].startswith(f"cannot reach Redis at {url}")
    assert status["classes"] == INITIAL
    assert cli.main(["status", str(project), "--queue", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queue_error"].startswith("cannot reach Redis")


def test_a_lost_connection_is_retried_with_one_line_each_way_then_given_up(tmp_path):
    with running_redis(tmp_path / "redis") as server:
        lines: list[str] = []
        queue = RedisQueue(server.url, "p1", reconnect_seconds=20, log=lines.append)
        queue.put("a", "mean", encode_array(np.zeros(DIM)))
        server.kill()
        depths: list[int] = []
        waiting = threading.Thread(target=lambda: depths.append(queue.depth()))
        waiting.start()  # (the server is restarted from this thread: it dies with the thread that started it)
        time.sleep(0.5)
        server.restart()
        waiting.join(timeout=30)
        assert depths == [1]  # waited for the restarted server
        assert len(lines) == 2 and lines[0].startswith("lost the connection to Redis")
        assert lines[1].startswith("reconnected to Redis")
        short = RedisQueue(server.url, "p1", reconnect_seconds=1, log=lines.append)
        assert short.depth() == 1
        server.kill()
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=r"cannot reach Redis at .*\(retried for 1 s\)"):
            short.depth()
        assert 0.9 <= time.monotonic() - start < 10
    with RedisQueue(server.url, "p1", reconnect_seconds=20) as never_reached:  # a wrong address: no wait
        start = time.monotonic()
        with pytest.raises(ConnectionError):
            never_reached.depth()
        assert time.monotonic() - start < 5


def test_a_server_that_persists_nothing_is_warned_about_at_serve_start(tmp_path):
    with running_redis(tmp_path / "durable") as durable:
        assert RedisQueue(durable.url, "p1").persistence_warning() is None
    with running_redis(tmp_path / "volatile", ("--appendonly", "no")) as volatile:
        warning = RedisQueue(volatile.url, "p1").persistence_warning()
        assert warning and "persists nothing" in warning and "\n" not in warning
        import redis

        redis.Redis.from_url(volatile.url).acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                                                       commands=["+@all", "-config"])
        limited = f"redis://limited:pw@127.0.0.1:{volatile.port}/0"
        assert RedisQueue(limited, "p1").persistence_warning() is None  # CONFIG refused: nothing said
        project = make_project(tmp_path / "p")
        lines: list[str] = []
        coordinator = Coordinator(project, ServeOptions(order=4, queue=volatile.url), log=lines.append).start()
        coordinator.close()
        assert sum("persists nothing" in line for line in lines) == 1
