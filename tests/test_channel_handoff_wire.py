"""The shared-memory hand-off on the wire: a raw socket plays the hostile sender or receiver."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator

import pytest
from _channel_util import no_fd_leak_fixture  # noqa: F401

from fastipc import Channel, Closed, MessageTooLarge, Timeout

AREA_HEADER = 4096
AREA_MAGIC = 0x4145524143504946
RELEASED_AT = 64
FDS, BULK, AREA = 1, 2, 4
SEALED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x10)  # Linux 5.1
#: The memfd name of the areas this file makes (as seen in /proc/self/maps).
TEST_AREA = "fipc-test-area"
#: The memfd name fastipc gives its own areas.
FASTIPC_AREA = "fastipc-channel"


def frame(payload: bytes, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack("<II", len(payload) if length is None else length, flags) + payload


def desc(offset: int, release: int) -> bytes:
    return struct.pack("<QQ", offset, release)


def mappings(name: str) -> int:
    """Mappings of memfds called ``name`` in this process."""
    with open("/proc/self/maps") as f:
        return sum(f"/memfd:{name} " in line for line in f)


def area_fd(data: int, seals: int = SEALED, magic: bool = True, allow_sealing: bool = True) -> int:
    """A memfd of ``AREA_HEADER + data`` bytes with the magic written and ``seals`` added."""
    fd = os.memfd_create(TEST_AREA, os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if allow_sealing else 0))
    os.ftruncate(fd, AREA_HEADER + data)
    if magic:
        os.pwrite(fd, struct.pack("<Q", AREA_MAGIC), 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


class Area:
    """A well-formed area made here, as an honest sender (or a wily one) would."""

    def __init__(self, data: int = 65536, seals: int = SEALED) -> None:
        self.data = data
        self.fd = area_fd(data, seals)
        self.map = mmap.mmap(self.fd, AREA_HEADER + data)

    def put(self, offset: int, message: bytes) -> None:
        self.map[AREA_HEADER + offset : AREA_HEADER + offset + len(message)] = message

    def released(self) -> int:
        return int(struct.unpack_from("<Q", self.map, RELEASED_AT)[0])

    def announce(self, s: socket.socket, message: bytes, offset: int, release: int) -> None:
        """Copy ``message`` in and send the area with its descriptor (flags 7)."""
        self.put(offset, message)
        frame_ = frame(desc(offset, release), BULK | AREA | FDS, length=len(message))
        socket.send_fds(s, [frame_], [self.fd])

    def send(self, s: socket.socket, message: bytes, offset: int, release: int) -> None:
        """Copy ``message`` in and send its descriptor (flags 2)."""
        self.put(offset, message)
        s.sendall(frame(desc(offset, release), BULK, length=len(message)))

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@pytest.fixture
def raw_pair() -> Iterator[tuple[socket.socket, Channel]]:
    """A plain socket (the test plays a hostile sender) and a channel on the other end."""
    s, t = socket.socketpair()
    s.settimeout(5)
    ch = Channel.from_socket(t, max_message=1 << 20)
    yield s, ch
    s.close()
    ch.close()


@pytest.fixture
def area() -> Iterator[Area]:
    a = Area()
    yield a
    a.close()


def expect_protocol_error(ch: Channel, code: int, call: str = "recv") -> None:
    with pytest.raises(OSError, match="protocol error") as info:
        if call == "recv_into":
            ch.recv_into(bytearray(1 << 20), timeout=1)
        else:
            getattr(ch, call)(timeout=1)
    assert info.value.errno == code, info.value
    assert ch.closed


# ---- receiving: the test is the sender ------------------------------------


def test_a_hand_off_made_by_hand_is_delivered_by_every_receive_call_and_released(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel]
) -> None:
    s, ch = raw_pair
    a = Area(data=256 * 1024)
    try:
        one, big, three, four = (os.urandom(n) for n in (1000, 200_000, 5000, 7000))
        last = os.urandom(50_000)
        a.announce(s, one, 0, 1000)
        assert ch.recv(timeout=1) == one
        assert a.released() == 1000
        s.sendall(frame(b"inline between"))
        a.send(s, big, 1000, 201_000)  # longer than any receive buffer: read alone
        assert ch.recv(timeout=1) == b"inline between"
        assert a.released() == 1000  # an inline frame releases nothing
        dst = bytearray(300_000)
        assert ch.recv_into(dst, timeout=1) == len(big) and dst[: len(big)] == big
        assert a.released() == 201_000
        a.send(s, three, 201_000, 206_000)
        assert ch.recv_with_fds(timeout=1) == (three, [])
        assert a.released() == 206_000
        a.send(s, four, 206_000, 213_000)
        assert ch.recv_many(4, timeout=1) == [four]
        assert a.released() == 213_000
        a.send(s, last, a.data - len(last), a.data)  # ends exactly at the area's end
        assert ch.recv(timeout=1) == last
        assert a.released() == a.data
        with pytest.raises(Timeout):
            ch.recv(timeout=0)
        assert not ch.closed
    finally:
        a.close()


def test_recv_view_reads_in_the_area_and_releases_when_the_block_exits(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], area: Area
) -> None:
    s, ch = raw_pair
    one, two, three = os.urandom(1000), os.urandom(2000), os.urandom(3000)
    area.announce(s, one, 0, 1000)
    with ch.recv_view(timeout=1) as v:
        assert v == one
        area.put(0, b"Z" * 1000)  # the sender's memory, seen in place
        assert v == b"Z" * 1000
        assert area.released() == 0, "lent, so not released yet"
        area.send(s, two, 1000, 3000)
        assert ch.recv(timeout=1) == two
        assert area.released() == 0, "later receives wait for the view too"
    assert area.released() == 3000
    area.send(s, three, 3000, 6000)
    with ch.recv_view(timeout=1) as v:
        assert v == three
    assert area.released() == 6000
    s.sendall(frame(desc(area.data, 7000), BULK, length=1))
    with pytest.raises(OSError, match="protocol error") as info, ch.recv_view(timeout=1):
        pass
    assert info.value.errno == errno.EBADMSG and ch.closed


def test_the_receiver_stores_whatever_release_position_the_descriptor_names(
    raw_pair: tuple[socket.socket, Channel], area: Area
) -> None:
    s, ch = raw_pair
    area.announce(s, b"a" * 10, 0, 123_456_789)  # the sender's bookkeeping, not the receiver's
    assert ch.recv(timeout=1) == b"a" * 10
    assert area.released() == 123_456_789
    area.send(s, b"b" * 10, 100, 5)
    assert ch.recv(timeout=1) == b"b" * 10
    assert area.released() == 5


def test_a_message_too_long_for_recv_into_stays_queued_and_unreleased(
    raw_pair: tuple[socket.socket, Channel], area: Area
) -> None:
    s, ch = raw_pair
    message = os.urandom(1000)
    area.announce(s, message, 0, 1000)
    with pytest.raises(MessageTooLarge):
        ch.recv_into(bytearray(999), timeout=1)
    assert not ch.closed and area.released() == 0
    assert ch.recv(timeout=1) == message
    assert area.released() == 1000


def test_a_hand_off_frame_trickling_in_is_delivered_whole(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], area: Area
) -> None:
    s, ch = raw_pair
    message = os.urandom(3000)
    area.put(0, message)
    data = frame(desc(0, 3000), BULK | AREA | FDS, length=3000)
    socket.send_fds(s, [data[:1]], [area.fd])  # the fd rides on the frame's first byte
    for i in range(1, len(data)):
        with pytest.raises(Timeout):
            ch.recv(timeout=0)
        s.sendall(data[i : i + 1])
    assert ch.recv(timeout=1) == message
    assert area.released() == 3000


def test_a_new_area_replaces_the_old_one_which_is_unmapped(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel]
) -> None:
    s, ch = raw_pair
    base = mappings(TEST_AREA)
    first, second = Area(), Area(data=8192)
    try:
        first.announce(s, b"from the first", 0, 14)
        assert ch.recv(timeout=1) == b"from the first"
        assert mappings(TEST_AREA) == base + 3  # ours of both, the channel's of the first
        second.announce(s, b"from the second", 4000, 4015)
        assert ch.recv(timeout=1) == b"from the second"
        assert mappings(TEST_AREA) == base + 3  # ours of both, the channel's of the second
        assert second.released() == 4015 and first.released() == 14
        second.send(s, b"still the second", 0, 16)
        assert ch.recv(timeout=1) == b"still the second"
        assert second.released() == 16 and first.released() == 14
        ch.close()
        assert mappings(TEST_AREA) == base + 2
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("data", [1, 1 << 30], ids=["one-byte", "1GiB"])
def test_the_smallest_and_largest_areas_are_accepted(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], data: int
) -> None:
    s, ch = raw_pair
    a = Area(data=data)  # sparse: a 1 GiB area costs a page or two
    try:
        a.announce(s, b"z", data - 1, data)
        assert ch.recv(timeout=1) == b"z"
        assert a.released() == data
    finally:
        a.close()


def test_an_area_sealed_only_against_shrinking_is_accepted_and_growing_it_reaches_nothing(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel]
) -> None:
    s, ch = raw_pair
    a = Area(data=8192, seals=fcntl.F_SEAL_SHRINK)
    try:
        a.announce(s, b"inside", 0, 6)
        assert ch.recv(timeout=1) == b"inside"
        os.ftruncate(a.fd, AREA_HEADER + 16384)  # allowed: only shrinking is sealed
        os.pwrite(a.fd, b"past the mapped size", AREA_HEADER + 10000)
        s.sendall(frame(desc(10000, 10020), BULK, length=20))
        expect_protocol_error(ch, errno.EBADMSG)
    finally:
        a.close()


@pytest.mark.parametrize("call", ["recv", "recv_into", "recv_with_fds", "recv_many"])
def test_a_descriptor_before_any_area_is_a_protocol_error(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], call: str
) -> None:
    s, ch = raw_pair
    s.sendall(frame(b"fine") + frame(desc(0, 16), BULK, length=16))
    assert ch.recv(timeout=1) == b"fine"
    if call == "recv_many":
        with pytest.raises(OSError, match="protocol error") as info:
            ch.recv_many(4, timeout=1)
        assert info.value.errno == errno.EBADMSG and ch.closed
    else:
        expect_protocol_error(ch, errno.EBADMSG, call)


OUTSIDE = {  # (offset, length) in an area of 65536 data bytes
    "offset-past-the-end": (65537, 0),
    "offset-at-the-end-length-1": (65536, 1),
    "one-byte-over": (65536 - 10, 11),
    "longer-than-the-area": (0, 65537),
    "offset-near-2**64": (2**64 - 1, 1),
    "offset-plus-length-wraps": (2**64 - 8, 16),
    "offset-2**63": (2**63, 100),
}


@pytest.mark.parametrize("where", ["with-the-area", "after-the-area"])
@pytest.mark.parametrize("bad", list(OUTSIDE.values()), ids=list(OUTSIDE))
def test_a_descriptor_outside_the_area_is_a_protocol_error(
    no_fd_leak: None,
    raw_pair: tuple[socket.socket, Channel],
    area: Area,
    bad: tuple[int, int],
    where: str,
) -> None:
    s, ch = raw_pair
    base = mappings(TEST_AREA)  # the area's own mapping (ours)
    offset, length = bad
    if where == "with-the-area":
        socket.send_fds(s, [frame(desc(offset, 0), BULK | AREA | FDS, length=length)], [area.fd])
    else:
        area.announce(s, b"ok", 0, 2)
        assert ch.recv(timeout=1) == b"ok"
        s.sendall(frame(desc(offset, 0), BULK, length=length))
    expect_protocol_error(ch, errno.EBADMSG)
    assert area.released() == (0 if where == "with-the-area" else 2)
    assert mappings(TEST_AREA) == base  # ours only: the channel unmapped its view


@pytest.mark.parametrize("offset,length", [(65536, 0), (0, 65536), (65535, 1)])
def test_a_descriptor_reaching_exactly_the_end_of_the_area_is_accepted(
    raw_pair: tuple[socket.socket, Channel], area: Area, offset: int, length: int
) -> None:
    s, ch = raw_pair
    message = os.urandom(length)
    area.announce(s, message, offset, offset + length)
    assert ch.recv(timeout=1) == message


def _unsealed() -> list[int]:
    return [area_fd(4096, seals=fcntl.F_SEAL_GROW)]


def _sealing_not_allowed() -> list[int]:
    return [area_fd(4096, seals=0, allow_sealing=False)]


def _pipe() -> list[int]:
    r, w = os.pipe()
    os.close(w)
    return [r]


def _socket() -> list[int]:
    a, b = socket.socketpair()
    b.close()
    return [a.detach()]


def _regular_file() -> list[int]:
    fd, path = tempfile.mkstemp(prefix="fipc-area")
    os.unlink(path)
    os.ftruncate(fd, AREA_HEADER + 4096)
    os.pwrite(fd, struct.pack("<Q", AREA_MAGIC), 0)
    return [fd]


def _header_only() -> list[int]:
    return [area_fd(0)]


def _short_header() -> list[int]:
    fd = area_fd(0, seals=0)
    os.ftruncate(fd, 100)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALED)
    return [fd]


def _over_1gib() -> list[int]:
    return [area_fd((1 << 30) + 4096)]


def _no_magic() -> list[int]:
    return [area_fd(4096, magic=False)]


def _wrong_magic() -> list[int]:
    fd = area_fd(4096, magic=False)
    os.pwrite(fd, struct.pack("<Q", AREA_MAGIC ^ 1), 0)
    return [fd]


def _write_sealed() -> list[int]:
    return [area_fd(4096, seals=SEALED | fcntl.F_SEAL_WRITE)]


def _reopened(flags: int) -> list[int]:
    """A good area, passed as a new descriptor of it opened with ``flags``."""
    fd = area_fd(4096)
    try:
        return [os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)]
    finally:
        os.close(fd)


def _future_write_sealed() -> list[int]:
    return [area_fd(4096, seals=SEALED | F_SEAL_FUTURE_WRITE)]


def _two_areas() -> list[int]:
    return [area_fd(4096), area_fd(4096)]


def _none() -> list[int]:
    return []


NOT_AN_AREA: dict[str, Callable[[], list[int]]] = {
    "not-sealed-against-shrinking": _unsealed,
    "memfd-without-sealing": _sealing_not_allowed,
    "pipe": _pipe,
    "socket": _socket,
    "regular-file": _regular_file,
    "header-page-only": _header_only,
    "shorter-than-the-header": _short_header,
    "data-over-1GiB": _over_1gib,
    "no-magic": _no_magic,
    "wrong-magic": _wrong_magic,
    "sealed-against-writing": _write_sealed,
    "sealed-against-future-writes": _future_write_sealed,
    "read-only-fd": lambda: _reopened(os.O_RDONLY),
    "o-path-fd": lambda: _reopened(os.O_PATH),
    "two-fds": _two_areas,
    "no-fd": _none,
}


@pytest.mark.parametrize("call", ["recv", "recv_with_fds"])
@pytest.mark.parametrize("make", list(NOT_AN_AREA.values()), ids=list(NOT_AN_AREA))
def test_an_area_frame_without_exactly_one_sealed_memfd_area_is_a_protocol_error(
    no_fd_leak: None,
    raw_pair: tuple[socket.socket, Channel],
    make: Callable[[], list[int]],
    call: str,
) -> None:
    s, ch = raw_pair
    base = mappings(TEST_AREA)
    fds = make()
    try:
        data = frame(desc(0, 10), BULK | AREA | FDS, length=10)
        if fds:
            socket.send_fds(s, [data], fds)
        else:
            s.sendall(data)
    finally:
        for fd in fds:
            os.close(fd)
    expect_protocol_error(ch, errno.EPROTO, call)
    assert mappings(TEST_AREA) == base


@pytest.mark.parametrize("with_fd", [False, True], ids=["no-fd", "an-area-fd"])
@pytest.mark.parametrize(
    "flags",
    [AREA, AREA | FDS, AREA | BULK, BULK | FDS, 0x8 | BULK, 0x8 | BULK | AREA | FDS],
    ids=["area", "area-fds", "area-bulk", "bulk-fds", "unknown-bulk", "unknown-area"],
)
def test_hand_off_flags_that_do_not_go_together_are_a_protocol_error(
    no_fd_leak: None,
    raw_pair: tuple[socket.socket, Channel],
    area: Area,
    flags: int,
    with_fd: bool,
) -> None:
    s, ch = raw_pair
    base = mappings(TEST_AREA)
    area.put(0, b"x" * 10)
    data = frame(desc(0, 10), flags, length=10)
    if with_fd:
        socket.send_fds(s, [data], [area.fd])
    else:
        s.sendall(data)
    expect_protocol_error(ch, errno.EPROTO)
    assert area.released() == 0
    assert mappings(TEST_AREA) == base


@pytest.mark.parametrize("flags", [BULK, BULK | AREA | FDS], ids=["bulk", "bulk-area"])
def test_a_hand_off_header_over_max_message_is_message_too_large_and_closes(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], area: Area, flags: int
) -> None:
    s, ch = raw_pair
    base = mappings(TEST_AREA)
    area.announce(s, b"first", 0, 5)
    assert ch.recv(timeout=1) == b"first"
    data = frame(desc(0, 0), flags, length=(1 << 20) + 1)
    if flags & FDS:
        socket.send_fds(s, [data], [area.fd])
    else:
        s.sendall(data)
    with pytest.raises(MessageTooLarge, match="1048577 bytes, over max_message"):
        ch.recv(timeout=1)
    assert ch.closed
    assert area.released() == 5
    assert mappings(TEST_AREA) == base


@pytest.mark.parametrize(
    "flags,code", [(BULK, errno.EBADMSG), (BULK | AREA | FDS, errno.EPROTO)], ids=["bulk", "area"]
)
def test_an_area_fd_that_came_with_an_earlier_frame_is_not_taken_for_the_area(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], area: Area, flags: int, code: int
) -> None:
    s, ch = raw_pair
    base = mappings(TEST_AREA)
    area.put(0, b"x" * 10)
    socket.send_fds(s, [frame(b"carrier")], [area.fd])  # unflagged: the fd is nobody's
    s.sendall(frame(desc(0, 10), flags, length=10))
    assert ch.recv_with_fds(timeout=1) == (b"carrier", [])
    expect_protocol_error(ch, code)
    assert mappings(TEST_AREA) == base


def test_fds_attached_unflagged_to_a_descriptor_frame_are_closed_not_given(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], area: Area
) -> None:
    s, ch = raw_pair
    area.announce(s, b"first", 0, 5)
    assert ch.recv(timeout=1) == b"first"
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        area.put(5, b"second")
        socket.send_fds(s, [frame(desc(5, 11), BULK, length=6)], [w])
        os.close(w)
        s.sendall(frame(b"third"))
        assert ch.recv_with_fds(timeout=1) == (b"second", [])
        assert ch.recv_with_fds(timeout=1) == (b"third", [])
        assert os.read(r, 1) == b""  # the channel closed its copy of the write end
        assert area.released() == 11 and not ch.closed
    finally:
        os.close(r)


def test_pending_sees_a_buffered_descriptor_frame(
    raw_pair: tuple[socket.socket, Channel], area: Area
) -> None:
    s, ch = raw_pair
    area.announce(s, b"first", 0, 5)
    assert ch.recv(timeout=1) == b"first"
    area.put(5, b"x" * 60_000)  # long, but only its 16-byte descriptor is on the wire
    s.sendall(frame(b"inline") + frame(desc(5, 60_005), BULK, length=60_000))
    assert ch.recv(timeout=1) == b"inline"
    assert ch.pending()
    assert ch.recv(timeout=0) == b"x" * 60_000
    assert not ch.pending()


@pytest.mark.parametrize("cut", [1, 8, 8 + 15], ids=["in-the-header", "header-only", "15-of-16"])
def test_peer_closing_in_a_hand_off_frame_is_closed_without_a_message(
    no_fd_leak: None, raw_pair: tuple[socket.socket, Channel], area: Area, cut: int
) -> None:
    s, ch = raw_pair
    area.put(0, b"never")
    data = frame(desc(0, 5), BULK | AREA | FDS, length=5)
    socket.send_fds(s, [data[:cut]], [area.fd])
    s.close()
    with pytest.raises(Closed, match="middle"):
        ch.recv(timeout=1)
    assert ch.closed and area.released() == 0


# ---- sending: the test is the receiver -------------------------------------


def read_exact(s: socket.socket, n: int) -> tuple[bytes, list[int]]:
    data, fds = b"", []
    while len(data) < n:
        got, more, _, _ = socket.recv_fds(s, n - len(data), 16)
        assert got, "the channel closed the socket"
        data += got
        fds += more
    return data, fds


def read_frame(s: socket.socket) -> tuple[int, int, bytes, list[int]]:
    """The next frame: its length, flags, wire payload and the fds that came with it."""
    head, fds = read_exact(s, 8)
    length, flags = struct.unpack("<II", head)
    payload, more = read_exact(s, 16 if flags & BULK else length)
    return length, flags, payload, fds + more


class PeerArea:
    """The sender's area as its receiver maps it."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, self.size)
        os.close(fd)

    def message(self, length: int, payload: bytes) -> tuple[bytes, int, int]:
        offset, release = struct.unpack("<QQ", payload)
        start = AREA_HEADER + offset
        return bytes(self.map[start : start + length]), offset, release

    def release(self, position: int) -> None:
        struct.pack_into("<Q", self.map, RELEASED_AT, position)

    def close(self) -> None:
        self.map.close()


@pytest.fixture
def sender() -> Iterator[tuple[socket.socket, Channel]]:
    """A channel that hands off 4 KiB..32 KiB through a 64 KiB area, and a raw receiver."""
    s, t = socket.socketpair()
    s.settimeout(5)
    ch = Channel.from_socket(t, handoff_min=4096, handoff_area=65536)
    yield s, ch
    s.close()
    ch.close()


SEND_WAYS = ["bytes", "bytearray", "with-timeout"]


def send(ch: Channel, message: bytes, way: str) -> None:
    if way == "bytes":
        ch.send(message)
    elif way == "bytearray":
        ch.send(bytearray(message))
    else:
        ch.send(message, timeout=5)


def expect_inline(s: socket.socket, message: bytes, flags: int = 0) -> list[int]:
    length, got_flags, payload, fds = read_frame(s)
    assert (length, got_flags) == (len(message), flags)
    assert payload == message
    if not flags & FDS:
        assert fds == []
    return fds


def take_area(s: socket.socket, message: bytes) -> tuple[PeerArea, int]:
    """Read the first hand-off frame: check its area and message; the area and release position."""
    length, flags, payload, fds = read_frame(s)
    assert (length, flags) == (len(message), BULK | AREA | FDS)
    assert len(fds) == 1
    st = os.fstat(fds[0])
    assert st.st_size == AREA_HEADER + 65536
    seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
    assert seals & SEALED == SEALED
    assert os.readlink(f"/proc/self/fd/{fds[0]}").startswith(f"/memfd:{FASTIPC_AREA}")
    peer = PeerArea(fds[0])
    assert struct.unpack_from("<Q", peer.map, 0)[0] == AREA_MAGIC
    got, offset, release = peer.message(length, payload)
    assert got == message and offset == 0 and release == len(message)
    return peer, release


def expect_bulk(s: socket.socket, peer: PeerArea, message: bytes) -> tuple[int, int]:
    """Read a descriptor-only frame and check its message; (offset, release position)."""
    length, flags, payload, fds = read_frame(s)
    assert (length, flags, fds) == (len(message), BULK, [])
    got, offset, release = peer.message(length, payload)
    assert got == message
    return offset, release


@pytest.mark.parametrize("way", SEND_WAYS)
def test_the_first_large_message_brings_a_sealed_memfd_and_later_ones_a_descriptor(
    no_fd_leak: None, sender: tuple[socket.socket, Channel], way: str
) -> None:
    s, ch = sender
    maps_before = mappings(FASTIPC_AREA)
    first, second, third = (os.urandom(10_000) for _ in range(3))
    send(ch, first, way)
    peer, _ = take_area(s, first)
    try:
        send(ch, second, way)
        assert expect_bulk(s, peer, second) == (10_000, 20_000)  # the area is used in stream order
        peer.release(20_000)
        send(ch, third, way)
        assert expect_bulk(s, peer, third) == (20_000, 30_000)
        ch.close()
        assert mappings(FASTIPC_AREA) == maps_before + 1  # ours only: the sender unmapped its own
    finally:
        peer.close()
    assert mappings(FASTIPC_AREA) == maps_before


@pytest.mark.parametrize("way", SEND_WAYS)
@pytest.mark.parametrize("bogus", ["2**63", "2**64-1", "one-past-the-head", "backwards"])
def test_an_impossible_release_position_sends_everything_inline_from_then_on(
    no_fd_leak: None, sender: tuple[socket.socket, Channel], bogus: str, way: str
) -> None:
    s, ch = sender
    messages = [os.urandom(10_000) for _ in range(6)]
    send(ch, messages[0], way)
    peer, release = take_area(s, messages[0])
    try:
        peer.release(release)
        send(ch, messages[1], way)  # the sender reads the release position: 10_000
        _, release = expect_bulk(s, peer, messages[1])
        position = {
            "2**63": 2**63,
            "2**64-1": 2**64 - 1,
            "one-past-the-head": release + 1,
            "backwards": 10_000 - 1,
        }[bogus]
        peer.release(position)
        send(ch, messages[2], way)
        expect_inline(s, messages[2])
        peer.release(release)  # sane again: too late, the area is not trusted any more
        for message in messages[3:]:
            send(ch, message, way)
            expect_inline(s, message)
        assert not ch.closed
    finally:
        peer.close()


@pytest.mark.parametrize("way", SEND_WAYS)
def test_a_receiver_that_never_releases_gets_the_next_messages_inline_and_in_order(
    no_fd_leak: None, sender: tuple[socket.socket, Channel], way: str
) -> None:
    s, ch = sender
    messages = [bytes([i]) * 10_000 for i in range(9)]
    for message in messages:
        send(ch, message, way)  # six fit in 64 KiB (a message never wraps), the rest cannot
    peer, _ = take_area(s, messages[0])
    try:
        for i, message in enumerate(messages[1:6], 1):
            assert expect_bulk(s, peer, message) == (i * 10_000, (i + 1) * 10_000)
        for message in messages[6:]:
            expect_inline(s, message)
        peer.release(60_000)  # everything read: the area is usable again
        again = os.urandom(10_000)
        send(ch, again, way)
        assert expect_bulk(s, peer, again) == (0, 65_536 + 10_000)  # the end skipped
        assert not ch.closed
    finally:
        peer.close()


def test_small_messages_huge_ones_and_ones_with_fds_go_inline(
    no_fd_leak: None, sender: tuple[socket.socket, Channel]
) -> None:
    s, ch = sender
    ch.send(b"s" * 4095)  # under handoff_min
    expect_inline(s, b"s" * 4095)
    ch.send(b"h" * 32769)  # over half the area
    expect_inline(s, b"h" * 32769)
    r, w = os.pipe()
    try:
        ch.send(b"f" * 10_000, fds=[w])
        (fd,) = expect_inline(s, b"f" * 10_000, flags=FDS)
        os.close(fd)
    finally:
        os.close(r)
        os.close(w)
    ch.send_many([b"m" * 10_000, b"n" * 10_000])  # send_many never hands off
    expect_inline(s, b"m" * 10_000)
    expect_inline(s, b"n" * 10_000)
    ch.send(b"a" * 4096)  # exactly handoff_min: the first hand-off
    peer, _ = take_area(s, b"a" * 4096)
    try:
        ch.send(b"b" * 32768)  # exactly half the area
        assert expect_bulk(s, peer, b"b" * 32768) == (4096, 4096 + 32768)
    finally:
        peer.close()


def test_a_channel_with_handoff_min_zero_sends_every_message_inline(no_fd_leak: None) -> None:
    s, t = socket.socketpair()
    s.settimeout(5)
    ch = Channel.from_socket(t, handoff_min=0)
    with ch:
        for n in (10_000, 70_000, 100_000):  # over the default handoff_min of 64 KiB
            message = os.urandom(n)
            ch.send(message, timeout=5)
            expect_inline(s, message)
    s.close()


def test_many_large_messages_through_a_small_area_arrive_intact_and_in_order(
    no_fd_leak: None,
) -> None:
    a, b = Channel.pair(handoff_min=1000, handoff_area=16384)
    with a, b:
        sizes = [1000, 8192, 3001, 7777, 999, 5000, 8000, 4096] * 8
        for i, n in enumerate(sizes):
            message = bytes([i % 251]) * n
            a.send(message)
            assert b.recv(timeout=5) == message
        # Sent ahead of the receiver: some wait for room or go inline, none are lost.
        messages = [os.urandom(n) for n in sizes[:16]]
        for message in messages:
            a.send(message, timeout=5)
        assert [b.recv(timeout=5) for _ in messages] == messages
