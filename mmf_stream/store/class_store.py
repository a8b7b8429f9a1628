"""The project store: class labels, counts, sums and means in Zarr; the covariance derived from them.

Layout (format version 2; ``docs/store.md`` is the user-facing copy). One Zarr
v3 group on local disk:

================  ============  =========  =========================================
array             shape         dtype      content
================  ============  =========  =========================================
labels            (capacity,)   int64/str  class label of each slot
counts            (capacity,)   int64      instances summed per class
sums              (capacity, D) float64    running sum of each class's features
means             (capacity, D) float64    sums / counts
covariance        (capacity,    float64    only with ``dense_covariance``: lower
                  capacity)                triangle of ``C = M M'``: entry (i, j),
                                           j <= i; chunks (32, 4096)
================  ============  =========  =========================================

The means are the source of truth: :attr:`Store.covariance` is computed from
them block by block (:class:`GramCovariance`) unless the store was created with
``dense_covariance=True`` (or is a version 1 store, which always kept it), when
the stored lower triangle is read (:class:`SymmetricCovariance`).

Only the first ``size`` slots are committed; ``capacity`` grows by doubling. The
group attribute ``mmf_stream`` holds ``format`` ("class-store"),
``format_version``, ``size``, ``dim``, ``capacity``, ``label_kind``, ``center``,
``normalize``, ``dense_covariance``, ``n_instances``, ``generation``, ``pending``,
``pending_rewrite`` and ``rewritten``.

One writer at a time: every write holds ``writer.lock`` (an ``flock`` the
kernel drops if the writer dies; the file names its holder) and re-reads the
committed metadata under it, so concurrent writers serialise. Waiting is
bounded by ``lock_timeout`` (:data:`LOCK_TIMEOUT`); then a one-line
:class:`StoreLockedError` names the holder.

Crash safety (write-ahead journal): a change is first written whole to
``journal/<generation>.npz`` (atomic rename), then the attribute ``pending``
names it (Zarr writes the group's metadata atomically: this is the commit
point), then the arrays are updated and finally ``size``/``generation`` are
switched and ``pending`` cleared. A writer killed at any point leaves either the
old state (journal not yet named) or a named journal that the next
``Store.open`` (in any mode) replays under the lock (replaying, array creation
included, is idempotent). Journals not named as pending are removed only under
the lock. Readers only ever read the first ``size`` slots, refuse reads that a
later in-place update could have mixed, and refuse missing chunks and
structure that does not match the metadata (one-line ``ValueError``).

With ``dense_covariance``, only the lower triangle of the covariance is written, so appending a class
writes one row (a few chunks) instead of a row and a column (every chunk of a
column stripe); updated classes' columns are rewritten band by band, each
touched chunk read and written once per write. :attr:`Store.covariance` is a
symmetric view over it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream.store.class_covariance import (
    accumulate_class_sums,
    covariance_from_means,
    encode_labels,
    sample_mask,
)
from mmf_stream.store.durability import (
    EVERY_CHUNK_KEY,
    check_replaceable,
    first_bad_chunk,
    fsync_path,
    own_format,
    recover_interrupted_swap,
    writing_every_chunk,
)
from mmf_stream.common.faults import pause_point
from mmf_stream.common.formats import as_str_array, one_line, open_tagged_group
from mmf_stream.common.limits import MAX_ABS_ENTRY, MAX_CLASS_COUNT, MAX_INSTANCES, counts_problem, means_overflow
from mmf_stream.common.progress import progress

FORMAT = "class-store"
#: the class store's own format version (the factorization format's is ``mmf_stream.FORMAT_VERSION``)
CLASS_STORE_FORMAT_VERSION = 2
#: versions this code opens: 1 always stored the dense covariance; 2 stores it only when asked
CLASS_STORE_VERSIONS = (1, 2)
#: chunk shape of the covariance: a band of 32 rows x 4096 columns (1 MiB, uncompressed)
COVARIANCE_CHUNKS = (32, 4096)
#: rows per chunk of ``labels`` / ``counts`` (and the most rows per chunk of ``sums`` / ``means``)
ROW_CHUNK = 1024
#: target bytes per chunk of ``sums`` / ``means`` (fewer rows per chunk for large ``D``)
ROW_CHUNK_BYTES = 1 << 20
#: default seconds a writer (or an opener that finds a write in progress) waits for the lock
LOCK_TIMEOUT = 60.0
#: the lock file inside the store; while locked it names its holder (pid, host, since)
LOCK_FILE = "writer.lock"
#: seconds between two tries to take a busy lock
LOCK_POLL = 0.05
#: most chunks of a row array read and rewritten in one call (bounds memory)
_MAX_RUN_CHUNKS = 16
#: the arrays every store has once it holds classes (``covariance`` too with ``dense_covariance``)
_ROW_ARRAYS = ("labels", "counts", "sums", "means")
_COV_CHUNKS = COVARIANCE_CHUNKS  # former private names
_ROW_CHUNK = ROW_CHUNK


class StoreLockedError(ValueError):
    """Another process held a store's writer lock for longer than the timeout."""


def _open_lock_file(path: Path) -> int:
    """A file descriptor on the lock file (created if missing; read-only if it must be)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not path.exists():
            raise
        return os.open(path, os.O_RDONLY)  # flock needs no write access


class _WriterLock:
    """An OS advisory lock (``flock``) on ``STORE/writer.lock``, re-entrant per object.

    The kernel releases it when its holder dies, so a crashed writer never
    leaves the store locked. While held, the file says who holds it.
    """

    def __init__(self, store: Path) -> None:
        self.store = store
        self.file = store / LOCK_FILE
        self._fd: int | None = None
        self.depth = 0

    def acquire(self, timeout: float, *, wait: bool = True) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds; False if busy and not ``wait``."""
        if self.depth:
            self.depth += 1
            return True
        fd = _open_lock_file(self.file)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, self.file):
                    break
                # the store was replaced (Store.create(overwrite=True)) while we waited:
                # this lock guards a deleted file; lock the new one instead
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                fd = _open_lock_file(self.file)
                continue
            except BlockingIOError:
                if wait and time.monotonic() < deadline:
                    time.sleep(LOCK_POLL)
                    continue
                holder = _lock_holder(fd)
                os.close(fd)
                if not wait:
                    return False
                raise StoreLockedError(
                    f"{self.store} is locked by another writer ({holder}); gave up after {timeout:g} s"
                ) from None
            except BaseException:
                os.close(fd)
                raise
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        except OSError:
            pass  # a read-only lock file still locks
        self._fd = fd
        self.depth = 1
        return True

    def release(self) -> None:
        self.depth -= 1
        if self.depth or self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _check_magnitude(means: np.ndarray) -> None:
    """Refuse means whose products (the covariance entries) would overflow float64
    (:func:`mmf_stream.common.limits.means_overflow`)."""
    if not means.size:
        return
    if not np.all(np.isfinite(means)):
        raise ValueError("means have non-finite values (NaN or Inf)")
    largest = float(np.max(np.abs(means)))
    if means_overflow(largest, means.shape[1]):
        raise ValueError(
            f"feature values reach {largest:.3g}: the covariance entries (products of means) would "
            f"pass {MAX_ABS_ENTRY:g} and overflow; rescale the features"
        )


def _count_array(counts: Any, k: int) -> np.ndarray:
    """``counts`` (an int or k ints) as k int64 counts, each within 1..MAX_CLASS_COUNT, or a ValueError."""
    try:
        array = np.broadcast_to(np.asarray(counts, dtype=np.int64), (k,))
    except OverflowError:
        raise ValueError(f"counts must be at most {MAX_CLASS_COUNT} (2**53), got a larger one") from None
    if np.any(array < 1):
        raise ValueError("counts must be at least 1")
    problem = counts_problem(array)
    if problem:
        raise ValueError(problem)
    return array


def swap_last_placement(size: int, removed: Any) -> np.ndarray:
    """Where each of ``size`` slots goes when the slots ``removed`` leave (-1 for those).

    The removed slots below the new size are holes; the remaining classes at or
    above it fill them, the lowest of those into the lowest hole. Every other
    class keeps its slot. :meth:`Store.remove_classes` moves rows this way, and
    the coordinator knocks classes out of a factorization with the same map.
    """
    gone = np.zeros(size, dtype=bool)
    gone[np.asarray(removed, dtype=np.int64)] = True
    remaining = size - int(gone.sum())
    new_index = np.arange(size, dtype=np.int64)
    new_index[gone] = -1
    holes = np.flatnonzero(gone[:remaining])
    movers = remaining + np.flatnonzero(~gone[remaining:])
    new_index[movers] = holes
    return new_index


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A class store's committed metadata from its ``zarr.json`` alone (one small file read).

    For callers that need ``dim``, ``center`` or ``label_kind`` and nothing else
    (producers): no array is opened, no chunk checked, no lock taken, so the
    cost does not grow with the store.

    Raises
    ------
    ValueError
        One line: ``path`` is not a class store, or one of a version this code
        does not read.
    """
    source = Path(path)
    try:
        document = json.loads((source / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        document = None
    attrs = document.get("attributes") if isinstance(document, dict) else None
    meta = attrs.get("mmf_stream") if isinstance(attrs, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{source} is not a class store (written by 'mmf-stream covariance ... --out')")
    if meta.get("format_version") not in CLASS_STORE_VERSIONS:
        raise ValueError(f"{source} is a class store of format version {meta.get('format_version')!r}; "
                         f"this version of mmf_stream reads versions {', '.join(map(str, CLASS_STORE_VERSIONS))}")
    return dict(meta)


def _stores_dense_covariance(meta: dict[str, Any]) -> bool:
    """Version 1 stores always kept the covariance; version 2 ones say so."""
    return bool(meta.get("dense_covariance", meta.get("format_version") == 1))


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open lock file is still the one at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "holder unknown"


class SymmetricCovariance:
    """Read-only symmetric view of the store's lower-triangular covariance.

    Supports NumPy basic indexing with integers and slices
    (``cov[:, :]``, ``cov[10:20, 5]``, ``np.asarray(cov)``). ``zarr_array`` is the
    underlying Zarr array (lower triangle of the first ``shape[0]`` rows).
    """

    def __init__(self, array: Any, size: int, after_read: Callable[[], None] | None = None,
                 what: str = "covariance") -> None:
        self.zarr_array = array
        self.shape = (size, size)
        self.dtype = np.dtype(np.float64)
        self.ndim = 2
        self._after_read = after_read
        self._what = what

    def _read(self, rows: slice, cols: slice) -> np.ndarray:
        try:
            return np.asarray(self.zarr_array[rows, cols])
        except Exception as exc:  # noqa: BLE001 - a chunk that does not decode
            _quiet_abandoned_reads()
            raise ValueError(f"{self._what} is corrupt: cannot read covariance: {one_line(exc)}") from None

    def __len__(self) -> int:
        return self.shape[0]

    def _axis(self, key: Any) -> tuple[np.ndarray, bool]:
        size = self.shape[0]
        if isinstance(key, (int, np.integer)):
            index = int(key)
            if not -size <= index < size:
                raise IndexError(f"index {index} is out of bounds for size {size}")
            return np.array([index % size]), True
        if isinstance(key, slice):
            return np.arange(size)[key], False
        raise TypeError("covariance views take integers and slices")

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key, slice(None))
        if len(key) != 2:
            raise IndexError("covariance views are 2-D")
        rows, drop_rows = self._axis(key[0])
        cols, drop_cols = self._axis(key[1])
        out = self._block(rows, cols)
        if drop_rows and drop_cols:
            return out[0, 0]
        if drop_rows:
            return out[0]
        if drop_cols:
            return out[:, 0]
        return out

    def _block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``C[rows][:, cols]`` from the stored lower triangle."""
        out = np.empty((rows.size, cols.size))
        if rows.size and cols.size:
            if rows.size == cols.size and np.array_equal(rows, cols) and np.all(np.diff(rows) == 1):
                block = self._read(slice(rows[0], rows[-1] + 1), slice(rows[0], rows[-1] + 1))
                lower = np.tril(block)
                out = lower + np.tril(block, -1).T
            else:
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                below = self._read(slice(r0, r1), slice(c0, c1))  # (row, col) with col <= row
                above = self._read(slice(c0, c1), slice(r0, r1))  # (col, row) with row < col
                take_lower = cols[None, :] <= rows[:, None]
                out = np.where(take_lower, below[np.ix_(rows - r0, cols - c0)], above[np.ix_(cols - c0, rows - r0)].T)
            if self._after_read is not None:
                self._after_read()
        return out

    def __array__(self, dtype=None, copy=None):
        full = self[:, :]
        return full if dtype is None else full.astype(dtype)

    def to_dask(self, chunks: int | None = None) -> Any:
        """The covariance as a Dask array (blocks of ``chunks`` x ``chunks``, read when computed).

        Parameters
        ----------
        chunks : int, optional
            Rows and columns per block (default: the stored chunk's rows x 128).

        Returns
        -------
        dask.array.Array of shape (size, size)
        """
        import dask.array as da

        side = chunks or 128 * int(self.zarr_array.chunks[0])
        return da.from_array(self, chunks=(side, side), asarray=True, fancy=False, name=False)

    def __repr__(self) -> str:
        return f"<SymmetricCovariance shape={self.shape} (lower triangle stored in Zarr)>"


def _gram_block(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``rows @ columns'``, every entry an in-order sum: a block of ``M M'`` equals that block of
    the whole, and ``(i, j)`` equals ``(j, i)`` exactly."""
    from mmf_stream.engine.row_blocks import stable_matmul

    return stable_matmul(rows, columns.T)


class GramCovariance(SymmetricCovariance):
    """Read-only view of ``C = M M'`` computed from the store's class means on demand.

    Nothing of size ``m x m`` is stored or held: ``cov[a:b, c:d]`` multiplies
    the two blocks of means, ``np.asarray(cov)`` forms the whole matrix (small
    stores), and :meth:`to_dask` gives a lazy blockwise ``M M'`` for
    out-of-core consumers. Every entry is summed in a fixed order, so the view
    is exactly symmetric and a block equals that block of the whole.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store._array("means"), store.size, store._check_unchanged, str(store.path))
        self._store = store

    def _block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``C[rows][:, cols]`` from the two blocks of means."""
        means = self._store._means_buffer(self.shape[0], self._store.dim)
        return _gram_block(means[rows], means[cols])

    def to_dask(self, chunks: int | None = None) -> Any:
        """``M M'`` as a lazy Dask array, computed block by block from the means in Zarr.

        Parameters
        ----------
        chunks : int, optional
            Rows of means per block (default: the stored chunk's rows); the
            result's blocks are ``chunks x chunks``.

        Returns
        -------
        dask.array.Array of shape (size, size)
            Reads the means when computed (a later update of the store shows).
        """
        import dask.array as da

        side = chunks or int(self.zarr_array.chunks[0])
        means = da.from_array(self.zarr_array, chunks=(side, self.zarr_array.shape[1]), fancy=False)[: self.shape[0]]
        return da.blockwise(_gram_block, "ij", means, "ik", means, "jk", dtype=np.float64, concatenate=True)

    def __repr__(self) -> str:
        return f"<GramCovariance shape={self.shape} (C = M M' from the class means; not stored)>"


class Store:
    """A Zarr group holding class labels, counts, sums and means (their covariance derived).

    Create with :meth:`Store.create`, open with :meth:`Store.open`; grow with
    :meth:`add_classes` (from instance features) or :meth:`add_means`.

    One writer at a time: each write holds the store's lock (``writer.lock``,
    an OS advisory lock released if its holder dies) and re-reads the
    committed state under it, so concurrent writers serialise. A store object
    sees the generation committed when it was opened (or when it last wrote);
    reads that a later in-place update of classes could have mixed are refused
    ("... changed while it was read").
    """

    def __init__(self, path: Path, group: Any, writable: bool, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.path = path
        self._group = group
        self._writable = writable
        self._meta = dict(group.attrs["mmf_stream"])
        self._buffer: np.ndarray | None = None
        self._index_cache: dict[Any, int] | None = None
        self._lock = _WriterLock(path)
        self.lock_timeout = _check_timeout(lock_timeout)

    # ---------------------------------------------------------------- create
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        center: bool = False,
        normalize: bool = False,
        overwrite: bool = False,
        lock_timeout: float = LOCK_TIMEOUT,
        dense_covariance: bool = False,
    ) -> Store:
        """Create an empty store at ``path`` (a directory).

        Parameters
        ----------
        path : str or path-like
            Where to create it (a local directory).
        center, normalize : bool
            The store's default options for :meth:`matrix` (the stored
            covariance is always the plain Gram of the means, so they can be
            changed later without recomputing).
        overwrite : bool
            Replace what is at ``path``, but only if it is something mmf_stream
            wrote (a class store or a factorization) or an empty directory.
        lock_timeout : float
            Seconds to wait for a writer of the store being replaced to finish,
            and the default wait of the new store's writes.
        dense_covariance : bool
            Also store the covariance ``C = M M'`` itself (its lower triangle,
            O(m^2) on disk; every new class writes its row). By default only
            the means are stored and :attr:`covariance` is computed from them:
            factorizing and serving never read the dense matrix.

        Raises
        ------
        ValueError
            If ``path`` exists and ``overwrite`` is false, or it is not
            something mmf_stream wrote (nothing is deleted then).
        """
        import zarr

        target = Path(path)
        check_replaceable(target, overwrite)
        if target.exists():
            if own_format(target) == FORMAT and (target / "journal").is_dir():
                lock = _WriterLock(target)  # do not pull a store from under its writer
                lock.acquire(_check_timeout(lock_timeout))
                try:
                    shutil.rmtree(target)
                finally:
                    lock.release()
            else:
                shutil.rmtree(target)
        with writing_every_chunk():
            group = zarr.open_group(str(target), mode="w")
            group.attrs["mmf_stream"] = {
                "format": FORMAT,
                "format_version": CLASS_STORE_FORMAT_VERSION,
                "size": 0,
                "dim": None,
                "capacity": 0,
                "label_kind": None,
                "center": bool(center),
                "normalize": bool(normalize),
                "dense_covariance": bool(dense_covariance),
                "n_instances": 0,
                "generation": 0,
                "pending": None,
                "rewritten": 0,
                EVERY_CHUNK_KEY: True,
            }
        (target / "journal").mkdir()
        return cls(target, group, writable=True, lock_timeout=lock_timeout)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r+", *, lock_timeout: float = LOCK_TIMEOUT) -> Store:
        """Open a store, finishing a write that its writer did not live to finish.

        Parameters
        ----------
        path : str or path-like
            The store's directory.
        mode : {'r+', 'r'}
            ``'r'`` refuses writes through this object; either mode completes
            an interrupted (already committed) write under the lock.
        lock_timeout : float
            Seconds to wait for the lock, here (when a write is in progress)
            and in each later write through this object (default
            :data:`LOCK_TIMEOUT`).

        Returns
        -------
        Store
            Showing the last committed generation.

        Raises
        ------
        ValueError
            One line: not a class store, corrupt or incomplete (a chunk file
            missing), an unfinished write that cannot be completed here (e.g. a
            read-only file system), or :class:`StoreLockedError` when a live
            writer held the lock past ``lock_timeout``.
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        recover_interrupted_swap(path)  # a replacement (covariance --overwrite) killed halfway
        source, group, meta = open_tagged_group(path, FORMAT, CLASS_STORE_VERSIONS, "class store", mode=mode)
        store = cls(source, group, writable=mode == "r+", lock_timeout=lock_timeout)
        store._settle()
        store._validate()
        return store

    def _settle(self) -> None:
        """Wait for a write in progress (or finish a dead writer's) and drop orphan journals."""
        pending = self._meta.get("pending")
        if pending is None and not self._writable:
            return
        if pending is None:  # clean up after dead writers, unless a live one is writing
            try:
                locked = self._lock.acquire(0.0, wait=False)
            except OSError:  # e.g. a read-only file system: nothing to clean up here
                return
            if locked:
                try:
                    self._sync()
                finally:
                    self._lock.release()
            return
        try:
            with self._locked():
                pass
        except OSError as exc:
            reason = exc.strerror or one_line(exc)
            raise ValueError(
                f"{self.path} has an unfinished write that cannot be completed here ({reason}); "
                "it is completed by the next opening where the store is writable"
            ) from None

    # ------------------------------------------------------------ locking
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the writer lock; under it the committed state is re-read (and recovered)."""
        if self._lock.depth:
            yield
            return
        self._lock.acquire(self.lock_timeout)
        try:
            self._sync()
            yield
        finally:
            self._lock.release()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writer lock across several steps (the coordinator's batch: it checks the
        committed state, writes its factorization, then adds classes, with no other writer
        in between). The committed state is re-read when the lock is taken; writes inside
        do not take it again."""
        self._check_writable()
        with self._locked():
            yield

    def _sync(self) -> None:
        """Under the lock: re-read the metadata, finish a dead writer's commit, drop orphans."""
        self._reload()
        if self._meta.get("pending") is not None:
            self._recover()
        self._drop_orphan_journals()

    def _reload(self) -> None:
        """Re-read the group's metadata from disk; drop the caches if the committed state moved."""
        import zarr

        group = zarr.open_group(str(self.path), mode="r+" if self._writable else "r")
        meta = group.attrs.get("mmf_stream")
        if not isinstance(meta, dict):
            raise self._corrupt("its 'mmf_stream' attribute is gone")
        meta = dict(meta)
        if meta.get("generation") != self._meta.get("generation") or meta.get("size") != self._meta.get("size"):
            self._buffer = None
            self._index_cache = None
        self._group = group
        self._meta = meta

    def refresh(self) -> None:
        """Show the latest committed generation (waiting for a write in progress).

        A store object keeps showing the generation it opened (or last wrote);
        call this, or open the store again, to see other writers' commits.
        """
        self._reload()
        self._settle()
        self._validate()

    def _drop_orphan_journals(self) -> None:
        """Journals and staging files not named as pending (only called under the lock)."""
        folder = self.path / "journal"
        folder.mkdir(exist_ok=True)
        for leftover in folder.glob("*.npz"):
            leftover.unlink(missing_ok=True)
        for leftover in folder.glob(".*.npz"):
            leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------ checks
    def _corrupt(self, problem: str) -> ValueError:
        return ValueError(f"{self.path} is corrupt: {problem}")

    def _validate(self) -> None:
        """Structure (metadata, arrays, shapes, dtypes) and completeness of the committed rows."""
        meta = self._meta
        for key in ("size", "capacity", "n_instances", "generation"):
            value = meta.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self._corrupt(f"{key} {value!r} is not a count")
        if meta.get("pending") is not None:
            raise self._corrupt(f"pending {meta.get('pending')!r} after recovery")
        size, capacity, dim, kind = meta["size"], meta["capacity"], meta.get("dim"), meta.get("label_kind")
        if size > capacity:
            raise self._corrupt(f"size {size} is larger than capacity {capacity}")
        if kind not in (None, "int", "str") or (size and kind is None):
            raise self._corrupt(f"label_kind {kind!r} is not 'int' or 'str'")
        if capacity == 0:
            return
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise self._corrupt(f"dim {dim!r} is not a positive integer")
        expected = {
            "labels": ((capacity,), None),
            "counts": ((capacity,), np.dtype(np.int64)),
            "sums": ((capacity, dim), np.dtype(np.float64)),
            "means": ((capacity, dim), np.dtype(np.float64)),
        }
        if self.dense_covariance:
            expected["covariance"] = ((capacity, capacity), np.dtype(np.float64))
        every_chunk = bool(meta.get(EVERY_CHUNK_KEY))  # stores made before it: zero chunks may be absent
        for name, (shape, dtype) in expected.items():
            array = self._array(name)
            found = tuple(array.shape)
            # a writer may have grown an array already and not yet committed the new capacity
            grown = len(found) == len(shape) and found[0] >= shape[0] and found[1:] == shape[1:]
            if name == "covariance":
                grown = len(found) == 2 and found[0] == found[1] >= capacity
            if not grown:
                raise self._corrupt(f"array '{name}' has shape {found}, expected {shape}")
            actual = _numpy_dtype(array)
            if dtype is not None and actual != dtype:
                raise self._corrupt(f"array '{name}' has dtype {actual}, expected {dtype}")
            if name == "labels" and kind is not None and (actual.kind in "iu") != (kind == "int"):
                raise self._corrupt(f"array 'labels' has dtype {actual}, the labels are {kind}s")
            if not size or not every_chunk:
                continue
            keep = None
            if name == "covariance":
                chunk_rows, chunk_cols = array.chunks

                def keep(coords, chunk_rows=chunk_rows, chunk_cols=chunk_cols):  # lower triangle up to size
                    last_row = min((coords[0] + 1) * chunk_rows, size) - 1
                    return coords[1] * chunk_cols <= last_row

            # the covariance is stored uncompressed: each chunk file holds exactly one chunk's bytes
            raw = name == "covariance" and array.metadata.codecs is not None and len(array.metadata.codecs) == 1
            expected_bytes = int(np.prod(array.chunks)) * 8 if raw else None
            bad = first_bad_chunk(array, rows=size, keep=keep, chunk_bytes=expected_bytes)
            if bad is not None and bad[1] < 0:
                raise ValueError(f"{self.path}: {name} is incomplete: chunk {bad[0]} is missing")
            if bad is not None:
                raise self._corrupt(f"covariance chunk {bad[0]} has {bad[1]} bytes, expected {expected_bytes}")

    def _array(self, name: str) -> Any:
        try:
            return self._group[name]
        except KeyError:
            raise self._corrupt(f"array '{name}' is missing") from None
        except Exception as exc:  # noqa: BLE001 - unreadable array metadata
            raise self._corrupt(f"array '{name}' is unreadable: {one_line(exc)}") from None

    def _read(self, name: str, select: Callable[[Any], Any]) -> np.ndarray:
        """``select(array)`` as NumPy; an undecodable chunk is a one-line 'corrupt' error."""
        array = self._array(name)
        try:
            return np.asarray(select(array))
        except Exception as exc:  # noqa: BLE001 - codecs raise many types
            _quiet_abandoned_reads()
            raise self._corrupt(f"cannot read {name}: {one_line(exc)}") from None

    def _check_unchanged(self) -> None:
        """Refuse a read that a write after this object's generation may have mixed.

        Appends only write rows past this object's ``size``; a write that updates
        classes rewrites committed rows in place (the ``rewritten`` attribute
        names the last such generation, ``pending_rewrite`` one in progress).
        """
        if self._lock.depth:  # our own write: the state is ours
            return
        try:
            meta = json.loads((self.path / "zarr.json").read_text(encoding="utf-8"))["attributes"]["mmf_stream"]
        except (OSError, ValueError, KeyError, TypeError):
            raise self._corrupt("its metadata (zarr.json) became unreadable") from None
        generation = int(self._meta["generation"])
        in_progress = meta.get("pending") is not None and meta.get("pending_rewrite", True)
        if in_progress or int(meta.get("rewritten") or 0) > generation:
            raise ValueError(
                f"{self.path} changed while it was read (another writer updated classes in place); open it again"
            )

    # ------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        """Number of classes."""
        return int(self._meta["size"])

    @property
    def dim(self) -> int | None:
        """Feature dimension ``D`` (None while empty)."""
        return self._meta["dim"]

    @property
    def generation(self) -> int:
        """Commit counter of the state this object shows."""
        return int(self._meta["generation"])

    @property
    def service_record(self) -> dict[str, Any] | None:
        """What the streaming service committed with its last change of the classes (its commit
        log's id, queue position and queue identity), or None if it never changed them."""
        record = self._meta.get("service")
        return dict(record) if isinstance(record, dict) else None

    @property
    def label_kind(self) -> str | None:
        """``"int"`` or ``"str"``: the kind of the store's labels (None before the first class)."""
        return self._meta.get("label_kind")

    @property
    def center(self) -> bool:
        """Default of :meth:`matrix`: subtract the instance-weighted global mean."""
        return bool(self._meta["center"])

    @property
    def normalize(self) -> bool:
        """Default of :meth:`matrix`: cosine normalisation."""
        return bool(self._meta["normalize"])

    @property
    def n_instances(self) -> int:
        """Instances summed over all classes."""
        return int(self._meta["n_instances"])

    @property
    def dense_covariance(self) -> bool:
        """Whether the covariance itself is stored (``Store.create(..., dense_covariance=True)``,
        and every format version 1 store); otherwise it is computed from the means."""
        return _stores_dense_covariance(self._meta)

    @property
    def labels(self) -> np.ndarray:
        """Class labels in slot order (the order of the covariance's rows)."""
        if self.size == 0:
            return np.array([])
        values = self._read("labels", lambda array: array[: self.size])
        self._check_unchanged()
        if values.dtype.kind in "OT":
            values = as_str_array(values)
        return values

    @property
    def counts(self) -> np.ndarray:
        """Instances summed into each class."""
        if not self.size:
            return np.zeros(0, np.int64)
        values = self._read("counts", lambda array: array[: self.size])
        self._check_unchanged()
        return values

    @property
    def sums(self) -> np.ndarray:
        """Running sum of each class's features ``(size, D)``."""
        if not self.size:
            return np.zeros((0, 0))
        values = self._read("sums", lambda array: array[: self.size])
        self._check_unchanged()
        return values

    @property
    def means(self) -> np.ndarray:
        """Class means ``(size, D)`` (cached in memory while the store is open)."""
        if self.size == 0:
            return np.zeros((0, self.dim or 0))
        return self._means_buffer(self.size, self.dim)[: self.size].copy()

    @property
    def covariance(self) -> SymmetricCovariance:
        """The covariance ``C = M M'`` as a read-only symmetric view.

        Computed from the class means block by block (:class:`GramCovariance`),
        or read from the stored lower triangle when the store keeps it
        (:attr:`dense_covariance`). Index it (``cov[a:b, c:d]``), convert it
        (``np.asarray(cov)``, small stores) or take ``cov.to_dask()`` for a lazy
        blockwise Dask array.
        """
        if self.size == 0:
            raise ValueError(f"{self.path} holds no classes yet")
        if not self.dense_covariance:
            return GramCovariance(self)
        return SymmetricCovariance(self._array("covariance"), self.size, self._check_unchanged, str(self.path))

    def drop_dense_covariance(self) -> None:
        """Stop storing the dense covariance and delete its array (the means stay the source of truth).

        Works on version 1 stores too (they become version 2). Holds the
        writer lock; :attr:`covariance` is then computed from the means, with
        the same values.
        """
        self._check_writable()
        with self._locked():
            if not self.dense_covariance:
                return
            self._set_meta(dense_covariance=False, format_version=CLASS_STORE_FORMAT_VERSION)
            fsync_path(self.path / "zarr.json")  # committed before the array goes
            if "covariance" in self._group:
                del self._group["covariance"]

    def matrix(self, *, center: bool | None = None, normalize: bool | None = None) -> np.ndarray:
        """The dense class covariance, centred/normalised per the store's defaults or the arguments.

        Parameters
        ----------
        center, normalize : bool, optional
            Override the store's defaults (:attr:`center`, :attr:`normalize`).

        Returns
        -------
        ndarray of shape (size, size)
        """
        center = self.center if center is None else center
        normalize = self.normalize if normalize is None else normalize
        raw = np.asarray(self.covariance)
        if not center and not normalize:
            return raw
        return covariance_from_means(self.means, self.counts, center=center, normalize=normalize, gram=raw)

    # ------------------------------------------- products from the means
    def factor(self, *, center: bool | None = None, normalize: bool | None = None) -> np.ndarray:
        """``F`` (size x D) with ``F F' = C``: the class means, centred/normalised like :meth:`matrix`.

        This is what factored MMF works on (``ms.factorize(store)``): the dense
        ``size x size`` covariance is never formed.
        """
        factor = self._factor(center)
        scale = self._scale(factor, normalize)
        return factor if scale is None else factor * scale[:, None]

    def _factor(self, center: bool | None) -> np.ndarray:
        """``F`` with ``F F' = C`` (centred by the instance-weighted mean of all classes if asked)."""
        if self.size == 0:
            raise ValueError(f"{self.path} holds no classes yet")
        factor = self.means
        if self.center if center is None else center:
            counts = self.counts
            factor -= (counts @ factor) / counts.sum()
        return factor

    def _scale(self, factor: np.ndarray, normalize: bool | None) -> np.ndarray | None:
        """``1 / sqrt(C_ii)`` per class for cosine normalisation (None without it)."""
        if not (self.normalize if normalize is None else normalize):
            return None
        norms = np.sqrt(np.einsum("ij,ij->i", factor, factor))
        zero = norms == 0
        if zero.any():
            raise ValueError(
                f"cannot normalize: {int(zero.sum())} class(es) have a zero vector "
                "(after centring), so their cosine similarity is undefined"
            )
        return 1.0 / norms

    def _leading(self, size: int | None) -> int:
        if size is None:
            return self.size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 < size <= self.size:
            raise ValueError(f"size must be an integer in 1..{self.size}, got {size!r}")
        return int(size)

    def matvec(
        self,
        r: Any,
        size: int | None = None,
        center: bool | None = None,
        normalize: bool | None = None,
    ) -> np.ndarray:
        """``C[:size, :size] @ r`` from the class means, without forming ``C``.

        ``C`` is :meth:`matrix`'s matrix: ``M M'`` computed as
        ``M @ (M' @ r)``; with centring ``M`` is first centred by the
        instance-weighted mean of *all* committed classes; with cosine
        normalisation it is ``D^-1/2 C D^-1/2 r`` (``D = diag(C)``).

        Parameters
        ----------
        r : array-like of shape (size,) or (size, k)
            The vector(s).
        size : int, optional
            Use the leading ``size`` classes (default: all).
        center, normalize : bool, optional
            Override the store's defaults, as in :meth:`matrix`.

        Returns
        -------
        ndarray of shape (size,) or (size, k)

        Raises
        ------
        ValueError
            If ``r`` does not have ``size`` rows, or normalising meets a zero vector.
        """
        n = self._leading(size)
        vector = np.asarray(r, dtype=np.float64)
        if vector.ndim not in (1, 2) or vector.shape[0] != n:
            raise ValueError(f"r has shape {vector.shape}, but the store has {n} classes (size={n})")
        factor = self._factor(center)[:n]
        scale = self._scale(factor, normalize)
        if scale is None:
            return factor @ (factor.T @ vector)
        scale = scale if vector.ndim == 1 else scale[:, None]
        return scale * (factor @ (factor.T @ (scale * vector)))

    def diagonal(self, size: int | None = None, center: bool | None = None,
                 normalize: bool | None = None) -> np.ndarray:
        """``C_ii`` of the leading ``size`` classes, from the class means.

        Parameters
        ----------
        size : int, optional
            The leading ``size`` classes (default: all).
        center, normalize : bool, optional
            Override the store's defaults, as in :meth:`matrix` (normalised:
            all ones).

        Returns
        -------
        ndarray of shape (size,)
        """
        n = self._leading(size)
        factor = self._factor(center)[:n]
        if self._scale(factor, normalize) is not None:
            return np.ones(n)
        return np.einsum("ij,ij->i", factor, factor)

    def columns(self, slots: Any, rows: Any = None, center: bool | None = None,
                normalize: bool | None = None) -> np.ndarray:
        """``C[rows, slots]`` from the class means (for insertion without the dense matrix).

        Parameters
        ----------
        slots : array-like of int
            Columns (class slots, the order of :attr:`labels`).
        rows : array-like of int, optional
            Rows (default: all classes).
        center, normalize : bool, optional
            Override the store's defaults, as in :meth:`matrix`.

        Returns
        -------
        ndarray of shape (len(rows), len(slots))
        """
        factor = self._factor(center)
        columns = self._slots(slots, "slots")
        picked = np.arange(self.size) if rows is None else self._slots(rows, "rows")
        out = factor[picked] @ factor[columns].T
        scale = self._scale(factor, normalize)
        if scale is not None:
            out *= scale[picked][:, None]
            out *= scale[columns][None, :]
        return out

    def read_classes(self, slots: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(sums, counts)`` of the classes at ``slots`` (reads only their rows).

        Parameters
        ----------
        slots : array-like of int
            Class slots (the order of :attr:`labels`).

        Returns
        -------
        sums : ndarray of shape (len(slots), D)
        counts : ndarray of shape (len(slots),)
        """
        picked = self._slots(slots, "slots")
        if not picked.size:
            return np.zeros((0, self.dim or 0)), np.zeros(0, np.int64)
        sums = self._read("sums", lambda array: array.oindex[picked, :])
        counts = self._read("counts", lambda array: array.oindex[picked])
        self._check_unchanged()
        return sums, counts

    def _slots(self, values: Any, name: str) -> np.ndarray:
        array = np.atleast_1d(np.asarray(values))
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise ValueError(f"{name} must be a 1-D array of class slots (integers)")
        array = array.astype(np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.size):
            raise ValueError(f"{name} must lie in 0..{self.size - 1}")
        return array

    def __repr__(self) -> str:
        return f"<Store {self.path} classes={self.size} dim={self.dim} instances={self.n_instances}>"

    # ----------------------------------------------------------------- writes
    def add_classes(
        self, features: Any, labels: Any, *, max_per_class: int | None = None, seed: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, list]:
        """Add instances: new labels append classes, known labels update their mean.

        Parameters
        ----------
        features : array of shape (n, D)
            NumPy, Zarr or Dask array of any real dtype (streamed in blocks).
        labels : array-like of shape (n,)
            One label per row (integers or strings).
        max_per_class : int, optional
            Use at most this many random rows of each label.
        seed : int
            Seed of that sampling.
        progress : callable, optional
            Called with the number of feature rows summed after each block.

        Returns
        -------
        dict
            ``{"added": [...], "updated": [...]}``.

        Raises
        ------
        ValueError, TypeError
            Bad input (the store is unchanged), or :class:`StoreLockedError`
            when another writer holds the lock past :attr:`lock_timeout`.
        """
        self._check_writable()
        n_rows = getattr(features, "shape", (0,))[0] if hasattr(features, "shape") else 0
        unique, codes = encode_labels(labels, n_rows) if hasattr(features, "shape") else (None, None)
        if unique is None:
            raise TypeError(f"features must be an array (NumPy, Zarr or Dask), got {type(features).__name__}")
        keep = sample_mask(codes, unique.shape[0], max_per_class, seed)
        sums, counts = accumulate_class_sums(features, codes, keep, unique.shape[0], progress=progress)
        return self._add(unique, sums, counts)

    def add_means(self, means: Any, labels: Any, counts: Any = 1) -> dict[str, list]:
        """Add classes from their mean vectors (``counts`` instances each, default 1).

        Parameters
        ----------
        means : array-like of shape (D,) or (k, D)
        labels : label or array-like of k unique labels
        counts : int or array-like of k ints
            Instances behind each mean (at least 1).

        Returns
        -------
        dict
            ``{"added": [...], "updated": [...]}``.
        """
        self._check_writable()
        array = np.asarray(means, dtype=np.float64)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise ValueError(f"means must be 1-D or 2-D, got shape {array.shape}")
        unique, codes = encode_labels(labels if np.ndim(labels) else [labels], array.shape[0])
        if unique.shape[0] != array.shape[0]:
            raise ValueError("labels given to add_means must be unique")
        count_array = _count_array(counts, array.shape[0])
        if not np.all(np.isfinite(array)):
            raise ValueError("means have non-finite values (NaN or Inf)")
        order = np.argsort(codes)
        return self._add(unique, array[order] * count_array[order][:, None], count_array[order].copy())

    def remove_classes(self, labels: Any) -> dict[str, list]:
        """Remove classes (knock-out): their rows leave the store in one commit.

        Each removed slot below the new size is filled by a class from the end
        (the last classes, in slot order, fill the lowest holes), so a removal
        writes a few rows, never the whole store. The order of the remaining
        classes is therefore not kept: :attr:`labels` says where each one is.

        Parameters
        ----------
        labels : label or array-like of labels
            Classes of this store, each once.

        Returns
        -------
        dict
            ``{"removed": [...], "moved": {label: new_slot}}``.

        Raises
        ------
        ValueError
            A label the store does not hold, given twice, or a read-only store
            (the store is unchanged).
        """
        return self.replace_classes(remove=labels)

    def replace_classes(self, remove: Any = (), means: Any = None, labels: Any = None,
                        counts: Any = 1, *, sums: Any = None, service: dict[str, Any] | None = None) -> dict[str, list]:
        """Remove classes, then append classes, in one commit (the coordinator's updates).

        Parameters
        ----------
        remove : label or array-like of labels
            Classes to remove, as :meth:`remove_classes` does.
        means : array-like of shape (k, D), optional
            Classes to append afterwards, from their means, as
            :meth:`add_means` does. A label in ``remove`` may come back here
            (an update that moves the class to the end: its sums and counts
            are the ones given, not added to the old ones).
        labels : array-like of k unique labels
        counts : int or array-like of k ints
            Instances behind each appended mean (at least 1).
        sums : array-like of shape (k, D), optional
            The appended classes' running sums instead of ``means`` (the store
            keeps them as given: ``means = sums / counts``).
        service : dict, optional
            A JSON-ready record committed atomically with the classes
            (:attr:`service_record`): the coordinator's commit log id and queue
            position, so that a lost or replaced log is detected.

        Returns
        -------
        dict
            ``{"removed": [...], "added": [...], "moved": {label: new_slot}}``; the
            appended classes take the slots after the remaining ones, in sorted
            label order.
        """
        self._check_writable()
        removed = np.atleast_1d(np.asarray(remove if remove is not None else ()))
        if removed.size and removed.dtype.kind not in "iuUS":
            if removed.dtype == object and all(isinstance(x, str) for x in removed.tolist()):
                removed = removed.astype(str)
            else:
                raise TypeError(f"labels to remove must be integers or strings, got dtype {removed.dtype}")
        if removed.size and np.unique(removed).size != removed.size:
            values, times = np.unique(removed, return_counts=True)
            raise ValueError(f"label {values[times > 1][0].item()!r} is given twice to remove")
        if sums is not None:
            if means is not None:
                raise ValueError("give means= or sums=, not both")
            count_array = _count_array(counts, np.shape(sums)[0])
            means = np.asarray(sums, dtype=np.float64) / count_array[:, None]
        if means is None:
            if labels is not None:
                raise ValueError("labels to append need their means")
            added_labels, sums, added_counts = np.array([]), np.zeros((0, self.dim or 0)), np.zeros(0, np.int64)
        else:
            array = np.asarray(means, dtype=np.float64)
            array = array[None, :] if array.ndim == 1 else array
            if array.ndim != 2:
                raise ValueError(f"means must be 1-D or 2-D, got shape {array.shape}")
            added_labels, codes = encode_labels(labels if np.ndim(labels) else [labels], array.shape[0])
            if added_labels.shape[0] != array.shape[0]:
                raise ValueError("labels to append must be unique")
            count_array = _count_array(counts, array.shape[0])
            if not np.all(np.isfinite(array)):
                raise ValueError("means have non-finite values (NaN or Inf)")
            order = np.argsort(codes)
            given = array * count_array[:, None] if sums is None else np.asarray(sums, dtype=np.float64)
            sums, added_counts = given[order], count_array[order].copy()
            _check_magnitude(array)
        record = None if service is None else json.dumps(service)
        with self._locked():
            return self._replace_locked(removed, added_labels, sums, added_counts, record)

    def _replace_locked(self, removed: np.ndarray, added: np.ndarray, sums: np.ndarray,
                        counts: np.ndarray, service: str | None = None) -> dict[str, Any]:
        index = self._index()
        size = self.size
        labels_removed = removed.tolist()
        for label in labels_removed:
            if label not in index:
                raise ValueError(f"{self.path} has no class {label!r} to remove")
        gone = {index[label] for label in labels_removed}
        for label in added.tolist():
            if label in index and index[label] not in gone:
                raise ValueError(f"class {label!r} is already in {self.path}; remove it in the same call to "
                                 "replace it, or add_means to update it")
        if added.size:
            kind = "str" if added.dtype.kind in "US" else "int"
            if self._meta["label_kind"] not in (None, kind):
                raise TypeError(f"this store's labels are {self._meta['label_kind']}s, got {kind} labels")
            if self.dim is not None and sums.shape[1] != self.dim:
                raise ValueError(f"means have dimension {sums.shape[1]}, the store holds dimension {self.dim}")
        else:
            kind = self._meta["label_kind"] or "str"
        remaining = size - len(gone)
        placement = swap_last_placement(size, sorted(gone))
        movers = remaining + np.flatnonzero(placement[remaining:] >= 0)
        holes = placement[movers]
        dim = sums.shape[1] if self.dim is None else self.dim
        if movers.size:
            moved_labels = self._read("labels", lambda array: array.oindex[movers])
            if moved_labels.dtype.kind in "OT":
                moved_labels = as_str_array(moved_labels)
            moved_sums = self._read("sums", lambda array: array.oindex[movers, :])
            moved_counts = self._read("counts", lambda array: array.oindex[movers])
        else:
            moved_labels = np.array([], dtype=str if kind == "str" else np.int64)
            moved_sums, moved_counts = np.zeros((0, dim)), np.zeros(0, np.int64)
        gone_slots = np.array(sorted(gone), dtype=np.int64)
        gone_counts = self._read("counts", lambda array: array.oindex[gone_slots]) if gone_slots.size \
            else np.zeros(0, np.int64)
        new_slots = np.arange(remaining, remaining + added.shape[0], dtype=np.int64)
        slots = np.concatenate([holes, new_slots])
        all_labels = np.concatenate([moved_labels.astype(added.dtype if added.size else moved_labels.dtype),
                                     added]) if added.size and moved_labels.size else \
            (added if added.size else moved_labels)
        all_sums = np.concatenate([moved_sums, sums])
        all_counts = np.concatenate([moved_counts, counts]).astype(np.int64)
        new_size = remaining + added.shape[0]
        if slots.size == 0 and new_size == size and service is None:
            return {"removed": [], "added": [], "moved": {}}
        means = all_sums / np.maximum(all_counts, 1)[:, None]
        buffer = self._means_buffer(max(new_size, 1), dim)
        previous = buffer[slots].copy()
        buffer[slots] = means
        try:
            self._commit(slots, all_labels, all_sums, all_counts, means, buffer[:new_size], new_size, kind,
                         np.concatenate([moved_counts, gone_counts]), service=service)
        except BaseException:
            buffer[slots] = previous  # the cache must keep describing the committed store
            raise
        for label in labels_removed:
            del index[label]
        for label, slot in zip(all_labels.tolist(), slots.tolist()):
            index[label] = slot
        return {"removed": labels_removed, "added": added.tolist(),
                "moved": dict(zip(moved_labels.tolist(), holes.tolist()))}

    def _check_writable(self) -> None:
        if not self._writable:
            raise ValueError(f"{self.path} was opened read-only")

    def _index(self) -> dict[Any, int]:
        if self._index_cache is None:
            self._index_cache = {label: slot for slot, label in enumerate(self.labels.tolist())}
        return self._index_cache

    def _add(self, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> dict[str, list]:
        if np.any(counts == 0):
            missing = labels[counts == 0][0]
            raise ValueError(f"class {missing!r} has no instances after sampling")
        _check_magnitude(sums / counts[:, None])
        with self._locked():  # the committed state is re-read under the lock
            return self._add_locked(labels, sums, counts)

    def _add_locked(self, labels: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> dict[str, list]:
        kind = "str" if labels.dtype.kind in "US" else "int"
        if self._meta["label_kind"] not in (None, kind):
            raise TypeError(f"this store's labels are {self._meta['label_kind']}s, got {kind} labels")
        if self.dim is not None and sums.shape[1] != self.dim:
            raise ValueError(f"features have dimension {sums.shape[1]}, the store holds dimension {self.dim}")
        index = self._index()
        size = self.size
        slots = np.empty(labels.shape[0], dtype=np.int64)
        new_labels = []
        for i, label in enumerate(labels.tolist()):
            if label in index:
                slots[i] = index[label]
            else:
                slots[i] = size + len(new_labels)
                new_labels.append(label)
        new_size = size + len(new_labels)
        old = slots < size
        if old.any():  # only the updated classes' rows
            old_sums = self._read("sums", lambda array: array.oindex[slots[old], :])
            old_counts = self._read("counts", lambda array: array.oindex[slots[old]])
        else:
            old_sums, old_counts = np.zeros((0, sums.shape[1])), np.zeros(0, np.int64)
        sums = sums.copy()
        counts = counts.copy()
        sums[old] += old_sums
        counts[old] += old_counts
        problem = counts_problem(counts)
        if problem:  # the class's instances with the ones it had
            raise ValueError(problem)
        means = sums / counts[:, None]
        _check_magnitude(means)
        buffer = self._means_buffer(new_size, sums.shape[1])
        previous = buffer[slots[old]].copy()
        buffer[slots] = means
        try:
            self._commit(slots, labels, sums, counts, means, buffer[:new_size], new_size, kind, old_counts)
        except BaseException:
            buffer[slots[old]] = previous  # the cache must keep describing the committed store
            raise
        for label, slot in zip(labels.tolist(), slots.tolist()):
            index[label] = slot
        fresh = set(new_labels)
        return {
            "added": [x for x in labels.tolist() if x in fresh],
            "updated": [x for x in labels.tolist() if x not in fresh],
        }

    def _means_buffer(self, needed: int, dim: int) -> np.ndarray:
        """In-memory means with spare rows (the committed ones are ``[:size]``)."""
        buffer = self._buffer
        if buffer is None or buffer.shape[0] < needed or buffer.shape[1] != dim:
            grown = np.zeros((max(needed, 2 * (0 if buffer is None else buffer.shape[0]), 64), dim))
            if self.size:
                grown[: self.size] = buffer[: self.size] if buffer is not None else self._read_means()
            self._buffer = grown
        return self._buffer

    def _read_means(self) -> np.ndarray:
        means = self._read("means", lambda array: array[: self.size])
        self._check_unchanged()
        return means

    def _commit(self, slots, labels, sums, counts, means, all_means, new_size, kind, old_counts,
                service: str | None = None) -> None:
        instances = self.n_instances + int(counts.sum(dtype=object)) - int(old_counts.sum(dtype=object))
        if instances > MAX_INSTANCES:
            raise ValueError(f"the store would hold {instances} instances; at most {MAX_INSTANCES} (int64)")
        generation = int(self._meta["generation"]) + 1
        journal = {
            "slots": slots,
            "labels": labels,
            "sums": sums,
            "counts": counts,
            "means": means,
            "new_size": np.int64(new_size),
            "dim": np.int64(sums.shape[1]),
            "n_instances": np.int64(instances),
            "label_kind": np.array(kind),
        }
        if service is not None:
            journal["service"] = np.array(service)
        journal_path = self.path / "journal" / f"{generation}.npz"
        staging = journal_path.with_name(f".{generation}-{uuid.uuid4().hex[:8]}.npz")
        with open(staging, "wb") as handle:
            np.savez(handle, **journal)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, journal_path)
        fsync_path(journal_path.parent)  # the journal's name is durable before it is named as pending
        pause_point("journal-written")
        self._set_meta(pending=generation, pending_rewrite=bool(np.any(slots < self.size)))
        fsync_path(self.path / "zarr.json")
        pause_point("journal-named")
        self._apply(journal, generation, all_means)

    def _set_meta(self, **changes: Any) -> None:
        meta = dict(self._meta)
        meta.update(changes)
        self._group.attrs["mmf_stream"] = meta
        self._meta = meta

    def _ensure_arrays(self, dim: int, kind: str, needed: int) -> None:
        """Create or grow the arrays to hold ``needed`` slots (idempotent, array by array).

        A writer killed halfway leaves some arrays created or grown and others
        not; replaying the journal computes the same capacity and completes it.
        """
        group = self._group
        capacity = int(self._meta["capacity"])
        if capacity >= needed and self._meta.get("dim") == dim:
            return  # ``capacity`` is committed only once every array has it (checked on open)
        names = _ROW_ARRAYS + (("covariance",) if self.dense_covariance else ())
        present = {name: group[name] for name in names if name in group}
        if capacity >= needed and len(present) == len(names):
            return
        new_capacity = max(needed, 2 * capacity, 64, *(array.shape[0] for array in present.values()))
        row_chunk = max(1, min(ROW_CHUNK, ROW_CHUNK_BYTES // (8 * dim)))
        specs = {
            "labels": ((new_capacity,), str if kind == "str" else np.int64, (ROW_CHUNK,), {}),
            "counts": ((new_capacity,), np.int64, (ROW_CHUNK,), {"fill_value": 0}),
            "sums": ((new_capacity, dim), np.float64, (row_chunk, dim), {"fill_value": 0.0}),
            "means": ((new_capacity, dim), np.float64, (row_chunk, dim), {"fill_value": 0.0}),
        }
        if self.dense_covariance:
            specs["covariance"] = ((new_capacity, new_capacity), np.float64, COVARIANCE_CHUNKS,
                                   {"fill_value": 0.0, "compressors": None})
        for name, (shape, dtype, chunks, extra) in specs.items():
            if name in present:
                if tuple(present[name].shape) != shape:
                    present[name].resize(shape)
            else:
                group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, **extra)
            pause_point(f"array-created-{name}")
        self._set_meta(capacity=new_capacity, dim=dim, label_kind=kind)

    def _apply(self, journal: dict[str, Any], generation: int, all_means: np.ndarray | None = None) -> None:
        """Write a journal's changes into the arrays and commit (idempotent).

        The journal holds the changed classes only; their covariance rows and
        columns are recomputed from ``all_means`` or, when recovering, from the
        means array once the journal's rows are in it.
        """
        slots = np.asarray(journal["slots"], dtype=np.int64)
        new_size = int(journal["new_size"])
        kind = str(journal["label_kind"])
        old_size = int(self._meta["size"])
        order = np.argsort(slots)
        slots = slots[order]
        labels = np.asarray(journal["labels"])[order]
        with writing_every_chunk():
            self._ensure_arrays(int(journal["dim"]), kind, new_size)
            group = self._group
            for name in ("sums", "means", "counts"):
                _write_rows(group[name], slots, np.asarray(journal[name])[order])
                if name == "sums":
                    pause_point("mid-apply")  # some arrays updated, others not: the journal completes them
            _write_rows(group["labels"], slots, labels if kind == "int" else np.array(labels.tolist(), dtype=object))
            if self.dense_covariance and slots.size:
                if all_means is None:
                    all_means = np.asarray(group["means"][:new_size])
                _write_covariance(group["covariance"], slots, old_size, new_size, all_means)
        rewritten = generation if np.any(slots < old_size) else int(self._meta.get("rewritten") or 0)
        service = {"service": json.loads(str(journal["service"]))} if "service" in journal else {}
        self._set_meta(
            **service,
            size=new_size,
            n_instances=int(journal["n_instances"]),
            generation=generation,
            pending=None,
            pending_rewrite=False,
            rewritten=rewritten,
        )
        journal_path = self.path / "journal" / f"{generation}.npz"
        journal_path.unlink(missing_ok=True)
        for stale in (self.path / "journal").glob(".*.npz"):
            stale.unlink(missing_ok=True)

    def _recover(self) -> None:
        """Finish the committed write named by ``pending`` (called under the lock)."""
        import zarr

        generation = int(self._meta["pending"])
        journal_path = self.path / "journal" / f"{generation}.npz"
        if not journal_path.exists():
            raise self._corrupt(f"pending journal {journal_path.name} is missing")
        try:
            with np.load(journal_path, allow_pickle=False) as data:
                journal = {name: data[name] for name in data.files}
        except Exception as exc:  # noqa: BLE001 - a damaged journal
            raise self._corrupt(f"pending journal {journal_path.name} is unreadable: {one_line(exc)}") from None
        if not self._writable:  # a reader finishes the committed write too
            self._group = zarr.open_group(str(self.path), mode="r+")
        try:
            self._apply(journal, generation)
        finally:
            if not self._writable:
                self._group = zarr.open_group(str(self.path), mode="r")
        self._buffer = None
        self._index_cache = None


class _AbandonedReads(logging.Filter):
    """Drops asyncio's "Task was destroyed but it is pending!" for Zarr's reads
    cancelled by a chunk that failed to decode (already reported in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task was destroyed but it is pending")


def _quiet_abandoned_reads() -> None:
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedReads) for f in logger.filters):
        logger.addFilter(_AbandonedReads())


def _check_timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"lock_timeout must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _numpy_dtype(array: Any) -> np.dtype:
    dtype = array.dtype
    if hasattr(dtype, "to_native_dtype"):  # zarr's own dtype objects
        dtype = dtype.to_native_dtype()
    return np.dtype(dtype)


def _write_rows(array: Any, slots: np.ndarray, values: np.ndarray) -> None:
    """Write rows at sorted ``slots``: one read-modify-write per touched chunk.

    Runs of neighbouring touched chunks (at most :data:`_MAX_RUN_CHUNKS`) go in
    one call; a chunk written whole is not read first.
    """
    if slots.size == 0:
        return
    step = int(array.chunks[0])
    length = int(array.shape[0])
    touched = np.unique(slots // step)
    breaks = np.flatnonzero(np.diff(touched) != 1) + 1
    for run in np.split(touched, breaks):
        for first in range(0, run.size, _MAX_RUN_CHUNKS):
            part = run[first : first + _MAX_RUN_CHUNKS]
            start, stop = int(part[0]) * step, min((int(part[-1]) + 1) * step, length)
            inside = (slots >= start) & (slots < stop)
            chosen = slots[inside]
            if chosen[-1] - chosen[0] + 1 == chosen.size:  # one contiguous run: Zarr writes it in place
                array[int(chosen[0]) : int(chosen[-1]) + 1] = values[inside]
                continue
            if np.count_nonzero(inside) == stop - start:  # every row replaced
                block = values[inside]
            else:
                block = np.asarray(array[start:stop])
                if block.dtype.kind == "T":
                    block = block.astype(object)
                block[slots[inside] - start] = values[inside]
            array[start:stop] = block


def _write_covariance(array: Any, slots: np.ndarray, old_size: int, new_size: int, means: np.ndarray) -> None:
    """Rewrite the covariance entries of the changed classes, one read-modify-write per chunk.

    A changed class ``s`` (sorted ``slots``; appended ones are ``>= old_size``)
    has new entries in row ``s`` (columns ``<= s``) and, if it was updated, in
    column ``s`` below the diagonal. The lower triangle is visited band by band
    (a band = one chunk of rows); in each band the chunks holding a changed
    entry are read once, changed and written once.
    """
    band, width = (int(x) for x in array.chunks)
    capacity = int(array.shape[0])
    changed = np.zeros(new_size, dtype=bool)
    changed[slots] = True
    updated = slots[slots < old_size]
    first_band = min(int(slots[0]) // band, int(updated[0]) // band if updated.size else capacity)
    bands = [b for b in range(first_band, -(-new_size // band))
             if changed[b * band : (b + 1) * band].any() or (updated.size and updated[0] < (b + 1) * band - 1)]
    with progress(len(bands) * band, "store covariance", unit="row") as advance:
        for count, b in enumerate(bands):
            r0, r1 = b * band, min((b + 1) * band, new_size)
            rows = np.flatnonzero(changed[r0:r1]) + r0
            others = np.flatnonzero(~changed[r0:r1]) + r0
            cols = updated[updated < r1 - 1]  # their entries (i, u), i > u, in this band
            touched = set(range(-(-(int(rows[-1]) + 1) // width))) if rows.size else set()
            if others.size:
                touched.update((cols // width).tolist())
            if not touched:
                advance(band)
                continue
            if not (others.size and cols.size) and rows[-1] - rows[0] + 1 == rows.size:
                # only whole rows change here, one run of them: write them (Zarr updates the chunks in place)
                hi = int(rows[-1]) + 1
                array[int(rows[0]) : hi, :hi] = np.tril(means[rows] @ means[:hi].T, int(rows[0]))
                if count == 0:
                    pause_point("mid-apply")
                advance(band)
                continue
            ordered = np.array(sorted(touched))
            for run in np.split(ordered, np.flatnonzero(np.diff(ordered) != 1) + 1):
                c0, c1 = int(run[0]) * width, min((int(run[-1]) + 1) * width, capacity)
                block = np.asarray(array[r0 : min(r0 + band, capacity), c0:c1])
                hi = min(c1, new_size)
                if rows.size:  # whole rows of the changed classes, up to the diagonal
                    values = means[rows] @ means[c0:hi].T
                    lower = np.arange(c0, hi)[None, :] <= rows[:, None]
                    local = block[rows - r0, : hi - c0]
                    block[rows - r0, : hi - c0] = np.where(lower, values, local)
                here = cols[(cols >= c0) & (cols < c1)]
                if others.size and here.size:  # updated columns below the diagonal
                    values = means[others] @ means[here].T
                    below = here[None, :] < others[:, None]
                    index = np.ix_(others - r0, here - c0)
                    block[index] = np.where(below, values, block[index])
                array[r0 : min(r0 + band, capacity), c0:c1] = block
            if count == 0:
                pause_point("mid-apply")
            advance(band)
