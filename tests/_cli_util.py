"""Helpers and fixtures shared by the ``fastipc`` command's tests (test_cli*.py).

Every command runs as ``python -m fastipc ...`` in a real child process. A
test module imports the ``*_fixture`` functions it uses; pytest knows them
by their ``name=`` (``running``, ``queue_name``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import posix_ipc
import pytest
from conftest import child_env, new_name

__all__ = [
    "Running",
    "T",
    "fastipc",
    "fastipc_bytes",
    "free_port",
    "ls_json",
    "ok",
    "one_error_line",
    "queue_name_fixture",
    "ring_row",
    "running_fixture",
]

T = 20.0  # seconds any one command or wait may take before the test fails


def fastipc(*args: str, timeout: float = T) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fastipc ARGS`` to completion; fail (not hang) past ``timeout``."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "fastipc", *args],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fastipc {' '.join(args)} did not finish within {timeout} s: {exc.stderr!r}")


def fastipc_bytes(*args: str, timeout: float = T) -> subprocess.CompletedProcess[bytes]:
    """Like :func:`fastipc`, with stdout and stderr as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "fastipc", *args],
        env=child_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert proc.returncode == 0, f"{proc.args} exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """A failed command's single ``fastipc: error: ...`` line (besides where recv listened)."""
    assert proc.returncode not in (0, None), f"{proc.args} succeeded: {proc.stdout}"
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("fastipc: receiving on ")]
    assert len(lines) == 1, f"expected one line on stderr, got {proc.stderr!r}"
    assert lines[0].startswith("fastipc: error: "), lines[0]
    return lines[0]


class Running:
    """A long-running ``fastipc`` child (serve, recv) whose stderr is read as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastipc", *args],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.err = b""
        self.out = b""

    def wait_for(self, text: str, timeout: float = T) -> str:
        """Read stderr until a line containing ``text`` arrives; return that line."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while True:
            for line in self.err.decode(errors="replace").splitlines():
                if text in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {text!r} on stderr within {timeout} s; got {self.err!r}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    self.finish(5)
                    pytest.fail(
                        f"{self.proc.args} exited ({self.proc.returncode}) before saying "
                        f"{text!r}; stderr: {self.err!r}"
                    )
                self.err += chunk

    def address(self) -> str:
        """The URL the child says it serves or receives on."""
        line = self.wait_for("fastipc: ")
        assert line.startswith(("fastipc: serving ", "fastipc: receiving on ")), line
        return line.rsplit(" ", 1)[1]

    def finish(self, timeout: float = T) -> int:
        """Wait for the child to exit (killing it past ``timeout``); collect its output."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"{self.proc.args} did not exit within {timeout} s; stderr: {self.err!r}")
        self.out += out
        self.err += err
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.finish()

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out.decode(errors="replace")


@pytest.fixture(name="running")
def running_fixture() -> Iterator[Any]:
    """``running(*args)`` starts a fastipc child; whatever still runs is killed at teardown."""
    made: list[Running] = []

    def start(*args: str) -> Running:
        r = Running(*args)
        made.append(r)
        return r

    yield start
    for r in made:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.communicate()


@pytest.fixture(name="queue_name")
def queue_name_fixture() -> Iterator[str]:
    """A fresh message queue name (``/tPID_...``); the queue is unlinked at teardown."""
    name = "/" + new_name()
    yield name
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        pass


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A local port nobody is listening on (just released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ls_json(*args: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(ok(fastipc("ls", "--json", *args)))["entries"]
    return entries


def ring_row(name: str) -> dict[str, Any] | None:
    rows = [e for e in ls_json() if e["name"] == f"shm://{name}"]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None
