"""One progress bar for every long piece of work (CLI and library alike).

The bar is tqdm's, written to stderr, and only on a terminal: when stderr is
not a TTY (pipes, CI, log files) it stays silent, so scripted output is clean.
``quiet=True`` silences it on a terminal too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: the environment variable that turns every bar off (``MMF_STREAM_QUIET=1``)
QUIET_ENV = "MMF_STREAM_QUIET"


def is_interactive() -> bool:
    """Whether stderr is a terminal (bars and one-off notices are shown there only)."""
    import os

    if os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(total: int | None, desc: str, *, unit: str = "it", quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar; yields ``update(n)`` that advances it by ``n``.

    Parameters
    ----------
    total : int or None
        Units of work expected (None: unknown, the bar counts up).
    desc : str
        Short description shown before the bar ("factorize", "covariance").
    unit : str
        Name of one unit ("level", "row", "class").
    quiet : bool
        Never show the bar.
    """
    from tqdm import tqdm

    disable = quiet or not is_interactive()
    with tqdm(
        total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, leave=False,
        unit_scale=unit in ("row", "rows"), dynamic_ncols=True,
    ) as bar:
        yield bar.update

