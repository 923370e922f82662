"""The native Ring: names, checks and errors in Python, the per-message work in C (csrc/ring.c)."""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any

from .._checks import (
    FORKS,
    check_buffer,
    inherited_block,
    release_view,
    timeout_ns,
    validate_count,
)
from .._contract import RingBase, dup_bell
from .._names import incompatible, open_bell, open_segment, segment_path, unlink_ring
from .._turns import BUFFERS, takes_turn
from ..errors import Closed, MessageTooLarge, Timeout, ring_error, timed_out
from ._blocking import SLICE_NS as _SLICE_NS
from ._blocking import deadline as _deadline
from ._blocking import wait as _wait
from ._native import SPIN_NS, ffi, ffi_fast, lib, lib_fast
from ._own_buffers import BATCH_BYTES, SCRATCH_BYTES, OwnBuffers
from ._own_buffers import GIL_SPIN_NS as _GIL_SPIN_NS

__all__ = ["NativeRing"]

# The hot calls, bound once: a module global is cheaper than lib.attr.
_try_send = lib_fast.fi_ring_try_send
_try_recv = lib_fast.fi_ring_try_recv
_try_recv1 = lib_fast.fi_ring_try_recv1
_spin_send = lib_fast.fi_ring_spin_send
_spin_recv1 = lib_fast.fi_ring_spin_recv1
_try_send_batch = lib_fast.fi_ring_try_send_batch
_try_recv_batch = lib_fast.fi_ring_try_recv_batch
_unhold = lib_fast.fi_ring_unhold
_close = lib_fast.fi_ring_close
_pin_into = lib_fast.fi_ring_pin_into
_pin_drop = lib_fast.fi_pin_drop
_pin_release = lib_fast.fi_pin_release
_hold_drop = lib_fast.fi_hold_drop
_watch = lib_fast.fi_ring_watch
_poll = lib_fast.fi_ring_poll
_from_buffer = ffi_fast.from_buffer
_dumps = marshal.dumps
_loads = marshal.loads
_ident = threading.get_ident
_monotonic_ns = time.monotonic_ns

_EAGAIN = -errno.EAGAIN
_EMSGSIZE = -errno.EMSGSIZE
_ECHILD = -errno.ECHILD  # fi_ring_try_recv1 from a thread other than the scratch buffer's
_ETIMEDOUT = -errno.ETIMEDOUT
_EINTR = -errno.EINTR


class NativeRing(OwnBuffers, RingBase):
    """:class:`~fastipc.Ring` backed by the C core; see Ring for the contract."""

    _kind = "ring"
    _c_try_recv = staticmethod(_try_recv)
    _c_spin_recv1 = staticmethod(_spin_recv1)

    _h: Any
    _hf: Any
    _scratch: Any
    _sbuf: Any
    _batch: Any
    _bview: memoryview | None
    _closed: bool
    _owner: int
    _threads: threading.local
    _busy: bool
    _bells: tuple[int, int]

    # ---- lifetime -----------------------------------------------------
    @classmethod
    def _create(cls, name: str, capacity: int, mode: int) -> NativeRing:
        path = segment_path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # exactly `mode`: the umask must not widen or narrow it
            os.ftruncate(fd, lib.fi_ring_segment_size(capacity))
            out = ffi.new("fi_ring **")
            _check(lib.fi_ring_create(fd, capacity, out), name)
            handle = ffi.gc(out[0], lib.fi_ring_free)
            bells = _set_bells(handle, name, mode, None)
        except BaseException:
            unlink_ring(name)
            raise
        finally:
            os.close(fd)
        return cls._wrap(name, handle, bells)

    @classmethod
    def _open(cls, name: str, owners: frozenset[int] | None = None) -> NativeRing:
        path = segment_path(name)
        fd = open_segment(name, owners)
        try:
            out = ffi.new("fi_ring **")
            deadline = time.monotonic() + 1.0
            while (rc := lib.fi_ring_open(fd, out)) == _EAGAIN and time.monotonic() < deadline:
                time.sleep(0.005)  # the creator is still laying it out
            if rc == _EAGAIN:
                raise incompatible(name, "empty or never finished initialising")
            if rc == -errno.EPROTO:
                with open(path, "rb") as f:
                    magic = f.read(8)
                if magic.startswith(b"FIPCPY"):
                    raise incompatible(
                        name,
                        "a ring of the python backend: open it with FASTIPC_BACKEND=python "
                        "(this process uses the native backend)",
                    )
                if magic in (b"FPCIBC01", b"FIPCPB01"):
                    backend = "native" if magic == b"FPCIBC01" else "python"
                    raise incompatible(
                        name,
                        f"a broadcast ring ({backend} backend), not a Ring: open it with "
                        "Broadcast.open or Broadcast.subscribe",
                    )
                raise incompatible(name, "not a fastipc ring")
            if rc == -errno.EPROTONOSUPPORT:
                raise incompatible(name, "a fastipc ring of another layout version")
            _check(rc, name)
            handle = ffi.gc(out[0], lib.fi_ring_free)
            bells = _set_bells(handle, name, stat.S_IMODE(os.fstat(fd).st_mode), owners)
        finally:
            os.close(fd)
        ring = cls._wrap(name, handle, bells)
        ring._owners = owners
        return ring

    @classmethod
    def _wrap(cls, name: str, handle: Any, bells: tuple[int, int]) -> NativeRing:
        self = cls.__new__(cls)
        self.name = name
        self._closed = False
        # The bell fds C holds (closed with the mapping, never before close()
        # marks the handle closed): what readiness fds duplicate.
        self._bells = bells
        # The owner of the C handle (ffi.gc'd by the caller: fi_ring_free):
        # freed only when nothing refers to it any more, so a thread still
        # inside a call, or a view pinning the mapping, never meets freed
        # memory (close() only marks it closed; C counts who is inside).
        self._h = handle
        # The same pointer typed for the GIL-keeping module (each cffi module
        # has its own struct types).
        self._hf = ffi_fast.cast("fi_ring *", handle)
        self.capacity = lib.fi_ring_capacity(handle)
        lib.fi_ring_set_spin(handle, SPIN_NS)
        self._scratch = ffi_fast.new("char[]", SCRATCH_BYTES)
        self._sbuf = ffi_fast.buffer(self._scratch)
        lib_fast.fi_ring_set_scratch(self._hf, self._scratch, SCRATCH_BYTES)
        self._batch = None
        self._bview = None
        # The thread whose receives use the buffers above (C checks it for the
        # scratch buffer; recv_many here for the batch); others get their own.
        self._owner = _ident()
        self._threads = threading.local()
        self._busy = False  # the buffers above are being filled and sliced (see recv)
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._unwatch_all()
        self._closed = True
        # A reserve/view of this thread is open: let the other producers or
        # consumers go now (nothing is published or consumed; 0 if none is).
        # If it is another thread's block, C refuses (not the holder) and
        # that block lets go as it exits.
        _unhold(self._hf)
        # Threads waiting in calls on this handle wake and raise; the mapping
        # stays while any of them is inside C or any view still pins it.
        _close(self._hf)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return int(_check(lib_fast.fi_ring_len(self._hf), self.name))

    def _room(self) -> int:
        rc = lib_fast.fi_ring_room(self._hf)
        return -1 if rc == -errno.ENOSPC else int(_check(rc, self.name))

    def shutdown(self) -> None:
        _check(lib_fast.fi_ring_shutdown(self._hf), self.name)

    def _lend(self, ptr: Any, n: int) -> memoryview:
        """A view of ``n`` bytes at ``ptr`` in the mapping that pins it: the mapping
        outlives close() while the view, or any slice or export of it, lives."""
        # The pin is dropped by C, never by Python code a raising signal
        # handler could cut short (cffi would only print "Exception
        # ignored"): by fi_pin_drop when the last view, slice or export is
        # gone (through functools.partial, also C), or, should an exception
        # land before the view exists, by the record's own destructor.
        pin = ffi_fast.gc(ffi_fast.new("fi_pin *"), _pin_release)
        _check(_pin_into(self._hf, pin), self.name)
        return memoryview(ffi.buffer(ffi.gc(ffi.cast("char *", ptr), partial(_pin_drop, pin)), n))

    # ---- send ---------------------------------------------------------
    def send(self, data: Any, timeout: float | None = None) -> None:
        if timeout is not None:
            timeout_ns(timeout)  # a bad timeout is an error even when not needed
        if type(data) is bytes:
            rc = _try_send(self._hf, data, len(data))
        else:
            data = _cbuffer(data)
            rc = _try_send(self._hf, data, len(data))
        if rc:
            self._send_slow(rc, data, timeout)

    def _send_slow(self, rc: int, data: Any, timeout: float | None) -> None:
        if rc == _EAGAIN and timeout != 0:
            rc = _spin_send(self._hf, data, len(data), _GIL_SPIN_NS)
        if rc == _EAGAIN:
            h = self._h
            rc = _wait(lambda t: lib.fi_ring_send(h, data, len(data), t), _deadline(timeout))
        if rc == _EMSGSIZE:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds ring {self.name!r}'s capacity of {self.capacity}"
            )
        _check(rc, self.name, True)

    def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        if timeout is not None:
            timeout_ns(timeout)
        items = messages if type(messages) is list else list(messages)
        if not items:
            if self._closed:  # as any other call on a closed handle
                _check(-errno.EBADF, self.name, True)
            return 0
        try:
            # marshal writes a list of bytes-like objects in C into one
            # buffer that csrc/ring.c parses: no Python loop per message.
            blob = _dumps(items, 2)
        except ValueError:
            blob = b""  # some item is not marshallable: named below
        total = len(items)
        rc = _try_send_batch(self._hf, blob, len(blob), 0) if blob else -errno.EINVAL
        if rc == total:
            return total
        return self._send_many_slow(rc, items, blob, timeout)

    def _send_many_slow(self, rc: int, items: list[Any], blob: bytes, timeout: float | None) -> int:
        total, sent, h = len(items), 0, self._h
        if rc == -errno.EINVAL:
            for i, item in enumerate(items):
                check_buffer(item, f"send_many item {i}")
            raise TypeError("send_many items must be bytes-like objects")  # pragma: no cover
        if rc == _EMSGSIZE:
            for i, item in enumerate(items):
                if memoryview(item).nbytes > self.capacity:
                    raise MessageTooLarge(
                        f"send_many item {i} of {memoryview(item).nbytes} bytes exceeds ring "
                        f"{self.name!r}'s capacity of {self.capacity}; nothing was sent"
                    )
        deadline = _deadline(timeout)
        while True:
            if rc > 0:
                sent += rc
                if sent == total:
                    return total
            elif rc == _EAGAIN and timeout == 0:
                raise timed_out(f"ring {self.name!r}", True, sent)
            elif rc == -errno.EPIPE:
                raise Closed(f"ring {self.name!r} was shut down", sent=sent)
            elif rc not in (_EAGAIN, _ETIMEDOUT, _EINTR):
                _check(rc, self.name)
            remaining = _SLICE_NS if deadline is None else deadline - _monotonic_ns()
            if remaining <= 0:
                raise timed_out(f"ring {self.name!r}", True, sent)
            rc = lib.fi_ring_send_batch(h, blob, len(blob), sent, min(remaining, _SLICE_NS))

    # ---- receive ------------------------------------------------------
    # A receive copies the message into a buffer of the handle and slices it
    # out after the C call, so two threads must never share that buffer:
    # another thread's receive could refill it in between (measured with one
    # shared buffer: two threads on one handle got 28 duplicated and 52
    # garbled messages in 400,000). The thread that made the handle uses the
    # handle's own buffers (C answers -ECHILD to any other, for free); every
    # other thread gets buffers of its own (_mine). No lock: the ring itself
    # orders its consumers.
    #
    # A signal handler runs in the interrupted thread, right after a C call
    # returns: one receiving on this handle then refilled the buffer the
    # interrupted receive was about to slice (measured: a handler receiving
    # every 50 us made 110 of 30,000 messages come out damaged). So a
    # receive sets the buffers' busy flag around the C call and the slice
    # (test and set are two opcodes with no call between: CPython 3.10+
    # runs no handler, and switches no thread, in between). One that finds
    # it set raises RuntimeError if its own thread's stack is in such a call
    # (the handler's reentrant call), and otherwise (a non-owner thread sets
    # it for the instant of its -ECHILD answer) receives into fresh buffers
    # (_recv_fresh). No try/finally: a handler raising after the C call
    # leaves the flag set, and the next receive, finding no call holding
    # it, clears it (measured by callgrind: +6 % instructions a message
    # sent and received, against +10 % with a token taken in a try).
    @takes_turn(BUFFERS)
    def recv(self, timeout: float | None = None) -> bytes:
        if timeout is not None:
            timeout_ns(timeout)
        if self._busy:
            if _ident() != self._owner:  # never uses the handle's buffers
                return self._recv_elsewhere(timeout)
            return self._recv_fresh(timeout, self, sys._getframe(1))
        self._busy = True
        n = _try_recv1(self._hf)
        if n >= 0:
            data = self._sbuf[:n]
            self._busy = False
            return data  # type: ignore[no-any-return]
        self._busy = False
        if n == _ECHILD:
            return self._recv_elsewhere(timeout)
        return self._recv_slow(n, timeout)

    @takes_turn(BUFFERS)
    def _try_recv(self) -> bytes | None:
        if self._busy:
            try:
                if _ident() != self._owner:
                    return self._recv_elsewhere(0)
                return self._recv_fresh(0, self, sys._getframe(1))
            except Timeout:
                return None
        self._busy = True
        n = _try_recv1(self._hf)
        if n >= 0:
            data = self._sbuf[:n]
            self._busy = False
            return data  # type: ignore[no-any-return]
        self._busy = False
        if n == _EAGAIN:
            return None
        try:  # another thread's, Closed, a long message...
            return self._recv_elsewhere(0) if n == _ECHILD else self._recv_slow(n, 0)
        except Timeout:
            return None

    def _recv_wait(self, rc: int, timeout: float | None, cbuf: Any, pybuf: Any) -> bytes:
        if rc == _EAGAIN:
            h = self._h
            rc = _wait(lambda t: lib.fi_ring_recv(h, cbuf, SCRATCH_BYTES, t), _deadline(timeout))
            if rc >= 0:
                return pybuf[:rc]  # type: ignore[no-any-return]
        if rc == _EMSGSIZE:
            return self._recv_long(timeout)
        _check(rc, self.name, False)
        raise AssertionError("unreachable")  # pragma: no cover

    def _recv_long(self, timeout: float | None) -> bytes:
        """A message longer than the scratch buffer: C copies it once, into the bytes returned.

        No hold on the handle (a view would take one), so threads sharing the
        handle may do this at once; another consumer may take the message
        sized here first, and the next one is then sized afresh.
        """
        h, hf, deadline = self._h, self._hf, _deadline(timeout)
        while True:
            n = lib_fast.fi_ring_next_len(hf)
            if n == _EAGAIN:  # taken by another consumer meanwhile: wait for the next
                tiny = ffi.new("char[]", 1)
                rc = _wait(partial(lib.fi_ring_recv, h, tiny, 1), deadline)
                if rc >= 0:  # a message of 0 or 1 byte came: it is received
                    return ffi.buffer(tiny, rc)[:]  # type: ignore[no-any-return]
                if rc != _EMSGSIZE:
                    _check(rc, self.name, False)
                continue
            _check(n, self.name, False)
            # A fresh bytes object nothing else refers to: C writes the message
            # straight into it (as the channel does), so it is never copied again.
            big = bytes(n)
            rc = _wait(partial(lib.fi_ring_recv, h, _from_buffer(big), n), deadline)
            if rc >= 0:
                return big if rc == n else big[:rc]
            if rc != _EMSGSIZE:  # EMSGSIZE: a longer one came first; size it again
                _check(rc, self.name, False)

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        if timeout is not None:
            timeout_ns(timeout)
        buf = _cbuffer(buffer, writable=True)
        size = len(buf)
        rc = _try_recv(self._hf, buf, size)
        if rc == _EAGAIN:
            h = self._h
            rc = _wait(lambda t: lib.fi_ring_recv(h, buf, size, t), _deadline(timeout))
        if rc == _EMSGSIZE:
            need = lib_fast.fi_ring_next_len(self._hf)
            raise MessageTooLarge(
                f"the next message in ring {self.name!r} ({need} bytes) does not fit "
                f"in a buffer of {size} bytes; it stays in the ring"
            )
        return int(_check(rc, self.name, False))

    def _recv_batch(
        self, batch: Any, bview: memoryview, max_count: int, timeout: float | None
    ) -> list[bytes]:
        n = _try_recv_batch(self._hf, batch, BATCH_BYTES, max_count)
        if n > 0:
            return _loads(bview[:n])  # type: ignore[no-any-return]
        if n == _EAGAIN:
            h = self._h
            n = _wait(
                lambda t: lib.fi_ring_recv_batch(h, batch, BATCH_BYTES, max_count, t),
                _deadline(timeout),
            )
            if n > 0:
                return _loads(bview[:n])  # type: ignore[no-any-return]
        if n == _EMSGSIZE:  # the oldest is longer than the batch buffer: it alone
            return [self._recv_long(timeout)]
        _check(n, self.name, False)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- zero-copy ----------------------------------------------------
    def reserve(
        self, nbytes: int, timeout: float | None = None
    ) -> AbstractContextManager[memoryview]:
        validate_count(nbytes, "nbytes", 0)
        if nbytes > self.capacity:
            raise MessageTooLarge(
                f"reserve of {nbytes} bytes exceeds ring {self.name!r}'s capacity of {self.capacity}"
            )
        return self._reserve(nbytes, timeout)

    @contextmanager
    def _reserve(self, nbytes: int, timeout: float | None) -> Iterator[memoryview]:
        h, hf, ptr = self._h, self._hf, ffi.new("char **")
        # C records the hold in `held` as it takes the producer lock, and
        # lets it go in the record's destructor if nothing else did: should
        # a raising signal handler cut short the clean-up below, or land in
        # contextlib's __enter__/__exit__ so that it never runs, the lock
        # goes when this generator's frame does, without Python code.
        held = ffi_fast.gc(ffi_fast.new("fi_hold *"), _hold_drop)
        view: memoryview | None = None
        publish = False
        forks = FORKS[0]
        try:
            rec = ffi.cast("fi_hold *", held)
            rc = _wait(lambda t: lib.fi_ring_reserve(h, nbytes, t, ptr, rec), _deadline(timeout))
            _check(rc, self.name, True)
            view = self._lend(ptr[0], nbytes)
            yield view
            publish = True
        finally:
            try:
                if FORKS[0] != forks:  # a forked child's copy: the hold is the parent's
                    publish = False
                    _hold_drop(held)  # this copy's record of it only (C keeps the lock)
                    raise inherited_block("reserve()")
                rc = lib_fast.fi_ring_commit(hf) if publish and not self._closed else 0
                # Whatever the commit said, the producer side is let go here:
                # no error may leave the lock taken (0 if nothing is held).
                _hold_drop(held)
                _check(rc, self.name)
            finally:
                if view is not None:
                    release_view(view)
        if self._closed:
            raise ValueError(f"ring {self.name!r} was closed inside reserve(); nothing was sent")

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        return self._recv_view(timeout)

    @contextmanager
    def _recv_view(self, timeout: float | None) -> Iterator[memoryview]:
        h, hf, ptr = self._h, self._hf, ffi.new("char **")
        held = ffi_fast.gc(ffi_fast.new("fi_hold *"), _hold_drop)  # as in _reserve
        view: memoryview | None = None
        forks = FORKS[0]
        try:
            rec = ffi.cast("fi_hold *", held)
            n = _check(
                _wait(lambda t: lib.fi_ring_peek(h, t, ptr, rec), _deadline(timeout)),
                self.name,
                False,
            )
            view = self._lend(ptr[0], n).toreadonly()
            yield view
        finally:
            try:
                if FORKS[0] != forks:  # a forked child's copy: the hold is the parent's
                    _hold_drop(held)  # this copy's record of it only (C keeps the lock)
                    raise inherited_block("recv_view()")
                if view is not None and not self._closed:
                    rc = lib_fast.fi_ring_release(hf)  # consumed, raised or not
                else:
                    rc = 0  # never lent, or closed inside the block: the message stays
                # Never lent (the message stays), closed inside the block (the
                # message stays for the next consumer), or a failed release:
                # the consumer side is let go whatever happened.
                _hold_drop(held)
                _check(rc, self.name)
            finally:
                if view is not None:
                    release_view(view)

    # ---- readiness (see RingBase, "readiness") --------------------------
    def _watch(self, side: int, delta: int) -> int:
        return int(_check(_watch(self._hf, side, delta), self.name))

    def _poll(self, side: int, nbytes: int) -> bool:
        return _check(_poll(self._hf, side, nbytes), self.name) == 1

    def _open_bell(self, side: int) -> int:
        if side not in (0, 1):
            raise ValueError(f"side must be 0 (recv) or 1 (send), not {side!r}")
        if self._closed:
            raise ValueError(f"ring {self.name!r} is closed")
        # C closes its bells in unmap(), which only _close() (after _closed is
        # set) or the handle's collection (not while self refers to it) reaches.
        return dup_bell(self, self._bells[side], f"ring {self.name!r}")


def _set_bells(handle: Any, name: str, mode: int, owners: frozenset[int] | None) -> tuple[int, int]:
    """Open ring ``name``'s two doorbells (made with ``mode`` if missing) and give them to C,
    which rings them after publishing/consuming while someone watches and closes them
    with the mapping. Returns the two fds (C's: for readiness fds to duplicate)."""
    fds: list[int] = []
    try:
        for side in (0, 1):
            fds.append(open_bell(name, side, mode, owners))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    lib.fi_ring_set_bells(handle, fds[0], fds[1])
    return fds[0], fds[1]


def _cbuffer(data: Any, writable: bool = False) -> Any:
    """cffi's view of a caller's buffer, with fastipc's error messages."""
    try:
        return _from_buffer(data, require_writable=writable)
    except TypeError:
        if writable and not isinstance(data, str):
            try:
                memoryview(data)
            except TypeError:
                pass
            else:
                raise TypeError(
                    f"recv_into needs a writable buffer, not {type(data).__name__}"
                ) from None
        check_buffer(data)
        raise
    except (BufferError, ValueError):  # cffi: ValueError for a non-contiguous ndarray
        check_buffer(data, "buffer" if writable else "message")
        if writable and memoryview(data).readonly:
            raise TypeError(
                f"recv_into needs a writable buffer, not {type(data).__name__}"
            ) from None
        raise


def _check(rc: int, name: str, sending: bool | None = None) -> int:
    """``rc`` if it is not an error; else raise what the negative errno means
    (a timeout of a send is Full, of a receive Empty: see ring_error)."""
    if rc >= 0:
        return rc
    raise ring_error(-rc, name, segment_path(name), sending)
