"""The length framing every fastipc stream speaks (DESIGN.md, Framing), and its incremental decoder.

A frame is an 8-byte header, then the payload::

    [u32 LE payload length][u32 LE flags][payload]

Flag bit 0 (``FRAME_FDS``) marks a frame whose SCM_RIGHTS fds ride on its
first byte (Channel only). Bits 1 and 2 (``FRAME_BULK``, ``FRAME_AREA``) are
the Channel's shared-memory hand-off (see csrc/handoff.c): the payload is in
the sender's area and the frame carries a 16-byte descriptor
``[u64 LE offset][u64 LE release position]`` instead, and with bit 2 the one
fd attached is that area. The other bits are reserved and a frame using them
is refused; streams other than a Channel accept none of bits 1-2. The Channel backends parse frames in their own hot paths; the
server core and the FIFO transport use :class:`LengthDecoder`.
"""

from __future__ import annotations

import struct

from .errors import MessageTooLarge

__all__ = [
    "CHANNEL_FLAGS",
    "DEFAULT_MAX_MESSAGE",
    "DESCRIPTOR",
    "FRAME_AREA",
    "FRAME_BULK",
    "FRAME_FDS",
    "HEADER",
    "KNOWN_FLAGS",
    "MAX_MESSAGE_LIMIT",
    "FramingError",
    "LengthDecoder",
    "validate_max_message",
]

#: The default largest message (bytes) a length-framed stream accepts.
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: The largest ``max_message`` (bytes): the frame length field is 32-bit.
MAX_MESSAGE_LIMIT = (1 << 32) - 1
#: The frame header: payload length, flags.
HEADER = struct.Struct("<II")
#: Flag bit: fds (SCM_RIGHTS) come with the frame's first byte.
FRAME_FDS = 1
#: Flag bit: the payload is in the sender's hand-off area; the frame carries its descriptor.
FRAME_BULK = 2
#: Flag bit (with FRAME_BULK and FRAME_FDS): the one fd attached is the sender's area.
FRAME_AREA = 4
#: A FRAME_BULK frame's wire payload: offset in the area's data, release position.
DESCRIPTOR = struct.Struct("<QQ")
#: Flag bits a plain length-framed stream understands.
KNOWN_FLAGS = FRAME_FDS
#: Flag bits a Channel understands.
CHANNEL_FLAGS = FRAME_FDS | FRAME_BULK | FRAME_AREA


class FramingError(ValueError):
    """The bytes on a length-framed stream are not frames (e.g. reserved flag bits set)."""


def validate_max_message(value: object) -> int:
    """Return ``value`` if it is an int in [1, 2**32 - 1] (bytes); raise TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_message must be an int (bytes), not {type(value).__name__}")
    if not 1 <= value <= MAX_MESSAGE_LIMIT:
        raise ValueError(
            f"max_message must be between 1 and {MAX_MESSAGE_LIMIT} bytes, got {value}"
        )
    return value


class LengthDecoder:
    """Cuts length frames out of a byte stream fed in arbitrary pieces.

    Never allocates a frame's announced size before its bytes arrive, so a
    hostile header costs nothing. ``allowed_flags`` are the flag bits
    accepted (default: none, a plain message).
    """

    __slots__ = ("_buf", "allowed_flags", "error", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE, allowed_flags: int = 0) -> None:
        self.max_message = validate_max_message(max_message)
        self.allowed_flags = allowed_flags
        #: Why the stream broke (MessageTooLarge or FramingError), else None;
        #: once set, later feeds return nothing.
        self.error: ValueError | None = None
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 between frames)."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop any partial frame and forget an error (for streams that can resync, e.g. FIFOs)."""
        self._buf.clear()
        self.error = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads of the frames it completed, in order.

        Never raises for bad bytes: a header announcing more than
        ``max_message`` bytes sets :attr:`error` to a
        :class:`~fastipc.MessageTooLarge`, reserved flag bits set it to a
        :class:`FramingError`. The frames before the bad header are still
        returned; nothing after it is, since a byte stream cannot be
        resynchronised.
        """
        if self.error is not None:
            return []
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        out: list[bytes] = []
        off = 0
        end = len(view)
        unpack = HEADER.unpack_from
        limit = self.max_message
        while end - off >= 8:
            length, flags = unpack(view, off)
            if length > limit:
                self.error = MessageTooLarge(
                    f"frame header announces {length} bytes, over max_message ({limit} bytes)"
                )
            elif flags & ~self.allowed_flags:
                if flags == FRAME_FDS:
                    what = "fds attached (flag bit 0), which this stream does not take"
                elif flags & ~self.allowed_flags & (FRAME_BULK | FRAME_AREA):
                    what = (
                        f"flags {flags:#x}: a Channel's shared-memory hand-off, which this "
                        "stream does not take (make that Channel with handoff_min=0)"
                    )
                else:
                    what = f"unknown flag bits {flags:#x}"
                self.error = FramingError(f"frame header has {what}")
            if self.error is not None:
                self._buf = bytearray()
                return out
            stop = off + 8 + length
            if stop > end:
                break
            out.append(bytes(view[off + 8 : stop]))
            off = stop
        if off < end:
            if view is buf:
                del buf[:off]
            else:
                self._buf = bytearray(memoryview(view)[off:])
        elif buf:
            buf.clear()
        return out
