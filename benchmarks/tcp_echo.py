#!/usr/bin/env python3
"""TCP echo: fastipc.serve against asyncio streams, asyncio Protocol (stock loop and uvloop), a plain selectors loop and a C epoll loop.

Servers, each in its own process on 127.0.0.1 (port 0; the child reports the port):

``fastipc-raw``       ``fastipc.serve("tcp://127.0.0.1:0", lambda m, p: m, framing="raw")``
``fastipc-length``    the same with ``framing="length"`` (8-byte header ``<II`` len, flags + payload)
``asyncio-streams``   ``asyncio.start_server``; per connection ``reader.read(65536)`` ->
                      ``writer.write`` -> ``await writer.drain()`` (stock event loop)
``asyncio-protocol``  ``loop.create_server`` with a Protocol whose ``data_received``
                      calls ``transport.write`` (stock event loop)
``uvloop-protocol``   the same Protocol on uvloop (``uvloop.run``; skipped, with the
                      reason, when uvloop is not installed: ``pip install 'fastipc[aio]'``)
``selectors``         a hand-written loop: ``selectors.DefaultSelector``, non-blocking
                      sockets, ``recv(65536)`` then ``send``, the rest queued until writable
``c-epoll``           the machine's own limit: a C epoll loop (``recv`` then ``send``),
                      compiled at run time with ``cc``; skipped when there is none

Throughput: a load generator in its own process drives N connections in a
closed loop with epoll, the same for every server: by default a small C
program compiled at run time (``--client python``: the same loop in Python
with ``select.epoll``, where ``--load-procs 2`` splits the clients over two
processes; the Python one costs about as much CPU per request as the server
it drives, so it, not the server, limits requests/s). Each connection sends
one 64-byte request and waits for the whole
echo (64 bytes raw; 8 + 64 bytes length-framed) before it sends the next;
every echo is compared with what was sent. Requests completed during
``--duration`` seconds after ``--warmup`` are counted; per-request latency is
the time from the send to the last byte of the echo. Every server is measured
at every client count (``--clients 1,100,1000``): the servers stay up for the
whole run, and within each repetition and client count they are measured in
turn, the order rotating from one to the next, so the ratios compare
measurements seconds apart; each cell is the median over ``--repeat``
repetitions with the smallest and largest. With two or more CPUs allowed the
servers are pinned to the last one and the load generator to the others
(``--no-pin``: leave placement to the scheduler). Each measurement records
the server's CPU time (user + system, from /proc/PID/stat) and so its CPU per
request in µs, the generator's CPU, and what the rest of the machine used
(/proc/stat: other processes, and steal: time the hypervisor gave the vCPUs
to other guests). Before the repetitions every server gets one unrecorded
priming pass at each client count (``--prime`` seconds): on this VM the first
load a fresh asyncio server process saw ran at about half the rate of every
later one.

Memory per idle client: for every server, ``--hold-repeat`` times, a fresh
server process; one client process raises its RLIMIT_NOFILE soft limit if
needed, starts ``--hold`` non-blocking connects at once, waits until the
server holds that many more file descriptors (it accepted them all), then
every connection sends one 64-byte request and all echoes are awaited and
checked; then a second round. Bytes per idle client = (VmRSS with every
connection open and answered - VmRSS before the first connect) / ``--hold``:
what the server's process keeps per connection in user space (the kernel's
socket buffers are not in anyone's RSS).

    python benchmarks/tcp_echo.py [--quick] [--clients 1,100,1000] [--servers K,K,...]
                                  [--repeat N] [--duration S] [--warmup S] [--prime S]
                                  [--hold 1000] [--hold-repeat N] [--client c|python]
                                  [--load-procs 1|2]
                                  [--no-pin] [--settle S] [--markdown] [--json FILE]
                                  [--profile DIR]

The report: one table per figure and client count (requests/s, p50 and p99
latency, server CPU per request) and one for bytes per idle client, each row
with its ratio to fastipc raw framing, to the best of the other Python
servers and, for the throughput and latency figures, to the best repetition
of the C server. Default 5 repetitions x 2 s after 0.5 s warm-up, waiting up
to 2 s before each measurement for the machine to go idle (about 8 minutes);
``--quick``: 3 x 1 s after 0.3 s, no waiting. ``--json FILE`` also writes the
whole report (``-``: to stdout instead of the tables). ``--profile DIR`` runs
every Python server under cProfile (so its figures are not representative)
and writes DIR/<server>.prof plus the top functions by own time to stderr.
Every child process is killed on the way out (also on errors, Ctrl-C and
SIGTERM) and dies with the parent (PR_SET_PDEATHSIG); every wait has a
timeout.

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
    import fastipc
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import fastipc

from tcp_echo_clients import C_LOAD, hold, hold_child, load_child, measure
from tcp_echo_report import format_report, print_profile, summarise
from tcp_echo_servers import (
    C_SERVER,
    MACHINE,
    SERVERS,
    CPrograms,
    Server,
    child_setup,
    server_child,
)

from fastipc.bench.machine import loadavg, machine_info, settle_cpu


def _versions() -> dict[str, str]:
    out = {"fastipc": fastipc.__version__, "backend": str(getattr(fastipc, "BACKEND", "?"))}
    try:
        import uvloop

        out["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    return out


def _rotate(kinds: list[str], k: int) -> list[str]:
    k %= len(kinds)
    return kinds[k:] + kinds[:k]


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    kinds = list(args.servers)
    t_start = time.monotonic()
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_info(),
        "versions": _versions(),
        "python_full": sys.version,
        "executable": sys.executable,
        "argv": sys.argv[1:],
        "servers": list(kinds),  # every server asked for, skipped ones included
        "counts": args.clients,
        "load_procs": args.load_procs,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "prime": args.prime,
        "settle": args.settle,
        "hold_n": args.hold,
        "hold_repeat": args.hold_repeat,
        "loadavg_start": loadavg(),
        "reps": {str(n): {k: [] for k in kinds} for n in args.clients},
        "hold": {k: [] for k in kinds},
        "errors": {},
        "skipped": {},
    }
    errors = report["errors"]

    def failed(key: str, exc: BaseException) -> None:
        errors[key] = str(exc)
        log(f"{key}: error: {exc}")

    if "uvloop-protocol" in kinds:
        try:
            import uvloop  # noqa: F401
        except ImportError as exc:
            report["skipped"]["uvloop-protocol"] = f"uvloop is not installed ({exc})"
            kinds.remove("uvloop-protocol")
    sources = {}
    if MACHINE in kinds:
        sources["echo"] = C_SERVER
    if args.client == "c":
        sources["load"] = C_LOAD
    cprogs = CPrograms(sources)
    if MACHINE in kinds and "echo" not in cprogs.exe:
        report["skipped"][MACHINE] = cprogs.why["echo"]
        kinds.remove(MACHINE)
    for kind, why in report["skipped"].items():
        log(f"{kind}: skipped: {why}")
    exe = cprogs.exe.get("echo", "")
    load_exe = cprogs.exe.get("load", "")
    report["client"] = "c" if load_exe else "python"
    if args.client == "c" and not load_exe:
        report["client_note"] = (
            f"the C load generator is not available ({cprogs.why['load']}): Python's instead"
        )
        log(report["client_note"])

    allowed = sorted(os.sched_getaffinity(0))
    scpus = ccpus = ""
    if args.pin and len(allowed) >= 2:
        scpus = str(allowed[-1])
        ccpus = ",".join(str(c) for c in allowed[:-1])
    report["pin"] = {"server": scpus, "client": ccpus}
    backlog = max(128, args.hold, *args.clients)
    max_clients = max(1024, args.hold + 64, max(args.clients) + 64)
    servers: dict[str, Server] = {}
    profiles = {}
    total = args.repeat * len(args.clients) * len(kinds)
    done = 0
    try:
        try:
            for kind in kinds:
                prof = ""
                if args.profile and kind != MACHINE:
                    prof = os.path.join(args.profile, f"{kind}.prof")
                profiles[kind] = prof
                try:
                    servers[kind] = Server(kind, backlog, max_clients, prof, scpus, exe)
                except (RuntimeError, OSError, ValueError) as exc:
                    failed(kind, exc)
            for n in args.clients:  # priming pass, not recorded (see the module docstring)
                for kind, srv in servers.items():
                    if args.prime <= 0:
                        break
                    try:
                        r = measure(srv, n, args.load_procs, 0.0, args.prime, ccpus, load_exe)
                        log(f"prime {n:>5} clients {kind:<17} {r['rps']:>9.0f} req/s")
                    except (RuntimeError, OSError, ValueError) as exc:
                        failed(f"{kind} {n}", exc)
            for rep in range(args.repeat):
                for ci, n in enumerate(args.clients):
                    for kind in _rotate(kinds, rep + ci):
                        done += 1
                        key = f"{kind} {n}"
                        if kind not in servers or key in errors:
                            continue
                        if args.settle > 0:
                            waited, busy = settle_cpu(args.settle)
                            if waited >= args.settle:
                                log(
                                    f"the machine stayed busy ({busy:.0f} % of a vCPU); measuring anyway"
                                )
                        try:
                            r = measure(
                                servers[kind],
                                n,
                                args.load_procs,
                                args.warmup,
                                args.duration,
                                ccpus,
                                load_exe,
                            )
                        except (RuntimeError, OSError, ValueError) as exc:
                            failed(key, exc)
                            continue
                        report["reps"][str(n)][kind].append(r)
                        log(
                            f"[{done}/{total} {time.monotonic() - t_start:.0f} s] rep "
                            f"{rep + 1}/{args.repeat} {n:>5} clients {kind:<17} "
                            f"{r['rps']:>9.0f} req/s  p50 {r['p50_us']:.0f} us  p99 "
                            f"{r['p99_us']:.0f} us  server {r['server_cpu_pct']:.0f} % "
                            f"({r['server_us_per_req']:.1f} us/req)  client "
                            f"{r['client_cpu_pct']:.0f} %  other {r['other_pct']:.0f} %  "
                            f"steal {r['host_pct']['steal']:.0f} %"
                        )
        finally:
            for s in servers.values():
                s.stop()
        if args.profile:
            for kind in kinds:
                if profiles.get(kind):
                    print_profile(profiles[kind], kind)

        for hrep in range(args.hold_repeat if args.hold > 0 else 0):
            for kind in _rotate(kinds, hrep):
                key = f"{kind} hold"
                if key in errors:
                    continue
                srv = None
                try:
                    srv = Server(kind, backlog, max_clients, "", scpus, exe)
                    time.sleep(0.2)
                    h = hold(srv, args.hold, args.hold_timeout, ccpus)
                    report["hold"][kind].append(h)
                    log(
                        f"hold {hrep + 1}/{args.hold_repeat} {args.hold} {kind:<17} connect "
                        f"{h['connect_s'] * 1e3:.0f} ms, accepted {h['accepted_s'] * 1e3:.0f} ms, "
                        f"rounds {h['round1_s'] * 1e3:.0f} / {h['round2_s'] * 1e3:.0f} ms, RSS "
                        f"{h['idle']['VmRSS'] / 1024:.1f} -> {h['after']['VmRSS'] / 1024:.1f} MiB "
                        f"({h['bytes_per_client']:.0f} B a client), fds {h['idle']['fds']} -> "
                        f"{h['after']['fds']} -> {h['closed']['fds']}"
                    )
                except (RuntimeError, OSError, ValueError) as exc:
                    failed(key, exc)
                finally:
                    if srv is not None:
                        srv.stop()
    finally:
        cprogs.close()
    report["loadavg_end"] = loadavg()
    report["elapsed_s"] = time.monotonic() - t_start
    summarise(report)
    return report


def _counts(text: str) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("client counts must be positive integers")
    return list(dict.fromkeys(counts))


def _servers(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SERVERS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown server(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SERVERS)}"
        )
    return [k for k in SERVERS if k in kinds]


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] == "--child-server":
        p = args_in[1:]
        server_child(p[0], int(p[1]), int(p[2]), p[3], p[4] if len(p) > 4 else "")
        return 0
    if args_in and args_in[0] == "--child-cload":  # pin, then become the C load generator
        child_setup()
        os.execv(args_in[1], args_in[1:])
    if args_in and args_in[0] == "--child-load":
        p = args_in[1:]
        res = load_child(int(p[0]), p[1], int(p[2]), int(p[3]), float(p[4]), float(p[5]), int(p[6]))
        print(json.dumps(res))
        return 0
    if args_in and args_in[0] == "--child-hold":
        p = args_in[1:]
        print(json.dumps(hold_child(int(p[0]), int(p[1]), int(p[2]), float(p[3]), p[4])))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="3 x 1 s, no waiting")
    parser.add_argument(
        "--clients",
        type=_counts,
        default=[1, 100, 1000],
        metavar="N,N,...",
        help="client counts, each measured against every server (1,100,1000)",
    )
    parser.add_argument(
        "--servers",
        type=_servers,
        default=list(SERVERS),
        metavar="K,K,...",
        help=f"which servers ({','.join(SERVERS)}: all)",
    )
    parser.add_argument("--hold", type=int, default=1000, help="connections held open (1000)")
    parser.add_argument("--hold-repeat", type=int, default=3, help="held-open runs per server (3)")
    parser.add_argument("--duration", type=float, help="seconds per measurement (2; quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up (0.5; quick 0.3)")
    parser.add_argument("--repeat", type=int, help="repetitions (5; quick 3)")
    parser.add_argument(
        "--client",
        choices=["c", "python"],
        default="c",
        help="load generator: C (default; the server is then the limit) or Python",
    )
    parser.add_argument(
        "--load-procs", type=int, default=1, choices=[1, 2], help="load generator processes (1)"
    )
    parser.add_argument(
        "--hold-timeout", type=float, default=30.0, help="seconds per held-open step (30)"
    )
    parser.add_argument(
        "--prime",
        type=float,
        default=0.5,
        help="seconds of unrecorded load per server and client count (0.5)",
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
        "(default 2; quick 0)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables as markdown (for RESULTS.md)"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the whole report as JSON to FILE ('-': to stdout)"
    )
    parser.add_argument("--profile", metavar="DIR", help="run the Python servers under cProfile")
    args = parser.parse_args(args_in)
    args.duration = args.duration or (1.0 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5)
    args.repeat = args.repeat or (3 if args.quick else 5)
    if args.settle is None:
        args.settle = 0.0 if args.quick else 2.0
    if args.hold < 0 or args.hold_repeat < 1 or args.repeat < 1 or args.duration <= 0:
        parser.error("--repeat, --hold-repeat and --duration must be positive, --hold >= 0")
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
    for by_kind in report["reps"].values():
        for reps in by_kind.values():
            for r in reps:
                r.pop("hist", None)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.json != "-":
        sys.stdout.write(format_report(report, markdown=args.markdown))
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
