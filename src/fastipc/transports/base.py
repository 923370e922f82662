"""What every transport's client shares: the public :class:`Client` face and error helpers."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from .._checks import timeout_ns
from ..endpoints import Endpoint

__all__ = [
    "Client",
    "SocketClient",
    "bound_url",
    "check_timeout",
    "endpoint_error",
    "time_left",
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


def time_left(timeout: float | None) -> Callable[[], float | None]:
    """A function giving the seconds left of ``timeout`` from now (None: forever), at least 0."""
    tns = timeout_ns(timeout)
    if tns < 0:
        return lambda: None
    deadline = time.monotonic() + tns / 1e9
    return lambda: max(0.0, deadline - time.monotonic())


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


def endpoint_error(exc: OSError, ep: Endpoint) -> OSError:
    """``exc`` again as the matching OSError subclass, naming the endpoint."""
    if exc.errno is None:
        return OSError(f"{ep.display}: {exc}")
    return OSError(exc.errno, exc.strerror, ep.display)


class Client:
    """A connection to an endpoint, made by :func:`fastipc.connect`; one per transport.

    Stream clients (tcp, unix) carry messages in the framing chosen at
    connect; datagram clients (udp, unixgram) send one datagram per message
    and receive replies addressed to them; a queue client (mq) sends into
    the queue and receives from it (or from its ``?reply=`` queue); a FIFO
    client only sends.

    Every ``timeout`` is in seconds, None blocks until the call can
    complete; blocking calls return to Python often enough for Ctrl-C.
    Errors: :class:`~fastipc.Timeout`, :class:`~fastipc.Closed` when the
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

        Raises :class:`~fastipc.Timeout` if it cannot be sent in time,
        :class:`~fastipc.Closed` if the peer is gone,
        :class:`~fastipc.MessageTooLarge` if it cannot be carried whole.
        """
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> bytes:
        """Wait for the next message and return it.

        Raises :class:`~fastipc.Timeout`, :class:`~fastipc.Closed` at the end of a stream.
        """
        raise NotImplementedError

    def request(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> bytes:
        """Send ``data`` and return the next message received: one request, one reply.

        ``timeout`` (seconds) bounds the whole exchange.
        """
        left = time_left(timeout)
        self.send(data, timeout=left())
        return self.recv(timeout=left())

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
