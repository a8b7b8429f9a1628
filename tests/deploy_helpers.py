"""Shared by the deployment tests: a command line of deploy/ parsed by the real ``mmf-stream`` parser.

A Compose ``command`` or a Kubernetes container's ``command`` + ``args`` that
runs ``mmf-stream SUBCOMMAND ...`` is parsed by :func:`mmf_stream.cli.build_parser`
with abbreviations turned off, so an option that the command line no longer has
(renamed, removed, or only a prefix of a real one) fails the test instead of
being accepted as an abbreviation or ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import io


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The real parser of ``mmf-stream NAME``, taking no abbreviated options."""
    from mmf_stream.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sub = subparsers.choices[name]
    sub.allow_abbrev = False
    return sub


def parse_command(command: list[str]) -> argparse.Namespace:
    """``command`` (``["mmf-stream", SUBCOMMAND, ...]``) parsed as the ``mmf-stream`` command parses it.

    Raises
    ------
    ValueError
        The command is not ``mmf-stream ...``, or the parser rejects it (the parser's one-line message).
    """
    command = [str(word) for word in command]
    if len(command) < 2 or command[0] != "mmf-stream":
        raise ValueError(f"not an mmf-stream command: {command}")
    parser = subcommand_parser(command[1])
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(command[2:])
    except SystemExit as exit_:
        raise ValueError(err.getvalue().strip() or f"exit {exit_.code}") from None
    args.command = command[1]
    return args
