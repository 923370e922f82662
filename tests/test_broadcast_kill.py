"""Broadcast rings across real processes: fan-out to child subscribers, several publishers,
and SIGKILLed subscribers and publishers (slots reclaimed, nothing torn, nothing stalled)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from _workers import make_msg, parse_msg
from conftest import TESTS_DIR, Children, child_env

from fastipc import Broadcast, Full


def start(children: Children, *args: object, wait_for: str = "ready") -> subprocess.Popen[str]:
    """A ``python -m _bcast_workers ARGS`` child, killed at teardown; waits for its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "_bcast_workers", *map(str, args)],
        env=child_env(),
        cwd=TESTS_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.procs.append(proc)
    line = children.readline(proc, 30)
    assert line.startswith(wait_for), f"child said {line!r}; stderr: {children.stderr(proc)}"
    return proc


def finish(children: Children, proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """The child's last line once it exited 0."""
    # Not communicate(): it reads the raw pipes, and a line the readline() of
    # start() already pulled into the text buffer along with "ready" (a child
    # that finished quickly) would be lost. The children print a few lines.
    children.wait(proc, timeout)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, f"child failed ({proc.returncode}): {err}"
    return out.strip().splitlines()[-1]


def fill(pub: Broadcast, size: int) -> int:
    n = 0
    with pytest.raises(Full):
        while True:
            pub.publish(b"f" * size, timeout=0)
            n += 1
            assert n < 1_000_000
    return n


def test_child_subscribers_each_get_every_message_of_several_publishers(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 8192, policy="block") as pub:
        subs = [start(children, "sub_count", ring_name, 2 * 500) for _ in range(3)]
        pubs = [start(children, "pub_seq", ring_name, k, 500, 100) for k in range(2)]
        for p in pubs:
            assert finish(children, p) == "done"
        for s in subs:
            assert finish(children, s) == "done 0:499 1:499"
        assert pub.subscribers == 0


def test_a_killed_subscriber_never_stalls_a_blocked_publisher(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 256, policy="block", subscribers=2) as pub:
        victim = start(children, "sub_hold", ring_name)
        assert pub.subscribers == 1
        fill(pub, 40)
        with pytest.raises(Full):
            pub.publish(b"x" * 40, timeout=0.1)  # the live subscriber holds it
        victim.kill()
        victim.wait(10)
        pub.publish(b"x" * 40, timeout=30)  # its slot is reclaimed: room again
        assert pub.subscribers == 0
        subs = [Broadcast.subscribe(ring_name) for _ in range(2)]  # both slots usable
        for s in subs:
            s.close()


def test_a_live_subscribers_bells_do_not_put_off_freeing_a_killed_ones_slot(
    ring_name: str, children: Children
) -> None:
    """A publisher waiting for room looks for dead subscribers by the clock. A live
    subscriber working through its backlog rings it at every message; when each bell
    restarted the count of silence, a subscriber killed after the publisher's first
    look kept the floor until the live one had drained everything."""
    with Broadcast.create(ring_name, 4096, policy="block", subscribers=4) as pub:
        victim = start(children, "sub_hold", ring_name)
        live = Broadcast.subscribe(ring_name)
        try:
            backlog = fill(pub, 40)
            done = threading.Event()

            def publish() -> None:
                pub.publish(b"x" * 40, timeout=60)
                done.set()

            t = threading.Thread(target=publish)
            t.start()
            time.sleep(0.2)  # its first look finds the victim alive
            victim.kill()
            victim.wait(10)
            taken = 0
            while not done.is_set() and taken < backlog:
                live.recv(timeout=10)
                taken += 1
                time.sleep(0.05)  # a bell every 50 ms, well under the 0.2 s look
            t.join(60)
            assert done.is_set()
            # Freed at the next look (~0.2 s: a few messages in), not after all of them.
            assert taken < backlog // 2, (taken, backlog)
        finally:
            live.close()


def test_a_killed_subscriber_holding_a_view_releases_its_pin(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 256, subscribers=2) as pub:  # overwrite
        holder = start(children, "sub_view_hold", ring_name)
        pub.publish(b"pinned" * 6)
        line = children.readline(holder, 30)
        assert line == "viewing 36"
        with pytest.raises(Full):
            for _ in range(1000):  # overwrite waits for a pinned view only
                pub.publish(b"p" * 40, timeout=0)
        holder.kill()
        holder.wait(10)
        for _ in range(1000):
            pub.publish(b"p" * 40, timeout=30)


def test_a_slot_of_a_dead_subscriber_is_reclaimed_when_slots_run_out(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 256, subscribers=1):
        victim = start(children, "sub_hold", ring_name)
        with pytest.raises(OSError):
            Broadcast.subscribe(ring_name)
        victim.kill()
        victim.wait(10)
        Broadcast.subscribe(ring_name).close()


@pytest.mark.parametrize("round_", range(3))
def test_a_publisher_killed_mid_publish_leaves_the_ring_usable_and_nothing_torn(
    ring_name: str, children: Children, round_: int
) -> None:
    with Broadcast.create(ring_name, 4096) as pub:  # overwrite: the reader may lag
        reader = start(children, "sub_check_all", ring_name)
        writer = start(children, "pub_forever", ring_name, 700 + 300 * round_)
        time.sleep(0.2 + 0.1 * round_)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
        sub = Broadcast.subscribe(ring_name)
        for seq in range(5):
            pub.publish(make_msg(1, seq, 100), timeout=30)
        assert [parse_msg(sub.recv(timeout=30)) for _ in range(5)] == [(1, s) for s in range(5)]
        sub.close()
        pub.shutdown()
        done, got, _lagged = finish(children, reader).split()
        assert done == "done" and int(got) >= 5


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_publishers_that_never_wait_are_not_stalled_for_good_by_a_killed_subscriber(
    ring_name: str, children: Children, policy: str
) -> None:
    """A publisher using timeout=0 (or any timeout shorter than the liveness check) must get
    going again once a killed subscriber's slot (or its view's pin) is found dead; it got Full
    for ever: only a publisher that slept long enough ever reclaimed the slot."""
    with Broadcast.create(ring_name, 256, policy=policy, subscribers=2) as pub:
        if policy == "block":
            victim = start(children, "sub_hold", ring_name)
        else:
            victim = start(children, "sub_view_hold", ring_name)
            pub.publish(b"pinned" * 6)
            assert children.readline(victim, 30) == "viewing 36"
        fill(pub, 40)
        victim.kill()
        victim.wait(10)
        deadline = time.monotonic() + 30
        while True:  # a bound on a hang, not a timing check
            try:
                pub.publish(b"x" * 40, timeout=0)
                break
            except Full:
                assert time.monotonic() < deadline, "timeout=0 publishes stalled for good"
                time.sleep(0.001)
        assert pub.subscribers == 0
