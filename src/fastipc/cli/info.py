"""``fastipc info``: the version, the backend and this machine's IPC limits."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from .._backend import BACKEND
from .._version import __version__

__all__ = ["add_parser", "cmd_info", "gather_info"]


def add_parser(sub: Any) -> None:
    """Add the ``info`` subcommand to the subparsers ``sub``."""
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
    shm: dict[str, int] | None
    try:
        st = os.statvfs("/dev/shm")
        shm = {"size": st.f_frsize * st.f_blocks, "free": st.f_frsize * st.f_bavail}
    except OSError:
        shm = None
    return {
        "version": __version__,
        "backend": BACKEND,
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
