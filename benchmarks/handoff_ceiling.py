#!/usr/bin/env python3
"""How close the Channel's 1 MiB hand-off comes to what this machine can do at all.

Each round measures, seconds apart, in an order that rotates each round:

``ceiling_copy``  ``handoff_ceiling.c copy``: two processes, 1 MiB messages
                  through four shared 1 MiB slots, copied in and copied out,
                  spinning on counters; no syscall, no Python. The bound of
                  ``mib1``.
``mib1``          ``fastipc.bench.channel``'s figure: ``Channel.send`` of 1 MiB
                  / ``recv_into``, through the shared-memory hand-off.
``ceiling_view``  the same C loop with the receiver reading each message's
                  first and last byte in place. The bound of ``mib1_view``.
``mib1_view``     ``Channel.recv_view`` of the same messages.
``copy1``         1 MiB memcpys in one process (one core's copy rate).

and prints per figure the median, best and range over the rounds, then for
mib1 / ceiling_copy and mib1_view / ceiling_view the median of the per-round
ratios and the ratio of the bests. On this 2-vCPU VM the figures drift 3-6x
within seconds, the C loop's too (its copy mode drops to 4-10 GB/s for
seconds at a time, as often as fastipc's figures do, and not in the same
rounds): interference only ever slows a run down, so the best of several
rounds is the fairer estimate of what each can do, and the ratio of bests
the fairer comparison; the per-round ratio is shown for the record.

    python benchmarks/handoff_ceiling.py [--repeat 7] [--duration 1.0] [--backend native|python]

Needs a C compiler (``cc``) for the ceiling program, which it builds into a
temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

try:
    import fastipc  # noqa: F401 - installed, or on PYTHONPATH
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from fastipc.bench.channel import run_figure

HERE = os.path.dirname(os.path.abspath(__file__))

FIGURES = ["ceiling_copy", "mib1", "ceiling_view", "mib1_view", "copy1"]
RATIOS = [("mib1", "ceiling_copy"), ("mib1_view", "ceiling_view")]


def build(tmp: str) -> str:
    """Compile handoff_ceiling.c into ``tmp``; return the program's path."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("handoff_ceiling.py: no C compiler (cc or gcc) to build the ceiling program")
    exe = os.path.join(tmp, "handoff_ceiling")
    subprocess.run(
        [
            cc,
            "-std=gnu11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-o",
            exe,
            os.path.join(HERE, "handoff_ceiling.c"),
        ],
        check=True,
    )
    return exe


def measure(figure: str, exe: str, backend: str, duration: float) -> float:
    """One measurement of ``figure`` in GB/s (1e9 bytes/s)."""
    if figure.startswith("ceiling_"):
        mode = figure.split("_", 1)[1]
        proc = subprocess.run(
            [exe, mode, str(duration)],
            capture_output=True,
            text=True,
            timeout=60 + 2 * duration,
            check=True,
        )
        return float(json.loads(proc.stdout)["gb_s"])
    row = run_figure(figure, "machine" if figure == "copy1" else backend, duration)
    if "error" in row:
        sys.exit(f"handoff_ceiling.py: {figure} failed: {row['error']}")
    return float(row["gb_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="rounds (default 7)")
    ap.add_argument(
        "--duration", type=float, default=1.0, help="seconds per measurement (default 1)"
    )
    ap.add_argument("--backend", choices=["native", "python"], default="native")
    args = ap.parse_args()
    if args.repeat < 1 or not 0 < args.duration <= 60:
        ap.error("--repeat must be at least 1 and --duration within (0, 60]")

    got: dict[str, list[float]] = {f: [] for f in FIGURES}
    ratios: dict[str, list[float]] = {f"{a} / {b}": [] for a, b in RATIOS}
    with tempfile.TemporaryDirectory(prefix="fastipc-ceiling-") as tmp:
        exe = build(tmp)
        for r in range(args.repeat):
            order = FIGURES[r % len(FIGURES) :] + FIGURES[: r % len(FIGURES)]
            this = {f: measure(f, exe, args.backend, args.duration) for f in order}
            for f in FIGURES:
                got[f].append(this[f])
            for a, b in RATIOS:
                ratios[f"{a} / {b}"].append(this[a] / this[b] if this[b] else 0.0)
            print(
                f"round {r + 1}: " + "  ".join(f"{f} {this[f]:.1f}" for f in FIGURES),
                file=sys.stderr,
                flush=True,
            )

    print(f"| figure ({args.backend}, {args.repeat} rounds) | GB/s, median | best | range |")
    print("|---|---|---|---|")
    for f in FIGURES:
        v = got[f]
        print(f"| {f} | {statistics.median(v):.1f} | {max(v):.1f} | {min(v):.1f}-{max(v):.1f} |")
    print()
    print("| ratio | of the bests | per round, median | per round, range |")
    print("|---|---|---|---|")
    for a, b in RATIOS:
        v = ratios[f"{a} / {b}"]
        best = max(got[a]) / max(got[b]) if max(got[b]) else 0.0
        print(
            f"| {a} / {b} | {best:.2f} | {statistics.median(v):.2f} | {min(v):.2f}-{max(v):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
