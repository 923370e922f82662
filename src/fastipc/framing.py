"""The length framing every fastipc stream speaks, and the one Python framer for it.

The wire format is described in docs/architecture.md, "Wire format".

A frame is an 8-byte header, then the payload::

    [u32 LE payload length][u32 LE flags][payload]

Flag bit 0 (``FRAME_FDS``) marks a frame whose SCM_RIGHTS fds ride on its
first byte (Channel only). Bits 1 and 2 (``FRAME_BULK``, ``FRAME_AREA``) are
the Channel's shared-memory hand-off (see csrc/handoff.c): the payload is in
the sender's area and the frame carries a 16-byte descriptor
``[u64 LE offset][u64 LE release position]`` instead, and with bit 2 the one
fd attached is that area. The other bits are reserved and a frame using them
is refused; streams other than a Channel accept none of bits 1-2.

The Python framer, used by the python Channel backend, the server's stream
transport and the FIFO transport (the native Channel frames in C,
csrc/channel.c, to the same rules):

* :func:`pack_header` / :func:`unpack_header`: the header to and from bytes
  (``HEADER.pack`` / ``HEADER.unpack_from`` themselves: no extra call);
* :func:`check_header`: whether a header may be taken (its flags, how they
  combine, its length against ``max_message``), raising
  :class:`~fastipc.MessageTooLarge` or :class:`FramingError`; a header
  whose length is within ``max_message`` and whose flags are within
  ``allowed & FRAME_FDS`` always passes, so a hot path may test that
  inline and call it only otherwise;
* :class:`LengthDecoder`: cuts frames out of a byte stream fed in pieces.

Ground floor: imports only ``errors``.
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
    "HEADER_SIZE",
    "KNOWN_FLAGS",
    "MAX_MESSAGE_LIMIT",
    "FramingError",
    "LengthDecoder",
    "check_header",
    "pack_header",
    "unpack_header",
    "validate_max_message",
]

#: The default largest message (bytes) a length-framed stream accepts.
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: The largest ``max_message`` (bytes): the frame length field is 32-bit.
MAX_MESSAGE_LIMIT = (1 << 32) - 1
#: The frame header: payload length, flags.
HEADER = struct.Struct("<II")
#: Bytes in a frame header.
HEADER_SIZE = HEADER.size
#: ``pack_header(length, flags) -> bytes``: the 8-byte header of a frame.
pack_header = HEADER.pack
#: ``unpack_header(buffer, offset=0) -> (length, flags)``: the header at ``offset``.
unpack_header = HEADER.unpack_from
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


def check_header(length: int, flags: int, max_message: int, allowed_flags: int = 0) -> None:
    """Raise if a frame with this header may not be taken; return None if it may.

    ``allowed_flags``: the flag bits the stream understands (0 for a plain
    message stream, :data:`CHANNEL_FLAGS` for a Channel). Raises
    :class:`~fastipc.MessageTooLarge` when ``length`` (bytes) is over
    ``max_message``, :class:`FramingError` for flag bits not allowed or a
    hand-off combination the format does not define (``FRAME_AREA`` without
    both ``FRAME_BULK`` and ``FRAME_FDS``; ``FRAME_BULK`` with ``FRAME_FDS``
    but without ``FRAME_AREA``). Never raises when ``length <= max_message``
    and ``flags & ~(allowed_flags & FRAME_FDS) == 0``.
    """
    # Flags before length, as csrc/channel.c does: a garbage header is a
    # protocol error even when its length field is also out of range.
    _check_bits(flags, allowed_flags)
    handoff = FRAME_BULK | FRAME_FDS
    if bool(flags & FRAME_AREA) != (flags & handoff == handoff):
        raise FramingError(f"frame header has flags {flags:#x}, which do not go together")
    _check_length(length, max_message)


def _check_length_and_bits(length: int, flags: int, max_message: int, allowed_flags: int) -> None:
    """What :func:`check_header` checks but the hand-off combinations: every framed stream's part."""
    _check_bits(flags, allowed_flags)
    _check_length(length, max_message)


def _check_length(length: int, max_message: int) -> None:
    if length > max_message:
        raise MessageTooLarge(
            f"frame header announces {length} bytes, over max_message ({max_message} bytes)"
        )


def _check_bits(flags: int, allowed_flags: int) -> None:
    unknown = flags & ~allowed_flags
    if unknown:
        if flags == FRAME_FDS:
            what = "fds attached (flag bit 0), which this stream does not take"
        elif unknown & (FRAME_BULK | FRAME_AREA):
            what = (
                f"flags {flags:#x}: a Channel's shared-memory hand-off, which this "
                "stream does not take (make that Channel with handoff_min=0)"
            )
        else:
            what = f"unknown flag bits {flags:#x}"
        raise FramingError(f"frame header has {what}")


class LengthDecoder:
    """Cuts length frames out of a byte stream fed in arbitrary pieces.

    Never allocates a frame's announced size before its bytes arrive, so a
    hostile header costs nothing. ``allowed_flags`` are the flag bits
    accepted (default: none, a plain message); frames are cut by their
    length field and their flags are not interpreted further (no hand-off:
    that is the Channel's, which checks headers with :func:`check_header`).
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
        allowed = self.allowed_flags
        suspect = ~allowed
        while end - off >= 8:
            length, flags = unpack(view, off)
            if length > limit or flags & suspect:
                try:
                    _check_length_and_bits(length, flags, limit, allowed)
                except (MessageTooLarge, FramingError) as exc:
                    self.error = exc
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
