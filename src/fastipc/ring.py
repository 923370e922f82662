"""Ring: a named shared-memory ring of variable-length messages between processes.

The public class: its factories validate arguments and name segments; the
per-message work is inherited from the backend picked in
``fastipc._backend`` (C through cffi, or pure Python), which implements
``fastipc._contract.RingBase``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._checks import validate_capacity, validate_mode, validate_owners
from ._names import unlink_ring, validate_name
from .errors import IncompatibleSegment

if TYPE_CHECKING:
    from ._contract import RingBase as RingImpl
else:
    from ._backend import RingImpl

__all__ = ["Ring"]


class Ring(RingImpl):
    """A named ring of variable-length messages in shared memory.

    Any number of processes may open the same ring; each may send, receive
    or both. Messages are delivered whole, each exactly once, in order per
    producer. A participant killed at any instant (SIGKILL included) leaves
    the ring usable by the others.

    Make one with :meth:`create` or :meth:`open`, never by calling the class.
    Threads may share a handle: every message is still received whole and
    once. A ``recv_view``/``reserve`` block is one per handle at a time (in
    another thread it raises RuntimeError), so threads that each use views
    want a handle each (``Ring.open``), which is also the fastest. A
    producer thread and a consumer thread may share a handle: a receive
    blocked waiting for a message does not keep a send out.

    Every ``timeout`` is in seconds on the monotonic clock: ``None`` blocks
    until the call can complete, ``0`` never blocks. Blocking calls release
    the GIL and a signal handler (Ctrl-C) runs within a fraction of a second.
    """

    #: The name given at creation (``/dev/shm/fastipc.NAME`` holds the segment).
    name: str
    #: The largest message, in bytes, the ring accepts; also its payload space.
    capacity: int

    # ---- construction -------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        mode: int = 0o600,
        exist_ok: bool = False,
        unlink_on_exit: bool = False,
    ) -> Ring:
        """Create ring ``name`` holding ``capacity`` payload bytes; return a handle.

        ``mode`` sets the permissions of every OS object made (owner-only by
        default, umask not applied). A message of up to ``capacity`` bytes
        always fits in an empty ring.

        ``exist_ok=True`` opens the ring instead if one of that name exists
        (left by a crashed run, say) and holds messages of ``capacity``
        bytes; its messages and permissions are kept (``mode`` applies only
        to a ring this call makes). A ring stays in /dev/shm after its
        last handle closes, ``with Ring.create(...)`` included; pass
        ``unlink_on_exit=True`` to have the ``with`` block remove it when it
        exits (handles other processes hold keep working). (A Channel
        ``listen()`` differs: its socket file goes with the listener.)

        Raises ValueError/TypeError for a bad name, capacity or mode,
        FileExistsError if the name is taken (without ``exist_ok``),
        :class:`~fastipc.IncompatibleSegment` if ``exist_ok`` found a ring
        too small or of the other backend, OSError if the OS refuses.
        """
        name, capacity, mode = validate_name(name), validate_capacity(capacity), validate_mode(mode)
        for _ in range(10):
            try:
                ring = cls._create(name, capacity, mode)
                break
            except FileExistsError:
                if not exist_ok:
                    raise
            try:
                ring = cls._open(name, None)
                break
            except FileNotFoundError:
                continue  # removed in between: create it after all
        else:
            raise FileExistsError(f"ring {name!r} kept appearing and disappearing")
        if exist_ok and ring.capacity < capacity:
            found = ring.capacity
            ring.close()
            raise IncompatibleSegment(
                f"ring {name!r} exists with capacity {found}, less than the {capacity} "
                "asked for: remove it (Ring.unlink_name or `fastipc rm`) or ask for less"
            )
        ring._unlink_on_exit = unlink_on_exit
        return ring

    @classmethod
    def open(cls, name: str, *, owners: Iterable[int] | None = None) -> Ring:
        """Open the existing ring ``name``.

        The segment must belong to one of the uids in ``owners`` (default:
        this process's effective uid, or root), so another user cannot make
        the name first and have you talk to their segment; a ring another
        user shares with you (``mode=0o660``) needs ``owners={that_uid}``.
        A symbolic link at the name is never followed.

        Raises FileNotFoundError if there is none, PermissionError if not
        allowed or owned by another user, OSError(ELOOP) for a symlink,
        :class:`~fastipc.IncompatibleSegment` if the segment is not a
        fastipc ring of this layout and backend.
        """
        return cls._open(validate_name(name), validate_owners(owners))

    @staticmethod
    def unlink_name(name: str) -> None:
        """Remove ring ``name`` and every OS object it made; open handles keep working.

        Raises FileNotFoundError if nothing of that name exists.
        """
        unlink_ring(name)
