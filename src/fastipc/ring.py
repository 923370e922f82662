"""Ring: a named shared-memory ring of variable-length messages between processes.

The public class validates arguments, names segments and documents the
contract; the per-message work is done by the backend picked in
``fastipc._backend`` (C through cffi, or pure Python), whose class is a
subclass of :class:`Ring`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from ._checks import (
    validate_capacity,
    validate_mode,
    validate_owners,
)
from ._names import (
    segment_path,
    semaphore_paths,
    validate_name,
)

__all__ = ["Ring"]

_R = TypeVar("_R", bound="Ring")


class Ring:
    """A named ring of variable-length messages in shared memory.

    Any number of processes may open the same ring; each may send, receive
    or both. Messages are delivered whole, each exactly once, in order per
    producer. A participant killed at any instant (SIGKILL included) leaves
    the ring usable by the others.

    Make one with :meth:`create` or :meth:`open`, never by calling the class.
    A handle is not thread-safe: give each thread its own (``Ring.open``).

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
    def create(cls, name: str, capacity: int, *, mode: int = 0o600) -> Ring:
        """Create ring ``name`` holding ``capacity`` payload bytes; return a handle.

        ``mode`` sets the permissions of every OS object made (owner-only by
        default, umask not applied). A message of up to ``capacity`` bytes
        always fits in an empty ring.

        Raises ValueError/TypeError for a bad name, capacity or mode,
        FileExistsError if the name is taken, OSError if the OS refuses.
        """
        from ._backend import RingImpl

        return RingImpl._create(
            validate_name(name), validate_capacity(capacity), validate_mode(mode)
        )

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
        from ._backend import RingImpl

        return RingImpl._open(validate_name(name), validate_owners(owners))

    @staticmethod
    def unlink_name(name: str) -> None:
        """Remove ring ``name`` and every OS object it made; open handles keep working.

        Raises FileNotFoundError if nothing of that name exists.
        """
        validate_name(name)
        found = False
        for path in [segment_path(name), *semaphore_paths(name)]:
            try:
                os.unlink(path)
                found = True
            except FileNotFoundError:
                pass
        if not found:
            raise FileNotFoundError(2, "no such ring", segment_path(name))

    # ---- the interface each backend implements --------------------------
    def send(self, data: Any, timeout: float | None = None) -> None:
        """Append one message (any C-contiguous bytes-like object).

        Blocks while the ring is full. Raises :class:`~fastipc.Timeout`,
        :class:`~fastipc.MessageTooLarge` if ``len(data) > capacity``,
        :class:`~fastipc.Closed` after :meth:`shutdown`, TypeError for str,
        int, None and other non-buffers.
        """
        raise NotImplementedError

    def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        """Append every message of ``messages`` in order; return how many (all of them).

        Writes as many as fit at once and waits for room for the rest. Every
        item is checked before any is sent (TypeError, MessageTooLarge). If
        the deadline passes or the ring is shut down midway, the raised
        :class:`~fastipc.Timeout` / :class:`~fastipc.Closed` carries ``sent``:
        how many went out.
        """
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> bytes:
        """Remove and return the oldest message.

        Blocks while the ring is empty. Raises :class:`~fastipc.Timeout`, or
        :class:`~fastipc.Closed` once the ring is shut down and drained.
        """
        raise NotImplementedError

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the oldest message into writable ``buffer``; return its length in bytes.

        If the message is longer than ``buffer`` it stays in the ring and
        :class:`~fastipc.MessageTooLarge` is raised.
        """
        raise NotImplementedError

    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        """Return between 1 and ``max_count`` of the oldest messages.

        Waits only for the first; takes the rest that are already there.
        Raises :class:`~fastipc.Timeout` if none came in time.
        """
        raise NotImplementedError

    def reserve(
        self, nbytes: int, timeout: float | None = None
    ) -> AbstractContextManager[memoryview]:
        """Context manager yielding a writable ``nbytes`` view inside the ring.

        The message is published when the block exits normally and discarded
        if it raises. While the block runs, other producers wait (the
        producer side is held); consumers are not held up. Waits for room
        like :meth:`send`. Closing the handle inside the block lets the
        producer side go; leaving the block then raises ValueError and
        publishes nothing.
        """
        raise NotImplementedError

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Context manager yielding a read-only view of the oldest message in place.

        The message is consumed when the block exits, whether or not it
        raised. While the block runs, other consumers wait. Do not keep the
        view past the block. Closing the handle inside the block lets the
        consumer side go and leaves the message for the next consumer.
        """
        raise NotImplementedError

    def shutdown(self) -> None:
        """Refuse further sends (:class:`~fastipc.Closed`) and wake every blocked waiter.

        Receivers drain what is left, then get :class:`~fastipc.Closed`.
        Irreversible for the life of the segment.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release this handle (idempotent); the ring lives on until unlinked."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of messages waiting (a snapshot)."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called on this handle."""
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------
    def unlink(self) -> None:
        """Remove this ring's name and OS objects; this handle stays usable until closed."""
        try:
            Ring.unlink_name(self.name)
        except FileNotFoundError:
            pass

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # A handle is process-local; another process re-opens the ring by name.
        return (Ring.open, (self.name,))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity}"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the ring is shut down and drained."""
        from .errors import Closed

        while True:
            try:
                yield self.recv()
            except Closed:
                return
