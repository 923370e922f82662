"""The python ring's side mutexes (named semaphores): a dead holder's is taken over, a live one's never.

The python backend serialises producers (and consumers) with a POSIX named
semaphore, which the kernel does not release when its holder dies; each
handle's slot in the segment, locked for the handle's life, tells the
others whether a claimant is alive. These tests kill, stop and keep real
processes at the instants that matter. The native backend's lock is a
different mechanism (tested by test_ring_kill.py on both backends).
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import Children

import fastipc
from fastipc import Full, Ring

pytestmark = pytest.mark.skipif(
    fastipc.BACKEND != "python", reason="the semaphore mutexes are the python backend's"
)

#: The ring must be usable again this soon after a kill (as in test_ring_kill.py).
RECOVERY_S = 1.0


def _holder_of_raw_mutex(name: str, suffix: str, side: int) -> str:
    # What PythonRing does to take a side, stopped right after the take: the
    # claim in its slot, then the semaphore. Killed there, it leaves the side
    # taken with no commit and no release.
    return f"""
        import time, posix_ipc
        from fastipc import Ring
        r = Ring.open({name!r})
        sem = posix_ipc.Semaphore("/fastipc.{name}{suffix}")
        r._buf[(r._pclaim, r._cclaim)[{side} - 1]] = 1  # the side's claim byte
        sem.acquire(0)
        print("holding", flush=True)
        time.sleep(60)
        """


def test_producer_killed_holding_the_producer_mutex_is_taken_over(
    ring: Ring, children: Children
) -> None:
    ring.send(b"before")
    holder = children.code(_holder_of_raw_mutex(ring.name, ".prod", 1), wait_for="holding")
    with pytest.raises(Full):
        ring.send(b"blocked", timeout=0.1)  # a live holder keeps the side
    t_kill = time.monotonic()
    holder.kill()
    holder.wait(10)
    ring.send(b"after", timeout=RECOVERY_S + 1)
    assert time.monotonic() - t_kill < RECOVERY_S
    assert ring.recv_many(10, timeout=1) == [b"before", b"after"]
    # The side works normally afterwards, from this handle and from another process.
    for k in range(100):
        ring.send(b"%d" % k)
    assert ring.recv_many(1000, timeout=1) == [b"%d" % k for k in range(100)]
    sender = children.code(
        f"""
        from fastipc import Ring
        r = Ring.open({ring.name!r})
        r.send(b"from a new producer", timeout=1)
        print("sent", flush=True)
        """,
        wait_for="sent",
    )
    sender.wait(10)
    assert ring.recv(timeout=1) == b"from a new producer"


def test_consumer_killed_holding_the_consumer_mutex_is_taken_over(
    ring: Ring, children: Children
) -> None:
    ring.send(b"one")
    ring.send(b"two")
    holder = children.code(_holder_of_raw_mutex(ring.name, ".cons", 2), wait_for="holding")
    with pytest.raises(fastipc.Empty):
        ring.recv(timeout=0.1)  # the messages are there, but a live holder keeps the side
    t_kill = time.monotonic()
    holder.kill()
    holder.wait(10)
    assert ring.recv(timeout=RECOVERY_S + 1) == b"one"
    assert time.monotonic() - t_kill < RECOVERY_S
    assert ring.recv(timeout=0) == b"two"
    assert len(ring) == 0


def test_several_waiters_take_over_one_at_a_time(ring: Ring, children: Children) -> None:
    """Producers racing to recover a dead holder's side: exactly one gets it at a time."""
    holder = children.code(_holder_of_raw_mutex(ring.name, ".prod", 1), wait_for="holding")
    code = f"""
        import os, sys
        from fastipc import Ring
        r = Ring.open({ring.name!r})
        print("ready", flush=True)
        sys.stdin.readline()
        for k in range(300):
            r.send(b"%d:%d:" % (os.getpid(), k) + b"x" * (k % 50), timeout=5)
        print("sent", flush=True)
        """
    waiters = [children.code(code, stdin=True) for _ in range(3)]
    for p in waiters:
        children.tell(p, "go")
    time.sleep(0.2)  # all three are now waiting behind the holder
    holder.kill()
    holder.wait(10)
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 900 and time.monotonic() < deadline:
        got += ring.recv_many(1000, timeout=1)
    for p in waiters:
        assert children.readline(p, 30) == "sent"
        children.wait(p, 10)
    assert len(got) == 900
    # No torn or interleaved record: every message is whole, and each producer's in order.
    per: dict[bytes, list[int]] = {}
    for m in got:
        who, k, pad = m.split(b":")
        assert pad == b"x" * (int(k) % 50), m
        per.setdefault(who, []).append(int(k))
    assert sorted(per.values()) == [list(range(300))] * 3


def test_stopped_holder_is_not_taken_over(ring: Ring, children: Children) -> None:
    """A holder that is alive but not running (SIGSTOP) keeps its side however long it takes."""
    p = children.code(
        f"""
        import sys
        from fastipc import Ring
        r = Ring.open({ring.name!r})
        with r.reserve(5) as v:
            print("holding", flush=True)
            sys.stdin.readline()
            v[:] = b"first"
        print("done", flush=True)
        """,
        wait_for="holding",
        stdin=True,
    )
    p.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(Full):
            ring.send(b"second", timeout=1.5)  # well past the recovery checks
    finally:
        p.send_signal(signal.SIGCONT)
    children.tell(p, "go")
    assert children.readline(p, 30) == "done"
    children.wait(p, 10)
    ring.send(b"second", timeout=1)
    assert ring.recv_many(10, timeout=1) == [b"first", b"second"]


def test_handle_slots_are_freed_by_close_and_by_death(ring: Ring, children: Children) -> None:
    from fastipc.backends.python_ring import _SLOTS

    # More opens than there are slots, one after the other: close() frees each.
    for k in range(_SLOTS + 20):
        with Ring.open(ring.name) as r:
            r.send(b"%d" % k)
        assert ring.recv(timeout=0) == b"%d" % k
    # Processes killed while holding handles free theirs with them.
    for _ in range(3):
        p = children.code(
            f"""
            import time
            from fastipc import Ring
            rs = [Ring.open({ring.name!r}) for _ in range(50)]
            print("open", flush=True)
            time.sleep(60)
            """,
            wait_for="open",
        )
        p.kill()
        p.wait(10)
    handles = [Ring.open(ring.name) for _ in range(200)]
    try:
        for h in handles:
            h.send(b"x")
        assert len(ring.recv_many(1000, timeout=1)) == 200
    finally:
        for h in handles:
            h.close()
