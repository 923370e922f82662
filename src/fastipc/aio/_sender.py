"""The thread that makes an aio.Channel's sync sends that may block (tcp, large frames)."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["IDLE", "Sender"]

_T = TypeVar("_T")

#: Seconds a sender thread waits for its next send before it ends (the next
#: send starts another): a channel that sends often keeps one thread, and an
#: idle one (a server's thousand quiet peers) keeps none.
IDLE = 2.0


class Sender:
    """One daemon thread of a channel's own, started at its first send and kept while sends come.

    Not the loop's default executor: its threads are joined when asyncio.run
    ends, and it is shared with getaddrinfo, which stalled sends would
    starve. Not a thread per send either: starting one (clone, and
    Thread.start waiting for it to run) cost ~70-100 µs a send on the
    loop's thread (benchmarks/RESULTS.md). Calls run in the order they come (the channel's send turn gives
    them one at a time; an abandoned one may still run when the next, on the
    closed channel, comes).
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]
        ] = queue.SimpleQueue()
        # Under _lock: whether a thread serves _calls. A thread that found
        # none for IDLE seconds ends under it only if none came meanwhile.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    def _after_fork(self) -> None:
        # The child has none of its parent's threads, and the lock may have
        # been held by one (the thread ending idle) at the fork.
        self._calls = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread = None

    def submit(self, call: Callable[[], _T], fut: asyncio.Future[_T]) -> None:
        """Run ``call`` on the thread; ``fut`` (of the running loop) gets its result.

        The caller makes ``fut`` and holds it before handing it over, so that
        whatever cuts the hand-over short finds it there (see aio.Channel).
        """
        loop = fut.get_loop()
        fut.add_done_callback(_seen)
        with self._lock:
            self._calls.put((loop, fut, call))
            thread = self._thread
            # Not alive after a fork: the child has none of its parent's threads.
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._serve, name="fastipc-aio-send", daemon=True)
                self._thread = thread
                thread.start()

    def _serve(self) -> None:
        calls = self._calls
        while True:
            try:
                loop, fut, call = calls.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if calls.empty():
                        self._thread = None
                        return
                continue
            try:
                result: Any = (True, call())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                result = (False, exc)
            del call
            try:
                loop.call_soon_threadsafe(_settle, fut, *result)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits it any more
            del loop, fut, result  # hold nothing of a send while idle


_LIVE: weakref.WeakSet[Sender] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for sender in list(_LIVE):
        sender._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


def _seen(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # seen here: an abandoned send's failure is expected, not logged


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
        # Seen here: it reaches the awaiting send, or the send was abandoned
        # (cancelled, channel closed) and it is expected. Left unseen, the
        # future's finaliser would log it, formatting a traceback (ast.parse
        # in 3.11) from inside whatever code the garbage collector interrupted.
        fut.exception()
