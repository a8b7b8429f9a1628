"""Reading a project's SQLite databases without writing anything (``status``, ``ms.load``, depth queries).

An ordinary SQLite connection, even ``mode=ro``, creates the ``-wal`` and
``-shm`` files of a WAL database when they are absent (and cannot remove
them again), and fails ("unable to open database file") where it cannot
create them: a read-only project. A :class:`ReadOnlyDatabase` creates and
modifies no file:

* while a writer has the database open (its ``-wal`` and ``-shm`` exist), it
  reads with ``mode=ro``, sharing the writer's WAL index (the ``-shm``, where
  every reader marks what it reads), so it sees every committed transaction;
* otherwise the database file is the whole database, read with
  ``immutable=1`` (no lock, no side file); a query whose file changed under it
  (a writer started, committed and checkpointed meanwhile) is run again, up
  to :data:`READ_ATTEMPTS` times, on a fresh connection.

Each query is its own read transaction (as with an autocommit connection).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

#: times a query is run again because the database changed under an ``immutable`` read
READ_ATTEMPTS = 5


class Rows:
    """A query's rows (all fetched already), with the cursor methods readers use."""

    def __init__(self, rows: list[tuple]) -> None:
        self._rows = rows

    def fetchone(self) -> tuple | None:
        """The first row, or None."""
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple]:
        """Every row."""
        return list(self._rows)


def _state(path: Path) -> tuple | None:
    """What changes when a writer touches the database file (None: absent)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class ReadOnlyDatabase:
    """Queries on the SQLite database at ``path`` that create and modify no file (module docstring).

    Parameters
    ----------
    path : path
        The database file; it must exist (:class:`FileNotFoundError` otherwise).
    timeout : float
        Seconds a query waits for a lock (``mode=ro`` reads only).
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such database")
        self._connection: sqlite3.Connection | None = None
        self._immutable_state: tuple | None = None  # the file's state when the immutable connection opened

    def _side_files_exist(self) -> bool:
        return all(Path(f"{self.path}{suffix}").exists() for suffix in ("-wal", "-shm"))

    def _connect(self) -> sqlite3.Connection:
        """A connection that matches the database's state now (see the module docstring)."""
        uri = "file:" + quote(str(self.path.resolve()))
        if self._side_files_exist():
            try:
                connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=self.timeout,
                                             isolation_level=None)
                connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                self._immutable_state = None
                return connection
            except sqlite3.OperationalError:
                pass  # e.g. a -shm this process may not write: the file alone, below
        self._immutable_state = _state(self.path)
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)

    def _current(self) -> bool:
        """Whether the open connection still fits the database's state."""
        if self._connection is None:
            return False
        if self._immutable_state is None:
            return True  # a mode=ro connection follows the writers itself
        return not self._side_files_exist() and _state(self.path) == self._immutable_state

    def _reset(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def execute(self, sql: str, parameters: tuple | list = ()) -> Rows:
        """Run one read-only statement; its rows.

        Raises
        ------
        sqlite3.Error
            As SQLite does (a missing table: ``OperationalError``; a write:
            ``attempt to write a readonly database``).
        """
        for attempt in range(READ_ATTEMPTS):
            if not self._current():
                self._reset()
                self._connection = self._connect()
            try:
                rows = self._connection.execute(sql, parameters).fetchall()
            except sqlite3.DatabaseError:
                if self._immutable_state is None or self._current() or attempt + 1 == READ_ATTEMPTS:
                    raise
                continue  # the file changed mid-read: again, on the new state
            if self._current():
                return Rows(rows)
        raise sqlite3.OperationalError(f"{self.path} kept changing while it was read ({READ_ATTEMPTS} attempts)")

    def close(self) -> None:
        """Close the connection."""
        self._reset()

    def __enter__(self) -> ReadOnlyDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

