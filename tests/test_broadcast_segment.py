"""Broadcast segments: corruption raises IncompatibleSegment (never a crash or a hang),
owner-only objects, symlinks refused, Ring and Broadcast refuse each other's segments,
nothing left in /dev/shm."""

from __future__ import annotations

import os
import stat
import struct
import time

import pytest
from conftest import run_python, shm_entries

import fastipc
from fastipc import Broadcast, Empty, IncompatibleSegment, Ring


def test_ring_open_on_a_broadcast_ring_and_vice_versa_is_incompatible(ring_name: str) -> None:
    with Broadcast.create(ring_name, 64), pytest.raises(IncompatibleSegment):
        Ring.open(ring_name)
    Broadcast.unlink_name(ring_name)
    with Ring.create(ring_name, 64):
        with pytest.raises(IncompatibleSegment) as info:
            Broadcast.subscribe(ring_name)
        assert "Ring" in str(info.value)
        with pytest.raises(IncompatibleSegment):
            Broadcast.open(ring_name)
        with pytest.raises(IncompatibleSegment):
            Broadcast.create(ring_name, 64, exist_ok=True)


@pytest.mark.parametrize("size", [0, 8, 100, 4096, 65536])
def test_junk_files_are_incompatible(ring_name: str, size: int) -> None:
    path = f"/dev/shm/fastipc.{ring_name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, os.urandom(size))
    os.close(fd)
    for call in (Broadcast.open, Broadcast.subscribe):
        with pytest.raises(IncompatibleSegment):
            call(ring_name)


def test_everything_is_owner_only_by_default_and_mode_is_exact(ring_name: str) -> None:
    old = os.umask(0)
    try:
        with Broadcast.create(ring_name, 64) as pub, Broadcast.subscribe(ring_name) as sub:
            sub.fileno()  # makes the subscriber's bell
            pub.publish(b"x")
            entries = shm_entries(ring_name)
            assert len(entries) >= 2  # the segment and the bell (python: also .recv/.send)
            for path in entries:
                assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600, path
    finally:
        os.umask(old)
    Broadcast.unlink_name(ring_name)
    old = os.umask(0o077)
    try:
        with Broadcast.create(ring_name, 64, mode=0o640), Broadcast.subscribe(ring_name) as sub:
            sub.fileno()
            for path in shm_entries(ring_name):
                assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640, path
    finally:
        os.umask(old)


def test_a_symlink_at_the_name_is_never_followed(ring_name: str, tmp_path: object) -> None:
    target = os.path.join(str(tmp_path), "target")
    with open(target, "wb") as f:
        f.write(b"\0" * 8192)
    link = f"/dev/shm/fastipc.{ring_name}"
    os.symlink(target, link)
    try:
        for call in (Broadcast.open, Broadcast.subscribe):
            with pytest.raises(OSError) as info:
                call(ring_name)
            assert "symbolic link" in str(info.value)
        with pytest.raises(FileExistsError):
            Broadcast.create(ring_name, 64)
        with open(target, "rb") as f:
            assert f.read() == b"\0" * 8192
    finally:
        os.unlink(link)


def test_unlink_removes_every_object_subscriber_bells_included(ring_name: str) -> None:
    pub = Broadcast.create(ring_name, 64)
    subs = [Broadcast.subscribe(ring_name) for _ in range(3)]
    for s in subs:
        s.fileno()
    assert len(shm_entries(ring_name)) >= 4
    Broadcast.unlink_name(ring_name)
    assert shm_entries(ring_name) == []
    pub.publish(b"still works")  # open handles keep working
    assert subs[0].recv(timeout=5) == b"still works"
    for s in subs:
        s.close()
    pub.close()
    with pytest.raises(FileNotFoundError):
        Broadcast.unlink_name(ring_name)


def test_scribbled_header_and_slots_raise_incompatible_never_crash(ring_name: str) -> None:
    """Each header word and subscriber-slot word overwritten in turn with hostile values:
    every call returns or raises a fastipc/OS error; close and unlink still work. In a
    child, so a crash shows as a signal exit instead of taking pytest down."""
    run_python(
        f"""
        import os, struct, sys
        from fastipc import Broadcast, FastIPCError
        name = {ring_name!r}
        path = "/dev/shm/fastipc." + name
        pub = Broadcast.create(name, 512, subscribers=4)
        sub = Broadcast.subscribe(name)
        pub.publish_many([b"m" * 40] * 5)
        fd = os.open(path, os.O_RDWR)
        clean = os.pread(fd, 1024, 0)
        values = [2**64 - 1, 0, 2**63, 1, 7, 4096, 2**32, 0x3FFFF0 << 32]
        offsets = list(range(0, 160, 8)) + list(range(512, 512 + 2 * 128, 8))
        outcomes = {{}}
        for off in offsets:
            for v in values:
                os.pwrite(fd, struct.pack("<Q", v), off)
                for call in (
                    lambda: pub.publish(b"x" * 30, timeout=0.05),
                    lambda: pub.publish_many([b"y"] * 200, timeout=0.05),
                    lambda: sub.recv(timeout=0.05),
                    lambda: sub.recv_many(9, timeout=0.05),
                    lambda: len(sub),
                    lambda: pub.subscribers,
                    lambda: Broadcast.subscribe(name).close(),
                    lambda: Broadcast.open(name).close(),
                ):
                    try:
                        call()
                        outcomes["ok"] = outcomes.get("ok", 0) + 1
                    except (FastIPCError, OSError, ValueError) as exc:
                        k = type(exc).__name__
                        outcomes[k] = outcomes.get(k, 0) + 1
                os.pwrite(fd, clean, 0)
        # the data area: random bytes over every record
        os.pwrite(fd, os.urandom(4096), 4096)
        for call in (lambda: sub.recv(timeout=0.05), lambda: pub.publish(b"z" * 100, timeout=0.05)):
            try:
                call()
            except (FastIPCError, OSError, ValueError) as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        os.close(fd)
        sub.close()
        pub.close()
        Broadcast.unlink_name(name)
        print(sorted(outcomes.items()))
        assert outcomes.get("IncompatibleSegment", 0) > 0, outcomes
        """,
        timeout=300,
    )


def _runnable() -> float:
    """Seconds the calling thread has been runnable (on a CPU or queued for one): a
    busy machine shrinks a spinning thread's CPU time, not this."""
    with open("/proc/thread-self/schedstat") as f:
        on_cpu, queued = f.read().split()[:2]
    return (int(on_cpu) + int(queued)) / 1e9


def _tail_word(fd: int) -> int:
    """Byte offset of the tail word a subscriber compares its cursor with: csrc/broadcast.c's
    pub.tail, or the python backend's tail in the state slot its generation (word 7) picks."""
    if fastipc.BACKEND == "native":
        return 256
    sel = struct.unpack("<Q", os.pread(fd, 8, 56))[0]
    return 8 * (8 + 4 * (sel & 1))


@pytest.mark.parametrize("how", ["recv", "recv_many", "recv_into", "recv_view"])
def test_scribbled_tail_makes_a_waiting_receive_sleep_or_fail_never_spin(
    ring_name: str, how: str
) -> None:
    """tools/scribble.py --backend python --seed 1109 (kind broadcast): the tail word
    of the current state overwritten (0 -> 178) with the state generation unchanged.
    The python subscriber's wake-up hint read the tail word itself and said "a message
    is there", its take used the snapshot it had cached for that generation and said
    "nothing": a receive went back and forth between the two at 100% CPU until its
    deadline (for ever without one), then raised Empty."""
    timeout = 1.0
    with (
        Broadcast.create(ring_name, 64, subscribers=2) as pub,
        Broadcast.subscribe(ring_name) as sub,
    ):
        pub.publish(b"m" * 40)
        assert sub.recv(timeout=0) == b"m" * 40  # the cursor at the tail, its state cached
        fd = os.open(f"/dev/shm/fastipc.{ring_name}", os.O_RDWR)
        try:
            off = _tail_word(fd)
            tail = struct.unpack("<Q", os.pread(fd, 8, off))[0]
            os.pwrite(fd, struct.pack("<Q", tail + 178), off)
            started, runnable, cpu = time.monotonic(), _runnable(), time.thread_time()
            with pytest.raises((IncompatibleSegment, Empty)):
                if how == "recv":
                    sub.recv(timeout=timeout)
                elif how == "recv_many":
                    sub.recv_many(4, timeout=timeout)
                elif how == "recv_into":
                    sub.recv_into(bytearray(64), timeout=timeout)
                else:
                    with sub.recv_view(timeout=timeout):
                        pass
            wall, used = time.monotonic() - started, _runnable() - runnable
            ran = time.thread_time() - cpu
            assert wall < timeout + 1.0
            # A sleeping wait is runnable a few ms (more on a loaded machine, queued
            # after each wake-up, but then it hardly runs); the spin, its whole timeout.
            assert used < 0.25 * timeout or ran < 0.1 * used, (
                f"{how}: runnable {used:.3f} s (on a CPU {ran:.3f} s) in {wall:.3f} s"
            )
        finally:
            os.close(fd)
    Broadcast.unlink_name(ring_name)


def test_fastipc_ls_shows_a_broadcast_ring_with_its_subscribers_and_rm_removes_it(
    ring_name: str,
) -> None:
    import json
    import subprocess
    import sys

    from conftest import child_env

    with (
        Broadcast.create(ring_name, 1024, policy="block") as pub,
        Broadcast.subscribe(ring_name) as sub,
    ):
        sub.fileno()
        pub.publish_many([b"a", b"b"])
        done = subprocess.run(
            [sys.executable, "-m", "fastipc", "ls", "--json"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        entries = json.loads(done.stdout)["entries"]
        (e,) = [e for e in entries if e["name"] == f"shm://{ring_name}"]
        assert e["kind"] == "broadcast"
        assert e["policy"] == "block" and e["max_subscribers"] == 64
        (s,) = e["subscribers"]
        assert s["pid"] == os.getpid() and s["alive"] and s["waiting"] == 2
        assert s["behind_bytes"] > 0 and e["shut_down"] is False
        # bcast://NAME names the same object for ls and rm.
        done = subprocess.run(
            [sys.executable, "-m", "fastipc", "ls", "--json", f"bcast://{ring_name}"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        (e,) = json.loads(done.stdout)["entries"]
        assert e["kind"] == "broadcast" and len(e["subscribers"]) == 1
        subprocess.run(
            [sys.executable, "-m", "fastipc", "rm", "--force", f"bcast://{ring_name}"],
            env=child_env(),
            capture_output=True,
            timeout=120,
            check=True,
        )
        assert shm_entries(ring_name) == []
