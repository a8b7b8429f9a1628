"""Test-only fault hooks: every environment variable that makes a process crash or pause on purpose.

Crash-safety tests run a real writer (``mmf-stream covariance``, ``serve``, a
``Store`` append, ``Factorization.save``) in a subprocess with one of these
variables set, and check what a reader finds afterwards. Nothing here does
anything unless its variable is set; production code only ever calls the
functions below at named points.

======================================  ==============================================================
variable                                effect
======================================  ==============================================================
``MMF_STREAM_CRASH_AT=POINT``           :func:`crash_point` ``(POINT)`` exits at once with status
                                        :data:`CRASH_EXIT_STATUS` (no cleanup, like kill -9)
``MMF_STREAM_PAUSE_AT=POINT``           :func:`pause_point` ``(POINT)`` sleeps
                                        ``MMF_STREAM_PAUSE_SECONDS`` seconds (default 1): a test
                                        kills or races the writer there
``MMF_STREAM_NO_EXCHANGE=1``            :func:`exchange_disabled` is true: directory replacement
                                        takes the two-rename path instead of ``renameat2``
``MMF_STREAM_SERVICE_PAUSE=SECONDS``    :func:`batch_pause` sleeps inside each service batch, between
                                        writing the factorization and the classes
======================================  ==============================================================

Points (grep for the string to find where they are): ``journal-written``,
``journal-named``, ``array-created-NAME``, ``mid-apply`` (class store appends);
``save-between-renames`` (replacing a directory); ``service-prepared``,
``service-store-committed``, ``service-committed`` (a service batch's commit).
"""

from __future__ import annotations

import os
import time

#: exit at once at the named point
CRASH_ENV = "MMF_STREAM_CRASH_AT"
#: the status a crash point exits with
CRASH_EXIT_STATUS = 17
#: pause at the named point, for PAUSE_SECONDS_ENV seconds
PAUSE_ENV = "MMF_STREAM_PAUSE_AT"
PAUSE_SECONDS_ENV = "MMF_STREAM_PAUSE_SECONDS"
#: never use the one-step directory exchange (exercise the two-rename path)
NO_EXCHANGE_ENV = "MMF_STREAM_NO_EXCHANGE"
#: seconds to pause inside each service batch (between writing the factorization and the classes)
SERVICE_PAUSE_ENV = "MMF_STREAM_SERVICE_PAUSE"


def crash_point(name: str) -> None:
    """Exit at once (status :data:`CRASH_EXIT_STATUS`) if ``MMF_STREAM_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT_STATUS)


def pause_point(name: str) -> None:
    """A crash point that also pauses when ``MMF_STREAM_PAUSE_AT`` names it."""
    crash_point(name)
    if os.environ.get(PAUSE_ENV) == name:
        time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "1")))


def exchange_disabled() -> bool:
    """Whether ``MMF_STREAM_NO_EXCHANGE`` turns the one-step directory exchange off."""
    return bool(os.environ.get(NO_EXCHANGE_ENV))


def batch_pause() -> None:
    """Sleep ``MMF_STREAM_SERVICE_PAUSE`` seconds (inside a service batch), if set."""
    pause = os.environ.get(SERVICE_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))
