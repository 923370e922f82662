"""Write the hand-made seed inputs of fuzz/corpus/<harness>/ (run from anywhere).

Each seed is a small valid input in the harness's own encoding (see the
comment at the top of each fuzz/*.c); libFuzzer mutates from there.
"""

from __future__ import annotations

import marshal
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack("<II", len(payload), flags) + payload


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def raw(data: bytes, fds: int | None = None) -> bytes:
    """chan_frames: write a raw chunk (op 0, or 0x20 for a 2-byte length), maybe with fds."""
    op = 0x20 if len(data) > 255 else 0
    if fds is not None:
        op |= 0x10
    out = bytes([op]) + (u16(len(data)) if op & 0x20 else bytes([len(data)]))
    if fds is not None:
        out += bytes([fds])
    return out + data


def chan_frames() -> dict[str, bytes]:
    params = bytes([1]) + u16(4096) + bytes([3]) + u16(0)  # max_message 4096, 4 fds, rbuf 64
    recv = bytes([0x03]) + u16(64) + b"\0"  # recv, cap 64
    recv_keep = bytes([0x13]) + u16(64) + b"\0"
    batch = bytes([0x05]) + u16(256) + bytes([8])
    take = bytes([0x46, 8])
    eof = bytes([0x27])
    long_frame = frame(bytes(range(200)))
    return {
        "two-frames": params + raw(frame(b"abc") + frame(b"")) + recv + recv,
        "batch": params + raw(frame(b"a") + frame(b"bb") + frame(b"ccc")) + batch + recv,
        "fds": params + raw(frame(b"x", 1), fds=3) + recv_keep + take,
        "fds-unflagged": params + raw(frame(b"y"), fds=2) + recv + recv,
        "synth-frame": params + bytes([0x12]) + u16(3) + bytes([1, 2]) + recv_keep + take,
        "direct-partial": params
        + raw(long_frame[:100])
        + recv
        + bytes([0x13])
        + u16(0)
        + b"\2"
        + raw(long_frame[100:])
        + recv,
        "eof-mid-frame": params + raw(frame(b"abcdef")[:5]) + eof + recv,
        "too-long": params + raw(struct.pack("<II", 1 << 20, 0)) + recv,
        "bad-flags": params + raw(frame(b"z", 0x80)) + recv,
    }


def chan_handoff() -> dict[str, bytes]:
    params = bytes([0, 0])  # max_message 1 MiB, 1 fd (2 while odd values are off)

    def area_frame(area: int, length: int, off: int) -> bytes:
        return bytes([0x00, 0]) + u16(length) + u16(off) + bytes([area])

    def bulk(length: int, off: int) -> bytes:
        return bytes([0x01, 0]) + u16(length) + u16(off)

    recv = bytes([0x03])  # cap exactly the next length
    view_release = bytes([0x15])
    view_keep = bytes([0x05])
    release = bytes([0x07])
    seeds = {
        "area-then-bulk": params
        + area_frame(0, 100, 0)
        + recv
        + bulk(50, 100)
        + recv
        + bulk(16000, 200)
        + recv,
        "view": params
        + area_frame(1, 1000, 8)
        + view_release
        + bulk(10, 4000)
        + view_keep
        + release,
        "view-held-new-area": params
        + area_frame(0, 10, 0)
        + view_keep
        + area_frame(1, 10, 0)
        + recv
        + release
        + recv,
        "inline-batch": params
        + bytes([0x02, 3, 0x02, 0, 0x02, 200])
        + bytes([0x06])
        + u16(4096)
        + bytes([8]),
        "out-of-bounds": params + area_frame(1, 100, 4050) + recv,
    }
    for area in range(3, 11):
        seeds[f"hostile-area-{area}"] = params + area_frame(area, 10, 0) + recv
    return seeds


def ring_consumer() -> dict[str, bytes]:
    def record(payload: bytes, stride: int) -> bytes:
        pad = (-(8 + len(payload))) % 8
        return struct.pack("<II", len(payload), stride) + payload + b"\0" * pad

    one = record(b"hello", 64)
    two = record(b"ab", 16) + record(b"cdefgh", 48)
    ops = bytes([0x00, 0x01, 0x02, 0x00, 0x05, 10, 0x14, 0x03]) + u16(256) + bytes([8])

    def seg(sel: int, tail: int, produced: int, data: bytes, head: int | None = None) -> bytes:
        flags = 0 if head is None else 1
        out = bytes([sel, flags]) + (u32(head) if head is not None else b"")
        return out + u16(tail) + u16(0) + bytes([produced, len(data)]) + data

    return {
        "one-record": seg(1, 64, 1, one) + ops,
        "two-records-batch": seg(2, 64, 2, two) + bytes([0x03]) + u16(512) + bytes([8, 0x00]),
        "wrapping": seg(0, 64, 1, one, head=4096 - 8) + bytes([0x02, 0x14]),
        "peek-send": seg(3, 64, 1, one) + bytes([0x14, 0x15, 100, 0x85, 3, 0, 5, 0, 6, 0, 7, 0]),
        "empty-shutdown": seg(1, 0, 0, b"") + bytes([0x17, 0x02, 0x04, 0x07]),
    }


def marshal_batch() -> dict[str, bytes]:
    ab = marshal.dumps([b"a", b"bb"], 2)
    return {
        "ring-list": b"\x00" + ab,
        "ring-skip": b"\x04" + ab,
        "ring-tuple": b"\x01" + marshal.dumps((b"x" * 20, b""), 2),
        "ring-too-large": b"\x00" + marshal.dumps([b"y" * 17], 2),
        "chan-list": b"\x80" + ab,
        "chan-many": b"\x81" + marshal.dumps([bytes([i]) * i for i in range(40)], 2),
        "chan-empty": b"\x80" + marshal.dumps([], 2),
    }


def bcast_subscriber() -> dict[str, bytes]:
    def record(payload: bytes, stride: int, seq: int) -> bytes:
        pad = (-len(payload)) % 8
        return struct.pack("<IIQ", len(payload), stride, seq) + payload + b"\0" * pad

    two = record(b"hello", 24, 5) + record(b"world!", 40, 6)

    def seg(sel: int, data: bytes, tail: int, count: int, reserved: int = 0) -> bytes:
        # selector, flags, base (u32, in 64-byte units), first sequence number,
        # tail offset, reserved delta, head back, messages published, data
        out = bytes([sel, 0]) + u32(0) + u16(5) + u16(tail) + u16(reserved) + bytes([0, count])
        return out + u16(len(data)) + data

    return {
        "recv-two": seg(2, two, 64, 2) + bytes([0x00, 0x02, 0x05, 0x00]),
        "batch": seg(2, two, 64, 2) + bytes([0x03]) + u16(512) + bytes([8, 0x05]),
        "view": seg(0, two, 64, 2) + bytes([0x04, 0x01, 0x04, 0x00, 0x06, 0x07]),
        "overrun": seg(2, two, 64, 2, reserved=8192 + 8) + bytes([0x00, 0x03]) + u16(64) + b"\x04",
        "block-publish": seg(1, b"", 0, 0)
        + bytes([0x09])
        + u16(100)
        + bytes([0x09])
        + u16(600)
        + bytes([0x08, 0x00, 0x0A, 3, 4, 0, 0x02]),
        "reserve-shutdown": seg(3, b"", 0, 0) + bytes([0x0D, 1, 1, 0x00, 0x0C, 0x5A, 0x00, 0x0B]),
    }


def main() -> None:
    for name, seeds in [
        ("chan_frames", chan_frames()),
        ("chan_handoff", chan_handoff()),
        ("ring_consumer", ring_consumer()),
        ("marshal_batch", marshal_batch()),
        ("bcast_subscriber", bcast_subscriber()),
    ]:
        d = os.path.join(HERE, "corpus", name)
        os.makedirs(d, exist_ok=True)
        for seed, data in seeds.items():
            with open(os.path.join(d, seed), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
