"""Broadcast and Subscriber: a named shared-memory ring whose every message reaches every subscriber.

The public classes: the factories validate arguments and name segments; the
per-message work is inherited from the backend picked in
``fastipc._backend`` (C through cffi, or pure Python), which implements
``fastipc._contract_broadcast``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._checks import validate_capacity, validate_mode, validate_owners
from ._contract_broadcast import MAX_BROADCAST_CAPACITY, MAX_SUBSCRIBERS, POLICIES
from ._names import unlink_ring, validate_name
from .errors import IncompatibleSegment

if TYPE_CHECKING:
    from ._contract_broadcast import BroadcastBase as BroadcastImpl
    from ._contract_broadcast import SubscriberBase as SubscriberImpl
else:
    from ._backend import BroadcastImpl, SubscriberImpl

__all__ = ["Broadcast", "Subscriber"]


def _validate_subscribers(subscribers: object) -> int:
    if isinstance(subscribers, bool) or not isinstance(subscribers, int):
        raise TypeError(f"subscribers must be an int, not {type(subscribers).__name__}")
    if not 1 <= subscribers <= MAX_SUBSCRIBERS:
        raise ValueError(
            f"subscribers must be between 1 and {MAX_SUBSCRIBERS} (slots), got {subscribers}"
        )
    return subscribers


def _validate_policy(policy: object) -> str:
    if policy not in POLICIES:
        raise ValueError(f"policy must be 'overwrite' or 'block', got {policy!r}")
    return str(policy)


class Subscriber(SubscriberImpl):
    """One subscriber of a broadcast ring: receives every message published after it joined.

    Made by :meth:`Broadcast.subscribe`, never by calling the class. It holds
    one of the ring's subscriber slots until :meth:`close` (or until its
    process dies: the slot is then reclaimed). Threads may share a
    subscriber: each message is then received by one of them, once and
    whole (a ``recv_view`` block is one per handle at a time); a thread
    that must see every message needs a subscriber of its own. A handle
    belongs to the process that subscribed (a forked child must subscribe
    itself).

    Every ``timeout`` is in seconds on the monotonic clock: ``None`` blocks
    until the call can complete, ``0`` never blocks. Blocking calls release
    the GIL and a signal handler (Ctrl-C) runs within a fraction of a second.
    """


class Broadcast(BroadcastImpl):
    """A publisher handle on a named broadcast ring in shared memory (publish/subscribe).

    Every subscriber (:meth:`subscribe`, in any process) receives every
    message published after it joined, in publish order (per publisher when
    several publish). When the slowest subscriber lags a full ring behind,
    ``policy`` decides: ``"block"`` makes publishers wait for it (a dead
    subscriber's slot is reclaimed, so it never stalls them), ``"overwrite"``
    lets publishers go on and the lagging subscriber's next receive raises
    :class:`~fastipc.Lagged` with the count it lost, then resumes at the
    oldest message kept. A process killed at any instant (SIGKILL included)
    leaves the ring usable by the others; no message is ever torn.

    Make one with :meth:`create` or :meth:`open`, never by calling the class.
    Threads may share a handle: the ring orders publishers (one handle or
    several, in any processes), each message whole.
    Every ``timeout`` is in seconds (None: no limit, 0: never wait).
    """

    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        subscribers: int = 64,
        policy: str = "overwrite",
        mode: int = 0o600,
        exist_ok: bool = False,
        unlink_on_exit: bool = False,
    ) -> Broadcast:
        """Create broadcast ring ``name`` of ``capacity`` payload bytes; return a publisher handle.

        ``subscribers``: how many subscriber slots (1-4096). ``policy``:
        ``"overwrite"`` or ``"block"`` (see the class). ``mode``: permissions
        of every OS object made (owner-only by default, umask not applied).
        A message of up to ``capacity`` bytes always fits. Names share the
        Ring namespace (``/dev/shm/fastipc.NAME``).

        ``exist_ok=True`` opens the ring instead if one of that name exists
        with at least this capacity and slots and the same policy. A ring
        stays in /dev/shm after its last handle closes; with
        ``unlink_on_exit=True`` the ``with`` block removes it on exit.

        Raises ValueError/TypeError for a bad argument, FileExistsError if
        the name is taken (without ``exist_ok``),
        :class:`~fastipc.IncompatibleSegment` if ``exist_ok`` found a
        different ring (or a Ring), OSError if the OS refuses.
        """
        name, capacity, mode = validate_name(name), validate_capacity(capacity), validate_mode(mode)
        if capacity > MAX_BROADCAST_CAPACITY:
            raise ValueError(
                f"capacity must be between 1 and {MAX_BROADCAST_CAPACITY} bytes for a broadcast "
                f"ring, got {capacity}"
            )
        subscribers = _validate_subscribers(subscribers)
        policy = _validate_policy(policy)
        for _ in range(10):
            try:
                pub = cls._create(name, capacity, subscribers, policy, mode)
                break
            except FileExistsError:
                if not exist_ok:
                    raise
            try:
                pub = cls._open(name, None)
                break
            except FileNotFoundError:
                continue  # removed in between: create it after all
        else:
            raise FileExistsError(f"broadcast ring {name!r} kept appearing and disappearing")
        if exist_ok and (
            pub.capacity < capacity or pub.max_subscribers < subscribers or pub.policy != policy
        ):
            found = (pub.capacity, pub.max_subscribers, pub.policy)
            pub.close()
            raise IncompatibleSegment(
                f"broadcast ring {name!r} exists with capacity {found[0]}, subscribers "
                f"{found[1]}, policy {found[2]!r}; asked for {capacity}, {subscribers}, "
                f"{policy!r}: remove it (Broadcast.unlink_name or `fastipc rm`) or ask for what it has"
            )
        pub._unlink_on_exit = unlink_on_exit
        return pub

    @classmethod
    def open(cls, name: str, *, owners: Iterable[int] | None = None) -> Broadcast:
        """A publisher handle on the existing broadcast ring ``name``.

        ``owners``: uids trusted to own the segment (default: this user or
        root); a symbolic link at the name is never followed. Raises
        FileNotFoundError, PermissionError, OSError(ELOOP),
        :class:`~fastipc.IncompatibleSegment` if it is not a broadcast ring of
        this backend (a Ring, say: the message names the class that opens it).
        """
        return cls._open(validate_name(name), validate_owners(owners))

    @staticmethod
    def subscribe(name: str, *, owners: Iterable[int] | None = None) -> Subscriber:
        """Join broadcast ring ``name`` as a new subscriber, at the newest message.

        The subscriber receives what is published after this call returns.
        It takes a slot (reclaiming one whose process died). Raises as
        :meth:`open`, and OSError(EUSERS) when every slot is held by a live
        subscriber (create the ring with more ``subscribers``).
        """
        return Subscriber._subscribe(validate_name(name), validate_owners(owners))

    @staticmethod
    def unlink_name(name: str) -> None:
        """Remove broadcast ring ``name`` and every OS object it made; open handles keep working.

        Raises FileNotFoundError if nothing of that name exists.
        """
        unlink_ring(name)
