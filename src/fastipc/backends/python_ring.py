"""The pure-Python ring backend: a shared-memory ring ordered by file locks and named semaphores.

One algorithm, kept in one file: the layout, the locks, the waits and the
batches all read and write the same few words of the segment.

Layout of ``/dev/shm/fastipc.NAME`` (all integers little-endian, native on
the x86_64/aarch64 Linux this targets)::

    offset  size  field
         0     8  magic b"FIPCPY01" (written last at creation)
         8     4  layout version (LAYOUT_VERSION)        12  4  reserved
        16     8  capacity: the largest payload, bytes
        24     8  D: size of the data area, bytes (multiple of 8, >= align8(capacity) + 8)
        32     8  closed flag (non-zero after shutdown)
        40     8  tail selector: bit 0 picks the live tail slot
        48    16  tail slot 0: (tail position, messages pushed)
        64    16  tail slot 1
        80     8  head selector
        88    16  head slot 0: (head position, messages popped)
       104    16  head slot 1
       120     8  recv watchers: handles waiting on the recv doorbell (issue 12)
       128     8  send watchers: handles waiting on the send doorbell
       256     3  bytes locked (never read or written): producer, state, consumer
      4096     D  data area: records of [u64 payload length][payload, padded to 8]

Positions are monotonic byte counts; a record starts at ``position % D``
(always 8-aligned, so its header never straddles the end) and its payload
may wrap around the end of the data area.

Why file locks and double slots (the crash-safety argument):

* Mutual exclusion comes from Linux open-file-description locks
  (``F_OFD_SETLK``) on three bytes of the segment file: the kernel releases
  them when their holder dies, however it dies, so a SIGKILLed participant
  never leaves a lock held. Each lock syscall is also a full memory barrier,
  which gives the ordering between processes: shared words are only read or
  written while holding the lock that guards them, never raced.
* The "state" lock guards the selectors, slots and closed flag and is held
  for a few loads and stores. The "producer" lock serialises producers for a
  whole send (so the tail can only move under it and a producer may read the
  tail slot holding just that lock); the "consumer" lock does the same for
  consumers and the head.
* A producer writes its record(s) into free space first, then commits by
  filling the idle tail slot and flipping the selector: that single aligned
  8-byte store (one machine instruction) is the commit, so a writer killed
  at any instant leaves either the old state or the new one, never a torn
  pair; a dead producer's partial data lies beyond the tail and is invisible,
  and a dead consumer's message is still at the head for the next consumer.
* Everything read from the segment is bounds-checked (another process may be
  hostile): offsets are always reduced modulo this handle's own D, and
  inconsistent state raises IncompatibleSegment.

A handle inherited through ``fork()`` reopens and remaps the segment in the
child (``os.register_at_fork``): sharing the parent's open file description
would share its locks, so parent and child would not exclude each other.

Interrupts and threads: a raising signal handler (Ctrl-C) never leaves a
lock held: the thread locks are taken only by ``with`` and each OFD byte
inside the ``try`` whose cleanup unlocks it with a direct ``fcntl`` call
(see the comment above ``_state_lock_deadline``). ``close()`` from another
thread wakes a blocked call within its wait slice (semaphore sleeps of
``_SLEEP_CAP``, lock polls of at most ``_POLL_MAX``: no ``F_OFD_SETLKW``,
which nothing but a signal could interrupt); the call then raises
``ValueError: ring is closed`` and unmaps the ring itself as it leaves, so no
thread touches the mapping after it is gone.

The semaphores ``/fastipc.NAME.items`` and ``/fastipc.NAME.space`` are only
wake-up hints, not counts: a waiter re-checks the state after every wake-up
and never sleeps longer than ``_SLEEP_CAP`` between checks, so a peer killed
between its commit and its post cannot strand it.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

import posix_ipc

from .._checks import MAX_CAPACITY, check_buffer, deadline, release_view
from .._contract import RingBase
from .._names import (
    bell_paths,
    incompatible,
    open_bell,
    open_segment,
    segment_path,
    semaphore_names,
    semaphore_paths,
)
from ..errors import Closed, MessageTooLarge, Timeout, timed_out

__all__ = ["PythonRing"]

if sys.byteorder != "little":  # pragma: no cover - the layout uses native u64 words
    raise ImportError("the python ring backend supports little-endian machines only")

MAGIC = b"FIPCPY01"
#: 2: the watcher counts at offsets 120 and 128 (the readiness doorbells).
LAYOUT_VERSION = 2
_NATIVE_MAGIC = b"FPCIRN01"  # csrc/ring.c's FI_MAGIC, named for a clearer error

_HEADER = 4096  # bytes before the data area; one page so the data area is page-aligned
_MAX_POS = 1 << 62  # positions beyond this are corrupt (exabytes of traffic)

# Header word indexes (u64 words of the mapping).
_W_MAGIC = 0
_W_VERSION = 1
_W_CAPACITY = 2
_W_DSIZE = 3
_W_CLOSED = 4
_W_TSEL = 5
_W_TSLOT = 6  # slots 6,7 and 8,9
_W_HSEL = 10
_W_HSLOT = 11  # slots 11,12 and 13,14
_W_WATCH = 15  # recv watchers; 16: send watchers

# File offsets of the lock bytes (advisory; the bytes themselves are never touched).
# The state byte sits between the side bytes so a commit can release the state lock and
# its side's lock with one unlock of two adjacent bytes (one syscall fewer per message).
_LOCK_PRODUCER = 256
_LOCK_STATE = 257
_LOCK_CONSUMER = 258

#: Longest single sleep on a semaphore before re-checking the shared state (seconds).
_SLEEP_CAP = 0.2
#: How long a blocking wait watches the semaphore's value before sleeping on it
#: (seconds): a busy peer is usually seen without paying a sleep and wake-up.
_SPIN = 100e-6
#: How long a contended lock is retried before sleeping on it (seconds).
_LOCK_SPIN = 50e-6
#: Longest pause between polls of a contended lock when a deadline applies (seconds).
_POLL_MAX = 0.001
#: A peer holds the state lock for microseconds: waiting for it gets at least this long
#: even with ``timeout=0`` (seconds); commits get longer so a copied message is not dropped.
_STATE_GRACE = 0.05
_COMMIT_GRACE = 1.0
#: How long an opener waits for a ring being created to be initialised (seconds).
_OPEN_WAIT = 1.0


def _flock(ltype: int, start: int, length: int = 1) -> bytes:
    # struct flock on x86_64/aarch64: short l_type, short l_whence, off_t l_start,
    # off_t l_len, pid_t l_pid (+4 bytes padding); OFD locks require l_pid == 0.
    return struct.pack("hhqqi4x", ltype, os.SEEK_SET, start, length, 0)


_LOCKS = {b: _flock(fcntl.F_WRLCK, b) for b in (_LOCK_STATE, _LOCK_PRODUCER, _LOCK_CONSUMER)}
_UNLOCKS = {b: _flock(fcntl.F_UNLCK, b) for b in (_LOCK_STATE, _LOCK_PRODUCER, _LOCK_CONSUMER)}
_UNLOCKS_WITH_STATE = {
    _LOCK_PRODUCER: _flock(fcntl.F_UNLCK, _LOCK_PRODUCER, 2),
    _LOCK_CONSUMER: _flock(fcntl.F_UNLCK, _LOCK_STATE, 2),
}
_UNLOCK_ALL = _flock(fcntl.F_UNLCK, _LOCK_PRODUCER, 3)
_F_SETLK: int = fcntl.F_OFD_SETLK  # type: ignore[attr-defined,unused-ignore]
_F_SETLKW: int = fcntl.F_OFD_SETLKW  # type: ignore[attr-defined,unused-ignore]
_BUSY = (errno.EAGAIN, errno.EACCES)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _data_size(capacity: int) -> int:
    """Data-area bytes for ``capacity``: room for one largest record, rounded to whole pages."""
    page = mmap.PAGESIZE
    total = _HEADER + _align8(capacity) + 8
    return (total + page - 1) // page * page - _HEADER


def _deadline(timeout: float | None) -> float | None:
    """The deadline of ``timeout`` in ``time.monotonic()`` seconds (the clock this file waits on)."""
    if timeout is None:  # the common call: spare it the checks' function call (1% of a 64 B send)
        return None
    until = deadline(timeout)
    return None if until is None else until / 1e9


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


class PythonRing(RingBase):
    """:class:`~fastipc.Ring` implemented in Python over mmap, OFD locks and posix_ipc semaphores.

    Each handle owns its own file descriptor (so handles in one process
    exclude each other through their OFD locks) and a ``threading.Lock``
    (OFD locks do not exclude threads sharing one descriptor).
    """

    name: str
    capacity: int

    def _setup(
        self,
        name: str,
        fd: int,
        mm: mmap.mmap,
        capacity: int,
        dsize: int,
        items: posix_ipc.Semaphore,
        space: posix_ipc.Semaphore,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self._fd = fd
        self._mm = mm
        self._buf = memoryview(mm)
        self._q = self._buf.cast("Q")
        self._D = dsize
        self._items = items
        self._space = space
        # Both only ever taken by ``with`` (see "Interrupts" above _state_lock_deadline).
        self._tlock = threading.Lock()  # one call at a time on this handle
        self._slock = threading.Lock()  # the state lock among this handle's threads
        self._owner = 0  # thread id inside a call (to refuse re-entry from a view block)
        self._closed = False
        self._torn_down = False
        # Stale but safe views of the other side: head and tail only grow, so a
        # producer's old head understates free space and a consumer's old tail
        # understates what is committed.
        self._head_seen = 0
        self._tail_seen = 0
        # The doorbell fds (recv, send), opened when first rung; -1 until then.
        self._bells = [-1, -1]
        _LIVE.add(self)

    # ---- construction -----------------------------------------------------
    @classmethod
    def _create(cls, name: str, capacity: int, mode: int) -> PythonRing:
        """Create the segment and semaphores of ring ``name`` (arguments already validated)."""
        path = segment_path(name)
        dsize = _data_size(capacity)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        made: list[str] = [path]
        sems: list[posix_ipc.Semaphore] = []
        mm: mmap.mmap | None = None
        try:
            os.fchmod(fd, mode)  # the umask must not apply
            # Held while initialising so an opener that races us waits for the magic.
            fcntl.fcntl(fd, _F_SETLKW, _LOCKS[_LOCK_STATE])
            os.ftruncate(fd, _HEADER + dsize)
            for sem_name, sem_path in zip(semaphore_names(name), semaphore_paths(name)):
                try:
                    sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, mode, 0)
                except posix_ipc.ExistentialError:
                    raise FileExistsError(errno.EEXIST, "semaphore exists", sem_path) from None
                except posix_ipc.PermissionsError:
                    raise PermissionError(errno.EACCES, "permission denied", sem_path) from None
                sems.append(sem)
                made.append(sem_path)
                os.chmod(sem_path, mode)
            mm = mmap.mmap(fd, _HEADER + dsize, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            q = memoryview(mm).cast("Q")
            try:
                q[_W_VERSION] = LAYOUT_VERSION
                q[_W_CAPACITY] = capacity
                q[_W_DSIZE] = dsize
            finally:
                q.release()
            for side, bell in enumerate(bell_paths(name)):
                made.append(bell)
                os.close(open_bell(name, side, mode))  # with the ring's mode, before the magic
            mm[0:8] = MAGIC  # last: an opener that sees the magic sees a whole ring
            fcntl.fcntl(fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
            ring = cls.__new__(cls)
            ring._setup(name, fd, mm, capacity, dsize, sems[0], sems[1])
        except BaseException:
            for sem in sems:
                sem.close()
            if mm is not None:
                mm.close()
            os.close(fd)
            for p in made:
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise
        return ring

    @classmethod
    def _open(cls, name: str, owners: frozenset[int] | None = None) -> PythonRing:
        """Open the existing ring ``name`` (name already validated; see Ring.open for ``owners``)."""
        fd = open_segment(name, owners)
        mm: mmap.mmap | None = None
        sems: list[posix_ipc.Semaphore] = []
        try:
            capacity, dsize = cls._read_geometry(name, fd)
            mm = mmap.mmap(fd, _HEADER + dsize, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            for sem_name, sem_path in zip(semaphore_names(name), semaphore_paths(name)):
                try:
                    sems.append(posix_ipc.Semaphore(sem_name))
                except posix_ipc.ExistentialError:
                    raise FileNotFoundError(
                        errno.ENOENT, "ring semaphore missing", sem_path
                    ) from None
                except posix_ipc.PermissionsError:
                    raise PermissionError(errno.EACCES, "permission denied", sem_path) from None
            ring = cls.__new__(cls)
            ring._setup(name, fd, mm, capacity, dsize, sems[0], sems[1])
            ring._owners = owners
        except BaseException:
            for sem in sems:
                sem.close()
            if mm is not None:
                mm.close()
            os.close(fd)
            raise
        try:
            ring._read_state(_deadline(_OPEN_WAIT))
        except BaseException:
            ring.close()
            raise
        return ring

    @staticmethod
    def _read_geometry(name: str, fd: int) -> tuple[int, int]:
        """Wait (up to ~1 s) for a creator to finish, then return (capacity, D) from the header."""
        give_up = time.monotonic() + _OPEN_WAIT
        while True:
            # The creator holds the state lock from before ftruncate until after the magic.
            try:
                fcntl.fcntl(fd, _F_SETLK, _LOCKS[_LOCK_STATE])
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
                locked = False
            else:
                locked = True
            try:
                size = os.fstat(fd).st_size
                head = os.pread(fd, 32, 0) if size >= _HEADER else b""
            finally:
                if locked:
                    fcntl.fcntl(fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
            if locked and len(head) == 32 and head[:8] != bytes(8):
                break
            if time.monotonic() >= give_up:
                if size < _HEADER:
                    raise incompatible(
                        name, f"segment is {size} bytes, too small for a ring header"
                    )
                if not locked:
                    raise incompatible(name, "segment is still locked by its creator after 1 s")
                raise incompatible(name, "segment was never initialised (magic is zero)")
            time.sleep(0.001)
        magic = head[:8]
        version, capacity, dsize = struct.unpack_from("<I4xQQ", head, 8)
        if magic == _NATIVE_MAGIC:
            raise incompatible(
                name, "a ring of the native backend: open it with FASTIPC_BACKEND=native"
            )
        if magic != MAGIC:
            raise incompatible(
                name,
                f"magic {magic!r} is not the python backend's {MAGIC!r} "
                "(a ring of another backend, or not a fastipc ring)",
            )
        if version != LAYOUT_VERSION:
            raise incompatible(
                name, f"layout version {version}, this fastipc reads {LAYOUT_VERSION}"
            )
        if not 1 <= capacity <= MAX_CAPACITY:
            raise incompatible(name, f"capacity {capacity} is out of range")
        if dsize % 8 or dsize < _align8(capacity) + 8 or dsize > _data_size(capacity) + (1 << 30):
            raise incompatible(name, f"data size {dsize} does not fit capacity {capacity}")
        if size < _HEADER + dsize:
            raise incompatible(
                name, f"segment is {size} bytes, smaller than its layout ({_HEADER + dsize})"
            )
        return capacity, dsize

    # ---- locks --------------------------------------------------------------
    def _lock(self, byte: int, deadline: float | None) -> None:
        """Take OFD lock ``byte``; poll until ``deadline`` (None: sleep in the kernel)."""
        try:
            fcntl.fcntl(self._fd, _F_SETLK, _LOCKS[byte])
            return
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
        # Peers hold these locks for microseconds: retrying briefly is far cheaper than
        # a sleep in the kernel and the wake-up that ends it (~25 us each).
        spin_end = time.monotonic() + _LOCK_SPIN
        while True:
            try:
                fcntl.fcntl(self._fd, _F_SETLK, _LOCKS[byte])
                return
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
            if time.monotonic() >= spin_end:
                break
            os.sched_yield()
        # No timed variant of F_OFD_SETLKW exists, and close() from another thread
        # must wake this one (it cannot interrupt F_OFD_SETLKW): poll with a backoff
        # up to 1 ms, with or without a deadline. A dead holder's lock is dropped by
        # the kernel.
        pause = 10e-6
        while True:
            if self._closed:
                raise ValueError("ring is closed")
            if deadline is None:
                time.sleep(pause)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Another producer (consumer) kept the side: for this
                    # call, the ring was as good as full (empty).
                    side = None if byte == _LOCK_STATE else byte == _LOCK_PRODUCER
                    raise timed_out(f"ring {self.name!r}", side)
                time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX)
            try:
                fcntl.fcntl(self._fd, _F_SETLK, _LOCKS[byte])
                return
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise

    def _unlock(self, byte: int) -> None:
        if not self._torn_down:  # after close() inside a block, the kernel already let go
            fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[byte])

    # Interrupts: a raising signal handler (Ctrl-C) runs between two bytecodes of the
    # main thread, in CPython right after any call returns or at a Python function's
    # entry, so a lock must never be taken by one statement and released by a ``try``
    # that starts in a later one, nor released through a Python-level helper (the
    # exception can strike at its entry). So: the thread locks are only taken by
    # ``with`` (its C-level __enter__/__exit__ leave no gap), an OFD byte is taken
    # inside the ``try`` that releases it, and that release is a direct fcntl() call
    # (unlocking a byte not held is a no-op); only the thread holding _tlock (side
    # bytes) or _slock (the state byte) ever locks or unlocks a byte.

    @staticmethod
    def _state_lock_deadline(deadline: float | None, grace: float = _STATE_GRACE) -> float | None:
        """A peer holds the state lock for microseconds: even ``timeout=0`` waits ``grace``."""
        return None if deadline is None else max(deadline, time.monotonic() + grace)

    def _check_enter(self, deadline: float | None, sending: bool | None = None) -> int:
        """Before a call takes this handle: refuse re-entry from a view block and a closed
        handle; with a deadline, wait for another thread's call to end (Timeout).
        Returns this thread's id, for ``_owner``."""
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError(
                "ring handle is busy in a reserve()/recv_view() block of this thread"
            )
        if self._closed:
            raise ValueError("ring is closed")
        if deadline is not None:
            # `with` cannot wait with a timeout: poll (only threads sharing a handle wait).
            while self._tlock.locked():
                if time.monotonic() >= deadline:
                    # For this call the ring was as good as full (empty).
                    raise timed_out(f"ring {self.name!r} (another thread is using this handle)", sending)
                time.sleep(0.0005)
        return me

    def _left(self) -> None:
        """End of a call (``_tlock`` still held): tear down if close() came meanwhile."""
        if self._closed and not self._torn_down:
            self._teardown()  # close() was called from another thread during our call

    # ---- shared state -------------------------------------------------------
    def _tail_slot(self) -> tuple[int, int]:
        """(tail, pushed): read holding the producer or the state lock."""
        q = self._q
        i = _W_TSLOT + 2 * (q[_W_TSEL] & 1)
        return q[i], q[i + 1]

    def _head_slot(self) -> tuple[int, int]:
        """(head, popped): read holding the consumer or the state lock."""
        q = self._q
        i = _W_HSLOT + 2 * (q[_W_HSEL] & 1)
        return q[i], q[i + 1]

    def _state(self) -> tuple[int, int, int, int, bool]:
        """(head, popped, tail, pushed, closed), validated; the state lock must be held."""
        head, popped = self._head_slot()
        tail, pushed = self._tail_slot()
        closed = self._q[_W_CLOSED] != 0
        used = tail - head
        n = pushed - popped
        if not (
            0 <= used <= self._D
            and tail < _MAX_POS
            and 0 <= n
            and pushed < _MAX_POS
            and 8 * n <= used <= n * (8 + _align8(self.capacity))
        ):
            raise incompatible(
                self.name,
                f"corrupt ring state: head={head} tail={tail} popped={popped} pushed={pushed}",
            )
        return head, popped, tail, pushed, closed

    def _read_state(self, deadline: float | None) -> tuple[int, int, int, int, bool]:
        deadline = self._state_lock_deadline(deadline)
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            try:
                self._lock(_LOCK_STATE, deadline)
                st = self._state()
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
        self._head_seen = st[0]
        self._tail_seen = st[2]
        return st

    def _commit_tail(
        self,
        old_tail: int,
        new_tail: int,
        new_pushed: int,
        deadline: float | None,
        release: bool = True,
    ) -> None:
        """Publish records written in [old_tail, new_tail): the producer lock must be held.

        With ``release`` a successful commit also releases the producer lock; on
        an exception it is still held and the caller releases it.
        """
        deadline = self._state_lock_deadline(deadline, _COMMIT_GRACE)
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            try:
                self._lock(_LOCK_STATE, deadline)
                head, _, tail, _, closed = self._state()
                if tail != old_tail or new_tail - head > self._D:
                    raise incompatible(self.name, "the tail moved under the producer lock")
                if closed:
                    raise Closed("ring is shut down")
                q = self._q
                sel = q[_W_TSEL] & 1
                i = _W_TSLOT + 2 * (sel ^ 1)
                q[i] = new_tail
                q[i + 1] = new_pushed
                q[_W_TSEL] = sel ^ 1  # the commit: one aligned 8-byte store
                # Read under the state lock that watchers register under: either
                # a watcher's re-check sees this commit, or we see its count.
                watchers = q[_W_WATCH]
            except BaseException:
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
                raise
            # Nothing between the try and this call: drop the state lock, with
            # ``release`` the producer lock in the same syscall.
            fcntl.fcntl(
                self._fd,
                _F_SETLK,
                _UNLOCKS_WITH_STATE[_LOCK_PRODUCER] if release else _UNLOCKS[_LOCK_STATE],
            )
        self._head_seen = head
        if self._items.value == 0:
            self._items.release()
        if watchers:
            self._ring_bell(0)

    def _commit_head(
        self, old_head: int, new_head: int, new_popped: int, deadline: float | None
    ) -> None:
        """Release records in [old_head, new_head) and the consumer lock (held by the caller).

        On an exception the consumer lock is still held and the caller releases it.
        """
        deadline = self._state_lock_deadline(deadline, _COMMIT_GRACE)
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            try:
                self._lock(_LOCK_STATE, deadline)
                head, _, tail, _, _ = self._state()
                if head != old_head or new_head > tail:
                    raise incompatible(self.name, "the head moved under the consumer lock")
                q = self._q
                sel = q[_W_HSEL] & 1
                i = _W_HSLOT + 2 * (sel ^ 1)
                q[i] = new_head
                q[i + 1] = new_popped
                q[_W_HSEL] = sel ^ 1  # the commit: one aligned 8-byte store
                watchers = q[_W_WATCH + 1]  # as in _commit_tail
            except BaseException:
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
                raise
            fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS_WITH_STATE[_LOCK_CONSUMER])
        self._tail_seen = tail
        if self._space.value == 0:
            self._space.release()
        if watchers:
            self._ring_bell(1)

    def _sleep(self, sem: posix_ipc.Semaphore, deadline: float | None) -> None:
        """Wait for a hint on ``sem`` (at most _SLEEP_CAP); raise Timeout past the deadline."""
        if self._closed:
            raise ValueError("ring is closed")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise timed_out(f"ring {self.name!r}", sem is self._space)
        # Spin first on the semaphore's value (sem_getvalue reads it without a syscall
        # and without touching the state lock): a busy peer posts within microseconds,
        # and catching that saves the ~25 us sleep and wake-up.
        spin_end = now + _SPIN
        while sem.value == 0 and time.monotonic() < spin_end:
            os.sched_yield()
        if deadline is None:
            wait = _SLEEP_CAP
        else:
            wait = min(max(deadline - time.monotonic(), 0.0), _SLEEP_CAP)
        try:
            sem.acquire(wait)
        except posix_ipc.BusyError:
            pass
        except posix_ipc.SignalError:
            pass  # EINTR: the caller loops, so a pending KeyboardInterrupt is raised

    # ---- producer side --------------------------------------------------------
    def _wait_space(self, need: int, deadline: float | None) -> tuple[int, int]:
        """Wait until ``need`` bytes are free; return (tail, pushed). Producer lock held."""
        D = self._D
        while True:
            tail, pushed = self._tail_slot()
            if 0 <= tail - self._head_seen <= D - need:
                return tail, pushed
            head, _, tail, pushed, closed = self._read_state(deadline)
            if closed:
                raise Closed("ring is shut down")
            if tail - head <= D - need:
                return tail, pushed
            self._sleep(self._space, deadline)

    def _write(self, pos: int, data: memoryview) -> None:
        """Copy ``data`` into the data area at position ``pos``, wrapping at the end."""
        D = self._D
        off = pos % D
        n = len(data)
        first = D - off
        base = _HEADER + off
        if n <= first:
            self._mm[base : base + n] = data
        else:
            self._mm[base : base + first] = data[:first]
            self._mm[_HEADER : _HEADER + n - first] = data[first:]

    def _put(self, pos: int, data: memoryview) -> int:
        """Write one record at ``pos``; return the position after it."""
        n = len(data)
        self._q[(_HEADER + pos % self._D) >> 3] = n
        if n:
            self._write(pos + 8, data)
        return pos + 8 + _align8(n)

    def _message(self, data: Any) -> memoryview:
        mv = check_buffer(data)
        if mv.nbytes > self.capacity:
            raise MessageTooLarge(
                f"message of {mv.nbytes} bytes exceeds ring capacity {self.capacity}"
            )
        return mv

    def send(self, data: Any, timeout: float | None = None) -> None:
        mv = self._message(data)
        deadline = _deadline(timeout)
        me = self._check_enter(deadline, True)
        with self._tlock:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError("ring is closed")
                self._lock(_LOCK_PRODUCER, deadline)
                tail, pushed = self._wait_space(8 + _align8(mv.nbytes), deadline)
                end = self._put(tail, mv)
                self._commit_tail(tail, end, pushed + 1, deadline)  # releases the lock
            except BaseException:
                # Held unless a commit released it; also covers a Ctrl-C landing right
                # after the lock was taken (unlocking an unheld byte is a no-op).
                self._unlock(_LOCK_PRODUCER)
                raise
            finally:
                self._owner = 0  # first, before any call (see "Interrupts")
                self._left()

    def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        views = [self._message(m) for m in messages]
        deadline = _deadline(timeout)
        if not views:
            return 0
        D = self._D
        sent = 0
        me = self._check_enter(deadline, True)
        with self._tlock:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError("ring is closed")
                self._lock(_LOCK_PRODUCER, deadline)
                while sent < len(views):
                    need = 8 + _align8(views[sent].nbytes)
                    try:
                        tail, pushed = self._wait_space(need, deadline)
                    except (Timeout, Closed) as exc:
                        raise type(exc)(str(exc), sent=sent) from None
                    limit = self._head_seen + D
                    pos = tail
                    k = sent
                    while k < len(views):
                        need = 8 + _align8(views[k].nbytes)
                        if pos + need > limit:
                            break
                        pos = self._put(pos, views[k])
                        k += 1
                    last = k == len(views)
                    try:
                        self._commit_tail(tail, pos, pushed + (k - sent), deadline, last)
                    except (Timeout, Closed) as exc:
                        raise type(exc)(str(exc), sent=sent) from None
                    sent = k
            except BaseException:
                self._unlock(_LOCK_PRODUCER)
                raise
            finally:
                self._owner = 0  # first, before any call (see "Interrupts")
                self._left()
        return sent

    def reserve(
        self, nbytes: int, timeout: float | None = None
    ) -> AbstractContextManager[memoryview]:
        n = _check_count(nbytes, "nbytes")
        if n < 0:
            raise ValueError(f"nbytes must be >= 0, got {n}")
        if n > self.capacity:
            raise MessageTooLarge(f"reservation of {n} bytes exceeds ring capacity {self.capacity}")
        return self._reserve(n, _deadline(timeout))

    @contextmanager
    def _reserve(self, n: int, deadline: float | None) -> Iterator[memoryview]:
        me = self._check_enter(deadline, True)
        with self._tlock:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError("ring is closed")
                self._lock(_LOCK_PRODUCER, deadline)
                tail, pushed = self._wait_space(8 + _align8(n), deadline)
                off = (tail + 8) % self._D
                temp: bytearray | None = None
                if off + n <= self._D:
                    view = self._buf[_HEADER + off : _HEADER + off + n]
                else:
                    temp = bytearray(n)  # the record wraps: fill a copy, move it in at exit
                    view = memoryview(temp)
                try:
                    yield view
                finally:
                    release_view(view)
                    if self._closed:
                        self._close_mapping()
                # Only reached on a normal exit: an exception skips the commit (discarded).
                if self._closed:
                    raise ValueError("ring is closed: the reservation was discarded")
                if temp is not None:
                    end = self._put(tail, memoryview(temp))
                else:
                    self._q[(_HEADER + tail % self._D) >> 3] = n
                    end = tail + 8 + _align8(n)
                self._commit_tail(tail, end, pushed + 1, deadline)  # releases the lock
            except BaseException:
                self._unlock(_LOCK_PRODUCER)
                raise
            finally:
                self._owner = 0  # first, before any call (see "Interrupts")
                self._left()

    # ---- consumer side ----------------------------------------------------------
    def _wait_message(self, deadline: float | None) -> tuple[int, int, int, int]:
        """Wait for a message; return (head, popped, committed end, payload length). Consumer lock held."""
        D = self._D
        while True:
            head, popped = self._head_slot()
            tail = self._tail_seen
            if not 0 < tail - head <= D:
                head, popped, tail, _, closed = self._read_state(deadline)
                if tail == head:
                    if closed:
                        raise Closed("ring is shut down and drained")
                    self._sleep(self._items, deadline)
                    continue
            return head, popped, tail, self._length(head, tail)

    def _length(self, head: int, tail: int) -> int:
        """Payload length of the record at ``head``, checked against the committed bytes."""
        n: int = self._q[(_HEADER + head % self._D) >> 3]
        if n > self.capacity or 8 + _align8(n) > tail - head:
            raise incompatible(self.name, f"corrupt record: length {n} at position {head}")
        return n

    def _read(self, pos: int, n: int) -> bytes:
        """The ``n`` payload bytes of the record at ``pos``, joined if they wrap."""
        D = self._D
        off = (pos + 8) % D
        base = _HEADER + off
        if off + n <= D:
            return self._mm[base : base + n]
        first = D - off
        return self._mm[base : base + first] + self._mm[_HEADER : _HEADER + n - first]

    def recv(self, timeout: float | None = None) -> bytes:
        deadline = _deadline(timeout)
        me = self._check_enter(deadline, False)
        with self._tlock:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError("ring is closed")
                self._lock(_LOCK_CONSUMER, deadline)
                head, popped, _, n = self._wait_message(deadline)
                data = self._read(head, n)
                self._commit_head(head, head + 8 + _align8(n), popped + 1, deadline)
            except BaseException:
                self._unlock(_LOCK_CONSUMER)  # a successful commit already released it
                raise
            finally:
                self._owner = 0  # first, before any call (see "Interrupts")
                self._left()
        return data

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        dst = check_buffer(buffer, "buffer")
        if dst.readonly:
            raise TypeError("buffer must be writable")
        deadline = _deadline(timeout)
        me = self._check_enter(deadline, False)
        with self._tlock:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError("ring is closed")
                self._lock(_LOCK_CONSUMER, deadline)
                head, popped, _, n = self._wait_message(deadline)
                if n > dst.nbytes:
                    raise MessageTooLarge(
                        f"message of {n} bytes does not fit a {dst.nbytes}-byte buffer"
                    )
                D = self._D
                off = (head + 8) % D
                base = _HEADER + off
                if off + n <= D:
                    dst[:n] = self._buf[base : base + n]
                else:
                    first = D - off
                    dst[:first] = self._buf[base : base + first]
                    dst[first:n] = self._buf[_HEADER : _HEADER + n - first]
                self._commit_head(head, head + 8 + _align8(n), popped + 1, deadline)
            except BaseException:
                self._unlock(_LOCK_CONSUMER)  # a successful commit already released it
                raise
            finally:
                self._owner = 0  # first, before any call (see "Interrupts")
                self._left()
        return n

    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        count = _check_count(max_count, "max_count")
        if count < 1:
            raise ValueError(f"max_count must be >= 1, got {count}")
        deadline = _deadline(timeout)
        out: list[bytes] = []
        me = self._check_enter(deadline, False)
        with self._tlock:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError("ring is closed")
                self._lock(_LOCK_CONSUMER, deadline)
                head, popped, tail, n = self._wait_message(deadline)
                if count > 1:
                    # Take everything already committed, not just what this handle last saw.
                    tail = self._read_state(deadline)[2]
                pos = head
                while True:
                    out.append(self._read(pos, n))
                    pos += 8 + _align8(n)
                    if len(out) >= count or pos >= tail:
                        break
                    n = self._length(pos, tail)
                self._commit_head(head, pos, popped + len(out), deadline)
            except BaseException:
                self._unlock(_LOCK_CONSUMER)  # a successful commit already released it
                raise
            finally:
                self._owner = 0  # first, before any call (see "Interrupts")
                self._left()
        return out

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        return self._recv_view(_deadline(timeout))

    @contextmanager
    def _recv_view(self, deadline: float | None) -> Iterator[memoryview]:
        me = self._check_enter(deadline, False)
        with self._tlock:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError("ring is closed")
                self._lock(_LOCK_CONSUMER, deadline)
                head, popped, _, n = self._wait_message(deadline)
                off = (head + 8) % self._D
                if off + n <= self._D:
                    raw = self._buf[_HEADER + off : _HEADER + off + n]
                else:
                    raw = memoryview(self._read(head, n))  # the record wraps: a joined copy
                view = raw.toreadonly()
                try:
                    yield view
                finally:
                    release_view(view)
                    release_view(raw)
                    if self._closed:
                        # close() inside the block gave up the consumer side: the
                        # message stays for the next consumer.
                        self._close_mapping()
                    else:
                        # Consumed whether or not the block raised.
                        self._commit_head(head, head + 8 + _align8(n), popped + 1, deadline)
            except BaseException:
                self._unlock(_LOCK_CONSUMER)  # a successful commit already released it
                raise
            finally:
                self._owner = 0  # first, before any call (see "Interrupts")
                self._left()

    # ---- control ------------------------------------------------------------------
    def shutdown(self) -> None:
        if self._closed:
            raise ValueError("ring is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            try:
                self._lock(_LOCK_STATE, None)
                self._state()
                self._q[_W_CLOSED] = 1
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
        # Hints only: every sleeper re-checks and sees the flag; a few spare posts
        # cover sleepers in several processes racing for them.
        for sem in (self._items, self._space):
            for _ in range(4):
                sem.release()
        self._ring_bell(0)
        self._ring_bell(1)

    # ---- readiness (see RingBase, "readiness") --------------------------------------
    def _ring_bell(self, side: int) -> None:
        """Write one byte to ``side``'s doorbell (opened on first use); errors are ignored:
        a full FIFO already holds a wake-up, and watchers re-check every 0.2 s anyway."""
        with self._slock:  # teardown closes the fds under it: never write to a reused fd
            if self._torn_down:
                return
            fd = self._bells[side]
            try:
                if fd < 0:
                    fd = self._bells[side] = open_bell(self.name, side, owners=self._owners)
                os.write(fd, b"\0")
            except OSError:
                pass

    def _watch(self, side: int, delta: int) -> int:
        if self._closed:
            raise ValueError("ring is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            try:
                self._lock(_LOCK_STATE, None)
                q = self._q
                count = min(max(q[_W_WATCH + side] + delta, 0), (1 << 32) - 1)
                q[_W_WATCH + side] = count
            finally:
                # The lock syscalls are full barriers: the re-check after this
                # (under the same lock) is ordered after the store.
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
        return count

    def _poll(self, side: int, nbytes: int) -> bool:
        if self._closed:
            raise ValueError("ring is closed")
        head, _, tail, _, closed = self._read_state(None)
        if closed:
            return True
        if side == 0:
            return tail != head
        return self._D - (tail - head) >= 8 + _align8(nbytes)

    def _snapshot(self) -> tuple[int, int, int, int, bool]:
        """:meth:`_state` read under the state lock, for the snapshots (len, room)."""
        if self._closed:
            raise ValueError("ring is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            try:
                self._lock(_LOCK_STATE, None)
                return self._state()
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])

    def __len__(self) -> int:
        _, popped, _, pushed, _ = self._snapshot()
        return pushed - popped

    def _room(self) -> int:
        head, _, tail, _, _ = self._snapshot()
        # A record is an 8-byte header and the payload padded to 8 bytes.
        room = (self._D - (tail - head) - 8) & ~7
        return -1 if room < 0 else min(room, self.capacity)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._unwatch_all()
        self._closed = True
        if self._owner == threading.get_ident():
            # Called inside this thread's reserve()/recv_view() block: release the
            # ring now; the block's exit then publishes or consumes nothing.
            self._teardown()
        else:
            # acquire() called from C (list += map), so its result is kept even if a
            # signal handler raises right after it returns.
            got: list[bool] = []
            try:
                got += map(self._tlock.acquire, (False,))
                if got[0]:
                    self._teardown()
                # Otherwise another thread is inside a call; it tears down as it
                # leaves (_left), after waking within its wait slice.
            finally:
                if got and got[0]:
                    self._tlock.release()

    def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        with self._slock:
            # OFD locks live as long as the open file description, which a mapping
            # still exported to the caller keeps alive: drop every lock explicitly.
            fcntl.fcntl(self._fd, _F_SETLK, _UNLOCK_ALL)
            self._q.release()
            self._buf.release()
            self._close_mapping()
            os.close(self._fd)
            self._items.close()
            self._space.close()
            bells, self._bells = self._bells, [-1, -1]
            for fd in bells:
                if fd >= 0:
                    os.close(fd)

    def _close_mapping(self) -> None:
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still out (retried when a block releases it, else at GC)

    def _after_fork_in_child(self) -> None:
        """Give a handle inherited through fork() its own open file description.

        A forked child shares the parent's descriptor, hence its OFD locks: the two
        would not exclude each other, and the child's copy of the mapping would keep
        a dead parent's locks alive. Reopen the file and remap it in the child.
        """
        self._tlock = threading.Lock()  # another parent thread may have held these
        self._slock = threading.Lock()
        self._owner = 0
        if self._torn_down:
            return
        old_fd, old_mm = self._fd, self._mm
        try:
            fd = os.open(f"/proc/self/fd/{old_fd}", os.O_RDWR | os.O_CLOEXEC)
            try:
                mm = mmap.mmap(fd, len(old_mm), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except BaseException:
                os.close(fd)
                raise
        except OSError:
            # Unusable here rather than silently unsafe; the parent's handle is unaffected.
            self._closed = self._torn_down = True
            return
        self._q.release()
        self._buf.release()
        self._fd, self._mm = fd, mm
        self._buf = memoryview(mm)
        self._q = self._buf.cast("Q")
        with suppress(BufferError):
            old_mm.close()
        os.close(old_fd)

    def __del__(self) -> None:
        # A dropped handle must not leak its descriptor; errors at interpreter exit are moot.
        with suppress(Exception):
            if not self._closed:
                self.close()
            elif not self._torn_down:  # a call that close() left it to was interrupted
                self._teardown()


_LIVE: weakref.WeakSet[PythonRing] = weakref.WeakSet()


def _reopen_after_fork() -> None:
    for ring in list(_LIVE):
        ring._after_fork_in_child()


os.register_at_fork(after_in_child=_reopen_after_fork)
