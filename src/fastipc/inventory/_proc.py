"""One pass over /proc: which process maps which ring and holds which socket, queue or FIFO."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._names import SHM_DIR

__all__ = [
    "FifoUse",
    "ProcessScan",
    "UnixSocket",
    "mqueue_mount",
    "parse_qsize",
    "read_head",
    "read_text",
    "unix_sockets",
]

#: /proc/net/unix: the "listening" flag (__SO_ACCEPTCON) and socket types.
_SO_ACCEPTCON = 0x10000
_UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}


def _pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def read_text(path: str) -> str | None:
    """A whole (/proc) file as text, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_head(path: str, size: int = 256) -> str | None:
    """The first ``size`` bytes of a file as text (an mqueue file's status line), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        return os.read(fd, size).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _mount_ids(pid: int) -> set[str] | None:
    text = read_text(f"/proc/{pid}/mountinfo")
    if text is None:
        return None
    return {line.split(" ", 1)[0] for line in text.splitlines() if line}


def _fd_info(pid: int, fd: str) -> dict[str, str]:
    text = read_text(f"/proc/{pid}/fdinfo/{fd}") or ""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_qsize(text: str) -> int | None:
    """The QSIZE field of an mqueue file's contents."""
    for part in text.split():
        if part.startswith("QSIZE:"):
            try:
                return int(part[6:])
            except ValueError:
                return None
    return None


@dataclass
class _Queue:
    pids: set[int] = field(default_factory=set)
    mode: int | None = None
    uid: int | None = None
    qsize: int | None = None


@dataclass
class FifoUse:
    """Who has a FIFO open: readers and writers (pids)."""

    readers: set[int] = field(default_factory=set)
    writers: set[int] = field(default_factory=set)


class ProcessScan:
    """One pass over ``/proc/PID``: who maps which ring, holds which socket, queue, FIFO.

    ``maps`` reads ``/proc/PID/maps`` (rings); ``fds`` reads the
    ``/proc/PID/fd`` links (sockets, queues, FIFOs). Unreadable processes
    are skipped and counted in ``unreadable``.
    """

    def __init__(self, *, maps: bool = True, fds: bool = True) -> None:
        me = os.getpid()
        uid = os.geteuid()
        #: /dev/shm path -> pids mapping it
        self.mapped: dict[str, set[int]] = {}
        #: socket inode -> pids holding it
        self.sockets: dict[int, set[int]] = {}
        #: queue name ("/name") -> holders and what its descriptor says
        self.queues: dict[str, _Queue] = {}
        #: FIFO path -> readers and writers
        self.fifos: dict[str, FifoUse] = {}
        #: the same, by the FIFO's (st_dev, st_ino): a path through a symlinked
        #: directory (/var/run for /run) names the same FIFO
        self.fifo_ids: dict[tuple[int, int], FifoUse] = {}
        #: pid -> cwd (for sockets bound to a relative path)
        self.cwd: dict[int, str] = {}
        #: processes of this user whose maps or fds could not be read (other
        #: users' are not counted: what they hold is not ours to remove either)
        self.unreadable = 0
        #: their pids
        self.unreadable_pids: list[int] = []
        for pid in _pids():
            if pid == me:
                continue  # this command's own descriptors are not the world's
            ok = True
            if maps:
                ok = self._scan_maps(pid) and ok
            if fds:
                ok = self._scan_fds(pid) and ok
            if not ok and _owner(pid) == uid:
                self.unreadable += 1
                self.unreadable_pids.append(pid)

    def _scan_maps(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except PermissionError:
            return False
        except OSError:
            return True  # gone meanwhile
        prefix = SHM_DIR + "/"
        for line in text.splitlines():
            at = line.find(prefix)
            if at < 0 or line.endswith(" (deleted)"):
                continue
            self.mapped.setdefault(line[at:], set()).add(pid)
        return True

    def _scan_fds(self, pid: int) -> bool:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            return False
        except OSError:
            return True  # gone meanwhile
        mounts: set[str] | None = None
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target.startswith("socket:["):
                try:
                    inode = int(target[8:-1])
                except ValueError:
                    continue
                self.sockets.setdefault(inode, set()).add(pid)
                continue
            if not target.startswith("/") or target.endswith(" (deleted)"):
                continue
            try:
                st = os.stat(link)
            except OSError:
                continue
            if stat.S_ISFIFO(st.st_mode):
                info = _fd_info(pid, fd)
                try:
                    access = int(info.get("flags", "0"), 8) & os.O_ACCMODE
                except ValueError:
                    access = os.O_RDWR
                entry = self.fifo_ids.setdefault((st.st_dev, st.st_ino), FifoUse())
                self.fifos.setdefault(target, entry)
                if access in (os.O_RDONLY, os.O_RDWR):
                    entry.readers.add(pid)
                if access in (os.O_WRONLY, os.O_RDWR):
                    entry.writers.add(pid)
            elif stat.S_ISREG(st.st_mode) and target.count("/") == 1 and len(target) > 1:
                # An mq descriptor links to "/NAME" on the kernel's internal
                # mqueue mount, which is in no process's mount table.
                if mounts is None:
                    mounts = _mount_ids(pid) or set()
                if _fd_info(pid, fd).get("mnt_id") in mounts:
                    continue
                contents = read_head(link)
                if contents is None or not contents.startswith("QSIZE:"):
                    continue
                q = self.queues.setdefault(target, _Queue())
                q.pids.add(pid)
                q.mode = stat.S_IMODE(st.st_mode)
                q.uid = st.st_uid
                q.qsize = parse_qsize(contents)
        if pid not in self.cwd:
            try:
                self.cwd[pid] = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                pass
        return True

    def mapping(self, paths: Iterable[str]) -> list[int]:
        """Live pids mapping any of ``paths``."""
        out: set[int] = set()
        for p in paths:
            out |= self.mapped.get(p, set())
        return sorted(out)


@dataclass
class UnixSocket:
    """One line of /proc/net/unix: a bound, path-named Unix socket."""

    inode: int
    kind: str
    listening: bool
    connected: bool
    path: str


def unix_sockets() -> list[UnixSocket]:
    """Bound, path-named Unix sockets of this network namespace (abstract ones left out)."""
    text = read_text("/proc/net/unix")
    if text is None:
        return []
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 8 or parts[7].startswith("@"):
            continue
        try:
            flags = int(parts[3], 16)
            kind = _UNIX_TYPES.get(int(parts[4], 16), "unix")
            state = int(parts[5], 16)
            inode = int(parts[6])
        except ValueError:
            continue
        out.append(
            UnixSocket(
                inode=inode,
                kind=kind,
                listening=bool(flags & _SO_ACCEPTCON),
                connected=state == 3,
                path=parts[7],
            )
        )
    return out


def mqueue_mount() -> str | None:
    """Where the mqueue filesystem is mounted (``/dev/mqueue`` usually), or None."""
    text = read_text("/proc/self/mounts") or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "mqueue":
            return parts[1].replace("\\040", " ")
    return None
