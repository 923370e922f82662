"""The one Python framer: header pack/unpack, the header check every framed stream makes."""

from __future__ import annotations

import pytest

from fastipc import MessageTooLarge
from fastipc.framing import (
    CHANNEL_FLAGS,
    FRAME_AREA,
    FRAME_BULK,
    FRAME_FDS,
    HEADER_SIZE,
    FramingError,
    LengthDecoder,
    check_header,
    pack_header,
    unpack_header,
)


def test_header_is_length_then_flags_little_endian() -> None:
    head = pack_header(0x01020304, FRAME_FDS)
    assert HEADER_SIZE == len(head) == 8
    assert head == bytes([4, 3, 2, 1, 1, 0, 0, 0])
    assert unpack_header(b"xx" + head, 2) == (0x01020304, FRAME_FDS)


def test_a_header_within_the_limits_passes() -> None:
    check_header(0, 0, 1)
    check_header(10, 0, 10)
    check_header(10, FRAME_FDS, 10, FRAME_FDS)
    check_header(10, FRAME_BULK, 10, CHANNEL_FLAGS)
    check_header(10, FRAME_BULK | FRAME_FDS | FRAME_AREA, 10, CHANNEL_FLAGS)


def test_a_length_over_max_message_is_message_too_large() -> None:
    with pytest.raises(MessageTooLarge, match=r"announces 11 bytes, over max_message \(10 bytes\)"):
        check_header(11, 0, 10)


@pytest.mark.parametrize(
    ("flags", "allowed", "match"),
    [
        (FRAME_FDS, 0, r"fds attached \(flag bit 0\)"),
        (FRAME_BULK, 0, r"flags 0x2: a Channel's shared-memory hand-off"),
        (8, CHANNEL_FLAGS, r"unknown flag bits 0x8"),
        (FRAME_AREA, CHANNEL_FLAGS, r"flags 0x4, which do not go together"),
        (FRAME_BULK | FRAME_FDS, CHANNEL_FLAGS, r"flags 0x3, which do not go together"),
        (FRAME_AREA | FRAME_BULK, CHANNEL_FLAGS, r"flags 0x6, which do not go together"),
    ],
)
def test_flags_a_stream_does_not_take_are_a_framing_error(
    flags: int, allowed: int, match: str
) -> None:
    with pytest.raises(FramingError, match=match):
        check_header(1, flags, 10, allowed)


def test_the_decoder_reports_what_check_header_raises() -> None:
    dec = LengthDecoder(10)
    assert dec.feed(pack_header(2, 0) + b"ok" + pack_header(1, 8) + b"x") == [b"ok"]
    assert isinstance(dec.error, FramingError) and "unknown flag bits 0x8" in str(dec.error)
    dec.reset()
    assert dec.feed(pack_header(11, 0)) == []
    assert isinstance(dec.error, MessageTooLarge)
