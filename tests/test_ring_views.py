"""Zero-copy views: reserve() publishes on normal exit and discards on error; recv_view() always consumes."""

from __future__ import annotations

import random
import time

import pytest
from _workers import make_msg, parse_msg, pattern
from conftest import Children, fill

import fastipc
from fastipc import Closed, Full, MessageTooLarge, Ring, Timeout


class Boom(Exception):
    pass


# ---------------------------------------------------------------------------
# reserve
# ---------------------------------------------------------------------------


def test_reserve_publishes_exactly_nbytes_on_normal_exit(ring: Ring) -> None:
    with ring.reserve(10, timeout=1) as mv:
        assert isinstance(mv, memoryview)
        assert len(mv) == 10 and mv.nbytes == 10
        assert not mv.readonly
        assert len(ring) == 0, "not visible before the block exits"
        mv[:] = b"0123456789"
    assert len(ring) == 1
    assert ring.recv(timeout=0) == b"0123456789"


def test_reserve_view_cannot_be_written_past_its_end(ring: Ring) -> None:
    with ring.reserve(4, timeout=1) as mv:
        with pytest.raises(IndexError):
            mv[4] = 1
        with pytest.raises(ValueError):
            mv[:] = b"12345"
        mv[:] = b"abcd"
    assert ring.recv(timeout=0) == b"abcd"


def test_reserve_discards_on_exception_and_reraises(ring: Ring) -> None:
    ring.send(b"before", timeout=0)
    with pytest.raises(Boom), ring.reserve(6, timeout=1) as mv:
        mv[:] = b"ghost!"
        raise Boom
    ring.send(b"after", timeout=0)
    assert len(ring) == 2
    assert ring.recv(timeout=0) == b"before"
    assert ring.recv(timeout=0) == b"after"
    with pytest.raises(Timeout):
        ring.recv(timeout=0)


def test_reserve_zero_bytes_publishes_an_empty_message(ring: Ring) -> None:
    with ring.reserve(0, timeout=1) as mv:
        assert len(mv) == 0
    assert ring.recv(timeout=0) == b""


def test_reserve_of_capacity_works_and_beyond_is_message_too_large(make_ring: object) -> None:
    r: Ring = make_ring(100)  # type: ignore[operator]
    with pytest.raises(MessageTooLarge), r.reserve(101, timeout=0):
        pass
    assert len(r) == 0
    with r.reserve(100, timeout=0) as mv:
        mv[:] = pattern(1, 100)
    assert r.recv(timeout=0) == pattern(1, 100)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None])
def test_reserve_of_bad_size_is_rejected(ring: Ring, bad: object) -> None:
    with pytest.raises((TypeError, ValueError)), ring.reserve(bad, timeout=0):  # type: ignore[arg-type]
        pass
    assert len(ring) == 0


def test_reserve_on_full_ring_times_out(make_ring: object) -> None:
    r: Ring = make_ring(64)  # type: ignore[operator]
    n = fill(r, 64)
    with pytest.raises(Timeout), r.reserve(64, timeout=0.1):
        pass
    assert len(r) == n
    r.recv(timeout=0)
    with r.reserve(64, timeout=0) as mv:
        mv[:] = b"z" * 64
    assert len(r) == n


def test_reserve_wraps_around_at_every_offset(make_ring: object) -> None:
    r: Ring = make_ring(100)  # type: ignore[operator]
    seq = 0
    for _round in range(5):
        for size in range(101):
            for n in (size, 100):
                with r.reserve(n, timeout=1) as mv:
                    assert len(mv) == n
                    mv[:] = pattern(seq, n)
                assert r.recv(timeout=1) == pattern(seq, n)
                seq += 1


def test_reserve_after_shutdown_is_closed(ring: Ring) -> None:
    ring.shutdown()
    with pytest.raises(Closed), ring.reserve(1, timeout=0):
        pass


def test_reserve_holds_other_producers_but_not_consumers(ring: Ring, children: Children) -> None:
    ring.send(make_msg(1, 0, 40), timeout=0)
    ring.send(make_msg(1, 1, 40), timeout=0)
    with ring.reserve(40, timeout=1) as mv:
        # A consumer in another process is not held up by the open reservation.
        c = children.start("blocked", ring.name, "recv", 0, 2.0)
        assert children.readline(c, 10).endswith("recv 1:0")
        # A producer in another process waits until the reservation is published.
        p = children.start("blocked", ring.name, "send", 40, 0.3)
        assert children.readline(p, 10).endswith("timeout")
        p = children.start("blocked", ring.name, "send", 40, 10)
        time.sleep(0.2)  # let it block behind the reservation
        mv[:] = make_msg(2, 0, 40)
    assert children.readline(p, 10).endswith("sent")
    assert [parse_msg(ring.recv(timeout=1)) for _ in range(3)] == [(1, 1), (2, 0), (777, 0)]


# ---------------------------------------------------------------------------
# recv_view
# ---------------------------------------------------------------------------


def test_recv_view_is_read_only_and_consumed_on_exit(ring: Ring) -> None:
    ring.send(b"first", timeout=0)
    ring.send(b"second", timeout=0)
    with ring.recv_view(timeout=1) as mv:
        assert isinstance(mv, memoryview)
        assert mv.readonly
        assert bytes(mv) == b"first"
        with pytest.raises(TypeError):
            mv[0] = 0
    assert len(ring) == 1
    assert ring.recv(timeout=0) == b"second"


def test_recv_view_consumes_even_when_the_block_raises(ring: Ring) -> None:
    ring.send(b"poison", timeout=0)
    ring.send(b"good", timeout=0)
    with pytest.raises(Boom), ring.recv_view(timeout=1) as mv:
        assert bytes(mv) == b"poison"
        raise Boom
    assert len(ring) == 1
    assert ring.recv(timeout=0) == b"good"


def test_recv_view_of_empty_message(ring: Ring) -> None:
    ring.send(b"", timeout=0)
    with ring.recv_view(timeout=1) as mv:
        assert len(mv) == 0
    assert len(ring) == 0


def test_recv_view_on_empty_ring_times_out(ring: Ring) -> None:
    with pytest.raises(Timeout), ring.recv_view(timeout=0):
        pass
    ring.send(b"x", timeout=0)
    with ring.recv_view(timeout=0) as mv:
        assert bytes(mv) == b"x"


def test_recv_view_wraps_around_at_every_offset(make_ring: object) -> None:
    r: Ring = make_ring(100)  # type: ignore[operator]
    seq = 0
    for _round in range(5):
        for size in range(101):
            for n in (size, 100):
                r.send(pattern(seq, n), timeout=1)
                with r.recv_view(timeout=1) as mv:
                    assert len(mv) == n
                    assert bytes(mv) == pattern(seq, n)
                seq += 1
    assert len(r) == 0


def test_a_view_hashes_the_same_way_wherever_its_record_lies(make_ring: object) -> None:
    """A read-only byte view hashes as its bytes, but a memoryview's hash first hashes what
    it views. python: a record that wraps around the ring's end is joined into a buffer of
    the handle's, and a plain bytearray there made hash(view) raise TypeError for those
    records only (which records, the data and the ring's history decided); now every view
    hashes. native: every view is a cffi buffer's, which never hashes (as documented)."""
    r: Ring = make_ring(100)  # type: ignore[operator]
    for seq, n in enumerate(list(range(1, 101)) * 2):
        r.send(pattern(seq, n), timeout=1)
        with r.recv_view(timeout=1) as mv:
            if fastipc.BACKEND == "python":
                assert hash(mv) == hash(pattern(seq, n))
            else:
                with pytest.raises(TypeError, match="unhashable"):
                    hash(mv)
            assert hash(bytes(mv)) == hash(pattern(seq, n))


def test_views_and_copies_mix_in_order(make_ring: object) -> None:
    r: Ring = make_ring(700)  # type: ignore[operator]
    rnd = random.Random(99)
    sent = got = 0
    for _ in range(2000):
        if sent - got < 5 and rnd.random() < 0.6:
            n = rnd.randint(0, 140)
            if rnd.random() < 0.5:
                with r.reserve(n, timeout=1) as mv:
                    mv[:] = pattern(sent, n)
            else:
                r.send(pattern(sent, n), timeout=1)
            sent += 1
        elif got < sent:
            if rnd.random() < 0.5:
                with r.recv_view(timeout=1) as mv:
                    data = bytes(mv)
            else:
                data = r.recv(timeout=1)
            assert data == pattern(got, len(data))
            got += 1


def test_recv_view_holds_other_consumers_but_not_producers(ring: Ring, children: Children) -> None:
    ring.send(make_msg(1, 0, 40), timeout=0)
    ring.send(make_msg(1, 1, 40), timeout=0)
    with ring.recv_view(timeout=1) as mv:
        assert parse_msg(mv) == (1, 0)
        # A producer in another process is not held up by the open view.
        p = children.start("blocked", ring.name, "send", 40, 2.0)
        assert children.readline(p, 10).endswith("sent")
        # Another consumer waits for the view to be released...
        c = children.start("blocked", ring.name, "recv", 0, 0.3)
        assert children.readline(c, 10).endswith("timeout")
        c = children.start("blocked", ring.name, "recv", 0, 10)
        time.sleep(0.2)  # let it block behind the view
    # ... and then gets the next message, not the one that was viewed.
    assert children.readline(c, 10).endswith("recv 1:1")
    assert parse_msg(ring.recv(timeout=1)) == (777, 0)


# ---------------------------------------------------------------------------
# closing a handle while one of its views is open
# ---------------------------------------------------------------------------


def test_close_inside_reserve_sends_nothing_and_frees_the_producer_side(ring: Ring) -> None:
    writer = Ring.open(ring.name)
    cm = writer.reserve(3, timeout=1)
    view = cm.__enter__()
    view[:] = b"abc"
    writer.close()
    ring.send(b"other producer", timeout=1)  # not held up by the closed handle
    with pytest.raises(ValueError, match="closed"):
        cm.__exit__(None, None, None)
    assert ring.recv(timeout=1) == b"other producer"
    with pytest.raises(Timeout):
        ring.recv(timeout=0)


def test_close_inside_recv_view_leaves_the_message_for_other_consumers(ring: Ring) -> None:
    reader = Ring.open(ring.name)
    ring.send(b"kept", timeout=1)
    cm = reader.recv_view(timeout=1)
    assert bytes(cm.__enter__()) == b"kept"
    reader.close()
    cm.__exit__(None, None, None)
    assert ring.recv(timeout=1) == b"kept"


@pytest.mark.parametrize("outer", ["reserve", "recv_view"])
def test_a_block_of_the_other_side_inside_this_threads_block_is_refused_at_once(
    ring: Ring, outer: str
) -> None:
    """recv_view() inside this thread's reserve() on an empty ring (or reserve() inside
    recv_view() on a full one) would wait for what only the outer block can give: refused
    at once with RuntimeError, not a hang (python, when the check came after the wait)."""
    if outer == "recv_view":
        ring.send(b"first")
        while True:  # fill the ring: no room for the inner reservation
            try:
                ring.send(b"x" * 64, timeout=0)
            except Full:
                break
        outer_cm, inner = ring.recv_view(timeout=1), lambda: ring.reserve(64, timeout=1)
    else:
        outer_cm, inner = ring.reserve(8, timeout=1), lambda: ring.recv_view(timeout=1)
    with outer_cm as v:
        with pytest.raises(RuntimeError, match="block"), inner():
            pass
        if outer == "reserve":
            v[:] = b"12345678"
    if outer == "reserve":
        assert ring.recv(timeout=1) == b"12345678"
    else:
        assert ring.recv(timeout=1) == b"x" * 64


@pytest.mark.parametrize("outer", ["reserve", "recv_view"])
@pytest.mark.parametrize("same_side", [False, True])
def test_a_second_block_from_another_thread_is_refused_at_once(
    ring: Ring, outer: str, same_side: bool
) -> None:
    """One view block per handle at a time: another thread's second block, on either side,
    raises RuntimeError at once, on an empty (or full) ring too, rather than waiting for
    what the first block holds (the python ring waited, then timed out)."""
    import threading

    if outer == "recv_view":
        ring.send(b"first")
        outer_cm = ring.recv_view(timeout=1)
    else:
        outer_cm = ring.reserve(8, timeout=1)
    inner_side = outer if same_side else ("reserve" if outer == "recv_view" else "recv_view")
    got: list[object] = []

    def second() -> None:
        t0 = time.monotonic()
        try:
            cm = (
                ring.reserve(8, timeout=2) if inner_side == "reserve" else ring.recv_view(timeout=2)
            )
            with cm:
                got.append("entered")
        except BaseException as exc:  # noqa: BLE001 - reported below
            got.append(type(exc).__name__)
        got.append(time.monotonic() - t0)

    with outer_cm as v:
        t = threading.Thread(target=second)
        t.start()
        t.join(10)
        if outer == "reserve":
            v[:] = b"12345678"
    assert got[0] == "RuntimeError", got
    assert got[1] < 1.0, got  # at once, not after the 2 s timeout
