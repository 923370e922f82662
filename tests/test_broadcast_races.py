"""Broadcast handles under threads and fork(): close() racing calls in other threads, a forked
child with an inherited subscriber. Each case runs in a child interpreter, so that a crash is
reported as a failure rather than taking pytest down; real threads, processes and shared memory.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from typing import Any

import pytest
from conftest import interrupted_at, run_python

from fastipc import Broadcast, Timeout


def test_subscribers_count_racing_close_from_another_thread_never_crashes(ring_name: str) -> None:
    """``subscribers`` reads every slot (and /proc) with the GIL released: a close() from
    another thread meanwhile must not unmap the segment under it (it segfaulted)."""
    out = run_python(
        f"""
        import threading, time
        from fastipc import Broadcast

        name = {ring_name!r}
        pub = Broadcast.create(name, 4096, subscribers=64)
        subs = [Broadcast.subscribe(name) for _ in range(60)]
        odd = []
        for trial in range(100):
            p = Broadcast.open(name)
            started = threading.Event()

            def count():
                try:
                    while True:
                        n = p.subscribers
                        if n != 60:
                            odd.append(n)
                        started.set()
                except ValueError as exc:  # the handle is closed: the only way out
                    assert "closed" in str(exc), exc
                    started.set()

            t = threading.Thread(target=count)
            t.start()
            started.wait(10)
            time.sleep(0.001)
            p.close()
            t.join(10)
            assert not t.is_alive()
        assert not odd, odd
        for s in subs:
            s.close()
        pub.close()
        print("done")
        """
    )
    assert out.stdout.strip() == "done"


def test_a_forked_child_closing_its_inherited_subscriber_leaves_the_parents_slot(
    ring_name: str,
) -> None:
    """A subscriber belongs to the process that subscribed: a forked child that closes (or
    drops) its inherited copy must not free the parent's slot, else a ``block`` publisher
    stops waiting for the parent and overwrites what it has not read."""
    out = run_python(
        f"""
        import os
        from fastipc import Broadcast, Full

        name = {ring_name!r}
        pub = Broadcast.create(name, 4096, policy="block")
        sub = Broadcast.subscribe(name)
        pid = os.fork()
        if pid == 0:
            try:
                sub.close()
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert pub.subscribers == 1, pub.subscribers
        sent = 0
        try:
            while sent < 1000:  # a 4 KiB ring holds far fewer 100-byte messages
                pub.publish(b"%05d" % sent + bytes(95), timeout=0)
                sent += 1
        except Full:
            pass
        assert sent < 1000, "the publisher no longer waits for the parent's subscriber"
        for k in range(sent):
            assert sub.recv(timeout=5)[:5] == b"%05d" % k
        sub.close()
        pub.close()
        print("done")
        """
    )
    assert out.stdout.strip() == "done"


def test_a_forked_child_cannot_use_or_disturb_its_inherited_subscriber(ring_name: str) -> None:
    """A forked child's calls on an inherited subscriber raise ValueError (the python
    backend's rule; the native one let the child move the parent's cursor), and a child
    unwinding the parent's open recv_view block leaves the parent's pin in place."""
    out = run_python(
        f"""
        import os, sys
        from fastipc import Broadcast, Full

        name = {ring_name!r}
        pub = Broadcast.create(name, 256)  # overwrite: waits for a pinned view only
        sub = Broadcast.subscribe(name)
        pub.publish(b"one")
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                sub.recv(timeout=0)
            except ValueError as exc:
                code = 0 if "forked child" in str(exc) else 4
            except BaseException:
                code = 5
            os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0, "the child's receive did not raise ValueError"
        assert sub.recv(timeout=0) == b"one"  # still there for the parent

        pub.publish(b"pinned")
        parent = os.getpid()
        try:
            with sub.recv_view(timeout=5) as view:
                pid = os.fork()
                if pid == 0:
                    sys.exit(0)  # unwinds the block (and its release) in the child
                assert os.waitpid(pid, 0)[1] == 0
                try:
                    for k in range(1000):
                        pub.publish(b"x" * 40, timeout=0)
                except Full:
                    pass
                else:
                    raise AssertionError("the parent's view lost its pin to the child")
                assert bytes(view) == b"pinned"
        except BaseException:
            if os.getpid() != parent:
                os._exit(0)
            raise
        sub.close()
        pub.close()
        print("done")
        """
    )
    assert out.stdout.strip() == "done"


def test_closing_a_subscriber_gives_its_slot_back_while_an_export_of_a_view_lives(
    ring_name: str,
) -> None:
    """close() gives the slot back even while a slice of a past recv_view is kept: the
    native handle kept its slot until the export died, and a block publisher waited for
    a cursor that would never move."""
    out = run_python(
        f"""
        from fastipc import Broadcast

        name = {ring_name!r}
        pub = Broadcast.create(name, 256, policy="block")
        sub = Broadcast.subscribe(name)
        pub.publish(b"a" * 40)
        with sub.recv_view(timeout=5) as view:
            keep = view[:]  # outlives the block and the handle
        sub.close()
        assert pub.subscribers == 0, pub.subscribers
        for k in range(200):  # far more than the ring holds: nobody to wait for
            pub.publish(b"x" * 40, timeout=0)
        assert len(bytes(keep)) == 40  # still readable (any bytes), never a fault
        del keep
        pub.close()
        print("done")
        """
    )
    assert out.stdout.strip() == "done"


def test_shutdown_racing_a_publish_on_the_same_handle_opens_each_doorbell_once(
    ring_name: str,
) -> None:
    """shutdown() rings every subscriber's doorbell, and a publish in another thread (the
    GIL released while it waited for room) rings a watched one's: the first ring of a
    handle opens the bell FIFO, and both opening it at once kept one fd and leaked the
    other (or, the handle's table of bell fds being made by both, wrote a byte to an fd
    number read from uninitialised memory: someone else's file). Each handle must hold at
    most one fd per bell, and closing it must leave none behind."""
    out = run_python(
        f"""
        import os, random, threading, time
        from fastipc import Broadcast, Closed

        def fds_to(path):
            n = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    n += os.readlink(f"/proc/self/fd/{{fd}}") == path
                except OSError:
                    pass
            return n

        most = 0
        for trial in range(300):
            name = f"{ring_name}_{{trial}}"
            pub = Broadcast.create(name, 1024, subscribers=2, policy="block")
            sub = Broadcast.subscribe(name)
            bell = sub._open_bell()  # as the asyncio face does: the FIFO, then the watch
            sub._watch(1)
            path = os.readlink(f"/proc/self/fd/{{bell}}")
            while True:  # fill the ring: the thread's publish must wait for room
                try:
                    pub.publish(b"x" * 100, timeout=0)
                except Exception:
                    break

            def publish():
                try:
                    pub.publish(b"y" * 100, timeout=10)
                except Closed:
                    pass

            t = threading.Thread(target=publish)
            t.start()
            time.sleep(0.002)
            sub.recv(timeout=0)  # room: the publish goes on, with the GIL released
            end = time.perf_counter() + random.random() * 80e-6
            while time.perf_counter() < end:
                pass
            pub.shutdown()
            t.join(10)
            # less the subscriber's own two: its slot's bell (held since it subscribed)
            # and the duplicate _open_bell made of it
            most = max(most, fds_to(path) - 2)
            pub.unlink()
            pub.close()
            sub.close()
            os.close(bell)
            assert fds_to(path) == 0, (trial, fds_to(path))
        assert most <= 1, most
        print("done")
        """
    )
    assert out.stdout.strip() == "done"


@pytest.mark.parametrize("policy", ["overwrite", "block"])
def test_a_publish_a_handler_interrupted_at_any_instant_leaves_no_lock_taken(
    ring_name: str, policy: str
) -> None:
    """A publisher whose call a raising signal handler cut short (at each instant where
    CPython runs one, in turn) and that stays idle must leave both locks free: another
    publisher publishes and a subscriber takes a view at once. (The python backend's
    commit left its state lock taken when the handler raised as the commit began.)"""
    big = 20_000  # over the one-call publish: the producer lock, then the commit's
    pub = Broadcast.create(ring_name, 4 * big, subscribers=4, policy=policy)
    sub = Broadcast.subscribe(ring_name)
    other = Broadcast.open(ring_name)

    def reserve(p: Broadcast) -> None:
        with p.reserve(big, timeout=1) as view:
            view[:4] = b"resv"

    calls: list[Any] = [
        lambda p: p.publish(b"p" * big, timeout=1),
        lambda p: p.publish_many([b"m" * big, b"n" * big], timeout=1),
        reserve,
    ]
    try:
        for call in calls:
            for n in itertools.count(1):
                with contextlib.suppress(Timeout):
                    while True:
                        sub.recv(timeout=0)
                done = not interrupted_at(lambda call=call: call(pub), n)
                gc.collect()  # a reserve() block cut short in __enter__ lets go with its frame
                t0 = time.monotonic()
                other.publish(b"after", timeout=0.5)
                with sub.recv_view(timeout=0.5):
                    pass
                assert time.monotonic() - t0 < 0.5, n
                if done:
                    break
    finally:
        other.close()
        sub.close()
        pub.close()
