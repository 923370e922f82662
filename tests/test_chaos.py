"""The short chaos run: ``tools/chaos.py`` for a few seconds per transport must find no violation.

The driver (see its docstring for the exact rules) runs real processes on a
Ring (MPMC), Channel pairs and tcp/unix ``fastipc.serve`` servers with
clients, SIGKILLs and SIGSTOP/SIGCONTs random participants, and checks every
message whole, never fabricated, never duplicated, lost only where a kill
explains it, no worker hung, restarted workers resumed, nothing left behind.

``FASTIPC_CHAOS_SECONDS`` (default 2.5) sets the chaos time per transport,
``FASTIPC_CHAOS_SEED`` fixes the seed (otherwise a random one, shown on
failure so the run can be repeated). The sabotage test proves the checks
can fail: a consumer that damages, duplicates and drops messages must be
caught.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from conftest import child_env

CHAOS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "chaos.py"
)
SECONDS = os.environ.get("FASTIPC_CHAOS_SECONDS", "2.5")


def _seed() -> int:
    env = os.environ.get("FASTIPC_CHAOS_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 31)


def _run(*args: str, timeout: float = 150) -> tuple[int, str, list[str]]:
    cmd = [sys.executable, CHAOS, *args]
    try:
        proc = subprocess.run(
            cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"the chaos driver did not finish within {timeout} s: {' '.join(cmd)}\n{exc.stdout!r}\n{exc.stderr!r}"
        )
    return proc.returncode, proc.stdout + proc.stderr, cmd


@pytest.mark.parametrize("transport", ["ring", "channel", "tcp", "unix"])
def test_chaos_short_run(transport: str) -> None:
    seed = _seed()
    rc, out, cmd = _run("--transport", transport, "--seconds", SECONDS, "--seed", str(seed))
    summary = [line for line in out.splitlines() if line.startswith(f"chaos {transport}:")]
    assert rc == 0 and summary, f"chaos run failed (exit {rc}); repeat with: {' '.join(cmd)}\n{out}"
    assert "violations=0" in summary[0], out
    assert " kills=0 " not in summary[0], f"no participant was killed: {summary[0]}"


def test_chaos_catches_sabotage() -> None:
    """A consumer that flips a byte, logs a message twice and drops 100 must make the driver fail."""
    rc, out, cmd = _run(
        "--transport", "ring", "--seconds", "1.5", "--seed", str(_seed()), "--sabotage"
    )
    assert rc == 1, f"sabotage went unnoticed (exit {rc}): {' '.join(cmd)}\n{out}"
    for what in ("checksum mismatch", "duplicate: writer", "lost: "):
        assert what in out, f"the driver did not report {what!r}:\n{out}"
