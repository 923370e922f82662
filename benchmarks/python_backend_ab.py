#!/usr/bin/env python3
"""The python backend's Ring and Channel against the plain pure-Python AF_UNIX loop, for one or more source trees, interleaved.

Runs the ``fastipc bench --peers`` measurements (the same coordinator,
``python -m fastipc.bench peer SPEC``, the same payloads, batch size and
capacities) for only the rows that judge the python backend: its Ring and
Channel, from each source tree given (e.g. before and after a change), the
plain length-prefixed AF_UNIX loop, and one core's 1 MiB memcpy. Repetitions
are outermost and every row runs once per repetition and figure, the row
order reversing each time, so ratios compare runs made seconds apart.

    python benchmarks/python_backend_ab.py [--tree LABEL=SRC_DIR ...]
        [--repeat N] [--duration S] [--figures msg,batch,read,rtt] [--json FILE]

Without ``--tree`` the fastipc this script imports is measured. Each
``SRC_DIR`` is a directory holding a ``fastipc`` package (a checkout's
``src``); it is put first on the children's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

try:
    import fastipc  # noqa: F401 - installed, or on PYTHONPATH
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from fastipc.bench.baseline import memcpy_gb_s

#: figure kind -> (what the coordinator reports, scale, unit, size, capacity)
FIGURES: dict[str, tuple[str, float, str, int, int]] = {
    "msg": ("msgs_s", 1e-6, "M msgs/s", 64, 256 * 1024),
    "batch": ("msgs_s", 1e-6, "M msgs/s", 64, 256 * 1024),
    "read": ("gb_s", 1.0, "GB/s", 1 << 20, 8 << 20),
    "rtt": ("median_us", 1.0, "µs median", 64, 256 * 1024),
}


def run_one(transport: str, kind: str, src: str | None, duration: float, token: str) -> Any:
    """One coordinator run on the python backend; the figure, or the error text."""
    value, scale, _, size, capacity = FIGURES[kind]
    spec = {
        "transport": transport,
        "kind": kind,
        "size": size,
        "capacity": capacity,
        "batch": 256,
        "duration": duration,
        "token": token,
    }
    env = dict(os.environ, FASTIPC_BACKEND="python")
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "fastipc.bench", "peer", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60 + 6 * duration,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    res = json.loads(lines[-1])
    if value not in res:
        return str(res)
    return float(res[value]) * scale


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the interleaved repetitions, print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[], metavar="LABEL=SRC_DIR")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--duration", type=float, default=0.5)
    p.add_argument("--figures", default="msg,batch,read,rtt")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    trees: list[tuple[str, str | None]] = []
    for t in args.tree:
        label, _, src = t.partition("=")
        trees.append((label, os.path.abspath(src)))
    if not trees:
        trees = [("this", None)]
    kinds = [k for k in args.figures.split(",") if k]
    rows: list[tuple[str, str, str | None]] = []
    for label, src in trees:
        rows.append((f"Ring python [{label}]", "ring", src))
        rows.append((f"Channel python [{label}]", "channel", src))
    rows.append(("AF_UNIX plain loop", "unix_stream", trees[-1][1]))
    samples: dict[str, dict[str, list[float]]] = {}
    errors: list[str] = []
    cpus = sorted(os.sched_getaffinity(0))
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    seq = 0
    for rep in range(args.repeat):
        if "read" in kinds:
            mc = memcpy_gb_s(args.duration, cpus[0])
            samples.setdefault("one-core memcpy", {}).setdefault("read", []).append(mc)
        for k, kind in enumerate(kinds):
            order = rows if (rep + k) % 2 == 0 else rows[::-1]
            for label, transport, src in order:
                seq += 1
                token = f"fpab.{os.getpid()}.{seq}"
                v = run_one(transport, kind, src, args.duration, token)
                if isinstance(v, float):
                    samples.setdefault(label, {}).setdefault(kind, []).append(v)
                else:
                    errors.append(f"{label} {kind}: {v}")
                print(f"rep {rep + 1} {kind:5} {label}: {v}", file=sys.stderr)
    head = "| row | " + " | ".join(f"{k} ({FIGURES[k][2]})" for k in kinds) + " |"
    out = [f"started {started}, {args.repeat} reps x {args.duration} s", "", head]
    out.append("|---|" + "---:|" * len(kinds))
    for label in [r[0] for r in rows] + ["one-core memcpy"]:
        cells = []
        for kind in kinds:
            v = samples.get(label, {}).get(kind)
            if not v:
                cells.append("–")
                continue
            med = statistics.median(v)
            cells.append(f"{med:.3g} ({min(v):.3g}–{max(v):.3g})")
        if any(c != "–" for c in cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    # Paired ratios: each repetition's figure over the plain loop's (memcpy's for
    # read) in the same repetition, then the median: load that moves a whole
    # repetition cancels out.
    out += [
        "",
        "Paired ratios (median of per-repetition ratios; rtt: plain / row, higher is better)",
        "",
    ]
    out.append("| row | " + " | ".join(kinds) + " |")
    out.append("|---|" + "---:|" * len(kinds))
    for label in [r[0] for r in rows[:-1]]:
        cells = []
        for kind in kinds:
            ref = "one-core memcpy" if kind == "read" else "AF_UNIX plain loop"
            a = samples.get(label, {}).get(kind, [])
            b = samples.get(ref, {}).get(kind, [])
            pairs = list(zip(a, b)) if len(a) == len(b) else []
            if not pairs:
                cells.append("–")
                continue
            ratios = [(y / x if kind == "rtt" else x / y) for x, y in pairs if x and y]
            cells.append(f"{statistics.median(ratios):.2f}x" if ratios else "–")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(out))
    for e in errors:
        print("error:", e)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started, "samples": samples, "errors": errors}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
