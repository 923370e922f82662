"""Bad input from the wire and ended connections: refused cleanly, never a partial message or a huge allocation."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
import tracemalloc

import pytest
from _channel_util import kids_fixture, no_fd_leak_fixture, sock_dir_fixture, sock_url_fixture  # noqa: F401

from fastipc import Channel, Closed, MessageTooLarge, Timeout, listen


def frame(payload: bytes, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack("<II", len(payload) if length is None else length, flags) + payload


@pytest.fixture
def raw_pair() -> tuple[socket.socket, Channel]:
    """A plain socket (the test plays a hostile or broken peer) and a channel on the other end."""
    s, t = socket.socketpair()
    ch = Channel.from_socket(t, max_message=1 << 20)
    yield s, ch
    s.close()
    ch.close()


def test_the_wire_format_is_the_documented_one(raw_pair: tuple[socket.socket, Channel]) -> None:
    s, ch = raw_pair
    ch.send(b"abc")
    ch.send_many([b"", b"xy"])
    assert s.recv(100) == frame(b"abc") + frame(b"") + frame(b"xy")
    s.sendall(frame(b"hello") + frame(b"") + frame(b"world"))
    assert [ch.recv(timeout=1) for _ in range(3)] == [b"hello", b"", b"world"]


def test_a_message_with_fds_is_flagged_on_the_wire(raw_pair: tuple[socket.socket, Channel]) -> None:
    s, ch = raw_pair
    r, w = os.pipe()
    ch.send(b"fd here", fds=[w])
    data, fds, _, _ = socket.recv_fds(s, 100, 4)
    assert data == frame(b"fd here", flags=1) and len(fds) == 1
    for fd in (r, w, *fds):
        os.close(fd)
    r, w = os.pipe()
    socket.send_fds(s, [frame(b"to you", flags=1)], [r])
    data, got = ch.recv_with_fds(timeout=1)
    assert data == b"to you" and len(got) == 1
    for fd in got:
        os.close(fd)
    os.close(r)
    os.close(w)


def test_header_over_max_message_is_message_too_large_and_closes(
    raw_pair: tuple[socket.socket, Channel], no_fd_leak: None
) -> None:
    s, ch = raw_pair
    s.sendall(frame(b"fine") + frame(b"", length=(1 << 20) + 1))
    assert ch.recv(timeout=1) == b"fine"
    with pytest.raises(
        MessageTooLarge, match=r"1048577 bytes, over max_message=1048576; channel closed"
    ):
        ch.recv(timeout=1)
    assert ch.closed


@pytest.mark.parametrize("call", ["recv", "recv_many", "recv_into", "recv_with_fds"])
def test_a_huge_announced_length_allocates_nothing(
    raw_pair: tuple[socket.socket, Channel], call: str
) -> None:
    s, ch = raw_pair
    s.sendall(frame(b"", length=0xFFFFFFFF))
    dst = bytearray(1 << 21)
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge):
            if call == "recv_many":
                ch.recv_many(10, timeout=1)
            elif call == "recv_into":
                ch.recv_into(dst, timeout=1)
            else:
                getattr(ch, call)(timeout=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated while refusing the frame"
    assert ch.closed


@pytest.mark.parametrize("cut", [3, 8, 8 + 100, 8 + 200_000])
def test_peer_closing_mid_frame_is_closed_without_a_partial_message(
    raw_pair: tuple[socket.socket, Channel], cut: int
) -> None:
    s, ch = raw_pair
    data = frame(b"whole") + frame(b"p" * 300_000)
    t = threading.Thread(target=lambda: (s.sendall(data[: 13 + cut]), s.close()))
    t.start()
    assert ch.recv(timeout=5) == b"whole"
    with pytest.raises(Closed, match="middle of a message"):
        ch.recv(timeout=5)
    t.join(5)
    assert ch.closed


def test_killed_peer_mid_frame_is_closed(sock_url: str, kids: object) -> None:
    head = frame(b"q" * 1000)[:500].hex()
    with listen(sock_url) as lst:
        kids.spawn("raw", sock_url, f"hex:{frame(b'ok').hex()},hex:{head},sleep:0.2,kill")  # type: ignore[attr-defined]
        with lst.accept(timeout=10) as ch:
            assert ch.recv(timeout=10) == b"ok"
            with pytest.raises(Closed, match="middle"):
                ch.recv(timeout=10)


def test_shutdown_write_lets_the_peer_drain_then_closed_and_reply(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    with a, b:
        a.send_many([b"1", b"2", b"3"])
        a.shutdown("write")
        got = []
        with pytest.raises(Closed):
            while True:
                got.append(b.recv(timeout=5))
        assert got == [b"1", b"2", b"3"]
        with pytest.raises(Closed):
            b.recv_many(3, timeout=5)  # stays Closed
        b.send(b"reply after your half-close")  # the other direction still works
        assert a.recv(timeout=5) == b"reply after your half-close"
        with pytest.raises(Closed):
            a.send(b"after shutdown")


def test_sending_to_a_closed_peer_is_closed(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    b.close()
    with a:
        with pytest.raises(Closed):
            for _ in range(100):
                a.send(b"x" * 1000)
        with pytest.raises(Closed):
            a.send_many([b"y"] * 10)


@pytest.mark.parametrize("flags", [8, 0x80000000, 0xFFFFFFFF])
def test_unknown_flag_bits_are_a_protocol_error(
    raw_pair: tuple[socket.socket, Channel], flags: int
) -> None:
    s, ch = raw_pair
    s.sendall(frame(b"x", flags=flags))
    with pytest.raises(OSError, match="protocol error") as info:
        ch.recv(timeout=1)
    assert info.value.errno == errno.EPROTO and ch.closed


def test_a_frame_flagged_with_fds_that_has_none_is_a_protocol_error(
    raw_pair: tuple[socket.socket, Channel],
) -> None:
    s, ch = raw_pair
    s.sendall(frame(b"x", flags=1))
    with pytest.raises(OSError) as info:
        ch.recv_with_fds(timeout=1)
    assert info.value.errno == errno.EPROTO and ch.closed


def test_fds_sent_without_the_flag_are_closed_not_given(
    raw_pair: tuple[socket.socket, Channel], no_fd_leak: None
) -> None:
    s, ch = raw_pair
    r, w = os.pipe()
    socket.send_fds(s, [frame(b"sneaky")], [r, w])
    s.sendall(frame(b"next"))
    assert ch.recv_with_fds(timeout=1) == (b"sneaky", [])
    assert ch.recv_with_fds(timeout=1) == (b"next", [])
    os.close(r)
    os.close(w)


def test_bytes_trickling_in_make_one_message(raw_pair: tuple[socket.socket, Channel]) -> None:
    s, ch = raw_pair
    data = frame(b"slow" * 10) + frame(b"")

    def trickle() -> None:
        for i in range(len(data)):
            s.send(data[i : i + 1])
            time.sleep(0.001)

    t = threading.Thread(target=trickle)
    t.start()
    assert ch.recv(timeout=5) == b"slow" * 10
    assert ch.recv(timeout=5) == b""
    t.join()
    with pytest.raises(Timeout):
        ch.recv(timeout=0)


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_from_a_hostile_peer_never_crash_or_hang(seed: int, no_fd_leak: None) -> None:
    import random

    rnd = random.Random(seed)
    allowed = (Closed, MessageTooLarge, Timeout, OSError)
    for trial in range(40):
        s, t = socket.socketpair()
        ch = Channel.from_socket(t, max_message=rnd.choice([10, 1000, 1 << 20]))
        parts = []
        for _ in range(rnd.randint(1, 6)):
            kind = rnd.random()
            if kind < 0.5:  # a plausible frame
                n = rnd.choice([0, 1, 9, 999, 1000, 1001, 70_000])
                parts.append(frame(os.urandom(n), flags=rnd.choice([0, 0, 0, 1, 2])))
            elif kind < 0.8:  # a header announcing anything
                parts.append(struct.pack("<II", rnd.getrandbits(32), rnd.getrandbits(32)))
            else:
                parts.append(os.urandom(rnd.randint(1, 64)))
        data = b"".join(parts)
        cut = rnd.randint(0, len(data))
        s.sendall(data[:cut])
        if rnd.random() < 0.7:
            s.close()
        for _ in range(8):
            if ch.closed:
                break
            t0 = time.monotonic()
            try:
                out = _random_receive(ch, rnd)
                if isinstance(out, tuple):
                    assert out[1] == []
                    out = out[0]
                if isinstance(out, bytes):
                    assert len(out) <= ch.max_message
            except allowed:
                pass
            assert time.monotonic() - t0 < 1.0, f"trial {trial}: a call hung"
        ch.close()
        s.close()


def _random_receive(ch: Channel, rnd: object) -> object:
    which = rnd.randrange(4)  # type: ignore[attr-defined]
    if which == 0:
        return ch.recv(timeout=0.01)
    if which == 1:
        return ch.recv_many(4, timeout=0.01)
    if which == 2:
        size = rnd.choice([0, 5, 2000, 80_000])  # type: ignore[attr-defined]
        return ch.recv_into(bytearray(size), timeout=0.01)
    return ch.recv_with_fds(timeout=0.01)
