"""fastipc.aio, the ring doorbells and fastipc.wait (issue 12): real processes, real shared memory."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _aio_workers import (
    aio_consumer,
    channel_peer_sleeps,
    new_loop,
    numbered_producer,
    shutdown_later,
)
from conftest import child_env, join_all, new_name, run_python, shm_entries

import fastipc
from fastipc import Channel, Closed, Ring, Timeout, aio
from fastipc.aio._channel import LOOP_SEND_MAX

try:
    import uvloop

    LOOPS = ["asyncio", "uvloop"]
    # libuv makes a process-wide pipe with its first loop and keeps it for the life of
    # the process: make it now, at collection, before the session's fd-leak baseline.
    uvloop.new_event_loop().close()
except ImportError:  # pragma: no cover - uvloop is optional
    LOOPS = ["asyncio"]


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_kind: str) -> Iterator[Any]:
    """``run(coro)`` runs it to completion on a fresh loop of the parametrised kind."""
    loop = new_loop(loop_kind)
    try:
        yield loop.run_until_complete
    finally:
        loop.close()


@pytest.fixture
def aring(ring_name: str) -> Iterator[aio.Ring]:
    r = aio.Ring.create(ring_name, 1 << 16)
    try:
        yield r
    finally:
        r.close()


def _num(m: bytes) -> tuple[int, int]:
    return int.from_bytes(m[:4], "little"), int.from_bytes(m[4:8], "little")


# ---- basics and timeouts ----------------------------------------------------------


def test_recv_send_and_iteration_end_at_shutdown(run: Any, aring: aio.Ring) -> None:
    async def main() -> list[bytes]:
        await aring.send(b"a")
        await aring.send_many([b"b", b"c"])
        assert await aring.recv() == b"a"
        assert await aring.recv_many(10) == [b"b", b"c"]
        await aring.send(b"d")
        aring.shutdown()
        return [m async for m in aring]

    assert run(main()) == [b"d"]


def test_timeout_argument_and_asyncio_timeouts_both_work(run: Any, aring: aio.Ring) -> None:
    async def main() -> None:
        with pytest.raises(Timeout):
            await aring.recv(timeout=0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aring.recv(), 0.05)
        if sys.version_info >= (3, 11):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await aring.recv()
        # Full ring: send times out too.
        n = 0
        while True:
            try:
                await aring.send(b"x" * 1000, timeout=0)
            except Timeout:
                break
            n += 1
        with pytest.raises(Timeout):
            await aring.send(b"x" * 1000, timeout=0.05)
        with pytest.raises(Timeout) as info:
            await aring.send_many([b"y" * 1000] * 3, timeout=0.05)
        assert info.value.sent == 0
        assert len(await aring.recv_many(n + 10)) == n

    run(main())
    assert aring.sync._watching in (None, [0, 0])  # every watch was undone


def test_views_and_reservations_are_awaitable(run: Any, aring: aio.Ring) -> None:
    async def main() -> None:
        async with aring.reserve(5) as w:
            w[:] = b"hello"
        with pytest.raises(RuntimeError):
            async with aring.reserve(3) as w:
                raise RuntimeError("discarded")
        async with aring.recv_view() as v:
            assert bytes(v) == b"hello"
            # Another coroutine on this handle waits for the block to end.
            other = asyncio.ensure_future(aring.send(b"later"))
            await asyncio.sleep(0.01)
        await other
        assert await aring.recv() == b"later"

    run(main())


async def _enter(cm: Any) -> None:
    async with cm:
        pass


@pytest.mark.parametrize("block", ["reserve", "recv_view"])
def test_calls_waiting_for_another_tasks_block_keep_their_timeout(
    run: Any, aring: aio.Ring, block: str
) -> None:
    """They waited for the block to end, however long, whatever their timeout."""

    async def main() -> None:
        await aring.send(b"m")
        opened, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with aring.reserve(4) if block == "reserve" else aring.recv_view() as v:
                if block == "reserve":
                    v[:] = b"held"
                opened.set()
                await release.wait()

        task = asyncio.ensure_future(holder())
        await opened.wait()
        try:
            calls = [
                (aring.recv(timeout=0.05), fastipc.Empty),
                (aring.recv_many(5, timeout=0.05), fastipc.Empty),
                (aring.recv_into(bytearray(8), timeout=0.05), fastipc.Empty),
                (_enter(aring.recv_view(timeout=0.05)), fastipc.Empty),
                (aring.send(b"x", timeout=0.05), fastipc.Full),
                (aring.send_many([b"y"], timeout=0.05), fastipc.Full),
                (_enter(aring.reserve(1, timeout=0.05)), fastipc.Full),
            ]
            for call, exc in calls:
                with pytest.raises(exc):
                    await asyncio.wait_for(call, 2)
        finally:
            release.set()
            await task

    run(main())


def test_the_task_holding_a_block_gets_what_the_sync_handle_gives(
    run: Any, aring: aio.Ring
) -> None:
    """Inside its own block a task's calls used to wait for that block: for ever.

    As in a sync block: the other side works, the block's side and another
    block raise RuntimeError. (Calls made from this very task: a task it
    awaits, as asyncio.wait_for's before Python 3.12, is another task, which
    waits for the block.)
    """

    async def refused(call: Any) -> None:
        with pytest.raises(RuntimeError, match="block"):
            await call

    async def main() -> None:
        # A hang fails the test: the watchdog cancels this task.
        watchdog = asyncio.get_running_loop().call_later(10, asyncio.current_task().cancel)
        await aring.send(b"a")
        async with aring.reserve(1) as w:
            w[:] = b"b"
            assert await aring.recv(timeout=1) == b"a"
            await refused(aring.send(b"x", timeout=1))
            await refused(aring.send_many([b"x"], timeout=1))
            await refused(_enter(aring.reserve(1, timeout=1)))
            await refused(_enter(aring.recv_view(timeout=1)))
        async with aring.recv_view() as v:
            assert bytes(v) == b"b"
            await aring.send(b"c", timeout=1)
            await refused(aring.recv(timeout=1))
            await refused(aring.recv_many(2, timeout=1))
            await refused(aring.recv_into(bytearray(8), timeout=1))
            await refused(_enter(aring.recv_view(timeout=1)))
            await refused(_enter(aring.reserve(1, timeout=1)))
        assert await aring.recv(timeout=1) == b"c"
        watchdog.cancel()

    run(main())


@pytest.mark.parametrize("closer", ["task", "thread"])
def test_close_wakes_calls_waiting_for_another_tasks_block(
    run: Any, ring_name: str, closer: str
) -> None:
    ring = aio.Ring.create(ring_name, 4096)

    async def main() -> None:
        await ring.send(b"a")
        opened, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with ring.recv_view():
                opened.set()
                await release.wait()

        task = asyncio.ensure_future(holder())
        await opened.wait()
        waiters = [asyncio.ensure_future(ring.recv()), asyncio.ensure_future(ring.send(b"b"))]
        await asyncio.sleep(0.05)
        if closer == "task":
            ring.close()
        else:
            threading.Thread(target=ring.close).start()
        try:
            for waiter in waiters:
                with pytest.raises(ValueError, match="closed"):
                    await asyncio.wait_for(waiter, 5)
        finally:
            release.set()
            await asyncio.gather(task, return_exceptions=True)

    try:
        run(main())
    finally:
        ring.close()


def test_a_waiting_sender_is_woken_when_another_process_frees_room(
    run: Any, ring_name: str, spawn: Any
) -> None:
    ring = aio.Ring.create(ring_name, 4096)
    try:

        async def main() -> None:
            n = 0
            while True:
                try:
                    await ring.send(b"s" * 500, timeout=0)
                    n += 1
                except Timeout:
                    break
            p = spawn.Process(target=_drain_some, args=(ring_name, n))
            p.start()
            await ring.send(b"s" * 500, timeout=30)  # woken by the consumer's send bell
            p.join(30)
            assert p.exitcode == 0

        run(main())
    finally:
        ring.close()


def _drain_some(name: str, n: int) -> None:
    time.sleep(0.2)
    r = Ring.open(name)
    try:
        for _ in range(n):
            r.recv(timeout=10)
    finally:
        r.close()


# ---- cancellation never loses a message -----------------------------------------------


def test_cancelled_awaits_never_lose_a_message(
    run: Any, aring: aio.Ring, ring_name: str, spawn: Any
) -> None:
    count = 20_000
    # Pauses before half of the messages, so the consumer often waits and cancels mid-wait.
    p = spawn.Process(target=numbered_producer, args=(ring_name, 0, count, 7, 0.5, 0.0004))
    rnd = random.Random(12)
    got: list[int] = []
    cancelled = 0

    async def main() -> None:
        nonlocal cancelled
        while len(got) < count:
            how = rnd.random()
            try:
                if how < 0.4:
                    m = await asyncio.wait_for(aring.recv(), rnd.random() * 0.0005)
                    got.append(_num(m)[1])
                elif how < 0.8:
                    task = asyncio.ensure_future(aring.recv())
                    await asyncio.sleep(rnd.random() * 0.0003)
                    if not task.done():
                        task.cancel()
                    try:
                        got.append(_num(await task)[1])
                    except asyncio.CancelledError:
                        cancelled += 1
                elif how < 0.9:
                    ms = await asyncio.wait_for(aring.recv_many(50), rnd.random() * 0.001)
                    got.extend(_num(m)[1] for m in ms)
                else:
                    async with aring.recv_view(timeout=rnd.random() * 0.001) as v:
                        got.append(_num(bytes(v))[1])
            except (asyncio.TimeoutError, Timeout):
                cancelled += 1

    p.start()
    try:
        run(asyncio.wait_for(main(), 120))
    finally:
        join_all([p], 30)
    assert got == list(range(count)), "a message was lost, duplicated or reordered"
    assert cancelled > 50, "the test cancelled too few awaits to mean anything"
    assert len(aring.sync) == 0


# ---- many waiters: coroutines, processes --------------------------------------------------


def test_several_coroutines_await_one_handle(
    run: Any, aring: aio.Ring, ring_name: str, spawn: Any
) -> None:
    count = 5000
    p = spawn.Process(target=numbered_producer, args=(ring_name, 0, count, 3))

    async def consumer() -> list[int]:
        return [_num(m)[1] async for m in aring]

    async def main() -> list[list[int]]:
        tasks = [asyncio.ensure_future(consumer()) for _ in range(4)]
        await asyncio.sleep(0.05)
        p.start()
        await asyncio.get_running_loop().run_in_executor(None, p.join, 60)
        aring.shutdown()
        return await asyncio.wait_for(asyncio.gather(*tasks), 30)

    parts = run(main())
    join_all([p], 5)
    for part in parts:
        assert part == sorted(part)
    assert sorted(x for part in parts for x in part) == list(range(count))


def test_several_processes_await_one_ring_and_shutdown_wakes_all(
    loop_kind: str, run: Any, aring: aio.Ring, ring_name: str, spawn: Any
) -> None:
    count = 6000
    results = spawn.Queue()
    consumers = [
        spawn.Process(target=aio_consumer, args=(ring_name, loop_kind, results)) for _ in range(3)
    ]
    producers = [
        spawn.Process(target=numbered_producer, args=(ring_name, i, count, i)) for i in range(2)
    ]

    async def local() -> list[bytes]:
        return [m async for m in aring]

    async def main() -> list[bytes]:
        mine = asyncio.ensure_future(local())
        for c in consumers:
            c.start()
        for pr in producers:
            pr.start()
        loop = asyncio.get_running_loop()
        for pr in producers:
            await loop.run_in_executor(None, pr.join, 60)
        # shutdown() from yet another process wakes the awaiting consumers everywhere.
        s = spawn.Process(target=shutdown_later, args=(ring_name, 0.2))
        s.start()
        got = await asyncio.wait_for(mine, 30)
        await loop.run_in_executor(None, s.join, 30)
        return got

    try:
        mine = run(main())
        got = [results.get(timeout=30)[1] for _ in consumers]
    finally:
        join_all(consumers + producers, 30)
        results.close()
        results.join_thread()
    every = [_num(m) for part in [mine, *got] for m in part]
    assert sorted(every) == sorted((i, s) for i in range(2) for s in range(count))
    for part in [mine, *got]:
        for producer in range(2):
            seqs = [s for i, s in map(_num, part) if i == producer]
            assert seqs == sorted(seqs), "out of order within one producer"


def test_close_from_another_thread_wakes_the_awaiter(run: Any, ring_name: str) -> None:
    ring = aio.Ring.create(ring_name, 4096)

    async def main() -> None:
        task = asyncio.ensure_future(ring.recv())
        await asyncio.sleep(0.05)
        threading.Thread(target=ring.close).start()
        with pytest.raises(ValueError, match="closed"):
            await asyncio.wait_for(task, 10)

    try:
        run(main())
    finally:
        ring.close()


@pytest.mark.parametrize("closer", ["thread", "handler"])
@pytest.mark.parametrize("side", ["recv", "send_many", "recv_view"])
def test_close_while_the_first_wait_opens_its_bell(
    run: Any, ring_name: str, monkeypatch: pytest.MonkeyPatch, side: str, closer: str
) -> None:
    """close() from another thread, or from a signal handler on the loop's
    thread, while the first wait opens its doorbell fd.

    close() saw no loop yet (no bell, no block), so it released the handle's
    state on its own thread; the wait then stored and registered the bell
    it had opened, and that fd stayed open (and polled) until the handle
    was collected. Made certain here: the close (in another thread, joined,
    or called right there as a handler would) runs inside the bell's opening.
    """
    ring = aio.Ring.create(ring_name, 4096)
    if side == "send_many":
        with pytest.raises(Timeout):  # fill it: the next send waits for room
            while True:
                ring.sync.send(b"x" * 1000, timeout=0)
    opened: list[int] = []
    open_bell = ring.sync._open_bell

    def open_then_close(bell_side: int) -> int:
        fd = open_bell(bell_side)
        opened.append(fd)
        if closer == "handler":
            ring.close()
        else:
            t = threading.Thread(target=ring.close)
            t.start()
            t.join()
        return fd

    monkeypatch.setattr(ring.sync, "_open_bell", open_then_close)

    async def main() -> None:
        with pytest.raises(ValueError, match="closed"):
            if side == "recv":
                await asyncio.wait_for(ring.recv(timeout=5), 10)
            elif side == "send_many":
                await asyncio.wait_for(ring.send_many([b"y" * 1000], timeout=5), 10)
            else:
                async with ring.recv_view(timeout=5):
                    pass
        for _ in range(3):
            await asyncio.sleep(0)  # the release handed to the loop runs
        assert opened
        with pytest.raises(OSError):  # the bell fd is closed, not left to the collector
            os.fstat(opened[0])

    try:
        run(main())
    finally:
        ring.close()


def test_an_idle_awaiting_consumer_uses_almost_no_cpu(ring_name: str, loop_kind: str) -> None:
    Ring.create(ring_name, 4096).close()
    out = run_python(
        f"""
        import time
        from fastipc import Timeout, aio
        from _aio_workers import run
        async def main():
            r = aio.Ring.open({ring_name!r})
            t0, c0 = time.monotonic(), time.process_time()
            try:
                await r.recv(timeout=1.0)
            except Timeout:
                pass
            print(time.process_time() - c0, time.monotonic() - t0)
            r.close()
        run({loop_kind!r}, main())
        """
    ).stdout.split()
    cpu, wall = float(out[0]), float(out[1])
    assert wall >= 0.9
    assert cpu < 0.1 * wall, f"idle awaiting consumer used {cpu:.3f} s CPU in {wall:.2f} s"


# ---- the doorbell as an fd, fastipc.wait --------------------------------------------------


def test_selectors_wait_on_ring_fileno(ring_name: str, spawn: Any) -> None:
    ring = Ring.create(ring_name, 4096)
    sel = selectors.DefaultSelector()
    try:
        sel.register(ring.fileno(), selectors.EVENT_READ)
        with ring.watch() as ready:
            assert not ready
            assert sel.select(0) == []
            p = spawn.Process(target=numbered_producer, args=(ring_name, 0, 1, 0))
            p.start()
            assert sel.select(30), "the producer's publish did not ring the bell"
        join_all([p], 30)
        assert _num(ring.recv(timeout=0)) == (0, 0)
        assert not ring.readable()
    finally:
        sel.close()
        ring.close()


def test_wait_returns_the_ready_rings_and_channels(ring_name: str) -> None:
    r1 = Ring.create(ring_name, 4096)
    r2 = Ring.create(ring_name + "b", 4096)
    a, b = Channel.pair()
    try:
        assert fastipc.wait([r1, r2, a], timeout=0) == []
        assert fastipc.wait([r1, r2, a], timeout=0.05) == []
        r2.send(b"x")
        assert fastipc.wait([r1, r2, a], timeout=5) == [r2]
        b.send(b"y")
        assert fastipc.wait([r1, r2, a], timeout=5) == [r2, a]
        r2.recv()
        assert a.recv() == b"y"
        # A wait that blocks is woken by a send from another thread.
        threading.Timer(0.1, r1.send, (b"z",)).start()
        assert fastipc.wait([r1, r2, a]) == [r1]
        b.close()
        assert fastipc.wait([r1, a], timeout=5) == [r1, a]  # peer closed: readable
        r2.shutdown()
        assert fastipc.wait([r2], timeout=5) == [r2]  # shut down: a receive will not wait
    finally:
        for h in (r1, r2, a, b):
            h.close()
        Ring.unlink_name(ring_name + "b")


def test_doorbells_are_removed_with_the_ring_and_not_listed_as_rings(ring_name: str) -> None:
    r = Ring.create(ring_name, 4096, mode=0o640)
    try:
        bells = [e for e in shm_entries(ring_name) if "bell." in e]
        assert len(bells) == 2
        for b in bells:
            assert os.stat(b).st_mode & 0o777 == 0o640
        out = run_python("from fastipc.cli import main; main(['ls'])", check=False).stdout
        assert f"bell.fastipc.{ring_name}" not in out
        r.unlink()
        assert shm_entries(ring_name) == []
    finally:
        r.close()


def test_importing_fastipc_loads_neither_asyncio_nor_aio() -> None:
    out = run_python(
        "import sys, fastipc; print('asyncio' in sys.modules, 'fastipc.aio' in sys.modules)"
    ).stdout.split()
    assert out == ["False", "False"]


# ---- channels and servers -------------------------------------------------------------------


def test_channel_awaits_and_uses_buffered_messages_first(run: Any) -> None:
    a, b = Channel.pair()
    ca, cb = aio.Channel(a), aio.Channel(b)

    async def main() -> None:
        # Two frames arrive in one read: the second must not wait for the fd.
        b.send_many([b"1", b"2"])
        assert await ca.recv(timeout=5) == b"1"
        assert await ca.recv(timeout=0) == b"2"
        with pytest.raises(Timeout):
            await ca.recv(timeout=0.05)
        task = asyncio.ensure_future(ca.recv())
        await asyncio.sleep(0.02)
        await cb.send(b"3")
        assert await asyncio.wait_for(task, 5) == b"3"
        # Cancelled receives lose nothing.
        for i in range(200):
            t = asyncio.ensure_future(ca.recv())
            await asyncio.sleep(0)
            t.cancel()
            await cb.send(b"%d" % i)
            try:
                got = await t
            except asyncio.CancelledError:
                got = await ca.recv(timeout=5)
            assert got == b"%d" % i

    try:
        run(main())
    finally:
        ca.close()
        cb.close()


def beyond_kernel_buffers() -> int:
    """Bytes no loopback socket here absorbs with nobody reading (within max_message).

    Loopback TCP buffers grow to tcp_rmem's and tcp_wmem's maxima (32 MiB + 4 MiB
    on some machines, found when a CI run's 12 MiB "stuck" send completed).
    """
    total = 12 << 20
    for name in ("tcp_rmem", "tcp_wmem"):
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            total += int(f.read().split()[2])
    return min(total, fastipc.channel.DEFAULT_MAX_MESSAGE)


@pytest.mark.parametrize("kind", ["socketpair", "tcp"])
def test_channel_large_send_leaves_the_loop_running(run: Any, kind: str) -> None:
    """A message far over the socket buffer: the receiver on the same loop must get to run.

    With the send made on the loop thread, the loop would be held until the
    peer read, which here only this loop can do: the send times out instead.
    """
    big = bytes(range(256)) * (12 * 4096)  # 12 MiB: beyond the socket buffer and hand-off area

    async def main() -> None:
        if kind == "socketpair":
            a, b = Channel.pair()
            ca, cb = aio.Channel(a), aio.Channel(b)
            lst = None
        else:
            lst = await aio.listen("tcp://127.0.0.1:0")
            ca = await aio.Channel.connect(lst.url)
            cb = await lst.accept()
        try:
            got, _ = await asyncio.gather(cb.recv(timeout=30), ca.send(big, timeout=30))
            assert got == big
            # Sends stay in order behind a large one.
            first = asyncio.ensure_future(ca.send(big, timeout=30))
            second = asyncio.ensure_future(ca.send(b"after", timeout=30))
            assert await cb.recv(timeout=30) == big
            assert await cb.recv(timeout=30) == b"after"
            await asyncio.gather(first, second)
            # Cancelled while going out (nobody reads): abandoned midway, the
            # channel closes, as an interrupted sync send does; the peer gets
            # Closed, never part of a message.
            task = asyncio.ensure_future(ca.send(bytes(beyond_kernel_buffers()), timeout=30))
            await asyncio.sleep(0.05)
            assert not task.done(), "the kernel took the whole message: make it larger"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ca.closed
            with pytest.raises(Closed):
                await cb.recv(timeout=30)
        finally:
            ca.close()
            cb.close()
            if lst is not None:
                lst.close()

    run(main())


def _sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fastipc-aio-send"]


def test_channel_tcp_sends_share_one_thread_that_ends_when_idle(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tcp send over LOOP_SEND_MAX goes through a thread; one per channel,
    kept while sends come.

    A thread per send cost its start on the loop's thread each message (an
    aio tcp round trip of 100 B: ~390 µs against ~250 with one kept, quiet VM).
    """
    from fastipc.aio import _sender

    monkeypatch.setattr(_sender, "IDLE", 0.3)
    before = set(_sender_threads())
    pad = b"x" * LOOP_SEND_MAX

    async def main() -> None:
        lst = await aio.listen("tcp://127.0.0.1:0")
        ca = await aio.Channel.connect(lst.url)
        cb = await lst.accept()
        try:
            seen = set()
            for i in range(50):
                await ca.send(b"%d" % i + pad)
                assert await cb.recv(timeout=10) == b"%d" % i + pad
                seen |= set(_sender_threads()) - before
            assert len(seen) == 1, seen  # the same thread for every send
            (thread,) = seen
            thread.join(10)  # idle: it ends on its own
            assert not thread.is_alive()
            # The next send starts another, and sends stay in order across it.
            await asyncio.gather(*(ca.send(b"%d" % i + pad) for i in range(50, 60)))
            assert [await cb.recv(timeout=10) for _ in range(10)] == [
                b"%d" % i + pad for i in range(50, 60)
            ]
            assert len(set(_sender_threads()) - before) == 1
        finally:
            ca.close()
            cb.close()
            lst.close()

    run(main())


def test_channel_sends_meet_their_thread_ending_idle(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends that come just as the sender thread gives up waiting are never stranded.

    The thread ends only if no send came while it decided to (under the
    sender's lock); with a 1 ms idle limit and sends spaced around it, a send
    queued to a thread that then ended would hang here.
    """
    from fastipc.aio import _sender

    monkeypatch.setattr(_sender, "IDLE", 0.001)
    rng = random.Random(7)

    async def main() -> None:
        lst = await aio.listen("tcp://127.0.0.1:0")
        ca = await aio.Channel.connect(lst.url)
        cb = await lst.accept()
        try:
            for i in range(300):
                await asyncio.wait_for(ca.send(b"%d" % i), 10)
                assert await cb.recv(timeout=10) == b"%d" % i
                await asyncio.sleep(rng.uniform(0, 0.002))
        finally:
            ca.close()
            cb.close()
            lst.close()

    run(main())


class _RaiseAt:
    """A profile hook raising KeyboardInterrupt at the ``n``-th signal-check instant
    (a call, or a builtin's return) inside the given source files, outside the
    functions named in ``skip``."""

    def __init__(self, n: int, files: tuple[str, ...], skip: frozenset[str]) -> None:
        self.n, self.files, self.skip, self.seen = n, files, skip, 0

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if (
            event in ("call", "c_return")
            and code.co_filename.endswith(self.files)
            and code.co_name not in self.skip
        ):
            self.seen += 1
            if self.seen == self.n:
                raise KeyboardInterrupt


def test_channel_tcp_send_interrupted_at_any_instant_keeps_the_stream_whole(
    loop_kind: str,
) -> None:
    """A signal handler raising at any instant of an aio tcp send (every one inside
    aio/_channel.py, aio/_sender.py and the sync channel's code it calls on the
    loop thread, swept one per run; the hand-over to the sender thread
    included): the peer never gets part of a message, and the
    channel is either closed (the peer gets the message whole, or nothing, then
    Closed) or still whole (the next send arrives, after the message or alone).

    The instants that pass the send's turn on are swept too: a handler raising
    there used to leave the turn pending, and every later send waited for it.
    Not swept, and known to fail: the loop callbacks that hand the sender
    thread's result back (_settle, _seen): a handler raising there leaves the
    send itself waiting (asyncio.run turns Ctrl-C into a cancellation instead).
    """
    msg = bytes(range(256)) * 64
    # The sync calls a tcp send makes on the loop thread too (_send_begin).
    files = (
        "aio/_channel.py",
        "aio/_sender.py",
        "fastipc/_contract.py",
        "backends/native_channel.py",
        "backends/python_channel.py",
    )
    skip = frozenset({"_settle", "_seen", "__del__"})
    loop = new_loop(loop_kind)
    try:
        lst = loop.run_until_complete(aio.listen("tcp://127.0.0.1:0"))
        n = 0
        while True:
            n += 1
            ca = loop.run_until_complete(aio.Channel.connect(lst.url))
            cb = loop.run_until_complete(lst.accept())
            # No collection inside the sweep: an earlier run's channel finalised
            # there (ChannelBase.__del__ is in a swept file) would take the
            # instant, and Python ignores an exception raised in __del__.
            gc.collect()
            gc.disable()
            sys.setprofile(_RaiseAt(n, files, skip))
            try:
                loop.run_until_complete(ca.send(msg))
                raised = False
            except KeyboardInterrupt:
                raised = True
            finally:
                sys.setprofile(None)
                gc.enable()
            try:
                if not raised:
                    assert loop.run_until_complete(cb.recv(timeout=10)) == msg
                    break  # past the last instant
                loop.run_until_complete(asyncio.sleep(0.05))  # a send still going ends
                got = []
                if ca.closed:
                    with pytest.raises(Closed):
                        while True:
                            got.append(loop.run_until_complete(cb.recv(timeout=10)))
                    assert got in ([], [msg]), f"instant {n}: {[len(m) for m in got]}"
                else:
                    loop.run_until_complete(ca.send(b"next", timeout=10))
                    while not got or got[-1] != b"next":
                        got.append(loop.run_until_complete(cb.recv(timeout=10)))
                    assert got in ([b"next"], [msg, b"next"]), f"instant {n}"
            finally:
                ca.close()
                cb.close()
        assert n > 5, "the sweep met too few instants to mean anything"
        lst.close()
    finally:
        loop.close()


def test_channel_send_whose_thread_cannot_start_closes_the_channel(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread could start for a tcp send over LOOP_SEND_MAX (RuntimeError, as at
    the process's thread limit): the send raises, and the channel closes.

    The send was queued for the thread before it failed to start: left open,
    the channel's next send started a thread that sent the failed message
    first, which its caller had been told did not go.
    """
    from fastipc.aio import _sender

    async def main() -> None:
        lst = await aio.listen("tcp://127.0.0.1:0")
        ca = await aio.Channel.connect(lst.url)
        cb = await lst.accept()
        try:
            with monkeypatch.context() as m:

                def no_thread(self: threading.Thread) -> None:
                    raise RuntimeError("can't start new thread")

                m.setattr(_sender.threading.Thread, "start", no_thread)
                with pytest.raises(RuntimeError, match="start new thread"):
                    await ca.send(b"failed" * LOOP_SEND_MAX)
            assert ca.closed
            with pytest.raises(ValueError, match="closed"):
                await ca.send(b"next")
            with pytest.raises(Closed):  # the peer sees the end, not the failed message
                await cb.recv(timeout=10)
        finally:
            ca.close()
            cb.close()
            lst.close()

    run(main())


def _pair(kind: str, buffers: int = 32768) -> tuple[aio.Channel, aio.Channel]:
    """Two connected channels; over tcp with small buffers (loopback's grow to megabytes)."""
    if kind == "socketpair":
        a, b = Channel.pair()
        return aio.Channel(a), aio.Channel(b)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        c.connect(srv.getsockname())
        s, _ = srv.accept()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
    return aio.Channel(Channel.from_socket(c)), aio.Channel(Channel.from_socket(s))


@pytest.mark.parametrize("kind", ["socketpair", "tcp"])
@pytest.mark.parametrize("method", ["send", "send_many"])
@pytest.mark.parametrize("size", [20_000, 60_000])
def test_channel_concurrent_sends_wait_on_the_loop_not_in_it(
    run: Any, kind: str, method: str, size: int
) -> None:
    """Tasks send to a peer on the same loop that reads only later: none may hold the loop.

    One writable wake-up used to send for every waiting task on the loop thread,
    and a socket that polls writable need not take a message whole: the sync
    send then held the loop until its timeout (for ever without one), so the
    reader never ran and the channel closed with a message half sent.
    """
    tasks, per = 6, 4

    async def main() -> None:
        ca, cb = _pair(kind)
        try:

            async def sender(i: int) -> None:
                for j in range(per):
                    msg = bytes([i, j]) * (size // 2)
                    if method == "send":
                        await ca.send(msg, timeout=10)
                    else:
                        assert await ca.send_many([msg], timeout=10) == 1

            async def receiver() -> list[bytes]:
                await asyncio.sleep(0.2)  # the socket fills meanwhile
                return [await cb.recv(timeout=10) for _ in range(tasks * per)]

            got, *_ = await asyncio.gather(receiver(), *(sender(i) for i in range(tasks)))
            assert all(len(m) == size for m in got)
            for i in range(tasks):  # whole, and in order per task
                assert [m[1] for m in got if m[0] == i] == list(range(per))
            assert not ca.closed
        finally:
            ca.close()
            cb.close()

    run(main())


def test_channel_receive_keeps_its_reader_between_back_to_back_waits(run: Any) -> None:
    """A receive that returns and awaits again at once (a ping-pong, `async for`) keeps
    the socket registered with the loop, saving the selector's epoll_ctl pair and
    ~10 µs of Python a wait; one loop turn with nobody waiting unregisters it."""

    async def main() -> None:
        a, b = Channel.pair()
        ca = aio.Channel(a)
        try:
            loop = asyncio.get_running_loop()
            adds = []
            real_add = loop.add_reader

            def counting_add(fd: int, cb: Any, *args: Any) -> None:
                adds.append(fd)
                real_add(fd, cb, *args)

            loop.add_reader = counting_add  # type: ignore[method-assign]
            for i in range(20):
                loop.call_later(0.002, b.send, b"%d" % i)
                assert await ca.recv(timeout=5) == b"%d" % i
            assert len(adds) == 1, adds  # registered once for the twenty waits
            assert ca._rd.registered
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert not ca._rd.registered  # nobody waits: unregistered
        finally:
            ca.close()
            b.close()

    run(main())


def test_channel_closed_by_a_hostile_frame_stops_being_polled_at_once(run: Any) -> None:
    """A peer's bad header makes the sync receive close the channel (and its fd) inside
    an aio recv whose reader registration lingers a loop turn (see Waiters.discard):
    the registration goes at once, so a new fd given the same number in that turn is
    armed by its own add_reader (a stale selector key made that one a no-op)."""

    async def main() -> None:
        s1, s2 = socket.socketpair()
        ca = aio.Channel(Channel.from_socket(s1))
        try:
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, s2.send, struct_frame(b"ok"))
            assert await ca.recv(timeout=5) == b"ok"  # woken: the reader lingers
            old = ca.sync.fileno()
            loop.call_later(0.01, s2.send, b"\xff\xff\xff\x7f\0\0\0\0")  # 2 GiB: refused
            with pytest.raises(Exception) as info:
                await ca.recv(timeout=5)
            assert not isinstance(info.value, Timeout)
            assert ca.sync.closed
            assert not ca._rd.registered  # at once, in this same turn
            r, w = socket.socketpair()
            try:
                got: list[bytes] = []
                fired = asyncio.Event()

                def on_read() -> None:
                    got.append(r.recv(10))
                    fired.set()

                # Often the number comes back (old == r or w): the case it guards.
                assert old >= 0
                loop.add_reader(r.fileno(), on_read)
                w.send(b"ping")
                await asyncio.wait_for(fired.wait(), 5)
                assert got == [b"ping"]
                loop.remove_reader(r.fileno())
            finally:
                r.close()
                w.close()
        finally:
            ca.close()
            s2.close()

    run(main())


def struct_frame(payload: bytes) -> bytes:
    """A channel frame as the peer writes it: 4-byte length, 4-byte flags, payload."""
    return len(payload).to_bytes(4, "little") + bytes(4) + payload


def test_native_unix_send_refused_whole_leaves_no_hand_off_message_behind(run: Any) -> None:
    """An aio send of a message the hand-off area takes (handoff_min=4096) that finds the
    socket full: C put it in the area and its descriptor was refused. The send times
    out; the next send (sync) must deliver its own message, not announce the first
    one's (it did, natively, and reported its own as sent)."""

    async def main() -> None:
        a, b = Channel.pair(handoff_min=4096)
        ca = aio.Channel(a)
        try:
            n = 0
            with pytest.raises(Timeout):
                while True:
                    a.send(b"f" * 1000, timeout=0)
                    n += 1
            with pytest.raises(Timeout):
                await ca.send(b"A" * 8192, timeout=0.2)
            for _ in range(n):
                assert b.recv(timeout=5) == b"f" * 1000
            a.send(b"B" * 8192, timeout=5)
            assert b.recv(timeout=5) == b"B" * 8192
            with pytest.raises(Timeout):
                b.recv(timeout=0.2)  # and nothing else
        finally:
            ca.close()
            b.close()

    run(main())


def test_channel_small_tcp_sends_go_from_the_loop_without_a_thread(run: Any) -> None:
    """A tcp frame of up to LOOP_SEND_MAX is written from the loop thread: no sender
    thread starts (its two wake-ups cost ~60 µs of a round trip), even when the socket
    cuts the frame and its rest goes out as the reader makes room."""
    before = set(_sender_threads())

    async def main() -> None:
        ca, cb = _pair("tcp")
        try:
            for i in range(20):
                await ca.send(b"%d" % i, timeout=10)
                assert await cb.recv(timeout=10) == b"%d" % i

            msgs = [bytes([i]) * (LOOP_SEND_MAX - 8) for i in range(12)]

            async def sender() -> None:
                for m in msgs:
                    await ca.send(m, timeout=10)

            async def receiver() -> list[bytes]:
                await asyncio.sleep(0.2)  # the socket fills, and a frame is cut
                return [await cb.recv(timeout=10) for _ in msgs]

            got, _ = await asyncio.gather(receiver(), sender())
            assert got == msgs
            assert not set(_sender_threads()) - before
        finally:
            ca.close()
            cb.close()

    run(main())


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_channel_tcp_send_cut_then_abandoned_closes_the_channel(run: Any, how: str) -> None:
    """A frame the socket cut, whose send then times out or is cancelled before the
    rest went: the channel closes and the peer gets Closed, never part of a message,
    and the sync channel's send turn (held across the awaits) is given back."""

    async def main() -> None:
        ca, cb = _pair("tcp", 4096)  # the kernel's smallest: any 64 KiB frame is cut
        try:
            n = 3
            for _ in range(n):
                await ca.send(b"w" * 1000, timeout=5)
            big = b"c" * (LOOP_SEND_MAX - 8)
            if how == "timeout":
                with pytest.raises(Timeout):
                    await ca.send(big, timeout=0.2)
            else:
                task = asyncio.ensure_future(ca.send(big))
                await asyncio.sleep(0.2)
                assert not task.done()
                # Cut, its rest waiting on this loop: the sync send turn is parked here.
                assert ca.sync._tx_turn.block == -threading.get_ident()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert ca.closed
            assert ca.sync._tx_turn.block == 0 and hasattr(ca.sync._tx_turn, "free")
            for _ in range(n):
                assert await cb.recv(timeout=5) == b"w" * 1000
            with pytest.raises(Closed):
                await cb.recv(timeout=5)
        finally:
            ca.close()
            cb.close()

    run(main())


@pytest.mark.parametrize(
    "where", ["_send_drop", "_tx_abandon_surely", "_tx_abandon", "_abandon_send", "close"]
)
def test_channel_tcp_cut_frame_dropped_under_ctrl_c_still_closes(run: Any, where: str) -> None:
    """A KeyboardInterrupt (a signal handler raising) at the start of any step that drops
    a cut frame (its send timed out): the channel still ends closed, so the peer gets
    Closed and never a message made of two frames, and the sync send turn comes back,
    so another thread's sync send gets ValueError instead of waiting for ever.

    Before, the drop gave the turn back first: the interrupted drop left the channel
    open with half a frame out, and the next send continued it (a fabricated message)."""
    from fastipc._contract import ChannelBase

    async def main() -> None:
        ca, cb = _pair("tcp", 4096)
        target = getattr(type(ca.sync), where, None) or getattr(ChannelBase, where, None)
        if target is None:
            pytest.skip(f"{type(ca.sync).__name__} has no {where}")
        code = target.__code__
        armed = [True]

        def prof(frame: Any, event: str, arg: Any) -> None:
            if armed[0] and event == "call" and frame.f_code is code:
                armed[0] = False
                raise KeyboardInterrupt  # what a SIGINT handled at that instant raises

        try:
            sys.setprofile(prof)
            try:
                await ca.send(b"c" * (LOOP_SEND_MAX - 8), timeout=0.3)
            except (KeyboardInterrupt, Timeout):
                pass
            finally:
                sys.setprofile(None)
            assert not armed[0], f"{where} was not reached"
            assert ca.sync.closed
            box: list[BaseException] = []

            def other() -> None:
                try:
                    ca.sync.send(b"Z" * 40000, timeout=10)
                except BaseException as exc:  # noqa: BLE001 - checked below
                    box.append(exc)

            th = threading.Thread(target=other)
            th.start()
            await asyncio.get_running_loop().run_in_executor(None, th.join, 20)
            assert box and isinstance(box[0], ValueError), box
            with pytest.raises(Closed):
                await cb.recv(timeout=5)
        finally:
            sys.setprofile(None)
            ca.close()
            cb.close()

    run(main())


def test_closing_the_sync_channel_under_a_parked_frame_frees_waiting_sync_sends(
    run: Any,
) -> None:
    """sync.close() while a cut frame waits on the loop for room: another thread's sync
    send waiting for the send turn gets ValueError at once, not when the loop next runs
    the aio send (nor never, if the loop stopped)."""

    async def main() -> None:
        ca, cb = _pair("tcp", 4096)
        try:
            task = asyncio.ensure_future(ca.send(b"c" * (LOOP_SEND_MAX - 8)))
            await asyncio.sleep(0.1)
            assert ca.sync._tx_turn.block == -threading.get_ident()
            box: list[BaseException] = []
            done = threading.Event()

            def other() -> None:
                try:
                    ca.sync.send(b"x", timeout=30)
                except BaseException as exc:  # noqa: BLE001 - checked below
                    box.append(exc)
                done.set()

            th = threading.Thread(target=other)
            th.start()
            time.sleep(0.1)  # noqa: ASYNC251 - the loop is held on purpose: the turn must come back without it
            assert not done.is_set()
            ca.sync.close()
            assert done.wait(5)  # still without yielding to the loop
            th.join()
            assert isinstance(box[0], ValueError), box
            with pytest.raises(ValueError):
                await task
        finally:
            ca.close()
            cb.close()

    run(main())


def test_channel_tcp_cut_frame_keeps_other_threads_sync_sends_out_of_it(run: Any) -> None:
    """While a frame the socket cut waits on the loop for room, the sync channel's
    send turn stays taken: another thread's sync sends wait for it (their frames
    are never spliced into it), and a sync send on the loop's own thread is refused
    rather than wait for itself."""

    async def main() -> None:
        ca, cb = _pair("tcp", 16384)  # frames get cut (4096 would stall on tcp windows)
        stop = threading.Event()
        sync_sent = []

        def sync_sender() -> None:
            i = 0
            while not stop.is_set():
                ca.sync.send(b"s" + bytes([i % 256]) * 30_000, timeout=20)
                sync_sent.append(i)
                i += 1
                time.sleep(0.002)  # let the loop's sends take the turn too

        th = threading.Thread(target=sync_sender)
        try:
            th.start()
            aio_msgs = [b"a" + bytes([i]) * 50_000 for i in range(30)]

            refused = 0

            async def sender() -> None:
                nonlocal refused
                for m in aio_msgs:
                    task = asyncio.ensure_future(ca.send(m, timeout=20))
                    await asyncio.sleep(0)  # it runs to its first await
                    if ca.sync._tx_turn.block == -threading.get_ident():
                        with pytest.raises(RuntimeError, match="wait for itself"):
                            ca.sync.send(b"x")  # would wait for ever on this thread
                        refused += 1
                    await task
                stop.set()

            got: list[bytes] = []

            async def receiver() -> None:
                while True:
                    m = await cb.recv(timeout=20)
                    got.append(m)
                    if stop.is_set() and len([g for g in got if g[:1] == b"a"]) == len(aio_msgs):
                        return
                    await asyncio.sleep(0.001)  # slow: frames get cut

            await asyncio.gather(receiver(), sender())
            await asyncio.get_running_loop().run_in_executor(None, th.join, 30)
            while len([g for g in got if g[:1] == b"s"]) < len(sync_sent):
                got.append(await cb.recv(timeout=20))
            assert [g for g in got if g[:1] == b"a"] == aio_msgs
            s_msgs = [g for g in got if g[:1] == b"s"]
            assert s_msgs == [b"s" + bytes([i % 256]) * 30_000 for i in range(len(sync_sent))]
            assert sync_sent and refused  # both kinds of send met cut frames
            assert not ca.closed
        finally:
            stop.set()
            th.join(30)
            ca.close()
            cb.close()

    run(main())


def test_channel_send_on_a_small_sndbuf_never_holds_the_loop(run: Any) -> None:
    """A socket with a small SO_SNDBUF polls writable with room for far less than 40 KB."""
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    s1.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    ca, cb = aio.Channel(Channel.from_socket(s1)), aio.Channel(Channel.from_socket(s2))

    async def main() -> None:
        async def receiver() -> list[int]:
            await asyncio.sleep(0.05)
            return [len(await cb.recv(timeout=10)) for _ in range(6)]

        async def sender() -> None:
            for _ in range(3):
                await ca.send(bytes(40_000), timeout=10)

        got, *_ = await asyncio.gather(receiver(), sender(), sender())
        assert got == [40_000] * 6

    try:
        run(main())
    finally:
        ca.close()
        cb.close()


def test_channel_small_send_waits_its_turn_behind_a_large_one(run: Any) -> None:
    """A small send waiting for room, woken while a large send goes out in its thread.

    It used to make its sync send on the loop thread then, waiting there for the
    thread's turn, while the reader of the large message ran on the same loop.
    """
    big = 8 << 20
    a, b = Channel.pair(handoff_min=0)
    ca, cb = aio.Channel(a), aio.Channel(b)

    async def main() -> None:
        filled = 0
        with pytest.raises(Timeout):
            while True:
                a.send(b"f" * 4000, timeout=0)
                filled += 1
        small = asyncio.ensure_future(ca.send(b"small", timeout=10))
        await asyncio.sleep(0.01)
        assert not small.done()  # waiting for room
        for _ in range(filled):
            b.recv(timeout=1)
        large = asyncio.ensure_future(ca.send(bytes(big), timeout=10))
        got = [len(await cb.recv(timeout=10)), len(await cb.recv(timeout=10))]
        await asyncio.gather(small, large)
        assert got == [5, big]  # in the order they were awaited

    try:
        run(main())
    finally:
        ca.close()
        cb.close()


def test_channel_recv_gets_closed_when_the_peer_process_is_killed(run: Any, spawn: Any) -> None:
    path = os.path.join(tempfile.mkdtemp(), "s")
    p = None

    async def main() -> None:
        nonlocal p
        lst = await aio.listen(f"unix://{path}")
        try:
            p = spawn.Process(target=channel_peer_sleeps, args=(path,))
            p.start()
            ch = await asyncio.wait_for(lst.accept(), 30)
            task = asyncio.ensure_future(ch.recv())
            await asyncio.sleep(0.1)
            p.kill()
            with pytest.raises(Closed):
                await asyncio.wait_for(task, 30)
            ch.close()
        finally:
            lst.close()

    try:
        run(main())
    finally:
        if p is not None:
            p.kill()
            p.join(10)
        os.rmdir(os.path.dirname(path))


def test_channel_close_from_another_thread_or_task_wakes_the_awaiter(run: Any) -> None:
    a, b = Channel.pair()
    ca = aio.Channel(a)

    async def main() -> None:
        task = asyncio.ensure_future(ca.recv())
        await asyncio.sleep(0.05)
        threading.Thread(target=ca.close).start()
        with pytest.raises(ValueError, match="closed"):
            await asyncio.wait_for(task, 10)

    try:
        run(main())
    finally:
        ca.close()
        b.close()


def test_channel_close_from_a_signal_handler_inside_the_first_wait_does_not_deadlock() -> None:
    """A signal handler runs on the loop's thread between any two bytecodes, so its
    close() may come while that thread holds the channel's lock (in _bind): with a
    plain Lock that close() waited for itself for ever. Here the handler's close runs
    right where it would: inside the locked open check (in a child: a hang is killed)."""
    run_python(
        """
        import asyncio, sys
        from fastipc import Channel, aio

        a, b = Channel.pair()
        ca = aio.Channel(a)
        check_open = ca._check_open
        done = []

        def check_then_handler_close():
            check_open()
            if not done and sys._getframe(1).f_code.co_name == "_bind":
                done.append(True)
                ca.close()  # what a signal handler calling close() does here

        async def main():
            ca._check_open = check_then_handler_close
            try:
                await asyncio.wait_for(ca.recv(timeout=5), 10)
            except ValueError as exc:
                assert "closed" in str(exc), exc
            else:
                raise AssertionError("recv returned on a closed channel")
            assert done

        asyncio.run(main())
        b.close()
        print("ok")
        """,
        timeout=30,
    )


@pytest.mark.parametrize("scheme", ["unix", "tcp"])
def test_listener_close_from_another_thread_wakes_accept(run: Any, scheme: str) -> None:
    """close() from another thread while accept() waits: accept raises ValueError.

    It used to close the socket and unregister it from the loop on the
    closing thread: the loop, polling it meanwhile, failed with
    FileExistsError from inside accept() (asyncio's selector state torn).
    """
    tmp = tempfile.mkdtemp()

    async def main() -> None:
        for i in range(60):
            url = f"unix://{tmp}/l{i}" if scheme == "unix" else "tcp://127.0.0.1:0"
            lst = await aio.listen(url)
            accept = asyncio.ensure_future(lst.accept())
            await asyncio.sleep(0.001 * (i % 3))
            t = threading.Thread(target=lst.close)
            t.start()
            with pytest.raises(ValueError, match="closed"):
                await asyncio.wait_for(accept, 10)
            t.join()
            assert lst.closed
            if scheme == "unix":
                assert not os.path.exists(f"{tmp}/l{i}")
            with pytest.raises(ValueError, match="closed"):
                await lst.accept()

    run(main())
    os.rmdir(tmp)


def test_server_close_from_another_thread(loop_kind: str) -> None:
    """Server.close() from a thread other than the server's loop ends serve_forever
    and closes its connections (it used to cancel tasks from the wrong thread)."""
    tmp = tempfile.mkdtemp()
    url = f"unix://{tmp}/srv"
    made: list[aio.Server] = []
    ready = threading.Event()

    async def echo(msg: bytes, peer: aio.Channel) -> None:
        await peer.send(msg)

    async def serve() -> None:
        srv = await aio.serve(url, echo)
        made.append(srv)
        ready.set()
        await srv.serve_forever()
        await srv.wait_closed()

    def run_server() -> None:
        loop = new_loop(loop_kind)
        try:
            loop.run_until_complete(serve())
        finally:
            loop.close()

    thread = threading.Thread(target=run_server)
    thread.start()
    try:
        assert ready.wait(10)
        with Channel.connect(url) as client:
            client.send(b"ping")
            assert client.recv(timeout=10) == b"ping"
            made[0].close()
            thread.join(10)
            assert not thread.is_alive()
            with pytest.raises(Closed):
                client.recv(timeout=10)
        assert not os.path.exists(f"{tmp}/srv")
    finally:
        if made:
            made[0].close()
        thread.join(10)
    os.rmdir(tmp)


@pytest.mark.parametrize("side", ["recv", "send"])
def test_channel_close_from_another_thread_just_before_the_first_wait(
    run: Any, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """close() from another thread after the awaiting call found the channel open,
    before the loop first polled its socket.

    close() saw no loop then and closed the socket on its own thread: the loop
    went on to register a closed fd (OSError EBADF) or a reused fd number.
    The interleaving is made certain here: the call's first open check runs
    that close() (in another thread, joined) right after the last check
    before the wait passed.
    """
    a, b = Channel.pair()
    ca = aio.Channel(a)
    check_open = ca._check_open
    closed_once: list[bool] = []

    def check_then_close() -> None:
        check_open()
        # The check right before the wait on the socket.
        if not closed_once and sys._getframe(1).f_code.co_name in (
            "recv",
            "_recv_with",
            "_writable",
        ):
            closed_once.append(True)
            t = threading.Thread(target=ca.close)
            t.start()
            t.join()

    async def main() -> None:
        if side == "recv":
            call = ca.recv(timeout=5)
        else:
            with pytest.raises(Timeout):
                while True:
                    a.send(b"f" * 4000, timeout=0)
            call = ca.send(b"x", timeout=5)
        monkeypatch.setattr(ca, "_check_open", check_then_close)
        with pytest.raises(ValueError, match="closed"):
            await asyncio.wait_for(call, 10)
        assert closed_once

    try:
        run(main())
    finally:
        ca.close()
        b.close()


@pytest.mark.parametrize("scheme", ["unix", "tcp"])
def test_serve_answers_aio_and_sync_clients(run: Any, scheme: str) -> None:
    tmp = tempfile.mkdtemp()
    url = f"unix://{tmp}/srv" if scheme == "unix" else "tcp://127.0.0.1:0"

    async def handler(message: bytes, peer: aio.Channel) -> None:
        await peer.send(b"re:" + message)

    async def main() -> None:
        srv = await aio.serve(url, handler)
        task = asyncio.ensure_future(srv.serve_forever())
        try:
            clients = [await aio.Channel.connect(srv.url) for _ in range(3)]
            for i, c in enumerate(clients):
                await c.send(b"%d" % i)
            for i, c in enumerate(clients):
                assert await c.recv(timeout=10) == b"re:%d" % i

            # A sync client in a thread (the server must not block the loop meanwhile).
            def sync_client() -> bytes:
                with fastipc.connect(srv.url) as cl:
                    cl.send(b"sync")
                    return cl.recv(timeout=10)

            got = await asyncio.get_running_loop().run_in_executor(None, sync_client)
            assert got == b"re:sync"
            for c in clients:
                c.close()
        finally:
            srv.close()
            await srv.wait_closed()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    try:
        run(main())
    finally:
        import shutil

        shutil.rmtree(tmp)


def test_serve_refuses_other_schemes_with_a_clear_message(run: Any) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="not accepted here"):
            await aio.serve("udp://127.0.0.1:0", lambda m, p: asyncio.sleep(0))

    run(main())


# ---- README ---------------------------------------------------------------------------------


def test_readme_asyncio_example_runs() -> None:
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
        readme = f.read()
    m = re.search(r"<!-- aio-example -->\s*```python\n(.*?)```", readme, re.DOTALL)
    assert m, "README lost its asyncio example"
    name = new_name("readme")
    code = m.group(1).replace('"jobs"', repr(name))
    try:
        out = run_python(code, timeout=60)
    finally:
        try:
            Ring.unlink_name(name)
        except FileNotFoundError:
            pass
    assert "done" in out.stdout
    assert shm_entries(name) == []


def test_the_asyncio_benchmark_runs() -> None:
    out = run_python(
        "from fastipc.bench.aio_engine import main; "
        "main(['--repeat', '1', '--duration', '0.2', '--rounds', '300'])",
        timeout=120,
    ).stdout
    for label in ("async for", "recv_many(256)", "readexactly", "ping-pong", "idle"):
        assert label in out, out
    # Whatever it made in /dev/shm is gone: the session's leak check would say so.


CTRL_C_CHILD = """
import asyncio, sys
import fastipc
from fastipc import aio

async def main():
    ring = aio.Ring.open(sys.argv[1])
    a, b = fastipc.Channel.pair()
    ch = aio.Channel(a)
    print("waiting", flush=True)
    await asyncio.gather(ring.recv(), ch.recv())

if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def test_ctrl_c_ends_asyncio_run_awaiting_a_ring_and_a_channel(
    ring_name: str, loop_kind: str
) -> None:
    """SIGINT ends asyncio.run as usual (KeyboardInterrupt); the ring keeps no watcher of it."""
    with Ring.create(ring_name, 4096) as ring:
        child = subprocess.Popen(
            [sys.executable, "-c", CTRL_C_CHILD, ring_name, loop_kind],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdout.readline() == "waiting\n"
        deadline = time.monotonic() + 10
        while ring._watch(0, 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the child registers at the recv doorbell, then sleeps
        assert ring._watch(0, 0) == 1
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
        assert child.returncode in (1, -signal.SIGINT), err
        assert "KeyboardInterrupt" in err
        assert ring._watch(0, 0) == 0  # unregistered on the way out
        ring.send(b"still fine")
        assert ring.recv(timeout=0) == b"still fine"
        ring.unlink()


STUCK_SEND_CHILD = """
import asyncio, sys
import fastipc
from fastipc import aio

async def main():
    a, b = fastipc.Channel.pair()  # b is never read, never closed
    ch = aio.Channel(a)
    print("sending", flush=True)
    await ch.send(b"x" * (12 << 20))

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def test_ctrl_c_ends_asyncio_run_while_a_large_send_is_stuck(loop_kind: str) -> None:
    """The send's thread must not keep asyncio.run from ending (found in review: it hung)."""
    child = subprocess.Popen(
        [sys.executable, "-c", STUCK_SEND_CHILD, loop_kind],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "sending\n"
        time.sleep(0.3)  # the socket buffers are full; the send waits in its thread
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
        assert child.returncode in (1, -signal.SIGINT), err
        assert "KeyboardInterrupt" in err
    finally:
        child.kill()
        child.wait(10)
