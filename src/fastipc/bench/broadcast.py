"""The broadcast benchmark (``fastipc bench --broadcast``): one publisher, 1-8 subscriber processes.

Per figure, one publisher process and N subscriber processes (``python -m
fastipc.bench.broadcast ROLE SPEC_JSON``), for a fixed wall-clock duration.
The figure is the per-subscriber rate: each subscriber's received messages
over its own interval from its first to its last message, the median of the
N subscribers (the slowest is kept too), then the median of the repetitions.
The publisher's own rate is recorded as well, and the CPU time of every
thread of every process (``time.process_time()`` around each process's
measured interval) per message delivered: on 2 vCPUs the rates converge to
the ratio of these costs. A waiting fastipc process spins before it sleeps,
and that counts; zmq's I/O threads still fanning out after the publisher's
interval do not: both bias the cost against fastipc.

Kinds:

``msg64``
    64-byte messages, one ``publish`` per message, one ``recv`` (returning
    ``bytes``) per message in each subscriber.
``many64``
    The same through ``publish_many`` of 256 and ``recv_many(256)``
    (fastipc only: the peers have no batch call).
``mib1``
    1 MiB messages: the publisher copies a prebuilt buffer in once (its
    first 8 bytes the sequence number), each subscriber reads it in place
    (``recv_view``; zmq ``recv(copy=False)``; iceoryx2's sample view) and
    checks the sequence number: nothing is copied per subscriber.

Transports: fastipc native and python (``policy="block"``, so nothing is
lost and the rate is what the slowest subscriber sustains), pyzmq PUB/SUB
over ``ipc://`` (its default high-water mark: a subscriber that falls behind
loses messages, which are not counted), iceoryx2 publish/subscribe
(``RetryUntilDelivered``: nothing lost). A transport whose package is not
installed is reported as skipped.

With more processes than vCPUs (8 subscribers and a publisher on 2 vCPUs),
the figures measure the scheduler as much as the transport: every process
gets a share of 2 cores, and waiting (spin, then futex) decides who runs.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import secrets
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["KINDS", "TRANSPORTS", "format_broadcast", "main", "run_broadcast"]

KINDS = ("msg64", "many64", "mib1")
TRANSPORTS: tuple[str, ...] = ("native", "python", "zmq", "iceoryx2")
_LABELS = {
    "native": "fastipc native",
    "python": "fastipc python",
    "zmq": "pyzmq PUB/SUB ipc",
    "iceoryx2": "iceoryx2 pub/sub",
}
_MODULES = {"zmq": "zmq", "iceoryx2": "iceoryx2"}
_BATCH = 256
_MIB = 1 << 20
_END = b"\xffEND"


def available(transport: str) -> str | None:
    """None if ``transport`` can run here, else why not."""
    module = _MODULES.get(transport)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as exc:
        return f"not installed ({exc.name})"
    return None


# ---- the measuring processes -------------------------------------------------


def _out(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _fastipc_pub(spec: dict[str, Any]) -> None:
    from fastipc import Broadcast

    size = _MIB if spec["kind"] == "mib1" else 64
    capacity = 8 * _MIB if spec["kind"] == "mib1" else _MIB
    pub = Broadcast.create(spec["name"], capacity, subscribers=16, policy="block")
    try:
        _out("ready")
        sys.stdin.readline()  # every subscriber joined
        n = 0
        end = time.monotonic() + spec["duration"]
        t0, c0 = time.perf_counter(), time.process_time()
        if spec["kind"] == "msg64":
            msg, publish = b"x" * size, pub.publish
            while time.monotonic() < end:
                for _ in range(1000):
                    publish(msg)
                n += 1000
        elif spec["kind"] == "many64":
            batch, publish_many = [b"x" * size] * _BATCH, pub.publish_many
            while time.monotonic() < end:
                for _ in range(20):
                    publish_many(batch)
                n += 20 * _BATCH
        else:
            buf = bytearray(size)
            while time.monotonic() < end:
                struct.pack_into("<Q", buf, 0, n)
                pub.publish(buf)
                n += 1
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        pub.shutdown()
        _out({"published": n, "secs": secs, "cpu": cpu})
        sys.stdin.readline()  # the subscribers are done: the ring may go
    finally:
        pub.close()
        Broadcast.unlink_name(spec["name"])


def _fastipc_sub(spec: dict[str, Any]) -> None:
    from fastipc import Broadcast, Closed

    sub = Broadcast.subscribe(spec["name"])
    _out("ready")
    n = 0
    t0 = t1 = c0 = 0.0
    clock, cpu_clock = time.perf_counter, time.process_time
    try:
        if spec["kind"] == "msg64":
            recv = sub.recv
            recv()
            t0, c0 = clock(), cpu_clock()
            while True:
                recv()
                n += 1
        elif spec["kind"] == "many64":
            recv_many = sub.recv_many
            recv_many(_BATCH)
            t0, c0 = clock(), cpu_clock()
            while True:
                n += len(recv_many(_BATCH))
        else:
            recv_view = sub.recv_view
            with recv_view() as v:
                expect = struct.unpack_from("<Q", v)[0] + 1
            t0, c0 = clock(), cpu_clock()
            while True:
                with recv_view() as v:
                    seq = struct.unpack_from("<Q", v)[0]
                    if seq != expect:
                        raise AssertionError(f"message {seq}, expected {expect}")
                    expect += 1
                n += 1
    except Closed:
        t1 = clock()  # right after the last message: shutdown follows it at once
    finally:
        c1 = cpu_clock()  # before the teardown
        sub.close()
    # CPU time (all the process's threads) is read once at the end, not per
    # message (it is a system call); the end comes right after the last message.
    _out({"received": n, "secs": max(t1 - t0, 1e-9), "cpu": max(c1 - c0, 0.0)})


def _zmq_pub(spec: dict[str, Any]) -> None:
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(spec["addr"])
    try:
        _out("ready")
        sys.stdin.readline()
        time.sleep(0.3)  # subscriptions reach the publisher (zmq's slow joiner)
        n = 0
        end = time.monotonic() + spec["duration"]
        t0, c0 = time.perf_counter(), time.process_time()
        if spec["kind"] == "msg64":
            msg, send = b"x" * 64, pub.send
            while time.monotonic() < end:
                for _ in range(1000):
                    send(msg)
                n += 1000
        else:
            buf = bytearray(_MIB)
            while time.monotonic() < end:
                struct.pack_into("<Q", buf, 0, n)
                pub.send(buf, copy=False)
                n += 1
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        stop = time.monotonic() + 1.0
        while time.monotonic() < stop:  # the end mark must get through queues that drop
            pub.send(_END)
            time.sleep(0.005)
        _out({"published": n, "secs": secs, "cpu": cpu})
        sys.stdin.readline()
    finally:
        pub.close(linger=0)
        ctx.term()


def _zmq_sub(spec: dict[str, Any]) -> None:
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.connect(spec["addr"])
    _out("ready")
    n = 0
    t0 = t1 = c0 = 0.0
    clock, cpu_clock = time.perf_counter, time.process_time
    try:
        if spec["kind"] == "msg64":
            recv = sub.recv
            recv()
            t0, c0 = clock(), cpu_clock()
            while True:
                m = recv()
                if m == _END:
                    t1 = clock()
                    break
                n += 1
                if n % 1024 == 0:
                    t1 = clock()
        else:
            sub.recv(copy=False)
            t0, c0 = clock(), cpu_clock()
            while True:
                f = sub.recv(copy=False)
                v = f.buffer
                if len(v) == len(_END):
                    break
                struct.unpack_from("<Q", v)  # read in place
                n += 1
                t1 = clock()
    except zmq.Again:
        pass
    finally:
        c1 = cpu_clock()  # before the teardown
        sub.close(linger=0)
        ctx.term()
    # CPU time (all the process's threads) is read once at the end, not per
    # message (it is a system call); the end comes right after the last message.
    _out({"received": n, "secs": max(t1 - t0, 1e-9), "cpu": max(c1 - c0, 0.0)})


def _iox2_service(spec: dict[str, Any], size: int) -> Any:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    depth = 8 if size == _MIB else 4096
    svc = (
        node.service_builder(iox2.ServiceName.new(spec["service"]))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(depth)
        .max_subscribers(16)
        .open_or_create()
    )
    return iox2, node, svc, depth


def _iox2_pub(spec: dict[str, Any]) -> None:
    size = _MIB if spec["kind"] == "mib1" else 64
    iox2, node, svc, _ = _iox2_service(spec, size)
    pub = (
        svc.publisher_builder()
        .initial_max_slice_len(size)
        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    try:
        _out("ready")
        sys.stdin.readline()
        n = 0
        end = time.monotonic() + spec["duration"]
        t0, c0 = time.perf_counter(), time.process_time()
        msg = b"x" * size if size == 64 else bytearray(size)
        while time.monotonic() < end:
            for _ in range(100 if size == 64 else 1):
                s = pub.loan_slice_uninit(size)
                view = s.payload().as_memory_view().cast("B")
                if size == _MIB:
                    struct.pack_into("<Q", msg, 0, n)
                view[:] = msg
                s.assume_init().send()
                n += 1
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        s = pub.loan_slice_uninit(len(_END))
        s.payload().as_memory_view().cast("B")[:] = _END
        s.assume_init().send()
        _out({"published": n, "secs": secs, "cpu": cpu})
        sys.stdin.readline()
    finally:
        pub.delete()
        del svc, node


def _iox2_sub(spec: dict[str, Any]) -> None:
    size = _MIB if spec["kind"] == "mib1" else 64
    _, node, svc, depth = _iox2_service(spec, size)
    sub = svc.subscriber_builder().buffer_size(depth).create()
    _out("ready")
    n = 0
    t0 = t1 = c0 = 0.0
    clock, cpu_clock = time.perf_counter, time.process_time
    receive = sub.receive
    deadline = time.monotonic() + spec["duration"] + 30
    try:
        while time.monotonic() < deadline:
            s = receive()
            if s is None:
                continue
            v = s.payload().as_memory_view().cast("B")
            if len(v) == len(_END) and bytes(v) == _END:
                break
            if size == _MIB:
                struct.unpack_from("<Q", v)  # read in place
            elif size == 64:
                bytes(v)  # a message as bytes, as recv() gives
            del v, s
            if t0 == 0.0:
                t0, c0 = clock(), cpu_clock()
                continue
            n += 1
            t1 = clock()
    finally:
        c1 = cpu_clock()  # before the teardown
        sub.delete()
        del svc, node
    # CPU time (all the process's threads) is read once at the end, not per
    # message (it is a system call); the end comes right after the last message.
    _out({"received": n, "secs": max(t1 - t0, 1e-9), "cpu": max(c1 - c0, 0.0)})


_ROLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "fastipc-pub": _fastipc_pub,
    "fastipc-sub": _fastipc_sub,
    "zmq-pub": _zmq_pub,
    "zmq-sub": _zmq_sub,
    "iceoryx2-pub": _iox2_pub,
    "iceoryx2-sub": _iox2_sub,
}


def child_main(argv: list[str]) -> int:
    """``python -m fastipc.bench.broadcast ROLE SPEC_JSON``: one process of a measurement."""
    _ROLES[argv[0]](json.loads(argv[1]))
    return 0


# ---- the parent ----------------------------------------------------------------


def _start(role: str, spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastipc.bench.broadcast", role, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _line(proc: subprocess.Popen[str], timeout: float, who: str) -> Any:
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise RuntimeError(f"{who} said nothing within {timeout} s: {err.strip()}")
    return json.loads(line)


def measure(transport: str, kind: str, subscribers: int, duration: float) -> dict[str, Any]:
    """One measurement: per-subscriber msgs/s (median, slowest) and the publisher's msgs/s."""
    token = f"fbench-bc.{os.getpid()}.{secrets.token_hex(4)}"
    family = "fastipc" if transport in ("native", "python") else transport
    env = dict(os.environ)
    if family == "fastipc":
        env["FASTIPC_BACKEND"] = transport
    spec = {
        "kind": kind,
        "duration": duration,
        "name": token,
        "addr": f"ipc:///tmp/{token}.zmq",
        "service": f"fastipc-bench-bc/{token}",
    }
    procs: list[subprocess.Popen[str]] = []
    try:
        pub = _start(f"{family}-pub", spec, env)
        procs.append(pub)
        if _line(pub, 30, "publisher") != "ready":
            raise RuntimeError("publisher did not start")
        for _ in range(subscribers):
            procs.append(_start(f"{family}-sub", spec, env))
            if _line(procs[-1], 30, "subscriber") != "ready":
                raise RuntimeError("subscriber did not start")
        assert pub.stdin is not None
        pub.stdin.write("go\n")
        pub.stdin.flush()
        published = _line(pub, duration + 60, "publisher")
        subs = [_line(p, 60, "subscriber") for p in procs[1:]]
        pub.stdin.write("done\n")
        pub.stdin.flush()
        pub.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for leftover in (f"/tmp/{token}.zmq",):
            if os.path.exists(leftover):
                os.unlink(leftover)
    rates = sorted(s["received"] / s["secs"] for s in subs)
    received = sum(s["received"] for s in subs)
    cpu = published["cpu"] + sum(s["cpu"] for s in subs)
    return {
        "per_sub": statistics.median(rates),
        "slowest": rates[0],
        "received": received,
        "pub_rate": published["published"] / published["secs"],
        # CPU seconds of every thread of every process, publisher included, per
        # message delivered to a subscriber: what the transport costs the
        # machine, whichever process pays (zmq's I/O threads included).
        "cpu_ns": cpu / received * 1e9 if received else float("inf"),
        "sub_cpu_ns": statistics.median(
            s["cpu"] / s["received"] * 1e9 if s["received"] else float("inf") for s in subs
        ),
        "pub_cpu_ns": published["cpu"] / published["published"] * 1e9
        if published["published"]
        else float("inf"),
    }


def run_broadcast(
    transports: tuple[str, ...] = TRANSPORTS,
    kinds: tuple[str, ...] = KINDS,
    counts: tuple[int, ...] = (1, 2, 4, 8),
    duration: float = 1.0,
    repeat: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every figure, ``repeat`` times each; medians. Skipped transports say why."""
    from .machine import machine_info

    report: dict[str, Any] = {
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "duration": duration,
        "repeat": repeat,
        "skipped": {},
        "rows": [],
    }
    for t in transports:
        why = available(t)
        if why:
            report["skipped"][t] = why
    live = [t for t in transports if t not in report["skipped"]]
    for kind in kinds:
        for n in counts:
            for t in live:
                if kind == "many64" and t in ("zmq", "iceoryx2"):
                    continue
                runs = []
                for r in range(repeat):
                    progress(f"broadcast {kind} {_LABELS[t]} x{n} ({r + 1}/{repeat}) ...")
                    try:
                        runs.append(measure(t, kind, n, duration))
                    except (RuntimeError, OSError, ValueError) as exc:
                        report["skipped"][f"{t} {kind} x{n}"] = str(exc)[:200]
                        break
                if not runs:
                    continue
                report["rows"].append(
                    {
                        "kind": kind,
                        "subscribers": n,
                        "transport": t,
                        "per_sub": statistics.median(x["per_sub"] for x in runs),
                        "slowest": statistics.median(x["slowest"] for x in runs),
                        "pub_rate": statistics.median(x["pub_rate"] for x in runs),
                        "cpu_ns": statistics.median(x["cpu_ns"] for x in runs),
                        "sub_cpu_ns": statistics.median(x["sub_cpu_ns"] for x in runs),
                        "pub_cpu_ns": statistics.median(x["pub_cpu_ns"] for x in runs),
                        "runs": runs,
                    }
                )
    return report


def _rate(v: float) -> str:
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k"


def _ns(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.0f}"


def _put_table(out: list[str], table: list[list[str]], markdown: bool) -> None:
    if markdown:
        out.append("| " + " | ".join(table[0]) + " |")
        out.append("|" + "---|" * len(table[0]))
        out.extend("| " + " | ".join(row) + " |" for row in table[1:])
    else:
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        out.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table)


def format_broadcast(report: dict[str, Any], markdown: bool = False) -> str:
    """The report as two tables per kind, by subscriber count and transport: per-subscriber
    msgs/s, then CPU ns per delivered message."""
    out = []
    m = report["machine"]
    out.append(
        f"Broadcast: {m['cpu_model']}, {m['vcpus']} vCPUs, Linux {m['kernel']}, "
        f"Python {m['python']}, {report['date']}; {report['repeat']} x {report['duration']} s "
        "per figure, medians"
    )
    titles = {
        "msg64": "64 B, one call per message: per-subscriber msgs/s (slowest subscriber)",
        "many64": "64 B, publish_many(256) / recv_many(256): per-subscriber msgs/s (slowest)",
        "mib1": "1 MiB read in place: per-subscriber msgs/s (slowest); publisher msgs/s",
    }
    for kind in KINDS:
        rows = [r for r in report["rows"] if r["kind"] == kind]
        if not rows:
            continue
        transports = [t for t in TRANSPORTS if any(r["transport"] == t for r in rows)]
        counts = sorted({r["subscribers"] for r in rows})
        out.append("")
        out.append(titles[kind])
        head = ["subscribers", *(_LABELS[t] for t in transports)]
        if "zmq" in transports and "native" in transports:
            head.append("native / zmq")
        table = [head]
        for n in counts:
            line = [str(n)]
            cell = {r["transport"]: r for r in rows if r["subscribers"] == n}
            for t in transports:
                r = cell.get(t)
                if r is None:
                    line.append("-")
                    continue
                text = f"{_rate(r['per_sub'])} ({_rate(r['slowest'])})"
                if kind == "mib1":
                    text += f"; pub {_rate(r['pub_rate'])}"
                line.append(text)
            if len(head) > len(transports) + 1:
                a, b = cell.get("native"), cell.get("zmq")
                line.append(f"{a['per_sub'] / b['per_sub']:.1f}x" if a and b else "-")
            table.append(line)
        _put_table(out, table, markdown)
        out.append("")
        out.append(
            "  CPU per message delivered, ns (every thread of every process, the "
            "publisher's included, over the messages all subscribers received; lower is better)"
        )
        head = ["subscribers", *(_LABELS[t] for t in transports)]
        if "zmq" in transports and "native" in transports:
            head.append("zmq / native")
        table = [head]
        for n in counts:
            cell = {r["transport"]: r for r in rows if r["subscribers"] == n}
            line = [str(n)]
            for t in transports:
                r = cell.get(t)
                line.append(_ns(r.get("cpu_ns")) if r else "-")
            if len(head) > len(transports) + 1:
                a, b = cell.get("native"), cell.get("zmq")
                ca = float(a.get("cpu_ns") or "nan") if a else math.nan
                cb = float(b.get("cpu_ns") or "nan") if b else math.nan
                ok = ca > 0 and math.isfinite(ca) and math.isfinite(cb)
                line.append(f"{cb / ca:.1f}x" if ok else "-")
            table.append(line)
        _put_table(out, table, markdown)
    for what, why in report["skipped"].items():
        out.append(f"skipped: {what}: {why}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line of a child process (see child_main)."""
    return child_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
