"""Hostile or corrupted segments: every call works or raises a fastipc/OS error in time; nothing crashes or hangs.

The trials run in child processes (``_workers.run_corruption_trials``) so a
crash is seen as a signal exit code instead of taking pytest down, and in a
few children at once because most of their time is spent waiting out timeouts.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest
from conftest import TESTS_DIR, child_env, run_python, shm_entries

import fastipc
from fastipc import IncompatibleSegment, Ring

HEADER_BYTES = 4096
#: Values written over one header word at a time: all ones, zero, the sign bit,
#: small and plausible-but-wrong positions and counts, lock-like words (mutex
#: kinds, a thread id that does not exist), a random word (None).
WORD_VALUES = [
    2**64 - 1,
    0,
    2**63,
    1,
    8,
    4095,
    4096 + 8,
    2**32 - 1,
    2**32,
    0x10,
    0x20,
    0x32,
    0x40,
    0x3FFFF0,
    0x3FFFF0 << 32,
    None,
]
#: The first bytes (where the fixed header fields of any layout live) get every
#: value above; the rest of the header page gets all ones plus one value in turn.
DENSE_BYTES = 512
PARALLEL = 8  # most of a slow trial is spent asleep in a timeout, not on a core


def _launch(
    tmp_path: Path, prefix: str, tag: str, trials: list[dict[str, object]]
) -> tuple[subprocess.Popen[str], IO[str]]:
    spec = tmp_path / f"spec{tag}.json"
    spec.write_text(json.dumps(trials))
    out = open(tmp_path / f"out{tag}.txt", "w+")  # noqa: SIM115 - the caller closes it
    proc = subprocess.Popen(
        [sys.executable, "-m", "_workers", "corrupt", f"{prefix}c{tag}", str(spec)],
        env=child_env(),
        cwd=TESTS_DIR,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, out


def _run_trials(
    tmp_path: Path, prefix: str, trials: list[dict[str, object]], budget: float
) -> None:
    """Run the trials in PARALLEL children; a child that crashes is replaced by one
    that carries on after the fatal trial, so one crash does not hide the others."""
    queue = [trials[i::PARALLEL] for i in range(PARALLEL)]
    deadline = time.monotonic() + budget
    problems: list[str] = []
    crashes = 0
    wave = 0
    while queue:
        running = [(_launch(tmp_path, prefix, f"{wave}_{k}", ts), ts) for k, ts in enumerate(queue)]
        queue = []
        try:
            for (proc, out), ts in running:
                hung = False
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    hung = True
                    proc.kill()
                    proc.wait(10)
                out.seek(0)
                lines = out.read().splitlines()
                started = [ln for ln in lines if ln.startswith("trial ")]
                last_trial = started[-1] if started else "(none)"
                fails = [ln for ln in lines if ln.startswith("FAIL")]
                if hung:
                    problems.append(f"still running after {budget} s (a call hung) in {last_trial}")
                elif proc.returncode < 0:
                    crashes += 1
                    problems.append(f"child killed by signal {-proc.returncode} in {last_trial}")
                    rest = ts[len(started) :]
                    if rest and crashes < 12 and time.monotonic() < deadline:
                        queue.append(rest)
                elif proc.returncode != 0:
                    problems.append(
                        f"child exit {proc.returncode}:\n" + "\n".join(fails[:15] or lines[-20:])
                    )
                elif fails:
                    problems.append("child exited 0 but reported:\n" + "\n".join(fails[:15]))
        finally:
            for (proc, out), _ in running:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
                out.close()
        wave += 1
    left = shm_entries(prefix)
    if left and not problems:
        problems.append(f"left in /dev/shm after close()+unlink() of corrupted rings: {left[:10]}")
    # A crashed child cannot clean up; leave /dev/shm clean for the next test.
    for path in left:
        os.unlink(path)
    assert not problems, "\n\n".join(problems)


def test_every_header_word_overwritten_one_at_a_time(ring_name: str, tmp_path: Path) -> None:
    rnd = random.Random(2024)
    trials: list[dict[str, object]] = []
    for k, offset in enumerate(range(0, HEADER_BYTES, 8)):
        if offset < DENSE_BYTES:
            values = WORD_VALUES
        else:
            values = [WORD_VALUES[0], WORD_VALUES[1 + k % (len(WORD_VALUES) - 1)]]
        for value in values:
            trials.append(
                {
                    "kind": "word",
                    "offset": offset,
                    "value": rnd.getrandbits(64) if value is None else value,
                }
            )
    _run_trials(tmp_path, ring_name, trials, budget=150)


def test_random_header_words_overwritten_together(ring_name: str, tmp_path: Path) -> None:
    trials = [{"kind": "words", "count": 1 + i % 6, "seed": 5000 + i} for i in range(160)]
    _run_trials(tmp_path, ring_name, trials, budget=120)


def test_random_bytes_in_the_data_area(ring_name: str, tmp_path: Path) -> None:
    trials = [{"kind": "data", "count": 1 + i % 8, "seed": 9000 + i} for i in range(160)]
    _run_trials(tmp_path, ring_name, trials, budget=120)


def test_whole_segment_overwritten_with_random_bytes(ring_name: str, tmp_path: Path) -> None:
    trials = [{"kind": "everything", "seed": i} for i in range(24)]
    _run_trials(tmp_path, ring_name, trials, budget=120)


# ---------------------------------------------------------------------------
# files that never were rings
# ---------------------------------------------------------------------------


def _write_segment(name: str, data: bytes) -> None:
    fd = os.open(f"/dev/shm/fastipc.{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _open_must_be_incompatible(name: str) -> None:
    # In a child: a crash must fail this test, not end the run.
    proc = run_python(
        f"""
        import time
        from fastipc import IncompatibleSegment, Ring
        t0 = time.monotonic()
        try:
            Ring.open({name!r})
        except IncompatibleSegment as exc:
            print("IncompatibleSegment", exc)
        else:
            print("opened")
        print("took", time.monotonic() - t0)
        """,
        timeout=30,
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("IncompatibleSegment"), proc.stdout
    assert name in lines[0], "the error should name the segment"
    assert float(lines[1].split()[1]) < 2.0, (
        "open must not wait long on a segment that is not a ring"
    )


@pytest.mark.parametrize("size", [4096, 8192, 65536, 1 << 20])
def test_open_of_random_bytes_is_incompatible(ring_name: str, size: int) -> None:
    _write_segment(ring_name, os.urandom(size))
    _open_must_be_incompatible(ring_name)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 64, 4095])
def test_open_of_too_small_file_is_incompatible(ring_name: str, size: int) -> None:
    _write_segment(ring_name, os.urandom(size))
    _open_must_be_incompatible(ring_name)


@pytest.mark.parametrize("size", [4096, 65536])
def test_open_of_all_zero_file_is_incompatible(ring_name: str, size: int) -> None:
    _write_segment(ring_name, bytes(size))
    _open_must_be_incompatible(ring_name)


def test_open_of_truncated_ring_is_incompatible(ring_name: str) -> None:
    with Ring.create(ring_name, 100_000) as r:
        r.send(b"x" * 1000, timeout=1)
    path = f"/dev/shm/fastipc.{ring_name}"
    full = os.path.getsize(path)
    for size in (full - 1, full // 2, 4096 + 8, 4096, 100):
        os.truncate(path, size)
        _open_must_be_incompatible(ring_name)


def test_open_of_a_ring_with_its_header_zeroed_is_incompatible(ring_name: str) -> None:
    with Ring.create(ring_name, 1000) as r:
        r.send(b"x", timeout=1)
    path = f"/dev/shm/fastipc.{ring_name}"
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(64), 0)
    finally:
        os.close(fd)
    _open_must_be_incompatible(ring_name)


@pytest.mark.skipif(fastipc.BACKEND != "python", reason="the python backend's own earlier layout")
def test_a_ring_of_the_previous_python_layout_is_incompatible(ring_name: str) -> None:
    # Layout 2 (file locks, a 4096-byte header): what a ring made by an older
    # fastipc looks like. It is refused at once, naming the version, never misread.
    header = b"FIPCPY01" + struct.pack("<I4xQQ", 2, 4096, 8192)
    _write_segment(ring_name, header + bytes(4096 + 8192 - len(header)))
    _open_must_be_incompatible(ring_name)
    with pytest.raises(IncompatibleSegment, match="layout version 2"):
        Ring.open(ring_name)


def test_incompatible_segment_is_a_fastipc_error() -> None:
    import fastipc

    assert issubclass(IncompatibleSegment, fastipc.FastIPCError)
    assert fastipc.errors.IncompatibleSegment is IncompatibleSegment


# ---------------------------------------------------------------------------
# waiting calls over a scribbled ring (tools/scribble.py)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(fastipc.BACKEND != "native", reason="csrc/ring.c's header layout")
@pytest.mark.parametrize("how", ["send", "send_many", "reserve"])
def test_tail_off_its_line_is_incompatible_not_a_send_that_ignores_its_timeout(
    ring_name: str, how: str
) -> None:
    """Every publish ends on a 64-byte line, so the tail always stands on one. A tail
    scribbled 8 bytes back, with the head mid-line (a batch's first record consumed)
    and the ring full: the waiting step saw room for a 64-byte slot, the locked step
    needed 72 bytes (the record plus the padding to the next line) and said "full";
    the waiting step, ready at once, never looked at the clock, so a send, send_many
    or reserve with a timeout never returned, at 100% CPU. In a child, so a hang
    fails this test instead of stalling the run."""
    proc = run_python(
        f"""
        import mmap, os, struct, time
        from fastipc import Full, IncompatibleSegment, Ring
        HEAD, TAIL, DSIZE = 264, 136, 32  # csrc/ring.c, struct fi_header
        r = Ring.create({ring_name!r}, 1000)
        fd = os.open("/dev/shm/fastipc." + {ring_name!r}, os.O_RDWR)
        seg = mmap.mmap(fd, 0)
        os.close(fd)
        u64 = lambda off: struct.unpack_from("<Q", seg, off)[0]
        r.send_many([b"a" * 48] * 2)  # two 56-byte records, then padding to the line
        r.recv(timeout=0)  # the head: 56, mid-line
        try:
            while True:
                r.send(b"b" * 56, timeout=0)  # 64-byte records until full
        except Full:
            pass
        assert u64(TAIL) % 64 == 0 and u64(TAIL) - u64(HEAD) > u64(DSIZE) - 64
        struct.pack_into("<Q", seg, TAIL, u64(TAIL) - 8)
        started = time.monotonic()
        try:
            if {how!r} == "send":
                r.send(b"c" * 56, timeout=0.5)
            elif {how!r} == "send_many":
                r.send_many([b"c" * 56], timeout=0.5)
            else:
                with r.reserve(56, timeout=0.5) as view:
                    view[:] = b"c" * 56
        except IncompatibleSegment as exc:
            print("IncompatibleSegment", exc)
        print("took", time.monotonic() - started)
        seg.close()
        r.close()
        """,
        timeout=20,
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("IncompatibleSegment"), proc.stdout
    assert float(lines[1].split()[1]) < 0.4, proc.stdout
