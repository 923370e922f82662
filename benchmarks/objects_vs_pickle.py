#!/usr/bin/env python3
"""send_obj/recv_obj against pickle.dumps + send + recv + pickle.loads (issue 15).

One process sends then receives on a Ring (the copies are what differs, not
the wake-ups): a small dict, a 1 MB and a 16 MB float64 array. Interleaved
A B A B, median of 7 of (time for `count` round trips) / count.

    python benchmarks/objects_vs_pickle.py
"""

from __future__ import annotations

import os
import pickle
import statistics
import time

import numpy as np

from fastipc import BACKEND, Ring


def main() -> None:
    cases = {
        "dict ~100 B": ({"id": 7, "tags": ["a", "b"], "score": 0.5}, 20000),
        "array 1 MB": (np.arange(1 << 17, dtype=np.float64), 400),
        "array 16 MB": (np.arange(1 << 21, dtype=np.float64), 30),
    }
    name = f"objbench.{os.getpid()}"
    with Ring.create(name, 64 << 20, unlink_on_exit=True) as r:

        def via_obj(obj: object, count: int) -> float:
            t = time.perf_counter()
            for _ in range(count):
                r.send_obj(obj)
                r.recv_obj()
            return (time.perf_counter() - t) / count

        def via_pickle(obj: object, count: int) -> float:
            t = time.perf_counter()
            for _ in range(count):
                r.send(pickle.dumps(obj, protocol=5))
                pickle.loads(r.recv())
            return (time.perf_counter() - t) / count

        print(f"backend {BACKEND}; per round trip, median of 7 (spread)")
        print(f"{'object':>12} {'send_obj':>16} {'pickle+send':>16} {'ratio':>7}")
        for label, (obj, count) in cases.items():
            a: list[float] = []
            b: list[float] = []
            for _ in range(7):
                a.append(via_obj(obj, count))
                b.append(via_pickle(obj, count))
            ma, mb = statistics.median(a), statistics.median(b)
            print(
                f"{label:>12} {ma * 1e6:9.1f} us ±{(max(a) - min(a)) / ma * 50:3.0f}% "
                f"{mb * 1e6:9.1f} us ±{(max(b) - min(b)) / mb * 50:3.0f}% {mb / ma:6.2f}x"
            )


if __name__ == "__main__":
    main()
