"""Unix socket files: bound owner-only with no moment of wider access, stale ones replaced, ours removed.

Shared by :func:`fastipc.listen` and the servers of the unix and unixgram
transports, so every socket file fastipc makes follows the same rules.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import time
from collections.abc import Iterator

from ._checks import deadline, time_left, validate_mode
from .endpoints import Endpoint
from .errors import Timeout, os_error

__all__ = [
    "DEFAULT_BACKLOG",
    "LOCK_TIMEOUT",
    "backlog_option",
    "bind_unix",
    "connect_unix",
    "is_live_socket",
    "mode_option",
    "remove_if_ours",
]

#: Identity of a file we made: (st_dev, st_ino).
FileId = tuple[int, int]


def mode_option(ep: Endpoint, mode: int | None, default: int = 0o600) -> int:
    """The permission mask for ``ep``: ``mode`` if given, else ``?mode=``, else ``default``.

    Raises ValueError for a ``mode`` that is not a mask between 0 and 0o777
    (the URL's was checked by :func:`~fastipc.endpoints.parse`).
    """
    if mode is None:
        return ep.mode if ep.mode is not None else default
    return validate_mode(mode)


def bind_unix(sock: socket.socket, ep: Endpoint, mode: int) -> FileId | None:
    """Bind AF_UNIX ``sock`` to ``ep``; return the file's identity (None when abstract).

    A socket file already at the path is replaced only when it is proven
    stale, under a lock (see :func:`is_live_socket`): no socket of this
    network namespace is bound to the path (``/proc/net/unix``, which lists
    sockets bound but not yet listening too) and a connect of each type
    (stream, seqpacket, datagram) is refused. fastipc processes serialise
    that check, the unlink and the bind with an exclusive ``flock`` on the
    file's directory, so of two racing on one stale path exactly one binds.
    A symlink at the path is never followed or removed. The file has exactly
    permissions ``mode``.

    Raises OSError(EADDRINUSE) naming the path when a socket there is live
    or cannot be proven stale, FileExistsError when something that is not a
    socket (a symlink included) is there, :class:`~fastipc.Timeout` when
    the directory stays locked by another process for :data:`LOCK_TIMEOUT`
    seconds, other OSErrors (e.g. PermissionError) naming the path.
    """
    if ep.path is None:
        _bind(sock, ep)
        return None
    # The file bind() makes takes the socket inode's mode less the umask:
    # never wider than `mode`, so there is no moment of wider access.
    os.fchmod(sock.fileno(), mode)
    try:
        sock.bind(ep.address)  # the common case: nothing there, no lock needed
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise os_error(exc, ep.display) from None
        # Something is there (bind never follows or replaces a file).
        _replace_stale(sock, ep, ep.path)
    try:
        return _set_mode(ep.path, mode)
    except BaseException:
        os.unlink(ep.path)
        raise


def _set_mode(path: str, mode: int) -> FileId:
    """Give the socket file just bound at ``path`` exactly ``mode``; return its identity.

    Through an O_PATH handle opened without following a symlink, so a file
    swapped in for ours after bind() is never chmod-ed (a plain chmod would
    follow a symlink put there). Raises FileExistsError if the path is no
    longer a socket.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(errno.EEXIST, "replaced by something that is not a socket", path)
        # The magic link names the inode opened, not whatever the path holds now.
        os.chmod(f"/proc/self/fd/{fd}", mode)  # exactly `mode`, whatever the umask took away
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino)


def remove_if_ours(path: str | None, ident: FileId | None) -> None:
    """Unlink ``path`` if it is still the file ``ident`` names (another server may have replaced it)."""
    if path is None or ident is None:
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == ident:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _bind(sock: socket.socket, ep: Endpoint) -> None:
    try:
        sock.bind(ep.address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, "address in use by a live socket", ep.display) from None
        raise os_error(exc, ep.display) from None


#: Seconds :func:`bind_unix` waits for the lock on a socket file's directory
#: (fastipc holds it for microseconds; only a foreign ``flock`` holds it longer).
LOCK_TIMEOUT = 10.0


@contextlib.contextmanager
def _directory_lock(path: str) -> Iterator[int]:
    """Hold an exclusive flock on the directory of ``path``; yield the directory's fd.

    A lock on the directory itself needs no lock file, so nothing is ever
    left behind or has to be removed (which no lock file can be safely).
    """
    parent = os.path.dirname(path) or "."
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(
            errno.EADDRINUSE,
            "a socket file is there and its directory cannot be locked to prove it stale "
            f"({exc.strerror}); not replacing it",
            path,
        ) from None
    try:
        until = deadline(LOCK_TIMEOUT)
        pause = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time_left(until) == 0:
                    raise Timeout(
                        f"{path}: its directory stayed locked (flock) by another process for "
                        f"{LOCK_TIMEOUT:g} s; not replacing the socket file"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.005)
        try:
            yield fd
        finally:
            # Unlock explicitly: a child forked meanwhile shares this open file.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _replace_stale(sock: socket.socket, ep: Endpoint, path: str) -> None:
    """Under the directory lock: remove the file at ``path`` if proven stale, then bind ``sock``."""
    name = os.path.basename(path)
    with _directory_lock(path) as dirfd:
        try:
            st = os.lstat(name, dir_fd=dirfd)
        except FileNotFoundError:
            st = None  # gone meanwhile: just bind
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(
                    errno.EEXIST, "exists and is not a socket; not replacing it", path
                )
            why = _live_reason(path, os.fstat(dirfd))
            if why is not None:
                raise OSError(errno.EADDRINUSE, f"address in use: {why}", path)
            try:
                again = os.lstat(name, dir_fd=dirfd)
            except FileNotFoundError:
                pass
            else:
                if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                    raise OSError(
                        errno.EADDRINUSE, "address in use: the file was replaced meanwhile", path
                    )
                try:
                    os.unlink(name, dir_fd=dirfd)  # unlink never follows a symlink
                except FileNotFoundError:
                    pass
        _bind(sock, ep)


#: Socket types probed by :func:`is_live_socket`.
_PROBE_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM)


def is_live_socket(path: str, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether socket file ``path`` may still be in use, i.e. is not proven stale.

    Live when a socket of this network namespace is bound to the path
    (``/proc/net/unix``: listening or not, of any type), when
    ``/proc/net/unix`` cannot be read, or when a non-blocking connect of any
    type (``kind`` first, then stream, seqpacket, datagram) is not refused
    (it catches a listener in another network namespace). A missing file
    is not live. Raises OSError naming the path for probe errors other than
    "nobody there" (e.g. PermissionError: cannot tell).
    """
    try:
        parent = os.stat(os.path.dirname(path) or ".")
    except FileNotFoundError:
        return False
    return _live_reason(path, parent) is not None


def _live_reason(path: str, parent: os.stat_result) -> str | None:
    """Why socket file ``path`` (in directory ``parent``) may be live; None when proven stale."""
    bound = _bound_in_proc(path, parent)
    if bound is not None:
        return bound
    for typ in _PROBE_TYPES:
        probe = socket.socket(socket.AF_UNIX, typ | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            continue  # nobody there (of this type)
        except BlockingIOError:
            return "a listener is there (its backlog is full)"
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                continue  # a socket of another type: tried below, or gone
            raise os_error(exc, path) from None
        finally:
            probe.close()
        return "a live socket accepts connections there"
    return None


def _bound_in_proc(path: str, parent: os.stat_result) -> str | None:
    """A reason if ``/proc/net/unix`` shows (or may show) a socket bound to ``path``, else None.

    The kernel lists each bound socket with the path as given to bind()
    (absolute or relative to its binder's directory then). A listed path
    with the same file name counts when its directory is ``parent`` (same
    device and inode) or when it is relative (its directory is unknown).
    """
    try:
        with open("/proc/net/unix", "rb") as f:
            table = f.read()
    except OSError as exc:
        return f"cannot read /proc/net/unix to prove the file stale ({exc.strerror})"
    want = os.fsencode(path)
    whole = os.fsencode(os.path.abspath(path))
    base = os.path.basename(whole)
    if b" " + want + b"\n" in table or b" " + whole + b"\n" in table:
        return "a socket is bound to it (/proc/net/unix)"
    where = (parent.st_dev, parent.st_ino)
    for line in table.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 8:
            continue
        bound = parts[7]
        if bound.startswith(b"@") or os.path.basename(bound) != base:
            continue
        if not bound.startswith(b"/"):
            return f"a socket is bound to the relative path {os.fsdecode(bound)!r} (/proc/net/unix)"
        try:
            st = os.stat(os.path.dirname(bound))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == where:
            return f"a socket is bound to it as {os.fsdecode(bound)!r} (/proc/net/unix)"
    return None


#: Default listen() backlog (connections the kernel queues before accept).
DEFAULT_BACKLOG = 128


def backlog_option(ep: Endpoint, backlog: int | None) -> int:
    """The listen() backlog for ``ep``: ``backlog`` if given, else ``?backlog=``, else 128.

    Raises ValueError for a ``backlog`` that is not an int >= 0 (the URL's
    was checked by :func:`~fastipc.endpoints.parse`).
    """
    if backlog is None:
        return ep.backlog if ep.backlog is not None else DEFAULT_BACKLOG
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 0:
        raise ValueError(f"backlog must be an int >= 0, got {backlog!r}")
    return backlog


def connect_unix(sock: socket.socket, ep: Endpoint, deadline: int | None) -> None:
    """Connect AF_UNIX stream ``sock`` to ``ep``, waiting while the listener's backlog is full.

    A unix connect does not queue behind a full backlog: it fails with
    EAGAIN, so this retries until the monotonic ``deadline`` (ns; None:
    forever) and then raises :class:`~fastipc.Timeout`. Other failures raise
    the matching OSError naming the path. ``sock`` is left non-blocking.
    """
    sock.setblocking(False)
    while True:
        try:
            sock.connect(ep.address)
            return
        except (BlockingIOError, InterruptedError):
            if time_left(deadline) == 0:
                raise Timeout(f"connect to {ep.display}: listener's backlog stayed full") from None
            time.sleep(0.002)
        except OSError as exc:
            raise os_error(exc, ep.display) from None
