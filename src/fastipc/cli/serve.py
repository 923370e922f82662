"""``fastipc serve``: bind an endpoint and log, echo or answer each message until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from ..endpoints import parse
from ..server import serve
from . import _transport_rules as rules
from ._common import (
    add_framing,
    add_max_message,
    as_text,
    log,
    positive_int,
    seconds,
    setup_logging,
    sigterm_interrupts,
)

__all__ = ["add_parser", "cmd_serve"]

#: Longest message text a serve log line shows.
_LOG_TEXT_MAX = 1000


def add_parser(sub: Any) -> None:
    """Add the ``serve`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "serve",
        help="serve an endpoint until SIGINT/SIGTERM: log, echo or answer each message",
        description="Bind URL (tcp, udp, unix, unixgram, mq, fifo, fd://N or "
        "signal://self?sig=...) and serve every client at "
        "once until SIGINT or SIGTERM, which end it with exit status 0. Connects, disconnects "
        "and each message are logged on stderr; 'fastipc: serving URL' tells where once bound "
        "(with the real port when port 0 was asked).",
        epilog="examples:\n"
        "  fastipc serve tcp://127.0.0.1:8080 --echo\n"
        "  fastipc serve unix:///tmp/app.sock --reply 'Hello from server'\n"
        "  fastipc serve udp://0.0.0.0:5000\n"
        "  fastipc serve 'signal://self?sig=USR1,RTMIN+1'",
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
        help="close each stream connection (tcp, unix) after answering its first message, "
        "as the course's one-shot servers do (for clients that read until EOF); refused "
        "on other endpoints",
    )
    add_framing(p)
    p.add_argument(
        "--max-clients",
        type=positive_int,
        metavar="N",
        help="stream clients (tcp, unix) served at once; more are closed at once "
        "(default 1024); refused on other endpoints",
    )
    add_max_message(p)
    p.add_argument(
        "--max-buffered",
        type=positive_int,
        metavar="BYTES",
        help="bytes held for all stream clients (tcp, unix) together (partial messages and "
        "queued replies); past it the client holding the most is closed "
        "(default 256 MiB, or twice --max-message if larger); refused on other endpoints",
    )
    p.add_argument(
        "--idle-timeout",
        type=seconds,
        metavar="S",
        help="close a stream client (tcp, unix) that completes no message for S seconds, "
        "drop a FIFO writer's frame left half-written as long (default 300; 0: never); "
        "refused on other endpoints",
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
    ep = parse(args.url)
    rules.check_serve_answers(ep, args.echo or args.reply is not None)
    rules.check_own_signals(ep, "serve")
    rules.check_message_options(ep, args, rings=False)
    setup_logging(args.quiet)
    reply: bytes | None = None if args.reply is None else args.reply.encode()
    echo: bool = args.echo
    rules.check_serve_close(ep, args.close)
    rules.check_serve_limits(ep, args)
    close: bool = args.close
    where = [args.url]  # the bound URL, once known
    limits: dict[str, Any] = {}  # those not given: serve()'s defaults
    if args.max_clients is not None:
        limits["max_clients"] = args.max_clients
    if args.idle_timeout is not None:
        limits["idle_timeout"] = args.idle_timeout or None  # 0: never

    def handler(message: bytes, peer: Any) -> bytes | None:
        text = as_text(message)
        if len(text) > _LOG_TEXT_MAX:
            text = f"{text[:_LOG_TEXT_MAX]}... ({len(message)} bytes)"
        log.info("message from %s: %s", _peer_text(peer, where), text)
        answer: bytes | None = None
        if echo:
            answer = message
        elif reply is not None:
            answer = reply + b"\0" if message.endswith(b"\0") else reply
        if close:
            if answer is not None:
                peer.send(answer)
            peer.close()  # after the answer has been sent
            return None
        return answer

    with sigterm_interrupts():
        try:
            srv = serve(
                args.url,
                handler,
                framing=rules.framing(args),
                max_message=args.max_message,
                max_buffered=args.max_buffered,
                **limits,
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
        log.info("stopped by %s", signal.Signals(stopped_by).name)
    return 0


def _peer_text(peer: Any, url: list[str]) -> str:
    """A peer for a log line, as the server core names it; the served URL when it has no address."""
    text = str(peer.describe())
    text = url[0] if text == "-" else text  # mq, fifo, unnamed unixgram senders
    priority = getattr(peer, "priority", None)
    return text if priority is None else f"{text} (priority {priority})"
