"""What the verbs share: their error and its one-line text, argument types, output, logging, signals."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = [
    "CLIError",
    "Runner",
    "add_binary",
    "add_framing",
    "add_max_message",
    "as_text",
    "describe",
    "emit",
    "interrupt",
    "log",
    "non_negative_int",
    "positive_int",
    "seconds",
    "setup_logging",
    "sigterm_interrupts",
    "timed_out",
]

#: A verb's runner: takes the parsed arguments, returns the exit status.
Runner = Callable[[argparse.Namespace], int]

#: The CLI's own log lines (serve's "message from ..."), under the ``fastipc`` logger.
log = logging.getLogger("fastipc.cli")
_log_handler: logging.Handler | None = None


class CLIError(Exception):
    """A failure to report as one line on stderr with a non-zero exit status."""


# ---------------------------------------------------------------------------
# argument types and options
# ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``0x`` and ``0o`` prefixes allowed)."""
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    return _whole_number(text, 0, "0 or more")


def _whole_number(text: str, low: int, wanted: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def add_framing(p: argparse.ArgumentParser) -> None:
    """``--framing raw|length``."""
    p.add_argument(
        "--framing",
        choices=["raw", "length"],
        default="raw",
        help="tcp/unix framing: raw (default; what one read returns is one message: "
        "what nc, socat and C peers speak) or length (fastipc's 8-byte header)",
    )


def add_max_message(p: argparse.ArgumentParser) -> None:
    """``--max-message BYTES``."""
    p.add_argument(
        "--max-message",
        type=positive_int,
        metavar="BYTES",
        help="largest message accepted (default 64 MiB)",
    )


def add_binary(p: argparse.ArgumentParser, what: str) -> None:
    """``--binary``: write ``what`` to stdout as bytes instead of lines of text."""
    p.add_argument(
        "--binary",
        action="store_true",
        help=f"write {what} to stdout as they are (default: one per line as UTF-8 text, "
        "invalid bytes replaced, trailing NULs dropped)",
    )


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------


def as_text(data: bytes) -> str:
    """A message as the CLI prints it: UTF-8, invalid bytes replaced, trailing NULs dropped."""
    return bytes(data).rstrip(b"\0").decode("utf-8", "replace")


def emit(data: bytes, binary: bool) -> None:
    """Print one received message on stdout (a line of text, or the bytes as they are)."""
    if binary:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(as_text(data) + "\n")
        sys.stdout.flush()


def describe(exc: BaseException) -> str:
    """An exception as one line: ``NAME: reason`` for OS errors about a file or endpoint."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def timed_out(url: str, timeout: float | None, what: str) -> CLIError:
    """The error for a timeout: ``timed out: WHAT URL within S s``."""
    return CLIError(f"timed out: {what} {url} within {timeout:g} s")


def setup_logging(quiet: bool) -> None:
    """Send the ``fastipc`` loggers (server core and CLI) to stderr, INFO unless quiet."""
    global _log_handler
    root = logging.getLogger("fastipc")
    if _log_handler is not None:
        root.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler(sys.stderr)
    _log_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(_log_handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


# ---------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------


def interrupt(signum: int, frame: object) -> None:
    """A signal handler that ends the run as Ctrl-C does."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (like SIGINT) in the main thread while the block runs."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
