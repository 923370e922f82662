"""Both backends answer the same bad calls the same way: each probe's outcome (the
value returned, or the exception's class) is recorded in a child process per
backend and the two records must be equal.

The messages may differ (each names what it checks); the class may not: a
program written against one backend catches what the other raises. Each
probe runs on fresh objects, so one probe's effect cannot hide another's.
On a closed handle only good arguments are probed: every call then raises
ValueError; a bad argument may be named first, on either backend.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from conftest import child_env, new_name, run_python

import fastipc
from fastipc import Broadcast, Channel, Ring

PROBES = r"""
import array, json, math, sys
import fastipc
import fastipc
from fastipc import Broadcast, Channel, Ring

name = NAME
out = {}

def outcome(call):
    try:
        value = call()
    except BaseException as exc:  # noqa: BLE001 - recorded
        return "raises " + type(exc).__name__
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "returns bytes " + repr(bytes(value))
    if value is None or isinstance(value, (bool, int, str)):
        return "returns " + repr(value)
    if isinstance(value, list):
        return "returns " + repr([bytes(v) for v in value])
    return "returns a " + type(value).__name__

def enter(cm):
    with cm as view:
        return bytes(view[:0])

BAD_TIMEOUTS = {"-1": -1, "nan": math.nan, "str": "1", "-inf": -math.inf}

def ring_probes(closed):
    probes = {
        "send str": lambda r: r.send("x", timeout=0),
        "send too large": lambda r: r.send(b"x" * 100_000, timeout=0),
        "send_many str item": lambda r: r.send_many([b"a", "b"], timeout=0),
        "send_many int": lambda r: r.send_many(5, timeout=0),
        "send_many none": lambda r: r.send_many([], timeout=0),
        "recv empty": lambda r: r.recv(timeout=0),
        "recv_many 0": lambda r: r.recv_many(0, timeout=0),
        "recv_many huge": lambda r: (r.send(b"m"), r.recv_many(2**70, timeout=0))[1],
        "recv_many -1": lambda r: r.recv_many(-1, timeout=0),
        "recv_many float": lambda r: r.recv_many(2.0, timeout=0),
        "recv_many one": lambda r: (r.send(b"m", timeout=0), r.recv_many(4, timeout=0))[1],
        "recv_into bytes": lambda r: (r.send(b"m", timeout=0), r.recv_into(b"12345", timeout=0))[1],
        "recv_into small": lambda r: (r.send(b"mmmm", timeout=0), r.recv_into(bytearray(2), timeout=0))[1],
        "recv_into small then recv": lambda r: (r.send(b"mmmm", timeout=0), outcome(lambda: r.recv_into(bytearray(2), timeout=0)), r.recv(timeout=0))[2],
        "recv_view empty": lambda r: enter(r.recv_view(timeout=0)),
        "reserve -1": lambda r: enter(r.reserve(-1, timeout=0)),
        "reserve too large": lambda r: enter(r.reserve(100_000, timeout=0)),
        "reserve str": lambda r: enter(r.reserve("1", timeout=0)),
        "len": lambda r: len(r),
        "empty": lambda r: r.empty(),
        "readable": lambda r: r.readable(),
        "shutdown then send": lambda r: (r.shutdown(), r.send(b"x", timeout=0))[1],
        "shutdown then recv": lambda r: (r.shutdown(), r.recv(timeout=0))[1],
        "empty message": lambda r: (r.send(b""), r.recv(timeout=0))[1],
        "empty message view": lambda r: (r.send(b""), enter(r.recv_view(timeout=0)))[1],
        "reserve 0": lambda r: (enter(r.reserve(0)), r.recv(timeout=0))[1],
        "send strided view": lambda r: r.send(memoryview(b"abcdef")[::2], timeout=0),
        "send int array": lambda r: (r.send(array.array("i", [1, 2]), timeout=0), r.recv(timeout=0))[1],
        "recv_into int array": lambda r: (r.send(b"12345678"), r.recv_into(array.array("i", [0, 0]), timeout=0))[1],
        "send_many mixed": lambda r: (r.send_many([b"a", bytearray(b"b"), memoryview(b"c")]), r.recv_many(5, timeout=0))[1],
    }
    for t, value in BAD_TIMEOUTS.items():
        probes[f"send timeout {t}"] = lambda r, v=value: r.send(b"x", timeout=v)
        probes[f"send_many timeout {t}"] = lambda r, v=value: r.send_many([b"x"], timeout=v)
        probes[f"recv timeout {t}"] = lambda r, v=value: r.recv(timeout=v)
        probes[f"recv_many timeout {t}"] = lambda r, v=value: r.recv_many(2, timeout=v)
    if closed:  # good arguments only: bad ones may be named before or after the closed handle
        probes = {
            "send": lambda r: r.send(b"x", timeout=0),
            "send_many": lambda r: r.send_many([b"x"], timeout=0),
            "send_many none": lambda r: r.send_many([]),
            "recv": lambda r: r.recv(timeout=0),
            "recv_many": lambda r: r.recv_many(4, timeout=0),
            "recv_into": lambda r: r.recv_into(bytearray(8), timeout=0),
            "recv_view": lambda r: enter(r.recv_view(timeout=0)),
            "reserve": lambda r: enter(r.reserve(1, timeout=0)),
            "len": lambda r: len(r),
            "empty": lambda r: r.empty(),
            "readable": lambda r: r.readable(),
            "free_bytes": lambda r: r.free_bytes(),
            "fileno": lambda r: r.fileno(),
            "shutdown": lambda r: r.shutdown(),
        }
    for what, probe in probes.items():
        r = Ring.create(name, 4096)
        try:
            if closed:
                r.close()
            out[("closed " if closed else "") + "ring " + what] = outcome(lambda: probe(r))
        finally:
            r.close()
            Ring.unlink_name(name)

def broadcast_probes(closed):
    probes = {
        "publish str": lambda p, s: p.publish("x", timeout=0),
        "publish too large": lambda p, s: p.publish(b"x" * 100_000, timeout=0),
        "publish_many str item": lambda p, s: p.publish_many([b"a", "b"], timeout=0),
        "publish_many none": lambda p, s: p.publish_many([], timeout=0),
        "reserve -1": lambda p, s: enter(p.reserve(-1, timeout=0)),
        "recv empty": lambda p, s: s.recv(timeout=0),
        "recv_many 0": lambda p, s: s.recv_many(0, timeout=0),
        "recv_many huge": lambda p, s: (p.publish(b"m"), s.recv_many(2**70, timeout=0))[1],
        "recv_many float": lambda p, s: s.recv_many(2.0, timeout=0),
        "recv_into bytes": lambda p, s: (p.publish(b"m"), s.recv_into(b"12345", timeout=0))[1],
        "recv_into small": lambda p, s: (p.publish(b"mmmm"), s.recv_into(bytearray(2), timeout=0))[1],
        "recv_into small then recv": lambda p, s: (p.publish(b"mmmm"), outcome(lambda: s.recv_into(bytearray(2), timeout=0)), s.recv(timeout=0))[2],
        "recv_view empty": lambda p, s: enter(s.recv_view(timeout=0)),
        "len": lambda p, s: len(s),
        "readable": lambda p, s: s.readable(),
        "shutdown then publish": lambda p, s: (p.shutdown(), p.publish(b"x", timeout=0))[1],
        "shutdown then recv": lambda p, s: (p.shutdown(), s.recv(timeout=0))[1],
        "empty message": lambda p, s: (p.publish(b""), s.recv(timeout=0))[1],
        "reserve 0": lambda p, s: (enter(p.reserve(0)), s.recv(timeout=0))[1],
        "publish strided view": lambda p, s: p.publish(memoryview(b"abcdef")[::2], timeout=0),
        "recv_into int array": lambda p, s: (p.publish(b"12345678"), s.recv_into(array.array("i", [0, 0]), timeout=0))[1],
        "publish_many mixed": lambda p, s: (p.publish_many([b"a", bytearray(b"b"), memoryview(b"c")]), s.recv_many(5, timeout=0))[1],
        "missed": lambda p, s: s.missed,
    }
    for t, value in BAD_TIMEOUTS.items():
        probes[f"publish timeout {t}"] = lambda p, s, v=value: p.publish(b"x", timeout=v)
        probes[f"publish_many timeout {t}"] = lambda p, s, v=value: p.publish_many([b"x"], timeout=v)
        probes[f"recv timeout {t}"] = lambda p, s, v=value: s.recv(timeout=v)
        probes[f"recv_many timeout {t}"] = lambda p, s, v=value: s.recv_many(2, timeout=v)
    if closed:
        probes = {
            "publish": lambda p, s: p.publish(b"x", timeout=0),
            "publish_many": lambda p, s: p.publish_many([b"x"], timeout=0),
            "publish_many none": lambda p, s: p.publish_many([]),
            "reserve": lambda p, s: enter(p.reserve(1, timeout=0)),
            "free_bytes": lambda p, s: p.free_bytes(),
            "subscribers": lambda p, s: p.subscribers(),
            "shutdown": lambda p, s: p.shutdown(),
            "recv": lambda p, s: s.recv(timeout=0),
            "recv_many": lambda p, s: s.recv_many(4, timeout=0),
            "recv_into": lambda p, s: s.recv_into(bytearray(8), timeout=0),
            "recv_view": lambda p, s: enter(s.recv_view(timeout=0)),
            "len": lambda p, s: len(s),
            "readable": lambda p, s: s.readable(),
            "fileno": lambda p, s: s.fileno(),
        }
    for what, probe in probes.items():
        p = Broadcast.create(name, 4096, subscribers=2)
        s = Broadcast.subscribe(name)
        try:
            if closed:
                p.close()
                s.close()
            out[("closed " if closed else "") + "broadcast " + what] = outcome(lambda: probe(p, s))
        finally:
            s.close()
            p.close()
            Broadcast.unlink_name(name)

def channel_probes(closed):
    probes = {
        "send str": lambda a, b: a.send("x", timeout=0),
        "send fd -1": lambda a, b: a.send(b"x", fds=[-1], timeout=0),
        "send fd str": lambda a, b: a.send(b"x", fds=["0"], timeout=0),
        "send too large": lambda a, b: a.send(b"x" * (a.max_message + 1), timeout=0),
        "send_many str item": lambda a, b: a.send_many([b"a", "b"], timeout=0),
        "send_many none": lambda a, b: a.send_many([], timeout=0),
        "recv empty": lambda a, b: a.recv(timeout=0),
        "recv_many huge": lambda a, b: (b.send(b"m"), a.recv_many(2**70, timeout=1))[1],
        "recv_many 0": lambda a, b: a.recv_many(0, timeout=0),
        "recv_many float": lambda a, b: a.recv_many(2.0, timeout=0),
        "recv_into bytes": lambda a, b: (b.send(b"m"), a.recv_into(b"12345", timeout=1))[1],
        "recv_into small": lambda a, b: (b.send(b"mmmm"), a.recv_into(bytearray(2), timeout=1))[1],
        "recv_into small then recv": lambda a, b: (b.send(b"mmmm"), outcome(lambda: a.recv_into(bytearray(2), timeout=1)), a.recv(timeout=1))[2],
        "recv_view empty": lambda a, b: enter(a.recv_view(timeout=0)),
        "shutdown bad": lambda a, b: a.shutdown("sideways"),
        "peer closed then recv": lambda a, b: (b.close(), a.recv(timeout=1))[1],
        "peer closed then send": lambda a, b: (b.close(), a.send(b"x", timeout=1))[1],
        "pending": lambda a, b: a.pending(),
        "empty message": lambda a, b: (b.send(b""), a.recv(timeout=1))[1],
        "send strided view": lambda a, b: a.send(memoryview(b"abcdef")[::2], timeout=0),
        "recv_into int array": lambda a, b: (b.send(b"12345678"), a.recv_into(array.array("i", [0, 0]), timeout=1))[1],
        "send_many mixed": lambda a, b: (b.send_many([b"a", bytearray(b"b"), memoryview(b"c")]), a.recv_many(5, timeout=1))[1],
        "send closed fd": lambda a, b: a.send(b"x", fds=[10_000], timeout=0),
        "send file object": lambda a, b: (a.send(b"x", fds=[sys.stderr], timeout=0), len(b.recv_with_fds(timeout=1)[1]))[1],
        "send too many fds": lambda a, b: a.send(b"x", fds=[0] * 300, timeout=0),
    }
    for t, value in BAD_TIMEOUTS.items():
        probes[f"send timeout {t}"] = lambda a, b, v=value: a.send(b"x", timeout=v)
        probes[f"send_many timeout {t}"] = lambda a, b, v=value: a.send_many([b"x"], timeout=v)
        probes[f"recv timeout {t}"] = lambda a, b, v=value: a.recv(timeout=v)
        probes[f"recv_many timeout {t}"] = lambda a, b, v=value: a.recv_many(2, timeout=v)
    if closed:
        probes = {
            "send": lambda a, b: a.send(b"x", timeout=0),
            "send with fd": lambda a, b: a.send(b"x", fds=[0], timeout=0),
            "send_many": lambda a, b: a.send_many([b"x"], timeout=0),
            "send_many none": lambda a, b: a.send_many([]),
            "recv": lambda a, b: a.recv(timeout=0),
            "recv_many": lambda a, b: a.recv_many(4, timeout=0),
            "recv_into": lambda a, b: a.recv_into(bytearray(8), timeout=0),
            "recv_with_fds": lambda a, b: a.recv_with_fds(timeout=0),
            "recv_view": lambda a, b: enter(a.recv_view(timeout=0)),
            "pending": lambda a, b: a.pending(),
            "fileno": lambda a, b: a.fileno(),
            "shutdown": lambda a, b: a.shutdown("write"),
            "peer_credentials": lambda a, b: a.peer_credentials(),
        }
    for what, probe in probes.items():
        a, b = Channel.pair()
        try:
            if closed:
                a.close()
            out[("closed " if closed else "") + "channel " + what] = outcome(lambda: probe(a, b))
        finally:
            a.close()
            b.close()

for closed in (False, True):
    ring_probes(closed)
    broadcast_probes(closed)
    channel_probes(closed)
print(json.dumps(out))
"""


@pytest.mark.parametrize("kind", ["ring", "broadcast", "channel"])
def test_both_backends_answer_bad_calls_alike(kind: str) -> None:
    records = {}
    for backend in ("native", "python"):
        code = PROBES.replace("NAME", repr(new_name()))
        proc = run_python(code, env=child_env(FASTIPC_BACKEND=backend), timeout=120)
        records[backend] = {
            k: v
            for k, v in json.loads(proc.stdout.splitlines()[-1]).items()
            if k.split(" ")[k.startswith("closed ")] == kind
        }
    native, python = records["native"], records["python"]
    assert native.keys() == python.keys()
    differ = {k: (native[k], python[k]) for k in native if native[k] != python[k]}
    assert not differ, "native, python:\n" + "\n".join(f"  {k}: {v}" for k, v in differ.items())
    # Good arguments on a closed handle: ValueError (closed), whatever the call.
    after_close = {k: v for k, v in native.items() if k.startswith("closed ")}
    assert after_close and set(after_close.values()) == {"raises ValueError"}, after_close


@pytest.mark.parametrize(
    "timeout", [1e300, 10**400, float("inf"), 1e10], ids=["1e300", "10**400", "inf", "1e10"]
)
@pytest.mark.parametrize("kind", ["ring", "broadcast", "channel"])
def test_a_timeout_of_centuries_waits_like_none(kind: str, timeout: Any) -> None:
    """Timeouts past what a deadline in int64 ns holds (~146 years) wait as None does.

    1e300 and 10**400 raised OverflowError from the C call (native) or the
    arithmetic (python); math.inf already meant forever.
    """
    name = new_name()
    closers: list[Any] = []
    send: Any
    recv: Any
    if kind == "ring":
        ring = Ring.create(name, 4096)
        closers.append(ring)
        send, recv = ring.send, ring.recv
    elif kind == "broadcast":
        pub = Broadcast.create(name, 4096, subscribers=1)
        sub = Broadcast.subscribe(name)
        closers += [sub, pub]
        send, recv = pub.publish, sub.recv
    else:
        a, b = Channel.pair()
        closers += [a, b]
        send, recv = a.send, b.recv
    try:
        send(b"now", timeout=timeout)
        assert recv(timeout=timeout) == b"now"
        # fastipc.wait took such a timeout (inf too) for an expired deadline: [] at once.
        threading.Timer(0.2, send, (b"ready",)).start()
        waited_on = sub if kind == "broadcast" else ring if kind == "ring" else b
        assert fastipc.wait([waited_on], timeout=timeout) == [waited_on]
        assert recv(timeout=0) == b"ready"
        later = threading.Timer(0.2, send, (b"later",))
        later.start()
        t0 = time.monotonic()
        assert recv(timeout=timeout) == b"later"  # waited, then returned at once
        assert time.monotonic() - t0 < 10
        later.join()
    finally:
        for c in closers:
            c.close()
        if kind == "ring":
            Ring.unlink_name(name)
        elif kind == "broadcast":
            Broadcast.unlink_name(name)
