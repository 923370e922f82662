"""Inherited file descriptors (fd): ``fd://N`` — a pipe, socketpair end or terminal as a stream.

``fd://0`` in a shell pipeline, or the end of a pipe a parent passed to its
child: messages in ``raw`` framing (one read is one message) or ``length``
framing (docs/architecture.md, "Wire format"), as for tcp and unix.

The fd is taken over: closing the client or server releases it, so the other
end sees end of stream. Fds 0, 1 and 2 are released by putting /dev/null in
their place (the number stays taken, so a later open() cannot land on
stdout by accident); others are closed. One client or server per fd.

The fd is used as it is: its file status flags are shared with every
process holding the same open file (the shell's terminal, the parent), so
it is never switched to non-blocking mode. Waits poll() in slices (timeouts,
Ctrl-C), then read or write, so calls block only as long as the kernel says
they need. Another reader of the same pipe may take the bytes between the
poll and the read, so a server reads a pipe or FIFO through a non-blocking
open file of its own (``/proc/self/fd/N``) and a socket with MSG_DONTWAIT:
its loop (and ``Server.close()``) never waits in read(). A client's recv()
reads the fd itself and can wait there in that case.

Pipes: a write of at most PIPE_BUF (4,096) bytes is atomic, so several
writers may share a pipe if each length frame (8 bytes + payload) is at most
PIPE_BUF; longer frames are written in PIPE_BUF pieces, which another writer
can interleave with. End of file ends a receive with :class:`~fastipc.Closed`
(a server's source stops reading; the server stays open). Writing to a pipe
whose reader is gone raises :class:`~fastipc.Closed` (EPIPE), never a
SIGPIPE death: SIGPIPE is blocked around each write and one it raised is
taken back.

A server on ``fd://N`` reads; it cannot answer (use another fd for that). A
regular file (``< msgs``) cannot be polled: the server reads it in turns
from the loop, a client reads it directly.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import selectors
import signal
import socket
import stat
import threading

from .._checks import check_buffer, deadline, time_left
from .._registry import Transport, register
from ..endpoints import Endpoint
from ..errors import Closed, Empty, Full, MessageTooLarge, ProtocolError
from ..framing import MAX_MESSAGE_LIMIT, LengthDecoder, pack_header
from ..server import Peer, Server, Source
from .base import Client

__all__ = ["PIPE_BUF", "FdClient", "FdPeer", "FdSource", "write_no_sigpipe"]

log = logging.getLogger("fastipc.server")

PIPE_BUF = select.PIPE_BUF
#: Bytes asked of one read(): one raw message at most.
READ_SIZE = 64 * 1024
#: Longest wait (seconds) before Python checks for signals again.
_SLICE = 0.2

_taken: set[int] = set()
_taken_lock = threading.Lock()
_SIGPIPE = {signal.SIGPIPE}


def _take(ep: Endpoint) -> int:
    """Claim ``ep``'s fd for one client or server; OSError(EBADF) if it is not open."""
    fd = ep.fd
    assert fd is not None
    try:
        os.fstat(fd)
    except OSError as exc:
        raise OSError(exc.errno, "no such open file descriptor in this process", ep.url) from None
    with _taken_lock:
        if fd in _taken:
            raise ValueError(
                f"{ep.url}: fd {fd} is already used by another fastipc client or server"
            )
        _taken.add(fd)
    return fd


def _release(fd: int) -> None:
    """Let ``fd`` go (the peer sees end of stream): 0-2 become /dev/null, others are closed."""
    try:
        if fd <= 2:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.dup2(null, fd, inheritable=True)
            finally:
                os.close(null)
        else:
            os.close(fd)
    finally:
        with _taken_lock:
            _taken.discard(fd)


def write_no_sigpipe(fd: int, data: memoryview) -> int:
    """os.write(fd, data) with SIGPIPE blocked in this thread: EPIPE is an exception, never a death.

    A SIGPIPE the write raised (it is thread-directed) is taken back with a
    zero-timeout sigtimedwait unless one was pending before. Raises
    BrokenPipeError and the other OSErrors of write(2).
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)
    try:
        try:
            return os.write(fd, data)
        except BrokenPipeError:
            if signal.SIGPIPE not in old and signal.SIGPIPE in signal.sigpending():
                signal.sigtimedwait(_SIGPIPE, 0)
            raise
    finally:
        if signal.SIGPIPE not in old:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _wait(fd: int, events: int, until: int | None, what: str, url: str) -> None:
    """poll() ``fd`` for ``events`` in slices until ready; Full (waiting to write) or Empty past ``until``."""
    poller = select.poll()
    poller.register(fd, events)
    while True:
        wait = time_left(until)
        if wait is not None and wait <= 0:
            raise (Full if events == select.POLLOUT else Empty)(f"{url}: {what}")
        slice_s = _SLICE if wait is None else min(_SLICE, wait)
        if poller.poll(max(1, int(slice_s * 1000))):
            return


class FdSource(Source):
    """A server's inherited fd: read, cut into messages by the server's framing, dispatched."""

    def __init__(self, ep: Endpoint, server: Server) -> None:
        self.endpoint = ep
        self._server = server
        self._fd = _take(ep)
        self._decoder = (
            LengthDecoder(server.limits.max_message) if server.framing == "length" else None
        )
        self._read_size = min(READ_SIZE, server.limits.max_message)
        self._polled = False
        self._rfd = self._fd  # what is polled and read: a private non-blocking one if possible
        self._sock: socket.socket | None = None
        try:
            self._read_privately()
        except BaseException:
            self.close()
            raise
        self.address = ep.url

    def _read_privately(self) -> None:
        """Read without ever blocking, though the fd stays blocking (its flags are shared).

        Another process or thread may read the same pipe: it can take the bytes
        between poll() and read(), and a blocking read would then stop the loop
        (and Server.close()) until more came. A pipe or FIFO is read through a
        non-blocking open file of its own (/proc/self/fd/N); a socket with
        MSG_DONTWAIT. Other kinds (terminals) are read as they are.
        """
        fd = self._fd
        mode = os.fstat(fd).st_mode
        if stat.S_ISSOCK(mode):
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            dup = os.dup(fd)
            try:
                # socket() applies socket.setdefaulttimeout(), if one was set, to the
                # open file it shares with its other holders: undo that, and have no
                # timeout of its own (a recv with MSG_DONTWAIT must not poll).
                self._sock = socket.socket(fileno=dup)
            except BaseException:
                os.close(dup)
                raise
            self._sock.settimeout(None)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        elif stat.S_ISFIFO(mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY:
            try:
                self._rfd = os.open(
                    f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
                )
            except OSError:
                pass  # no /proc: a reader sharing the pipe may make a read wait

    def attach(self, server: Server) -> None:
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            try:
                server.selector.register(self._rfd, selectors.EVENT_READ, self._on_ready)
                self._polled = True
                return
            except PermissionError:
                pass  # epoll refuses files that are always ready
        server.call_later(0, self._pump)

    def _pump(self) -> None:
        if self._fd >= 0 and self._on_ready(selectors.EVENT_READ):
            self._server.call_later(0, self._pump)

    def _on_ready(self, mask: int) -> bool:
        """Read once and dispatch what completed; False once the stream ended."""
        try:
            if self._sock is not None:
                data = self._sock.recv(self._read_size, socket.MSG_DONTWAIT)
            else:
                data = os.read(self._rfd, self._read_size)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            log.warning("%s: read failed (%s); stopped reading", self.address, exc.strerror)
            self._stop_reading()
            return False
        if not data:
            pending = self._decoder.pending if self._decoder is not None else 0
            if pending:
                log.warning(
                    "%s: end of stream in the middle of a frame (%d bytes)", self.address, pending
                )
            else:
                log.info("%s: end of stream", self.address)
            self._stop_reading()
            return False
        decoder = self._decoder
        messages = [data] if decoder is None else decoder.feed(data)
        for message in messages:
            self._server.dispatch(message, FdPeer(self.address))
        if decoder is not None and decoder.error is not None:
            log.warning("%s: bad frame (%s); stopped reading", self.address, decoder.error)
            self._stop_reading()
            return False
        return True

    def _stop_reading(self) -> None:
        if self._polled:
            self._polled = False
            try:
                self._server.selector.unregister(self._rfd)
            except (KeyError, ValueError):
                pass
        if self._decoder is not None:
            self._decoder.reset()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        rfd, self._rfd = self._rfd, -1
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if rfd != fd and rfd >= 0:
            os.close(rfd)
        if fd >= 0:
            _release(fd)


class FdPeer(Peer):
    """Whoever writes into a server's fd: unnamed and unanswerable (the server only reads)."""

    def __init__(self, url: str) -> None:
        self.address = url

    def send(self, data: bytes | bytearray | memoryview) -> None:
        raise Closed(f"{self.address}: a server on an fd only reads; answer on another fd")

    def describe(self) -> str:
        return "-"


class FdClient(Client):
    """Messages over an inherited fd, in ``raw`` or ``length`` framing; owns the fd (see module)."""

    def __init__(self, ep: Endpoint, framing: str, timeout: float | None, max_message: int) -> None:
        super().__init__(ep)
        self._fd = _take(ep)
        self.framing = framing
        self._max_message = max_message
        self._decoder = LengthDecoder(max_message) if framing == "length" else None
        self._ready: list[bytes] = []
        self._eof = False

    def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Write ``data`` as one message; waits while the pipe is full.

        Frames of at most PIPE_BUF bytes go out in one atomic write. Raises
        :class:`~fastipc.Closed` when the reader is gone (EPIPE),
        :class:`~fastipc.Timeout`; a frame abandoned midway (timeout,
        Ctrl-C) closes the client, since the stream is then broken.
        """
        self._no_priority(priority)
        fd = self._check()
        view = check_buffer(data)
        if self._decoder is not None:
            if len(view) > MAX_MESSAGE_LIMIT:
                raise MessageTooLarge(
                    f"{self.address}: a length frame holds at most {MAX_MESSAGE_LIMIT} bytes"
                )
            view = memoryview(pack_header(len(view), 0) + bytes(view))
        until = deadline(timeout)
        done = 0
        try:
            while done < len(view):
                _wait(fd, select.POLLOUT, until, "the fd stayed full", self.address)
                # In one piece when it fits PIPE_BUF (atomic), else in PIPE_BUF pieces
                # so a write after POLLOUT does not wait for a slow reader.
                piece = view[done:] if len(view) <= PIPE_BUF else view[done : done + PIPE_BUF]
                try:
                    done += write_no_sigpipe(fd, piece)
                except BrokenPipeError:
                    raise Closed(f"{self.address}: the reader is gone (EPIPE)") from None
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, self.address) from None
        except BaseException:
            if 0 < done < len(view):
                self.close()  # part of a frame went out: the stream cannot go on
            raise

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message: one read (raw) or one length frame.

        Raises :class:`~fastipc.Closed` at end of file (and on every later
        call), :class:`~fastipc.ProtocolError` for a bad frame or end of file
        in the middle of one (the client is then closed),
        :class:`~fastipc.MessageTooLarge` over ``max_message``,
        :class:`~fastipc.Timeout`.
        """
        fd = self._check()
        until = deadline(timeout)
        decoder = self._decoder
        while not self._ready:
            # A bad frame after good ones in the same read waits here: it is
            # reported once they are taken, before any wait for more bytes.
            if decoder is not None and decoder.error is not None:
                raise self._bad_frame(decoder.error)
            if self._eof:
                raise Closed(f"{self.address}: end of stream")
            _wait(fd, select.POLLIN, until, f"nothing received within {timeout} s", self.address)
            try:
                data = os.read(
                    fd, min(READ_SIZE, self._max_message) if decoder is None else READ_SIZE
                )
            except InterruptedError:
                continue
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, self.address) from None
            if not data:
                self._eof = True
                if decoder is not None and decoder.pending:
                    pending = decoder.pending
                    self.close()
                    raise ProtocolError(
                        f"{self.address}: end of stream in the middle of a frame ({pending} "
                        "bytes of it); check both sides use --framing length",
                        self.address,
                    )
                continue
            if decoder is None:
                return data
            self._ready.extend(decoder.feed(data))
        return self._ready.pop(0)

    def _bad_frame(self, error: Exception) -> Exception:
        """Close the client (the stream is out of step) and return the error to raise."""
        self.close()
        if isinstance(error, MessageTooLarge):
            return MessageTooLarge(f"{self.address}: {error}; client closed")
        return ProtocolError(
            f"{self.address}: bad frame ({error}); check both sides use the same "
            "framing; client closed",
            self.address,
        )

    def shutdown(self, how: str = "both") -> None:
        raise ValueError(f"{self.address}: an fd has no half-close; close() releases it")

    def fileno(self) -> int:
        return self._check()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _release(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _check(self) -> int:
        if self._fd < 0:
            raise ValueError(f"operation on a closed client ({self.address})")
        return self._fd


register(
    Transport(
        "fd",
        open_source=FdSource,
        open_client=FdClient,
        # The server only reads (one_way); a client may both send and receive.
        one_way=True,
        receive_by_connecting=True,
        framed=True,
    )
)
