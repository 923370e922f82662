#!/usr/bin/env python3
"""Bridged throughput through NATS against nats-py used directly (issue 16).

Bridged: a producer process sends into ring A; ``fastipc bridge shm://A
nats://.../s`` (a process) publishes; ``fastipc bridge nats://.../s shm://B``
(another process) delivers into ring B, which this process reads.
Direct: a producer process publishes with nats-py; this process subscribes
with nats-py. Both through one local nats-server on a free loopback port.

The rate is messages / second between the first and the last message
received (so process start-up is not counted); the median of ``--runs``.

    benchmarks/nats_bridge_bench.py [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time

import fastipc
from fastipc import Ring

SIZES = {64: 200_000, 64 * 1024: 5_000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("nats-server")
    if binary is None:
        sys.exit("nats-server is not installed: scripts/install_nats_server.sh")
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    sys.exit("nats-server did not start")


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])


def bridged(port: int, size: int, count: int) -> float:
    tag = f"nbb{os.getpid()}"
    a = Ring.create(f"{tag}a", 16 << 20)
    b = Ring.create(f"{tag}b", 16 << 20)
    subject = f"nats://127.0.0.1:{port}/bench.bridged"
    procs = []
    try:
        for src, dst in ((subject, f"shm://{b.name}"), (f"shm://{a.name}", subject)):
            p = subprocess.Popen(
                [sys.executable, "-m", "fastipc", "bridge", "-q", src, dst],
                stderr=subprocess.PIPE,
                text=True,
            )
            assert p.stderr is not None
            line = p.stderr.readline()
            if "bridging" not in line:
                sys.exit(f"bridge did not start: {line}")
            procs.append(p)
        producer = child(
            f"""
            from fastipc import Ring
            r = Ring.open({a.name!r})
            m = bytes({size})
            for _ in range({count} // 64):
                r.send_many([m] * 64, timeout=120)
            """
        )
        got = len(b.recv_many(1024, timeout=60))
        first = time.perf_counter()
        want = count // 64 * 64
        while got < want:
            got += len(b.recv_many(1024, timeout=60))
        last = time.perf_counter()
        producer.wait(60)
        return (want - 1) / (last - first)
    finally:
        for p in procs:
            p.terminate()
            p.communicate(timeout=30)
        for r in (a, b):
            r.unlink()
            r.close()


async def _direct_subscriber(port: int, size: int, count: int) -> float:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    done = asyncio.get_running_loop().create_future()
    times: list[float] = []
    n = 0

    async def on(msg: object) -> None:
        nonlocal n
        n += 1
        if n == 1:
            times.append(time.perf_counter())
        if n == count and not done.done():
            times.append(time.perf_counter())
            done.set_result(None)

    await nc.subscribe("bench.direct", cb=on, pending_bytes_limit=1 << 30)
    await nc.flush()
    producer = child(
        f"""
        import asyncio, nats
        async def main():
            nc = await nats.connect("nats://127.0.0.1:{port}")
            m = bytes({size})
            for _ in range({count}):
                await nc.publish("bench.direct", m)
            await nc.flush()
            await nc.close()
        asyncio.run(main())
        """
    )
    await asyncio.wait_for(done, 120)
    await nc.close()
    producer.wait(60)
    return (count - 1) / (times[1] - times[0])


def direct(port: int, size: int, count: int) -> float:
    return asyncio.run(_direct_subscriber(port, size, count))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages, 1 run")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    port = free_port()
    server = start_server(port)
    try:
        import importlib.metadata

        version = subprocess.run(
            ["nats-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        print(
            f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, fastipc {fastipc.__version__} "
            f"({fastipc.BACKEND}), nats-py {importlib.metadata.version('nats-py')}, {version}"
        )
        print("| message | nats-py direct (msgs/s) | bridged ring->nats->ring (msgs/s) | ratio |")
        print("|---|---|---|---|")
        for size, count in SIZES.items():
            if args.quick:
                count //= 10
            d = statistics.median(direct(port, size, count) for _ in range(runs))
            b = statistics.median(bridged(port, size, count) for _ in range(runs))
            label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
            print(
                f"| {label} | {d:,.0f} ({d * size / 1e6:,.0f} MB/s) | "
                f"{b:,.0f} ({b * size / 1e6:,.0f} MB/s) | {b / d:.2f} |",
                flush=True,
            )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
