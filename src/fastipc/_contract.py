"""The contract both backends implement: RingBase and ChannelBase.

Each base class documents the interface (the docstrings users read through
the public ``Ring``/``Channel``, which subclass the chosen backend's class)
and holds the behaviour both backends share, so that neither backend needs
to import a public class. Ground floor: imports only errors, _checks, _names
and handoff.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NoReturn, TypeVar

from ._checks import FdLike, release_view, validate_fds
from ._names import unlink_ring
from ._turns import TX, new_turns, takes_turn
from .errors import Closed, FastIPCError, Timeout, channel_error, channel_keeps_open, timed_out
from .handoff import DEFAULT_HANDOFF_AREA

__all__ = ["DIRECT_MIN", "RECV_BUFFER", "ChannelBase", "RingBase", "drain"]

_R = TypeVar("_R", bound="RingBase")
_C = TypeVar("_C", bound="ChannelBase")

#: Size of a channel's receive buffer (bytes); longer frames bypass it.
RECV_BUFFER = 256 * 1024
#: Frames longer than this (bytes) are read straight into their destination.
DIRECT_MIN = 64 * 1024


#: fastipc._objects once an object was sent or received: pickle is imported
#: then, not with fastipc (and a module global is cheaper than an import).
_objects: Any = None


def _load_objects() -> Any:
    global _objects
    from . import _objects as loaded

    _objects = loaded
    return loaded


class RingBase:
    """What every ring backend provides; see :class:`fastipc.Ring` for the contract."""

    #: The name given at creation (``/dev/shm/fastipc.NAME`` holds the segment).
    name: str
    #: The largest message, in bytes, the ring accepts; also its payload space.
    capacity: int

    def __init__(self, *_: object) -> None:
        raise TypeError(
            "Ring(...) is not how a ring is made: use Ring.create(name, capacity) for a new "
            "ring (exist_ok=True to reuse one left by an earlier run) or Ring.open(name) "
            "for an existing one"
        )

    # ---- the interface each backend implements --------------------------
    @classmethod
    def _create(cls: type[_R], name: str, capacity: int, mode: int) -> _R:
        """Create the segment (name, capacity and mode already checked); a handle on it."""
        raise NotImplementedError

    @classmethod
    def _open(cls: type[_R], name: str, owners: frozenset[int] | None = None) -> _R:
        """Open the existing segment ``name`` (checked) whose owner is in ``owners``."""
        raise NotImplementedError

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

    def _try_recv(self) -> bytes | None:
        """``recv(timeout=0)``, but None instead of raising when the ring is empty.

        The asyncio layer's take for every message: no timeout to check, no
        exception raised and caught per empty look. Raises as ``recv``
        otherwise (Closed once shut down and drained).
        """
        try:
            return self.recv(timeout=0)
        except Timeout:
            return None

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
        view past the block. Closing the handle while the block runs (from
        any thread) leaves the message for the next consumer; the consumer
        side goes when the block ends, or at once if the block's own thread
        closes it and nothing else is using the handle. ``hash(view)``
        differs between backends (TypeError on native): hash ``bytes(view)``.
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

    def _room(self) -> int:
        """The longest message (bytes) a send could append now, -1 if not even an empty one fits."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called on this handle."""
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------
    #: Set by ``Ring.create(..., unlink_on_exit=True)``: ``with`` removes the ring.
    _unlink_on_exit = False

    #: Objects this size (bytes) or smaller are joined into one message and
    #: sent; larger ones are written piece by piece into a reserved block.
    _OBJ_JOIN_MAX = 64 * 1024

    def send_obj(self, obj: Any, timeout: float | None = None) -> None:
        """Send any picklable object as one message (pickle protocol 5).

        Buffers the object hands to pickle out of band (numpy arrays,
        ``bytearray``, anything following PEP 574) are not copied into a
        pickle stream: a large object is written piece by piece straight
        into a reserved block of the ring, one copy in all. Receive it with
        :meth:`recv_obj`. Raises what :meth:`send` (small objects) or
        :meth:`reserve` (large ones) raises, and pickle's errors for an
        object that cannot be pickled; MessageTooLarge if the encoded object
        exceeds ``capacity``.
        """
        pieces, total = (_objects or _load_objects()).encode(obj)
        if total <= self._OBJ_JOIN_MAX:
            self.send(b"".join(pieces), timeout)
            return
        with self.reserve(total, timeout) as block:
            at = 0
            for piece in pieces:
                n = len(piece) if isinstance(piece, bytes) else piece.nbytes
                block[at : at + n] = piece
                at += n

    def recv_obj(self, timeout: float | None = None) -> Any:
        """Receive an object sent with :meth:`send_obj`.

        The message is copied once out of the ring (as :meth:`recv` does)
        and the object rebuilt on it: out-of-band buffers are read-only
        views into that copy (a numpy array comes back read-only, without a
        further copy; ``.copy()`` it to write), as on a Channel.

        Unpickling runs code the sender chose: only receive objects from
        processes you trust. A ring is owner-only by default (``mode``), so
        only your own uid can send to it.

        Raises what :meth:`recv` raises; ValueError if the message was not
        made by ``send_obj`` (it is consumed all the same); pickle's errors.
        """
        o = _objects or _load_objects()
        data, buffers = o.unpack(self.recv(timeout), copy_buffers=False)
        return o.load(data, buffers)

    def empty(self) -> bool:
        """True if no message is waiting (a snapshot: another process may send the next instant).

        Raises ValueError on a closed handle.
        """
        return len(self) == 0

    def full(self) -> bool:
        """True if not even an empty message fits now (a snapshot). See :meth:`free_bytes`.

        Raises ValueError on a closed handle.
        """
        return self._room() < 0

    def free_bytes(self) -> int:
        """The longest message, in bytes, a ``send`` could append now without waiting (a snapshot).

        At most ``capacity``. Each message also takes a small header and
        padding in the ring, so two messages of half this size may not both
        fit. Raises ValueError on a closed handle.
        """
        return max(self._room(), 0)

    def __bool__(self) -> bool:
        # Always true, like any handle: without this, ``len()`` would make an
        # empty ring falsy and ``ring or fallback`` pick the fallback.
        return True

    def unlink(self) -> None:
        """Remove this ring's name and OS objects; this handle stays usable until closed."""
        try:
            unlink_ring(self.name)
        except FileNotFoundError:
            pass

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._unlink_on_exit:
                self.unlink()
        finally:
            self.close()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # A handle is process-local; another process re-opens the ring by name
        # (through the public class, which every handle is an instance of).
        return (type(self).open, (self.name,))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"capacity={self.capacity}"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the ring is shut down and drained."""
        while True:
            try:
                yield self.recv()
            except Closed:
                return

    # ---- readiness: the doorbells (issue 12) ------------------------------
    # Each ring has two FIFOs in /dev/shm (``_names.bell_paths``): the recv
    # bell, rung after a publish, and the send bell, rung after a consume,
    # each only while its side's watcher count in the segment is non-zero
    # (so the hot path makes no syscall while nobody watches). A watcher
    # increments the count, then re-checks the ring, then polls the FIFO; the
    # backends order the increment before the re-check and the publish before
    # the producer's look at the count, so no wake-up is lost. Spurious ones
    # are: a byte may be stale, or another watcher's.
    #
    # A handle opens both bells when it opens the ring (while the name is the
    # ring's) and keeps them; every readiness fd it hands out (fileno(), aio's
    # own) is a duplicate of one of them (``_open_bell``), never the FIFO
    # reopened by its path. So a handle of a ring removed meanwhile never
    # makes a FIFO in /dev/shm again, and never takes the bell of a ring
    # made anew under the name: its fd is the FIFO its own peers ring.

    #: The fd ``fileno()`` made (a duplicate of the recv bell), or -1.
    _bell_fd: int = -1
    #: Watches this handle holds per side (recv, send), undone by close().
    _watching: list[int] | None = None
    #: The process that made the registrations in ``_watching``.
    _watch_pid: int = 0
    #: Uids trusted as owners of the ring's objects (Ring.open's ``owners``).
    _owners: frozenset[int] | None = None

    def _watch(self, side: int, delta: int) -> int:
        """Add ``delta`` to ``side``'s watcher count in the segment; return the new count."""
        raise NotImplementedError

    def _poll(self, side: int, nbytes: int) -> bool:
        """Whether ``side`` (0 recv, 1 send) would not have to wait now (see readable())."""
        raise NotImplementedError

    def readable(self) -> bool:
        """True if a receive would not wait now: a message is waiting, or the ring is shut down.

        A snapshot: another consumer may take the message first. Never
        blocks. Raises ValueError on a closed handle.
        """
        return self._poll(0, 0)

    def writable(self, nbytes: int = 0) -> bool:
        """True if a send of ``nbytes`` bytes would not wait now (room, or shut down). A snapshot."""
        return self._poll(1, nbytes)

    def _open_bell(self, side: int) -> int:
        """A new fd (owned by the caller) on ``side``'s doorbell FIFO: a duplicate
        (:func:`dup_bell`) of the bell fd this handle opened with the ring.

        Raises ValueError once the handle is closed.
        """
        raise NotImplementedError

    def _watch_add(self, side: int, delta: int) -> int:
        """Register (+1) or unregister (-1) this handle as a watcher of ``side``; new count."""
        count = self._watch(side, delta)
        # Counted after the call returned: close() undoes only what is registered.
        w = self._watching
        if w is None or self._watch_pid != os.getpid():
            # A handle inherited through fork(): the parent's registrations
            # are the parent's to undo.
            w = self._watching = [0, 0]
            self._watch_pid = os.getpid()
        w[side] += delta
        return count

    def _unwatch_all(self) -> None:
        """Undo this handle's registrations (close() calls it before closing)."""
        w, self._watching = self._watching, None
        if w and self._watch_pid == os.getpid():
            for side in (0, 1):
                if w[side] > 0:
                    try:
                        self._watch(side, -w[side])
                    except (ValueError, OSError, FastIPCError):
                        pass  # a count left high costs only spurious wake-ups
        fd, self._bell_fd = self._bell_fd, -1
        if fd >= 0:
            os.close(fd)

    def fileno(self) -> int:
        """An fd that becomes readable when a message may be waiting: the ring's recv doorbell.

        For ``selectors``, ``select.epoll`` and event loops. The fd is owned
        by this handle (closed by :meth:`close`): made on the first call, as a
        duplicate of the doorbell the handle opened with the ring, so it is
        the FIFO this handle's peers ring even if the ring was removed (or
        made anew under its name) since; nothing is made in /dev/shm. It is
        non-blocking, with flags of its own (reopened through /proc/self/fd).
        Every call returns the same fd. It is
        rung only while someone is registered as a watcher: wrap the wait in
        ``with ring.watch():``, then, after the fd polls readable, drain it
        (``os.read(fd, 4096)``, non-blocking) and receive with ``timeout=0``.
        A readable fd is a hint (the message may already be taken), and a
        watcher must re-check the ring after registering: ``watch()`` returns
        :meth:`readable` for that. Raises ValueError on a closed handle, OSError
        (e.g. EMFILE) if the fd cannot be duplicated.
        """
        if self.closed:
            raise ValueError(f"ring {self.name!r} is closed")
        if self._bell_fd < 0:
            keep_bell_fd(self, self._open_bell(0))
            if self._bell_fd < 0:
                raise ValueError(f"ring {self.name!r} is closed")
        return self._bell_fd

    @contextmanager
    def watch(self) -> Iterator[bool]:
        """Context manager: register as a watcher of :meth:`fileno` for the block.

        Yields :meth:`readable` as re-checked *after* registering: if it is
        False, a message published from then on rings the fd, so waiting on
        the fd cannot miss it. The registration is in the segment (a count
        that producers read after each publish); it is undone at the block's
        exit and by :meth:`close`. A process killed inside the block leaves
        the count high, which only makes producers ring the bell needlessly.
        """
        fd = self.fileno()
        drain(fd)
        registered: list[int] = []
        try:
            # list += map(...): the count is recorded as soon as the call
            # returns, even if a signal handler raises right after it.
            registered += map(self._watch_add, (0,), (1,))
            yield self.readable()
        finally:
            if registered and not self.closed:
                self._watch_add(0, -1)


def dup_bell(handle: Any, bell: int, what: str) -> int:
    """A new fd of the FIFO of ``bell``, a doorbell fd ``handle`` holds, for the caller
    to own (close-on-exec, non-blocking).

    Reopened through ``/proc/self/fd`` (no path lookup in /dev/shm), so it has
    an open file description of its own: a caller that made it blocking would
    otherwise make the handle's own bell block too (its rings, and aio's
    drains). Where /proc is missing, an ``os.dup`` (sharing the flags).
    The handles close their bells only after ``closed`` reads True: an fd
    made after that (of the number reused by then, or failing) is seen by
    the look at ``closed`` after it and undone, so one this returns is always
    of the handle's bell. Raises ValueError (``what`` is closed).
    """
    try:
        try:
            fd = os.open(
                f"/proc/self/fd/{bell}", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
            )
        except (FileNotFoundError, PermissionError):
            # No /proc here, or the FIFO's mode no longer lets this process open
            # it (or the number is free, or another file's: see below).
            fd = os.dup(bell)
    except OSError:
        if handle.closed:
            raise ValueError(f"{what} is closed") from None
        raise
    if handle.closed:
        os.close(fd)
        raise ValueError(f"{what} is closed")
    return fd


def keep_bell_fd(handle: Any, fd: int) -> None:
    """Make ``fd``, a bell just opened, ``handle._bell_fd`` (what fileno() returns),
    unless another thread stored one first or the handle was closed meanwhile:
    then it is closed. The test and the store, and close()'s swap of
    ``_bell_fd``, hold no call, so one fd is kept and no other stays open."""
    if not handle.closed and handle._bell_fd < 0:
        handle._bell_fd = fd
        if handle.closed:  # close() swapped before the store: ours to close
            fd, handle._bell_fd = handle._bell_fd, -1
            if fd >= 0:
                os.close(fd)
    else:
        os.close(fd)


def drain(fd: int) -> None:
    """Empty a non-blocking doorbell fd (its bytes carry no data: each means "look again")."""
    try:
        while len(os.read(fd, 4096)) == 4096:
            pass
    except (BlockingIOError, InterruptedError):
        pass


class ChannelBase:
    """What every channel backend provides; see :class:`fastipc.Channel` for the contract."""

    #: The endpoint (path, @name or description) used in error messages.
    name: str
    # What the properties below read: fixed when the channel is made (the
    # native core holds its own copies, and the python backend derives its
    # inline-send bound from them once).
    _max_message: int
    _handoff_min: int
    _handoff_area: int
    #: The view recv_view has lent, while its block runs.
    _view: memoryview | None
    _sock: socket.socket | None
    #: False on a tcp socket: fds travel only over AF_UNIX.
    _passes_fds: bool
    #: One receive and one send at a time (fastipc._turns).
    _rx_turn: Any
    _tx_turn: Any

    def __init__(self, *_: object) -> None:
        raise TypeError("use Channel.pair(), Channel.connect(), Channel.from_socket() or accept()")

    @property
    def max_message(self) -> int:
        """The largest message, in bytes, this end sends or accepts (read-only: set
        when the channel is made)."""
        return self._max_message

    @property
    def handoff_min(self) -> int:
        """Messages sent of at least this many bytes go through shared memory (0:
        never); read-only. A channel that cannot make its area (no memfd, no memory)
        or whose peer writes nonsense into it sends inline regardless."""
        return self._handoff_min

    @property
    def handoff_area(self) -> int:
        """Size in bytes of this end's hand-off area (read-only)."""
        return self._handoff_area

    # ---- construction (for the public factories) -----------------------
    @classmethod
    def _adopt(
        cls: type[_C],
        sock: socket.socket,
        name: str,
        max_message: int,
        handoff: tuple[int, int] = (0, DEFAULT_HANDOFF_AREA),
    ) -> _C:
        """A channel on connected ``sock``. ``handoff`` (min, area bytes) stays
        off unless given: only a Channel peer understands hand-off frames."""
        sock.setblocking(False)
        self = cls.__new__(cls)
        self._sock = sock
        self._passes_fds = sock.family == socket.AF_UNIX
        self.name = name
        self._max_message = max_message
        self._handoff_min, self._handoff_area = handoff
        new_turns(self)
        self._setup()
        return self

    def _recv_now(self) -> bytes | None:
        """recv(timeout=0), but None where that raises Timeout: what aio.Channel tries
        before and after each wait (a miss then costs no exception)."""
        try:
            return self.recv(timeout=0)
        except Timeout:
            return None

    # ---- a send that goes on across awaits (for aio.Channel) -------------
    @takes_turn(TX)
    def _send_begin(self, data: Any) -> bool | None:
        """Send one message (no fds) without waiting: what aio.Channel's loop thread calls.

        True: it all went out. None: nothing went (the socket is full).
        Timeout: nothing went, as another thread's send holds the turn. Raises
        what send() raises. False: part of the frame went out, and the send
        turn stays taken (other threads' sends wait for it, as for a send in
        progress) until :meth:`_send_more` returns True or :meth:`_send_drop`
        gives up. The caller must then call one of them (an exception from
        either gives the turn back). The python backend sends the frame
        inline; the native one as its send does (through the hand-off area
        for a long enough message, when the channel has one).
        """
        turn = self._tx_turn
        try:
            del turn.free
        except AttributeError:  # another thread's send: the caller waits elsewhere
            raise timed_out(f"channel {self.name} (another thread's call)", True) from None
        try:
            sent = self._tx_try(data)
            if sent is not False:
                return sent
            turn.block = -threading.get_ident()  # held across awaits: see _turns.Turn
            return False
        except BaseException:
            turn.block = 0
            self._tx_abandon_surely()  # closes if part of the frame may have gone out
            raise
        finally:
            if not turn.block:
                turn.free = True
                if turn.waiting:
                    turn.wake()

    @takes_turn(TX)
    def _send_more(self) -> bool:
        """Write what the socket takes now of the frame :meth:`_send_begin` left part-sent.

        True once it is all out (the send turn is given back); False: call
        again when the socket polls writable. Raises what send() raises (the
        channel is then closed, and the turn given back).
        """
        turn = self._tx_turn
        if turn.block >= 0:
            raise RuntimeError("no send is part-way to go on with")
        try:
            if not self._tx_resume():
                return False
            turn.block = 0
            return True
        except BaseException:
            turn.block = 0
            self._tx_abandon_surely()
            raise
        finally:
            if not turn.block:
                turn.free = True
                if turn.waiting:
                    turn.wake()

    def _send_drop(self) -> None:
        """Give up the frame :meth:`_send_begin` left part-sent, if any: close the channel
        (the stream cannot take the rest of another frame; the peer gets Closed, never
        part of a message) and give the send turn back. Idempotent."""
        turn = self._tx_turn
        if turn.block >= 0:
            return
        # The turn is parked until the frame is surely dropped: a handler raising
        # before that leaves it for the next _send_drop (close(), the next send).
        self._tx_abandon_surely()
        turn.block = 0
        turn.free = True
        if turn.waiting:
            turn.wake()

    def _close_surely(self) -> None:
        """close(), done again if a signal handler raised inside it: a stream with part
        of a frame out must not stay open (the next frame would continue it)."""
        try:
            self.close()
        except BaseException:
            self.close()
            raise

    def _tx_abandon_surely(self) -> None:
        """_tx_abandon(), done again if a signal handler raised inside it: a frame cut
        short must never leave the channel open (the next frame would continue it)."""
        try:
            self._tx_abandon()
        except BaseException:
            self._tx_abandon()
            raise

    def _tx_try(self, data: Any) -> bool | None:
        """One write of ``data``'s frame: True all of it, False part (kept), None nothing."""
        raise NotImplementedError

    def _tx_resume(self) -> bool:
        """One write of the rest of the kept frame: True once it is all out."""
        raise NotImplementedError

    def _tx_abandon(self) -> None:
        """Forget the kept frame, closing the channel if part of it may have gone out."""
        raise NotImplementedError

    def _fd_list(self, fds: Iterable[FdLike]) -> list[int]:
        """The fd numbers to send with a message (checked); ValueError on a tcp channel."""
        fdl = validate_fds(fds)
        if fdl and not self._passes_fds:
            raise ValueError(
                f"{self.name}: fds can be passed only over a unix socket, and this channel is tcp"
            )
        return fdl

    # ---- the interface each backend implements --------------------------
    def _setup(self) -> None:
        """Make the backend's per-channel state (called once by _adopt)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free the backend's state and close fds it holds (called once by close)."""
        raise NotImplementedError

    def _buffered(self) -> bool:
        """True if received bytes wait in this process (they would not survive pickling)."""
        raise NotImplementedError

    def send(self, data: Any, fds: Iterable[FdLike] = (), timeout: float | None = None) -> None:
        """Send one message: any C-contiguous bytes-like object, with ``fds`` attached.

        ``fds`` are ints or objects with ``fileno()``, at most 253; the peer
        receives duplicates (the caller's stay open). Blocks while the
        socket is full. Raises :class:`~fastipc.MessageTooLarge` if
        ``len(data) > max_message`` (nothing sent), :class:`~fastipc.Closed`
        if the peer is gone, :class:`~fastipc.Timeout`, TypeError for str
        and other non-buffers.
        """
        raise NotImplementedError

    def send_many(self, buffers: Iterable[Any], timeout: float | None = None) -> int:
        """Send each of ``buffers`` as one message, in order, with few syscalls; return how many.

        Every item is checked before any is sent (TypeError, MessageTooLarge).
        If the deadline passes between messages, the :class:`~fastipc.Timeout`
        carries ``sent``; if it passes inside one, the channel is closed too.
        """
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> bytes:
        """Return the next message. Fds that came with it are closed (see :meth:`recv_with_fds`).

        Raises :class:`~fastipc.Timeout`, :class:`~fastipc.Closed` once the
        peer closed and everything was received, MessageTooLarge (channel
        closed) if the peer announced one over ``max_message``.
        """
        raise NotImplementedError

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the next message into writable ``buffer``; return its length in bytes.

        A message longer than ``buffer`` stays queued and
        :class:`~fastipc.MessageTooLarge` is raised (the channel stays open).
        Fds that came with it are closed.
        """
        raise NotImplementedError

    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        """Return between 1 and ``max_count`` messages: waits for the first, takes what else arrived.

        Fds that came with them are closed.
        """
        raise NotImplementedError

    def send_obj(self, obj: Any, timeout: float | None = None) -> None:
        """Send any picklable object as one message (pickle protocol 5).

        Out-of-band buffers (numpy arrays, ``bytearray``, PEP 574 objects)
        skip the pickle stream; header, stream and buffers are joined once
        into the message (large ones then go through the hand-off area as
        any message). Receive with :meth:`recv_obj`. Raises what
        :meth:`send` raises, and pickle's errors.
        """
        pieces, _ = (_objects or _load_objects()).encode(obj)
        self.send(b"".join(pieces), timeout=timeout)

    def recv_obj(self, timeout: float | None = None) -> Any:
        """Receive an object sent with :meth:`send_obj`.

        Out-of-band buffers are not copied: the object is rebuilt on
        read-only views into the received message (a numpy array comes back
        read-only; ``.copy()`` it to write).

        Unpickling runs code the sender chose: only receive objects from
        peers you trust (``peer_credentials()`` says who is connected on a
        Unix socket). Raises what :meth:`recv` raises; ValueError if the
        message was not made by ``send_obj``; pickle's errors.
        """
        o = _objects or _load_objects()
        data, buffers = o.unpack(self.recv(timeout), copy_buffers=False)
        return o.load(data, buffers)

    def recv_with_fds(self, timeout: float | None = None) -> tuple[bytes, list[int]]:
        """Return the next message and the fds that came with it.

        The fds are new, close-on-exec and owned by the caller (close them).
        Raises as :meth:`recv`, and OSError(ENOBUFS) naming MSG_CTRUNC if the
        message carried more fds than fit (the ones that came were closed;
        the message is consumed, the channel stays open).
        """
        raise NotImplementedError

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        """Context manager yielding a read-only view of the next message, in place when it can.

        A message that came through the shared-memory hand-off is not
        copied: the view is the sender's area, and its room is given back
        when the block exits (until then the sender has that much less room;
        messages received inside the block keep theirs too). Any other
        message is received as by :meth:`recv` and viewed. Do not keep the
        view past the block (it is released there; closing the channel
        inside the block is allowed). One view at a time: a second
        ``recv_view`` inside the block raises ValueError. Raises as
        :meth:`recv`. The native backend's wait for the message after a
        handed-off one spins up to that message's length / 8 GB/s (at most
        250 µs, never past ``timeout``) before sleeping, as a reader that
        copies nothing is back waiting well before the sender's next copy is
        done (see csrc/channel.c, spin_end). ``hash(view)`` of a handed-off
        message differs between backends (TypeError on native): hash
        ``bytes(view)``.
        """
        self._socket()
        self._no_view_out()  # (again in _take_view, holding the turn)
        return self._lend_view(timeout)

    @contextmanager
    def _lend_view(self, timeout: float | None) -> Iterator[memoryview]:
        got: list[Any] = []
        try:
            self._take_view(timeout, got)
        except BaseException:
            if got:  # lent, then a signal handler raised before the block began
                try:
                    release_view(got[0])
                    got[1]()
                finally:
                    if self._view is got[0]:  # (see below)
                        self._view = None
            raise
        view, give_back = got
        try:
            yield view
        finally:
            # Its room goes back while _view still bars another thread's
            # recv_view: cleared first, that thread's view could be lent (and its
            # release recorded) before this give_back, which would free it.
            try:
                release_view(view)
                give_back()
            finally:
                # Only this block's: the python backend's give-back ends the view
                # itself, and another thread's recv_view may have been lent one since
                # (no call between this test and the store).
                if self._view is view:
                    self._view = None

    def _take_view(self, timeout: float | None, got: list[Any]) -> None:
        """The backend's part of recv_view: add to ``got`` the next message's view and
        the call that gives its room back (and that of messages received meanwhile)
        when the block ends.

        Holding the receive turn, it raises ValueError if a view is out (one
        another thread's recv_view took while this call waited for the turn)
        and sets ``_view`` before it gives the turn back: a second thread's
        recv_view must never release or overlap the first one's view."""
        raise NotImplementedError

    def _no_view_out(self) -> None:
        """ValueError if a recv_view block holds a view (call holding the receive turn)."""
        if self._view is not None:
            raise ValueError(f"channel {self.name}: a recv_view is already open")

    def pending(self) -> bool:
        """True if a whole message is already buffered in this process.

        A selector on :meth:`fileno` does not see such messages: receive
        until this is False (or a ``timeout=0`` receive times out) before
        waiting on the fd.
        """
        raise NotImplementedError

    # ---- shared behaviour ---------------------------------------------
    def peer_credentials(self) -> tuple[int, int, int]:
        """``(pid, uid, gid)`` of the peer process as the kernel recorded them at connect (SO_PEERCRED).

        Raises ValueError on a tcp channel: the kernel knows no peer process there.
        """
        if not self._passes_fds:
            raise ValueError(f"{self.name}: peer credentials exist only on a unix socket")
        creds = self._socket().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, gid = struct.unpack("3i", creds)
        return pid, uid, gid

    def shutdown(self, how: str = "both") -> None:
        """Shut down ``"write"``, ``"read"`` or ``"both"`` directions of the connection.

        After ``"write"`` the peer receives what was sent, then Closed; this
        end can still receive. Raises ValueError for another ``how``.
        """
        flags = {"write": socket.SHUT_WR, "read": socket.SHUT_RD, "both": socket.SHUT_RDWR}
        if how not in flags:
            raise ValueError(f"shutdown how must be 'write', 'read' or 'both', got {how!r}")
        try:
            self._socket().shutdown(flags[how])
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # the peer already went away: nothing to shut
                raise OSError(exc.errno, exc.strerror, self.name) from None

    def fileno(self) -> int:
        """The socket's fd, for selectors and asyncio (see :meth:`pending`)."""
        return self._socket().fileno()

    @property
    def closed(self) -> bool:
        """True once the channel is closed (by :meth:`close` or a broken stream)."""
        return self._sock is None

    def close(self) -> None:
        """Close the socket and every received fd not handed out (idempotent)."""
        sock, self._sock = self._sock, None
        turn = self._tx_turn
        if turn.block < 0:
            # A frame part-sent for an event loop (_send_begin) holds the send turn:
            # the stream ends here, so give the turn back to the sends waiting for it
            # (they meet the closed channel).
            turn.block = 0
            turn.free = True
            if turn.waiting:
                turn.wake()
        if sock is None:
            return
        try:
            self._release()
        finally:
            sock.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self.close()

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the peer closes."""
        while True:
            try:
                yield self.recv()
            except Closed:
                return

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only multiprocessing's pickler can carry the socket (it dups the fd).
        if self._buffered():
            raise ValueError(
                "cannot pass a channel that already buffered received bytes, or mapped the "
                "peer's hand-off area, to another process"
            )
        handoff = (self.handoff_min, self.handoff_area)
        return (type(self)._adopt, (self._socket(), self.name, self.max_message, handoff))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fileno()}"
        return f"<{type(self).__name__} {self.name} {state}>"

    # ---- helpers for the backends ------------------------------------
    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise ValueError(f"operation on a closed channel ({self.name})")
        return sock

    def _fail(self, code: int, *, length: int = 0, detail: str = "") -> NoReturn:
        """Raise what errno ``code`` (positive) means here, closing the channel if it is broken."""
        closed = self.closed
        if not channel_keeps_open(code, closed):
            self.close()
        raise channel_error(
            code,
            self.name,
            closed=closed,
            max_message=self.max_message,
            length=length,
            detail=detail,
            hint=self._raw_text_hint(length),
        )

    def _raw_text_hint(self, length: int = 0) -> str:
        """A hint when the bad header's length field reads as text: a raw (unframed) peer."""
        head = length.to_bytes(4, "little") if 0 < length < 1 << 32 else b""
        if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            return (
                f" (the header's first bytes read {head.decode()!r}: text, as if the peer "
                "sends raw bytes; check that both sides use length framing)"
            )
        return ""

    def _closed_send(self, sent: int = 0) -> NoReturn:
        """The peer is gone: Closed, carrying how many messages of a batch went out."""
        raise Closed(f"channel {self.name}: the peer closed the connection", sent=sent)
