"""The benchmark reports as text: the Ring report as a terminal table or markdown, the Channel rows as a table."""

from __future__ import annotations

import math
from typing import Any

from .model import FIGURES, BenchReport, Figure

__all__ = ["format_channel_rows", "format_markdown", "format_table"]


def _fmt_value(fig: Figure, value: float | None) -> str:
    if value is None:
        return "-"
    if fig.unit == "% CPU":
        return f"{value:.1f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _fmt_pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f} %"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "-"
    if ratio >= 10:
        return f"{ratio:.0f}x"
    if ratio >= 1:
        return f"{ratio:.1f}x"
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def _cell(report: BenchReport, fig: Figure, backend: str, spread: bool) -> str:
    text = _fmt_value(fig, report.median(fig.key, backend))
    values = report.samples(fig.key, backend)
    if spread and len(values) > 1:
        text += f" ({_fmt_value(fig, min(values))}-{_fmt_value(fig, max(values))})"
    return text


def _rows(report: BenchReport, spread: bool = False) -> tuple[list[str], list[list[str]]]:
    backends = report.measured_backends
    header = ["figure", "unit", *backends]
    both = len(backends) == 2
    if both:
        header.append("native/python")
    rows = []
    for fig in FIGURES:
        row = [fig.title, fig.unit + ("" if fig.higher_is_better else ", lower=better")]
        row += [_cell(report, fig, b, spread) for b in backends]
        if both:
            row.append(_fmt_ratio(report.ratio(fig.key)))
        rows.append(row)
    probe = ["placement probe: shm round trip (no fastipc code)", "us"]
    probe += [_fmt_value(FIGURES[3], report.probe_median(b)) for b in backends]
    if both:
        probe.append("")
    rows.append(probe)
    split = ["pairs sampled on different CPUs (else they share one)", "%"]
    split += [_fmt_pct(report.split_fraction(b)) for b in backends]
    if both:
        split.append("")
    rows.append(split)
    return header, rows


def _notes(report: BenchReport) -> list[str]:
    cfg = report.config
    m = report.machine
    reps = report.repetitions
    notes = [
        (
            f"fastipc {report.version} Ring benchmark, {report.started}, mode {cfg.mode}: "
            f"median of {reps} repetition{'s' if reps != 1 else ''} x {cfg.duration:g} s "
            "per measurement (two fresh processes each, backends alternating), "
            f"{report.elapsed_s:.1f} s in all"
        ),
        f"machine: {m['cpu_model']}, {m['vcpus']} vCPUs"
        + (f" ({m['hypervisor']} guest)" if m.get("hypervisor") else "")
        + f", Linux {m['kernel']}, {m['implementation']} {m['python']}",
    ]
    if reps < cfg.repeat:
        notes.append(
            f"NOTE: {reps} of {cfg.repeat} repetitions fitted in the {cfg.time_budget:g} s budget"
        )
    for b, why in report.unavailable.items():
        notes.append(f"NOTE: the {b} backend is not available, so it was not measured: {why}")
    load = report.other_load()
    if load is not None and load >= 0.2:
        notes.append(
            f"{'WARNING' if load >= 1 else 'NOTE'}: on average {load:.1f} other tasks were "
            "runnable during the measurements: another workload shares the vCPUs, figures "
            + ("are unreliable" if load >= 1 else "may be lower than on a quiet machine")
        )
    if len(report.measured_backends) == 1:
        notes.append(
            f"only the {report.measured_backends[0]} backend was measured; no native/python ratio"
        )
    return notes


def format_table(report: BenchReport) -> str:
    """The report as a plain-text table for a terminal, with notes above it."""
    header, rows = _rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        out += [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]
        return "  ".join(out).rstrip()

    text = _notes(report) + ["", line(header), line(["-" * w for w in widths])]
    text += [line(r) for r in rows]
    return "\n".join(text) + "\n"


def format_markdown(report: BenchReport, spread: bool = True) -> str:
    """The report as a markdown table with the run's notes as a list above it.

    With ``spread``, each cell also shows the smallest and largest repetition.
    """
    header, rows = _rows(report, spread)

    def micro(text: str) -> str:
        return text.replace(" us", " µs").replace("us,", "µs,") if "us" in text else text

    out = [f"- {n}" for n in _notes(report)] + [""]
    if spread:
        out += ["Cells: median (smallest-largest repetition).", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        unit = "µs" + r[1][2:] if r[1].startswith("us") else r[1]
        out.append("| " + " | ".join([micro(r[0]), unit, *r[2:]]) + " |")
    return "\n".join(out) + "\n"


def format_channel_rows(results: list[dict[str, Any]]) -> str:
    """A plain-text table of ``channel_rows()``'s results."""
    lines = [f"{'figure':<14}{'backend':<9}value"]
    for r in results:
        if "error" in r:
            value = f"error: {r['error']}"
        elif "msgs_s" in r:
            value = f"{r['msgs_s'] / 1e6:8.2f} M msgs/s"
        elif "gb_s" in r:
            value = f"{r['gb_s']:8.2f} GB/s"
        else:
            value = f"median {r['median_us']:.1f} us, p99 {r['p99_us']:.1f} us"
        lines.append(f"{r['kind']:<14}{r['backend']:<9}{value}")
    return "\n".join(lines)
