"""The native broadcast ring's C-specific behaviour: hostile segment values, futex wake-ups
across processes, takeover of a lock a SIGKILLed publisher held, reclaim of a dead
subscriber's slot, pinned views, and no torn or repeated message under overwrite."""

from __future__ import annotations

import errno
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Children, child_env

import fastipc
from fastipc import Broadcast, Empty, Full, IncompatibleSegment, Lagged, Ring

pytestmark = pytest.mark.skipif(
    fastipc.BACKEND != "native", reason="C-specific: run with FASTIPC_BACKEND=native"
)

# Offsets of csrc/broadcast.c's header (struct bc_header) and slots.
SEQ, HEAD, HEAD_SEQ, TAIL, RESERVED = 136, 144, 152, 256, 264
PINS = 404
SLOTS = 4096  # one page (x86-64 / aarch64 4 KiB)
SLOT_SIZE = 128


def header_size(subscribers: int) -> int:
    return 4096 + -(-subscribers * SLOT_SIZE // 4096) * 4096


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


class Segment:
    """The segment mapped raw, to play a hostile or broken process."""

    def __init__(self, name: str) -> None:
        fd = os.open(f"/dev/shm/fastipc.{name}", os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)

    def u64(self, off: int, value: int | None = None) -> int:
        if value is not None:
            struct.pack_into("<Q", self.map, off, value)
        return int(struct.unpack_from("<Q", self.map, off)[0])

    def u32(self, off: int, value: int | None = None) -> int:
        if value is not None:
            struct.pack_into("<I", self.map, off, value)
        return int(struct.unpack_from("<I", self.map, off)[0])

    def close(self) -> None:
        self.map.close()


# ---- hostile values --------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (TAIL, 1 << 40),  # far past every cursor
        (HEAD, 1 << 40),  # past the tail
        (RESERVED, 1 << 50),  # "everything is being overwritten", for ever
    ],
)
def test_hostile_positions_raise_incompatible_never_hang(
    ring_name: str, field: int, value: int
) -> None:
    with (
        Broadcast.create(ring_name, 1024, subscribers=2) as pub,
        Broadcast.subscribe(ring_name) as sub,
    ):
        for i in range(40):  # wraps the data area: head moves, records get overwritten
            pub.publish(bytes([i]) * 100)
        seg = Segment(ring_name)
        try:
            seg.u64(field, value)
            with pytest.raises(IncompatibleSegment, match="corrupted"):
                for _ in range(100):  # a few may still be read before the bad value is met
                    try:
                        sub.recv(timeout=0.5)
                    except Lagged:
                        pass
                    pub.publish(b"x" * 100, timeout=0.5)
        finally:
            seg.close()
    # close and unlink still work on the corrupted ring
    Broadcast.unlink_name(ring_name)


@pytest.mark.parametrize("how", ["recv", "recv_many", "recv_view", "recv_into"])
def test_reserved_past_head_plus_a_lap_is_incompatible_not_a_receive_that_never_returns(
    ring_name: str, how: str
) -> None:
    """`reserved` is never more than a data area past head (make_room stores head
    first). A value past that but within a lap of the tail made every record from
    head on look overrun for ever: a subscriber at head jumped back to head again and
    again, so recv(timeout) said Empty with messages waiting and recv() without a
    timeout spun for ever."""
    with (
        Broadcast.create(ring_name, 1024, subscribers=2) as pub,
        Broadcast.subscribe(ring_name) as sub,  # its cursor is head (0)
    ):
        for i in range(3):
            pub.publish(bytes([i]) * 100)
        seg = Segment(ring_name)
        try:
            size = seg.u64(32)
            assert seg.u64(HEAD) == 0
            seg.u64(RESERVED, seg.u64(TAIL) + size)
            started = time.monotonic()
            with pytest.raises(IncompatibleSegment, match="corrupted"):
                if how == "recv":
                    sub.recv(timeout=2)
                elif how == "recv_many":
                    sub.recv_many(10, timeout=2)
                elif how == "recv_into":
                    sub.recv_into(bytearray(200), timeout=2)
                else:
                    with sub.recv_view(timeout=2):
                        pass
            assert time.monotonic() - started < 1.5
        finally:
            seg.close()
    Broadcast.unlink_name(ring_name)


def test_scribbled_record_header_is_incompatible_and_not_a_message(ring_name: str) -> None:
    with Broadcast.create(ring_name, 1024) as pub, Broadcast.subscribe(ring_name) as sub:
        pub.publish(b"a" * 10)
        seg = Segment(ring_name)
        try:
            data = header_size(64)
            seg.u32(data, 5000)  # a length over the capacity
            with pytest.raises(IncompatibleSegment):
                sub.recv(timeout=0)
            seg.u32(data, 10)
            seg.u64(data + 8, 77)  # a sequence number out of order
            with pytest.raises(IncompatibleSegment):
                sub.recv(timeout=0)
            seg.u64(data + 8, 0)
            assert sub.recv(timeout=0) == b"a" * 10  # repaired: read as published
        finally:
            seg.close()


def test_garbage_geometry_is_refused_at_open(ring_name: str) -> None:
    Broadcast.create(ring_name, 1024).close()
    seg = Segment(ring_name)
    try:
        for off, value in ((24, 0), (24, 1 << 40), (40, 0), (40, 99999), (44, 7)):
            old = seg.u64(off & ~7)
            if off % 8:
                seg.u32(off, value)
            else:
                seg.u64(off, value)
            for call in (Broadcast.open, Broadcast.subscribe):
                with pytest.raises(IncompatibleSegment):
                    call(ring_name)
            seg.u64(off & ~7, old)
        Broadcast.subscribe(ring_name).close()
    finally:
        seg.close()


def test_hostile_pins_and_slot_owners_do_not_stall_publishers(ring_name: str) -> None:
    with Broadcast.create(ring_name, 1024, subscribers=4) as pub:
        seg = Segment(ring_name)
        try:
            seg.u32(PINS, 0xFFFFFFFF)  # "views are open": publishers scan the slots
            for i in range(4):
                slot = SLOTS + i * SLOT_SIZE
                seg.u64(slot, 0x7FFF_FFF0_3FFF_FFF0)  # an owner no process is
                seg.u64(slot + 24, 1 + 64)  # a pin on an early record
            for i in range(100):
                pub.publish(bytes([i]) * 200, timeout=10)
            with Broadcast.subscribe(ring_name) as sub:  # a dead owner's slot is reclaimed
                pub.publish(b"after")
                assert sub.recv(timeout=5) == b"after"
        finally:
            seg.close()


@pytest.mark.parametrize("how", ["publish", "reserve", "publish_many"])
def test_block_cursor_inside_a_record_is_incompatible_not_a_publisher_spinning(
    ring_name: str, how: str
) -> None:
    """A live subscriber's cursor scribbled to a position inside a record, past what
    the next message needs: the waiting step took it for room (cursor >= need) and the
    locked step, which moves head record by record, could not get there, so a block
    publisher went back and forth between them at 100% CPU until its deadline (for
    ever without one), then raised Full."""
    with (
        Broadcast.create(ring_name, 1024, subscribers=2, policy="block") as pub,
        Broadcast.subscribe(ring_name),  # reads nothing: its cursor stays at head
    ):
        with pytest.raises(Full):
            while True:
                pub.publish(b"x" * 100, timeout=0)  # 128-byte records, to a full ring
        seg = Segment(ring_name)
        try:
            assert seg.u64(HEAD) == 0 and seg.u64(SLOTS + 8) == 0
            seg.u64(SLOTS + 8, 64)  # the cursor: inside the first record
            started, cpu = time.monotonic(), time.process_time()
            with pytest.raises(IncompatibleSegment, match="corrupted"):
                if how == "publish":
                    pub.publish(b"y", timeout=2)  # a 64-byte record: needs head past 64
                elif how == "publish_many":
                    pub.publish_many([b"y"], timeout=2)
                else:
                    with pub.reserve(1, timeout=2):
                        pass
            assert time.monotonic() - started < 1.5
            assert time.process_time() - cpu < 1.5
        finally:
            seg.close()
    Broadcast.unlink_name(ring_name)


def test_ring_and_broadcast_refuse_each_other(ring_name: str) -> None:
    with Broadcast.create(ring_name, 1024), pytest.raises(IncompatibleSegment, match="Broadcast"):
        Ring.open(ring_name)
    Broadcast.unlink_name(ring_name)
    with Ring.create(ring_name, 1024):
        with pytest.raises(IncompatibleSegment, match="Ring.open"):
            Broadcast.subscribe(ring_name)
        with pytest.raises(IncompatibleSegment, match="Ring.open"):
            Broadcast.open(ring_name)


# ---- crashes ---------------------------------------------------------------


def test_killed_publisher_holding_the_lock_is_taken_over(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 4096) as pub, Broadcast.subscribe(ring_name) as sub:
        child = children.code(
            f"""
import time
from fastipc import Broadcast
pub = Broadcast.open({ring_name!r})
with pub.reserve(100) as v:
    v[:] = b"h" * 100
    print("ready", flush=True)
    time.sleep(600)
""",
        )
        with pytest.raises(Full):
            pub.publish(b"blocked", timeout=0)  # the child holds the publisher lock
        kill(child)
        pub.publish(b"after", timeout=30)  # taken over: its holder is dead
        assert sub.recv(timeout=5) == b"after"  # the dead reserve was never published
        assert len(sub) == 0


def test_publisher_killed_between_its_two_publishing_stores_breaks_no_subscriber(
    ring_name: str, children: Children
) -> None:
    """A publish stores the message count, then the tail: a publisher SIGKILLed between the
    two leaves a count one ahead of what was published. The next publisher (taking the lock
    over) numbered its records from it, and every subscriber then saw each message as a
    corrupted segment for ever."""
    with Broadcast.create(ring_name, 4096) as pub, Broadcast.subscribe(ring_name) as sub:
        pub.publish(b"before")
        assert sub.recv(timeout=5) == b"before"
        child = children.code(
            f"""
import mmap, os, struct, time
from fastipc import Broadcast
pub = Broadcast.open({ring_name!r})
with pub.reserve(100) as v:
    v[:] = b"h" * 100
    fd = os.open("/dev/shm/fastipc.{ring_name}", os.O_RDWR)
    m = mmap.mmap(fd, 4096)
    seq = struct.unpack_from("<Q", m, {SEQ})[0]
    struct.pack_into("<Q", m, {SEQ}, seq + 1)  # commit's first store; the tail's never comes
    print("ready", flush=True)
    time.sleep(600)
""",
        )
        kill(child)
        pub.publish(b"after", timeout=30)  # taken over: its holder is dead
        assert sub.recv(timeout=5) == b"after"
        pub.publish(b"next")
        assert sub.recv(timeout=5) == b"next"
        assert len(sub) == 0 and sub.missed == 0
        with Broadcast.subscribe(ring_name) as late:  # joins with the repaired count
            pub.publish(b"last")
            assert late.recv(timeout=5) == b"last" and sub.recv(timeout=5) == b"last"


@pytest.mark.parametrize("call", ["len", "free_bytes"])
def test_snapshots_against_a_fast_publisher_are_never_taken_for_corruption(
    ring_name: str, children: Children, call: str
) -> None:
    """len() read the oldest kept message's number and the published count with two loads,
    free_bytes() the tail and head; a publisher in another process publishing many messages
    between them (this thread preempted) made a sound pair look corrupted:
    IncompatibleSegment (25 and 175 times in ~10 M calls here). A bounded number of calls,
    not a duration."""
    with Broadcast.create(ring_name, 64) as pub, Broadcast.subscribe(ring_name) as sub:
        children.code(
            f"""
from fastipc import Broadcast
p = Broadcast.open({ring_name!r})
print("ready", flush=True)
batch = [b"x"] * 64
while True:
    p.publish_many(batch)
""",
        )
        if call == "len":
            most = 4096 // 16  # records the one-page data area can hold
            for _ in range(3_000_000):
                assert 0 <= len(sub) <= most
        else:
            for _ in range(3_000_000):
                assert 0 <= pub.free_bytes() <= pub.capacity
        assert pub.subscribers == 1


def test_a_subscriber_overrun_by_a_fast_publisher_gets_lagged_never_incompatible(
    ring_name: str, children: Children
) -> None:
    """An overrun subscriber jumps to the oldest record kept, checking head against tail:
    read with two loads, a publisher in another process moving both between them made the
    pair look corrupted (IncompatibleSegment after ~2 M messages here). A bounded number
    of receives, not a duration; every one is a message or Lagged."""
    with Broadcast.create(ring_name, 64) as pub, Broadcast.subscribe(ring_name) as sub:
        children.code(
            f"""
from fastipc import Broadcast
p = Broadcast.open({ring_name!r})
print("ready", flush=True)
batch = [b"x"] * 64
while True:
    p.publish_many(batch)
""",
        )
        lagged = 0
        for _ in range(3_000_000):
            try:
                assert sub.recv(timeout=10) == b"x"
            except Lagged:
                lagged += 1
        assert lagged > 0  # it was overrun: the path under test ran
        assert pub.subscribers == 1


def test_dead_subscriber_slot_is_reclaimed_and_stalls_no_block_publisher(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 4096, subscribers=2, policy="block") as pub:
        child = children.code(
            f"""
import time
from fastipc import Broadcast
sub = Broadcast.subscribe({ring_name!r})
print("ready", flush=True)
time.sleep(600)
""",
        )
        assert pub.subscribers == 1
        with Broadcast.subscribe(ring_name) as mine:
            n = 0
            with pytest.raises(Full):
                while True:
                    pub.publish(b"f" * 100, timeout=0)
                    n += 1
            assert len(mine.recv_many(n + 1)) == n  # we keep up; the child does not
            with pytest.raises(Full):
                pub.publish(b"f" * 100, timeout=0.05)  # the live, stalled child holds it
            kill(child)
            pub.publish(b"freed", timeout=30)  # its slot is reclaimed (~2 ms of no progress)
            assert mine.recv(timeout=5) == b"freed"
            assert pub.subscribers == 1


def test_live_subscriber_whose_slot_was_taken_loses_only_what_it_is_told(
    ring_name: str,
) -> None:
    """A publisher takes the slot of a subscriber whose process /proc says is gone (a
    pid namespace apart, /proc mounted hidepid: docs/architecture.md's limits) while
    it still runs: it is no longer waited for, so it may lose messages, but only
    with Lagged; never IncompatibleSegment, a torn or a repeated message."""
    with (
        Broadcast.create(ring_name, 1024, subscribers=2, policy="block") as pub,
        Broadcast.subscribe(ring_name) as sub,
    ):
        seg = Segment(ring_name)
        try:
            size = seg.u64(32)
            i = 0
            while seg.u64(TAIL) + 256 <= size:  # almost a lap, read as it goes
                pub.publish(i.to_bytes(8, "little") * 12)
                sub.recv(timeout=0)
                i += 1
            first_unread = i
            pub.publish(i.to_bytes(8, "little") * 12)
            i += 1
            seg.u64(SLOTS, 0)  # its owner word: the slot is free, as a dead one's
            got, lost = [], 0
            for _ in range(3 * size // 128):  # three laps, read as they go
                pub.publish(i.to_bytes(8, "little") * 12, timeout=0)
                i += 1
                while True:
                    try:
                        m = sub.recv(timeout=0)
                    except Lagged as exc:
                        lost += exc.missed
                        continue
                    except Empty:
                        break
                    assert m == m[:8] * 12, "a torn message"
                    got.append(int.from_bytes(m[:8], "little"))
        finally:
            seg.close()
    assert got == sorted(set(got)), "out of order or repeated"
    assert got[-1] == i - 1
    assert len(got) + lost == i - first_unread, "lost without a Lagged"


def test_blocked_publisher_gets_past_a_subscriber_killed_holding_the_publisher_lock(
    ring_name: str, children: Children, tmp_path: Path
) -> None:
    """fastipc.h: a block publisher waiting in C gets past a dead subscriber after
    ~2 ms, whatever its timeout, even when that process died holding the publisher
    lock (an open reserve): the wait goes back to the locked step, which takes the
    lock over and frees the slot. (Python re-enters C every 200 ms, which hid a
    wait that only tried the lock and so slept to its deadline.)"""
    from fastipc.backends._native import lib

    go = tmp_path / "go"
    with Broadcast.create(ring_name, 1024, subscribers=2, policy="block") as pub:
        child = children.code(
            f"""
import os, time
from fastipc import Broadcast
sub = Broadcast.subscribe({ring_name!r})  # reads nothing: holds publishers back
pub = Broadcast.open({ring_name!r})
print("ready", flush=True)
while not os.path.exists({str(go)!r}):
    time.sleep(0.005)
with pub.reserve(8) as view:  # the publisher lock, held until killed
    print("holding", flush=True)
    time.sleep(600)
""",
        )
        seg = Segment(ring_name)
        size = seg.u64(32)
        seg.close()
        # 100-byte messages take 128-byte records: leave 128 bytes, room for the
        # child's reserve(8) (a 64-byte record) but not for the waiter's 200 bytes.
        for _ in range(size // 128 - 1):
            pub.publish(b"f" * 100, timeout=0)
        result: list[int] = []
        waiter = threading.Thread(
            target=lambda: result.append(lib.fi_bc_publish(pub._h, b"y" * 200, 200, 30 * 10**9))
        )
        waiter.start()
        time.sleep(0.1)  # the waiter now sleeps in C, held back by the child's cursor
        go.touch()
        assert children.readline(child, 30) == "holding"
        kill(child)
        waiter.join(60)
        assert result == [0], f"fi_bc_publish returned {result} (-110: slept to its deadline)"


def test_all_slots_taken_reclaims_a_dead_ones_slot(ring_name: str, children: Children) -> None:
    with Broadcast.create(ring_name, 1024, subscribers=2):
        child = children.code(
            f"""
import time
from fastipc import Broadcast
sub = Broadcast.subscribe({ring_name!r})
print("ready", flush=True)
time.sleep(600)
""",
        )
        with Broadcast.subscribe(ring_name):
            with pytest.raises(OSError) as info:
                Broadcast.subscribe(ring_name)
            assert info.value.errno == errno.EUSERS
            assert "subscribers=" in str(info.value)
            kill(child)
            Broadcast.subscribe(ring_name).close()


# ---- futex wake paths ------------------------------------------------------


def test_sleeping_subscriber_in_another_process_is_woken(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 4096) as pub:
        child = children.code(
            f"""
from fastipc import Broadcast
sub = Broadcast.subscribe({ring_name!r})
print("ready", flush=True)
print(sub.recv(timeout=60).decode(), flush=True)
print(sub.recv_many(10, timeout=60), flush=True)
""",
            env=child_env(FASTIPC_SPIN_US="0"),  # straight to the futex
        )
        threading.Event().wait(0.3)  # the child is asleep by now (not required for the test)
        pub.publish(b"wake")
        assert children.readline(child, 30) == "wake"
        pub.publish_many([b"a", b"b"])
        out, _ = child.communicate(timeout=30)
        assert out.strip() in ("[b'a', b'b']", "[b'a']")
        assert child.returncode == 0


def test_block_publisher_sleeps_until_a_subscriber_reads(
    ring_name: str, children: Children
) -> None:
    with Broadcast.create(ring_name, 1024, policy="block") as pub:
        child = children.code(
            f"""
import time
from fastipc import Broadcast
sub = Broadcast.subscribe({ring_name!r})
print("ready", flush=True)
time.sleep(0.3)  # the publisher fills the ring and goes to sleep meanwhile
got = []
while len(got) < 200:
    got += sub.recv_many(1000, timeout=60)
assert got == [bytes([i]) * 100 for i in range(200)], "lost or reordered"
print(len(got), flush=True)
""",
            env=child_env(FASTIPC_SPIN_US="0"),  # both sides straight to the futex
        )
        # 200 messages of 100 B do not fit in 1 KiB: each wait ends when the child reads.
        for i in range(200):
            pub.publish(bytes([i]) * 100, timeout=60)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip() == "200"


def test_close_from_another_thread_wakes_a_blocked_publisher(ring_name: str) -> None:
    with Broadcast.create(ring_name, 1024, policy="block") as pub, Broadcast.subscribe(ring_name):
        with pytest.raises(Full):
            while True:
                pub.publish(b"x" * 100, timeout=0)
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                pub.publish(b"x" * 100)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                errors.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        threading.Event().wait(0.1)
        pub.close()
        t.join(30)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], ValueError)


# ---- views under overwrite -------------------------------------------------


def test_open_view_pins_its_message_and_publishers_wait_for_it(ring_name: str) -> None:
    with Broadcast.create(ring_name, 1024) as pub, Broadcast.subscribe(ring_name) as sub:
        pub.publish(b"p" * 500)
        with sub.recv_view() as view:
            for i in range(20):  # the data area (4 KiB) holds fewer: one needs the pinned bytes
                try:
                    pub.publish(bytes([i]) * 500, timeout=0.05)
                except Full:
                    break
            else:
                pytest.fail("a publisher overwrote a pinned view")
            assert bytes(view) == b"p" * 500
        pub.publish(b"q" * 500, timeout=5)  # the pin is gone
        got = []
        while True:
            try:
                got.append(sub.recv(timeout=0))
            except Lagged as exc:
                got.append(exc)
            except fastipc.Empty:
                break
        assert got[-1] == b"q" * 500


def test_view_read_after_its_block_and_close_never_faults(ring_name: str) -> None:
    with Broadcast.create(ring_name, 1024) as pub:
        sub = Broadcast.subscribe(ring_name)
        pub.publish(b"v" * 100)
        with sub.recv_view() as view:
            kept = view
        sub.close()
        Broadcast.unlink_name(ring_name)
        # Released views refuse access; the mapping itself stays while pinned.
        with pytest.raises(ValueError):
            bytes(kept)
        pub.publish(b"still works")


# ---- no torn or repeated message under overwrite -----------------------------


@pytest.mark.parametrize("how", ["recv", "recv_many", "recv_view", "recv_into"])
def test_overrun_subscriber_never_sees_a_torn_or_repeated_message(ring_name: str, how: str) -> None:
    total = 20000
    with (
        Broadcast.create(ring_name, 2048, subscribers=2),
        Broadcast.subscribe(ring_name) as sub,
    ):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"""
import struct
from fastipc import Broadcast
pub = Broadcast.open({ring_name!r})
for i in range({total}):
    n = 8 + (i * 37) % 300
    pub.publish(struct.pack("<Q", i) + bytes([i % 251]) * (n - 8))
pub.shutdown()
""",
            ],
            env=child_env(),
        )
        try:
            expect = 0
            lost = 0
            buf = bytearray(2048)
            while True:
                try:
                    if how == "recv":
                        msgs = [sub.recv(timeout=60)]
                    elif how == "recv_many":
                        msgs = sub.recv_many(64, timeout=60)
                    elif how == "recv_into":
                        msgs = [bytes(buf[: sub.recv_into(buf, timeout=60)])]
                    else:
                        with sub.recv_view(timeout=60) as v:
                            msgs = [bytes(v)]
                except Lagged as exc:
                    assert exc.missed > 0
                    lost += exc.missed
                    expect += exc.missed
                    continue
                except fastipc.Closed:
                    break
                for m in msgs:
                    (i,) = struct.unpack_from("<Q", m)
                    assert i == expect, f"got message {i}, expected {expect}"
                    assert len(m) == 8 + (i * 37) % 300
                    assert m[8:] == bytes([i % 251]) * (len(m) - 8), f"message {i} is torn"
                    expect += 1
            assert expect == total
            assert sub.missed == lost
        finally:
            child.wait(120)
        assert child.returncode == 0


# ---- readiness doorbells -----------------------------------------------------


def test_publisher_in_another_process_rings_only_watching_subscribers_bells(
    ring_name: str,
) -> None:
    with (
        Broadcast.create(ring_name, 4096, subscribers=4) as pub,
        Broadcast.subscribe(ring_name) as watching,
        Broadcast.subscribe(ring_name) as idle,
    ):
        idle.fileno()  # has a bell, but does not watch it
        with watching.watch() as ready:
            assert not ready
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"from fastipc import Broadcast; Broadcast.open({ring_name!r}).publish(b'ding')",
                ],
                env=child_env(),
                timeout=60,
                check=True,
            )
            assert proc.returncode == 0
            r, _, _ = select.select([watching.fileno()], [], [], 30)
            assert r == [watching.fileno()]
            assert watching.readable()
        assert watching.recv(timeout=0) == b"ding"
        r, _, _ = select.select([idle.fileno()], [], [], 0)
        assert r == []  # not watched: no byte written, no syscall paid
        assert idle.recv(timeout=0) == b"ding"
        with idle.watch() as ready:
            assert not ready
            pub.shutdown()  # rings every taken slot's bell
            r, _, _ = select.select([idle.fileno()], [], [], 30)
            assert r == [idle.fileno()]
