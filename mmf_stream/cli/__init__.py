"""The ``mmf-stream`` command line: the parser and ``main``; each group of subcommands is a module here
(:mod:`~mmf_stream.cli.matrices`, :mod:`~mmf_stream.cli.show`, :mod:`~mmf_stream.cli.service`,
:mod:`~mmf_stream.cli.warmup`).

``mmf-stream warmup`` compiles (and numba caches on disk) every kernel ahead of
the first real run: use it in install steps and Dask worker images.

Every subcommand turns bad input into a one-line message on stderr and exit
status 2; it never prints a traceback for a user error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmf_stream.cli import matrices, service, show, warmup
from mmf_stream.common.formats import one_line

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``mmf-stream`` parser: every subcommand, in the order ``--help`` lists them."""
    parser = _Parser(prog="mmf-stream", description="Multiresolution matrix factorization of symmetric matrices.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    matrices.add_commands(sub)
    show.add_commands(sub)
    service.add_commands(sub)
    warmup.add_commands(sub)
    return parser


def _version() -> str:
    from mmf_stream.common.version import __version__

    return __version__


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mmf-stream: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    import os
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warnings
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        print(f"mmf-stream: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("mmf-stream: error: not enough memory for this input", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mmf-stream: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug, not bad input: still one line unless debugging
        if os.environ.get("MMF_STREAM_DEBUG"):
            raise
        print(f"mmf-stream: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(set MMF_STREAM_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous

