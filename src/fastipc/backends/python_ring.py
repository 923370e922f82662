"""The pure-Python ring backend: a shared-memory ring ordered by semaphore mutexes and file locks.

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
        40     8  closing flag: set by shutdown before the closed flag; producers refuse
        48     8  recv watchers: handles waiting on the recv doorbell (issue 12)
        56     8  send watchers: handles waiting on the send doorbell
        64     8  tail generation: bit 0 picks the live tail slot
        72    16  tail slot 0: (tail position, messages pushed)
        88    16  tail slot 1
       104     8  producer releases without a commit
       128     8  head generation
       136    16  head slot 0: (head position, messages popped)
       152    16  head slot 1
       168     8  consumer releases without a commit
       256     3  bytes locked (never read or written): producer recovery, state, consumer recovery
      1024  1024  bytes locked: one per handle slot, held by the slot's handle while it lives
      8192  8192  handle slots: u64 each; byte 0 is 1 while the handle is taking or
                  holding the producer side, byte 1 the consumer side, else 0
     16384     D  data area: records of [u64 payload length][payload, padded to 8]

Positions are monotonic byte counts; a record starts at ``position % D``
(always 8-aligned, so its header never straddles the end) and its payload
may wrap around the end of the data area.

Why it is built this way (the fast path makes no system call):

* Producers exclude each other with the named semaphore ``.prod`` used as a
  mutex, consumers with ``.cons``: an uncontended ``sem_trywait``/``sem_post``
  is one atomic instruction in glibc, where a file lock costs two system
  calls (about 1.6 us a message on the VMs this was measured on).
* Each side's words are written only by the holder of that side's mutex
  (single writer), so no lock is needed to read the other side: a reader
  takes the generation, the slot it picks, and the generation again, and
  retries if it moved. A writer commits by filling the idle slot and then
  storing generation + 1 (one aligned 8-byte store, one instruction): a
  writer killed at any instant leaves the old state or the new one. Its
  partial data lies beyond the tail and is invisible; a dead consumer's
  message is still at the head for the next one. The ordering between the
  data, the slot and the generation is x86-64's (stores are seen in program
  order); ``sem_post`` and ``sem_trywait`` are full barriers (locked
  instructions) on every architecture.
* A semaphore is not released by the kernel when its holder dies, so each
  handle owns a slot whose lock byte (a Linux open-file-description lock,
  which the kernel drops when the holder dies, however it dies) it holds
  while it lives, and writes the side it is taking into its slot *before*
  ``sem_trywait`` and clears it after ``sem_post``. A waiter that has not
  got the mutex for 2 ms runs the recovery, serialised by that side's
  recovery lock byte: the mutex is orphaned if it is taken (value 0) and no
  live slot claims the side, while neither the side's generation nor its
  release counter moved during the scan (so it cannot have changed hands
  under the scan). The recoverer then holds the taken semaphore in the
  dead holder's place. Every release bumps the generation (a commit) or the
  release counter, then posts.
* Everything read from the segment is bounds-checked (another process may be
  hostile): offsets are always reduced modulo this handle's own D, and
  inconsistent state raises IncompatibleSegment.

A handle inherited through ``fork()`` reopens and remaps the segment in the
child and takes a slot of its own (``os.register_at_fork``): sharing the
parent's open file description would share its slot lock.

Interrupts and threads: a raising signal handler (Ctrl-C) runs in CPython
after a call returns or at a Python function's entry. A mutex is taken by
``held += map(sem.acquire, (0,))`` (the result is recorded in C, in the same
step as the take) inside the ``try`` whose ``finally`` releases it if
``held`` says so, with stores and one final call. Threads sharing a handle
take its send or receive turn (_turns.py: ``del turn.free``, no call), and
the state lock only by ``with``. ``close()`` from another thread wakes a
blocked call within its wait slice (semaphore sleeps of ``_SLEEP_CAP``,
mutex polls of at most ``_POLL_MAX``); the call then raises ``ValueError:
ring is closed``, and the last call to leave (both turns free) unmaps the
ring, so no thread touches the mapping after it is gone.

The semaphores ``.items`` and ``.space`` are only wake-up hints, not counts:
a waiter re-checks the state after every wake-up and never sleeps longer than
``_SLEEP_CAP`` between checks, so a peer killed between its commit and its
post cannot strand it. A side posts only when the hint is 0 (no syscall
unless someone sleeps on it: glibc's ``sem_post`` wakes only counted waiters).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import platform
import random
import stat
import struct
import sys
import threading
import time
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from itertools import accumulate
from typing import Any, NoReturn

import posix_ipc

from .._checks import (
    MAX_CAPACITY,
    LentBuffer,
    check_buffer,
    deadline,
    inherited_block,
    release_view,
    validate_count,
    validate_max_count,
)
from .._contract import RingBase, dup_bell
from .._names import (
    bell_paths,
    incompatible,
    open_bell,
    open_segment,
    segment_path,
    semaphore_names,
    semaphore_paths,
)
from .._turns import ANY, RX, TX, Turn, inside_a_call, reentrant_call, takes_turn
from ..errors import Closed, MessageTooLarge, Timeout, timed_out

__all__ = ["PythonRing"]

if sys.byteorder != "little":  # pragma: no cover - the layout uses native u64 words
    raise ImportError("the python ring backend supports little-endian machines only")

MAGIC = b"FIPCPY01"
#: 2: the watcher counts at offsets 120 and 128 (the readiness doorbells).
#: 3: semaphore mutexes, handle slots, release counters; the data area at 16384.
#: 4: a handle slot's claims are two bytes, one per side (a handle may be in a
#:    send and a receive at once, from two threads).
LAYOUT_VERSION = 4
_ident = threading.get_ident

_NATIVE_MAGIC = b"FPCIRN01"  # csrc/ring.c's FI_MAGIC, named for a clearer error

_DATA = 16384  # bytes before the data area (whole pages, so the data area is page-aligned)
#: Layout 2's header size, kept (with _data_size) for modules that import them.
_HEADER = 4096
_MAX_POS = 1 << 62  # positions beyond this are corrupt (exabytes of traffic)
_M64 = (1 << 64) - 1

# Header word indexes (u64 words of the mapping).
_W_MAGIC = 0
_W_VERSION = 1
_W_CAPACITY = 2
_W_DSIZE = 3
# Line 0 (bytes 0-63) is read-mostly; the producers' words have line 1 to
# themselves and the consumers' line 2, so a commit on one side does not take
# the other side's line away from its core (false sharing).
_W_CLOSED = 4
_W_CLOSING = 5  # set by shutdown() before _W_CLOSED: producers commit nothing after it
_W_WATCH = 6  # recv watchers; 7: send watchers
_W_TSEL = 8  # the tail generation
_W_TSLOT = 9  # slots 9,10 and 11,12
_W_PREL = 13  # producer releases without a commit
_W_HSEL = 16  # the head generation
_W_HSLOT = 17  # slots 17,18 and 19,20
_W_CREL = 21  # consumer releases without a commit

# File offsets of the lock bytes (advisory; the bytes themselves are never touched).
_LOCK_PRODUCER = 256  # serialises recoveries of the producer mutex
_LOCK_STATE = 257  # creation and the watcher counts
_LOCK_CONSUMER = 258  # serialises recoveries of the consumer mutex
#: Handle slots: slot i's lock byte is _LIVE_BYTE + i, its word _W_SLOTS + i.
_SLOTS = 1024
_LIVE_BYTE = 1024
_W_SLOTS = 8192 // 8
#: The sides (values of ``side`` arguments).
_PROD = 1
_CONS = 2
#: Handle slot words: byte 0 is 1 while the handle takes or holds the producer
#: side, byte 1 the consumer side (each byte written alone by its side's turn
#: holder, so the two sides never write over each other's claim).
_CLAIM_MASK = {_PROD: 0x01, _CONS: 0x0100}


def _claim_bytes(slot: int) -> tuple[int, int]:
    """Byte offsets of handle slot ``slot``'s producer and consumer claims."""
    at = 8 * (_W_SLOTS + slot)
    return at, at + 1


#: Longest single sleep on a semaphore before re-checking the shared state (seconds).
_SLEEP_CAP = 0.2
#: How long a blocking wait watches the shared state before sleeping on its
#: semaphore (seconds): a busy peer is usually seen without a sleep and wake-up.
_SPIN = 100e-6
#: How long a contended mutex is retried with sched_yield before sleeping between tries (seconds).
_LOCK_SPIN = 50e-6
#: Longest pause between tries of a contended mutex (seconds).
_POLL_MAX = 0.001
#: A mutex not got for this long is checked for a dead holder, then every _RECHECK (seconds).
_ORPHAN_CHECK = 0.002
_RECHECK = 0.02
#: A peer holds the state lock for microseconds: waiting for it gets at least this long
#: even with ``timeout=0`` (seconds); commits get longer so a copied message is not dropped.
_STATE_GRACE = 0.05
_COMMIT_GRACE = 1.0
#: How long an opener waits for a ring being created to be initialised (seconds).
_OPEN_WAIT = 1.0
#: How long shutdown() waits for a producer inside its commit (seconds): one
#: that is stopped or dead there is not waited for.
_SHUTDOWN_WAIT = 0.1
_ZERO = (0,)
_U64 = struct.Struct("<Q")
#: Padding after a payload of n bytes: _PADS[n & 7].
_PADS = tuple(bytes(-k & 7) for k in range(8))
_BusyError = posix_ipc.BusyError


class _Fence:
    """A full memory barrier for weakly ordered CPUs, from pure Python: a post then a
    take of a private semaphore (glibc: a release then an acquire atomic instruction).

    x86-64 keeps stores in program order and loads in program order, which is
    all the lock-free reads need, so there the fence is not used (_FENCE is None).
    """

    def __init__(self) -> None:
        self._make()
        os.register_at_fork(after_in_child=self._make)  # the parent's is shared: own one

    def _make(self) -> None:
        sem = posix_ipc.Semaphore(None, posix_ipc.O_CREX, 0o600, 0)
        sem.unlink()  # private: nothing left in /dev/shm
        self._post, self._take = sem.release, sem.acquire

    def __call__(self) -> None:
        self._post()
        self._take(0)


_FENCE: _Fence | None = None if platform.machine() in ("x86_64", "AMD64") else _Fence()


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
#: Every lock byte of a handle (its slot's included): length 0 reaches past the end.
_UNLOCK_EVERY = _flock(fcntl.F_UNLCK, 0, 0)
_F_SETLK: int = fcntl.F_OFD_SETLK  # type: ignore[attr-defined,unused-ignore]
_F_SETLKW: int = fcntl.F_OFD_SETLKW  # type: ignore[attr-defined,unused-ignore]
_F_GETLK: int = getattr(fcntl, "F_OFD_GETLK", 36)
_BUSY = (errno.EAGAIN, errno.EACCES)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _joined(buf: memoryview, a: int, first: int, b: int, rest: int) -> bytes:
    """``buf[a:a+first] + buf[b:b+rest]`` (a record that wraps), allocated and copied once."""
    return b"".join((buf[a : a + first], buf[b : b + rest]))


class _Bounce:
    """The buffer a view of a wrapping record is joined into, kept by the handle and reused.

    A fresh allocation of that size is, in glibc's malloc (past its 128 KiB
    mmap threshold), new pages faulted in one by one: for 1 MiB, 1.5 ms here
    against 0.16 ms for the copy, and the python Ring's 1 MiB views ran at
    6 GB/s against 33 in a process whose threshold had moved. Only a view
    block's own thread uses it (the consumer turn is held); a caller that
    keeps the view exported past its block keeps that buffer, and the next
    view gets a new one.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf: LentBuffer | None = None

    def join(self, buf: memoryview, a: int, first: int, b: int, rest: int) -> memoryview:
        n = first + rest
        out = self._buf
        if out is None or len(out) < n:
            out = self._buf = LentBuffer(n)
        mv = memoryview(out)
        mv[:first] = buf[a : a + first]
        mv[first:n] = buf[b : b + rest]
        view = mv[:n]
        mv.release()
        return view

    def give_back(self, view: memoryview, raw: memoryview) -> None:
        """The block's end: release ``view`` (lent) and ``raw`` (what it was made from);
        a caller still exporting a view of the buffer keeps it."""
        if not release_view(view) and raw.obj is self._buf:
            self._buf = None
        release_view(raw)


def _data_size(capacity: int) -> int:
    """Layout 2's data-area bytes for ``capacity`` (behind a ``_HEADER``-byte header); kept
    for modules that import it. This ring uses :func:`_ring_data_size`."""
    page = mmap.PAGESIZE
    total = _HEADER + _align8(capacity) + 8
    return (total + page - 1) // page * page - _HEADER


def _ring_data_size(capacity: int) -> int:
    """Data-area bytes of a layout-3 (and 4) ring for ``capacity``: room for one largest record,
    rounded so the whole segment is whole pages."""
    page = mmap.PAGESIZE
    total = _DATA + _align8(capacity) + 8
    return (total + page - 1) // page * page - _DATA


def _deadline(timeout: float | None) -> float | None:
    """The deadline of ``timeout`` in ``time.monotonic()`` seconds (the clock this file waits on)."""
    if timeout is None:  # the common call: spare it the checks' function call (1% of a 64 B send)
        return None
    until = deadline(timeout)
    return None if until is None else until / 1e9


def _block_open(name: str, block: str, mine: bool = False) -> RuntimeError:
    """The error of a second view block on a handle: one at a time, as the native ring's."""
    whose = "this thread's" if mine else "another thread's"
    return RuntimeError(
        f"ring {name!r}: a {block} block is open on this handle ({whose}); one block per "
        "handle at a time: finish it first, or give each thread that uses views a handle "
        "of its own (Ring.open)"
    )


def _seconds_left(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (from :func:`_deadline`), at least 0; None: no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _claim_slot(fd: int) -> int:
    """Take a free handle slot of the segment open on ``fd``: lock its byte, clear its word.

    A slot is free when no live open file description holds its byte (the
    kernel drops a dead handle's lock). Raises OSError(EMFILE) when all
    ``_SLOTS`` are in use.
    """
    start = random.randrange(_SLOTS)  # few collisions between openers racing
    for k in range(_SLOTS):
        i = (start + k) % _SLOTS
        try:
            fcntl.fcntl(fd, _F_SETLK, _flock(fcntl.F_WRLCK, _LIVE_BYTE + i))
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
            continue
        return i
    raise OSError(errno.EMFILE, f"all {_SLOTS} handle slots of the ring are in use")


def _slot_alive(fd: int, i: int) -> bool:
    """Whether another open file description holds slot ``i``'s lock byte (its handle lives)."""
    res = fcntl.fcntl(fd, _F_GETLK, _flock(fcntl.F_WRLCK, _LIVE_BYTE + i))
    return bool(struct.unpack_from("h", res)[0] != fcntl.F_UNLCK)


def _records(views: list[Any], lens: list[int]) -> bytes:
    """The records of ``views`` (payload lengths ``lens``) as one bytes: [u64 length][payload][pad].

    Built in C whatever the count: messages of one length (the usual batch)
    are a single join with the next header as the separator.
    """
    first = lens[0]
    if lens.count(first) == len(lens):
        head = _U64.pack(first)
        pad = _PADS[first & 7]
        return head + (pad + head).join(views) + pad
    parts: list[Any] = [b""] * (3 * len(views))
    parts[0::3] = map(_U64.pack, lens)
    parts[1::3] = views
    parts[2::3] = map(_PADS.__getitem__, map((7).__and__, lens))
    return b"".join(parts)


#: (payload length, count) -> the Struct that unpacks that many such records at once.
_RUNS: dict[tuple[int, int], struct.Struct] = {}


def _run_struct(n: int, count: int) -> struct.Struct:
    """A Struct unpacking ``count`` consecutive records of ``n``-byte payloads to their payloads."""
    st = _RUNS.get((n, count))
    if st is None:
        if len(_RUNS) >= 256:  # batches of many different shapes: keep the cache bounded
            _RUNS.clear()
        st = _RUNS[(n, count)] = struct.Struct(f"8x{n}s{-n & 7}x" * count)
    return st


def _cut_records(
    q: Any,
    mm: Any,
    data: int,
    D: int,
    cap: int,
    pos: int,
    tail: int,
    n: int,
    count: int,
    corrupt: Callable[[int, int], NoReturn],
) -> tuple[list[bytes], int]:
    """Up to ``count`` payloads of the records in [pos, tail), the first of length ``n``
    (checked by the caller), and the position after the last one taken.

    The records lie in a data area of ``D`` bytes from byte ``data`` of
    ``mm`` (``q``: the same memory as u64 words), a record's header never
    split by the wrap (the layout the python Ring and Broadcast share).
    ``corrupt(n, pos)`` raises for a length that cannot be one written there.
    """
    out: list[bytes] = []
    while True:
        off = pos % D
        r = (n + 15) & ~7
        # A run of records of this same length, none wrapping: headers checked at
        # once (a strided view of the words), payloads sliced out in C.
        run = min(count - len(out), (tail - pos) // r, (D - off) // r)
        if run > 1:
            w0 = (data + off) >> 3
            same = q[w0 : w0 + run * (r >> 3) : r >> 3].tolist()
            if same.count(n) == run:
                out += _run_struct(n, run).unpack_from(mm, data + off)
                pos += run * r
                if len(out) >= count or pos >= tail:
                    return out, pos
                n = q[(data + pos % D) >> 3]
                if n > cap or (n + 15) & ~7 > tail - pos:
                    corrupt(n, pos)
                continue
        base = data + off + 8
        if off + 8 + n <= D:
            out.append(mm[base : base + n])
        else:  # the payload wraps (the header never does)
            first = D - off - 8
            out.append(_joined(memoryview(mm), base, first, data, n - first))
        pos += r
        if len(out) >= count or pos >= tail:
            return out, pos
        n = q[(data + pos % D) >> 3]
        if n > cap or (n + 15) & ~7 > tail - pos:  # the whole record, as _length checks
            corrupt(n, pos)


class PythonRing(RingBase):
    """:class:`~fastipc.Ring` implemented in Python over mmap, posix_ipc semaphores and OFD locks.

    Each handle owns its own file descriptor and handle slot (so handles in
    one process are separate participants), and a send and a receive turn
    (one send and one receive at a time on a handle).
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
        bells: tuple[int, int],
        items: posix_ipc.Semaphore,
        space: posix_ipc.Semaphore,
        prod: posix_ipc.Semaphore | None = None,
        cons: posix_ipc.Semaphore | None = None,
    ) -> None:
        # First, before any view of the mapping exists: a failure leaves nothing to undo.
        self._slot = _claim_slot(fd)
        self._slotw = _W_SLOTS + self._slot
        self._pclaim, self._cclaim = _claim_bytes(self._slot)
        self.name = name
        self.capacity = capacity
        self._fd = fd
        self._mm = mm
        self._buf = memoryview(mm)
        self._q = self._buf.cast("Q")
        self._bounce = _Bounce()
        self._D = dsize
        self._items = items
        self._space = space
        assert prod is not None and cons is not None
        self._prod = prod
        self._cons = cons
        self._ptry = prod.acquire
        self._ctry = cons.acquire
        # One send and one receive at a time on this handle; waiters queue (_turns.py).
        # A turn's ``block`` is the thread whose reserve()/recv_view() block holds it.
        self._tx_turn = Turn()
        self._rx_turn = Turn()
        # The state lock and the bells among this handle's threads; only ever taken by
        # ``with`` (see "Interrupts" in the module docstring).
        self._slock = threading.Lock()
        # A thread is inside a send (receive) call or block (see _check_enter).
        self._in_tx = self._in_rx = False
        self._closed = False
        self._torn_down = False
        self._shutting = False  # between shutdown()'s two flags (see _teardown)
        #: The held mutex of a reserve() (recv_view()) block in progress, for close() inside it.
        self._tx_hold: list[None] | None = None
        self._rx_hold: list[None] | None = None
        # Stale but safe views of the other side: head and tail only grow, so a
        # producer's old head understates free space and a consumer's old tail
        # understates what is committed.
        self._head_seen = 0
        self._tail_seen = 0
        # The doorbell fds (recv, send), opened with the ring and kept (rung here,
        # duplicated for readiness fds: never reopened by path); closed at teardown.
        self._bells = list(bells)
        self._q[self._slotw] = 0
        _LIVE.add(self)

    # ---- construction -----------------------------------------------------
    @classmethod
    def _create(cls, name: str, capacity: int, mode: int) -> PythonRing:
        """Create the segment and semaphores of ring ``name`` (arguments already validated)."""
        path = segment_path(name)
        dsize = _ring_data_size(capacity)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        made: list[str] = [path]
        sems: list[posix_ipc.Semaphore] = []
        bells: list[int] = []
        mm: mmap.mmap | None = None
        ring: PythonRing | None = None
        try:
            os.fchmod(fd, mode)  # the umask must not apply
            # Held while initialising so an opener that races us waits for the magic.
            fcntl.fcntl(fd, _F_SETLKW, _LOCKS[_LOCK_STATE])
            os.ftruncate(fd, _DATA + dsize)
            # items and space start empty (hints); the two mutexes start free.
            for k, (sem_name, sem_path) in enumerate(
                zip(semaphore_names(name), semaphore_paths(name))
            ):
                try:
                    sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, mode, int(k >= 2))
                except posix_ipc.ExistentialError:
                    raise FileExistsError(errno.EEXIST, "semaphore exists", sem_path) from None
                except posix_ipc.PermissionsError:
                    raise PermissionError(errno.EACCES, "permission denied", sem_path) from None
                sems.append(sem)
                made.append(sem_path)
                os.chmod(sem_path, mode)
            mm = mmap.mmap(fd, _DATA + dsize, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            q = memoryview(mm).cast("Q")
            try:
                q[_W_VERSION] = LAYOUT_VERSION
                q[_W_CAPACITY] = capacity
                q[_W_DSIZE] = dsize
            finally:
                q.release()
            for side, bell in enumerate(bell_paths(name)):
                made.append(bell)
                # The ring's mode, before the magic. `+= map`: no handler runs
                # between the open and the store, so an interrupt leaks no fd.
                bells += map(open_bell, (name,), (side,), (mode,))
            mm[0:8] = MAGIC  # last: an opener that sees the magic sees a whole ring
            fcntl.fcntl(fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
            ring = cls.__new__(cls)
            ring._setup(name, fd, mm, capacity, dsize, (bells[0], bells[1]), *sems)
        except BaseException:
            if ring is not None and hasattr(ring, "_bells"):
                # Set up: the handle owns the fds, mapping and semaphores now, and
                # closing them here too could close numbers reused meanwhile.
                ring.close()
                bells, sems, mm, fd = [], [], None, -1
            for bfd in bells:
                os.close(bfd)
            for sem in sems:
                sem.close()
            if mm is not None:
                mm.close()
            if fd >= 0:
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
        bells: list[int] = []
        ring: PythonRing | None = None
        try:
            capacity, dsize = cls._read_geometry(name, fd)
            mm = mmap.mmap(fd, _DATA + dsize, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            for sem_name, sem_path in zip(semaphore_names(name), semaphore_paths(name)):
                try:
                    sems.append(posix_ipc.Semaphore(sem_name))
                except posix_ipc.ExistentialError:
                    raise FileNotFoundError(
                        errno.ENOENT, "ring semaphore missing", sem_path
                    ) from None
                except posix_ipc.PermissionsError:
                    raise PermissionError(errno.EACCES, "permission denied", sem_path) from None
            # The bells now, while the name is this ring's (see _names.open_bell);
            # one found missing is made again with the segment's mode.
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            # `+= map`: no handler runs between an open and its store (no fd leaks).
            bells += map(open_bell, (name, name), (0, 1), (mode, mode), (owners, owners))
            ring = cls.__new__(cls)
            ring._setup(name, fd, mm, capacity, dsize, (bells[0], bells[1]), *sems)
            ring._owners = owners
        except BaseException:
            if ring is not None and hasattr(ring, "_bells"):
                ring.close()  # set up: it owns them all now (see _create)
                bells, sems, mm, fd = [], [], None, -1
            for bfd in bells:
                os.close(bfd)
            for sem in sems:
                sem.close()
            if mm is not None:
                mm.close()
            if fd >= 0:
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
                head = os.pread(fd, 32, 0) if size >= 32 else b""
            finally:
                if locked:
                    fcntl.fcntl(fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
            if locked and len(head) == 32 and head[:8] != bytes(8):
                break
            if time.monotonic() >= give_up:
                if size < 32:
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
        if (
            dsize % 8
            or dsize < _align8(capacity) + 8
            or dsize > _ring_data_size(capacity) + (1 << 30)
        ):
            raise incompatible(name, f"data size {dsize} does not fit capacity {capacity}")
        if size < _DATA + dsize:
            raise incompatible(
                name, f"segment is {size} bytes, smaller than its layout ({_DATA + dsize})"
            )
        return capacity, dsize

    # ---- the side mutexes (see the module docstring) ----------------------------
    def _take(self, side: int, held: list[None], deadline: float | None) -> None:
        """Get ``side``'s mutex after a failed first try: retry, sleep, recover a dead holder's.

        On success ``held`` gets one item in the same C call that takes the
        semaphore (or the recovery that inherits it); raises Timeout past
        ``deadline`` (the other side's participant kept it: for this call the
        ring was as good as full or empty) or ValueError once closed.
        """
        buf = self._buf
        claim = self._pclaim if side == _PROD else self._cclaim
        acquire = self._ptry if side == _PROD else self._ctry
        now = time.monotonic()
        spin_end = now + _LOCK_SPIN
        check_at = now + _ORPHAN_CHECK
        pause = 10e-6
        while True:
            buf[claim] = 1  # claim before trying: see the recovery's argument
            try:
                held += map(acquire, _ZERO)
                return
            except _BusyError:
                pass
            buf[claim] = 0
            if self._closed:
                raise ValueError("ring is closed")
            now = time.monotonic()
            if now >= check_at:
                if self._recover(side, held):
                    return
                check_at = now + _RECHECK
            if deadline is not None and now >= deadline:
                raise timed_out(f"ring {self.name!r}", side == _PROD)
            if now < spin_end:
                # Peers hold a mutex for microseconds: yielding is far cheaper than
                # a sleep and the wake-up that ends it.
                os.sched_yield()
                continue
            # No timed wait that close() from another thread could interrupt: poll.
            time.sleep(pause if deadline is None else min(pause, max(deadline - now, 0.0)))
            pause = min(pause * 2, _POLL_MAX)

    def _recover(self, side: int, held: list[None]) -> bool:
        """Inherit ``side``'s mutex if its holder died holding it; True if this handle now holds it.

        Run by one waiter at a time (the side's recovery lock byte). The mutex
        is orphaned if the semaphore stays taken, no live slot claims the side,
        and neither the side's generation nor its release counter moves while
        the slots are scanned: a live holder writes its claim before taking
        the semaphore and clears it only after the release that bumps one of
        the two, so it cannot be missed by the scan without moving them.
        """
        fd = self._fd
        q = self._q
        if side == _PROD:
            lock_byte, sem, gen_w, rel_w = _LOCK_PRODUCER, self._prod, _W_TSEL, _W_PREL
        else:
            lock_byte, sem, gen_w, rel_w = _LOCK_CONSUMER, self._cons, _W_HSEL, _W_CREL
        try:
            fcntl.fcntl(fd, _F_SETLK, _LOCKS[lock_byte])
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
            return False  # another waiter is recovering it
        try:
            before = (q[gen_w], q[rel_w])
            if sem.value != 0:
                return False
            me = self._slot
            base = _W_SLOTS
            mask = _CLAIM_MASK[side]
            for i in range(_SLOTS):
                if q[base + i] & mask and i != me and _slot_alive(fd, i):
                    return False
            if sem.value != 0 or (q[gen_w], q[rel_w]) != before:
                return False
            # Orphaned: hold the taken semaphore in the dead holder's place.
            self._buf[self._pclaim if side == _PROD else self._cclaim] = 1
            held.append(None)
            return True
        finally:
            fcntl.fcntl(fd, _F_SETLK, _UNLOCKS[lock_byte])

    @staticmethod
    def _state_lock_deadline(deadline: float | None, grace: float = _STATE_GRACE) -> float | None:
        """A peer holds the state lock for microseconds: even ``timeout=0`` waits ``grace``."""
        return None if deadline is None else max(deadline, time.monotonic() + grace)

    def _lock(self, byte: int, deadline: float | None) -> None:
        """Take OFD lock ``byte`` (the state lock); poll until ``deadline`` (None: forever)."""
        pause = 10e-6
        while True:
            try:
                fcntl.fcntl(self._fd, _F_SETLK, _LOCKS[byte])
                return
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
            if self._closed:
                raise ValueError("ring is closed")
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out(f"ring {self.name!r}", None)
                time.sleep(min(pause, remaining))
            else:
                time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    def _unlock(self, byte: int) -> None:
        if not self._torn_down:  # after close() inside a block, the kernel already let go
            fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[byte])

    def _check_enter(self, deadline: float | None, sending: bool) -> int:
        """Before a call takes this handle's send (``sending``) or receive turn: refuse
        re-entry from this thread's view block or a signal handler on that side, and a
        closed handle. Returns this thread's id."""
        me = _ident()
        if (self._tx_turn if sending else self._rx_turn).block == me:
            block = "reserve()" if sending else "recv_view()"
            raise RuntimeError(f"ring handle is busy in a {block} block of this thread")
        if self._closed:
            raise ValueError("ring is closed")
        if (self._in_tx if sending else self._in_rx) and inside_a_call(
            sys._getframe(2), self, TX if sending else RX
        ):
            # Only a signal handler gets here (fastipc's methods do not call
            # each other): waiting for the turn its own thread holds would hang.
            raise reentrant_call(f"ring {self.name!r} ({'sending' if sending else 'receiving'})")
        return me

    def _refuse_block_on_the_other_side(self, me: int, sending: bool) -> None:
        """Before a reserve() (``sending``) or recv_view() block: refuse it at once, as the
        native ring does, while a block of the other side is open on this handle. One
        block per handle at a time; this thread's own would otherwise hang, waiting for
        what only that block can give (a message or room)."""
        owner = (self._rx_turn if sending else self._tx_turn).block
        if owner:
            raise _block_open(self.name, "recv_view()" if sending else "reserve()", owner == me)

    def _wait_turn(self, turn: Turn, side: str, deadline: float | None) -> None:
        """Take ``turn``, which another thread's call or view block has, within ``deadline``
        (ValueError if this handle is closed meanwhile). Leaving without it after a close()
        tears down: the call that gave the turn back may have handed it to this one."""
        try:
            turn.wait_take(
                self,
                side,
                _seconds_left(deadline),
                None,
                f"ring {self.name!r}",
                1,
                self._refuse_closed,
            )
        except BaseException:
            if self._closed:
                self._teardown_if_free()
            raise

    def _refuse_closed(self) -> None:
        if self._closed:
            raise ValueError("ring is closed")

    def _left(self, mine: Turn) -> None:
        """End of a call holding turn ``mine``: tear down if close() came meanwhile and the
        other side is free (else that side's call does, as it leaves)."""
        if self._closed and not self._torn_down:
            self._teardown_if_free(mine)

    # ---- shared state -------------------------------------------------------
    def _pair(self, gen_w: int) -> tuple[int, int]:
        """(position, count) of the side whose generation is word ``gen_w``, read without a lock."""
        q = self._q
        fence = _FENCE
        for _ in range(1000):
            g = q[gen_w]
            if fence:
                fence()  # the slot and the data after the generation
            i = gen_w + 1 + 2 * (g & 1)
            pos = q[i]
            count = q[i + 1]
            if fence:
                fence()
            if q[gen_w] == g:
                return pos, count
        raise incompatible(self.name, "a generation word never settles")

    def _tail_slot(self) -> tuple[int, int]:
        """(tail, pushed)."""
        return self._pair(_W_TSEL)

    def _head_slot(self) -> tuple[int, int]:
        """(head, popped)."""
        return self._pair(_W_HSEL)

    def _state(self) -> tuple[int, int, int, int, bool]:
        """(head, popped, tail, pushed, closed), one consistent snapshot, validated.

        The closed flag is read first: shutdown stores it after the last commit
        it lets through, so a tail read after it holds that commit. Read after
        the tail, it could pair a tail from before that commit with the flag,
        and an empty-looking ring would be "shut down and drained" with a
        message still in it."""
        closed = self._q[_W_CLOSED] != 0
        if _FENCE:
            _FENCE()  # the flag before the positions
        for _ in range(1000):
            head, popped = self._pair(_W_HSEL)
            tail, pushed = self._pair(_W_TSEL)
            if self._pair(_W_HSEL)[0] == head:
                break
        else:
            raise incompatible(self.name, "the head never settles")
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

    def _read_state(self, deadline: float | None = None) -> tuple[int, int, int, int, bool]:
        """:meth:`_state`, remembered as the latest head and tail seen."""
        if self._torn_down:
            raise ValueError("ring is closed")
        st = self._state()
        self._head_seen = st[0]
        self._tail_seen = st[2]
        return st

    def _commit(self, gen_w: int, pos: int, count: int) -> None:
        """Publish (pos, count) for the side of ``gen_w``: the idle slot, then the generation."""
        q = self._q
        g = (q[gen_w] + 1) & _M64
        i = gen_w + 1 + 2 * (g & 1)
        q[i] = pos & _M64
        q[i + 1] = count & _M64  # a corrupt count wraps; _state() reports it
        if _FENCE:
            _FENCE()  # the data and the slot before the generation
        q[gen_w] = g  # the commit: one aligned 8-byte store

    def _sleep(
        self, sem: posix_ipc.Semaphore, deadline: float | None, gen_w: int = -1, seen: int = 0
    ) -> None:
        """Wait for a hint on ``sem`` (at most _SLEEP_CAP); raise Timeout past the deadline.

        With ``gen_w``, first watch that generation word for up to _SPIN while it
        holds ``seen``: a busy peer commits within microseconds, and seeing that
        saves a sleep and wake-up. ``seen`` is the word as read *before* the caller
        looked at the state: read here, a commit made since that look would be
        waited for again (a full spin, then a sleep the commit's post ends at
        once: the python Ring's round trip p99 was 110-220 us against a median of
        8-10 us).
        """
        if self._closed:
            raise ValueError("ring is closed")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise timed_out(f"ring {self.name!r}", sem is self._space)
        if gen_w >= 0:
            q = self._q
            # A plain spin: sched_yield() would hand the CPU to any other runnable
            # task for a whole time slice, far longer than the peer takes.
            spin_end = now + _SPIN
            clock = time.monotonic
            while q[gen_w] == seen and clock() < spin_end:
                pass
            if q[gen_w] != seen:
                return
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

    def _published(self) -> None:
        """After a producer's commit and release: wake a sleeping consumer, ring the bell."""
        try:
            if self._torn_down:
                return
            items = self._items
            if items.value == 0:
                items.release()
            # Read after the release (a full barrier) of the mutex: either a watcher's
            # re-check, made after its count is stored, sees this commit, or we see it.
            if self._q[_W_WATCH]:
                self._ring_bell(0)
        except (ValueError, posix_ipc.Error):
            # Closed by another thread since the commit (these run after the handle's
            # lock is given back): the call succeeded, and a wake-up is only a hint.
            if not self._torn_down:
                raise

    def _freed(self) -> None:
        """After a consumer's commit and release: wake a sleeping producer, ring the bell."""
        try:
            if self._torn_down:
                return
            space = self._space
            if space.value == 0:
                space.release()
            if self._q[_W_WATCH + 1]:
                self._ring_bell(1)
        except (ValueError, posix_ipc.Error):
            if not self._torn_down:  # closed meanwhile (see _published)
                raise

    # ---- producer side --------------------------------------------------------
    def _wait_space(self, need: int, deadline: float | None) -> tuple[int, int]:
        """Wait until ``need`` bytes are free; return (tail, pushed). Producer mutex held."""
        D = self._D
        q = self._q
        tail, pushed = self._pair(_W_TSEL)  # ours: no other writer while we hold the mutex
        while True:
            # The consumers' head alone first (a full ring waits here once a message).
            head = self._pair(_W_HSEL)[0]
            if 0 <= tail - head <= D - need and tail < _MAX_POS and not q[_W_CLOSING]:
                self._head_seen = head
                return tail, pushed
            seen = q[_W_HSEL]  # before the look (see _sleep)
            head, _, tail, pushed, closed = self._read_state()  # validated
            if closed or q[_W_CLOSING]:
                raise Closed("ring is shut down")
            if tail - head <= D - need:
                return tail, pushed
            self._sleep(self._space, deadline, _W_HSEL, seen)

    def _write(self, pos: int, data: Any) -> None:
        """Copy ``data`` into the data area at position ``pos``, wrapping at the end."""
        D = self._D
        off = pos % D
        n = len(data)
        first = D - off
        base = _DATA + off
        if n <= first:
            self._mm[base : base + n] = data
        else:
            mv = memoryview(data).cast("B")
            self._mm[base : base + first] = mv[:first]
            self._mm[_DATA : _DATA + n - first] = mv[first:]

    def _put(self, pos: int, data: Any, n: int) -> int:
        """Write one record of ``n`` bytes at ``pos``; return the position after it."""
        off = pos % self._D
        self._q[(_DATA + off) >> 3] = n
        if n:
            if off + 8 + n <= self._D:
                base = _DATA + off + 8
                self._mm[base : base + n] = data
            else:
                self._write(pos + 8, data)
        return pos + ((n + 15) & ~7)

    def _message(self, data: Any) -> memoryview:
        mv = check_buffer(data)
        if mv.nbytes > self.capacity:
            raise MessageTooLarge(
                f"message of {mv.nbytes} bytes exceeds ring capacity {self.capacity}"
            )
        return mv

    @takes_turn(TX)
    def send(self, data: Any, timeout: float | None = None) -> None:
        if type(data) is bytes:  # the common case: no view needed
            n = len(data)
            if n > self.capacity:
                self._message(data)  # raises MessageTooLarge
        else:
            data = self._message(data)
            n = data.nbytes
        deadline = None if timeout is None else _deadline(timeout)
        if deadline is not None or self._in_tx:
            self._check_enter(deadline, True)
        turn = self._tx_turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(turn, TX, deadline)
        try:
            self._in_tx = True  # (see _check_enter)
            try:
                if self._closed:
                    raise ValueError("ring is closed")
                q = self._q
                buf, claim = self._buf, self._pclaim
                done = False
                more: list[None] | None = None
                buf[claim] = 1
                # Held unless the try raises BusyError: no signal handler can run between
                # the take and this flag's reset (see "Interrupts").
                held = True
                try:
                    try:
                        self._ptry(0)
                    except _BusyError:
                        held = False
                        more = []
                        self._take(_PROD, more, deadline)
                    need = (n + 15) & ~7
                    g = q[_W_TSEL]
                    i = _W_TSLOT + 2 * (g & 1)
                    tail = q[i]
                    pushed = q[i + 1]
                    D = self._D
                    if not 0 <= tail - self._head_seen <= D - need or q[_W_CLOSING]:
                        # One fresh look at the head (as _next does the tail), then the wait.
                        hg = q[_W_HSEL]
                        head = q[_W_HSLOT + 2 * (hg & 1)]
                        if (
                            _FENCE
                            or q[_W_HSEL] != hg
                            or q[_W_CLOSING]
                            or not 0 <= tail - head <= D - need
                        ):
                            tail, pushed = self._wait_space(need, deadline)
                        else:
                            self._head_seen = head
                    off = tail % D
                    base = _DATA + off
                    q[base >> 3] = n
                    if off + 8 + n <= D:
                        self._mm[base + 8 : base + 8 + n] = data
                    elif n:
                        self._write(tail + 8, data)
                    if q[_W_CLOSING]:  # shutdown() waits for a commit that checked before its flag
                        raise Closed("ring is shut down")
                    g = (g + 1) & _M64
                    i = _W_TSLOT + 2 * (g & 1)
                    q[i] = tail + need
                    q[i + 1] = (pushed + 1) & _M64  # a corrupt count wraps; len() reports it
                    if _FENCE:
                        _FENCE()  # the data and the slot before the generation (see _Fence)
                    q[_W_TSEL] = g  # the commit: one aligned 8-byte store
                    done = True
                finally:
                    # Inline, not a helper: a signal handler may raise at a function's entry.
                    try:
                        if held or more:
                            if not done:
                                q[_W_PREL] = (q[_W_PREL] + 1) & _M64
                            self._prod.release()
                    finally:
                        # Cleared even when a handler raises right after the release: a
                        # stale claim would keep peers from recovering a dead holder's mutex.
                        buf[claim] = 0
                    if done:
                        # After the release, a full barrier (see _published).
                        if q[_W_WATCH]:
                            self._ring_bell(0)
                        hint = self._items
                        if hint.value == 0:
                            hint.release()
                    if self._closed:
                        self._left(turn)
            finally:
                self._in_tx = False
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            if self._closed:
                self._teardown_if_free()  # a close() that found a turn taken

    @takes_turn(TX)
    def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        msgs = messages if type(messages) is list else list(messages)
        cap = self.capacity
        if set(map(type, msgs)) <= {bytes}:
            views: list[Any] = msgs
            lens = list(map(len, msgs))
            if lens and max(lens) > cap:
                self._message(msgs[[n > cap for n in lens].index(True)])  # raises
        else:
            views = [self._message(m) for m in msgs]
            lens = [v.nbytes for v in views]
        deadline = _deadline(timeout)
        if not views:
            if self._closed:  # as any other call on a closed handle
                raise ValueError("ring is closed")
            return 0
        # Record sizes and their running totals: a batch is cut where the free space ends.
        ends = list(accumulate([(n + 15) & ~7 for n in lens]))
        total = len(views)
        D = self._D
        sent = 0
        self._check_enter(deadline, True)
        turn = self._tx_turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(turn, TX, deadline)
        try:
            self._in_tx = True  # (see _check_enter)
            try:
                if self._closed:
                    raise ValueError("ring is closed")
                q = self._q
                held: list[None] = []
                done = False
                self._buf[self._pclaim] = 1
                try:
                    try:
                        held += map(self._ptry, _ZERO)
                    except _BusyError:
                        try:
                            self._take(_PROD, held, deadline)
                        except Timeout as exc:
                            raise type(exc)(str(exc), sent=0) from None
                    while sent < total:
                        done_before = ends[sent - 1] if sent else 0
                        tail, pushed = self._pair(_W_TSEL)
                        free = D - (tail - self._head_seen)
                        k = bisect_right(ends, done_before + free) if free <= D else sent
                        if k <= sent or q[_W_CLOSING]:
                            try:
                                tail, pushed = self._wait_space(ends[sent] - done_before, deadline)
                            except (Timeout, Closed) as exc:
                                raise type(exc)(str(exc), sent=sent) from None
                            free = D - (tail - self._head_seen)
                            k = bisect_right(ends, done_before + free)
                        blob = _records(views[sent:k], lens[sent:k])
                        self._write(tail, blob)
                        if q[_W_CLOSING]:
                            raise Closed("ring is shut down", sent=sent)
                        self._commit(_W_TSEL, tail + len(blob), pushed + (k - sent))
                        done = True
                        sent = k
                finally:
                    # Inline, not a helper: a signal handler may raise at a function's entry.
                    try:
                        if held:
                            if not done:
                                q[_W_PREL] = (q[_W_PREL] + 1) & _M64
                            self._prod.release()
                    finally:
                        self._buf[self._pclaim] = 0  # (see send)
                    self._left(turn)
            finally:
                self._in_tx = False
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            if self._closed:
                self._teardown_if_free()  # a close() that found a turn taken
        self._published()
        return sent

    def reserve(
        self, nbytes: int, timeout: float | None = None
    ) -> AbstractContextManager[memoryview]:
        n = validate_count(nbytes, "nbytes", 0)
        if n > self.capacity:
            raise MessageTooLarge(f"reservation of {n} bytes exceeds ring capacity {self.capacity}")
        return self._reserve(n, _deadline(timeout))

    @contextmanager
    @takes_turn(TX)
    def _reserve(self, n: int, deadline: float | None) -> Iterator[memoryview]:
        me = self._check_enter(deadline, True)
        self._refuse_block_on_the_other_side(me, True)
        turn = self._tx_turn
        if turn.block:  # another thread's block (this thread's: _check_enter refused it)
            raise _block_open(self.name, "reserve()")
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(turn, TX, deadline)
        try:
            self._in_tx = True  # (see _check_enter)
            try:
                if self._closed:
                    raise ValueError("ring is closed")
                q = self._q
                held: list[None] = []
                done = False
                self._buf[self._pclaim] = 1
                try:
                    try:
                        held += map(self._ptry, _ZERO)
                    except _BusyError:
                        self._take(_PROD, held, deadline)
                    self._tx_hold = held
                    tail, pushed = self._wait_space(8 + _align8(n), deadline)
                    # The block, from here: this thread's, for _check_enter, close()
                    # and _turns._lost (no frame shows the turn held while it runs). Not
                    # sooner: a handler's close() while the call waits leaves the
                    # teardown to the call, and the other side's block check below
                    # must not see a call that only waits.
                    turn.block = me
                    if self._rx_turn.block:
                        # One block per handle at a time, as the native ring's one hold.
                        raise _block_open(self.name, "recv_view()")
                    off = (tail + 8) % self._D
                    temp: bytearray | None = None
                    if off + n <= self._D:
                        view = self._buf[_DATA + off : _DATA + off + n]
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
                    if not held:
                        raise inherited_block("reserve()")
                    if q[_W_CLOSING]:
                        raise Closed("ring is shut down")
                    if temp is not None:
                        end = self._put(tail, temp, n)
                    else:
                        self._q[(_DATA + tail % self._D) >> 3] = n
                        end = tail + 8 + _align8(n)
                    self._commit(_W_TSEL, end, pushed + 1)
                    done = True
                finally:
                    turn.block = 0
                    self._tx_hold = None
                    try:
                        if held:  # emptied by close() inside the block, which released it
                            if not done:
                                q[_W_PREL] = (q[_W_PREL] + 1) & _M64
                            self._prod.release()
                    finally:
                        if not self._torn_down:
                            self._buf[self._pclaim] = 0  # (see send)
                    self._left(turn)
            finally:
                self._in_tx = False
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            if self._closed:
                self._teardown_if_free()  # a close() that found a turn taken
        self._published()

    # ---- consumer side ----------------------------------------------------------
    def _wait_message(self, deadline: float | None) -> tuple[int, int, int]:
        """Wait for a message; return (head, popped, committed end). Consumer mutex held."""
        head, popped = self._pair(_W_HSEL)  # ours: no other writer while we hold the mutex
        tail = self._pair(_W_TSEL)[0]
        if 8 <= tail - head <= self._D and tail < _MAX_POS:
            self._tail_seen = tail
            return head, popped, tail
        q = self._q
        while True:
            seen = q[_W_TSEL]  # before the look (see _sleep)
            head, popped, tail, _, closed = self._read_state()
            if tail != head:
                return head, popped, tail
            if closed:
                raise Closed("ring is shut down and drained")
            self._sleep(self._items, deadline, _W_TSEL, seen)

    def _length(self, head: int, tail: int) -> int:
        """Payload length of the record at ``head``, checked against the committed bytes."""
        n: int = self._q[(_DATA + head % self._D) >> 3]
        if n > self.capacity or 8 + _align8(n) > tail - head:
            raise incompatible(self.name, f"corrupt record: length {n} at position {head}")
        return n

    def _read(self, pos: int, n: int) -> bytes:
        """The ``n`` payload bytes of the record at ``pos``, joined if they wrap."""
        D = self._D
        off = (pos + 8) % D
        base = _DATA + off
        if off + n <= D:
            return self._mm[base : base + n]
        first = D - off
        return _joined(self._buf, base, first, _DATA, n - first)

    def _next(self, q: Any, deadline: float | None) -> tuple[int, int, int, int]:
        """(generation, head, popped, payload length) of the next message. Consumer mutex held."""
        g = q[_W_HSEL]
        i = _W_HSLOT + 2 * (g & 1)
        head = q[i]
        popped = q[i + 1]
        tail = self._tail_seen
        D = self._D
        if not 8 <= tail - head <= D:
            # What this handle saw is consumed: one fresh look at the tail (its
            # generation, the slot, the generation again), the full wait if empty.
            tg = q[_W_TSEL]
            tail = q[_W_TSLOT + 2 * (tg & 1)]
            if _FENCE or q[_W_TSEL] != tg or not 8 <= tail - head <= D or tail >= _MAX_POS:
                head, popped, tail = self._wait_message(deadline)
                g = q[_W_HSEL]
            else:
                self._tail_seen = tail
        n: int = q[(_DATA + head % D) >> 3]
        if n > self.capacity or n + 8 > tail - head:
            raise incompatible(self.name, f"corrupt record: length {n} at position {head}")
        return g, head, popped, n

    @takes_turn(RX)
    def recv(self, timeout: float | None = None) -> bytes:
        deadline = None if timeout is None else _deadline(timeout)
        if deadline is not None or self._in_rx:
            self._check_enter(deadline, False)
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(turn, RX, deadline)
        try:
            self._in_rx = True  # (see _check_enter)
            try:
                if self._closed:
                    raise ValueError("ring is closed")
                q = self._q
                buf, claim = self._buf, self._cclaim
                done = False
                more: list[None] | None = None
                buf[claim] = 1
                # Held unless the try raises BusyError: no signal handler can run between
                # the take and this flag's reset (see "Interrupts").
                held = True
                try:
                    try:
                        self._ctry(0)
                    except _BusyError:
                        held = False
                        more = []
                        self._take(_CONS, more, deadline)
                    g, head, popped, n = self._next(q, deadline)
                    D = self._D
                    off = head % D
                    if off + 8 + n <= D:
                        base = _DATA + off + 8
                        data = self._mm[base : base + n]
                    else:
                        data = self._read(head, n)
                    g = (g + 1) & _M64
                    i = _W_HSLOT + 2 * (g & 1)
                    q[i] = head + ((n + 15) & ~7)
                    q[i + 1] = (popped + 1) & _M64
                    if _FENCE:
                        _FENCE()  # the data and the slot before the generation (see _Fence)
                    q[_W_HSEL] = g  # the commit: one aligned 8-byte store
                    done = True
                finally:
                    # Inline, not a helper: a signal handler may raise at a function's entry.
                    try:
                        if held or more:
                            if not done:
                                q[_W_CREL] = (q[_W_CREL] + 1) & _M64
                            self._cons.release()
                    finally:
                        # Cleared even when a handler raises right after the release: a
                        # stale claim would keep peers from recovering a dead holder's mutex.
                        buf[claim] = 0
                    if done:
                        # After the release, a full barrier (see _published).
                        if q[_W_WATCH + 1]:
                            self._ring_bell(1)
                        hint = self._space
                        if hint.value == 0:
                            hint.release()
                    if self._closed:
                        self._left(turn)
            finally:
                self._in_rx = False
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            if self._closed:
                self._teardown_if_free()  # a close() that found a turn taken
        return data

    @takes_turn(RX)
    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        dst = check_buffer(buffer, "buffer")
        if dst.readonly:
            raise TypeError("buffer must be writable")
        deadline = _deadline(timeout)
        if deadline is not None or self._in_rx:
            self._check_enter(deadline, False)
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(turn, RX, deadline)
        try:
            self._in_rx = True  # (see _check_enter)
            try:
                if self._closed:
                    raise ValueError("ring is closed")
                q = self._q
                buf, claim = self._buf, self._cclaim
                done = False
                more: list[None] | None = None
                buf[claim] = 1
                # Held unless the try raises BusyError: no signal handler can run between
                # the take and this flag's reset (see "Interrupts").
                held = True
                try:
                    try:
                        self._ctry(0)
                    except _BusyError:
                        held = False
                        more = []
                        self._take(_CONS, more, deadline)
                    _, head, popped, n = self._next(q, deadline)
                    if n > dst.nbytes:
                        raise MessageTooLarge(
                            f"message of {n} bytes does not fit a {dst.nbytes}-byte buffer"
                        )
                    D = self._D
                    off = (head + 8) % D
                    base = _DATA + off
                    if off + n <= D:
                        dst[:n] = self._buf[base : base + n]
                    else:
                        first = D - off
                        dst[:first] = self._buf[base : base + first]
                        dst[first:n] = self._buf[_DATA : _DATA + n - first]
                    self._commit(_W_HSEL, head + ((n + 15) & ~7), popped + 1)
                    done = True
                finally:
                    # Inline, not a helper: a signal handler may raise at a function's entry.
                    try:
                        if held or more:
                            if not done:
                                q[_W_CREL] = (q[_W_CREL] + 1) & _M64
                            self._cons.release()
                    finally:
                        # Cleared even when a handler raises right after the release: a
                        # stale claim would keep peers from recovering a dead holder's mutex.
                        buf[claim] = 0
                    if done:
                        # After the release, a full barrier (see _published).
                        if q[_W_WATCH + 1]:
                            self._ring_bell(1)
                        hint = self._space
                        if hint.value == 0:
                            hint.release()
                    if self._closed:
                        self._left(turn)
            finally:
                self._in_rx = False
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            if self._closed:
                self._teardown_if_free()  # a close() that found a turn taken
        return n

    @takes_turn(RX)
    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        count = validate_max_count(max_count)
        deadline = _deadline(timeout)
        out: list[bytes] = []
        self._check_enter(deadline, False)
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(turn, RX, deadline)
        try:
            self._in_rx = True  # (see _check_enter)
            try:
                if self._closed:
                    raise ValueError("ring is closed")
                q = self._q
                held: list[None] = []
                done = False
                self._buf[self._cclaim] = 1
                try:
                    try:
                        held += map(self._ctry, _ZERO)
                    except _BusyError:
                        self._take(_CONS, held, deadline)
                    _, head, popped, n = self._next(q, deadline)
                    if count > 1:
                        # Take everything already committed, not just what this handle last saw.
                        tail = self._read_state()[2]
                    else:
                        tail = head + ((n + 15) & ~7)
                    out, pos = self._take_records(head, tail, n, count)
                    self._commit(_W_HSEL, pos, popped + len(out))
                    done = True
                finally:
                    # Inline, not a helper: a signal handler may raise at a function's entry.
                    try:
                        if held:
                            if not done:
                                q[_W_CREL] = (q[_W_CREL] + 1) & _M64
                            self._cons.release()
                    finally:
                        self._buf[self._cclaim] = 0  # (see send)
                    self._left(turn)
            finally:
                self._in_rx = False
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            if self._closed:
                self._teardown_if_free()  # a close() that found a turn taken
        self._freed()
        return out

    def _take_records(self, pos: int, tail: int, n: int, count: int) -> tuple[list[bytes], int]:
        """Up to ``count`` payloads of the records in [pos, tail), the first of length ``n``,
        and the position after the last one taken."""
        return _cut_records(
            self._q, self._mm, _DATA, self._D, self.capacity, pos, tail, n, count, self._corrupt
        )

    def _corrupt(self, n: int, pos: int) -> NoReturn:
        raise incompatible(self.name, f"corrupt record: length {n} at position {pos}")

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        return self._recv_view(_deadline(timeout))

    @contextmanager
    @takes_turn(RX)
    def _recv_view(self, deadline: float | None) -> Iterator[memoryview]:
        me = self._check_enter(deadline, False)
        self._refuse_block_on_the_other_side(me, False)
        turn = self._rx_turn
        if turn.block:  # another thread's block (this thread's: _check_enter refused it)
            raise _block_open(self.name, "recv_view()")
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(turn, RX, deadline)
        try:
            self._in_rx = True  # (see _check_enter)
            try:
                if self._closed:
                    raise ValueError("ring is closed")
                q = self._q
                held: list[None] = []
                done = False
                self._buf[self._cclaim] = 1
                try:
                    try:
                        held += map(self._ctry, _ZERO)
                    except _BusyError:
                        self._take(_CONS, held, deadline)
                    self._rx_hold = held
                    _, head, popped, n = self._next(q, deadline)
                    # The block, from here: this thread's, for _check_enter, close()
                    # and _turns._lost (no frame shows the turn held while it runs). Not
                    # sooner: a handler's close() while the call waits leaves the
                    # teardown to the call, and the other side's block check below
                    # must not see a call that only waits.
                    turn.block = me
                    if self._tx_turn.block:
                        # One block per handle at a time, as the native ring's one hold.
                        raise _block_open(self.name, "reserve()")
                    off = (head + 8) % self._D
                    if off + n <= self._D:
                        raw = self._buf[_DATA + off : _DATA + off + n]
                    else:  # the record wraps: a joined copy
                        first = self._D - off
                        raw = self._bounce.join(self._buf, _DATA + off, first, _DATA, n - first)
                    view = raw.toreadonly()
                    try:
                        yield view
                    finally:
                        self._bounce.give_back(view, raw)
                        if self._closed:
                            # close() inside the block gave up the consumer side: the
                            # message stays for the next consumer.
                            self._close_mapping()
                        elif not held:
                            raise inherited_block("recv_view()")
                        else:
                            # Consumed whether or not the block raised.
                            self._commit(_W_HSEL, head + 8 + _align8(n), popped + 1)
                            done = True
                finally:
                    turn.block = 0
                    self._rx_hold = None
                    try:
                        if held:  # emptied by close() inside the block, which released it
                            if not done:
                                q[_W_CREL] = (q[_W_CREL] + 1) & _M64
                            self._cons.release()
                    finally:
                        if not self._torn_down:
                            self._buf[self._cclaim] = 0  # (see send)
                    self._left(turn)
            finally:
                self._in_rx = False
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            if self._closed:
                self._teardown_if_free()  # a close() that found a turn taken
        self._freed()

    # ---- control ------------------------------------------------------------------
    def shutdown(self) -> None:
        if self._closed:
            raise ValueError("ring is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            self._state()  # a corrupted ring raises, as from any call
            q = self._q
            q[_W_CLOSING] = 1  # one writer or many: all store the same 1
            self._shutting = True
            # Leaving the thread lock is an atomic instruction: a full barrier
            # between that store and the reads below.
        # A producer that read the closing flag as 0 holds its mutex until it has
        # committed: wait (briefly: it may be stopped) for that mutex to be free
        # or to change hands, so consumers told "drained" never see its message.
        # Whatever ends the wait (Ctrl-C, or close() from another thread, whose
        # teardown stores it then), the closed flag is stored: half shut, the ring
        # would refuse producers for ever while its consumers waited for ever.
        try:
            sem = self._prod
            before = (q[_W_TSEL], q[_W_PREL])
            give_up = time.monotonic() + _SHUTDOWN_WAIT
            while sem.value == 0 and (q[_W_TSEL], q[_W_PREL]) == before:
                if time.monotonic() >= give_up:
                    break
                time.sleep(0.0002)
        except (ValueError, posix_ipc.Error):
            if not self._torn_down:
                raise  # (torn down: the mapping and semaphores went with it)
        finally:
            with self._slock:
                if not self._torn_down:
                    q[_W_CLOSED] = 1
                    self._shutting = False
        if self._torn_down:
            return  # closed meanwhile: the flag is stored; sleepers re-check anyway
        # Hints only: every sleeper re-checks and sees the flag; a few spare posts
        # cover sleepers in several processes racing for them.
        try:
            for sem in (self._items, self._space):
                for _ in range(4):
                    sem.release()
            self._ring_bell(0)
            self._ring_bell(1)
        except (ValueError, posix_ipc.Error):
            if not self._torn_down:  # closed meanwhile (see _published)
                raise

    # ---- readiness (see RingBase, "readiness") --------------------------------------
    def _ring_bell(self, side: int) -> None:
        """Write one byte to ``side``'s doorbell (the fd opened with the ring); errors are
        ignored: a full FIFO already holds a wake-up, and watchers re-check every 0.2 s
        anyway."""
        with self._slock:  # teardown closes the fds under it: never write to a reused fd
            if self._torn_down:
                return
            try:
                os.write(self._bells[side], b"\0")
            except OSError:
                pass

    def _open_bell(self, side: int) -> int:
        if side not in (0, 1):
            raise ValueError(f"side must be 0 (recv) or 1 (send), not {side!r}")
        with self._slock:  # teardown closes the bells under it
            if self._torn_down:
                raise ValueError("ring is closed")
            return dup_bell(self, self._bells[side], "ring")

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
                # The lock syscalls are full barriers: the re-check after this is
                # ordered after the store, as a producer's read of the count is
                # after its commit (see _published).
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCKS[_LOCK_STATE])
        return count

    def _poll(self, side: int, nbytes: int) -> bool:
        if self._closed:
            raise ValueError("ring is closed")
        head, _, tail, _, closed = self._snapshot()
        if closed:
            return True
        if side == 0:
            return tail != head
        return self._D - (tail - head) >= 8 + _align8(nbytes)

    def _snapshot(self) -> tuple[int, int, int, int, bool]:
        """:meth:`_state` for the snapshots (len, room, readiness)."""
        if self._closed:
            raise ValueError("ring is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError("ring is closed")
            return self._state()

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

    @takes_turn(ANY)
    def close(self) -> None:
        if self._closed:
            return
        self._unwatch_all()
        self._closed = True
        # Inside this thread's reserve()/recv_view() block, its turn is this call's:
        # the ring is released now if the other side is free, and the block's exit
        # then publishes or consumes nothing. A call in another thread (or a turn on
        # its way to a waiting one) tears down as it leaves (_left), after waking
        # within its wait slice.
        me = threading.get_ident()
        tx, rx = self._tx_turn, self._rx_turn
        self._teardown_if_free(*[t for t in (tx, rx) if t.block == me])

    @takes_turn(ANY)
    def _teardown_if_free(self, *mine: Turn) -> None:
        """Tear down now if every turn but ``mine`` (the caller's own) is free; otherwise
        the call holding one does, as it leaves (_left). A call that gave its turn back
        after a close() from another thread calls it too: that close() found it taken."""
        tx, rx = self._tx_turn, self._rx_turn
        got_tx = got_rx = False
        # Each take and its flag: opcodes, no call between (see _turns.py).
        try:
            if tx not in mine:
                del tx.free
                got_tx = True
            if rx not in mine:
                del rx.free
                got_rx = True
        except AttributeError:
            pass  # another thread's call has it
        else:
            # A handler's call meanwhile is refused (see _check_enter).
            if got_tx:
                self._in_tx = True
            if got_rx:
                self._in_rx = True
            self._teardown()
        finally:
            if got_tx:
                self._in_tx = False
                tx.free = True
                if tx.waiting:
                    tx.wake()
            if got_rx:
                self._in_rx = False
                rx.free = True
                if rx.waiting:
                    rx.wake()

    def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        with self._slock:
            holds = ((self._tx_hold, _PROD), (self._rx_hold, _CONS))
            self._tx_hold = self._rx_hold = None
            try:
                for held, side in holds:
                    if held:
                        # close() inside a view block: give the side back, uncommitted.
                        # Cleared first: the block's own exit must not post it again. (A
                        # handler raising between the two leaves the side taken and
                        # claimed by no live slot once the rest below has run: peers
                        # recover it.)
                        held.clear()
                        q = self._q
                        w = _W_PREL if side == _PROD else _W_CREL
                        q[w] = (q[w] + 1) & _M64
                        (self._prod if side == _PROD else self._cons).release()
            finally:
                with suppress(ValueError):
                    self._q[self._slotw] = 0
                    if self._shutting:  # close() inside another thread's shutdown()
                        self._q[_W_CLOSED] = 1
                # OFD locks live as long as the open file description, which a mapping
                # still exported to the caller keeps alive: drop every lock explicitly
                # (the handle slot's too, which frees the slot).
                fcntl.fcntl(self._fd, _F_SETLK, _UNLOCK_EVERY)
                self._q.release()
                self._buf.release()
                self._close_mapping()
                os.close(self._fd)
                for sem in (self._items, self._space, self._prod, self._cons):
                    sem.close()
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
        """Give a handle inherited through fork() its own open file description and slot.

        A forked child shares the parent's descriptor, hence its OFD locks: the
        child would pass for the parent's handle slot, and the child's copy of
        the mapping would keep a dead parent's slot alive. Reopen the file,
        remap it and take a slot in the child.
        """
        self._tx_turn = Turn()  # another parent thread may have held these
        self._rx_turn = Turn()
        self._bounce = _Bounce()  # an inherited view's stays the parent's copy
        self._slock = threading.Lock()
        self._in_tx = self._in_rx = False
        # The parent's holds are the parent's to release: emptied, so that the copy of a
        # block this child inherited (its generator's ``held``) neither commits nor posts.
        for held in (self._tx_hold, self._rx_hold):
            if held:
                held.clear()
        self._tx_hold = self._rx_hold = None
        if self._torn_down:
            return
        old_fd, old_mm = self._fd, self._mm
        try:
            fd = os.open(f"/proc/self/fd/{old_fd}", os.O_RDWR | os.O_CLOEXEC)
            try:
                mm = mmap.mmap(fd, len(old_mm), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                slot = _claim_slot(fd)
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
        self._slot = slot
        self._slotw = _W_SLOTS + slot
        self._pclaim, self._cclaim = _claim_bytes(slot)
        self._q[self._slotw] = 0
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
