"""The peers comparison as a terminal table, as markdown, and as plots (matplotlib, optional).

One table per figure: each row's median with the smallest and largest
repetition, its ratio to the better fastipc native row (Ring or Channel)
and to the best peer, and, where the machine row measures the same thing,
to the bare C ring or the one-core memcpy. A ratio is the row's value
divided by the reference's: above 1 is more throughput, or a longer round
trip, than the reference.
"""

from __future__ import annotations

import math
from typing import Any

from .peers import MACHINE_ROWS, PEER_FIGURES, PeerFigure, PeersReport, ScalingReport

__all__ = ["format_peers", "format_scaling", "plot_peers", "plot_scaling"]


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(v: float | None, ref: float | None) -> str:
    if v is None or not ref:
        return ""
    r = v / ref
    if not math.isfinite(r):
        return ""
    return f"{r:.0f}x" if r >= 10 else f"{r:.2f}x"


def _machine_ref(report: PeersReport, fig: PeerFigure) -> tuple[str, float] | None:
    """The machine row to read ``fig`` against, and its best repetition.

    The best, not the median: the C loops spin, so another workload on the
    vCPUs only ever slows them down, and their best repetition is the
    fairer estimate of what the hardware gives.
    """
    c_ring, memcpy = MACHINE_ROWS
    if fig.key in ("msg64", "batch64", "rtt_median", "rtt_p99"):
        row, key = c_ring, fig.key
    elif fig.key in ("read1m", "view1m"):
        row, key = memcpy, "read1m"
    else:
        return None
    vals = report.values(row, key)
    if not vals:
        return None
    return row, (max(vals) if fig.higher_is_better else min(vals))


def _figure_rows(report: PeersReport, fig: PeerFigure) -> tuple[list[str], list[list[str]]]:
    native = report.best(fig, report.fastipc_native())
    peer = report.best(fig, report.peers())
    machine = _machine_ref(report, fig)
    ratios = fig.key != "idle_cpu"
    header = ["transport", "median", "min-max"]
    if ratios:
        header += ["/ fastipc native", "/ best peer"]
        if machine:
            header.append(
                "/ " + ("C ring" if machine[0] == MACHINE_ROWS[0] else "memcpy") + " best"
            )
    rows = []
    for label in report.rows():
        if label in MACHINE_ROWS and not report.values(label, fig.key):
            continue
        vals = report.values(label, fig.key)
        if not vals:
            why = report.skipped.get(label, {}).get(fig.key, "not measured")
            rows.append([label, "skipped: " + why])
            continue
        med = report.median(label, fig.key)
        row = [label, _num(med), f"{_num(min(vals))}-{_num(max(vals))}" if len(vals) > 1 else ""]
        if ratios:
            row += [
                _ratio(med, native[1] if native else None),
                _ratio(med, peer[1] if peer else None),
            ]
            if machine:
                row.append(_ratio(med, machine[1]) if label not in MACHINE_ROWS else "")
        rows.append(row)
    return header, rows


def _notes(report: PeersReport) -> list[str]:
    cfg = report.config
    m = report.machine
    load = report.other_load()
    probes = report.probes
    notes = [
        (
            f"fastipc {report.version} peers comparison, {report.started}, mode {cfg.mode}: "
            f"median of {cfg.repeat} interleaved repetition{'s' if cfg.repeat != 1 else ''}, "
            f"{cfg.duration:g} s window each (after a tenth of it as warm-up), "
            f"{report.elapsed_s:.0f} s in all"
        ),
        f"machine: {m['cpu_model']}, {m['vcpus']} vCPUs"
        + (f" ({m['hypervisor']} guest)" if m.get("hypervisor") else "")
        + f", Linux {m['kernel']}, {m['implementation']} {m['python']}",
        f"load: loadavg {' '.join(report.loadavg_start)} at start, {' '.join(report.loadavg_end)} at end"
        + (f"; {load:.1f} other runnable tasks on average" if load is not None else ""),
        (
            f"payloads: {cfg.small_size} B and {cfg.large_size} B, batches of {cfg.batch}, "
            f"capacity {cfg.small_capacity // 1024} KiB / {cfg.large_capacity >> 20} MiB for "
            "every transport that takes one (sockets and pipes keep the kernel's buffers)"
        ),
    ]
    if probes:
        cpus = sorted({tuple(c) for c in report.cpus if c}, key=str)
        notes.append(
            f"placement: producer and consumer pinned to CPUs {', '.join(map(str, cpus)) or '-'}; "
            f"probe (plain shared-memory ping-pong) median {_num(sorted(probes)[len(probes) // 2])} µs, "
            f"range {_num(min(probes))}-{_num(max(probes))} µs"
        )
    for label, note in report.notes.items():
        notes.append(f"{label}: {note}")
    notes.append(
        "ratios: this row's median / the reference's median (the machine rows: their best "
        "repetition, since interference only slows them down)"
    )
    return notes


def format_peers(report: PeersReport, markdown: bool = False) -> str:
    """The report as one table per figure, terminal text or markdown, with its notes first."""
    out: list[str] = []
    if markdown:
        out += [f"- {n}" for n in _notes(report)] + [""]
    else:
        out += _notes(report) + [""]
    for fig in PEER_FIGURES:
        header, rows = _figure_rows(report, fig)
        better = "higher is better" if fig.higher_is_better else "lower is better"
        title = f"{fig.title} ({fig.unit}, {better})"
        if markdown:
            out += [f"**{title}**", ""]
            out.append("| " + " | ".join(header) + " |")
            out.append("|---|" + "---:|" * (len(header) - 1))
            for r in rows:
                cells = r if len(r) > 2 else [r[0], r[1]] + [""] * (len(header) - 2)
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
            continue
        widths = [
            max(len(r[i]) for r in [header, *rows] if len(r) > 2 or i == 0)
            for i in range(len(header))
        ]
        out.append(title)

        def line(cells: list[str], widths: list[int] = widths) -> str:
            if len(cells) == 2:
                return cells[0].ljust(widths[0]) + "  " + cells[1]
            return "  ".join(
                [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
            ).rstrip()

        out += [line(header)] + [line(r) for r in rows] + [""]
    return "\n".join(out)


def format_scaling(s: ScalingReport, markdown: bool = False) -> str:
    """Two tables: msgs/s against producers x consumers, GB/s against message size."""
    import statistics

    out = []
    tables: tuple[tuple[str, dict[str, dict[str, list[float]]], str], ...] = (
        ("64 B messages, producers x consumers", s.shapes, "M msgs/s"),
        ("message size, one producer and one consumer", s.sizes, "GB/s"),
    )
    for title, data, unit in tables:
        keys: list[str] = []
        for d in data.values():
            keys += [k for k in d if k not in keys]
        if data is s.sizes:
            keys.sort(key=int)
        rows = []
        for label in s.rows:
            cells = [label]
            for k in keys:
                v = data.get(label, {}).get(k)
                if v:
                    med = statistics.median(v) / (1e6 if unit == "M msgs/s" else 1)
                    cells.append(_num(med))
                else:
                    cells.append("skip" if s.skipped.get(label) else "-")
            rows.append(cells)
        head = ["transport"] + [_size(k) if data is s.sizes else k for k in keys]
        out.append(f"{title} ({unit}, median of {s.repeat})")
        if markdown:
            out += ["", "| " + " | ".join(head) + " |", "|---|" + "---:|" * len(keys)]
            out += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            for r in [head, *rows]:
                out.append(
                    "  ".join([r[0].ljust(w[0])] + [c.rjust(x) for c, x in zip(r[1:], w[1:])])
                )
        out.append("")
    for label, skips in s.skipped.items():
        for why in sorted(set(skips.values())):
            what = sorted(k for k, v in skips.items() if v == why)
            out.append(
                f"skipped: {label}: {', '.join(what[:4])}{' ...' if len(what) > 4 else ''}: {why}"
            )
    out += [f"note: {n}" for n in s.notes]
    return "\n".join(out) + "\n"


def _size(k: str) -> str:
    n = int(k)
    if n >= 1 << 20:
        return f"{n >> 20}M"
    if n >= 1 << 10:
        return f"{n >> 10}K"
    return str(n)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            f"--plot needs matplotlib ({exc}); pip install 'fastipc[plot]'"
        ) from None
    return plt


def plot_peers(report: PeersReport, path: str) -> None:
    """One horizontal-bar panel per figure (median, bars from smallest to largest); log scale where needed."""
    plt = _pyplot()
    figs = PEER_FIGURES
    cols = 2
    nrows = (len(figs) + cols - 1) // cols
    fig, grid = plt.subplots(nrows, cols, figsize=(17, 1.2 + 4.2 * nrows))
    axes = list(grid.flat)
    for ax in axes[len(figs) :]:
        ax.axis("off")
    for ax, f in zip(axes, figs):
        labels, meds, lo, hi, colors = [], [], [], [], []
        for label in report.rows():
            vals = report.values(label, f.key)
            if not vals and label in MACHINE_ROWS:
                continue
            labels.append(label if vals else f"{label} (skipped)")
            med = report.median(label, f.key) or 0.0
            meds.append(med)
            lo.append(med - min(vals) if vals else 0.0)
            hi.append(max(vals) - med if vals else 0.0)
            colors.append(
                "tab:red"
                if label.startswith("fastipc") and "native" in label
                else "tab:orange"
                if label.startswith("fastipc")
                else "tab:gray"
                if label in MACHINE_ROWS
                else "tab:blue"
            )
        y = list(range(len(labels)))[::-1]
        ax.barh(y, meds, xerr=[lo, hi], color=colors, capsize=2)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        pos = [m for m in meds if m > 0]
        if pos and max(pos) / min(pos) > 30:
            ax.set_xscale("log")
        better = "higher is better" if f.higher_is_better else "lower is better"
        ax.set_title(f"{f.title} ({f.unit}, {better})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"fastipc {report.version} vs peers, {report.started[:16]}, "
        f"{report.machine.get('cpu_model', '')}, {report.machine.get('vcpus')} vCPUs\n"
        f"median of {report.config.repeat}, bars: smallest-largest repetition",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_scaling(s: ScalingReport, path: str) -> None:
    """Two panels: msgs/s against producers x consumers, GB/s against message size (log-log)."""
    import statistics

    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    shapes: list[str] = []
    for d in s.shapes.values():
        shapes += [k for k in d if k not in shapes]
    for label in s.rows:
        d = s.shapes.get(label, {})
        xs = [i for i, k in enumerate(shapes) if k in d]
        if xs:
            a.plot(xs, [statistics.median(d[shapes[i]]) / 1e6 for i in xs], marker="o", label=label)
        d = s.sizes.get(label, {})
        ks = sorted(d, key=int)
        if ks:
            b.plot(
                [int(k) for k in ks], [statistics.median(d[k]) for k in ks], marker=".", label=label
            )
    a.set_xticks(range(len(shapes)))
    a.set_xticklabels(shapes)
    a.set_xlabel("producers x consumers (64 B messages)")
    a.set_ylabel("M msgs/s (median)")
    a.set_yscale("log")
    a.yaxis.set_major_formatter(ScalarFormatter())
    a.yaxis.set_minor_formatter(ScalarFormatter())
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.set_xscale("log", base=2)
    b.set_yscale("log")
    b.set_xlabel("message size, bytes (one producer, one consumer)")
    b.set_ylabel("GB/s (median)")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle(f"scaling, median of {s.repeat} repetitions of {s.duration:g} s", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)
