"""The clients of ``tcp_echo.py``: the closed-loop load generator and the many-connections-held-open client.

Both run as child processes (``tcp_echo.py --child-load`` / ``--child-hold``);
:func:`measure` and :func:`hold` start them, hand them the server, and turn
what they report into the run's figures.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from tcp_echo_servers import FRAMING, SCRIPT, Server, child_setup, request, tcp_child_env

from fastipc.bench.harness import read_line, spawn, stop
from fastipc.bench.machine import cpu_times, host_cpu, last_cpu, proc_status, self_cpu

# The C load generator: the same closed loop as load_child, with no Python in
# the client, so that the server (not the client) is what limits requests/s.
# It prints "ready" once connected, reads the start time (CLOCK_MONOTONIC,
# which is time.monotonic()) from stdin, and ends with the same JSON as
# load_child less the server and machine CPU, which measure() samples itself.
# Blocking sockets are enough: each has at most one 64 (+8) byte request in
# flight, so a send never waits, and epoll says when a recv has data.
C_LOAD = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 64
#define HDR 8
#define MAX_US 1000000 /* latencies of a second or more share the last bucket */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
        + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, errno ? strerror(errno) : "failed");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: load PORT raw|length FIRST CLIENTS WARMUP DURATION\n");
        return 2;
    }
    int port = atoi(argv[1]), length = strcmp(argv[2], "length") == 0;
    int first = atoi(argv[3]), n = atoi(argv[4]), one = 1;
    double warmup = atof(argv[5]), duration = atof(argv[6]);
    size_t reqlen = MSG + (length ? HDR : 0);
    int *fds = calloc((size_t)n, sizeof *fds);
    size_t *got = calloc((size_t)n, sizeof *got);
    double *sent_at = calloc((size_t)n, sizeof *sent_at);
    char *reqs = calloc((size_t)n, reqlen), *bufs = calloc((size_t)n, reqlen);
    uint32_t *hist = calloc(MAX_US + 1, sizeof *hist);
    struct epoll_event *evs = calloc(256, sizeof *evs);
    if (!fds || !got || !sent_at || !reqs || !bufs || !hist || !evs) return fail("calloc");
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) return fail("epoll_create1");
    for (int i = 0; i < n; i++) {
        /* the same request as tcp_echo_servers.request(first + i, framing) */
        char *r = reqs + (size_t)i * reqlen, *p = r;
        if (length) {
            uint32_t h[2] = {MSG, 0}; /* <II: little-endian on every Linux this runs on */
            memcpy(p, h, HDR);
            p += HDR;
        }
        memset(p, 'e', MSG);
        char head[16];
        int k = snprintf(head, sizeof head, "%07d:", first + i);
        memcpy(p, head, (size_t)k);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return fail("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) return fail("connect");
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) return fail("epoll_ctl");
        fds[i] = fd;
    }
    printf("ready\n");
    fflush(stdout);
    double start_at;
    if (scanf("%lf", &start_at) != 1) return fail("start time from stdin");
    double delay = start_at - now_s();
    if (delay > 0) {
        struct timespec ts = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
        nanosleep(&ts, NULL);
    }
    double t = now_s(), t_meas = t + warmup, t_end = t_meas + duration, last_progress = t;
    double cpu0 = 0;
    long count = 0;
    int measuring = 0;
    for (int i = 0; i < n; i++) {
        sent_at[i] = now_s();
        if (send(fds[i], reqs + (size_t)i * reqlen, reqlen, MSG_NOSIGNAL) != (ssize_t)reqlen)
            return fail("send of a request");
    }
    for (;;) {
        int ne = epoll_wait(ep, evs, 256, 1000);
        if (ne < 0) {
            if (errno == EINTR) continue;
            return fail("epoll_wait");
        }
        t = now_s();
        if (ne == 0 && t - last_progress > 10.0) {
            fprintf(stderr, "no echo for 10 s (%d connections waiting)\n", n);
            return 1;
        }
        if (!measuring && t >= t_meas) {
            measuring = 1;
            t_meas = t;
            cpu0 = cpu_s();
            count = 0;
            memset(hist, 0, (MAX_US + 1) * sizeof *hist);
        }
        for (int e = 0; e < ne; e++) {
            int i = (int)evs[e].data.u32;
            char *buf = bufs + (size_t)i * reqlen, *req = reqs + (size_t)i * reqlen;
            ssize_t r = recv(fds[i], buf + got[i], reqlen - got[i], 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                return fail("recv");
            }
            if (r == 0) {
                fprintf(stderr, "the server closed a connection\n");
                return 1;
            }
            got[i] += (size_t)r;
            if (got[i] < reqlen) continue;
            if (memcmp(buf, req, reqlen)) {
                fprintf(stderr, "wrong echo on connection %d\n", first + i);
                return 1;
            }
            got[i] = 0;
            double done = now_s();
            long us = (long)((done - sent_at[i]) * 1e6);
            hist[us > MAX_US ? MAX_US : us]++;
            count++;
            sent_at[i] = done;
            if (send(fds[i], req, reqlen, MSG_NOSIGNAL) != (ssize_t)reqlen)
                return fail("send of a request");
        }
        if (ne > 0) last_progress = t;
        if (t >= t_end) break;
    }
    double cpu = cpu_s() - cpu0;
    printf("{\"count\": %ld, \"window\": %.6f, \"client_cpu\": %.6f, \"hist\": {", count, t - t_meas, cpu);
    const char *sep = "";
    for (long us = 0; us <= MAX_US; us++)
        if (hist[us]) {
            printf("%s\"%ld\": %u", sep, us, hist[us]);
            sep = ", ";
        }
    printf("}}\n");
    for (int i = 0; i < n; i++) close(fds[i]);
    return 0;
}
"""

# ---------------------------------------------------------------------------
# the load generator (closed loop, epoll, one process per share of clients)
# ---------------------------------------------------------------------------


def load_child(
    port: int, framing: str, first: int, clients: int, warmup: float, duration: float, spid: int
) -> dict[str, Any]:
    """Connect, print "ready", read the start time (monotonic) from stdin, measure, return."""
    child_setup()
    socks = {}
    reqs = {}
    for i in range(first, first + clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = s
        reqs[s.fileno()] = request(i, framing)
    print("ready", flush=True)
    start_at = float(read_line(sys.stdin, 60.0, "start time"))
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
    host0 = host_cpu()
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
            cpu0 = self_cpu()
            scpu0 = cpu_times(spid)
            host0 = host_cpu()
            count = 0
            hist.clear()
            next_sample = now
        if now >= next_sample:  # which vCPUs the two sides are on (every 20 ms)
            next_sample = now + 0.02
            samples += 1
            apart += last_cpu(me) != last_cpu(spid)
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
    cpu = self_cpu() - cpu0
    scpu1 = cpu_times(spid)
    host1 = host_cpu()
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
    server: Server,
    clients: int,
    procs: int,
    warmup: float,
    duration: float,
    cpus: str = "",
    exe: str = "",
) -> dict[str, Any]:
    """One repetition against ``server``: requests/s, p50/p99 latency, CPU of both sides.

    ``exe``: the C load generator's build (else the Python one, :func:`load_child`).
    """
    server.check()
    procs = min(procs, clients)
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = []
    try:
        first = 0
        for share in shares:
            common = [str(server.port), FRAMING[server.kind], str(first), str(share)]
            argv = (
                [SCRIPT, "--child-cload", exe, *common, str(warmup), str(duration)]
                if exe
                else [SCRIPT, "--child-load", *common, str(warmup), str(duration), str(server.pid)]
            )
            children.append(spawn(argv, tcp_child_env(cpus), stdin=subprocess.PIPE))
            first += share
        for c in children:
            read_line(c.stdout, 30.0, "load generator (connect)")
        start_at = time.monotonic() + 0.05
        for c in children:
            assert c.stdin is not None
            c.stdin.write(f"{start_at!r}\n")
            c.stdin.flush()
        sampled = None
        if exe:  # the C generator leaves the server's and the machine's CPU to this process
            time.sleep(max(0.0, start_at + warmup - time.monotonic()))
            s0, h0 = cpu_times(server.pid), host_cpu()
            time.sleep(max(0.0, start_at + warmup + duration - time.monotonic()))
            s1, h1 = cpu_times(server.pid), host_cpu()
            sampled = {
                "server_user": s1[0] - s0[0],
                "server_sys": s1[1] - s0[1],
                "apart": float("nan"),
                "host": {k: h1[k] - h0[k] for k in h0},
            }
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
            res = json.loads(out.strip().splitlines()[-1])
            if sampled is not None:
                res.update(sampled)
            results.append(res)
    finally:
        stop(children, signal.SIGKILL, grace=10.0)
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
        "apart_pct": (
            100 * statistics.mean(r["apart"] for r in results)
            if all(r["apart"] == r["apart"] for r in results)  # the C generator does not sample it
            else None
        ),
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


def hold_child(port: int, n: int, spid: int, timeout: float, framing: str) -> dict[str, Any]:
    """Open ``n`` connections at once, wait until all accepted, two rounds of one request each."""
    child_setup()
    soft_before, soft = _raise_nofile(n + 64)
    out: dict[str, Any] = {"nofile_soft_before": soft_before, "nofile_soft": soft}
    idle = proc_status(spid)
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
            reqs[s.fileno()] = request(i, framing)
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
            st = proc_status(spid)
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
        out["after"] = proc_status(spid)
    finally:
        for s in socks.values():
            s.close()
        ep.close()
    return out


def hold(server: Server, n: int, timeout: float, cpus: str = "") -> dict[str, Any]:
    """Hold ``n`` connections open on ``server`` (see :func:`hold_child`); its memory, fds and times."""
    server.check()
    proc = spawn(
        [
            SCRIPT,
            "--child-hold",
            str(server.port),
            str(n),
            str(server.pid),
            str(timeout),
            FRAMING[server.kind],
        ],
        tcp_child_env(cpus),
    )
    try:
        out, err = proc.communicate(timeout=3 * timeout + 30.0)
    except subprocess.TimeoutExpired:
        raise RuntimeError("hold client did not finish in time") from None
    finally:
        stop([proc], signal.SIGKILL, grace=10.0)
    if proc.returncode != 0:
        raise RuntimeError(f"hold client failed: {err.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    time.sleep(0.3)  # the server sees the closes
    server.check()
    result["closed"] = proc_status(server.pid)
    # VmRSS is in KiB; what the process holds per connection, in bytes
    result["bytes_per_client"] = (result["after"]["VmRSS"] - result["idle"]["VmRSS"]) * 1024 / n
    return result
