"""fastipc.wait: a select() for fastipc objects (rings, channels, listeners, anything with fileno)."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from ._checks import timeout_ns
from ._contract import ChannelBase, RingBase, drain
from ._contract_broadcast import SubscriberBase

__all__ = ["wait"]

_O = TypeVar("_O")

#: A ring's watcher re-checks this often (seconds) even if its bell stays silent
#: (a producer killed between its publish and its look at the watcher count).
BACKSTOP = 0.2


def wait(objects: Iterable[_O], timeout: float | None = None) -> list[_O]:
    """Wait until at least one of ``objects`` is ready to receive; return the ready ones, in order.

    Ready means: a :class:`~fastipc.Ring` or :class:`~fastipc.Subscriber`
    has a message (or is shut down, so a receive raises Closed at once; a
    subscriber also when it has a lag to report); a :class:`~fastipc.Channel` has a
    whole message buffered or its socket is readable (data, or the peer
    closed); anything else with ``fileno()`` (a Listener, a socket, an fd
    as int) polls readable. ``timeout`` in seconds (None: forever, 0: just
    look); on timeout the list is empty. Readiness is a hint when others
    take from the same object: receive with ``timeout=0``. An ``aio`` object
    counts by its ``.sync`` handle.

    Rings and subscribers are watched through their doorbells
    (``watch()``), so the wait costs their producers a syscall per message
    only while it lasts.
    Raises ValueError for a closed object, TypeError for an object that
    cannot be waited on, OSError.
    """
    objs = list(objects)
    wait_ns = timeout_ns(timeout)  # -1: None, inf, or centuries: no deadline
    until = None if wait_ns < 0 else time.monotonic() + wait_ns / 1e9
    handles: list[Any] = [getattr(o, "sync", o) for o in objs]
    rings = [h for h in handles if isinstance(h, _BELLED)]
    registered: list[Any] = []
    try:
        for ring in rings:
            fd = ring.fileno()
            drain(fd)
            registered += map(_register, (ring,))
        poller = select.poll()
        fds: dict[int, list[int]] = {}
        for i, h in enumerate(handles):
            fd = h.fileno() if not isinstance(h, int) else h
            if not isinstance(fd, int):
                raise TypeError(f"cannot wait on {type(objs[i]).__name__}: fileno() is not an int")
            if fd not in fds:
                poller.register(fd, select.POLLIN)
            fds.setdefault(fd, []).append(i)
        fired: list[tuple[int, int]] = []
        while True:
            ready_idx: set[int] = set()
            for fd, _ in fired + poller.poll(0):
                for i in fds[fd]:
                    if isinstance(handles[i], _BELLED):
                        drain(fd)  # its bytes only say "look again": readable() decides
                    else:
                        ready_idx.add(i)
            ready = [objs[i] for i, h in enumerate(handles) if i in ready_idx or _ready_now(h)]
            if ready:
                return ready
            polled = _poll(poller, until)
            if polled is None:
                return []
            fired = polled
    finally:
        for ring in registered:
            if ring.closed:
                continue
            left = _unregister(ring)
            # We took nothing, but may have drained a bell another watcher
            # needed: if a message waits and others watch, ring it again.
            if left > 0 and ring.readable():
                try:
                    os.write(ring.fileno(), b"\0")
                except OSError:
                    pass


#: What is waited on through a doorbell: a ring's receive side, a subscriber's slot.
_BELLED = (RingBase, SubscriberBase)


def _register(handle: Any) -> Any:
    if isinstance(handle, RingBase):
        handle._watch_add(0, 1)
    else:
        handle._watch_add(1)
    return handle


def _unregister(handle: Any) -> int:
    """Undo _register; the watchers left."""
    if isinstance(handle, RingBase):
        return handle._watch_add(0, -1)
    return handle._watch_add(-1)  # type: ignore[no-any-return]


def _ready_now(h: Any) -> bool:
    if isinstance(h, _BELLED):
        return h.readable()
    if isinstance(h, ChannelBase):
        return h.pending()
    return False


def _poll(poller: select.poll, until: float | None) -> list[tuple[int, int]] | None:
    """One poll of at most BACKSTOP seconds; None once ``until`` passed with nothing."""
    while True:
        if until is None:
            wait_s = BACKSTOP
        else:
            left = until - time.monotonic()
            wait_s = min(max(left, 0.0), BACKSTOP)
        fired = poller.poll(int(wait_s * 1000 + 0.999))
        if fired:
            return fired
        if until is not None and time.monotonic() >= until:
            return None
        if until is None or wait_s == BACKSTOP:
            return []  # the backstop: re-check the rings
