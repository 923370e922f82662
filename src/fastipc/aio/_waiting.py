"""What every awaitable of fastipc.aio shares: deadlines, waiting on an fd with a backstop, open blocks."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .._checks import timeout_ns
from .._contract import drain

__all__ = [
    "BACKSTOP",
    "BUSY_PAUSE_MAX",
    "RECV",
    "SEND",
    "SPIN",
    "SPIN_BUSY",
    "Held",
    "LoopBound",
    "Waiters",
    "deadline_of",
    "elsewhere",
    "monotonic",
    "on_loop_thread",
    "sleep_on",
]


#: Longest wait (seconds) before a waiter re-checks on its own, bell or not.
BACKSTOP = 0.2
#: Longest pause (seconds) while the other side looks ready but its lock is busy.
BUSY_PAUSE_MAX = 0.001
RECV, SEND = 0, 1
#: How long (seconds) a ring waiter polls the ring on the loop thread before it
#: registers at the doorbell and sleeps: a peer that keeps up is met without the
#: wake-up's cost (tens of µs on a VM), and the loop is held at most this long.
SPIN = 20e-6
#: The first part of SPIN that polls without yielding the CPU (see Ring._spin).
SPIN_BUSY = 5e-6
#: The clock of every deadline here (seconds).
monotonic = time.monotonic


def deadline_of(timeout: float | None) -> float | None:
    """``timeout`` (seconds, None: forever) as a time.monotonic() deadline; checks it."""
    if timeout is None or timeout_ns(timeout) < 0:  # TypeError/ValueError for a bad one
        return None  # inf, or a deadline past what the sync calls hold: forever
    return monotonic() + timeout


def elsewhere(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Whether ``loop`` runs, in another thread than this one (close() then hands over to it)."""
    if loop is None or not loop.is_running():
        return False
    try:
        return asyncio.get_running_loop() is not loop
    except RuntimeError:
        return True


def on_loop_thread(loop: asyncio.AbstractEventLoop | None, release: Callable[[], None]) -> None:
    """``release()`` on ``loop``'s thread if it runs in another thread, else here and now.

    What a close() from any thread calls: the release unregisters fds the
    loop may be polling, so it runs there. A loop closed between the look and
    the hand-over polls nothing any more: then here.
    """
    if elsewhere(loop):
        assert loop is not None
        try:
            loop.call_soon_threadsafe(release)
            return
        except RuntimeError:  # closed meanwhile
            pass
    release()


class LoopBound:
    """An aio handle whose fds one event loop polls, and whose close() may come from any thread.

    A loop must never poll a closed (or reused) fd number: what the loop
    polls is released (unregistered, then closed) by ``_release()`` on the
    loop's thread, or at once while no loop polls. Under ``_lock``, close()
    sets ``_closing`` and reads ``_loop``, and ``_bind()`` sets ``_loop``
    before its loop first polls or keeps state of the handle, unless closed.
    The lock is reentrant: a signal handler's close() may run on a thread
    that holds it.

    Subclasses give ``_check_open()`` (ValueError naming the handle once
    closed; it must read ``_closing``) and an idempotent ``_release()``;
    ``_close_now()`` is what close() does at once on the calling thread.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    def close(self) -> None:
        """Close the handle (idempotent, any thread): awaiting calls raise ValueError (closed)."""
        with self._lock:
            self._closing = True
            loop = self._loop
        self._close_now()
        on_loop_thread(loop, self._release)  # unregistered there, before the fds close

    def _close_now(self) -> None:
        pass

    def _release(self) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    def _bind(self) -> None:
        """Before the running loop first polls or keeps state of the handle: ValueError if closed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            with self._lock:
                self._check_open()
                self._loop = loop
                self._check_open()  # a signal handler's close() may have run in between


class Waiters:
    """The coroutines of one loop waiting for one fd to poll ready.

    One add_reader/add_writer per fd; each waiter has its own future, set
    when the fd fires (result True) or by its backstop timer (False).
    ``drain``: the fd is a doorbell whose bytes must be read away (a
    level-triggered FIFO would fire forever). ``lazy`` (for fds we own,
    the bells): the registration outlives the last waiter until the fd next
    fires with nobody waiting; then it is removed and the fd left as it is (a
    bell's bytes are then for other processes' watchers, not ours to drain).
    That saves two epoll_ctl calls per wait when waits follow each other
    closely. Not for a socket the sync channel owns: it may be closed when
    collected, and the loop must never keep polling a closed fd number.
    """

    def __init__(
        self, fd: int, write: bool, drain_it: bool, lazy: bool = False, linger: bool = False
    ) -> None:
        self.fd = fd
        self.write = write
        self.drain_it = drain_it
        self.lazy = lazy
        self.linger = linger
        self.loop: asyncio.AbstractEventLoop | None = None
        self.futs: set[asyncio.Future[bool]] = set()
        self.registered = False
        #: An unregistering is due at the loop's next turn (see discard).
        self.parting = False

    def add(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
        if self.loop is not loop:
            if self.futs:
                raise RuntimeError("a fastipc handle is awaited from two event loops at once")
            self._unregister()
            self.loop = loop
            self.parting = False  # a _part left queued on a loop closed since runs no more
        fut: asyncio.Future[bool] = loop.create_future()
        if not self.registered:
            if self.write:
                loop.add_writer(self.fd, self._fire)
            else:
                loop.add_reader(self.fd, self._fire)
            self.registered = True
        self.futs.add(fut)
        return fut

    def discard(self, fut: asyncio.Future[bool]) -> None:
        self.futs.discard(fut)
        if self.futs or self.lazy:
            return
        if self.linger and self.registered:
            # Not now but at the loop's next turn, if no wait came meanwhile: a
            # receive that returns and awaits again (a ping-pong, `async for`)
            # keeps its registration, saving the selector two epoll_ctl calls
            # and ~10 µs of Python a wait. The owner unregisters at once (close)
            # if its socket closes meanwhile (see aio.Channel._sync_failed).
            if self.parting:
                return
            loop = self.loop
            if loop is not None and not loop.is_closed():
                self.parting = True
                loop.call_soon(self._part)
                return
        self._unregister()

    def _part(self) -> None:
        self.parting = False
        if not self.futs:
            self._unregister()

    def _unregister(self) -> None:
        if self.registered and self.loop is not None and not self.loop.is_closed():
            if self.write:
                self.loop.remove_writer(self.fd)
            else:
                self.loop.remove_reader(self.fd)
        self.registered = False

    def _fire(self) -> None:
        if not self.futs:
            self._unregister()  # nobody here waits: leave the bell's bytes to others
            return
        if self.drain_it:
            drain(self.fd)
        self.wake_all(True)

    def wake_all(self, result: bool) -> None:
        for fut in self.futs:
            # A closed loop's futures wake nobody (and set_result would raise).
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(result)

    def close(self) -> None:
        """Wake everyone (they re-check and meet the closed handle) and stop watching the fd.

        Call on the loop's thread, before the fd is closed."""
        self.wake_all(False)
        self._unregister()
        self.futs.clear()

    def close_fd(self) -> None:
        """close(), then close the fd (ours). On the loop's thread, or once the loop is closed."""
        self.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def sleep_on(
    w: Waiters, deadline: float | None, on_leave: Callable[[bool], None] | None = None
) -> bool:
    """Wait for ``w``'s fd, the backstop or ``deadline``; return whether the fd fired.

    ``on_leave(woken)`` runs if the wait is cancelled (woken: the fd had fired).
    """
    loop = asyncio.get_running_loop()
    fut = w.add(loop)
    delay = BACKSTOP if deadline is None else min(BACKSTOP, max(0.0, deadline - monotonic()))
    timer = loop.call_later(delay, set_false, fut)
    try:
        return await fut
    except asyncio.CancelledError:
        if on_leave is not None:
            on_leave(fut.done() and not fut.cancelled() and fut.result())
        raise
    finally:
        timer.cancel()
        w.discard(fut)


def set_false(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Held:
    """One open recv_view/reserve block per handle: other tasks' calls on it wait until it ends
    (the sync handle refuses, or would wait on its own lock, inside such a block).

    The task that opened the block goes on: its calls meet the sync handle
    inside a block of this thread, as sync code would (RuntimeError for the
    block's side and for another block, the other side works).
    """

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None
        self.task: asyncio.Task[Any] | None = None

    async def wait_free(self, deadline: float | None) -> None:
        """Wait until no other task's block is open, or until close(); asyncio.TimeoutError
        past ``deadline``."""
        while (fut := self.fut) is not None and self.task is not asyncio.current_task():
            left = None if deadline is None else deadline - monotonic()
            if left is not None and left <= 0:
                raise asyncio.TimeoutError
            await asyncio.wait_for(asyncio.shield(fut), left)

    def take(self) -> None:
        self.fut = asyncio.get_running_loop().create_future()
        self.task = asyncio.current_task()

    def give_back(self) -> None:
        fut, self.fut = self.fut, None
        self.task = None
        if fut is not None and not fut.done() and not fut.get_loop().is_closed():
            fut.set_result(None)

    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop of the open block's waiters, if a block is open."""
        fut = self.fut
        return None if fut is None else fut.get_loop()
