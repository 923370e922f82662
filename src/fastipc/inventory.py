"""What fastipc objects exist on this machine: rings, message queues, socket files and FIFOs.

``fastipc ls`` and ``fastipc rm`` are built on this module. Everything is
found through ``/dev/shm``, ``/proc`` and (when mounted) the mqueue
filesystem; nothing is opened in a way its owner could notice, except the
connect probe of :func:`is_listening`, used only when ``/proc`` cannot tell.

How each kind is found, and what "alive" means for it:

ring
    ``/dev/shm/fastipc.NAME`` (plus ``sem.fastipc.NAME.items``/``.space``
    with the python backend): one row per ring. Alive while some process
    has the segment mapped (``/proc/PID/maps``).
queue
    POSIX message queues. Listed from the mqueue filesystem when it is
    mounted (``/dev/mqueue`` by convention); otherwise only the queues some
    process holds open can be seen: an mq descriptor shows in
    ``/proc/PID/fd`` as a link to ``/NAME`` on the kernel's internal mqueue
    mount, and reading it gives ``QSIZE:...``. Alive while a process has it
    open.
socket
    Unix socket files bound by a process (``/proc/net/unix``, matched to
    processes by the ``socket:[INODE]`` links in ``/proc/PID/fd``), limited
    to files owned by the current user; plus any socket file given by
    path, stale or not. Alive while a process holds the bound socket.
fifo
    Named pipes some process has open (``/proc/PID/fd``), owned by the
    current user, plus any given by path. Alive while a process has it open
    for reading.

Processes whose ``/proc`` entries cannot be read (another user's, without
privileges) are skipped: their objects show as not alive, or not at all.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._names import SHM_DIR, validate_name

__all__ = [
    "Entry",
    "ProcessScan",
    "Target",
    "inventory",
    "is_listening",
    "iter_rows",
    "list_paths",
    "lookup",
    "mqueue_mount",
    "parse_target",
    "remove",
]

_SEG_PREFIX = "fastipc."
_SEM_PREFIX = "sem.fastipc."
_SEM_SUFFIXES = (".items", ".space")

#: /proc/net/unix: the "listening" flag (__SO_ACCEPTCON) and socket types.
_SO_ACCEPTCON = 0x10000
_UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}


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

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "mode": None if self.mode is None else f"{self.mode:04o}",
            "pids": self.pids,
            "alive": self.alive,
            **self.detail,
        }


# ---------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------


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


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_head(path: str, size: int = 256) -> str | None:
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
    text = _read_text(f"/proc/{pid}/mountinfo")
    if text is None:
        return None
    return {line.split(" ", 1)[0] for line in text.splitlines() if line}


def _fd_info(pid: int, fd: str) -> dict[str, str]:
    text = _read_text(f"/proc/{pid}/fdinfo/{fd}") or ""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _qsize(text: str) -> int | None:
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
class _Fifo:
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
        self.fifos: dict[str, _Fifo] = {}
        #: pid -> cwd (for sockets bound to a relative path)
        self.cwd: dict[int, str] = {}
        #: processes of this user whose maps or fds could not be read (other
        #: users' are not counted: what they hold is not ours to remove either)
        self.unreadable = 0
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
                entry = self.fifos.setdefault(target, _Fifo())
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
                contents = _read_head(link)
                if contents is None or not contents.startswith("QSIZE:"):
                    continue
                q = self.queues.setdefault(target, _Queue())
                q.pids.add(pid)
                q.mode = stat.S_IMODE(st.st_mode)
                q.uid = st.st_uid
                q.qsize = _qsize(contents)
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
class _UnixSocket:
    inode: int
    kind: str
    listening: bool
    connected: bool
    path: str


def _proc_net_unix() -> list[_UnixSocket]:
    """Bound, path-named Unix sockets of this network namespace (abstract ones left out)."""
    text = _read_text("/proc/net/unix")
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
            _UnixSocket(
                inode=inode,
                kind=kind,
                listening=bool(flags & _SO_ACCEPTCON),
                connected=state == 3,
                path=parts[7],
            )
        )
    return out


# ---------------------------------------------------------------------------
# rings
# ---------------------------------------------------------------------------


def _ring_names() -> list[str]:
    try:
        files = os.listdir(SHM_DIR)
    except OSError:
        return []
    names: set[str] = set()
    for f in files:
        if f.startswith(_SEG_PREFIX):
            names.add(f[len(_SEG_PREFIX) :])
        elif f.startswith(_SEM_PREFIX):
            for suffix in _SEM_SUFFIXES:
                if f.endswith(suffix):
                    names.add(f[len(_SEM_PREFIX) : -len(suffix)])
    return sorted(n for n in names if n)


def _ring_entry(name: str, scan: ProcessScan) -> Entry | None:
    seg = f"{SHM_DIR}/{_SEG_PREFIX}{name}"
    sems = [f"{SHM_DIR}/{_SEM_PREFIX}{name}{s}" for s in _SEM_SUFFIXES]
    files = []
    for path in [seg, *sems]:
        try:
            files.append((path, os.stat(path)))
        except OSError:
            pass
    if not files:
        return None
    first, st = files[0]
    size = st.st_size if first == seg else None  # None: only semaphores are left
    mode = stat.S_IMODE(st.st_mode)
    pids = scan.mapping(p for p, _ in files)
    return Entry(
        kind="ring",
        name=f"shm://{name}",
        path=seg,
        size=size,
        mode=mode,
        pids=pids,
        alive=bool(pids),
        detail={
            "files": [p for p, _ in files],
            "backend": "python" if len(files) > 1 else "native",
        },
    )


# ---------------------------------------------------------------------------
# queues
# ---------------------------------------------------------------------------


def mqueue_mount() -> str | None:
    """Where the mqueue filesystem is mounted (``/dev/mqueue`` usually), or None."""
    text = _read_text("/proc/self/mounts") or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "mqueue":
            return parts[1].replace("\\040", " ")
    return None


def _open_queue(name: str) -> Any:
    """A posix_ipc handle on existing queue ``name``, or None if it cannot be opened."""
    try:
        import posix_ipc
    except ImportError:
        return None
    for read, write in ((True, False), (False, True)):
        try:
            return posix_ipc.MessageQueue(name, read=read, write=write)
        except posix_ipc.PermissionsError:
            continue
        except (posix_ipc.Error, ValueError, OSError):
            return None
    return None


def _queue_attrs(name: str) -> dict[str, Any]:
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


def _queue_entry(name: str, scan: ProcessScan, mount: str | None) -> Entry | None:
    held = scan.queues.get(name)
    mode = held.mode if held else None
    qsize = held.qsize if held else None
    if mount is not None:
        try:
            st = os.stat(mount + name)
        except OSError:
            return None
        mode = stat.S_IMODE(st.st_mode)
        contents = _read_head(mount + name)
        if contents is not None:
            qsize = _qsize(contents)
    elif held is None:
        return None
    attrs = _queue_attrs(name)
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
    )


def _queue_names(scan: ProcessScan, mount: str | None) -> list[str]:
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
class _BoundPath:
    kind: str = "stream"
    pids: set[int] = field(default_factory=set)


def _bound_paths(scan: ProcessScan) -> dict[str, _BoundPath]:
    """Absolute socket path -> its bound socket's type and holders (live processes only)."""
    out: dict[str, _BoundPath] = {}
    for s in _proc_net_unix():
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
        b = out.setdefault(path, _BoundPath(kind=s.kind))
        b.pids |= holders
    return out


def _socket_entry(path: str, st: os.stat_result, bound: dict[str, _BoundPath]) -> Entry:
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


def _fifo_entry(path: str, st: os.stat_result, scan: ProcessScan) -> Entry:
    f = scan.fifos.get(os.path.abspath(path), _Fifo())
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


# ---------------------------------------------------------------------------
# the whole picture
# ---------------------------------------------------------------------------


def inventory(scan: ProcessScan | None = None) -> tuple[list[Entry], list[str]]:
    """Every ring, queue, socket file and FIFO this process can see, and notes on what it cannot."""
    scan = scan or ProcessScan()
    entries: list[Entry] = []
    notes: list[str] = []
    for name in _ring_names():
        e = _ring_entry(name, scan)
        if e is not None:
            entries.append(e)
    mount = mqueue_mount()
    if mount is None:
        notes.append(
            "the mqueue filesystem is not mounted (mount -t mqueue none /dev/mqueue): "
            "only message queues some process holds open are listed"
        )
    for qname in _queue_names(scan, mount):
        e = _queue_entry(qname, scan, mount)
        if e is not None:
            entries.append(e)
    uid = os.geteuid()
    bound = _bound_paths(scan)
    for path in sorted(bound):
        try:
            st = os.stat(path)
        except OSError:
            continue  # the file was removed (or replaced by a directory, ...)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid:
            entries.append(_socket_entry(path, st, bound))
    for path in sorted(scan.fifos):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and st.st_uid == uid:
            entries.append(_fifo_entry(path, st, scan))
    if scan.unreadable:
        notes.append(
            f"{scan.unreadable} of your processes could not be inspected (permission "
            "denied): what they hold shows as not alive, or not at all"
        )
    return entries, notes


def list_paths(paths: Iterable[str], scan: ProcessScan | None = None) -> list[Entry]:
    """Socket files and FIFOs at ``paths`` (files, or directories: their entries), stale ones too.

    Raises FileNotFoundError for a missing path, ValueError for a file that
    is neither a socket nor a FIFO.
    """
    scan = scan or ProcessScan(maps=False)
    bound = _bound_paths(scan)
    out: list[Entry] = []
    for path in paths:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                try:
                    est = os.lstat(full)
                except OSError:
                    continue
                e = _file_entry(full, est, scan, bound)
                if e is not None:
                    out.append(e)
            continue
        e = _file_entry(path, st, scan, bound)
        if e is None:
            raise ValueError(f"{path}: not a socket file or FIFO")
        out.append(e)
    return out


def _file_entry(
    path: str, st: os.stat_result, scan: ProcessScan, bound: dict[str, _BoundPath]
) -> Entry | None:
    if stat.S_ISSOCK(st.st_mode):
        return _socket_entry(path, st, bound)
    if stat.S_ISFIFO(st.st_mode):
        return _fifo_entry(path, st, scan)
    return None


# ---------------------------------------------------------------------------
# naming one object: rm's targets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a ``fastipc rm`` argument names: ``kind`` ring/queue/file/abstract and its name or path."""

    kind: str
    name: str
    given: str


def parse_target(arg: str) -> Target:
    """Resolve an ``rm``/``ls`` argument to the object it names.

    Accepted: ``shm://NAME`` or a bare ring name (no slash); ``mq:///name``
    (or ``mq://name``); ``unix://PATH``, ``unixgram://PATH``,
    ``fifo://PATH`` (``///abs`` or ``//rel``) or a path containing a slash.
    A bare word that is not an existing ring but is a socket file or FIFO
    in the current directory names that file. Raises ValueError for a
    malformed argument.
    """
    if "\0" in arg or not arg:
        raise ValueError(f"{arg!r}: not a ring name, URL or path")
    scheme, sep, rest = arg.partition("://")
    if sep:
        rest = rest.partition("?")[0]
        scheme = scheme.lower()
        if scheme == "shm":
            try:
                validate_name(rest)
            except ValueError as exc:
                raise ValueError(f"{arg!r}: {exc}") from None
            return Target("ring", rest, arg)
        if scheme == "mq":
            name = "/" + rest.lstrip("/")
            if len(name) < 2 or "/" in name[1:]:
                raise ValueError(f"{arg!r}: a queue name is mq:///NAME, with no other slash")
            return Target("queue", name, arg)
        if scheme in ("unix", "unixgram", "fifo"):
            if not rest:
                raise ValueError(f"{arg!r}: empty path")
            if rest.startswith("@"):
                return Target("abstract", rest, arg)
            return Target("file", rest, arg)
        raise ValueError(
            f"{arg!r}: scheme {scheme!r} names no removable object (use shm, mq, unix, unixgram, fifo)"
        )
    if "/" in arg:
        return Target("file", arg, arg)
    try:
        validate_name(arg)
    except ValueError:
        return Target("file", arg, arg)
    if _ring_entry_exists(arg) or not _is_special_file(arg):
        return Target("ring", arg, arg)
    return Target("file", arg, arg)


def _ring_entry_exists(name: str) -> bool:
    paths = [f"{SHM_DIR}/{_SEG_PREFIX}{name}"] + [
        f"{SHM_DIR}/{_SEM_PREFIX}{name}{s}" for s in _SEM_SUFFIXES
    ]
    return any(os.path.lexists(p) for p in paths)


def _is_special_file(path: str) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode)


def lookup(target: Target, scan: ProcessScan | None = None) -> Entry:
    """The :class:`Entry` for ``target``, with its liveness.

    Raises FileNotFoundError naming it when there is nothing of that name,
    ValueError when the path is not a socket file or FIFO.
    """
    if target.kind == "ring":
        scan = scan or ProcessScan(fds=False)
        e = _ring_entry(target.name, scan)
        if e is None:
            raise FileNotFoundError(errno.ENOENT, "no such ring", target.given)
        return e
    if target.kind == "queue":
        scan = scan or ProcessScan(maps=False)
        mount = mqueue_mount()
        e = _queue_entry(target.name, scan, mount)
        if e is not None:
            return e
        if not _queue_exists(target.name):
            raise FileNotFoundError(errno.ENOENT, "no such message queue", target.given)
        attrs = _queue_attrs(target.name)
        size = attrs["max_messages"] * attrs["max_message_size"] if attrs else None
        return Entry(kind="queue", name=f"mq://{target.name}", size=size, detail=attrs)
    if target.kind == "abstract":
        raise ValueError(f"{target.given}: an abstract socket has no file to remove")
    scan = scan or ProcessScan(maps=False)
    try:
        st = os.lstat(target.name)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", target.name) from None
    e = _file_entry(target.name, st, scan, _bound_paths(scan))
    if e is None:
        raise ValueError(f"{target.name}: not a socket file or FIFO")
    if e.kind == "socket" and not e.alive and is_listening(target.name):
        e.alive = True  # bound by a process /proc does not show (another namespace, ...)
    return e


def _queue_exists(name: str) -> bool:
    try:
        import posix_ipc
    except ImportError:
        return False
    try:
        q = posix_ipc.MessageQueue(name, read=True, write=False)
    except posix_ipc.ExistentialError:
        return False
    except (posix_ipc.Error, OSError):
        return True  # it exists, but is not ours to open
    q.close()
    return True


def is_listening(path: str) -> bool:
    """True if a process accepts connections or datagrams at socket file ``path`` (connect probe)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.settimeout(1.0)
            s.connect(path)
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                continue  # the other socket type
            # ECONNREFUSED: nobody; EAGAIN: a full backlog (alive); timeout: alive
            return exc.errno in (errno.EAGAIN,) or isinstance(exc, socket.timeout)
        else:
            return True
        finally:
            s.close()
    return False


def remove(entry: Entry) -> None:
    """Remove the object of ``entry`` (its name: handles others hold keep working)."""
    if entry.kind == "ring":
        from .ring import Ring

        Ring.unlink_name(entry.name[len("shm://") :])
    elif entry.kind == "queue":
        import posix_ipc

        name = entry.name[len("mq://") :]
        try:
            posix_ipc.unlink_message_queue(name)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(errno.ENOENT, "no such message queue", entry.name) from None
        except posix_ipc.PermissionsError:
            raise PermissionError(errno.EACCES, "permission denied", entry.name) from None
    else:
        assert entry.path is not None
        os.unlink(entry.path)


def iter_rows(entries: Iterable[Entry]) -> Iterator[tuple[str, ...]]:
    """Table rows (kind, name, size, mode, pids, alive) for ``entries``."""
    for e in entries:
        yield (
            e.kind,
            e.name,
            "-" if e.size is None else str(e.size),
            "-" if e.mode is None else f"{e.mode:04o}",
            ",".join(map(str, e.pids)) or "-",
            "yes" if e.alive else "no",
        )
