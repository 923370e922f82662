"""The Channel benchmark: msgs/s, GB/s and round trips over a socketpair, both backends and a plain loop, in one run.

Each figure runs in a fresh process (``python -m fastipc.bench channel
--child KIND DURATION``, running :mod:`fastipc.bench.channel_roles`) with ``FASTIPC_BACKEND`` set before it imports
fastipc; that process makes a :meth:`Channel.pair` and hands one end to a
forked sender (or echo) process, so both sides use one backend. Figures:

``msg64``    64-byte messages, one ``send`` / one ``recv`` each; msgs/s at the receiver.
``batch64``  the same through ``send_many`` of 1000 / ``recv_many(4096)``; msgs/s.
``mib1``     1 MiB messages, ``send`` of a prebuilt buffer / ``recv_into`` a
             preallocated one; GB/s (1e9 bytes/s) at the receiver. They go
             through the shared-memory hand-off (the default).
``mib1_socket`` the same with the hand-off off (``handoff_min=0``): through
             the kernel's socket buffers.
``mib1_view`` the same messages taken with ``recv_view``: the receiver looks
             at the first and last byte of each in place and copies nothing,
             so the sender's one copy into the area is the only one.
``rtt64``    64-byte ping-pong; median and p99 round trip in microseconds, with
             the native receiver's brief spin before sleeping (FASTIPC_SPIN_US,
             default 20) and, as ``rtt64_nospin``, without it.

One figure measures the machine, not fastipc, so that the 1 MiB rows can be
read against what its memory gives in the same run (backend ``machine``):

``copy1``    1 MiB copies in one process into a 4 MiB area in turn
             (``memoryview`` slice assignment: one memcpy each). No 1 MiB row
             can beat it: ``mib1_view``'s sender makes one such copy per
             message, ``mib1`` adds the receiver's copy on the other core.
             ``benchmarks/handoff_ceiling.py`` measures the two-process bound.

The ``plain`` rows are a pure-Python length-prefixed loop on a raw socket,
what a careful Python programmer writes without fastipc: the sender joins 1000
frames into one ``sendall``, the receiver ``recv_into``s 1 MiB chunks and
cuts frames with ``struct.unpack_from`` (batch), or one frame per
``sendall``/``recv`` pair (single).

``rows(duration)`` (``fastipc.bench.channel_rows``) returns the figures as
dicts; ``python -m fastipc.bench channel [SECONDS]`` prints them as a table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .format import format_channel_rows
from .harness import child_env

__all__ = ["KINDS", "MACHINE_KINDS", "PLAIN_KINDS", "main", "rows", "run_figure"]

KINDS = ["msg64", "batch64", "mib1", "mib1_socket", "mib1_view", "rtt64"]
PLAIN_KINDS = ["plain_msg64", "plain_batch64"]
MACHINE_KINDS = ["copy1"]


def rows(
    duration: float = 1.0, backends: tuple[str, ...] = ("native", "python")
) -> list[dict[str, Any]]:
    """Run every figure for ``duration`` seconds each; one dict per (figure, backend)."""
    out = []
    for kind in KINDS:
        for backend in backends:
            out.append(run_figure(kind, backend, duration))
    if "native" in backends:
        row = run_figure("rtt64", "native", duration, {"FASTIPC_SPIN_US": "0"})
        row["kind"] = "rtt64_nospin"
        out.append(row)
    for kind in PLAIN_KINDS:
        out.append(run_figure(kind, "plain", duration))
    for kind in MACHINE_KINDS:
        out.append(run_figure(kind, "machine", duration))
    return out


def run_figure(
    kind: str, backend: str, duration: float, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Measure one figure (a ``KINDS``, ``PLAIN_KINDS`` or ``MACHINE_KINDS`` name) for ``duration`` seconds.

    ``backend`` is "native" or "python" (for the ``plain`` and ``machine``
    kinds any other label; they do not use fastipc's backends). The figure
    runs in a fresh process with ``extra_env`` added to its environment.
    Returns the figure's dict (``gb_s``, ``msgs_s`` or ``median_us``/``p99_us``,
    plus ``kind`` and ``backend``), or one with ``error`` if the process failed.
    """
    backend_env = backend if backend in ("native", "python") else "python"
    proc = subprocess.run(
        [sys.executable, "-m", "fastipc.bench", "channel", "--child", kind, str(duration)],
        env=child_env({**(extra_env or {}), "FASTIPC_BACKEND": backend_env}),
        capture_output=True,
        text=True,
        timeout=60 + 10 * duration,
        check=False,
    )
    if proc.returncode != 0:
        return {"kind": kind, "backend": backend, "error": proc.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(kind=kind, backend=backend)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m fastipc.bench channel [SECONDS]``: print the table.

    ``--child KIND SECONDS`` instead measures one figure in this process
    and prints it as one JSON line (what :func:`run_figure` starts).
    """
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--child":
        from .channel_roles import measure

        print(json.dumps(measure(args[1], float(args[2]))))
        return 0
    duration = float(args[0]) if args else 1.0
    print(format_channel_rows(rows(duration)))
    return 0
