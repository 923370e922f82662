"""Is the prebuilt wheel as fast as a source build? `fastipc bench --quick` from both, alternating.

    python scripts/bench_wheel_vs_source.py WHEEL_VENV SOURCE_VENV [ROUNDS]

Each venv has fastipc installed (one from the wheel, one with ``pip install .``).
Rounds alternate wheel, source, wheel, ... (the native backend only), so both
see the same machine; the table gives each figure's median over the rounds
(each round's own figure is a median of 3 repetitions) and wheel/source.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

RING = ["msg64", "batch64", "mib1", "rtt_median", "rtt_p99"]
CHANNEL = [
    ("msg64", "msgs_s"),
    ("batch64", "msgs_s"),
    ("mib1", "gb_s"),
    ("mib1_view", "gb_s"),
    ("rtt64", "median_us"),
]


def run(venv: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "FASTIPC_BACKEND"}
    out = subprocess.run(
        [os.path.join(venv, "bin", "fastipc"), "bench", "--quick", "--backend", "native", "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    ).stdout
    report = json.loads(out)
    got = {}
    for fig in report["figures"]:
        if fig["key"] in RING:
            got[f"ring {fig['title']} ({fig['unit']})"] = fig["results"]["native"]["median"]
    for row in report["channel"]:
        for kind, field in CHANNEL:
            if row["kind"] == kind and row["backend"] == "native":
                got[f"channel {kind} ({field})"] = row[field]
    return got


def main() -> None:
    wheel, source = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    results: dict[str, dict[str, list[float]]] = {"wheel": {}, "source": {}}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for name, venv in (("wheel", wheel), ("source", source)):
            for key, value in run(venv).items():
                results[name].setdefault(key, []).append(value)
    print(
        f"{rounds} rounds each, alternating; 1-min load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (other processes skew every figure alike)\n"
    )
    print("| figure (native backend) | wheel | source | wheel/source |")
    print("|---|---:|---:|---:|")
    for key in results["wheel"]:
        w = statistics.median(results["wheel"][key])
        s = statistics.median(results["source"].get(key, [float("nan")]))
        print(f"| {key} | {w:.3g} | {s:.3g} | {w / s:.2f} |")


if __name__ == "__main__":
    main()
