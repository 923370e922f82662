"""Broadcast rings in the inventory: a ring entry whose segment is a broadcast ring, with its subscribers."""

from __future__ import annotations

import os
import struct
from dataclasses import replace
from typing import Any

from ._entries import Entry

__all__ = ["as_broadcast"]

_PYTHON_MAGIC = b"FIPCPB01"
_NATIVE_MAGIC = b"FPCIBC01"
#: The python layout (backends/python_broadcast.py, layout version 2): slots at byte 512,
#: 128 bytes each; another version's segment shows no subscribers.
_PYTHON_VERSION = 2
_SLOTS_AT = 512
_SLOT_BYTES = 128
_MAX_SLOTS = 4096


def _alive(pid: int, start: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == start


def _python_detail(head: bytes, fd: int) -> dict[str, Any]:
    capacity, _, closed, policy, nslots = struct.unpack_from("<QQQQQ", head, 16)
    detail: dict[str, Any] = {
        "capacity": capacity,
        "policy": {0: "overwrite", 1: "block"}.get(policy, f"unknown ({policy})"),
        "shut_down": bool(closed),
        "max_subscribers": nslots,
    }
    version = struct.unpack_from("<I", head, 8)[0]
    if version != _PYTHON_VERSION or not 1 <= nslots <= _MAX_SLOTS:
        return detail
    sel = struct.unpack_from("<Q", head, 56)[0] & 1
    tail, published = struct.unpack_from("<QQ", head, 64 + 32 * sel)
    slots = os.pread(fd, _SLOT_BYTES * nslots, _SLOTS_AT)
    subs = []
    for s in range(len(slots) // _SLOT_BYTES):
        at = _SLOT_BYTES * s
        pid, start, pos, seq, missed = struct.unpack_from("<QQQQQ", slots, at)
        if struct.unpack_from("<Q", slots, at + 64)[0] & 1:  # the live cursor is pair 1
            pos, seq = struct.unpack_from("<QQ", slots, at + 72)
        if pid:
            subs.append(
                {
                    "slot": s,
                    "pid": pid,
                    "alive": pid < 1 << 31 and _alive(pid, start),
                    "waiting": max(published - seq, 0),
                    "behind_bytes": max(tail - pos, 0),
                    "missed": missed,
                }
            )
    detail["subscribers"] = subs
    return detail


#: Native layout version -> offsets of (tail, messages published, closed flag)
#: in struct bc_header (csrc/broadcast.c). Only the layout this fastipc makes
#: is read: another version's segment shows no subscribers.
_NATIVE_OFFSETS = {2: (256, 136, 400)}


def _native_detail(fd: int) -> dict[str, Any]:
    """The native layout (csrc/broadcast.c: struct bc_header, struct bc_slot)."""
    head = os.pread(fd, 512, 0)
    version, _, capacity, _ = struct.unpack_from("<QQQQ", head, 8)
    nslots, policy = struct.unpack_from("<II", head, 40)
    detail: dict[str, Any] = {
        "capacity": capacity,
        "policy": {0: "overwrite", 1: "block"}.get(policy, f"unknown ({policy})"),
        "max_subscribers": nslots,
    }
    offsets = _NATIVE_OFFSETS.get(version)
    if offsets is None:  # a newer fastipc's: what it keeps where is not known here
        return detail
    tail = struct.unpack_from("<Q", head, offsets[0])[0]
    published = struct.unpack_from("<Q", head, offsets[1])[0]
    closed = struct.unpack_from("<I", head, offsets[2])[0]
    detail["shut_down"] = bool(closed or tail >> 63)
    if not 1 <= nslots <= _MAX_SLOTS:
        return detail
    tail &= (1 << 63) - 1
    slots = os.pread(fd, 128 * nslots, os.sysconf("SC_PAGESIZE"))
    subs = []
    for s in range(len(slots) // 128):
        owner, pos, seq = struct.unpack_from("<QQQ", slots, 128 * s)
        missed = struct.unpack_from("<Q", slots, 128 * s + 40)[0]
        if owner:
            # The owner word: start time (low 32 bits, clock ticks) << 32 | pid.
            pid, start = owner & 0x3FFFFFFF, owner >> 32
            subs.append(
                {
                    "slot": s,
                    "pid": pid,
                    "alive": pid > 0 and _alive_low32(pid, start),
                    "waiting": max(published - seq, 0),
                    "behind_bytes": max(tail - pos, 0),
                    "missed": missed,
                }
            )
    detail["subscribers"] = subs
    return detail


def _alive_low32(pid: int, start: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0] not in (b"Z", b"X") and int(fields[19]) & 0xFFFFFFFF == start


def as_broadcast(entry: Entry) -> Entry:
    """``entry`` (a ring) as a broadcast entry if its segment is a broadcast ring; else unchanged.

    Read-only and bounds-checked: a corrupt or unreadable segment keeps the
    plain ring entry.
    """
    if entry.path is None:
        return entry
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return entry
    try:
        head = os.pread(fd, 128, 0)
        if head[:8] == _PYTHON_MAGIC and len(head) == 128:
            detail = {"backend": "python", **_python_detail(head, fd)}
        elif head[:8] == _NATIVE_MAGIC:
            detail = {"backend": "native", **_native_detail(fd)}
        else:
            return entry
    except (OSError, ValueError, struct.error):
        return entry
    finally:
        os.close(fd)
    files = entry.detail.get("files", [entry.path])
    return replace(entry, kind="broadcast", detail={"files": files, **detail})
