"""asyncio faces of Ring, Channel and a server: awaitables that never block the event loop.

Why a separate module rather than ``arecv``-style methods on the same
classes: ``import fastipc`` stays import-light (it loads neither asyncio nor
any transport, checked by tests/test_transport_registry.py), the sync classes
keep one face each, and every awaitable here is a thin loop around the sync
call of the same name. Imports point down: this module uses the public
classes; nothing in fastipc imports it.

How waiting works (docs/architecture.md, "asyncio"):

* The take is always a non-blocking sync call (``timeout=0``) made on the
  loop thread, never in an executor: a cancelled await either returned its
  message or left it where it was. No thread waits on anyone's behalf.
* A Ring waits on its doorbell (``Ring.fileno()``'s FIFO) with
  ``loop.add_reader``: register as a watcher in the segment, re-check the
  ring, then wait; producers ring the bell only while someone watches. A
  0.2 s timer re-checks anyway (a watcher or producer killed at the wrong
  instant, a bell another waiter drained). A woken waiter that leaves
  without its message (cancelled, timed out) rings the bell again, and one
  that takes a message while more wait and others watch passes the word on,
  so no waiter in another process is left asleep on a drained bell.
* A Channel waits with ``loop.add_reader``/``add_writer`` on its socket, after
  a ``timeout=0`` receive has used what is already buffered (a selector
  cannot see those bytes: the edge-triggered lesson of pyzmq).
* ``close()`` wakes every awaiter of the handle, which then raises what the
  sync call raises on a closed handle (ValueError).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ._checks import timeout_ns
from ._contract import drain
from .channel import Channel as _SyncChannel
from .channel import Listener as _SyncListener
from .channel import listen as _sync_listen
from .endpoints import parse
from .errors import Closed, Timeout
from .ring import Ring as _SyncRing

__all__ = ["Channel", "Listener", "Ring", "Server", "listen", "serve"]

_T = TypeVar("_T")
_RingT = TypeVar("_RingT", bound="Ring")
_ChanT = TypeVar("_ChanT", bound="Channel")
_ServerT = TypeVar("_ServerT", bound="Server")

#: Longest wait (seconds) before a waiter re-checks on its own, bell or not.
BACKSTOP = 0.2
#: Longest pause (seconds) while the other side looks ready but its lock is busy.
_BUSY_PAUSE_MAX = 0.001
_RECV, _SEND = 0, 1
_monotonic = time.monotonic


def _deadline(timeout: float | None) -> float | None:
    """``timeout`` (seconds, None: forever) as a time.monotonic() deadline; checks it."""
    if timeout is None:
        return None
    timeout_ns(timeout)  # TypeError/ValueError for a bad one, as in the sync calls
    return _monotonic() + timeout


class _Waiters:
    """The coroutines of one loop waiting for one fd to poll ready.

    One add_reader/add_writer per fd while anyone waits (removed when the
    last leaves, so nothing drains a bell while nobody here needs it); each
    waiter has its own future, set when the fd fires (result True) or by its
    backstop timer (False). ``drain``: the fd is a doorbell whose bytes must
    be read away (a level-triggered FIFO would fire forever).
    """

    def __init__(self, fd: int, write: bool, drain_it: bool) -> None:
        self.fd = fd
        self.write = write
        self.drain_it = drain_it
        self.loop: asyncio.AbstractEventLoop | None = None
        self.futs: set[asyncio.Future[bool]] = set()

    def add(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
        if self.loop is not loop:
            if self.futs:
                raise RuntimeError("a fastipc handle is awaited from two event loops at once")
            self.loop = loop
        fut: asyncio.Future[bool] = loop.create_future()
        if not self.futs:
            if self.write:
                loop.add_writer(self.fd, self._fire)
            else:
                loop.add_reader(self.fd, self._fire)
        self.futs.add(fut)
        return fut

    def discard(self, fut: asyncio.Future[bool]) -> None:
        self.futs.discard(fut)
        if not self.futs and self.loop is not None and self.fd >= 0:
            if self.write:
                self.loop.remove_writer(self.fd)
            else:
                self.loop.remove_reader(self.fd)

    def _fire(self) -> None:
        if self.drain_it:
            drain(self.fd)
        self.wake_all(True)

    def wake_all(self, result: bool) -> None:
        for fut in self.futs:
            if not fut.done():
                fut.set_result(result)

    def close(self) -> None:
        """Wake everyone (they re-check and meet the closed handle) and stop watching the fd."""
        self.wake_all(False)
        if self.futs and self.loop is not None:
            if self.write:
                self.loop.remove_writer(self.fd)
            else:
                self.loop.remove_reader(self.fd)
        self.futs.clear()


async def _sleep_on(
    w: _Waiters, deadline: float | None, on_leave: Callable[[bool], None] | None = None
) -> bool:
    """Wait for ``w``'s fd, the backstop or ``deadline``; return whether the fd fired.

    ``on_leave(woken)`` runs if the wait is cancelled (woken: the fd had fired).
    """
    loop = asyncio.get_running_loop()
    fut = w.add(loop)
    delay = BACKSTOP if deadline is None else min(BACKSTOP, max(0.0, deadline - _monotonic()))
    timer = loop.call_later(delay, _set_false, fut)
    try:
        return await fut
    except asyncio.CancelledError:
        if on_leave is not None:
            on_leave(fut.done() and not fut.cancelled() and fut.result())
        raise
    finally:
        timer.cancel()
        w.discard(fut)


def _set_false(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class _Held:
    """One open recv_view/reserve block per handle: other calls on it wait until it ends
    (the sync handle refuses, or would wait on its own lock, inside such a block)."""

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    async def wait_free(self) -> None:
        while self.fut is not None:
            await asyncio.shield(self.fut)

    def take(self) -> None:
        self.fut = asyncio.get_running_loop().create_future()

    def give_back(self) -> None:
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)


# ---------------------------------------------------------------------------
# Ring
# ---------------------------------------------------------------------------


class Ring:
    """An awaitable face of :class:`fastipc.Ring`; the sync handle is :attr:`sync`.

    Every method is the sync method of the same name made awaitable: it
    never blocks the loop, and cancelling it (``task.cancel()``,
    ``asyncio.wait_for``, ``asyncio.timeout``) never loses a message: the
    message is taken by a non-blocking call on the loop thread, so a
    cancelled receive either returned it or left it in the ring. Several
    coroutines may await one handle, and several processes one ring.
    Use a handle from one event loop (and its thread) at a time; ``close()``
    may come from any thread.
    """

    def __init__(self, ring: _SyncRing) -> None:
        """Wrap sync ``ring`` (this object owns it from now on: :meth:`close` closes it)."""
        if not isinstance(ring, _SyncRing):
            raise TypeError(f"aio.Ring wraps a fastipc.Ring, not {type(ring).__name__}")
        self._ring = ring
        self._waiters: list[_Waiters | None] = [None, None]
        self._held = _Held()
        self._closed = False

    @classmethod
    def create(cls, name: str, capacity: int, **kwargs: Any) -> Ring:
        """:meth:`fastipc.Ring.create` (same arguments and errors), wrapped. Never waits."""
        return cls(_SyncRing.create(name, capacity, **kwargs))

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> Ring:
        """:meth:`fastipc.Ring.open` (same arguments and errors), wrapped."""
        return cls(_SyncRing.open(name, **kwargs))

    @property
    def sync(self) -> _SyncRing:
        """The sync :class:`fastipc.Ring` this wraps (for ``len()``, ``shutdown()``, ``unlink()``...)."""
        return self._ring

    @property
    def name(self) -> str:
        """The ring's name."""
        return self._ring.name

    @property
    def capacity(self) -> int:
        """The largest message in bytes."""
        return self._ring.capacity

    @property
    def closed(self) -> bool:
        """True once this handle (or its sync handle) is closed."""
        return self._closed or self._ring.closed

    def __len__(self) -> int:
        return len(self._ring)

    def __repr__(self) -> str:
        return f"<aio.Ring {self.name!r}{' closed' if self.closed else ''}>"

    # ---- lifetime -----------------------------------------------------
    def close(self) -> None:
        """Close the handle (idempotent, any thread): awaiting calls raise ValueError (closed)."""
        if self._closed:
            return
        self._closed = True
        self._ring.close()
        loop = next((w.loop for w in self._waiters if w is not None and w.loop), None)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop is running or not loop.is_running():
            self._release()
        else:  # the loop runs in another thread: unregister there, before the fds close
            loop.call_soon_threadsafe(self._release)

    def __del__(self) -> None:
        # Dropped without close(): our own bell fds must not leak (the sync
        # handle closes itself when collected). Nobody can be waiting: a
        # waiting coroutine would keep this object alive.
        for w in getattr(self, "_waiters", ()):
            if w is not None and w.fd >= 0 and not w.futs:
                os.close(w.fd)
                w.fd = -1

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, [None, None]
        for w in waiters:
            if w is not None:
                w.close()
                os.close(w.fd)
                w.fd = -1

    async def __aenter__(self: _RingT) -> _RingT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def shutdown(self) -> None:
        """:meth:`fastipc.Ring.shutdown`: senders get Closed, every awaiting receiver in
        every process wakes, drains what is left, then gets Closed. Never waits."""
        self._ring.shutdown()

    def unlink(self) -> None:
        """:meth:`fastipc.Ring.unlink`: remove the ring's name and /dev/shm objects."""
        self._ring.unlink()

    # ---- waiting --------------------------------------------------------
    def _bell(self, side: int) -> _Waiters:
        w = self._waiters[side]
        if w is None:
            if self._closed:
                raise ValueError(f"ring {self.name!r} is closed")
            # Our own fd, not sync.fileno()'s: closing the sync handle from
            # another thread must never close an fd the loop still polls.
            w = self._waiters[side] = _Waiters(self._ring._open_bell(side), False, True)
        return w

    def _ring_bell(self, side: int) -> None:
        w = self._waiters[side]
        if w is not None and w.fd >= 0:
            try:
                os.write(w.fd, b"\0")
            except OSError:
                pass  # full: a wake-up is already there

    async def _wait(self, side: int, nbytes: int, deadline: float | None, pause: float) -> int:
        """Wait until ``side`` may be ready; return the watchers left after ours is undone.

        ``pause`` > 0: the ring looked ready last time but the take failed
        (another handle holds the side's lock): sleep that long instead.
        """
        ring = self._ring
        if pause:
            await asyncio.sleep(pause)
            return 0
        w = self._bell(side)
        registered: list[int] = []
        left = 0
        try:
            # Counted as soon as the call returns (list += map: no bytecode
            # between the call and the append), so the finally undoes exactly
            # what was done.
            registered += map(ring._watch_add, (side,), (1,))
            if ring._poll(side, nbytes):  # the re-check after registering
                return 0

            def leave(woken: bool) -> None:
                if woken:  # woken, but leaving without a message: pass the wake-up on
                    self._ring_bell(side)

            await _sleep_on(w, deadline, leave)
        finally:
            if registered and not ring.closed:
                left = ring._watch_add(side, -1)
        return left

    async def _retry(
        self, side: int, nbytes: int, attempt: Callable[[], _T], timeout: float | None
    ) -> _T:
        """Call non-blocking ``attempt`` until it does not raise Timeout, waiting between tries."""
        deadline = _deadline(timeout)
        left = 0
        pause = 0.0
        while True:
            await self._held.wait_free()
            try:
                result = attempt()
            except Timeout:
                pass
            else:
                if left > 0 and self._ring._poll(side, nbytes):
                    # We may have drained a bell meant for other watchers too,
                    # and there is more: pass the word on.
                    self._ring_bell(side)
                return result
            if self.closed:
                raise ValueError(f"ring {self.name!r} is closed")
            if deadline is not None and _monotonic() >= deadline:
                raise Timeout(f"ring {self.name!r}: timed out")
            left = await self._wait(side, nbytes, deadline, pause)
            # If the ring looks ready but the take keeps failing, another
            # handle holds the side's lock (or a block of ours is open):
            # back off (20 us doubling to 1 ms) instead of spinning the loop.
            if self._ring._poll(side, nbytes):
                pause = min(max(pause * 2, 20e-6), _BUSY_PAUSE_MAX)
            else:
                pause = 0.0

    # ---- receive ------------------------------------------------------
    async def recv(self, timeout: float | None = None) -> bytes:
        """Remove and return the oldest message, waiting (without blocking the loop) for one.

        ``timeout`` in seconds (None: forever). Raises :class:`~fastipc.Timeout`,
        :class:`~fastipc.Closed` once the ring is shut down and drained,
        ValueError if the handle is closed (also while awaiting).
        """
        if self._held.fut is None:
            try:
                return self._ring.recv(timeout=0)
            except Timeout:
                pass
        return await self._retry(_RECV, 0, self._recv_now, timeout)

    def _recv_now(self) -> bytes:
        return self._ring.recv(timeout=0)

    async def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        """Return 1 to ``max_count`` of the oldest messages: waits for the first only.

        Raises as :meth:`recv`, and ValueError for ``max_count`` < 1.
        """
        recv_many = self._ring.recv_many
        if self._held.fut is None:
            try:
                return recv_many(max_count, timeout=0)
            except Timeout:
                pass
        return await self._retry(_RECV, 0, lambda: recv_many(max_count, timeout=0), timeout)

    async def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the oldest message into writable ``buffer``; return its length in bytes.

        Raises as :meth:`recv`, and :class:`~fastipc.MessageTooLarge` (the
        message stays) if it does not fit.
        """
        recv_into = self._ring.recv_into
        return await self._retry(_RECV, 0, lambda: recv_into(buffer, timeout=0), timeout)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """``async for msg in ring``: one message per step; ends once shut down and drained."""
        try:
            if self._held.fut is None:
                try:
                    return self._ring.recv(timeout=0)
                except Timeout:
                    pass
            return await self._retry(_RECV, 0, self._recv_now, None)
        except Closed:
            raise StopAsyncIteration from None

    def recv_view(self, timeout: float | None = None) -> _Block:
        """``async with ring.recv_view() as view``: the oldest message, read-only, in place.

        The message is consumed when the block exits, raised or not (as the
        sync ``recv_view``). Waiting for the message may be cancelled without
        losing it; once the block is entered, a cancellation inside it
        consumes it like any other exception. While the block runs, other
        calls on this handle wait for it to end (other handles and processes
        are not held up, except other consumers, which wait for the consumer
        side as with the sync call). Raises as :meth:`recv`.
        """
        ring = self._ring
        return _Block(self, _RECV, 0, lambda: ring.recv_view(timeout=0), timeout)

    # ---- send ---------------------------------------------------------
    async def send(self, data: Any, timeout: float | None = None) -> None:
        """Append one message (bytes-like), waiting for room without blocking the loop.

        Raises :class:`~fastipc.Timeout`, :class:`~fastipc.MessageTooLarge`,
        :class:`~fastipc.Closed` after shutdown, TypeError, ValueError (closed).
        A cancelled send either sent the message or did not; never part of it.
        """
        send = self._ring.send
        if self._held.fut is None:
            try:
                return send(data, timeout=0)
            except Timeout:
                pass
        nbytes = memoryview(data).nbytes
        await self._retry(_SEND, nbytes, lambda: send(data, timeout=0), timeout)

    async def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        """Append every message in order, waiting for room as needed; return how many.

        Every item is checked before any is sent. Timeout/Closed carry
        ``sent``. A cancelled call may have sent a prefix of the messages
        (those went whole and in order; the rest did not go).
        """
        items = messages if type(messages) is list else list(messages)
        send_many = self._ring.send_many
        deadline = _deadline(timeout)
        sent = 0
        left = 0
        while True:
            await self._held.wait_free()
            try:
                sent += send_many(items[sent:] if sent else items, timeout=0)
                if left > 0 and self._ring._poll(_SEND, 0):
                    self._ring_bell(_SEND)
                return sent
            except Timeout as exc:
                sent += exc.sent
            except Closed as exc:
                raise Closed(str(exc), sent=sent + exc.sent) from None
            if deadline is not None and _monotonic() >= deadline:
                raise Timeout(f"ring {self.name!r}: timed out", sent=sent)
            nbytes = memoryview(items[sent]).nbytes
            left = await self._wait(_SEND, nbytes, deadline, 0.0)
            if self._ring._poll(_SEND, nbytes) and left == 0:
                await asyncio.sleep(_BUSY_PAUSE_MAX)  # room, but another producer holds the lock

    def reserve(self, nbytes: int, timeout: float | None = None) -> _Block:
        """``async with ring.reserve(n) as view``: fill ``view`` in place; published at exit.

        Discarded if the block raises (a cancellation inside it too).
        Waiting for room may be cancelled (nothing is reserved then). Raises
        as :meth:`send`.
        """
        ring = self._ring
        return _Block(self, _SEND, nbytes, lambda: ring.reserve(nbytes, timeout=0), timeout)


class _Block:
    """The async context manager of :meth:`Ring.recv_view` / :meth:`Ring.reserve`."""

    def __init__(
        self,
        ring: Ring,
        side: int,
        nbytes: int,
        make: Callable[[], Any],
        timeout: float | None,
    ) -> None:
        self._ring = ring
        self._side = side
        self._nbytes = nbytes
        self._make = make
        self._timeout = timeout
        self._cm: Any = None

    def _enter(self) -> memoryview:
        cm = self._make()
        view: memoryview = cm.__enter__()
        self._cm = cm
        self._ring._held.take()
        return view

    async def __aenter__(self) -> memoryview:
        if self._cm is not None:
            raise RuntimeError("this recv_view()/reserve() block was already entered")
        return await self._ring._retry(self._side, self._nbytes, self._enter, self._timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        cm, self._cm = self._cm, None
        try:
            return cm.__exit__(exc_type, exc, tb)  # type: ignore[no-any-return]
        finally:
            self._ring._held.give_back()
            # The other side may now go (a consumed message frees room, a
            # published one is there): the sync exit rang the bells already.


# ---------------------------------------------------------------------------
# Channel
# ---------------------------------------------------------------------------


class Channel:
    """An awaitable face of :class:`fastipc.Channel`; the sync channel is :attr:`sync`.

    Receives use what is already buffered first and then wait on the socket
    with ``loop.add_reader``; a receive cancelled while waiting loses
    nothing. A dead peer makes an awaiting receive raise
    :class:`~fastipc.Closed`; :meth:`close` (any thread) makes it raise
    ValueError. Known limit: a send waits for the socket to poll writable,
    then sends with the sync call; a message larger than the free socket
    buffer then waits in that call (holding the loop) until the peer has
    read enough, at most ``timeout``.
    """

    def __init__(self, channel: _SyncChannel) -> None:
        """Wrap sync ``channel`` (owned from now on: :meth:`close` closes it)."""
        if not isinstance(channel, _SyncChannel):
            raise TypeError(f"aio.Channel wraps a fastipc.Channel, not {type(channel).__name__}")
        self._ch = channel
        fd = channel.fileno()
        self._rd = _Waiters(fd, False, False)
        self._wr = _Waiters(fd, True, False)

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
            # full; then the sync call waits up to `timeout` (default 5 s).
            return cls(_SyncChannel.connect(url, 5.0 if timeout is None else timeout, **kwargs))
        assert ep.host is not None and ep.port is not None
        infos = await asyncio.get_running_loop().getaddrinfo(
            ep.host, ep.port, type=socket.SOCK_STREAM
        )
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_ | socket.SOCK_CLOEXEC, proto)
        try:
            sock.setblocking(False)
            coro = asyncio.get_running_loop().sock_connect(sock, addr)
            if timeout is None:
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
        """The sync :class:`fastipc.Channel` this wraps."""
        return self._ch

    @property
    def name(self) -> str:
        return self._ch.name

    @property
    def closed(self) -> bool:
        return self._ch.closed

    def __repr__(self) -> str:
        return f"<aio.Channel {self.name}{' closed' if self.closed else ''}>"

    def close(self) -> None:
        """Close the channel (idempotent, any thread): awaiting calls raise ValueError (closed)."""
        loop = self._rd.loop or self._wr.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop is running or not loop.is_running():
            self._release()
        else:  # the loop runs in another thread: unregister there, before the fd closes
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._rd.close()
        self._wr.close()
        self._ch.close()

    async def __aenter__(self: _ChanT) -> _ChanT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._ch.closed:
            raise ValueError(f"operation on a closed channel ({self.name})")

    async def _recv_with(self, attempt: Callable[[], _T], timeout: float | None) -> _T:
        deadline = _deadline(timeout)
        while True:
            try:
                return attempt()
            except Timeout:
                pass
            self._check_open()
            if deadline is not None and _monotonic() >= deadline:
                raise Timeout(f"channel {self.name}: timed out")
            await _sleep_on(self._rd, deadline)

    async def recv(self, timeout: float | None = None) -> bytes:
        """Return the next message (fds that came with it are closed).

        Raises :class:`~fastipc.Timeout`, :class:`~fastipc.Closed` when the
        peer closed (or died) and everything was received, ValueError
        (closed), and what the sync ``recv`` raises for a broken stream.
        """
        recv = self._ch.recv
        try:
            return recv(timeout=0)
        except Timeout:
            pass
        return await self._recv_with(lambda: recv(timeout=0), timeout)

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
            if deadline is not None and _monotonic() >= deadline:
                raise Timeout(f"channel {self.name}: timed out waiting to send")
            if await _sleep_on(self._wr, deadline):
                return

    def _remaining(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - _monotonic())

    async def send(self, data: Any, fds: Iterable[Any] = (), timeout: float | None = None) -> None:
        """Send one message (bytes-like) with ``fds`` attached, once the socket is writable.

        Raises as the sync ``send``: Closed (peer gone), Timeout,
        MessageTooLarge, TypeError, ValueError (closed).
        """
        deadline = _deadline(timeout)
        if not _poll_out(self._ch.fileno()):
            await self._writable(deadline)
        self._ch.send(data, fds, timeout=self._remaining(deadline))

    async def send_many(self, buffers: Iterable[Any], timeout: float | None = None) -> int:
        """Send each buffer as one message, with few syscalls; return how many."""
        deadline = _deadline(timeout)
        if not _poll_out(self._ch.fileno()):
            await self._writable(deadline)
        return self._ch.send_many(buffers, timeout=self._remaining(deadline))

    def shutdown(self, how: str = "both") -> None:
        """:meth:`fastipc.Channel.shutdown` (``"write"``: the peer gets Closed after what was sent)."""
        self._ch.shutdown(how)


def _poll_out(fd: int) -> bool:
    import select

    p = select.poll()
    p.register(fd, select.POLLOUT)
    return bool(p.poll(0))


# ---------------------------------------------------------------------------
# Listener and server
# ---------------------------------------------------------------------------


class Listener:
    """Accepts connections awaitably: unix (a :class:`fastipc.Listener`) or tcp."""

    def __init__(self, sock: socket.socket | None, sync: _SyncListener | None, url: str) -> None:
        self._sock = sock
        self._sync = sync
        self.url = url
        fd = sync.fileno() if sync is not None else sock.fileno()  # type: ignore[union-attr]
        self._w = _Waiters(fd, False, False)

    @property
    def closed(self) -> bool:
        return self._sock is None and self._sync is None

    def _accept_now(self) -> _SyncChannel:
        if self._sync is not None:
            return self._sync.accept(timeout=0)
        if self._sock is None:
            raise ValueError(f"operation on a closed listener ({self.url})")
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            raise Timeout("no connection waiting") from None
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _SyncChannel.from_socket(conn, name=self.url)

    async def accept(self) -> Channel:
        """Wait for the next connection; return its :class:`Channel`. ValueError once closed."""
        while True:
            try:
                return Channel(self._accept_now())
            except Timeout:
                pass
            if self.closed:
                raise ValueError(f"operation on a closed listener ({self.url})")
            await _sleep_on(self._w, None)

    def close(self) -> None:
        """Stop listening (a unix listener removes its socket file); wakes accept() (ValueError)."""
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

    @property
    def url(self) -> str:
        """The endpoint served (for ``tcp://HOST:0``, with the port chosen)."""
        return self._listener.url

    async def serve_forever(self) -> None:
        """Accept and serve until :meth:`close` (or cancellation, which closes the server)."""
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
        """Stop accepting, close every connection, cancel running handlers. Idempotent."""
        self._listener.close()
        for peer in list(self._peers):
            peer.close()
        for task in list(self._tasks):
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
