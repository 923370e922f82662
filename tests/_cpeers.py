"""Classic C peers (tests/cpeers/*.c) for the interop tests.

``cpeer_bins`` compiles every peer once per session with the system C compiler
(``$CC`` or ``cc``) and fails, showing the compiler's output, when one does not
build. ``cpeers`` runs them as child processes with timeouts and kills whatever is
still running at teardown. A test module imports the ``*_fixture`` functions it uses.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from conftest import TESTS_DIR, Children

__all__ = ["CPEERS_DIR", "CPeers", "cpeer_bins_fixture", "cpeers_fixture"]

CPEERS_DIR = os.path.join(TESTS_DIR, "cpeers")
#: Peer name -> extra linker arguments.
PEERS = {
    "tcp_server": [],
    "tcp_client": [],
    "unix_server": [],
    "unix_client": [],
    "udp_peer": [],
    "mq_peer": ["-lrt"],
    "sig_peer": [],
}
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.fail("no C compiler: set $CC or install cc/gcc (the C interop tests need one)")
    return shlex.split(cc)


@pytest.fixture(name="cpeer_bins", scope="session")
def cpeer_bins_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Peer name -> path of its executable, built once per session."""
    cc = _compiler()
    out_dir = tmp_path_factory.mktemp("cpeers")
    bins: dict[str, str] = {}
    for name, libs in PEERS.items():
        src = os.path.join(CPEERS_DIR, f"{name}.c")
        exe = str(out_dir / name)
        cmd = [*cc, *CFLAGS, "-o", exe, src, *libs]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"cannot compile {src}: {shlex.join(cmd)}: {exc}")
        if proc.returncode != 0:
            pytest.fail(
                f"compiling {src} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                f"{proc.stdout}{proc.stderr}"
            )
        bins[name] = exe
    return bins


class CPeers(Children):
    """Compiled C peers run as child processes; every one still alive is killed at teardown."""

    def __init__(self, bins: dict[str, str]) -> None:
        super().__init__()
        self.bins = bins

    def argv(self, name: str, args: tuple[object, ...]) -> list[str]:
        return [self.bins[name], *map(str, args)]

    def run(self, name: str, *args: object, timeout: float = 20, check: bool = True) -> str:
        """Run peer ``name`` to completion; its stdout. Fails on a hang or (``check``) a non-zero exit."""
        argv = self.argv(name, args)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"{shlex.join(argv)} did not finish within {timeout} s (hung?)\n"
                f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
            )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{shlex.join(argv)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc.stdout

    def spawn(
        self, name: str, *args: object, first_line: bool = True, timeout: float = 20
    ) -> tuple[subprocess.Popen[str], str]:
        """Start peer ``name``; with ``first_line`` wait (at most ``timeout`` s) for its first line."""
        proc = subprocess.Popen(
            self.argv(name, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        line = ""
        if first_line:
            line = self.readline(proc, timeout)
            if not line:
                self.wait(proc, timeout)
                pytest.fail(
                    f"{shlex.join(proc.args)} exited {proc.returncode}: {self.stderr(proc)}"
                )
        return proc, line

    def finish(self, proc: subprocess.Popen[str], timeout: float = 20) -> str:
        """Wait for ``proc`` to exit 0 within ``timeout`` s; the rest of its stdout."""
        assert proc.stdout is not None and proc.stderr is not None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            pytest.fail(
                f"{shlex.join(proc.args)} did not exit within {timeout} s (hung?)\n"
                f"stdout:\n{proc.stdout.read()}\nstderr:\n{proc.stderr.read()}"
            )
        out, err = proc.stdout.read(), proc.stderr.read()
        if proc.returncode != 0:
            pytest.fail(
                f"{shlex.join(proc.args)} exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
            )
        return out


@pytest.fixture(name="cpeers")
def cpeers_fixture(cpeer_bins: dict[str, str]) -> Iterator[CPeers]:
    peers = CPeers(cpeer_bins)
    try:
        yield peers
    finally:
        peers.kill_all()
