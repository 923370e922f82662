"""Named pipes (fifo): ``fifo:///path`` — many writers, one reading server, length-framed messages.

The reading side (the server) makes the FIFO owner-only (``?mode=`` to
widen it) and removes it when it closes; it also holds a write end itself
so that writers coming and going never look like end of stream to it.
Neither side follows a symlink at the name, and a client refuses a FIFO
owned by another user than itself, root or the uid ``?owner=`` names
(PermissionError): that user would read everything sent to it.

The kernel writes at most PIPE_BUF (4,096) bytes to a pipe atomically. A
message is its 8-byte header plus payload, so a client refuses a message
whose frame is over PIPE_BUF (payload over 4,088 bytes) with
:class:`~fastipc.MessageTooLarge`: with several writers a longer frame
could interleave with another writer's and break the stream for everyone.
A client that knows it is the only writer says so with
``?single_writer=1`` and may then send messages up to ``max_message``.

The server takes frames of at most PIPE_BUF too, unless its URL also says
``?single_writer=1``. Because every such write lands in the pipe whole, a
read that empties the pipe ends on a write boundary: half a frame still
held then is stray bytes (a writer that ignored the framing), which the
server drops and logs. A bad header drops the rest of that read and
everything up to the next time the pipe is empty, where the stream is in
step again. The FIFO is shared, so it cannot be closed for one writer.

With ``?single_writer=1`` a frame may take many writes, so the pipe may
empty in the middle of one. The server then lets go of its own write end
until the frame is whole: if its writer goes away midway (killed, or a
send abandoned by a timeout or Ctrl-C, which closes that client), the
FIFO has no writer left, and the half frame is dropped and logged at that
end of file rather than taking the next writer's messages as its rest. It
is also dropped if nothing more comes for ``idle_timeout`` (a writer that
stalls mid-frame); everything read after that is dropped too until that
writer closes the FIFO, so that the rest of its frame, should it resume,
is never read as frames (messages sent meanwhile are lost, and logged). A
new writer that connects before the server has read to the end of file
still follows the half frame and is taken as its rest.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import select
import selectors
import stat
import termios

from .._checks import check_buffer, deadline, time_left
from .._registry import Transport, register
from ..endpoints import Endpoint
from ..errors import Closed, Full, MessageTooLarge, os_error
from ..framing import HEADER_SIZE, LengthDecoder, pack_header
from ..server import Peer, Server, Source
from ..socket_file import mode_option, remove_if_ours
from .base import Client

__all__ = ["PIPE_BUF", "FifoClient", "FifoPeer", "FifoSource"]

log = logging.getLogger("fastipc.server")

#: Bytes the kernel writes to a pipe atomically.
PIPE_BUF = select.PIPE_BUF
#: Bytes asked of one read().
READ_SIZE = 64 * 1024
#: Longest wait (seconds) before Python checks for signals again.
_SLICE = 0.2


def _has_reader(path: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise os_error(exc, path) from None
    os.close(fd)
    return True


def _unread(fd: int) -> int:
    """Bytes waiting in pipe ``fd`` (FIONREAD)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def _make_fifo(path: str, mode: int) -> tuple[int, int]:
    """mkfifo ``path`` (at most ``mode``: the umask applies); replace a stale FIFO, refuse a
    live one. Returns the new FIFO's (st_dev, st_ino)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISFIFO(st.st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a FIFO; not replacing it", path)
        if _has_reader(path):
            raise OSError(errno.EADDRINUSE, "a live process reads this FIFO", path)
        os.unlink(path)
    # mkfifo applies the umask, so the FIFO is never wider than `mode`; no
    # umask juggling (process-wide, so unsafe beside other threads).
    try:
        os.mkfifo(path, mode)
    except OSError as exc:
        raise os_error(exc, path) from None
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


def _open_nofollow(path: str, flags: int, what: str) -> int:
    """open() ``path`` without following a symlink at the name (one put there would
    lead this side to a file of the link maker's choosing)."""
    try:
        return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, f"is a symbolic link, not {what}; not following it", path
            ) from None
        raise


def _check_owner(fd: int, path: str, owner: int | None) -> None:
    """Refuse a FIFO an untrusted user owns: they would read what is written to it."""
    uid = os.fstat(fd).st_uid
    if uid not in (os.geteuid(), 0, owner):
        raise PermissionError(
            errno.EPERM,
            f"owned by uid {uid}, not by this user or root: refusing to write to a FIFO "
            f"another user made (its owner reads everything sent); remove it, or add "
            f"?owner={uid} to the URL to trust that user",
            path,
        )


class FifoSource(Source):
    """The FIFO a server reads length-framed messages from."""

    def __init__(self, ep: Endpoint, server: Server) -> None:
        assert ep.path is not None
        self.endpoint = ep
        self._server = server
        mode = mode_option(ep, None)
        self._ident: tuple[int, int] | None = _make_fifo(ep.path, mode)
        self._rfd = self._wfd = -1
        try:
            # Each end is checked to be the FIFO just made: the name may be swapped meanwhile.
            self._rfd = self._open_ours(os.O_RDONLY)
            os.fchmod(self._rfd, mode)  # exactly `mode`, whatever the umask took away
            self._wfd = self._open_ours(os.O_WRONLY)
        except BaseException:
            self.close()
            raise
        self._single_writer = ep.single_writer
        limit = server.limits.max_message
        if not self._single_writer:
            limit = min(limit, PIPE_BUF - HEADER_SIZE)
        self._decoder = LengthDecoder(limit)
        self._skipping = False  # after a bad header: until the pipe is empty
        self._reads = 0  # read() calls so far: an idle check knows whether any came since
        self._rest_check = False  # an idle check of a half frame is scheduled (one at a time)
        self._until_eof = False  # a stalled writer's half frame was dropped: skip to its end
        self.address = ep.url.partition("?")[0]

    def _open_ours(self, flags: int) -> int:
        path = self.endpoint.path
        assert path is not None
        fd = _open_nofollow(path, flags, "the FIFO this server made")
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._ident:
            os.close(fd)
            raise FileExistsError(errno.EEXIST, "is no longer the FIFO this server made", path)
        return fd

    def attach(self, server: Server) -> None:
        server.selector.register(self._rfd, selectors.EVENT_READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        try:
            data = os.read(self._rfd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        self._reads += 1
        if not data:  # no writer at all: only while this side's write end is let go
            if self._until_eof:
                self._until_eof = False
                log.warning(
                    "%s: the stalled writer closed the FIFO; reading frames again", self.address
                )
            self._drop_partial("its writer closed the FIFO midway")
            return
        if self._until_eof:
            return  # the rest of a dropped frame (or bytes behind it): never parsed as frames
        # A pipe read returns all there is, up to the size asked; a full one may
        # have taken exactly what there was, and no event will say so: ask.
        drained = len(data) < READ_SIZE or _unread(self._rfd) == 0
        if self._skipping:
            self._skipping = not drained
            return
        decoder = self._decoder
        peer = FifoPeer()
        for message in decoder.feed(data):
            self._server.dispatch(message, peer)
        if self._rfd < 0:
            return  # a handler closed the server
        if decoder.error is not None:
            log.warning(
                "%s: broken frame (%s); dropping bytes until the pipe is empty",
                self.address,
                decoder.error,
            )
            decoder.reset()
            self._skipping = not drained
        elif drained and decoder.pending and not self._single_writer:
            log.warning(
                "%s: dropped %d stray bytes (not a whole frame written at once)",
                self.address,
                decoder.pending,
            )
            decoder.reset()
        elif drained and decoder.pending:
            self._await_rest()
        if not decoder.pending:
            self._hold_write_end()

    def _await_rest(self) -> None:
        """Half a frame and the pipe empty (single_writer): its writer may be mid-frame or
        gone. Let go of the write end this side holds, so that its going reads as end of
        file; and give the frame up if nothing comes for idle_timeout."""
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        idle = self._server.limits.idle_timeout
        if idle is None or self._rest_check:
            return  # one check at a time: a long frame empties the pipe at every read
        self._rest_check = True
        reads = self._reads

        def check() -> None:
            self._rest_check = False
            if self._rfd < 0 or self._wfd >= 0 or self._until_eof:
                return  # closed, or the frame was finished or dropped meanwhile
            if self._reads != reads:
                self._await_rest()  # bytes came: look again idle_timeout from now
                return
            # The writer stalled mid-frame. Should it resume, the rest of its frame
            # must not be read as frames of their own: skip all until it closes.
            log.warning(
                "%s: dropped %d bytes of an unfinished frame: nothing more came for %g s "
                "(idle_timeout); skipping what comes until its writer closes the FIFO",
                self.address,
                self._decoder.pending,
                idle,
            )
            self._decoder.reset()
            self._until_eof = True

        self._server.call_later(idle, check)

    def _drop_partial(self, why: str) -> None:
        decoder = self._decoder
        if decoder.pending:
            log.warning(
                "%s: dropped %d bytes of an unfinished frame: %s",
                self.address,
                decoder.pending,
                why,
            )
        decoder.reset()
        self._skipping = False
        self._hold_write_end()

    def _hold_write_end(self) -> None:
        """Hold a write end again (writers coming and going must not read as end of file)."""
        if self._wfd >= 0 or self._rfd < 0:
            return
        # Through the read end, so it is this FIFO even if the name was removed or replaced.
        try:
            self._wfd = os.open(
                f"/proc/self/fd/{self._rfd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except FileNotFoundError:  # no /proc: by name, checked to be the FIFO we made
            self._wfd = self._open_ours(os.O_WRONLY | os.O_NONBLOCK)

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1
        remove_if_ours(self.endpoint.path, self._ident)
        self._ident = None


class FifoPeer(Peer):
    """A FIFO's writer: anonymous and unreachable (a FIFO is one-way)."""

    def send(self, data: bytes | bytearray | memoryview) -> None:
        raise Closed("a FIFO is one-way: its writers cannot be answered")


class FifoClient(Client):
    """A writer to a FIFO that a server reads; :meth:`send` only."""

    def __init__(self, ep: Endpoint, timeout: float | None, max_message: int) -> None:
        super().__init__(ep)
        assert ep.path is not None
        try:
            fd = _open_nofollow(ep.path, os.O_WRONLY, "a FIFO")
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, "no process reads this FIFO", ep.path
                ) from None
            if exc.errno == errno.ELOOP:
                raise
            raise os_error(exc, ep.path) from None
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise ValueError(f"endpoint {ep.url!r}: {ep.path} is not a FIFO")
            _check_owner(fd, ep.path, ep.owner)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._limit = max_message if ep.single_writer else PIPE_BUF - HEADER_SIZE

    def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Write ``data`` as one frame; waits while the pipe is full.

        Raises :class:`~fastipc.MessageTooLarge` over 4,088 bytes (the frame
        over PIPE_BUF) unless ``?single_writer=1``, :class:`~fastipc.Closed`
        when the reader is gone, :class:`~fastipc.Timeout`; a large message
        abandoned midway by the timeout or Ctrl-C closes the client.
        """
        self._no_priority(priority)
        fd = self._check()
        view = check_buffer(data)
        if len(view) > self._limit:
            hint = "" if self._limit >= PIPE_BUF else "; add ?single_writer=1 if no one else writes"
            raise MessageTooLarge(
                f"{self.address}: at most {self._limit} bytes per message, got {len(view)}{hint}"
            )
        frame = pack_header(len(view), 0) + bytes(view)
        until = deadline(timeout)
        done = 0
        try:
            while done < len(frame):
                try:
                    done += os.write(fd, frame[done:])
                    continue
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    raise Closed(f"{self.address}: the reader closed the FIFO") from None
                wait = time_left(until)
                if wait is not None and wait <= 0:
                    raise Full(f"{self.address}: the FIFO stayed full")
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                poller.poll(max(1, int(min(_SLICE, wait if wait is not None else _SLICE) * 1000)))
        except BaseException:
            if 0 < done < len(frame):
                self.close()  # half a frame is in the pipe: this writer cannot go on
            raise

    def recv(self, timeout: float | None = None) -> bytes:
        raise ValueError(f"{self.address}: a FIFO is one-way; its clients only send")

    def fileno(self) -> int:
        return self._check()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _check(self) -> int:
        if self._fd < 0:
            raise ValueError(f"operation on a closed client ({self.address})")
        return self._fd


register(
    Transport(
        "fifo",
        open_source=FifoSource,
        open_client=lambda ep, framing, timeout, max_message: FifoClient(ep, timeout, max_message),
        one_way=True,
        receive_by_connecting=False,
    )
)
