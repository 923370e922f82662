"""Ring basics in one process: create/open and their errors, message sizes and wrap-around, len, recv_into, batches, handle life."""

from __future__ import annotations

import array
import collections
import pickle
import random

import pytest
from _workers import pattern
from conftest import fill, new_name, run_python, shm_entries

from fastipc import Closed, FastIPCError, MessageTooLarge, Ring, Timeout

# ---------------------------------------------------------------------------
# create / open
# ---------------------------------------------------------------------------


def test_create_then_open_share_messages(ring_name: str) -> None:
    with Ring.create(ring_name, 1000) as a, Ring.open(ring_name) as b:
        assert a.name == b.name == ring_name
        assert a.capacity == b.capacity == 1000
        a.send(b"hello", timeout=1)
        assert b.recv(timeout=1) == b"hello"
        b.send(b"back", timeout=1)
        assert a.recv(timeout=1) == b"back"


@pytest.mark.parametrize(
    "bad",
    ["", "a/b", "/lead", "trail/", "x" * 201, "sp ace", "tab\t", "nul\0", "é", ".", "..", "a*b"],
)
def test_bad_names_raise_value_error_and_create_nothing(bad: str) -> None:
    with pytest.raises(ValueError):
        Ring.create(bad, 100)
    with pytest.raises(ValueError):
        Ring.open(bad)
    with pytest.raises(ValueError):
        Ring.unlink_name(bad)
    if len(bad) > 200:
        assert shm_entries(bad[:200]) == []


@pytest.mark.parametrize("bad", [None, 5, b"name"])
def test_non_str_names_are_rejected(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Ring.create(bad, 100)  # type: ignore[arg-type]


def test_name_of_200_characters_is_accepted() -> None:
    name = (new_name("tL") + "_" + "n" * 200)[:200]
    assert len(name) == 200
    try:
        with Ring.create(name, 64) as r:
            r.send(b"long name", timeout=1)
            with Ring.open(name) as r2:
                assert r2.recv(timeout=1) == b"long name"
            assert shm_entries(name), "a ring's /dev/shm entries must contain its name"
    finally:
        Ring.unlink_name(name)
    assert shm_entries(name) == []


@pytest.mark.parametrize("bad", [0, -1, -4096])
def test_capacity_below_one_is_a_value_error(ring_name: str, bad: int) -> None:
    with pytest.raises(ValueError):
        Ring.create(ring_name, bad)
    assert shm_entries(ring_name) == []


def test_capacity_above_the_largest_record_is_a_value_error(ring_name: str) -> None:
    from fastipc._checks import MAX_CAPACITY

    with pytest.raises(ValueError, match="capacity"):
        Ring.create(ring_name, MAX_CAPACITY + 1)
    assert shm_entries(ring_name) == []


@pytest.mark.parametrize("bad", [True, False, 1.0, 100.5, "100", None])
def test_capacity_of_wrong_type_is_rejected(ring_name: str, bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Ring.create(ring_name, bad)  # type: ignore[arg-type]
    assert shm_entries(ring_name) == []


def test_create_twice_is_file_exists_and_keeps_the_first(ring_name: str) -> None:
    with Ring.create(ring_name, 128) as r:
        r.send(b"keep me", timeout=1)
        with pytest.raises(FileExistsError):
            Ring.create(ring_name, 128)
        with pytest.raises(FileExistsError):
            Ring.create(ring_name, 999)
        assert len(r) == 1
        with Ring.open(ring_name) as r2:
            assert r2.capacity == 128
            assert r2.recv(timeout=1) == b"keep me"


def test_open_missing_is_file_not_found(ring_name: str) -> None:
    with pytest.raises(FileNotFoundError):
        Ring.open(ring_name)
    assert shm_entries(ring_name) == []


def test_unlink_name_of_missing_ring_is_file_not_found(ring_name: str) -> None:
    with pytest.raises(FileNotFoundError):
        Ring.unlink_name(ring_name)


# ---------------------------------------------------------------------------
# what send accepts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["text", "", 42, 0, None, 3.5, [1, 2], object()])
def test_send_of_non_buffer_is_type_error_and_sends_nothing(ring: Ring, bad: object) -> None:
    with pytest.raises(TypeError):
        ring.send(bad, timeout=0)
    assert len(ring) == 0
    with pytest.raises(Timeout):
        ring.recv(timeout=0)


def test_send_of_non_contiguous_buffer_is_type_error(ring: Ring) -> None:
    with pytest.raises(TypeError):
        ring.send(memoryview(bytearray(b"abcdefgh"))[::2], timeout=0)
    assert len(ring) == 0


def test_send_accepts_any_contiguous_buffer(ring: Ring) -> None:
    ints = array.array("i", [1, -2, 3])
    sources = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        memoryview(bytearray(b"0123456789"))[2:7],
        ints,
        memoryview(ints),
        array.array("d", [1.5, 2.5]),
    ]
    for s in sources:
        ring.send(s, timeout=1)
    for s in sources:
        assert ring.recv(timeout=1) == bytes(memoryview(s).cast("B"))


# ---------------------------------------------------------------------------
# sizes, wrap-around, capacity
# ---------------------------------------------------------------------------


def test_every_size_from_zero_to_capacity_at_every_offset(make_ring: object) -> None:
    r: Ring = make_ring(100)  # type: ignore[operator]
    seq = 0
    # Sizes cycle 0..100; after each, a full-capacity message, so both land at
    # every alignment the writer reaches over many laps of the ring.
    for _round in range(9):
        for size in range(101):
            for n in (size, 100):
                msg = pattern(seq, n)
                r.send(msg, timeout=1)
                assert len(r) == 1
                got = r.recv(timeout=1)
                assert got == msg, f"size {n}, message {seq}"
                assert type(got) is bytes
                seq += 1
    assert len(r) == 0


def test_many_messages_in_flight_with_wrap_keep_fifo_and_content(make_ring: object) -> None:
    r: Ring = make_ring(1000)  # type: ignore[operator]
    rnd = random.Random(1234)
    model: collections.deque[bytes] = collections.deque()
    seq = 0
    for _ in range(3000):
        if rnd.random() < 0.55:
            msg = pattern(
                seq, rnd.choice([0, 1, 7, 8, 9, rnd.randint(0, 300), rnd.randint(0, 1000)])
            )
            seq += 1
            try:
                r.send(msg, timeout=0)
            except Timeout:
                assert model, "an empty ring must take any message up to capacity"
                continue
            model.append(msg)
        elif model:
            assert r.recv(timeout=0) == model.popleft()
        else:
            with pytest.raises(Timeout):
                r.recv(timeout=0)
        assert len(r) == len(model)
    while model:
        assert r.recv(timeout=0) == model.popleft()


def test_full_capacity_message_fits_in_an_empty_ring_after_any_history(make_ring: object) -> None:
    r: Ring = make_ring(777)  # type: ignore[operator]
    for k in range(300):
        r.send(pattern(k, k % 50), timeout=1)
        r.send(pattern(k + 1, (k * 37) % 300), timeout=1)
        r.recv(timeout=1)
        r.recv(timeout=1)
        r.send(pattern(k, 777), timeout=0)
        assert r.recv(timeout=0) == pattern(k, 777)


def test_message_larger_than_capacity_is_message_too_large(make_ring: object) -> None:
    r: Ring = make_ring(100)  # type: ignore[operator]
    for n in (101, 102, 4096, 1 << 20):
        with pytest.raises(MessageTooLarge) as info:
            r.send(bytes(n), timeout=0)
        assert isinstance(info.value, ValueError) and isinstance(info.value, FastIPCError)
    assert len(r) == 0
    r.send(bytes(100), timeout=0)
    with pytest.raises(MessageTooLarge):  # too large stays too large, even when also full
        r.send(bytes(101), timeout=0)
    assert r.recv(timeout=0) == bytes(100)


def test_capacity_one_ring_carries_zero_and_one_byte_messages(make_ring: object) -> None:
    r: Ring = make_ring(1)  # type: ignore[operator]
    assert r.capacity == 1
    for i in range(500):
        msg = bytes([i & 0xFF]) if i % 3 else b""
        r.send(msg, timeout=0)
        assert r.recv(timeout=0) == msg
    with pytest.raises(MessageTooLarge):
        r.send(b"xy", timeout=0)
    with pytest.raises(MessageTooLarge):
        r.send_many([b"a", b"bc"], timeout=0)
    assert len(r) == 0


def test_len_counts_waiting_messages_including_empty_ones(ring: Ring) -> None:
    assert len(ring) == 0
    for i in range(10):
        ring.send(b"" if i % 2 else b"x" * i, timeout=0)
        assert len(ring) == i + 1
    with Ring.open(ring.name) as other:
        assert len(other) == 10
        for i in range(10):
            other.recv(timeout=0)
            assert len(ring) == 9 - i
    assert len(ring) == 0


# ---------------------------------------------------------------------------
# recv_into
# ---------------------------------------------------------------------------


def test_recv_into_fitting_buffer_returns_length(ring: Ring) -> None:
    ring.send(b"abcdef", timeout=0)
    ring.send(b"", timeout=0)
    ring.send(b"12345", timeout=0)
    buf = bytearray(b"#" * 10)
    assert ring.recv_into(buf, timeout=0) == 6
    assert buf == b"abcdef####"
    assert ring.recv_into(buf, timeout=0) == 0
    exact = bytearray(5)
    assert ring.recv_into(memoryview(exact), timeout=0) == 5
    assert exact == b"12345"


def test_recv_into_a_slice_of_a_larger_buffer(ring: Ring) -> None:
    ring.send(b"XYZ", timeout=0)
    big = bytearray(b"." * 8)
    assert ring.recv_into(memoryview(big)[2:6], timeout=0) == 3
    assert big == b"..XYZ..."


def test_recv_into_too_small_raises_and_leaves_the_message(ring: Ring) -> None:
    ring.send(b"0123456789", timeout=0)
    ring.send(b"next", timeout=0)
    small = bytearray(9)
    with pytest.raises(MessageTooLarge):
        ring.recv_into(small, timeout=0)
    assert len(ring) == 2
    with pytest.raises(MessageTooLarge):
        ring.recv_into(bytearray(0), timeout=0)
    assert ring.recv(timeout=0) == b"0123456789"
    assert ring.recv(timeout=0) == b"next"


def test_recv_into_read_only_buffer_is_type_error_and_leaves_the_message(ring: Ring) -> None:
    ring.send(b"abc", timeout=0)
    with pytest.raises(TypeError):
        ring.recv_into(b"xxxxxx", timeout=0)
    assert ring.recv(timeout=0) == b"abc"


def test_recv_into_on_empty_ring_times_out(ring: Ring) -> None:
    with pytest.raises(Timeout):
        ring.recv_into(bytearray(10), timeout=0)


# ---------------------------------------------------------------------------
# send_many / recv_many
# ---------------------------------------------------------------------------


def test_send_many_and_recv_many_mixed_buffers(ring: Ring) -> None:
    items = [
        b"a",
        bytearray(b"bb"),
        memoryview(b"ccc"),
        b"",
        array.array("B", [1, 2, 3, 4]),
        b"z" * 300,
    ]
    assert ring.send_many(items, timeout=1) == len(items)
    assert len(ring) == len(items)
    got: list[bytes] = []
    while len(got) < len(items):
        batch = ring.recv_many(4, timeout=1)
        assert 1 <= len(batch) <= 4
        assert all(type(m) is bytes for m in batch)
        got += batch
    assert got == [bytes(memoryview(i).cast("B")) for i in items]
    assert len(ring) == 0


def test_send_many_accepts_a_generator(ring: Ring) -> None:
    assert ring.send_many((pattern(i, i) for i in range(50)), timeout=1) == 50
    assert ring.recv_many(1000, timeout=0) == [pattern(i, i) for i in range(50)]


def test_send_many_of_nothing_sends_nothing(ring: Ring) -> None:
    assert ring.send_many([], timeout=0) == 0
    assert len(ring) == 0


@pytest.mark.parametrize("bad", ["str", 7, None])
def test_send_many_with_a_bad_item_sends_nothing(ring: Ring, bad: object) -> None:
    with pytest.raises(TypeError):
        ring.send_many([b"one", b"two", bad, b"four"], timeout=0)
    assert len(ring) == 0
    with pytest.raises(Timeout):
        ring.recv(timeout=0)


def test_send_many_with_an_oversized_item_sends_nothing(make_ring: object) -> None:
    r: Ring = make_ring(100)  # type: ignore[operator]
    with pytest.raises(MessageTooLarge):
        r.send_many([b"one", b"x" * 100, b"x" * 101, b"four"], timeout=0)
    assert len(r) == 0


def test_send_many_more_than_fits_times_out_with_sent_count(make_ring: object) -> None:
    r: Ring = make_ring(256)  # type: ignore[operator]
    batch = [pattern(i, 60) for i in range(2000)]  # 120 kB: more than any rounding of 256 bytes
    with pytest.raises(Timeout) as info:
        r.send_many(batch, timeout=0.2)
    sent = info.value.sent
    assert 1 <= sent < len(batch)
    assert len(r) == sent
    assert r.recv_many(100, timeout=0) == batch[:sent]


def test_recv_many_returns_between_one_and_max_count(ring: Ring) -> None:
    ring.send_many([pattern(i, 10) for i in range(20)], timeout=1)
    got: list[bytes] = []
    for max_count in (1, 3, 7, 100):
        batch = ring.recv_many(max_count, timeout=0)
        assert 1 <= len(batch) <= max_count
        got += batch
    while len(ring):
        got += ring.recv_many(5, timeout=0)
    assert got == [pattern(i, 10) for i in range(20)]
    with pytest.raises(Timeout):
        ring.recv_many(5, timeout=0)


def test_recv_many_takes_every_waiting_message_up_to_max_count(ring: Ring) -> None:
    ring.send_many([b"m%d" % i for i in range(6)], timeout=1)
    assert ring.recv_many(4, timeout=0) == [b"m0", b"m1", b"m2", b"m3"]
    assert ring.recv_many(4, timeout=0) == [b"m4", b"m5"]


@pytest.mark.parametrize("bad", [0, -1])
def test_recv_many_with_non_positive_max_count_is_value_error(ring: Ring, bad: int) -> None:
    ring.send(b"x", timeout=0)
    with pytest.raises(ValueError):
        ring.recv_many(bad, timeout=0)
    assert len(ring) == 1


def test_batches_wrap_around_with_full_content(make_ring: object) -> None:
    r: Ring = make_ring(500)  # type: ignore[operator]
    rnd = random.Random(7)
    seq_out = seq_in = 0
    for _ in range(400):
        batch = [pattern(seq_out + i, rnd.randint(0, 60)) for i in range(rnd.randint(1, 6))]
        assert r.send_many(batch, timeout=1) == len(batch)
        seq_out += len(batch)
        while seq_in < seq_out:
            for m in r.recv_many(rnd.randint(1, 8), timeout=1):
                assert m == pattern(seq_in, len(m))
                seq_in += 1


# ---------------------------------------------------------------------------
# timeouts: argument checking
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_negative_or_nan_timeout_is_value_error_when_the_call_would_wait(
    make_ring: object, bad: float
) -> None:
    r: Ring = make_ring(64)  # type: ignore[operator]
    with pytest.raises(ValueError):
        r.recv(timeout=bad)
    n = fill(r, 64)
    with pytest.raises(ValueError):
        r.send(b"y" * 64, timeout=bad)
    assert len(r) == n


def test_non_numeric_timeout_is_type_error_when_the_call_would_wait(make_ring: object) -> None:
    r: Ring = make_ring(64)  # type: ignore[operator]
    with pytest.raises(TypeError):
        r.recv(timeout="1")  # type: ignore[arg-type]
    n = fill(r, 64)
    with pytest.raises(TypeError):
        r.send(b"y" * 64, timeout="1")  # type: ignore[arg-type]
    assert len(r) == n


@pytest.mark.parametrize("bad", [-1, float("nan"), "1"])
def test_bad_timeout_is_rejected_even_when_the_call_could_complete_at_once(
    ring: Ring, bad: object
) -> None:
    """Both backends validate arguments alike: a bad timeout never sends or consumes a message."""
    with pytest.raises((ValueError, TypeError)):
        ring.send(b"x", timeout=bad)  # type: ignore[arg-type]
    assert len(ring) == 0
    ring.send(b"kept", timeout=0)
    with pytest.raises((ValueError, TypeError)):
        ring.recv(timeout=bad)  # type: ignore[arg-type]
    assert ring.recv(timeout=0) == b"kept"


# ---------------------------------------------------------------------------
# handle life: context manager, close, pickling
# ---------------------------------------------------------------------------


def test_context_manager_closes_the_handle_not_the_ring(ring_name: str) -> None:
    with Ring.create(ring_name, 64) as r:
        assert not r.closed
        r.send(b"survives", timeout=0)
    assert r.closed
    with Ring.open(ring_name) as r2:
        assert r2.recv(timeout=0) == b"survives"


def test_close_twice_is_harmless(ring: Ring) -> None:
    ring.close()
    ring.close()
    assert ring.closed
    assert "closed" in repr(ring)


def test_use_after_close_raises_a_clear_error(ring_name: str) -> None:
    # In a child so that a use-after-free crash shows as a failure, not a dead test run.
    proc = run_python(
        f"""
        from fastipc import Ring
        r = Ring.create({ring_name!r}, 64)
        r.send(b"x", timeout=0)
        r.close()
        calls = {{
            "send": lambda: r.send(b"y", timeout=0),
            "send_many": lambda: r.send_many([b"y"], timeout=0),
            "send_many of none": lambda: r.send_many([]),
            "recv": lambda: r.recv(timeout=0),
            "recv_into": lambda: r.recv_into(bytearray(8), timeout=0),
            "recv_many": lambda: r.recv_many(2, timeout=0),
            "len": lambda: len(r),
            "reserve": lambda: r.reserve(1, timeout=0).__enter__(),
            "recv_view": lambda: r.recv_view(timeout=0).__enter__(),
            "shutdown": lambda: r.shutdown(),
        }}
        for what, call in calls.items():
            try:
                call()
            except (ValueError, OSError, EOFError, RuntimeError) as exc:
                assert "closed" in str(exc).lower(), (what, exc)
                print(what, "ok", type(exc).__name__)
            else:
                raise AssertionError(what + " worked on a closed handle")
        with Ring.open({ring_name!r}) as r2:
            assert r2.recv(timeout=0) == b"x"   # nothing above touched the ring
            assert len(r2) == 0
        """,
        timeout=30,
    )
    assert proc.stdout.count(" ok ") == 10


def test_pickle_reopens_by_name(ring: Ring) -> None:
    ring.send(b"through pickle", timeout=0)
    copy = pickle.loads(pickle.dumps(ring))
    try:
        assert copy is not ring
        assert isinstance(copy, Ring)
        assert copy.name == ring.name and copy.capacity == ring.capacity
        assert copy.recv(timeout=1) == b"through pickle"
    finally:
        copy.close()


def test_iterating_yields_until_shutdown_and_drained(ring: Ring) -> None:
    msgs = [b"a", b"", b"ccc"]
    ring.send_many(msgs, timeout=0)
    ring.shutdown()
    assert list(ring) == msgs
    with pytest.raises(Closed):
        ring.recv(timeout=0)
