"""The pure-Python channel backend: the framing of csrc/channel.c with socket.sendmsg/recvmsg_into.

One algorithm, kept in one file: framing, fd matching and the hand-off
share one receive state (stream offsets), as in the C.

It follows the C step by step (see the comment at the top of channel.c for
why fds are matched to frames by stream offsets), so both backends behave
alike and interoperate on one socket.

Interrupts (Ctrl-C, any raising signal handler; docs/architecture.md,
"Threads, lifetimes, interrupts"): only the message being returned at the instant of the exception
can be lost; the stream is never desynchronised. Why it holds in pure
Python: CPython runs signal handlers only in the main thread, between
bytecodes, and only where it checks for them: right after a call returns
and at a Python function's entry (and on backward jumps), never between
plain loads, stores and arithmetic. So:

* The read. ``recvmsg_into`` is called from C (``deque += map(...)``): its
  result (byte count, fds) is in ``_inbox`` the instant the call returns,
  before any handler can run; the bytes are where the call was told to put
  them, recorded beforehand in ``_at_*``.
* The bookkeeping (:meth:`_apply`) is idempotent and redone at the start of
  the next receive while ``_inbox`` is not empty: the counters are stored as
  absolute values in a run of bytecodes with no call in it, ended by the
  ``popleft()``; the read's fd set is added by one call and recognised as
  added by its start offset.
* Consuming a frame is one store (``_rpos``, or ``_big = None``) made after
  everything that could fail for it; a hand-off area frame is consumed only
  once its new area is installed (one store), so a receive cut short
  before takes the frame again. What is cut short after the store is the
  returned message: lost, as the contract allows. A release position lost
  with it is repaired by the next one (positions are cumulative).

* Fds are closed by :func:`_close_from`, which takes each out of its list
  and closes it in C with no bytecode between, then the emptied set is
  dropped: cut short anywhere, none is left unclosed or closed twice. Only
  the fds of the message being returned (``recv_with_fds``) go with it.

Blocking signals instead
(``pthread_sigmask``) would cost two syscalls per read and still not stop
a handler already pending, or a signal delivered to another thread, from
running in the main thread between the read and its bookkeeping.

Threads: ``close()`` from another thread wakes a blocked call within
_WAIT_SLICE_MS (poll() waits in slices; closing an fd does not wake a poll
on it), which raises ValueError.
"""

from __future__ import annotations

import _socket
import array
import errno
import itertools
import os
import select
import socket
import stat
import struct
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any, NoReturn

from .._checks import (
    MAX_FDS,
    FdLike,
    LentBuffer,
    check_buffer,
    deadline,
    release_view,
    timeout_ns,
    validate_max_count,
)
from .._contract import DIRECT_MIN, RECV_BUFFER, ChannelBase
from .._turns import RX, TX, one_at_a_time, takes_turn
from ..errors import MessageTooLarge, Timeout, timed_out
from ..framing import (
    CHANNEL_FLAGS,
    FRAME_AREA,
    FRAME_BULK,
    FRAME_FDS,
    FramingError,
    check_header,
    pack_header,
    unpack_header,
)
from ..handoff import WAIT_NS, ReceiveArea, SendArea

__all__ = ["PythonChannel"]

#: (payload length, count) -> Struct unpacking that many buffered plain frames at once.
_RUNS: dict[tuple[int, int], struct.Struct] = {}


def _run_struct(n: int, count: int) -> struct.Struct:
    st = _RUNS.get((n, count))
    if st is None:
        if len(_RUNS) >= 256:  # batches of many shapes: keep the cache bounded
            _RUNS.clear()
        st = _RUNS[(n, count)] = struct.Struct(f"8x{n}s" * count)
    return st


_pack = pack_header
#: The headers of plain frames of 0-1023 bytes, made once: with a pack() and a
#: second len() per message, send() of 64 bytes cost ~265 ns of Python in one
#: process, against ~235 now (the one-call rate's bound: see RESULTS.md).
_HEADS = tuple(_pack(n, 0) for n in range(1024))
_unpack_from = unpack_header
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_RIGHTS = socket.SCM_RIGHTS
_RECV_FLAGS = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
_RECV_FLAGS_ARGS = (_RECV_FLAGS,)
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
#: Longest single poll() (ms): a close() from another thread is seen within it.
_WAIT_SLICE_MS = 200
#: A long frame's buffer starts at most this big and doubles as bytes arrive (up
#: to the frame's length), so a peer announcing max_message and sending little
#: costs little; a 1 MiB message still gets its whole buffer at once.
_BIG_START = 1 << 20
#: Most fd sets held for frames not yet returned (one read brings at most one).
_MAX_SETS = 16
#: How long a receive watches the socket (poll with no timeout, no sleep) before
#: sleeping in poll() (ns): a peer that answers within it costs no sleep and
#: wake-up (20-40 us on the VMs measured).
_SPIN_NS = 50_000
#: send_many joins the frames of messages up to this size into one buffer (one
#: copy, one iovec) instead of an iovec per header and payload.
_JOIN_MAX = 16384
#: Iovecs per sendmsg in send_many (IOV_MAX).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 1024


class _Again(Exception):
    """The socket cannot go on now (EAGAIN): wait and retry."""


class PythonChannel(ChannelBase):
    """:class:`~fastipc.Channel` in pure Python; see Channel for the contract."""

    _rbuf: bytearray
    _rmv: memoryview
    _rpos: int
    _rend: int
    _rx_total: int
    _eof: bool
    _dead: int
    _dead_len: int
    _dead_detail: str
    _sets: deque[list[Any]]
    _last: list[int]
    _big: bytearray | None
    _big_len: int
    _big_flags: int
    _big_start: int
    _big_done: int
    _rpoll: Any
    _wpoll: Any
    _fd: int
    _ancbuf: int
    _anc_args: tuple[int]
    _tx_area: SendArea | None
    _no_area: bool  # making the send area failed once: never try again
    _rx_area: ReceiveArea | None
    _rx_release: int  # release position to store once the message was copied out; -1 none
    _held_release: int  # release position stored when that view goes; -1 none
    # The read in flight (see "Interrupts" in the module docstring): recvmsg_into's
    # result lands in _inbox from C; _apply books it from these, set before the call.
    _inbox: deque[tuple[int, list[Any], int, Any]]
    _at_lo: int  # stream offset of the read's first byte
    _at_base: int  # where it went: offset in the receive buffer, or in _big
    _at_big: bool  # True: into _big (advances _big_done), else the buffer (_rend)
    _recvmsg: Callable[..., Any]
    _area_from: int  # stream offset of the frame that brought _rx_area
    _inline_max: int  # longest bytes message send() frames inline in one send()
    _heads: tuple[bytes, ...]  # _HEADS up to _inline_max
    _nheads: int  # len(_heads)

    def _setup(self) -> None:
        self._rbuf = bytearray(RECV_BUFFER)
        self._rmv = memoryview(self._rbuf)
        self._rpos = self._rend = 0
        self._rx_total = 0
        self._eof = False
        self._dead = 0
        self._dead_len = 0
        self._dead_detail = ""
        self._sets = deque()
        self._last = []
        self._big = None
        self._big_len = self._big_flags = self._big_start = self._big_done = 0
        sock = self._socket()
        self._fd = sock.fileno()
        self._recvmsg = sock.recvmsg_into
        self._inbox = deque()
        self._area_from = -1
        self._at_lo = self._at_base = 0
        self._at_big = False
        # One poll object per direction: a thread may send while another receives.
        self._rpoll = select.poll()
        self._rpoll.register(self._fd, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(self._fd, select.POLLOUT)
        self._ancbuf = socket.CMSG_SPACE(MAX_FDS * 4)
        self._anc_args = (self._ancbuf,)
        self._tx_area = self._rx_area = None
        self._no_area = False
        self._tx_frame: memoryview | None = None  # a frame _send_begin left part-sent
        self._tx_done = 0  # its bytes that went out; -1 while a write's count is unknown
        self._rx_release = -1
        self._view = None
        self._held_release = -1
        # The longest bytes message send() frames inline with one send() of one
        # joined buffer: one bound for what the fast path would otherwise test
        # one by one (the join limit, max_message, below the hand-off).
        self._inline_max = min(
            _JOIN_MAX - 1,
            self._max_message,
            self._handoff_min - 1 if self._handoff_min else _JOIN_MAX,
        )
        # Those of the lengths send() frames inline (the whole table, not a copy,
        # for the default limits).
        self._heads = _HEADS[: self._inline_max + 1]
        self._nheads = len(self._heads)

    def _release(self) -> None:
        while self._inbox:  # a read whose bookkeeping an exception cut short
            _close_all(_fds_of(self._inbox.popleft()[1]))
        view, self._view = self._view, None
        if view is not None:
            release_view(view)  # if still exported, the mapping stays (see _unmap)
        for area in (self._tx_area, self._rx_area):
            if area is not None:
                area.close()
        self._tx_area = self._rx_area = None
        sets = self._sets
        while sets:
            # A receiving thread may take sets while close() runs in another:
            # close each set's fds (taken one by one, never twice), then drop
            # that set only if it is still first.
            try:
                first = sets[0]
            except IndexError:
                break
            _close_from(first[2])
            if sets and sets[0] is first:
                try:
                    sets.popleft()
                except IndexError:
                    break
        _close_all(self._last)
        self._last = []
        self._big = None

    def _buffered(self) -> bool:
        # A mapped area counts: the peer's next descriptors point into it,
        # and a process the channel is passed to would not have it.
        return (
            bool(self._inbox)
            or self._rend > self._rpos
            or self._big is not None
            or bool(self._sets)
            or self._rx_area is not None
        )

    @takes_turn(RX)  # (taken below when it can be, at once: waiters see who holds it)
    def pending(self) -> bool:
        self._socket()
        if self._inbox:
            # A read an exception left unbooked: book it, but only holding the receive
            # turn (a receive in another thread books its own read; two bookings of
            # one read would pop the next one). Busy: answer from what is booked.
            turn = self._rx_turn
            try:
                del turn.free
            except AttributeError:
                pass
            else:
                try:
                    if self._inbox:
                        self._apply()
                finally:
                    turn.free = True
                    if turn.waiting:
                        turn.wake()
        avail = self._rend - self._rpos
        if self._big is not None or avail < 8:
            return False
        n, flags = _unpack_from(self._rbuf, self._rpos)
        return avail - 8 >= (16 if flags & FRAME_BULK else n)

    # ---- waiting --------------------------------------------------------
    def _wait(self, events: int, deadline: int | None) -> None:
        """Wait until the socket is ready for ``events``; Timeout past ``deadline`` (ns).

        Waits in slices of _WAIT_SLICE_MS: closing an fd does not wake a poll() on
        it (Linux), and close() from another thread must wake this one
        (ValueError). poll() retries EINTR itself after running signal handlers
        (PEP 475).
        """
        poller = self._rpoll if events == select.POLLIN else self._wpoll
        if events == select.POLLIN:
            spin_end = time.monotonic_ns() + _SPIN_NS
            if deadline is not None:
                spin_end = min(spin_end, deadline)
            while time.monotonic_ns() < spin_end:
                if poller.poll(0):
                    if self._sock is not None:
                        return
                    break
        while True:
            if deadline is None:
                ms = _WAIT_SLICE_MS
            else:
                left = deadline - time.monotonic_ns()
                if left <= 0:
                    raise timed_out(f"channel {self.name}", events != select.POLLIN)
                ms = min(-(-left // 1_000_000), _WAIT_SLICE_MS)
            if poller.poll(ms) and self._sock is not None:
                return
            self._socket()  # ValueError once closed

    _deadline = staticmethod(deadline)

    # ---- send -----------------------------------------------------------
    @takes_turn(TX)
    def send(self, data: Any, fds: Iterable[FdLike] = (), timeout: float | None = None) -> None:
        if timeout is not None:
            timeout_ns(timeout)  # a bad one is an error even when the message goes at once
        turn = self._tx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, TX, timeout)
        try:
            sock = self._sock
            if type(data) is bytes and not fds and sock is not None:
                # A small message: header and payload in one buffer, one send(). A
                # partial or refused write goes on through the general path.
                n = len(data)
                if n < self._nheads:
                    frame = self._heads[n] + data
                elif n <= self._inline_max:
                    frame = _pack(n, 0) + data
                else:  # the hand-off area, or too long
                    self._send(data, fds, timeout)
                    return
                done = -1
                try:
                    done = sock.send(frame, _SEND_FLAGS)
                except OSError:
                    done = 0  # refused (full, or worse): the general path says what it is
                except BaseException:
                    if done < 0:
                        # A signal handler raised right after send() returned: bytes
                        # may have gone out uncounted, as in the general path.
                        self._close_surely()
                    raise
                if done == n + 8:
                    return
                if done:
                    self._send_rest(sock, frame, done, self._deadline(timeout))
                    return
            self._send(data, fds, timeout)
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    def _send(self, data: Any, fds: Iterable[FdLike], timeout: float | None) -> None:
        """send(), the general path: any buffer, fds, the hand-off area, partial writes."""
        sock = self._socket()
        mv = check_buffer(data)
        fdl = self._fd_list(fds) if fds else []
        deadline = self._deadline(timeout)
        n = mv.nbytes
        if n > self._max_message:
            self._too_large(n)
        flags = FRAME_FDS if fdl else 0
        body = mv
        area = self._send_area_for(n) if not fdl else None
        if area is not None:
            wait_until = time.monotonic_ns() + WAIT_NS
            if deadline is not None:
                wait_until = min(wait_until, deadline)
            desc = area.put(mv, wait_until)
            if desc is not None:
                body = memoryview(desc)
                flags = FRAME_BULK
                if area.fd >= 0:
                    flags |= FRAME_AREA | FRAME_FDS
                    fdl = [area.fd]
        head = _pack(n, flags)
        anc = [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fdl))] if fdl else []
        total, done = 8 + body.nbytes, 0
        # A signal handler that raises (Ctrl-C) can run right after sendmsg
        # returned, before `done` counts what it wrote: while `unsure`, bytes
        # may have gone out uncounted, so an exception then closes the channel
        # too rather than let the next send splice a new frame onto a torn one.
        unsure = False
        try:
            while done < total:
                iov: list[Any] = [head[done:], body] if done < 8 else [body[done - 8 :]]
                try:
                    unsure = True
                    done += sock.sendmsg(iov, anc if done == 0 else [], _SEND_FLAGS)
                    unsure = False
                except (BlockingIOError, InterruptedError):
                    unsure = False
                    self._wait(select.POLLOUT, deadline)
                except (BrokenPipeError, ConnectionResetError):
                    unsure = False  # sendmsg raised: it wrote nothing
                    self._closed_send()
                except OSError as exc:
                    unsure = False
                    self._socket()  # closed by another thread: ValueError
                    raise OSError(exc.errno, exc.strerror, self.name) from None
        except BaseException:
            if unsure or 0 < done < total:
                self._close_surely()  # part of a frame may have gone out: the stream cannot be resynchronised
            raise
        if flags & FRAME_AREA and area is not None:
            area.announced()

    def _send_rest(
        self, sock: socket.socket, frame: bytes, done: int, deadline: int | None
    ) -> None:
        """Send the rest of ``frame`` after its first ``done`` bytes went out (as send() does)."""
        unsure = False
        try:
            while done < len(frame):
                try:
                    unsure = True
                    done += sock.send(frame[done:], _SEND_FLAGS)
                    unsure = False
                except (BlockingIOError, InterruptedError):
                    unsure = False
                    self._wait(select.POLLOUT, deadline)
                except (BrokenPipeError, ConnectionResetError):
                    unsure = False
                    self._closed_send()
                except OSError as exc:
                    unsure = False
                    self._socket()  # closed by another thread: ValueError
                    raise OSError(exc.errno, exc.strerror, self.name) from None
        except BaseException:
            if unsure or done < len(frame):
                self._close_surely()  # part of a frame went out: the stream cannot be resynchronised
            raise

    def _tx_try(self, data: Any) -> bool | None:
        sock = self._socket()
        if self._tx_frame is not None:  # left by a drop cut short: never continue it
            self._close_surely()
            self._socket()  # ValueError
        mv = check_buffer(data)
        n = mv.nbytes
        if n > self._max_message:
            self._too_large(n)
        frame = memoryview((self._heads[n] if n < self._nheads else _pack(n, 0)) + mv)
        self._tx_frame = frame
        self._tx_done = -1  # until send() is counted: a handler may raise right after it
        if self._tx_write(sock, frame, 0):
            return True
        if self._tx_done:
            return False
        self._tx_frame = None
        return None

    def _tx_resume(self) -> bool:
        sock = self._socket()
        frame, done = self._tx_frame, self._tx_done
        assert frame is not None and done > 0
        self._tx_done = -1
        return self._tx_write(sock, frame, done)

    def _tx_write(self, sock: socket.socket, frame: memoryview, done: int) -> bool:
        try:
            done += sock.send(frame[done:] if done else frame, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            pass
        except (BrokenPipeError, ConnectionResetError):
            self._tx_done = done  # send() raised: it wrote nothing
            self._closed_send()
        except OSError as exc:
            self._tx_done = done
            self._socket()  # closed by another thread: ValueError
            raise OSError(exc.errno, exc.strerror, self.name) from None
        self._tx_done = done
        if done == len(frame):
            self._tx_frame = None
            return True
        return False

    def _tx_abandon(self) -> None:
        frame = self._tx_frame
        if frame is not None and self._tx_done not in (0, len(frame)):
            self.close()  # part of a frame may have gone out: the stream cannot be resynchronised
        self._tx_frame = None  # last: a handler raising before it leaves it for a retry

    def _send_area_for(self, n: int) -> SendArea | None:
        """The area a message of ``n`` bytes goes through, or None: inline."""
        if not self._handoff_min or not self._handoff_min <= n <= self._handoff_area // 2:
            return None
        if not self._passes_fds:  # tcp (from_socket turns hand-off off there): no memfd can pass
            return None
        area = self._tx_area
        if area is None:
            if self._no_area:
                return None
            try:
                area = self._tx_area = SendArea(self._handoff_area)
            except OSError:
                self._no_area = True  # e.g. no memfd or no memory here: inline from now on
                return None
        return area if area.usable else None

    @one_at_a_time(TX)
    def send_many(self, buffers: Iterable[Any], timeout: float | None = None) -> int:
        sock = self._socket()
        msgs = buffers if type(buffers) is list else list(buffers)
        if msgs and set(map(type, msgs)) == {bytes}:
            lens = list(map(len, msgs))
            if max(lens) <= min(_JOIN_MAX, self._max_message):
                return self._send_joined(sock, msgs, lens, self._deadline(timeout))
        items = [check_buffer(b, f"send_many item {i}") for i, b in enumerate(msgs)]
        deadline = self._deadline(timeout)
        for i, mv in enumerate(items):
            if mv.nbytes > self._max_message:
                self._too_large(mv.nbytes, f"send_many item {i}", "; nothing was sent")
        heads = [_pack(mv.nbytes, 0) for mv in items]
        sent, done = 0, 0  # whole frames sent; bytes of frame `sent` sent
        unsure = False
        total = len(items)
        try:
            while sent < total:
                iov: list[Any] = []
                for k in range(sent, min(total, sent + _IOV_MAX // 2)):
                    skip = done if k == sent else 0
                    if skip < 8:
                        iov.append(heads[k][skip:])
                        if items[k].nbytes:
                            iov.append(items[k])
                    else:
                        iov.append(items[k][skip - 8 :])
                try:
                    unsure = True  # as in send: written bytes not yet counted
                    w = sock.sendmsg(iov, [], _SEND_FLAGS)
                except (BlockingIOError, InterruptedError):
                    unsure = False
                    self._wait(select.POLLOUT, deadline)
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    unsure = False  # sendmsg raised: it wrote nothing
                    self._closed_send(sent)
                except OSError as exc:
                    unsure = False
                    self._socket()  # closed by another thread: ValueError
                    raise OSError(exc.errno, exc.strerror, self.name) from None
                while w > 0:
                    rest = 8 + items[sent].nbytes - done
                    if w < rest:
                        done += w
                        break
                    w -= rest
                    done = 0
                    sent += 1
                unsure = False
        except BaseException as exc:
            if done or unsure:
                self._close_surely()  # part of a frame may have gone out: the stream cannot be resynchronised
            if isinstance(exc, Timeout):
                raise timed_out(f"channel {self.name}", True, sent) from None
            raise
        return total

    def _send_joined(
        self, sock: socket.socket, msgs: list[bytes], lens: list[int], deadline: int | None
    ) -> int:
        """send_many of small bytes messages: the frames joined into one buffer (one copy),
        sent with as few send() calls as the socket takes."""
        first = lens[0]
        if lens.count(first) == len(lens):
            head = _pack(first, 0)  # one length: the header is also the separator
            blob = head + head.join(msgs)
        else:
            parts: list[bytes] = [b""] * (2 * len(msgs))
            parts[0::2] = map(_pack, lens, itertools.repeat(0))
            parts[1::2] = msgs
            blob = b"".join(parts)
        total = len(blob)
        done = 0
        unsure = False
        mv = memoryview(blob)
        try:
            while done < total:
                try:
                    unsure = True  # as in send: written bytes not yet counted
                    done += sock.send(mv[done:], _SEND_FLAGS)
                    unsure = False
                except (BlockingIOError, InterruptedError):
                    unsure = False
                    self._wait(select.POLLOUT, deadline)
                except (BrokenPipeError, ConnectionResetError):
                    unsure = False  # send raised: it wrote nothing
                    self._closed_send(_frames_in(lens, done))
                except OSError as exc:
                    unsure = False
                    self._socket()  # closed by another thread: ValueError
                    raise OSError(exc.errno, exc.strerror, self.name) from None
        except BaseException as exc:
            sent = _frames_in(lens, done)
            if unsure or done != _bytes_of(lens, sent):
                self._close_surely()  # part of a frame may have gone out: the stream cannot be resynchronised
            if isinstance(exc, Timeout):
                raise timed_out(f"channel {self.name}", True, sent) from None
            raise
        finally:
            mv.release()
        return len(msgs)

    # ---- receive: the stream ------------------------------------------
    def _read(self, mv: memoryview, into_big: bool, base: int) -> int:
        """One recvmsg into ``mv`` (at ``base`` in the buffer, or in _big): bytes read
        (0 at the end), booked by :meth:`_apply`; _Again if none.

        recvmsg_into is called from C (deque += map), so its result is in _inbox
        the instant it returns, whatever a signal handler then raises.
        """
        self._at_lo, self._at_base, self._at_big = self._rx_total, base, into_big
        try:
            self._inbox += map(self._recvmsg, ([mv],), self._anc_args, _RECV_FLAGS_ARGS)
        except (BlockingIOError, InterruptedError):
            raise _Again from None
        except ConnectionResetError:
            self._inbox.append((0, [], 0, None))
        except OSError as exc:
            self._socket()  # closed by another thread: ValueError
            raise OSError(exc.errno, exc.strerror, self.name) from None
        return self._apply()

    def _apply(self) -> int:
        """Book the read at the head of _inbox: stream counters, end of stream, fds.

        Idempotent, so that a receive an exception cut short anywhere in here
        does it again: the counters are stored absolutely, in bytecodes no signal
        handler can run between (no call among them), and fd sets are added by
        one call and recognised as added by their start offset.
        """
        n, anc, flags, _ = self._inbox[0]
        lo = self._at_lo
        if (anc or flags & socket.MSG_CTRUNC) and not (self._sets and self._sets[-1][0] == lo):
            self._add_fds(lo, n, anc, bool(flags & socket.MSG_CTRUNC))
        # From here to popleft(): no call, so no signal handler runs in between.
        if self._at_big:
            self._big_done = self._at_base + n
        else:
            self._rend = self._at_base + n
        self._rx_total = lo + n
        if n == 0:
            self._eof = True
        self._inbox.popleft()
        return n

    def _add_fds(self, lo: int, n: int, anc: list[Any], truncated: bool) -> None:
        """Record the fds a read brought (one call adds them: see _apply)."""
        fds = _fds_of(anc)
        new: list[list[Any]]
        if truncated:
            # The frame reports MSG_CTRUNC (None); the fds that came are nobody's: a
            # set ending where the read starts, closed as stray at the next claim.
            new = [[lo, lo, fds], [lo, lo + n, None]] if fds else [[lo, lo + n, None]]
        else:
            new = [[lo, lo + n, fds]]
        # Fds held for frames not yet returned count against the per-message limit,
        # the current frame's own set aside (docs/architecture.md, "Wire format"): a peer cannot make this
        # end hold more. The set is kept (close() closes it), the channel dies.
        start = self._big_start if self._big is not None else lo - (self._rend - self._rpos)
        held = len(fds)
        for s_lo, s_hi, s_fds in self._sets:
            if s_fds and not s_lo <= start < s_hi:
                held += len(s_fds)
        self._sets.extend(new)
        if fds and self._big is not None and lo > self._big_start:
            # fds ride only on a frame's first byte: these came inside one.
            self._kill(errno.EPROTO, detail="fds rode on a byte inside a message")
        elif len(self._sets) > _MAX_SETS:
            self._kill(errno.EPROTO, detail="too many unclaimed fd sets")
        elif held > MAX_FDS:
            self._kill(
                errno.EPROTO,
                detail=f"the peer sent {held} fds for messages not yet received "
                f"(more than {MAX_FDS} held at once)",
            )

    def _fill(self, need: int) -> None:
        """Read more into the receive buffer so that it can hold ``need`` bytes from rpos."""
        if self._rpos == self._rend:
            self._rpos = self._rend = 0
        elif self._rpos and (
            self._rpos + need > len(self._rbuf) or self._rend > len(self._rbuf) * 7 // 8
        ):
            avail = self._rend - self._rpos
            # Through bytes: bytearray slice assignment memcpy()s, and the
            # source may overlap the destination.
            self._rbuf[:avail] = bytes(self._rmv[self._rpos : self._rend])
            self._rpos, self._rend = 0, avail
        self._read(self._rmv[self._rend :], False, self._rend)

    def _kill(self, code: int, length: int = 0, detail: str = "") -> int:
        self._dead, self._dead_len, self._dead_detail = code, length, detail
        return code

    def _at_eof(self) -> int:
        clean = self._rend == self._rpos and self._big is None
        return self._kill(errno.EPIPE if clean else errno.ENODATA)

    def _claim(self, start: int, flags: int, keep: bool, end: int = 0) -> list[int]:
        """Settle the fds of the frame in stream bytes [``start``, ``end``).

        A read stops right after the skb that carries fds, the first of the
        sendmsg that sent them, so a set belongs to the frame holding its
        read's last byte, not to any frame that merely began in that read.
        """
        _close_all(self._last)
        self._last = []
        sets = self._sets
        while sets and sets[0][1] <= start:
            _close_from(sets[0][2])  # sent without the flag: nobody's
            sets.popleft()
        if not flags & FRAME_FDS:
            return []
        if not sets or not sets[0][0] <= start <= sets[0][1] - 1 < end:
            self._kill(errno.EPROTO, detail="a message flagged with fds came without them")
            self._raise()
        if keep or sets[0][2] is None:
            fds = sets.popleft()[2]
            if fds is None:
                self._socket()
                self._fail(errno.ENOBUFS)
            # close() in another thread closes a set's fds by taking them out of
            # this very list: take them all at once (the copy and the clear are
            # opcodes, no call between), and if close() has begun (it clears
            # _sock first), it may have taken some: close the rest, raise.
            mine: list[int] = fds[:]
            del fds[:]
            if self._sock is None:
                _close_all(mine)
                self._socket()  # raises: closed
            return mine
        _close_from(sets[0][2])
        sets.popleft()
        return []

    def _header(self) -> tuple[int, int] | None:
        """(length, flags) of the buffered next header, or None; a bad one kills the stream."""
        if self._rend - self._rpos < 8:
            return None
        n, flags = _unpack_from(self._rbuf, self._rpos)
        if n > self._max_message or flags & ~FRAME_FDS:
            # The rare header (hand-off, or bad): framing.check_header is the one judge.
            try:
                check_header(n, flags, self._max_message, CHANNEL_FLAGS)
            except MessageTooLarge:
                self._kill(errno.EFBIG, n)
                self._raise()
            except FramingError as exc:
                self._kill(errno.EPROTO, n, detail=str(exc))
                self._raise()
        return n, flags

    def _raise(self) -> NoReturn:
        self._fail(self._dead, length=self._dead_len, detail=self._dead_detail)

    def _frame(self, cap: int, keep: bool, deadline: int | None) -> tuple[Any, list[int]]:
        """The next frame's payload (a memoryview into the buffer, or a bytearray) and fds.

        A frame longer than ``cap`` stays (MessageTooLarge). The view is only
        valid until the next receive.
        """
        self._socket()
        if self._inbox:
            self._apply()  # an exception cut the last receive short after its read
        if self._dead:
            self._raise()
        while True:
            try:
                if self._big is not None:
                    if self._big_len > cap:
                        raise _TooLong(self._big_len)
                    return self._finish_big(keep)
                hdr = self._header()
                if hdr is not None:
                    n, flags = hdr
                    if n > cap:
                        raise _TooLong(n)
                    avail = self._rend - self._rpos
                    wire = 16 if flags & FRAME_BULK else n
                    if avail - 8 >= wire:
                        start = self._rx_total - avail
                        p = self._rpos + 8
                        if flags & FRAME_BULK:
                            # Consumed only once its area is in place: cut short
                            # before, the next receive takes the frame again.
                            view = self._bulk(start, n, flags, self._rmv[p : p + 16])
                            self._rpos = p + wire
                            return view, []
                        self._rpos = p + wire
                        fds = self._claim(start, flags, keep, start + 8 + wire)
                        return self._rmv[p : p + n], fds
                    if wire > DIRECT_MIN:
                        big = LentBuffer(min(n, _BIG_START))  # grows in _finish_big
                        have = avail - 8
                        big[:have] = self._rmv[self._rpos + 8 : self._rend]
                        self._big, self._big_len, self._big_flags = big, n, flags
                        self._big_start, self._big_done = self._rx_total - avail, have
                        self._rpos = self._rend = 0
                        continue
                    need = 8 + wire
                else:
                    need = 8
                if self._eof:
                    self._at_eof()
                    self._raise()
                self._fill(need)
                if self._dead:
                    self._raise()
            except _Again:
                self._wait(select.POLLIN, deadline)

    def _bulk(self, start: int, n: int, flags: int, descriptor: memoryview) -> memoryview:
        """The message a FRAME_BULK frame names, in the peer's area (valid until
        :meth:`_copied`); maps the area if the frame brought one."""
        self._claim(start, 0, False)  # settles stray sets before this frame
        if flags & FRAME_AREA:
            # Idempotent: a call cut short anywhere does again what is left. The fd
            # set stays queued until the new area is installed (one step, marked
            # with the frame's start), then its fd is closed by _close_from.
            sets = self._sets
            if self._area_from != start:
                mine = sets and sets[0][0] <= start <= sets[0][1] - 1 < start + 8 + 16
                # A copy (a slice: no call, so no other thread in between): close() in
                # another thread takes fds out of the set's own list.
                fds = (sets[0][2] or [])[:2] if mine else []
                if len(fds) != 1:  # none, truncated (MSG_CTRUNC) or more: not ours to guess
                    self._socket()  # (or taken by a close() from another thread: say so)
                    self._kill(
                        errno.EPROTO, detail="a hand-off area frame must carry exactly one fd"
                    )
                    self._raise()  # closes the channel, and with it the fds
                try:
                    area = ReceiveArea(fds[0])
                except (OSError, ValueError) as exc:
                    self._socket()  # closed by another thread meanwhile: say so
                    self._kill(errno.EPROTO, detail=str(exc))
                    self._raise()
                if self._sock is None:
                    # close() in another thread began (it clears _sock first) and may
                    # have closed that fd before the mapping: the number may name
                    # another file by now. Nothing of it is read.
                    area.close()
                    self._socket()  # raises: closed
                # No call in this statement: the install is one step.
                old, self._rx_area, self._area_from = self._rx_area, area, start
                if old is not None:
                    old.close()
            if sets and sets[0][0] <= start:
                _close_from(sets[0][2])
                sets.popleft()
        found = self._rx_area.message(descriptor, n) if self._rx_area is not None else None
        if found is None:
            self._kill(errno.EBADMSG)
            self._raise()
        view, self._rx_release = found
        return view

    def _copied(self) -> None:
        """The message :meth:`_frame` returned was copied out: free its room in the area
        (once the view recv_view lent goes, if one is out)."""
        rel, self._rx_release = self._rx_release, -1
        if rel < 0 or self._rx_area is None:
            return
        if self._view is not None:
            self._held_release = rel
        else:
            self._rx_area.release(rel)

    def _finish_big(self, keep: bool) -> tuple[Any, list[int]]:
        big = self._big
        assert big is not None
        while self._big_done < self._big_len:
            if self._eof:
                self._at_eof()
                self._big = None
                self._raise()
            done = self._big_done
            room = len(big)
            if done == room:
                # Grow as bytes arrive (doubling, up to the frame): one realloc, in
                # place when it can. Cut short anywhere, the state stays consistent.
                more = min(room, self._big_len - room)
                try:
                    big += bytes(more)
                except BufferError:  # a view of the old buffer still lives: copy
                    grown = LentBuffer(room + more)
                    grown[:done] = big
                    self._big = big = grown
                room += more
            with memoryview(big) as view:
                self._read(view[done:room], True, done)  # _Again: progress kept
            if self._dead:
                self._raise()
        self._big = None
        return big, self._claim(
            self._big_start, self._big_flags, keep, self._big_start + 8 + self._big_len
        )

    def _too_large(self, n: int, what: str = "message", tail: str = "") -> NoReturn:
        self._fail(
            errno.EMSGSIZE,
            detail=f"{what} of {n} bytes exceeds max_message={self._max_message}{tail}",
        )

    # ---- receive: the API -------------------------------------------------
    def _plain_ready(self) -> bool:
        """Whether buffered frames may be cut without the general path: nothing pending
        besides them (no read to book, no fd set, no long frame, no fds to close)."""
        return (
            not (self._inbox or self._sets or self._last or self._dead or self._big is not None)
            and self._sock is not None
        )

    @takes_turn(RX)
    def recv(self, timeout: float | None = None) -> bytes:
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, RX, timeout)
        try:
            pos = self._rpos
            if (
                self._rend - pos >= 8
                and not (self._sets or self._inbox or self._last or self._dead)
                and self._big is None
                and self._sock is not None
            ):  # as _plain_ready(), inline: this is the hot path
                # A whole plain frame already buffered: cut it here (consumed by the
                # one store of _rpos, after the copy).
                n, flags = _unpack_from(self._rbuf, pos)
                if not flags and n <= self._max_message and self._rend - pos - 8 >= n:
                    out = self._rmv[pos + 8 : pos + 8 + n].tobytes()
                    self._rpos = pos + 8 + n
                    return out
            data, _ = self._frame(self._max_message, False, self._deadline(timeout))
            out = bytes(data)
            self._copied()
            return out
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    @one_at_a_time(RX)
    def _take_view(self, timeout: float | None, got: list[Any]) -> None:
        self._no_view_out()
        data, _ = self._frame(self._max_message, False, self._deadline(timeout))
        area = self._rx_area
        if self._rx_release >= 0:
            view = data.toreadonly()  # in place in the peer's area
            self._held_release, self._rx_release = self._rx_release, -1
        elif type(data) is LentBuffer:
            view = memoryview(data).toreadonly()  # a long frame's own buffer: the caller's
        else:
            view = memoryview(bytes(data))  # the receive buffer is reused

        def give_back() -> None:
            # Its room, and that of messages received inside the block: taken
            # with the view's end in one statement (no call between them), so a
            # receive in another thread either defers its release to here or
            # makes it itself, never both nor neither.
            rel, self._held_release, self._view = self._held_release, -1, None
            # Not after close() or a replaced area: that room is nobody's now.
            if rel >= 0 and area is not None and area is self._rx_area:
                area.release(rel)

        self._view = view
        got += (view, give_back)  # one C call: lent and handed over at once

    @one_at_a_time(RX)
    def recv_with_fds(self, timeout: float | None = None) -> tuple[bytes, list[int]]:
        data, fds = self._frame(self._max_message, True, self._deadline(timeout))
        out = bytes(data)
        self._copied()
        return out, fds

    @one_at_a_time(RX)
    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        dst = _writable(buffer)
        deadline = self._deadline(timeout)
        try:
            data, _ = self._frame(dst.nbytes, False, deadline)
        except _TooLong as exc:
            self._fail(
                errno.EMSGSIZE,
                detail=f"the next message ({exc.length} bytes) does not fit in a buffer of "
                f"{dst.nbytes} bytes; it stays queued",
            )
        n = len(data)
        dst[:n] = data
        self._copied()
        return n

    @one_at_a_time(RX)
    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        validate_max_count(max_count)
        data, _ = self._frame(self._max_message, False, self._deadline(timeout))
        out = [bytes(data)]
        self._copied()
        # Then whatever complete frames are already buffered, without a syscall;
        # a frame with fds heads the next call, as in the C backend.
        if len(out) < max_count and self._plain_ready():
            self._cut_plain(out, max_count)
        while len(out) < max_count and self._big is None and not self._dead:
            avail = self._rend - self._rpos
            if avail < 8:
                break
            n, flags = _unpack_from(self._rbuf, self._rpos)
            if flags or n > self._max_message or avail - 8 < n:
                break
            data, _ = self._frame(n, False, None)
            out.append(bytes(data))
        return out

    def _cut_plain(self, out: list[bytes], max_count: int) -> None:
        """Append buffered whole plain frames (no flags) to ``out``, up to ``max_count``.

        Runs of frames of one length are checked (their headers, as a strided
        view) and cut in one C call; consumed by one store of _rpos at the end,
        so an exception anywhere before leaves them all queued.
        """
        buf, mv, maxm = self._rbuf, self._rmv, self._max_message
        pos, end = self._rpos, self._rend
        got: list[bytes] = []
        want = max_count - len(out)
        while len(got) < want and end - pos >= 8:
            n, flags = _unpack_from(buf, pos)
            if flags or n > maxm or end - pos - 8 < n:
                break
            r = n + 8
            run = min(want - len(got), (end - pos) // r)
            if run > 2 and not n & 7:
                # Frame starts 8-aligned relative to pos: the headers as u64 words.
                with mv[pos : pos + run * r].cast("Q") as words:
                    same = words[:: r >> 3].tolist().count(words[0]) == run
                if same:
                    got += _run_struct(n, run).unpack_from(buf, pos)
                    pos += run * r
                    continue
            got.append(mv[pos + 8 : pos + r].tobytes())
            pos += r
        out += got
        self._rpos = pos


class _TooLong(Exception):
    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


def _writable(buffer: Any) -> memoryview:
    if isinstance(buffer, str):
        raise TypeError("recv_into needs a writable buffer, not str")
    try:
        mv = memoryview(buffer)
    except TypeError:
        raise TypeError(f"recv_into needs a writable buffer, not {type(buffer).__name__}") from None
    if mv.readonly:
        raise TypeError(f"recv_into needs a writable buffer, not {type(buffer).__name__}")
    if not mv.c_contiguous:
        raise TypeError("recv_into needs a C-contiguous buffer")
    return mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv


def _fds_of(anc: list[Any]) -> list[int]:
    """The fds in recvmsg's ancillary data ``anc``."""
    fds: list[int] = []
    for level, kind, data in anc:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr.tolist())
    return fds


_drain: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend


def _close_from(fds: list[int] | None) -> None:
    """Close the fds in list ``fds``, taking each out of it as it is closed.

    Each pop and its close happen in C with no bytecode between them, so a
    signal handler that raises can neither leave an fd out of the list
    unclosed nor let a later call close it twice.
    """
    if fds:
        _no_linger(fds)
        try:
            _drain(map(os.close, iter(fds.pop, None)))
        except IndexError:
            pass  # emptied
        except OSError:
            _close_from(fds)  # one was not open: go on with the rest


_LINGER = struct.Struct("ii")


#: ``_socket.socket``'s family, type and proto arguments: taken from the fd.
_FROM_FD = (-1,)


def _no_linger(fds: list[int]) -> None:
    """Turn SO_LINGER off on the sockets among ``fds`` before they are closed.

    A peer could pass a socket with linger on and data unsent, whose last
    close() blocks for the linger time; the kernel still sends what is
    queued, in the background. Works on a dup of each fd (never closing an
    fd of ``fds``), and the dup leaks under an exception at no instant: the
    C socket type takes it straight from ``os.dup`` inside ``map``, with no
    bytecode between where a signal handler could raise (``socket.socket``,
    a Python class, ran its ``__init__`` first: a handler raising at its
    entry, or right after ``os.dup`` returned, leaked the dup), and it is
    closed by C calls only, each done once it returns.
    """
    for fd in list(fds):
        socks: list[_socket.socket] = []
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            socks += map(_socket.socket, _FROM_FD, _FROM_FD, _FROM_FD, map(os.dup, (fd,)))
            onoff, _ = _LINGER.unpack(socks[0].getsockopt(_SOL_SOCKET, socket.SO_LINGER, 8))
            if onoff:
                socks[0].setsockopt(_SOL_SOCKET, socket.SO_LINGER, _LINGER.pack(0, 0))
        except OSError:
            pass
        finally:
            for sock in socks:
                sock.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _frames_in(lens: list[int], nbytes: int) -> int:
    """How many whole frames of payload lengths ``lens`` the first ``nbytes`` bytes hold."""
    return bisect_right(list(accumulate(n + 8 for n in lens)), nbytes)


def _bytes_of(lens: list[int], frames: int) -> int:
    """The wire bytes of the first ``frames`` frames of payload lengths ``lens``."""
    return sum(lens[:frames]) + 8 * frames
