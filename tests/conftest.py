"""Shared fixtures and helpers for the ring tests: unique names, /dev/shm hygiene, child processes."""

from __future__ import annotations

import glob
import multiprocessing
import os
import select
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

import fastipc
from fastipc import Ring

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
#: The directory fastipc was imported from (src/ or site-packages), for children.
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastipc.__file__)))
SHM = "/dev/shm"


def shm_entries(name: str) -> list[str]:
    """Every /dev/shm entry whose file name contains ``name``."""
    return sorted(glob.glob(os.path.join(SHM, f"*{glob.escape(name)}*")))


def new_name(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:8]}"


def child_env(**extra: str) -> dict[str, str]:
    """os.environ for a child: same fastipc (PYTHONPATH), same backend, tests/ importable."""
    env = dict(os.environ)
    parts = [PKG_PARENT, TESTS_DIR]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["FASTIPC_BACKEND"] = fastipc.BACKEND
    env.update(extra)
    return env


def run_python(
    code: str, timeout: float = 60, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail (not hang) past ``timeout`` seconds.

    With ``check`` the child must exit 0 (not by a signal); its output is shown otherwise.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            check=False,
            env=env or child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"child did not finish within {timeout} s (hung?)\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        )
    if check and proc.returncode != 0:
        how = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit {proc.returncode}"
        )
        pytest.fail(f"child {how}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


class Children:
    """Popen'd ``python -m _workers`` children; every one still alive is SIGKILLed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, *args: object, wait_for: str | None = "ready", timeout: float = 20
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "_workers", *map(str, args)],
            env=child_env(),
            cwd=TESTS_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        if wait_for is not None:
            line = self.readline(proc, timeout)
            assert line.startswith(wait_for), (
                f"child said {line!r}, expected {wait_for!r}; stderr: {self.stderr(proc)}"
            )
        return proc

    @staticmethod
    def readline(proc: subprocess.Popen[str], timeout: float) -> str:
        """One line of the child's stdout, or fail after ``timeout`` seconds."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            pytest.fail(f"child {proc.args} said nothing within {timeout} s")
        return proc.stdout.readline().strip()

    @staticmethod
    def stderr(proc: subprocess.Popen[str]) -> str:
        if proc.poll() is None:
            return "(still running)"
        assert proc.stderr is not None
        return proc.stderr.read()

    def wait(self, proc: subprocess.Popen[str], timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child {proc.args} did not exit within {timeout} s")

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def children() -> Iterator[Children]:
    ch = Children()
    try:
        yield ch
    finally:
        ch.kill_all()


def _cleanup(name: str) -> None:
    try:
        Ring.unlink_name(name)
    except FileNotFoundError:
        pass
    left = shm_entries(name)
    for path in left:  # do not let one failure pollute /dev/shm for the others
        try:
            os.unlink(path)
        except OSError:
            pass
    assert not left, f"left in /dev/shm after Ring.unlink_name({name!r}): {left}"


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A fresh ring name; at teardown the ring is unlinked and nothing of it may remain in /dev/shm."""
    name = new_name()
    yield name
    _cleanup(name)


@pytest.fixture
def make_ring(ring_name: str) -> Iterator[object]:
    """``make_ring(capacity, **kw)`` creates ring ``ring_name``; handles are closed at teardown."""
    made: list[Ring] = []

    def make(capacity: int = 4096, **kw: object) -> Ring:
        r = Ring.create(ring_name, capacity, **kw)  # type: ignore[arg-type]
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def ring(make_ring: object) -> Ring:
    """A fresh ring of 4096 payload bytes."""
    return make_ring(4096)  # type: ignore[operator]


@pytest.fixture
def spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def join_all(procs: list[multiprocessing.process.BaseProcess], timeout: float) -> None:
    """Join every process within ``timeout`` seconds in total; kill and fail on a straggler or crash."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join(5)
    assert not stuck, f"processes still running after {timeout} s: {stuck}"
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    assert not bad, f"worker processes failed (name, exitcode): {bad}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill(ring: Ring, size: int) -> int:
    """Send ``size``-byte messages until the ring is full; return how many went in."""
    from fastipc import Timeout

    n = 0
    while True:
        try:
            ring.send(b"f" * size, timeout=0)
        except Timeout:
            return n
        n += 1
        assert n < 10_000_000


@pytest.fixture
def procs() -> Iterator[object]:
    """Children of the transport tests (``_server_workers.Procs``); all killed at teardown."""
    from _server_workers import Procs

    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()
