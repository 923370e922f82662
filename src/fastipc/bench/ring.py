"""The Ring benchmark engine: msgs/s, GB/s and round-trip latency for both backends in one run.

Every measurement runs in two fresh child processes (``python -m
fastipc.bench ROLE SPEC``, running :mod:`fastipc.bench.ring_roles`) with ``FASTIPC_BACKEND`` set before they import
fastipc, one producer (or ping side) and one consumer (or echo side), for a
fixed wall-clock duration rather than a fixed count, so the slow backend does
not take forever. Each repetition measures every kind on every backend, the
backend order flipping from one measurement to the next, and each figure is
the median of the repetitions, so the native/python ratios compare runs made
seconds apart on the same machine state.

What each figure measures (the loops are in :mod:`fastipc.bench.ring_roles`):

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
import os
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from .harness import BenchError, child_env, collect, last_line, spawn, stop
from .machine import machine_info, procs_running, settle_runnable, task_state
from .model import BACKENDS, KINDS, BenchConfig, BenchReport, Measurement
from .ring_roles import CTRL_SIZE

__all__ = ["probe_backend", "run_benchmark"]

#: Where POSIX shared memory lives; every ring's entries contain its name.
_SHM_DIR = "/dev/shm"


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
    """Start one child running ``role`` (see :mod:`fastipc.bench.ring_roles`) on ``backend``."""
    return spawn(
        ["-m", "fastipc.bench", role, json.dumps(spec)],
        child_env({"FASTIPC_BACKEND": backend}),
        pass_fds=fds,
    )


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
            line = last_line(out)
            if p.returncode != 0 or not line.startswith("{"):
                answers.append((False, last_line(err) or f"exit status {p.returncode}"))
                continue
            info = json.loads(line)
            if info.get("backend") != backend:
                answers.append((False, f"FASTIPC_BACKEND={backend} loaded {info.get('backend')!r}"))
            else:
                answers.append((True, str(info.get("version"))))
    finally:
        stop(procs)
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
        os.ftruncate(ctrl, CTRL_SIZE)
        spec["ctrl_fd"] = ctrl
        for role in roles:
            procs[role] = _spawn(role, spec, backend, (ctrl,))

        def sample(live: list[subprocess.Popen[str]]) -> None:
            # The CPU each child is on, and the other runnable tasks on the machine.
            states = [task_state(p.pid) for p in live]
            if all(st is not None and st[0] == "R" for st in states):
                samples.append([st[1] for st in states if st is not None])
            others = procs_running()
            if others is not None:
                # Runnable tasks besides the children and this sampling process.
                busy.append(max(0, others - len(live) - 1))

        results = collect(
            procs,
            what,
            timeout=30.0 + 5 * spec["duration"],
            sample_every=max(0.02, spec["duration"] / 6),
            sample=sample,
        )
    finally:
        stop(procs.values())
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

    from fastipc._version import __version__

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
    reps = {kind: cfg.idle_repeat if kind == "idle" else cfg.repeat for kind in KINDS}
    total = sum(reps.values()) * len(backends)
    try:
        # Repetitions outermost, so that a time budget cuts whole repetitions
        # and every figure keeps the same number; the backend order flips
        # from one measurement kind and repetition to the next.
        for rep in range(cfg.repeat):
            t_rep = time.monotonic()
            for k, kind in enumerate(KINDS):
                if rep >= reps[kind]:
                    continue
                order = backends if (rep + k) % 2 == 0 else backends[::-1]
                for backend in order:
                    if progress is not None:
                        progress(
                            f"[{len(report.measurements) + 1}/{total}] {kind} "
                            f"{backend} rep {rep + 1}"
                        )
                    waited = settle_runnable(cfg.settle) if cfg.settle > 0 else None
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
