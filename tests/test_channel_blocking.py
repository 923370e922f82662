"""Waiting: timeouts hold to ±100 ms, Ctrl-C interrupts a blocked call, a long message survives a timeout midway."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _channel_util import kids_fixture, sock_dir_fixture, sock_url_fixture  # noqa: F401
from conftest import cpu_seconds

from fastipc import Channel, MessageTooLarge, Timeout, listen

CALLS: dict[str, Callable[[Channel, float | None], Any]] = {
    "recv": lambda ch, t: ch.recv(timeout=t),
    "recv_many": lambda ch, t: ch.recv_many(5, timeout=t),
    "recv_into": lambda ch, t: ch.recv_into(bytearray(10), timeout=t),
    "recv_with_fds": lambda ch, t: ch.recv_with_fds(timeout=t),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("timeout", [0.0, 0.25, 0.6])
def test_receive_timeouts_are_kept(call: str, timeout: float) -> None:
    a, b = Channel.pair()
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            CALLS[call](b, timeout)
        took = time.monotonic() - t0
        assert timeout - 0.005 <= took <= timeout + 0.1, (
            f"{call}(timeout={timeout}) took {took:.3f} s"
        )
        a.send(b"later")
        assert CALLS["recv_many"](b, 1) == [b"later"]  # the channel still works


def fill_socket(ch: Channel) -> int:
    n = 0
    while True:
        try:
            ch.send(b"f" * 4096, timeout=0)
        except Timeout:
            return n
        n += 1


@pytest.mark.parametrize("timeout", [0.0, 0.3])
def test_send_timeouts_are_kept_and_leave_the_channel_usable(timeout: float) -> None:
    a, b = Channel.pair()
    with a, b:
        n = fill_socket(a)
        assert n > 0
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            a.send(b"x" * 100, timeout=timeout)
        took = time.monotonic() - t0
        assert timeout - 0.005 <= took <= timeout + 0.1
        t0 = time.monotonic()
        with pytest.raises(Timeout) as info:
            a.send_many([b"y" * 100] * 10, timeout=timeout)
        assert info.value.sent == 0
        assert timeout - 0.005 <= time.monotonic() - t0 <= timeout + 0.1
        assert not a.closed
        for _ in range(n):
            assert b.recv(timeout=1) == b"f" * 4096
        a.send(b"after")
        assert b.recv(timeout=1) == b"after"


def test_a_send_timing_out_mid_message_closes_the_channel() -> None:
    a, b = Channel.pair()
    with a, b:
        with pytest.raises(Timeout):
            a.send(b"z" * 10_000_000, timeout=0.2)  # far more than the socket holds
        assert a.closed  # half a frame went out: the stream is unusable


def test_send_many_timeout_reports_how_many_went_out() -> None:
    a, b = Channel.pair()
    with a, b:
        with pytest.raises(Timeout) as info:
            a.send_many([b"m" * 1000] * 100_000, timeout=0.2)
        sent = info.value.sent
        assert 0 < sent < 100_000
        if not a.closed:  # the deadline fell between two messages
            got = 0
            while got < sent:
                got += len(b.recv_many(1000, timeout=1))
            assert got == sent
            with pytest.raises(Timeout):
                b.recv(timeout=0.05)


@pytest.mark.parametrize("call", ["recv", "recv_into", "recv_many", "recv_with_fds"])
def test_a_long_message_interrupted_by_a_timeout_is_finished_by_the_next_call(call: str) -> None:
    s, t = socket.socketpair()
    ch = Channel.from_socket(t)
    big = os.urandom(2_000_000)
    data = struct.pack("<II", len(big), 0) + big
    with ch, s:
        sender = threading.Thread(
            target=lambda: (s.sendall(data[:700_000]), time.sleep(0.5), s.sendall(data[700_000:]))
        )
        sender.start()
        with pytest.raises(Timeout):
            ch.recv(timeout=0.2)  # part of the message came, then the wait ran out
        if call == "recv_into":
            buf = bytearray(len(big))
            assert ch.recv_into(buf, timeout=5) == len(big)
            got = bytes(buf)
        elif call == "recv_many":
            (got,) = ch.recv_many(10, timeout=5)
        elif call == "recv_with_fds":
            got, fds = ch.recv_with_fds(timeout=5)
            assert fds == []
        else:
            got = ch.recv(timeout=5)
        sender.join()
        assert got == big


def test_recv_into_timing_out_midway_keeps_the_part_read() -> None:
    s, t = socket.socketpair()
    ch = Channel.from_socket(t)
    big = os.urandom(1_500_000)
    data = struct.pack("<II", len(big), 0) + big + struct.pack("<II", 3, 0) + b"end"
    with ch, s:
        sender = threading.Thread(
            target=lambda: (s.sendall(data[:600_000]), time.sleep(0.5), s.sendall(data[600_000:]))
        )
        sender.start()
        buf = bytearray(len(big))
        with pytest.raises(Timeout):
            ch.recv_into(buf, timeout=0.2)
        buf[:] = bytes(len(buf))  # the caller may reuse its buffer meanwhile
        assert ch.recv(timeout=5) == big
        assert ch.recv(timeout=5) == b"end"
        sender.join()


def test_recv_into_timing_out_after_only_the_header_leaves_no_claim_on_the_buffer() -> None:
    # The header of a long frame came, none of its payload: the receive that
    # times out has read nothing into the caller's buffer yet, but is set to
    # read there. The next receive, into another buffer, must get the
    # message whole (it once failed with EINPROGRESS for good).
    s, t = socket.socketpair()
    ch = Channel.from_socket(t)
    big = os.urandom(300_000)
    with ch, s:
        s.sendall(struct.pack("<II", len(big), 0))
        first = bytearray(len(big))
        with pytest.raises(Timeout):
            ch.recv_into(first, timeout=0.1)
        sender = threading.Thread(target=s.sendall, args=(big,))
        sender.start()
        other = bytearray(len(big))
        try:
            assert ch.recv_into(other, timeout=5) == len(big)
        finally:
            sender.join(10)
        assert other == big
        assert first == bytes(len(big))  # nothing was written to the abandoned buffer


@pytest.mark.parametrize("what", ["recv", "recv_many", "recv_into", "send"])
def test_ctrl_c_interrupts_a_blocked_call_within_half_a_second(
    sock_url: str, kids: Any, what: str
) -> None:
    with listen(sock_url) as lst:
        proc, _ = kids.spawn("blocked", sock_url, what)
        with lst.accept(timeout=10):
            time.sleep(0.4)  # let it block (and for send, fill the socket)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            line = kids.readline(proc, 5)
            took = time.monotonic() - t0
            assert line == "interrupted", kids.stderr(proc)
            assert took < 0.5, f"KeyboardInterrupt came {took:.3f} s after SIGINT"
            assert kids.wait(proc, 5) == 3


def test_a_blocked_receiver_sleeps_instead_of_spinning(sock_url: str, kids: Any) -> None:
    with listen(sock_url) as lst:
        proc, _ = kids.spawn("blocked", sock_url, "recv")
        with lst.accept(timeout=10):
            time.sleep(0.3)
            before = cpu_seconds(proc.pid)
            time.sleep(1.0)
            used = cpu_seconds(proc.pid) - before
            assert used < 0.05, f"a receiver blocked for 1 s used {used:.3f} s of CPU"


def test_max_message_rides_in_the_url(sock_url: str) -> None:
    with listen(sock_url + "?max_message=100") as lst:
        c = Channel.connect(sock_url + "?max_message=50", timeout=5)
        with c, lst.accept(timeout=5) as s:
            assert (c.max_message, s.max_message) == (50, 100)
            c.send(b"x" * 50)
            assert s.recv(timeout=1) == b"x" * 50
            s.send(b"y" * 100)
            with pytest.raises(MessageTooLarge):
                c.recv(timeout=1)
            assert c.closed
