"""``fastipc bridge``: forward between a local endpoint and a NATS subject until a signal."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..bridges import Bridge
from ._common import log, positive_int, seconds, setup_logging, sigterm_interrupts

__all__ = ["add_parser", "cmd_bridge"]


def add_parser(sub: Any) -> None:
    """Add the ``bridge`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "bridge",
        help="forward messages between a local endpoint and a NATS subject",
        description="Forward every message from SRC to DST, where one is a NATS subject "
        "(nats://HOST:PORT/subject, port 4222 by default; ?queue=NAME subscribes in a queue "
        "group) and the other a local endpoint: shm://NAME (a ring; ?capacity=BYTES creates "
        "it if missing), bcast://NAME (a broadcast ring: the bridge subscribes to it as SRC, "
        "publishes into it as DST; ?capacity= creates it), mq:///name, or unix:// / tcp:// "
        "(as SRC the bridge listens there "
        "for Channel clients; as DST it connects to a Channel server). Needs the nats-py "
        "client (pip install 'fastipc[nats]'). Reconnects when the NATS server restarts; "
        "messages over the server's max_payload are refused and counted. SIGINT/SIGTERM "
        "stop it (exit status 0) and print what it forwarded and what it could not.",
        epilog="examples:\n"
        "  fastipc bridge 'shm://ticks?capacity=1048576' nats://127.0.0.1:4222/ticks\n"
        "  fastipc bridge 'nats://127.0.0.1:4222/jobs?queue=workers' shm://jobs\n"
        "  fastipc bridge nats://127.0.0.1:4222/rpc unix:///run/app.sock --request\n"
        "  fastipc bridge unix:///tmp/rpc.sock nats://127.0.0.1:4222/rpc --request",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="where messages come from")
    p.add_argument("dst", metavar="DST", help="where they go")
    p.add_argument(
        "--request",
        action="store_true",
        help="request/reply: NATS requests become Channel round trips to the unix/tcp "
        "server DST, or a unix/tcp SRC client's messages become NATS requests whose replies "
        "go back to it",
    )
    p.add_argument(
        "--request-timeout",
        type=seconds,
        default=5.0,
        metavar="S",
        help="longest wait for one reply with --request (default 5)",
    )
    p.add_argument(
        "--reconnect-wait",
        type=seconds,
        default=0.5,
        metavar="S",
        help="pause between reconnect attempts to the NATS server (default 0.5)",
    )
    p.add_argument(
        "--max-reconnects",
        type=positive_int,
        metavar="N",
        help="give up (exit status 1) after N failed reconnect attempts (default: never)",
    )
    p.add_argument(
        "--connect-timeout",
        type=seconds,
        default=5.0,
        metavar="S",
        help="fail (exit status 1) when no NATS server answers within S seconds (default 5)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings")
    p.set_defaults(run=cmd_bridge)


def cmd_bridge(args: argparse.Namespace) -> int:
    """Run the bridge until SIGINT/SIGTERM (status 0) or until it fails (status 1)."""
    setup_logging(args.quiet)
    for key in ("request_timeout", "reconnect_wait", "connect_timeout"):
        if getattr(args, key) <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0")
    b = Bridge(
        args.src,
        args.dst,
        request=args.request,
        request_timeout=args.request_timeout,
        reconnect_wait=args.reconnect_wait,
        max_reconnects=args.max_reconnects,
        connect_timeout=args.connect_timeout,
        name="fastipc bridge",
    )
    with sigterm_interrupts():
        try:
            b.start()
            src = b.local_url if b.src.split(":", 1)[0] != "nats" else b.src
            dst = b.local_url if b.dst.split(":", 1)[0] != "nats" else b.dst
            print(f"fastipc: bridging {src} -> {dst}", file=sys.stderr, flush=True)
            b.wait()
        except KeyboardInterrupt:
            pass
        finally:
            b.close()
    log.info("bridge stopped: %s", b.stats)
    print(f"fastipc: bridge stats: {b.stats}", file=sys.stderr, flush=True)
    if b.error is not None:
        raise RuntimeError(f"the bridge failed: {b.error}")
    return 0
