"""What the subcommands share: argparse types, the progress bar, the first-run compile notice."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mmf_stream.common.progress import progress


def progress_bar(total: int, desc: str, quiet: bool):
    """The shared progress bar (levels done, rate, ETA); silent when not a terminal."""
    return progress(total, desc, unit="level", quiet=quiet)


def quiet_dask_logs() -> None:
    """Dask's own log lines (reconnect attempts, tracebacks of a lost scheduler) stay off the
    CLI's stderr: a failure is reported as one line. MMF_STREAM_DEBUG=1 keeps them."""
    import logging
    import os

    if not os.environ.get("MMF_STREAM_DEBUG"):
        for name in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def lock_timeout_option(parser: argparse.ArgumentParser) -> None:
    from mmf_stream.store.class_store import LOCK_TIMEOUT

    parser.add_argument(
        "--lock-timeout", type=float, default=LOCK_TIMEOUT, metavar="SECONDS",
        help=f"wait at most this long for another writer of the class store (default {LOCK_TIMEOUT:g})",
    )


def int_at_least(lowest: int):
    """An argparse type: an integer >= ``lowest`` (argparse names the option on error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    parse.__name__ = f"integer >= {lowest}"
    return parse


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


non_negative.__name__ = "number >= 0"


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


positive.__name__ = "number > 0"


def storage_option(text: str) -> tuple[str, Any]:
    """An argparse type: ``KEY=VALUE``, one of an fsspec filesystem's keyword arguments. VALUE is read
    as JSON where it is JSON (``anon=true``, ``client_kwargs={"region_name": "eu-west-1"}``, numbers),
    else kept as text (``endpoint_url=http://127.0.0.1:9000``)."""
    import json

    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. endpoint_url=http://HOST:PORT), got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


storage_option.__name__ = "KEY=VALUE"


#: a kernel that every dense run compiles, and one that every factored (class means) run does (staged dense
#: runs too): if its cache is missing, so are most others
DENSE_KERNEL = "compression._rebuild_dense"


FACTORED_KERNEL = "gram_kernels.rebuild_from_gram"
#: the class covariance's kernel (per-class sums of feature rows)
COVARIANCE_KERNEL = "class_covariance.group_sums"


def kernels_cached(module: str = DENSE_KERNEL) -> bool:
    """Whether numba's on-disk cache already holds the kernels of ``mmf_stream.<module>``."""
    import os

    import mmf_stream

    folder = Path(os.environ.get("NUMBA_CACHE_DIR") or Path(mmf_stream.__file__).parent)
    return folder.is_dir() and any(folder.rglob(f"{module}[.-]*.nbi"))


def compile_notice(quiet: bool, module: str = DENSE_KERNEL) -> None:
    """Say once, on the first run in an environment, that numba is compiling the kernels."""
    if quiet:
        return
    if not kernels_cached(module):
        print("mmf-stream: compiling the numba kernels (first run in this environment only; "
              "about a minute, then cached; run 'mmf-stream warmup' to do it ahead)", file=sys.stderr, flush=True)
