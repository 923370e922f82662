"""The asyncio benchmark (issue 12): fastipc.aio against asyncio streams over a Unix socket and sync fastipc.

Two processes per figure, 64-byte messages, every figure in one run with the
repetitions interleaved (figure A, B, C, ..., then again), the median of
``--repeat`` (default 5) reported with min-max:

* throughput (messages/s, counted by the consumer from its first message to
  the end): ``async for`` over an aio.Ring (one await per message), aio
  ``recv_many(256)``, asyncio streams (``readexactly`` per message, and
  ``read(64 KiB)`` + split), sync ``Ring.recv`` and ``recv_many``. The Ring
  producers send with the sync calls; the streams producer writes frames and
  drains every 256.
* ping-pong: median round trip of ``await send`` + ``await recv`` between two
  asyncio processes, over two aio.Rings, over one Unix stream socket (asyncio
  streams), and over an aio.Channel on a unix socket and on loopback tcp (whose
  every send goes through the channel's sender thread); and the same with the
  loop asleep between messages (a 1 ms pause each round trip, so the wake-up
  path is measured).
* idle: CPU time / wall time of a process awaiting ``recv`` on an empty ring for 2 s.

Run it with ``fastipc bench --aio``, ``python -m fastipc.bench aio [--repeat N]
[--duration S] [--rounds N] [--loop asyncio|uvloop]`` or
``benchmarks/aio_bench.py`` (same arguments). Each role is a child process
started as ``python -m fastipc.bench aio --role ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from .. import aio
from ..errors import Closed, Timeout
from ..ring import Ring
from .harness import child_env

__all__ = ["format_table", "main", "measure", "to_json"]

MSG = b"m" * 64
FRAME = struct.pack("<I", 64) + MSG
BATCH = 256


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()  # type: ignore[no-any-return,unused-ignore]
    return asyncio.new_event_loop()


def say(obj: object) -> None:
    print(json.dumps(obj), flush=True)


# ---- roles (child processes) -----------------------------------------------------------


def role_ring_producer(name: str, duration: float, batch: bool) -> None:
    ring = Ring.open(name)
    end = time.monotonic() + duration
    msgs = [MSG] * BATCH
    try:
        if batch:
            while time.monotonic() < end:
                for _ in range(16):
                    ring.send_many(msgs)
        else:
            send = ring.send
            while time.monotonic() < end:
                for _ in range(256):
                    send(MSG)
        ring.shutdown()
    finally:
        ring.close()


def role_ring_consumer(name: str, how: str, loop_kind: str) -> None:
    ring = aio.Ring.open(name)
    say("ready")

    async def a_for() -> tuple[int, float]:
        n = 0
        await ring.recv()
        t0 = time.perf_counter()
        async for _ in ring:
            n += 1
        return n, time.perf_counter() - t0

    async def a_many() -> tuple[int, float]:
        n = 0
        await ring.recv()
        t0 = time.perf_counter()
        try:
            while True:
                n += len(await ring.recv_many(BATCH))
        except Closed:
            pass
        return n, time.perf_counter() - t0

    def s_recv() -> tuple[int, float]:
        r = ring.sync
        n = 0
        r.recv()
        t0 = time.perf_counter()
        for _ in r:
            n += 1
        return n, time.perf_counter() - t0

    def s_many() -> tuple[int, float]:
        r = ring.sync
        n = 0
        r.recv()
        t0 = time.perf_counter()
        try:
            while True:
                n += len(r.recv_many(BATCH))
        except Closed:
            pass
        return n, time.perf_counter() - t0

    try:
        if how == "aio_for":
            n, dt = new_loop(loop_kind).run_until_complete(a_for())
        elif how == "aio_many":
            n, dt = new_loop(loop_kind).run_until_complete(a_many())
        elif how == "sync_recv":
            n, dt = s_recv()
        else:
            n, dt = s_many()
    finally:
        ring.close()
    say({"rate": n / dt})


def role_stream_producer(path: str, duration: float, loop_kind: str) -> None:
    async def main() -> None:
        _, w = await asyncio.open_unix_connection(path)
        end = time.monotonic() + duration
        chunk = FRAME * BATCH
        while time.monotonic() < end:
            for _ in range(BATCH):
                w.write(FRAME)
            await w.drain()
        del chunk
        w.close()
        await w.wait_closed()

    new_loop(loop_kind).run_until_complete(main())


def role_stream_consumer(path: str, how: str, loop_kind: str) -> None:
    result: dict[str, float] = {}

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()

        async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            n = 0
            await r.readexactly(68)
            t0 = time.perf_counter()
            if how == "streams_each":
                try:
                    while True:
                        hdr = await r.readexactly(4)
                        await r.readexactly(int.from_bytes(hdr, "little"))
                        n += 1
                except asyncio.IncompleteReadError:
                    pass
            else:
                buf = b""
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    buf += data
                    pos = 0
                    msgs = []
                    while len(buf) - pos >= 4:
                        ln = int.from_bytes(buf[pos : pos + 4], "little")
                        if len(buf) - pos - 4 < ln:
                            break
                        msgs.append(buf[pos + 4 : pos + 4 + ln])
                        pos += 4 + ln
                    n += len(msgs)
                    buf = buf[pos:]
            result["rate"] = n / (time.perf_counter() - t0)
            w.close()
            done.set_result(None)

        srv = await asyncio.start_unix_server(conn, path)
        say("ready")
        await done
        srv.close()

    new_loop(loop_kind).run_until_complete(main())
    say(result)


def role_pingpong(
    kind: str, side: str, a: str, b: str, rounds: int, pause: float, loop_kind: str
) -> None:
    async def ring_side() -> None:
        r_in = aio.Ring.open(a if side == "echo" else b)
        r_out = aio.Ring.open(b if side == "echo" else a)
        say("ready")
        try:
            if side == "echo":
                try:
                    async for m in r_in:
                        await r_out.send(m)
                except Closed:
                    pass
            else:
                times = []
                for i in range(rounds):
                    t0 = time.perf_counter_ns()
                    await r_out.send(MSG)
                    await r_in.recv()
                    times.append(time.perf_counter_ns() - t0)
                    if pause:
                        await asyncio.sleep(pause)
                r_out.shutdown()
                warm = min(1000, rounds // 10)
                say({"rtt_us": statistics.median(times[warm:]) / 1000})
        finally:
            r_in.close()
            r_out.close()

    async def stream_side() -> None:
        if side == "echo":
            done = asyncio.get_running_loop().create_future()

            async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    while True:
                        data = await r.readexactly(68)
                        w.write(data)
                except asyncio.IncompleteReadError:
                    pass
                w.close()
                done.set_result(None)

            srv = await asyncio.start_unix_server(conn, a)
            say("ready")
            await done
            srv.close()
        else:
            r, w = await asyncio.open_unix_connection(a)
            say("ready")
            times = []
            for i in range(rounds):
                t0 = time.perf_counter_ns()
                w.write(FRAME)
                await r.readexactly(68)
                times.append(time.perf_counter_ns() - t0)
                if pause:
                    await asyncio.sleep(pause)
            w.close()
            warm = min(1000, rounds // 10)
            say({"rtt_us": statistics.median(times[warm:]) / 1000})

    async def channel_side() -> None:
        # a: the URL to listen at (tcp port 0: the echo says the one it got).
        if side == "echo":
            lst = await aio.listen(a)
            say({"url": lst.url})
            ch = await lst.accept()
            lst.close()
            try:
                async for m in ch:
                    await ch.send(m)
            finally:
                ch.close()
        else:
            ch = await aio.Channel.connect(a)
            say("ready")
            times = []
            try:
                for i in range(rounds):
                    t0 = time.perf_counter_ns()
                    await ch.send(MSG)
                    await ch.recv()
                    times.append(time.perf_counter_ns() - t0)
                    if pause:
                        await asyncio.sleep(pause)
            finally:
                ch.close()
            warm = min(1000, rounds // 10)
            say({"rtt_us": statistics.median(times[warm:]) / 1000})

    side_of = {"ring": ring_side, "streams": stream_side}
    new_loop(loop_kind).run_until_complete(side_of.get(kind, channel_side)())


def role_idle(name: str, seconds: float, loop_kind: str) -> None:
    async def main() -> None:
        r = aio.Ring.open(name)
        t0, c0 = time.monotonic(), time.process_time()
        try:
            await r.recv(timeout=seconds)
        except Timeout:
            pass
        say({"cpu_pct": 100 * (time.process_time() - c0) / (time.monotonic() - t0)})
        r.close()

    new_loop(loop_kind).run_until_complete(main())


# ---- the parent ------------------------------------------------------------------------


def child(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastipc.bench", "aio", "--role", *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def line(p: subprocess.Popen[str]) -> object:
    assert p.stdout is not None
    text = p.stdout.readline()
    if not text:
        raise RuntimeError(f"child {p.args!r} said nothing (exit {p.wait()})")
    return json.loads(text)


def fresh() -> str:
    return f"aiob.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def throughput(fig: str, duration: float, loop_kind: str) -> float:
    if fig.startswith("streams"):
        tmp = tempfile.mkdtemp()
        path = os.path.join(tmp, "s")
        try:
            cons = child("stream_consumer", path, fig, loop_kind)
            assert line(cons) == "ready"
            prod = child("stream_producer", path, duration, loop_kind)
            prod.wait()
            rate = line(cons)["rate"]  # type: ignore[index]
            cons.wait()
        finally:
            if os.path.exists(path):
                os.unlink(path)
            os.rmdir(tmp)
        return float(rate)
    name = fresh()
    ring = Ring.create(name, 256 * 1024)
    try:
        cons = child("ring_consumer", name, fig, loop_kind)
        assert line(cons) == "ready"
        batch = fig.endswith("many")
        prod = child("ring_producer", name, duration, int(batch))
        prod.wait()
        rate = line(cons)["rate"]  # type: ignore[index]
        cons.wait()
    finally:
        ring.close()
        ring.unlink()
    return float(rate)


def pingpong(kind: str, rounds: int, pause: float, loop_kind: str) -> float:
    a, b = fresh(), fresh()
    made: list[Ring] = []
    tmp = tempfile.mkdtemp()
    try:
        if kind == "ring":
            made = [Ring.create(a, 4096), Ring.create(b, 4096)]
        elif kind == "channel_tcp":
            a = "tcp://127.0.0.1:0"
        elif kind == "channel_unix":
            a = "unix://" + os.path.join(tmp, "s")
        else:
            a = os.path.join(tmp, "s")
        echo = child("pingpong", kind, "echo", a, b, rounds, pause, loop_kind)
        said = line(echo)
        if kind.startswith("channel"):
            a = said["url"]  # type: ignore[index]
        else:
            assert said == "ready"
        ping = child("pingpong", kind, "ping", a, b, rounds, pause, loop_kind)
        assert line(ping) == "ready"
        rtt = line(ping)["rtt_us"]  # type: ignore[index]
        ping.wait()
        echo.wait()
    finally:
        for r in made:
            r.close()
            r.unlink()
        if os.path.exists(os.path.join(tmp, "s")):
            os.unlink(os.path.join(tmp, "s"))
        os.rmdir(tmp)
    return float(rtt)


def idle(loop_kind: str) -> float:
    name = fresh()
    ring = Ring.create(name, 4096)
    try:
        p = child("idle", name, 2.0, loop_kind)
        pct = line(p)["cpu_pct"]  # type: ignore[index]
        p.wait()
    finally:
        ring.close()
        ring.unlink()
    return float(pct)


THROUGHPUT = ["aio_for", "aio_many", "streams_each", "streams_chunk", "sync_recv", "sync_many"]
#: Ping-pong kinds, each a row: aio.Ring, asyncio streams (unix), aio.Channel over unix and tcp.
PINGPONG = ["ring", "streams", "channel_unix", "channel_tcp"]
PINGPONG_LABELS = {
    "ring": "aio.Ring",
    "streams": "asyncio streams",
    "channel_unix": "aio.Channel, unix",
    "channel_tcp": "aio.Channel, tcp (loopback)",
}
LABELS = {
    "aio_for": "aio.Ring `async for` (1 await/msg)",
    "aio_many": "aio.Ring `await recv_many(256)`",
    "streams_each": "asyncio streams, `readexactly` per msg",
    "streams_chunk": "asyncio streams, `read(64 KiB)` + split",
    "sync_recv": "sync Ring `recv` (for reference)",
    "sync_many": "sync Ring `recv_many(256)`",
}


def main(argv: list[str] | None = None) -> int:
    """Run the asyncio figures (or, with ``--role``, one child's part) and print the table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--role":
        role, *rargs = argv[1:]
        if role == "ring_producer":
            role_ring_producer(rargs[0], float(rargs[1]), bool(int(rargs[2])))
        elif role == "ring_consumer":
            role_ring_consumer(*rargs)
        elif role == "stream_producer":
            role_stream_producer(rargs[0], float(rargs[1]), rargs[2])
        elif role == "stream_consumer":
            role_stream_consumer(*rargs)
        elif role == "pingpong":
            role_pingpong(
                rargs[0], rargs[1], rargs[2], rargs[3], int(rargs[4]), float(rargs[5]), rargs[6]
            )
        elif role == "idle":
            role_idle(rargs[0], float(rargs[1]), rargs[2])
        return 0
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per throughput figure")
    ap.add_argument("--rounds", type=int, default=20000, help="ping-pong round trips")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = ap.parse_args(argv)
    res = measure(args.repeat, args.duration, args.rounds, args.loop)
    if args.json:
        print(json.dumps(to_json(res, args.loop), indent=2))
    else:
        print(format_table(res, args.loop, args.repeat), end="")
    return 0


def measure(repeat: int, duration: float, rounds: int, loop: str) -> dict[str, list[float]]:
    """Every figure ``repeat`` times, interleaved: {figure: [value per repetition]}.

    Throughputs in msgs/s, round trips in µs, the idle consumer in % of one CPU.
    """
    res: dict[str, list[float]] = {}
    for rep in range(repeat):
        for fig in THROUGHPUT:
            res.setdefault(fig, []).append(throughput(fig, duration, loop))
        for kind in PINGPONG:
            res.setdefault(f"pp_{kind}", []).append(pingpong(kind, rounds, 0.0, loop))
            res.setdefault(f"pps_{kind}", []).append(
                pingpong(kind, max(200, rounds // 50), 0.001, loop)
            )
        res.setdefault("idle", []).append(idle(loop))
        print(f"repetition {rep + 1}/{repeat} done", file=sys.stderr, flush=True)
    return res


def to_json(res: dict[str, list[float]], loop: str) -> dict[str, Any]:
    """``measure``'s result as JSON: per figure its label, unit, median, min, max and runs."""
    out: dict[str, Any] = {"loop": loop, "figures": {}}
    for key, runs in res.items():
        if key in THROUGHPUT:
            label, unit = LABELS[key], "msgs/s"
        elif key == "idle":
            label, unit = "idle awaiting consumer", "% CPU"
        else:
            kind = PINGPONG_LABELS[key.split("_", 1)[1]]
            pause = "back to back" if key.startswith("pp_") else "1 ms pause each"
            label, unit = f"ping-pong, {pause}: {kind}", "µs"
        out["figures"][key] = {
            "label": label,
            "unit": unit,
            "median": statistics.median(runs),
            "min": min(runs),
            "max": max(runs),
            "runs": runs,
        }
    return out


def format_table(res: dict[str, list[float]], loop: str, repeat: int) -> str:
    """The markdown table of ``measure``'s result, with each figure's ratio to asyncio streams."""

    def med(k: str) -> float:
        return statistics.median(res[k])

    def cell(k: str, fmt: str) -> str:
        return f"{fmt.format(med(k))} ({fmt.format(min(res[k]))}-{fmt.format(max(res[k]))})"

    lines = [
        f"loop: {loop}; {repeat} interleaved repetitions; median (min-max)",
        "",
        "| figure | value | vs streams (median ratio) |",
        "|---|---|---|",
    ]
    base_each, base_chunk = med("streams_each"), med("streams_chunk")
    for fig in THROUGHPUT:
        v = med(fig)
        ratio = ""
        # A base of 0 (nothing got through in a tiny smoke run on a loaded
        # machine) gives no ratio rather than a ZeroDivisionError.
        if fig in ("aio_for", "sync_recv") and base_each > 0:
            ratio = f"{v / base_each:.1f}x readexactly"
        elif fig in ("aio_many", "sync_many") and base_chunk > 0:
            ratio = f"{v / base_chunk:.1f}x read+split"
        lines.append(f"| {LABELS[fig]} | {cell(fig, '{:,.0f}')} msgs/s | {ratio} |")
    for k, label in (("pp", "ping-pong, back to back"), ("pps", "ping-pong, 1 ms pause each")):
        s = med(f"{k}_streams")
        for kind in PINGPONG:
            key = f"{k}_{kind}"
            if key not in res:
                continue
            vs = f"{med(key) / s:.2f}x streams" if s > 0 and kind != "streams" else ""
            lines.append(f"| {label}: {PINGPONG_LABELS[kind]} | {cell(key, '{:.1f}')} µs | {vs} |")
    lines.append(f"| idle awaiting consumer | {cell('idle', '{:.2f}')} % CPU | |")
    return "\n".join(lines) + "\n"
