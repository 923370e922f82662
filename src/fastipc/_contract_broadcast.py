"""The contract both broadcast backends implement: BroadcastBase (publisher) and SubscriberBase.

As ``_contract.RingBase`` does for Ring: each base class documents the
interface (the docstrings users read through the public ``Broadcast`` and
``Subscriber``, which subclass the chosen backend's classes) and holds the
behaviour both backends share. Ground floor: imports only errors, _checks,
_names and _contract's doorbell helper.

Shared semantics (both backends):

* A subscriber joins at the newest message: it receives what is published
  after ``subscribe`` returned, each message once, in publish order.
* ``policy="overwrite"``: publishers never wait for subscribers, except for a
  subscriber's open ``recv_view`` block, which pins its message (a publisher
  that would overwrite the pinned bytes waits for the block to end, within
  its timeout). A subscriber overrun by a full ring gets :class:`Lagged`
  once (``missed``: messages lost), then the oldest message still kept.
* ``policy="block"``: publishers wait until the slowest live subscriber has
  left room. A subscriber whose process died has its slot reclaimed (owner
  pid and start time, as the ring lock checks its owner), so it never
  stalls publishers.
* Readiness: each subscriber slot has its own doorbell FIFO
  (``_names.subscriber_bell_path``), made (if missing) and held by the
  subscriber from ``subscribe`` on, rung after a publish while the slot's
  watcher count in the segment is non-zero (see :meth:`SubscriberBase.watch`).
  Publishers open a slot's FIFO the first time they ring it but never make
  one: a missing one is a removed ring's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from ._contract import drain, keep_bell_fd
from ._names import unlink_ring
from .errors import Closed, FastIPCError

__all__ = [
    "MAX_BROADCAST_CAPACITY",
    "MAX_SUBSCRIBERS",
    "POLICIES",
    "BroadcastBase",
    "SubscriberBase",
]

_B = TypeVar("_B", bound="BroadcastBase")
_S = TypeVar("_S", bound="SubscriberBase")

#: The accepted ``policy`` values, in the order their codes are stored (0, 1).
POLICIES = ("overwrite", "block")
#: Most subscriber slots a broadcast ring may have.
MAX_SUBSCRIBERS = 4096
#: The largest broadcast ring capacity (bytes): a record, its header and
#: padding to a cache line included, keeps a 32-bit size (csrc/broadcast.c's
#: BC_MAX_CAPACITY); a little less than a Ring's.
MAX_BROADCAST_CAPACITY = (1 << 32) - 256


class BroadcastBase:
    """What every broadcast backend's publisher provides; see :class:`fastipc.Broadcast`."""

    #: The name given at creation (``/dev/shm/fastipc.NAME`` holds the segment).
    name: str
    #: The largest message, in bytes, the ring accepts; also its payload space.
    capacity: int
    #: ``"overwrite"`` or ``"block"`` (see the class docstring).
    policy: str
    #: How many subscriber slots the ring has (``subscribers=`` at creation).
    max_subscribers: int

    def __init__(self, *_: object) -> None:
        raise TypeError(
            "Broadcast(...) is not how a broadcast ring is made: use "
            "Broadcast.create(name, capacity) for a new one, Broadcast.open(name) to publish "
            "on an existing one, or Broadcast.subscribe(name) to receive"
        )

    # ---- the interface each backend implements --------------------------
    @classmethod
    def _create(
        cls: type[_B], name: str, capacity: int, subscribers: int, policy: str, mode: int
    ) -> _B:
        """Create the segment (every argument already checked); a publisher handle on it.

        Raises FileExistsError if the name is taken, OSError if the OS refuses.
        """
        raise NotImplementedError

    @classmethod
    def _open(cls: type[_B], name: str, owners: frozenset[int] | None = None) -> _B:
        """A publisher handle on the existing segment ``name`` (checked) owned by ``owners``.

        Raises FileNotFoundError, PermissionError, OSError(ELOOP) for a
        symlink, IncompatibleSegment for anything but a broadcast ring of
        this backend (naming what it is and which class or backend opens it).
        """
        raise NotImplementedError

    def publish(self, data: Any, timeout: float | None = None) -> None:
        """Publish one message (any C-contiguous bytes-like object) to every subscriber.

        Under ``block`` waits while the slowest live subscriber has no room
        for it; under ``overwrite`` waits only for a view pinning the bytes it
        would overwrite. ``timeout`` in seconds (None: no limit, 0: never wait).
        Raises :class:`~fastipc.Full` (a :class:`~fastipc.Timeout`),
        :class:`~fastipc.MessageTooLarge` if ``len(data) > capacity``,
        :class:`~fastipc.Closed` after :meth:`shutdown`, TypeError for str and
        other non-buffers, ValueError on a closed handle.
        """
        raise NotImplementedError

    def publish_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        """Publish every message of ``messages`` in order; return how many (all of them).

        Every item is checked before any is published (TypeError,
        MessageTooLarge). If the deadline passes or the ring is shut down
        midway, the raised :class:`~fastipc.Full` / :class:`~fastipc.Closed`
        carries ``sent``: how many were published.
        """
        raise NotImplementedError

    def reserve(
        self, nbytes: int, timeout: float | None = None
    ) -> AbstractContextManager[memoryview]:
        """Context manager yielding a writable ``nbytes`` view inside the ring.

        The message is published when the block exits normally, and
        discarded if it raises. Other publishers wait while the block runs.
        Waits for room like :meth:`publish`. Raises as :meth:`publish`.
        """
        raise NotImplementedError

    def shutdown(self) -> None:
        """Refuse further publishes (:class:`~fastipc.Closed`) and wake every waiter.

        Subscribers receive what the ring still keeps for them, then
        :class:`~fastipc.Closed`. Irreversible for the life of the segment.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release this handle (idempotent); the ring lives on until unlinked.

        May be called from any thread: a call blocked in another thread wakes
        and raises ValueError ("... is closed").
        """
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called on this handle."""
        raise NotImplementedError

    @property
    def subscribers(self) -> int:
        """How many subscribers are attached now (slots held by live processes; a snapshot)."""
        raise NotImplementedError

    def _room(self) -> int:
        """Free bytes before the slowest live subscriber (block) or the oldest kept
        message (overwrite): the longest message a publish could add now without
        waiting or dropping one; -1 if not even an empty one fits."""
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------
    #: Set by ``Broadcast.create(..., unlink_on_exit=True)``: ``with`` removes the ring.
    _unlink_on_exit = False

    def free_bytes(self) -> int:
        """The longest message (bytes) a publish could add now without waiting or dropping one.

        A snapshot, at most ``capacity``. Raises ValueError on a closed handle.
        """
        return max(self._room(), 0)

    def __bool__(self) -> bool:
        return True

    def unlink(self) -> None:
        """Remove this ring's name and OS objects; open handles keep working until closed."""
        try:
            unlink_ring(self.name)
        except FileNotFoundError:
            pass

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._unlink_on_exit:
                self.unlink()
        finally:
            self.close()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # A handle is process-local; another process re-opens the ring by name.
        return (type(self).open, (self.name,))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} {self.name!r} closed>"
        return (
            f"<{type(self).__name__} {self.name!r} capacity={self.capacity} "
            f"policy={self.policy!r} max_subscribers={self.max_subscribers}>"
        )


class SubscriberBase:
    """What every broadcast backend's subscriber provides; see :class:`fastipc.Subscriber`."""

    #: The broadcast ring's name.
    name: str
    #: The largest message, in bytes, the ring accepts.
    capacity: int
    #: The ring's policy, ``"overwrite"`` or ``"block"``.
    policy: str
    #: How many subscriber slots the ring has.
    max_subscribers: int
    #: This subscriber's slot index (0 .. max_subscribers - 1), for inventory and bells.
    _slot: int = -1
    #: Uids trusted as owners of the ring's objects (``owners`` of subscribe).
    _owners: frozenset[int] | None = None

    def __init__(self, *_: object) -> None:
        raise TypeError("use Broadcast.subscribe(name) to make a Subscriber")

    # ---- the interface each backend implements --------------------------
    @classmethod
    def _subscribe(cls: type[_S], name: str, owners: frozenset[int] | None = None) -> _S:
        """Take a free subscriber slot of ring ``name`` (checked), positioned at the newest.

        A slot whose owner process is dead is reclaimed. Raises as
        ``BroadcastBase._open``, and OSError(EUSERS) (see
        ``errors.broadcast_error``) when every slot is held by a live subscriber.
        """
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> bytes:
        """Return the next message.

        Blocks while none is waiting. ``timeout`` in seconds (None: no
        limit, 0: never wait). Raises :class:`~fastipc.Empty` (a
        :class:`~fastipc.Timeout`), :class:`~fastipc.Lagged` once if messages
        were overwritten before this subscriber read them (the next call
        returns the oldest kept), :class:`~fastipc.Closed` once the ring is
        shut down and everything kept for this subscriber was received,
        ValueError on a closed handle.
        """
        raise NotImplementedError

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the next message into writable ``buffer``; return its length in bytes.

        A message longer than ``buffer`` is not consumed and
        :class:`~fastipc.MessageTooLarge` is raised. Otherwise as :meth:`recv`.
        """
        raise NotImplementedError

    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        """Return between 1 and ``max_count`` messages, in order.

        Waits only for the first; takes the rest that are already there.
        Raises as :meth:`recv` (Lagged only when it is noticed before the
        first message of the batch; the batch then is the next call's).
        """
        raise NotImplementedError

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Context manager yielding a read-only view of the next message, in place.

        The message is consumed when the block exits, raised or not. While
        the block runs the message is pinned: no publisher overwrites it (a
        publisher that needs its space waits, within its timeout, under
        either policy). A message that wraps around the end of the ring is
        a copy. Do not keep the view past the block: reading it later never
        faults but may see other data. Raises as :meth:`recv`;
        RuntimeError for a second view on this handle while one is open.
        ``hash(view)`` differs between backends (TypeError on native): hash
        ``bytes(view)``.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Give the slot back (idempotent). From any thread: a blocked call wakes (ValueError)."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called on this handle."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Messages waiting for this subscriber (a snapshot; lost ones not counted)."""
        raise NotImplementedError

    @property
    def missed(self) -> int:
        """Total messages this subscriber lost to overwrite since it subscribed."""
        raise NotImplementedError

    def _watch(self, delta: int) -> int:
        """Add ``delta`` to this slot's watcher count in the segment; return the new count.

        While it is non-zero, publishers ring this slot's bell after each publish.
        """
        raise NotImplementedError

    def _poll(self) -> bool:
        """True if a receive would not wait now (a message, a lag to report, or shut down)."""
        raise NotImplementedError

    def _open_bell(self) -> int:
        """A new fd (owned by the caller) on this slot's doorbell FIFO: a duplicate
        (``_contract.dup_bell``) of the bell the subscriber opened (making it) as it
        took its slot, never the FIFO reopened by path. ValueError once closed."""
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------
    #: The fd ``fileno()`` made (a duplicate of the slot's bell), or -1.
    _bell_fd: int = -1
    #: Watches this handle holds (undone by close()), and the pid that made them.
    _watching: int = 0
    _watch_pid: int = 0

    def __bool__(self) -> bool:
        # Always true: without this, len() would make an idle subscriber falsy.
        return True

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the ring is shut down and drained (Lagged propagates)."""
        while True:
            try:
                yield self.recv()
            except Closed:
                return

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Subscriber cannot be pickled or sent to another process: its slot belongs to "
            "this process; call Broadcast.subscribe(name) in the other process"
        )

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} {self.name!r} closed>"
        return f"<{type(self).__name__} {self.name!r} slot={self._slot} policy={self.policy!r}>"

    def readable(self) -> bool:
        """True if a receive would not wait now. A snapshot; never blocks.

        Raises ValueError on a closed handle.
        """
        return self._poll()

    def fileno(self) -> int:
        """An fd that becomes readable when a message may be waiting: this subscriber's doorbell.

        For selectors, epoll and event loops. Owned by this handle (closed
        by :meth:`close`): made on the first call as a duplicate of the slot's
        bell the subscriber opened as it subscribed, so it is the FIFO the
        publishers ring even if the ring was removed (or made anew under its
        name) since; nothing is made in /dev/shm. It is non-blocking, with
        flags of its own (reopened through /proc/self/fd). Every call returns
        the same fd. It is rung only while this
        subscriber is registered as a watcher: wrap the wait in ``with
        sub.watch():`` and, once the fd polls readable, drain it and receive
        with ``timeout=0``. A readable fd is a hint. Raises ValueError on a
        closed handle, OSError (e.g. EMFILE) if the fd cannot be duplicated.
        """
        if self.closed:
            raise ValueError(f"broadcast ring {self.name!r}: subscriber is closed")
        if self._bell_fd < 0:
            keep_bell_fd(self, self._open_bell())
            if self._bell_fd < 0:
                raise ValueError(f"broadcast ring {self.name!r}: subscriber is closed")
        return self._bell_fd

    @contextmanager
    def watch(self) -> Iterator[bool]:
        """Context manager: register as a watcher of :meth:`fileno` for the block.

        Yields :meth:`readable` as re-checked *after* registering: if False,
        a message published from then on rings the fd, so a wait on the fd
        cannot miss it. Undone at the block's exit and by :meth:`close`.
        """
        fd = self.fileno()
        drain(fd)
        registered: list[int] = []
        try:
            registered += map(self._watch_add, (1,))
            yield self.readable()
        finally:
            if registered and not self.closed:
                self._watch_add(-1)

    def _watch_add(self, delta: int) -> int:
        count = self._watch(delta)
        if self._watch_pid != os.getpid():
            self._watching = 0
            self._watch_pid = os.getpid()
        self._watching += delta
        return count

    def _unwatch_all(self) -> None:
        """Undo this handle's registrations and close the bell fd (close() calls it first)."""
        w, self._watching = self._watching, 0
        if w > 0 and self._watch_pid == os.getpid():
            try:
                self._watch(-w)
            except (ValueError, OSError, FastIPCError):
                pass  # a count left high costs only spurious wake-ups
        fd, self._bell_fd = self._bell_fd, -1
        if fd >= 0:
            os.close(fd)
