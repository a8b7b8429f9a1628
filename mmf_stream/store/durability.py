"""Safety of data on disk: complete reads, durable writes, what may be replaced.

Zarr reads a missing chunk as the array's fill value, silently. Every array
mmf_stream writes is written with ``write_empty_chunks=True`` (see
:func:`writing_every_chunk`), so each chunk that holds committed data exists as a
file, and a reader can refuse an array with a chunk missing instead of reading
zeros (:func:`require_complete`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import product
from pathlib import Path
from typing import Any

from mmf_stream.common.faults import crash_point, exchange_disabled

#: attribute (in the ``mmf_stream`` group attribute) of groups written with every chunk
#: stored; older groups lack it, and for them a missing chunk cannot be told from a zero one
EVERY_CHUNK_KEY = "every_chunk_written"
#: the ``format`` attributes of groups that mmf_stream writes (and so may replace)
OWN_FORMATS = ("factorization", "class-store")


@contextmanager
def writing_every_chunk() -> Iterator[None]:
    """Zarr arrays opened or created inside write every chunk, zeros too.

    With Zarr's default (``write_empty_chunks=False``) a chunk equal to the fill
    value is not stored (or is deleted), which would make a missing chunk
    indistinguishable from a lost one.
    """
    import zarr

    with zarr.config.set({"array.write_empty_chunks": True}):
        yield


def first_bad_chunk(
    array: Any,
    rows: int | None = None,
    keep: Callable[[tuple[int, ...]], bool] | None = None,
    chunk_bytes: int | None = None,
) -> tuple[str, int] | None:
    """The first chunk of ``array`` that should hold data but is missing (or has the wrong size).

    Parameters
    ----------
    array : zarr.Array
        An array in a local store (other stores are not checked: returns None).
    rows : int, optional
        Only chunks overlapping the first ``rows`` entries along axis 0 (and,
        for square 2-D arrays, the first ``rows`` columns) are expected.
    keep : callable, optional
        ``keep(chunk_coords)`` says whether a chunk is expected at all (e.g. only
        the lower triangle of a covariance).
    chunk_bytes : int, optional
        The exact size of every chunk file (uncompressed arrays), to catch
        truncated chunks too.

    Returns
    -------
    (key, size) or None
        The chunk's key and its file's size in bytes (-1: no file).
    """
    root = getattr(array.store, "root", None)
    if root is None or array.size == 0:
        return None
    shape = list(array.shape)
    if rows is not None:
        shape[0] = min(shape[0], rows)
        if len(shape) == 2 and array.shape[0] == array.shape[1]:
            shape[1] = min(shape[1], rows)
    counts = [-(-n // c) for n, c in zip(shape, array.chunks)]
    for coords in product(*(range(n) for n in counts)):
        if keep is not None and not keep(coords):
            continue
        key = array.metadata.encode_chunk_key(coords)
        try:
            size = (Path(root) / array.path / key).stat().st_size
        except OSError:
            size = -1
        if size < 0 or (chunk_bytes is not None and size != chunk_bytes):
            return key, size
    return None


def require_complete(
    array: Any,
    what: str,
    rows: int | None = None,
    keep: Callable[[tuple[int, ...]], bool] | None = None,
) -> None:
    """Raise a one-line ``ValueError`` if a chunk of ``array`` that holds data is missing.

    ``what`` names the array in the message ("result.zarr: rotations").
    """
    bad = first_bad_chunk(array, rows=rows, keep=keep)
    if bad is not None:
        raise ValueError(f"{what} is incomplete: chunk {bad[0]} is missing")


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (and ``path`` itself)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def fsync_path(path: Path) -> None:
    """fsync one file or directory (for a directory: makes a rename inside it durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def own_format(path: Path) -> str | None:
    """The mmf_stream format of the group at ``path`` (None if it is not one of ours)."""
    import json

    meta_file = path / "zarr.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    tag = attrs.get("mmf_stream") if isinstance(attrs, dict) else None
    fmt = tag.get("format") if isinstance(tag, dict) else None
    return fmt if fmt in OWN_FORMATS else None


def check_replaceable(path: str | os.PathLike, overwrite: bool, kinds: tuple[str, ...] = OWN_FORMATS) -> None:
    """Refuse to replace anything but an mmf_stream result or store (or an empty directory).

    Raises a one-line ``ValueError`` if ``path`` exists and either ``overwrite``
    is false or ``path`` is not recognisably something mmf_stream wrote (one of
    ``kinds``). Nothing is deleted here.
    """
    target = Path(path)
    if not target.exists() and not target.is_symlink():
        return
    if not overwrite:
        raise ValueError(f"{target} already exists (use --overwrite / overwrite=True to replace it)")
    if target.is_symlink():
        raise ValueError(f"{target} is a symbolic link; refusing to replace it")
    if not target.is_dir():
        raise ValueError(f"{target} is a file, not an mmf_stream result or store; refusing to replace it")
    if not any(target.iterdir()):
        return
    fmt = own_format(target)
    if fmt is None:
        raise ValueError(
            f"{target} is not an mmf_stream result or store; refusing to replace it "
            "(--overwrite only replaces what mmf_stream wrote)"
        )
    if fmt not in kinds:
        wanted = " or ".join(kinds)
        raise ValueError(f"{target} is a {fmt}, not a {wanted}; refusing to replace it")


# ------------------------------------------------- replacing a directory safely
#: name parts of the sibling directories made beside a target being replaced
STAGING_PART = ".tmp-"
REPLACED_PART = ".replaced-"
#: renameat2 flag: swap two paths atomically (Linux 3.15+, most local filesystems)
_RENAME_EXCHANGE = 2


def staging_path(target: Path) -> Path:
    """A fresh sibling of ``target`` to build its replacement in (stale ones of dead processes are removed)."""
    import uuid

    _drop_dead_staging(target)
    return target.parent / f".{target.name}{STAGING_PART}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step; False where the system cannot."""
    if exchange_disabled():
        return False
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE) == 0


def swap_into_place(staging: Path, target: Path) -> None:
    """Put the finished directory ``staging`` at ``target``, replacing what is there.

    In one atomic step where the system can (``renameat2(RENAME_EXCHANGE)``);
    elsewhere the old directory is renamed aside (``.NAME.replaced-PID-XXXX``)
    first, and :func:`recover_interrupted_swap` puts it back if the process dies
    before the second rename. ``staging`` should be fsynced already.
    """
    import shutil
    import uuid

    parent = target.parent
    if not target.exists():
        os.rename(staging, target)
        fsync_path(parent)
        _drop_replaced(target)
        return
    if _exchange(staging, target):  # staging now holds the old directory
        fsync_path(parent)
        shutil.rmtree(staging, ignore_errors=True)
        return
    aside = parent / f".{target.name}{REPLACED_PART}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, aside)
    fsync_path(parent)
    crash_point("save-between-renames")
    os.rename(staging, target)
    fsync_path(parent)
    shutil.rmtree(aside, ignore_errors=True)


def recover_interrupted_swap(path: str | os.PathLike) -> bool:
    """Put back the directory a swap set aside if its process died between the two renames.

    Returns True when something was restored at ``path``.
    """
    target = Path(path)
    if target.exists() or target.is_symlink():
        return False
    candidates = sorted(
        (p for p in _siblings(target, REPLACED_PART) if not _alive(_pid_in(p, REPLACED_PART))),
        key=lambda p: p.stat().st_mtime, reverse=True,
    )  # an aside copy of a live process is its own to finish
    if not candidates:
        return False
    os.rename(candidates[0], target)
    fsync_path(target.parent)
    _drop_replaced(target)
    _drop_dead_staging(target)
    return True


def _siblings(target: Path, part: str) -> list[Path]:
    prefix = f".{target.name}{part}"
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.iterdir() if p.name.startswith(prefix) and own_format(p) is not None]


def _drop_replaced(target: Path) -> None:
    """Aside copies are stale once something is in place again."""
    import shutil

    for aside in _siblings(target, REPLACED_PART):
        shutil.rmtree(aside, ignore_errors=True)


def _drop_dead_staging(target: Path) -> None:
    """Remove staging directories of writers whose process is gone (killed mid-write)."""
    import shutil

    prefix = f".{target.name}{STAGING_PART}"
    if not target.parent.is_dir():
        return
    for staging in target.parent.iterdir():
        pid = _pid_in(staging, STAGING_PART) if staging.name.startswith(prefix) else -1
        if pid > 0 and not _alive(pid):
            shutil.rmtree(staging, ignore_errors=True)


def _pid_in(sibling: Path, part: str) -> int:
    """The pid of the writing process in a sibling's name; -1 if the name is not
    exactly ours (``...PART<pid>-<8 hex digits>``)."""
    import re

    match = re.fullmatch(r"(\d+)-[0-9a-f]{8}", sibling.name.rsplit(part, 1)[-1])
    return int(match.group(1)) if match else -1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
