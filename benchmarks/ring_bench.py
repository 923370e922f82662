#!/usr/bin/env python3
"""Run the Ring benchmark engine (fastipc.bench) with more repetitions and print a markdown table.

Same measurements as ``fastipc bench``, by default 9 repetitions of 2 s each
per figure and backend (about 3.5 minutes on 2 vCPUs, more while it waits for
other work to stop: see --settle); each cell shows the median and the
smallest and largest repetition. Paste the output into benchmarks/RESULTS.md,
or write it elsewhere with ``--out``.

    python benchmarks/ring_bench.py [--repeat N] [--duration S] [--backend B]
                                    [--settle S] [--out FILE] [--json FILE]
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

from fastipc.bench import BACKENDS, BenchConfig, BenchError, format_markdown, run_benchmark


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print (and optionally save) the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="repetitions (default 9)")
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds per measurement (default 2.0)"
    )
    parser.add_argument("--backend", choices=["both", *BACKENDS], default="both")
    parser.add_argument(
        "--large-capacity",
        type=int,
        default=8 << 20,
        metavar="BYTES",
        help="ring capacity for the 1 MiB figure (default 8 MiB)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="before each measurement wait up to this long for the machine to be idle "
        "(default 20; 0: never wait)",
    )
    parser.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    args = parser.parse_args(argv)

    cfg = BenchConfig(
        repeat=args.repeat,
        duration=args.duration,
        idle_duration=0.5,
        idle_repeat=3,
        large_capacity=args.large_capacity,
        settle=args.settle,
        mode=f"ring_bench ({args.repeat} x {args.duration:g} s)",
    )
    cfg.backends = BACKENDS if args.backend == "both" else (args.backend,)
    try:
        report = run_benchmark(cfg, lambda text: print(text, file=sys.stderr, flush=True))
    except (BenchError, OSError, ValueError) as exc:
        print(f"ring_bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ring_bench: interrupted", file=sys.stderr)
        return 130
    text = format_markdown(report)
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
