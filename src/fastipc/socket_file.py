"""Unix socket files: bound owner-only with no moment of wider access, stale ones replaced, ours removed.

Shared by :func:`fastipc.listen` and the servers of the unix and unixgram
transports, so every socket file fastipc makes follows the same rules.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time

from .endpoints import Endpoint
from .errors import Timeout

__all__ = [
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
    """The permission mask for ``ep``: ``mode`` if given, else its ``?mode=`` option, else ``default``."""
    if mode is None:
        text = ep.options.get("mode")
        if text is None:
            return default
        try:
            mode = int(text, 8)
        except ValueError:
            raise ValueError(
                f"endpoint {ep.url!r}: option mode={text!r} is not an octal mask"
            ) from None
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be a permission mask between 0 and 0o777, got {mode!r}")
    return mode


def bind_unix(sock: socket.socket, ep: Endpoint, mode: int) -> FileId | None:
    """Bind AF_UNIX ``sock`` to ``ep``; return the file's identity (None when abstract).

    A stale socket file (nobody listening or bound) is replaced; a live one
    raises OSError(EADDRINUSE) naming the path, anything that is not a
    socket FileExistsError. The file has exactly permissions ``mode``.
    """
    if ep.path is None:
        _bind(sock, ep)
        return None
    _clear_stale(ep.path, sock.type)
    # The file bind() makes takes the socket inode's mode less the umask:
    # never wider than `mode`, so there is no moment of wider access.
    os.fchmod(sock.fileno(), mode)
    _bind(sock, ep)
    try:
        os.chmod(ep.path, mode)  # exactly `mode`, whatever the umask took away
        st = os.lstat(ep.path)
    except BaseException:
        os.unlink(ep.path)
        raise
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
        raise OSError(exc.errno, exc.strerror, ep.display) from None


def _clear_stale(path: str, kind: int) -> None:
    """Remove the socket file at ``path`` if nobody serves it; refuse if somebody does."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; not replacing it", path)
    if is_live_socket(path, kind):
        raise OSError(errno.EADDRINUSE, "address in use by a live socket", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_live_socket(path: str, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether a process listens (stream) or is bound (datagram) on socket file ``path``.

    Probes with a non-blocking connect of type ``kind``; a wrong-type socket
    (EPROTOTYPE) is tried as the other type. Raises OSError naming the path
    for errors other than "nobody there".
    """
    for typ in (kind, socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM):
        probe = socket.socket(socket.AF_UNIX, typ | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False  # its owner is gone
        except FileNotFoundError:
            return False
        except BlockingIOError:
            return True  # EAGAIN: a backlog full of unaccepted connections
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                continue
            raise OSError(exc.errno, exc.strerror, path) from None
        finally:
            probe.close()
        return True
    return False


#: Default listen() backlog (connections the kernel queues before accept).
DEFAULT_BACKLOG = 128


def backlog_option(ep: Endpoint, backlog: int | None) -> int:
    """The listen() backlog for ``ep``: ``backlog`` if given, else ``?backlog=``, else 128."""
    if backlog is None:
        text = ep.options.get("backlog", str(DEFAULT_BACKLOG))
        if not text.isdigit():
            raise ValueError(f"endpoint {ep.url!r}: option backlog={text!r} is not a number")
        backlog = int(text)
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
            if deadline is not None and time.monotonic_ns() >= deadline:
                raise Timeout(f"connect to {ep.display}: listener's backlog stayed full") from None
            time.sleep(0.002)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, ep.display) from None
