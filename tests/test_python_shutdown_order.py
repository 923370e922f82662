"""The python backend's "shut down and drained": never told while a message is still there.

A receiver that finds nothing reads the shared positions and the closed
flag with plain loads, without a lock. shutdown() stores the flag after the
last commit it lets through, so the flag must be read first: read after the
positions, a receiver preempted between the two loads pairs a tail from
before the last commit with the flag, and raises Closed with that message
unread (the sender's call had succeeded: a message lost without a word).

These tests widen that window at the one place it opens: the receiver's
position read returns what it read, but only after a sender in another
process has sent its last message and shut the ring down. (The native
backend carries the shutdown mark in the tail word itself, one load.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import TESTS_DIR, child_env

import fastipc
from fastipc import Broadcast, Ring
from fastipc.backends import python_ring

pytestmark = pytest.mark.skipif(
    fastipc.BACKEND != "python", reason="the lock-free receive paths are the python backend's"
)


@pytest.fixture
def sender() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(code: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=child_env(),
            cwd=TESTS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(p)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def _stall_once(
    handle: Any, method: str, caller: str, child: subprocess.Popen[str], *args_: Any
) -> list[bool]:
    """Make ``handle.method(*args_)``, called from ``caller``, read first and return only
    after ``child`` has sent its last message and shut down (it waits for "go" on stdin)."""
    original = getattr(handle, method)
    stalled: list[bool] = []

    def stalled_read(*args: Any) -> Any:
        result = original(*args)
        if not stalled and args == args_ and sys._getframe(1).f_code.co_name == caller:
            stalled.append(True)
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "shut down"
        return result

    setattr(handle, method, stalled_read)
    return stalled


def test_ring_last_message_before_shutdown_is_received_not_closed(
    ring_name: str, sender: Callable[[str], subprocess.Popen[str]]
) -> None:
    ring = Ring.create(ring_name, 4096)
    try:
        child = sender(
            f"""
            import sys
            from fastipc import Ring
            r = Ring.open({ring_name!r})
            print("ready", flush=True)
            sys.stdin.readline()
            r.send(b"last")
            r.shutdown()
            print("shut down", flush=True)
            r.close()
            """
        )
        # _state() is where an empty ring's positions and flag are read together: the
        # tail's read (the pair behind its generation word) is the one to stall.
        stalled = _stall_once(ring, "_pair", "_state", child, python_ring._W_TSEL)
        assert ring.recv(timeout=5) == b"last"
        assert stalled, "the window was never opened: the test no longer reaches it"
        with pytest.raises(fastipc.Closed):
            ring.recv(timeout=5)
        assert child.wait(10) == 0
    finally:
        ring.close()


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_broadcast_last_message_before_shutdown_is_received_not_closed(
    ring_name: str, sender: Callable[[str], subprocess.Popen[str]], policy: str
) -> None:
    pub = Broadcast.create(ring_name, 4096, subscribers=4, policy=policy)
    sub = Broadcast.subscribe(ring_name)
    try:
        child = sender(
            f"""
            import sys
            from fastipc import Broadcast
            p = Broadcast.open({ring_name!r})
            print("ready", flush=True)
            sys.stdin.readline()
            p.publish(b"last")
            p.shutdown()
            print("shut down", flush=True)
            p.close()
            """
        )
        stalled = _stall_once(sub, "_state", "_take_free", child)
        assert sub.recv(timeout=5) == b"last"
        assert stalled, "the window was never opened: the test no longer reaches it"
        with pytest.raises(fastipc.Closed):
            sub.recv(timeout=5)
        assert child.wait(10) == 0
    finally:
        sub.close()
        pub.close()
