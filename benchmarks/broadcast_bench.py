#!/usr/bin/env python3
"""Run the broadcast benchmark (fastipc.bench.broadcast) and print markdown tables for RESULTS.md.

One publisher process and 1, 2, 4, 8 subscriber processes; 64 B one call per
message, 64 B publish_many/recv_many, 1 MiB read in place; fastipc (native
and python backends) against pyzmq PUB/SUB over ipc:// and iceoryx2
publish/subscribe (each skipped, and said so, if not installed). Same engine
as ``fastipc bench --broadcast``, by default 3 repetitions of 1 s.

    python benchmarks/broadcast_bench.py [--repeat N] [--duration S]
                                         [--transports native,zmq,...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import fastipc  # noqa: F401 - installed, or on PYTHONPATH
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from fastipc.bench.broadcast import TRANSPORTS, format_broadcast, run_broadcast


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the markdown tables (and optionally JSON)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per run (default 1)")
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="comma-separated subset of " + ", ".join(TRANSPORTS),
    )
    parser.add_argument("--counts", default="1,2,4,8", help="subscriber counts (default 1,2,4,8)")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    args = parser.parse_args(argv)
    transports = tuple(t for t in args.transports.split(",") if t)
    bad = [t for t in transports if t not in TRANSPORTS]
    if bad:
        parser.error(f"unknown transport(s) {bad}; choose from {TRANSPORTS}")
    counts = tuple(int(c) for c in args.counts.split(","))
    report = run_broadcast(
        transports,
        counts=counts,
        duration=args.duration,
        repeat=args.repeat,
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    sys.stdout.write(format_broadcast(report, markdown=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
