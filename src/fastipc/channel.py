"""Channel: length-framed messages over a Unix stream socket, with fd passing and peer credentials.

The public :class:`Channel` validates arguments, owns the socket and
documents the contract; the per-message work (framing, batching, fds) is
done by the backend picked in ``fastipc._backend`` (C through cffi, or pure
Python), whose class is a subclass of :class:`Channel`. Both speak the same
wire format (DESIGN.md, Framing), so either may be the peer of the other::

    frame = [u32 LE payload length][u32 LE flags][payload]

Flag bit 0 (``FRAME_FDS``) marks a frame whose SCM_RIGHTS fds ride on its
first byte; bits 1 and 2 carry the shared-memory hand-off of large messages
(``handoff.py``); the other bits are reserved and a frame using them is
refused.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NoReturn, TypeVar

from ._checks import MAX_FDS, FdLike, release_view, timeout_ns
from .endpoints import Endpoint, parse
from .errors import Closed, MessageTooLarge, ProtocolError, Timeout
from .framing import (
    DEFAULT_MAX_MESSAGE,
    validate_max_message,
)
from .handoff import DEFAULT_HANDOFF_AREA, DEFAULT_HANDOFF_MIN, validate_handoff
from .socket_file import backlog_option, bind_unix, connect_unix, mode_option, remove_if_ours

__all__ = ["DEFAULT_MAX_MESSAGE", "MAX_FDS", "Channel", "Listener", "listen"]

_C = TypeVar("_C", bound="Channel")
_L = TypeVar("_L", bound="Listener")

#: Size of a channel's receive buffer (bytes); longer frames bypass it.
RECV_BUFFER = 256 * 1024
#: Frames longer than this (bytes) are read straight into their destination.
DIRECT_MIN = 64 * 1024


class Channel:
    """A connected pair end that carries whole messages (any bytes, up to ``max_message``).

    Messages arrive whole and in order, each exactly once; a message may
    carry open fds, which the receiver gets as new fds (close-on-exec).
    Make one with :meth:`pair`, :meth:`connect`, :meth:`from_socket` or
    :meth:`Listener.accept`, never by calling the class.

    Every ``timeout`` is in seconds on the monotonic clock: ``None`` blocks
    until the call can complete, ``0`` never blocks. Blocking calls release
    the GIL and a signal handler (Ctrl-C) runs within a fraction of a second.

    Errors: :class:`~fastipc.Timeout`; :class:`~fastipc.Closed` when the
    peer closed (or shut down writing) and everything it sent was received
    — the channel stays usable for sending, further receives raise Closed
    again; :class:`~fastipc.MessageTooLarge` for a message over
    ``max_message``. A broken stream — the peer closed in the middle of a
    message, announced one over ``max_message``, or broke the framing — and
    a send abandoned midway (timeout, Ctrl-C) close the channel, since a
    byte stream cannot be resynchronised. A closed channel raises
    ValueError.

    Threads: one thread may send while another receives; two threads
    sending (or two receiving) on one channel at once need a lock.

    Large messages: a message of ``handoff_min`` bytes or more (up to half
    of ``handoff_area``) sent by :meth:`send` without fds is copied into a
    shared-memory area (a sealed memfd of ``handoff_area`` bytes, made at
    the first such message and passed to the peer once) and only a 16-byte
    descriptor crosses the socket: one copy on each side instead of two
    through the kernel. The receiving API does not change. ``handoff_min=0``
    turns it off; :meth:`send_many` always sends through the socket.
    """

    #: The largest message, in bytes, this end sends or accepts.
    max_message: int
    #: The endpoint (path, @name or description) used in error messages.
    name: str
    #: Messages sent of at least this many bytes go through shared memory (0:
    #: never), as set; a channel that cannot make its area (no memfd, no
    #: memory) or whose peer writes nonsense into it sends inline regardless.
    handoff_min: int
    #: Size in bytes of this end's hand-off area.
    handoff_area: int
    #: The view recv_view has lent, while its block runs.
    _view: memoryview | None
    _sock: socket.socket | None

    def __init__(self, *_: object) -> None:
        raise TypeError("use Channel.pair(), Channel.connect(), Channel.from_socket() or accept()")

    # ---- construction -------------------------------------------------
    @classmethod
    def pair(
        cls,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        handoff_min: int = DEFAULT_HANDOFF_MIN,
        handoff_area: int = DEFAULT_HANDOFF_AREA,
    ) -> tuple[Channel, Channel]:
        """Two connected channels (a socketpair), e.g. to hand one to a child process.

        A channel can be passed to a ``multiprocessing`` child (spawn or
        fork) as an argument before it received anything. ``handoff_min``
        and ``handoff_area`` (bytes) set the shared-memory hand-off of large
        messages (see the class); ValueError if out of range.
        """
        max_message = validate_max_message(max_message)
        handoff = validate_handoff(handoff_min, handoff_area)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return (
            cls._adopt(a, "socketpair", max_message, handoff),
            cls._adopt(b, "socketpair", max_message, handoff),
        )

    @classmethod
    def connect(
        cls,
        url: str,
        timeout: float | None = None,
        *,
        max_message: int | None = None,
        handoff_min: int = DEFAULT_HANDOFF_MIN,
        handoff_area: int = DEFAULT_HANDOFF_AREA,
    ) -> Channel:
        """Connect to the listener at ``url`` (``unix:///path``, ``unix://rel``, ``unix://@name``).

        ``timeout`` (seconds) bounds the wait while the listener's backlog is
        full. ``max_message`` defaults to the URL's ``max_message`` option,
        else 64 MiB; ``handoff_min``/``handoff_area`` as for :meth:`pair`.
        Raises ValueError for a bad URL, FileNotFoundError
        (nothing at the path), ConnectionRefusedError (a stale socket file),
        PermissionError, :class:`~fastipc.Timeout`.
        """
        ep = parse(url, schemes=("unix",))
        max_message = _max_message_for(ep, max_message)
        handoff = validate_handoff(handoff_min, handoff_area)
        tns = timeout_ns(timeout)
        deadline = None if tns < 0 else time.monotonic_ns() + tns
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            connect_unix(sock, ep, deadline)
        except BaseException:
            sock.close()
            raise
        return cls._adopt(sock, ep.display, max_message, handoff)

    @classmethod
    def from_socket(
        cls,
        sock: socket.socket,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        handoff_min: int = DEFAULT_HANDOFF_MIN,
        handoff_area: int = DEFAULT_HANDOFF_AREA,
    ) -> Channel:
        """Adopt connected AF_UNIX SOCK_STREAM socket ``sock``; the channel owns it from now on.

        The socket is switched to non-blocking mode (the channel does its own
        waiting); ``handoff_min``/``handoff_area`` as for :meth:`pair`.
        Raises TypeError/ValueError for another kind of socket.
        """
        if not isinstance(sock, socket.socket):
            raise TypeError(f"from_socket needs a socket.socket, not {type(sock).__name__}")
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(
                f"from_socket needs an AF_UNIX SOCK_STREAM socket, got {sock.family!r} {sock.type!r}"
            )
        max_message = validate_max_message(max_message)
        handoff = validate_handoff(handoff_min, handoff_area)
        return cls._adopt(sock, "socket", max_message, handoff)

    @classmethod
    def _adopt(
        cls,
        sock: socket.socket,
        name: str,
        max_message: int,
        handoff: tuple[int, int] = (0, DEFAULT_HANDOFF_AREA),
    ) -> Channel:
        """A channel on connected ``sock``. ``handoff`` (min, area bytes) stays
        off unless given: only a Channel peer understands hand-off frames."""
        from ._backend import ChannelImpl

        sock.setblocking(False)
        self: Channel = ChannelImpl.__new__(ChannelImpl)
        self._sock = sock
        self.name = name
        self.max_message = max_message
        self.handoff_min, self.handoff_area = handoff
        self._setup()
        return self

    # ---- the interface each backend implements --------------------------
    def _setup(self) -> None:
        """Make the backend's per-channel state (called once by _adopt)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free the backend's state and close fds it holds (called once by close)."""
        raise NotImplementedError

    def _buffered(self) -> bool:
        """True if received bytes wait in this process (they would not survive pickling)."""
        raise NotImplementedError

    def send(self, data: Any, fds: Iterable[FdLike] = (), timeout: float | None = None) -> None:
        """Send one message: any C-contiguous bytes-like object, with ``fds`` attached.

        ``fds`` are ints or objects with ``fileno()``, at most 253; the peer
        receives duplicates (the caller's stay open). Blocks while the
        socket is full. Raises :class:`~fastipc.MessageTooLarge` if
        ``len(data) > max_message`` (nothing sent), :class:`~fastipc.Closed`
        if the peer is gone, :class:`~fastipc.Timeout`, TypeError for str
        and other non-buffers.
        """
        raise NotImplementedError

    def send_many(self, buffers: Iterable[Any], timeout: float | None = None) -> int:
        """Send each of ``buffers`` as one message, in order, with few syscalls; return how many.

        Every item is checked before any is sent (TypeError, MessageTooLarge).
        If the deadline passes between messages, the :class:`~fastipc.Timeout`
        carries ``sent``; if it passes inside one, the channel is closed too.
        """
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> bytes:
        """Return the next message. Fds that came with it are closed (see :meth:`recv_with_fds`).

        Raises :class:`~fastipc.Timeout`, :class:`~fastipc.Closed` once the
        peer closed and everything was received, MessageTooLarge (channel
        closed) if the peer announced one over ``max_message``.
        """
        raise NotImplementedError

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the next message into writable ``buffer``; return its length in bytes.

        A message longer than ``buffer`` stays queued and
        :class:`~fastipc.MessageTooLarge` is raised (the channel stays open).
        Fds that came with it are closed.
        """
        raise NotImplementedError

    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        """Return between 1 and ``max_count`` messages: waits for the first, takes what else arrived.

        Fds that came with them are closed.
        """
        raise NotImplementedError

    def recv_with_fds(self, timeout: float | None = None) -> tuple[bytes, list[int]]:
        """Return the next message and the fds that came with it.

        The fds are new, close-on-exec and owned by the caller (close them).
        Raises as :meth:`recv`, and OSError(ENOBUFS) naming MSG_CTRUNC if the
        message carried more fds than fit (the ones that came were closed;
        the message is consumed, the channel stays open).
        """
        raise NotImplementedError

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Context manager yielding a read-only view of the next message, in place when it can.

        A message that came through the shared-memory hand-off is not
        copied: the view is the sender's area, and its room is given back
        when the block exits (until then the sender has that much less room;
        messages received inside the block keep theirs too). Any other
        message is received as by :meth:`recv` and viewed. Do not keep the
        view past the block (it is released there; closing the channel
        inside the block is allowed). One view at a time: a second
        ``recv_view`` inside the block raises ValueError. Raises as
        :meth:`recv`. The native backend's wait for the message after a
        handed-off one spins up to that message's length / 8 GB/s (at most
        250 µs, never past ``timeout``) before sleeping, as a reader that
        copies nothing is back waiting well before the sender's next copy is
        done (see csrc/channel.c, spin_end).
        """
        self._socket()
        if self._view is not None:
            raise ValueError(f"channel {self.name}: a recv_view is already open")
        return self._lend_view(timeout)

    @contextmanager
    def _lend_view(self, timeout: float | None) -> Iterator[memoryview]:
        view, give_back = self._take_view(timeout)
        self._view = view
        try:
            yield view
        finally:
            self._view = None
            release_view(view)
            give_back()

    def _take_view(self, timeout: float | None) -> tuple[memoryview, Callable[[], None]]:
        """The backend's part of recv_view: the next message's view, and the call that
        gives its room back (and that of messages received meanwhile) when the block ends."""
        raise NotImplementedError

    def pending(self) -> bool:
        """True if a whole message is already buffered in this process.

        A selector on :meth:`fileno` does not see such messages: receive
        until this is False (or a ``timeout=0`` receive times out) before
        waiting on the fd.
        """
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------
    def peer_credentials(self) -> tuple[int, int, int]:
        """``(pid, uid, gid)`` of the peer process as the kernel recorded them at connect (SO_PEERCRED)."""
        creds = self._socket().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, gid = struct.unpack("3i", creds)
        return pid, uid, gid

    def shutdown(self, how: str = "both") -> None:
        """Shut down ``"write"``, ``"read"`` or ``"both"`` directions of the connection.

        After ``"write"`` the peer receives what was sent, then Closed; this
        end can still receive. Raises ValueError for another ``how``.
        """
        flags = {"write": socket.SHUT_WR, "read": socket.SHUT_RD, "both": socket.SHUT_RDWR}
        if how not in flags:
            raise ValueError(f"shutdown how must be 'write', 'read' or 'both', got {how!r}")
        try:
            self._socket().shutdown(flags[how])
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # the peer already went away: nothing to shut
                raise OSError(exc.errno, exc.strerror, self.name) from None

    def fileno(self) -> int:
        """The socket's fd, for selectors and asyncio (see :meth:`pending`)."""
        return self._socket().fileno()

    @property
    def closed(self) -> bool:
        """True once the channel is closed (by :meth:`close` or a broken stream)."""
        return self._sock is None

    def close(self) -> None:
        """Close the socket and every received fd not handed out (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            self._release()
        finally:
            sock.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self.close()

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the peer closes."""
        while True:
            try:
                yield self.recv()
            except Closed:
                return

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only multiprocessing's pickler can carry the socket (it dups the fd).
        if self._buffered():
            raise ValueError(
                "cannot pass a channel that already buffered received bytes, or mapped the "
                "peer's hand-off area, to another process"
            )
        handoff = (self.handoff_min, self.handoff_area)
        return (_rebuild, (self._socket(), self.name, self.max_message, handoff))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fileno()}"
        return f"<{type(self).__name__} {self.name} {state}>"

    # ---- helpers for the backends ------------------------------------
    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise ValueError(f"operation on a closed channel ({self.name})")
        return sock

    def _fail(self, code: int, *, length: int = 0, detail: str = "") -> NoReturn:
        """Raise what errno ``code`` (positive) means here, closing the channel if it is broken."""
        name = self.name
        if code in (errno.ETIMEDOUT, errno.EAGAIN):
            raise Timeout(f"channel {name}: timed out")
        if code == errno.EPIPE:
            raise Closed(f"channel {name}: the peer closed the connection")
        if code == errno.EBADF and self.closed:
            raise ValueError(f"operation on a closed channel ({name})")
        if code == errno.ENOBUFS:
            raise OSError(
                code,
                "MSG_CTRUNC: a message carried more fds than fit (the ones that arrived were "
                "closed; the message was dropped)",
                name,
            )
        if code == errno.EMSGSIZE:
            raise MessageTooLarge(f"channel {name}: {detail or 'message too large'}")
        # The rest leave the byte stream unusable.
        self.close()
        if code == errno.ENODATA:
            raise Closed(
                f"channel {name}: the peer closed the connection in the middle of a message "
                "(the partial message was dropped); channel closed"
            )
        if code == errno.EFBIG:
            raise MessageTooLarge(
                f"channel {name}: the peer announced a message of {length} bytes, over "
                f"max_message={self.max_message}{self._raw_text_hint(length)}; channel closed"
            )
        if code == errno.EPROTO:
            what = detail or (
                "bad frame flags, fds attached where no message starts or more than one "
                "message may carry, or a hand-off area that is not a sealed memfd"
            )
            hint = self._raw_text_hint(length)
            raise ProtocolError(f"protocol error: {what}{hint}; channel closed", name)
        if code == errno.EBADMSG:
            raise ProtocolError(
                "protocol error: a hand-off descriptor points outside the shared area; "
                "channel closed",
                name,
                errno.EBADMSG,
            )
        raise OSError(code, os.strerror(code), name)

    def _raw_text_hint(self, length: int = 0) -> str:
        """A hint when the bad header's length field reads as text: a raw (unframed) peer."""
        head = length.to_bytes(4, "little") if 0 < length < 1 << 32 else b""
        if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            return (
                f" (the header's first bytes read {head.decode()!r}: text, as if the peer "
                "sends raw bytes; check that both sides use length framing)"
            )
        return ""

    def _closed_send(self, sent: int = 0) -> NoReturn:
        """The peer is gone: Closed, carrying how many messages of a batch went out."""
        raise Closed(f"channel {self.name}: the peer closed the connection", sent=sent)


def _rebuild(sock: socket.socket, name: str, max_message: int, handoff: tuple[int, int]) -> Channel:
    return Channel._adopt(sock, name, max_message, handoff)


def _max_message_for(ep: Endpoint, given: int | None) -> int:
    if given is not None:
        return validate_max_message(given)
    text = ep.options.get("max_message")
    if text is None:
        return DEFAULT_MAX_MESSAGE
    if not text.isdigit():
        raise ValueError(
            f"endpoint {ep.url!r}: option max_message={text!r} is not a number of bytes"
        )
    return validate_max_message(int(text))


class Listener:
    """A listening Unix stream socket that accepts :class:`Channel` connections.

    Made by :func:`listen`. Closing it removes its socket file (if it is
    still the one it made). Not thread-safe.
    """

    #: The parsed endpoint it listens on.
    endpoint: Endpoint
    #: ``max_message`` (bytes) given to every accepted channel.
    max_message: int
    #: ``(handoff_min, handoff_area)`` (bytes) given to every accepted channel.
    handoff: tuple[int, int]
    _sock: socket.socket | None
    _ident: tuple[int, int] | None

    def __init__(self, *_: object) -> None:
        raise TypeError("use fastipc.listen(url) to make a Listener")

    @property
    def name(self) -> str:
        """The path (or @name) listened on."""
        return self.endpoint.display

    @property
    def closed(self) -> bool:
        return self._sock is None

    def accept(self, timeout: float | None = None) -> Channel:
        """Wait for the next connection and return its channel.

        Raises :class:`~fastipc.Timeout`, ValueError if closed, OSError.
        """
        sock = self._socket()
        tns = timeout_ns(timeout)
        deadline = None if tns < 0 else time.monotonic_ns() + tns
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while True:
            try:
                conn, _ = sock.accept()
                break
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, self.name) from None
            if deadline is None:
                poller.poll()
            else:
                left = deadline - time.monotonic_ns()
                if left <= 0:
                    raise Timeout(f"listener {self.name}: no connection within the timeout")
                poller.poll(-(-left // 1_000_000))
        return Channel._adopt(conn, self.name, self.max_message, self.handoff)

    def fileno(self) -> int:
        """The listening socket's fd (readable when a connection waits)."""
        return self._socket().fileno()

    def close(self) -> None:
        """Stop listening and remove the socket file (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            remove_if_ours(self.endpoint.path, self._ident)
        finally:
            sock.close()

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.name} {'closed' if self.closed else 'listening'}>"

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ValueError(f"operation on a closed listener ({self.name})")
        return self._sock


def listen(
    url: str,
    *,
    mode: int | None = None,
    backlog: int | None = None,
    max_message: int | None = None,
    handoff_min: int = DEFAULT_HANDOFF_MIN,
    handoff_area: int = DEFAULT_HANDOFF_AREA,
) -> Listener:
    """Listen for channel connections at ``url`` (``unix:///path``, ``unix://rel``, ``unix://@name``).

    The socket file is created with permissions ``mode`` (default 0o600,
    owner only; exactly that, the umask does not apply) and removed by
    :meth:`Listener.close`. A stale socket file (nobody accepting on it) is
    replaced. ``backlog`` is the kernel's queue of unaccepted connections.
    Each option may also come from the URL's query (``?mode=0660``); a
    keyword wins. ``handoff_min``/``handoff_area`` (bytes) are given to
    every accepted channel, as for :meth:`Channel.pair`.

    Raises ValueError for a bad URL or option (including a path over the
    107-byte limit), OSError(EADDRINUSE) naming the path if a live socket
    listens there, FileExistsError if something that is not a socket is
    there, PermissionError, OSError.
    """
    ep = parse(url, schemes=("unix",))
    mode = mode_option(ep, mode)
    backlog = backlog_option(ep, backlog)
    max_message = _max_message_for(ep, max_message)
    handoff = validate_handoff(handoff_min, handoff_area)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    ident = None
    try:
        ident = bind_unix(sock, ep, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        remove_if_ours(ep.path, ident)
        raise
    lst = Listener.__new__(Listener)
    lst.endpoint = ep
    lst.max_message = max_message
    lst.handoff = handoff
    lst._sock = sock
    lst._ident = ident
    return lst
