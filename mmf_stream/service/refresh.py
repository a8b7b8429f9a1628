"""The state of a background refresh: a batch run on a snapshot, and the changes committed while it ran."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: niceness of the refresh process: batches in the coordinator come first on a busy machine
REFRESH_NICENESS = 10


@dataclass
class CommittedChange:
    """A committed batch, as a refresh replays it: knock-outs (placed by ``new_index``), then insertions."""

    knocked_out: list
    new_index: np.ndarray
    rows: np.ndarray
    labels: np.ndarray

    @property
    def classes(self) -> int:
        """Classes this change touches (knocked out plus inserted)."""
        return len(self.knocked_out) + int(self.labels.shape[0])


@dataclass
class BackgroundRefresh:
    """A batch run in the background on a snapshot of the store."""

    future: Future
    store_generation: int
    size: int
    invalidated: bool = False
    #: the batch run's result, once it is in
    batch: Any = None
    #: ``batch`` with the changes committed meanwhile replayed into it so far
    replayed: Any = None
    #: the changes committed since the snapshot, in order
    log: list = field(default_factory=list)
    #: log entries replayed in full; whether the next one's knock-outs are done, and its rows inserted
    done: int = 0
    knocked: bool = False
    offset: int = 0
    #: classes the log held at the previous replay step
    seen: int = 0

    @property
    def logged(self) -> int:
        """Classes the changes committed since the snapshot touch."""
        return sum(change.classes for change in self.log)


def refresh_worker_setup() -> None:
    """In the refresh process: lower priority, and die with the coordinator (Linux), so a coordinator
    killed with -9 leaves no batch run behind holding its pipes."""
    os.nice(REFRESH_NICENESS)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the coordinator died before the line above
            os._exit(0)
