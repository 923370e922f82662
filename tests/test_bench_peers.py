"""``fastipc bench --peers`` and ``--scaling`` run end to end and name every peer.

A smoke run (``--quick``, one short repetition, 256 KiB instead of 1 MiB):
whatever peers are installed here are measured, the others are reported as
skipped with the reason; the test checks that every row of the report has,
for every figure, either a positive number or a reason, and that nothing is
left behind. Numbers are not judged (benchmarks/RESULTS.md holds them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib.util import find_spec

from conftest import child_env

from fastipc.bench.peers import PEER_FIGURES, ROWS


def _run(args: list[str], timeout: float = 300) -> tuple[subprocess.Popen[str], str, str]:
    cmd = [sys.executable, "-m", "fastipc", "bench", *args]
    with subprocess.Popen(
        cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as bench:
        try:
            stdout, stderr = bench.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            bench.kill()
            raise
    assert bench.returncode == 0, stderr
    return bench, stdout, stderr


def _leftovers(pid: int, prefix: str) -> list[str]:
    # Only this run's names (fbp./fbs.<its pid>...): other suites share /tmp and /dev/shm.
    mark = f"{prefix}.{pid}"
    found = []
    for d in ("/dev/shm", tempfile.gettempdir(), "/dev/mqueue"):
        try:
            found += [os.path.join(d, f) for f in os.listdir(d) if mark in f]
        except OSError:
            pass
    return found


def test_peers_report_names_every_peer_with_figures_or_why_skipped(tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "peers.json")
    args = ["--peers", "--quick", "--json", out]
    plot = find_spec("matplotlib") is not None
    if plot:
        args += ["--plot", os.path.join(str(tmp_path), "peers.png")]
    bench, stdout, _ = _run(args)
    assert not _leftovers(bench.pid, "fbp"), _leftovers(bench.pid, "fbp")

    with open(out) as f:
        report = json.load(f)["peers"]
    figures = {fig["key"]: fig for fig in report["figures"]}
    assert set(figures) == {f.key for f in PEER_FIGURES}
    for row in ROWS:
        for key, fig in figures.items():
            entry = fig["rows"].get(row.label)
            assert entry is not None, f"{row.label} missing from {key}"
            if entry.get("skipped"):
                assert entry["median"] is None
                continue
            assert entry["median"] is not None and entry["median"] > 0 or key == "idle_cpu", (
                f"{row.label} {key}: {entry}"
            )
    # fastipc native always runs; its figures are the ratios' reference.
    for key in ("msg64", "batch64", "read1m", "view1m", "rtt_median"):
        assert figures[key]["rows"]["fastipc Ring (native)"]["median"] > 0
        assert figures[key]["best_fastipc_native"] is not None
    # The machine's own limits are in the same run.
    assert figures["read1m"]["rows"]["one-core memcpy"]["median"] > 0

    # The table names every row under every figure, with a number or "skipped: why".
    blocks = stdout.split("\n\n")
    for fig in PEER_FIGURES:
        block = next(b for b in blocks if b.startswith(fig.title))
        for row in ROWS:
            line = next((ln for ln in block.splitlines() if ln.startswith(row.label)), None)
            assert line is not None, f"{row.label} not in the {fig.key} table"
            rest = line[len(row.label) :].split()
            assert rest and (rest[0] == "skipped:" or float(rest[0]) >= 0), line
    assert "MISSED" not in stdout and "target" not in stdout.lower()
    if plot:
        with open(os.path.join(str(tmp_path), "peers.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_scaling_reports_producers_and_sizes() -> None:
    bench, stdout, _ = _run(["--scaling", "--quick", "--json"])
    assert not _leftovers(bench.pid, "fbs"), _leftovers(bench.pid, "fbs")
    scaling = json.loads(stdout)["scaling"]
    ring = "fastipc Ring (native)"
    assert set(scaling["producers_msgs_s"][ring]) == {"1x1", "2x1", "4x4"}
    assert set(scaling["size_gb_s"][ring]) == {"16", "4096", "1048576"}
    for row in scaling["rows"]:
        measured = row in scaling["producers_msgs_s"] or row in scaling["size_gb_s"]
        assert measured or row in scaling["skipped"], row
    # The Channel is one-to-one: its fan-in shapes are skipped with the reason.
    assert "one-to-one" in scaling["skipped"]["fastipc Channel (native)"]["shape 2x1"]
