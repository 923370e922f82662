"""aio.Ring: the awaitable face of fastipc.Ring, waiting on the ring's doorbells."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ..errors import Closed, Timeout, timed_out
from ..ring import Ring as _SyncRing
from ._waiting import (
    BUSY_PAUSE_MAX,
    RECV,
    SEND,
    SPIN,
    SPIN_BUSY,
    Held,
    LoopBound,
    Waiters,
    deadline_of,
    monotonic,
    sleep_on,
)

__all__ = ["Ring"]

_yield = os.sched_yield

_T = TypeVar("_T")
_RingT = TypeVar("_RingT", bound="_Awaiting")


class _Awaiting(LoopBound):
    """What aio.Ring and aio.Subscriber share: awaiting a sync handle's receive side on its doorbell.

    ``self._ring`` is the sync handle seen through the ring's calls
    (``_open_bell(side)``, ``_watch_add(side, delta)``, ``_poll(side,
    nbytes)``, ``_try_recv()``, ``recv(timeout=0)``...).
    """

    _ring: _SyncRing  # or what reads as one (aio.Subscriber's adapter)

    def __init__(self, ring: _SyncRing) -> None:
        self._ring = ring
        self._waiters: list[Waiters | None] = [None, None]
        self._held = Held()
        # close() from any thread (see LoopBound): a call binds the loop before
        # it keeps any state of this handle there (a bell's registration, an
        # open block), so that state's release is handed to the loop.
        super().__init__()
        # Bound once: the take of every `async for` step (~40 ns a lookup).
        self._take = ring._try_recv

    @property
    def name(self) -> str:
        """The ring's name."""
        return self._ring.name

    @property
    def closed(self) -> bool:
        """True once this handle (or its sync handle) is closed."""
        return self._closing or self._ring.closed

    def __len__(self) -> int:
        return len(self._ring)

    # ---- lifetime -----------------------------------------------------
    def _close_now(self) -> None:
        self._ring.close()  # wakes its sync waiters in other threads now

    def _check_open(self) -> None:
        if self._closing:
            raise ValueError(f"ring {self.name!r} is closed")

    def __del__(self) -> None:
        # Dropped without close(): our own bell fds must not leak (the sync
        # handle closes itself when collected). Nobody is waiting (a waiting
        # coroutine keeps this object alive), but the loop may still poll an
        # fd: unregister it on the loop's thread before closing it.
        for w in getattr(self, "_waiters", ()):
            if w is None or w.fd < 0:
                continue
            loop = w.loop
            if w.registered and loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(w.close_fd)
                    continue
                except RuntimeError:  # closed meanwhile
                    pass
            w.registered = False
            w.close_fd()

    def _release(self) -> None:
        self._held.give_back()  # wakes the calls waiting for a block to end: they meet the close
        waiters, self._waiters = self._waiters, [None, None]
        for w in waiters:
            if w is not None:
                w.close_fd()

    async def __aenter__(self: _RingT) -> _RingT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # ---- waiting --------------------------------------------------------
    async def _free(self, side: int, deadline: float | None, sent: int = 0) -> None:
        """Wait for another task's open block to end (see Held); Timeout past ``deadline``."""
        if self._held.fut is None:
            return
        try:
            await self._held.wait_free(deadline)
        except asyncio.TimeoutError:
            raise timed_out(f"ring {self.name!r}", side == SEND, sent) from None
        if self.closed:
            raise ValueError(f"ring {self.name!r} is closed")

    def _bell(self, side: int) -> Waiters:
        self._bind()
        w = self._waiters[side]
        if w is None:
            self._check_open()
            # Our own fd, not sync.fileno()'s: closing the sync handle from
            # another thread must never close an fd the loop still polls. (A
            # duplicate of the bell the sync handle holds: never the FIFO
            # reopened by path, which a removed ring's would make again.)
            w = self._waiters[side] = Waiters(self._ring._open_bell(side), False, True, lazy=True)
            if self._closing:
                # Closed while the bell opened, by a signal handler's close() on
                # this thread: its release ran before the bell was stored.
                if self._waiters[side] is w:
                    self._waiters[side] = None
                w.close_fd()  # not registered yet; idempotent
                raise ValueError(f"ring {self.name!r} is closed")
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

            await sleep_on(w, deadline, leave)
        finally:
            if registered and not ring.closed:
                left = ring._watch_add(side, -1)
        return left

    def _spin(self, side: int, nbytes: int, deadline: float | None) -> None:
        """Poll the ring for up to SPIN seconds (holding the loop that long at most).

        The first SPIN_BUSY seconds busy-poll: a peer that answers at once
        (a ping-pong partner, a producer that keeps up) is met in a few µs.
        Then each poll is followed by ``sched_yield``: a pipe write wakes its
        reader "synchronously", often on the writer's own CPU, where it waits
        until the writer blocks, so a waiter that kept spinning right after
        sending its request would hold off the very peer that answers
        (measured: +35 µs per round trip while the loop slept between
        messages; the yield took it back to below asyncio streams').
        """
        poll = self._ring._poll
        now = monotonic()
        until = now + SPIN
        busy_until = now + SPIN_BUSY
        if deadline is not None:
            until = min(until, deadline)
        while not poll(side, nbytes):
            now = monotonic()
            if now >= until:
                return
            if now >= busy_until:
                _yield()

    async def _retry(
        self,
        side: int,
        nbytes: int,
        attempt: Callable[[], _T],
        timeout: float | None,
        tried: bool = False,
    ) -> _T:
        """Call non-blocking ``attempt`` until it does not raise Timeout, waiting between tries.

        ``tried``: the caller's own attempt just failed (the first look is a spin then).
        """
        deadline = deadline_of(timeout)
        left = 0
        pause = 0.0
        spun = False
        while True:
            await self._free(side, deadline)
            if tried and not spun and self._held.fut is None:
                spun = True
                self._spin(side, nbytes, deadline)
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
            if deadline is not None and monotonic() >= deadline:
                raise timed_out(f"ring {self.name!r}", side == SEND)
            if not spun and self._held.fut is None:
                spun = True
                self._spin(side, nbytes, deadline)
                continue
            left = await self._wait(side, nbytes, deadline, pause)
            # If the ring looks ready but the take keeps failing, another
            # handle holds the side's lock (or a block of ours is open):
            # back off (20 us doubling to 1 ms) instead of spinning the loop.
            if self._ring._poll(side, nbytes):
                pause = min(max(pause * 2, 20e-6), BUSY_PAUSE_MAX)
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
            msg = self._take()
            if msg is not None:
                return msg
        return await self._retry(RECV, 0, self._recv_now, timeout, True)

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
        return await self._retry(RECV, 0, lambda: recv_many(max_count, timeout=0), timeout, True)

    async def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the oldest message into writable ``buffer``; return its length in bytes.

        Raises as :meth:`recv`, and :class:`~fastipc.MessageTooLarge` (the
        message stays) if it does not fit.
        """
        recv_into = self._ring.recv_into
        return await self._retry(RECV, 0, lambda: recv_into(buffer, timeout=0), timeout)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """``async for msg in ring``: one message per step; ends once shut down and drained."""
        try:
            if self._held.fut is None:
                msg = self._take()
                if msg is not None:
                    return msg
            return await self._retry(RECV, 0, self._recv_now, None, True)
        except Closed:
            raise StopAsyncIteration from None

    def recv_view(self, timeout: float | None = None) -> _Block:
        """``async with ring.recv_view() as view``: the oldest message, read-only, in place.

        The message is consumed when the block exits, raised or not (as the
        sync ``recv_view``). Waiting for the message may be cancelled without
        losing it; once the block is entered, a cancellation inside it
        consumes it like any other exception. While the block runs, other
        tasks' calls on this handle wait for it to end, within their timeout
        (other handles and processes are not held up, except other consumers,
        which wait for the consumer side as with the sync call). The task's
        own calls inside the block go on as inside a sync block: the other
        side works, this side and another block raise RuntimeError. Raises
        as :meth:`recv`.
        """
        ring = self._ring
        return _Block(self, RECV, 0, lambda: ring.recv_view(timeout=0), timeout)


class Ring(_Awaiting):
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

    _ring: _SyncRing

    def __init__(self, ring: _SyncRing) -> None:
        """Wrap sync ``ring`` (this object owns it from now on: :meth:`close` closes it)."""
        if not isinstance(ring, _SyncRing):
            raise TypeError(f"aio.Ring wraps a fastipc.Ring, not {type(ring).__name__}")
        super().__init__(ring)

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
    def capacity(self) -> int:
        """The largest message in bytes."""
        return self._ring.capacity

    def __repr__(self) -> str:
        return f"<aio.Ring {self.name!r}{' closed' if self.closed else ''}>"

    def shutdown(self) -> None:
        """:meth:`fastipc.Ring.shutdown`: senders get Closed, every awaiting receiver in
        every process wakes, drains what is left, then gets Closed. Never waits."""
        self._ring.shutdown()

    def unlink(self) -> None:
        """:meth:`fastipc.Ring.unlink`: remove the ring's name and /dev/shm objects."""
        self._ring.unlink()

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
        await self._retry(SEND, nbytes, lambda: send(data, timeout=0), timeout, True)

    async def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        """Append every message in order, waiting for room as needed; return how many.

        Every item is checked before any is sent. Timeout/Closed carry
        ``sent``. A cancelled call may have sent a prefix of the messages
        (those went whole and in order; the rest did not go).
        """
        items = messages if type(messages) is list else list(messages)
        send_many = self._ring.send_many
        deadline = deadline_of(timeout)
        sent = 0
        left = 0
        while True:
            await self._free(SEND, deadline, sent)
            try:
                sent += send_many(items[sent:] if sent else items, timeout=0)
                if left > 0 and self._ring._poll(SEND, 0):
                    self._ring_bell(SEND)
                return sent
            except Timeout as exc:
                sent += exc.sent
            except Closed as exc:
                raise Closed(str(exc), sent=sent + exc.sent) from None
            if deadline is not None and monotonic() >= deadline:
                raise timed_out(f"ring {self.name!r}", True, sent)
            nbytes = memoryview(items[sent]).nbytes
            left = await self._wait(SEND, nbytes, deadline, 0.0)
            if self._ring._poll(SEND, nbytes) and left == 0:
                await asyncio.sleep(BUSY_PAUSE_MAX)  # room, but another producer holds the lock

    def reserve(self, nbytes: int, timeout: float | None = None) -> _Block:
        """``async with ring.reserve(n) as view``: fill ``view`` in place; published at exit.

        Discarded if the block raises (a cancellation inside it too).
        Waiting for room may be cancelled (nothing is reserved then). Other
        calls while the block runs: as in :meth:`recv_view`. Raises as
        :meth:`send`.
        """
        ring = self._ring
        return _Block(self, SEND, nbytes, lambda: ring.reserve(nbytes, timeout=0), timeout)


class _Block:
    """The async context manager of :meth:`Ring.recv_view` / :meth:`Ring.reserve`."""

    def __init__(
        self,
        ring: _Awaiting,
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
        self._ring._bind()  # before the block is opened: _held is this loop's state
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
