"""What the machine and the benchmark's processes are doing, read from /proc, and the machine for the record.

The CPU a process last ran on and its state, its CPU time, memory and
open fds; how many tasks are runnable and how the machine's CPU time is
spent; waiting for the machine to go quiet before a measurement; and the
CPU model, vCPU count, kernel, Python and hypervisor to print with results.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from typing import Any

__all__ = [
    "cpu_times",
    "host_cpu",
    "last_cpu",
    "loadavg",
    "machine_info",
    "proc_status",
    "procs_running",
    "self_cpu",
    "settle_cpu",
    "settle_runnable",
    "task_state",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def task_state(pid: int) -> tuple[str, int] | None:
    """(state, CPU last run on) of process ``pid`` from /proc/PID/stat, or None."""
    try:
        fields = _stat_fields(pid)
        return fields[0], int(fields[36])
    except (OSError, ValueError, IndexError):
        return None


def last_cpu(pid: int | str = "self") -> int:
    """The CPU process ``pid`` last ran on (/proc/PID/stat field 39); raises OSError if gone."""
    return int(_stat_fields(pid)[36])


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds, all threads, used so far by process ``pid``."""
    fields = _stat_fields(pid)
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def self_cpu() -> float:
    """CPU seconds (user + system) this process has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB), Threads and the number of open fds of process ``pid``."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def procs_running() -> int | None:
    """Tasks runnable right now on the whole machine (/proc/stat procs_running)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine so far (/proc/stat, all vCPUs summed), by kind."""
    with open("/proc/stat") as f:
        v = [int(x) / _CLK_TCK for x in f.readline().split()[1:9]]
    return {
        "user": v[0] + v[1],
        "sys": v[2],
        "softirq": v[5] + v[6],  # irq + softirq
        "idle": v[3] + v[4],
        "steal": v[7],
    }


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def settle_runnable(max_wait: float) -> float | None:
    """Wait up to ``max_wait`` s for 0.1 s without other runnable tasks; return the wait.

    Returns None if the machine never went idle in time (the measurement
    then runs anyway and its ``other_load`` tells how busy it was).
    """
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < max_wait:
        running = procs_running()
        quiet = quiet + 1 if running is not None and running <= 1 else 0
        if quiet >= 5:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def settle_cpu(max_wait: float) -> tuple[float, float]:
    """Wait up to ``max_wait`` s for a quarter-second in which the machine is nearly idle.

    Nearly idle: under 15 % of one vCPU busy (user, system, softirq).
    Returns (seconds waited, busy % of one vCPU in the last quarter-second).
    """
    t0 = time.monotonic()
    while True:
        a = host_cpu()
        time.sleep(0.25)
        b = host_cpu()
        busy = sum(b[k] - a[k] for k in ("user", "sys", "softirq")) / 0.25 * 100
        waited = time.monotonic() - t0
        if busy < 15 or waited >= max_wait:
            return waited, busy


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
