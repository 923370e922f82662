#!/usr/bin/env python3
"""What starting a long frame in C's own buffer costs (native Channel, issue 10).

A frame over 1 MiB is first read into a buffer of a 16th of its length that
the channel owns, and copied into the message's own bytes once that much has
come; so a header announcing 64 MiB costs nothing until the bytes arrive.
The price is that 16th copied once more. This measures it, on a socketpair
with the hand-off area off (as on TCP), the sender in another process:

- wall clock: GB/s received, staging on and off (``_OWN_FROM`` raised out of
  reach restores the old allocate-on-header path), interleaved, median of 7;
- instructions in the receiving process under callgrind, per message.

    python benchmarks/long_frame_cost.py [--callgrind]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = [2 << 20, 4 << 20, 16 << 20]


def sender(fd: int, size: int, count: int) -> None:
    from fastipc import Channel

    ch = Channel.from_socket(socket.socket(fileno=fd), handoff_min=0)
    msg = b"m" * size
    for _ in range(count):
        ch.send(msg)
    ch.close()


def receive(size: int, count: int, staged: bool) -> float:
    """Seconds to receive ``count`` messages of ``size`` bytes."""
    import fastipc.backends.native_channel as nc
    from fastipc import Channel

    nc._OWN_FROM = 1 << 20 if staged else 1 << 62
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = subprocess.Popen(
        [sys.executable, __file__, "--sender", str(b.fileno()), str(size), str(count)],
        pass_fds=[b.fileno()],
    )
    b.close()
    ch = Channel.from_socket(a, handoff_min=0)
    t0 = time.perf_counter()
    for _ in range(count):
        assert len(ch.recv(timeout=60)) == size
    took = time.perf_counter() - t0
    ch.close()
    child.wait()
    return took


def wall() -> None:
    print(f"{'size':>8} {'staged GB/s':>12} {'direct GB/s':>12} {'staged/direct':>14}")
    for size in SIZES:
        count = max(8, (256 << 20) // size)
        runs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(7):
            for staged in (True, False):
                runs[staged].append(size * count / receive(size, count, staged) / 1e9)
        on, off = statistics.median(runs[True]), statistics.median(runs[False])
        print(f"{size >> 20:>6}Mi {on:>12.2f} {off:>12.2f} {on / off:>14.3f}")


def instructions(size: int, count: int, staged: bool) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--receiver",
                str(size),
                str(count),
                "1" if staged else "0",
            ],
            check=True,
            capture_output=True,
        )
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise RuntimeError("no totals in callgrind output")


def callgrind() -> None:
    print(f"{'size':>8} {'staged instr/msg':>17} {'direct instr/msg':>17}")
    for size in SIZES:
        lo, hi = 4, 12
        per = {}
        for staged in (True, False):
            per[staged] = (instructions(size, hi, staged) - instructions(size, lo, staged)) / (
                hi - lo
            )
        print(f"{size >> 20:>6}Mi {per[True]:>17,.0f} {per[False]:>17,.0f}")


def main() -> None:
    if sys.argv[1:2] == ["--sender"]:
        sender(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    if sys.argv[1:2] == ["--receiver"]:
        receive(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--callgrind", action="store_true", help="count instructions instead")
    args = p.parse_args()
    callgrind() if args.callgrind else wall()


if __name__ == "__main__":
    main()
