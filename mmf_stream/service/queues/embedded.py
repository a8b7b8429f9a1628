"""The embedded durable queue: new classes waiting for the coordinator (issue 11).

An SQLite database inside the project, ``PROJECT/queue/messages.sqlite``, in
WAL mode with full synchronous commits: a message ``put`` returns only once it
is on disk, any number of producer processes may put at once (SQLite
serialises them), and a producer killed mid-put leaves either the whole
message or nothing. No server is needed.

Every message has an id (a fresh UUID unless the producer gives one); a
message put twice with the same id is stored once, so a producer may retry a
put whose answer it lost. Messages are read in arrival order by sequence
number; the consumer keeps its own position (the coordinator commits it with
the factorization), so reading never changes the queue.

A message body is ``label`` (UTF-8 text, kept as bytes so a malformed label
reaches the consumer and can be dead-lettered with its reason), ``kind``
(``"mean"`` or ``"features"``), ``payload`` (the array as ``.npy`` bytes) and
``extra`` (any other fields, JSON; a consumer rejects unknown ones).
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmf_stream.store.readonly import ReadOnlyDatabase

#: the queue's folder inside a project, and its database file there
QUEUE_DIR = "queue"
QUEUE_FILE = "messages.sqlite"
#: seconds a put or read waits for another process's write transaction
BUSY_TIMEOUT = 60.0
#: the kinds of payload a message may carry
KINDS = ("mean", "features", "remove")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    label BLOB NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    submitted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
#: the ``meta`` row holding the queue's identity
IDENTITY_KEY = "identity"


@dataclass(frozen=True)
class Message:
    """One queued message as stored (nothing here is validated: the consumer does that)."""

    seq: int | str  # the embedded queue's sequence number, or a Redis stream entry id
    id: str
    label: bytes
    kind: str
    payload: bytes
    extra: str
    submitted: float

    def array(self) -> np.ndarray:
        """The payload as an array (``.npy`` bytes; no pickled objects)."""
        return np.load(io.BytesIO(self.payload), allow_pickle=False)


def encode_array(array: np.ndarray) -> bytes:
    """``.npy`` bytes of ``array``."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class EmbeddedQueue:
    """The project's SQLite queue (see the module docstring). Use as a context manager or ``close()``.

    Parameters
    ----------
    path : path
        The database file (created, with its folder, unless ``readonly``).
    readonly : bool
        A reader (``status``, depth queries): creates and modifies no file
        (:class:`~mmf_stream.store.readonly.ReadOnlyDatabase`); a queue that
        does not exist reads as empty, with identity None; ``put`` and
        ``dead_letter`` raise ValueError.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = bool(readonly)
        self._db: sqlite3.Connection | ReadOnlyDatabase | None = None
        if self.readonly:
            if self.path.is_file():
                self._db = ReadOnlyDatabase(self.path, timeout=BUSY_TIMEOUT)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            self._use_wal()
            self._db.execute("PRAGMA synchronous=FULL")  # a put is on disk when it returns
            self._create_schema()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise ValueError(f"{self.path} is not a readable queue ({error}); set it aside (its messages are "
                             "lost to the service) and submit again, then 'mmf-stream serve --adopt-queue' "
                             "(docs/service.md)") from None

    def _use_wal(self) -> None:
        """Switch the database to WAL. SQLite answers "database is locked" at once, without waiting,
        while another process creates the database: try again until :data:`BUSY_TIMEOUT`."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(self.POLL_INTERVAL)

    def _create_schema(self) -> None:
        """The tables and the queue's identity, in one transaction: a queue has both or neither
        (a queue made before identities gets one here; racing writers agree on the first)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (IDENTITY_KEY, uuid.uuid4().hex))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @classmethod
    def of_project(cls, project: str | Path, *, readonly: bool = False) -> EmbeddedQueue:
        """The embedded queue of the project at ``project`` (``readonly``: see the class)."""
        return cls(Path(project) / QUEUE_DIR / QUEUE_FILE, readonly=readonly)

    def _check_writable(self) -> None:
        if self.readonly:
            raise ValueError(f"{self.path}: the queue was opened read-only")

    def _query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        """The rows of a read; none when a reader finds no queue (or a queue whose writer has not
        created the tables yet)."""
        if self._db is None:
            return []
        try:
            return self._db.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if self.readonly and "no such table" in str(error):
                return []
            raise

    def put(self, label: bytes | str, kind: str, payload: bytes, *, message_id: str | None = None,
            extra: dict | None = None) -> str:
        """Append a message (durable when this returns); returns its id. An id already queued is
        not queued again (the earlier message stands)."""
        self._check_writable()
        message_id = message_id or uuid.uuid4().hex
        if isinstance(label, str):
            label = label.encode("utf-8")
        self._db.execute(
            "INSERT OR IGNORE INTO messages (id, label, kind, payload, extra, submitted) VALUES (?, ?, ?, ?, ?, ?)",
            (message_id, sqlite3.Binary(label), kind, sqlite3.Binary(payload), json.dumps(extra or {}),
             time.time()),
        )
        return message_id

    #: how the coordinator names this queue (its ``--queue`` value)
    url = "embedded"
    #: seconds between polls while :meth:`read` waits for a message
    POLL_INTERVAL = 0.05

    def read(self, after: int = 0, limit: int = 1000, wait: float = 0.0) -> list[Message]:
        """Up to ``limit`` messages with sequence numbers above ``after``, in arrival order,
        waiting up to ``wait`` seconds for the first one."""
        deadline = time.monotonic() + max(0.0, float(wait))
        while True:
            messages = self._read(after, limit)
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(min(self.POLL_INTERVAL, max(0.0, deadline - time.monotonic())))

    def acknowledge(self, messages: list[Message]) -> None:
        """Nothing to do: the consumer's committed position is the acknowledgement."""

    def _read(self, after: int, limit: int) -> list[Message]:
        rows = self._query(
            "SELECT seq, id, label, kind, payload, extra, submitted FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(after or 0), int(limit)),
        )
        return [Message(int(seq), str(mid), bytes(label), str(kind), bytes(payload), str(extra), float(at))
                for seq, mid, label, kind, payload, extra, at in rows]

    def depth(self, after: int = 0) -> int:
        """Messages with sequence numbers above ``after`` (waiting for a consumer at ``after``)."""
        rows = self._query("SELECT COUNT(*) FROM messages WHERE seq > ?", (int(after or 0),))
        return int(rows[0][0]) if rows else 0

    def dead_letter(self, message: Message, reason: str) -> None:
        """Record that ``message`` cannot be applied, and why (once per message)."""
        self._check_writable()
        self._db.execute("INSERT OR IGNORE INTO dead_letters (seq, id, reason, at) VALUES (?, ?, ?, ?)",
                         (message.seq, message.id, str(reason), time.time()))

    def dead_letters(self) -> list[tuple[int, str, str]]:
        """``(seq, id, reason)`` of every dead letter, in arrival order."""
        rows = self._query("SELECT seq, id, reason FROM dead_letters ORDER BY seq")
        return [(int(seq), str(mid), str(reason)) for seq, mid, reason in rows]

    def identity(self) -> str | None:
        """The queue's identity: a UUID created with its database (see
        :meth:`QueueBackend.identity <mmf_stream.service.queues.protocol.QueueBackend.identity>`)."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (IDENTITY_KEY,))
        return str(rows[0][0]) if rows else None

    def persistence_warning(self) -> str | None:
        """None: every put is on the project's disk (``synchronous=FULL``) when it returns."""
        return None

    def check(self) -> str:
        """SQLite's integrity check of the database ("ok" when intact, or when a reader finds no queue)."""
        rows = self._query("PRAGMA integrity_check")
        return str(rows[0][0]) if rows else "ok"

    def close(self) -> None:
        """Close the database."""
        if self._db is not None:
            self._db.close()

    def __enter__(self) -> EmbeddedQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
