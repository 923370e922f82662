"""aio.Channel, aio.listen and aio.serve: sockets awaited with add_reader/add_writer."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..channel import Channel as _SyncChannel
from ..channel import Listener as _SyncListener
from ..channel import listen as _sync_listen
from ..endpoints import parse
from ..errors import Closed, Timeout, timed_out
from ._sender import Sender
from ._waiting import (
    BACKSTOP,
    BUSY_PAUSE_MAX,
    LoopBound,
    Waiters,
    deadline_of,
    monotonic,
    on_loop_thread,
    sleep_on,
)

__all__ = [
    "DIRECT_MAX",
    "LOOP_SEND_MAX",
    "Channel",
    "Handler",
    "Listener",
    "Server",
    "listen",
    "serve",
]

_T = TypeVar("_T")
_ChanT = TypeVar("_ChanT", bound="Channel")
_ServerT = TypeVar("_ServerT", bound="Server")


class _Turn:
    """One send's place in a channel's line of sends.

    ``done`` resolves when the send has passed the turn on (the next one
    goes). A signal handler that raises inside the code passing it on would
    leave it pending for ever and every later send waiting; so the send's
    ``finally`` first sets ``over`` (a plain store: no handler runs before
    it), and a waiter that finds ``over`` (or the send's ``task`` done, for
    a handler that raised before that ``finally`` was entered) with ``done``
    still pending takes the turn itself (after its ``prev``, if the send had
    stopped waiting for one: then its turn passes when that one does),
    abandoning the sender-thread send in ``worker`` if one may still run.
    """

    __slots__ = ("done", "over", "prev", "task", "worker")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.over = False
        self.prev: _Turn | None = None
        self.task = asyncio.current_task()
        self.worker: asyncio.Future[Any] | None = None

    def left(self) -> bool:
        """Whether its send is over (whether or not it passed the turn on)."""
        return self.over or (self.task is not None and self.task.done())


class Channel(LoopBound):
    """An awaitable face of :class:`fastipc.Channel`; the sync channel is :attr:`sync`.

    Receives use what is already buffered first and then wait on the socket
    with ``loop.add_reader``; a receive cancelled while waiting loses
    nothing. A dead peer makes an awaiting receive raise
    :class:`~fastipc.Closed`; :meth:`close` (any thread) makes it raise
    ValueError.

    Sends take turns on the handle (in the order they were awaited) and
    never block the loop. A message without fds whose frame is at most
    :data:`LOOP_SEND_MAX` bytes is written from the loop thread, whenever
    the socket polls writable; cancelling it before any of it went sends
    nothing. A part the socket cut is finished there as room comes,
    holding the sync channel's send turn meanwhile (another thread's sync
    send waits for it). On a unix socket, a message with fds (or a batch)
    of up to :data:`DIRECT_MAX` bytes that the kernel queues in one buffer
    (at most half of ``SO_SNDBUF``) is taken whole or refused whole, so it
    too is a non-blocking sync call on the loop thread. Any other message
    (larger, or meeting another thread's send) goes through the channel's
    own sender thread
    (started at the first such send, ended after 2 s without one), which
    makes the sync send once the socket polls writable, while the loop runs
    on. The await returns when the message is out, and the next send waits
    for it. Cancelling a send (a timeout, Ctrl-C ending ``asyncio.run``)
    while its message is part-way out abandons it midway, which closes the
    channel, as an interrupted sync send does: the peer gets Closed, never
    part of a message.
    """

    def __init__(self, channel: _SyncChannel) -> None:
        """Wrap sync ``channel`` (owned from now on: :meth:`close` closes it)."""
        if not isinstance(channel, _SyncChannel):
            raise TypeError(f"aio.Channel wraps a fastipc.Channel, not {type(channel).__name__}")
        self._ch = channel
        fd = channel.fileno()
        super().__init__()  # close() from any thread: see LoopBound
        self._rd = Waiters(fd, False, False, linger=True)
        self._wr = Waiters(fd, True, False)
        #: The last send's turn (the next send waits for it).
        self._last: _Turn | None = None
        #: A unix socket: frames that fit one kernel buffer go whole or not at all.
        self._unix = _family(fd) == socket.AF_UNIX
        #: Makes the sends that may block (see the class).
        self._sender = Sender()

    @classmethod
    async def connect(cls, url: str, timeout: float | None = None, **kwargs: Any) -> Channel:
        """Connect to a listener at ``unix://...`` or a server at ``tcp://HOST:PORT``.

        ``kwargs`` as for :meth:`fastipc.Channel.connect` (``max_message``...).
        Raises what the sync connect raises (FileNotFoundError,
        ConnectionRefusedError, ValueError for another scheme), Timeout.
        """
        ep = parse(url, schemes=("unix", "tcp"))
        if ep.scheme == "unix":
            # A unix connect does not wait unless the listener's backlog is
            # full; then it is retried from the loop (backing off to 10 ms)
            # rather than waited for in the sync call, which would hold the loop.
            deadline = deadline_of(5.0 if timeout is None else timeout)
            pause = 0.0005
            while True:
                try:
                    return cls(_SyncChannel.connect(url, 0, **kwargs))
                except Timeout:
                    if deadline is not None and monotonic() >= deadline:
                        raise Timeout(
                            f"connect to {url}: the listener's backlog stayed full"
                        ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.01)
        assert ep.host is not None and ep.port is not None
        infos = await asyncio.get_running_loop().getaddrinfo(
            ep.host, ep.port, type=socket.SOCK_STREAM
        )
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_ | socket.SOCK_CLOEXEC, proto)
        try:
            sock.setblocking(False)
            coro = asyncio.get_running_loop().sock_connect(sock, addr)
            if deadline_of(timeout) is None:  # None, inf, or centuries (checked as any timeout)
                await coro
            else:
                try:
                    await asyncio.wait_for(coro, timeout)
                except asyncio.TimeoutError:
                    raise Timeout(f"connect to {url}: timed out") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return cls(_SyncChannel.from_socket(sock, name=url, **kwargs))
        except BaseException:
            sock.close()
            raise

    @property
    def sync(self) -> _SyncChannel:
        """The sync :class:`fastipc.Channel` this wraps.

        Close it through :meth:`close` (any thread), not ``sync.close()``: the
        loop may still poll its socket (during a wait, and for one loop turn
        after one), and only :meth:`close` stops that before the fd closes.
        """
        return self._ch

    @property
    def name(self) -> str:
        return self._ch.name

    @property
    def closed(self) -> bool:
        return self._closing or self._ch.closed

    def __repr__(self) -> str:
        return f"<aio.Channel {self.name}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self._drop_cut_frame()  # gives back the send turn a part-sent frame holds
        self._rd.close()
        self._wr.close()
        self._ch.close()

    async def __aenter__(self: _ChanT) -> _ChanT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"operation on a closed channel ({self.name})")

    async def _recv_with(self, attempt: Callable[[], _T], timeout: float | None) -> _T:
        """``attempt()`` (a timeout=0 receive) until it returns, waiting for the socket
        in between."""
        deadline = deadline_of(timeout)
        try:
            while True:
                try:
                    return attempt()
                except Timeout:
                    pass
                self._check_open()
                if deadline is not None and monotonic() >= deadline:
                    raise timed_out(f"channel {self.name}", False)
                self._bind()
                await sleep_on(self._rd, deadline)
        except BaseException:
            self._sync_failed()
            raise

    async def recv(self, timeout: float | None = None) -> bytes:
        """Return the next message (fds that came with it are closed).

        Raises :class:`~fastipc.Timeout`, :class:`~fastipc.Closed` when the
        peer closed (or died) and everything was received, ValueError
        (closed), and what the sync ``recv`` raises for a broken stream.
        """
        deadline = deadline_of(timeout)  # checked even when a message is there
        now = self._ch._recv_now  # None for a miss: no Timeout raised and caught
        try:
            msg = now()
            while msg is None:
                self._check_open()
                if deadline is not None and monotonic() >= deadline:
                    raise timed_out(f"channel {self.name}", False)
                self._bind()
                await sleep_on(self._rd, deadline)
                msg = now()
        except BaseException:
            self._sync_failed()
            raise
        return msg

    def _sync_failed(self) -> None:
        """After a receive raised: if the sync channel closed itself (a broken stream,
        a hostile peer), stop polling its socket now, not at the loop's next turn
        (see Waiters.discard): its fd number may be given to another file meanwhile."""
        if self._ch.closed and self._rd.registered:
            self._rd.close()

    async def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        """Return 1 to ``max_count`` messages: waits for the first, takes what else arrived."""
        recv_many = self._ch.recv_many
        return await self._recv_with(lambda: recv_many(max_count, timeout=0), timeout)

    async def recv_with_fds(self, timeout: float | None = None) -> tuple[bytes, list[int]]:
        """Return the next message and the fds that came with it (the caller closes them)."""
        rw = self._ch.recv_with_fds
        return await self._recv_with(lambda: rw(timeout=0), timeout)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """``async for msg in channel``: ends when the peer closes."""
        try:
            return await self.recv()
        except Closed:
            raise StopAsyncIteration from None

    async def _writable(self, deadline: float | None) -> None:
        while True:
            self._check_open()
            if deadline is not None and monotonic() >= deadline:
                raise timed_out(f"channel {self.name}", True)
            self._bind()
            if await sleep_on(self._wr, deadline):
                return

    async def _writable_now(self, deadline: float | None) -> None:
        self._check_open()
        if not _poll_out(self._ch.fileno()):
            await self._writable(deadline)

    async def _room(self, deadline: float | None, pause: float) -> float:
        """Wait for the socket to poll writable; return the next busy pause.

        ``pause`` > 0: a send was just refused though the socket polled
        writable (another thread's sync send holds the turn): sleep that long.
        """
        self._check_open()
        if deadline is not None and monotonic() >= deadline:
            raise timed_out(f"channel {self.name}", True)
        if not _poll_out(self._ch.fileno()):
            await self._writable(deadline)
            return 0.0
        await asyncio.sleep(pause)
        return min(max(pause * 2, 20e-6), BUSY_PAUSE_MAX)

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - monotonic())

    def _whole_or_nothing(self, nbytes: int) -> bool:
        """Whether the socket takes ``nbytes`` of frames in one write whole or not at all.

        A unix stream socket queues a write in kernel buffers of up to half
        its SO_SNDBUF less 64 bytes (and up to 32 KiB and a page), each
        allocated whole or refused (EAGAIN): a write that fits one buffer is
        never cut. tcp may cut any write.
        """
        if not self._unix or nbytes > DIRECT_MAX:
            return False
        if nbytes <= _ANY_SNDBUF:
            return True
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, self._ch.fileno())
        except (OSError, ValueError):
            return False  # closed: the send says so
        try:
            return nbytes <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - 64
        except OSError:
            return False
        finally:
            sock.detach()

    async def send(self, data: Any, fds: Iterable[Any] = (), timeout: float | None = None) -> None:
        """Send one message (bytes-like) with ``fds`` attached, once the socket is writable.

        Raises as the sync ``send``: Closed (peer gone), Timeout,
        MessageTooLarge, TypeError, ValueError (closed).
        """
        deadline = deadline_of(timeout)
        fds = list(fds)  # read now, once
        turn = await self._turn(deadline)
        try:
            send = self._ch.send
            nbytes = _nbytes(data) + 8
            if not fds and nbytes <= LOOP_SEND_MAX:
                if await self._send_on_loop(data, deadline):
                    return
            elif self._whole_or_nothing(nbytes):
                pause = 0.0
                while True:
                    try:
                        return send(data, fds, timeout=0)
                    except Timeout:
                        pass  # refused whole: nothing went
                    except Closed:
                        self._check_open()  # closed by close() from another thread meanwhile
                        raise
                    pause = await self._room(deadline, pause)
            await self._writable_now(deadline)
            worker = turn.worker = asyncio.get_running_loop().create_future()
            self._sender.submit(lambda: send(data, fds, timeout=self._remaining(deadline)), worker)
            await asyncio.shield(worker)
        finally:
            turn.over = True  # first, a plain store: see _Turn
            self._settle_turn(turn)

    async def _send_on_loop(self, data: Any, deadline: float | None) -> bool:
        """Send on the loop thread, awaiting room for a frame the socket cut; True once sent.

        False: nothing went, as another thread's sync send holds the channel's
        send turn; the sender thread's send then waits for it.
        A frame cut part-way keeps the sync channel's send turn across the
        awaits (see ChannelBase._send_begin); leaving before it is all out
        (Timeout, cancelled, closed) drops it, closing the channel (see
        _abandon), as a sync send cut short does.
        """
        begin = self._ch._send_begin
        while True:
            try:
                sent = begin(data)
            except Timeout:
                return False
            except Closed:
                self._check_open()  # closed by close() from another thread meanwhile
                raise
            if sent is not None:
                break
            await self._writable(deadline)  # full: nothing went
        if sent:
            return True
        more = self._ch._send_more
        while True:
            await self._writable(deadline)
            try:
                if more():
                    return True
            except Closed:
                self._check_open()
                raise

    async def send_many(self, buffers: Iterable[Any], timeout: float | None = None) -> int:
        """Send each buffer as one message, with few syscalls; return how many.

        A batch that a unix socket takes whole or not at all (see the class)
        is sent on the loop thread, whole messages at a time: Timeout and
        Closed carry ``sent``, and a cancelled call may have sent a prefix of
        the messages (each whole). Any other batch goes through the sender
        thread as a large :meth:`send` does.
        """
        deadline = deadline_of(timeout)
        batch = list(buffers)
        turn = await self._turn(deadline)
        try:
            send_many = self._ch.send_many
            if self._whole_or_nothing(sum(_nbytes(b) + 8 for b in batch)):
                sent = 0
                pause = 0.0
                while True:
                    try:
                        return sent + send_many(batch[sent:] if sent else batch, timeout=0)
                    except Timeout as exc:
                        sent += exc.sent  # whole messages: the rest was refused whole
                    except Closed as exc:
                        self._check_open()  # closed by close() from another thread meanwhile
                        if not sent:
                            raise
                        raise Closed(str(exc), sent=sent + exc.sent) from None
                    try:
                        pause = await self._room(deadline, pause)
                    except Timeout:
                        raise timed_out(f"channel {self.name}", True, sent) from None
            await self._writable_now(deadline)
            worker = turn.worker = asyncio.get_running_loop().create_future()
            self._sender.submit(lambda: send_many(batch, timeout=self._remaining(deadline)), worker)
            sent_all: int = await asyncio.shield(worker)
            return sent_all
        finally:
            turn.over = True  # first, a plain store: see _Turn
            self._settle_turn(turn)

    async def _turn(self, deadline: float | None) -> _Turn:
        """Wait for the sends awaited before this one; return this send's turn (see _Turn)."""
        loop = asyncio.get_running_loop()
        before = self._last
        turn = self._last = _Turn(loop.create_future())
        if before is None or before.done.done() or before.done.get_loop() is not loop:
            return turn
        try:
            await self._wait_turn(before, deadline)
        except BaseException as exc:
            # The next send still waits for `before` (through this turn).
            turn.prev = before
            turn.over = True
            self._pass_turn(turn, before.done)
            if isinstance(exc, asyncio.TimeoutError):
                raise timed_out(f"channel {self.name}", True) from None
            raise
        return turn

    async def _wait_turn(self, before: _Turn, deadline: float | None) -> None:
        """Wait until ``before`` is passed on, or its send is found to have left without."""
        cur = before
        while not cur.done.done():
            if cur.left():
                if cur.prev is not None:  # it stopped waiting: wait for what it waited for
                    cur = cur.prev
                    continue
                # Its send ended, but a signal handler raised before it passed the
                # turn on: take it, abandoning its sender-thread send if any.
                self._abandon(cur.worker)
                return
            left = self._remaining(deadline)
            if left is not None and left <= 0:
                raise asyncio.TimeoutError
            await asyncio.wait(
                (cur.done,), timeout=BACKSTOP if left is None else min(left, BACKSTOP)
            )

    def _pass_turn(self, turn: _Turn, after: asyncio.Future[Any] | None) -> None:
        """End ``turn`` (the next send goes) now, or once ``after`` is done."""
        if after is not None and not after.done():
            after.add_done_callback(lambda _: self._pass_turn(turn, None))
            return
        if self._last is turn:
            self._last = None
        if not turn.done.done():
            turn.done.set_result(None)

    def _settle_turn(self, turn: _Turn) -> None:
        """End a send: pass its turn on (call right after setting ``turn.over``).

        A send left while its sender-thread send may still go out (an await
        cancelled by a timeout or Ctrl-C, a signal handler raising anywhere
        after the future was made: handed over or not, running or done but
        not yet reported) abandons it, which closes the channel, as an
        interrupted sync send does: a stream cannot take half a message, so
        the peer gets Closed, never part of one, and a send the caller was
        told failed never goes out later. Its sync send wakes within a slice
        and ends; the next send meets the closed channel.
        """
        self._abandon(turn.worker)
        self._pass_turn(turn, None)

    def _abandon(self, worker: asyncio.Future[Any] | None) -> None:
        self._drop_cut_frame()
        if worker is not None and not worker.done():
            self.close()
            worker.cancel()

    def _drop_cut_frame(self) -> None:
        """Drop a frame _send_on_loop left part-sent, if any (closing the channel), done
        again if a signal handler raised inside the first drop: else the send turn
        stays parked and other threads' sync sends wait for a send that has left."""
        try:
            self._ch._send_drop()
        except BaseException:
            self._ch._send_drop()
            raise

    def shutdown(self, how: str = "both") -> None:
        """:meth:`fastipc.Channel.shutdown` (``"write"``: the peer gets Closed after what was sent)."""
        self._ch.shutdown(how)


#: The largest frame (bytes, header included) a send without fds writes from
#: the loop thread (a frame the socket cuts is finished there as room comes):
#: larger ones go through the sender thread, so copying them never holds the loop.
LOOP_SEND_MAX = 64 * 1024
#: The largest frame (or batch of frames, headers included) sent on the loop
#: thread, and only on a unix socket that queues it in one buffer: half its
#: SO_SNDBUF less 64 bytes, and at most 32 KiB plus a page (Linux's
#: unix_stream_sendmsg), so a write of it is taken whole or refused whole.
DIRECT_MAX = 32 * 1024
#: Frames this small fit one buffer of any unix socket (SO_SNDBUF is at least
#: 4608 bytes): no getsockopt needed.
_ANY_SNDBUF = 2048


def _family(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    try:
        return int(sock.family)
    finally:
        sock.detach()


def _nbytes(data: Any) -> int:
    try:
        return memoryview(data).nbytes
    except TypeError:
        return 0  # not bytes-like: the sync send raises the TypeError


def _poll_out(fd: int) -> bool:

    p = select.poll()
    p.register(fd, select.POLLOUT)
    return bool(p.poll(0))


class Listener(LoopBound):
    """Accepts connections awaitably: unix (a :class:`fastipc.Listener`) or tcp.

    :meth:`close` may come from any thread, as a :class:`Channel`'s.
    """

    def __init__(self, sock: socket.socket | None, sync: _SyncListener | None, url: str) -> None:
        self._sock = sock
        self._sync = sync
        self.url = url
        fd = sync.fileno() if sync is not None else sock.fileno()  # type: ignore[union-attr]
        super().__init__()  # close() from any thread: see LoopBound
        self._w = Waiters(fd, False, False)

    @property
    def closed(self) -> bool:
        return self._closing or (self._sock is None and self._sync is None)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"operation on a closed listener ({self.url})")

    def _accept_now(self) -> _SyncChannel:
        self._check_open()
        # Read once: a signal handler's close() (or another thread's, before
        # the first wait) may release them from here on.
        sync, sock = self._sync, self._sock
        if sync is not None:
            try:
                return sync.accept(timeout=0)
            except (OSError, ValueError):
                self._check_open()  # closed meanwhile: ValueError naming the listener
                raise
        if sock is None:
            self._check_open()
            raise ValueError(f"operation on a closed listener ({self.url})")
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            raise Timeout("no connection waiting") from None
        except OSError:
            self._check_open()  # closed meanwhile: ValueError
            raise
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _SyncChannel.from_socket(conn, name=self.url)

    async def accept(self) -> Channel:
        """Wait for the next connection; return its :class:`Channel`. ValueError once closed."""
        while True:
            try:
                return Channel(self._accept_now())
            except Timeout:
                pass
            self._bind()
            await sleep_on(self._w, None)

    def close(self) -> None:
        """Stop listening (a unix listener removes its socket file); wakes accept() (ValueError).

        Idempotent, any thread: from another thread than that of the loop
        awaiting accept(), the socket closes on the loop's thread, soon after.
        """
        super().close()

    def _release(self) -> None:
        self._w.close()
        sock, self._sock = self._sock, None
        sync, self._sync = self._sync, None
        if sock is not None:
            sock.close()
        if sync is not None:
            sync.close()


async def listen(url: str, **kwargs: Any) -> Listener:
    """Listen at ``unix://...`` (as :func:`fastipc.listen`, same keywords) or ``tcp://HOST:PORT``.

    For tcp, port 0 picks a free port; :attr:`Listener.url` names the real
    one. Raises ValueError for another scheme, OSError (address in use...).
    """
    ep = parse(url, schemes=("unix", "tcp"))
    if ep.scheme == "unix":
        return Listener(None, _sync_listen(url, **kwargs), url)
    assert ep.host is not None and ep.port is not None
    sock = socket.create_server((ep.host, ep.port), backlog=kwargs.get("backlog", 128))
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    return Listener(sock, None, f"tcp://{host}:{port}")


Handler = Callable[[bytes, Channel], Awaitable[None]]


class Server:
    """What :func:`serve` returns: accepts connections and runs the handler per message."""

    def __init__(self, listener: Listener, handler: Handler) -> None:
        self._listener = listener
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._peers: set[Channel] = set()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # made outside a loop: serve_forever() tells

    @property
    def url(self) -> str:
        """The endpoint served (for ``tcp://HOST:0``, with the port chosen)."""
        return self._listener.url

    async def serve_forever(self) -> None:
        """Accept and serve until :meth:`close` (or cancellation, which closes the server)."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    peer = await self._listener.accept()
                except ValueError:
                    return  # closed
                self._peers.add(peer)
                task = asyncio.ensure_future(self._serve_peer(peer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self.close()

    async def _serve_peer(self, peer: Channel) -> None:
        try:
            async for message in peer:
                await self._handler(message, peer)
        except (ValueError, OSError, Closed):
            pass  # closed by us, or a broken stream: that peer is done
        except Exception as exc:  # noqa: BLE001 - the handler's: reported, that connection ends
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"fastipc.aio.serve handler failed ({self.url})", "exception": exc}
            )
        finally:
            self._peers.discard(peer)
            peer.close()

    def close(self) -> None:
        """Stop accepting, close every connection, cancel running handlers.

        Idempotent, any thread: from another thread than the server's loop,
        this happens on the loop's thread, soon after.
        """
        on_loop_thread(self._loop, self._close_here)

    def _close_here(self) -> None:
        self._listener.close()
        for peer in list(self._peers):
            peer.close()
        for task in list(self._tasks):
            if not task.get_loop().is_closed():  # a closed loop's tasks run no more
                task.cancel()

    async def wait_closed(self) -> None:
        """Wait for the per-connection tasks to end after :meth:`close`."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self: _ServerT) -> _ServerT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def serve(url: str, handler: Handler, **kwargs: Any) -> Server:
    """Serve length-framed messages at ``url``: ``unix://...`` or ``tcp://HOST:PORT``.

    ``await handler(message, peer)`` runs for each message, in order per
    connection (connections run concurrently); ``peer`` is the connection's
    :class:`Channel` (``await peer.send(reply)``). A handler that raises
    ends its connection. Peers are :class:`fastipc.Channel` s or any client
    speaking length framing (``fastipc.connect``). Other schemes (udp, mq,
    fifo...) are served by the sync :func:`fastipc.serve`; ValueError names
    them. ``kwargs`` go to :func:`listen`. Call ``await server.serve_forever()``.
    """
    return Server(await listen(url, **kwargs), handler)
