"""The Channel's shared-memory hand-off of large messages: the area's layout and the Python area.

A sender makes one area per channel end, at its first message of at least
``handoff_min`` bytes: a memfd of ``4096 + handoff_area`` bytes, sealed so it
can never shrink or grow, passed to the peer with that message (frame flags
``FRAME_BULK | FRAME_AREA | FRAME_FDS``). Every such message is then copied
into the area's data (a byte ring used in stream order; a message never
wraps) and the frame carries ``[u64 offset][u64 release position]`` in place
of the payload. The receiver copies the message out and stores the release
position at byte 64 of the area, which frees everything before it. The
C backend (csrc/handoff.c) and :class:`SendArea`/:class:`ReceiveArea` below
are the same protocol, so either backend is the other's peer.

Trust: the receiver accepts only a memfd sealed against shrinking (else the
sender could truncate it under a read: SIGBUS) with the magic in place, and
checks every descriptor against the size it mapped. The sender reads only
the release position back, and stops using the area if it ever goes
backwards or past what was sent.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import sys
import time
from collections.abc import Callable
from functools import partial

from .framing import DESCRIPTOR

__all__ = [
    "AREA_HEADER",
    "AREA_MAX",
    "DEFAULT_HANDOFF_AREA",
    "DEFAULT_HANDOFF_MIN",
    "ReceiveArea",
    "SendArea",
    "validate_handoff",
]

#: Messages of at least this many bytes go through the area by default. The
#: hand-off beat the socket from 16 KiB (native) and 64 KiB (python) up,
#: measured here (benchmarks/RESULTS.md); 64 KiB keeps the area (memory held
#: for the channel's life) to channels that move really large messages.
DEFAULT_HANDOFF_MIN = 64 * 1024
#: Data bytes of an area by default: 2-8 MiB stays in cache, 16 MiB measured
#: slower; a message may take up to half of it.
DEFAULT_HANDOFF_AREA = 4 * 1024 * 1024
#: The largest area (data bytes) a sender makes or a receiver maps.
AREA_MAX = 1 << 30
#: The header page before the data: magic at byte 0, release position at 64.
AREA_HEADER = 4096
AREA_MAGIC = 0x4145524143504946  # "FIPCAREA" little-endian
_RELEASED = 64 // 8  # index of the release position among the header's u64s
#: A sender waits this long (ns) for room before sending a message inline.
WAIT_NS = 200_000

_MEMFD_NAME = ("fastipc-channel",)
_MEMFD_FLAGS = (os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING,)

_pack_desc = DESCRIPTOR.pack
_unpack_desc = DESCRIPTOR.unpack_from


def validate_handoff(handoff_min: object, handoff_area: object) -> tuple[int, int]:
    """Return ``(handoff_min, handoff_area)`` (bytes) or raise TypeError/ValueError naming the bad one.

    ``handoff_min`` is 0 (off) or at least 1; ``handoff_area`` a multiple of
    4096 up to 1 GiB, and at least twice ``handoff_min`` (a message may take
    at most half the area).
    """
    for name, value in (("handoff_min", handoff_min), ("handoff_area", handoff_area)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (bytes), not {type(value).__name__}")
    assert isinstance(handoff_min, int) and isinstance(handoff_area, int)
    if handoff_min < 0:
        raise ValueError(
            f"handoff_min must be >= 0 bytes (0 turns the hand-off off), got {handoff_min}"
        )
    if handoff_area < 4096 or handoff_area % 4096 or handoff_area > AREA_MAX:
        raise ValueError(
            f"handoff_area must be a multiple of 4096 bytes between 4096 and {AREA_MAX}, "
            f"got {handoff_area}"
        )
    if handoff_min and handoff_area < 2 * handoff_min:
        raise ValueError(
            f"handoff_area ({handoff_area} bytes) must be at least twice handoff_min "
            f"({handoff_min} bytes)"
        )
    return handoff_min, handoff_area


class SendArea:
    """The area this end sends large messages through (pure Python)."""

    def __init__(self, size: int) -> None:
        # The memfd lands in a list from C (no signal handler runs between the call and
        # the store), so the try below closes it whatever a handler raises, wherever:
        # an area that is not made leaves no fd behind.
        made: list[int] = []
        try:
            made += map(os.memfd_create, _MEMFD_NAME, _MEMFD_FLAGS)
            fd = made[0]
            os.ftruncate(fd, AREA_HEADER + size)
            # Take the pages now: short of memory this fails here, not as a
            # SIGBUS on a later write into a page shmem cannot supply.
            os.posix_fallocate(fd, 0, AREA_HEADER + size)
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            self._map = _map(fd, AREA_HEADER + size)
            #: The memfd, until it went to the peer with a frame (then -1).
            self.fd = fd
            self.size = size
            #: False once the receiver wrote a release position that cannot be.
            self.usable = True
            self._mv = memoryview(self._map)
            self._words = self._mv[:AREA_HEADER].cast("Q")
            self._words[0] = AREA_MAGIC
            self._head = 0
            self._released = 0
        except BaseException:
            self.fd = -1  # (for __del__: closed here)
            for fd in made:
                os.close(fd)
            raise

    def put(self, data: memoryview, wait_until: int) -> bytes | None:
        """Copy ``data`` in and return its descriptor, or None: no room by ``wait_until`` (ns)."""
        n = data.nbytes
        size, head = self.size, self._head
        pos = head % size
        start = head if pos + n <= size else head + size - pos
        if start != head:
            pos = 0
        end = start + n
        words = self._words
        while True:
            rel = words[_RELEASED]
            if rel < self._released or rel > head:
                self.usable = False
                return None
            self._released = rel
            if end - rel <= size:
                break
            if time.monotonic_ns() >= wait_until:
                return None
        self._mv[AREA_HEADER + pos : AREA_HEADER + pos + n] = data
        self._head = end
        return _pack_desc(pos, end)

    def announced(self) -> None:
        """The memfd went to the peer with a frame: close ours."""
        # Take the number before closing it: the sending thread and a thread
        # in close() can both get here, and a second close() of a reused fd
        # number would close someone else's file.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        self.announced()
        _unmap(self._map, (self._words, self._mv))

    def __del__(self) -> None:
        # An area dropped before its channel kept it (a handler raised as the
        # constructor returned) must not leak its memfd.
        if getattr(self, "fd", -1) >= 0:
            self.announced()


class ReceiveArea:
    """The peer's area this end receives large messages from (pure Python)."""

    def __init__(self, fd: int) -> None:
        """Map the area on ``fd`` (not closed here); ValueError if it is not a sealed fastipc area."""
        # Seals before size (as csrc/handoff.c): a size read first may be
        # gone when the seals are, the sender having shrunk and sealed in
        # between (mmap's own size check stops that here, but not in C).
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0
        if not seals & fcntl.F_SEAL_SHRINK:
            raise ValueError("the hand-off area is not sealed against shrinking")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not AREA_HEADER < st.st_size <= AREA_HEADER + AREA_MAX:
            raise ValueError("the hand-off area is not a memfd of a valid size")
        try:
            self._map = _map(fd, st.st_size)
        except OSError:
            raise ValueError("the hand-off area cannot be mapped shared and writable") from None
        self._mv = memoryview(self._map)
        self._words = self._mv[:AREA_HEADER].cast("Q")
        if self._words[0] != AREA_MAGIC:
            self.close()
            raise ValueError("the hand-off area does not start with fastipc's magic")
        self.size = st.st_size - AREA_HEADER
        # release(position), as one C call: no Python frame, so no other thread
        # and no signal handler runs between a caller's decision to release and
        # the store (the channel's receive and a recv_view block's end, in two
        # threads, each decide and store; see PythonChannel._copied).
        self.release = partial(self._words.__setitem__, _RELEASED)

    def message(self, descriptor: memoryview, n: int) -> tuple[memoryview, int] | None:
        """The ``n``-byte message ``descriptor`` names and its release position; None if outside."""
        off, rel = _unpack_desc(descriptor)
        if off > self.size or n > self.size - off:
            return None
        return self._mv[AREA_HEADER + off : AREA_HEADER + off + n], rel

    #: ``release(position)``: the message ending at ``position`` was copied out,
    #: the sender may reuse its room. Whatever position the descriptor named
    #: (the sender's bookkeeping). One aligned 8-byte store (memoryview packs
    #: a 'Q' with one memcpy of 8), made after the copy's loads: x86-64 never
    #: moves a store before earlier loads. (The C backend uses a release store,
    #: right on every CPU.) Set per area in ``__init__``.
    release: Callable[[int], None]

    def close(self) -> None:
        _unmap(self._map, (self._words, self._mv))


def _map(fd: int, size: int) -> mmap.mmap:
    """A shared read-write mapping of ``fd``. Python's mmap keeps a dup of the
    fd for its life (one fd per area while the channel is open) unless told
    not to, which Python 3.13 can."""
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, trackfd=False)  # type: ignore[call-arg,unused-ignore]
    return mmap.mmap(fd, size)


def _unmap(m: mmap.mmap, views: tuple[memoryview, ...]) -> None:
    for v in views:
        v.release()
    try:
        m.close()
    except BufferError:
        pass  # a caller still holds a message view; the mapping goes with it
