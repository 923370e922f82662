"""aio.Subscriber: the awaitable face of a broadcast ring's fastipc.Subscriber."""

from __future__ import annotations

from typing import Any, cast

from ..broadcast import Broadcast as _SyncBroadcast
from ..broadcast import Subscriber as _SyncSubscriber
from ..errors import Timeout
from ._ring import _Awaiting

__all__ = ["Subscriber"]


class _AsRing:
    """A Subscriber seen through the calls aio's waiting makes on a ring's receive side.

    A subscriber has one side and one doorbell (its slot's): the ``side``
    arguments are the ring's shape, not choices here.
    """

    __slots__ = ("_sub",)

    def __init__(self, sub: _SyncSubscriber) -> None:
        self._sub = sub

    def _open_bell(self, side: int) -> int:
        return self._sub._open_bell()

    def _watch_add(self, side: int, delta: int) -> int:
        return self._sub._watch_add(delta)

    def _poll(self, side: int, nbytes: int) -> bool:
        return self._sub._poll()

    def _try_recv(self) -> bytes | None:
        try:
            return self._sub.recv(timeout=0)
        except Timeout:
            return None

    def __len__(self) -> int:
        return len(self._sub)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sub, name)


class Subscriber(_Awaiting):
    """An awaitable face of :class:`fastipc.Subscriber`; the sync handle is :attr:`sync`.

    ``await sub.recv()``, ``recv_many``, ``recv_into``, ``async with
    sub.recv_view()`` and ``async for msg in sub`` (ends when the broadcast
    ring is shut down and drained) never block the loop: the subscriber
    waits on its own slot's doorbell, which publishers ring only while it
    watches. Cancelling an await never loses a message: the take is a
    non-blocking call on the loop thread. An overrun subscriber's next
    receive raises :class:`~fastipc.Lagged` as the sync one does (and
    ``async for`` lets it through: catch it and iterate again to go on).
    ``close()`` (any thread) wakes awaiting calls with ValueError.
    """

    _ring: Any

    def __init__(self, sub: _SyncSubscriber) -> None:
        """Wrap sync ``sub`` (owned from now on: :meth:`close` closes it)."""
        if not isinstance(sub, _SyncSubscriber):
            raise TypeError(f"aio.Subscriber wraps a fastipc.Subscriber, not {type(sub).__name__}")
        super().__init__(cast(Any, _AsRing(sub)))
        self._sub = sub

    @classmethod
    def subscribe(cls, name: str, **kwargs: Any) -> Subscriber:
        """:meth:`fastipc.Broadcast.subscribe` (same arguments and errors), wrapped. Never waits."""
        return cls(_SyncBroadcast.subscribe(name, **kwargs))

    @property
    def sync(self) -> _SyncSubscriber:
        """The sync :class:`fastipc.Subscriber` this wraps."""
        return self._sub

    @property
    def missed(self) -> int:
        """Messages this subscriber lost to overwrite since it subscribed."""
        return self._sub.missed

    def __repr__(self) -> str:
        return f"<aio.Subscriber {self.name!r}{' closed' if self.closed else ''}>"
