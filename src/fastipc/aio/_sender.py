"""The thread that makes an aio.Channel's sync sends that may block (tcp, large frames)."""

from __future__ import annotations

import asyncio
import queue
import threading
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
    Thread.start waiting for it to run) cost ~100 µs a send on the loop's
    thread. The channel's send turn keeps at most one call here at a time.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]
        ] = queue.SimpleQueue()
        # Under _lock: whether a thread serves _calls. A thread that found
        # none for IDLE seconds ends under it only if none came meanwhile.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, call: Callable[[], _T]) -> asyncio.Future[_T]:
        """Run ``call`` on the thread; a future of the running loop for its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        with self._lock:
            self._calls.put((loop, fut, call))
            thread = self._thread
            # Not alive after a fork: the child has none of its parent's threads.
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._serve, name="fastipc-aio-send", daemon=True)
                self._thread = thread
                thread.start()
        return fut

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
