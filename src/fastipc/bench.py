"""The Ring benchmark engine: msgs/s, GB/s and round-trip latency for both backends in one run.

Every measurement runs in two fresh child processes (``python -m
fastipc.bench ROLE SPEC``) with ``FASTIPC_BACKEND`` set before they import
fastipc, one producer (or ping side) and one consumer (or echo side), for a
fixed wall-clock duration rather than a fixed count, so the slow backend does
not take forever. Each repetition measures every kind on every backend, the
backend order flipping from one measurement to the next, and each figure is
the median of the repetitions, so the native/python ratios compare runs made
seconds apart on the same machine state.

What each figure measures (the loops are in :func:`_child_main` and below):

``msg64``
    64-byte messages, one ``send`` per message in the producer and one
    ``recv`` (returning ``bytes``) per message in the consumer; msgs/s over
    the consumer's interval from its first message to ``Closed``.
``batch64``
    The same messages through ``send_many`` of a list of ``batch`` (256) and
    ``recv_many(batch)``; msgs/s the same way, counted on both sides.
``mib1``
    1 MiB messages: the producer ``send``s a prebuilt buffer (one copy into
    the ring), the consumer ``recv_into``s a preallocated ``bytearray``: that
    memcpy is what "read" means here (every byte of every message leaves the
    ring through the CPU into memory the consumer owns), and each message
    carries its sequence number in its first and last 8 bytes, checked by
    the consumer. GB/s (1e9 bytes) over the consumer's interval.
``pingpong``
    Two rings; the ping side times each ``a.send(64 bytes); b.recv()`` with
    ``time.perf_counter_ns``, the echo side does ``b.send(a.recv())``. Median
    and p99 of the per-round-trip times in microseconds (the first 1000
    round trips, or a tenth of the duration, are warm-up and not counted).
``idle``
    One process blocks in ``recv(timeout)`` on an empty ring; the figure is
    the CPU time it used as a percentage of the wall time (a waiter that
    spins briefly and then sleeps shows about 0 %).

Placement probe: before measuring, each pair of processes plays a plain
shared-memory ping-pong (Python spinning on two bytes of a memfd page, no
fastipc code) and reports its median round trip; while they run, the parent
(otherwise asleep on pidfds) samples a few times the CPU each is on
(``/proc/PID/stat`` field 39) and how many other tasks are runnable on the
machine. On a VM the core-to-core round trip changes between runs and
single-message figures move 2-5x with it; compare figures within one run.

Every ring the benchmark makes is named ``fbench.<run token>.<seq>`` and
every ``/dev/shm`` entry containing that name is removed after each
measurement and again at the end of the run, on errors and Ctrl-C too.
"""

from __future__ import annotations

import glob
import itertools
import json
import math
import mmap
import os
import platform
import resource
import secrets
import select
import signal
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BACKENDS",
    "FIGURES",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "Figure",
    "Measurement",
    "format_markdown",
    "format_table",
    "machine_info",
    "probe_backend",
    "run_benchmark",
]

#: The backends the benchmark knows, in the order columns are printed.
BACKENDS: tuple[str, ...] = ("native", "python")

#: Where POSIX shared memory lives; every ring's entries contain its name.
_SHM_DIR = "/dev/shm"

# The control page shared by a pair (a memfd, so it leaves nothing in /dev/shm):
# readiness flags and the placement probe's ping and pong bytes, each on its
# own cache line.
_CTRL_SIZE = 4096
_A_READY = 0
_B_READY = 64
_PING = 128
_PONG = 192

_PROBE_ROUNDS = 1000
_PROBE_BUDGET_S = 0.05
_WARMUP_ROUND_TRIPS = 1000


class BenchError(RuntimeError):
    """A measurement could not be made (a child failed, timed out or disagreed)."""


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
    #: The native backend's target in ``unit`` (None: no target).
    target: float | None
    #: The target as text, including any ratio target.
    target_text: str
    #: The minimum native/python ratio asked for (None: no ratio target).
    ratio_target: float | None = None


#: Every figure, in table order.
FIGURES: tuple[Figure, ...] = (
    Figure(
        "msg64", "64 B messages, send/recv", "M msgs/s", True, 5.0, ">= 5 M/s and >= 3x python", 3.0
    ),
    Figure("batch64", "64 B messages, send_many/recv_many", "M msgs/s", True, 15.0, ">= 15 M/s"),
    Figure("mib1", "1 MiB messages, send/recv_into", "GB/s", True, 40.0, ">= 40 GB/s"),
    Figure("rtt_median", "ping-pong 64 B round trip, median", "us", False, 1.0, "<= 1 us"),
    Figure("rtt_p99", "ping-pong 64 B round trip, p99", "us", False, 3.0, "<= 3 us"),
    Figure("idle_cpu", "idle waiter CPU (blocked recv)", "% CPU", False, 5.0, "sleeps (<= 5 %)"),
)

# Measurement kinds, each run by its own processes (pingpong yields both rtt figures).
_KINDS: tuple[str, ...] = ("msg64", "batch64", "mib1", "pingpong", "idle")


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
            target_met = _target_met(fig, self.median(fig.key, "native"), self.ratio(fig.key))
            figures.append(
                {
                    **asdict(fig),
                    "results": per_backend,
                    "ratio_native_over_python": self.ratio(fig.key),
                    "native_target_met": target_met,
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


def _target_met(fig: Figure, native: float | None, ratio: float | None) -> bool | None:
    if fig.target is None or native is None:
        return None
    ok = native >= fig.target if fig.higher_is_better else native <= fig.target
    if fig.ratio_target is not None and ratio is not None:
        ok = ok and ratio >= fig.ratio_target
    return ok


# --------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, vCPU count, kernel, Python and hypervisor, for the record."""
    model = platform.processor() or platform.machine()
    hypervisor = None
    try:
        out = subprocess.run(
            ["lscpu"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "LC_ALL": "C"},
        ).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Hypervisor vendor":
                hypervisor = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu_model": model,
        "vcpus": os.cpu_count(),
        "hypervisor": hypervisor,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


# --------------------------------------------------------------------------
# Parent side: spawning pairs, cleaning up
# --------------------------------------------------------------------------


def _child_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env["FASTIPC_BACKEND"] = backend
    # The children must import the same fastipc as this process.
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = pkg_root + (os.pathsep + path if path else "")
    return env


def _remove_segments(fragment: str) -> list[str]:
    """Unlink every /dev/shm entry whose name contains ``fragment``; return them."""
    removed = []
    for path in glob.glob(os.path.join(_SHM_DIR, f"*{glob.escape(fragment)}*")):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _spawn(
    role: str, spec: dict[str, Any], backend: str, fds: Sequence[int]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastipc.bench", role, json.dumps(spec)],
        env=_child_env(backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        pass_fds=tuple(fds),
        text=True,
    )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _stop(procs: Iterable[subprocess.Popen[str]]) -> None:
    """Terminate children still running: SIGINT first so they clean up, then SIGKILL."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 1.0
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _proc_cpu(pid: int) -> tuple[str, int] | None:
    """(state, CPU last run on) of process ``pid`` from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return fields[0], int(fields[36])
    except (OSError, ValueError, IndexError):
        return None


def _procs_running() -> int | None:
    """Tasks runnable right now on the whole machine (/proc/stat procs_running)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _settle(max_wait: float) -> float | None:
    """Wait up to ``max_wait`` s for 0.1 s without other runnable tasks; return the wait.

    Returns None if the machine never went idle in time (the measurement
    then runs anyway and its ``other_load`` tells how busy it was).
    """
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < max_wait:
        running = _procs_running()
        quiet = quiet + 1 if running is not None and running <= 1 else 0
        if quiet >= 5:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def _wait_any(procs: Sequence[subprocess.Popen[str]], timeout: float) -> None:
    """Block until one of ``procs`` exits or ``timeout`` s pass, without polling."""
    try:
        pidfds = [os.pidfd_open(p.pid) for p in procs]
    except (AttributeError, OSError):  # no pidfd (old kernel): poll gently
        time.sleep(min(timeout, 0.05))
        return
    try:
        select.select(pidfds, [], [], timeout)
    finally:
        for fd in pidfds:
            os.close(fd)


def _collect(
    procs: dict[str, subprocess.Popen[str]],
    what: str,
    timeout: float,
    sample_every: float,
    cpu_samples: list[list[int]],
    busy_samples: list[int],
) -> dict[str, dict[str, Any]]:
    """Wait for every child, return role -> its JSON result, or raise BenchError.

    While all run, the CPU each is on is sampled every ``sample_every``
    seconds into ``cpu_samples``, and the number of other runnable tasks on
    the machine into ``busy_samples`` (the parent otherwise sleeps, so it does not
    preempt the pair). A child that fails stops its partner at once, so the
    error reported is the first one and not the partner's timeout.
    """
    deadline = time.monotonic() + timeout
    failed: str | None = None
    try:
        while failed is None:
            live = [p for p in procs.values() if p.poll() is None]
            if not live:
                break
            now = time.monotonic()
            if now > deadline:
                late = [r for r, p in procs.items() if p.poll() is None]
                raise BenchError(
                    f"{what}: the {' and '.join(late)} process did not finish "
                    f"within {timeout:.0f} s"
                )
            if len(live) == len(procs):
                states = [_proc_cpu(p.pid) for p in live]
                if all(st is not None and st[0] == "R" for st in states):
                    cpu_samples.append([st[1] for st in states if st is not None])
                others = _procs_running()
                if others is not None:
                    # Runnable tasks besides the children and this sampling process.
                    busy_samples.append(max(0, others - len(live) - 1))
            _wait_any(live, min(sample_every, deadline - now))
            failed = next((r for r, p in procs.items() if p.poll() not in (None, 0)), None)
    finally:
        _stop(procs.values())
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for role, p in procs.items():
        out, err = p.communicate()
        line = _last_line(out)
        if failed is not None and role != failed:
            continue  # stopped because its partner failed
        if p.returncode != 0 or not line.startswith("{"):
            why = _last_line(err) or f"exit status {p.returncode}"
            errors.append(f"the {role} process failed: {why}")
        else:
            results[role] = json.loads(line)
    if errors:
        raise BenchError(f"{what}: " + "; ".join(errors))
    return results


def probe_backend(backend: str, timeout: float = 30.0) -> tuple[bool, str]:
    """Check in a child whether ``backend`` loads: (True, version) or (False, why not)."""
    return _probe_backends([backend], timeout)[0]


def _probe_backends(backends: Sequence[str], timeout: float = 30.0) -> list[tuple[bool, str]]:
    """:func:`probe_backend` for each of ``backends``, in parallel children."""
    procs = [_spawn("probe", {}, b, ()) for b in backends]
    deadline = time.monotonic() + timeout
    answers: list[tuple[bool, str]] = []
    try:
        for backend, p in zip(backends, procs):
            try:
                out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                answers.append((False, f"importing fastipc took over {timeout:.0f} s"))
                continue
            line = _last_line(out)
            if p.returncode != 0 or not line.startswith("{"):
                answers.append((False, _last_line(err) or f"exit status {p.returncode}"))
                continue
            info = json.loads(line)
            if info.get("backend") != backend:
                answers.append((False, f"FASTIPC_BACKEND={backend} loaded {info.get('backend')!r}"))
            else:
                answers.append((True, str(info.get("version"))))
    finally:
        _stop(procs)
    return answers


def _run_one(kind: str, backend: str, rep: int, name: str, cfg: BenchConfig) -> Measurement:
    """Run one repetition of measurement ``kind`` on ``backend`` in fresh processes."""
    what = f"{kind} on {backend}"
    spec: dict[str, Any] = {
        "name": name,
        "duration": cfg.duration,
        "backend": backend,
        "kind": kind,
        "batch": cfg.batch,
    }
    roles: tuple[str, ...]
    if kind == "msg64" or kind == "batch64":
        spec.update(size=cfg.small_size, capacity=cfg.small_capacity)
        roles = ("producer", "consumer")
    elif kind == "mib1":
        spec.update(size=cfg.large_size, capacity=cfg.large_capacity)
        roles = ("producer", "consumer")
    elif kind == "pingpong":
        spec.update(size=cfg.small_size, capacity=max(4096, 16 * cfg.small_size))
        roles = ("ping", "echo")
    elif kind == "idle":
        spec.update(capacity=4096, duration=cfg.idle_duration)
        roles = ("idle",)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown measurement {kind!r}")

    ctrl = os.memfd_create("fastipc-bench-ctrl", os.MFD_CLOEXEC)
    procs: dict[str, subprocess.Popen[str]] = {}
    samples: list[list[int]] = []
    busy: list[int] = []
    try:
        os.ftruncate(ctrl, _CTRL_SIZE)
        spec["ctrl_fd"] = ctrl
        for role in roles:
            procs[role] = _spawn(role, spec, backend, (ctrl,))
        results = _collect(
            procs,
            what,
            timeout=30.0 + 5 * spec["duration"],
            sample_every=max(0.02, spec["duration"] / 6),
            cpu_samples=samples,
            busy_samples=busy,
        )
    finally:
        _stop(procs.values())
        os.close(ctrl)
        _remove_segments(name)

    for role, res in results.items():
        if res.get("backend") != backend:
            raise BenchError(
                f"{what}: the {role} process loaded the {res.get('backend')!r} backend"
            )
    split = [len(set(cpus)) == len(cpus) for cpus in samples if len(cpus) > 1]
    probe = next((r["probe_rtt_ns"] for r in results.values() if r.get("probe_rtt_ns")), None)
    values = _values(kind, results, what)
    return Measurement(
        kind=kind,
        backend=backend,
        rep=rep,
        values=values,
        probe_rtt_us=None if probe is None else probe / 1000.0,
        cpu_samples=samples,
        split_fraction=sum(split) / len(split) if split else None,
        other_load=statistics.fmean(busy) if busy else None,
        detail=results,
    )


def _values(kind: str, results: dict[str, dict[str, Any]], what: str) -> dict[str, float]:
    """Turn the children's raw counts and intervals into figure values."""
    if kind in ("msg64", "batch64", "mib1"):
        prod, cons = results["producer"], results["consumer"]
        sent = int(prod["count"])
        if cons.get("count") is not None and int(cons["count"]) != sent:
            raise BenchError(f"{what}: sent {sent} messages but {cons['count']} arrived")
        counted = sent - int(cons["first"])
        interval = float(cons["interval_s"])
        if counted <= 0 or interval <= 0:
            raise BenchError(f"{what}: too few messages to time ({sent} sent)")
        rate = counted / interval
        if kind == "mib1":
            return {"mib1": rate * int(prod["size"]) / 1e9}
        return {kind: rate / 1e6}
    if kind == "pingpong":
        ping = results["ping"]
        return {
            "rtt_median": float(ping["median_ns"]) / 1000.0,
            "rtt_p99": float(ping["p99_ns"]) / 1000.0,
        }
    idle = results["idle"]
    return {"idle_cpu": 100.0 * float(idle["cpu_s"]) / float(idle["wall_s"])}


def run_benchmark(
    config: BenchConfig | None = None, progress: Callable[[str], None] | None = None
) -> BenchReport:
    """Measure every figure on every available backend in ``config`` and return the report.

    ``progress`` is called with a short text before each measurement.
    Raises :class:`BenchError` if a measurement fails or no backend is
    available, ValueError for a bad configuration. Leaves nothing in /dev/shm.
    """
    cfg = config or BenchConfig()
    unknown = [b for b in cfg.backends if b not in BACKENDS]
    if unknown or not cfg.backends:
        raise ValueError(f"backends must be among {', '.join(BACKENDS)}, got {cfg.backends}")
    if min(cfg.repeat, cfg.idle_repeat) < 1 or not min(cfg.duration, cfg.idle_duration) > 0:
        raise ValueError("repeat must be >= 1 and durations > 0")

    from ._version import __version__

    t_start = time.monotonic()
    report = BenchReport(
        config=cfg,
        machine=machine_info(),
        version=__version__,
        started=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        unavailable={},
        measurements=[],
    )
    for b, (ok, why) in zip(cfg.backends, _probe_backends(cfg.backends)):
        if not ok:
            report.unavailable[b] = why
    backends = report.measured_backends
    if not backends:
        raise BenchError(
            "no backend could be loaded: "
            + "; ".join(f"{b}: {why}" for b, why in report.unavailable.items())
        )

    token = f"fbench.{os.getpid()}{secrets.token_hex(3)}"
    seq = itertools.count()
    reps = {kind: cfg.idle_repeat if kind == "idle" else cfg.repeat for kind in _KINDS}
    total = sum(reps.values()) * len(backends)
    try:
        # Repetitions outermost, so that a time budget cuts whole repetitions
        # and every figure keeps the same number; the backend order flips
        # from one measurement kind and repetition to the next.
        for rep in range(cfg.repeat):
            t_rep = time.monotonic()
            for k, kind in enumerate(_KINDS):
                if rep >= reps[kind]:
                    continue
                order = backends if (rep + k) % 2 == 0 else backends[::-1]
                for backend in order:
                    if progress is not None:
                        progress(
                            f"[{len(report.measurements) + 1}/{total}] {kind} "
                            f"{backend} rep {rep + 1}"
                        )
                    waited = _settle(cfg.settle) if cfg.settle > 0 else None
                    name = f"{token}.{next(seq):04d}"
                    m = _run_one(kind, backend, rep, name, cfg)
                    m.detail["settle_s"] = waited
                    report.measurements.append(m)
            report.repetitions = rep + 1
            now = time.monotonic()
            if cfg.time_budget is not None and now + (now - t_rep) > t_start + cfg.time_budget:
                break  # another repetition would overrun the budget
    finally:
        _remove_segments(token)
    report.elapsed_s = time.monotonic() - t_start
    return report


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------


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


def _status(report: BenchReport, fig: Figure) -> str:
    met = _target_met(fig, report.median(fig.key, "native"), report.ratio(fig.key))
    return "" if met is None else ("ok" if met else "MISSED")


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
    header += ["target (native)", ""]
    rows = []
    for fig in FIGURES:
        row = [fig.title, fig.unit + ("" if fig.higher_is_better else ", lower=better")]
        row += [_cell(report, fig, b, spread) for b in backends]
        if both:
            row.append(_fmt_ratio(report.ratio(fig.key)))
        row += [fig.target_text, _status(report, fig) if "native" in backends else ""]
        rows.append(row)
    probe = ["placement probe: shm round trip", "us"]
    probe += [_fmt_value(FIGURES[3], report.probe_median(b)) for b in backends]
    if both:
        probe.append("")
    probe += ["(no fastipc code)", ""]
    rows.append(probe)
    split = ["pairs sampled on different CPUs", "%"]
    split += [_fmt_pct(report.split_fraction(b)) for b in backends]
    if both:
        split.append("")
    split += ["(else they share one vCPU)", ""]
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
        out += [c.rjust(w) for c, w in zip(cells[2:-2], widths[2:-2])]
        out += [cells[-2].ljust(widths[-2]), cells[-1]]
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
    out.append("| " + " | ".join(header[:-1]) + " |")
    out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header) - 2)) + "|---|")
    for r in rows:
        unit = "µs" + r[1][2:] if r[1].startswith("us") else r[1]
        target = micro((r[-2] + (f" ({r[-1]})" if r[-1] else "")).strip())
        out.append("| " + " | ".join([r[0], unit, *r[2:-2], target]) + " |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# Child side: the measurement loops
# --------------------------------------------------------------------------


def _current_cpu() -> int | None:
    """The CPU this process last ran on (/proc/self/stat field 39)."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        return int(stat.rpartition(")")[2].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def _wait_flag(ctrl: mmap.mmap, offset: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while ctrl[offset] == 0:
        if time.monotonic() > deadline:
            raise BenchError("the other process of the pair never became ready")
        time.sleep(0.0005)


def _probe_ping(ctrl: mmap.mmap) -> float | None:
    """Time plain shared-memory round trips against :func:`_probe_echo`; median ns."""
    pc = time.perf_counter_ns
    deadline = pc() + int(_PROBE_BUDGET_S * 1e9)
    times = array("q")
    for i in range(_PROBE_ROUNDS):
        v = i % 250 + 1
        t0 = pc()
        ctrl[_PING] = v
        spins = 0
        while ctrl[_PONG] != v:
            spins += 1
            if spins & 0x3FF == 0 and pc() > deadline:
                return float(statistics.median(times)) if len(times) >= 3 else None
        times.append(pc() - t0)
    return float(statistics.median(times[len(times) // 10 :]))


def _probe_echo(ctrl: mmap.mmap) -> None:
    deadline = time.perf_counter() + _PROBE_BUDGET_S + 0.05
    last = 0
    for _ in range(_PROBE_ROUNDS):
        spins = 0
        while (v := ctrl[_PING]) == last:
            spins += 1
            if spins & 0x3FF == 0 and time.perf_counter() > deadline:
                return
        ctrl[_PONG] = v
        last = v


def _adaptive_loop(body: Callable[[int], None], per_call: int, duration: float) -> int:
    """Call ``body(n)`` with growing ``n`` until ``duration`` s pass; return the total n.

    ``n`` doubles while a call takes under 2 ms, so the clock is read rarely
    on a fast backend and a slow one does not overshoot the duration.
    """
    pc = time.perf_counter
    end = pc() + duration
    n = 8
    total = 0
    while True:
        t0 = pc()
        body(n)
        total += n * per_call
        now = pc()
        if now >= end:
            return total
        if now - t0 < 0.002 and n < 1 << 16:
            n *= 2


def _role_producer(ring: Any, spec: dict[str, Any]) -> dict[str, Any]:
    kind, size = spec["kind"], int(spec["size"])
    rep = itertools.repeat
    if kind == "msg64":
        msg = bytes(range(size % 256)) + bytes(size - size % 256)
        send = ring.send

        def body(n: int) -> None:
            # Unrolled 4x so the harness costs a few ns per message.
            for _ in rep(None, n):
                send(msg)
                send(msg)
                send(msg)
                send(msg)

        count = _adaptive_loop(body, 4, spec["duration"])
    elif kind == "batch64":
        batch = [bytes(range(size % 256)) + bytes(size - size % 256)] * int(spec["batch"])
        send_many = ring.send_many

        def body(n: int) -> None:
            for _ in rep(None, n):
                send_many(batch)

        count = _adaptive_loop(body, len(batch), spec["duration"])
    else:  # mib1: sequence number in the first and last 8 bytes of each message
        buf = bytearray((bytes(range(256)) * (size // 256 + 1))[:size])
        send = ring.send
        seq = itertools.count()

        def body(n: int) -> None:
            for _ in rep(None, n):
                stamp = next(seq).to_bytes(8, "little")
                buf[:8] = stamp
                buf[-8:] = stamp
                send(buf)

        count = _adaptive_loop(body, 1, spec["duration"])
    ring.shutdown()
    return {"count": count, "size": size}


def _role_consumer(ring: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from .errors import Closed

    kind, pc = spec["kind"], time.perf_counter
    count: int | None = None
    if kind == "msg64":
        recv = ring.recv
        recv()
        first = 1
        t0 = pc()
        try:
            while True:
                recv()
                recv()
                recv()
                recv()
        except Closed:
            t1 = pc()
    elif kind == "batch64":
        recv_many, batch = ring.recv_many, int(spec["batch"])
        first = count = len(recv_many(batch))
        t0 = pc()
        try:
            while True:
                count += len(recv_many(batch))
        except Closed:
            t1 = pc()
    else:  # mib1
        size = int(spec["size"])
        buf = bytearray(size)
        head, tail = memoryview(buf)[:8], memoryview(buf)[size - 8 :]
        recv_into = ring.recv_into
        from_bytes = int.from_bytes
        count = 0
        t0 = 0.0
        try:
            while True:
                n = recv_into(buf)
                if (
                    n != size
                    or from_bytes(head, "little") != count
                    or from_bytes(tail, "little") != count
                ):
                    raise BenchError(
                        f"message {count} arrived wrong: {n} bytes, stamps "
                        f"{from_bytes(head, 'little')}/{from_bytes(tail, 'little')}"
                    )
                count += 1
                if count == 1:
                    t0 = pc()
        except Closed:
            t1 = pc()
        first = 1
    return {"first": first, "count": count, "interval_s": t1 - t0}


def _role_ping(rings: tuple[Any, Any], spec: dict[str, Any]) -> dict[str, Any]:
    a, b = rings
    msg = bytes(int(spec["size"]))
    send, recv = a.send, b.recv
    pc = time.perf_counter_ns
    warm_end = pc() + int(spec["duration"] * 1e8)  # at most a tenth of the time
    for _ in range(_WARMUP_ROUND_TRIPS):
        send(msg)
        recv()
        if pc() > warm_end:
            break
    samples = array("q")
    app = samples.append
    rep = itertools.repeat

    def body(n: int) -> None:
        for _ in rep(None, n):
            t0 = pc()
            send(msg)
            recv()
            app(pc() - t0)

    _adaptive_loop(body, 1, spec["duration"])
    a.shutdown()
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "round_trips": n,
        "median_ns": float(statistics.median(ordered)),
        "p99_ns": float(ordered[min(n - 1, int(n * 0.99))]),
        "p999_ns": float(ordered[min(n - 1, int(n * 0.999))]),
        "min_ns": float(ordered[0]),
        "max_ns": float(ordered[-1]),
    }


def _role_echo(rings: tuple[Any, Any], spec: dict[str, Any]) -> dict[str, Any]:
    from .errors import Closed

    a, b = rings
    send, recv = b.send, a.recv
    n = 0
    try:
        while True:
            send(recv())
            n += 1
    except Closed:
        pass
    return {"round_trips": n}


def _role_idle(ring: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from .errors import Timeout

    duration = float(spec["duration"])
    w0, c0 = time.monotonic(), time.process_time()
    try:
        ring.recv(timeout=duration)
    except Timeout:
        pass
    else:
        raise BenchError("recv on an empty ring returned a message")
    wall, cpu = time.monotonic() - w0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "timeout_s": duration}


def _child_main(argv: Sequence[str]) -> int:
    """Run one benchmark role (``ROLE SPEC_JSON``) and print its result as one JSON line."""
    role = argv[0]
    spec: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}

    import fastipc

    base = {"backend": fastipc.BACKEND, "version": fastipc.__version__, "pid": os.getpid()}
    if role == "probe":
        print(json.dumps(base), flush=True)
        return 0

    from fastipc import Ring

    name = spec["name"]
    ctrl = mmap.mmap(int(spec["ctrl_fd"]), _CTRL_SIZE)
    creator = role in ("producer", "ping", "idle")
    names = [f"{name}.a", f"{name}.b"] if spec["kind"] == "pingpong" else [name]
    rings: list[Any] = []
    result: dict[str, Any] = {}
    try:
        if creator:
            rings = [Ring.create(n, int(spec["capacity"])) for n in names]
            ctrl[_A_READY] = 1
            if role != "idle":
                _wait_flag(ctrl, _B_READY)
                rtt = _probe_ping(ctrl)
                result["probe_rtt_ns"] = rtt
        else:
            _wait_flag(ctrl, _A_READY)
            rings = [Ring.open(n) for n in names]
            ctrl[_B_READY] = 1
            _probe_echo(ctrl)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        if role == "producer":
            result.update(_role_producer(rings[0], spec))
        elif role == "consumer":
            result.update(_role_consumer(rings[0], spec))
        elif role == "ping":
            result.update(_role_ping((rings[0], rings[1]), spec))
        elif role == "echo":
            result.update(_role_echo((rings[0], rings[1]), spec))
        elif role == "idle":
            result.update(_role_idle(rings[0], spec))
        else:
            raise BenchError(f"unknown role {role!r}")
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        result.update(
            cpu=_current_cpu(),
            affinity=sorted(os.sched_getaffinity(0)),
            voluntary_switches=ru1.ru_nvcsw - ru0.ru_nvcsw,
            involuntary_switches=ru1.ru_nivcsw - ru0.ru_nivcsw,
        )
    finally:
        for r in rings:
            if creator:
                r.unlink()
            r.close()
        ctrl.close()
    print(json.dumps({**base, **result}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child_main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - any failure becomes one line for the parent
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
