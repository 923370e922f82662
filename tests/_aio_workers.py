"""Child processes of tests/test_aio.py (spawned: importable functions, real rings and sockets)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import time

from fastipc import Ring, aio


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of ``kind``: "asyncio" (the default loop) or "uvloop"."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def run(kind: str, coro: object) -> object:
    loop = new_loop(kind)
    try:
        return loop.run_until_complete(coro)  # type: ignore[arg-type]
    finally:
        loop.close()


def numbered_producer(
    name: str, producer: int, count: int, seed: int, pause_p: float = 0.02, pause_max: float = 0.001
) -> None:
    """Send ``count`` messages (producer, seq), pausing up to ``pause_max`` seconds before
    a fraction ``pause_p`` of them, so consumers often wait."""
    rnd = random.Random(seed)
    ring = Ring.open(name)
    try:
        for seq in range(count):
            ring.send(producer.to_bytes(4, "little") + seq.to_bytes(4, "little"))
            if rnd.random() < pause_p:
                time.sleep(rnd.random() * pause_max)
    finally:
        ring.close()


def aio_consumer(name: str, kind: str, results: object) -> None:
    """``async for`` over the ring until shut down; put the list of messages on ``results``."""

    async def main() -> list[bytes]:
        ring = aio.Ring.open(name)
        got = []
        try:
            async for m in ring:
                got.append(m)
        finally:
            ring.close()
        return got

    got = run(kind, main())
    results.put((os.getpid(), got))  # type: ignore[attr-defined]


def shutdown_later(name: str, delay: float) -> None:
    time.sleep(delay)
    ring = Ring.open(name)
    try:
        ring.shutdown()
    finally:
        ring.close()


def channel_peer_sleeps(path: str) -> None:
    """Connect to the unix listener at ``path``, say hello, then sleep until killed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sys.stdout.flush()
    time.sleep(600)
