"""``fastipc send`` and ``fastipc recv``: one message out to an endpoint, or the messages that arrive."""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..client import connect
from ..endpoints import Endpoint, parse
from ..errors import Closed, Timeout
from ..ring import Ring
from ..server import serve
from . import _transport_rules as rules
from ._common import (
    CLIError,
    add_binary,
    add_framing,
    add_max_message,
    emit,
    non_negative_int,
    positive_int,
    seconds,
    sigterm_interrupts,
    timed_out,
)

__all__ = ["add_recv", "add_send", "cmd_recv", "cmd_send"]


# ---------------------------------------------------------------------------
# send
# ---------------------------------------------------------------------------


def add_send(sub: Any) -> None:
    """Add the ``send`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "send",
        help="send one message to an endpoint, optionally print the reply",
        description="Send MESSAGE (UTF-8) to URL: connect to a tcp or unix server, send a "
        "datagram (udp, unixgram), put it on a message queue (mq), write it to a FIFO or an "
        "inherited fd (fd://N), send it into an existing ring (shm://NAME), or queue a "
        "signal carrying it as an int (signal://PID?sig=USR1). MESSAGE '-' reads the "
        "message from stdin, to its end (bytes as they are).",
        epilog="examples:\n"
        "  fastipc send tcp://127.0.0.1:8080 'Hello from client' --nul --wait-reply\n"
        "  fastipc send mq:///jobs 'urgent' --priority 5\n"
        "  fastipc send shm://myring 'hello'\n"
        "  fastipc send 'signal://1234?sig=RTMIN+1' 42\n"
        "  fastipc send fd://1 - --framing length < msg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="where to send")
    p.add_argument(
        "message",
        metavar="MESSAGE",
        nargs="?",
        help="the message (sent as UTF-8); '-': read it from stdin (binary-safe)",
    )
    p.add_argument(
        "--file",
        metavar="PATH",
        help="send the contents of PATH as the message (binary-safe), instead of MESSAGE",
    )
    add_framing(p)
    p.add_argument(
        "--nul", action="store_true", help="append a NUL byte, as the C clients of the examples do"
    )
    p.add_argument(
        "--priority",
        type=non_negative_int,
        metavar="N",
        help="message priority (mq only; higher is received first; default 0)",
    )
    p.add_argument(
        "--wait-reply",
        action="store_true",
        help="wait for one reply and print it (mq: the URL's ?reply=/QUEUE names the queue "
        "it comes back on; the server's own ?reply= decides where it answers)",
    )
    until = p.add_mutually_exclusive_group()
    until.add_argument(
        "--until-eof",
        action="store_true",
        help="with --wait-reply on tcp/unix: print every reply until the server closes",
    )
    until.add_argument(
        "--idle",
        type=seconds,
        metavar="S",
        help="with --wait-reply: print every reply until none comes for S seconds",
    )
    p.add_argument(
        "--keep-open",
        action="store_true",
        help="tcp/unix: do not half-close after sending (by default the server sees end of "
        "stream after the message, so one that reads until EOF answers); refused on other "
        "endpoints, which send no half-close",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help="give up (exit status 1) after S seconds connecting, sending or awaiting the reply",
    )
    add_binary(p, "the reply")
    p.set_defaults(run=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    """Send one message; print the reply with --wait-reply."""
    if (args.message is None) == (args.file is None):
        raise CLIError("give the message as MESSAGE ('-' for stdin) or --file PATH, one of them")
    if (args.until_eof or args.idle is not None) and not args.wait_reply:
        raise CLIError("--until-eof and --idle go with --wait-reply")
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                body = f.read()
        except OSError as exc:
            raise CLIError(f"--file {args.file}: {exc.strerror}") from None
    elif args.message == "-":
        if sys.stdin is None:  # fd 0 closed (cmd <&-)
            raise CLIError("stdin is closed: no message to read for MESSAGE '-'")
        body = sys.stdin.buffer.read()
    else:
        body = os.fsencode(args.message)
    data = body + (b"\0" if args.nul else b"")
    ep = parse(args.url)
    rules.check_message_options(ep, args)
    rules.check_send(ep, args)
    try:
        if ep.scheme == "shm":
            with _open_ring(ep) as ring:
                ring.send(data, timeout=args.timeout)
            return 0
        with connect(args.url, framing=rules.framing(args), timeout=args.timeout) as client:
            client.send(data, timeout=args.timeout, **rules.send_options(ep, args))
            if rules.send_half_closes(ep) and not args.keep_open:
                client.shutdown("write")  # the peer sees the end: one reading to EOF answers
            if args.wait_reply:
                _print_replies(args, client)
    except Timeout:
        raise timed_out(args.url, args.timeout, "could not send to") from None
    return 0


def _print_replies(args: argparse.Namespace, client: Any) -> None:
    """The first reply; with --until-eof every one until Closed, with --idle S until quiet."""
    many = args.until_eof or args.idle is not None
    wait = args.idle if args.idle is not None else args.timeout
    got = 0
    while True:
        try:
            answer = client.recv(timeout=wait if got else args.timeout)
        except Closed:
            if got or many:
                return
            raise CLIError(
                f"{args.url}: the server closed the connection without a reply"
            ) from None
        except Timeout:
            if got and args.idle is not None:
                return  # quiet for --idle seconds: done
            raise timed_out(args.url, args.timeout, "no reply from") from None
        emit(answer, args.binary, args)
        got += 1
        if not many:
            return


# ---------------------------------------------------------------------------
# recv
# ---------------------------------------------------------------------------


def add_recv(sub: Any) -> None:
    """Add the ``recv`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "recv",
        help="print the messages that arrive at an endpoint",
        description="Receive from URL and print each message: tcp/unix connect and print what "
        "arrives until the server closes; udp/unixgram bind and print the datagrams; fifo "
        "creates the FIFO and reads it; mq receives from the queue (creating it if needed); "
        "fd://N reads an inherited fd (e.g. fd://0 in a pipeline) until end of file; "
        "signal://self?sig=USR1,RTMIN+1 prints each signal as 'SIGNAL VALUE pid=P uid=U'; "
        "shm://NAME receives from the ring (created, and removed at the end unless messages "
        "still wait in it, when the URL gives ?capacity=BYTES and it does not exist). "
        "SIGINT/SIGTERM end it with status 0, once the message it took is printed (a "
        "second signal ends it at once).",
        epilog="examples:\n"
        "  fastipc recv tcp://127.0.0.1:8080\n"
        "  fastipc recv udp://0.0.0.0:5000 --count 1 --timeout 10\n"
        "  producer | fastipc recv fd://0 --framing length\n"
        "  fastipc recv 'signal://self?sig=USR1,RTMIN+1'\n"
        "  fastipc recv 'shm://myring?capacity=65536'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="where to receive from")
    p.add_argument(
        "--count", type=positive_int, metavar="N", help="stop after N messages (exit status 0)"
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help="fail (exit status 1, 'timed out') when no message arrives within S seconds "
        "(counted afresh for each message)",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="count messages and bytes on stderr: a line updating in place on a terminal, "
        "and a summary when recv ends (Ctrl-C included)",
    )
    add_framing(p)
    add_max_message(p)
    add_binary(p, "messages")
    p.set_defaults(run=cmd_recv)


class _Tally:
    """``recv --progress``: messages and bytes so far, on stderr."""

    #: Seconds between updates of the line on a terminal (redrawing it per
    #: message would cost more than a fast sender's messages).
    EVERY = 0.2

    def __init__(self, on: bool) -> None:
        self.on = on
        self.tty = on and sys.stderr.isatty()
        self.count = 0
        self.nbytes = 0
        self.start = time.monotonic()
        self._shown = 0.0

    def add(self, nbytes: int) -> None:
        self.count += 1
        self.nbytes += nbytes
        if self.tty:
            now = time.monotonic()
            if now - self._shown >= self.EVERY:
                self._shown = now
                sys.stderr.write(f"\r\033[K{self._line(now)}")
                sys.stderr.flush()

    def _line(self, now: float) -> str:
        spent = max(now - self.start, 1e-9)
        return (
            f"{self.count} message{'' if self.count == 1 else 's'}, {self.nbytes} bytes "
            f"in {spent:.1f} s "
            f"({self.count / spent:.0f} msg/s)"
        )

    def done(self) -> None:
        if self.on:
            clear = "\r\033[K" if self.tty else ""
            sys.stderr.write(f"{clear}fastipc: received {self._line(time.monotonic())}\n")
            sys.stderr.flush()


_T = TypeVar("_T")

#: Seconds one receive waits at a time while :class:`_Deferred` holds signals
#: back: how late after Ctrl-C an idle recv ends.
_SLICE = 0.05


class _Deferred:
    """SIGINT and SIGTERM while recv receives and prints: a message taken is printed first.

    A receive takes its message off the ring, queue or stream for good: a
    KeyboardInterrupt raised between its return and the end of printing the
    message would drop it, silently (exit status 0). Inside :meth:`installed`
    a signal only sets ``pending`` (a second one raises at once, for a stdout
    that never drains); :meth:`receive` waits in slices of ``_SLICE`` seconds
    and raises KeyboardInterrupt between messages.
    """

    def __init__(self) -> None:
        self.pending = False

    def _handler(self, signum: int, frame: object) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # no handler can be set here: signals reach the main thread
            return
        signos = (signal.SIGINT, signal.SIGTERM)
        previous = [signal.signal(signo, self._handler) for signo in signos]
        try:
            yield
        finally:
            for signo, handler in zip(signos, previous):
                signal.signal(signo, handler)

    def receive(self, recv: Callable[..., _T], timeout: float | None) -> _T:
        """``recv(timeout=...)`` in slices: its message, Timeout past ``timeout``, or
        KeyboardInterrupt once a signal is pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.pending:
                raise KeyboardInterrupt
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            try:
                return recv(timeout=max(left, 0.0))
            except Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


def cmd_recv(args: argparse.Namespace) -> int:
    """Receive and print messages until EOF, --count, or a signal."""
    ep = parse(args.url)
    rules.check_own_signals(ep, "recv")
    rules.check_message_options(ep, args)
    args.tally = _Tally(args.progress)
    with sigterm_interrupts():
        try:
            if ep.scheme in rules.RECV_BY_CONNECTING:
                _recv_connected(args, ep.scheme)
            elif ep.scheme in rules.RECV_BY_BINDING:
                _recv_bound(args)
            elif ep.scheme == "shm":
                _recv_ring(args, ep)
            else:
                raise CLIError(f"recv does not support {ep.scheme}:// endpoints")
        except KeyboardInterrupt:
            pass
        finally:
            args.tally.done()
    return 0


def _want_more(args: argparse.Namespace, received: int) -> bool:
    return args.count is None or received < args.count


def _print_until_closed(
    args: argparse.Namespace, recv: Callable[..., bytes], what_timed_out: str
) -> None:
    """Print what ``recv`` returns until Closed or ``--count``; CLIError on ``--timeout``."""
    received = 0
    stop = _Deferred()
    with stop.installed():
        while _want_more(args, received):
            try:
                data = stop.receive(recv, args.timeout)
            except Closed:
                return
            except Timeout:
                raise timed_out(args.url, args.timeout, what_timed_out) from None
            args.tally.add(len(data))  # before printing: it was received, whatever comes next
            emit(data, args.binary, args)
            received += 1


def _recv_connected(args: argparse.Namespace, scheme: str) -> None:
    kw: dict[str, Any] = {"timeout": args.timeout, "max_message": args.max_message}
    rules.recv_framing(kw, scheme, args)
    with connect(args.url, **kw) as client:
        _print_until_closed(args, client.recv, "nothing arrived from")


def _recv_bound(args: argparse.Namespace) -> None:
    arrived: queue.Queue[tuple[bytes, int]] = queue.Queue()

    def handler(message: bytes, peer: Any) -> None:
        arrived.put((rules.recv_text(message, peer, args.binary), len(message)))

    kw: dict[str, Any] = {"framing": rules.framing(args)}
    if args.max_message is not None:
        kw["max_message"] = args.max_message

    def take(timeout: float | None) -> tuple[bytes, int]:
        try:
            return arrived.get(timeout=timeout)
        except queue.Empty:
            raise Timeout("nothing arrived") from None

    received = 0
    try:
        with serve(args.url, handler, **kw) as srv:
            srv.start()
            print(f"fastipc: receiving on {srv.address}", file=sys.stderr, flush=True)
            received = 0
            stop = _Deferred()
            with stop.installed():
                try:
                    while _want_more(args, received):
                        try:
                            data, size = stop.receive(take, args.timeout)
                        except Timeout:
                            raise timed_out(
                                srv.address, args.timeout, "nothing arrived at"
                            ) from None
                        args.tally.add(size)
                        emit(data, args.binary, args)
                        received += 1
                except KeyboardInterrupt:
                    # What the server took (a FIFO's bytes, a datagram) is printed, not dropped.
                    srv.close()
                    while _want_more(args, received) and not arrived.empty():
                        data, size = arrived.get_nowait()
                        args.tally.add(size)
                        emit(data, args.binary, args)
                        received += 1
                    raise
    finally:
        # Past --count: the server read them (a FIFO is read in whole pipe
        # chunks, several frames at a time) and nothing can put them back.
        left = arrived.qsize()
        if left:
            reached = args.count is not None and received >= args.count
            when = f"past --count {args.count}" if reached else "as recv stopped"
            print(
                f"fastipc: {left} more message{'s' if left > 1 else ''} arrived {when} "
                f"and {'were' if left > 1 else 'was'} not printed",
                file=sys.stderr,
                flush=True,
            )


# ---------------------------------------------------------------------------
# rings (shm://NAME), for both verbs
# ---------------------------------------------------------------------------


def _open_ring(ep: Endpoint) -> Ring:
    """``Ring.open`` of an ``shm://NAME`` endpoint; CLIError naming it if there is none."""
    assert ep.name is not None
    try:
        return Ring.open(ep.name)
    except FileNotFoundError:
        raise CLIError(f"shm://{ep.name}: no such ring") from None


def _recv_ring(args: argparse.Namespace, ep: Endpoint) -> None:
    assert ep.name is not None
    name = ep.name
    created = False
    capacity = ep.capacity
    try:
        ring = _open_ring(ep)
    except CLIError:
        if capacity is None:
            raise
        mode = 0o600 if ep.mode is None else ep.mode
        ring = Ring.create(name, capacity, mode=mode)
        created = True
    try:
        _print_until_closed(args, ring.recv, "nothing arrived in")
    finally:
        try:
            if created:
                _remove_if_empty(ring, f"shm://{name}")
        finally:
            ring.close()


def _remove_if_empty(ring: Ring, url: str) -> None:
    """Remove the ring recv made, unless messages still wait in it: keep it, and say so.

    Once removed, what waits in it could never be received again (the
    senders holding it open would not know), and nothing would show the loss.
    """
    held = len(ring)
    if held:
        print(
            f"fastipc: note: {url}: not removed: {held} "
            f"{'message still waits' if held == 1 else 'messages still wait'} in it "
            "(fastipc rm removes it)",
            file=sys.stderr,
            flush=True,
        )
        return
    ring.unlink()
    # Senders still holding the removed ring open now get Closed, not a send
    # nobody will receive; one that came between the look and the unlink is
    # counted here, not lost silently.
    ring.shutdown()
    late = len(ring)
    if late:
        print(
            f"fastipc: warning: {url}: {late} "
            f"{'message' if late == 1 else 'messages'} came as the ring was removed "
            "and will not be received",
            file=sys.stderr,
            flush=True,
        )
