"""shutdown(): senders get Closed at once, receivers drain then get Closed, blocked waiters in other processes wake."""

from __future__ import annotations

import time

import pytest
from _workers import make_msg, parse_msg
from conftest import Children, fill

from fastipc import Closed, Ring


def test_send_after_shutdown_is_closed_and_receivers_drain_first(ring: Ring) -> None:
    ring.send_many([b"one", b"", b"three"], timeout=0)
    ring.shutdown()
    for call in (lambda: ring.send(b"x", timeout=0), lambda: ring.send(b"x", timeout=None)):
        with pytest.raises(Closed) as info:
            call()
        assert isinstance(info.value, EOFError)
    with pytest.raises(Closed):
        ring.send_many([b"a", b"b"], timeout=None)
    assert len(ring) == 3
    assert ring.recv(timeout=0) == b"one"
    buf = bytearray(10)
    assert ring.recv_into(buf, timeout=0) == 0
    with ring.recv_view(timeout=0) as mv:
        assert bytes(mv) == b"three"
    assert len(ring) == 0
    # Drained: every receive call now says Closed, even the ones that would block forever.
    with pytest.raises(Closed):
        ring.recv(timeout=None)
    with pytest.raises(Closed):
        ring.recv(timeout=0)
    with pytest.raises(Closed):
        ring.recv_into(buf, timeout=None)
    with pytest.raises(Closed):
        ring.recv_many(5, timeout=None)
    with pytest.raises(Closed), ring.recv_view(timeout=None):
        pass


def test_recv_many_drains_then_closed(ring: Ring) -> None:
    ring.send_many([b"%d" % i for i in range(5)], timeout=0)
    ring.shutdown()
    got = []
    while True:
        try:
            got += ring.recv_many(2, timeout=1)
        except Closed:
            break
    assert got == [b"%d" % i for i in range(5)]


def test_shutdown_is_seen_by_every_handle_and_is_idempotent(ring: Ring) -> None:
    with Ring.open(ring.name) as other:
        other.send(b"last", timeout=0)
        other.shutdown()
        other.shutdown()
        ring.shutdown()
        with pytest.raises(Closed):
            ring.send(b"x", timeout=0)
        with Ring.open(ring.name) as late:
            with pytest.raises(Closed):
                late.send(b"x", timeout=0)
            assert late.recv(timeout=0) == b"last"
            with pytest.raises(Closed):
                late.recv(timeout=0)


def test_receiver_blocked_in_another_process_wakes_with_closed(
    ring: Ring, children: Children
) -> None:
    procs = [
        children.start("blocked", ring.name, what, 0, "None") for what in ("recv", "recv_many")
    ]
    time.sleep(0.5)  # both are asleep now, past any spinning
    t0 = time.monotonic()
    ring.shutdown()
    for p in procs:
        stamp, outcome = children.readline(p, 5).split(" ", 1)
        assert outcome == "closed"
        assert float(stamp) - t0 < 1.0, "woke too late"
        assert children.wait(p, 5) == 0


def test_sender_blocked_in_another_process_wakes_with_closed(
    make_ring: object, children: Children
) -> None:
    r: Ring = make_ring(256)  # type: ignore[operator]
    n = fill(r, 100)
    p = children.start("blocked", r.name, "send", 100, "None")
    time.sleep(0.5)
    t0 = time.monotonic()
    r.shutdown()
    stamp, outcome = children.readline(p, 5).split(" ", 1)
    assert outcome == "closed"
    assert float(stamp) - t0 < 1.0
    assert children.wait(p, 5) == 0
    assert len(r) == n, "the blocked message must not have gone in"


def test_send_many_interrupted_by_shutdown_reports_how_many_went_out(make_ring: object) -> None:
    import threading

    r: Ring = make_ring(256)  # type: ignore[operator]
    other = Ring.open(r.name)
    timer = threading.Timer(0.3, other.shutdown)
    timer.start()
    try:
        with pytest.raises(Closed) as info:
            r.send_many([make_msg(1, i, 60) for i in range(5000)], timeout=5)
    finally:
        timer.join()
        other.close()
    sent = info.value.sent
    assert 1 <= sent < 5000
    assert len(r) == sent
    assert [parse_msg(m)[1] for m in r.recv_many(10_000, timeout=0)] == list(range(sent))
