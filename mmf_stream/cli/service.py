"""The service's subcommands: ``mmf-stream serve``, ``status`` and ``submit``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mmf_stream.cli.arguments import int_at_least, non_negative
from mmf_stream.service.options import (
    LOGGER_NAME,
    DEFAULT_BATCH_MAX,
    DEFAULT_BATCH_WAIT,
    DEFAULT_CATCH_UP_FRACTION,
    DEFAULT_METRICS_HOST,
    DEFAULT_ORDER,
    DEFAULT_REFRESH_DRIFT,
    DEFAULT_REFRESH_GROWTH,
    DEFAULT_SEED,
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
          catch_up_fraction=args.catch_up_fraction, inline_repair=args.inline_repair, core_size=args.core_size,
          seed=args.seed, idle_exit=args.idle_exit,
          rebuild_log=args.rebuild_log, adopt_queue=args.adopt_queue, metrics_port=args.metrics_port,
          metrics_host=args.metrics_host)
    return 0


def _port(text: str) -> int:
    """A TCP port number, 0 to 65535 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {value}")
    return value


def _status(args: argparse.Namespace) -> int:
    from mmf_stream.service.status import format_status, project_status

    status = project_status(args.project, queue=args.queue)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    if status["problems"]:  # printed above; the exit status and one line on stderr say so too
        print(f"mmf-stream: error: {status['problems'][0]}", file=sys.stderr)
        return 2
    return 0


def _submit(args: argparse.Namespace) -> int:
    import mmf_stream as ms
    from mmf_stream.common.formats import existing_path
    from mmf_stream.io import load_npy

    if args.remove:
        if args.mean is not None or args.features is not None:
            raise ValueError("--remove takes no --mean or --features")
        print(ms.submit(args.project, args.label, queue=args.queue, message_id=args.id, remove=True))
        return 0
    if (args.mean is None) == (args.features is None):
        raise ValueError("give exactly one of --mean M.npy, --features F.npy or --remove")
    source = existing_path(args.mean if args.mean is not None else args.features)
    array = load_npy(source, mmap=False)
    kwargs = {"mean": array} if args.mean is not None else {"features": array}
    print(ms.submit(args.project, args.label, queue=args.queue, message_id=args.id, **kwargs))
    return 0


def add_commands(sub) -> None:
    """Add ``serve``, ``status`` and ``submit`` to the ``mmf-stream`` subparsers ``sub``."""
    serve = sub.add_parser(
        "serve", help="run the coordinator: fold queued new classes into the project's factorization",
        description="Serve PROJECT (a class store): factorize it if it holds no factorization yet, then fold the "
        "classes queued with 'mmf-stream submit' into the factorization in arrival order, in batches, committing "
        "classes, factorization and queue position together before acknowledging. A label the project already has "
        "updates that class (knocked out and inserted again with its new mean). Stops on SIGTERM/SIGINT (exit 0): a commit "
        "in progress is finished, work not yet written is abandoned and read again at the next start. One coordinator per project. With --queue redis://..., the password comes from the "
        "URL or REDIS_PASSWORD (or the file REDIS_PASSWORD_FILE names).",
    )
    serve.add_argument("project", help="the project (class store written by 'mmf-stream covariance')")
    serve.add_argument("--order", "-k", type=int_at_least(2), default=None,
                       help=f"order of the first factorization (default {DEFAULT_ORDER}; a factorized project keeps "
                       "its order)")
    serve.add_argument("--core-size", type=int_at_least(1), default=None, metavar="N",
                       help="core size of the batch runs (first factorization, refreshes; default: the engine's)")
    serve.add_argument("--seed", type=int_at_least(0), default=DEFAULT_SEED,
                       help=f"seed of the batch runs (default {DEFAULT_SEED})")
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
    serve.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (queue depth, applied, dead "
                       "letters, batch seconds, submit-to-commit latency, ...) and health checks /healthz "
                       "(liveness) and /readyz (200 once serving, 503 while starting or stopping); 0: a free port, "
                       "logged. Needs prometheus_client (pip install 'mmf_stream[metrics]')")
    serve.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST, metavar="HOST",
                       help=f"the address of the metrics server (default {DEFAULT_METRICS_HOST}; 0.0.0.0 in a "
                       "container, for the scraper and the probes)")
    serve.set_defaults(run=_serve)

    status = sub.add_parser("status", help="the service's state: queue depth, applied, ingest rate, error, "
                            "drift, refreshes, dead letters, last error")
    status.add_argument("project", help="the project")
    status.add_argument("--json", action="store_true", help="print JSON (keys include queue_depth, applied, "
                        "dead_letters)")
    status.add_argument("--queue", default=None, metavar="URL", help="the queue to measure (default: the one "
                        "the coordinator last used)")
    status.set_defaults(run=_status)

    sub_parser = sub.add_parser(
        "submit", help="queue a new class (label and mean, or label and features) for the project's coordinator",
        description="Queue a new class for 'mmf-stream serve' on PROJECT (a class store): its label and either "
        "its mean (--mean, a D-vector .npy) or instances to average (--features, n x D .npy). The message is queued "
        "when the command returns (the embedded queue: on disk; Redis: on the server, durable as its appendfsync "
        "makes it); it prints the message id. A label the project has updates that class; --remove removes it.",
    )
    sub_parser.add_argument("project", help="the project (class store written by 'mmf-stream covariance')")
    sub_parser.add_argument("--label", required=True, help="the class's label")
    sub_parser.add_argument("--mean", default=None, metavar="M.npy", help="the class mean (D values)")
    sub_parser.add_argument("--features", default=None, metavar="F.npy", help="instances of the class (n x D)")
    sub_parser.add_argument("--remove", action="store_true",
                            help="remove the class LABEL from the project (knock-out; an unknown label is "
                            "dead-lettered with the reason)")
    sub_parser.add_argument("--queue", default=None, metavar="URL",
                            help="the queue: 'embedded' (default: the project's own) or a Redis Stream, "
                            "redis://HOST:PORT/DB (also rediss://, unix://; ?stream=KEY names the stream, by "
                            "default mmf_stream:<project id>)")
    sub_parser.add_argument("--id", default=None, help="the message id (default: a new one); resubmitting an id "
                            "queues nothing new")
    sub_parser.set_defaults(run=_submit)
