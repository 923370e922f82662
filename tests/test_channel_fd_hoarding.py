"""A peer cannot make a Channel receiver hold more fds than one message may carry (docs/architecture.md, "Wire format").

Fds received for a frame not yet complete count against the per-message fd
limit (253): a raw peer that starts a long frame and then sends one byte at a
time with 253 fds attached must not fill the receiver's fd table; past the
limit the channel raises a protocol error (OSError) and closes, closing what
it held. A well-behaved sender of many fd-carrying messages is unaffected.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct

import pytest

from fastipc import Channel, Timeout

MAX_FDS = 253
SLACK = 8  # fds pytest or the backend may open meanwhile
_HEADER = struct.Struct("<II")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rights(fd: int, count: int) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd] * count).tobytes())]


def test_fds_sent_inside_an_incomplete_frame_are_bounded() -> None:
    mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    ch = Channel.from_socket(mine, handoff_min=0)
    try:
        start = open_fds()
        # A long frame (no fds announced), only partly sent.
        peer.sendall(_HEADER.pack(1 << 20, 0) + bytes(100_000))
        with pytest.raises(Timeout):
            ch.recv(timeout=0)
        peak = open_fds()
        error: OSError | None = None
        for _ in range(15):
            # One more byte of that frame, with 253 fds riding on it.
            peer.sendmsg([b"x"], _rights(r, MAX_FDS))
            try:
                ch.recv(timeout=0.05)
            except Timeout:
                pass
            except OSError as exc:
                error = exc
                break
            peak = max(peak, open_fds())
        peak = max(peak, open_fds())
        assert peak <= start + MAX_FDS + SLACK, (
            f"the receiver held {peak - start} fds for a frame not yet complete"
        )
        assert error is not None, "15 x 253 fds inside one frame were accepted"
        assert error.errno == errno.EPROTO, error
        assert ch.closed
        assert open_fds() <= start + SLACK, "the fds held were not closed with the channel"
    finally:
        ch.close()
        peer.close()
        os.close(r)
        os.close(w)


def test_many_messages_with_the_most_fds_each_still_arrive() -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    try:
        start = open_fds()
        for i in range(6):  # 6 x 253 fds queued: more than a 1024-fd table holds at once
            a.send(struct.pack("<I", i), fds=[r] * MAX_FDS)
        for i in range(6):
            data, fds = b.recv_with_fds(timeout=10)
            assert data == struct.pack("<I", i)
            assert len(fds) == MAX_FDS
            for fd in fds:
                os.close(fd)
        assert open_fds() <= start + SLACK
    finally:
        a.close()
        b.close()
        os.close(r)
        os.close(w)
