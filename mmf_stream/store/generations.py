"""A project's factorization generations: copy-on-write arrays and one atomic commit log.

A project is a class store (``mmf-stream covariance ... --out PROJECT``) grown
by the service. Beside the store's own arrays it holds::

    PROJECT/service/log.sqlite      the commit log (SQLite, WAL, full synchronous commits)
    PROJECT/service/layers/*.npz    the factorization's arrays, as immutable layers
    PROJECT/service/project.json    the project's id (names its Redis stream)
    PROJECT/queue/messages.sqlite   the embedded queue

**Generations.** Each commit of the service is a generation: one row of the
log's ``generations`` table naming the factorization's arrays (each a list of
layer files), the class store generation it describes, the queue position it
has applied, and the running counters (applied, dead letters, refreshes). A
generation is first recorded as ``pending`` (its layers already durable),
then the class store commits its own change, then one SQLite transaction marks
the generation ``committed``: that switch is the commit. Its ``applied`` and
``dead_letters`` rows (the ingest log) are written with the pending row, and
only count once it is committed.

**Copy on write.** An array is a base layer (every row) plus overlay layers
(only the rows that changed, and appended rows). Saving a generation compares
each array with the previous generation's and writes only the changed rows:
levels that an insertion kept are not written again, appended levels and the
replaced insertion state are. Overlays are *tiered*: a new overlay absorbs the
newest overlays that are less than :data:`MERGE_RATIO` times its size (one
file with their rows' current values), so an array has about log2(rows)
overlays and a row is rewritten O(log) times, not with the whole array every
few commits. The base is written again only when the overlays hold more than
:data:`MAX_OVERLAY_FRACTION` of the rows (or :data:`MAX_LAYERS` layers, a bound
on a reader's work). Layer files are never modified; files that no generation
among the last :data:`KEEP_GENERATIONS` uses are deleted after a commit.

**Readers** read the last committed generation (SQLite WAL: they never wait
for, or see part of, a commit). If a reader is so slow that its generation's
files were deleted meanwhile, it starts again on the newest generation.
``Project(path, readonly=True)`` (``ms.load``, ``status``) creates and modifies
no file (:mod:`mmf_stream.store.readonly`), so a read-only project can be read.

**Recovery** (:meth:`Project.recover`): a pending generation is committed if
the class store reached the generation it names (the crash came after the
store's commit), and dropped otherwise.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream.store.durability import fsync_path
from mmf_stream.store.readonly import ReadOnlyDatabase
from mmf_stream.store.result_format import (
    StoredFactorization,
    factorization_arrays,
    factorization_attrs,
    stored_from_arrays,
)

#: the folder of a project that the service writes (its commit log, layers, identity, lock)
SERVICE_DIR = "service"
#: the commit log's file inside ``PROJECT/service``
LOG_FILE = "log.sqlite"
#: the layer files' folder inside ``PROJECT/service``
LAYERS_DIR = "layers"
#: committed generations whose layer files are kept (slow readers of a recent one can finish)
KEEP_GENERATIONS = 4
#: layers an array may have before it is written whole again (bounds a reader's work; tiering keeps
#: about log2(rows) overlays, so this is rarely reached)
MAX_LAYERS = 40
#: an array is written whole again when its overlays hold more than this fraction of its rows
MAX_OVERLAY_FRACTION = 0.5
#: a new overlay absorbs each newest overlay holding fewer than this many times its rows
MERGE_RATIO = 2.0
#: times a reader starts again when a commit removed the files of the generation it was reading
READ_ATTEMPTS = 5
#: seconds a log operation waits for another process's write transaction
BUSY_TIMEOUT = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    number INTEGER PRIMARY KEY,
    state TEXT NOT NULL,               -- 'pending' or 'committed'
    store_generation INTEGER NOT NULL,
    position TEXT NOT NULL,            -- JSON: the last applied queue position (null: none)
    queue TEXT NOT NULL,
    layout TEXT NOT NULL,              -- JSON: {array: {"shape", "dtype", "layers": [file, ...], "counts": [rows, ...],
                                       --         "checksums": [CRC-32 of each file, ...]}}
    attrs TEXT NOT NULL,               -- JSON: the factorization's attributes (docs/format.md)
    counters TEXT NOT NULL,            -- JSON: applied, dead_letters, refreshes, batch_error, ...
    reason TEXT NOT NULL,              -- 'factorize', 'batch', 'catch-up', 'refresh', ...
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (
    generation INTEGER NOT NULL,
    position TEXT NOT NULL,
    id TEXT NOT NULL,
    label TEXT NOT NULL,
    change TEXT NOT NULL,              -- 'added' or 'updated'
    submitted REAL NOT NULL,
    committed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS applied_generation ON applied (generation);
CREATE TABLE IF NOT EXISTS dead_letters (
    generation INTEGER NOT NULL,
    position TEXT NOT NULL,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,              -- 'log_id': this log's identity (the class store records it)
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    at REAL NOT NULL,
    kind TEXT NOT NULL,                -- 'error', 'refresh', 'start', 'stop', ...
    message TEXT NOT NULL
);
"""


@dataclass
class Generation:
    """One generation as the log records it."""

    number: int
    state: str
    store_generation: int
    position: Any
    queue: str
    layout: dict[str, Any]
    attrs: dict[str, Any]
    counters: dict[str, Any]
    reason: str
    created: float
    #: the identity of the queue ``position`` refers to (None: not recorded, a log older than identities)
    queue_identity: str | None = None


@dataclass
class IngestRecord:
    """One applied message (the ingest log)."""

    position: Any
    id: str
    label: str
    change: str
    submitted: float


@dataclass
class _Cached:
    """The last written generation's arrays, to diff the next one against."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    layout: dict[str, Any] = field(default_factory=dict)


def log_path(project: str | os.PathLike) -> Path:
    """Where the project's commit log lives."""
    return Path(project) / SERVICE_DIR / LOG_FILE


def has_log(project: str | os.PathLike) -> bool:
    """Whether the service has ever committed in ``project``."""
    return log_path(project).is_file()


def layer_checksum(content: bytes) -> int:
    """The checksum a layer file's bytes must have (CRC-32: catches truncation, bit flips and rewrites)."""
    return zlib.crc32(content)


def read_log_id(project: str | os.PathLike) -> str | None:
    """The identity of the project's commit log, read without writing anything: ``""`` for a log older
    than log identities, None when the log is missing, empty or unreadable."""
    path = log_path(project)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "generations" not in tables:
                return None
            row = db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone() if "meta" in tables else None
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return "" if row is None else str(row[0])


def set_log_aside(project: str | os.PathLike) -> Path | None:
    """Rename the project's commit log (and its SQLite side files) to ``log.sqlite.replaced-<time>``,
    so that a new one can be started; returns the new name, or None if there was no log."""
    path = log_path(project)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kept = None
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            target = path.with_name(f"{path.name}.replaced-{stamp}{suffix}")
            os.replace(source, target)
            kept = kept or target
    fsync_path(path.parent)
    return kept


class Project:
    """The service side of a project: its commit log and factorization layers.

    Parameters
    ----------
    path : path
        The project (a class store).
    readonly : bool
        Read only (``status``, ``ms.load``): create and modify no file (a
        read-only project works; :mod:`mmf_stream.store.readonly`); the
        writing methods raise ValueError. The log must exist
        (:func:`has_log`), else ValueError.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)  # ms.load(PROJECT) reads its factorization
        self.readonly = bool(readonly)
        folder = self.path / SERVICE_DIR
        self._layers = folder / LAYERS_DIR
        self._cache = _Cached()
        if self.readonly:
            if not has_log(self.path):
                raise ValueError(f"{self.path} has no commit log (the service never committed there)")
            self._db = ReadOnlyDatabase(folder / LOG_FILE, timeout=BUSY_TIMEOUT)
            try:
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(generations)").fetchall()}
            except sqlite3.DatabaseError as error:
                self._db.close()
                raise ValueError(f"{folder / LOG_FILE} is not a readable commit log ({error}); restore it from a "
                                 "backup (docs/service.md)") from None
            if "number" not in columns:
                self._db.close()
                raise ValueError(f"{folder / LOG_FILE} is not a readable commit log (no generations); restore it "
                                 "from a backup (docs/service.md)")
            # a log written before queue identities has no such column: read it as unknown
            self._identity_column = "queue_identity" if "queue_identity" in columns else "NULL"
            return
        folder.mkdir(exist_ok=True)
        (folder / LAYERS_DIR).mkdir(exist_ok=True)
        self._db = sqlite3.connect(str(folder / LOG_FILE), timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', ?)", (uuid.uuid4().hex,))
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(generations)")}
            if "queue_identity" not in columns:  # a log written before queue identities
                self._db.execute("ALTER TABLE generations ADD COLUMN queue_identity TEXT")
            self._db.execute("SELECT COUNT(*) FROM generations").fetchone()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise ValueError(f"{folder / LOG_FILE} is not a readable commit log ({error}); restore it from a "
                             f"backup, or set it aside and run 'mmf-stream serve {self.path} --rebuild-log' "
                             "(docs/service.md)") from None
        self._identity_column = "queue_identity"

    def _check_writable(self) -> None:
        if self.readonly:
            raise ValueError(f"{self.path}: the project's log was opened read-only")

    def continue_log(self, log_id: str) -> None:
        """Give a new, empty log the identity of the lost one it replaces (``serve --rebuild-log``)."""
        if self.current() is not None or self.pending() is not None:
            raise RuntimeError("only a new, empty commit log continues another one")
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'log_id'", (str(log_id),))

    @property
    def log_id(self) -> str:
        """This commit log's identity (created with it; the class store records it with each service commit)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
        return "" if row is None else str(row[0])

    # ------------------------------------------------------------------ reading
    def current(self) -> Generation | None:
        """The last committed generation (None before the first commit)."""
        return self._generation("WHERE state = 'committed' ORDER BY number DESC LIMIT 1")

    def pending(self) -> Generation | None:
        """A generation recorded but not committed (left by a crash), if any."""
        return self._generation("WHERE state = 'pending' ORDER BY number DESC LIMIT 1")

    def _generation(self, where: str) -> Generation | None:
        row = self._db.execute(
            "SELECT number, state, store_generation, position, queue, layout, attrs, counters, reason, created, "
            f"{self._identity_column} FROM generations {where}").fetchone()
        if row is None:
            return None
        number, state, store_generation, position, queue, layout, attrs, counters, reason, created, identity = row
        return Generation(int(number), str(state), int(store_generation), json.loads(position), str(queue),
                          json.loads(layout), json.loads(attrs), json.loads(counters), str(reason), float(created),
                          None if identity is None else str(identity))

    def load_stored(self) -> StoredFactorization | None:
        """The last committed factorization (a StoredFactorization), as :func:`mmf_stream.store.result_format.load_stored` returns
        them (``mmf_stream.load(PROJECT)`` wraps them), or None before there is one."""
        for attempt in range(READ_ATTEMPTS):
            generation = self.current()
            if generation is None or not generation.layout:  # none yet (too few classes to factorize)
                return None
            try:
                arrays = {name: self._read_array(name, spec) for name, spec in generation.layout.items()}
            except FileNotFoundError as error:
                newest = self.current()
                if newest is not None and newest.number != generation.number and attempt + 1 < READ_ATTEMPTS:
                    continue  # a commit removed this generation's files meanwhile: read the newer one
                raise ValueError(f"{self.path} is corrupt: layer file {Path(error.filename).name} of "
                                 f"generation {generation.number} is missing") from None

            def read(name: str) -> np.ndarray:
                if name not in arrays:
                    raise ValueError(f"{self.path} is corrupt: array {name!r} is missing")
                return arrays[name]

            stored = stored_from_arrays(read, generation.attrs, self.path)
            self._cache = _Cached(arrays, generation.layout)
            stored.metadata["generation"] = generation.number
            return stored
        return None

    def _read_array(self, name: str, spec: dict[str, Any]) -> np.ndarray:
        shape = tuple(spec["shape"])
        out = np.empty(shape, dtype=np.dtype(spec["dtype"]))
        covered = np.zeros(shape[0], dtype=bool)
        checksums = spec.get("checksums") or [None] * len(spec["layers"])
        for layer, checksum in zip(spec["layers"], checksums):
            content = (self._layers / layer).read_bytes()  # FileNotFoundError: see load_stored
            if checksum is not None and layer_checksum(content) != int(checksum):
                raise ValueError(f"{self.path} is corrupt: layer file {layer} does not match its checksum "
                                 "(changed since it was written)")
            try:
                with np.load(io.BytesIO(content), allow_pickle=False) as data:
                    rows, values = data["rows"], data["values"]
            except Exception as error:  # noqa: BLE001 - any unreadable layer is one line
                raise ValueError(f"{self.path} is corrupt: layer file {layer} is unreadable "
                                 f"({type(error).__name__})") from None
            if values.shape[1:] != shape[1:] or rows.shape[0] != values.shape[0] or \
                    (rows.size and (rows.min() < 0 or rows.max() >= shape[0])):
                raise ValueError(f"{self.path} is corrupt: layer {layer} does not fit array {name!r}")
            out[rows] = values
            covered[rows] = True
        if not covered.all():
            raise ValueError(f"{self.path} is corrupt: array {name!r} has rows no layer holds")
        return out

    def missing_layers(self) -> list[str]:
        """The layer files the current generation names that are not on disk (a cheap check: no reads)."""
        generation = self.current()
        if generation is None:
            return []
        return [layer for spec in generation.layout.values() for layer in spec["layers"]
                if not (self._layers / layer).is_file()]

    def counters(self) -> dict[str, Any]:
        """The last committed generation's counters (empty before the first commit)."""
        generation = self.current()
        return {} if generation is None else dict(generation.counters)

    def dead_letters(self) -> list[tuple[Any, str, str]]:
        """``(position, id, reason)`` of the committed dead letters, in the order they came."""
        rows = self._db.execute(
            "SELECT d.position, d.id, d.reason FROM dead_letters d JOIN generations g ON d.generation = g.number "
            "WHERE g.state = 'committed' ORDER BY d.rowid").fetchall()
        return [(json.loads(position), str(mid), str(reason)) for position, mid, reason in rows]

    def applied(self, since: float = 0.0) -> list[tuple[Any, str, str, float, float]]:
        """``(position, id, label, submitted, committed)`` of the committed applied messages
        (those committed at or after ``since``), in the order they were applied."""
        rows = self._db.execute(
            "SELECT a.position, a.id, a.label, a.submitted, a.committed FROM applied a "
            "JOIN generations g ON a.generation = g.number WHERE g.state = 'committed' AND a.committed >= ? "
            "ORDER BY a.rowid", (float(since),)).fetchall()
        return [(json.loads(p), str(i), str(label), float(s), float(c)) for p, i, label, s, c in rows]

    def events(self, kind: str | None = None, limit: int = 20) -> list[tuple[float, str, str]]:
        """The latest ``(at, kind, message)`` events (newest first)."""
        if kind is None:
            rows = self._db.execute("SELECT at, kind, message FROM events ORDER BY rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute("SELECT at, kind, message FROM events WHERE kind = ? ORDER BY rowid DESC LIMIT ?",
                                    (kind, limit))
        return [(float(at), str(k), str(message)) for at, k, message in rows.fetchall()]

    def record_event(self, kind: str, message: str) -> None:
        """Note an event (an error, a refresh, a start) for ``status``."""
        self._check_writable()
        self._db.execute("INSERT INTO events (at, kind, message) VALUES (?, ?, ?)", (time.time(), kind, message))

    # ------------------------------------------------------------------ writing
    def prepare(self, factorization: Any, *, store_generation: int, position: Any, queue: str,
                counters: dict[str, Any], reason: str, applied: list[IngestRecord] = (),
                dead: list[tuple[Any, str, str]] = (), queue_identity: str | None = None) -> int:
        """Write the new generation's layers (durably) and record it as pending; returns its number.

        ``factorization`` None records a generation without one (a project with too few classes).

        Nothing a reader sees changes until :meth:`commit`.
        """
        self._check_writable()
        if self.pending() is not None:
            raise RuntimeError("a pending generation must be committed or dropped first")
        last = self._db.execute("SELECT MAX(number) FROM generations").fetchone()[0]
        number = 1 + (0 if last is None else int(last))
        arrays = {} if factorization is None else {
            name: np.ascontiguousarray(data) for name, data in factorization_arrays(factorization)}
        if not self._cache.layout:
            current = self.current()
            if current is not None and self._cache.layout != current.layout:
                self.load_stored()
        layout = {name: self._write_array(number, name, data) for name, data in arrays.items()}
        fsync_path(self._layers)
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO generations (number, state, store_generation, position, queue, layout, attrs, counters, "
                "reason, created, queue_identity) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (number, int(store_generation), json.dumps(position), queue, json.dumps(layout),
                 json.dumps({} if factorization is None else factorization_attrs(factorization)),
                 json.dumps(counters), reason, now, queue_identity))
            self._db.executemany(
                "INSERT INTO applied (generation, position, id, label, change, submitted, committed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(number, json.dumps(r.position), r.id, str(r.label), r.change, r.submitted, now) for r in applied])
            self._db.executemany(
                "INSERT INTO dead_letters (generation, position, id, reason, at) VALUES (?, ?, ?, ?, ?)",
                [(number, json.dumps(p), mid, why, now) for p, mid, why in dead])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._cache = _Cached(arrays, layout)
        return number

    def commit(self, number: int) -> None:
        """Make pending generation ``number`` the current one (one atomic transaction), then drop old files."""
        self._check_writable()
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("UPDATE generations SET state = 'committed' WHERE number = ? AND state = 'pending'",
                             (number,))
            self._db.execute("UPDATE applied SET committed = ? WHERE generation = ?", (now, number))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.collect_garbage()

    def drop(self, number: int) -> None:
        """Forget pending generation ``number`` and its ingest rows (its files go with the next collection)."""
        self._check_writable()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for table in ("applied", "dead_letters"):
                self._db.execute(f"DELETE FROM {table} WHERE generation = ?", (number,))
            self._db.execute("DELETE FROM generations WHERE number = ? AND state = 'pending'", (number,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._cache = _Cached()
        self.collect_garbage()

    def recover(self, store_generation: int) -> str | None:
        """Settle a generation a crash left pending; returns ``'committed'``, ``'dropped'`` or None.

        The store commits between :meth:`prepare` and :meth:`commit`: if it
        reached the pending generation's store generation, the pending one is
        the truth and is committed; otherwise it never happened and is dropped.
        """
        self._check_writable()
        pending = self.pending()
        if pending is None:
            return None
        if pending.store_generation == int(store_generation):
            self.commit(pending.number)
            return "committed"
        self.drop(pending.number)
        return "dropped"

    def _write_array(self, number: int, name: str, data: np.ndarray) -> dict[str, Any]:
        spec = {"shape": list(data.shape), "dtype": data.dtype.str}
        previous = self._cache.arrays.get(name)
        old = self._cache.layout.get(name)
        if previous is not None and old is not None and previous.dtype == data.dtype and \
                previous.shape[1:] == data.shape[1:] and previous.shape[0] <= data.shape[0]:
            n_old = previous.shape[0]
            differs = data[:n_old] != previous
            changed = np.flatnonzero(differs.reshape(n_old, -1).any(axis=1) if differs.ndim > 1 else differs)
            rows = np.concatenate([changed, np.arange(n_old, data.shape[0])]).astype(np.int64)
            layers = list(old["layers"])
            counts = list(old.get("counts") or [None] * len(layers))  # None: a layout written before tiers
            checksums = list(old.get("checksums") or [None] * len(layers))  # None: written before checksums
            if rows.size == 0:
                return {**spec, "layers": layers, "counts": counts, "checksums": checksums}
            keep = len(layers)  # layers[:keep] stay; the newer ones merge into the new overlay
            while keep > 1 and counts[keep - 1] is not None and counts[keep - 1] < MERGE_RATIO * rows.size:
                keep -= 1
                rows = np.union1d(rows, self._layer_rows(layers[keep]))
            overlay_rows = rows.size + sum(c if c is not None else data.shape[0] for c in counts[1:keep])
            if keep < MAX_LAYERS and overlay_rows <= MAX_OVERLAY_FRACTION * max(1, data.shape[0]):
                layer, checksum = self._write_layer(number, name, rows, data[rows])
                return {**spec, "layers": [*layers[:keep], layer], "counts": [*counts[:keep], int(rows.size)],
                        "checksums": [*checksums[:keep], checksum]}
        rows = np.arange(data.shape[0], dtype=np.int64)
        layer, checksum = self._write_layer(number, name, rows, data)
        return {**spec, "layers": [layer], "counts": [int(rows.size)], "checksums": [checksum]}

    def _layer_rows(self, layer: str) -> np.ndarray:
        """The row numbers a layer file holds."""
        with np.load(self._layers / layer, allow_pickle=False) as data:
            return np.asarray(data["rows"], dtype=np.int64)

    def _write_layer(self, number: int, name: str, rows: np.ndarray, values: np.ndarray) -> tuple[str, int]:
        """Write one layer file durably; returns its name and its checksum (:func:`layer_checksum`)."""
        file_name = f"g{number:08d}-{name}-{uuid.uuid4().hex[:6]}.npz"
        staging = self._layers / f".{file_name}"
        with open(staging, "wb") as handle:
            np.savez(handle, rows=rows, values=values)
            handle.flush()
            os.fsync(handle.fileno())
        checksum = layer_checksum(staging.read_bytes())
        os.replace(staging, self._layers / file_name)
        return file_name, checksum

    def collect_garbage(self) -> None:
        """Delete layer files that neither a pending generation nor the last
        :data:`KEEP_GENERATIONS` committed ones use (and staging files of dead writers)."""
        self._check_writable()
        rows = self._db.execute(
            "SELECT layout FROM generations WHERE state = 'pending' UNION ALL "
            "SELECT layout FROM (SELECT layout FROM generations WHERE state = 'committed' "
            "ORDER BY number DESC LIMIT ?)", (KEEP_GENERATIONS,)).fetchall()
        keep = {layer for (layout,) in rows for spec in json.loads(layout).values() for layer in spec["layers"]}
        for path in self._layers.iterdir():
            if path.name not in keep and path.suffix == ".npz":
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
