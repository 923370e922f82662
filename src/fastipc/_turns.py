"""One receive and one send at a time per handle: what lets threads share a Channel.

A native handle receives into one scratch buffer and slices the message out
of it after the C call; a channel's send may put a long frame out in
several writes. Two calls inside one side of a handle at once would hand
one of them the other's bytes, or interleave two frames on the wire: a
fabricated message. So each side of a handle takes its turn, a
:class:`Turn`, whose ``free`` slot is set while the side is free.
``del turn.free`` takes it (AttributeError: taken) and ``turn.free = True``
gives it back: about 20 ns for both, uncontended, against about 115 ns for
an RLock's non-blocking acquire and release on CPython 3.11 (whose
``acquire(False)`` parses its arguments every call).
The hot methods write the pattern inline, marked with :func:`takes_turn`;
the others use :func:`one_at_a_time`:

    @takes_turn(TX)
    def send(self, data, fds=(), timeout=None):
        turn = self._tx_turn
        try:
            del turn.free
        except AttributeError:  # contended: wait for it, then go on with the time left
            timeout = turn.wait_take(self, TX, timeout)
        try:
            ...
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

A second thread waits for the first one's call to end, within its own
``timeout`` (``timeout=0``: it does not wait; the call raises its Timeout
as if it would have to), and takes the turn. Waiters queue: a call giving
the turn back while one waits hands it to the oldest (:meth:`Turn.wake`),
since the giver still holds the GIL and its next call would otherwise take
it again first, for ever. Sending and receiving never wait for each other.

A turn is not reentrant. A call that finds its side taken by a call its
own thread is already in (one a signal handler interrupted, or a method
calling another of its side, which fastipc's own methods do not) raises
RuntimeError, rather than write its frame into the middle of the
interrupted one (what an RLock let it do) or wait for itself forever;
``io.BufferedWriter`` answers a reentrant write the same way. Who holds
the turn is not recorded (that would cost every call a thread-id lookup):
a contended call looks for such a call up its own stack instead.

Why slot opcodes and not calls (``list.pop()``/``append()``, a lock's
``acquire()``): CPython runs signal handlers right after a call returns,
so a handler raising right after a taking call would leave the method
holding the token outside the ``try`` that gives it back. From the ``del``
to that ``try``, and from the ``finally`` to the store, CPython 3.10+ runs
no handler: measured, a raising handler every 30 us never lost the token
on 3.10-3.13, where a list ``pop()`` lost it in about half the
interrupted calls. CPython 3.9 checks for signals between any two
opcodes; there, and for any instant not foreseen, a waiter that finds no
thread in a call holding the turn twice in a row (it looks every 20 ms)
gives it back, so a lost turn delays the next call on that side, never
hangs it.

A child made by ``fork()`` gets fresh turns for every handle it inherited
(another thread's turn, held at the fork, has nobody to give it back there).
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, TypeVar

from ._checks import timeout_ns
from .errors import timed_out

__all__ = [
    "ANY",
    "BUFFERS",
    "RX",
    "TX",
    "Turn",
    "inside_a_call",
    "new_turns",
    "one_at_a_time",
    "reentrant_call",
    "refuse_or_free",
    "takes_turn",
]

RX, TX = "_rx_turn", "_tx_turn"

#: The side mark of a method that takes every turn of its handle (a close()).
ANY = "*"

#: The side name of a receive handle's own buffers (a ring's or subscriber's
#: scratch and batch buffer, sliced after the C call), marked on the methods
#: that set their busy flag: a signal handler receiving on the handle whose
#: receive it interrupted gets RuntimeError instead of refilling the buffer
#: being sliced (see refuse_or_free).
BUFFERS = "_buffers"

_F = TypeVar("_F", bound=Callable[..., Any])

#: A waiter wakes at least this often (seconds) to look again: a missed
#: wake-up can delay it by this much, never hang it.
_WAIT_SLICE = 0.02

# Every object whose turns were made here, to renew them in a forked child.
_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def reentrant_call(what: str, blocks: bool = False) -> RuntimeError:
    """The error for a call on ``what`` made while this thread is inside one on it:
    only a signal handler can do that (fastipc's own methods do not), or, with
    ``blocks``, the code of a reserve()/recv_view() block on the same handle."""
    where = "a call or a reserve()/recv_view() block" if blocks else "a call"
    return RuntimeError(
        f"reentrant call: this thread is already inside {where} on {what}, which a "
        "signal handler (or a block's own code) may not use again: give the handler a "
        "handle of its own or set a flag and act on it after the call returns; finish "
        "with a block's view before calling the handle again"
        if blocks
        else f"reentrant call: this thread is already inside {where} on {what} (a signal "
        "handler called it while the code it interrupted was in that call); a handler "
        "may not use a handle its own thread is using: give it a handle of its own, or "
        "set a flag and act on it after the call returns"
    )


class Turn:
    """One side of a handle, free while its ``free`` slot is set; its waiters
    queue (see the module docstring).

    ``waiting`` holds each waiting call's lock, oldest first (a deque: its
    truth test, all that giving the turn back costs while nobody waits, is
    no call). ``handed`` is the waiter the token is on its way to (see
    :meth:`wake`). ``block`` is the thread id of a reserve()/recv_view()
    block holding the turn, minus the thread id of an event loop whose
    coroutine holds a channel's send turn across awaits (a frame part-sent:
    ``ChannelBase._send_begin``), else 0. Such a block runs its caller's code with
    its generator suspended, on no thread's stack, so without it a waiter's
    look for a lost turn would take the turn from the block. No lock guards
    these: every check and the changes it decides are opcodes with no call
    between them, so no other thread (the GIL is only handed over where a
    signal handler could run) and no signal handler comes in between; a
    waiter sleeps on its own lock, released to wake it. (A
    ``threading.Condition`` would not do: its ``__enter__`` and ``wait`` are
    Python code, and a handler raising inside them leaves its lock taken or
    released out of turn.)
    """

    __slots__ = ("block", "free", "handed", "waiting")

    def __init__(self) -> None:
        self.free = True
        self.waiting: collections.deque[Any] = collections.deque()
        self.handed: Any = None
        self.block = 0

    def wake(self) -> None:
        """Hand the token, if free, to the oldest waiter and wake it (call after
        giving it back, when ``waiting``). Handed, not just freed: the giver
        still holds the GIL, and its next call would take it again before any
        waiter woke, for ever (measured: a send waited over 30 s)."""
        if self.waiting and self.handed is None:
            try:
                del self.free
            except AttributeError:
                return  # taken meanwhile, by a call that gives it back
            try:
                self.handed = waiter = self.waiting[0]
            except IndexError:  # (3.9 only: nobody left since the test above)
                self.free = True
                return
            try:
                waiter.release()
            except RuntimeError:
                pass  # woken already; it looks at ``handed`` before it sleeps again

    def wait_take(
        self,
        handle: Any,
        side: str,
        timeout: float | None,
        sending: bool | None = None,
        what: str | None = None,
        depth: int = 0,
        check: Callable[[], None] | None = None,
    ) -> float | None:
        """Take the turn, waiting for it within ``timeout`` seconds; the seconds left
        (None: no deadline). Call it from the method that found the turn taken.

        ``sending`` picks the Timeout's kind (default: ``side == TX``; None
        for a handle whose one turn serves both) and ``what`` names the
        handle in messages (default: its class and name). ``depth``: how
        many frames of the handle's own sit between the method and this call
        (they are skipped in the look for a reentrant call). ``check``, if
        given, runs before every sleep and may raise (say, the handle was
        closed while this call waited behind a view block).

        Raises RuntimeError if a call of this thread is inside ``side`` of
        ``handle`` (a reentrant call), and the call's Timeout (queue.Empty or
        queue.Full) when ``timeout`` runs out.
        """
        if side in (TX, RX):
            sending = side == TX
        if what is None:
            what = f"{type(handle).__mro__[0].__name__.lower()} {getattr(handle, 'name', '')!r}"
        if inside_a_call(sys._getframe(2 + depth), handle, side):
            doing = "" if sending is None else " (sending)" if sending else " (receiving)"
            raise reentrant_call(f"{what}{doing}")
        if self.block == -threading.get_ident():
            # Would wait for itself: only this thread's event loop can finish that send.
            raise RuntimeError(
                f"{what}: a send awaited on this thread's event loop (fastipc.aio) is "
                "part-way through a message; a blocking call on the loop's thread would "
                "wait for itself: await the aio.Channel's send instead"
            )
        forever = timeout_ns(timeout) < 0  # None or inf; raises for a bad timeout
        if not forever and timeout == 0:
            raise timed_out(f"{what} (another thread's call)", sending)
        deadline = None if forever else time.monotonic() + float(timeout)  # type: ignore[arg-type]
        me = threading.Lock()
        me.acquire()  # released by wake() to wake this call
        taken = False
        queued = True  # before the append: the removal below tolerates a missing lock
        suspect = 0
        # Every change of state is an opcode with no call after the one before
        # it (no signal handler runs in between), all inside this try; after
        # the take nothing is left to the finally.
        try:
            self.waiting.append(me)
            while True:
                if self.handed is me:
                    self.handed = None
                    taken = True
                    break
                try:
                    del self.free
                    taken = True
                    break
                except AttributeError:
                    pass
                if deadline is None:
                    left = _WAIT_SLICE
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise timed_out(f"{what} (another thread's call)", sending)
                if check is not None:
                    check()
                if me.acquire(True, min(left, _WAIT_SLICE)) or not _lost(self, handle, side):
                    suspect = 0
                else:
                    # Nobody holds it: lost to a handler that raised right after a
                    # take (CPython 3.9). Twice in a row, a slice apart, so that a
                    # thread taking it just after the look is not mistaken for that.
                    suspect += 1
                    if suspect == 2:
                        self.free = True
                        suspect = 0
            self.waiting.remove(me)
            queued = False
            rest = None if deadline is None else max(0.0, deadline - time.monotonic())
        except BaseException:
            if taken:  # e.g. Ctrl-C right after the take: give the turn back
                self.free = True
                if self.waiting:
                    self.wake()
            raise
        finally:
            if queued:  # leaving without the turn (or at the instant of the take, given back)
                if self.handed is me:  # first, no call before it: handed to this call
                    self.handed = None
                    self.free = True
                try:
                    self.waiting.remove(me)
                except ValueError:
                    pass
                if self.waiting:
                    self.wake()  # hand it on
        return rest


def _lost(turn: Turn, handle: Any, side: str) -> bool:
    """Whether ``turn`` is taken by no call at all: not on its way to a waiter,
    and no thread in a call on ``side`` of ``handle`` other than one waiting
    for it. Also drops the locks of waiters that are gone (and a hand-off to
    one), which only a signal handler raising at an unforeseen instant leaves.

    Only a signal handler raising in the instant after a call took the turn
    can lose it (CPython 3.9 has such instants; 3.10+ has none in fastipc's
    pattern), so a waiter looks every slice and puts the token back.
    """
    handed = turn.handed
    me = threading.get_ident()
    held = False
    live: set[int] = set()
    for tid, frame in sys._current_frames().items():
        if tid != me and _holds(frame, turn, handle, side):
            held = True
        f: FrameType | None = frame
        while f is not None:  # the locks of the calls still waiting, this one's too
            if f.f_code is _WAIT_TAKE and f.f_locals.get("self") is turn:
                live.add(id(f.f_locals.get("me")))
            f = f.f_back
    for gone in [w for w in turn.waiting if id(w) not in live]:
        try:
            turn.waiting.remove(gone)
        except ValueError:
            pass
    dead = handed is not None and id(handed) not in live
    if dead and turn.handed is handed:  # still (a dead waiter cannot take it): no call between
        turn.handed = None
        turn.free = True
        turn.wake()
    # The holder may have given it back meanwhile; an open view block holds it too.
    return not held and not hasattr(turn, "free") and turn.handed is None and not turn.block


def refuse_or_free(handle: Any, side: str, what: str, above: FrameType | None) -> bool:
    """For a receive that found its buffers' busy flag set: raise RuntimeError if
    this thread's stack from ``above`` up is in a call on ``side`` of ``handle``
    (a signal handler's reentrant call); else whether no other thread is either
    (True: the flag was left set by a handler raising after the C call, and
    the caller clears it)."""
    if inside_a_call(above, handle, side):
        raise reentrant_call(what)
    me = threading.get_ident()
    for tid, frame in sys._current_frames().items():
        if tid != me and inside_a_call(frame, handle, side):
            return False
    return True


def _holds(frame: FrameType | None, turn: Turn, handle: Any, side: str) -> bool:
    """Whether the stack ending in ``frame`` is in a call holding ``turn``."""
    waiting = False  # the frame below was this turn's wait_take, not yet taken
    while frame is not None:
        code = frame.f_code
        if code is _WAIT_TAKE:
            names = frame.f_locals
            waiting = names.get("self") is turn and not names.get("taken")
        elif code in _takers:
            names = frame.f_locals
            mine = names.get("self") is handle and (_takers[code] or names.get("side")) in (
                side,
                ANY,
            )
            if mine and not waiting:
                return True
            waiting = False
        frame = frame.f_back
    return False


_WAIT_TAKE = Turn.wait_take.__code__

#: The code of every method that takes a turn -> its side ("" for one_at_a_time's
#: wrapper, whose side is in its closure).
_takers: dict[CodeType, str] = {}


def takes_turn(side: str) -> Callable[[_F], _F]:
    """Mark a method that takes its ``side`` turn inline (costs nothing per call)."""

    def mark(method: _F) -> _F:
        _takers[method.__code__] = side
        return method

    return mark


def inside_a_call(frame: FrameType | None, handle: Any, side: str) -> bool:
    """Whether ``frame`` or one it was called from is a call on ``side`` of ``handle``."""
    while frame is not None:
        marked = _takers.get(frame.f_code)
        if marked is not None:
            names = frame.f_locals
            if names.get("self") is handle and (marked or names.get("side")) in (side, ANY):
                return True
        frame = frame.f_back
    return False


def new_turns(obj: Any) -> None:
    """Give ``obj`` its receive and send turns (call once, when the handle is made)."""
    obj._rx_turn = Turn()
    obj._tx_turn = Turn()
    _holders.add(obj)


def _renew_after_fork() -> None:
    for obj in list(_holders):
        obj._rx_turn = Turn()
        obj._tx_turn = Turn()


os.register_at_fork(after_in_child=_renew_after_fork)


def one_at_a_time(side: str) -> Callable[[_F], _F]:
    """Make a handle's method take its ``side`` (RX or TX) turn; it must take ``timeout``.

    The uncontended path is one ``del``; a contended call waits for the turn
    within its timeout (seconds) and runs with what is left.
    """

    def wrap(method: _F) -> _F:
        params = list(inspect.signature(method).parameters)
        at = params.index("timeout") - 1  # its position among the arguments after self

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            turn = getattr(self, side)
            try:
                del turn.free
            except AttributeError:
                positional = len(args) > at
                timeout = args[at] if positional else kwargs.get("timeout")
                left = turn.wait_take(self, side, timeout)
                if positional:
                    args = (*args[:at], left, *args[at + 1 :])
                else:
                    kwargs["timeout"] = left
            try:
                return method(self, *args, **kwargs)
            finally:  # inline: no call (and signal check) before the store
                turn.free = True
                if turn.waiting:
                    turn.wake()

        _takers[call.__code__] = ""  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return wrap
