#!/usr/bin/env python3
"""Instructions per message on the hot paths, counted by callgrind: repeatable on a loaded machine.

Wall-clock figures on the shared 2-vCPU VM move 2-5x with the load and the vCPU
placement; instruction counts do not. Each workload runs in one process (send
then receive, no waiting) under ``valgrind --tool=callgrind`` at two message
counts, and the difference of the two totals divided by the difference of the
counts is the cost per message: start-up, imports and set-up cancel out.

    python benchmarks/callgrind_per_message.py PYTHON [PYTHON ...]
        [--backend native|python|both] [--workload NAME ...] [--jobs N]

Each PYTHON is an interpreter with fastipc installed (e.g. two worktrees'
``.venv/bin/python`` for a before/after comparison); a column per PYTHON, and
the change against the first. Workloads: ring64 (Ring send+recv, 64 B),
ringbatch (send_many/recv_many of 256 x 64 B), ring1m (1 MiB send/recv_into),
ch64, chbatch, ch1m (the same over Channel.pair()), bc64 and bcbatch (Broadcast
publish+recv and publish_many/recv_many, one subscriber). Takes minutes (callgrind
runs ~50x slower); run ``callgrind_annotate`` on the kept output files
(``--keep DIR``) to see where a difference comes from.

    python benchmarks/callgrind_per_message.py --child WORKLOAD N   (one run)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

WORKLOADS = ["ring64", "ringbatch", "ring1m", "ch64", "chbatch", "ch1m", "bc64", "bcbatch"]
#: (small, large) message counts per backend; the difference is what is counted.
COUNTS = {
    "native": {
        "ring64": (5000, 50000),
        "ringbatch": (5120, 51200),
        "ring1m": (50, 300),
        "ch64": (5000, 30000),
        "chbatch": (5120, 30720),
        "ch1m": (50, 300),
        "bc64": (5000, 50000),
        "bcbatch": (5120, 51200),
    },
    "python": {
        "ring64": (2000, 12000),
        "ringbatch": (2560, 12800),
        "ring1m": (50, 200),
        "ch64": (2000, 12000),
        "chbatch": (2560, 12800),
        "ch1m": (50, 200),
        "bc64": (2000, 12000),
        "bcbatch": (2560, 12800),
    },
}


def child(work: str, n: int) -> None:
    """Run ``n`` messages of ``work`` in this process (FASTIPC_BACKEND chooses the backend)."""
    from fastipc import Channel, Ring

    msg = b"x" * 64
    big = b"M" * (1 << 20)
    if work.startswith("bc"):
        from fastipc import Broadcast

        name = f"cgpm.{os.getpid()}"
        pub = Broadcast.create(name, capacity=256 << 10)
        sub = Broadcast.subscribe(name)
        try:
            if work == "bc64":
                publish, recv = pub.publish, sub.recv
                for _ in range(n):
                    publish(msg)
                    recv()
            else:
                batch = [msg] * 256
                for _ in range(n // 256):
                    pub.publish_many(batch)
                    sub.recv_many(256)
        finally:
            sub.close()
            pub.unlink()
            pub.close()
        return
    if work.startswith("ring"):
        name = f"cgpm.{os.getpid()}"
        r = Ring.create(name, (8 << 20) if work == "ring1m" else (256 << 10))
        try:
            if work == "ring64":
                send, recv = r.send, r.recv
                for _ in range(n):
                    send(msg)
                    recv()
            elif work == "ringbatch":
                batch = [msg] * 256
                for _ in range(n // 256):
                    r.send_many(batch)
                    r.recv_many(256)
            else:
                buf = bytearray(1 << 20)
                for _ in range(n):
                    r.send(big)
                    r.recv_into(buf)
        finally:
            r.close()
            Ring.unlink_name(name)
        return
    a, b = Channel.pair()
    try:
        if work == "ch64":
            send, recv = a.send, b.recv
            for _ in range(n):
                send(msg)
                recv()
        elif work == "chbatch":
            batch = [msg] * 256
            for _ in range(n // 256):
                a.send_many(batch)
                got = 0
                while got < 256:
                    got += len(b.recv_many(256))
        else:
            buf = bytearray(1 << 20)
            for _ in range(n):
                a.send(big)
                b.recv_into(buf)
    finally:
        a.close()
        b.close()


def count(python: str, backend: str, work: str, n: int, keep: str) -> int:
    """Total instructions of one child run under callgrind."""
    tag = re.sub(r"[^A-Za-z0-9]+", "_", python).strip("_")[-40:]
    out = os.path.join(keep, f"callgrind.{tag}.{backend}.{work}.{n}")
    env = {**os.environ, "FASTIPC_BACKEND": backend}
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            python,
            os.path.abspath(__file__),
            "--child",
            work,
            str(n),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode or not m:
        raise RuntimeError(f"{python} {backend} {work} {n}: {proc.stderr[-500:]}")
    return int(m.group(1))


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pythons", nargs="+", metavar="PYTHON")
    ap.add_argument("--backend", choices=["native", "python", "both"], default="both")
    ap.add_argument("--workload", nargs="+", choices=WORKLOADS, default=WORKLOADS)
    ap.add_argument("--jobs", type=int, default=2, help="callgrind runs at once (default 2)")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind output files here")
    args = ap.parse_args()
    keep = args.keep or tempfile.mkdtemp(prefix="fastipc-callgrind-")
    os.makedirs(keep, exist_ok=True)
    backends = ["native", "python"] if args.backend == "both" else [args.backend]
    tasks = [
        (p, be, w, n)
        for be in backends
        for w in args.workload
        for n in COUNTS[be][w]
        for p in args.pythons
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        totals = dict(zip(tasks, pool.map(lambda t: count(*t, keep), tasks)))
    cols = " | ".join(f"instr/msg {i}" for i in range(len(args.pythons)))
    head = "| workload | backend | " + cols
    print("\n".join(f"{i}: {p}" for i, p in enumerate(args.pythons)))
    print(head + (" | change vs 0 |" if len(args.pythons) > 1 else " |"))
    print("|---|---|" + "---:|" * (len(args.pythons) + (len(args.pythons) > 1)))
    for be in backends:
        for w in args.workload:
            n1, n2 = COUNTS[be][w]
            per = [
                (totals[(p, be, w, n2)] - totals[(p, be, w, n1)]) / (n2 - n1) for p in args.pythons
            ]
            cells = " | ".join(f"{x:,.0f}" for x in per)
            change = " | ".join(f"{100 * (x / per[0] - 1):+.2f} %" for x in per[1:])
            print(f"| {w} | {be} | {cells} |" + (f" {change} |" if change else ""))
    if not args.keep:
        for f in os.listdir(keep):
            os.unlink(os.path.join(keep, f))
        os.rmdir(keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
