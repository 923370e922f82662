"""Fixtures and helpers shared by the channel tests.

A test module imports the ``*_fixture`` functions it uses; pytest knows them
by their ``name=`` (``kids``, ``sock_url``, ...). conftest.py stays the ring's.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from conftest import TESTS_DIR, Children, child_env

__all__ = [
    "ChannelKids",
    "fd_count",
    "kids_fixture",
    "no_fd_leak_fixture",
    "other_backends",
    "sock_dir_fixture",
    "sock_url_fixture",
]


def fd_count() -> int:
    """Open fds of this process, from /proc/self/fd."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def other_backends() -> list[str]:
    """Backends a child may use besides this process's: python always, native if it loads."""
    out = ["python"]
    try:
        import fastipc._native  # noqa: F401
    except ImportError:
        pass
    else:
        out.append("native")
    return out


@pytest.fixture(name="sock_dir")
def sock_dir_fixture() -> Iterator[str]:
    """A fresh, short directory for socket files (sun_path is only 107 bytes)."""
    d = tempfile.mkdtemp(prefix="fi", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(name="sock_url")
def sock_url_fixture(sock_dir: str) -> str:
    """``unix://`` URL of a not yet existing socket file."""
    return f"unix://{sock_dir}/s.sock"


@pytest.fixture(name="no_fd_leak")
def no_fd_leak_fixture() -> Iterator[None]:
    """Fail if the test leaves more fds open than it found."""
    before = fd_count()
    yield
    after = fd_count()
    assert after <= before, f"{after - before} fds leaked ({before} before, {after} after)"


class ChannelKids(Children):
    """``python -m _channel_workers ROLE ...`` children, optionally on another backend."""

    def spawn(
        self,
        *args: object,
        backend: str | None = None,
        wait_for: str | None = "ready",
        timeout: float = 20,
    ) -> tuple[subprocess.Popen[str], str]:
        env = child_env(**({"FASTIPC_BACKEND": backend} if backend else {}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "_channel_workers", *map(str, args)],
            env=env,
            cwd=TESTS_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        line = ""
        if wait_for is not None:
            line = self.readline(proc, timeout)
            assert line.startswith(wait_for), (
                f"child said {line!r}, expected {wait_for!r}; stderr: {self.stderr(proc)}"
            )
        return proc, line


@pytest.fixture(name="kids")
def kids_fixture() -> Iterator[ChannelKids]:
    k = ChannelKids()
    try:
        yield k
    finally:
        k.kill_all()
