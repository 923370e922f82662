"""A peer's announcement costs the receiver nothing it did not send (docs/architecture.md, "Wire format"; issue 10, defect 13).

A raw peer announces a frame of ``max_message`` bytes (64 MiB) and sends 9
of them: the receiver's memory (VmRSS, and VmData, which counts memory
allocated but not yet touched) must not grow by anything like the announced
size while it waits for the rest. Whole messages still arrive intact.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest

import fastipc
from fastipc import Channel, Timeout

_HEADER = struct.Struct("<II")
MIB = 1 << 20


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.parametrize("field", ["VmRSS", "VmData"])
def test_an_announced_frame_is_not_allocated_up_front(field: str) -> None:
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel.from_socket(mine, handoff_min=0)
    try:
        announced = ch.max_message
        assert announced >= 64 * MIB
        before = status_kib(field)
        peer.sendall(_HEADER.pack(announced, 0) + b"123456789")
        for _ in range(3):
            with pytest.raises(Timeout):
                ch.recv(timeout=0.02)
        grown = (status_kib(field) - before) * 1024
        assert grown < 16 * MIB, (
            f"{field} grew by {grown / MIB:.1f} MiB for a frame announcing "
            f"{announced / MIB:.0f} MiB of which 9 bytes came"
        )
    finally:
        ch.close()
        peer.close()


@pytest.mark.parametrize("size", [65 * 1024 + 3, MIB, 3 * MIB + 5, 9 * MIB])
def test_long_messages_arrive_whole(size: int) -> None:
    a, b = Channel.pair(handoff_min=0)
    try:
        msg = bytes(range(251)) * (size // 251) + b"z" * (size % 251)
        t = threading.Thread(target=a.send, args=(msg,))
        t.start()
        got = b.recv(timeout=30)
        t.join()
        assert got == msg
    finally:
        a.close()
        b.close()


def _slow_frames(peer: socket.socket, msg: bytes, pieces: int) -> None:
    peer.sendall(_HEADER.pack(len(msg), 0))
    step = -(-len(msg) // pieces)
    for i in range(0, len(msg), step):
        peer.sendall(msg[i : i + step])


def _pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


@pytest.mark.parametrize("size", [MIB + 1, 3 * MIB + 5, 9 * MIB])
def test_a_long_frame_from_a_slow_peer_survives_timeouts_at_every_stage(size: int) -> None:
    """A frame over 1 MiB starts in the channel's own buffer (a 16th of its
    length); timeouts before, during and after that part leave the progress
    for the next receive, and the message arrives whole and once."""
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel.from_socket(mine, handoff_min=0)
    try:
        msg = _pattern(size)
        peer.sendall(_HEADER.pack(size, 0))
        with pytest.raises(Timeout):
            ch.recv(timeout=0.01)
        cuts = [7, size // 32, size // 16 + 3, size // 2, size - 1]
        sent = 0
        for cut in cuts:
            # The socket holds less than a piece: the receiver must read
            # (and time out, the frame being incomplete) while it is sent.
            sender = threading.Thread(target=peer.sendall, args=(msg[sent:cut],))
            sender.start()
            while sender.is_alive():
                with pytest.raises(Timeout):
                    ch.recv(timeout=0.01)
            sender.join()
            with pytest.raises(Timeout):
                ch.recv(timeout=0.01)
            sent = cut
        sender = threading.Thread(target=peer.sendall, args=(msg[sent:] + _HEADER.pack(3, 0) + b"end",))
        sender.start()
        assert ch.recv(timeout=10) == msg
        assert ch.recv(timeout=10) == b"end"
        sender.join()
    finally:
        ch.close()
        peer.close()


def test_recv_into_finishes_a_long_frame_a_timed_out_recv_began() -> None:
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel.from_socket(mine, handoff_min=0)
    try:
        msg = _pattern(2 * MIB + 11)
        peer.sendall(_HEADER.pack(len(msg), 0) + msg[:1000])
        with pytest.raises(Timeout):
            ch.recv(timeout=0.01)
        small = bytearray(MIB)
        with pytest.raises(ValueError, match="does not fit"):
            ch.recv_into(small, timeout=0.01)
        sender = threading.Thread(target=peer.sendall, args=(msg[1000:],))
        sender.start()
        buf = bytearray(len(msg) + 10)
        assert ch.recv_into(buf, timeout=10) == len(msg)
        sender.join()
        assert buf[: len(msg)] == msg
    finally:
        ch.close()
        peer.close()


def test_a_peer_dying_inside_a_long_frame_closes_cleanly_and_frees_its_part() -> None:
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel.from_socket(mine, handoff_min=0)
    try:
        peer.sendall(_HEADER.pack(8 * MIB, 0) + b"x" * 100_000)
        with pytest.raises(Timeout):
            ch.recv(timeout=0.01)
        peer.close()
        with pytest.raises(fastipc.Closed):
            ch.recv(timeout=10)
    finally:
        ch.close()
