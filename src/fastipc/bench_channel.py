"""The Channel benchmark: msgs/s, GB/s and round trips over a socketpair, both backends and a plain loop, in one run.

Each figure runs in a fresh process (``python -m fastipc.bench_channel
--child KIND DURATION``) with ``FASTIPC_BACKEND`` set before it imports
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

``rows(duration)`` returns the figures as dicts; ``python -m
fastipc.bench_channel`` prints them as a table.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any

__all__ = ["format_rows", "main", "rows", "run_figure"]

KINDS = ["msg64", "batch64", "mib1", "mib1_socket", "mib1_view", "rtt64"]
PLAIN_KINDS = ["plain_msg64", "plain_batch64"]
MACHINE_KINDS = ["copy1"]
_HDR = struct.Struct("<II")
_BATCH = 1000


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
    env = dict(os.environ)
    env.update(extra_env or {})
    env["FASTIPC_BACKEND"] = backend if backend in ("native", "python") else "python"
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "fastipc.bench_channel", "--child", kind, str(duration)],
        env=env,
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


# ---------------------------------------------------------------------------
# the measuring process
# ---------------------------------------------------------------------------


def _child(kind: str, duration: float) -> dict[str, Any]:
    from fastipc import Channel, Closed

    if kind.startswith("plain"):
        return _plain(kind, duration)
    if kind == "copy1":
        return _copy1(duration)
    a, b = Channel.pair(handoff_min=0) if kind == "mib1_socket" else Channel.pair()
    view = kind == "mib1_view"
    kind = kind.replace("_socket", "").replace("_view", "")
    pid = os.fork()
    if pid == 0:  # the sender / echo side
        a.close()
        code = 0
        try:
            _peer(kind, b, duration)
        except BaseException:  # noqa: BLE001 - report and exit without unwinding pytest or the parent
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    b.close()
    try:
        if kind == "rtt64":
            msg = b"p" * 64
            times = []
            end = time.monotonic() + duration
            while time.monotonic() < end:
                t0 = time.perf_counter_ns()
                a.send(msg)
                a.recv()
                times.append(time.perf_counter_ns() - t0)
            a.close()
            times = sorted(times[len(times) // 10 :])  # the first tenth is warm-up
            return {
                "median_us": times[len(times) // 2] / 1000,
                "p99_us": times[int(len(times) * 0.99)] / 1000,
                "count": len(times),
            }
        count = 0
        nbytes = 0
        first = None
        if kind == "msg64":
            recv = a.recv
            first_msg = recv()
            first = time.perf_counter()
            count = 1
            try:
                while True:
                    recv()
                    count += 1
            except Closed:
                pass
            del first_msg
        elif kind == "batch64":
            recv_many = a.recv_many
            count = len(recv_many(4096))
            first = time.perf_counter()
            try:
                while True:
                    count += len(recv_many(4096))
            except Closed:
                pass
        elif kind == "mib1" and view:
            recv_view = a.recv_view
            with recv_view() as v:
                nbytes = v.nbytes
            first = time.perf_counter()
            try:
                while True:
                    with recv_view() as v:
                        if v[0] != v[-1]:
                            raise AssertionError("a 1 MiB message arrived damaged")
                        nbytes += v.nbytes
            except Closed:
                pass
        elif kind == "mib1":
            buf = bytearray(1 << 20)
            nbytes = a.recv_into(buf)
            first = time.perf_counter()
            try:
                while True:
                    nbytes += a.recv_into(buf)
            except Closed:
                pass
        assert first is not None
        took = time.perf_counter() - first
        if kind == "mib1":
            return {"gb_s": (nbytes - (1 << 20)) / took / 1e9}
        return {"msgs_s": (count - 1) / took if kind == "msg64" else count / took}
    finally:
        a.close()
        os.waitpid(pid, 0)


def _peer(kind: str, ch: Any, duration: float) -> None:
    end = time.monotonic() + duration
    if kind == "rtt64":
        from fastipc import Closed

        try:
            while True:
                ch.send(ch.recv())
        except Closed:
            return
    if kind == "msg64":
        send, msg = ch.send, b"m" * 64
        while time.monotonic() < end:
            for _ in range(1000):
                send(msg)
    elif kind == "batch64":
        batch = [b"m" * 64] * _BATCH
        while time.monotonic() < end:
            ch.send_many(batch)
    elif kind == "mib1":
        big = b"M" * (1 << 20)
        while time.monotonic() < end:
            ch.send(big)
    ch.shutdown("write")
    ch.close()


def _plain(kind: str, duration: float) -> dict[str, Any]:
    """The pure-Python length-prefixed loop on a raw socketpair."""
    s, t = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        s.close()
        end = time.monotonic() + duration
        frame = _HDR.pack(64, 0) + b"m" * 64
        if kind == "plain_batch64":
            blob = frame * _BATCH
            while time.monotonic() < end:
                t.sendall(blob)
        else:
            while time.monotonic() < end:
                for _ in range(1000):
                    t.sendall(frame)
        t.close()
        os._exit(0)
    t.close()
    unpack_from = _HDR.unpack_from
    count = 0
    first = None
    if kind == "plain_batch64":
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        have = 0
        while True:
            n = s.recv_into(view[have:])
            if n == 0:
                break
            if first is None:
                first = time.perf_counter()
            have += n
            pos = 0
            msgs = []
            while have - pos >= 8:
                length, _ = unpack_from(buf, pos)
                if have - pos - 8 < length:
                    break
                msgs.append(bytes(view[pos + 8 : pos + 8 + length]))
                pos += 8 + length
            count += len(msgs)
            buf[: have - pos] = view[pos:have]
            have -= pos
    else:
        recv = s.recv
        while True:
            head = recv(8, socket.MSG_WAITALL)
            if len(head) < 8:
                break
            if first is None:
                first = time.perf_counter()
            length, _ = unpack_from(head)
            recv(length, socket.MSG_WAITALL)
            count += 1
    took = time.perf_counter() - (first or time.perf_counter())
    s.close()
    os.waitpid(pid, 0)
    return {"msgs_s": count / took if took else 0.0}


def _copy1(duration: float) -> dict[str, Any]:
    """1 MiB memcpys in one process, into a 4 MiB area in turn as the hand-off's sender does."""
    src = b"M" * (1 << 20)
    area = memoryview(bytearray(4 << 20))
    slots = [area[i << 20 : (i + 1) << 20] for i in range(4)]
    count = 0
    t0 = time.perf_counter()
    end = t0 + duration
    while time.perf_counter() < end:
        for dst in slots:
            dst[:] = src
        count += 4
    return {"gb_s": count * (1 << 20) / (time.perf_counter() - t0) / 1e9}


def format_rows(results: list[dict[str, Any]]) -> str:
    """A plain-text table of ``rows()``'s results."""
    lines = [f"{'figure':<14}{'backend':<9}value"]
    for r in results:
        if "error" in r:
            value = f"error: {r['error']}"
        elif "msgs_s" in r:
            value = f"{r['msgs_s'] / 1e6:8.2f} M msgs/s"
        elif "gb_s" in r:
            value = f"{r['gb_s']:8.2f} GB/s"
        else:
            value = f"median {r['median_us']:.1f} us, p99 {r['p99_us']:.1f} us"
        lines.append(f"{r['kind']:<14}{r['backend']:<9}{value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastipc.bench_channel [DURATION]``: print the table."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--child":
        print(json.dumps(_child(args[1], float(args[2]))))
        return 0
    duration = float(args[0]) if args else 1.0
    print(format_rows(rows(duration)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
