#!/usr/bin/env python3
"""TCP echo: requests/s of fastipc.serve against an asyncio streams echo server, and 1,000 clients held open.

Servers, each in its own process on 127.0.0.1 (port 0; the child reports the port):

``fastipc-raw``     ``fastipc.serve("tcp://127.0.0.1:0", lambda m, p: m, framing="raw")``
``fastipc-length``  the same with ``framing="length"`` (8-byte header ``<II`` len, flags + payload)
``asyncio``         ``asyncio.start_server``; per connection ``reader.read(65536)`` ->
                    ``writer.write`` -> ``await writer.drain()`` (the stock event loop:
                    uvloop is not used even when installed)

Throughput: a load generator in its own process (``--load-procs 2`` splits the
clients over two) drives ``--clients`` connections in a closed loop with
``select.epoll`` and non-blocking sockets (no asyncio, so the client costs the
same for every server): each connection sends one 64-byte request and waits
for the whole echo (64 bytes raw; 8 + 64 bytes length-framed, header
``<II`` (64, 0)) before it sends the next; every echo is compared with what
was sent. Requests completed during ``--duration`` seconds after a warm-up are
counted; per-request latency is the time from the send to the last byte of the
echo. The servers stay up for the whole run and are measured in turn, the
order rotating each repetition, so the fastipc/asyncio ratio is taken within
one repetition, seconds apart; the table shows medians over ``--repeat``
repetitions (smallest-largest in brackets). With two or more CPUs allowed the
servers are pinned to the last one and the load generator to the others
(``--no-pin``: leave placement to the scheduler). Each measurement also
records the server's CPU time (user and system; per request too), the
generator's, what the rest of the machine used (``/proc/stat``: other
processes, and steal: time the hypervisor gave the vCPUs to other guests),
all in % of one vCPU over the measured window.

Before the repetitions every server gets one unrecorded priming pass
(``--prime`` seconds of the same load): on this VM the first load a fresh
asyncio server process saw ran at about half the rate of every later one
(one request on each of 100 connections beforehand was enough to remove it).

Held open: a fresh fastipc server (raw framing) and, for reference, a fresh
asyncio server; one client process raises its RLIMIT_NOFILE soft limit if
needed, starts ``--hold`` non-blocking connects at once, waits until the
server process holds that many more file descriptors (it accepted them all),
then every connection sends one 64-byte request and all echoes are awaited
and checked; then a second such round. Reported: the times, the server's
VmRSS (``/proc/PID/status``) idle and with every connection open and answered,
its fds and threads. Both servers get ``backlog=max(128, hold)`` and fastipc
``max_clients=max(1024, hold + 64)``.

    python benchmarks/tcp_echo.py [--quick] [--clients 100] [--hold 1000] [--duration S]
                                  [--repeat N] [--load-procs 1|2] [--no-pin] [--settle S]
                                  [--json] [--profile DIR]

Default 7 x 2 s after 0.5 s warm-up (~1.5 min, more while it waits up to
``--settle`` seconds before each measurement for the machine to go idle);
``--quick`` 3 x 1 s after 0.3 s, no waiting (~25 s). ``--profile DIR`` runs every server under cProfile (so its
figures are not representative) and writes DIR/<server>.prof plus the top
functions by own time to stderr. Every child process is killed on the way
out (also on errors, Ctrl-C and SIGTERM) and dies with the parent
(PR_SET_PDEATHSIG); every wait has a timeout.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
try:
    import fastipc  # noqa: F401 - installed, or on PYTHONPATH
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, _SRC)

SERVERS = ("fastipc-raw", "fastipc-length", "asyncio")
FRAMING = {"fastipc-raw": "raw", "fastipc-length": "length", "asyncio": "raw"}
_HDR = struct.Struct("<II")
_MSG = 64
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PIN_ENV = "FASTIPC_TCP_ECHO_CPUS"


# ---------------------------------------------------------------------------
# helpers shared by the processes
# ---------------------------------------------------------------------------


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits; pin it if asked."""
    cpus = os.environ.get(_PIN_ENV, "")
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds, all threads, used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def _host_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine so far (/proc/stat, all vCPUs summed), by kind."""
    with open("/proc/stat") as f:
        v = [int(x) / _CLK_TCK for x in f.readline().split()[1:9]]
    return {
        "user": v[0] + v[1],
        "sys": v[2],
        "softirq": v[5] + v[6],  # irq + softirq
        "idle": v[3] + v[4],
        "steal": v[7],
    }


def _wait_idle(settle: float) -> tuple[float, float]:
    """Wait up to ``settle`` s for a quarter-second in which the machine is nearly idle.

    Returns (seconds waited, busy % of one vCPU in the last quarter-second).
    """
    t0 = time.monotonic()
    while True:
        a = _host_cpu()
        time.sleep(0.25)
        b = _host_cpu()
        busy = sum(b[k] - a[k] for k in ("user", "sys", "softirq")) / 0.25 * 100
        waited = time.monotonic() - t0
        if busy < 15 or waited >= settle:
            return waited, busy


def _proc_cpu_now(pid: int) -> int:
    """The CPU process ``pid`` last ran on."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB), Threads and the number of open fds of process ``pid``."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def _loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _request(i: int, framing: str) -> bytes:
    """Connection ``i``'s request, which is also the exact echo it expects."""
    payload = (b"%07d:" % i).ljust(_MSG, b"e")
    return _HDR.pack(len(payload), 0) + payload if framing == "length" else payload


def _readline(stream: Any, timeout: float, what: str) -> str:
    """One line from a child's stdout pipe, or RuntimeError after ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{what}: no answer within {timeout:g} s")
    line: str = stream.readline()
    if not line:
        raise RuntimeError(f"{what}: exited without answering")
    return line


# ---------------------------------------------------------------------------
# server processes
# ---------------------------------------------------------------------------


def _server_child(kind: str, backlog: int, max_clients: int, profile: str) -> None:
    """Serve echo on 127.0.0.1:0, print {"port": N} and serve until SIGTERM."""
    _die_with_parent(signal.SIGTERM)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()

    def announce(port: int) -> None:
        print(json.dumps({"port": port}), flush=True)

    if kind == "asyncio":
        import asyncio

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        async def main() -> None:
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=backlog)
            loop = asyncio.get_running_loop()
            stop = loop.create_future()
            loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
            loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
            announce(srv.sockets[0].getsockname()[1])
            async with srv:
                await stop

        if prof is not None:
            prof.enable()
        asyncio.run(main())
    else:
        import fastipc

        srv = fastipc.serve(  # type: ignore[attr-defined]
            "tcp://127.0.0.1:0",
            lambda m, p: m,
            framing=FRAMING[kind],
            backlog=backlog,
            max_clients=max_clients,
        )
        try:
            announce(int(srv.address.rsplit(":", 1)[1]))
            if prof is not None:
                prof.enable()
            srv.serve_forever()  # returns on SIGTERM / SIGINT in the main thread
        finally:
            if prof is not None:
                prof.disable()
            srv.close()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)


class Server:
    """One echo server in its own process."""

    def __init__(
        self, kind: str, backlog: int, max_clients: int, profile: str = "", cpus: str = ""
    ) -> None:
        self.kind = kind
        self.profile = profile
        self.errlog = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--child-server",
                kind,
                str(backlog),
                str(max_clients),
                profile,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            env=_child_env(cpus),
            text=True,
        )
        self.pid = self.proc.pid
        try:
            line = _readline(self.proc.stdout, 30.0, f"{kind} server")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}{self.stderr_tail()}") from None
        self.port = int(json.loads(line)["port"])

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.kind} server exited with {self.proc.returncode}{self.stderr_tail()}"
            )

    def stderr_tail(self) -> str:
        self.errlog.seek(0)
        tail = self.errlog.read().strip().splitlines()[-8:]
        return (":\n    " + "\n    ".join(tail)) if tail else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; always reaps the process."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.errlog.close()


def _child_env(cpus: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env[_PIN_ENV] = cpus
    import fastipc

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastipc.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------------------
# the load generator (closed loop, epoll, one process per share of clients)
# ---------------------------------------------------------------------------


def _load_child(
    port: int, framing: str, first: int, clients: int, warmup: float, duration: float, spid: int
) -> dict[str, Any]:
    """Connect, print "ready", read the start time (monotonic) from stdin, measure, return."""
    _die_with_parent()
    socks = {}
    reqs = {}
    for i in range(first, first + clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = s
        reqs[s.fileno()] = _request(i, framing)
    print("ready", flush=True)
    start_at = float(_readline(sys.stdin, 60.0, "start time"))
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)

    ep = select.epoll()
    recv = {}
    send = {}
    for fd, s in socks.items():
        ep.register(fd, select.EPOLLIN)
        recv[fd] = s.recv
        send[fd] = s.send
    partial: dict[int, bytes] = {}
    sent_at = {}
    now = time.perf_counter()
    t_meas = now + warmup
    t_end = t_meas + duration
    for fd in socks:
        sent_at[fd] = time.perf_counter()
        if send[fd](reqs[fd]) != len(reqs[fd]):
            raise RuntimeError("short send of a request")
    hist: dict[int, int] = {}  # latency in microseconds -> count
    count = 0
    measuring = False
    cpu0 = 0.0
    scpu0 = (0.0, 0.0)
    host0 = _host_cpu()
    last_progress = now
    next_sample = t_end + 1.0
    samples = apart = 0
    me = os.getpid()
    poll = ep.poll
    perf = time.perf_counter
    while True:
        events = poll(1.0)
        now = perf()
        if not events and now - last_progress > 10.0:
            raise RuntimeError(f"no echo for 10 s ({len(socks)} connections waiting)")
        if not measuring and now >= t_meas:
            measuring = True
            t_meas = now
            cpu0 = _self_cpu()
            scpu0 = _proc_cpu(spid)
            host0 = _host_cpu()
            count = 0
            hist.clear()
            next_sample = now
        if now >= next_sample:  # which vCPUs the two sides are on (every 20 ms)
            next_sample = now + 0.02
            samples += 1
            apart += _proc_cpu_now(me) != _proc_cpu_now(spid)
        for fd, _ev in events:
            data = recv[fd](65536)
            req = reqs[fd]
            if data != req:
                if not data:
                    raise RuntimeError("the server closed a connection")
                data = partial.pop(fd, b"") + data
                if len(data) < len(req):
                    partial[fd] = data
                    continue
                if data != req:
                    raise RuntimeError(f"wrong echo: sent {req[:16]!r}..., got {data[:16]!r}...")
            t = perf()
            us = int((t - sent_at[fd]) * 1e6)
            hist[us] = hist.get(us, 0) + 1
            count += 1
            sent_at[fd] = t
            send[fd](req)
        if events:
            last_progress = now
        if now >= t_end:
            break
    window = now - t_meas
    cpu = _self_cpu() - cpu0
    scpu1 = _proc_cpu(spid)
    host1 = _host_cpu()
    ep.close()
    for s in socks.values():
        s.close()
    return {
        "count": count,
        "window": window,
        "client_cpu": cpu,
        "server_user": scpu1[0] - scpu0[0],
        "server_sys": scpu1[1] - scpu0[1],
        "apart": apart / samples if samples else float("nan"),
        "host": {k: host1[k] - host0[k] for k in host0},
        "hist": hist,
    }


def _percentile(hist: dict[int, int], q: float) -> float:
    total = sum(hist.values())
    rank = q * (total - 1)
    seen = 0
    for us in sorted(hist):
        seen += hist[us]
        if seen > rank:
            return float(us)
    return float("nan")


def measure(
    server: Server, clients: int, procs: int, warmup: float, duration: float, cpus: str = ""
) -> dict[str, Any]:
    """One repetition against ``server``: requests/s, p50/p99 latency, CPU of both sides."""
    server.check()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = []
    try:
        first = 0
        for share in shares:
            children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        os.path.abspath(__file__),
                        "--child-load",
                        str(server.port),
                        FRAMING[server.kind],
                        str(first),
                        str(share),
                        str(warmup),
                        str(duration),
                        str(server.pid),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=_child_env(cpus),
                    text=True,
                )
            )
            first += share
        for c in children:
            _readline(c.stdout, 30.0, "load generator (connect)")
        start_at = time.monotonic() + 0.05
        for c in children:
            assert c.stdin is not None
            c.stdin.write(f"{start_at!r}\n")
            c.stdin.flush()
        results = []
        for c in children:
            try:
                out, err = c.communicate(timeout=warmup + duration + 60.0)
            except subprocess.TimeoutExpired:
                raise RuntimeError("load generator did not finish in time") from None
            if c.returncode != 0:
                raise RuntimeError(
                    f"load generator failed: {err.strip().splitlines()[-1:]}{server.stderr_tail()}"
                )
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
            c.wait(10.0)
    hist: dict[int, int] = {}
    for r in results:
        for us, n in r["hist"].items():
            hist[int(us)] = hist.get(int(us), 0) + n
    window = statistics.mean(r["window"] for r in results)
    out: dict[str, Any] = {
        "rps": sum(r["count"] / r["window"] for r in results),
        "p50_us": _percentile(hist, 0.50),
        "p99_us": _percentile(hist, 0.99),
        "server_cpu_pct": 100 * max(r["server_user"] + r["server_sys"] for r in results) / window,
        "server_user_pct": 100 * max(r["server_user"] for r in results) / window,
        "client_cpu_pct": 100 * sum(r["client_cpu"] for r in results) / window,
        "apart_pct": 100 * statistics.mean(r["apart"] for r in results),
        "host_pct": {k: 100 * v / window for k, v in results[0]["host"].items()},
        "requests": sum(r["count"] for r in results),
    }
    host = out["host_pct"]
    # CPU the machine spent on neither the server nor the load generator
    out["other_pct"] = max(
        0.0,
        host["user"]
        + host["sys"]
        + host["softirq"]
        - out["server_cpu_pct"]
        - out["client_cpu_pct"],
    )
    # server CPU per request (user + system), microseconds: less sensitive to steal than req/s
    rps = out["rps"] or float("nan")
    out["server_us_per_req"] = out["server_cpu_pct"] / 100 / rps * 1e6
    out["server_user_us_per_req"] = out["server_user_pct"] / 100 / rps * 1e6
    return out


# ---------------------------------------------------------------------------
# many connections held open
# ---------------------------------------------------------------------------


def _raise_nofile(need: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} < {need} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _hold_child(port: int, n: int, spid: int, timeout: float) -> dict[str, Any]:
    """Open ``n`` connections at once, wait until all accepted, two rounds of one request each."""
    _die_with_parent()
    soft_before, soft = _raise_nofile(n + 64)
    out: dict[str, Any] = {"nofile_soft_before": soft_before, "nofile_soft": soft}
    idle = _proc_status(spid)
    out["idle"] = idle
    ep = select.epoll(n + 1)
    socks = {}
    reqs = {}
    t0 = time.perf_counter()
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, f"connect #{i}: {os.strerror(rc)}")
            socks[s.fileno()] = s
            reqs[s.fileno()] = _request(i, "raw")
            ep.register(s.fileno(), select.EPOLLOUT)
        pending = set(socks)
        deadline = time.perf_counter() + timeout
        while pending:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(
                    f"{len(pending)} of {n} connects still pending after {timeout} s"
                )
            for fd, _ev in ep.poll(min(left, 1.0)):
                if fd in pending:
                    err = socks[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"connect: {os.strerror(err)}")
                    pending.discard(fd)
                    ep.modify(fd, select.EPOLLIN)
        out["connect_s"] = time.perf_counter() - t0
        # the kernel completes handshakes on its own; the server has taken a
        # connection when it holds its fd
        want = idle["fds"] + n
        while True:
            st = _proc_status(spid)
            if st["fds"] >= want:
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"the server accepted {st['fds'] - idle['fds']} of {n} connections "
                    f"within {timeout} s"
                )
            time.sleep(0.005)
        out["accepted_s"] = time.perf_counter() - t0
        out["held"] = st
        for rnd in (1, 2):
            got: dict[int, bytes] = {}
            t1 = time.perf_counter()
            for fd, s in socks.items():
                s.send(reqs[fd])
            waiting = set(socks)
            deadline = t1 + timeout
            while waiting:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise RuntimeError(
                        f"round {rnd}: {len(waiting)} of {n} connections got no echo "
                        f"within {timeout} s"
                    )
                for fd, _ev in ep.poll(min(left, 1.0)):
                    data = socks[fd].recv(65536)
                    if not data:
                        raise RuntimeError(f"round {rnd}: the server closed a connection")
                    got[fd] = got.get(fd, b"") + data
                    if len(got[fd]) >= len(reqs[fd]):
                        if got[fd] != reqs[fd]:
                            raise RuntimeError(f"round {rnd}: wrong echo {got[fd][:16]!r}")
                        waiting.discard(fd)
            out[f"round{rnd}_s"] = time.perf_counter() - t1
            out["answered"] = n - len(waiting)
        out["after"] = _proc_status(spid)
    finally:
        for s in socks.values():
            s.close()
        ep.close()
    return out


def hold(server: Server, n: int, timeout: float, cpus: str = "") -> dict[str, Any]:
    server.check()
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--child-hold",
            str(server.port),
            str(n),
            str(server.pid),
            str(timeout),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(cpus),
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=3 * timeout + 30.0)
    except subprocess.TimeoutExpired:
        raise RuntimeError("hold client did not finish in time") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10.0)
    if proc.returncode != 0:
        raise RuntimeError(f"hold client failed: {err.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    time.sleep(0.3)  # the server sees the closes
    server.check()
    result["closed"] = _proc_status(server.pid)
    return result


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def _print_profile(path: str, kind: str, top: int = 18) -> None:
    import io
    import pstats

    if not os.path.exists(path):
        print(f"{kind}: no profile written ({path})", file=sys.stderr)
        return
    buf = io.StringIO()
    pstats.Stats(path, stream=buf).sort_stats("tottime").print_stats(top)
    print(f"\n--- cProfile of the {kind} server, top {top} by own time ---", file=sys.stderr)
    print(buf.getvalue(), file=sys.stderr)


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    kinds = list(SERVERS)
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_full": sys.version,
        "executable": sys.executable,
        "cpus": os.cpu_count(),
        "clients": args.clients,
        "load_procs": args.load_procs,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "prime": args.prime,
        "settle": args.settle,
        "hold_n": args.hold,
        "loadavg_start": _loadavg(),
        "reps": {k: [] for k in kinds},
        "errors": {},
    }
    allowed = sorted(os.sched_getaffinity(0))
    scpus = ccpus = ""
    if args.pin and len(allowed) >= 2:
        scpus = str(allowed[-1])
        ccpus = ",".join(str(c) for c in allowed[:-1])
    report["pin"] = {"server": scpus, "client": ccpus}
    backlog = max(128, args.hold)
    max_clients = max(1024, args.hold + 64, args.clients + 64)
    servers: dict[str, Server] = {}
    profiles = {}
    try:
        for kind in kinds:
            prof = os.path.join(args.profile, f"{kind}.prof") if args.profile else ""
            profiles[kind] = prof
            try:
                servers[kind] = Server(kind, backlog, max_clients, prof, scpus)
            except (RuntimeError, OSError, ValueError) as exc:
                report["errors"][kind] = str(exc)
                log(f"{kind}: cannot start: {exc}")
        for kind in kinds:  # priming pass, not recorded (see the module docstring)
            if kind in servers and args.prime > 0:
                try:
                    r = measure(
                        servers[kind], args.clients, args.load_procs, 0.0, args.prime, ccpus
                    )
                    log(f"prime {kind:<15} {r['rps']:>9.0f} req/s (not recorded)")
                except (RuntimeError, OSError, ValueError) as exc:
                    report["errors"][kind] = str(exc)
                    log(f"{kind}: error: {exc}")
        for rep in range(args.repeat):
            order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
            for kind in order:
                if kind not in servers or kind in report["errors"]:
                    continue
                if args.settle > 0:
                    waited, busy = _wait_idle(args.settle)
                    if waited > 0.5:
                        log(f"waited {waited:.1f} s for the machine to go idle (busy {busy:.0f} %)")
                try:
                    r = measure(
                        servers[kind],
                        args.clients,
                        args.load_procs,
                        args.warmup,
                        args.duration,
                        ccpus,
                    )
                except (RuntimeError, OSError, ValueError) as exc:
                    report["errors"][kind] = str(exc)
                    log(f"{kind}: error: {exc}")
                    continue
                report["reps"][kind].append(r)
                log(
                    f"rep {rep + 1}/{args.repeat} {kind:<15} {r['rps']:>9.0f} req/s  "
                    f"p50 {r['p50_us']:.0f} us  p99 {r['p99_us']:.0f} us  "
                    f"server CPU {r['server_cpu_pct']:.0f} % ({r['server_us_per_req']:.1f} us/req, "
                    f"user {r['server_user_us_per_req']:.1f})  client CPU {r['client_cpu_pct']:.0f} %"
                    f"  apart {r['apart_pct']:.0f} %  other {r['other_pct']:.0f} %  machine "
                    + " ".join(f"{k} {v:.0f}" for k, v in r["host_pct"].items())
                )
    finally:
        for s in servers.values():
            s.stop()
    if args.profile:
        for kind in kinds:
            _print_profile(profiles[kind], kind)

    report["hold"] = {}
    if args.hold > 0:
        for kind in ("fastipc-raw", "asyncio"):
            srv = None
            try:
                srv = Server(kind, backlog, max_clients, "", scpus)
                time.sleep(0.2)
                h = hold(srv, args.hold, args.hold_timeout, ccpus)
                report["hold"][kind] = h
                log(
                    f"hold {args.hold} {kind:<8} connect {h['connect_s']:.3f} s, accepted "
                    f"{h['accepted_s']:.3f} s, round 1 {h['round1_s']:.3f} s, round 2 "
                    f"{h['round2_s']:.3f} s, RSS {h['idle']['VmRSS'] / 1024:.1f} -> "
                    f"{h['after']['VmRSS'] / 1024:.1f} MiB, threads {h['after']['Threads']}"
                )
            except (RuntimeError, OSError, ValueError) as exc:
                report["hold"][kind] = {"error": str(exc)}
                log(f"hold {kind}: error: {exc}")
            finally:
                if srv is not None:
                    srv.stop()
    report["loadavg_end"] = _loadavg()
    _summarise(report)
    return report


def _summarise(report: dict[str, Any]) -> None:
    summary: dict[str, Any] = {}
    for kind, reps in report["reps"].items():
        if not reps:
            continue
        rps = [r["rps"] for r in reps]
        summary[kind] = {
            "rps": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50_us": statistics.median(r["p50_us"] for r in reps),
            "p99_us": statistics.median(r["p99_us"] for r in reps),
            "server_cpu_pct": statistics.median(r["server_cpu_pct"] for r in reps),
            "server_us_per_req": statistics.median(r["server_us_per_req"] for r in reps),
            "server_user_us_per_req": statistics.median(r["server_user_us_per_req"] for r in reps),
            "client_cpu_pct": statistics.median(r["client_cpu_pct"] for r in reps),
            "apart_pct": statistics.median(r["apart_pct"] for r in reps),
            "other_pct": statistics.median(r["other_pct"] for r in reps),
            "steal_pct": statistics.median(r["host_pct"]["steal"] for r in reps),
        }
        base = report["reps"].get("asyncio", [])
        if kind != "asyncio" and len(base) == len(reps):
            ratios = [a["rps"] / b["rps"] for a, b in zip(reps, base)]
            summary[kind]["ratio"] = statistics.median(ratios)
            summary[kind]["ratio_min"] = min(ratios)
            summary[kind]["ratio_max"] = max(ratios)
    report["summary"] = summary


def _oneline(text: str) -> str:
    """The first and last line of an error, for a table cell."""
    parts = [p.strip() for p in text.strip().splitlines() if p.strip()]
    return parts[0] if len(parts) < 2 else f"{parts[0]} ... {parts[-1]}"


def _k(x: float) -> str:
    return f"{x / 1000:.1f}k"


def format_markdown(report: dict[str, Any]) -> str:
    lines = [
        (
            f"Python {report['python']}, {report['cpus']} CPUs, {report['clients']} clients in "
            f"{report['load_procs']} load-generator process(es), {report['repeat']} x "
            f"{report['duration']:g} s after {report['warmup']:g} s warm-up; load average "
            f"{' '.join(report['loadavg_start'])} at the start, "
            f"{' '.join(report['loadavg_end'])} at the end; waiting up to "
            f"{report['settle']:g} s for an idle machine before each measurement; "
            + (
                f"server pinned to CPU {report['pin']['server']}, load generator to "
                f"CPU {report['pin']['client']}."
                if report["pin"]["server"]
                else "not pinned."
            )
        ),
        "",
        (
            "| server | framing | requests/s | fastipc/asyncio | p50 µs | p99 µs "
            "| server CPU | server CPU µs/request (user) | client CPU | other | steal |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in SERVERS:
        s = report["summary"].get(kind)
        if s is None:
            err = _oneline(report["errors"].get(kind, "not measured"))
            lines.append(f"| {kind} | {FRAMING[kind]} | error: {err} | | | | | | | | |")
            continue
        ratio = (
            f"{s['ratio']:.2f}x ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})" if "ratio" in s else ""
        )
        name = "asyncio streams" if kind == "asyncio" else "fastipc.serve"
        lines.append(
            f"| {name} | {FRAMING[kind]} | {_k(s['rps'])} ({_k(s['rps_min'])}-{_k(s['rps_max'])}) "
            f"| {ratio} | {s['p50_us']:.0f} | {s['p99_us']:.0f} | {s['server_cpu_pct']:.0f} % "
            f"| {s['server_us_per_req']:.1f} ({s['server_user_us_per_req']:.1f}) "
            f"| {s['client_cpu_pct']:.0f} % | {s['other_pct']:.0f} % | {s['steal_pct']:.0f} % |"
        )
    lines.append("")
    lines.append(
        "Cells: median over repetitions (smallest-largest); the ratio is taken per "
        "repetition; CPU: 100 % = one vCPU (user + system, softirq included); other: CPU "
        "the machine spent on neither side; steal: time the hypervisor gave the vCPUs to "
        "someone else; server CPU µs/request: its CPU time over the requests answered, in "
        "brackets the user-space part (the rest is the kernel)."
    )
    busy = [
        f"{kind} {i + 1}: {r['other_pct']:.0f} %"
        for kind, reps in report["reps"].items()
        for i, r in enumerate(reps)
        if r["other_pct"] > 25
    ]
    if busy:
        lines.append(
            f"Repetitions during which other work used more than 25 % of a vCPU: {', '.join(busy)}."
        )
    for kind, err in report["errors"].items():
        if kind in report["summary"]:
            lines.append(f"\n{kind}: a repetition failed: {_oneline(err)}")
    if report["hold"]:
        n = report["hold_n"]
        lines += [
            "",
            (
                f"| {n} connections held open | connect all | all accepted | round 1: "
                f"{n} requests | round 2 | server RSS idle | RSS held | per connection "
                "| server fds | threads |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, h in report["hold"].items():
            name = "asyncio streams" if kind == "asyncio" else "fastipc.serve (raw)"
            if "error" in h:
                lines.append(f"| {name} | error: {_oneline(h['error'])} | | | | | | | | |")
                continue
            rss0 = h["idle"]["VmRSS"]
            rss1 = h["after"]["VmRSS"]
            lines.append(
                f"| {name} | {h['connect_s'] * 1e3:.0f} ms | {h['accepted_s'] * 1e3:.0f} ms "
                f"| {h['round1_s'] * 1e3:.0f} ms ({h['answered']}/{n} answered) "
                f"| {h['round2_s'] * 1e3:.0f} ms | {rss0 / 1024:.1f} MiB | {rss1 / 1024:.1f} MiB "
                f"| {(rss1 - rss0) / n:.1f} KiB | {h['idle']['fds']} -> {h['after']['fds']} "
                f"-> {h['closed']['fds']} | {h['after']['Threads']} |"
            )
        h0 = next(iter(report["hold"].values()))
        if "nofile_soft" in h0:
            lines.append(
                f"\nClient RLIMIT_NOFILE soft limit: {h0['nofile_soft_before']}"
                + (
                    f" (raised to {h0['nofile_soft']})"
                    if h0["nofile_soft"] != h0["nofile_soft_before"]
                    else " (enough)"
                )
                + "; server fds: idle -> held -> 0.3 s after the client closed them all."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] == "--child-server":
        _server_child(args_in[1], int(args_in[2]), int(args_in[3]), args_in[4])
        return 0
    if args_in and args_in[0] == "--child-load":
        p = args_in[1:]
        res = _load_child(
            int(p[0]), p[1], int(p[2]), int(p[3]), float(p[4]), float(p[5]), int(p[6])
        )
        print(json.dumps(res))
        return 0
    if args_in and args_in[0] == "--child-hold":
        p = args_in[1:]
        print(json.dumps(_hold_child(int(p[0]), int(p[1]), int(p[2]), float(p[3]))))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 x 1 s (~25 s in all)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent connections (100)")
    parser.add_argument("--hold", type=int, default=1000, help="connections held open (1000)")
    parser.add_argument("--duration", type=float, help="seconds per measurement (2; quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up (0.5; quick 0.3)")
    parser.add_argument("--repeat", type=int, help="repetitions (7; quick 3)")
    parser.add_argument(
        "--load-procs", type=int, default=1, choices=[1, 2], help="load generator processes (1)"
    )
    parser.add_argument(
        "--hold-timeout", type=float, default=30.0, help="seconds per held-open step (30)"
    )
    parser.add_argument(
        "--prime", type=float, default=0.5, help="seconds of unrecorded load per server (0.5)"
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to the last allowed CPU and the clients to the others",
    )
    parser.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="before each measurement wait up to this long for the machine to be idle "
        "(default 10; quick 0)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--profile", metavar="DIR", help="run the servers under cProfile")
    args = parser.parse_args(args_in)
    args.duration = args.duration or (1.0 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    args.repeat = args.repeat or (3 if args.quick else 7)
    if args.settle is None:
        args.settle = 0.0 if args.quick else 10.0
    if args.clients < 1 or args.hold < 0 or args.repeat < 1 or args.duration <= 0:
        parser.error("--clients, --repeat and --duration must be positive, --hold >= 0")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        report = run(args, lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("tcp_echo: interrupted", file=sys.stderr)
        return 130
    if args.json:
        for reps in report["reps"].values():
            for r in reps:
                r.pop("hist", None)
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(format_markdown(report))
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
