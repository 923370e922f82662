"""The ``fastipc`` command: one subcommand per verb, each a pair of functions here."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import FastIPCError

if TYPE_CHECKING:
    from .endpoints import Endpoint
    from .ring import Ring

__all__ = ["build_parser", "main"]

#: A verb's runner: takes the parsed arguments, returns the exit status.
Runner = Callable[[argparse.Namespace], int]


class CLIError(Exception):
    """A failure to report as one line on stderr with a non-zero exit status."""


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the shared-memory Ring on both backends",
        description="Measure the Ring: 64-byte msgs/s (single and batched), 1 MiB GB/s, "
        "ping-pong round trip and an idle waiter's CPU, for the native and python "
        "backends in one run, each in two fresh processes, and print one table with "
        "the native/python ratio.",
    )
    p.add_argument(
        "--quick", action="store_true", help="3 short repetitions per figure (under 20 s in all)"
    )
    p.add_argument(
        "--backend",
        choices=["both", "native", "python"],
        default="both",
        help="which backend(s) to measure (default: both)",
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="repetitions per figure and backend (default 5, --quick 3)",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="seconds per measurement (default 1.0, --quick 0.3)",
    )
    p.set_defaults(run=cmd_bench)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the Ring and Channel benchmarks and print the tables (or JSON)."""
    from .bench import BACKENDS, BenchConfig, format_table, run_benchmark
    from .bench_channel import format_rows
    from .bench_channel import rows as channel_rows

    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    cfg.backends = BACKENDS if args.backend == "both" else (args.backend,)
    if args.repeat is not None:
        if args.repeat < 1:
            raise CLIError("--repeat must be at least 1")
        cfg.repeat = args.repeat
    if args.duration is not None:
        if not 0 < args.duration <= 600:
            raise CLIError("--duration must be between 0 and 600 seconds")
        cfg.duration = args.duration

    show = sys.stderr.isatty()

    def progress(text: str) -> None:
        if show:
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()

    # SIGTERM ends the run like Ctrl-C, so the finally clauses remove every ring.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_benchmark(cfg, progress)
        progress("channel figures ...")
        channel = channel_rows(min(cfg.duration, 1.0), cfg.backends)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if show:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    if args.json:
        print(json.dumps({**report.to_json(), "channel": channel}, indent=2))
    else:
        sys.stdout.write(format_table(report))
        sys.stdout.write(
            "\nChannel (Unix stream socket, two processes; plain = a pure-Python loop)\n"
        )
        sys.stdout.write(format_rows(channel) + "\n")
    return 0


# ---------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------


def _add_info(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="version, backend and the platform limits that matter to IPC",
        description="Print fastipc's version and backend and this machine's IPC limits.",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=cmd_info)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _sysconf(name: str) -> int | None:
    try:
        value = os.sysconf(name)
    except (ValueError, OSError):
        return None
    return value if value >= 0 else None


def gather_info() -> dict[str, Any]:
    """Version, backend and platform limits as a dict (None where unknown)."""
    import fastipc

    shm: dict[str, int] | None
    try:
        st = os.statvfs("/dev/shm")
        shm = {"size": st.f_frsize * st.f_blocks, "free": st.f_frsize * st.f_bavail}
    except OSError:
        shm = None
    return {
        "version": fastipc.__version__,
        "backend": fastipc.BACKEND,
        "FASTIPC_BACKEND": os.environ.get("FASTIPC_BACKEND", "auto"),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "page_size": _sysconf("SC_PAGE_SIZE"),
        "iov_max": _sysconf("SC_IOV_MAX"),
        "somaxconn": _read_int("/proc/sys/net/core/somaxconn"),
        "somaxconn_compiled": getattr(socket, "SOMAXCONN", None),
        "mq_msg_max": _read_int("/proc/sys/fs/mqueue/msg_max"),
        "mq_msgsize_max": _read_int("/proc/sys/fs/mqueue/msgsize_max"),
        "mq_queues_max": _read_int("/proc/sys/fs/mqueue/queues_max"),
        "dev_shm": shm,
    }


def cmd_info(args: argparse.Namespace) -> int:
    """Print version, backend and platform limits."""
    info = gather_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    def show(value: Any, unit: str = "") -> str:
        return "unknown" if value is None else f"{value}{unit}"

    shm = info["dev_shm"]
    lines = [
        ("fastipc", info["version"]),
        ("backend", f"{info['backend']} (FASTIPC_BACKEND={info['FASTIPC_BACKEND']})"),
        ("python", f"{info['python']} on {info['platform']}"),
        ("page size", show(info["page_size"], " bytes")),
        ("IOV_MAX", show(info["iov_max"])),
        (
            "SOMAXCONN",
            (
                f"{show(info['somaxconn'])} (net.core.somaxconn; "
                f"socket.SOMAXCONN {show(info['somaxconn_compiled'])})"
            ),
        ),
        ("mq msg_max", show(info["mq_msg_max"], " messages per queue")),
        ("mq msgsize_max", show(info["mq_msgsize_max"], " bytes per message")),
        ("mq queues_max", show(info["mq_queues_max"])),
        (
            "/dev/shm",
            "unavailable"
            if shm is None
            else f"{shm['free'] / 2**20:.0f} MiB free of {shm['size'] / 2**20:.0f} MiB",
        ),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    return 0


# ---------------------------------------------------------------------------
# shared by serve, send and recv
# ---------------------------------------------------------------------------

_log = logging.getLogger("fastipc.cli")
_log_handler: logging.Handler | None = None

#: Longest message text a serve log line shows.
_LOG_TEXT_MAX = 1000


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _add_framing(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--framing",
        choices=["raw", "length"],
        default="raw",
        help="tcp/unix framing: raw (default; what one read returns is one message: "
        "what nc, socat and C peers speak) or length (fastipc's 8-byte header)",
    )


def _add_max_message(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-message",
        type=_positive_int,
        metavar="BYTES",
        help="largest message accepted (default 64 MiB)",
    )


def _add_binary(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--binary",
        action="store_true",
        help=f"write {what} to stdout as they are (default: one per line as UTF-8 text, "
        "invalid bytes replaced, trailing NULs dropped)",
    )


def _as_text(data: bytes) -> str:
    """A message as the CLI prints it: UTF-8, invalid bytes replaced, trailing NULs dropped."""
    return bytes(data).rstrip(b"\0").decode("utf-8", "replace")


def _emit(data: bytes, binary: bool) -> None:
    """Print one received message on stdout (a line of text, or the bytes as they are)."""
    if binary:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(_as_text(data) + "\n")
        sys.stdout.flush()


def _setup_logging(quiet: bool) -> None:
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


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (like SIGINT) in the main thread while the block runs."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _timed_out(url: str, timeout: float | None, what: str) -> CLIError:
    return CLIError(f"timed out: {what} {url} within {timeout:g} s")


# ---------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve an endpoint until SIGINT/SIGTERM: log, echo or answer each message",
        description="Bind URL (tcp, udp, unix, unixgram, mq or fifo) and serve every client at "
        "once until SIGINT or SIGTERM, which end it with exit status 0. Connects, disconnects "
        "and each message are logged on stderr; 'fastipc: serving URL' tells where once bound "
        "(with the real port when port 0 was asked).",
        epilog="examples:\n"
        "  fastipc serve tcp://127.0.0.1:8080 --echo\n"
        "  fastipc serve unix:///tmp/app.sock --reply 'Hello from server'\n"
        "  fastipc serve udp://0.0.0.0:5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="the endpoint to bind")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--echo", action="store_true", help="send each message back to its sender")
    what.add_argument(
        "--reply",
        metavar="TEXT",
        help="answer each message with TEXT (NUL-terminated when the request was, "
        "as the C examples do)",
    )
    p.add_argument(
        "--close",
        action="store_true",
        help="close each stream connection after answering its first message, as the "
        "course's one-shot servers do (for clients that read until EOF)",
    )
    _add_framing(p)
    p.add_argument(
        "--max-clients",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="stream clients served at once; more are closed at once (default 1024)",
    )
    _add_max_message(p)
    p.add_argument(
        "--max-buffered",
        type=_positive_int,
        metavar="BYTES",
        help="bytes held for all stream clients together (partial messages and queued "
        "replies); past it the client holding the most is closed "
        "(default 256 MiB, or twice --max-message if larger)",
    )
    p.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=300.0,
        metavar="S",
        help="close a stream client that completes no message for S seconds "
        "(default 300; 0: never)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="log only warnings, not every connect and message",
    )
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``args.url`` until SIGINT/SIGTERM; exit status 0 then."""
    from . import serve
    from .endpoints import parse

    ep = parse(args.url)
    answers = args.echo or args.reply is not None
    if answers and ep.scheme == "fifo":
        raise CLIError("a FIFO is one-way: its writers cannot be answered (--echo, --reply)")
    if answers and ep.scheme == "mq" and "reply" not in ep.options:
        raise CLIError("answering on a queue needs ?reply=/QUEUE in the URL (the client's too)")
    _setup_logging(args.quiet)
    reply: bytes | None = None if args.reply is None else args.reply.encode()
    echo: bool = args.echo
    close: bool = args.close
    where = [args.url]  # the bound URL, once known

    def handler(message: bytes, peer: Any) -> bytes | None:
        text = _as_text(message)
        if len(text) > _LOG_TEXT_MAX:
            text = f"{text[:_LOG_TEXT_MAX]}... ({len(message)} bytes)"
        _log.info("message from %s: %s", _peer_text(peer, where), text)
        answer: bytes | None = None
        if echo:
            answer = message
        elif reply is not None:
            answer = reply + b"\0" if message.endswith(b"\0") else reply
        if close and ep.scheme in ("tcp", "unix"):
            if answer is not None:
                peer.send(answer)
            peer.close()  # after the answer has been sent
            return None
        return answer

    with _sigterm_interrupts():
        try:
            srv = serve(
                args.url,
                handler,
                framing=args.framing,
                max_clients=args.max_clients,
                max_message=args.max_message,
                idle_timeout=args.idle_timeout or None,
                max_buffered=args.max_buffered,
            )
        except KeyboardInterrupt:
            return 0
        try:
            where[0] = srv.address
            print(f"fastipc: serving {srv.address}", file=sys.stderr, flush=True)
            srv.serve_forever()
        except KeyboardInterrupt:
            pass  # a signal before serve_forever took SIGINT/SIGTERM over
        finally:
            srv.close()
    stopped_by = getattr(srv, "stopped_by", None)
    if stopped_by is not None:
        _log.info("stopped by %s", signal.Signals(stopped_by).name)
    return 0


def _peer_text(peer: Any, url: list[str]) -> str:
    """A peer for a log line, as the server core names it; the served URL when it has no address."""
    text = str(peer.describe())
    return url[0] if text == "-" else text  # mq, fifo, unnamed unixgram senders


# ---------------------------------------------------------------------------
# send
# ---------------------------------------------------------------------------


def _add_send(sub: Any) -> None:
    p = sub.add_parser(
        "send",
        help="send one message to an endpoint, optionally print the reply",
        description="Send MESSAGE (UTF-8) to URL: connect to a tcp or unix server, send a "
        "datagram (udp, unixgram), put it on a message queue (mq), write it to a FIFO, or "
        "send it into an existing ring (shm://NAME).",
        epilog="examples:\n"
        "  fastipc send tcp://127.0.0.1:8080 'Hello from client' --nul --wait-reply\n"
        "  fastipc send mq:///jobs 'urgent' --priority 5\n"
        "  fastipc send shm://myring 'hello'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="where to send")
    p.add_argument("message", metavar="MESSAGE", help="the message (sent as UTF-8)")
    _add_framing(p)
    p.add_argument(
        "--nul", action="store_true", help="append a NUL byte, as the C clients of the examples do"
    )
    p.add_argument(
        "--priority",
        type=_non_negative_int,
        metavar="N",
        help="message priority (mq only; higher is received first; default 0)",
    )
    p.add_argument(
        "--wait-reply",
        action="store_true",
        help="wait for one reply and print it (mq: the URL's ?reply=/QUEUE names the queue "
        "it comes back on)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="give up (exit status 1) after S seconds connecting, sending or awaiting the reply",
    )
    _add_binary(p, "the reply")
    p.set_defaults(run=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    """Send one message; print the reply with --wait-reply."""
    from . import connect
    from .endpoints import parse
    from .errors import Timeout

    data = os.fsencode(args.message) + (b"\0" if args.nul else b"")
    ep = parse(args.url)
    if args.priority is not None and ep.scheme != "mq":
        raise CLIError(f"--priority applies to mq:// queues only, not {ep.scheme}://")
    if args.wait_reply and ep.scheme in ("shm", "fifo"):
        raise CLIError(f"--wait-reply: a {ep.scheme}:// endpoint carries no replies")
    if args.wait_reply and ep.scheme == "mq" and "reply" not in ep.options:
        raise CLIError(
            "--wait-reply on a queue needs ?reply=/QUEUE in the URL, naming the queue "
            "the answer comes back on"
        )
    try:
        if ep.scheme == "shm":
            with _open_ring(ep) as ring:
                ring.send(data, timeout=args.timeout)
            return 0
        with connect(args.url, framing=args.framing, timeout=args.timeout) as client:
            if ep.scheme == "mq":
                client.send(data, priority=args.priority or 0, timeout=args.timeout)
            else:
                client.send(data, timeout=args.timeout)
            if args.wait_reply:
                try:
                    answer = client.recv(timeout=args.timeout)
                except Timeout:
                    raise _timed_out(args.url, args.timeout, "no reply from") from None
                _emit(answer, args.binary)
    except Timeout:
        raise _timed_out(args.url, args.timeout, "could not send to") from None
    return 0


# ---------------------------------------------------------------------------
# recv
# ---------------------------------------------------------------------------


def _add_recv(sub: Any) -> None:
    p = sub.add_parser(
        "recv",
        help="print the messages that arrive at an endpoint",
        description="Receive from URL and print each message: tcp/unix connect and print what "
        "arrives until the server closes; udp/unixgram bind and print the datagrams; fifo "
        "creates the FIFO and reads it; mq receives from the queue (creating it if needed); "
        "shm://NAME receives from the ring (created, and removed at the end, when the URL "
        "gives ?capacity=BYTES and it does not exist). SIGINT/SIGTERM end it with status 0.",
        epilog="examples:\n"
        "  fastipc recv tcp://127.0.0.1:8080\n"
        "  fastipc recv udp://0.0.0.0:5000 --count 1 --timeout 10\n"
        "  fastipc recv 'shm://myring?capacity=65536'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="where to receive from")
    p.add_argument(
        "--count", type=_positive_int, metavar="N", help="stop after N messages (exit status 0)"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="fail (exit status 1, 'timed out') when no message arrives within S seconds "
        "(counted afresh for each message)",
    )
    _add_framing(p)
    _add_max_message(p)
    _add_binary(p, "messages")
    p.set_defaults(run=cmd_recv)


def cmd_recv(args: argparse.Namespace) -> int:
    """Receive and print messages until EOF, --count, or a signal."""
    from .endpoints import parse

    ep = parse(args.url)
    with _sigterm_interrupts():
        try:
            if ep.scheme in ("tcp", "unix", "mq"):
                _recv_connected(args, ep.scheme)
            elif ep.scheme in ("udp", "unixgram", "fifo"):
                _recv_bound(args)
            elif ep.scheme == "shm":
                _recv_ring(args, ep)
            else:
                raise CLIError(f"recv does not support {ep.scheme}:// endpoints")
        except KeyboardInterrupt:
            pass
    return 0


def _want_more(args: argparse.Namespace, received: int) -> bool:
    return args.count is None or received < args.count


def _recv_connected(args: argparse.Namespace, scheme: str) -> None:
    from . import connect
    from .errors import Closed, Timeout

    kw: dict[str, Any] = {"timeout": args.timeout, "max_message": args.max_message}
    if scheme != "mq":
        kw["framing"] = args.framing
    with connect(args.url, **kw) as client:
        received = 0
        while _want_more(args, received):
            try:
                data = client.recv(timeout=args.timeout)
            except Closed:
                return
            except Timeout:
                raise _timed_out(args.url, args.timeout, "nothing arrived from") from None
            _emit(data, args.binary)
            received += 1


def _recv_bound(args: argparse.Namespace) -> None:
    from . import serve

    arrived: queue.Queue[bytes] = queue.Queue()

    def handler(message: bytes, peer: Any) -> None:
        arrived.put(message)

    kw: dict[str, Any] = {"framing": args.framing}
    if args.max_message is not None:
        kw["max_message"] = args.max_message
    with serve(args.url, handler, **kw) as srv:
        srv.start()
        print(f"fastipc: receiving on {srv.address}", file=sys.stderr, flush=True)
        received = 0
        while _want_more(args, received):
            try:
                data = arrived.get(timeout=args.timeout)
            except queue.Empty:
                raise _timed_out(srv.address, args.timeout, "nothing arrived at") from None
            _emit(data, args.binary)
            received += 1


def _open_ring(ep: Endpoint) -> Ring:
    """``Ring.open`` of an ``shm://NAME`` endpoint; CLIError naming it if there is none."""
    from .ring import Ring

    assert ep.name is not None
    try:
        return Ring.open(ep.name)
    except FileNotFoundError:
        raise CLIError(f"shm://{ep.name}: no such ring") from None


def _recv_ring(args: argparse.Namespace, ep: Endpoint) -> None:
    from .errors import Closed, Timeout
    from .ring import Ring

    assert ep.name is not None
    name = ep.name
    created = False
    capacity = ep.options.get("capacity")
    try:
        ring = _open_ring(ep)
    except CLIError:
        if capacity is None:
            raise
        mode = int(ep.options.get("mode", "0600"), 8)
        ring = Ring.create(name, int(capacity), mode=mode)
        created = True
    try:
        received = 0
        while _want_more(args, received):
            try:
                data = ring.recv(timeout=args.timeout)
            except Closed:
                return
            except Timeout:
                raise _timed_out(args.url, args.timeout, "nothing arrived in") from None
            _emit(data, args.binary)
            received += 1
    finally:
        if created:
            ring.unlink()
        ring.close()


# ---------------------------------------------------------------------------
# ls
# ---------------------------------------------------------------------------


def _add_ls(sub: Any) -> None:
    p = sub.add_parser(
        "ls",
        help="list rings, message queues, socket files and FIFOs, with owner pid and liveness",
        description="List the fastipc rings in /dev/shm, the POSIX message queues and the Unix "
        "socket files and FIFOs that live processes of yours hold, each with its size, mode, "
        "the pids holding it and whether it is alive (a ring: mapped by a live process; a "
        "queue: open; a socket: bound by a live process; a FIFO: open for reading). With "
        "PATHs, list the socket files and FIFOs in those files and directories instead, "
        "stale ones included; a URL (shm://NAME, mq:///NAME, ...) shows that object.",
        epilog="examples:\n  fastipc ls\n  fastipc ls /tmp --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files, directories or URLs to show")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the IPC objects this process can see (or those at the given paths)."""
    from . import inventory as inv

    notes: list[str] = []
    if args.paths:
        scan = inv.ProcessScan()
        entries: list[inv.Entry] = []
        for arg in args.paths:
            if "://" in arg:
                entries.append(inv.lookup(inv.parse_target(arg), scan))
            else:
                entries.extend(inv.list_paths([arg], scan))
    else:
        entries, notes = inv.inventory()
    if args.json:
        print(json.dumps({"entries": [e.to_json() for e in entries], "notes": notes}, indent=2))
        return 0
    rows = [("KIND", "NAME", "SIZE", "MODE", "PIDS", "ALIVE"), *inv.iter_rows(entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for note in notes:
        print(f"fastipc: note: {note}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# rm
# ---------------------------------------------------------------------------


def _add_rm(sub: Any) -> None:
    p = sub.add_parser(
        "rm",
        help="remove rings, message queues, socket files or FIFOs (not live ones, unless --force)",
        description="Remove each NAME: a ring (shm://NAME or a bare ring name), a message queue "
        "(mq:///NAME), a socket file (a path, unix://PATH or unixgram://PATH) or a FIFO (a path "
        "or fifo://PATH). One that is alive (a ring mapped by a live process, a socket a "
        "process is bound to or that accepts connections, a queue held open, a FIFO with a "
        "reader) is refused unless --force; processes holding it keep working. Every NAME is "
        "tried; the exit status is 1 if any failed.",
        epilog="examples:\n  fastipc rm shm://myring mq:///jobs /tmp/app.sock\n"
        "  fastipc rm --force myring",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="what to remove")
    p.add_argument("-f", "--force", action="store_true", help="remove live ones too")
    p.add_argument("-v", "--verbose", action="store_true", help="say what was removed")
    p.set_defaults(run=cmd_rm)


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove the named objects; refuse live ones without --force."""
    from . import inventory as inv

    scan = inv.ProcessScan()
    failed = 0
    for arg in args.names:
        try:
            entry = inv.lookup(inv.parse_target(arg), scan)
            if entry.alive and not args.force:
                holders = f"pid {','.join(map(str, entry.pids))}" if entry.pids else "a process"
                raise CLIError(f"{entry.name} is in use by {holders}: not removed (use --force)")
            inv.remove(entry)
        except (CLIError, ValueError, OSError) as exc:
            print(f"fastipc: error: {_describe(exc)}", file=sys.stderr)
            failed += 1
        else:
            if args.verbose:
                print(f"removed {entry.name}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# the parser and entry point
# ---------------------------------------------------------------------------

#: Every verb's parser builder, in help order.
_VERBS: list[Callable[[Any], None]] = [
    _add_serve,
    _add_send,
    _add_recv,
    _add_ls,
    _add_rm,
    _add_info,
    _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per verb."""
    from ._version import __version__

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
    1 (2 for usage errors, 130 after Ctrl-C).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        print("fastipc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error worth a traceback.
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
        print(f"fastipc: error: {_describe(exc)}", file=sys.stderr)
        return 1


def _describe(exc: BaseException) -> str:
    """An exception as one line: ``NAME: reason`` for OS errors about a file or endpoint."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__
