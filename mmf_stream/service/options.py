"""The coordinator's settings: every default in one place (:class:`ServeOptions`).

``mmf-stream serve``'s options, :func:`~mmf_stream.service.coordinator.serve`'s
keyword arguments and :class:`ServeOptions`' fields are the same settings with
the same defaults, all taken from this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmf_stream.service.metrics import check_metrics_available
from mmf_stream.service.queues.backends import check_queue_url
from mmf_stream.service.queues.protocol import LOGGER_NAME

__all__ = ["CATCH_UP_MAX_MESSAGES", "DEFAULT_BATCH_MAX", "DEFAULT_BATCH_WAIT", "DEFAULT_CATCH_UP_FRACTION",
           "DEFAULT_METRICS_HOST", "DEFAULT_ORDER", "DEFAULT_REFRESH_DRIFT", "DEFAULT_REFRESH_GROWTH", "DEFAULT_SEED", "IDLE_WAIT",
           "INSERT_CHUNK", "LOGGER_NAME", "REPLAY_STEP", "ServeOptions"]

#: the order of a project's first factorization when ``--order`` is not given
DEFAULT_ORDER = 5
#: most messages folded in per batch
DEFAULT_BATCH_MAX = 256
#: seconds to wait for more messages after the first of a batch
DEFAULT_BATCH_WAIT = 0.2
#: re-run batch when the squared error per class exceeds the last batch run's by this fraction
DEFAULT_REFRESH_DRIFT = 0.5
#: re-run batch when the classes grew by this fraction since the last batch run (0: never)
DEFAULT_REFRESH_GROWTH = 0.05
#: a backlog of at least this fraction of the factorized classes is applied by one batch run of the whole
#: project instead of insertions (0: never). Measured at D = 512 (2 cores): insertion folds in about 80
#: classes/s, a batch run takes about 1.1 ms per class, so inserting 10% of the classes costs about as
#: long as one batch run, and the growth refresh that would follow anyway is a batch run of its own
DEFAULT_CATCH_UP_FRACTION = 0.05
#: the seed of the coordinator's batch runs (first factorization, refreshes, catch-up)
DEFAULT_SEED = 0
#: most messages one catch-up batch reads (a longer backlog is caught up in several batch runs)
CATCH_UP_MAX_MESSAGES = 20_000
#: classes per insertion: a batch is inserted this many at a time (measured: inserting 20 at a time
#: gives a clearly better factorization than 256 at once, at about the same cost per class)
INSERT_CHUNK = 32
#: classes replayed per loop step into a finished refresh (the classes that arrived while it ran), between
#: batches, beyond those the last batch added: replaying them all inside the swap commit held up the
#: batches behind it (100 classes at 20,000: the slowest commits of the latency benchmark)
REPLAY_STEP = 32
#: seconds a read waits for the first message of a batch (the loop checks for stop and refresh in between)
IDLE_WAIT = 0.25
#: the address the metrics and health checks are served on (``serve --metrics-host``): this machine only;
#: 0.0.0.0 in a container, for the scraper and the probes
DEFAULT_METRICS_HOST = "127.0.0.1"


@dataclass
class ServeOptions:
    """The coordinator's settings (see :func:`~mmf_stream.service.coordinator.serve`)."""

    order: int | None = None
    core_size: int | None = None
    queue: str | None = None
    scheduler: str | None = None
    batch_max: int = DEFAULT_BATCH_MAX
    batch_wait: float = DEFAULT_BATCH_WAIT
    refresh_drift: float = DEFAULT_REFRESH_DRIFT
    refresh_growth: float = DEFAULT_REFRESH_GROWTH
    catch_up_fraction: float = DEFAULT_CATCH_UP_FRACTION
    inline_repair: bool = False
    seed: int = DEFAULT_SEED
    #: start a new commit log at the class store's recorded queue position when the log is missing or
    #: is not the store's (``serve --rebuild-log``; the old log is kept beside it)
    rebuild_log: bool = False
    #: read the queue from its beginning when it is not the one the committed position refers to
    #: (``serve --adopt-queue``: after the operator replaced the queue on purpose)
    adopt_queue: bool = False
    #: serve Prometheus metrics and health checks on this port (0: a free one; None: none), see
    #: :mod:`mmf_stream.service.metrics`; needs prometheus_client
    metrics_port: int | None = None
    #: the address of the metrics server
    metrics_host: str = DEFAULT_METRICS_HOST

    def check(self) -> ServeOptions:
        """Raise a one-line ValueError/TypeError for a setting that cannot work."""
        for name in ("order", "core_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if self.order is not None and self.order < 2:
            raise ValueError(f"order must be at least 2, got {self.order}")
        if self.core_size is not None and self.core_size < 1:
            raise ValueError(f"core_size must be at least 1, got {self.core_size}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.batch_max, bool) or not isinstance(self.batch_max, (int, np.integer)) or self.batch_max < 1:
            raise ValueError(f"batch_max must be a positive integer, got {self.batch_max!r}")
        for name in ("batch_wait", "refresh_drift", "refresh_growth", "catch_up_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.metrics_port is not None:
            port = self.metrics_port
            if isinstance(port, bool) or not isinstance(port, (int, np.integer)) or not 0 <= port <= 65535:
                raise ValueError(f"metrics_port must be an integer from 0 to 65535, got {port!r}")
            if not isinstance(self.metrics_host, str) or not self.metrics_host.strip():
                raise ValueError(f"metrics_host must be a host name or address, got {self.metrics_host!r}")
            check_metrics_available()
        check_queue_url(self.queue)
        return self
