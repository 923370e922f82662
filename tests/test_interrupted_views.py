"""A view's pin is dropped by C, never by Python code a signal handler can cut short (issue 10).

A view (``Ring.recv_view``/``reserve``, ``Channel.recv_view`` of a hand-off
message) pins the mapping it points into; the pin goes in the destructor of
the object the view is made from. When that destructor was Python code, a
raising signal handler that fired as it was entered was swallowed by cffi
("Exception ignored from callback for ffi.gc") and the pin leaked: the
mapping was never unmapped. A timer raises an exception every 200 µs while
a loop takes and drops views, so exceptions land everywhere, that
destructor included; the child's stderr must never show it cut short.

The same holds for the side (lock) a ``reserve``/``recv_view`` block holds:
an exception that lands in contextlib's ``__enter__``/``__exit__``, or cuts
the block's clean-up short, must not leave it taken. C records each hold as
it takes the lock and lets it go in the record's destructor (fi_hold_drop).
So no call may fail with a side left held (EDEADLK), another process must
find both sides free afterwards, and once the handles are closed no mapping
of the ring may be left in the process.
"""

from __future__ import annotations

import pytest
from conftest import run_python

DURATION = 1.5  # seconds of hammering per case

_HARNESS = """
import signal, time
from fastipc import Channel, Ring, Timeout

class Interrupted(Exception):
    pass

armed = [False]

def handler(signum, frame):
    if armed[0]:
        armed[0] = False
        raise Interrupted

def hammer(step, duration):
    '''Run step() under the timer for `duration` s; return how often it was interrupted.'''
    done = n = 0
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    end = time.monotonic() + duration
    try:
        while time.monotonic() < end:
            try:
                armed[0] = True
                step()
                armed[0] = False
                done += 1
            except Interrupted:
                n += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        armed[0] = False
    return n
"""


def _run(body: str) -> None:
    out = run_python(_HARNESS + body, timeout=120)
    assert "ok" in out.stdout, out.stdout + out.stderr
    cut = [line for line in out.stderr.splitlines() if "callback for ffi.gc" in line]
    assert not cut, (
        f"{len(cut)} view destructor(s) cut short by the signal handler:\n" + (out.stderr[:3000])
    )


@pytest.mark.parametrize("what", ["recv_view", "reserve"])
def test_ring_view_pins_survive_a_raising_timer(ring_name: str, what: str) -> None:
    _run(
        f"""
r = Ring.create({ring_name!r}, 1 << 16)
def step():
    try:
        r.send(b"m" * 200, timeout=0)
    except Timeout:
        pass
    if {what!r} == "reserve":
        try:
            with r.reserve(200, timeout=0) as w:
                w[:3] = b"abc"
        except Timeout:
            pass
    try:
        with r.recv_view(timeout=0) as v:
            v[:8].tobytes()
    except Timeout:
        pass
n = 0
for _ in range(20):
    n += hammer(step, {DURATION} / 20)
    r.close()
    r = Ring.open({ring_name!r})
r.close()
import gc, subprocess, sys
gc.collect()
with open("/proc/self/maps") as f:
    left = [line for line in f if "fastipc." + {ring_name!r} in line]
assert not left, left
probe = "; ".join([
    "from fastipc import Ring",
    "r = Ring.open(%r)" % {ring_name!r},
    "exec('while len(r): r.recv(timeout=5)')",
    "r.send(b'p', timeout=5)",
    "exec('with r.reserve(1, timeout=5) as w: w[:] = bytes([113])')",
    "exec('with r.recv_view(timeout=5): pass')",
    "r.close()",
])
subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
Ring.unlink_name({ring_name!r})
print("ok", n)
"""
    )


def test_channel_view_pins_survive_a_raising_timer() -> None:
    _run(
        f"""
msg = bytes(range(256)) * 16
n = 0
for _ in range(20):
    a, b = Channel.pair(handoff_min=1024)
    def step():
        try:
            a.send(msg, timeout=0)
        except Timeout:
            pass
        try:
            with b.recv_view(timeout=0) as v:
                v[:8].tobytes()
        except Timeout:
            pass
    n += hammer(step, {DURATION} / 20)
    a.close()
    b.close()
print("ok", n)
"""
    )
