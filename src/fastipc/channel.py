"""Channel: length-framed messages over a Unix stream socket, with fd passing and peer credentials.

The public :class:`Channel` adds the factories (validating arguments and
making the socket) to the backend picked in ``fastipc._backend`` (C through
cffi, or pure Python), which implements ``fastipc._contract.ChannelBase``
and does the per-message work (framing, batching, fds). Both speak the same
wire format (docs/architecture.md, "Wire format"), so either may be the
peer of the other::

    frame = [u32 LE payload length][u32 LE flags][payload]

Flag bit 0 (``FRAME_FDS``) marks a frame whose SCM_RIGHTS fds ride on its
first byte; bits 1 and 2 carry the shared-memory hand-off of large messages
(``handoff.py``); the other bits are reserved and a frame using them is
refused.
"""

from __future__ import annotations

import select
import socket
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ._contract import ChannelBase as ChannelImpl
else:
    from ._backend import ChannelImpl
from ._checks import MAX_FDS, deadline
from .endpoints import Endpoint, parse
from .errors import Timeout
from .framing import (
    DEFAULT_MAX_MESSAGE,
    validate_max_message,
)
from .handoff import DEFAULT_HANDOFF_AREA, DEFAULT_HANDOFF_MIN, validate_handoff
from .socket_file import backlog_option, bind_unix, connect_unix, mode_option, remove_if_ours

__all__ = ["DEFAULT_MAX_MESSAGE", "MAX_FDS", "Channel", "Listener", "listen"]

_L = TypeVar("_L", bound="Listener")


#: The longest single poll() (ms) of a wait: a longer one is made of several.
_POLL_MAX_MS = 3_600_000


class Channel(ChannelImpl):
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

    Threads may share a channel: one thread may send while another
    receives, and two sending (or two receiving) take turns, each call
    waiting for the other thread's call on the same side within its own
    ``timeout`` (so every message goes and arrives whole, once).

    Large messages: a message of ``handoff_min`` bytes or more (up to half
    of ``handoff_area``) sent by :meth:`send` without fds is copied into a
    shared-memory area (a sealed memfd of ``handoff_area`` bytes, made at
    the first such message and passed to the peer once) and only a 16-byte
    descriptor crosses the socket: one copy on each side instead of two
    through the kernel. The receiving API does not change. ``handoff_min=0``
    turns it off; :meth:`send_many` always sends through the socket.
    Cost: the first large message touches the whole area (about 89 ms for
    128 MiB, 2 s for 1 GiB, measured on a 2-vCPU VM), once per sending end,
    and the area stays mapped for the channel's life. Sizing: a message
    must fit in half the area; for a stream of large messages give it four
    times the largest, so the sender fills one half while the peer reads.

    Attributes (declared with their meaning in ``_contract.ChannelBase``):
    ``name`` (the endpoint, for messages), ``max_message`` (bytes),
    ``handoff_min`` and ``handoff_area`` (bytes), ``closed``; all
    read-only (the sizes are fixed when the channel is made).
    """

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
        until = deadline(timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            connect_unix(sock, ep, until)
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
        name: str = "socket",
    ) -> Channel:
        """Adopt connected stream socket ``sock``; the channel owns it from now on.

        ``sock`` is AF_UNIX, AF_INET or AF_INET6 with SOCK_STREAM; it is
        switched to non-blocking mode (the channel does its own waiting).
        ``handoff_min``/``handoff_area`` as for :meth:`pair`; on a tcp socket
        hand-off is always off and sending fds raises ValueError (both need
        SCM_RIGHTS, which only unix sockets carry). ``name`` labels the
        channel in error messages. Raises TypeError/ValueError for another
        kind of socket.
        """
        if not isinstance(sock, socket.socket):
            raise TypeError(f"from_socket needs a socket.socket, not {type(sock).__name__}")
        if sock.family not in _STREAM_FAMILIES or sock.type != socket.SOCK_STREAM:
            raise ValueError(
                "from_socket needs a connected AF_UNIX, AF_INET or AF_INET6 SOCK_STREAM "
                f"socket, got {sock.family!r} {sock.type!r}"
            )
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        max_message = validate_max_message(max_message)
        handoff = validate_handoff(handoff_min, handoff_area)
        if sock.family != socket.AF_UNIX:
            handoff = (0, handoff[1])
        return cls._adopt(sock, name, max_message, handoff)


_STREAM_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


def _max_message_for(ep: Endpoint, given: int | None) -> int:
    if given is None:
        given = DEFAULT_MAX_MESSAGE if ep.max_message is None else ep.max_message
    return validate_max_message(given)


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
        until = deadline(timeout)
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
            if until is None:
                poller.poll()
            else:
                left = until - time.monotonic_ns()
                if left <= 0:
                    raise Timeout(f"listener {self.name}: no connection within the timeout")
                poller.poll(min(-(-left // 1_000_000), _POLL_MAX_MS))  # poll() takes an int
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
