"""The ``fastipc`` command: one subcommand per verb, each a pair of functions here."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

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
        sys.stdout.write("\nChannel (Unix stream socket, two processes; plain = a pure-Python loop)\n")
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
# the parser and entry point
# ---------------------------------------------------------------------------

#: Every verb's parser builder, in help order; add serve/send/recv/ls/rm here.
_VERBS: list[Callable[[Any], None]] = [_add_bench, _add_info]


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
    except (CLIError, OSError, ValueError, RuntimeError, ImportError) as exc:
        print(f"fastipc: error: {exc}", file=sys.stderr)
        return 1
