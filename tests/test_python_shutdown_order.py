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
from typing import Any

import pytest
from conftest import Children

import fastipc
from fastipc import Broadcast, Ring
from fastipc.backends import python_ring

pytestmark = pytest.mark.skipif(
    fastipc.BACKEND != "python", reason="the lock-free receive paths are the python backend's"
)


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
            Children.tell(child, "go")
            assert Children.readline(child, 30) == "shut down"
        return result

    setattr(handle, method, stalled_read)
    return stalled


def test_ring_last_message_before_shutdown_is_received_not_closed(
    ring_name: str, children: Children
) -> None:
    ring = Ring.create(ring_name, 4096)
    try:
        child = children.code(
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
            """,
            stdin=True,
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
    ring_name: str, children: Children, policy: str
) -> None:
    pub = Broadcast.create(ring_name, 4096, subscribers=4, policy=policy)
    sub = Broadcast.subscribe(ring_name)
    try:
        child = children.code(
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
            """,
            stdin=True,
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
