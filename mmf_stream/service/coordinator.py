"""The coordinator behind ``mmf-stream serve``: new classes from a queue, folded in, committed, acknowledged.

One coordinator serves a project (``PROJECT/service/coordinator.lock``; a
second one refuses to start). It

1. settles what a crash left (:meth:`Project.recover
   <mmf_stream.store.generations.Project.recover>`), and factorizes the project if
   it holds no factorization yet (or if its classes changed outside the
   service, e.g. ``covariance --append`` while it was stopped);
2. reads waiting messages in arrival order after the committed queue position,
   up to ``batch_max`` of them, waiting at most ``batch_wait`` seconds after the
   first for more;
3. checks each one (:func:`~mmf_stream.service.messages.decode`): a bad one is
   recorded as a dead letter with its reason;
4. folds the batch's new classes into the factorization (factored insertion
   from the class means, :data:`INSERT_CHUNK` classes at a time, without the
   engine's inline repair, so a class costs about the same whatever the
   project's size; refreshes keep the quality) and adds the classes to the
   store. **A backlog** of at least ``catch_up_fraction`` of the factorized
   classes (all the messages waiting, not just a batch) is instead applied by
   one batch run of the whole project: batch quality at once, no slower than
   insertions from about 10% growth on, and it replaces the growth refresh
   that the insertions would start;
5. commits factorization, classes, ingest log, dead letters and queue position
   as one generation, and only then acknowledges the messages.

**A label the project already has updates that class**: the store adds the
message's instances to the class (its mean becomes the mean over all its
instances); the class is knocked out of the factorization and inserted again
with its new mean (never a batch run), and moves to the end of the store. **A
removal** (``ms.submit(PROJECT, label, remove=True)``) knocks the class out of
the factorization and the store; the last classes of the store fill the slots
that removals leave (:func:`~mmf_stream.store.class_store.swap_last_placement`), and
the factorization's indices follow the store's. A removal of a label the
project does not have is a dead letter with the reason. Messages apply in
arrival order (:mod:`mmf_stream.service.changes`).

**Refresh.** After each batch the coordinator measures the drift: how much the
squared error per class exceeds that of the last batch run (``drift``); when it
passes ``refresh_drift``, or when the classes grew by ``refresh_growth`` since
the last batch run, it starts batch MMF in the background on a snapshot of the
store's classes: in a separate, lower-priority process (or on the Dask cluster
when one is given). When that
finishes, the changes committed meanwhile are replayed into it in the order
they were committed (knock-outs with the store's placement, then insertions),
a step (:data:`REPLAY_STEP` classes beyond those of the last batch) between
batches, and once it has them all it is committed as a new generation if it
is better (:func:`refresh_outcome`); if the project was factorized afresh
meanwhile, the refresh is discarded.

SIGTERM or SIGINT, at any moment from before start-up on: a computation that has written nothing
yet (the start-up factorization, a batch's fold-in) is abandoned (its messages are read again by the
next start), a commit in progress is finished, then the coordinator exits with status 0.

**Metrics.** With ``metrics_port``, Prometheus metrics and the health checks
``/healthz`` and ``/readyz`` are served over HTTP
(:mod:`mmf_stream.service.metrics`).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mmf_stream.common.faults import batch_pause, crash_point
from mmf_stream.common.version import __version__
from mmf_stream.service.queues.backends import open_queue
from mmf_stream.store.class_store import swap_last_placement
from mmf_stream.service.changes import BatchChanges, plan_batch
from mmf_stream.service.messages import BadMessage, NewClass, decode
from mmf_stream.store.generations import IngestRecord, Project, has_log, log_path, read_log_id, set_log_aside
from mmf_stream.service.lock import CoordinatorBusy, CoordinatorLock, serving_pid
from mmf_stream.service.metrics import NoMetrics, ServiceMetrics
from mmf_stream.service.options import (
    CATCH_UP_MAX_MESSAGES,
    DEFAULT_BATCH_MAX,
    DEFAULT_BATCH_WAIT,
    DEFAULT_CATCH_UP_FRACTION,
    DEFAULT_METRICS_HOST,
    DEFAULT_ORDER,
    DEFAULT_REFRESH_DRIFT,
    DEFAULT_REFRESH_GROWTH,
    DEFAULT_SEED,
    IDLE_WAIT,
    INSERT_CHUNK,
    LOGGER_NAME,
    REPLAY_STEP,
    ServeOptions,
)
from mmf_stream.service.policy import drift, growth, refresh_outcome
from mmf_stream.service.refresh import BackgroundRefresh, CommittedChange, refresh_worker_setup

__all__ = ["Coordinator", "CoordinatorBusy", "ProjectMismatch", "ServeOptions", "StopRequested", "serve",
           "serving_pid", "refresh_outcome", "LOGGER_NAME"]

def knock_out(f, labels: list, new_index: np.ndarray):
    """``f`` without the classes ``labels``, its remaining indices placed by ``new_index`` (old index -> new
    index, -1 for the removed: the store's :func:`~mmf_stream.store.class_store.swap_last_placement`)."""
    return f.remove(labels, new_index=new_index)


def insert_in_chunks(f, rows: np.ndarray, labels: np.ndarray, chunk: int = INSERT_CHUNK, *,
                     inline_repair: bool = False):
    """``f`` with the classes of factor rows ``rows`` inserted, :data:`INSERT_CHUNK` at a time, in order:
    without the engine's repair (a refresh re-runs batch instead, in the background), or with its default
    repair policy when ``inline_repair``."""
    repair = None if inline_repair else False
    for start in range(0, rows.shape[0], chunk):
        f = f.insert_many(means=rows[start: start + chunk], labels=labels[start: start + chunk], repair=repair)
    return f


class StopRequested(BaseException):
    """SIGTERM/SIGINT arrived during a step that can be abandoned safely (nothing written yet).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """


class ProjectMismatch(ValueError):
    """The project's commit log or queue is not the one its class store was served with."""


def batch_factorization(factor: np.ndarray, labels: np.ndarray, order: int, core_size: int | None, seed: int,
                        scheduler: str | None):
    """Batch MMF of the classes with factor rows ``factor`` (what a refresh runs, in its own process)."""
    from mmf_stream.api import factorize

    return factorize(means=factor, order=order, core_size=core_size, labels=labels, seed=seed, client=scheduler)


def warm_up_kernels(order: int) -> None:
    """Load the engine's compiled kernels (numba's cache) by factorizing and growing a tiny random
    problem: otherwise the first batch after a start pays for it (about 0.6 s measured, on top of the
    batch; with a refresh process starting beside it, the first classes waited 3 s at 5,000 classes)."""
    from mmf_stream.api import factorize

    means = np.abs(np.random.default_rng(0).normal(size=(4 * order + 1, 8)))
    labels = np.arange(means.shape[0])
    f = factorize(means=means[:-1], order=order, labels=labels[:-1])
    insert_in_chunks(f, means[-1:], labels[-1:])


class Coordinator:
    """Serve one project (see the module docstring). Use :meth:`start`, then :meth:`run` or :meth:`step`.

    Parameters
    ----------
    project : path
        The project (a class store).
    options : ServeOptions
        The settings.
    log : callable, optional
        Called with one line per notable event (default: print to stderr).
    """

    def __init__(self, project: str | os.PathLike, options: ServeOptions | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.path = Path(project)
        self.options = (options or ServeOptions()).check()
        self.log = log or logging.getLogger(LOGGER_NAME).info
        self.stopping = False
        self._lock = CoordinatorLock(self.path)
        self._store = None
        self._project: Project | None = None
        self._queue = None
        self.factorization = None
        self._refresh: BackgroundRefresh | None = None
        self._executor: Executor | None = None
        self._labels: dict[Any, int] = {}
        self._rebuilt: dict[str, Any] | None = None  # the store's service record a rebuilt log starts from
        self._adopted = False
        self._abandonable = False  # inside a computation a stop signal may abandon (nothing written yet)
        self._abandoned_by: str | None = None  # the signal that abandoned the current step
        #: the Prometheus metrics (:class:`~mmf_stream.service.metrics.ServiceMetrics` with a metrics port)
        self.metrics = ServiceMetrics() if self.options.metrics_port is not None else NoMetrics()
        self.metrics.track_refresh(lambda: self._refresh is not None)

    # ------------------------------------------------------------------ start / stop
    def start(self) -> Coordinator:
        """Take the project (refusing if another coordinator has it), recover, factorize if needed."""
        from mmf_stream.store.class_store import Store
        from mmf_stream.store.durability import own_format

        if own_format(self.path) != "class-store":
            raise ValueError(f"{self.path} is not a project (a class store written by 'mmf-stream covariance "
                             "... --out')")
        self._lock.acquire()
        try:
            if self.options.metrics_port is not None:  # from here on: /healthz answers during the recovery
                host, port = self.metrics.serve(self.options.metrics_host, self.options.metrics_port)
                shown = f"[{host}]" if ":" in host else host
                self.log(f"metrics on http://{shown}:{port}/metrics (health checks /healthz, /readyz)")
            self._store = Store.open(self.path, mode="r+")
            if self._store.center:
                raise ValueError(f"{self.path} centres its covariance (every class changes when one is added); "
                                 "serve needs an uncentred project")
            record = self._store.service_record
            self._check_log(record)
            self._project = Project(self.path)
            if self._rebuilt:
                self._project.continue_log(str(self._rebuilt["log"]))
            self._queue = open_queue(self.path, self.options.queue)
            warning = self._queue.persistence_warning()
            if warning:
                self.log(warning)
            with self._store.writing():
                settled = self._project.recover(self._store.generation)
                if settled:
                    self.log(f"recovered: the generation a crash left pending was {settled}")
                self._check_log_is_current(record)
                self._check_queue(record)
                self._catch_up()
            with self._abandonable_step():
                warm_up_kernels(self._order())
            self._project.record_event("start", f"pid {os.getpid()} serving with queue {self._queue.url}")
            self._record_state()
            self._record_queue_depth(self._project.current().position, force=True)
            self.metrics.set_info(version=__version__, queue=self._queue_url())
            self.metrics.set_ready(True)
            self.log(f"ready: serving {self.path} (pid {os.getpid()}, {self._store.size} classes, generation "
                     f"{self._project.current().number}, queue {self._queue_url()})")
        except BaseException:
            self.close()
            raise
        return self

    def _check_log(self, record: dict[str, Any] | None) -> None:
        """Refuse a project whose commit log is missing or is another log than the one the class store
        was last served with (it would re-apply the queue from an old position); with ``rebuild_log``,
        keep the old log beside and start a new one at the store's recorded position."""
        log_id = read_log_id(self.path)
        if record is None:  # the service never changed these classes: any readable log (or none) is consistent
            if log_id is None and has_log(self.path) and self.options.rebuild_log:
                kept = set_log_aside(self.path)
                self.log(f"rebuilding the unreadable commit log (the old one is kept as {kept.name})")
                self._rebuilt = {}
            return
        if log_id == record.get("log"):
            return
        problem = "is missing" if not has_log(self.path) else \
            "is empty or unreadable" if log_id is None else "is not the log this class store was served with"
        if not self.options.rebuild_log:
            raise ProjectMismatch(
                f"{log_path(self.path)} {problem} (the store's last service commit was at queue position "
                f"{record.get('position')!r}); restore it from a backup, or run 'mmf-stream serve {self.path} "
                "--rebuild-log' to start a new log at that position (docs/service.md)")
        kept = set_log_aside(self.path)
        self.log(f"rebuilding the commit log at queue position {record.get('position')!r}"
                 + (f" (the old one is kept as {kept.name})" if kept else ""))
        self._rebuilt = record

    def _check_log_is_current(self, record: dict[str, Any] | None) -> None:
        """Refuse a log older than the class store (e.g. restored from an old backup)."""
        current = self._project.current()
        if record is None or self._rebuilt is not None:
            return
        if current is None or current.store_generation < int(record.get("store_generation", 0)):
            raise ProjectMismatch(
                f"{log_path(self.path)} is older than the class store (it ends at store generation "
                f"{None if current is None else current.store_generation}, the store's last service commit is "
                f"{record.get('store_generation')}): its queue position would apply classes twice; restore a newer "
                f"log, or run 'mmf-stream serve {self.path} --rebuild-log' (docs/service.md)")

    def _check_queue(self, record: dict[str, Any] | None) -> None:
        """Refuse a queue that is not the one the committed position refers to (deleted and created
        again, or another one): its messages would be skipped. ``adopt_queue`` reads it from its start."""
        current = self._project.current()
        recorded = current.queue_identity if current is not None else (self._rebuilt or {}).get("queue_identity")
        identity = self._queue_identity()
        if recorded is None or identity is None or identity == recorded:
            return
        if not self.options.adopt_queue:
            raise ProjectMismatch(
                f"the queue {self._queue_url()} is not the one {self.path}'s queue position "
                f"{None if current is None else current.position!r} refers to (it was deleted, replaced or is "
                f"another queue); its messages would be skipped. Run 'mmf-stream serve {self.path} --adopt-queue' "
                "to read it from its beginning (docs/service.md)")
        self.log(f"adopting the queue {self._queue_url()}: reading it from its beginning")
        self._adopted = True

    def _queue_identity(self) -> str | None:
        """The identity of the queue this coordinator reads (created by its first writer)."""
        return None if self._queue is None else self._queue.identity()

    def _catch_up(self) -> None:
        """Under the store lock: make sure the committed factorization describes the store."""
        current = self._project.current()
        store = self._store
        self._labels = {label: slot for slot, label in enumerate(store.labels.tolist())} if store.size else {}
        if current is not None and current.store_generation == store.generation:
            from mmf_stream.api import project_factorization

            self.factorization = project_factorization(self.path)
            self._check_order()
            f = self.factorization
            if f is not None and (f.size != store.size or not np.array_equal(f.labels, store.labels)):
                raise ValueError(f"{self.path} is corrupt: its class store shows {store.size} classes at generation "
                                 f"{store.generation}, but the factorization committed for that generation has "
                                 f"{f.size} (other labels): was its zarr.json edited? Restore it from a backup")
            if self._adopted:  # the position of another queue means nothing here: read this one from its start
                number = self._project.prepare(self.factorization, store_generation=store.generation, position=None,
                                               queue=self._queue_url(), counters=dict(current.counters),
                                               reason="queue adopted", queue_identity=self._queue_identity())
                self._project.commit(number)
            return
        position = None if current is None else current.position
        counters = {} if current is None else dict(current.counters)
        reason = "factorize" if current is None else "store changed outside the service"
        if current is None and self._rebuilt is not None:
            position, reason = self._rebuilt.get("position"), "log rebuilt"
        if self._adopted:
            position = None
        self.factorization = None
        if store.size >= self._order():
            self.log(f"factorizing {store.size} classes ({reason})")
            with self._abandonable_step():
                self.factorization = self._batch(store.factor(), store.labels)
            counters = self._after_batch_run(counters, self.factorization)
        number = self._project.prepare(self.factorization, store_generation=store.generation, position=position,
                                       queue=self._queue_url(), counters=counters, reason=reason,
                                       queue_identity=self._queue_identity())
        self._project.commit(number)

    def _order(self) -> int:
        if self.factorization is not None:
            return self.factorization.order
        return int(self.options.order or DEFAULT_ORDER)

    def _check_order(self) -> None:
        f = self.factorization
        if f is not None and self.options.order is not None and f.order != self.options.order:
            raise ValueError(f"{self.path} is factorized with order {f.order}, not --order {self.options.order} "
                             "(leave --order out, or start a new project)")

    def _queue_url(self) -> str:
        return "embedded" if self._queue is None else self._queue.url

    def close(self) -> None:
        """Release the queue, the log and the lock (a refresh in progress is abandoned)."""
        for resource in (self._queue, self._project):
            if resource is not None:
                try:
                    resource.close()
                except Exception:  # noqa: BLE001 - closing must not hide the real error
                    pass
        self._queue = self._project = None
        if self._executor is not None:  # an unfinished refresh is abandoned, not waited for
            processes = list(getattr(self._executor, "_processes", None) or {})
            self._executor.shutdown(wait=False, cancel_futures=True)
            for pid in processes:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self._executor = None
        self.metrics.set_stopping()
        self.metrics.close()
        self._lock.release()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT, from before :meth:`start` on: a computation that has written nothing yet
        (the start-up factorization, a batch's fold-in) is abandoned (:class:`StopRequested`); a commit in
        progress is finished; then the coordinator stops."""
        def stop(signum, frame):  # noqa: ARG001
            self.stopping = True
            self.metrics.set_stopping()  # an attribute only: safe in a handler
            if self._abandonable:
                self._abandonable = False
                self._abandoned_by = signal.Signals(signum).name
                raise StopRequested(self._abandoned_by)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    @contextmanager
    def _abandonable_step(self) -> Iterator[None]:
        """A computation that a stop signal may abandon: it writes nothing."""
        if self.stopping:
            raise StopRequested("stop requested")
        self._abandoned_by = None
        self._abandonable = True
        try:
            yield
        except StopRequested:
            raise
        except BaseException as error:
            # The handler's StopRequested can surface wrapped: raised while a numba dispatcher is in C,
            # it comes out as "SystemError: ... returned a result with an exception set".
            if self._abandoned_by is not None:
                raise StopRequested(self._abandoned_by) from error
            raise
        finally:
            self._abandonable = False
        if self._abandoned_by is not None:  # raised into code that swallowed it: the step is still abandoned
            raise StopRequested(self._abandoned_by)

    # ------------------------------------------------------------------ the loop
    def run(self, *, idle_exit: float | None = None) -> None:
        """Serve until :attr:`stopping` (a signal) or, with ``idle_exit``, until the queue
        has been empty that many seconds and no refresh is running."""
        idle_since = time.monotonic()
        while not self.stopping:
            handled = self.step()
            if handled:
                idle_since = time.monotonic()
            elif idle_exit is not None and self._refresh is None and time.monotonic() - idle_since >= idle_exit:
                break
        self._project.record_event("stop", f"pid {os.getpid()} stopped")
        self.log(f"stopped (pid {os.getpid()})")

    def step(self) -> int:
        """Read and apply one batch (if any message waits); returns the number of messages handled."""
        self._finish_refresh()
        position = self._project.current().position
        messages = self._queue.read(after=position, limit=self.options.batch_max, wait=IDLE_WAIT)
        if not messages:
            if self._store_changed_outside():  # e.g. covariance --append while idle: factorize them now
                with self._store.writing():
                    if self._project.current().store_generation != self._store.generation:
                        self.log("the project's classes changed outside the service: factorizing again")
                        self._catch_up()
                return 0
            self._maybe_refresh()  # a discarded refresh is retried when the queue is idle too
            self._record_queue_depth(position)
            return 0
        deadline = time.monotonic() + self.options.batch_wait
        while len(messages) < self.options.batch_max and not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self._queue.read(after=messages[-1].seq, limit=self.options.batch_max - len(messages), wait=left)
            messages.extend(more)
        catch_up = self._catch_up_backlog(messages, position)
        try:
            self._apply(messages, read_after=position, catch_up=catch_up)
        except Exception as error:  # noqa: BLE001 - recorded for status, then raised
            self._project.record_event("error", f"{type(error).__name__}: {error}")
            raise
        self._queue.acknowledge(messages)
        self._record_queue_depth(messages[-1].seq, force=True)
        self._maybe_refresh()
        return len(messages)

    def _record_queue_depth(self, position: Any, *, force: bool = False) -> None:
        """Measure the queue depth after the committed ``position`` for the metrics: after each batch
        (``force``), else at most every :data:`~mmf_stream.service.metrics.QUEUE_DEPTH_INTERVAL` seconds."""
        now = time.monotonic()
        if not self.metrics.enabled or not (force or self.metrics.queue_depth_due(now)):
            return
        try:
            depth = self._queue.depth(after=position)
        except (ConnectionError, ValueError, sqlite3.DatabaseError):
            return  # the queue's next read reports it
        self.metrics.set_queue_depth(depth, now)

    def _record_state(self) -> None:
        """The project's size, generation and error, for the metrics."""
        if self.metrics.enabled:
            f, current = self.factorization, self._project.current()
            self.metrics.project_state(classes=self._store.size, generation=None if current is None else current.number,
                                       relative_error=None if f is None else f.relative_error)

    def _store_changed_outside(self) -> bool:
        """Whether another writer committed to the class store since the last generation (reads only
        the store's metadata file)."""
        from mmf_stream.store.class_store import read_metadata

        try:
            generation = read_metadata(self.path).get("generation")
        except ValueError:
            return False  # mid-write or damaged: the next batch's locked check tells
        return generation != self._project.current().store_generation

    def _catch_up_backlog(self, messages: list, position: Any) -> bool:
        """If the backlog (the batch read, or with a full batch the whole queue after ``position``) is
        at least ``catch_up_fraction`` of the factorized classes, read all of it into ``messages`` (up
        to :data:`CATCH_UP_MAX_MESSAGES`) and return True: it is applied by one batch run."""
        fraction, f = self.options.catch_up_fraction, self.factorization
        if fraction <= 0 or f is None or self.stopping:
            return False
        backlog = self._queue.depth(after=position) if len(messages) >= self.options.batch_max else len(messages)
        if backlog < fraction * f.size:
            return False  # small next to the project: insertions
        limit = min(backlog, CATCH_UP_MAX_MESSAGES) - len(messages)
        if limit > 0:
            messages.extend(self._queue.read(after=messages[-1].seq, limit=limit, wait=0.0))
        self.log(f"catching up: {len(messages)} messages (backlog {backlog}, {backlog / f.size:.1%} of "
                 f"{f.size} classes) applied by one batch run")
        return True

    # ------------------------------------------------------------------ one batch
    def _apply(self, messages: list, *, read_after: Any, catch_up: bool = False) -> None:
        """Apply ``messages`` (read after the committed position ``read_after``) as one generation."""
        began = time.monotonic()
        store = self._store
        dim = store.dim
        good: list[NewClass] = []
        dead: list[tuple[Any, str, str]] = []
        for message in messages:
            try:
                good.append(self._decode(message, dim))
                if not good[-1].removal:
                    dim = good[-1].mean.shape[0]
            except BadMessage as reason:
                dead.append((message.seq, message.id, str(reason)))
        with store.writing():
            current = self._project.current()
            if current.position != read_after:  # never apply a message at or before the committed position
                raise CoordinatorBusy(f"another process committed generation {current.number} of {self.path} "
                                      f"(queue position {current.position}) while this coordinator served: "
                                      "stopping (one coordinator per project)")
            if current.store_generation != store.generation:
                self.log("the project's classes changed outside the service: factorizing again")
                self._catch_up()
                current = self._project.current()
            changes = plan_batch(good, self._labels, dim or 0, store.read_classes, instances=store.n_instances,
                                 normalized=store.normalize)
            arrival = {m.id: i for i, m in enumerate(messages)}
            dead = sorted(dead + changes.dead, key=lambda d: arrival[d[1]])
            for position, mid, reason in dead:
                self.log(f"dead letter {mid} at {position}: {reason}")
            submitted = {m.id: m.submitted for m in messages}
            records = [IngestRecord(c.seq, c.id, str(c.label), changes.change[c.id], submitted[c.id])
                       for c in good if c.id in changes.change]
            counters = dict(current.counters)
            counters["applied"] = int(counters.get("applied", 0)) + len(records)
            counters["dead_letters"] = int(counters.get("dead_letters", 0)) + len(dead)
            if not changes.empty:
                with self._abandonable_step():
                    factorization, reason, counters = self._fold_in(changes, counters, catch_up=catch_up)
                number = self._project.prepare(factorization, store_generation=store.generation + 1,
                                               position=messages[-1].seq, queue=self._queue_url(),
                                               counters=counters, reason=reason, applied=records, dead=dead,
                                               queue_identity=self._queue_identity())
                crash_point("service-prepared")
                batch_pause()
                appended = {"sums": changes.sums, "labels": changes.labels, "counts": changes.counts} \
                    if changes.labels.size else {}
                placement = swap_last_placement(store.size, [self._labels[label] for label in changes.knocked_out])
                report = store.replace_classes(remove=changes.knocked_out, **appended, service={
                    "log": self._project.log_id, "position": messages[-1].seq, "queue": self._queue_url(),
                    "queue_identity": self._queue_identity(), "store_generation": store.generation + 1})
                crash_point("service-store-committed")
                if store.generation != self._project.pending().store_generation:
                    raise RuntimeError("the class store did not commit the generation expected")
                self._relabel(changes, report)
                if self._refresh is not None:  # the refresh replays this batch once it is in
                    self._refresh.log.append(CommittedChange(list(changes.knocked_out), placement,
                                                     self._rows(changes.means), changes.labels))
            else:
                factorization, reason = self.factorization, "dead letters" if dead else "no net change"
                number = self._project.prepare(factorization, store_generation=store.generation,
                                               position=messages[-1].seq, queue=self._queue_url(),
                                               counters=counters, reason=reason, applied=records, dead=dead,
                                               queue_identity=self._queue_identity())
            self._project.commit(number)
            self.factorization = factorization
        kinds = Counter(record.change for record in records)
        committed_at = time.time()
        self.metrics.batch_committed(seconds=time.monotonic() - began, changes=kinds, dead_letters=len(dead),
                                     latencies=[committed_at - record.submitted for record in records],
                                     committed_at=committed_at)
        self._record_state()
        self.log(f"batch: {len(records)} applied ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items())) or 'none'}), "
                 f"{len(dead)} dead letter(s), {time.monotonic() - began:.2f} s, generation {number} ({reason})")
        crash_point("service-committed")
        reasons = {(position, mid): reason for position, mid, reason in dead}
        for message in messages:  # the queue's own dead-letter area, after the commit (Redis acknowledges there)
            if (message.seq, message.id) in reasons:
                self._queue.dead_letter(message, reasons[(message.seq, message.id)])

    def _relabel(self, changes: BatchChanges, report: dict[str, Any]) -> None:
        """Follow the store's slots after a batch: knocked-out labels gone, moved ones moved, appended ones last."""
        for label in changes.knocked_out:
            del self._labels[label]
        self._labels.update(report["moved"])
        first = len(self._labels)
        for offset, label in enumerate(changes.labels.tolist()):
            self._labels[label] = first + offset

    def _decode(self, message, dim: int | None) -> NewClass:
        label_kind = self._store.label_kind
        if dim is None and message.kind != "remove":  # a project without classes takes its first class's dimension
            try:
                array = message.array()
                dim = int(array.shape[-1]) if array.ndim in (1, 2) else 0
            except Exception:  # noqa: BLE001 - decode gives the reason
                dim = 0
        new = decode(message, dim or 0, label_kind)
        if not new.removal and self._store.normalize and not np.any(new.mean):
            raise BadMessage("mean is the zero vector; the project's classes are cosine-normalised")
        return new

    def _fold_in(self, changes: BatchChanges, counters, *, catch_up: bool = False):
        """The factorization after the batch (computed before anything is written): knock-out of the
        removed and updated classes, then insertion of the updated and new ones; a batch run of the
        whole project when there is no factorization yet or the batch catches up a backlog."""
        store = self._store
        rows = self._rows(changes.means)
        new_index = swap_last_placement(store.size, [self._labels[label] for label in changes.knocked_out])
        remaining = store.size - len(changes.knocked_out)
        f = self.factorization
        if f is not None and not catch_up and remaining >= self._order():
            if changes.knocked_out:
                f = knock_out(f, changes.knocked_out, new_index)
            grown = insert_in_chunks(f, rows, changes.labels, inline_repair=self.options.inline_repair) \
                if changes.labels.size else f
            return grown, "batch", counters
        factor = np.zeros((remaining, rows.shape[1]))
        all_labels = store.labels[:0] if store.size else changes.labels[:0]
        if store.size:
            kept = new_index >= 0
            factor[new_index[kept]] = store.factor()[kept]
            all_labels = np.empty(remaining, dtype=store.labels.dtype)
            all_labels[new_index[kept]] = store.labels[kept]
        factor = np.concatenate([factor, rows])
        all_labels = np.concatenate([all_labels, changes.labels]) if changes.labels.size else all_labels
        if factor.shape[0] < self._order():
            return None, "too few classes to factorize", counters
        reason = "catch-up" if catch_up and f is not None else "factorize"
        why = {"catch-up": "catching up a backlog", "factorize": "the first factorization"}[reason]
        self.log(f"factorizing {factor.shape[0]} classes ({why})")
        result = self._batch(factor, all_labels)
        if self._refresh is not None:
            self._refresh.invalidated = True
        return result, reason, self._after_batch_run(counters, result)

    def _rows(self, means: np.ndarray) -> np.ndarray:
        """Factor rows of classes with these means (cosine-normalised like the store's, if it is)."""
        if not self._store.normalize:
            return means
        return means * (1.0 / np.sqrt(np.einsum("ij,ij->i", means, means)))[:, None]

    def _batch(self, factor: np.ndarray, labels: np.ndarray):
        return batch_factorization(factor, labels, self._order(), self.options.core_size, self.options.seed,
                                   self.options.scheduler)

    def _refresh_executor(self) -> Executor:
        """Where refreshes run: a thread when a Dask cluster does the work, else a separate process
        (the batch engine holds the GIL for long stretches; a thread would stall the batches)."""
        if self._executor is None:
            if self.options.scheduler is not None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmf-refresh")
            else:
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                                                     initializer=refresh_worker_setup)
        return self._executor

    @staticmethod
    def _after_batch_run(counters: dict[str, Any], f) -> dict[str, Any]:
        counters = dict(counters)
        counters["refreshes"] = int(counters.get("refreshes", -1)) + 1
        counters["batch_classes"] = int(f.size)
        counters["batch_error"] = float(f.error)
        counters["batch_relative_error"] = float(f.relative_error)
        counters["batch_at"] = time.time()
        return counters

    # ------------------------------------------------------------------ refresh
    def _maybe_refresh(self) -> None:
        if self._refresh is not None or self.factorization is None:
            return
        f, counters = self.factorization, self._project.current().counters  # one read of the log per check
        drift_now, growth_now = drift(f.error, f.size, counters), growth(f.size, counters)
        growth_due = self.options.refresh_growth > 0 and growth_now >= self.options.refresh_growth
        if drift_now < self.options.refresh_drift and not growth_due:
            return
        store = self._store
        future = self._refresh_executor().submit(
            batch_factorization, store.factor(), store.labels, self._order(), self.options.core_size,
            self.options.seed, self.options.scheduler)
        self.log(f"refresh: batch MMF of {store.size} classes in the background "
                 f"(drift {drift_now:.3f}, growth {growth_now:.3f})")
        self._refresh = BackgroundRefresh(future=future, store_generation=store.generation, size=store.size)

    def _finish_refresh(self, wait: bool = False) -> None:
        """Once the background batch run is in: replay the changes committed meanwhile into it,
        :data:`REPLAY_STEP` classes per call (all at once with ``wait``), then swap it in if it is better."""
        refresh = self._refresh
        if refresh is None or (refresh.batch is None and not refresh.future.done() and not wait):
            return
        if refresh.batch is None:
            try:
                refresh.batch = refresh.replayed = refresh.future.result()
            except Exception as error:  # noqa: BLE001 - a failed refresh is reported; serving goes on
                self._refresh = None
                self.log(f"refresh failed: {error}")
                self._project.record_event("error", f"refresh failed: {type(error).__name__}: {error}")
                return
            refresh.seen = refresh.logged
        if refresh.invalidated:
            self._refresh = None
            self.log("refresh discarded: the project was factorized afresh meanwhile")
            return
        # REPLAY_STEP more than were logged since the last step: the replay gains on any load
        budget = None if wait else REPLAY_STEP + refresh.logged - refresh.seen
        refresh.seen = refresh.logged
        while refresh.done < len(refresh.log) and (budget is None or budget > 0):
            change = refresh.log[refresh.done]
            if not refresh.knocked:
                if change.knocked_out:
                    refresh.replayed = knock_out(refresh.replayed, change.knocked_out, change.new_index)
                    if budget is not None:
                        budget -= len(change.knocked_out)
                refresh.knocked = True
            stop = change.rows.shape[0] if budget is None else min(change.rows.shape[0], refresh.offset + max(budget, 0))
            if stop > refresh.offset:
                refresh.replayed = insert_in_chunks(refresh.replayed, change.rows[refresh.offset:stop],
                                                    change.labels[refresh.offset:stop],
                                                    inline_repair=self.options.inline_repair)
                if budget is not None:
                    budget -= stop - refresh.offset
            refresh.offset = stop
            if refresh.offset >= change.rows.shape[0]:
                refresh.done += 1
                refresh.offset = 0
                refresh.knocked = False
        if refresh.done < len(refresh.log):
            return  # the next step goes on
        store = self._store
        self._refresh = None
        batch = refresh.batch
        with store.writing():
            current = self._project.current()
            if current.store_generation != store.generation:
                return  # changed outside the service: the next batch factorizes again
            result = refresh.replayed
            counters = self._after_batch_run(current.counters, batch)
            reason = "refresh"
            replayed = refresh.logged
            outcome = refresh_outcome(result.error, self.factorization.error, replayed)
            if outcome != "swap":  # only a better factorization is swapped in
                retry = " (retried on the current classes)" if outcome == "retry" else ""
                self.log(f"refresh discarded{retry}: after replaying {replayed} classes its error "
                         f"{result.error:.6g} is above the current {self.factorization.error:.6g}")
                self._project.record_event("refresh", f"discarded{retry}: error {result.error:.6g} after replaying "
                                                      f"{replayed} classes, above the current "
                                                      f"{self.factorization.error:.6g}")
                if outcome == "retry":  # the baselines stay: the next check starts a refresh of the current classes
                    return
                # the batch run still resets the drift and growth baselines (else it would be retried at once,
                # forever when the insertions do better than batch), but the factorization stays
                result, reason = self.factorization, "refresh discarded"
                counters["refreshes"] -= 1
            number = self._project.prepare(result, store_generation=store.generation, position=current.position,
                                           queue=self._queue_url(), counters=counters, reason=reason,
                                       queue_identity=self._queue_identity())
            self._project.commit(number)
            self.factorization = result
        self._record_state()
        if reason != "refresh":
            return
        self.metrics.refresh_committed(time.time())
        self._project.record_event("refresh", f"refreshed: batch of {refresh.size} classes, "
                                              f"{replayed} changes replayed; relative error "
                                              f"{result.relative_error:.6g}")
        self.log(f"refresh committed ({refresh.size} classes in batch, {replayed} changes replayed)")


def serve(project: str | os.PathLike, *, order: int | None = None, queue: str | None = None,
          scheduler: str | None = None, batch_max: int = DEFAULT_BATCH_MAX, batch_wait: float = DEFAULT_BATCH_WAIT,
          refresh_drift: float = DEFAULT_REFRESH_DRIFT, refresh_growth: float = DEFAULT_REFRESH_GROWTH,
          catch_up_fraction: float = DEFAULT_CATCH_UP_FRACTION, inline_repair: bool = False,
          core_size: int | None = None, seed: int = DEFAULT_SEED, idle_exit: float | None = None,
          log: Callable[[str], None] | None = None, rebuild_log: bool = False, adopt_queue: bool = False,
          metrics_port: int | None = None, metrics_host: str = DEFAULT_METRICS_HOST) -> None:
    """Serve ``project`` until SIGTERM/SIGINT (or ``idle_exit`` seconds without messages).

    Parameters
    ----------
    project : path
        A class store (``mmf-stream covariance ... --out PROJECT``).
    order : int, optional
        The order of the project's first factorization (default :data:`~mmf_stream.service.options.DEFAULT_ORDER`); a project
        already factorized keeps its order.
    queue : str, optional
        ``None``/``"embedded"`` (the project's SQLite queue) or ``redis://HOST:PORT/DB``.
    scheduler : str, optional
        A Dask scheduler address for batch runs (first factorization, refreshes).
    batch_max, batch_wait : int, float
        At most ``batch_max`` messages per batch; wait at most ``batch_wait``
        seconds after the first for more.
    refresh_drift, refresh_growth : float
        Refresh thresholds (see the module docstring).
    catch_up_fraction : float
        When the messages waiting are at least this fraction of the
        factorized classes, all of them (up to :data:`CATCH_UP_MAX_MESSAGES`)
        are applied in one batch by a batch run of the whole project instead
        of insertions: batch quality at once, about as fast as inserting them
        from 10% on, and the growth refresh that insertions would start is
        not needed (0: never).
    core_size : int, optional
        The core size of the coordinator's batch runs (default: the engine's).
    seed : int
        The seed of the coordinator's batch runs (default 0).
    inline_repair : bool
        Insert with the engine's default repair policy (a re-run from the
        shallow snapshot every ``repair_interval()`` classes): better
        factorizations between refreshes, at the price of batches that stall
        for the repair (seconds at 20,000 classes).
    idle_exit : float, optional
        Stop after this many seconds with an empty queue (tests, one-off catch-up runs).
    log : callable, optional
        One line per notable event (default: the ``mmf_stream.service`` logger at INFO).
    rebuild_log : bool
        When the commit log is missing or is not the one the class store was
        served with, keep it aside and start a new one at the store's recorded
        queue position (the project is factorized again) instead of refusing.
    adopt_queue : bool
        When the queue is not the one the committed position refers to (it was
        deleted or replaced), read it from its beginning instead of refusing.
    metrics_port : int, optional
        Serve Prometheus metrics (``/metrics``) and health checks (``/healthz``,
        ``/readyz``) over HTTP on this port (0: a free one, logged); see
        :mod:`mmf_stream.service.metrics`. Needs ``prometheus_client``.
    metrics_host : str
        The address to serve them on (default
        :data:`~mmf_stream.service.options.DEFAULT_METRICS_HOST`, this machine
        only; ``0.0.0.0`` in a container).
    """
    options = ServeOptions(order=order, queue=queue, scheduler=scheduler, batch_max=batch_max, batch_wait=batch_wait,
                           refresh_drift=refresh_drift, refresh_growth=refresh_growth,
                           catch_up_fraction=catch_up_fraction, inline_repair=inline_repair, core_size=core_size,
                           seed=seed, rebuild_log=rebuild_log, adopt_queue=adopt_queue, metrics_port=metrics_port,
                           metrics_host=metrics_host)
    coordinator = Coordinator(project, options, log=log)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    if in_main:  # from before start-up on: a pod's SIGTERM during the first factorization stops it cleanly
        coordinator.install_signal_handlers()
    try:
        coordinator.start()
        coordinator.run(idle_exit=idle_exit)
    except StopRequested as stop:
        coordinator.log(f"stopped by {stop}: the step in progress was abandoned before it wrote anything")
    finally:
        coordinator.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
