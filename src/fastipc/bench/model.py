"""The Ring benchmark's report model: the figures, the configuration, one measurement, the whole report.

:class:`BenchReport` holds every repetition's values and derives what the
tables print (medians, native/python ratios, placement) and the JSON form.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BACKENDS",
    "FIGURES",
    "KINDS",
    "BenchConfig",
    "BenchReport",
    "Figure",
    "Measurement",
]

#: The backends the benchmark knows, in the order columns are printed.
BACKENDS: tuple[str, ...] = ("native", "python")


@dataclass(frozen=True)
class Figure:
    """One row of the result table."""

    #: Stable identifier used in JSON output.
    key: str
    #: Human-readable description.
    title: str
    #: Unit of the displayed value (values are stored in this unit).
    unit: str
    #: True when a larger value is better (throughput), False for latency and CPU.
    higher_is_better: bool


#: Every figure, in table order.
FIGURES: tuple[Figure, ...] = (
    Figure("msg64", "64 B messages, send/recv", "M msgs/s", True),
    Figure("batch64", "64 B messages, send_many/recv_many", "M msgs/s", True),
    Figure("mib1", "1 MiB messages, send/recv_into", "GB/s", True),
    Figure("rtt_median", "ping-pong 64 B round trip, median", "us", False),
    Figure("rtt_p99", "ping-pong 64 B round trip, p99", "us", False),
    Figure("idle_cpu", "idle waiter CPU (blocked recv)", "% CPU", False),
)

#: Measurement kinds, each run by its own processes (pingpong yields both rtt figures).
KINDS: tuple[str, ...] = ("msg64", "batch64", "mib1", "pingpong", "idle")


@dataclass
class BenchConfig:
    """What to measure and for how long."""

    #: Backends to measure (those unavailable are reported, not measured).
    backends: tuple[str, ...] = BACKENDS
    #: Repetitions per figure and backend; each figure is their median.
    repeat: int = 5
    #: Seconds each throughput or latency measurement runs.
    duration: float = 1.0
    #: Seconds the idle waiter blocks.
    idle_duration: float = 0.3
    #: Repetitions of the idle-waiter measurement (it varies little).
    idle_repeat: int = 2
    #: Messages per ``send_many``/``recv_many`` call.
    batch: int = 256
    #: Ring capacity (bytes) for the 64-byte figures.
    small_capacity: int = 256 * 1024
    #: Ring capacity (bytes) for the 1 MiB figure (4-8 MiB stays in cache).
    large_capacity: int = 8 * 1024 * 1024
    #: Size of the large messages, bytes.
    large_size: int = 1024 * 1024
    #: Size of the small messages, bytes.
    small_size: int = 64
    #: Label for the mode, shown in the output.
    mode: str = "default"
    #: Up to this many seconds before each measurement, wait for the machine
    #: to be idle (no other runnable task for 0.1 s); 0: do not wait.
    settle: float = 0.0
    #: Seconds the whole run should stay under: no repetition starts that
    #: would overrun it (at least one always runs). None: no budget.
    time_budget: float | None = None

    @classmethod
    def quick(cls) -> BenchConfig:
        """A configuration that finishes in well under 20 s on 2 vCPUs."""
        return cls(
            repeat=3,
            duration=0.25,
            idle_duration=0.15,
            idle_repeat=1,
            mode="quick",
            time_budget=17.0,
        )


@dataclass
class Measurement:
    """One repetition of one measurement kind on one backend."""

    kind: str
    backend: str
    rep: int
    #: Figure key -> value in the figure's unit.
    values: dict[str, float]
    #: Placement probe: median shared-memory round trip (us), or None if it failed.
    probe_rtt_us: float | None
    #: CPUs the processes were running on, sampled by the parent while all ran.
    cpu_samples: list[list[int]]
    #: Fraction of those samples with the processes on different CPUs (None: no sample).
    split_fraction: float | None
    #: Mean number of other runnable tasks on the machine while it ran (None: unknown).
    other_load: float | None
    #: Raw details reported by the children (counts, intervals, context switches).
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchReport:
    """Everything one run measured, with the machine it ran on."""

    config: BenchConfig
    machine: dict[str, Any]
    version: str
    started: str
    #: Backend -> None if available, else why not.
    unavailable: dict[str, str]
    measurements: list[Measurement]
    elapsed_s: float = 0.0
    #: Repetitions actually made (fewer than asked if the time budget ran out).
    repetitions: int = 0

    @property
    def measured_backends(self) -> list[str]:
        """The backends that were measured, in column order."""
        return [b for b in BACKENDS if b in self.config.backends and b not in self.unavailable]

    def samples(self, figure: str, backend: str) -> list[float]:
        """Every repetition's value of ``figure`` for ``backend``."""
        return [
            m.values[figure]
            for m in self.measurements
            if m.backend == backend and figure in m.values
        ]

    def median(self, figure: str, backend: str) -> float | None:
        """The median of ``figure`` for ``backend`` (None if not measured)."""
        values = self.samples(figure, backend)
        return statistics.median(values) if values else None

    def ratio(self, figure: str) -> float | None:
        """native/python for ``figure`` (None unless both were measured)."""
        native = self.median(figure, "native")
        python = self.median(figure, "python")
        if native is None or python is None or python == 0:
            return None
        return native / python

    def probe_median(self, backend: str) -> float | None:
        """Median placement-probe round trip (us) over ``backend``'s measurements."""
        values = [
            m.probe_rtt_us
            for m in self.measurements
            if m.backend == backend and m.probe_rtt_us is not None
        ]
        return statistics.median(values) if values else None

    def split_fraction(self, backend: str) -> float | None:
        """Fraction of CPU samples of ``backend``'s pairs that ran on different CPUs."""
        samples = [
            cpus
            for m in self.measurements
            if m.backend == backend
            for cpus in m.cpu_samples
            if len(cpus) > 1
        ]
        if not samples:
            return None
        return sum(len(set(c)) == len(c) for c in samples) / len(samples)

    def other_load(self) -> float | None:
        """Mean number of other runnable tasks seen during the whole run."""
        values = [m.other_load for m in self.measurements if m.other_load is not None]
        return statistics.fmean(values) if values else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form: config, machine, per-figure samples, medians, ratios."""
        figures = []
        for fig in FIGURES:
            per_backend: dict[str, Any] = {}
            for b in self.measured_backends:
                per_backend[b] = {
                    "median": self.median(fig.key, b),
                    "samples": self.samples(fig.key, b),
                }
            figures.append(
                {
                    **asdict(fig),
                    "results": per_backend,
                    "ratio_native_over_python": self.ratio(fig.key),
                }
            )
        return {
            "fastipc_version": self.version,
            "started": self.started,
            "elapsed_s": round(self.elapsed_s, 3),
            "machine": self.machine,
            "config": asdict(self.config),
            "unavailable": self.unavailable,
            "figures": figures,
            "other_load": self.other_load(),
            "placement": {
                b: {
                    "probe_rtt_us_median": self.probe_median(b),
                    "split_fraction": self.split_fraction(b),
                }
                for b in self.measured_backends
            },
            "measurements": [asdict(m) for m in self.measurements],
        }
