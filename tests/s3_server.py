"""A real S3 server for tests: moto's server mode (``moto_server``, from ``moto[server]``) as a subprocess
on 127.0.0.1, a free port, its request log in a folder.

Use it as::

    from s3_server import running_s3

    with running_s3(tmp_path / "s3") as server:
        server.env             # the AWS_* variables that point botocore / s3fs at it (and nowhere else)
        server.filesystem()    # an s3fs.S3FileSystem on it
        server.requests("GET") # the paths requested so far (from its log)

or the fixture ``s3_server_fixture("module", name="s3")``. Its data lives in the server's memory and
goes with it. ``env`` sets dummy credentials and turns off the EC2 metadata lookup, so nothing in a
test process (or a Dask worker given ``env``) looks for AWS outside 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from redis_server import die_with_parent, free_port

#: seconds to wait for a started server to accept connections
START_TIMEOUT = 30.0
#: a request line of the server's log: ``"GET /bucket/key HTTP/1.1" 200`` (colour codes around it)
REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)?([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)?" (\d+)')


def moto_server_binary() -> str:
    """The ``moto_server`` next to this interpreter (or on PATH); fails the test without it."""
    beside = Path(sys.executable).parent / "moto_server"
    binary = str(beside) if beside.exists() else shutil.which("moto_server")
    if binary is None:
        pytest.fail("moto_server is not installed (pip install 'moto[server]' s3fs; both are in the dev extra)",
                    pytrace=False)
    return binary


class S3Server:
    """A ``moto_server`` subprocess on 127.0.0.1 with its log in ``directory``."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "moto.log"
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that send botocore (and so s3fs) to this server with dummy credentials."""
        missing = str(self.directory / "no-such-aws-file")
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing}

    def filesystem(self):
        """A fresh ``s3fs.S3FileSystem`` on this server (not fsspec's cached instance)."""
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.endpoint, skip_instance_cache=True)

    def requests(self, method: str = "GET") -> list[str]:
        """The paths of the ``method`` requests answered so far, in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [match.group(2) for match in REQUEST.finditer(text) if match.group(1) == method]

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> S3Server:
        """Start on a free port; fail with the server's log if it does not come up."""
        binary = moto_server_binary()
        preexec = die_with_parent if sys.platform.startswith("linux") else None
        for _ in range(3):  # a free port may be taken between the probe and the bind
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                preexec_fn=preexec)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._accepts():
                    return self
                time.sleep(0.05)
            self.stop()
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(no log)"
        pytest.fail(f"moto_server did not start:\n{tail}", pytrace=False)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=30)
        self.process = None


@contextmanager
def running_s3(directory: str | os.PathLike) -> Iterator[S3Server]:
    """A started :class:`S3Server` in ``directory``, stopped on exit (also on failure)."""
    server = S3Server(directory)
    try:
        yield server.start()
    finally:
        server.stop()


def s3_server_fixture(scope: str = "function", name: str = "s3_server"):
    """A pytest fixture of a started :class:`S3Server` (its log in a fresh temporary folder)."""

    @pytest.fixture(scope=scope, name=name)
    def _s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
        with running_s3(tmp_path_factory.mktemp("s3")) as server:
            yield server

    return _s3_server
