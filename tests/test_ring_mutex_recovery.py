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
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from conftest import TESTS_DIR, child_env

import fastipc
from fastipc import Full, Ring

pytestmark = pytest.mark.skipif(
    fastipc.BACKEND != "python", reason="the semaphore mutexes are the python backend's"
)

#: The ring must be usable again this soon after a kill (as in test_ring_kill.py).
RECOVERY_S = 1.0


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


def _start(procs: list[subprocess.Popen[str]], code: str, expect: str) -> subprocess.Popen[str]:
    """Run ``code`` in a fresh interpreter and wait for its first line, which must be ``expect``."""
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(),
        cwd=TESTS_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != expect:
        p.kill()
        p.wait(10)
        assert p.stderr is not None
        pytest.fail(f"child said {line!r}, expected {expect!r}; stderr:\n{p.stderr.read()}")
    return p


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
    ring: Ring, procs: list[subprocess.Popen[str]]
) -> None:
    ring.send(b"before")
    holder = _start(procs, _holder_of_raw_mutex(ring.name, ".prod", 1), "holding")
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
    sender = _start(
        procs,
        f"""
        from fastipc import Ring
        r = Ring.open({ring.name!r})
        r.send(b"from a new producer", timeout=1)
        print("sent", flush=True)
        """,
        "sent",
    )
    sender.wait(10)
    assert ring.recv(timeout=1) == b"from a new producer"


def test_consumer_killed_holding_the_consumer_mutex_is_taken_over(
    ring: Ring, procs: list[subprocess.Popen[str]]
) -> None:
    ring.send(b"one")
    ring.send(b"two")
    holder = _start(procs, _holder_of_raw_mutex(ring.name, ".cons", 2), "holding")
    with pytest.raises(fastipc.Empty):
        ring.recv(timeout=0.1)  # the messages are there, but a live holder keeps the side
    t_kill = time.monotonic()
    holder.kill()
    holder.wait(10)
    assert ring.recv(timeout=RECOVERY_S + 1) == b"one"
    assert time.monotonic() - t_kill < RECOVERY_S
    assert ring.recv(timeout=0) == b"two"
    assert len(ring) == 0


def test_several_waiters_take_over_one_at_a_time(
    ring: Ring, procs: list[subprocess.Popen[str]]
) -> None:
    """Producers racing to recover a dead holder's side: exactly one gets it at a time."""
    holder = _start(procs, _holder_of_raw_mutex(ring.name, ".prod", 1), "holding")
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
    waiters = []
    for _ in range(3):
        p = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=child_env(),
            cwd=TESTS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        waiters.append(p)
    for p in waiters:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    time.sleep(0.2)  # all three are now waiting behind the holder
    holder.kill()
    holder.wait(10)
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 900 and time.monotonic() < deadline:
        got += ring.recv_many(1000, timeout=1)
    for p in waiters:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "sent"
        p.wait(10)
        if p.stdin is not None:
            p.stdin.close()
    assert len(got) == 900
    # No torn or interleaved record: every message is whole, and each producer's in order.
    per: dict[bytes, list[int]] = {}
    for m in got:
        who, k, pad = m.split(b":")
        assert pad == b"x" * (int(k) % 50), m
        per.setdefault(who, []).append(int(k))
    assert sorted(per.values()) == [list(range(300))] * 3


def test_stopped_holder_is_not_taken_over(ring: Ring, procs: list[subprocess.Popen[str]]) -> None:
    """A holder that is alive but not running (SIGSTOP) keeps its side however long it takes."""
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from fastipc import Ring
                r = Ring.open({ring.name!r})
                with r.reserve(5) as v:
                    print("holding", flush=True)
                    sys.stdin.readline()
                    v[:] = b"first"
                print("done", flush=True)
                """
            ),
        ],
        env=child_env(),
        cwd=TESTS_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "holding"
    p.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(Full):
            ring.send(b"second", timeout=1.5)  # well past the recovery checks
    finally:
        p.send_signal(signal.SIGCONT)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "done"
    p.wait(10)
    p.stdin.close()
    ring.send(b"second", timeout=1)
    assert ring.recv_many(10, timeout=1) == [b"first", b"second"]


def test_handle_slots_are_freed_by_close_and_by_death(
    ring: Ring, procs: list[subprocess.Popen[str]]
) -> None:
    from fastipc.backends.python_ring import _SLOTS

    # More opens than there are slots, one after the other: close() frees each.
    for k in range(_SLOTS + 20):
        with Ring.open(ring.name) as r:
            r.send(b"%d" % k)
        assert ring.recv(timeout=0) == b"%d" % k
    # Processes killed while holding handles free theirs with them.
    for _ in range(3):
        p = _start(
            procs,
            f"""
            import time
            from fastipc import Ring
            rs = [Ring.open({ring.name!r}) for _ in range(50)]
            print("open", flush=True)
            time.sleep(60)
            """,
            "open",
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
