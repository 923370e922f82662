"""send_obj/recv_obj: Python objects and numpy arrays without hand-rolled pickling (issue 15).

Pickle protocol 5 with out-of-band buffers: an array's data is written once
into the message (on a Ring straight into a reserved block) and rebuilt on
receipt on the received message itself (one copy out of a Ring, none
more on a Channel). The
ring's sender is a real child process, the channel's another thread; what
arrives is compared whole.
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest
from conftest import run_python

from fastipc import Channel, MessageTooLarge, Ring
from fastipc._objects import MAGIC

OBJECTS_CODE = """
import numpy as np
def objects():
    big = np.arange(3_000_000, dtype=np.float64).reshape(1000, 3000)
    rec = np.zeros(5, dtype=[("id", "<i4"), ("x", "<f8")]); rec["id"] = range(5)
    return [
        {"a": 1, "b": [1.5, "two", None], "c": (b"bytes", frozenset({3}))},
        bytearray(b"q" * 200_000),
        big,
        big[:, ::3],          # not contiguous: travels in-band
        {"rec": rec, "empty": np.empty((0, 4)), "scalar": np.float32(2.5)},
        "fin",
    ]
"""


def _assert_same(got: object, want: object) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for k in want:
            _assert_same(got[k], want[k])
    else:
        assert got == want


def _expected() -> list[object]:
    ns: dict[str, object] = {}
    exec(OBJECTS_CODE, ns)  # noqa: S102 (the test's own code, shared with the child)
    return ns["objects"]()  # type: ignore[operator, no-any-return]


def test_objects_and_arrays_cross_a_ring_between_processes(ring_name: str) -> None:
    r = Ring.create(ring_name, 64 << 20)
    try:
        run_python(
            OBJECTS_CODE
            + f"from fastipc import Ring\nr = Ring.open({ring_name!r})\n"
            + "for o in objects(): r.send_obj(o, timeout=30)\nr.close()\n",
            timeout=120,
        )
        want = _expected()
        got = [r.recv_obj(timeout=30) for _ in want]
        for g, w in zip(got, want):
            _assert_same(g, w)
        assert not got[2].flags.writeable  # rebuilt on the received copy, not copied again
        assert len(r) == 0
    finally:
        r.close()


def test_objects_and_arrays_cross_a_channel_from_another_thread() -> None:
    a, b = Channel.pair()
    try:
        want = _expected()
        sender = threading.Thread(target=lambda: [a.send_obj(o, timeout=30) for o in want])
        sender.start()
        got = [b.recv_obj(timeout=30) for _ in want]
        sender.join()
        for g, w in zip(got, want):
            _assert_same(g, w)
        assert not got[2].flags.writeable  # a view into the received message, not a copy
    finally:
        a.close()
        b.close()


def test_a_large_object_is_written_into_a_reserved_block_and_too_large_is_refused(ring: Ring) -> None:
    arr = np.arange(ring.capacity // 16, dtype=np.int64)  # half the ring
    ring.send_obj(arr)
    got = ring.recv_obj()
    assert np.array_equal(got, arr)
    with pytest.raises(MessageTooLarge):
        ring.send_obj(np.zeros(ring.capacity, dtype=np.uint8))
    assert len(ring) == 0  # nothing half-written was published


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"plain bytes, not an object", "not an object message"),
        (b"abc", "shorter than its header"),
        (MAGIC + struct.pack("<II", 5, 2) + struct.pack("<Q", 1), "buffer table runs past"),
        (MAGIC + struct.pack("<II", 5, 0) + b"12", "do not add up"),
    ],
)
def test_a_message_not_made_by_send_obj_raises_value_error_and_is_consumed(
    ring: Ring, message: bytes, match: str
) -> None:
    ring.send(message)
    ring.send_obj("next")
    with pytest.raises(ValueError, match=match):
        ring.recv_obj()
    assert ring.recv_obj() == "next"


def test_a_non_contiguous_array_is_refused_with_what_to_do(ring: Ring) -> None:
    strided = np.arange(10)[::2]
    a, b = Channel.pair()
    try:
        for call in (
            lambda: ring.send(strided),
            lambda: ring.send_many([strided]),
            lambda: ring.recv_into(np.zeros(10)[::2], timeout=0),
            lambda: a.send(strided),
        ):
            with pytest.raises(TypeError, match=r"C-contiguous.*ascontiguousarray"):
                call()
    finally:
        a.close()
        b.close()
    assert len(ring) == 0


def test_a_message_claiming_too_many_buffers_is_refused_before_any_is_built(make_ring: object) -> None:
    from fastipc._objects import MAX_BUFFERS

    ring: Ring = make_ring(4 << 20)  # type: ignore[operator]
    count = MAX_BUFFERS + 1
    ring.send(MAGIC + struct.pack("<II", 0, count) + bytes(8 * count))
    with pytest.raises(ValueError, match="buffers, over"):
        ring.recv_obj()
    many = [bytearray(1) for _ in range(MAX_BUFFERS + 5)]  # sent in-band instead
    ring.send_obj(many)
    assert ring.recv_obj() == many
