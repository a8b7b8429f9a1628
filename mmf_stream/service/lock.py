"""One coordinator per project: an OS advisory lock on the project folder, and a file naming its holder."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from mmf_stream.service.queues.backends import SERVICE_DIR

#: the file naming the serving coordinator inside ``PROJECT/service`` (the lock itself is on the project folder)
LOCK_FILE = "coordinator.lock"
#: seconds a starting coordinator retries a busy project lock (a ``status`` call holds it shared for an instant)
LOCK_RETRY_SECONDS = 1.0


class CoordinatorBusy(ValueError):
    """Another coordinator is serving the project."""


class CoordinatorLock:
    """An OS advisory lock (released if its holder dies) on the project's folder itself, plus a file
    naming the serving process.

    The lock is an ``flock`` on the project directory, which a user cannot delete or swap without
    moving the whole project: deleting ``coordinator.lock`` (which only names the holder) does not
    let a second coordinator in.
    """

    def __init__(self, project: Path) -> None:
        self.project = project
        self.path = project / SERVICE_DIR / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (retrying for :data:`LOCK_RETRY_SECONDS`) or raise :class:`CoordinatorBusy`."""
        fd = os.open(self.project, os.O_RDONLY | os.O_DIRECTORY)
        deadline = time.monotonic() + LOCK_RETRY_SECONDS  # a status call holds a shared lock for an instant
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                holder = lock_holder(self.path) or "unknown"
                raise CoordinatorBusy(f"another coordinator (pid {holder}) is serving {self.project}; "
                                      "stop it first (one coordinator per project)") from None
        self._fd = fd
        self.path.parent.mkdir(exist_ok=True)
        staging = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}")
        staging.write_text(str(os.getpid()))
        os.replace(staging, self.path)

    def release(self) -> None:
        """Drop the lock, and the holder file when it still names this process."""
        if self._fd is not None:
            try:
                holder = lock_holder(self.path)
                if holder == str(os.getpid()):
                    self.path.unlink(missing_ok=True)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def lock_holder(path: Path) -> str | None:
    """The pid the coordinator's lock file names, or None."""
    try:
        return path.read_text(errors="replace").strip()[:32] or None
    except OSError:
        return None


def serving_pid(project: str | os.PathLike) -> int | None:
    """The pid of the coordinator serving ``project`` now, or None (-1: serving, pid unknown)."""
    try:
        fd = os.open(Path(project), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock_holder(Path(project) / SERVICE_DIR / LOCK_FILE) or ""
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
