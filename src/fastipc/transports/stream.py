"""Stream transports (tcp, unix): the listening source, one connection per client, and the client.

The server side reads what a client sends, cuts it into messages by the
server's framing ("raw": one read is one message; "length": the frames of
docs/architecture.md, "Wire format"), and queues replies without ever
blocking the loop: a client that does not read gets its replies queued up
to ``max_output`` bytes, then is cut off. What each client holds (its
partial frame, its queued replies) is reported to the server as it
changes, which keeps the total within ``max_buffered`` (see
:class:`~fastipc.server.Limits`).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import time
from collections import deque
from itertools import islice
from typing import Any

from .._checks import check_buffer, deadline
from .._registry import Transport, register
from ..channel import Channel
from ..endpoints import Endpoint
from ..errors import Closed, Empty, Full, MessageTooLarge, Timeout, os_error
from ..framing import MAX_MESSAGE_LIMIT, LengthDecoder, pack_header
from ..server import Peer, Server, Source
from ..socket_file import bind_unix, connect_unix, mode_option, remove_if_ours
from .base import SocketClient, bound_url, check_timeout, resolve

__all__ = ["Connection", "StreamClient", "StreamListener"]

log = logging.getLogger("fastipc.server")

#: Bytes asked of one recv(): one raw message at most.
READ_SIZE = 64 * 1024
#: Connections accepted per readiness event, so a flood does not starve clients.
ACCEPT_BATCH = 64
#: Most buffers handed to one sendmsg().
IOV_BATCH = 64
#: Length-framed replies up to this size (bytes) are joined to their header for one send().
JOIN_MAX = 16 * 1024
#: Queued pieces smaller than this are copied into a shared bytearray, not queued one by
#: one: each queue entry costs ~200 bytes of objects that max_output does not count.
COALESCE_MAX = JOIN_MAX
#: Bytes a shared bytearray of small pieces grows to before the next one is started.
TAIL_MAX = 64 * 1024

_LINGER_RESET = struct.pack("ii", 1, 0)
_CREDS = struct.Struct("3i")


def _skip(parts: list[bytes], sent: int) -> list[memoryview]:
    """What is left of ``parts`` after the first ``sent`` bytes went out."""
    rest = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        rest.append(memoryview(part)[sent:])
        sent = 0
    return rest


def _enqueue(out: deque[memoryview | bytearray], piece: bytes) -> None:
    """Queue ``piece`` (after the rest) so that the queue holds few objects per byte."""
    if not piece:
        # Raw framing's empty reply: nothing to send. Queued, it would stay at the
        # front for ever (a sendmsg of it sends 0 bytes) and _flush would spin.
        return
    if len(piece) >= COALESCE_MAX:
        out.append(memoryview(piece))
        return
    tail = out[-1] if out else None
    if type(tail) is bytearray and len(tail) + len(piece) <= TAIL_MAX:
        tail += piece  # only the loop touches the queue; no view of it outlives a sendmsg
    else:
        out.append(bytearray(piece))


_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


def _family(ep: Endpoint) -> int:
    return resolve(ep, socket.SOCK_STREAM)[0]


def _describe(sock: socket.socket, address: Any) -> str:
    """A client for a log line: host:port (tcp), or its pid and uid (unix, SO_PEERCRED)."""
    if sock.family != socket.AF_UNIX:
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        pid, uid, _ = _CREDS.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
        )
    except OSError:
        return repr(address)
    return f"pid {pid} uid {uid}"


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
                    raise os_error(exc, ep.display) from None
            sock.listen(server.limits.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            remove_if_ours(ep.path, self._ident)
            raise
        self._sock = sock
        self._tcp = family != socket.AF_UNIX
        self._starved = False  # out of fds: accept paused
        self.address = bound_url(ep, sock)

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
                    if not self._starved:
                        log.warning(
                            "accept on %s failed: %s; retrying every 0.1 s", self.address, exc
                        )
                    self._starved = True
                    server.selector.unregister(self._sock)
                    server.call_later(0.1, lambda: self.attach(server))
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client gave up before we accepted it
                raise
            if server.clients >= server.limits.max_clients:
                log.warning(
                    "refused %s: %d clients already (max_clients)",
                    _describe(conn, addr),
                    server.limits.max_clients,
                )
                conn.close()
                continue
            if self._starved:
                log.warning("accept on %s works again", self.address)
                self._starved = False
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

    connected = True

    def __init__(self, server: Server, sock: socket.socket, address: Any, tcp: bool) -> None:
        sock.setblocking(False)
        self.address = address
        self._server = server
        self._sock: socket.socket | None = sock
        self._tcp = tcp
        limits = server.limits
        self._idle = limits.idle_timeout
        self.deadline = time.monotonic() + self._idle if self._idle is not None else float("inf")
        self._decoder = LengthDecoder(limits.max_message) if server.framing == "length" else None
        self._read_size = min(READ_SIZE, limits.max_message)
        self._max_output = limits.max_output
        # Replies the kernel did not take yet. None while nothing waits, which
        # is nearly always: an empty deque is 760 bytes, most of what an idle
        # connection would otherwise cost.
        self._out: deque[memoryview | bytearray] | None = None
        self._outbytes = 0
        self._closing = False  # close once the output is sent
        self._reading = True
        self._desc: str | None = None
        #: Bytes held for this client (partial input + queued output), as the server counts them.
        self.buffered = 0
        server.selector.register(sock, _READ, self._on_ready)
        log.info("connect %s", self.describe())
        server._client_joined(self)

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
        if self._desc is None and self._sock is not None:
            self._desc = _describe(self._sock, self.address)
        return self._desc or repr(self.address)

    @property
    def closed(self) -> bool:
        return self._sock is None or self._closing

    # ---- Peer -------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> None:
        sock = self._sock
        if sock is None or self._closing:
            raise Closed(f"client {self.describe()} is closed")
        # Copied: the reply may wait in the queue while the caller reuses its buffer.
        # (bytes(data) of an int would be that many NUL bytes, hence the check.)
        payload = data if type(data) is bytes else bytes(check_buffer(data, "a reply"))
        size = len(payload)
        parts: list[bytes] | None = None
        if self._decoder is not None:
            if size > MAX_MESSAGE_LIMIT:
                raise MessageTooLarge(
                    f"a length frame holds at most {MAX_MESSAGE_LIMIT} bytes, got {size}"
                )
            if size <= JOIN_MAX:
                payload = pack_header(size, 0) + payload  # one small copy beats a 2-buffer sendmsg
            else:
                parts = [pack_header(size, 0), payload]
            size += 8
        out = self._out
        if not out:
            # The common case: the kernel takes the whole reply now, and the
            # selector (already waiting for reads) needs no change.
            try:
                sent = sock.send(payload) if parts is None else sock.sendmsg(parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._finish(f"write failed: {exc.strerror}")
                return
            if sent and self._idle is not None:
                self.deadline = time.monotonic() + self._idle  # it takes its replies: not idle
            if sent == size:
                return
            rest = [memoryview(payload)[sent:]] if parts is None else _skip(parts, sent)
            self._out = deque(rest)
            self._outbytes += size - sent
            self._set_events(_WRITE | (_READ if self._reading else 0))
            self._account()  # may cut this client (or a larger one) off: max_buffered
            return
        # One reply is always queued whole; what piles up behind it is capped.
        assert out is not None  # not empty: queued above
        if self._outbytes > self._max_output:
            self._drop(
                f"{self._outbytes} bytes still queued when another reply came, "
                "over max_output: a slow reader"
            )
            return
        for piece in (payload,) if parts is None else parts:
            _enqueue(out, piece)
        self._outbytes += size
        self._account()

    def close(self) -> None:
        if self._sock is None or self._closing:
            return
        self._close_after_output("closed by the server")

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

    def holding(self) -> str:
        """What :attr:`buffered` is made of, for a log line."""
        dec = self._decoder
        pending = dec.pending if dec is not None else 0
        return f"{pending} of a partial message, {self._outbytes} of queued replies"

    def _account(self) -> None:
        """Tell the server how much this client holds now (it may cut off the largest holder)."""
        dec = self._decoder
        held = self._outbytes + (dec.pending if dec is not None else 0)
        delta = held - self.buffered
        if delta:
            self.buffered = held
            self._server.account(delta)

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
        if decoder is None:
            messages = [data]
        else:
            messages = decoder.feed(data)
            if decoder.pending != self.buffered - self._outbytes:
                self._account()  # the partial frame grew or was used up
                if self._sock is None:
                    return  # cut off: it held the most, over max_buffered
        if messages and self._idle is not None:
            self.deadline = time.monotonic() + self._idle
        dispatch = self._server.dispatch
        for message in messages:
            dispatch(message, self)
            if not self._reading or self._sock is None:
                return
        if decoder is not None and decoder.error is not None:
            self._drop(f"bad frame: {decoder.error}")

    def _on_eof(self) -> None:
        decoder = self._decoder
        if decoder is not None and decoder.pending:
            self._drop(f"closed in the middle of a frame ({decoder.pending} bytes of it sent)")
            return
        # The client shut down writing (or closed): answer what it asked, then close.
        self._close_after_output("closed by the client")

    def _close_after_output(self, reason: str) -> None:
        """Read no more; close once the queued output is sent (now, if none is)."""
        self._reading = False
        if self._out:
            self._closing = True
            self._set_events(_WRITE)
        else:
            self._finish(reason)

    def _flush(self) -> None:
        sock = self._sock
        out = self._out
        while out and sock is not None:
            batch = list(islice(out, IOV_BATCH)) if len(out) > 1 else [out[0]]
            try:
                sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._finish(f"write failed: {exc.strerror}")
                return
            self._outbytes -= sent
            if sent and self._idle is not None:
                self.deadline = time.monotonic() + self._idle  # it reads: not idle
            if sent:
                self._account()
            while sent:
                head = out[0]
                if sent >= len(head):
                    sent -= len(head)
                    out.popleft()
                elif type(head) is bytearray:
                    del head[:sent]  # cheap: a bytearray drops its front by moving its start
                    sent = 0
                else:
                    out[0] = head[sent:]
                    sent = 0
        if out:
            self._set_events(_WRITE | (_READ if self._reading and not self._closing else 0))
            return
        self._out = None  # all sent: give the queue's memory back
        if self._closing:
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
        if self._out:
            self._out.clear()  # also ends a _flush loop that holds this deque
        self._out = None
        self._outbytes = 0
        if self._decoder is not None:
            self._decoder.reset()  # free a partial frame now, not when this object goes
        server = self._server
        if self.buffered:
            server.account(-self.buffered)
            self.buffered = 0
        try:
            server.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        if not quiet:
            log.info("disconnect %s: %s", self.describe(), reason)
        server._client_left(self)


def _length_channel(sock: socket.socket, ep: Endpoint, max_message: int) -> Channel:
    """A Channel on connected ``sock`` (tcp or unix), hand-off off: a server speaks plain frames.

    The client's length framing rides on a Channel for its C framer (native
    backend), its waits that let Ctrl-C through, and its exact Closed /
    MessageTooLarge / ProtocolError behaviour.
    """
    return Channel.from_socket(sock, max_message=max_message, handoff_min=0, name=ep.display)


class StreamClient(SocketClient):
    """A tcp or unix client: :meth:`send`/:meth:`recv` whole messages in the chosen framing.

    Length framing rides on a :class:`~fastipc.Channel` (the C hot path when
    the native backend is in use); raw framing is a plain socket where one
    ``recv`` returns what one read gave (at most 64 KiB).
    """

    def __init__(self, ep: Endpoint, framing: str, timeout: float | None, max_message: int) -> None:
        super().__init__(ep)
        family = _family(ep)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if family == socket.AF_UNIX:
                connect_unix(sock, ep, deadline(timeout))
            else:
                sock.settimeout(check_timeout(timeout))
                try:
                    sock.connect(ep.address)
                except socket.timeout:
                    raise Timeout(f"{ep.url}: not connected within {timeout} s") from None
                except OSError as exc:
                    raise os_error(exc, ep.display) from None
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
            self._channel = _length_channel(sock, ep, max_message)
        else:
            sock.setblocking(True)

    def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        priority: int = 0,
        timeout: float | None = None,
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
            raise Full(f"{self.address}: send timed out") from None
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
            raise Empty(f"{self.address}: nothing received within {timeout} s") from None
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
                raise os_error(exc, self.endpoint.display) from None

    def close(self) -> None:
        if self._sock is None:
            return
        if self._channel is not None:
            self._sock = None
            self._channel.close()  # the channel owns the socket
        else:
            super().close()

    def abort(self) -> None:
        sock = self._sock
        if sock is not None and self._tcp:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.close()


for _scheme in ("tcp", "unix"):
    register(
        Transport(
            _scheme,
            open_source=StreamListener,
            open_client=StreamClient,
            closes_peer=True,
            framed=True,
        )
    )
