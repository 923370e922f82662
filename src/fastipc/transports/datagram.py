"""Datagram transports (udp, unixgram): one datagram is one message; replies go to the sender.

UDP carries at most 65,507 bytes in a datagram over IPv4 (65,527 over
IPv6); a larger message raises :class:`~fastipc.MessageTooLarge` before
anything is sent. Datagrams may be lost or reordered (udp), and a reply the
kernel cannot queue at once is dropped and logged rather than stalling the
server. A udp URL whose host is a multicast group (``udp://239.1.1.1:5000``)
joins the group on the interface given by ``?iface=ADDR`` (default: the
kernel's choice); clients send to the group with that interface and
loopback enabled, so a sender on the same machine reaches its own group.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import mmap
import selectors
import socket
from typing import Any

from .._checks import check_buffer
from .._registry import Transport, register
from ..endpoints import Endpoint
from ..errors import Closed, Empty, Full, MessageTooLarge, os_error
from ..server import Peer, Server, Source
from ..socket_file import bind_unix, mode_option, remove_if_ours
from .base import SocketClient, bound_url, check_timeout, resolve

__all__ = ["DatagramClient", "DatagramPeer", "DatagramSource", "max_datagram"]

log = logging.getLogger("fastipc.server")

#: The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
UDP_MAX_IPV4 = 65507
#: The largest UDP payload over IPv6 (65,535 less the UDP header).
UDP_MAX_IPV6 = 65527
#: The largest unixgram datagram (bytes) fastipc asks the kernel for; the
#: kernel's own cap is the socket's send buffer less 32 bytes, and the send
#: buffer is at most net.core.wmem_max (often 208 KiB), so the real limit is
#: what :func:`max_datagram` finds.
UNIXGRAM_BUFFER = 4 * 1024 * 1024
#: What the kernel keeps of a unix socket's send buffer for the datagram's own bookkeeping.
_UNIX_DGRAM_OVERHEAD = 32
#: Datagrams read per readiness event, so one busy sender does not starve the loop.
READ_BATCH = 64


def max_datagram(sock: socket.socket, max_message: int) -> int:
    """The largest datagram (bytes) ``sock`` can send, under ``max_message``.

    For a unixgram socket this grows its send buffer towards
    ``max_message`` (the kernel caps it at net.core.wmem_max) and returns
    what the kernel will then carry.
    """
    if sock.family == socket.AF_INET:
        return min(UDP_MAX_IPV4, max_message)
    if sock.family == socket.AF_INET6:
        return min(UDP_MAX_IPV6, max_message)
    want = min(UNIXGRAM_BUFFER, max_message)
    have = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - _UNIX_DGRAM_OVERHEAD
    if have < want:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want + _UNIX_DGRAM_OVERHEAD)
        have = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - _UNIX_DGRAM_OVERHEAD
    return min(want, have)


def _multicast(ep: Endpoint, family: int) -> bool:
    if ep.scheme != "udp" or family != socket.AF_INET:
        return False
    assert ep.host is not None
    try:
        return ipaddress.IPv4Address(socket.gethostbyname(ep.host)).is_multicast
    except (OSError, ValueError):
        return False


def _iface(ep: Endpoint) -> bytes:
    """The ``?iface=`` address (checked by parse()), packed for setsockopt; any by default."""
    return socket.inet_aton(ep.iface or "0.0.0.0")


def _recv_buffer(size: int) -> mmap.mmap:
    """A reusable receive buffer of ``size`` bytes that costs memory only where a datagram
    was written into it: an anonymous mapping, where a bytearray is zero-filled (touched)
    whole at once (each unixgram client would hold 4 MiB)."""
    return mmap.mmap(-1, size)


def _check_size(data: bytes | bytearray | memoryview, limit: int, where: str, family: int) -> None:
    size = check_buffer(data).nbytes
    if size > limit:
        why = " (the send buffer, capped by net.core.wmem_max)" if family == socket.AF_UNIX else ""
        raise MessageTooLarge(
            f"{where}: a datagram holds at most {limit} bytes{why}, got a {size}-byte message"
        )


def _url(ep: Endpoint, sock: socket.socket) -> str:
    if not _multicast(ep, sock.family):
        return bound_url(ep, sock)
    # The group's name, and the interface clients must send out of to reach it.
    iface = ep.iface
    return bound_url(ep, sock, host=ep.host, query=f"?iface={iface}" if iface else "")


class DatagramSource(Source):
    """The bound socket of a udp or unixgram server."""

    def __init__(self, ep: Endpoint, server: Server) -> None:
        self.endpoint = ep
        self._server = server
        self._ident: tuple[int, int] | None = None
        family, addr = resolve(ep, socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            if family == socket.AF_UNIX:
                self._ident = bind_unix(sock, ep, mode_option(ep, None))
            else:
                if _multicast(ep, family):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(addr)
                except OSError as exc:
                    raise os_error(exc, ep.display) from None
                if _multicast(ep, family):
                    group = socket.inet_aton(socket.gethostbyname(addr[0]))
                    try:
                        sock.setsockopt(
                            socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + _iface(ep)
                        )
                    except OSError as exc:
                        raise OSError(
                            exc.errno, f"cannot join multicast group: {exc.strerror}", ep.url
                        ) from None
            sock.setblocking(False)
        except BaseException:
            sock.close()
            remove_if_ours(ep.path, self._ident)
            raise
        self._sock = sock
        # Receive up to max_message (a unixgram sender may have a larger send
        # buffer than ours); one byte more shows an oversized datagram as such.
        self._limit = min(server.limits.max_message, UNIXGRAM_BUFFER)
        if family != socket.AF_UNIX:
            self._limit = max_datagram(sock, self._limit)
        self._send_limit = max_datagram(sock, server.limits.max_message)
        self._buf = _recv_buffer(self._limit + 1)
        self.address = _url(ep, sock)

    def attach(self, server: Server) -> None:
        server.selector.register(self._sock, selectors.EVENT_READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        sock, buf, limit = self._sock, self._buf, self._limit
        for _ in range(READ_BATCH):
            try:
                n, _, flags, addr = sock.recvmsg_into([buf])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors of earlier replies surface here (ECONNREFUSED); not fatal.
                log.info("%s: receive error %s", self.address, exc.strerror)
                continue
            if n > limit or flags & socket.MSG_TRUNC:
                log.warning("dropped a datagram from %r: over %d bytes (max_message)", addr, limit)
                continue
            self._server.dispatch(bytes(buf[:n]), DatagramPeer(self, addr))

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any) -> None:
        _check_size(data, self._send_limit, f"reply to {addr!r}", self._sock.family)
        if not addr:
            raise Closed("the sender has no address (an unbound unixgram socket): cannot reply")
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            log.warning("reply to %r dropped: its receive queue is full", addr)
        except OSError as exc:
            raise Closed(f"reply to {addr!r} failed: {exc.strerror}") from None

    def close(self) -> None:
        try:
            remove_if_ours(self.endpoint.path, self._ident)
        finally:
            self._sock.close()


class DatagramPeer(Peer):
    """The sender of one datagram; :meth:`send` answers it."""

    __slots__ = ("_source", "address")

    def __init__(self, source: DatagramSource, address: Any) -> None:
        self._source = source
        self.address = address

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self._source.sendto(data, self.address)


class DatagramClient(SocketClient):
    """A udp or unixgram client: each :meth:`send` is one datagram, :meth:`recv` one reply.

    Its socket is connected to the server (errors such as "nobody listens"
    surface on the next call), except for a multicast group, where replies
    come from each member's own address. A unixgram client binds an
    abstract autobind address so that replies can reach it.
    """

    def __init__(self, ep: Endpoint, timeout: float | None, max_message: int) -> None:
        super().__init__(ep)
        family, addr = resolve(ep, socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._group = _multicast(ep, family)
        try:
            if family == socket.AF_UNIX:
                sock.bind("")  # autobind: a unique abstract address to reply to
            if self._group:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _iface(ep))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            else:
                try:
                    sock.connect(addr)
                except OSError as exc:
                    raise os_error(exc, ep.display) from None
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self._addr = addr
        self._limit = max_datagram(sock, max_message)
        self._recv_limit = max(self._limit, min(max_message, UNIXGRAM_BUFFER))
        self._buf = _recv_buffer(self._recv_limit + 1)  # one allocation, not one per recv
        check_timeout(timeout)  # validated; a datagram socket connects at once

    def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> None:
        self._no_priority(priority)
        sock = self._socket()
        _check_size(data, self._limit, self.address, sock.family)
        sock.settimeout(check_timeout(timeout))
        try:
            if self._group:
                sock.sendto(data, self._addr)
            else:
                sock.send(data)
        except socket.timeout:
            raise Full(f"{self.address}: send timed out") from None
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise MessageTooLarge(
                    f"{self.address}: the kernel refused a {memoryview(data).nbytes}-byte datagram"
                ) from None
            raise os_error(exc, self.endpoint.display) from None

    def recv(self, timeout: float | None = None) -> bytes:
        sock = self._socket()
        sock.settimeout(check_timeout(timeout))
        try:
            n, _, flags, _ = sock.recvmsg_into([self._buf])
        except socket.timeout:
            raise Empty(f"{self.address}: nothing received within {timeout} s") from None
        except OSError as exc:
            raise os_error(exc, self.endpoint.display) from None
        if n > self._recv_limit or flags & socket.MSG_TRUNC:
            raise MessageTooLarge(
                f"{self.address}: received a datagram over {self._recv_limit} bytes"
            )
        return bytes(self._buf[:n])


for _scheme in ("udp", "unixgram"):
    register(
        Transport(
            _scheme,
            open_source=DatagramSource,
            open_client=lambda ep, framing, timeout, max_message: DatagramClient(
                ep, timeout, max_message
            ),
            receive_by_connecting=False,
        )
    )
