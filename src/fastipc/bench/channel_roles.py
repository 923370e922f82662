"""The Channel benchmark's measuring process: one figure, this process receiving and a forked partner sending.

Started by :func:`fastipc.bench.channel.run_figure` as ``python -m
fastipc.bench channel --child KIND SECONDS`` with ``FASTIPC_BACKEND``
already set; :func:`measure` makes a :meth:`Channel.pair`, forks the sender
(or echo) side and returns the figure. The ``plain`` figures use a raw
socketpair and the ``copy1`` figure no socket at all (see
:mod:`fastipc.bench.channel`). The loops are the measurement: change them
and the figures change.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

__all__ = ["measure"]

_HDR = struct.Struct("<II")
_BATCH = 1000


def measure(kind: str, duration: float) -> dict[str, Any]:
    """Measure figure ``kind`` for ``duration`` seconds in this process (and a forked partner)."""
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
