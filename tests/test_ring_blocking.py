"""Blocking calls: timeouts honoured (±0.1 s), wake-ups across processes, the GIL released, Ctrl-C, idle waiters asleep."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from conftest import Children, child_env, cpu_seconds, fill

from fastipc import Ring, Timeout

TOL = 0.1


def _blocking_calls(r: Ring, size: int) -> dict[str, Callable[[float | None], object]]:
    """Each call blocks: the receive ones on an empty ring, the send ones on a full one."""

    def view(t: float | None) -> None:
        with r.recv_view(timeout=t):
            pass

    def reserve(t: float | None) -> None:
        with r.reserve(size, timeout=t):
            pass

    return {
        "recv": lambda t: r.recv(timeout=t),
        "recv_into": lambda t: r.recv_into(bytearray(64), timeout=t),
        "recv_many": lambda t: r.recv_many(4, timeout=t),
        "recv_view": view,
        "send": lambda t: r.send(b"s" * size, timeout=t),
        "send_many": lambda t: r.send_many([b"s" * size] * 3, timeout=t),
        "reserve": reserve,
    }


CALLS = ["recv", "recv_into", "recv_many", "recv_view", "send", "send_many", "reserve"]


@pytest.mark.parametrize("call", CALLS)
def test_timeout_is_honoured(make_ring: object, call: str) -> None:
    r: Ring = make_ring(128)  # type: ignore[operator]
    if call.startswith(("send", "reserve")):
        n = fill(r, 128)
    else:
        n = 0
    fn = _blocking_calls(r, 128)[call]
    t0 = time.monotonic()
    with pytest.raises(Timeout) as info:
        fn(0.3)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert 0.3 - TOL <= elapsed <= 0.3 + TOL, f"{call}(timeout=0.3) took {elapsed:.3f} s"
    assert len(r) == n, "a timed-out call must not change the ring"


@pytest.mark.parametrize("call", CALLS)
def test_zero_timeout_never_blocks(make_ring: object, call: str) -> None:
    r: Ring = make_ring(128)  # type: ignore[operator]
    if call.startswith(("send", "reserve")):
        fill(r, 128)
    fn = _blocking_calls(r, 128)[call]
    t0 = time.monotonic()
    with pytest.raises(Timeout):
        fn(0)
    assert time.monotonic() - t0 < TOL


def test_long_timeout_still_returns_as_soon_as_a_message_comes(
    ring: Ring, children: Children
) -> None:
    p = children.start("blocked", ring.name, "recv", 0, 30)
    time.sleep(0.3)
    from _workers import make_msg

    t0 = time.monotonic()
    ring.send(make_msg(5, 6, 50), timeout=1)
    stamp, outcome = children.readline(p, 5).split(" ", 1)
    assert outcome == "recv 5:6"
    assert float(stamp) - t0 < 0.5


def test_recv_waits_for_a_message_from_another_process(ring: Ring) -> None:
    code = f"import time; from fastipc import Ring; r = Ring.open({ring.name!r}); time.sleep(0.4); r.send(b'late', timeout=1)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env())
    try:
        t0 = time.monotonic()
        assert ring.recv(timeout=10) == b"late"
        assert time.monotonic() - t0 >= 0.2
    finally:
        assert proc.wait(timeout=10) == 0


def test_send_waits_for_room_made_by_another_process(make_ring: object) -> None:
    r: Ring = make_ring(128)  # type: ignore[operator]
    n = fill(r, 128)
    code = f"import time; from fastipc import Ring; r = Ring.open({r.name!r}); time.sleep(0.4); r.recv(timeout=1)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env())
    try:
        t0 = time.monotonic()
        r.send(b"w" * 128, timeout=10)
        assert time.monotonic() - t0 >= 0.2
        assert len(r) == n
    finally:
        assert proc.wait(timeout=10) == 0


class GapMeter(threading.Thread):
    """Counts in a loop and records the longest pause between two of its iterations."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.count = 0
        self.max_gap = 0.0

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self.count += 1


@pytest.mark.parametrize("call", ["recv", "recv_many", "recv_view", "send", "reserve"])
def test_blocking_call_releases_the_gil(make_ring: object, call: str) -> None:
    r: Ring = make_ring(128)  # type: ignore[operator]
    if call in ("send", "reserve"):
        fill(r, 128)
    fn = _blocking_calls(r, 128)[call]
    meter = GapMeter()
    meter.start()
    time.sleep(0.05)
    before = meter.count
    with pytest.raises(Timeout):
        fn(0.6)
    during = meter.count - before
    meter.stop.set()
    meter.join(5)
    # Holding the GIL for the whole wait would freeze the counter for 0.6 s.
    assert meter.max_gap < 0.25, (
        f"the counting thread stalled {meter.max_gap:.3f} s during {call}()"
    )
    assert during > 1000


# ---------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------

_SIGINT_CHILD = """
import os, sys, time
from fastipc import Ring
r = Ring.open(sys.argv[1])
what, timeout = sys.argv[2], (None if sys.argv[3] == "None" else float(sys.argv[3]))
print("ready", flush=True)
try:
    if what == "recv":
        r.recv(timeout=timeout)
    elif what == "recv_many":
        r.recv_many(10, timeout=timeout)
    elif what == "recv_view":
        with r.recv_view(timeout=timeout):
            pass
    elif what == "send":
        r.send(b"x" * 128, timeout=timeout)
    print("returned without interrupt", flush=True)
    os._exit(1)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    os._exit(42)
"""


@pytest.mark.parametrize(
    "what, timeout",
    [
        ("recv", "None"),
        ("recv", "30"),
        ("recv_many", "None"),
        ("recv_view", "None"),
        ("send", "None"),
    ],
)
def test_sigint_interrupts_a_blocking_call_within_half_a_second(
    make_ring: object, what: str, timeout: str
) -> None:
    r: Ring = make_ring(128)  # type: ignore[operator]
    if what == "send":
        fill(r, 128)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_CHILD, r.name, what, timeout],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.4)  # well into the blocking call, past any spin
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGINT did not interrupt a blocking {what}(timeout={timeout}) within 5 s")
        elapsed = time.monotonic() - t0
        out, err = proc.communicate(timeout=5)
        assert rc == 42 and "KeyboardInterrupt" in out, (rc, out, err)
        assert elapsed <= 0.5, f"KeyboardInterrupt took {elapsed:.3f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    # The interrupted waiter left the ring usable.
    if what == "send":
        r.recv(timeout=1)
        r.send(b"after", timeout=1)
    else:
        r.send(b"after", timeout=1)
        assert r.recv(timeout=1) == b"after"


# ---------------------------------------------------------------------------
# an idle waiter sleeps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("what, timeout", [("recv", "None"), ("recv", "30"), ("send", "None")])
def test_idle_waiter_uses_little_cpu(
    make_ring: object, children: Children, what: str, timeout: str
) -> None:
    r: Ring = make_ring(256)  # type: ignore[operator]
    if what == "send":
        fill(r, 100)
    p = children.start("blocked", r.name, what, 100, timeout)
    time.sleep(0.3)  # past the spin phase
    cpu0 = cpu_seconds(p.pid)
    time.sleep(1.0)
    used = cpu_seconds(p.pid) - cpu0
    assert p.poll() is None, "the waiter should still be waiting"
    assert used < 0.3, f"a waiter blocked in {what}() burned {used:.2f} s of CPU in 1 s"
    # And it still wakes when there is something to do.
    if what == "send":
        r.recv(timeout=1)
        assert children.readline(p, 5).endswith("sent")
    else:
        from _workers import make_msg

        r.send(make_msg(3, 4, 30), timeout=1)
        assert children.readline(p, 5).endswith("recv 3:4")
    assert children.wait(p, 5) == 0
