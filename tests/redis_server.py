"""A real ``redis-server`` for tests: a subprocess on 127.0.0.1, a free port, its data in a folder.

Use the fixtures of ``tests/conftest.py`` (``redis_server``: a started
:class:`RedisServer`; ``redis_url``: its ``redis://127.0.0.1:PORT/0``), or in
any module::

    from redis_server import running_redis, redis_server_fixture

    def test_something(tmp_path):
        with running_redis(tmp_path / "redis") as server:
            ...  # server.url, server.unix_socket, server.restart()

    shared_redis = redis_server_fixture("module", name="shared_redis")  # one server per module

A missing ``redis-server`` (or redis-py) skips the tests that need it, except
in CI (``CI=true``) or with ``MMF_STREAM_REQUIRE_REDIS=1``, where it fails them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: seconds to wait for a started server to answer PING
START_TIMEOUT = 10.0


def redis_required() -> bool:
    """Whether a missing Redis must fail the tests (CI, or ``MMF_STREAM_REQUIRE_REDIS=1``)."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or os.environ.get("MMF_STREAM_REQUIRE_REDIS", "").strip() == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail where Redis is required."""
    if redis_required():
        pytest.fail(f"{reason} (required: CI or MMF_STREAM_REQUIRE_REDIS=1)", pytrace=False)
    pytest.skip(reason)


def redis_server_binary() -> str:
    """The path of ``redis-server`` (and redis-py importable), or skip / fail."""
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        skip_or_fail("redis-py is not installed (pip install redis)")
    return binary


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGKILL when the test process dies, so none outlives a killed run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _pings(port: int) -> bool:
    """Whether the server answers (a PONG, or a demand for the password of a ``--requirepass`` server)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` subprocess with its data (AOF, fsync on every write) in ``directory``.

    Parameters
    ----------
    directory : path
        The server's data folder (created).
    binary : str, optional
        ``redis-server`` (default: found on PATH, else skip / fail).
    options : sequence of str
        More command-line options, after the defaults (so they override them), e.g.
        ``["--requirepass", "pw"]`` or ``["--appendonly", "no"]``.
    """

    def __init__(self, directory: str | os.PathLike, binary: str | None = None, options: tuple[str, ...] = ()) -> None:
        self.options = tuple(options)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.binary = binary or redis_server_binary()
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_socket(self) -> Path:
        """The server's Unix socket (``unix://`` URLs)."""
        return self.directory / "redis.sock"

    def _command(self) -> list[str]:
        return [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log")] + self._unix_options() + \
            list(self.options)

    def _unix_options(self) -> list[str]:
        """A Unix socket too, where its path fits (about 100 bytes)."""
        if len(os.fsencode(self.unix_socket)) > 100:
            return []
        return ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]

    def _launch(self) -> bool:
        """Start the server on ``self.port``; whether it answers PING in time (killed if not)."""
        preexec = die_with_parent if sys.platform.startswith("linux") else None
        self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=preexec)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if _pings(self.port):
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def start(self) -> RedisServer:
        """Start on a free port (the same port again after :meth:`kill`); fail with the server's log."""
        for _ in range(3):  # a free port may be taken between the probe and the bind
            self.port = self.port or free_port()
            if self._launch():
                return self
            self.port = 0
        log = self.directory / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        pytest.fail(f"redis-server did not start in {self.directory}:\n{tail}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save: only what the AOF holds survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> RedisServer:
        """Kill the server (SIGKILL) and start it again on the same port and data folder."""
        port = self.port
        self.kill()
        self.port = port
        if not self._launch():
            pytest.fail(f"redis-server did not restart on port {port}", pytrace=False)
        return self

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


@contextmanager
def running_redis(directory: str | os.PathLike, options: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in ``directory`` (more ``options``: see the class), killed on exit
    (also on failure)."""
    server = RedisServer(directory, options=options)
    try:
        yield server.start()
    finally:
        server.kill()


def redis_server_fixture(scope: str = "function", name: str = "redis_server"):
    """A pytest fixture of a started :class:`RedisServer` (its data in a fresh temporary folder).

    In a test module or conftest: ``shared_redis = redis_server_fixture("module", name="shared_redis")``.
    """

    @pytest.fixture(scope=scope, name=name)
    def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        with running_redis(tmp_path_factory.mktemp("redis")) as server:
            yield server

    return _redis_server
