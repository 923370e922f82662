"""The ``fastipc`` command: the parser and entry point; each group of verbs is a module here.

- :mod:`.serve`: ``serve``; :mod:`.sendrecv`: ``send`` and ``recv``;
  :mod:`.objects`: ``ls`` and ``rm``; :mod:`.info`: ``info``; :mod:`.bench`: ``bench``;
  :mod:`.bridge`: ``bridge`` (to NATS).
- :mod:`._common`: what the verbs share (their error, argument types, output, logging, signals).
- :mod:`._transport_rules`: every scheme-specific rule the verbs apply.

Nothing in the library imports this package; ``python -m fastipc`` and the
``fastipc`` script call :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._version import __version__
from ..errors import FastIPCError
from . import bench, bridge, info, objects, sendrecv, serve
from ._common import CLIError, Runner, describe

__all__ = ["build_parser", "main"]

#: Every verb's parser builder, in help order.
_VERBS: list[Callable[[Any], None]] = [
    serve.add_parser,
    sendrecv.add_send,
    sendrecv.add_recv,
    objects.add_ls,
    objects.add_rm,
    info.add_parser,
    bench.add_parser,
    bridge.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per verb."""
    parser = argparse.ArgumentParser(
        prog="fastipc", description="Fast inter-process communication on one Linux machine."
    )
    parser.add_argument("--version", action="version", version=f"fastipc {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for add in _VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastipc`` command with ``argv`` (default: sys.argv[1:]); return the exit status.

    Failures print one line, ``fastipc: error: ...``, on stderr and return
    1 (2 for usage errors, 130 after Ctrl-C); a reader of stdout gone (``fastipc
    ls | head -0``) is a quiet 1, nothing printed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner = args.run
    if sys.stdout is None and _prints(args):
        # fd 1 closed (cmd >&-): say so before a message is taken off its
        # queue or ring only to find nowhere to print it.
        print("fastipc: error: stdout is closed: nowhere to print to", file=sys.stderr)
        return 1
    try:
        status = run(args)
        if sys.stdout is not None:
            # What print() left in the buffer (stdout not a terminal) goes now: a
            # reader gone meets EPIPE here, not in the interpreter's exit flush
            # (exit status 120 and "Exception ignored ... BrokenPipeError").
            sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        print("fastipc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): a quiet exit, status 1, for
        # every verb; no traceback, nothing on stderr.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter exit quiet
        except OSError:
            pass
        return 1
    except (
        CLIError,
        FastIPCError,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        ImportError,
    ) as exc:
        print(f"fastipc: error: {describe(exc)}", file=sys.stderr)
        return 1


def _prints(args: argparse.Namespace) -> bool:
    """Whether the verb of ``args`` writes to stdout."""
    if args.verb == "send":
        return bool(args.wait_reply)
    if args.verb == "rm":
        return bool(args.verbose)
    return args.verb in ("recv", "ls", "info", "bench")
