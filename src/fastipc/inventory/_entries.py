"""One :class:`Entry` per IPC object, by kind: rings, queues, socket files and FIFOs."""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import posix_ipc

from .._names import (
    BELL_PREFIX,
    BELL_SUFFIXES,
    SEGMENT_PREFIX,
    SEMAPHORE_PREFIX,
    SEMAPHORE_SUFFIXES,
    SHM_DIR,
    bell_paths,
    segment_path,
    semaphore_paths,
    subscriber_bells,
)
from ._proc import FifoUse, ProcessScan, parse_qsize, read_head, unix_sockets

__all__ = [
    "COLUMNS",
    "BoundPath",
    "Entry",
    "bound_paths",
    "fifo_entry",
    "file_entry",
    "iter_rows",
    "queue_attrs",
    "queue_entry",
    "queue_names",
    "ring_entry",
    "ring_names",
    "socket_entry",
]


@dataclass
class Entry:
    """One IPC object: what ``fastipc ls`` prints a row for.

    ``name`` is the object's URL (``shm://NAME``, ``mq:///NAME``,
    ``unix:///PATH``, ``unixgram:///PATH``, ``fifo:///PATH``), which the
    other verbs (``rm``, ``send``, ``recv``) accept. ``size`` is in bytes
    (a ring's segment; a queue's ``maxmsg * msgsize``), ``mode`` the
    permission bits, ``pids`` the live processes holding it.
    """

    kind: str
    name: str
    path: str | None = None
    size: int | None = None
    mode: int | None = None
    pids: list[int] = field(default_factory=list)
    alive: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    #: Messages waiting to be received (rings, queues); None where unknown.
    waiting: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "mode": None if self.mode is None else f"{self.mode:04o}",
            "pids": self.pids,
            "alive": self.alive,
            "waiting": self.waiting,
            **self.detail,
        }


def iter_rows(entries: Iterable[Entry]) -> Iterator[tuple[str, ...]]:
    """Table rows (kind, name, backend, size, mode, waiting, pids, alive) for ``entries``."""
    for e in entries:
        yield (
            e.kind,
            e.name,
            str(e.detail.get("backend", "-")),
            "-" if e.size is None else str(e.size),
            "-" if e.mode is None else f"{e.mode:04o}",
            "-" if e.waiting is None else str(e.waiting),
            ",".join(map(str, e.pids)) or "-",
            "yes" if e.alive else "no",
        )


#: The header of the table :func:`iter_rows` fills.
COLUMNS = ("KIND", "NAME", "BACKEND", "SIZE", "MODE", "WAITING", "PIDS", "ALIVE")


# ---------------------------------------------------------------------------
# rings
# ---------------------------------------------------------------------------


_SUB_BELL = re.compile(r"\.sub[0-9]{1,4}\Z")


def ring_names() -> list[str]:
    """The names of the rings that have a segment, a semaphore or a doorbell in /dev/shm."""
    try:
        files = os.listdir(SHM_DIR)
    except OSError:
        return []
    names: set[str] = set()
    for f in files:
        if f.startswith(SEGMENT_PREFIX):
            names.add(f[len(SEGMENT_PREFIX) :])
        elif f.startswith(SEMAPHORE_PREFIX):
            for suffix in SEMAPHORE_SUFFIXES:
                if f.endswith(suffix):
                    names.add(f[len(SEMAPHORE_PREFIX) : -len(suffix)])
        elif f.startswith(BELL_PREFIX):
            # A doorbell outliving its ring (made again by a watcher of a ring
            # removed meanwhile) is listed under the ring's name, so rm finds it.
            rest = f[len(BELL_PREFIX) :]
            sub = _SUB_BELL.search(rest)
            if sub:
                names.add(rest[: sub.start()])
            for suffix in BELL_SUFFIXES:
                if rest.endswith(suffix):
                    names.add(rest[: -len(suffix)])
    return sorted(n for n in names if n)


# What each ring layout keeps where (u64 words, little-endian), for ``ls``'s
# WAITING column: messages published minus messages consumed. Only layouts
# known here are read (a newer one shows "?"); tests/test_cli_ls_rm.py
# checks these against real rings of both backends, so a layout change that
# forgets this table fails there.
#   native, csrc/ring.c struct fi_header v3: prod.produced at 144, cons.consumed
#   at 272 (each line 128 bytes from offset 128; the lock word first, then
#   tail/head, then the count)
#   python, backends/python_ring.py v3 and v4 (v4 changed only the handle
#   slots): two (position, count) slots per side,
#   bit 0 of a generation word picking the live one (tail: word 8, slots at
#   words 9-12; head: word 16, slots at words 17-20)
_NATIVE_MAGIC = b"FPCIRN01"
_PYTHON_MAGIC = b"FIPCPY01"


def _ring_header(path: str) -> tuple[str | None, int | None]:
    """(backend, messages waiting) read from the segment at ``path``; None where unknown.

    A snapshot taken without the ring's lock, so it may be a message off
    while producers and consumers run; never trusted beyond display.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        head = os.pread(fd, 512, 0)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    if len(head) < 512:
        return None, None
    words = struct.unpack_from("<64Q", head)
    magic = head[:8]
    if magic == _NATIVE_MAGIC:
        backend, known = "native", words[1] == 3
        waiting = words[144 // 8] - words[272 // 8]
    elif magic == _PYTHON_MAGIC:
        backend, known = "python", struct.unpack_from("<I", head, 8)[0] in (3, 4)
        tail = 9 + 2 * (words[8] & 1)
        head_slot = 17 + 2 * (words[16] & 1)
        waiting = words[tail + 1] - words[head_slot + 1]
    else:
        return None, None
    if not known or not 0 <= waiting < 1 << 40:
        return backend, None
    return backend, waiting


def ring_entry(name: str, scan: ProcessScan) -> Entry | None:
    """Ring ``name``'s entry (segment, and semaphores with the python backend), or None."""
    seg = segment_path(name)
    sems = semaphore_paths(name)
    files = []
    for path in [seg, *sems]:
        try:
            # lstat: a symlink squatting the name (dangling or not) is listed as
            # itself, so that rm can remove it; the file it points to is not ours.
            files.append((path, os.lstat(path)))
        except OSError:
            pass
    if not files:
        return _bells_entry(name, scan)
    first, st = files[0]
    size = st.st_size if first == seg else None  # None: only semaphores are left
    mode = stat.S_IMODE(st.st_mode)
    pids = scan.mapping(p for p, _ in files)
    backend, waiting = _ring_header(seg) if size is not None else (None, None)
    if backend is None:  # unreadable or half-made: guess from its files
        backend = "python" if len(files) > 1 else "native"
    return Entry(
        kind="ring",
        name=f"shm://{name}",
        path=seg,
        size=size,
        mode=mode,
        pids=pids,
        alive=bool(pids),
        detail={"files": [p for p, _ in files], "backend": backend},
        waiting=waiting,
    )


def _bells_entry(name: str, scan: ProcessScan) -> Entry | None:
    """Ring ``name``'s entry when only doorbell FIFOs are left of it, or None."""
    bells = []
    for path in [*bell_paths(name), *subscriber_bells(name)]:
        try:
            bells.append((path, os.lstat(path)))
        except OSError:
            pass
    if not bells:
        return None
    holders: set[int] = set()
    for _, st in bells:
        use = scan.fifo_ids.get((st.st_dev, st.st_ino))
        if use is not None:
            holders |= use.readers | use.writers
    return Entry(
        kind="ring",
        name=f"shm://{name}",
        path=segment_path(name),
        mode=stat.S_IMODE(bells[0][1].st_mode),
        pids=sorted(holders),
        alive=bool(holders),
        detail={"files": [p for p, _ in bells], "only_doorbells": True},
    )


# ---------------------------------------------------------------------------
# queues
# ---------------------------------------------------------------------------


def _open_queue(name: str) -> Any:
    """A posix_ipc handle on existing queue ``name``, or None if it cannot be opened."""
    for read, write in ((True, False), (False, True)):
        try:
            return posix_ipc.MessageQueue(name, read=read, write=write)
        except posix_ipc.PermissionsError:
            continue
        except (posix_ipc.Error, ValueError, OSError):
            return None
    return None


def queue_attrs(name: str) -> dict[str, Any]:
    """max_messages, max_message_size and messages of queue ``name`` ({} if it cannot be opened)."""
    q = _open_queue(name)
    if q is None:
        return {}
    try:
        return {
            "max_messages": int(q.max_messages),
            "max_message_size": int(q.max_message_size),
            "messages": int(q.current_messages),
        }
    finally:
        q.close()


def queue_entry(name: str, scan: ProcessScan, mount: str | None) -> Entry | None:
    """Queue ``name``'s entry (``/NAME``), from the mqueue mount or from its holders, or None."""
    held = scan.queues.get(name)
    mode = held.mode if held else None
    qsize = held.qsize if held else None
    if mount is not None:
        try:
            st = os.stat(mount + name)
        except OSError:
            return None
        mode = stat.S_IMODE(st.st_mode)
        contents = read_head(mount + name)
        if contents is not None:
            qsize = parse_qsize(contents)
    elif held is None:
        return None
    attrs = queue_attrs(name)
    size = None
    if "max_messages" in attrs:
        size = attrs["max_messages"] * attrs["max_message_size"]
    pids = sorted(held.pids) if held else []
    return Entry(
        kind="queue",
        name=f"mq://{name}",
        path=None if mount is None else mount + name,
        size=size,
        mode=mode,
        pids=pids,
        alive=bool(pids),
        detail={**attrs, "queued_bytes": qsize},
        waiting=attrs.get("messages"),
    )


def queue_names(scan: ProcessScan, mount: str | None) -> list[str]:
    """The queues held open by a process, plus every one in the mqueue mount."""
    names = set(scan.queues)
    if mount is not None:
        try:
            names |= {"/" + f for f in os.listdir(mount)}
        except OSError:
            pass
    return sorted(names)


# ---------------------------------------------------------------------------
# socket files and FIFOs
# ---------------------------------------------------------------------------


@dataclass
class BoundPath:
    """A bound socket path: the socket type and the pids holding it."""

    kind: str = "stream"
    pids: set[int] = field(default_factory=set)


def bound_paths(scan: ProcessScan) -> dict[str, BoundPath]:
    """Absolute socket path -> its bound socket's type and holders (live processes only)."""
    out: dict[str, BoundPath] = {}
    for s in unix_sockets():
        if s.connected and not s.listening and s.kind == "stream":
            continue  # an accepted connection: it shows its server's path
        holders = scan.sockets.get(s.inode, set())
        path = s.path
        if not path.startswith("/"):
            # Bound to a relative path: resolve against a holder's cwd (a best guess).
            base = next((scan.cwd[p] for p in sorted(holders) if p in scan.cwd), None)
            if base is None:
                continue
            path = os.path.normpath(os.path.join(base, path))
        b = out.setdefault(path, BoundPath(kind=s.kind))
        b.pids |= holders
    return out


def socket_entry(path: str, st: os.stat_result, bound: dict[str, BoundPath]) -> Entry:
    """The entry of the socket file at ``path``: alive while a process holds it bound."""
    b = bound.get(os.path.abspath(path))
    pids = sorted(b.pids) if b else []
    kind = b.kind if b else None
    scheme = "unixgram" if kind == "dgram" else "unix"
    return Entry(
        kind="socket",
        name=f"{scheme}://{path}",
        path=path,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        pids=pids,
        alive=bool(pids),
        detail={"socket_type": kind, "uid": st.st_uid},
    )


def fifo_entry(path: str, st: os.stat_result, scan: ProcessScan) -> Entry:
    """The entry of the FIFO at ``path``: alive while a process has it open for reading."""
    f = scan.fifo_ids.get((st.st_dev, st.st_ino)) or scan.fifos.get(
        os.path.abspath(path), FifoUse()
    )
    return Entry(
        kind="fifo",
        name=f"fifo://{path}",
        path=path,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        pids=sorted(f.readers | f.writers),
        alive=bool(f.readers),
        detail={"readers": sorted(f.readers), "writers": sorted(f.writers), "uid": st.st_uid},
    )


def file_entry(
    path: str, st: os.stat_result, scan: ProcessScan, bound: dict[str, BoundPath]
) -> Entry | None:
    """The entry of a socket file or FIFO at ``path``; None for any other kind of file."""
    if stat.S_ISSOCK(st.st_mode):
        return socket_entry(path, st, bound)
    if stat.S_ISFIFO(st.st_mode):
        return fifo_entry(path, st, scan)
    return None
