"""``fastipc bench``: run the Ring and Channel benchmarks, or fastipc against its peers, and print the tables."""

from __future__ import annotations

import argparse
import json
import os
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
        help="measure the Ring and Channel on both backends, or against other IPC libraries",
        description="Measure the Ring: 64-byte msgs/s (single and batched), 1 MiB GB/s, "
        "ping-pong round trip and an idle waiter's CPU, for the native and python "
        "backends in one run, each in two fresh processes, and print one table with "
        "the native/python ratio. With --peers, measure fastipc's Ring and Channel on "
        "both backends against multiprocessing, plain sockets, faster-fifo, pyzmq, "
        "posix_ipc and iceoryx2 (those installed; pip install 'fastipc[bench]') "
        "with the machine's own limits in the same run.",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="compare with other IPC transports (one table per figure, ratios to fastipc "
        "native and to the best peer)",
    )
    p.add_argument(
        "--broadcast",
        action="store_true",
        help="measure the broadcast ring: one publisher and 1/2/4/8 subscriber processes, "
        "64 B one call per message and batched, 1 MiB read in place; per-subscriber msgs/s "
        "against pyzmq PUB/SUB over ipc:// and iceoryx2 publish/subscribe (those installed)",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="throughput against 1/2/4/8 producers and 4x4, and against message size "
        "16 B-4 MiB, for Ring, Channel and the best two peers",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="with --peers or --scaling: draw the figures (needs pip install 'fastipc[plot]'); "
        "the scaling plot goes to FILE-scaling.png when both are asked",
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
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the full report as JSON to FILE (or print it, without FILE)",
    )
    p.add_argument(
        "--aio",
        action="store_true",
        help="also measure fastipc.aio against asyncio streams (a table after the others, "
        "and 'aio' in --json)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="repetitions per figure and backend (default 5; --quick: 3, with --peers 1)",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="seconds per measurement (default 1.0, with --peers 0.5; --quick 0.25, "
        "with --peers 0.05)",
    )
    p.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the Ring and Channel benchmarks, or the peers comparison, and print the tables (or JSON)."""
    if args.plot and not (args.peers or args.scaling):
        raise CLIError("--plot draws the --peers and --scaling figures: add one of them")
    # Each run measures one thing: a flag another run's would be ignored, silently.
    if args.broadcast and (args.peers or args.scaling):
        raise CLIError("--broadcast is a run of its own: not with --peers or --scaling")
    if args.aio and (args.broadcast or args.peers or args.scaling):
        raise CLIError(
            "--aio adds to the Ring and Channel run: not with --broadcast, --peers or --scaling"
        )
    if args.json not in (None, "-"):
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise CLIError(f"--json {args.json}: cannot write there (before a run of minutes)")
    if args.repeat is not None and args.repeat < 1:
        raise CLIError("--repeat must be at least 1")
    if args.duration is not None and not 0 < args.duration <= 600:
        raise CLIError("--duration must be between 0 and 600 seconds")
    if args.broadcast:
        return _cmd_broadcast(args)
    if args.peers or args.scaling:
        return _cmd_peers(args)
    # Imported here, not at the top: only this verb needs the benchmark package,
    # so every other command starts without loading it.
    from ..bench import BACKENDS, BenchConfig, channel_rows, format_table, run_benchmark
    from ..bench import format_channel_rows as format_rows

    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    cfg.backends = BACKENDS if args.backend == "both" else (args.backend,)
    if args.repeat is not None:
        cfg.repeat = args.repeat
    if args.duration is not None:
        cfg.duration = args.duration

    show = sys.stderr.isatty()
    progress = _progress(show)

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
    if args.json != "-":
        sys.stdout.write(format_table(report))
        sys.stdout.write(
            "\nChannel (Unix stream socket, two processes; plain = a pure-Python loop)\n"
        )
        sys.stdout.write(format_rows(channel) + "\n")
        sys.stdout.flush()
    data = {**report.to_json(), "channel": channel}
    if args.aio:
        from ..bench import aio_engine

        rounds = 2000 if args.quick else 20000
        aio = aio_engine.measure(cfg.repeat, cfg.duration, rounds, "asyncio")
        data["aio"] = aio_engine.to_json(aio, "asyncio")
        if args.json != "-":
            sys.stdout.write("\nasyncio (fastipc.aio vs asyncio streams over a Unix socket)\n")
            sys.stdout.write(aio_engine.format_table(aio, "asyncio", cfg.repeat))
    if args.json:
        _write_json(data, args.json)
    return 0


def _progress(show: bool) -> Any:
    """A callable writing one self-overwriting progress line on stderr (a terminal only)."""

    def progress(text: str) -> None:
        if show:
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()

    return progress


def _write_json(data: dict[str, Any], where: str) -> None:
    text = json.dumps(data, indent=2)
    if where == "-":
        print(text)
        return
    try:
        with open(where, "w") as f:
            f.write(text + "\n")
    except OSError as exc:
        raise CLIError(f"cannot write {where}: {exc.strerror}") from None


def _cmd_broadcast(args: argparse.Namespace) -> int:
    """``fastipc bench --broadcast``: the broadcast ring against pyzmq PUB/SUB and iceoryx2."""
    from ..bench.broadcast import TRANSPORTS, format_broadcast, run_broadcast

    if args.plot:
        raise CLIError("--plot draws the --peers and --scaling figures, not --broadcast")
    transports = TRANSPORTS
    if args.backend != "both":
        other = "python" if args.backend == "native" else "native"
        transports = tuple(t for t in TRANSPORTS if t != other)
    counts = (1, 2) if args.quick else (1, 2, 4, 8)
    repeat = args.repeat or (1 if args.quick else 3)
    duration = args.duration or (0.2 if args.quick else 1.0)
    show = sys.stderr.isatty()
    progress = _progress(show)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        report = run_broadcast(
            transports, counts=counts, duration=duration, repeat=repeat, progress=progress
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if show:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    if args.json:
        _write_json(report, args.json)
    if args.json != "-":
        sys.stdout.write(format_broadcast(report))
    return 0


def _cmd_peers(args: argparse.Namespace) -> int:
    """``fastipc bench --peers`` / ``--scaling``: the comparison with other transports."""
    from ..bench.peers import PeersConfig, pick_scaling_rows, run_peers, run_scaling
    from ..bench.peers_report import format_peers, format_scaling, plot_peers, plot_scaling

    cfg = PeersConfig.quick() if args.quick else PeersConfig()
    if args.repeat is not None:
        cfg.repeat = args.repeat
    if args.duration is not None:
        cfg.duration = args.duration
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - fail before a long run, not after it
        except ImportError:
            raise CLIError("--plot needs matplotlib: pip install 'fastipc[plot]'") from None
    show = sys.stderr.isatty()
    progress = _progress(show)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, interrupt)
    out: dict[str, Any] = {}
    report = scaling = None
    try:
        if args.peers:
            report = run_peers(cfg, progress)
            out["peers"] = report.to_json()
        if args.scaling:
            size_rows, shape_rows = pick_scaling_rows(report)
            if args.quick:
                scaling = run_scaling(
                    size_rows,
                    shape_rows,
                    repeat=cfg.repeat,
                    duration=cfg.duration,
                    sizes=(16, 4096, 1 << 20),
                    shapes=((1, 1), (2, 1), (4, 4)),
                    progress=progress,
                )
            else:
                scaling = run_scaling(
                    size_rows,
                    shape_rows,
                    repeat=cfg.repeat,
                    duration=cfg.duration,
                    progress=progress,
                )
            out["scaling"] = scaling.to_json()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if show:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    if args.json:
        _write_json(out, args.json)
    if args.json != "-":
        if report is not None:
            sys.stdout.write(format_peers(report) + "\n")
        if scaling is not None:
            sys.stdout.write(format_scaling(scaling))
    if args.plot:
        if report is not None:
            plot_peers(report, args.plot)
        if scaling is not None:
            path = args.plot
            if report is not None:
                root, ext = os.path.splitext(args.plot)
                path = f"{root}-scaling{ext or '.png'}"
            plot_scaling(scaling, path)
    return 0
