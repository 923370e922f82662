"""What fastipc objects exist on this machine: rings, message queues, socket files and FIFOs.

``fastipc ls`` and ``fastipc rm`` are built on this module. Everything is
found through ``/dev/shm``, ``/proc`` and (when mounted) the mqueue
filesystem; nothing is opened in a way its owner could notice, except the
connect probe of :func:`is_listening`, used only when ``/proc`` cannot tell.

How each kind is found, and what "alive" means for it:

ring
    ``/dev/shm/fastipc.NAME`` (plus ``sem.fastipc.NAME.items``/``.space``
    with the python backend): one row per ring. Alive while some process
    has the segment mapped (``/proc/PID/maps``). Doorbell FIFOs left of a
    removed ring (``bell.fastipc.NAME.*``) show as that ring, alive while a
    process has one open, so that ``rm NAME`` removes them.
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

The parts: :mod:`._proc` reads ``/proc`` (one :class:`ProcessScan` per
command); :mod:`._entries` makes the :class:`Entry` of each kind;
:mod:`._targets` resolves one argument (:func:`parse_target`, URLs by
:func:`fastipc.endpoints.parse`), looks it up and removes it; this module
puts the whole picture together. Ring file names come from
:mod:`fastipc._names`. Imports stay below the public classes: nothing here
imports the ring, the server, the transports or the command.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from .._names import BELL_PREFIX, SHM_DIR
from ._broadcast import as_broadcast
from ._entries import (
    COLUMNS,
    Entry,
    bound_paths,
    fifo_entry,
    file_entry,
    iter_rows,
    queue_entry,
    queue_names,
    ring_entry,
    ring_names,
    socket_entry,
)
from ._proc import ProcessScan, mqueue_mount
from ._targets import Target, is_listening, lookup, parse_target, refuse_link, remove

__all__ = [
    "COLUMNS",
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


def inventory(scan: ProcessScan | None = None) -> tuple[list[Entry], list[str]]:
    """Every ring, queue, socket file and FIFO this process can see, and notes on what it cannot."""
    scan = scan or ProcessScan()
    entries: list[Entry] = []
    notes: list[str] = []
    for name in ring_names():
        e = ring_entry(name, scan)
        if e is not None:
            entries.append(as_broadcast(e))
    mount = mqueue_mount()
    if mount is None:
        notes.append(
            "the mqueue filesystem is not mounted (mount -t mqueue none /dev/mqueue): "
            "only message queues some process holds open are listed"
        )
    for qname in queue_names(scan, mount):
        e = queue_entry(qname, scan, mount)
        if e is not None:
            entries.append(e)
    uid = os.geteuid()
    bound = bound_paths(scan)
    for path in sorted(bound):
        try:
            st = os.stat(path)
        except OSError:
            continue  # the file was removed (or replaced by a directory, ...)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid:
            entries.append(socket_entry(path, st, bound))
    for path in sorted(scan.fifos):
        if os.path.basename(path).startswith(BELL_PREFIX) and os.path.dirname(path) == SHM_DIR:
            continue  # a ring's doorbell: part of the ring's entry, not an endpoint
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and st.st_uid == uid:
            entries.append(fifo_entry(path, st, scan))
    if scan.unreadable and any(not e.alive for e in entries):
        # Only then can it change a verdict the user acts on (rm refuses live
        # objects): with every listed object alive it would be noise.
        pids = ",".join(map(str, scan.unreadable_pids[:5]))
        more = "" if scan.unreadable <= 5 else ", ..."
        why = (
            "not readable even as root: non-dumpable, or in another pid namespace"
            if os.geteuid() == 0
            else "permission denied"
        )
        notes.append(
            f"{scan.unreadable} of your processes (pid {pids}{more}) could not be inspected "
            f"({why}): an object only they hold shows as not alive; check before removing it"
        )
    return entries, notes


def list_paths(paths: Iterable[str], scan: ProcessScan | None = None) -> list[Entry]:
    """Socket files and FIFOs at ``paths`` (files, or directories: their entries), stale ones too.

    A path that is a symbolic link is not followed (as ``rm`` removes none):
    ValueError says so (``PATH/`` lists the directory a link points to).
    Raises FileNotFoundError for a missing path, ValueError for a file that
    is neither a socket nor a FIFO.
    """
    scan = scan or ProcessScan(maps=False)
    bound = bound_paths(scan)
    out: list[Entry] = []
    for path in paths:
        st = os.lstat(path)
        refuse_link(path, st, listing=True)
        if stat.S_ISDIR(st.st_mode):
            # Opened without following a link put in its place since the lstat.
            nofollow = 0 if path.endswith("/") else os.O_NOFOLLOW
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | nofollow)
            try:
                for name in sorted(os.listdir(dfd)):
                    try:
                        est = os.lstat(name, dir_fd=dfd)
                    except OSError:
                        continue
                    e = file_entry(os.path.join(path, name), est, scan, bound)
                    if e is not None:
                        out.append(e)
            finally:
                os.close(dfd)
            continue
        e = file_entry(path, st, scan, bound)
        if e is None:
            raise ValueError(f"{path}: not a socket file or FIFO")
        out.append(e)
    return out
