"""What the verbs share: their error and its one-line text, argument types, output, logging, signals."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
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
    "printable",
    "seconds",
    "setup_logging",
    "sigterm_interrupts",
    "timed_out",
    "write_all",
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


#: The longest --timeout (and other seconds) taken: about 31 years (the library
#: takes more, as forever; a command line has no use for it).
SECONDS_MAX = 1e9


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds from 0 to ``SECONDS_MAX``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= SECONDS_MAX:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds from 0 to {SECONDS_MAX:.0f}, got {text!r}"
        )
    return value


def add_framing(p: argparse.ArgumentParser) -> None:
    """``--framing raw|length``."""
    p.add_argument(
        "--framing",
        choices=["raw", "length"],
        help="stream framing (tcp, unix, fd): raw (default; what one read returns is one "
        "message: what nc, socat and C peers speak) or length (fastipc's 8-byte header); "
        "refused on other endpoints, which keep messages whole",
    )


def add_max_message(p: argparse.ArgumentParser) -> None:
    """``--max-message BYTES``."""
    p.add_argument(
        "--max-message",
        type=positive_int,
        metavar="BYTES",
        help="largest message accepted (default 64 MiB); refused on shm:// and mq://, "
        "whose largest message is the ring's ?capacity= or the queue's ?msgsize=, "
        "and on signal://",
    )


def add_binary(p: argparse.ArgumentParser, what: str) -> None:
    """``--binary``, ``--json``, ``--null``: how ``what`` is written to stdout."""
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--binary",
        action="store_true",
        help=f"write {what} to stdout as they are (default: one per line as UTF-8 text, "
        "bytes that are not UTF-8 and control characters escaped, trailing NULs and newline dropped)",
    )
    out.add_argument(
        "--json",
        action="store_true",
        help=f"write {what} as one JSON string per line (newlines inside a message stay "
        "inside its string; bytes that are not UTF-8 come out as \\udcXX escapes, "
        "surrogateescape)",
    )
    out.add_argument(
        "--null",
        action="store_true",
        help=f"write {what} as they are, each followed by a NUL byte (for xargs -0)",
    )


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------


#: Control characters (C0, DEL, C1) as the CLI shows them: a peer's
#: ``\x1b[2J`` must not clear the operator's terminal.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROLS.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x5C: "\\\\"})
# Bytes that are not UTF-8, decoded with surrogateescape, as \xNN.
_CONTROLS.update({0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)})


def as_text(data: bytes) -> str:
    """A message as the CLI prints it: one line of UTF-8 text.

    Trailing NULs and one trailing newline are dropped (the line ends the
    message), bytes that are not UTF-8 are shown as ``\\xNN``, control
    characters (newlines inside the message included) as escapes, and a
    backslash as ``\\\\``, so what is printed says exactly what came.
    """
    raw = bytes(data).rstrip(b"\0")
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    return raw.decode("utf-8", "surrogateescape").translate(_CONTROLS)


def printable(text: str) -> str:
    """A name (a file name, a queue name) as the CLI prints it in a table: escaped as
    :func:`as_text` escapes a message.

    Anyone can make a file in /dev/shm or a queue whose name holds an escape
    sequence, a newline (a made-up row) or bytes that are not UTF-8 (which a
    strict UTF-8 stdout cannot even encode): such a name must neither drive
    the terminal nor fail the whole listing.
    """
    return text.translate(_CONTROLS)


def emit(data: bytes, binary: bool, args: argparse.Namespace | None = None) -> None:
    """Print one received message on stdout: a line of text, the bytes as they are,
    or as ``args`` asks (``--json``: a JSON string per line; ``--null``: bytes then NUL)."""
    if args is not None and getattr(args, "json", False):
        out = (json.dumps(data.decode("utf-8", "surrogateescape")) + "\n").encode()
    elif args is not None and getattr(args, "null", False):
        out = data + b"\0"
    elif binary:
        out = data
    else:
        text = as_text(data) + "\n"
        # Never an error after the message was taken: what the terminal's
        # encoding cannot show is escaped (an ASCII stdout and 'café').
        encoding = sys.stdout.encoding or "utf-8"
        try:
            out = text.encode(encoding, sys.stdout.errors or "strict")
        except UnicodeEncodeError:
            out = text.encode(encoding, "backslashreplace")
    write_all(out)


def write_all(data: bytes) -> None:
    """Write ``data`` to stdout, all of it, and flush.

    An unbuffered stdout (``python -u``, ``PYTHONUNBUFFERED``) is a raw file:
    its ``write`` stops short when a signal interrupts it in a full pipe, and
    the text layer drops the rest without a word. Here the rest is written.
    """
    sys.stdout.flush()  # text printed before goes first
    out = sys.stdout.buffer
    out.flush()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (io.UnsupportedOperation too)
        out.write(data)
        out.flush()
        return
    # Straight to the fd: a buffered stdout set non-blocking (by a parent sharing
    # the pipe) raised BlockingIOError midway, its count of what went unusable.
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:  # full: wait until it takes more
            select.select([], [fd], [])
            continue
        view = view[n:]


def describe(exc: BaseException) -> str:
    """An exception as one line: ``NAME: reason`` for OS errors about a file or endpoint."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def timed_out(url: str, timeout: float | None, what: str) -> CLIError:
    """The error for a timeout: ``timed out: WHAT URL within S s``."""
    return CLIError(f"timed out: {what} {url} within {timeout:g} s")


#: What a log line may not carry as it is: control characters and bytes that
#: are not UTF-8 (a backslash stays: the message text in it is escaped already).
_LOG_UNSAFE = {c: e for c, e in _CONTROLS.items() if c != 0x5C}


class _LogFormatter(logging.Formatter):
    """Log lines with control characters escaped: a peer names itself (a unix
    client's bound path) and must not drive the terminal or forge a line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_LOG_UNSAFE)
        return super().formatMessage(record)


def setup_logging(quiet: bool) -> None:
    """Send the ``fastipc`` loggers (server core and CLI) to stderr, INFO unless quiet."""
    global _log_handler
    root = logging.getLogger("fastipc")
    if _log_handler is not None:
        root.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler(sys.stderr)
    _log_handler.setFormatter(_LogFormatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
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
