"""What every transport's client shares: the public :class:`Client` face and its helpers."""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Any, TypeVar

from .._checks import deadline, time_left, timeout_ns
from ..endpoints import Endpoint

__all__ = [
    "Client",
    "SocketClient",
    "bound_url",
    "check_timeout",
    "resolve",
]

_T = TypeVar("_T", bound="Client")


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` (seconds) validated, as ``socket.settimeout`` takes it (None: forever).

    0 becomes one microsecond: a socket with timeout 0 would be non-blocking
    and raise BlockingIOError instead of timing out.
    """
    tns = timeout_ns(timeout)
    if tns < 0:
        return None
    return max(tns / 1e9, 1e-6)


def resolve(ep: Endpoint, kind: int) -> tuple[int, Any]:
    """(family, address) to make a socket of type ``kind`` for ``ep`` and bind or connect it.

    A unix or unixgram endpoint is AF_UNIX at its path or abstract name; a
    tcp or udp host is resolved (the first address getaddrinfo gives).
    Raises OSError(EHOSTUNREACH) naming the URL when the host does not resolve.
    """
    if ep.host is None:
        return socket.AF_UNIX, ep.address
    try:
        info = socket.getaddrinfo(ep.host, ep.port, type=kind)[0]
    except socket.gaierror as exc:
        raise OSError(errno.EHOSTUNREACH, f"cannot resolve host: {exc.strerror}", ep.url) from None
    return info[0], info[4]


def bound_url(
    ep: Endpoint, sock: socket.socket, *, host: str | None = None, query: str = ""
) -> str:
    """The URL ``sock`` is bound to: ``ep``'s for a unix socket (without options), else
    ``SCHEME://HOST:PORT`` with the real port (IPv6 in brackets), ``host`` if given
    instead of the address bound, and ``query`` appended."""
    if sock.family == socket.AF_UNIX:
        return ep.url.partition("?")[0]
    bound, port = sock.getsockname()[:2]
    host = host or bound
    if ":" in host:
        host = f"[{host}]"
    return f"{ep.scheme}://{host}:{port}{query}"


class Client:
    """A connection to an endpoint, made by :func:`fastipc.connect`; one per transport.

    Stream clients (tcp, unix) carry messages in the framing chosen at
    connect; datagram clients (udp, unixgram) send one datagram per message
    and receive replies addressed to them; a queue client (mq) sends into
    the queue and receives from it (or from its ``?reply=`` queue); a FIFO
    client only sends.

    Every ``timeout`` is in seconds, None blocks until the call can
    complete; blocking calls return to Python often enough for Ctrl-C.
    Errors: :class:`~fastipc.Timeout` (a send's is also :class:`~fastipc.Full`
    and ``queue.Full``, a receive's :class:`~fastipc.Empty` and
    ``queue.Empty``), :class:`~fastipc.Closed` when the
    peer closed the connection, :class:`~fastipc.MessageTooLarge`, OSError
    subclasses naming the endpoint; ValueError on a closed client.
    A context manager (closes on exit).
    """

    #: The framing of a stream client ("raw" or "length"); None for message transports.
    framing: str | None = None

    def __init__(self, ep: Endpoint) -> None:
        self.endpoint = ep

    @property
    def address(self) -> str:
        """The endpoint URL this client talks to."""
        return self.endpoint.url

    def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Send ``data`` as one message. ``priority`` is for message queues (0 elsewhere).

        Raises :class:`~fastipc.Full` (a Timeout) if it cannot be sent in time,
        :class:`~fastipc.Closed` if the peer is gone,
        :class:`~fastipc.MessageTooLarge` if it cannot be carried whole.
        """
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> bytes:
        """Wait for the next message and return it.

        Raises :class:`~fastipc.Empty` (a Timeout) if none comes in time,
        :class:`~fastipc.Closed` at the end of a stream.
        """
        raise NotImplementedError

    def request(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> bytes:
        """Send ``data`` and return the next message received: one request, one reply.

        ``timeout`` (seconds) bounds the whole exchange.
        """
        until = deadline(timeout)
        self.send(data, timeout=time_left(until))
        return self.recv(timeout=time_left(until))

    def shutdown(self, how: str = "both") -> None:
        """Stop sending (``"write"``: the peer sees end of stream), receiving, or both (streams only)."""
        raise ValueError(f"{self.endpoint.scheme} has no half-close; use close()")

    def fileno(self) -> int:
        """The fd to wait on with selectors/asyncio (readable when a message may be received)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection gracefully (idempotent): what was sent is still delivered."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close at once; tcp resets the connection (SO_LINGER 0), others close."""
        self.close()

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A client whose __init__ failed has nothing to close.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if not self.closed:
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.address} {state}>"

    def _no_priority(self, priority: int) -> None:
        if priority:
            raise ValueError(f"priority is for message queues, not {self.endpoint.scheme}")


class SocketClient(Client):
    """A client that owns one socket (stream and datagram transports)."""

    _sock: socket.socket | None = None

    def fileno(self) -> int:
        return self._socket().fileno()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ValueError(f"operation on a closed client ({self.address})")
        return self._sock
