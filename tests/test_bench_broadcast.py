"""The broadcast benchmark engine runs end to end and reports what it measured (no speed asserted)."""

from __future__ import annotations

import glob

from fastipc.bench.broadcast import format_broadcast, run_broadcast


def test_broadcast_bench_measures_every_kind_and_leaves_nothing_behind() -> None:
    report = run_broadcast(("native", "python"), counts=(1, 2), duration=0.1, repeat=1)
    kinds = {(r["kind"], r["transport"], r["subscribers"]) for r in report["rows"]}
    for kind in ("msg64", "many64", "mib1"):
        for transport in ("native", "python"):
            for n in (1, 2):
                assert (kind, transport, n) in kinds, report["skipped"]
    for row in report["rows"]:
        assert row["per_sub"] > 0 and row["slowest"] <= row["per_sub"] and row["pub_rate"] > 0
    text = format_broadcast(report)
    assert "per-subscriber msgs/s" in text and "fastipc native" in text
    assert "|" in format_broadcast(report, markdown=True)
    assert not glob.glob("/dev/shm/*fbench-bc.*")


def test_a_missing_peer_is_reported_as_skipped() -> None:
    from fastipc.bench import broadcast

    saved = broadcast._MODULES.copy()
    broadcast._MODULES["zmq"] = "no_such_module_fastipc_test"
    try:
        report = run_broadcast(("zmq",), kinds=("msg64",), counts=(1,), duration=0.1, repeat=1)
    finally:
        broadcast._MODULES.clear()
        broadcast._MODULES.update(saved)
    assert "zmq" in report["skipped"] and "not installed" in report["skipped"]["zmq"]
    assert report["rows"] == []
