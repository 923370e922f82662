"""The report of ``tcp_echo.py``: medians and ratios over the repetitions, the markdown tables, the profiles."""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from tcp_echo_servers import FRAMING, SERVERS


def print_profile(path: str, kind: str, top: int = 18) -> None:
    """Print the ``top`` functions by own time of a server's cProfile output to stderr."""
    import io
    import pstats

    if not os.path.exists(path):
        print(f"{kind}: no profile written ({path})", file=sys.stderr)
        return
    buf = io.StringIO()
    pstats.Stats(path, stream=buf).sort_stats("tottime").print_stats(top)
    print(f"\n--- cProfile of the {kind} server, top {top} by own time ---", file=sys.stderr)
    print(buf.getvalue(), file=sys.stderr)


def summarise(report: dict[str, Any]) -> None:
    """Add ``report["summary"]``: per server the medians over repetitions and the ratio to asyncio."""
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
    """The report as markdown: the throughput table, notes and the held-open table."""
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
