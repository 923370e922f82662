"""Passing fds: they arrive usable, close-on-exec, tied to their message, and are never leaked."""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import socket
import struct
import sys

import pytest
from _channel_util import fd_count, no_fd_leak_fixture  # noqa: F401
from conftest import interrupted_at

from fastipc import Channel, Closed


def test_a_pipe_fd_passed_is_usable_by_the_receiver(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    with a, b:
        a.send(b"here is a pipe", fds=[w])
        os.close(w)  # the receiver gets its own duplicate
        data, fds = b.recv_with_fds(timeout=5)
        assert data == b"here is a pipe" and len(fds) == 1
        assert fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.write(fds[0], b"through the passed fd")
        os.close(fds[0])
        assert os.read(r, 100) == b"through the passed fd"
        os.close(r)


def test_a_memfd_passed_is_mapped_by_the_receiver(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    mfd = os.memfd_create("fastipc-test")
    os.write(mfd, b"shared bytes" * 1000)
    with a, b:
        with open(mfd, "rb", closefd=True) as f:
            a.send(b"", fds=[f])  # objects with fileno() are accepted
        data, (fd,) = b.recv_with_fds(timeout=5)
        assert data == b""
        with mmap.mmap(fd, 12000, prot=mmap.PROT_READ) as m:
            assert m[:24] == b"shared bytesshared bytes"
        os.close(fd)


def test_fds_stay_with_their_message_among_others(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    pipes = [os.pipe() for _ in range(3)]
    with a, b:
        a.send_many([b"plain0", b"plain1"])
        a.send(b"with1", fds=[pipes[0][1]])
        a.send(b"plain2")
        a.send(b"with2", fds=[pipes[1][1], pipes[2][1]])
        a.send_many([b"plain3"])
        seen = []
        for _ in range(6):
            data, fds = b.recv_with_fds(timeout=5)
            seen.append((data, len(fds)))
            for i, fd in enumerate(fds):
                os.write(fd, data + str(i).encode())
                os.close(fd)
        assert seen == [
            (b"plain0", 0),
            (b"plain1", 0),
            (b"with1", 1),
            (b"plain2", 0),
            (b"with2", 2),
            (b"plain3", 0),
        ]
        assert os.read(pipes[0][0], 100) == b"with10"
        assert os.read(pipes[1][0], 100) == b"with20"
        assert os.read(pipes[2][0], 100) == b"with21"
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_recv_recv_into_and_recv_many_close_the_fds_they_drop(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    with a, b:
        base = fd_count()
        a.send(b"one", fds=[w, w, r])
        assert b.recv(timeout=5) == b"one"
        a.send(b"two", fds=[r])
        assert b.recv_into(bytearray(10), timeout=5) == 3
        a.send(b"three", fds=[w])
        a.send(b"four")
        got: list[bytes] = []
        while len(got) < 2:
            got += b.recv_many(10, timeout=5)
        assert got == [b"three", b"four"]
        assert fd_count() == base
    os.close(r)
    os.close(w)


def test_close_closes_fds_received_but_not_taken(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    a.send(b"x", fds=[r, w])
    a.send(b"y", fds=[r])
    assert b.recv_many(1, timeout=5) == [b"x"]  # the second frame's fds may be read already
    a.close()
    b.close()  # the second message's fd is closed with the channel
    os.close(r)
    os.close(w)


def test_big_message_with_fds(no_fd_leak: None) -> None:
    import threading

    a, b = Channel.pair()
    r, w = os.pipe()
    big = os.urandom(3_000_000)
    with a, b:
        t = threading.Thread(target=lambda: a.send(big, fds=[w]))
        t.start()
        data, fds = b.recv_with_fds(timeout=10)
        t.join(10)
        assert data == big and len(fds) == 1
        os.close(fds[0])
    os.close(r)
    os.close(w)


def test_more_fds_than_fit_is_msg_ctrunc_and_nothing_leaks(
    no_fd_leak: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastipc._backend as backend

    impl_module = sys.modules[backend.ChannelImpl.__module__]
    a, b0 = Channel.pair()
    monkeypatch.setattr(impl_module, "MAX_FDS", 2)  # the receiver takes at most 2 per message
    b = Channel.from_socket(b0._sock)  # type: ignore[arg-type]
    b0._sock = None  # now owned by b
    monkeypatch.undo()
    r, w = os.pipe()
    with a, b:
        base = fd_count()
        a.send(b"too many", fds=[r, w, r, w, r])
        a.send(b"after", fds=[w])
        with pytest.raises(OSError) as info:
            b.recv_with_fds(timeout=5)
        assert info.value.errno == errno.ENOBUFS and "MSG_CTRUNC" in str(info.value)
        assert fd_count() == base
        data, fds = b.recv_with_fds(timeout=5)  # the channel goes on
        assert data == b"after" and len(fds) == 1
        os.close(fds[0])
    os.close(r)
    os.close(w)


def test_fd_arguments_are_checked() -> None:
    a, b = Channel.pair()
    with a, b:
        with pytest.raises(ValueError, match="253"):
            a.send(b"x", fds=[0] * 254)
        with pytest.raises(ValueError):
            a.send(b"x", fds=[-1])
        with pytest.raises(TypeError):
            a.send(b"x", fds=["0"])  # type: ignore[list-item]
        with pytest.raises(OSError) as info:
            a.send(b"x", fds=[987654])  # not open
        assert info.value.errno == errno.EBADF
        a.send(b"ok")
        assert b.recv_with_fds(timeout=5) == (b"ok", [])


def test_peer_gone_after_fds_still_closes_them(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    a.send(b"x", fds=[r])
    a.close()
    with b:
        data, fds = b.recv_with_fds(timeout=5)
        assert data == b"x" and len(fds) == 1
        os.close(fds[0])
        with pytest.raises(Closed):
            b.recv(timeout=5)
    os.close(r)
    os.close(w)


def test_turning_linger_off_interrupted_at_any_instant_leaks_no_fd() -> None:
    """The python backend turns SO_LINGER off on the fds it closes for the user (those
    of unclaimed messages) through a dup of each: a raising signal handler right after
    os.dup returned, or at the entry of socket.socket's __init__, leaked that dup. Swept
    over every instant, the fd count is back where it was and the fds given stay open."""
    from fastipc.backends.python_channel import _no_linger

    r, w = os.pipe()  # not a socket: left alone
    a, b = socket.socketpair()
    with a, b:
        try:
            for n in itertools.count(1):
                a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
                fds = [r, a.fileno()]
                start = fd_count()
                done = not interrupted_at(lambda fds=fds: _no_linger(fds), n)
                assert fd_count() == start, f"an fd leaked when interrupted at instant {n}"
                assert fds == [r, a.fileno()] and a.fileno() >= 0
                os.fstat(r)
                os.fstat(a.fileno())  # still open: only the dups were closed
                if done:
                    break
            assert n > 5, "no instant was interrupted: the sweep tests nothing"
            onoff, _ = struct.unpack("ii", a.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
            assert onoff == 0
        finally:
            os.close(r)
            os.close(w)
