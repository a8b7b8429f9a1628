"""Factorization on a Dask cluster: the client, the input's sources, validation from the workers' summaries.

``ms.factorize(X, ..., client=...)`` comes here (the engine's side is
:mod:`mmf_stream.engine.dask_stages`). ``client`` is a
``distributed.Client``, a scheduler address (``tcp://HOST:PORT``), or, from
the CLI's ``--workers N``, an embedded ``LocalCluster`` of N single-threaded
worker processes on 127.0.0.1 (:func:`connect_client`).

Inputs: a Zarr array (object, path, or URL that fsspec reads, e.g. ``file://``,
``s3://``: :mod:`mmf_stream.store.object_stores`): it travels to the workers as
its store, not its data, and every worker reads its own blocks of rows from
there (an object store's credentials and endpoint: each worker's environment,
or the ``storage_options`` it was opened with). A worker that cannot read its
rows fails the run with a one-line ``OSError`` naming the input. A dense matrix is checked for exact symmetry with a signature folded
over its blocks; only a matrix that is not exactly symmetric has its blocks
of columns read too (for the symmetric shard ``(C + C')/2`` and the
tolerance check). Any other array (NumPy) is sent to the
workers block by block through the scheduler: fine for tests and small
inputs, use Zarr for large ones.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from mmf_stream.common.formats import one_line
from mmf_stream.store.fingerprint import Fingerprint, probe_vector
from mmf_stream.store.object_stores import array_name, is_url, open_url_array
from mmf_stream.common.limits import MAX_ABS_ENTRY, means_overflow
from mmf_stream.engine.dask_stages import DaskCompression
from mmf_stream.engine.options import EngineOptions
from mmf_stream.engine.raw import InsertionState, RawFactorization
from mmf_stream.engine.schedule import factor

#: seconds to wait for a scheduler (``--scheduler ADDR``) before giving up, unless told otherwise
#: (``--connect-timeout``, ``connect_timeout=``): a running scheduler on a reachable host answers in
#: well under a second, so a wrong address fails fast
CONNECT_TIMEOUT = 5.0
#: distributed's loggers that a client process writes to (its own, and an embedded LocalCluster's
#: scheduler and nannies); children such as ``distributed.comm.tcp`` inherit from them
DISTRIBUTED_LOGGERS = ("distributed", "distributed.client", "distributed.worker", "distributed.scheduler",
                       "distributed.core", "distributed.comm", "distributed.nanny")
#: the least level of theirs that is written: a lost worker's warnings and retries are the
#: scheduler's business (it recomputes the worker's shards); what a run's caller needs is its
#: result, or our one-line ``ConnectionError``
DISTRIBUTED_LOG_LEVEL = logging.ERROR
#: their record format (distributed's default), written on one line by :class:`OneLineFormatter`
DISTRIBUTED_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class ZarrSource:
    """A Zarr array that each worker reads itself (pickles as its store and path, not its data).

    ``name`` (its path or URL) names it when a worker cannot read it.
    """

    def __init__(self, array: Any, name: str | None = None) -> None:
        self.array = array
        self.name = name if name is not None else array_name(array)
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        #: rows per chunk: a dense input is read in blocks of whole chunks of rows
        self.row_chunk = int(array.chunks[0]) if getattr(array, "chunks", None) else 0

    def for_block(self, start: int, stop: int) -> ZarrSource:
        return self

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self._read(np.s_[start:stop], f"rows {start}:{stop}")

    def columns(self, start: int, stop: int) -> np.ndarray:
        return self._read(np.s_[:, start:stop], f"columns {start}:{stop}")

    def _read(self, selection: Any, what: str) -> np.ndarray:
        """``array[selection]`` on a worker; a failure is one ``OSError`` line naming the input."""
        try:
            return np.asarray(self.array[selection])
        except MemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - any store's failure (credentials, endpoint, corrupt chunk)
            raise OSError(f"a Dask worker cannot read {what} of {self.name}: {type(error).__name__}: "
                          f"{one_line(error)}") from None


class ArrayBlock:
    """One block of an in-memory array (rows, and for dense inputs the matching columns)."""

    def __init__(self, rows: np.ndarray, columns: np.ndarray | None) -> None:
        self._rows = rows
        self._columns = columns

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self._rows

    def columns(self, start: int, stop: int) -> np.ndarray:
        return self._columns


class ArraySource:
    """An in-memory array, sent block by block with the read tasks."""

    def __init__(self, array: np.ndarray, dense: bool) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.dense = dense

    def for_block(self, start: int, stop: int) -> ArrayBlock:
        columns = np.ascontiguousarray(self.array[:, start:stop]) if self.dense else None
        return ArrayBlock(np.ascontiguousarray(self.array[start:stop]), columns)


def open_zarr_array(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Any:
    """The Zarr array at ``path``: a URL is opened by :func:`~mmf_stream.store.object_stores.open_url_array`
    (a one-line ``ValueError`` if it cannot be); a local path gives None if nothing there opens as one."""
    import zarr

    if is_url(path):
        return open_url_array(path, storage_options)
    try:
        return zarr.open_array(os.fspath(path), mode="r")
    except Exception:  # noqa: BLE001 - zarr raises many kinds: not an array we can open
        return None


def open_source(value: Any, *, dense: bool, name: str | None = None) -> ZarrSource | ArraySource:
    """A source for ``value``: a Zarr array (object, path or URL; ``name`` names it in errors) or an
    in-memory array."""
    import zarr

    if isinstance(value, zarr.Array):
        source: ZarrSource | ArraySource = ZarrSource(value, name)
    elif isinstance(value, (str, os.PathLike)):
        array = open_zarr_array(value)
        if array is None:
            raise ValueError(f"{os.fspath(value)}: not a Zarr array the workers can open; give a Zarr array path "
                             "or URL with --scheduler/--workers")
        source = ZarrSource(array, os.fspath(value))
    else:
        if hasattr(value, "compute") and callable(value.compute) and hasattr(value, "chunks"):  # Dask array
            value = value.compute()
        array = np.asarray(value)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise TypeError(f"{'matrix' if dense else 'means'} must hold real numbers, got dtype {array.dtype}")
        source = ArraySource(array, dense)
    shape, dtype = source.shape, np.dtype(source.dtype)
    if np.issubdtype(dtype, np.complexfloating) or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise TypeError(f"{'matrix' if dense else 'means'} must hold real numbers, got dtype {dtype}")
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"{'matrix' if dense else 'means'} must be a non-empty 2-D array, got shape {shape}")
    if dense and shape[0] != shape[1]:
        raise ValueError(f"matrix must be square, got shape {shape[0]} x {shape[1]}")
    return source


class OneLineFormatter(logging.Formatter):
    """A log record on one line: its message, then ``(ExceptionType: text)`` instead of a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        plain = logging.makeLogRecord(record.__dict__)
        plain.exc_info, plain.exc_text, plain.stack_info = None, None, None
        text = super().format(plain)
        if error is not None:
            text += f" ({type(error).__name__}: {error})"
        return " ".join(text.split())


def quiet_distributed_logs() -> None:
    """Keep distributed's noise off the client's stderr: :data:`DISTRIBUTED_LOGGERS` write from
    :data:`DISTRIBUTED_LOG_LEVEL` up (a quieter level set before is kept), on one line each.

    Only those loggers and the stderr handlers distributed put on them are changed (the root
    logger and mmf_stream's own are not). ``MMF_STREAM_DEBUG=1`` leaves everything as it is.
    """
    if os.environ.get("MMF_STREAM_DEBUG"):
        return
    formatter = OneLineFormatter(DISTRIBUTED_LOG_FORMAT)
    for name in DISTRIBUTED_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < DISTRIBUTED_LOG_LEVEL:  # NOTSET included
            logger.setLevel(DISTRIBUTED_LOG_LEVEL)
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:  # distributed's own (not a file or a user's subclass)
                handler.setFormatter(formatter)


def check_connect_timeout(connect_timeout: float | None) -> float:
    """``connect_timeout`` (seconds, > 0), or :data:`CONNECT_TIMEOUT` for None."""
    if connect_timeout is None:
        return CONNECT_TIMEOUT
    if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float, np.integer, np.floating)):
        raise TypeError(f"connect_timeout must be a number of seconds, got {type(connect_timeout).__name__}")
    if not math.isfinite(connect_timeout) or connect_timeout <= 0:
        raise ValueError(f"connect_timeout must be a number of seconds > 0, got {connect_timeout!r}")
    return float(connect_timeout)


@contextmanager
def connect_client(client: Any = None, *, workers: int | None = None,
                   connect_timeout: float | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``client`` (a Client, or a scheduler address) or for an
    embedded ``LocalCluster`` of ``workers`` single-threaded processes on 127.0.0.1.

    A scheduler address that does not answer within ``connect_timeout`` seconds (default
    :data:`CONNECT_TIMEOUT`) raises ``ConnectionError`` naming it. Clients and clusters made
    here are closed on exit; a given Client is left open.
    """
    from distributed import Client, LocalCluster

    if client is not None and workers is not None:
        raise ValueError("give either a scheduler (client=) or a number of workers, not both")
    timeout = check_connect_timeout(connect_timeout)
    if client is not None and not isinstance(client, str) and hasattr(client, "submit"):
        yield client
        return
    if isinstance(client, str):
        quiet_distributed_logs()
        try:
            made = Client(client, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as error:
            text = " ".join(str(error).split())
            why = "" if isinstance(error, TimeoutError) or text.startswith("Timed out") else f" ({text})"
            raise ConnectionError(f"cannot reach the Dask scheduler at {client} within {timeout:g} s{why}; check "
                                  "the address, or wait longer with --connect-timeout / connect_timeout=") from None
        try:
            yield made
        finally:
            made.close()
        return
    if client is not None:
        raise TypeError(f"client must be a distributed.Client or a scheduler address, got {type(client).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    quiet_distributed_logs()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=DISTRIBUTED_LOG_LEVEL)
    try:
        with Client(cluster, set_as_default=False) as made:
            yield made
    finally:
        cluster.close()


def _check_summaries(summaries: list[dict], *, dense: bool, width: int, symmetry_tolerance: float) -> None:
    """The local validation's errors, from the workers' read summaries."""
    what = "matrix" if dense else "means"
    for summary in summaries:
        if summary["bad"] is not None:
            row, column = summary["bad"]
            raise ValueError(f"{what} has non-finite entries (NaN or Inf), first at ({row}, {column})")
    largest = max(summary["largest"] for summary in summaries)
    if dense and largest > MAX_ABS_ENTRY:
        raise ValueError(f"matrix entries reach {largest:.3g}: beyond {MAX_ABS_ENTRY:g} their squares overflow in "
                         "the error; rescale the matrix (for example divide it by its largest entry)")
    if not dense and means_overflow(largest, width):
        raise ValueError(f"means entries reach {largest:.3g}: the covariance entries would overflow in the error; "
                         "rescale the means")
    if dense:
        worst, i, j = max(summary["asymmetry"] for summary in summaries)
        if worst > symmetry_tolerance * max(largest, np.finfo(np.float64).tiny):
            raise ValueError(f"matrix is not symmetric: largest asymmetry |C[{i},{j}] - C[{j},{i}]| = {worst:.3g} "
                             f"exceeds {symmetry_tolerance:g} x max|C| = {symmetry_tolerance * largest:.3g}")


def factor_on_dask(
    client: Any,
    source: ZarrSource | ArraySource,
    *,
    factored: bool,
    order: int,
    core_size: int,
    seed: int,
    options: EngineOptions,
    symmetry_tolerance: float,
    progress: Callable[[int], None] | None,
    snapshot_sizes: tuple[int, ...],
) -> tuple[RawFactorization, InsertionState, float, Fingerprint, DaskCompression]:
    """Run the staged engine on the cluster (order and core size checked by the caller, the
    insertion snapshots' sizes given); returns ``(raw, state, norm, fingerprint, compression)``."""
    size, width = int(source.shape[0]), int(source.shape[1])
    explicit_max = options.greedy_below
    compression, summaries = DaskCompression.from_source(client, source, size, width, factored=factored,
                                                         explicit_max=explicit_max, options=options)
    _check_summaries(summaries, dense=not factored, width=width, symmetry_tolerance=symmetry_tolerance)
    compression.on_stage = getattr(progress, "stage", None)
    diagonal = np.concatenate([summary["diagonal"] for summary in summaries])
    probe = compression.probe(probe_vector(size))
    if factored:
        norm = compression.inner_norm()
        scale = float(diagonal.max())
    else:
        norm = math.sqrt(sum(summary["sumsq"] for summary in summaries))
        scale = max(summary["largest"] for summary in summaries)
    fingerprint = Fingerprint(diagonal=diagonal, probe=probe, scale=scale)
    raw, state = factor(compression, order, size - core_size, schedule="staged", seed=seed, options=options,
                        progress=progress, snapshot_sizes=snapshot_sizes)
    return raw, state, norm, fingerprint, compression


def cluster_errors() -> tuple[type[BaseException], ...]:
    """What a run raises when the scheduler (or every worker, repeatedly) is gone."""
    from concurrent.futures import CancelledError

    from distributed import TimeoutError as DaskTimeout
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return (CancelledError, CommClosedError, DaskTimeout, KilledWorker)


@contextmanager
def worker_failures(where: str) -> Iterator[None]:
    """Turn a lost scheduler or repeatedly killed workers into one ``ConnectionError`` line."""
    try:
        yield
    except cluster_errors() as error:
        text = " ".join(str(error).split()) or "no reply"
        raise ConnectionError(f"lost the Dask cluster at {where} during the run ({type(error).__name__}: "
                              f"{text})") from None
