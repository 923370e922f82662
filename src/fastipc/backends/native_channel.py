"""The native Channel: checks and errors in Python, framing, batching and fds in C (csrc/channel.c)."""

from __future__ import annotations

import errno
import marshal
import os
import socket
import time
from collections.abc import Iterable
from functools import partial
from typing import Any, NoReturn

from .._checks import (
    MAX_BATCH_COUNT,
    MAX_FDS,
    FdLike,
    check_buffer,
    release_view,
    time_left,
    timeout_ns,
    validate_max_count,
)
from .._contract import RECV_BUFFER, ChannelBase
from .._turns import RX, TX, one_at_a_time, takes_turn
from ..errors import Closed, Timeout, channel_error, timed_out
from ._blocking import deadline as _deadline
from ._blocking import wait as _wait
from ._native import SPIN_NS, ffi, ffi_fast, lib, lib_fast

__all__ = ["NativeChannel"]

# The hot calls, bound once: a module global is cheaper than lib.attr.
_try_send = lib_fast.fi_chan_try_send
_try_recv1 = lib_fast.fi_chan_try_recv1
_try_recv = lib_fast.fi_chan_try_recv
_try_send_batch = lib_fast.fi_chan_send_batch
_try_recv_batch = lib_fast.fi_chan_try_recv_batch
_from_buffer = ffi_fast.from_buffer
_pin_drop = lib_fast.fi_pin_drop
_dumps = marshal.dumps
_loads = marshal.loads
_monotonic_ns = time.monotonic_ns

_EAGAIN = -errno.EAGAIN
_EMSGSIZE = -errno.EMSGSIZE
_EINPROGRESS = -errno.EINPROGRESS
_ETIMEDOUT = -errno.ETIMEDOUT
_EINTR = -errno.EINTR
_EPIPE = -errno.EPIPE
#: A try call found received fds waiting to be closed: take the path that may block.
_EXDEV = -errno.EXDEV
_ENOBUFS = -errno.ENOBUFS

#: Received messages up to this size go through a per-channel buffer (bytes);
#: longer ones are read straight into a new bytes object.
SCRATCH_BYTES = 64 * 1024
# Frames longer than this start in C's own buffer (see _recv_slow); as
# RX_OWN_FROM in csrc/channel.c.
_OWN_FROM = 1 << 20
#: Room for one recv_many batch in marshal format (bytes).
BATCH_BYTES = 256 * 1024
#: Sends up to this size (bytes) are tried holding the GIL; longer ones copy
#: into the kernel with the GIL released.
_GIL_SEND_MAX = 64 * 1024


class NativeChannel(ChannelBase):
    """:class:`~fastipc.Channel` backed by the C core; see Channel for the contract."""

    _h: Any
    _hf: Any
    _scratch: Any
    _sbuf: Any
    _batch: Any
    _bview: memoryview | None
    _big: bytes | None
    _bigp: Any
    _wake_sock: socket.socket | None

    def _setup(self) -> None:
        out = ffi.new("fi_chan **")
        rc = lib.fi_chan_new(self._socket().fileno(), RECV_BUFFER, self._max_message, MAX_FDS, out)
        if rc:
            self._sock = None
            self._fail(-rc)
        # The owner of the C handle: freed only when nothing refers to it, so
        # a thread still inside a call when another closes the channel meets
        # a closed handle (C counts who is inside), never freed memory.
        self._h = ffi.gc(out[0], lib.fi_chan_free)
        self._wake_sock = self._sock
        # The same pointer typed for the GIL-keeping module (each cffi module
        # has its own struct types).
        self._hf = ffi_fast.cast("fi_chan *", out[0])
        self._scratch = ffi_fast.new("char[]", SCRATCH_BYTES)
        self._sbuf = ffi_fast.buffer(self._scratch)
        lib_fast.fi_chan_set_scratch(self._hf, self._scratch, SCRATCH_BYTES)
        lib.fi_chan_set_spin(self._h, SPIN_NS)
        if self._handoff_min:
            rc = lib.fi_chan_set_handoff(self._h, self._handoff_min, self._handoff_area)
            if rc:  # validate_handoff let through what C refuses: a bug, say so
                raise ValueError(
                    f"handoff_min/handoff_area refused by the C core ({os.strerror(-rc)})"
                )
        self._batch = None
        self._bview = None
        self._big = None
        self._bigp = None
        self._view = None
        self._tx_buf: Any = None  # the buffer of a frame _send_begin left part-sent
        self._tx_len = 0

    def _release(self) -> None:
        self._big = self._bigp = None
        view, self._view = self._view, None
        if view is not None:
            release_view(view)  # if still exported, its pin keeps the area mapped
        sock, self._wake_sock = self._wake_sock, None
        if lib.fi_chan_close(self._h) > 0 and sock is not None:
            # Another thread is inside a call on this channel: shutting the
            # socket down wakes it from ppoll now (it then raises ValueError)
            # instead of at its next wait slice. C works on its own dup of
            # the socket, freed when that call leaves, so the fd number cannot
            # be reused under it.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _buffered(self) -> bool:
        return bool(lib.fi_chan_buffered(self._h))

    def pending(self) -> bool:
        self._socket()
        return bool(lib_fast.fi_chan_pending(self._hf))

    # ---- send -----------------------------------------------------------
    @takes_turn(TX)
    def send(self, data: Any, fds: Iterable[FdLike] = (), timeout: float | None = None) -> None:
        turn = self._tx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, TX, timeout)
        try:
            # Everything that may leave half a frame in the handle runs inside
            # this try: a signal handler that raises (Ctrl-C) runs between any two
            # bytecodes, also right after a C call that wrote part of the frame,
            # and a later send must then not continue that frame with its own
            # bytes (tests/test_channel_interrupt.py caught exactly that).
            try:
                if (
                    type(data) is bytes
                    and not fds
                    and timeout is None
                    and len(data) <= _GIL_SEND_MAX
                    and _try_send(self._hf, data, len(data)) == 0
                ):
                    return
                self._send_slow(data, fds, timeout)
            except BaseException:
                self._abandon_send()
                raise
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    def _send_slow(self, data: Any, fds: Iterable[FdLike], timeout: float | None) -> None:
        self._socket()
        mv = check_buffer(data)
        fdl = self._fd_list(fds) if fds else []
        deadline = _deadline(timeout)
        n = mv.nbytes
        if n > self._max_message:
            self._too_large(n)
        buf = _from_buffer(data) if type(data) is bytes else _cbuffer(mv)
        fdarr = ffi.new("int[]", fdl) if fdl else ffi.NULL
        nfds = len(fdl)
        h = self._h
        try:
            rc = _wait(lambda t: lib.fi_chan_send(h, buf, n, fdarr, nfds, t), deadline)
        except BaseException:
            self._abandon_send()
            raise
        if rc:
            self._abandon_send()
            self._send_error(rc)

    @takes_turn(TX)
    def send_many(self, buffers: Iterable[Any], timeout: float | None = None) -> int:
        turn = self._tx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, TX, timeout)
        try:
            items = buffers if type(buffers) is list else list(buffers)
            hf = self._hf
            if not items:
                self._socket()
                return 0
            try:
                # marshal writes a list of bytes-like objects in C into one
                # buffer that csrc/channel.c turns into iovecs: no Python loop.
                blob = _dumps(items, 2)
            except ValueError:
                blob = b""
            total = len(items)
            try:  # as in send: no half frame may outlive an exception
                if blob and timeout is None:
                    rc = _try_send_batch(hf, blob, len(blob), 0)
                    if rc == total:
                        return total
                else:
                    rc = -errno.EINVAL
                return self._send_many_slow(rc, items, blob, timeout)
            except BaseException:
                self._abandon_send()
                raise
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    def _send_many_slow(self, rc: int, items: list[Any], blob: bytes, timeout: float | None) -> int:
        self._socket()
        deadline = _deadline(timeout)
        if rc == _EMSGSIZE or rc == -errno.EINVAL:
            views = [check_buffer(item, f"send_many item {i}") for i, item in enumerate(items)]
            for i, mv in enumerate(views):
                if mv.nbytes > self._max_message:
                    self._too_large(mv.nbytes, f"send_many item {i}", "; nothing was sent")
            if not blob:
                raise TypeError("send_many items must be bytes-like objects")  # pragma: no cover
        h = self._h
        try:
            rc = _wait(lambda t: lib.fi_chan_send_batch(h, blob, len(blob), t), deadline)
        except BaseException:
            self._abandon_send()
            raise
        if rc == len(items):
            return rc
        sent = int(lib.fi_chan_tx_frames(h))
        self._abandon_send()
        if rc in (_EAGAIN, _ETIMEDOUT):
            raise timed_out(f"channel {self.name}", True, sent)
        if rc == _EPIPE:
            raise Closed(f"channel {self.name}: the peer closed the connection", sent=sent)
        self._send_error(rc)

    def _tx_try(self, data: Any) -> bool | None:
        self._socket()
        if lib.fi_chan_tx_partial(self._h):  # left by a drop cut short: never continue it
            self._close_surely()
            self._socket()  # ValueError
        if type(data) is bytes:
            n = len(data)
            if n > self._max_message:
                self._too_large(n)
            self._tx_buf, self._tx_len = data, n  # kept: C finishes the frame from it
        else:
            mv = check_buffer(data)
            n = mv.nbytes
            if n > self._max_message:
                self._too_large(n)
            self._tx_buf, self._tx_len = _from_buffer(mv), n
        if self._tx_write():
            return True
        if self._tx_buf is not None:
            return False
        return None

    def _tx_resume(self) -> bool:
        self._socket()
        return self._tx_write()

    def _tx_write(self) -> bool:
        rc = _try_send(self._hf, self._tx_buf, self._tx_len)  # never waits: keeps the GIL
        if rc == 0:
            self._tx_buf = None
            return True
        if rc == _EAGAIN:
            if not lib_fast.fi_chan_tx_partial(self._hf):
                # Nothing of it went. A message C already put in the hand-off
                # area (its descriptor refused) must not stay pending, or the
                # next send would announce it instead of its own.
                self._tx_buf = None
                lib.fi_chan_tx_reset(self._h)
            return False
        self._tx_buf = None
        self._abandon_send()
        self._send_error(rc)

    def _tx_abandon(self) -> None:
        self._tx_buf = None
        self._abandon_send()

    def _abandon_send(self) -> None:
        """A send gives up: if half a frame went out the stream is lost, so close."""
        h = self._h
        if self.closed:
            return
        if lib.fi_chan_tx_partial(h):
            self.close()
        else:
            lib.fi_chan_tx_reset(h)

    def _send_error(self, rc: int) -> NoReturn:
        if rc == _EPIPE:
            self._closed_send()
        # Nothing of this frame went out (else _abandon_send closed the
        # channel), so the stream is intact whatever the code.
        raise channel_error(-rc, self.name, closed=self.closed, sending=True)

    def _too_large(self, n: int, what: str = "message", tail: str = "") -> NoReturn:
        self._fail(
            errno.EMSGSIZE,
            detail=f"{what} of {n} bytes exceeds max_message={self._max_message}{tail}",
        )

    # ---- receive --------------------------------------------------------
    @takes_turn(RX)
    def recv(self, timeout: float | None = None) -> bytes:
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, RX, timeout)
        try:
            if timeout is not None:
                timeout_ns(timeout)
            n = _try_recv1(self._hf)
            if n >= 0:
                return self._sbuf[:n]  # type: ignore[no-any-return]
            return self._recv_slow(n, timeout, 0)
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    @takes_turn(RX)
    def _recv_now(self) -> bytes | None:
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another thread receives: as recv(timeout=0)'s Timeout
            return None
        try:
            n = _try_recv1(self._hf)
            if n >= 0:
                return self._sbuf[:n]  # type: ignore[no-any-return]
            if n == _EAGAIN:
                return None
            try:
                return self._recv_slow(n, 0, 0)
            except Timeout:
                return None
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    def _recv_slow(self, rc: int, timeout: float | None, keep: int) -> bytes:
        h = self._h
        deadline = _deadline(timeout)
        if (rc == _EAGAIN and timeout != 0) or rc == _EXDEV:
            scratch = self._scratch
            rc = _wait(lambda t: lib.fi_chan_recv(h, scratch, SCRATCH_BYTES, keep, t), deadline)
        if rc >= 0:
            return self._sbuf[:rc]  # type: ignore[no-any-return]
        if rc != _EMSGSIZE and rc != _EINPROGRESS:
            self._recv_error(rc)
        self._drop_stale_big()
        if self._big is None:
            n = lib.fi_chan_next_len(h)
            if n > _OWN_FROM:
                # No buffer for the whole of a frame over 1 MiB until 1/16
                # of it came (C holds that part): a header alone, from a
                # slow or hostile peer, must not take its announced size.
                rc = _wait(lambda t: lib.fi_chan_recv(h, ffi.NULL, 0, keep, t), deadline)
                if rc >= 0:  # another thread took the frame; this is the next, empty one
                    return b""
                if rc != _ENOBUFS and rc != _EMSGSIZE:
                    self._recv_error(rc)  # Timeout/EINTR keep the progress for the next call
                n = lib.fi_chan_next_len(h)
            if n < 0:
                self._recv_error(n)
            # A fresh bytes object that nothing else references yet: C reads
            # the message straight into it, so it is never copied again
            # (but for the 1/16 C may have read into its own buffer).
            # Both set in one statement: no signal handler runs between two
            # attribute stores, so _big never exists without its pointer.
            big = bytes(n)
            bigp = _from_buffer(big)
            self._big, self._bigp = big, bigp
        big, bigp, n = self._big, self._bigp, len(self._big)
        # Held by self before C is told to write there (a signal handler
        # raising in between leaves it for the next call to adopt).
        if lib.fi_chan_rx_owned(h) and lib.fi_chan_next_len(h) == n:
            lib.fi_chan_rx_adopt(h, ffi.NULL, bigp)
        rc = _wait(lambda t: lib.fi_chan_recv(h, bigp, n, keep, t), deadline)
        if rc < 0:
            self._recv_error(rc)  # Timeout/EINTR keep the progress for the next call
        self._big = self._bigp = None
        return big

    @one_at_a_time(RX)
    def _take_view(self, timeout: float | None, got: list[Any]) -> None:
        self._no_view_out()
        h, ptr = self._h, ffi.new("char **")
        # No view is out (checked holding the turn), yet C may still hold one: an
        # exception (a signal handler raising) between C lending it and the
        # block starting drops the view unseen. Let it go, or every later
        # recv_view would fail with EBUSY and the area's room never return.
        lib.fi_chan_release_view(h)  # -EINVAL, harmless, when none is held
        deadline = _deadline(timeout)
        n = _wait(lambda t: lib.fi_chan_recv_view(h, ptr, t), deadline)
        if n >= 0:
            # The pin goes when the last view, slice or export of it does, in
            # C (see NativeRing._lend: no Python code runs in the destructor,
            # so a raising signal handler cannot cut it short).
            pin = ffi_fast.gc(ffi_fast.new("fi_pin *"), lib_fast.fi_pin_release)
            rc = lib_fast.fi_chan_view_pin_into(self._hf, pin)
            if rc:  # -EBADF: another thread closed the channel since C lent the view
                lib.fi_chan_release_view(h)
                self._recv_error(rc)
            self._view = view = memoryview(
                ffi.buffer(ffi.gc(ffi.cast("char *", ptr[0]), partial(_pin_drop, pin)), n)
            ).toreadonly()
            got += (view, self._release_lent)  # one C call: lent and handed over at once
            return
        if n == -errno.ENOMSG:  # an inline message: received as recv() does (holding the turn)
            rc = _try_recv1(self._hf)
            data = self._sbuf[:rc] if rc >= 0 else self._recv_slow(rc, time_left(deadline), 0)
            self._view = view = memoryview(data)
            got += (view, _nothing)
            return
        self._recv_error(n)

    def _release_lent(self) -> None:
        lib.fi_chan_release_view(self._h)  # -EBADF, harmless, after close()

    @takes_turn(RX)
    def recv_with_fds(self, timeout: float | None = None) -> tuple[bytes, list[int]]:
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, RX, timeout)
        try:
            if timeout is not None:
                timeout_ns(timeout)
            h = self._h
            rc = _try_recv(self._hf, self._scratch, SCRATCH_BYTES, 1)
            data = self._sbuf[:rc] if rc >= 0 else self._recv_slow(rc, timeout, 1)
            arr = ffi.new("int[]", MAX_FDS)
            k = lib.fi_chan_take_fds(h, arr, MAX_FDS)
            return data, list(arr[0:k])
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    @takes_turn(RX)
    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, RX, timeout)
        try:
            if timeout is not None:
                timeout_ns(timeout)
            buf = _cbuffer(buffer, writable=True)
            size = len(buf)
            h = self._h
            if self._big is not None:
                self._drop_stale_big()
            if self._big is not None:
                # A message was left half-read into our own buffer: finish it there.
                if len(self._big) > size:
                    self._dst_too_small(len(self._big), size)
                data = self._recv_slow(_EINPROGRESS, timeout, 0)
                ffi.memmove(buf, data, len(data))
                return len(data)
            # From the first C call on, C may be reading a long message straight
            # into the caller's buffer; whatever ends this call early (a timeout,
            # an error, a signal handler raising between any two bytecodes)
            # moves that progress into a buffer of our own, since the caller's
            # may be gone by the next receive.
            try:
                rc = _try_recv(self._hf, buf, size, 0)
                if rc >= 0:
                    return rc  # type: ignore[no-any-return]
                if (rc == _EAGAIN and timeout != 0) or rc == _EXDEV:
                    rc = _wait(lambda t: lib.fi_chan_recv(h, buf, size, 0, t), _deadline(timeout))
                if rc >= 0:
                    return rc  # type: ignore[no-any-return]
                if rc == _EMSGSIZE:
                    self._dst_too_small(lib.fi_chan_next_len(h), size)
                if rc == _EINPROGRESS and lib.fi_chan_rx_owned(h):
                    # An earlier receive began a long message in C's buffer.
                    need = lib.fi_chan_next_len(h)
                    if need > size:
                        self._dst_too_small(need, size)
                    data = self._recv_slow(rc, timeout, 0)
                    ffi.memmove(buf, data, len(data))
                    return len(data)
                self._recv_error(rc)
            except BaseException:
                self._adopt_partial(buf)
                raise
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    def _drop_stale_big(self) -> None:
        """Forget our long-message buffer if C is not reading into it.

        That happens when the receive that made it was cut short before C
        started on it, or after C finished it (the message then went to a
        receive that an exception ended before it could return it).
        """
        if self._big is not None and lib.fi_chan_rx_partial(self._h) < 0:
            self._big = self._bigp = None

    def _adopt_partial(self, buf: Any) -> None:
        """A receive into the caller's ``buf`` ends early while a long message is partly
        read into it: continue that message in a buffer of our own, for the next receive."""
        h = self._h
        if (
            self.closed
            or self._big is not None
            or lib.fi_chan_rx_partial(h) < 0
            or lib.fi_chan_rx_owned(h)
        ):
            return
        # Held by self before C is told to write there, so that nothing can
        # leave C pointing into a freed object.
        big = bytes(lib.fi_chan_next_len(h))
        bigp = _from_buffer(big)
        self._big, self._bigp = big, bigp  # as in _recv_slow: one statement
        if not lib.fi_chan_rx_adopt(h, buf, bigp):
            # C is partway into a buffer this call was not given: one an
            # earlier receive, itself interrupted twice, failed to take over.
            # Its bytes cannot be vouched for, so the stream is lost.
            self._big = self._bigp = None
            self.close()

    def _dst_too_small(self, need: int, size: int) -> NoReturn:
        self._fail(
            errno.EMSGSIZE,
            detail=f"the next message ({need} bytes) does not fit in a buffer of {size} bytes; "
            "it stays queued",
        )

    @takes_turn(RX)
    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        turn = self._rx_turn
        try:
            del turn.free
        except AttributeError:  # another call has it (fastipc._turns)
            timeout = turn.wait_take(self, RX, timeout)
        try:
            if type(max_count) is not int or not 0 < max_count <= MAX_BATCH_COUNT:
                max_count = validate_max_count(max_count)  # raises, or caps a huge one
            if timeout is not None:
                timeout_ns(timeout)
            if self._bview is None:
                self._socket()
                self._batch = ffi_fast.new("char[]", BATCH_BYTES)
                self._bview = memoryview(ffi_fast.buffer(self._batch))
            n = _try_recv_batch(self._hf, self._batch, BATCH_BYTES, max_count)
            if n > 0:
                return _loads(self._bview[:n])  # type: ignore[no-any-return]
            if (n == _EAGAIN and timeout != 0) or n == _EXDEV:
                h, batch = self._h, self._batch
                n = _wait(
                    lambda t: lib.fi_chan_recv_batch(h, batch, BATCH_BYTES, max_count, t),
                    _deadline(timeout),
                )
                if n > 0:
                    return _loads(self._bview[:n])  # type: ignore[no-any-return]
            if n == _EMSGSIZE or n == _EINPROGRESS:
                return [self._recv_slow(_EMSGSIZE, timeout, 0)]
            self._recv_error(n)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            turn.free = True
            if turn.waiting:
                turn.wake()

    def _recv_error(self, rc: int) -> NoReturn:
        if rc == _EAGAIN:
            rc = _ETIMEDOUT
        length = 0
        if rc in (-errno.EFBIG, -errno.EPROTO):
            length = max(0, int(lib.fi_chan_next_len(self._h)))
        self._fail(-rc, length=length)


def _nothing() -> None:
    """Giving back the room of a message viewed from a copy: there is none."""


def _cbuffer(data: Any, writable: bool = False) -> Any:
    """cffi's view of a caller's buffer, with fastipc's error messages."""
    if writable:
        if isinstance(data, str):
            raise TypeError("recv_into needs a writable buffer, not str")
        try:
            mv = memoryview(data)
        except TypeError:
            raise TypeError(
                f"recv_into needs a writable buffer, not {type(data).__name__}"
            ) from None
        if mv.readonly:
            raise TypeError(f"recv_into needs a writable buffer, not {type(data).__name__}")
        if not mv.c_contiguous:
            raise TypeError("recv_into needs a C-contiguous buffer")
        return ffi.from_buffer(
            mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv, require_writable=True
        )
    mv = check_buffer(data)
    return ffi.from_buffer(mv)
