"""A handle's readiness fd is the doorbell it holds, never its FIFO reopened by path.

Real rings and broadcast rings, peers in real child processes, real
/dev/shm. A handle opens its bells when it opens the ring (a subscriber its
slot's when it subscribes); ``fileno()`` (and aio's own fds) duplicate
them. So a handle whose ring was removed never makes a FIFO in /dev/shm
again (litter that a ring later made under the same name would adopt),
and its readiness fd is the very FIFO its peers ring.
"""

from __future__ import annotations

import asyncio
import os
import select
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _cli_util import ring_row
from conftest import child_env, shm_entries

import fastipc
import fastipc.aio
from fastipc import Broadcast, Ring
from fastipc._names import bell_paths, subscriber_bell_path

#: Seconds to wait for anything that should happen at once.
T = 10.0

#: A peer process: makes or opens the ring (argv: kind, name, how, mode), says
#: "ready", then per line of stdin: "send" sends (publishes) b"z" and answers
#: "sent"; "wait" watches its own readiness fd, answers "watching", and
#: answers "rung" once the fd polls readable (nothing else looks: no backstop),
#: then takes the message; "exit" ends it.
PEER = """
import os, select, sys
import fastipc
import fastipc.aio
from fastipc import Broadcast, Ring

kind, name, how, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4], 8)
if kind == "ring":
    h = Ring.create(name, 4096, mode=mode) if how == "create" else Ring.open(name)
    send, waiter = h.send, h
else:
    pub = Broadcast.create(name, 4096, mode=mode) if how == "create" else Broadcast.open(name)
    waiter = Broadcast.subscribe(name) if how == "subscribe" else None
    send, h = pub.publish, pub
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "send":
        send(b"z")
        print("sent", flush=True)
    elif cmd == "wait":
        with waiter.watch() as ready:
            print("watching", flush=True)
            if not ready:
                p = select.poll()
                p.register(waiter.fileno(), select.POLLIN)
                print("rung" if p.poll(10_000) else "silent", flush=True)
            else:
                print("rung", flush=True)
        assert waiter.recv(timeout=5) == b"z"
    elif cmd == "exit":
        break
"""


class Peer:
    """A PEER child, driven line by line."""

    def __init__(self, kind: str, name: str, how: str, mode: int = 0o600) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PEER), kind, name, how, oct(mode)],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.expect("ready")

    def expect(self, word: str) -> None:
        out = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], T)
        assert ready, f"peer said nothing within {T} s (expected {word!r})"
        assert out.readline().strip() == word

    def tell(self, line: str, answer: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self.expect(answer)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("exit\n")
                self.proc.stdin.close()
                self.proc.wait(T)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(T)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def rung_within(fd: int, timeout: float = T) -> bool:
    """Whether ``fd`` polls readable within ``timeout`` (the fd alone: no backstop)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(int(timeout * 1000)))


def same_file(fd: int, path: str) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ---- a removed ring -------------------------------------------------------------------


def test_fileno_of_a_removed_ring_makes_no_fifo_and_is_the_bell_the_peer_rings(
    ring_name: str, peers: list[Peer]
) -> None:
    """A ring removed under its handles: the first fileno() after the removal
    makes nothing in /dev/shm (it made the FIFO again), and the fd is rung by a
    peer process that opened the ring before the removal (the made-again FIFO
    was one the peer never rang: the native peer held the removed one)."""
    ring = Ring.create(ring_name, 4096)
    peer = Peer("ring", ring_name, "open")
    peers.append(peer)
    try:
        Ring.unlink_name(ring_name)
        assert shm_entries(ring_name) == []
        fd = ring.fileno()
        assert shm_entries(ring_name) == []
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
        with ring.watch() as ready:
            assert not ready
            peer.tell("send", "sent")
            assert rung_within(fd), "the peer's send did not ring the fd"
        assert ring.recv(timeout=0) == b"z"
        # And the other way: the peer's readiness fd is rung by this handle.
        peer.tell("wait", "watching")
        ring.send(b"z")
        peer.expect("rung")
        assert shm_entries(ring_name) == []
    finally:
        ring.close()
    peer.close()
    assert shm_entries(ring_name) == []
    assert ring_row(ring_name) is None  # `fastipc ls` shows nothing left of it


def test_fileno_of_a_removed_broadcast_ring_makes_no_fifo(
    ring_name: str, peers: list[Peer]
) -> None:
    """A subscriber of a removed broadcast ring: fileno() asked for first after
    the removal makes no FIFO (it made the slot's bell again), and the
    subscriber still hears a publisher in another process (through a bell the
    publisher had opened, or the 0.2 s backstop of fastipc.wait)."""
    pub = Broadcast.create(ring_name, 4096, subscribers=4)
    sub = Broadcast.subscribe(ring_name)
    peer = Peer("broadcast", ring_name, "open")
    peers.append(peer)
    try:
        Ring.unlink_name(ring_name)
        assert shm_entries(ring_name) == []
        fd = sub.fileno()
        assert shm_entries(ring_name) == []
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
        peer.tell("send", "sent")
        assert fastipc.wait([sub], timeout=T) == [sub]
        assert sub.recv(timeout=0) == b"z"
        assert shm_entries(ring_name) == []
    finally:
        sub.close()
        pub.close()
    peer.close()
    assert shm_entries(ring_name) == []
    assert ring_row(ring_name) is None


def test_a_subscribers_bell_rung_before_the_removal_is_its_fileno_after_it(
    ring_name: str, peers: list[Peer]
) -> None:
    """The publisher in another process rang the subscriber's bell before the
    ring was removed (so holds it); the subscriber's first fileno() after the
    removal is that same FIFO: the publisher's bell wakes it (no backstop)."""
    peer = Peer("broadcast", ring_name, "create")
    peers.append(peer)
    sub = Broadcast.subscribe(ring_name)
    aio_sub: Any = None
    try:
        # Wake the subscriber once through aio (its own fd, not fileno()): the
        # publisher opens the slot's bell then, while the ring has its name.
        async def once() -> bytes:
            nonlocal aio_sub
            aio_sub = fastipc.aio.Subscriber(sub)
            task = asyncio.ensure_future(aio_sub.recv(timeout=T))
            await asyncio.sleep(0.3)  # registered at the bell, asleep
            await asyncio.get_running_loop().run_in_executor(None, peer.tell, "send", "sent")
            return await task

        assert asyncio.run(once()) == b"z"
        Ring.unlink_name(ring_name)
        fd = sub.fileno()
        assert shm_entries(ring_name) == []
        with sub.watch() as ready:
            assert not ready
            peer.tell("send", "sent")
            assert rung_within(fd), "the publisher's bell did not ring the subscriber's fd"
        assert sub.recv(timeout=0) == b"z"
    finally:
        if aio_sub is not None:
            aio_sub.close()
        sub.close()
    peer.close()
    assert shm_entries(ring_name) == []


# ---- a ring made again under the name of a removed one -------------------------------


def test_a_ring_made_again_under_the_name_never_shares_a_stale_handles_bell(
    ring_name: str, peers: list[Peer]
) -> None:
    """A stale handle of a removed ring asks for its fd; a ring is made again
    under the name (by another process, with mode 0640): its bells are its own
    (its mode, not the stale handle's FIFO adopted), the stale fd is not one of
    them (its drains would take the new ring's wake-ups), and the new ring's
    creator and opener wake each other through the bell."""
    stale = Ring.create(ring_name, 4096)
    try:
        Ring.unlink_name(ring_name)
        stale_fd = stale.fileno()
        creator = Peer("ring", ring_name, "create", 0o640)
        peers.append(creator)
        for path in bell_paths(ring_name):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path
        assert not same_file(stale_fd, bell_paths(ring_name)[0])
        opener = Ring.open(ring_name)
        try:
            fd = opener.fileno()
            assert same_file(fd, bell_paths(ring_name)[0])
            with opener.watch() as ready, stale.watch():
                assert not ready
                creator.tell("send", "sent")
                assert rung_within(fd), "the creator's send did not ring the opener"
            assert opener.recv(timeout=0) == b"z"
            creator.tell("wait", "watching")
            with stale.watch():  # drains the stale bell: not the creator's
                opener.send(b"z")
                creator.expect("rung")
        finally:
            opener.close()
            opener.unlink()
    finally:
        stale.close()
    creator.close()
    assert shm_entries(ring_name) == []
    assert ring_row(ring_name) is None


def test_a_broadcast_ring_made_again_never_shares_a_stale_subscribers_bell(
    ring_name: str, peers: list[Peer]
) -> None:
    """As above for a broadcast ring: a stale subscriber of a removed ring asks
    for its fd; a new ring of the name (another process publishes) gets a new
    subscriber in the same slot, whose bell is not the stale one, and the
    publisher wakes it."""
    old_pub = Broadcast.create(ring_name, 4096, subscribers=4)
    stale = Broadcast.subscribe(ring_name)
    try:
        slot = stale._slot
        Ring.unlink_name(ring_name)
        stale_fd = stale.fileno()
        creator = Peer("broadcast", ring_name, "create", 0o640)
        peers.append(creator)
        sub = Broadcast.subscribe(ring_name)
        try:
            assert sub._slot == slot
            path = subscriber_bell_path(ring_name, slot)
            fd = sub.fileno()
            assert same_file(fd, path)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
            assert not same_file(stale_fd, path)
            with sub.watch() as ready, stale.watch():
                assert not ready
                creator.tell("send", "sent")
                assert rung_within(fd), "the publisher did not ring the new subscriber"
            assert sub.recv(timeout=0) == b"z"
        finally:
            sub.close()
            Ring.unlink_name(ring_name)
    finally:
        stale.close()
        old_pub.close()
    creator.close()
    assert shm_entries(ring_name) == []
    assert ring_row(ring_name) is None


# ---- the fd's lifetime ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ring", "subscriber"])
def test_fileno_from_many_threads_is_one_fd_closed_by_close(ring_name: str, kind: str) -> None:
    """Threads asking at once for the fd of a removed ring's handle get the same
    fd and make no FIFO; close() closes it; no fd is left open."""

    before = set(os.listdir("/proc/self/fd"))
    if kind == "ring":
        owner: Any = Ring.create(ring_name, 4096)
        handle: Any = owner
    else:
        owner = Broadcast.create(ring_name, 4096, subscribers=2)
        handle = Broadcast.subscribe(ring_name)
    Ring.unlink_name(ring_name)
    try:
        got: list[int] = []
        go = threading.Barrier(8)

        def ask() -> None:
            go.wait()
            got.append(handle.fileno())

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T)
        assert len(got) == 8 and len(set(got)) == 1
        fd = got[0]
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
        assert shm_entries(ring_name) == []
    finally:
        handle.close()
        if owner is not handle:
            owner.close()
    with pytest.raises(ValueError):
        handle.fileno()
    assert set(os.listdir("/proc/self/fd")) <= before | {str(fd)}
    with pytest.raises(OSError):
        os.fstat(fd)  # closed (unless reused by now, which nothing here does)


def test_a_forked_child_rings_and_hears_the_parents_ring_after_removal(ring_name: str) -> None:
    """A handle inherited through fork() keeps its bells: in the child, after the
    ring was removed, fileno() makes no FIFO and the parent's send rings it."""
    ring = Ring.create(ring_name, 4096)
    r, w = os.pipe()
    try:
        Ring.unlink_name(ring_name)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(r)
                fd = ring.fileno()
                with ring.watch():
                    os.write(w, b"w" if not shm_entries(ring_name) else b"L")
                    if rung_within(fd) and ring.recv(timeout=0) == b"z":
                        code = 0
            finally:
                os._exit(code)
        os.close(w)
        assert os.read(r, 1) == b"w", "the child's fileno() made a FIFO in /dev/shm"
        ring.send(b"z")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(r)
        ring.close()
    assert shm_entries(ring_name) == []


def _same_fifo_fds(fd: int) -> list[int]:
    """The other fds of this process open on the FIFO of ``fd``."""
    st = os.fstat(fd)
    out = []
    for name in os.listdir("/proc/self/fd"):
        other = int(name)
        if other == fd:
            continue
        try:
            o = os.fstat(other)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            out.append(other)
    return out


@pytest.mark.parametrize("kind", ["ring", "subscriber"])
def test_a_readiness_fd_made_blocking_leaves_the_handles_own_bell_non_blocking(
    ring_name: str, kind: str
) -> None:
    """fileno()'s fd has an open file description of its own: a caller that makes it
    blocking (os.set_blocking) does not make the bell the handle rings and drains
    block too. A dup shared the flags: a send ringing a full FIFO would then hang."""
    if kind == "ring":
        owner = handle = Ring.create(ring_name, 4096)
    else:
        owner = Broadcast.create(ring_name, 4096, subscribers=2)
        handle = Broadcast.subscribe(ring_name)
    try:
        fd = handle.fileno()
        held = _same_fifo_fds(fd)
        assert held  # the bell the handle holds
        os.set_blocking(fd, False)
        os.set_blocking(fd, True)
        assert all(not os.get_blocking(h) for h in held)
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        if handle is not owner:
            handle.close()
        owner.close()
        Ring.unlink_name(ring_name)
