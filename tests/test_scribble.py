"""``tools/scribble.py``: a short run over scribbled segments finds nothing, and sabotage is caught.

The driver (see its docstring) overwrites words of a Ring's or Broadcast's
segment and times every blocking call in a child per seed. CI runs it for
longer (``.ci/run``); here a few seeds on the backend under test, from a
random first seed (``FASTIPC_SCRIBBLE_SEED`` fixes it; shown on failure),
and the self-test: children that spin, raise an undocumented exception,
hang or crash must each be reported, or the checks prove nothing.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import pytest
from conftest import child_env

import fastipc

SCRIBBLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "scribble.py"
)


def _run(*args: str, timeout: float = 120) -> tuple[int, str, list[str]]:
    cmd = [sys.executable, SCRIBBLE, "--backend", str(fastipc.BACKEND), "--jobs", "2", *args]
    try:
        proc = subprocess.run(
            cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"scribble.py did not finish within {timeout} s: {' '.join(cmd)}\n{exc.stdout!r}"
        )
    return proc.returncode, proc.stdout + proc.stderr, cmd


def test_scribble_short_run_finds_nothing() -> None:
    env = os.environ.get("FASTIPC_SCRIBBLE_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1 << 31)
    rc, out, cmd = _run("--seeds", "16", "--seed", str(seed))
    assert rc == 0, f"scribble.py found something (exit {rc}); repeat with: {' '.join(cmd)}\n{out}"
    assert f"{fastipc.BACKEND}=16 findings=0" in out, out


def test_scribble_catches_sabotage() -> None:
    """Seeds 0, 1, 2: a busy loop and a KeyError, a call that never returns, a SIGSEGV."""
    rc, out, cmd = _run("--seeds", "3", "--seed", "0", "--sabotage")
    assert rc == 1, f"sabotage went unnoticed (exit {rc}): {' '.join(cmd)}\n{out}"
    for what in (
        "spin: sabotage_spin",
        "error: sabotage_error raised KeyError",
        "hang: sabotage_hang",
    ):
        assert what in out, f"the driver did not report {what!r}:\n{out}"
    # SIGSEGV, or SIGABRT where AddressSanitizer catches the SIGSEGV and aborts
    # (tools/sanitize-tests.sh runs this suite against an ASan build).
    assert re.search(r"crash: signal (11|6) in sabotage_crash", out), out
