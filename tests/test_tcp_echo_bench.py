"""``benchmarks/tcp_echo.py`` runs end to end: every server gives every figure, or says why not, and nothing is left behind.

A smoke run (one client, one short repetition, 50 connections held open):
each server kind (fastipc raw and length, asyncio streams, asyncio Protocol
on the stock loop and on uvloop, the selectors loop, the C epoll loop) must
answer with requests/s, latencies, CPU per request and bytes per idle
client, or be reported as skipped with the reason (uvloop or a C compiler
not installed here). Afterwards no process the run started is alive and its
temporary directory is empty. Numbers are not judged (benchmarks/RESULTS.md
holds them).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from conftest import child_env

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from tcp_echo_report import FIGURES
from tcp_echo_servers import LABELS, SERVERS


def _processes_marked(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (only this run's children do)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass  # gone, or not ours to read
    return found


def test_tcp_echo_smoke_run_measures_every_server_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "echo.json"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    marker = f"fastipc-tcp-echo-test-{uuid.uuid4().hex}"
    cmd = [
        sys.executable,
        str(BENCH / "tcp_echo.py"),
        "--quick",
        "--clients",
        "1",
        "--repeat",
        "1",
        "--duration",
        "0.2",
        "--warmup",
        "0.05",
        "--prime",
        "0",
        "--hold",
        "50",
        "--hold-repeat",
        "1",
        "--json",
        str(out),
    ]
    env = child_env(TMPDIR=str(tmp), FASTIPC_TCP_ECHO_TEST=marker)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with open(out) as f:
        report = json.load(f)
    assert not report["errors"], report["errors"]
    assert report["counts"] == [1]
    summary = report["summary"]["1"]
    for kind in SERVERS:
        if kind in report["skipped"]:
            assert report["skipped"][kind], f"{kind} skipped without a reason"
            assert f"{LABELS[kind]}: skipped: " in proc.stdout
            continue
        assert kind in summary, f"{kind} gave no figures"
        for key, *_ in FIGURES:
            value = summary[kind][key]["median"]
            assert math.isfinite(value) and value > 0, f"{kind} {key}: {value}"
        rep = report["reps"]["1"][kind][0]
        assert rep["requests"] > 0
        held = report["summary"]["hold"][kind]
        assert math.isfinite(held["bytes_per_client"]["median"]), kind
        idle, during, after = held["fds"]
        assert during >= idle + 50 and after == idle, f"{kind}: fds {held['fds']}"
    # Only uvloop and a C compiler may be missing; fastipc and the stdlib servers always run.
    assert set(report["skipped"]) <= {"uvloop-protocol", "c-epoll"}

    # The tables: one per figure, every server named with a number or why it is missing.
    for _, title, *_ in FIGURES:
        block = next(b for b in proc.stdout.split("\n\n") if b.startswith(f"{title}, 1 client "))
        for kind in SERVERS:
            assert LABELS[kind] in block, f"{kind} not in the {title} table"
    assert "server memory per idle connected client" in proc.stdout

    # Nothing left: no process of the run alive, its temporary files removed.
    deadline = time.monotonic() + 10
    while _processes_marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_marked(marker)
    assert not list(tmp.iterdir()), list(tmp.iterdir())
