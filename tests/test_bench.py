"""``fastipc bench``, the main job, runs end to end and reports every figure.

Numbers are not judged here (speed belongs to benchmarks/RESULTS.md); what
is checked is that each figure was measured on both backends, with real
processes, and came back as a positive number rather than an error, and
that the run leaves nothing in /dev/shm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import child_env

from fastipc.bench.channel import KINDS, MACHINE_KINDS, PLAIN_KINDS


def test_bench_reports_every_figure() -> None:
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastipc",
            "bench",
            "--quick",
            "--repeat",
            "1",
            "--duration",
            "0.05",
            "--json",
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)

    assert report["figures"], "no Ring figures"
    for fig in report["figures"]:
        for backend in ("native", "python"):
            res = fig["results"].get(backend)
            assert res is not None, f"{fig['key']}: no {backend} result ({fig['results']})"
            assert res["median"] > 0, f"{fig['key']} {backend}: {res}"

    rows = {(r["kind"], r["backend"]): r for r in report["channel"]}
    expected = [(k, b) for k in KINDS for b in ("native", "python")]
    expected += [("rtt64_nospin", "native")]
    expected += [(k, "plain") for k in PLAIN_KINDS] + [(k, "machine") for k in MACHINE_KINDS]
    for key in expected:
        row = rows.get(key)
        assert row is not None, f"channel figure {key} missing"
        assert "error" not in row, f"channel figure {key}: {row['error']}"
        value = row.get("gb_s", row.get("msgs_s", row.get("median_us")))
        assert value is not None and value > 0, f"channel figure {key}: {row}"

    assert set(os.listdir("/dev/shm")) - before == set(), "the bench left files in /dev/shm"
