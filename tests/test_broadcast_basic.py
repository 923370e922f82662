"""Broadcast ring basics on the selected backend: fan-out, order, joins, batches, views, timeouts,
lag under overwrite, shutdown, close from another thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import fastipc
from fastipc import Broadcast, Closed, Empty, Full, Lagged, MessageTooLarge, Subscriber, Timeout


@pytest.fixture
def made(ring_name: str) -> Iterator[list[object]]:
    """Handles to close at teardown (the ring itself is unlinked by ring_name)."""
    handles: list[object] = []
    yield handles
    for h in reversed(handles):
        h.close()  # type: ignore[attr-defined]


def _pub(made: list[object], name: str, capacity: int = 4096, **kw: object) -> Broadcast:
    pub = Broadcast.create(name, capacity, **kw)  # type: ignore[arg-type]
    made.append(pub)
    return pub


def _sub(made: list[object], name: str) -> Subscriber:
    sub = Broadcast.subscribe(name)
    made.append(sub)
    return sub


def test_every_subscriber_sees_every_message_in_order(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name, 1 << 16)
    subs = [_sub(made, ring_name) for _ in range(3)]
    msgs = [b"m%d" % i * (i % 7 + 1) for i in range(200)]
    for m in msgs[:100]:
        pub.publish(m)
    assert pub.publish_many(msgs[100:]) == 100
    for s in subs:
        assert len(s) == 200
        assert [s.recv(timeout=5) for _ in range(200)] == msgs
        assert len(s) == 0
    assert pub.subscribers == 3


def test_a_subscriber_joins_at_the_newest_message(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name)
    pub.publish(b"before")
    sub = _sub(made, ring_name)
    with pytest.raises(Empty):
        sub.recv(timeout=0)
    pub.publish(b"after")
    assert sub.recv(timeout=5) == b"after"


def test_recv_many_recv_into_recv_view_and_reserve(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name)
    sub = _sub(made, ring_name)
    pub.publish_many([b"a", b"bb", b"ccc", b"", b"dddd"])
    assert sub.recv_many(2) == [b"a", b"bb"]
    assert sub.recv_many(10, timeout=0) == [b"ccc", b"", b"dddd"]
    with pub.reserve(5) as v:
        v[:] = b"hello"
    with pytest.raises(KeyError), pub.reserve(3) as v:
        v[:] = b"bye"
        raise KeyError  # discarded
    buf = bytearray(3)
    with pytest.raises(MessageTooLarge):
        sub.recv_into(buf, timeout=5)  # not consumed
    big = bytearray(16)
    assert sub.recv_into(big, timeout=5) == 5 and big[:5] == b"hello"
    pub.publish(b"viewed")
    with sub.recv_view(timeout=5) as v:
        assert v.readonly and bytes(v) == b"viewed"
    with pytest.raises(Empty):
        sub.recv(timeout=0)
    assert bool(sub) and len(sub) == 0


def test_messages_wrapping_the_ring_end_arrive_whole(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name, 1000, policy="block")
    sub = _sub(made, ring_name)
    for i in range(300):
        m = bytes([i % 256]) * (37 + i % 300)
        if i % 3 == 0:
            pub.publish(m)
        else:
            with pub.reserve(len(m)) as v:
                v[:] = m
        if i % 2:
            with sub.recv_view(timeout=5) as v:
                assert bytes(v) == m
        else:
            assert sub.recv(timeout=5) == m


def test_a_view_hashes_as_documented_wherever_its_record_lies(
    ring_name: str, made: list[object]
) -> None:
    # README: hash(view) is the bytes' hash on the python backend and TypeError on
    # native (a cffi buffer), the same for every record, wrapped around the end or not.
    pub = _pub(made, ring_name, 1000, policy="block")
    sub = _sub(made, ring_name)
    for i in range(200):
        m = bytes([i % 256]) * (37 + i % 300)
        pub.publish(m)
        with sub.recv_view(timeout=5) as v:
            if fastipc.BACKEND == "python":
                assert hash(v) == hash(m)
            else:
                with pytest.raises(TypeError, match="unhashable"):
                    hash(v)


def test_timeouts_raise_empty_and_full(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name, 100, policy="block")
    sub = _sub(made, ring_name)
    with pytest.raises(Empty):
        sub.recv(timeout=0.05)
    with pytest.raises(Empty):
        sub.recv_many(4, timeout=0)
    n = 0
    with pytest.raises(Full):
        while True:
            pub.publish(b"x" * 40, timeout=0)
            n += 1
            assert n < 100
    assert n >= 1
    with pytest.raises(Full) as info:
        pub.publish_many([b"y"] * 50, timeout=0.05)
    assert isinstance(info.value, Timeout) and info.value.sent < 50
    assert sub.recv(timeout=5) == b"x" * 40
    pub.publish(b"z", timeout=0)  # room again


def test_publish_checks_its_arguments(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name, 64)
    with pytest.raises(MessageTooLarge):
        pub.publish(b"x" * 65)
    with pytest.raises(TypeError):
        pub.publish("text")  # type: ignore[arg-type]
    with pytest.raises(MessageTooLarge):
        pub.publish_many([b"ok", b"x" * 65])
    with pytest.raises(ValueError):
        pub.reserve(-1)
    pub.publish(b"x" * 64)


@pytest.mark.parametrize(
    "kw",
    [
        {"subscribers": 0},
        {"subscribers": 4097},
        {"policy": "drop"},
        {"mode": 0o1000},
    ],
)
def test_create_refuses_bad_arguments(ring_name: str, kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Broadcast.create(ring_name, 64, **kw)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Broadcast.create(ring_name, 64, subscribers="4")  # type: ignore[arg-type]


def test_create_refuses_a_capacity_past_the_broadcast_limit_naming_it(ring_name: str) -> None:
    """A Ring takes up to 2**32 - 128 bytes, a broadcast ring 2**32 - 256: past that, the
    native backend said OSError(EINVAL) and the python one made the ring."""
    for capacity in ((1 << 32) - 255, (1 << 32) - 128):
        with pytest.raises(ValueError, match=f"{(1 << 32) - 256} bytes for a broadcast ring"):
            Broadcast.create(ring_name, capacity)
    with pytest.raises(FileNotFoundError):
        Broadcast.open(ring_name)  # nothing was made


def test_lagged_once_with_the_count_then_the_oldest_kept(
    ring_name: str, made: list[object]
) -> None:
    pub = _pub(made, ring_name, 1024)  # overwrite
    slow = _sub(made, ring_name)
    fast = _sub(made, ring_name)
    sent = [b"%04d" % i + b"." * 60 for i in range(200)]  # 72-byte records
    for m in sent:
        pub.publish(m, timeout=0)  # never waits under overwrite
        assert fast.recv(timeout=5) == m
    with pytest.raises(Lagged) as info:
        slow.recv(timeout=5)
    missed = info.value.missed
    assert 0 < missed < 200 and slow.missed == missed
    rest = [slow.recv(timeout=0) for _ in range(200 - missed)]
    assert rest == sent[missed:]  # the oldest kept onwards, none torn or repeated
    with pytest.raises(Empty):
        slow.recv(timeout=0)
    assert fast.missed == 0


def test_block_policy_waits_for_the_slowest_and_resumes(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name, 256, policy="block")
    slow = _sub(made, ring_name)
    n = 0
    while True:
        try:
            pub.publish(b"%03d" % n + b"-" * 29, timeout=0)
        except Full:
            break
        n += 1
    done = threading.Event()

    def publish_one() -> None:
        pub.publish(b"last" + b"-" * 28, timeout=30)
        done.set()

    t = threading.Thread(target=publish_one)
    t.start()
    assert not done.wait(0.3)  # still waiting for the subscriber
    assert slow.recv(timeout=5) == b"000" + b"-" * 29
    t.join(30)
    assert done.is_set()
    got = [slow.recv(timeout=5) for _ in range(n)]
    assert got[-1] == b"last" + b"-" * 28 and got[0] == b"001" + b"-" * 29


def test_shutdown_drains_then_closed(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name)
    sub = _sub(made, ring_name)
    pub.publish_many([b"1", b"2"])
    pub.shutdown()
    with pytest.raises(Closed):
        pub.publish(b"3")
    assert list(sub) == [b"1", b"2"]
    with pytest.raises(Closed):
        sub.recv(timeout=5)
    late = _sub(made, ring_name)
    with pytest.raises(Closed):
        late.recv()


def test_shutdown_wakes_a_blocked_subscriber(ring_name: str, made: list[object]) -> None:
    pub = _pub(made, ring_name)
    sub = _sub(made, ring_name)
    out: list[Exception] = []

    def waiter() -> None:
        try:
            sub.recv(timeout=30)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            out.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    pub.shutdown()
    t.join(10)
    assert not t.is_alive() and isinstance(out[0], Closed)


@pytest.mark.parametrize("side", ["subscriber", "publisher"])
def test_close_from_another_thread_wakes_the_blocked_call(
    ring_name: str, made: list[object], side: str
) -> None:
    pub = _pub(made, ring_name, 64, policy="block")
    sub = _sub(made, ring_name)
    if side == "publisher":
        with pytest.raises(Full):
            for _ in range(1000):
                pub.publish(b"x" * 56, timeout=0)
        call, handle = (lambda: pub.publish(b"y" * 56, timeout=30)), pub
    else:
        call, handle = (lambda: sub.recv(timeout=30)), sub
    out: list[Exception] = []

    def waiter() -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            out.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    handle.close()
    t.join(10)
    assert not t.is_alive()
    assert isinstance(out[0], ValueError) and "closed" in str(out[0])
    with pytest.raises(ValueError):
        call()


def test_slots_exhausted_is_a_clear_error_and_a_closed_slot_is_reused(
    ring_name: str, made: list[object]
) -> None:
    _pub(made, ring_name, subscribers=2)
    a = _sub(made, ring_name)
    _sub(made, ring_name)
    with pytest.raises(OSError) as info:
        Broadcast.subscribe(ring_name)
    assert "2 subscriber slots" in str(info.value) and "subscribers=" in str(info.value)
    a.close()
    _sub(made, ring_name)


def test_several_publishers_keep_their_own_order(ring_name: str, made: list[object]) -> None:
    _pub(made, ring_name, 1 << 15, policy="block")
    sub = _sub(made, ring_name)
    pubs = [Broadcast.open(ring_name) for _ in range(3)]
    made.extend(pubs)

    def run(k: int) -> None:
        for i in range(300):
            pubs[k].publish(b"%d:%d" % (k, i), timeout=30)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    last = {0: -1, 1: -1, 2: -1}
    for _ in range(900):
        k, i = map(int, sub.recv(timeout=30).split(b":"))
        assert i == last[k] + 1
        last[k] = i
    for t in threads:
        t.join(30)
    assert last == {0: 299, 1: 299, 2: 299}


def test_handles_and_factories_behave(ring_name: str, made: list[object]) -> None:
    with pytest.raises(TypeError):
        Broadcast()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Subscriber()  # type: ignore[call-arg]
    pub = _pub(made, ring_name, 100, subscribers=3, policy="block")
    assert (pub.name, pub.capacity, pub.policy, pub.max_subscribers) == (
        ring_name,
        100,
        "block",
        3,
    )
    again = Broadcast.create(ring_name, 100, subscribers=3, policy="block", exist_ok=True)
    made.append(again)
    assert again.capacity == 100
    with pytest.raises(FileExistsError):
        Broadcast.create(ring_name, 100)
    sub = _sub(made, ring_name)
    assert "slot=" in repr(sub) and ring_name in repr(pub)
    assert pub.free_bytes() > 0
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(sub)
    sub.close()
    sub.close()
    assert sub.closed
    with pytest.raises(ValueError):
        sub.recv(timeout=0)
    pub.close()
    for call in (lambda: pub.publish(b"x"), lambda: pub.publish_many([])):
        with pytest.raises(ValueError, match="closed"):  # none, on both backends
            call()
    with pytest.raises(FileNotFoundError):
        Broadcast.subscribe(ring_name + "x")


def test_with_block_honours_unlink_on_exit(ring_name: str) -> None:
    with Broadcast.create(ring_name, 64, unlink_on_exit=True) as pub:
        pub.publish(b"x")
    with pytest.raises(FileNotFoundError):
        Broadcast.open(ring_name)


def test_batches_of_mixed_sizes_wrap_around_the_ring_whole_and_in_order(
    ring_name: str, made: list[object]
) -> None:
    """publish_many writes a batch as one run of records and recv_many cuts runs of
    same-length records at once: across every wrap offset, with payloads split by the
    ring's end, every message arrives whole, once, in order."""
    import random

    rnd = random.Random(7)
    pub = _pub(made, ring_name, capacity=1000, policy="block")
    subs = [_sub(made, ring_name) for _ in range(2)]
    seq = 0
    for _ in range(300):
        batch = []
        for _ in range(rnd.randint(1, 12)):
            n = rnd.choice([0, 1, 7, 8, 9, 24, 24, 24, 100, 333])
            batch.append(bytes([seq & 0xFF]) * n)
            seq += 1
        assert pub.publish_many(batch, timeout=5) == len(batch)
        for sub in subs:
            got: list[bytes] = []
            while len(got) < len(batch):
                got += sub.recv_many(rnd.randint(1, 16), timeout=5)
            assert got == batch


def test_a_batch_under_overwrite_stops_at_an_open_view_and_goes_on_after_it(
    ring_name: str, made: list[object]
) -> None:
    """A publish_many that must overwrite the record an open view pins publishes what fits
    before it and waits (Full with ``sent`` when the timeout runs out): never over the
    view. The python backend frees a whole batch's room in one step under overwrite, and
    falls back to one record's room when a view is in the way."""
    pub = _pub(made, ring_name, 1024)
    sub = _sub(made, ring_name)
    late = _sub(made, ring_name)  # reads nothing until the end: it is overrun
    pub.publish(b"p" * 500)
    batch = [bytes([i]) * 500 for i in range(40)]  # several data areas' worth
    with sub.recv_view(timeout=5) as view:
        with pytest.raises(Full) as info:
            pub.publish_many(batch, timeout=0.2)
        sent = info.value.sent
        assert 1 <= sent < len(batch)
        assert bytes(view) == b"p" * 500  # never written over
    assert pub.publish_many(batch[sent:], timeout=5) == len(batch) - sent
    got: list[bytes] = []
    while True:
        try:
            got.append(sub.recv(timeout=0))
        except Lagged:
            continue
        except Empty:
            break
    assert got and got == batch[len(batch) - len(got) :]  # the newest kept, in order
    with pytest.raises(Lagged):
        late.recv(timeout=0)
    rest = late.recv_many(100, timeout=0)
    assert rest == batch[len(batch) - len(rest) :]


@pytest.mark.parametrize("pinned", [0, 3])
def test_a_batch_blocked_by_a_view_publishes_as_much_as_single_publishes_would(
    ring_name: str, made: list[object], pinned: int
) -> None:
    """Under overwrite, with a view open on a kept message (the oldest, or one after
    older ones), publish_many gets exactly as far as the same messages published one by
    one: it frees a batch's room at once only where no view is in the way."""
    counts = []
    for run in range(2):
        name = f"{ring_name}{run}"
        pub = Broadcast.create(name, 1024)
        made.append(pub)
        sub = Broadcast.subscribe(name)
        made.append(sub)
        try:
            for i in range(60):  # fill the data area with small records
                pub.publish(b"%03d" % i + b"f" * 97)
            with pytest.raises(Lagged):
                sub.recv(timeout=0)  # overrun: on at the oldest message kept
            for _ in range(pinned):
                sub.recv(timeout=0)  # the view pins the next: these stay kept before it
            batch = [bytes([65 + i % 26]) * 100 for i in range(200)]
            with sub.recv_view(timeout=5) as view:
                seen = bytes(view)
                if run == 0:
                    sent = len(batch)
                    for k, m in enumerate(batch):
                        try:
                            pub.publish(m, timeout=0)
                        except Full:
                            sent = k
                            break
                else:
                    with pytest.raises(Full) as info:
                        pub.publish_many(batch, timeout=0.1)
                    sent = info.value.sent
                assert bytes(view) == seen  # never written over
            counts.append(sent)
        finally:
            Broadcast.unlink_name(name)
    assert counts[0] == counts[1] and (counts[0] > 0) == (pinned > 0), counts
