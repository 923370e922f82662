"""What a ring leaves in /dev/shm: owner-only by default whatever the umask, `mode` honoured, nothing after unlink."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest
from conftest import shm_entries

from fastipc import Ring, Timeout


@pytest.fixture
def umask() -> Iterator[object]:
    """umask(value) sets this process's umask; the old one is restored at teardown."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(value: int) -> None:
        os.umask(value)

    yield set_
    os.umask(old)


def _modes(name: str) -> dict[str, int]:
    return {os.path.basename(p): stat.S_IMODE(os.stat(p).st_mode) for p in shm_entries(name)}


def _exercise(r: Ring) -> None:
    """Touch every path that might create an OS object lazily (wake-ups included)."""
    r.send(b"x", timeout=1)
    r.recv(timeout=1)
    r.send_many([b"a", b"b"], timeout=1)
    r.recv_many(5, timeout=1)
    with r.reserve(3, timeout=1) as mv:
        mv[:] = b"abc"
    with r.recv_view(timeout=1):
        pass


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_everything_is_owner_only_by_default(ring_name: str, umask: object, mask: int) -> None:
    umask(mask)  # type: ignore[operator]
    with Ring.create(ring_name, 1024) as r:
        assert os.path.exists(f"/dev/shm/fastipc.{ring_name}")
        with Ring.open(ring_name) as r2:
            _exercise(r)
            _exercise(r2)
        modes = _modes(ring_name)
        assert modes, "the ring's /dev/shm entries must contain its name"
        wrong = {k: oct(v) for k, v in modes.items() if v != 0o600}
        assert not wrong, f"umask {mask:03o}: not 0600: {wrong}"
        for p in shm_entries(ring_name):
            assert os.stat(p).st_uid == os.getuid()


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("mode", [0o640, 0o660, 0o644])
def test_mode_is_honoured_exactly_whatever_the_umask(
    ring_name: str, umask: object, mask: int, mode: int
) -> None:
    umask(mask)  # type: ignore[operator]
    with Ring.create(ring_name, 1024, mode=mode) as r:
        _exercise(r)
        modes = _modes(ring_name)
        assert modes
        wrong = {k: oct(v) for k, v in modes.items() if v != mode}
        assert not wrong, f"mode {mode:o}, umask {mask:03o}: {wrong}"


@pytest.mark.parametrize("bad", [-1, 0o1000, 0o4600, "0600", 1.5, True])
def test_bad_mode_is_rejected_and_creates_nothing(ring_name: str, bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        Ring.create(ring_name, 64, mode=bad)  # type: ignore[arg-type]
    assert shm_entries(ring_name) == []


def test_unlink_removes_everything_and_the_handle_keeps_working(ring_name: str) -> None:
    r = Ring.create(ring_name, 1024)
    try:
        _exercise(r)
        r.send(b"still here", timeout=1)
        r.unlink()
        assert shm_entries(ring_name) == []
        with pytest.raises(FileNotFoundError):
            Ring.open(ring_name)
        assert r.recv(timeout=1) == b"still here"
        r.send(b"and works", timeout=1)
        assert r.recv(timeout=1) == b"and works"
        r.unlink()  # a second unlink through the handle is harmless
    finally:
        r.close()
    assert shm_entries(ring_name) == []


def test_unlink_name_removes_everything_while_handles_are_open(ring_name: str) -> None:
    with Ring.create(ring_name, 1024) as r, Ring.open(ring_name) as r2:
        _exercise(r)
        _exercise(r2)
        Ring.unlink_name(ring_name)
        assert shm_entries(ring_name) == []
        with pytest.raises(FileNotFoundError):
            Ring.unlink_name(ring_name)
        r.send(b"private now", timeout=1)
        assert r2.recv(timeout=1) == b"private now"
    assert shm_entries(ring_name) == []


def test_name_can_be_reused_after_unlink_while_old_handle_lives(ring_name: str) -> None:
    old = Ring.create(ring_name, 512)
    try:
        old.send(b"old", timeout=1)
        Ring.unlink_name(ring_name)
        with Ring.create(ring_name, 256) as new:
            assert new.capacity == 256
            assert len(new) == 0
            new.send(b"new", timeout=1)
            assert old.recv(timeout=1) == b"old"
            with pytest.raises(Timeout):
                old.recv(timeout=0)  # the old ring is empty: its message was not the new one
            with Ring.open(ring_name) as again:
                assert again.recv(timeout=1) == b"new"
    finally:
        old.close()
    Ring.unlink_name(ring_name)
    assert shm_entries(ring_name) == []


def test_close_without_unlink_leaves_the_ring_for_others(ring_name: str) -> None:
    with Ring.create(ring_name, 64) as r:
        r.send(b"x", timeout=1)
    assert os.path.exists(f"/dev/shm/fastipc.{ring_name}")
    with Ring.open(ring_name) as r2:
        assert r2.recv(timeout=1) == b"x"
