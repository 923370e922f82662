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
    cmd = [sys.executable, "-m", "fastipc", "bench", "--quick", "--repeat", "1"]
    cmd += ["--duration", "0.05", "--json", "--aio"]
    with subprocess.Popen(
        cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as bench:
        try:
            stdout, stderr = bench.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            bench.kill()
            raise
    assert bench.returncode == 0, stderr
    # The bench names its rings fbench.<its pid><random>; other runs on the
    # machine (a second suite, a helper's bench) make their own objects meanwhile.
    left = {f for f in set(os.listdir("/dev/shm")) - before if f"fbench.{bench.pid}" in f}
    assert not left, f"the bench left files in /dev/shm: {sorted(left)}"
    proc = subprocess.CompletedProcess(cmd, bench.returncode, stdout, stderr)
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

    aio = report["aio"]["figures"]
    expected_aio = {"pp_ring", "pp_streams", "pps_ring", "pps_streams", "idle"}
    expected_aio |= {f"{p}_channel_{t}" for p in ("pp", "pps") for t in ("unix", "tcp")}
    assert expected_aio <= set(aio) and {"aio_for", "aio_many", "streams_each"} <= set(aio)
    for key, fig in aio.items():
        assert fig["unit"] and fig["label"], key
        assert fig["median"] >= 0 if key == "idle" else fig["median"] > 0, f"aio {key}: {fig}"
