"""The pure-Python broadcast backend: one shared-memory ring, a cursor slot per subscriber.

Built like ``python_ring.py`` (whose lock helpers it imports): OFD file locks
for mutual exclusion and crash safety, a double-slot commit for the shared
positions, every word read from the segment bounds-checked.

Layout of ``/dev/shm/fastipc.NAME`` (u64 words, little-endian)::

    offset  size  field
         0     8  magic b"FIPCPB01" (written last at creation)
         8     4  layout version                       12  4  reserved
        16     8  capacity: the largest payload, bytes
        24     8  D: size of the data area, bytes (multiple of 8, >= align8(capacity) + 8)
        32     8  closed flag (non-zero after shutdown)
        40     8  policy: 0 overwrite, 1 block
        48     8  N: subscriber slots
        56     8  state generation: bit 0 picks the live state slot
        64    32  state slot 0: (tail, published, floor, floor seq)
        96    32  state slot 1
       128     8  sleepers: sum of the subscriber slots' watcher counts
       136     8  publisher waiting for room (0/1; rung through the ".send" bell)
       144     8  slots high-water mark: slots at or above it were never used
       256     2  bytes locked (never read or written): producer, state
       512 128*N  subscriber slots, 16 words each:
                  (owner pid, owner start time, cursor 0, cursor seq 0, missed,
                   watchers, pinned position + 1, generation, cursor generation
                   (bit 0 picks cursor 0 or 1), cursor 1, cursor seq 1, 5 reserved)
         H     D  data area (H: the slots' end rounded up to a page):
                  records of [u64 payload length][payload, padded to 8]

Positions are monotonic byte counts (a record starts at ``position % D``,
8-aligned; a payload may wrap). ``floor`` is the oldest record still kept;
``floor seq`` its sequence number, ``published`` the next one. A subscriber
at cursor ``c < floor`` was overrun: it lost ``floor seq - cursor seq``
messages (Lagged) and continues at the floor.

Locks and ordering (the crash-safety argument is python_ring.py's):

* The producer lock serialises publishers for a whole publish; only its
  holder changes the state slot or writes the data area. A publish of up
  to ``_ONE_CALL_MAX`` bytes that finds both free takes it and the state
  lock (needed for the commit) in one system call, and drops both in one:
  two calls a message. It lets the state lock go while it waits for room,
  which subscribers need.
  Every hold of the state lock is under the handle's thread lock
  (``_slock``): OFD locks belong to the file description, which the
  handle's threads share, so one thread's query must not take or drop the
  lock a publishing thread holds.
* The shared state and each subscriber's cursor are double slots with a
  generation word, as python_ring.py's positions: the single writer fills
  the idle slot, then stores generation + 1 (one aligned 8-byte store); a
  reader takes the generation, the slot it picks and the generation again,
  and retries if it moved. So ``recv``, ``recv_many`` and ``recv_into``
  take no lock: a subscriber reads the state, copies its messages and
  stores its own cursor with loads and stores only.
* The state lock: publishers take it exclusively (F_WRLCK) to commit
  (against shutdown's closed flag and the watcher counts) and to move the
  floor; ``recv_view`` takes it shared (F_RDLCK) to pin its
  message. Claiming, freeing and watcher counts take it exclusively.
* Overwrite never tears a message: a publisher that needs space first
  commits a new floor past the oldest records, and only then writes over
  them. A subscriber that copied without a lock reads the floor again
  after the copy: if it passed the copied record's start, the copy may
  be torn and is thrown away (the subscriber lagged); else no write had
  reached the record (stores are seen in program order, as loads are
  made). A recv_view pins its message (word 6 of its slot) under the
  shared lock: a publisher whose new floor would pass a pin waits.
* Under block the floor is the slowest live subscriber's cursor, found by a
  publisher that runs out of room; a slot whose owner is dead (pid gone, or
  reused: the start time from /proc differs) is reclaimed then, and by
  subscribe when every slot is taken. A publisher waiting for room sets
  the waiting flag, and a subscriber that moved its cursor reads it and
  rings: both without a fence, so a wake-up can be missed in a window of
  nanoseconds, and a waiting publisher re-checks after 1 ms, doubling up to
  ``_SLEEP_CAP``.

Wake-ups: each subscriber slot has a doorbell FIFO (``_names.subscriber_bell_path``),
which the subscriber makes (if missing) and opens as it subscribes, and
publishers open the first time they ring it (never making it: see _ring).
Every handle also holds the ring's ``.send`` bell from its opening on; none
is reopened by path later (see ``_names.open_bell``). A subscriber about to
sleep registers as a watcher of its slot (and in the sleepers total) under
the exclusive lock, re-checks, then polls its FIFO; a publisher reads the
sleepers total in its commit's critical section and,
only if non-zero, writes a byte to the bell of each watching slot. So an
idle subscriber costs nothing but a wake-up every ``_SLEEP_CAP`` seconds,
and a publish with nobody asleep costs no syscall beyond the locks. Why
FIFOs rather than a semaphore per slot: the same fd is the readiness fd
asyncio and selectors wait on, and a byte waits in the FIFO for a
subscriber that had not yet gone to sleep. A publisher short of room waits
on the ring's ``.send`` bell, which subscribers ring after they advance
while the waiting flag is set.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import select
import struct
import sys
import threading
import time
import weakref
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from itertools import accumulate
from typing import Any, Callable, NoReturn

from .._checks import (
    FORKS,
    MAX_CAPACITY,
    check_buffer,
    inherited_block,
    release_view,
    validate_count,
    validate_max_count,
)
from .._contract import dup_bell
from .._contract_broadcast import MAX_SUBSCRIBERS, POLICIES, BroadcastBase, SubscriberBase
from .._names import (
    bell_paths,
    incompatible,
    open_bell,
    open_segment,
    segment_path,
    subscriber_bell_path,
)
from .._turns import Turn, reentrant_call, takes_turn
from ..errors import (
    Closed,
    IncompatibleSegment,
    Lagged,
    MessageTooLarge,
    Timeout,
    broadcast_error,
    timed_out,
)
from .python_ring import (
    _BUSY,
    _F_SETLK,
    _F_SETLKW,
    _FENCE,
    _align8,
    _Bounce,
    _cut_records,
    _deadline,
    _flock,
    _records,
    _seconds_left,
)

__all__ = ["PythonBroadcast", "PythonSubscriber", "describe_segment"]

if sys.byteorder != "little":  # pragma: no cover - the layout uses native u64 words
    raise ImportError("the python broadcast backend supports little-endian machines only")

#: The turn a call takes on its handle (one call at a time per handle): the attribute
#: holding it, also the side name marking the methods that take it (see _turns.py).
_TURN = "_turn"

MAGIC = b"FIPCPB01"
LAYOUT_VERSION = 2
#: Other fastipc segments, named in the error when one is opened as a broadcast ring.
_OTHER_MAGICS = {
    b"FPCIBC01": "a broadcast ring of the native backend: open it with FASTIPC_BACKEND=native",
    b"FIPCPY01": "a Ring (python backend), not a broadcast ring: open it with Ring.open",
    b"FPCIRN01": "a Ring (native backend), not a broadcast ring: open it with Ring.open",
}

_W_MAGIC = 0
_W_VERSION = 1
_W_CAPACITY = 2
_W_DSIZE = 3
_W_CLOSED = 4
_W_POLICY = 5
_W_NSLOTS = 6
_W_SEL = 7
_W_STATE = 8  # slots 8..11 and 12..15: (tail, published, floor, floor seq)
_W_SLEEPERS = 16
_W_PUBWAIT = 17
_W_HIGH = 18
_SLOTS_AT = 512  # byte offset of the subscriber slots
_SLOT_WORDS = 16
# Words of a subscriber slot; the cursor (position, seq) is the pair at _S_POS or
# _S_POS1, picked by bit 0 of the cursor generation _S_CGEN.
_S_PID, _S_START, _S_POS, _S_SEQ, _S_MISSED, _S_WATCH, _S_PIN, _S_GEN = range(8)
_S_CGEN, _S_POS1 = 8, 9
_CURSOR_PAIRS = (_S_POS, _S_POS1)
_M63 = (1 << 63) - 1

_LOCK_PRODUCER = 256
_LOCK_STATE = 257
_WR = {b: _flock(fcntl.F_WRLCK, b) for b in (_LOCK_PRODUCER, _LOCK_STATE)}
_RD_STATE = _flock(fcntl.F_RDLCK, _LOCK_STATE)
_UN = {b: _flock(fcntl.F_UNLCK, b) for b in (_LOCK_PRODUCER, _LOCK_STATE)}
_UN_BOTH = _flock(fcntl.F_UNLCK, _LOCK_PRODUCER, 2)
_WR_BOTH = _flock(fcntl.F_WRLCK, _LOCK_PRODUCER, 2)

_MAX_POS = 1 << 62
#: The key of a subscriber's own slot's bell in a handle's ``_bells``.
_OWN_BELL = -3
#: Longest sleep before re-checking the shared state (seconds): a peer killed
#: between its commit and its bell cannot strand a waiter for longer.
_SLEEP_CAP = 0.2
#: A publisher waiting for room re-checks after this long first, doubling up to
#: _SLEEP_CAP: the subscriber's wake-up it waits for can be missed (no fence).
_ROOM_SLICE = 0.001
#: Longest record (bytes) whose publish takes both locks in one system call: the copy
#: is then made under the state lock too, which subscribers need to register as
#: sleepers, and a longer copy would hold them up for longer than the call it saves
#: (1 MiB messages, 4 subscribers on 2 CPUs: 5.6 k -> 4.4 k msgs/s each).
_ONE_CALL_MAX = 16384
#: How long a waiter watches the live tail before registering and sleeping (seconds).
_SPIN = 100e-6
_LOCK_SPIN = 50e-6
_POLL_MAX = 0.001
#: Even timeout=0 waits this long for a peer's microsecond-long hold of the state lock.
_STATE_GRACE = 0.05
_COMMIT_GRACE = 1.0
_OPEN_WAIT = 1.0


def _header_size(nslots: int) -> int:
    page = mmap.PAGESIZE
    return (_SLOTS_AT + 8 * _SLOT_WORDS * nslots + page - 1) // page * page


def _data_size(capacity: int) -> int:
    page = mmap.PAGESIZE
    return (_align8(capacity) + 8 + page - 1) // page * page


def _proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of live process ``pid``; None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return -1  # unreadable: treat as alive (never reclaim what we cannot judge)
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


_me: tuple[int, int] = (0, 0)


def _self_id() -> tuple[int, int]:
    """(pid, start time) of this process, recomputed after fork."""
    global _me
    pid = os.getpid()
    if _me[0] != pid:
        _me = (pid, _proc_start(pid) or 0)
    return _me


def describe_segment(head: bytes) -> dict[str, int] | None:
    """Capacity, data size, policy code and slot count from a segment's first 64 bytes, or None."""
    if len(head) < 56 or head[:8] != MAGIC:
        return None
    _, capacity, dsize, closed, policy, nslots = struct.unpack_from("<I4xQQQQQ", head, 8)
    return {
        "capacity": capacity,
        "dsize": dsize,
        "closed": closed,
        "policy": policy,
        "nslots": nslots,
    }


class _Handle:
    """The segment, its locks and the state words, shared by publisher and subscriber handles."""

    name: str
    capacity: int
    policy: str
    max_subscribers: int
    _owners: frozenset[int] | None
    _what = "broadcast ring"

    def _setup(self, name: str, fd: int, geometry: tuple[int, int, int, int]) -> None:
        capacity, dsize, policy, nslots = geometry
        hsize = _header_size(nslots)
        mm = mmap.mmap(fd, hsize + dsize, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.name = name
        self.capacity = capacity
        self.policy = POLICIES[policy]
        self._block = policy == 1
        self.max_subscribers = nslots
        self._fd = fd
        self._mm = mm
        self._buf = memoryview(mm)
        self._bounce = _Bounce()
        self._q = self._buf.cast("Q")
        self._D = dsize
        self._H = hsize
        self._turn = Turn()  # one call at a time on this handle; waiters queue (_turns.py)
        self._slock = threading.Lock()
        self._owner = 0
        self._closed = False
        self._torn_down = False
        # slot -> fd (-1: the send bell, _OWN_BELL: a subscriber's own slot's,
        # -2: see PythonSubscriber.close); closed at teardown.
        self._bells: dict[int, int] = {}
        self._seen: tuple[int, tuple[int, int, int, int]] = (-1, (0, 0, 0, 0))  # see _state
        _LIVE.add(self)

    @staticmethod
    def _geometry(name: str, fd: int) -> tuple[int, int, int, int]:
        """Wait (up to ~1 s) for a creator; return (capacity, D, policy, N), all checked."""
        give_up = time.monotonic() + _OPEN_WAIT
        while True:
            try:
                fcntl.fcntl(fd, _F_SETLK, _WR[_LOCK_STATE])
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
                locked = False
            else:
                locked = True
            try:
                size = os.fstat(fd).st_size
                head = os.pread(fd, 56, 0) if size >= 56 else b""
            finally:
                if locked:
                    fcntl.fcntl(fd, _F_SETLK, _UN[_LOCK_STATE])
            if locked and len(head) == 56 and head[:8] != bytes(8):
                break
            if time.monotonic() >= give_up:
                if len(head) < 56:
                    raise incompatible(name, f"segment is {size} bytes, too small for a header")
                if not locked:
                    raise incompatible(name, "segment is still locked by its creator after 1 s")
                raise incompatible(name, "segment was never initialised (magic is zero)")
            time.sleep(0.001)
        magic = head[:8]
        if magic != MAGIC:
            raise incompatible(
                name,
                _OTHER_MAGICS.get(magic, f"magic {magic!r} is not a broadcast ring's {MAGIC!r}"),
            )
        version = struct.unpack_from("<I", head, 8)[0]
        if version != LAYOUT_VERSION:
            raise incompatible(
                name, f"layout version {version}, this fastipc reads {LAYOUT_VERSION}"
            )
        d = describe_segment(head)
        assert d is not None
        capacity, dsize, policy, nslots = d["capacity"], d["dsize"], d["policy"], d["nslots"]
        if not 1 <= capacity <= MAX_CAPACITY:
            raise incompatible(name, f"capacity {capacity} is out of range")
        if dsize != _data_size(capacity):
            raise incompatible(name, f"data size {dsize} does not fit capacity {capacity}")
        if policy not in (0, 1):
            raise incompatible(name, f"policy code {policy} is unknown")
        if not 1 <= nslots <= MAX_SUBSCRIBERS:
            raise incompatible(name, f"subscriber slot count {nslots} is out of range")
        if size < _header_size(nslots) + dsize:
            raise incompatible(
                name,
                f"segment is {size} bytes, smaller than its layout "
                f"({_header_size(nslots) + dsize})",
            )
        return capacity, dsize, policy, nslots

    # ---- locks ----------------------------------------------------------------
    def _lock(self, byte: int, deadline: float | None, op: bytes | None = None) -> None:
        """Take OFD lock ``byte`` (``op``: a prepared flock, default exclusive); poll until
        ``deadline``, waking for close() from another thread (python_ring.py's _lock)."""
        op = _WR[byte] if op is None else op
        fd = self._fd
        try:
            fcntl.fcntl(fd, _F_SETLK, op)
            return
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
        spin_end = time.monotonic() + _LOCK_SPIN
        pause = 10e-6
        while True:
            if time.monotonic() >= spin_end:
                if self._closed:
                    raise ValueError(f"{self._what} {self.name!r} is closed")
                if deadline is None:
                    time.sleep(pause)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise timed_out(
                            f"broadcast ring {self.name!r}",
                            None if byte == _LOCK_STATE else True,
                        )
                    time.sleep(min(pause, remaining))
                pause = min(pause * 2, _POLL_MAX)
            else:
                os.sched_yield()
            try:
                fcntl.fcntl(fd, _F_SETLK, op)
                return
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise

    @staticmethod
    def _grace(deadline: float | None, grace: float = _STATE_GRACE) -> float | None:
        return None if deadline is None else max(deadline, time.monotonic() + grace)

    def _check_enter(self, deadline: float | None, sending: bool | None) -> int:
        me = threading.get_ident()
        if self._owner == me:
            # A reserve()/recv_view() block of this thread, or the call a signal
            # handler interrupted: waiting for the lock it holds would hang.
            raise reentrant_call(f"{self._what} {self.name!r}", blocks=True)
        if self._closed:
            raise ValueError(f"{self._what} {self.name!r} is closed")
        return me

    def _wait_turn(self, deadline: float | None, sending: bool) -> None:
        """Take the handle's turn from another thread's call or view block within
        ``deadline`` (ValueError if the handle is closed meanwhile). Leaving without it
        after a close() tears down: the call that gave the turn back may have handed it to
        this one."""
        try:
            self._turn.wait_take(
                self,
                _TURN,
                _seconds_left(deadline),
                sending,
                f"{self._what} {self.name!r}",
                1,
                self._refuse_closed,
            )
        except BaseException:
            if self._closed:
                self._teardown_if_free()
            raise

    def _refuse_closed(self) -> None:
        if self._closed:
            raise ValueError(f"{self._what} {self.name!r} is closed")

    def _left(self) -> None:
        if self._closed and not self._torn_down:
            self._teardown()

    # ---- shared state -------------------------------------------------------
    def _state(self) -> tuple[int, int, int, int]:
        """(tail, published, floor, floor seq), one consistent snapshot, validated; read
        without a lock (the generation tells a slot being refilled meanwhile). The last
        one read or committed is kept with its generation: unchanged, it is reused."""
        q = self._q
        seen = self._seen
        if q[_W_SEL] == seen[0]:
            return seen[1]
        fence = _FENCE
        for _ in range(1000):
            g = q[_W_SEL]
            if fence:
                fence()  # the slot (and the records it covers) after the generation
            i = _W_STATE + 4 * (g & 1)
            tail, pub, floor, fseq = q[i], q[i + 1], q[i + 2], q[i + 3]
            if fence:
                fence()
            if q[_W_SEL] == g:
                break
        else:
            raise incompatible(self.name, "the state generation never settles")
        if not (
            0 <= tail - floor <= self._D
            and tail < _MAX_POS
            and tail % 8 == 0
            and floor % 8 == 0
            and 0 <= pub - fseq
            and pub < _MAX_POS
            and 8 * (pub - fseq) <= tail - floor
        ):
            raise incompatible(
                self.name,
                f"corrupt broadcast state: tail={tail} floor={floor} published={pub} "
                f"floor_seq={fseq}",
            )
        st = (tail, pub, floor, fseq)
        self._seen = (g, st)
        return st

    def _flip(self, tail: int, pub: int, floor: int, fseq: int) -> None:
        """Commit a new state: fill the idle slot, then store generation + 1 (one 8-byte
        store). Exclusive state lock held (and the producer lock)."""
        q = self._q
        g = (q[_W_SEL] + 1) & _M63
        i = _W_STATE + 4 * (g & 1)
        q[i] = tail
        q[i + 1] = pub
        q[i + 2] = floor
        q[i + 3] = fseq
        if _FENCE:
            _FENCE()  # the records and the slot before the generation (see python_ring._Fence)
        q[_W_SEL] = g
        self._seen = (g, (tail, pub, floor, fseq))
        if _FENCE:
            _FENCE()  # a new floor before the writes over what it dropped

    def _cursor(self, w: int) -> tuple[int, int]:
        """(cursor, seq) of the slot whose first word is ``w``, read without a lock (its
        owner stores it without one)."""
        q = self._q
        fence = _FENCE
        for _ in range(1000):
            g = q[w + _S_CGEN]
            if fence:
                fence()
            i = w + _CURSOR_PAIRS[g & 1]
            pos, seq = q[i], q[i + 1]
            if fence:
                fence()
            if q[w + _S_CGEN] == g:
                return pos, seq
        raise incompatible(self.name, "a subscriber's cursor generation never settles")

    def _slot_word(self, slot: int, word: int) -> int:
        return _SLOTS_AT // 8 + _SLOT_WORDS * slot + word

    def _high(self) -> int:
        """The slot high-water mark, clamped to the slot count (a hostile value cannot overrun)."""
        return min(self._q[_W_HIGH], self.max_subscribers)

    def _length(self, pos: int, tail: int) -> int:
        n: int = self._q[(self._H + pos % self._D) >> 3]
        if n > self.capacity or 8 + _align8(n) > tail - pos:
            raise incompatible(self.name, f"corrupt record: length {n} at position {pos}")
        return n

    def _free_slot(self, slot: int) -> None:
        """Empty subscriber slot ``slot``; the exclusive state lock is held."""
        q = self._q
        w = self._slot_word(slot, 0)
        watch = q[w + _S_WATCH]
        q[_W_SLEEPERS] = max(q[_W_SLEEPERS] - watch, 0) if watch < 1 << 32 else 0
        for k in range(_S_GEN):
            q[w + k] = 0
        q[w + _S_GEN] = (q[w + _S_GEN] + 1) & ((1 << 63) - 1)

    def _reclaim_dead(self, slots: Iterable[int]) -> int:
        """Free those of ``slots`` whose owner process is dead; how many. Exclusive lock held."""
        q = self._q
        freed = 0
        for s in slots:
            w = self._slot_word(s, 0)
            pid = q[w + _S_PID]
            if pid == 0:
                continue
            if pid >= 1 << 31 or _proc_start(pid) not in (q[w + _S_START], -1):
                self._free_slot(s)
                freed += 1
        return freed

    # ---- bells ------------------------------------------------------------------
    def _hold_bells(self, own_slot: int = -1) -> None:
        """Open the ring's send bell and (``own_slot`` >= 0) a subscriber's own slot's,
        made with the ring's mode if missing, and keep them: called as the handle
        opens the ring, while the name is the ring's (see _names.open_bell). They are
        never reopened by path later: a ring removed meanwhile would get its FIFO
        made again, and one made anew under the name would share it."""
        mode = self._mode()
        with self._slock:
            if self._torn_down:
                raise ValueError(f"{self._what} {self.name!r} is closed")
            # update(zip(keys, map(open_bell, ...))): no handler runs between an
            # open and its store in the dict, so an interrupt leaks no fd.
            name, owners = self.name, self._owners
            self._bells.update(zip((-1,), map(open_bell, (name,), (1,), (mode,), (owners,))))
            if own_slot >= 0:
                path = subscriber_bell_path(name, own_slot)
                self._bells.update(
                    zip((_OWN_BELL,), map(open_bell, (name,), (0,), (mode,), (owners,), (path,)))
                )

    def _ring(self, slot: int) -> None:
        """Write a byte to subscriber ``slot``'s bell (-1: the publishers' send bell).
        Errors are ignored: a full FIFO already holds a wake-up, and sleepers
        re-check every _SLEEP_CAP anyway. A slot's bell is opened the first time,
        by path, but never made: its subscriber made it as it subscribed, so a
        missing one is a removed ring's (this handle's fd would be no FIFO any
        subscriber polls; it costs them a wake-up, caught by their re-check)."""
        with self._slock:  # teardown closes the fds under it: never write to a reused fd
            if self._torn_down:
                return
            fd = self._bells.get(slot, -1)
            try:
                if fd < 0:
                    if slot < 0:
                        return  # (held from the start; not to be made again)
                    fd = open_bell(
                        self.name,
                        0,
                        owners=self._owners,
                        path=subscriber_bell_path(self.name, slot),
                        make=False,
                    )
                    self._bells[slot] = fd
                os.write(fd, b"\0")
            except OSError:
                pass

    def _mode(self) -> int:
        return os.fstat(self._fd).st_mode & 0o777

    # ---- teardown and fork ---------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _release(self) -> None:
        """What a handle gives back before its fd closes (a subscriber: its slot)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owner and self._owner != threading.get_ident():
            self._wake_self()  # a call blocked in another thread: wake it now
        if self._owner == threading.get_ident():
            self._teardown()
        else:
            self._teardown_if_free()  # else another thread's call does, as it leaves

    def _wake_self(self) -> None:
        """Wake a call of this handle blocked in another thread (close() calls it)."""

    def _teardown_if_free(self) -> None:
        """Tear down now unless another thread's call has the turn (it tears down as it
        leaves, in _left); a call that gave the turn back after a close() from another
        thread calls it too, since that close() found the turn taken."""
        turn = self._turn
        try:
            del turn.free
        except AttributeError:
            return
        try:
            self._teardown()
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    def _teardown(self) -> None:
        if self._torn_down:
            return
        with suppress(Exception):
            self._release()
        self._torn_down = True
        with self._slock:
            fcntl.fcntl(self._fd, _F_SETLK, _flock(fcntl.F_UNLCK, _LOCK_PRODUCER, 2))
            self._q.release()
            self._buf.release()
            self._close_mapping()
            os.close(self._fd)
            bells, self._bells = self._bells, {}
            for fd in bells.values():
                os.close(fd)

    def _close_mapping(self) -> None:
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still out (retried when its block releases it, else at GC)

    def _after_fork_in_child(self) -> None:
        """A handle inherited through fork() gets its own open file description
        (python_ring.py's reason: shared OFD locks would not exclude parent and child)."""
        self._turn = Turn()
        self._slock = threading.Lock()
        self._bounce = _Bounce()  # an inherited view's stays the parent's copy
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
        # The bells stay: the child's copies of the parent's fds, the same FIFOs
        # (never reopened by path: see _hold_bells), closed by the child's teardown.

    def __del__(self) -> None:
        with suppress(Exception):
            if not self._closed:
                self.close()
            elif not self._torn_down:
                self._teardown()


class PythonBroadcast(_Handle, BroadcastBase):
    """:class:`~fastipc.Broadcast` (the publisher) in Python over mmap and OFD locks."""

    _what = "broadcast ring"

    @classmethod
    def _create(
        cls, name: str, capacity: int, subscribers: int, policy: str, mode: int
    ) -> PythonBroadcast:
        path = segment_path(name)
        dsize = _data_size(capacity)
        hsize = _header_size(subscribers)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        made = [path]
        try:
            os.fchmod(fd, mode)  # the umask must not apply
            fcntl.fcntl(fd, _F_SETLKW, _WR[_LOCK_STATE])  # an opener waits for the magic
            os.ftruncate(fd, hsize + dsize)
            head = struct.pack(
                "<8sI4xQQQQQ",
                bytes(8),
                LAYOUT_VERSION,
                capacity,
                dsize,
                0,
                POLICIES.index(policy),
                subscribers,
            )
            os.pwrite(fd, head, 0)
            for side, bell in enumerate(bell_paths(name)):
                made.append(bell)
                os.close(open_bell(name, side, mode))
            os.pwrite(fd, MAGIC, 0)  # last: an opener that sees the magic sees a whole ring
            fcntl.fcntl(fd, _F_SETLK, _UN[_LOCK_STATE])
            pub = cls.__new__(cls)
            pub._owners = None
            pub._setup(name, fd, (capacity, dsize, POLICIES.index(policy), subscribers))
        except BaseException:
            os.close(fd)
            for p in made:
                with suppress(OSError):
                    os.unlink(p)
            raise
        try:
            pub._hold_bells()
        except BaseException:
            pub.close()
            for p in made:
                with suppress(OSError):
                    os.unlink(p)
            raise
        return pub

    @classmethod
    def _open(cls, name: str, owners: frozenset[int] | None = None) -> PythonBroadcast:
        fd = open_segment(name, owners)
        try:
            geometry = cls._geometry(name, fd)
            pub = cls.__new__(cls)
            pub._owners = owners
            pub._setup(name, fd, geometry)
        except BaseException:
            os.close(fd)
            raise
        try:
            pub._hold_bells()
            pub._snapshot()
        except BaseException:
            pub.close()
            raise
        return pub

    def _message(self, data: Any) -> memoryview:
        mv = check_buffer(data)
        if mv.nbytes > self.capacity:
            raise MessageTooLarge(
                f"message of {mv.nbytes} bytes exceeds broadcast ring capacity {self.capacity}"
            )
        return mv

    # ---- making room ---------------------------------------------------------------
    def _make_room(self, need: int, deadline: float | None, want: int = 0) -> tuple[int, int]:
        """Make ``need`` bytes free after the tail; return (tail, published). Producer lock held.

        The fast path reads the state without the state lock (only producers
        change it). Short of room, ``overwrite`` commits a new floor past the
        oldest records (waiting only for a pinned view), ``block`` moves the
        floor up to the slowest live subscriber (waiting for it if needed).
        ``want`` (overwrite, a batch): make that many bytes free in the same
        step if no open view is in the way (the records the batch is about to
        overwrite anyway), rather than one record's room per step.
        """
        D = self._D
        check_dead = True
        waiting = False
        nap = _ROOM_SLICE
        looked = time.monotonic()  # check_dead: the first pass looks
        try:
            while True:
                if self._q[_W_CLOSED]:
                    raise Closed(f"broadcast ring {self.name!r} is shut down")
                tail, pub, floor, fseq = self._state()
                if tail + need - floor <= D:
                    return tail, pub
                if self._block:
                    target = tail + need - D
                    new_floor, new_fseq = floor, fseq
                else:
                    target = tail + need - D
                    reach = tail + max(want, need) - D
                    new_floor, new_fseq = self._skip(floor, fseq, reach, tail)
                ok = False
                with self._slock:
                    if self._torn_down:
                        raise ValueError(f"broadcast ring {self.name!r} is closed")
                    try:
                        self._lock(_LOCK_STATE, self._grace(deadline))
                        self._state()
                        if self._block:
                            new_floor, new_fseq, blockers = self._slowest(tail, pub)
                            if new_floor < target and check_dead and self._reclaim_dead(blockers):
                                new_floor, new_fseq, blockers = self._slowest(tail, pub)
                            if new_floor < target:
                                # Short: the flag, then the cursors again. A subscriber
                                # moving its cursor without a lock then reads the flag,
                                # or we see its move (but for the window the module
                                # docstring gives).
                                waiting = True  # first: cleared at the end whatever raises
                                self._q[_W_PUBWAIT] = 1
                                new_floor, new_fseq, _ = self._slowest(tail, pub)
                            ok = new_floor >= target
                        else:
                            pins = self._pins_below(new_floor)
                            if pins and want > need:
                                # A view is in the batch's way: room for one record only.
                                new_floor, new_fseq = self._skip(floor, fseq, target, tail)
                                pins = self._pins_below(new_floor)
                            if pins and check_dead and self._reclaim_dead(pins):
                                pins = self._pins_below(new_floor)
                            ok = not pins
                        # Under block, moving the floor up to the slowest is progress
                        # even when not enough; under overwrite it must not pass a pin.
                        if ok or (self._block and new_floor > floor):
                            self._flip(tail, pub, max(new_floor, floor), max(new_fseq, fseq))
                        self._q[_W_PUBWAIT] = 0 if ok else 1
                        waiting = not ok
                    finally:
                        fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
                if ok:
                    continue  # re-read the committed state and return it
                if check_dead:
                    looked = time.monotonic()
                # The nap doubles while nothing rings, back to the first slice once a bell
                # does. The blockers' owners are looked up in /proc (dead ones freed) every
                # _SLEEP_CAP, by the clock: bells from other subscribers do not put it off.
                rung = not self._sleep_send(deadline, nap)
                nap = _ROOM_SLICE if rung else min(nap * 2, _SLEEP_CAP)
                check_dead = time.monotonic() - looked >= _SLEEP_CAP
        finally:
            if waiting:
                self._clear_wait()

    def _publish_fast(self, mv: memoryview, need: int, deadline: float | None) -> bool:
        """publish()'s common case: the producer and state locks free, taken in one system
        call (the commit needs the state lock too: two calls a message, not three), and
        room for ``need`` bytes. Returns True once committed (both locks dropped), else
        False holding the producer lock: taken alone if a lock was busy, kept if there
        was no room (the state lock dropped: subscribers may need it to make room).

        Under ``_slock`` throughout: OFD locks are the file description's, not the
        thread's, so another thread of this handle (shutdown, subscribers, free_bytes)
        must neither take the state lock meanwhile nor have it dropped under it. For
        the same reason an exception (a signal handler's, at any line) may drop both."""
        wake: list[int] = []
        with self._slock:
            if self._torn_down:
                raise ValueError(f"broadcast ring {self.name!r} is closed")
            try:
                try:
                    fcntl.fcntl(self._fd, _F_SETLK, _WR_BOTH)
                    got = True
                except OSError as exc:
                    if exc.errno not in _BUSY:
                        raise
                    got = False
                if got:
                    tail, pub, floor, _ = self._state()
                    if tail + need - floor > self._D:
                        fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
                        return False
                    end = self._put(tail, mv)
                    wake = self._commit_held(tail, end, pub + 1, True)
            except BaseException:
                fcntl.fcntl(self._fd, _F_SETLK, _UN_BOTH)
                raise
        if not got:
            self._lock(_LOCK_PRODUCER, deadline)
            return False
        for s in wake:
            self._ring(s)
        return True

    def _clear_wait(self) -> None:
        with suppress(Exception), self._slock:
            if not self._torn_down:
                try:
                    self._lock(_LOCK_STATE, time.monotonic() + _STATE_GRACE)
                    self._q[_W_PUBWAIT] = 0
                finally:
                    fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])

    def _skip(self, floor: int, fseq: int, target: int, tail: int) -> tuple[int, int]:
        """The first record boundary at or past ``target``, walking from the floor; its seq."""
        while floor < target:
            floor += 8 + _align8(self._length(floor, tail))
            fseq += 1
        return floor, fseq

    def _slowest(self, tail: int, pub: int) -> tuple[int, int, list[int]]:
        """(cursor, seq) of the slowest subscriber, (tail, pub) if none, and the slots at
        it. Exclusive state lock held; a cursor outside [floor, tail] is corrupt."""
        q = self._q
        low, low_seq, at = tail, pub, []
        _, _, floor, _ = self._state()
        for s in range(self._high()):
            w = self._slot_word(s, 0)
            if q[w + _S_PID] == 0:
                continue
            pos, seq = self._cursor(w)
            if not floor <= pos <= tail:
                raise incompatible(self.name, f"subscriber slot {s} has cursor {pos} out of range")
            if pos < low:
                low, low_seq, at = pos, seq, [s]
            elif pos == low:
                at.append(s)
        return low, low_seq, at

    def _pins_below(self, new_floor: int) -> list[int]:
        """Slots whose open view pins a record the new floor would drop. Exclusive lock held."""
        q = self._q
        out = []
        for s in range(self._high()):
            pin = q[self._slot_word(s, _S_PIN)]
            if pin and pin - 1 < new_floor and q[self._slot_word(s, _S_PID)]:
                out.append(s)
        return out

    def _sleep_send(self, deadline: float | None, nap: float) -> bool:
        """Sleep on the send bell until rung, the deadline (Full) or ``nap`` seconds.
        Returns True if nothing rang."""
        if self._closed:
            raise ValueError(f"broadcast ring {self.name!r} is closed")
        wait = nap
        if deadline is not None:
            wait = min(deadline - time.monotonic(), wait)
            if wait <= 0:
                raise timed_out(f"broadcast ring {self.name!r}", True)
        fd = self._send_bell()
        ready = select.poll()
        ready.register(fd, select.POLLIN)
        if not ready.poll(wait * 1000):
            return True
        with suppress(BlockingIOError, InterruptedError):
            os.read(fd, 4096)
        return False

    def _send_bell(self) -> int:
        # Opened with the handle (_hold_bells); a blocked call has the turn, so
        # teardown (which closes it) waits for the call to leave.
        fd = self._bells.get(-1, -1)
        if fd < 0 or self._torn_down:
            raise ValueError(f"broadcast ring {self.name!r} is closed")
        return fd

    def _wake_self(self) -> None:
        self._ring(-1)

    # ---- publishing ----------------------------------------------------------------------
    def _put(self, pos: int, data: memoryview) -> int:
        D, H = self._D, self._H
        n = len(data)
        self._q[(H + pos % D) >> 3] = n
        if n:
            off = (pos + 8) % D
            first = D - off
            if n <= first:
                self._mm[H + off : H + off + n] = data
            else:
                self._mm[H + off : H + D] = data[:first]
                self._mm[H : H + n - first] = data[first:]
        return pos + 8 + _align8(n)

    def _write(self, pos: int, blob: bytes) -> None:
        """Copy whole records ``blob`` to the data area at ``pos`` (wrapping at its end)."""
        D, H = self._D, self._H
        off = pos % D
        first = D - off
        if len(blob) <= first:
            self._mm[H + off : H + off + len(blob)] = blob
        else:
            mv = memoryview(blob)
            self._mm[H + off : H + D] = mv[:first]
            self._mm[H : H + len(blob) - first] = mv[first:]

    def _commit(
        self,
        old_tail: int,
        new_tail: int,
        new_pub: int,
        deadline: float | None,
        release: bool,
    ) -> None:
        """Publish records in [old_tail, new_tail); with ``release`` also drop the producer
        lock (held by the caller, still held if this raises)."""
        with self._slock:
            if self._torn_down:
                raise ValueError(f"broadcast ring {self.name!r} is closed")
            try:
                self._lock(_LOCK_STATE, self._grace(deadline, _COMMIT_GRACE))
                # In the try: a handler raising at _commit_held's entry (before its
                # own try) must not leave the state lock taken.
                wake = self._commit_held(old_tail, new_tail, new_pub, release)
            except BaseException:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
                raise
        for s in wake:
            self._ring(s)

    def _commit_held(self, old_tail: int, new_tail: int, new_pub: int, release: bool) -> list[int]:
        """_commit's step under the state lock (and ``_slock``): the flip, then the state
        lock dropped (with the producer lock if ``release``; else only the state lock, also
        if this raises). Returns the subscriber slots to ring."""
        try:
            tail, _, floor, fseq = self._state()
            if tail != old_tail or new_tail - floor > self._D:
                raise incompatible(self.name, "the tail moved under the producer lock")
            if self._q[_W_CLOSED]:
                raise Closed(f"broadcast ring {self.name!r} is shut down")
            self._flip(new_tail, new_pub, floor, fseq)
            wake: list[int] = []
            if self._q[_W_SLEEPERS]:
                q = self._q
                base = _SLOTS_AT // 8 + _S_WATCH
                wake = [s for s in range(self._high()) if q[base + _SLOT_WORDS * s]]
        except BaseException:
            fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
            raise
        fcntl.fcntl(self._fd, _F_SETLK, _UN_BOTH if release else _UN[_LOCK_STATE])
        return wake

    @takes_turn(_TURN)
    def publish(self, data: Any, timeout: float | None = None) -> None:
        mv = self._message(data)
        deadline = _deadline(timeout)
        me = self._check_enter(deadline, True)
        turn = self._turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(deadline, True)
        try:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError(f"broadcast ring {self.name!r} is closed")
                need = 8 + _align8(mv.nbytes)
                if need > _ONE_CALL_MAX:
                    self._lock(_LOCK_PRODUCER, deadline)
                elif self._publish_fast(mv, need, deadline):
                    return
                tail, pub = self._make_room(need, deadline)
                end = self._put(tail, mv)
                self._commit(tail, end, pub + 1, deadline, True)
            except BaseException:
                if not self._torn_down:
                    fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_PRODUCER])
                raise
            finally:
                try:
                    self._left()
                finally:
                    self._owner = 0  # last: see _check_enter
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            elif self._closed:
                self._teardown_if_free()  # a close() that found the turn taken

    @takes_turn(_TURN)
    def publish_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        views = [self._message(m) for m in messages]
        deadline = _deadline(timeout)
        if not views:
            if self._closed:  # as any other call on a closed handle
                raise ValueError(f"{self._what} {self.name!r} is closed")
            return 0
        D = self._D
        lens = [v.nbytes for v in views]
        # Record sizes' running totals: a batch is cut where the free space ends.
        ends = list(accumulate([(n + 15) & ~7 for n in lens]))
        sent = 0
        me = self._check_enter(deadline, True)
        turn = self._turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(deadline, True)
        try:
            try:
                self._owner = me
                if self._closed:
                    raise ValueError(f"broadcast ring {self.name!r} is closed")
                self._lock(_LOCK_PRODUCER, deadline)
                while sent < len(views):
                    try:
                        before = ends[sent - 1] if sent else 0
                        # Under overwrite, room for all that one data area holds: a full
                        # ring would otherwise free one record's room per step.
                        most = ends[max(bisect_right(ends, before + D), sent + 1) - 1] - before
                        tail, pub = self._make_room(ends[sent] - before, deadline, most)
                        floor = self._state()[2]
                        # As many as fit (at least the one _make_room made room for),
                        # written as one buffer: one copy per batch, built in C.
                        k = max(bisect_right(ends, before + D - (tail - floor)), sent + 1)
                        blob = _records(views[sent:k], lens[sent:k])
                        self._write(tail, blob)
                        self._commit(
                            tail, tail + len(blob), pub + (k - sent), deadline, k == len(views)
                        )
                    except (Timeout, Closed) as exc:
                        raise type(exc)(str(exc), sent=sent) from None
                    sent = k
            except BaseException:
                if not self._torn_down:
                    fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_PRODUCER])
                raise
            finally:
                try:
                    self._left()
                finally:
                    self._owner = 0  # last: see _check_enter
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            elif self._closed:
                self._teardown_if_free()  # a close() that found the turn taken
        return sent

    def reserve(
        self, nbytes: int, timeout: float | None = None
    ) -> AbstractContextManager[memoryview]:
        n = validate_count(nbytes, "nbytes", 0)
        if n > self.capacity:
            raise MessageTooLarge(
                f"reservation of {n} bytes exceeds broadcast ring capacity {self.capacity}"
            )
        return self._reserve(n, _deadline(timeout))

    @contextmanager
    @takes_turn(_TURN)
    def _reserve(self, n: int, deadline: float | None) -> Iterator[memoryview]:
        me = self._check_enter(deadline, True)
        forks = FORKS[0]
        turn = self._turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(deadline, True)
        try:
            try:
                self._owner = me
                turn.block = me  # held from a suspended generator: see _turns._lost
                if self._closed:
                    raise ValueError(f"broadcast ring {self.name!r} is closed")
                self._lock(_LOCK_PRODUCER, deadline)
                tail, pub = self._make_room(8 + _align8(n), deadline)
                off = (tail + 8) % self._D
                temp: bytearray | None = None
                if off + n <= self._D:
                    view = self._buf[self._H + off : self._H + off + n]
                else:
                    temp = bytearray(n)  # the record wraps: fill a copy, move it in at exit
                    view = memoryview(temp)
                try:
                    yield view
                finally:
                    release_view(view)
                    if self._closed:
                        self._close_mapping()
                if self._closed:
                    raise ValueError(
                        f"broadcast ring {self.name!r} is closed: the reservation was discarded"
                    )
                if FORKS[0] != forks:  # a forked child's copy: the reservation is the parent's
                    raise inherited_block("reserve()")
                if temp is not None:
                    end = self._put(tail, memoryview(temp))
                else:
                    self._q[(self._H + tail % self._D) >> 3] = n
                    end = tail + 8 + _align8(n)
                self._commit(tail, end, pub + 1, deadline, True)
            except BaseException:
                if not self._torn_down:
                    fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_PRODUCER])
                raise
            finally:
                try:
                    self._left()
                finally:
                    turn.block = 0
                    self._owner = 0  # last: see _check_enter
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            elif self._closed:
                self._teardown_if_free()  # a close() that found the turn taken

    # ---- control -------------------------------------------------------------------
    def shutdown(self) -> None:
        if self._closed:
            raise ValueError(f"broadcast ring {self.name!r} is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError(f"broadcast ring {self.name!r} is closed")
            try:
                self._lock(_LOCK_STATE, None)
                self._state()
                self._q[_W_CLOSED] = 1
                q = self._q
                used = [s for s in range(self._high()) if q[self._slot_word(s, _S_PID)]]
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        for s in used:
            self._ring(s)
        self._ring(-1)

    def _snapshot(self) -> tuple[tuple[int, int, int, int], list[tuple[int, int, int, int]]]:
        """The state and each held slot's (slot, pid, start, cursor), under the state lock."""
        if self._closed:
            raise ValueError(f"broadcast ring {self.name!r} is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError(f"broadcast ring {self.name!r} is closed")
            try:
                self._lock(_LOCK_STATE, None, _RD_STATE)
                st = self._state()
                q = self._q
                held = []
                for s in range(self._high()):
                    w = self._slot_word(s, 0)
                    if q[w + _S_PID]:
                        held.append((s, q[w + _S_PID], q[w + _S_START], self._cursor(w)[0]))
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        return st, held

    @property
    def subscribers(self) -> int:
        _, held = self._snapshot()
        return sum(1 for _, pid, start, _ in held if _proc_start(pid) in (start, -1))

    def _room(self) -> int:
        (tail, _, floor, _), held = self._snapshot()
        if self._block:
            live = [pos for _, pid, start, pos in held if _proc_start(pid) in (start, -1)]
            floor = min(live, default=tail)
        else:
            floor = tail  # overwrite: room is made by dropping the oldest (never waits)
        room = (self._D - (tail - floor) - 8) & ~7
        return -1 if room < 0 else min(room, self.capacity)


class PythonSubscriber(_Handle, SubscriberBase):
    """:class:`~fastipc.Subscriber` in Python: a cursor slot in the segment, a doorbell FIFO."""

    _what = "broadcast subscriber"
    _poller: Any = None
    _missed = 0
    #: The subscribing process, this handle's claim (generation), its slot's first word
    #: index, and the cursor (position, sequence number): only this handle writes them.
    _pid = 0
    _gen = 0
    _w = 0
    _pos = 0
    _seq = 0
    _cgen = 0

    @classmethod
    def _subscribe(cls, name: str, owners: frozenset[int] | None = None) -> PythonSubscriber:
        fd = open_segment(name, owners)
        try:
            geometry = cls._geometry(name, fd)
            sub = cls.__new__(cls)
            sub._owners = owners
            sub._setup(name, fd, geometry)
        except BaseException:
            os.close(fd)
            raise
        sub._slot = -1
        sub._missed = 0
        sub._pid = os.getpid()
        sub._poller = None
        try:
            sub._claim()
            sub._hold_bells(sub._slot)
        except BaseException:
            sub.close()
            raise
        return sub

    def _claim(self) -> None:
        """Take a free slot (or a dead owner's), positioned at the tail. Exclusive lock."""
        pid, start = _self_id()
        q = self._q
        with self._slock:
            try:
                self._lock(_LOCK_STATE, None)
                tail, pub, _, _ = self._state()
                n = self.max_subscribers
                slot = next((s for s in range(n) if q[self._slot_word(s, _S_PID)] == 0), -1)
                if slot < 0 and self._reclaim_dead(range(n)):
                    slot = next((s for s in range(n) if q[self._slot_word(s, _S_PID)] == 0), -1)
                if slot < 0:
                    raise broadcast_error(errno.EUSERS, self.name, segment_path(self.name), slots=n)
                w = self._slot_word(slot, 0)
                gen = (q[w + _S_GEN] + 1) & ((1 << 63) - 1)
                q[w + _S_START] = start
                q[w + _S_POS] = tail
                q[w + _S_SEQ] = pub
                q[w + _S_CGEN] = 0
                q[w + _S_MISSED] = 0
                q[w + _S_WATCH] = 0
                q[w + _S_PIN] = 0
                q[w + _S_GEN] = gen
                q[w + _S_PID] = pid
                if q[_W_HIGH] < slot + 1 or q[_W_HIGH] > n:
                    q[_W_HIGH] = slot + 1
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        self._slot, self._gen, self._w = slot, gen, w
        self._pos, self._seq, self._cgen = tail, pub, 0

    def _mine(self) -> None:
        """Raise if this handle's slot was taken from it (judged dead, or scribbled on)."""
        q, w = self._q, self._w
        if q[w + _S_GEN] != self._gen or q[w + _S_PID] != self._pid:
            raise incompatible(
                self.name,
                f"subscriber slot {self._slot} no longer belongs to this subscriber "
                "(reclaimed or overwritten)",
            )

    def _release(self) -> None:
        """Give the slot back (from teardown); ring a publisher waiting for this subscriber."""
        if self._slot < 0 or self._pid != os.getpid():
            return
        pubwait = 0
        with self._slock:
            try:
                self._lock(_LOCK_STATE, time.monotonic() + _COMMIT_GRACE)
                q, w = self._q, self._w
                if q[w + _S_GEN] == self._gen and q[w + _S_PID] == self._pid:
                    self._free_slot(self._slot)
                pubwait = q[_W_PUBWAIT]
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        self._slot = -1
        if pubwait:
            self._ring(-1)

    def _usable(self) -> None:
        if self._pid != os.getpid():
            raise ValueError(
                f"broadcast subscriber {self.name!r} belongs to the process that subscribed "
                "(a forked child must call Broadcast.subscribe itself)"
            )

    # ---- taking messages ----------------------------------------------------------------
    def _set_cursor(self, pos: int, seq: int) -> None:
        """Store this subscriber's cursor: the idle pair, then the cursor generation."""
        q, w = self._q, self._w
        g = (self._cgen + 1) & _M63
        i = w + _CURSOR_PAIRS[g & 1]
        q[i] = pos
        q[i + 1] = seq
        if _FENCE:
            _FENCE()  # the pair before the generation (see python_ring._Fence)
        q[w + _S_CGEN] = g
        self._cgen = g
        self._pos, self._seq = pos, seq

    def _lagged(self, floor: int, fseq: int) -> int:
        """Move the overrun cursor to the floor; how many messages it lost."""
        lagged = fseq - self._seq
        self._missed += lagged
        self._q[self._w + _S_MISSED] = self._missed
        self._set_cursor(floor, fseq)
        return lagged

    def _raise_lagged(self, lagged: int) -> NoReturn:
        raise Lagged(
            f"broadcast ring {self.name!r}: this subscriber fell behind and lost "
            f"{lagged} messages to overwrite",
            missed=lagged,
        )

    def _take_free(
        self, take: Callable[[int, int], tuple[Any, int, int]], deadline: float | None
    ) -> Any:
        """:meth:`_take` without a lock, for takes that copy (the module docstring says why
        that is safe): the state, the copy, then the floor again under ``overwrite``."""
        q, w = self._q, self._w
        for _ in range(100):  # a retry follows a floor move (then it lags) or a shutdown
            tail, _, floor, fseq = self._state()
            self._mine()
            pos, seq = self._pos, self._seq
            if q[w + _S_PIN]:
                q[w + _S_PIN] = 0  # a view's pin a Ctrl-C left behind
            if pos < floor:
                self._raise_lagged(self._lagged(floor, fseq))
            if pos == tail:
                if not q[_W_CLOSED]:
                    return _EMPTY
                # Shut down: the state again, read after the flag, so that a commit made
                # before the shutdown (and read here as not yet made) is seen.
                if _FENCE:
                    _FENCE()
                if self._state()[0] == pos:
                    raise Closed(f"broadcast ring {self.name!r} is shut down and drained")
                continue
            if pos > tail:
                raise incompatible(self.name, f"cursor {pos} is past the tail {tail}")
            try:
                result, end, k = take(pos, tail)
            except (IncompatibleSegment, MessageTooLarge):
                if self._block or self._state()[2] <= pos:
                    raise
                continue  # overwritten while read: a length from a newer record
            if not self._block:
                if _FENCE:
                    _FENCE()  # the copy before the floor (see the module docstring)
                if self._state()[2] > pos:
                    continue  # written over while copied: thrown away, then Lagged
            self._set_cursor(end, seq + k)
            if self._block and q[_W_PUBWAIT]:
                self._ring(-1)
            return result
        raise incompatible(self.name, "the shared state keeps changing under this subscriber")

    def _take(
        self, take: Callable[[int, int], tuple[Any, int, int]], deadline: float | None
    ) -> Any:
        """Under the shared state lock: ``take(cursor, tail)`` returns (result, new cursor,
        messages taken) for at least one message. Returns the result, or ``_EMPTY``;
        raises Lagged (the cursor moved to the floor) or Closed. recv_view's take,
        whose pin publishers must see under their exclusive lock."""
        lagged = 0
        pubwait = 0
        result: Any = _EMPTY
        with self._slock:
            if self._torn_down:
                raise ValueError(f"broadcast subscriber {self.name!r} is closed")
            try:
                self._lock(_LOCK_STATE, self._grace(deadline), _RD_STATE)
                tail, _, floor, fseq = self._state()
                self._mine()
                pos, seq = self._pos, self._seq
                q, w = self._q, self._w
                q[w + _S_PIN] = 0  # a view's pin a Ctrl-C left behind (the pin take sets it again)
                if pos < floor:
                    lagged = self._lagged(floor, fseq)
                elif pos == tail:
                    if self._q[_W_CLOSED]:
                        raise Closed(f"broadcast ring {self.name!r} is shut down and drained")
                elif pos > tail:
                    raise incompatible(self.name, f"cursor {pos} is past the tail {tail}")
                else:
                    result, pos, k = take(pos, tail)
                    if k:
                        self._set_cursor(pos, seq + k)
                        pubwait = q[_W_PUBWAIT]
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        if pubwait:
            self._ring(-1)
        if lagged:
            self._raise_lagged(lagged)
        return result

    def _hint(self) -> bool:
        """A lock-free peek: a commit since the state this handle last read (the
        generation moved), a tail past this cursor in that state, or a shutdown?

        Compared with what ``_state`` caches, never with the slot's tail word itself:
        a tail overwritten under an unchanged generation (a corrupted segment) made
        this say "a message is there" while the take, which reuses the cached state,
        found none, and a receive went from one to the other at 100% CPU until its
        deadline (tools/scribble.py --backend python --seed 1109)."""
        seen = self._seen
        q = self._q
        return bool(q[_W_SEL] != seen[0] or seen[1][0] != self._pos or q[_W_CLOSED])

    def _wait(self, deadline: float | None, registered: list[int]) -> None:
        """Sleep until this slot's bell rings, the deadline passes (Empty) or _SLEEP_CAP.

        The first sleep of a call registers this slot as a watcher (exclusive
        lock); the caller's next _take is the re-check that makes a publish
        between the two impossible to miss; the caller unregisters at its end.
        """
        if self._closed:
            raise ValueError(f"broadcast subscriber {self.name!r} is closed")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise timed_out(f"broadcast ring {self.name!r}", False)
        if not registered:
            spin_end = now + _SPIN
            while time.monotonic() < spin_end:
                if self._hint():
                    return
                os.sched_yield()
            # list += map(...): the count is recorded as soon as the call
            # returns, even if a signal handler raises right after it.
            registered += map(self._watch, (1,), (deadline,))
            return  # re-check before sleeping
        fd = self.fileno()
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(fd, select.POLLIN)
        wait = _SLEEP_CAP if deadline is None else min(deadline - now, _SLEEP_CAP)
        if poller.poll(max(wait, 0) * 1000):
            with suppress(BlockingIOError, InterruptedError):
                os.read(fd, 4096)

    def _unwait(self, registered: list[int]) -> None:
        if registered and not self._torn_down:
            with suppress(ValueError):
                self._watch(-1)

    @takes_turn(_TURN)
    def _receive(
        self, take: Callable[[int, int], tuple[Any, int, int]], timeout: float | None
    ) -> Any:
        deadline = _deadline(timeout)
        me = self._check_enter(deadline, False)
        self._usable()
        turn = self._turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(deadline, False)
        try:
            registered: list[int] = []
            try:
                self._owner = me
                return self._take_waiting(take, deadline, registered)
            finally:
                try:
                    self._unwait(registered)
                    self._left()
                finally:
                    self._owner = 0  # last: see _check_enter
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            elif self._closed:
                self._teardown_if_free()  # a close() that found the turn taken

    def _take_waiting(
        self,
        take: Callable[[int, int], tuple[Any, int, int]],
        deadline: float | None,
        registered: list[int],
        locked: bool = False,
    ) -> Any:
        """What ``take`` returns once there is a message, sleeping on the bell until then
        (the handle's turn taken; ``registered`` records the watch to undo). ``locked``:
        take under the shared state lock (a view's pin), else without a lock."""
        taker = self._take if locked else self._take_free
        while True:
            if self._closed:
                raise ValueError(f"broadcast subscriber {self.name!r} is closed")
            got = taker(take, deadline)
            if got is not _EMPTY:
                return got
            self._wait(deadline, registered)

    def _take_bytes(self, count: int) -> Callable[[int, int], tuple[Any, int, int]]:
        def take(pos: int, tail: int) -> tuple[Any, int, int]:
            n = self._length(pos, tail)
            out, pos = _cut_records(
                self._q,
                self._mm,
                self._H,
                self._D,
                self.capacity,
                pos,
                tail,
                n,
                count,
                self._corrupt,
            )
            return out, pos, len(out)

        return take

    def _corrupt(self, n: int, pos: int) -> NoReturn:
        raise incompatible(self.name, f"corrupt record: length {n} at position {pos}")

    def recv(self, timeout: float | None = None) -> bytes:
        got: list[bytes] = self._receive(self._take_bytes(1), timeout)
        return got[0]

    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        count = validate_max_count(max_count)
        got: list[bytes] = self._receive(self._take_bytes(count), timeout)
        return got

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        dst = check_buffer(buffer, "buffer")
        if dst.readonly:
            raise TypeError("buffer must be writable")

        def take(pos: int, tail: int) -> tuple[Any, int, int]:
            n = self._length(pos, tail)
            if n > dst.nbytes:
                raise MessageTooLarge(
                    f"message of {n} bytes does not fit a {dst.nbytes}-byte buffer"
                )
            D, H = self._D, self._H
            off = (pos + 8) % D
            if off + n <= D:
                dst[:n] = self._buf[H + off : H + off + n]
            else:
                first = D - off
                dst[:first] = self._buf[H + off : H + D]
                dst[first:n] = self._buf[H : H + n - first]
            return n, pos + 8 + _align8(n), 1

        n: int = self._receive(take, timeout)
        return n

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        return self._recv_view(timeout)

    @contextmanager
    @takes_turn(_TURN)
    def _recv_view(self, timeout: float | None) -> Iterator[memoryview]:
        w = self._w

        def pin(pos: int, tail: int) -> tuple[Any, int, int]:
            # Under the shared lock: the pin is seen by any publisher's floor move after it.
            n = self._length(pos, tail)
            self._q[w + _S_PIN] = pos + 1
            return (pos, n), pos, 0  # nothing consumed yet

        # One hold of the turn from the pin to the block's end: let go in between, another
        # thread's receive cleared the pin and took the same message.
        deadline = _deadline(timeout)
        me = self._check_enter(deadline, False)
        forks = FORKS[0]
        self._usable()
        turn = self._turn
        try:
            del turn.free
        except AttributeError:  # another thread's call: wait for its end, within the deadline
            self._wait_turn(deadline, False)
        try:
            registered: list[int] = []
            try:
                self._owner = me
                turn.block = me  # held from a suspended generator: see _turns._lost
                pos, n = self._take_waiting(pin, deadline, registered, locked=True)
                self._unwait(registered)
                registered.clear()
                D, H = self._D, self._H
                off = (pos + 8) % D
                if off + n <= D:
                    raw = self._buf[H + off : H + off + n]
                else:  # the record wraps: a joined copy
                    raw = self._bounce.join(self._buf, H + off, D - off, H, n - D + off)
                view = raw.toreadonly()
                try:
                    yield view
                finally:
                    self._bounce.give_back(view, raw)
                    if self._closed:
                        self._close_mapping()
                    elif FORKS[0] != forks:  # a forked child's copy: the pin is the parent's
                        raise inherited_block("recv_view()")
                    else:
                        self._consume_pinned(pos, n)
            finally:
                try:
                    self._unwait(registered)
                    self._left()
                finally:
                    turn.block = 0
                    self._owner = 0  # last: see _check_enter
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()
            elif self._closed:
                self._teardown_if_free()  # a close() that found the turn taken

    def _consume_pinned(self, pos: int, n: int) -> None:
        """Consume the viewed message at ``pos`` and drop the pin (shared lock)."""
        if self._pid != os.getpid():
            return  # a forked child unwinding the block: pin and cursor are the parent's
        pubwait = 0
        with self._slock:
            if self._torn_down:
                return
            try:
                self._lock(_LOCK_STATE, time.monotonic() + _COMMIT_GRACE, _RD_STATE)
                q, w = self._q, self._w
                q[w + _S_PIN] = 0
                if self._pos == pos and q[w + _S_GEN] == self._gen:
                    self._set_cursor(pos + 8 + _align8(n), self._seq + 1)
                pubwait = q[_W_PUBWAIT]
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        if pubwait:
            self._ring(-1)

    # ---- readiness and snapshots ---------------------------------------------------------
    def _watch(self, delta: int, deadline: float | None = None) -> int:
        """Add ``delta`` to this slot's watcher count (and the sleepers' sum); returns the
        count. Waits for the state lock until ``deadline`` (Empty), plus the grace."""
        if self._closed:
            raise ValueError(f"broadcast subscriber {self.name!r} is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError(f"broadcast subscriber {self.name!r} is closed")
            try:
                self._lock(_LOCK_STATE, self._grace(deadline))
                q, w = self._q, self._w
                self._mine()
                count = min(max(q[w + _S_WATCH] + delta, 0), (1 << 32) - 1)
                q[_W_SLEEPERS] = max(q[_W_SLEEPERS] + count - q[w + _S_WATCH], 0)
                q[w + _S_WATCH] = count
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        return count

    def _open_bell(self) -> int:
        with self._slock:  # teardown closes the bells under it
            if self._torn_down:
                raise ValueError(f"broadcast subscriber {self.name!r} is closed")
            return dup_bell(self, self._bells[_OWN_BELL], f"broadcast subscriber {self.name!r}")

    def _wake_self(self) -> None:
        fd = self._bell_fd
        if fd >= 0:
            with suppress(OSError):
                os.write(fd, b"\0")

    def _snap(self) -> tuple[int, int, int, int, int]:
        """(tail, published, floor, floor seq, closed) under the shared lock."""
        if self._closed:
            raise ValueError(f"broadcast subscriber {self.name!r} is closed")
        with self._slock:
            if self._torn_down:
                raise ValueError(f"broadcast subscriber {self.name!r} is closed")
            try:
                self._lock(_LOCK_STATE, None, _RD_STATE)
                st = self._state()
                closed = self._q[_W_CLOSED]
            finally:
                fcntl.fcntl(self._fd, _F_SETLK, _UN[_LOCK_STATE])
        return (*st, closed)

    def _poll(self) -> bool:
        tail, _, floor, _, closed = self._snap()
        return bool(closed) or self._pos != tail or self._pos < floor

    def __len__(self) -> int:
        # The cursor first, in one statement: another thread's receive may move it
        # on meanwhile, never past the snapshot taken after it (read after it,
        # the count could go below 0).
        seq, pos = self._seq, self._pos
        _, pub, floor, fseq, _ = self._snap()
        return max(0, pub - (seq if pos >= floor else fseq))

    @property
    def missed(self) -> int:
        return self._missed

    def close(self) -> None:
        if self._closed:
            return
        with suppress(Exception):
            self._unwatch_all_keep_fd()
        super().close()
        fd, self._bell_fd = self._bell_fd, -1
        if fd >= 0 and self._owner == 0:
            os.close(fd)
        elif fd >= 0:
            self._bells[-2] = fd  # a blocked call still polls it: closed at teardown

    def _unwatch_all_keep_fd(self) -> None:
        w, self._watching = self._watching, 0
        if w > 0 and self._watch_pid == os.getpid():
            with suppress(Exception):
                self._watch(-w)


class _Empty:
    pass


_EMPTY: Any = _Empty()

_LIVE: weakref.WeakSet[_Handle] = weakref.WeakSet()


def _reopen_after_fork() -> None:
    for h in list(_LIVE):
        h._after_fork_in_child()


os.register_at_fork(after_in_child=_reopen_after_fork)
