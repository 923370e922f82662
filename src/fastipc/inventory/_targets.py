"""Naming one object (``rm``'s and ``ls``'s arguments), finding it, and removing it."""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass

import posix_ipc

from .._names import segment_path, semaphore_paths, unlink_ring, validate_name
from ..endpoints import parse
from ._broadcast import as_broadcast
from ._entries import Entry, bound_paths, file_entry, queue_attrs, queue_entry, ring_entry
from ._proc import ProcessScan, mqueue_mount

__all__ = ["Target", "is_listening", "lookup", "parse_target", "refuse_link", "remove"]


@dataclass(frozen=True)
class Target:
    """What a ``fastipc rm`` argument names: ``kind`` ring/queue/file/abstract and its name or path."""

    kind: str
    name: str
    given: str


#: The schemes whose URLs name an object ``rm`` can remove (and ``ls`` can show).
_SCHEMES = ("shm", "bcast", "mq", "unix", "unixgram", "fifo")


def parse_target(arg: str) -> Target:
    """Resolve an ``rm``/``ls`` argument to the object it names.

    Accepted: a URL (``shm://NAME``, ``mq:///NAME`` or ``mq://NAME``, ``unix://PATH``,
    ``unixgram://PATH``, ``fifo://PATH``, read by :func:`fastipc.endpoints.parse`),
    a path containing a slash, or a bare ring name. A bare word that is
    not an existing ring but is a socket file or FIFO in the current
    directory names that file. Raises ValueError for a malformed argument.
    """
    if "\0" in arg or not arg:
        raise ValueError(f"{arg!r}: not a ring name, URL or path")
    if "://" in arg:
        # mq://NAME is taken as mq:///NAME, as before issue 11.
        url = arg
        if url.startswith("mq://") and not url.startswith("mq:///"):
            url = "mq:///" + url[len("mq://") :]
        ep = parse(url, schemes=_SCHEMES)
        if ep.scheme in ("shm", "bcast"):  # a broadcast ring shares the rings' names
            assert ep.name is not None
            return Target("ring", ep.name, arg)
        if ep.scheme == "mq":
            assert ep.name is not None
            return Target("queue", ep.name, arg)
        if ep.abstract:
            return Target("abstract", f"@{ep.name}", arg)
        assert ep.path is not None
        return Target("file", ep.path, arg)
    if "/" in arg:
        return Target("file", arg, arg)
    try:
        validate_name(arg)
    except ValueError:
        return Target("file", arg, arg)
    if _ring_exists(arg) or not _is_special_file(arg):
        return Target("ring", arg, arg)
    return Target("file", arg, arg)


def _ring_exists(name: str) -> bool:
    """Whether ring ``name`` has a segment or a semaphore in /dev/shm (even a dangling link)."""
    return any(os.path.lexists(p) for p in [segment_path(name), *semaphore_paths(name)])


def _is_special_file(path: str) -> bool:
    """Whether ``path`` is a socket file or FIFO, or a symbolic link to one (which
    :func:`lookup` then refuses by name, rather than "no such ring")."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            mode = os.stat(path).st_mode  # only to tell what the word names
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
        e = ring_entry(target.name, scan)
        if e is None:
            raise FileNotFoundError(errno.ENOENT, "no such ring", target.given)
        return as_broadcast(e)
    if target.kind == "queue":
        scan = scan or ProcessScan(maps=False)
        mount = mqueue_mount()
        e = queue_entry(target.name, scan, mount)
        if e is not None:
            return e
        if not _queue_exists(target.name):
            raise FileNotFoundError(errno.ENOENT, "no such message queue", target.given)
        attrs = queue_attrs(target.name)
        size = attrs["max_messages"] * attrs["max_message_size"] if attrs else None
        return Entry(kind="queue", name=f"mq://{target.name}", size=size, detail=attrs)
    if target.kind == "abstract":
        raise ValueError(f"{target.given}: an abstract socket has no file to remove")
    scan = scan or ProcessScan(maps=False)
    try:
        st = os.lstat(target.name)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", target.name) from None
    refuse_link(target.name, st)
    e = file_entry(target.name, st, scan, bound_paths(scan))
    if e is None:
        raise ValueError(f"{target.name}: not a socket file or FIFO")
    if e.kind == "socket" and not e.alive and is_listening(target.name):
        e.alive = True  # bound by a process /proc does not show (another namespace, ...)
    return e


def refuse_link(path: str, st: os.stat_result, listing: bool = False) -> None:
    """ValueError if ``st`` (of ``os.lstat(path)``) is a symbolic link: ``ls`` and ``rm``
    follow none they are given, and say so rather than "not a socket file or FIFO".
    ``listing`` (ls): a link to a directory gets the hint to add a slash."""
    if not stat.S_ISLNK(st.st_mode):
        return
    try:
        to = f" (to {os.readlink(path)})"
    except OSError:
        to = ""
    # (os.path.isdir follows the link, only to word the hint.)
    hint = f" ({path}/ lists that directory)" if listing and os.path.isdir(path) else ""
    raise ValueError(f"{path}: a symbolic link{to}: not followed; name what it points to{hint}")


def _queue_exists(name: str) -> bool:
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
    if entry.kind in ("ring", "broadcast"):
        try:
            unlink_ring(entry.name[len("shm://") :])
        except FileNotFoundError:
            if not entry.detail.get("only_doorbells"):
                raise
            # unlink_ring removed the doorbells, all that was left of the ring
    elif entry.kind == "queue":
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
