"""Habits from queue.Queue and multiprocessing.Queue work on a Ring and a Channel (issue 15).

A timed-out receive is also a ``queue.Empty`` and a timed-out send a
``queue.Full`` (both still ``fastipc.Timeout``); ``empty()``, ``full()`` and
``free_bytes()`` answer what a producer or consumer asks before blocking; a
ring is always truthy; ``Ring.create(exist_ok=True)`` picks up a ring a
crashed run left, ``unlink_on_exit=True`` removes it at the end of ``with``.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
from pathlib import Path

import posix_ipc
import pytest
from conftest import child_env, shm_entries

import fastipc
from fastipc import Channel, Empty, Full, IncompatibleSegment, Ring, Timeout


def test_a_receive_timeout_is_queue_empty_and_a_send_timeout_queue_full(ring: Ring) -> None:
    with pytest.raises(queue.Empty) as got:
        ring.recv(timeout=0)
    assert isinstance(got.value, Timeout) and isinstance(got.value, Empty)
    assert "no message" in str(got.value)
    for call in (
        lambda: ring.recv(timeout=0.01),
        lambda: ring.recv_many(5, timeout=0),
        lambda: ring.recv_into(bytearray(10), timeout=0),
    ):
        with pytest.raises(queue.Empty):
            call()
    with pytest.raises(queue.Empty), ring.recv_view(timeout=0):
        pass
    while True:
        try:
            ring.send(b"x" * 100, timeout=0)
        except queue.Full as exc:
            assert isinstance(exc, Timeout) and not isinstance(exc, queue.Empty)
            break
    with pytest.raises(queue.Full):
        ring.send(b"x" * 100, timeout=0.01)
    with pytest.raises(queue.Full) as batch:
        ring.send_many([b"y" * 100] * 3, timeout=0)
    assert batch.value.sent == 0
    with pytest.raises(queue.Full), ring.reserve(100, timeout=0):
        pass


def test_channel_timeouts_are_queue_empty_and_queue_full() -> None:
    a, b = Channel.pair(handoff_min=0)
    try:
        with pytest.raises(queue.Empty):
            b.recv(timeout=0)
        with pytest.raises(queue.Empty):
            b.recv_many(3, timeout=0.01)
        big = b"z" * 65536
        with pytest.raises(queue.Full) as got:
            for _ in range(10_000):
                a.send(big, timeout=0.01)
        assert isinstance(got.value, Timeout)
    finally:
        a.close()
        b.close()


def test_empty_full_and_free_bytes_follow_the_ring(ring: Ring) -> None:
    assert ring.empty() and not ring.full()
    assert ring.free_bytes() == ring.capacity
    ring.send(b"a" * 100)
    assert not ring.empty()
    assert 0 < ring.free_bytes() <= ring.capacity
    while not ring.full():
        n = ring.free_bytes()
        ring.send(b"b" * n, timeout=0)  # what free_bytes promises fits without waiting
    assert ring.free_bytes() == 0
    with pytest.raises(Full):
        ring.send(b"", timeout=0)
    ring.recv()
    assert not ring.full()


def test_a_ring_is_truthy_even_when_empty(ring: Ring) -> None:
    assert len(ring) == 0
    assert bool(ring) is True
    assert (ring or None) is ring


def test_closed_handles_refuse_the_snapshots(ring: Ring) -> None:
    ring.close()
    for call in (ring.empty, ring.full, ring.free_bytes):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_exist_ok_opens_what_a_crashed_run_left_and_keeps_its_messages(ring_name: str) -> None:
    # The "crashed run": a process that made the ring, sent, and died without cleaning up.
    code = f"from fastipc import Ring; r = Ring.create({ring_name!r}, 4096); r.send(b'left'); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=60)
    with pytest.raises(FileExistsError):
        Ring.create(ring_name, 4096)
    r = Ring.create(ring_name, 4096, exist_ok=True)
    try:
        assert r.recv(timeout=5) == b"left"
    finally:
        r.close()
    with pytest.raises(IncompatibleSegment, match="capacity"):
        Ring.create(ring_name, 1 << 20, exist_ok=True)


def test_exist_ok_creates_when_nothing_is_there(ring_name: str) -> None:
    with Ring.create(ring_name, 1024, exist_ok=True) as r:
        r.send(b"x")
    assert shm_entries(ring_name)  # kept: with leaves the ring by default


def test_unlink_on_exit_removes_the_ring_when_the_block_ends(ring_name: str) -> None:
    with Ring.create(ring_name, 1024, unlink_on_exit=True) as r:
        assert shm_entries(ring_name)
        other = Ring.open(ring_name)
        r.send(b"still here")
    assert shm_entries(ring_name) == []
    try:
        assert other.recv(timeout=5) == b"still here"  # open handles keep working
    finally:
        other.close()


def test_calling_the_class_points_to_create_and_open() -> None:
    with pytest.raises(TypeError, match=r"Ring\.create\(name, capacity\).*Ring\.open\(name\)"):
        Ring("jobs")  # type: ignore[call-arg]


def test_a_ring_of_the_other_backend_names_the_setting_to_use(ring_name: str) -> None:
    other = "python" if fastipc.BACKEND == "native" else "native"
    code = f"from fastipc import Ring; Ring.create({ring_name!r}, 1024).close()"
    env = child_env(FASTIPC_BACKEND=other)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    with pytest.raises(IncompatibleSegment, match=f"FASTIPC_BACKEND={other}"):
        Ring.open(ring_name)
    assert os.environ.get("FASTIPC_BACKEND", fastipc.BACKEND) in ("auto", fastipc.BACKEND)


# ---- the clients of the other transports ----------------------------------------------
def test_transport_clients_time_out_as_queue_empty_and_queue_full(tmp_path: Path) -> None:
    """tcp, udp, unixgram, mq, fifo and fd:// clients: the same two habits as Ring and Channel."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:  # accepts (backlog), never reads
        port = lsock.getsockname()[1]
        with fastipc.connect(f"tcp://127.0.0.1:{port}") as cli:
            with pytest.raises(queue.Empty):
                cli.recv(timeout=0.05)
            with pytest.raises(queue.Full):
                for _ in range(10_000):  # the socket buffers fill: nobody reads
                    cli.send(b"x" * 65536, timeout=0.05)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as usock:
        usock.bind(("127.0.0.1", 0))
        udp = f"udp://127.0.0.1:{usock.getsockname()[1]}"
        with fastipc.connect(udp) as cli, pytest.raises(queue.Empty):
            cli.recv(timeout=0.05)
    path = str(tmp_path / "dgram.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gsock:
        gsock.bind(path)
        with fastipc.connect(f"unixgram://{path}") as cli:
            with pytest.raises(queue.Empty):
                cli.recv(timeout=0.05)
            with pytest.raises(queue.Full):
                for _ in range(10_000):  # the receive queue fills: nobody reads
                    cli.send(b"y" * 1024, timeout=0.05)
    os.unlink(path)
    qname = f"/fastipc.t{os.getpid()}_habits"
    try:
        with fastipc.connect(f"mq://{qname}?maxmsg=2&msgsize=16") as cli:
            with pytest.raises(queue.Empty):
                cli.recv(timeout=0.05)
            cli.send(b"1", timeout=0)
            cli.send(b"2", timeout=0)
            with pytest.raises(queue.Full):
                cli.send(b"3", timeout=0.05)
    finally:
        posix_ipc.unlink_message_queue(qname)
    fifo = str(tmp_path / "f.fifo")
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # there, never reading
    try:
        with fastipc.connect(f"fifo://{fifo}") as cli, pytest.raises(queue.Full):
            for _ in range(10_000):
                cli.send(b"z" * 1000, timeout=0.05)
    finally:
        os.close(reader)
    r, w = os.pipe()
    try:
        with fastipc.connect(f"fd://{r}") as cli, pytest.raises(queue.Empty):
            cli.recv(timeout=0.05)
    finally:
        os.close(w)
