"""``fastipc bench``: run the Ring and Channel benchmarks and print the tables (or JSON)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from ._common import CLIError, interrupt

__all__ = ["add_parser", "cmd_bench"]


def add_parser(sub: Any) -> None:
    """Add the ``bench`` subcommand to the subparsers ``sub``."""
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
        "--aio",
        action="store_true",
        help="also measure fastipc.aio against asyncio streams (a table after the others; "
        "not in --json)",
    )
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


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the Ring and Channel benchmarks and print the tables (or JSON)."""
    # Imported here, not at the top: only this verb needs the benchmark package,
    # so every other command starts without loading it.
    from ..bench import BACKENDS, BenchConfig, channel_rows, format_table, run_benchmark
    from ..bench import format_channel_rows as format_rows

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
        previous = signal.signal(signal.SIGTERM, interrupt)
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
    if args.aio:
        from ..bench.aio_engine import main as aio_main

        sys.stdout.write("\nasyncio (fastipc.aio vs asyncio streams over a Unix socket)\n")
        sys.stdout.flush()
        argv = ["--repeat", str(cfg.repeat), "--duration", str(cfg.duration)]
        aio_main(argv + (["--rounds", "2000"] if args.quick else []))
    return 0
