"""fastipc.aio.Subscriber and fastipc.wait on broadcast subscribers (issue 16 with issue 12).

Real processes and shared memory, both backends, the default loop and uvloop:
an awaiting subscriber is woken by a publisher in another process, every
awaiting subscriber in every process wakes at shutdown, cancelled awaits
lose nothing, a lag arrives as Lagged, close() wakes the awaiter.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _aio_workers import new_loop
from conftest import child_env

import fastipc
from fastipc import Broadcast, Lagged, aio

try:
    import uvloop

    LOOPS = ["asyncio", "uvloop"]
    # libuv's process-wide pipe, made now, before the session's fd-leak baseline
    # (as tests/test_aio.py does).
    uvloop.new_event_loop().close()
except ImportError:  # pragma: no cover - uvloop is optional
    LOOPS = ["asyncio"]

T = 30


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Any]:
    loop = new_loop(str(request.param))
    try:
        yield loop.run_until_complete
    finally:
        loop.close()


@pytest.fixture
def pub(ring_name: str) -> Iterator[Broadcast]:
    p = Broadcast.create(ring_name, 1 << 16, subscribers=8, policy="block")
    try:
        yield p
    finally:
        p.unlink()
        p.close()


SUBSCRIBER_CHILD = """
import asyncio, sys
from fastipc import aio

async def main():
    sub = aio.Subscriber.subscribe(sys.argv[1])
    print("ready", flush=True)
    got = [m async for m in sub]
    print(",".join(m.decode() for m in got), flush=True)
    sub.close()

asyncio.run(main())
"""


def test_publisher_and_shutdown_wake_subscribers_awaiting_in_other_processes(
    pub: Broadcast,
) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER_CHILD, pub.name],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for c in children:
            assert c.stdout is not None and c.stdout.readline() == "ready\n"
        time.sleep(0.2)  # all three are awaiting on their bells
        for i in range(5):
            pub.publish(b"%d" % i, timeout=T)
            time.sleep(0.02)  # each publish meets sleeping subscribers
        pub.shutdown()  # ends every `async for`
        for c in children:
            out, err = c.communicate(timeout=T)
            assert c.returncode == 0, err
            assert out.strip() == "0,1,2,3,4"
    finally:
        for c in children:
            c.kill()
            c.wait(T)


def test_cancelled_awaits_lose_no_message(run: Any, pub: Broadcast) -> None:
    count = 3000
    sub = aio.Subscriber.subscribe(pub.name)

    def publish() -> None:
        with Broadcast.open(pub.name) as p:
            for i in range(count):
                p.publish(i.to_bytes(4, "little"), timeout=T)
                if i % 64 == 0:
                    time.sleep(0.0005)  # let the subscriber go to sleep now and then

    async def main() -> list[int]:
        got: list[int] = []
        rnd = random.Random(7)
        producer = threading.Thread(target=publish)
        producer.start()
        try:
            while len(got) < count:
                task = asyncio.ensure_future(sub.recv(timeout=T))
                if rnd.random() < 0.5:
                    await asyncio.sleep(0)
                    task.cancel()
                try:
                    got.append(int.from_bytes(await task, "little"))
                except asyncio.CancelledError:
                    pass
        finally:
            producer.join(T)
        return got

    try:
        got = run(main())
    finally:
        sub.close()
    assert got == list(range(count))  # each once, in order: nothing lost, nothing repeated


def test_lag_and_close_and_recv_many_through_aio(run: Any, ring_name: str) -> None:
    with Broadcast.create(ring_name, 4096, policy="overwrite", unlink_on_exit=True) as p:
        sub = aio.Subscriber.subscribe(ring_name)

        async def main() -> None:
            for i in range(200):  # far more than 4 KiB keeps
                p.publish(b"%04d" % i + b"." * 60)
            with pytest.raises(Lagged) as lag:
                await sub.recv(timeout=5)
            assert lag.value.missed > 0 and sub.missed == lag.value.missed
            rest = await sub.recv_many(1000, timeout=5)
            first = int(rest[0][:4])
            assert [int(m[:4]) for m in rest] == list(range(first, 200))
            assert lag.value.missed == first  # exactly what was lost, nothing repeated

            task = asyncio.ensure_future(sub.recv())
            await asyncio.sleep(0.05)
            threading.Thread(target=sub.close).start()
            with pytest.raises(ValueError, match="closed"):
                await asyncio.wait_for(task, T)

        try:
            run(main())
        finally:
            sub.close()


def test_wait_returns_the_subscriber_with_a_message(pub: Broadcast, ring_name: str) -> None:
    sub = Broadcast.subscribe(pub.name)
    try:
        with fastipc.Ring.create(ring_name + "r", 4096, unlink_on_exit=True) as ring:
            assert fastipc.wait([sub, ring], timeout=0.05) == []
            timer = threading.Timer(0.1, pub.publish, args=(b"tick",))
            timer.start()
            assert fastipc.wait([ring, sub], timeout=T) == [sub]
            timer.join()
            assert sub.recv(timeout=0) == b"tick"
            assert sub._watching == 0  # wait() unregistered itself
    finally:
        sub.close()


def test_an_awaiting_subscriber_sleeps_registered_at_its_bell(run: Any, pub: Broadcast) -> None:
    """While it awaits, the subscriber is a watcher of its slot (publishers ring it); after, not."""
    sub = aio.Subscriber.subscribe(pub.name)

    async def main() -> None:
        task = asyncio.ensure_future(sub.recv(timeout=T))
        await asyncio.sleep(0.2)
        assert sub.sync._watching == 1 and not task.done()
        pub.publish(b"wake")
        assert await task == b"wake"
        assert sub.sync._watching == 0

    try:
        run(main())
    finally:
        sub.close()
