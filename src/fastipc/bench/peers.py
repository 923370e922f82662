"""The peers comparison: fastipc's Ring and Channel on both backends against the transports people use today.

Every measurement runs in a fresh coordinator process (``python -m
fastipc.bench peer SPEC``, :mod:`fastipc.bench.peers_roles`) with
``FASTIPC_BACKEND`` set, which forks the producer and consumer (or ping and
echo) processes, pinned to two distinct CPUs where the affinity mask allows,
plays a placement probe between them, and reports the figure. Repetitions
are outermost and interleaved: each repetition runs every figure of every
transport, the transport order reversing from one figure to the next, so the
ratios compare runs made seconds apart on the same machine state. Each cell
is the median of the repetitions, with the smallest and largest.

The machine's own limits are measured in the same repetitions
(:mod:`fastipc.bench.baseline`): one core's 1 MiB memcpy and a bare C SPSC
ring, so that every row can also be read against what the hardware gives.

Figures (all with the same payloads, batch size and capacity for every
transport; sockets and pipes keep the kernel's default buffers):

``msg64``   64 B messages, one call per message; msgs/s at the consumers.
``batch64`` 64 B messages through the transport's batch API (batches of
            ``batch``); "-" where it has none.
``read1m``  1 MiB messages, the consumer reading every byte into memory it owns.
``view1m``  1 MiB messages taken as a zero-copy view, first and last byte read.
``rtt``     64 B ping-pong: median and p99 round trip (µs).
``idle``    a consumer blocked on an empty transport: CPU % of one core.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .harness import child_env
from .machine import loadavg, machine_info, procs_running

__all__ = [
    "PEER_FIGURES",
    "ROWS",
    "PeerFigure",
    "PeersConfig",
    "PeersReport",
    "Row",
    "run_peers",
    "run_scaling",
]


@dataclass(frozen=True)
class PeerFigure:
    """One figure of the peers report."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    #: The coordinator's measurement kind and the value it reports.
    kind: str
    value: str
    #: Message size: "small" or "large".
    size: str = "small"


PEER_FIGURES: tuple[PeerFigure, ...] = (
    PeerFigure("msg64", "64 B messages, one call per message", "M msgs/s", True, "msg", "msgs_s"),
    PeerFigure("batch64", "64 B messages, batch API", "M msgs/s", True, "batch", "msgs_s"),
    PeerFigure(
        "read1m", "1 MiB messages, consumer reads every byte", "GB/s", True, "read", "gb_s", "large"
    ),
    PeerFigure("view1m", "1 MiB messages, zero-copy view", "GB/s", True, "view", "gb_s", "large"),
    PeerFigure("rtt_median", "64 B round trip, median", "µs", False, "rtt", "median_us"),
    PeerFigure("rtt_p99", "64 B round trip, p99", "µs", False, "rtt", "p99_us"),
    PeerFigure("idle_cpu", "idle waiter CPU", "% of a core", False, "idle", "cpu_pct"),
)
_SCALE = {"msgs_s": 1e-6}


@dataclass(frozen=True)
class Row:
    """One transport row: a :data:`peers_roles.TRANSPORTS` key on a fastipc backend."""

    key: str
    label: str
    backend: str = "native"
    fastipc: bool = False


ROWS: tuple[Row, ...] = (
    Row("ring", "fastipc Ring (native)", "native", True),
    Row("channel", "fastipc Channel (native)", "native", True),
    Row("ring", "fastipc Ring (python)", "python", True),
    Row("channel", "fastipc Channel (python)", "python", True),
    Row("mp_queue", "multiprocessing.Queue (pickle)"),
    Row("mp_pipe", "multiprocessing.Pipe send_bytes"),
    Row("unix_stream", "AF_UNIX stream, plain Python"),
    Row("unix_seqpacket", "AF_UNIX SEQPACKET"),
    Row("faster_fifo", "faster-fifo, raw bytes"),
    Row("faster_fifo_pickle", "faster-fifo, pickled"),
    Row("zmq_pushpull", "pyzmq PUSH/PULL ipc://"),
    Row("zmq_reqrep", "pyzmq REQ/REP ipc://"),
    Row("posix_mq", "posix_ipc.MessageQueue"),
    Row("iceoryx2", "iceoryx2 publish/subscribe"),
)

#: The machine rows (not transports): figure key -> which baseline gives it.
MACHINE_ROWS = ("bare C SPSC ring", "one-core memcpy")


@dataclass
class PeersConfig:
    """What the peers run measures and for how long."""

    repeat: int = 5
    duration: float = 0.5
    idle_duration: float = 0.3
    batch: int = 256
    small_size: int = 64
    large_size: int = 1 << 20
    small_capacity: int = 256 * 1024
    large_capacity: int = 8 << 20
    mode: str = "default"
    #: Row labels to measure (None: all).
    only: tuple[str, ...] | None = None

    @classmethod
    def quick(cls) -> PeersConfig:
        """A smoke run: one short repetition, 256 KiB instead of 1 MiB."""
        return cls(
            repeat=1,
            duration=0.05,
            idle_duration=0.05,
            large_size=256 * 1024,
            large_capacity=2 << 20,
            mode="quick",
        )


@dataclass
class PeersReport:
    """Every repetition of every figure, the skips, the machine rows and the run's load."""

    config: PeersConfig
    machine: dict[str, Any]
    version: str
    started: str
    #: row label -> figure key -> the repetitions' values (figure units).
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: row label -> figure key -> why it has no value.
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    #: placement probe round trips (µs) and the CPUs used, per measurement.
    probes: list[float] = field(default_factory=list)
    cpus: list[list[int | None]] = field(default_factory=list)
    #: runnable tasks besides ours, sampled before each measurement.
    load_samples: list[int] = field(default_factory=list)
    loadavg_start: list[str] = field(default_factory=list)
    loadavg_end: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    packages: dict[str, str | None] = field(default_factory=dict)
    #: row label -> what differs for it (e.g. a capacity the kernel capped).
    notes: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[str]:
        """Row labels in report order (transports, then machine rows)."""
        labels = [r.label for r in ROWS if self.config.only is None or r.label in self.config.only]
        return labels + [m for m in MACHINE_ROWS if m in self.samples or m in self.skipped]

    def values(self, row: str, fig: str) -> list[float]:
        return self.samples.get(row, {}).get(fig, [])

    def median(self, row: str, fig: str) -> float | None:
        v = self.values(row, fig)
        return statistics.median(v) if v else None

    def best(self, fig: PeerFigure, rows: Sequence[str]) -> tuple[str, float] | None:
        """The best (row, median) among ``rows`` for ``fig``."""
        found = [(r, m) for r in rows if (m := self.median(r, fig.key)) is not None]
        if not found:
            return None
        pick = max if fig.higher_is_better else min
        return pick(found, key=lambda rm: rm[1])

    def fastipc_native(self) -> list[str]:
        return [r.label for r in ROWS if r.fastipc and r.backend == "native"]

    def peers(self) -> list[str]:
        return [r.label for r in ROWS if not r.fastipc and r.label in self.rows()]

    def other_load(self) -> float | None:
        return statistics.fmean(self.load_samples) if self.load_samples else None

    def to_json(self) -> dict[str, Any]:
        figures = []
        for fig in PEER_FIGURES:
            native = self.best(fig, self.fastipc_native())
            peer = self.best(fig, self.peers())
            rows = {}
            for row in self.rows():
                med = self.median(row, fig.key)
                vals = self.values(row, fig.key)
                entry: dict[str, Any] = {"median": med, "samples": vals}
                if med is not None:
                    entry["min"], entry["max"] = min(vals), max(vals)
                    if native and native[1]:
                        entry["ratio_to_fastipc_native"] = med / native[1]
                    if peer and peer[1]:
                        entry["ratio_to_best_peer"] = med / peer[1]
                why = self.skipped.get(row, {}).get(fig.key)
                if why:
                    entry["skipped"] = why
                rows[row] = entry
            figures.append(
                {
                    **asdict(fig),
                    "best_fastipc_native": native[0] if native else None,
                    "best_peer": peer[0] if peer else None,
                    "rows": rows,
                }
            )
        return {
            "fastipc_version": self.version,
            "started": self.started,
            "elapsed_s": round(self.elapsed_s, 1),
            "machine": self.machine,
            "packages": self.packages,
            "config": asdict(self.config),
            "load": {
                "loadavg_start": self.loadavg_start,
                "loadavg_end": self.loadavg_end,
                "other_runnable_mean": self.other_load(),
            },
            "placement": {
                "probe_rtt_us_median": statistics.median(self.probes) if self.probes else None,
                "probe_rtt_us_range": [min(self.probes), max(self.probes)] if self.probes else None,
                "cpus_used": sorted({tuple(c) for c in self.cpus if c}, key=str),
            },
            "notes": self.notes,
            "figures": figures,
        }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the peers' packages (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("fastipc", "faster-fifo", "pyzmq", "iceoryx2", "posix_ipc", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_spec(spec: dict[str, Any], backend: str) -> dict[str, Any]:
    """Run one coordinator (``python -m fastipc.bench peer``) on ``backend``; its JSON answer.

    A failure comes back as ``{"error": ...}``, a figure the transport cannot make as ``{"skipped": ...}``.
    """
    timeout = 60 + 6 * float(spec["duration"])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastipc.bench", "peer", json.dumps(spec)],
            env=child_env({"FASTIPC_BACKEND": backend}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": err[-1] if err else f"exit status {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _spec(cfg: PeersConfig, row: Row, fig: PeerFigure, token: str) -> dict[str, Any]:
    large = fig.size == "large"
    return {
        "transport": row.key,
        "kind": fig.kind,
        "size": cfg.large_size if large else cfg.small_size,
        "capacity": cfg.large_capacity if large else cfg.small_capacity,
        "batch": cfg.batch,
        "duration": cfg.idle_duration if fig.kind == "idle" else cfg.duration,
        "token": token,
    }


def _unavailable(rows: Sequence[Row]) -> dict[str, str]:
    """Rows that cannot run at all here (a backend or a package missing): label -> why."""
    from importlib.util import find_spec

    from .peers_roles import _MODULES, TRANSPORTS
    from .ring import _probe_backends

    out: dict[str, str] = {}
    backends = sorted({r.backend for r in rows if r.fastipc})
    probed = dict(zip(backends, _probe_backends(backends)))
    for r in rows:
        if r.fastipc:
            ok, why = probed[r.backend]
            if not ok:
                out[r.label] = f"the {r.backend} backend does not load: {why}"
            continue
        package = TRANSPORTS[r.key][1]
        if package is not None and find_spec(_MODULES[package]) is None:
            out[r.label] = f"{package} is not installed (pip install 'fastipc[bench]')"
    return out


def run_peers(
    cfg: PeersConfig | None = None, progress: Callable[[str], None] | None = None
) -> PeersReport:
    """Measure every figure of every row, interleaved, plus the machine rows; return the report."""
    from fastipc._version import __version__

    from .baseline import Baseline, memcpy_gb_s

    cfg = cfg or PeersConfig()
    t_start = time.monotonic()
    report = PeersReport(
        config=cfg,
        machine=machine_info(),
        version=__version__,
        started=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        loadavg_start=loadavg(),
        packages=package_versions(),
    )
    rows = [r for r in ROWS if cfg.only is None or r.label in cfg.only]
    gone = _unavailable(rows)
    for label, why in gone.items():
        report.skipped[label] = {f.key: why for f in PEER_FIGURES}
    live = [r for r in rows if r.label not in gone]
    token = f"fbp.{os.getpid()}{secrets.token_hex(2)}"
    seq = 0
    kinds = list(dict.fromkeys(f.kind for f in PEER_FIGURES))
    by_kind = {k: [f for f in PEER_FIGURES if f.kind == k] for k in kinds}
    total = cfg.repeat * (len(kinds) * len(live) + 1)
    done = 0
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)
    base = Baseline()
    failures: dict[tuple[str, str], list[str]] = {}
    try:
        for rep in range(cfg.repeat):
            # The machine's limits, once per repetition, among the transports' runs.
            done += 1
            if progress:
                progress(f"[{done}/{total}] machine limits, rep {rep + 1}")
            _record_baseline(report, base, cfg, cpus, memcpy_gb_s)
            for k, kind in enumerate(kinds):
                order = live if (rep + k) % 2 == 0 else live[::-1]
                for row in order:
                    done += 1
                    if progress:
                        progress(f"[{done}/{total}] {kind:5} {row.label}, rep {rep + 1}")
                    figs = by_kind[kind]
                    if any(report.skipped.get(row.label, {}).get(f.key) for f in figs):
                        continue  # skipped on an earlier repetition: it will be again
                    seq += 1
                    running = procs_running()
                    if running is not None:
                        report.load_samples.append(max(0, running - 1))
                    res = run_spec(_spec(cfg, row, figs[0], f"{token}.{seq}"), row.backend)
                    for f in figs:
                        if "skipped" in res:
                            report.skipped.setdefault(row.label, {})[f.key] = res["skipped"]
                        elif "error" in res:
                            # A failed repetition does not stop the next ones.
                            failures.setdefault((row.label, f.key), []).append(str(res["error"]))
                        elif res.get(f.value) is not None:
                            v = float(res[f.value]) * _SCALE.get(f.value, 1.0)
                            report.samples.setdefault(row.label, {}).setdefault(f.key, []).append(v)
                        else:  # never dropped silently
                            why = f"no {f.value} in the answer {res}"
                            failures.setdefault((row.label, f.key), []).append(why)
                    if res.get("note"):
                        report.notes[row.label] = res["note"]
                    if res.get("probe_us") is not None:
                        report.probes.append(float(res["probe_us"]))
                    if res.get("cpus"):
                        report.cpus.append(list(res["cpus"]))
    finally:
        base.close()
    for (label, key), errors in failures.items():
        if report.values(label, key):
            note = f"{key}: {len(errors)} repetition(s) failed ({errors[0]})"
            report.notes[label] = "; ".join(filter(None, [report.notes.get(label), note]))
        else:
            report.skipped.setdefault(label, {})[key] = f"failed: {errors[0]}"
    report.loadavg_end = loadavg()
    report.elapsed_s = time.monotonic() - t_start
    return report


def _record_baseline(
    report: PeersReport,
    base: Any,
    cfg: PeersConfig,
    cpus: tuple[int | None, int | None],
    memcpy_gb_s: Callable[[float, int | None], float],
) -> None:
    c_ring, memcpy = MACHINE_ROWS
    seconds = max(cfg.duration, 0.05)
    for mode, figs in (("spsc", ("msg64", "batch64")), ("mib", ("read1m",)), ("rtt", ("rtt",))):
        res = base.run(mode, seconds, cpus)
        if "skipped" in res or "error" in res:
            why = res.get("skipped") or f"failed: {res.get('error')}"
            for f in figs if mode != "rtt" else ("rtt_median", "rtt_p99"):
                report.skipped.setdefault(c_ring, {})[f] = why
            continue
        store = report.samples.setdefault(c_ring, {})
        if mode == "spsc":
            for f in figs:
                store.setdefault(f, []).append(res["msgs_s"] / 1e6)
        elif mode == "mib":
            store.setdefault("read1m", []).append(res["gb_s"])
        else:
            store.setdefault("rtt_median", []).append(res["median_us"])
            store.setdefault("rtt_p99", []).append(res["p99_us"])
    report.samples.setdefault(memcpy, {}).setdefault("read1m", []).append(
        memcpy_gb_s(seconds, cpus[0])
    )


# -- scaling -----------------------------------------------------------------------

#: (producers, consumers) shapes of the fan-in scaling run.
SHAPES: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (4, 1), (8, 1), (4, 4))
#: Message sizes of the size scaling run: 16 B to 4 MiB, doubling.
SIZES: tuple[int, ...] = tuple(16 << i for i in range(19))


@dataclass
class ScalingReport:
    """Throughput as producers grow and as message size grows, per transport."""

    rows: list[str]
    #: row -> "PxC" -> [msgs/s samples]
    shapes: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: row -> str(size) -> [GB/s samples]
    sizes: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    repeat: int = 0
    duration: float = 0.0
    load_samples: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: Repetitions that failed where others succeeded.
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        med = statistics.median
        return {
            "rows": self.rows,
            "repeat": self.repeat,
            "duration_s": self.duration,
            "elapsed_s": round(self.elapsed_s, 1),
            "other_runnable_mean": statistics.fmean(self.load_samples)
            if self.load_samples
            else None,
            "producers_msgs_s": {
                r: {k: {"median": med(v), "min": min(v), "max": max(v)} for k, v in d.items()}
                for r, d in self.shapes.items()
            },
            "size_gb_s": {
                r: {k: {"median": med(v), "min": min(v), "max": max(v)} for k, v in d.items()}
                for r, d in self.sizes.items()
            },
            "skipped": self.skipped,
            "notes": self.notes,
        }


def pick_scaling_rows(report: PeersReport | None) -> tuple[list[Row], list[Row]]:
    """(rows for the size run, rows for the producers run): Ring and Channel native and the best two peers.

    The best two peers by the 64 B one-call figure of ``report``; for the
    producers run, the best two that accept several producers. Without a
    report: faster-fifo raw and pyzmq PUSH/PULL.
    """
    from .peers_roles import TRANSPORTS

    ours = [r for r in ROWS if r.fastipc and r.backend == "native"]
    peers = [r for r in ROWS if not r.fastipc and r.key != "zmq_reqrep"]
    if report is not None:
        ranked = sorted(
            (r for r in peers if report.median(r.label, "msg64") is not None),
            key=lambda r: -(report.median(r.label, "msg64") or 0.0),
        )
    else:
        ranked = [r for r in peers if r.key in ("faster_fifo", "zmq_pushpull")]
    fanin = [r for r in ranked if TRANSPORTS[r.key][0].fanin]
    return ours + ranked[:2], ours + fanin[:2]


def run_scaling(
    size_rows: Sequence[Row],
    shape_rows: Sequence[Row],
    repeat: int = 5,
    duration: float = 0.3,
    sizes: Sequence[int] = SIZES,
    shapes: Sequence[tuple[int, int]] = SHAPES,
    progress: Callable[[str], None] | None = None,
) -> ScalingReport:
    """Throughput against producers x consumers and against message size, interleaved as :func:`run_peers`."""
    t_start = time.monotonic()
    labels = list(dict.fromkeys([r.label for r in size_rows] + [r.label for r in shape_rows]))
    rep_out = ScalingReport(rows=labels, repeat=repeat, duration=duration)
    gone = _unavailable(list({r.label: r for r in [*size_rows, *shape_rows]}.values()))
    token = f"fbs.{os.getpid()}{secrets.token_hex(2)}"
    seq = 0
    failures: dict[tuple[str, str], list[str]] = {}
    jobs: list[tuple[str, Any]] = [("shape", s) for s in shapes] + [("size", s) for s in sizes]
    total = repeat * (len(shapes) * len(shape_rows) + len(sizes) * len(size_rows))
    done = 0
    for rep in range(repeat):
        for j, (what, arg) in enumerate(jobs):
            rows = shape_rows if what == "shape" else size_rows
            order = list(rows) if (rep + j) % 2 == 0 else list(rows)[::-1]
            for row in order:
                done += 1
                key = f"{arg[0]}x{arg[1]}" if what == "shape" else str(arg)
                if progress:
                    progress(f"[{done}/{total}] scaling {key:>8} {row.label}, rep {rep + 1}")
                skips = rep_out.skipped.setdefault(row.label, {})
                if row.label in gone:
                    skips[f"{what} {key}"] = gone[row.label]
                    continue
                if f"{what} {key}" in skips:
                    continue
                seq += 1
                if what == "shape":
                    producers, consumers = arg
                    size = 64
                    capacity = 256 * 1024
                else:
                    producers = consumers = 1
                    size = arg
                    capacity = max(256 * 1024, 8 * size)
                spec = {
                    "transport": row.key,
                    "kind": "read",
                    "size": size,
                    "capacity": capacity,
                    "batch": 256,
                    "duration": duration,
                    "producers": producers,
                    "consumers": consumers,
                    "token": f"{token}.{seq}",
                }
                running = procs_running()
                if running is not None:
                    rep_out.load_samples.append(max(0, running - 1))
                res = run_spec(spec, row.backend)
                if "skipped" in res:
                    skips[f"{what} {key}"] = res["skipped"]
                    continue
                if "error" in res:  # a failed repetition does not stop the next ones
                    failures.setdefault((row.label, f"{what} {key}"), []).append(str(res["error"]))
                    continue
                if what == "shape":
                    rep_out.shapes.setdefault(row.label, {}).setdefault(key, []).append(
                        res["msgs_s"]
                    )
                else:
                    rep_out.sizes.setdefault(row.label, {}).setdefault(key, []).append(res["gb_s"])
    for (label, what_key), errors in failures.items():
        what, key = what_key.split(" ", 1)
        data = rep_out.shapes if what == "shape" else rep_out.sizes
        if data.get(label, {}).get(key):
            rep_out.notes.append(
                f"{label}, {what_key}: {len(errors)} of {repeat} repetitions failed ({errors[0]})"
            )
        else:
            rep_out.skipped.setdefault(label, {})[what_key] = f"failed: {errors[0]}"
    rep_out.skipped = {r: s for r, s in rep_out.skipped.items() if s}
    rep_out.elapsed_s = time.monotonic() - t_start
    return rep_out
