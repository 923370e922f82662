"""The process harness every benchmark shares: start child processes, hear their answers, stop them.

A benchmark measures in fresh child processes, so that each side starts
clean and the backend is chosen before it imports fastipc. This module is
what the ``fastipc bench`` engines and the scripts in ``benchmarks/`` use
for that: the environment that makes a child import this very fastipc,
starting it, reading its one-line answers with a timeout, waiting for
children without polling, and stopping them (a signal to clean up first,
then SIGKILL). What the children are doing meanwhile is read from /proc by
:mod:`fastipc.bench.machine`.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

__all__ = [
    "BenchError",
    "child_env",
    "collect",
    "die_with_parent",
    "last_line",
    "read_line",
    "spawn",
    "stop",
    "wait_any",
]

#: The directory holding the ``fastipc`` package this process imported.
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BenchError(RuntimeError):
    """A measurement could not be made (a child failed, timed out or disagreed)."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, with this fastipc first on PYTHONPATH.

    The children must import the same fastipc as the parent, whether it is
    installed or run from a source checkout.
    """
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PKG_PARENT, env.get("PYTHONPATH")]))
    return env


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[str]:
    """Start ``sys.executable`` with ``argv`` (text pipes; stdin closed unless asked for).

    ``env`` defaults to :func:`child_env` ``()``; ``pass_fds`` stay open in
    the child at the same numbers.
    """
    return subprocess.Popen(
        [sys.executable, *argv],
        env=dict(env) if env is not None else child_env(),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        text=True,
    )


def last_line(text: str) -> str:
    """The last non-blank line of ``text``, stripped ("" if none)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def read_line(stream: Any, timeout: float, what: str) -> str:
    """One line from a child's pipe (or stdin), or :class:`BenchError` after ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise BenchError(f"{what}: no answer within {timeout:g} s")
    line: str = stream.readline()
    if not line:
        raise BenchError(f"{what}: exited without answering")
    return line


def stop(
    procs: Iterable[subprocess.Popen[str]], sig: int = signal.SIGINT, grace: float = 1.0
) -> None:
    """End children still running: ``sig`` first so they clean up, SIGKILL after ``grace`` s.

    Every child is reaped when this returns.
    """
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_any(procs: Sequence[subprocess.Popen[str]], timeout: float) -> None:
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


def collect(
    procs: Mapping[str, subprocess.Popen[str]],
    what: str,
    timeout: float,
    sample_every: float,
    sample: Callable[[list[subprocess.Popen[str]]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Wait for every child; return role -> the JSON object it printed last, or raise :class:`BenchError`.

    While all still run, ``sample(live children)`` is called every
    ``sample_every`` seconds (the parent otherwise sleeps on pidfds, so it
    does not preempt them). A child that fails stops its partners at once,
    so the error reported is the first one and not a partner's timeout. A
    child fails if it exits non-zero or its last line is not a JSON object;
    the error then quotes the last line of its stderr.
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
            if sample is not None and len(live) == len(procs):
                sample(live)
            wait_any(live, min(sample_every, deadline - now))
            failed = next((r for r, p in procs.items() if p.poll() not in (None, 0)), None)
    finally:
        stop(procs.values())
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for role, p in procs.items():
        out, err = p.communicate()
        line = last_line(out)
        if failed is not None and role != failed:
            continue  # stopped because its partner failed
        if p.returncode != 0 or not line.startswith("{"):
            why = last_line(err) or f"exit status {p.returncode}"
            errors.append(f"the {role} process failed: {why}")
        else:
            results[role] = json.loads(line)
    if errors:
        raise BenchError(f"{what}: " + "; ".join(errors))
    return results


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (PR_SET_PDEATHSIG).

    Best effort: does nothing where prctl cannot be reached.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
