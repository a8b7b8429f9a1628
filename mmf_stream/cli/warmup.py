"""``mmf-stream warmup``: compile and cache every numba kernel ahead of the first real run."""

from __future__ import annotations

import argparse
import sys

from mmf_stream.cli.arguments import DENSE_KERNEL, FACTORED_KERNEL, kernels_cached


def _warmup(args: argparse.Namespace) -> int:
    from mmf_stream.warmup import warm_up

    if not args.quiet and not (kernels_cached(DENSE_KERNEL) and kernels_cached(FACTORED_KERNEL)):
        print("mmf-stream: compiling the numba kernels of every engine (about a minute; numba caches them on "
              "disk, so later runs start at once)", file=sys.stderr, flush=True)
    seconds = warm_up()
    if not args.quiet:
        from mmf_stream.engine import kernels

        folder = getattr(getattr(kernels.apply_rotations, "_cache", None), "_cache_path", None)  # numba internals
        where = f" in {folder}" if isinstance(folder, str) else ""
        print(f"warm-up done in {seconds:.1f} s: the numba kernels are compiled and cached{where}")
    return 0


def add_commands(sub) -> None:
    """Add ``warmup`` to the ``mmf-stream`` subparsers ``sub``."""
    warm = sub.add_parser(
        "warmup", help="compile and cache the numba kernels now (for install steps and Dask worker images)",
        description="Compile every numba kernel the engines use (dense and factored, greedy and staged "
        "factorization, insertion, the class covariance pass) by factoring tiny built-in problems, and print how "
        "long it took. numba caches compiled kernels on disk (beside the installed package, or in "
        "NUMBA_CACHE_DIR), so run it once in an install step or when building a Dask worker image: the first "
        "real run then starts at once instead of compiling for about a minute.",
    )
    warm.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    warm.set_defaults(run=_warmup)
