"""The project store: class labels, counts, sums, means and the covariance in Zarr.

Layout (format version 1; ``docs/store.md`` is the user-facing copy). One Zarr
v3 group on local disk:

================  ============  =========  =========================================
array             shape         dtype      content
================  ============  =========  =========================================
labels            (capacity,)   int64/str  class label of each slot
counts            (capacity,)   int64      instances summed per class
sums              (capacity, D) float64    running sum of each class's features
means             (capacity, D) float64    sums / counts
covariance        (capacity,    float64    lower triangle of ``C = M M'``: entry
                  capacity)                (i, j), j <= i; chunks (32, 4096)
================  ============  =========  =========================================

Only the first ``size`` slots are committed; ``capacity`` grows by doubling. The
group attribute ``mmf_stream`` holds ``format`` ("class-store"),
``format_version``, ``size``, ``dim``, ``capacity``, ``label_kind``, ``center``,
``normalize``, ``n_instances``, ``generation`` and ``pending``.

Crash safety (write-ahead journal): a change is first written whole to
``journal/<generation>.npz`` (atomic rename), then the attribute ``pending``
names it (Zarr writes the group's metadata atomically: this is the commit
point), then the arrays are updated and finally ``size``/``generation`` are
switched and ``pending`` cleared. A writer killed at any point leaves either the
old state (journal not yet named) or a named journal that the next
``Store.open`` replays (replaying is idempotent). Readers only ever read the
first ``size`` slots.

Only the lower triangle of the covariance is written, so appending a class
writes one row (a few chunks) instead of a row and a column (every chunk of a
column stripe). :attr:`Store.covariance` is a symmetric view over it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream._covariance import (
    accumulate_class_sums,
    covariance_from_means,
    encode_labels,
    sample_mask,
)
from mmf_stream._io import as_str_array, open_tagged_group

FORMAT = "class-store"
FORMAT_VERSION = 1
_COV_CHUNKS = (32, 4096)
_ROW_CHUNK = 1024
#: test hook: name of a point at which a writer exits abruptly (see tests)
_CRASH_ENV = "MMF_STREAM_CRASH_AT"


def _crash_point(name: str) -> None:
    if os.environ.get(_CRASH_ENV) == name:
        os._exit(17)


class SymmetricCovariance:
    """Read-only symmetric view of the store's lower-triangular covariance.

    Supports NumPy basic indexing with integers and slices
    (``cov[:, :]``, ``cov[10:20, 5]``, ``np.asarray(cov)``). ``zarr_array`` is the
    underlying Zarr array (lower triangle of the first ``shape[0]`` rows).
    """

    def __init__(self, array: Any, size: int) -> None:
        self.zarr_array = array
        self.shape = (size, size)
        self.dtype = np.dtype(np.float64)
        self.ndim = 2

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
        out = np.empty((rows.size, cols.size))
        if rows.size and cols.size:
            if rows.size == cols.size and np.array_equal(rows, cols) and np.all(np.diff(rows) == 1):
                block = np.asarray(self.zarr_array[rows[0] : rows[-1] + 1, rows[0] : rows[-1] + 1])
                lower = np.tril(block)
                out = lower + np.tril(block, -1).T
            else:
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                below = np.asarray(self.zarr_array[r0:r1, c0:c1])  # (row, col) with col <= row
                above = np.asarray(self.zarr_array[c0:c1, r0:r1])  # (col, row) with row < col
                take_lower = cols[None, :] <= rows[:, None]
                out = np.where(take_lower, below[np.ix_(rows - r0, cols - c0)], above[np.ix_(cols - c0, rows - r0)].T)
        if drop_rows and drop_cols:
            return out[0, 0]
        if drop_rows:
            return out[0]
        if drop_cols:
            return out[:, 0]
        return out

    def __array__(self, dtype=None, copy=None):
        full = self[:, :]
        return full if dtype is None else full.astype(dtype)

    def __repr__(self) -> str:
        return f"<SymmetricCovariance shape={self.shape} (lower triangle stored in Zarr)>"


class Store:
    """A Zarr group holding class labels, counts, means and their covariance.

    Create with :meth:`Store.create`, open with :meth:`Store.open`; grow with
    :meth:`add_classes` (from instance features) or :meth:`add_means`.
    """

    def __init__(self, path: Path, group: Any, writable: bool) -> None:
        self.path = path
        self._group = group
        self._writable = writable
        self._meta = dict(group.attrs["mmf_stream"])
        self._buffer: np.ndarray | None = None
        self._index_cache: dict[Any, int] | None = None

    # ---------------------------------------------------------------- create
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        center: bool = False,
        normalize: bool = False,
        overwrite: bool = False,
    ) -> Store:
        """Create an empty store at ``path`` (a directory).

        ``center`` / ``normalize`` are the store's default options for
        :meth:`matrix` (the stored covariance is always the plain Gram of the
        means, so they can be changed later without recomputing).
        """
        import zarr

        target = Path(path)
        if target.exists():
            if not overwrite:
                raise ValueError(f"{target} already exists (use overwrite=True / --overwrite to replace it)")
            shutil.rmtree(target)
        group = zarr.open_group(str(target), mode="w")
        group.attrs["mmf_stream"] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "size": 0,
            "dim": None,
            "capacity": 0,
            "label_kind": None,
            "center": bool(center),
            "normalize": bool(normalize),
            "n_instances": 0,
            "generation": 0,
            "pending": None,
        }
        (target / "journal").mkdir()
        return cls(target, group, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r+") -> Store:
        """Open a store; a write interrupted by a crash is completed first (needs ``mode='r+'``)."""
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        source, group, meta = open_tagged_group(path, FORMAT, (FORMAT_VERSION,), "class store", mode=mode)
        store = cls(source, group, writable=mode == "r+")
        if meta.get("pending") is not None:
            if mode != "r+":
                raise ValueError(f"{source} has an unfinished write; open it with mode='r+' to recover it")
            store._recover()
        elif mode == "r+":
            store._drop_orphan_journals()
        return store

    def _drop_orphan_journals(self) -> None:
        """Journals never named as pending belong to writes that did not happen."""
        folder = self.path / "journal"
        folder.mkdir(exist_ok=True)
        for leftover in folder.glob("*.npz"):
            leftover.unlink(missing_ok=True)

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
    def center(self) -> bool:
        return bool(self._meta["center"])

    @property
    def normalize(self) -> bool:
        return bool(self._meta["normalize"])

    @property
    def n_instances(self) -> int:
        return int(self._meta["n_instances"])

    @property
    def labels(self) -> np.ndarray:
        """Class labels in slot order (the order of the covariance's rows)."""
        if self.size == 0:
            return np.array([])
        values = np.asarray(self._group["labels"][: self.size])
        if values.dtype.kind in "OT":
            values = as_str_array(values)
        return values

    @property
    def counts(self) -> np.ndarray:
        return np.asarray(self._group["counts"][: self.size]) if self.size else np.zeros(0, np.int64)

    @property
    def sums(self) -> np.ndarray:
        return np.asarray(self._group["sums"][: self.size]) if self.size else np.zeros((0, 0))

    @property
    def means(self) -> np.ndarray:
        """Class means ``(size, D)`` (cached in memory while the store is open)."""
        if self.size == 0:
            return np.zeros((0, self.dim or 0))
        return self._means_buffer(self.size, self.dim)[: self.size].copy()

    @property
    def covariance(self) -> SymmetricCovariance:
        """The covariance ``C = M M'`` as a symmetric, Zarr-backed view."""
        if self.size == 0:
            raise ValueError(f"{self.path} holds no classes yet")
        return SymmetricCovariance(self._group["covariance"], self.size)

    def matrix(self, *, center: bool | None = None, normalize: bool | None = None) -> np.ndarray:
        """The dense class covariance, centred/normalised per the store's defaults or the arguments."""
        center = self.center if center is None else center
        normalize = self.normalize if normalize is None else normalize
        raw = np.asarray(self.covariance)
        if not center and not normalize:
            return raw
        return covariance_from_means(self.means, self.counts, center=center, normalize=normalize, gram=raw)

    def __repr__(self) -> str:
        return f"<Store {self.path} classes={self.size} dim={self.dim} instances={self.n_instances}>"

    # ----------------------------------------------------------------- writes
    def add_classes(
        self, features: Any, labels: Any, *, max_per_class: int | None = None, seed: int = 0
    ) -> dict[str, list]:
        """Add instances: new labels append classes, known labels update their mean.

        ``features`` is an ``(n, D)`` NumPy, Zarr or Dask array (streamed);
        ``labels`` one label per row. Returns ``{"added": [...], "updated": [...]}``.
        On any error the store is unchanged.
        """
        self._check_writable()
        n_rows = getattr(features, "shape", (0,))[0] if hasattr(features, "shape") else 0
        unique, codes = encode_labels(labels, n_rows) if hasattr(features, "shape") else (None, None)
        if unique is None:
            raise TypeError(f"features must be an array (NumPy, Zarr or Dask), got {type(features).__name__}")
        keep = sample_mask(codes, unique.shape[0], max_per_class, seed)
        sums, counts = accumulate_class_sums(features, codes, keep, unique.shape[0])
        return self._add(unique, sums, counts)

    def add_means(self, means: Any, labels: Any, counts: Any = 1) -> dict[str, list]:
        """Add classes from their mean vectors (``counts`` instances each, default 1)."""
        self._check_writable()
        array = np.asarray(means, dtype=np.float64)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise ValueError(f"means must be 1-D or 2-D, got shape {array.shape}")
        unique, codes = encode_labels(labels if np.ndim(labels) else [labels], array.shape[0])
        if unique.shape[0] != array.shape[0]:
            raise ValueError("labels given to add_means must be unique")
        count_array = np.broadcast_to(np.asarray(counts, dtype=np.int64), (array.shape[0],))
        if np.any(count_array < 1):
            raise ValueError("counts must be at least 1")
        if not np.all(np.isfinite(array)):
            raise ValueError("means have non-finite values (NaN or Inf)")
        order = np.argsort(codes)
        return self._add(unique, array[order] * count_array[order][:, None], count_array[order].copy())

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
            old_sums = np.asarray(self._group["sums"].oindex[slots[old], :])
            old_counts = np.asarray(self._group["counts"].oindex[slots[old]])
        else:
            old_sums, old_counts = np.zeros((0, sums.shape[1])), np.zeros(0, np.int64)
        sums = sums.copy()
        counts = counts.copy()
        sums[old] += old_sums
        counts[old] += old_counts
        means = sums / counts[:, None]
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
        return np.asarray(self._group["means"][: self.size])

    def _commit(self, slots, labels, sums, counts, means, all_means, new_size, kind, old_counts) -> None:
        generation = int(self._meta["generation"]) + 1
        journal = {
            "slots": slots,
            "labels": labels,
            "sums": sums,
            "counts": counts,
            "means": means,
            "new_size": np.int64(new_size),
            "dim": np.int64(sums.shape[1]),
            "n_instances": np.int64(self.n_instances + int(counts.sum() - old_counts.sum())),
            "label_kind": np.array(kind),
        }
        journal_path = self.path / "journal" / f"{generation}.npz"
        staging = journal_path.with_name(f".{generation}-{uuid.uuid4().hex[:8]}.npz")
        with open(staging, "wb") as handle:
            np.savez(handle, **journal)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, journal_path)
        _crash_point("journal-written")
        self._set_meta(pending=generation)
        _crash_point("journal-named")
        self._apply(journal, generation, all_means)

    def _set_meta(self, **changes: Any) -> None:
        meta = dict(self._meta)
        meta.update(changes)
        self._group.attrs["mmf_stream"] = meta
        self._meta = meta

    def _ensure_arrays(self, dim: int, kind: str, needed: int) -> None:
        capacity = int(self._meta["capacity"])
        if capacity >= needed and "covariance" in self._group:
            return
        new_capacity = max(needed, 2 * capacity, 64)
        if "covariance" not in self._group:
            label_dtype = str if kind == "str" else np.int64
            self._group.create_array("labels", shape=(new_capacity,), dtype=label_dtype, chunks=(_ROW_CHUNK,))
            self._group.create_array("counts", shape=(new_capacity,), dtype=np.int64, chunks=(_ROW_CHUNK,), fill_value=0)
            for name in ("sums", "means"):
                self._group.create_array(
                    name, shape=(new_capacity, dim), dtype=np.float64,
                    chunks=(max(1, min(_ROW_CHUNK, (1 << 17) // dim)), dim), fill_value=0.0,
                )
            self._group.create_array(
                "covariance", shape=(new_capacity, new_capacity), dtype=np.float64,
                chunks=_COV_CHUNKS, fill_value=0.0, compressors=None,
            )
        else:
            for name in ("labels", "counts"):
                self._group[name].resize((new_capacity,))
            for name in ("sums", "means"):
                self._group[name].resize((new_capacity, dim))
            self._group["covariance"].resize((new_capacity, new_capacity))
        self._set_meta(capacity=new_capacity, dim=dim, label_kind=kind)

    def _apply(self, journal: dict[str, Any], generation: int, all_means: np.ndarray | None = None) -> None:
        """Write a journal's changes into the arrays and commit (idempotent).

        The journal holds the changed classes only; their covariance rows are
        ``means[changed] @ means[:new_size]'``, from ``all_means`` or, when
        recovering, from the means array once the journal's rows are in it.
        """
        slots = np.asarray(journal["slots"], dtype=np.int64)
        new_size = int(journal["new_size"])
        kind = str(journal["label_kind"])
        self._ensure_arrays(int(journal["dim"]), kind, new_size)
        group = self._group
        old_size = int(self._meta["size"])
        order = np.argsort(slots)
        slots = slots[order]
        labels = np.asarray(journal["labels"])[order]
        for name in ("sums", "means", "counts"):
            values = np.asarray(journal[name])[order]
            _write_rows(group[name], slots, values)
        if all_means is None:
            all_means = np.asarray(group["means"][:new_size])
        rows = np.asarray(journal["means"])[order] @ all_means.T
        _write_rows(group["labels"], slots, labels if kind == "int" else np.array(labels.tolist(), dtype=object))
        covariance = group["covariance"]
        appended = slots >= old_size
        if appended.any():  # a contiguous block of new rows: full rows, one write
            first = int(slots[appended][0])
            covariance[first:new_size, :new_size] = rows[appended]
        for slot, row in zip(slots[~appended].tolist(), rows[~appended]):
            covariance[slot, : slot + 1] = row[: slot + 1]
            _crash_point("mid-apply")
            if slot + 1 < new_size:
                covariance[slot + 1 : new_size, slot] = row[slot + 1 : new_size]
        self._set_meta(
            size=new_size,
            n_instances=int(journal["n_instances"]),
            generation=generation,
            pending=None,
        )
        journal_path = self.path / "journal" / f"{generation}.npz"
        journal_path.unlink(missing_ok=True)
        for stale in (self.path / "journal").glob(".*.npz"):
            stale.unlink(missing_ok=True)

    def _recover(self) -> None:
        generation = int(self._meta["pending"])
        journal_path = self.path / "journal" / f"{generation}.npz"
        if not journal_path.exists():
            raise ValueError(f"{self.path} is corrupt: pending journal {journal_path.name} is missing")
        with np.load(journal_path, allow_pickle=False) as data:
            journal = {name: data[name] for name in data.files}
        self._apply(journal, generation)
        self._buffer = None
        self._index_cache = None


def _write_rows(array: Any, slots: np.ndarray, values: np.ndarray) -> None:
    """Write rows at sorted slots, contiguous runs in one write each."""
    if slots.size == 0:
        return
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    for run in np.split(np.arange(slots.size), breaks):
        start = int(slots[run[0]])
        array[start : start + run.size] = values[run]
