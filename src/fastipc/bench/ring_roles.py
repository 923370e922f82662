"""The Ring benchmark's child processes: what the producer, consumer, ping, echo and idle sides run.

Each child is started by :mod:`fastipc.bench.ring` as ``python -m
fastipc.bench ROLE SPEC_JSON`` with ``FASTIPC_BACKEND`` already set, meets
its partner on a shared control page (a memfd passed down by the parent),
plays the placement probe, runs its measurement loop and prints its result
as one JSON line. The loops are written for speed of the harness (unrolled,
locals bound, the clock read rarely): change them and the figures change.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import resource
import statistics
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from .harness import BenchError
from .machine import last_cpu

__all__ = ["CTRL_SIZE", "child_main"]

# The control page shared by a pair (a memfd, so it leaves nothing in /dev/shm):
# readiness flags and the placement probe's ping and pong bytes, each on its
# own cache line.
CTRL_SIZE = 4096
_A_READY = 0
_B_READY = 64
_PING = 128
_PONG = 192

_PROBE_ROUNDS = 1000
_PROBE_BUDGET_S = 0.05
_WARMUP_ROUND_TRIPS = 1000


def _current_cpu() -> int | None:
    """The CPU this process last ran on (/proc/self/stat field 39)."""
    try:
        return last_cpu("self")
    except (OSError, ValueError, IndexError):
        return None


def _wait_flag(ctrl: mmap.mmap, offset: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while ctrl[offset] == 0:
        if time.monotonic() > deadline:
            raise BenchError("the other process of the pair never became ready")
        time.sleep(0.0005)


def _probe_ping(ctrl: mmap.mmap) -> float | None:
    """Time plain shared-memory round trips against :func:`_probe_echo`; median ns."""
    pc = time.perf_counter_ns
    deadline = pc() + int(_PROBE_BUDGET_S * 1e9)
    times = array("q")
    for i in range(_PROBE_ROUNDS):
        v = i % 250 + 1
        t0 = pc()
        ctrl[_PING] = v
        spins = 0
        while ctrl[_PONG] != v:
            spins += 1
            if spins & 0x3FF == 0 and pc() > deadline:
                return float(statistics.median(times)) if len(times) >= 3 else None
        times.append(pc() - t0)
    return float(statistics.median(times[len(times) // 10 :]))


def _probe_echo(ctrl: mmap.mmap) -> None:
    deadline = time.perf_counter() + _PROBE_BUDGET_S + 0.05
    last = 0
    for _ in range(_PROBE_ROUNDS):
        spins = 0
        while (v := ctrl[_PING]) == last:
            spins += 1
            if spins & 0x3FF == 0 and time.perf_counter() > deadline:
                return
        ctrl[_PONG] = v
        last = v


def _adaptive_loop(body: Callable[[int], None], per_call: int, duration: float) -> int:
    """Call ``body(n)`` with growing ``n`` until ``duration`` s pass; return the total n.

    ``n`` doubles while a call takes under 2 ms, so the clock is read rarely
    on a fast backend and a slow one does not overshoot the duration.
    """
    pc = time.perf_counter
    end = pc() + duration
    n = 8
    total = 0
    while True:
        t0 = pc()
        body(n)
        total += n * per_call
        now = pc()
        if now >= end:
            return total
        if now - t0 < 0.002 and n < 1 << 16:
            n *= 2


def _role_producer(ring: Any, spec: dict[str, Any]) -> dict[str, Any]:
    kind, size = spec["kind"], int(spec["size"])
    rep = itertools.repeat
    if kind == "msg64":
        msg = bytes(range(size % 256)) + bytes(size - size % 256)
        send = ring.send

        def body(n: int) -> None:
            # Unrolled 4x so the harness costs a few ns per message.
            for _ in rep(None, n):
                send(msg)
                send(msg)
                send(msg)
                send(msg)

        count = _adaptive_loop(body, 4, spec["duration"])
    elif kind == "batch64":
        batch = [bytes(range(size % 256)) + bytes(size - size % 256)] * int(spec["batch"])
        send_many = ring.send_many

        def body(n: int) -> None:
            for _ in rep(None, n):
                send_many(batch)

        count = _adaptive_loop(body, len(batch), spec["duration"])
    else:  # mib1: sequence number in the first and last 8 bytes of each message
        buf = bytearray((bytes(range(256)) * (size // 256 + 1))[:size])
        send = ring.send
        seq = itertools.count()

        def body(n: int) -> None:
            for _ in rep(None, n):
                stamp = next(seq).to_bytes(8, "little")
                buf[:8] = stamp
                buf[-8:] = stamp
                send(buf)

        count = _adaptive_loop(body, 1, spec["duration"])
    ring.shutdown()
    return {"count": count, "size": size}


def _role_consumer(ring: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from fastipc.errors import Closed

    kind, pc = spec["kind"], time.perf_counter
    count: int | None = None
    if kind == "msg64":
        recv = ring.recv
        recv()
        first = 1
        t0 = pc()
        try:
            while True:
                recv()
                recv()
                recv()
                recv()
        except Closed:
            t1 = pc()
    elif kind == "batch64":
        recv_many, batch = ring.recv_many, int(spec["batch"])
        first = count = len(recv_many(batch))
        t0 = pc()
        try:
            while True:
                count += len(recv_many(batch))
        except Closed:
            t1 = pc()
    else:  # mib1
        size = int(spec["size"])
        buf = bytearray(size)
        head, tail = memoryview(buf)[:8], memoryview(buf)[size - 8 :]
        recv_into = ring.recv_into
        from_bytes = int.from_bytes
        count = 0
        t0 = 0.0
        try:
            while True:
                n = recv_into(buf)
                if (
                    n != size
                    or from_bytes(head, "little") != count
                    or from_bytes(tail, "little") != count
                ):
                    raise BenchError(
                        f"message {count} arrived wrong: {n} bytes, stamps "
                        f"{from_bytes(head, 'little')}/{from_bytes(tail, 'little')}"
                    )
                count += 1
                if count == 1:
                    t0 = pc()
        except Closed:
            t1 = pc()
        first = 1
    return {"first": first, "count": count, "interval_s": t1 - t0}


def _role_ping(rings: tuple[Any, Any], spec: dict[str, Any]) -> dict[str, Any]:
    a, b = rings
    msg = bytes(int(spec["size"]))
    send, recv = a.send, b.recv
    pc = time.perf_counter_ns
    warm_end = pc() + int(spec["duration"] * 1e8)  # at most a tenth of the time
    for _ in range(_WARMUP_ROUND_TRIPS):
        send(msg)
        recv()
        if pc() > warm_end:
            break
    samples = array("q")
    app = samples.append
    rep = itertools.repeat

    def body(n: int) -> None:
        for _ in rep(None, n):
            t0 = pc()
            send(msg)
            recv()
            app(pc() - t0)

    _adaptive_loop(body, 1, spec["duration"])
    a.shutdown()
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "round_trips": n,
        "median_ns": float(statistics.median(ordered)),
        "p99_ns": float(ordered[min(n - 1, int(n * 0.99))]),
        "p999_ns": float(ordered[min(n - 1, int(n * 0.999))]),
        "min_ns": float(ordered[0]),
        "max_ns": float(ordered[-1]),
    }


def _role_echo(rings: tuple[Any, Any], spec: dict[str, Any]) -> dict[str, Any]:
    from fastipc.errors import Closed

    a, b = rings
    send, recv = b.send, a.recv
    n = 0
    try:
        while True:
            send(recv())
            n += 1
    except Closed:
        pass
    return {"round_trips": n}


def _role_idle(ring: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from fastipc.errors import Timeout

    duration = float(spec["duration"])
    w0, c0 = time.monotonic(), time.process_time()
    try:
        ring.recv(timeout=duration)
    except Timeout:
        pass
    else:
        raise BenchError("recv on an empty ring returned a message")
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "timeout_s": duration}


def child_main(argv: Sequence[str]) -> int:
    """Run one benchmark role (``ROLE SPEC_JSON``) and print its result as one JSON line."""
    role = argv[0]
    spec: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}

    import fastipc

    base = {"backend": fastipc.BACKEND, "version": fastipc.__version__, "pid": os.getpid()}
    if role == "probe":
        print(json.dumps(base), flush=True)
        return 0

    from fastipc import Ring

    name = spec["name"]
    ctrl = mmap.mmap(int(spec["ctrl_fd"]), CTRL_SIZE)
    creator = role in ("producer", "ping", "idle")
    names = [f"{name}.a", f"{name}.b"] if spec["kind"] == "pingpong" else [name]
    rings: list[Any] = []
    result: dict[str, Any] = {}
    try:
        if creator:
            rings = [Ring.create(n, int(spec["capacity"])) for n in names]
            ctrl[_A_READY] = 1
            if role != "idle":
                _wait_flag(ctrl, _B_READY)
                rtt = _probe_ping(ctrl)
                result["probe_rtt_ns"] = rtt
        else:
            _wait_flag(ctrl, _A_READY)
            rings = [Ring.open(n) for n in names]
            ctrl[_B_READY] = 1
            _probe_echo(ctrl)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        if role == "producer":
            result.update(_role_producer(rings[0], spec))
        elif role == "consumer":
            result.update(_role_consumer(rings[0], spec))
        elif role == "ping":
            result.update(_role_ping((rings[0], rings[1]), spec))
        elif role == "echo":
            result.update(_role_echo((rings[0], rings[1]), spec))
        elif role == "idle":
            result.update(_role_idle(rings[0], spec))
        else:
            raise BenchError(f"unknown role {role!r}")
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        result.update(
            cpu=_current_cpu(),
            affinity=sorted(os.sched_getaffinity(0)),
            voluntary_switches=ru1.ru_nvcsw - ru0.ru_nvcsw,
            involuntary_switches=ru1.ru_nivcsw - ru0.ru_nivcsw,
        )
    finally:
        for r in rings:
            if creator:
                r.unlink()
            r.close()
        ctrl.close()
    print(json.dumps({**base, **result}), flush=True)
    return 0
