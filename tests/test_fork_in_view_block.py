"""fork() inside an open reserve()/recv_view() block: the child's copy of the block is not
the parent's hold.

The parent's block holds a side of a shared segment (a ring's producer or consumer lock,
a broadcast ring's publisher lock, a subscriber's pinned message). A child made by fork()
inside it leaves its copy of the block when it returns through it: that copy used to let
the parent's side go (native: the hold record's clean-up released the lock "for its
thread"; python: it committed the parent's message and posted its semaphore), so another
participant got in while the parent's view was still open, and the message was
delivered twice. Now the child's exit publishes and consumes nothing and says why.
Real processes and shared memory, both backends; each case runs in a child interpreter.
"""

from __future__ import annotations

import pytest
from conftest import run_python


@pytest.mark.parametrize("kind", ["ring", "broadcast"])
@pytest.mark.parametrize("block", ["reserve", "recv_view"])
def test_a_forked_child_leaving_its_copy_of_a_block_leaves_the_parents_hold(
    ring_name: str, kind: str, block: str
) -> None:
    out = run_python(
        f"""
        import os, threading
        from fastipc import Broadcast, Empty, Full, Ring

        kind, block, name = {kind!r}, {block!r}, {ring_name!r}
        if kind == "ring":
            h = Ring.create(name, 4096)
            other = Ring.open(name)
            src = h
        else:
            h = Broadcast.create(name, capacity=4096)
            other = Broadcast.open(name)  # a second publisher
            src = Broadcast.subscribe(name) if block == "recv_view" else None
            h, pub = (src, h) if block == "recv_view" else (h, h)
        sender = other if kind == "ring" else (pub if block == "recv_view" else other)
        for m in (b"m1", b"m2", b"m3"):
            sender.send(m) if kind == "ring" else sender.publish(m)

        cm = h.recv_view(timeout=5) if block == "recv_view" else h.reserve(4, timeout=5)
        v = cm.__enter__()
        pid = os.fork()
        if pid == 0:
            try:
                cm.__exit__(None, None, None)
                os._exit(3)  # left without a word: wrong
            except RuntimeError as exc:
                os._exit(0 if "fork()" in str(exc) else 4)
            except BaseException:
                os._exit(5)
        _, status = os.waitpid(pid, 0)

        # The parent's side is still held: nobody else gets in while its block is open
        # (another thread: the native locks know this thread as the holder).
        def attempt(call):
            res = []
            def run():
                try:
                    res.append(call())
                except (Empty, Full) as exc:
                    res.append(type(exc).__name__)
            t = threading.Thread(target=run)
            t.start()
            t.join(10)
            return res[0]

        if kind == "ring" and block == "recv_view":
            got = attempt(lambda: other.recv(timeout=0.3))
            assert got == "Empty", f"another consumer got {{got!r}} during the view"
        elif block == "reserve":
            put = other.send if kind == "ring" else other.publish
            got = attempt(lambda: put(b"in", timeout=0.3))
            assert got == "Full", "another producer got in during the reservation"
        seen = bytes(v)
        if block == "reserve":
            v[:] = b"mine"
        cm.__exit__(None, None, None)  # the parent's block ends normally

        if kind == "ring":
            rest = other.recv_many(10, timeout=1)
            want = [b"m2", b"m3"] if block == "recv_view" else [b"m1", b"m2", b"m3", b"mine"]
            assert rest == want, rest
        elif block == "recv_view":
            assert seen == b"m1"
            assert [h.recv(timeout=1), h.recv(timeout=1)] == [b"m2", b"m3"]
            try:
                h.recv(timeout=0)
                raise AssertionError("a message came twice")
            except Empty:
                pass
        # Last, so that the old code failed on what the parent met: the child's exit
        # says why it published or consumed nothing (RuntimeError, exit 0 here).
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        for x in {{id(o): o for o in (h, other, src, sender) if o is not None}}.values():
            x.close()
        (Ring if kind == "ring" else Broadcast).unlink_name(name)
        print("done")
        """
    )
    assert out.stdout.strip() == "done"


@pytest.mark.parametrize("kind", ["ring", "broadcast"])
def test_a_block_the_forked_child_opens_itself_lets_go_whatever_ends_it(
    ring_name: str, kind: str
) -> None:
    """The other way round: a child using a handle it inherited (no block open at the
    fork) opens its own reserve() block, which ends in an exception. The first fix for
    the case above asked whether the handle was a forked copy, not the hold: the child's
    own producer lock was never let go, and every producer everywhere waited."""
    out = run_python(
        f"""
        import os
        from fastipc import Broadcast, Full, Ring

        kind, name = {kind!r}, {ring_name!r}
        h = Ring.create(name, 4096) if kind == "ring" else Broadcast.create(name, capacity=4096)
        put = h.send if kind == "ring" else h.publish
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                with h.reserve(8, timeout=1):
                    raise KeyError("abandon the reservation")
            except KeyError:
                pass
            try:
                put(b"child", timeout=1)  # the child's handle is usable again
            except BaseException:
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        put(b"parent", timeout=1)  # Full here: the child's lock was never let go
        h.close()
        (Ring if kind == "ring" else Broadcast).unlink_name(name)
        print("done")
        """
    )
    assert out.stdout.strip() == "done"
