"""Stream transports (tcp, unix): the listening source, one connection per client, and the client.

The server side reads what a client sends, cuts it into messages by the
server's framing ("raw": one read is one message; "length": DESIGN.md
frames), and queues replies without ever blocking the loop: a client that
does not read gets its replies queued up to ``max_output`` bytes, then is
cut off.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import time
from collections import deque
from typing import Any

from ..channel import Channel
from ..endpoints import Endpoint
from ..errors import Closed, MessageTooLarge, Timeout
from ..framing import HEADER, MAX_MESSAGE_LIMIT, LengthDecoder
from ..server import Peer, Server, Source
from ..socket_file import bind_unix, mode_option, remove_if_ours
from .base import Client, check_timeout, endpoint_error

__all__ = ["Connection", "StreamClient", "StreamListener"]

log = logging.getLogger("fastipc.server")

#: Bytes asked of one recv(): one raw message at most.
READ_SIZE = 64 * 1024
#: Connections accepted per readiness event, so a flood does not starve clients.
ACCEPT_BATCH = 64
#: Most buffers handed to one sendmsg().
IOV_BATCH = 64

_LINGER_RESET = struct.pack("ii", 1, 0)
_CREDS = struct.Struct("3i")
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


def _family(ep: Endpoint) -> int:
    if ep.scheme == "unix":
        return socket.AF_UNIX
    assert ep.host is not None
    try:
        infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(errno.EHOSTUNREACH, f"cannot resolve host: {exc.strerror}", ep.url) from None
    return infos[0][0]


def _url(ep: Endpoint, sock: socket.socket) -> str:
    if ep.scheme == "unix":
        return ep.url.partition("?")[0]
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{ep.scheme}://{host}:{port}"


class StreamListener(Source):
    """The listening socket of a tcp or unix server; accepts clients into :class:`Connection`."""

    def __init__(self, ep: Endpoint, server: Server) -> None:
        self.endpoint = ep
        self._server = server
        self._ident: tuple[int, int] | None = None
        family = _family(ep)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if family == socket.AF_UNIX:
                self._ident = bind_unix(sock, ep, mode_option(ep, None))
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(ep.address)
                except OSError as exc:
                    raise endpoint_error(exc, ep) from None
            sock.listen(server.limits.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            remove_if_ours(ep.path, self._ident)
            raise
        self._sock = sock
        self._tcp = family != socket.AF_UNIX
        self.address = _url(ep, sock)

    def attach(self, server: Server) -> None:
        server.selector.register(self._sock, _READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        server = self._server
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of fds: stop accepting for a moment rather than spin.
                    log.warning("accept on %s failed: %s; pausing 0.1 s", self.address, exc)
                    server.selector.unregister(self._sock)
                    server.call_later(0.1, lambda: self.attach(server))
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client gave up before we accepted it
                raise
            if server.clients >= server.limits.max_clients:
                log.warning(
                    "refused %r: %d clients already (max_clients)", addr, server.limits.max_clients
                )
                conn.close()
                continue
            if self._tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            Connection(server, conn, addr, self._tcp)

    def close(self) -> None:
        try:
            remove_if_ours(self.endpoint.path, self._ident)
        finally:
            self._sock.close()


class Connection(Peer):
    """One stream client of a server: framing in, queued replies out, limits enforced."""

    def __init__(self, server: Server, sock: socket.socket, address: Any, tcp: bool) -> None:
        sock.setblocking(False)
        self.address = address
        self._server = server
        self._sock: socket.socket | None = sock
        self._tcp = tcp
        limits = server.limits
        self._idle = limits.idle_timeout
        self.deadline = time.monotonic() + self._idle if self._idle is not None else float("inf")
        self._decoder = (
            LengthDecoder(limits.max_message) if server.framing == "length" else None
        )
        self._read_size = min(READ_SIZE, limits.max_message)
        self._max_output = limits.max_output
        self._out: deque[memoryview] = deque()
        self._outbytes = 0
        self._closing = False  # close once the output is sent
        self._reading = True
        self._desc: str | None = None
        server.add_client(self)
        server.selector.register(sock, _READ, self._on_ready)
        log.info("connect %s", self.describe())

    @property
    def credentials(self) -> tuple[int, int, int] | None:
        """(pid, uid, gid) of a unix client's process when it connected (SO_PEERCRED); None for tcp."""
        if self._tcp or self._sock is None:
            return None
        creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
        pid, uid, gid = _CREDS.unpack(creds)
        return pid, uid, gid

    def describe(self) -> str:
        """The client for a log line: host:port (tcp), or its pid and uid (unix)."""
        if self._tcp:
            host, port = self.address[:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self._desc is None:
            creds = self.credentials
            self._desc = f"pid {creds[0]} uid {creds[1]}" if creds else repr(self.address)
        return self._desc

    @property
    def closed(self) -> bool:
        return self._sock is None or self._closing

    # ---- Peer -------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise Closed(f"client {self.address!r} is closed")
        payload = data if isinstance(data, bytes) else bytes(data)
        if self._decoder is not None:
            if len(payload) > MAX_MESSAGE_LIMIT:
                raise MessageTooLarge(
                    f"a length frame holds at most {MAX_MESSAGE_LIMIT} bytes, got {len(payload)}"
                )
            parts = [memoryview(HEADER.pack(len(payload), 0)), memoryview(payload)]
        else:
            parts = [memoryview(payload)]
        was_empty = not self._out
        self._out.extend(parts)
        self._outbytes += sum(len(p) for p in parts)
        if was_empty:
            self._flush()  # most replies leave in this one sendmsg()
        if self._sock is not None and self._outbytes > self._max_output:
            self._drop(f"{self._outbytes} bytes queued, over max_output: a slow reader")

    def close(self) -> None:
        if self._sock is None or self._closing:
            return
        self._reading = False
        if self._out:
            self._closing = True
            self._set_events(_WRITE)
        else:
            self._finish("closed by the server")

    def abort(self) -> None:
        if self._sock is None:
            return
        if self._tcp:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self._finish("aborted by the server")

    # ---- for the server ------------------------------------------------------
    def expire(self, reason: str) -> None:
        self._drop(reason)

    def shutdown_now(self, reason: str) -> None:
        self._finish(reason, quiet=True)

    # ---- the loop's callbacks ------------------------------------------------
    def _on_ready(self, mask: int) -> None:
        if mask & _WRITE:
            self._flush()
        if mask & _READ and self._sock is not None and self._reading:
            self._on_readable()

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(self._read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(f"read failed: {exc.strerror}")
            return
        if not data:
            self._on_eof()
            return
        decoder = self._decoder
        messages = [data] if decoder is None else decoder.feed(data)
        if messages and self._idle is not None:
            self.deadline = time.monotonic() + self._idle
        dispatch = self._server.dispatch
        for message in messages:
            dispatch(message, self)
            if self.closed or not self._reading:
                return
        if decoder is not None and decoder.error is not None:
            self._drop(f"bad frame: {decoder.error}")

    def _on_eof(self) -> None:
        decoder = self._decoder
        if decoder is not None and decoder.pending:
            self._drop(f"closed in the middle of a frame ({decoder.pending} bytes of it sent)")
            return
        # The client shut down writing (or closed): answer what it asked, then close.
        self._reading = False
        if self._out:
            self._closing = True
            self._set_events(_WRITE)
        else:
            self._finish("closed by the client")

    def _flush(self) -> None:
        sock = self._sock
        out = self._out
        while out and sock is not None:
            batch = list(out)[:IOV_BATCH] if len(out) > 1 else [out[0]]
            try:
                sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._finish(f"write failed: {exc.strerror}")
                return
            self._outbytes -= sent
            while sent:
                head = out[0]
                if sent >= len(head):
                    sent -= len(head)
                    out.popleft()
                else:
                    out[0] = head[sent:]
                    sent = 0
        if out:
            self._set_events(_WRITE | (_READ if self._reading and not self._closing else 0))
        elif self._closing:
            self._finish("closed after the last reply")
        else:
            self._set_events(_READ if self._reading else 0)

    def _set_events(self, events: int) -> None:
        sock = self._sock
        if sock is None:
            return
        selector = self._server.selector
        try:
            key = selector.get_key(sock)
        except KeyError:
            key = None
        if events == 0:
            if key is not None:
                selector.unregister(sock)
        elif key is None:
            selector.register(sock, events, self._on_ready)
        elif key.events != events:
            selector.modify(sock, events, self._on_ready)

    def _drop(self, reason: str) -> None:
        log.warning("dropping %s: %s", self.describe(), reason)
        self._finish(reason, quiet=True)

    def _finish(self, reason: str, quiet: bool = False) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._closing = False
        self._out.clear()
        self._outbytes = 0
        server = self._server
        try:
            server.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        server.remove_client(self)
        if not quiet:
            log.info("disconnect %s: %s", self.describe(), reason)


class StreamClient(Client):
    """A tcp or unix client: :meth:`send`/:meth:`recv` whole messages in the chosen framing.

    Length framing rides on a :class:`~fastipc.Channel` (the C hot path when
    the native backend is in use); raw framing is a plain socket where one
    ``recv`` returns what one read gave (at most 64 KiB).
    """

    def __init__(
        self, ep: Endpoint, framing: str, timeout: float | None, max_message: int
    ) -> None:
        super().__init__(ep)
        family = _family(ep)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(check_timeout(timeout))
            try:
                sock.connect(ep.address)
            except socket.timeout:
                raise Timeout(f"{ep.url}: not connected within {timeout} s") from None
            except OSError as exc:
                raise endpoint_error(exc, ep) from None
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self._tcp = family != socket.AF_UNIX
        self.framing = framing
        self._max_message = max_message
        self._channel: Channel | None = None
        self._shut_write = False
        if framing == "length":
            self._channel = Channel._adopt(sock, ep.display, max_message)
        else:
            sock.setblocking(True)

    def send(
        self, data: bytes | bytearray | memoryview, *, priority: int = 0, timeout: float | None = None
    ) -> None:
        self._no_priority(priority)
        sock = self._socket()
        if self._shut_write:
            raise Closed(f"{self.address}: this client shut down writing")
        if self._channel is not None:
            self._channel.send(data, timeout=timeout)
            return
        sock.settimeout(check_timeout(timeout))
        try:
            sock.sendall(data)
        except socket.timeout:
            raise Timeout(f"{self.address}: send timed out") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Closed(f"{self.address}: peer closed the connection ({exc.strerror})") from None

    def recv(self, timeout: float | None = None) -> bytes:
        sock = self._socket()
        if self._channel is not None:
            return self._channel.recv(timeout)
        sock.settimeout(check_timeout(timeout))
        try:
            data = sock.recv(min(READ_SIZE, self._max_message))
        except socket.timeout:
            raise Timeout(f"{self.address}: nothing received within {timeout} s") from None
        except ConnectionResetError:
            raise Closed(f"{self.address}: connection reset by the peer") from None
        if not data:
            raise Closed(f"{self.address}: the peer closed the connection")
        return data

    def shutdown(self, how: str = "both") -> None:
        flags = {"read": socket.SHUT_RD, "write": socket.SHUT_WR, "both": socket.SHUT_RDWR}
        if how not in flags:
            raise ValueError(f"how must be 'read', 'write' or 'both', got {how!r}")
        self._shut_write = self._shut_write or how != "read"
        if self._channel is not None:
            self._socket()
            self._channel.shutdown(how)
            return
        try:
            self._socket().shutdown(flags[how])
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise endpoint_error(exc, self.endpoint) from None

    def fileno(self) -> int:
        return self._socket().fileno()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._channel is not None:
            self._channel.close()
        else:
            sock.close()

    def abort(self) -> None:
        sock = self._sock
        if sock is not None and self._tcp:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ValueError(f"operation on a closed client ({self.address})")
        return self._sock
