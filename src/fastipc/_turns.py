"""One receive and one send at a time per handle: what lets threads share a Channel or Ring.

A native handle receives into one scratch buffer and slices the message out
of it after the C call; a channel's send may put a long frame out in
several writes. Two threads inside such calls on one handle at once would
hand one of them the other's bytes, or interleave two frames on the wire:
a fabricated message. So each side of a handle takes its turn
(a ``threading.RLock``, uncontended: ~50 ns a call; reentrant, so a
method may call another of the same side): a second thread waits for
the first one's call to end, within its own ``timeout`` (``timeout=0``:
it does not wait; the call raises its Timeout as if it would have to).
Sending and receiving never wait for each other.

A raising signal handler can only leave a turn taken if it raises in the
instant between the lock being taken and the ``try`` that gives it back,
the window every ``with lock:`` has; the handle's next call on that side
would then wait until its timeout.

A child made by ``fork()`` gets fresh turns for every handle it inherited
(another thread's turn, held at the fork, has nobody to give it back there).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ._checks import timeout_ns
from .errors import timed_out

__all__ = ["RX", "TX", "in_turn", "new_turns", "one_at_a_time"]

RX, TX = "_rx_turn", "_tx_turn"

_F = TypeVar("_F", bound=Callable[..., Any])

# Every object whose turns were made here, to renew them in a forked child.
_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def new_turns(obj: Any) -> None:
    """Give ``obj`` its receive and send turns (call once, when the handle is made)."""
    obj._rx_turn = threading.RLock()
    obj._tx_turn = threading.RLock()
    _holders.add(obj)


def _renew_after_fork() -> None:
    for obj in list(_holders):
        obj._rx_turn = threading.RLock()
        obj._tx_turn = threading.RLock()


os.register_at_fork(after_in_child=_renew_after_fork)


def one_at_a_time(side: str) -> Callable[[_F], _F]:
    """Make a handle's method wait for its ``side`` (RX or TX) turn; it must take ``timeout``.

    The uncontended path is one non-blocking acquire; a contended call waits
    for the turn within its timeout (seconds) and passes on what is left.
    """
    sending = side == TX

    def wrap(method: _F) -> _F:
        params = list(inspect.signature(method).parameters)
        at = params.index("timeout") - 1  # its position among the arguments after self

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            turn = getattr(self, side)
            if turn.acquire(False):
                try:
                    return method(self, *args, **kwargs)
                finally:
                    turn.release()
            positional = len(args) > at
            timeout = args[at] if positional else kwargs.get("timeout")
            left = _wait_turn(self, turn, timeout, sending)
            try:
                if positional:
                    args = (*args[:at], left, *args[at + 1 :])
                else:
                    kwargs["timeout"] = left
                return method(self, *args, **kwargs)
            finally:
                turn.release()

        return call  # type: ignore[return-value]

    return wrap


def _wait_turn(handle: Any, turn: Any, timeout: float | None, sending: bool) -> float | None:
    """Take ``turn`` within ``timeout`` seconds; the seconds left (None: no deadline)."""
    if timeout_ns(timeout) < 0:  # None or inf; raises for a bad timeout, as the call would
        turn.acquire()
        return None
    assert timeout is not None
    start = time.monotonic()
    if timeout == 0 or not turn.acquire(timeout=timeout):
        what = type(handle).__mro__[0].__name__.lower()
        raise timed_out(f"{what} {getattr(handle, 'name', '')!r} (another thread's call)", sending)
    return max(0.0, timeout - (time.monotonic() - start))


def in_turn(
    handle: Any, turn: Any, sending: bool, call: Callable[..., Any], timeout: float | None, *args: Any
) -> Any:
    """The contended path of an inlined turn: wait for ``turn`` within ``timeout``,
    then ``call(*args, timeout=left)`` holding it (``call`` takes it again: reentrant)."""
    left = _wait_turn(handle, turn, timeout, sending)
    try:
        return call(*args, timeout=left)
    finally:
        turn.release()
