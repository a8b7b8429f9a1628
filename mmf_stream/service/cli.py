"""The service's subcommands: ``mmf-stream serve`` and ``mmf-stream status``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable

from mmf_stream.service.coordinator import (
    LOGGER_NAME,
    DEFAULT_BATCH_MAX,
    DEFAULT_BATCH_WAIT,
    DEFAULT_CATCH_UP_FRACTION,
    DEFAULT_REFRESH_DRIFT,
    DEFAULT_REFRESH_GROWTH,
)


#: how ``serve`` writes its log lines on stderr (one line per event)
LOG_FORMAT = "%(asctime)s mmf-stream serve: %(message)s"


def _log_to_stderr() -> None:
    """The service's logger writes one line per event to stderr (unless the application configured it)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)


class _StderrHandler(logging.StreamHandler):
    """A log handler writing to whatever ``sys.stderr`` is when a line is written."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102 - the current stderr
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
        pass


def _serve(args: argparse.Namespace) -> int:
    from mmf_stream.service.coordinator import serve

    _log_to_stderr()
    serve(args.project, order=args.order, queue=args.queue, scheduler=args.scheduler, batch_max=args.batch_max,
          batch_wait=args.batch_wait, refresh_drift=args.refresh_drift, refresh_growth=args.refresh_growth,
          catch_up_fraction=args.catch_up_fraction, inline_repair=args.inline_repair, idle_exit=args.idle_exit,
          rebuild_log=args.rebuild_log, adopt_queue=args.adopt_queue)
    return 0


def _status(args: argparse.Namespace) -> int:
    from mmf_stream.service.status import format_status, project_status

    status = project_status(args.project, queue=args.queue)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    if status["problems"]:  # printed above; the exit status and one line on stderr say so too
        print(f"mmf-stream: error: {status['problems'][0]}", file=sys.stderr)
        return 2
    return 0


def add_service_commands(sub, int_at_least: Callable[[int], Callable[[str], int]],
                         non_negative: Callable[[str], float]) -> None:
    """Add ``serve`` and ``status`` to the ``mmf-stream`` subparsers ``sub``."""
    serve = sub.add_parser(
        "serve", help="run the coordinator: fold queued new classes into the project's factorization",
        description="Serve PROJECT (a class store): factorize it if it holds no factorization yet, then fold the "
        "classes queued with 'mmf-stream submit' into the factorization in arrival order, in batches, committing "
        "classes, factorization and queue position together before acknowledging. A label the project already has "
        "updates that class (the project is factorized again). Stops on SIGTERM/SIGINT after committing the batch "
        "in progress (exit 0). One coordinator per project.",
    )
    serve.add_argument("project", help="the project (class store written by 'mmf-stream covariance')")
    serve.add_argument("--order", "-k", type=int_at_least(2), default=None,
                       help="order of the first factorization (default 5; a factorized project keeps its order)")
    serve.add_argument("--queue", default=None, metavar="URL",
                       help="'embedded' (default: the project's own queue) or redis://HOST:PORT/DB")
    serve.add_argument("--scheduler", default=None, metavar="ADDR",
                       help="Dask scheduler for the batch runs (first factorization, refreshes)")
    serve.add_argument("--batch-max", type=int_at_least(1), default=DEFAULT_BATCH_MAX, metavar="N",
                       help=f"most classes folded in per batch (default {DEFAULT_BATCH_MAX})")
    serve.add_argument("--batch-wait", type=non_negative, default=DEFAULT_BATCH_WAIT, metavar="SECONDS",
                       help=f"wait this long after a batch's first message for more (default {DEFAULT_BATCH_WAIT})")
    serve.add_argument("--refresh-drift", type=non_negative, default=DEFAULT_REFRESH_DRIFT, metavar="X",
                       help="re-run batch in the background when the squared error per class exceeds the last "
                       f"batch run's by this fraction (default {DEFAULT_REFRESH_DRIFT})")
    serve.add_argument("--refresh-growth", type=non_negative, default=DEFAULT_REFRESH_GROWTH, metavar="X",
                       help="... or when the classes grew by this fraction since it (default "
                       f"{DEFAULT_REFRESH_GROWTH}; 0: never)")
    serve.add_argument("--catch-up-fraction", type=non_negative, default=DEFAULT_CATCH_UP_FRACTION, metavar="X",
                       help="when the messages waiting are at least this fraction of the factorized classes, "
                       "apply them all by one batch run of the project instead of insertions (default "
                       f"{DEFAULT_CATCH_UP_FRACTION}; 0: never)")
    serve.add_argument("--inline-repair", action="store_true",
                       help="insert with the engine's repair policy (better factorizations between refreshes; "
                       "batches stall for the repairs)")
    serve.add_argument("--idle-exit", type=non_negative, default=None, metavar="SECONDS",
                       help="stop after this many seconds with nothing queued (one-off catch-up runs)")
    serve.add_argument("--rebuild-log", action="store_true",
                       help="the commit log (PROJECT/service/log.sqlite) is lost or is not this store's: keep it "
                       "aside and start a new one at the queue position the class store recorded (the project is "
                       "factorized again); without it such a project is refused")
    serve.add_argument("--adopt-queue", action="store_true",
                       help="the queue is not the one the committed position refers to (deleted and created "
                       "again, or another one): read it from its beginning; without it such a queue is refused")
    serve.set_defaults(run=_serve)

    status = sub.add_parser("status", help="the service's state: queue depth, applied, ingest rate, error, "
                            "drift, refreshes, dead letters, last error")
    status.add_argument("project", help="the project")
    status.add_argument("--json", action="store_true", help="print JSON (keys include queue_depth, applied, "
                        "dead_letters)")
    status.add_argument("--queue", default=None, metavar="URL", help="the queue to measure (default: the one "
                        "the coordinator last used)")
    status.set_defaults(run=_status)
