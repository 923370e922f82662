#!/usr/bin/env python3
"""Median round trip of a 100-byte message over an aio.Channel, both sides aio, in one process.

python benchmarks/aio_channel_rtt.py tcp|unix [ROUNDS]

Made for A/B runs of the aio send path: run it with PYTHONPATH at each tree,
interleaved (A B A B ...), and compare the medians (see RESULTS.md,
"asyncio: aio.Channel round trips"). ``fastipc bench --aio`` measures the same
between two processes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time

from fastipc import aio


async def main(scheme: str, rounds: int) -> None:
    async def echo(msg: bytes, peer: aio.Channel) -> None:
        await peer.send(msg)

    tmp = tempfile.mkdtemp()
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else f"unix://{tmp}/rtt.sock"
    srv = await aio.serve(url, echo)
    task = asyncio.ensure_future(srv.serve_forever())
    ch = await aio.Channel.connect(srv.url)
    data = b"x" * 100
    try:
        for _ in range(200):  # warm-up
            await ch.send(data)
            await ch.recv()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ch.send(data)
            await ch.recv()
            times.append(time.perf_counter() - t0)
    finally:
        ch.close()
        srv.close()
        await srv.wait_closed()
        task.cancel()
        os.rmdir(tmp)
    times.sort()
    print(
        f"{scheme}: median {statistics.median(times) * 1e6:.0f} µs, "
        f"p90 {times[int(len(times) * 0.9)] * 1e6:.0f} µs ({rounds} round trips)"
    )


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "tcp",
            int(sys.argv[2]) if len(sys.argv) > 2 else 3000,
        )
    )
