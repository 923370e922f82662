"""The report of ``tcp_echo.py``: medians over the repetitions, one table per figure and client count, the profiles.

The tables have the shape of ``fastipc bench --peers``: each row's median
with the smallest and largest repetition, its ratio to fastipc (raw framing,
which echoes the same bytes as the other servers) and to the best of the
other Python servers, and, where the C epoll server measures the same thing,
to its best repetition (load only ever slows a server down, so its best is
the fairer estimate of what the machine gives). A ratio is the row's value
divided by the reference's: above 1 is more requests/s, or a longer latency,
more CPU or more memory, than the reference.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from typing import Any

from tcp_echo_servers import LABELS, MACHINE, OTHERS, REFERENCE, SERVERS

#: (key in a repetition, title, unit, higher is better)
FIGURES = (
    ("rps", "requests/s", "k requests/s", True),
    ("p50_us", "latency, median", "µs", False),
    ("p99_us", "latency, p99", "µs", False),
    ("server_us_per_req", "server CPU per request (user + system)", "µs", False),
)
#: The extra columns of the requests/s tables: who was the bottleneck.
_CPU_COLUMNS = (("server_cpu_pct", "server CPU"), ("client_cpu_pct", "load gen CPU"))


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


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(report: dict[str, Any]) -> None:
    """Add ``report["summary"]``: per client count, server and figure the median, min and max.

    ``summary[count][server][figure]`` and ``summary["hold"][server]`` (bytes
    per idle client, RSS, fds, times).
    """
    summary: dict[str, Any] = {}
    for count, by_kind in report["reps"].items():
        summary[count] = {}
        for kind, reps in by_kind.items():
            if not reps:
                continue
            s = {key: _stats([r[key] for r in reps]) for key, *_ in FIGURES}
            for key, _ in _CPU_COLUMNS:
                s[key] = _stats([r[key] for r in reps])
            s["other_pct"] = _stats([r["other_pct"] for r in reps])
            s["steal_pct"] = _stats([r["host_pct"]["steal"] for r in reps])
            s["n"] = len(reps)
            summary[count][kind] = s
    hold: dict[str, Any] = {}
    for kind, runs in report["hold"].items():
        if not runs:
            continue
        hold[kind] = {
            "bytes_per_client": _stats([h["bytes_per_client"] for h in runs]),
            "rss_idle_kib": _stats([h["idle"]["VmRSS"] for h in runs]),
            "rss_held_kib": _stats([h["after"]["VmRSS"] for h in runs]),
            "round1_ms": _stats([h["round1_s"] * 1e3 for h in runs]),
            "accepted_ms": _stats([h["accepted_s"] * 1e3 for h in runs]),
            "fds": (runs[-1]["idle"]["fds"], runs[-1]["after"]["fds"], runs[-1]["closed"]["fds"]),
            "threads": runs[-1]["after"]["Threads"],
            "n": len(runs),
        }
    summary["hold"] = hold
    report["summary"] = summary


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(v: float | None, ref: float | None) -> str:
    if v is None or ref is None or ref <= 0:
        return ""
    r = v / ref
    if not math.isfinite(r):
        return ""
    return f"{r:.0f}x" if r >= 10 else f"{r:.2f}x"


def _best(
    values: dict[str, float], kinds: tuple[str, ...], higher: bool
) -> tuple[str, float] | None:
    have = [(k, values[k]) for k in kinds if k in values]
    if not have:
        return None
    return (max if higher else min)(have, key=lambda kv: kv[1])


def _why_missing(report: dict[str, Any], kind: str, key: str) -> str:
    if kind in report["skipped"]:
        return "skipped: " + report["skipped"][kind]
    err = report["errors"].get(key) or report["errors"].get(kind)
    if err:
        parts = [p.strip() for p in err.strip().splitlines() if p.strip()]
        return "error: " + (parts[0] if len(parts) < 2 else f"{parts[0]} ... {parts[-1]}")
    return "not measured"


def _figure_table(
    report: dict[str, Any], count: str, key: str, higher: bool, scale: float
) -> tuple[list[str], list[list[str]]]:
    summ = report["summary"].get(count, {})
    reps = report["reps"][count]
    med = {k: s[key]["median"] / scale for k, s in summ.items()}
    ref = med.get(REFERENCE)
    best = _best(med, OTHERS, higher)
    machine = None
    if MACHINE in summ:
        vals = [r[key] / scale for r in reps[MACHINE]]
        machine = max(vals) if higher else min(vals)
    header = ["server", "median", "min-max", "/ fastipc raw", "/ best other"]
    if machine is not None:
        header.append("/ C best")
    cpu = key == "rps"
    if cpu:
        header += [label for _, label in _CPU_COLUMNS]
    rows = []
    for kind in SERVERS:
        if kind not in summ:
            if kind in report["servers"]:
                rows.append([LABELS[kind], _why_missing(report, kind, f"{kind} {count}")])
            continue
        s = summ[kind][key]
        row = [
            LABELS[kind]
            + ("" if summ[kind]["n"] == report["repeat"] else f" ({summ[kind]['n']} runs)"),
            _num(med[kind]),
            f"{_num(s['min'] / scale)}-{_num(s['max'] / scale)}" if summ[kind]["n"] > 1 else "",
            _ratio(med[kind], ref),
            _ratio(med[kind], best[1] if best else None),
        ]
        if machine is not None:
            row.append("" if kind == MACHINE else _ratio(med[kind], machine))
        if cpu:
            row += [f"{summ[kind][k]['median']:.0f} %" for k, _ in _CPU_COLUMNS]
        rows.append(row)
    return header, rows


def _hold_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    hold = report["summary"]["hold"]
    med = {k: h["bytes_per_client"]["median"] for k, h in hold.items()}
    ref = med.get(REFERENCE)
    best = _best(med, OTHERS, False)
    n = report["hold_n"]
    header = [
        "server",
        "median",
        "min-max",
        "/ fastipc raw",
        "/ best other",
        "RSS idle",
        "fds idle/held/closed",
        "threads",
        f"{n} echoes",
    ]
    rows = []
    for kind in SERVERS:
        if kind not in hold:
            if kind in report["servers"]:
                rows.append([LABELS[kind], _why_missing(report, kind, f"{kind} hold")])
            continue
        h = hold[kind]
        b = h["bytes_per_client"]
        rows.append(
            [
                LABELS[kind],
                f"{b['median']:.0f}",
                f"{b['min']:.0f}-{b['max']:.0f}" if h["n"] > 1 else "",
                _ratio(b["median"], ref),
                _ratio(b["median"], best[1] if best else None),
                f"{h['rss_idle_kib']['median'] / 1024:.1f} MiB",
                "/".join(str(x) for x in h["fds"]),
                str(h["threads"]),
                f"{h['round1_ms']['median']:.0f} ms",
            ]
        )
    return header, rows


def _notes(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    v = report["versions"]
    pin = report["pin"]
    steal = [
        s["steal_pct"]["median"]
        for count in report["reps"]
        for s in report["summary"].get(count, {}).values()
    ]
    other = [
        r["other_pct"]
        for by_kind in report["reps"].values()
        for reps in by_kind.values()
        for r in reps
    ]
    counts = ", ".join(map(str, report["counts"]))
    client = (
        "C (epoll, one process)"
        if report.get("client") == "c"
        else f"Python (select.epoll, {report['load_procs']} process(es))"
    ) + ("; " + report["client_note"] if report.get("client_note") else "")
    notes = [
        (
            f"fastipc {v['fastipc']} ({v['backend']} backend) TCP echo, {report['started']}: "
            f"median of {report['repeat']} rotating repetitions of {report['duration']:g} s "
            f"after {report['warmup']:g} s warm-up at each of {counts} clients, "
            f"{report['elapsed_s']:.0f} s in all"
        ),
        f"machine: {m['cpu_model']}, {m['vcpus']} vCPUs"
        + (f" ({m['hypervisor']} guest)" if m.get("hypervisor") else "")
        + f", Linux {m['kernel']}, {m['implementation']} {m['python']}"
        + (f", uvloop {v['uvloop']}" if "uvloop" in v else ""),
        f"load: loadavg {' '.join(report['loadavg_start'])} at start, "
        f"{' '.join(report['loadavg_end'])} at end; waiting up to {report['settle']:g} s for an "
        "idle machine before each measurement"
        + (
            f"; other processes used {statistics.median(other):.0f} % of a vCPU (median, "
            f"{max(other):.0f} % at most), steal {max(steal):.0f} % at most"
            if other and steal
            else ""
        ),
        "placement: "
        + (
            f"servers pinned to CPU {pin['server']}, load generator to CPU {pin['client']}"
            if pin["server"]
            else "not pinned"
        ),
        (
            f"load generator: {client}; requests of 64 B, closed loop (each connection sends "
            "its next request when the whole echo is back), checked byte for byte; length "
            "framing adds an 8-byte header"
        ),
        (
            "ratios: this row's median / the reference's median (the C row: its best "
            "repetition); server CPU per request = the server's user + system CPU time "
            "(/proc/PID/stat, 10 ms ticks) / requests answered"
        ),
    ]
    if report["hold"] and report["hold_n"]:
        notes.append(
            f"bytes per idle client: (server VmRSS with {report['hold_n']} connections open and "
            f"answered twice - VmRSS before) / {report['hold_n']}, a fresh server each of "
            f"{report['hold_repeat']} runs; kernel socket memory is in nobody's RSS"
        )
    for kind, why in report["skipped"].items():
        notes.append(f"{LABELS[kind]}: skipped: {why}")
    return notes


def _render(title: str, header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
        out.append("|---|" + "---:|" * (len(header) - 1))
        for r in rows:
            cells = r if len(r) > 2 else [r[0], r[1]] + [""] * (len(header) - 2)
            out.append("| " + " | ".join(cells) + " |")
        return out + [""]
    widths = [
        max(len(r[i]) for r in [header, *rows] if len(r) > 2 or i == 0) for i in range(len(header))
    ]

    def line(cells: list[str]) -> str:
        if len(cells) == 2:
            return cells[0].ljust(widths[0]) + "  " + cells[1]
        return "  ".join(
            [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        ).rstrip()

    return [title, line(header)] + [line(r) for r in rows] + [""]


def format_report(report: dict[str, Any], markdown: bool = False) -> str:
    """The report as one table per figure and client count, terminal text or markdown, notes first."""
    out = [f"- {n}" for n in _notes(report)] if markdown else _notes(report)
    out.append("")
    for key, title, unit, higher in FIGURES:
        scale = 1000.0 if key == "rps" else 1.0
        better = "higher is better" if higher else "lower is better"
        for count in report["counts"]:
            count = str(count)
            header, rows = _figure_table(report, count, key, higher, scale)
            name = f"{title}, {count} client{'s' if count != '1' else ''} ({unit}, {better})"
            out += _render(name, header, rows, markdown)
    if report["summary"]["hold"] or report["hold_n"]:
        header, rows = _hold_table(report)
        name = (
            f"server memory per idle connected client ({report['hold_n']} held open; "
            "bytes of RSS, lower is better)"
        )
        out += _render(name, header, rows, markdown)
    return "\n".join(out).rstrip("\n") + "\n"
