"""Several producers and consumers in separate processes: every message delivered once, in order per producer."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import _workers
import pytest
from conftest import join_all

from fastipc import Ring

N_PER_PRODUCER = 4000


def _check_delivery(
    results: list[list[tuple[int, int]]], producers: int, per_producer: int
) -> None:
    for c, got in enumerate(results):
        last: dict[int, int] = {}
        for producer, seq in got:
            assert seq > last.get(producer, -1), (
                f"consumer {c}: producer {producer} seq {seq} after {last[producer]}"
            )
            last[producer] = seq
    everything = Counter(tuple(t) for got in results for t in got)
    dups = [t for t, k in everything.items() if k > 1]
    assert not dups, f"delivered more than once: {dups[:10]}"
    expected = {(p, s) for p in range(producers) for s in range(per_producer)}
    missing = expected - set(everything)
    extra = set(everything) - expected
    assert not missing, f"{len(missing)} never delivered, e.g. {sorted(missing)[:10]}"
    assert not extra, f"unexpected messages: {sorted(extra)[:10]}"


@pytest.mark.parametrize(
    "producer_modes, consumer_modes",
    [
        (["send", "send", "send"], ["recv", "recv", "recv"]),
        (["send", "send_many", "reserve"], ["recv_many", "recv_view", "recv_into"]),
    ],
    ids=["plain", "mixed"],
)
def test_three_producers_three_consumers_exactly_once_in_order(
    make_ring: object,
    spawn: object,
    tmp_path: Path,
    producer_modes: list[str],
    consumer_modes: list[str],
) -> None:
    ring: Ring = make_ring(4096)  # type: ignore[operator]
    outs = [str(tmp_path / f"consumer{i}.json") for i in range(3)]
    consumers = [
        spawn.Process(target=_workers.mp_consumer, args=(ring, mode, out), name=f"consumer-{mode}")  # type: ignore[attr-defined]
        for mode, out in zip(consumer_modes, outs)
    ]
    producers = [
        spawn.Process(  # type: ignore[attr-defined]
            target=_workers.mp_producer,
            args=(ring, p, N_PER_PRODUCER, mode, 1000 + p),
            name=f"producer-{mode}",
        )
        for p, mode in enumerate(producer_modes)
    ]
    for proc in consumers + producers:
        proc.start()
    try:
        join_all(producers, timeout=90)
    finally:
        ring.shutdown()  # consumers drain what is left and stop at Closed
        join_all(consumers, timeout=30)
    results = []
    for out in outs:
        with open(out) as f:
            results.append([tuple(t) for t in json.load(f)])
    _check_delivery(results, 3, N_PER_PRODUCER)
    assert len(ring) == 0


def test_ring_pickled_to_spawned_workers_round_trips(
    make_ring: object, ring_name: str, spawn: object
) -> None:
    to_worker: Ring = make_ring(1024)  # type: ignore[operator]
    back_name = ring_name + "_back"
    back = Ring.create(back_name, 1024)
    try:
        worker = spawn.Process(target=_workers.mp_echo, args=(to_worker, back, 200))  # type: ignore[attr-defined]
        worker.start()
        for i in range(200):
            to_worker.send(b"msg-%d" % i, timeout=10)
            assert back.recv(timeout=10) == (b"msg-%d" % i)[::-1]
        join_all([worker], timeout=20)
    finally:
        back.close()
        Ring.unlink_name(back_name)


def test_handles_in_a_spawned_worker_are_its_own(make_ring: object, spawn: object) -> None:
    """The worker closes its (unpickled) handle on exit; ours keeps working."""
    ring: Ring = make_ring(1024)  # type: ignore[operator]
    ring.send(b"to the worker", timeout=1)
    worker = spawn.Process(target=_workers.mp_echo, args=(ring, ring, 1))  # type: ignore[attr-defined]
    worker.start()
    join_all([worker], timeout=20)
    assert not ring.closed
    assert ring.recv(timeout=1) == b"rekrow eht ot"
    assert os.path.exists(f"/dev/shm/fastipc.{ring.name}")
