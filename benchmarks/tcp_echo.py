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

The parts: ``tcp_echo_servers.py`` (the servers), ``tcp_echo_clients.py``
(load generator and held-open client), ``tcp_echo_report.py`` (summary and
tables), on the process harness of ``fastipc.bench``; this file runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

try:
    import fastipc  # noqa: F401 - installed, or on PYTHONPATH
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from tcp_echo_clients import hold, hold_child, load_child, measure
from tcp_echo_report import format_markdown, print_profile, summarise
from tcp_echo_servers import SERVERS, Server, server_child

from fastipc.bench.machine import loadavg, settle_cpu


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
        "loadavg_start": loadavg(),
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
                    waited, busy = settle_cpu(args.settle)
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
            print_profile(profiles[kind], kind)

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
    report["loadavg_end"] = loadavg()
    summarise(report)
    return report


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] == "--child-server":
        server_child(args_in[1], int(args_in[2]), int(args_in[3]), args_in[4])
        return 0
    if args_in and args_in[0] == "--child-load":
        p = args_in[1:]
        res = load_child(int(p[0]), p[1], int(p[2]), int(p[3]), float(p[4]), float(p[5]), int(p[6]))
        print(json.dumps(res))
        return 0
    if args_in and args_in[0] == "--child-hold":
        p = args_in[1:]
        print(json.dumps(hold_child(int(p[0]), int(p[1]), int(p[2]), float(p[3]))))
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
