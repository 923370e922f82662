"""The native broadcast ring: names, checks and errors in Python, the per-message work in C (csrc/broadcast.c)."""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys
import threading
import time
import weakref
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
from .._contract import dup_bell
from .._contract_broadcast import POLICIES, BroadcastBase, SubscriberBase
from .._names import (
    incompatible,
    open_bell,
    open_segment,
    segment_path,
    subscriber_bell_path,
    unlink_ring,
)
from .._turns import BUFFERS, takes_turn
from ..errors import Closed, Lagged, MessageTooLarge, broadcast_error, timed_out
from ._blocking import SLICE_NS as _SLICE_NS
from ._blocking import deadline as _deadline
from ._blocking import wait as _wait
from ._native import SPIN_NS, ffi, ffi_fast, lib, lib_fast
from ._own_buffers import BATCH_BYTES, SCRATCH_BYTES, OwnBuffers

__all__ = ["NativeBroadcast", "NativeSubscriber"]

# The hot calls, bound once: a module global is cheaper than lib.attr.
_try_publish = lib_fast.fi_bc_try_publish
_try_publish_batch = lib_fast.fi_bc_try_publish_batch
_try_recv = lib_fast.fi_bc_try_recv
_try_recv1 = lib_fast.fi_bc_try_recv1
_spin_recv1 = lib_fast.fi_bc_spin_recv1
_try_recv_batch = lib_fast.fi_bc_try_recv_batch
_unhold = lib_fast.fi_bc_unhold
_close = lib_fast.fi_bc_close
_pin_into = lib_fast.fi_bc_pin_into
_pin_drop = lib_fast.fi_bpin_drop
_pin_release = lib_fast.fi_bpin_release
_hold_drop = lib_fast.fi_bhold_drop
_from_buffer = ffi_fast.from_buffer
_dumps = marshal.dumps
_loads = marshal.loads
_ident = threading.get_ident
_monotonic_ns = time.monotonic_ns

_EAGAIN = -errno.EAGAIN
_EMSGSIZE = -errno.EMSGSIZE
_ETIMEDOUT = -errno.ETIMEDOUT
_EINTR = -errno.EINTR
_EOVERFLOW = -errno.EOVERFLOW
_ECHILD = -errno.ECHILD  # fi_bc_try_recv1 from a thread other than the scratch buffer's


#: What a segment of another kind is, by its magic, and what opens it.
_OTHER_MAGICS = {
    b"FIPCPB01": "a broadcast ring of the python backend: open it with FASTIPC_BACKEND=python "
    "(this process uses the native backend)",
    b"FPCIRN01": "a Ring (native backend), not a broadcast ring: open it with Ring.open",
    b"FIPCPY01": "a Ring (python backend), not a broadcast ring: open it with Ring.open "
    "and FASTIPC_BACKEND=python",
}


def _check(rc: int, name: str, sending: bool | None = None, slots: int = 0) -> int:
    """``rc`` if it is not an error; else raise what the negative errno means
    (errors.broadcast_error: the one table)."""
    if rc >= 0:
        return rc
    raise broadcast_error(-rc, name, segment_path(name), sending, slots)


def _open_handle(name: str, owners: frozenset[int] | None) -> tuple[Any, int]:
    """Map broadcast ring ``name``: the C handle (ffi.gc'd) and the segment's mode."""
    path = segment_path(name)
    fd = open_segment(name, owners)
    try:
        out = ffi.new("fi_bcast **")
        deadline = time.monotonic() + 1.0
        while (rc := lib.fi_bc_open(fd, out)) == _EAGAIN and time.monotonic() < deadline:
            time.sleep(0.005)  # the creator is still laying it out
        if rc == _EAGAIN:
            raise incompatible(name, "empty or never finished initialising")
        if rc == -errno.EPROTO:
            with open(path, "rb") as f:
                magic = f.read(8)
            raise incompatible(name, _OTHER_MAGICS.get(magic, "not a fastipc broadcast ring"))
        if rc == -errno.EPROTONOSUPPORT:
            raise incompatible(name, "a fastipc broadcast ring of another layout version")
        if rc == -errno.EBADMSG:
            raise incompatible(name, "corrupted broadcast ring header (geometry out of bounds)")
        _check(rc, name)
        handle = ffi.gc(out[0], lib.fi_bc_free)
        st = os.fstat(fd)
        _check(
            lib.fi_bc_set_bells(handle, subscriber_bell_path(name, 0)[:-1].encode(), st.st_uid),
            name,
        )
        return handle, stat.S_IMODE(st.st_mode)
    finally:
        os.close(fd)


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
        check_buffer(data, "buffer" if writable else "message")
        raise
    except (BufferError, ValueError):
        check_buffer(data, "buffer" if writable else "message")
        if writable and memoryview(data).readonly:
            raise TypeError(
                f"recv_into needs a writable buffer, not {type(data).__name__}"
            ) from None
        raise


class _Handle:
    """What publisher and subscriber share: the C handle, its lifetime and its views."""

    name: str
    capacity: int
    policy: str
    max_subscribers: int
    _h: Any
    _hf: Any
    _closed: bool
    _mode: int

    def _wrap(self, name: str, handle: Any, mode: int) -> None:
        self.name = name
        self._closed = False
        # The owner of the C handle (ffi.gc: fi_bc_free): freed only when
        # nothing refers to it, so a thread inside a call or a view pinning
        # the mapping never meets freed memory (close() only marks it).
        self._h = handle
        self._hf = ffi_fast.cast("fi_bcast *", handle)
        self._mode = mode
        self.capacity = lib.fi_bc_capacity(handle)
        self.max_subscribers = lib.fi_bc_max_subscribers(handle)
        self.policy = POLICIES[lib.fi_bc_policy(handle)]
        lib.fi_bc_set_spin(handle, SPIN_NS)

    @property
    def closed(self) -> bool:
        return self._closed

    def _close_handle(self) -> None:
        self._closed = True
        # An open reserve/view of this thread lets the others go now; another
        # thread's block lets go as it exits (C refuses: not the holder).
        _unhold(self._hf)
        # Threads waiting in calls wake and raise; the mapping (and the
        # subscriber slot) goes once none is inside and no view pins it.
        _close(self._hf)

    def _lend(self, ptr: Any, n: int) -> memoryview:
        """A view of ``n`` bytes at ``ptr`` that pins the mapping while it, a slice
        or an export of it lives (dropped in C: see NativeRing._lend)."""
        pin = ffi_fast.gc(ffi_fast.new("fi_bpin *"), _pin_release)
        _check(_pin_into(self._hf, pin), self.name)
        return memoryview(ffi.buffer(ffi.gc(ffi.cast("char *", ptr), partial(_pin_drop, pin)), n))

    def _err(self, rc: int, sending: bool | None = None) -> int:
        if rc >= 0:
            return rc
        if rc == -errno.EBADF and self._closed:
            raise ValueError(f"broadcast ring {self.name!r}: handle is closed")
        if rc == _ECHILD:  # C: a subscriber handle inherited through fork()
            raise ValueError(
                f"broadcast subscriber {self.name!r} belongs to the process that subscribed "
                "(a forked child must call Broadcast.subscribe itself)"
            )
        return _check(rc, self.name, sending, self.max_subscribers)


class NativeBroadcast(_Handle, BroadcastBase):
    """:class:`~fastipc.Broadcast` (publisher) backed by the C core; see Broadcast."""

    # ---- lifetime -----------------------------------------------------
    @classmethod
    def _create(
        cls, name: str, capacity: int, subscribers: int, policy: str, mode: int
    ) -> NativeBroadcast:
        path = segment_path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # exactly `mode`: the umask must not widen or narrow it
            os.ftruncate(fd, lib.fi_bc_segment_size(capacity, subscribers))
            out = ffi.new("fi_bcast **")
            _check(lib.fi_bc_create(fd, capacity, subscribers, POLICIES.index(policy), out), name)
            handle = ffi.gc(out[0], lib.fi_bc_free)
            _check(
                lib.fi_bc_set_bells(
                    handle, subscriber_bell_path(name, 0)[:-1].encode(), os.getuid()
                ),
                name,
            )
        except BaseException:
            unlink_ring(name)
            raise
        finally:
            os.close(fd)
        self = cls.__new__(cls)
        self._wrap(name, handle, mode)
        return self

    @classmethod
    def _open(cls, name: str, owners: frozenset[int] | None = None) -> NativeBroadcast:
        handle, mode = _open_handle(name, owners)
        self = cls.__new__(cls)
        self._wrap(name, handle, mode)
        return self

    def close(self) -> None:
        if not self._closed:
            self._close_handle()

    @property
    def subscribers(self) -> int:
        return self._err(lib.fi_bc_subscribers(self._h))

    def _room(self) -> int:
        rc = lib_fast.fi_bc_room(self._hf)
        return -1 if rc == -errno.ENOSPC else self._err(rc)

    def shutdown(self) -> None:
        self._err(lib_fast.fi_bc_shutdown(self._hf))

    # ---- publish ------------------------------------------------------
    def publish(self, data: Any, timeout: float | None = None) -> None:
        if timeout is not None:
            timeout_ns(timeout)  # a bad timeout is an error even when not needed
        if type(data) is not bytes:
            data = _cbuffer(data)
        rc = _try_publish(self._hf, data, len(data))
        if rc:
            self._publish_slow(rc, data, timeout)

    def _publish_slow(self, rc: int, data: Any, timeout: float | None) -> None:
        if rc == _EAGAIN and timeout != 0:
            h = self._h
            rc = _wait(lambda t: lib.fi_bc_publish(h, data, len(data), t), _deadline(timeout))
        if rc == _EMSGSIZE:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds broadcast ring {self.name!r}'s "
                f"capacity of {self.capacity}"
            )
        self._err(rc, True)

    def publish_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        if timeout is not None:
            timeout_ns(timeout)
        items = messages if type(messages) is list else list(messages)
        if not items:
            if self._closed:
                raise ValueError(f"broadcast ring {self.name!r}: handle is closed")
            return 0
        try:
            blob = _dumps(items, 2)  # a list of bytes-likes, parsed in C (csrc/marshal.h)
        except ValueError:
            blob = b""
        total = len(items)
        rc = _try_publish_batch(self._hf, blob, len(blob), 0) if blob else -errno.EINVAL
        if rc == total:
            return total
        return self._publish_many_slow(rc, items, blob, timeout)

    def _publish_many_slow(
        self, rc: int, items: list[Any], blob: bytes, timeout: float | None
    ) -> int:
        total, sent, h = len(items), 0, self._h
        if rc == -errno.EINVAL:
            for i, item in enumerate(items):
                check_buffer(item, f"publish_many item {i}")
            raise TypeError("publish_many items must be bytes-like objects")  # pragma: no cover
        if rc == _EMSGSIZE:
            for i, item in enumerate(items):
                if memoryview(item).nbytes > self.capacity:
                    raise MessageTooLarge(
                        f"publish_many item {i} of {memoryview(item).nbytes} bytes exceeds "
                        f"broadcast ring {self.name!r}'s capacity of {self.capacity}; "
                        "nothing was published"
                    )
        deadline = _deadline(timeout)
        what = f"broadcast ring {self.name!r}"
        while True:
            if rc > 0:
                sent += rc
                if sent == total:
                    return total
            elif rc == _EAGAIN and timeout == 0:
                raise timed_out(what, True, sent)
            elif rc == -errno.EPIPE:
                raise Closed(f"{what} was shut down", sent=sent)
            elif rc not in (_EAGAIN, _ETIMEDOUT, _EINTR):
                self._err(rc, True)
            remaining = _SLICE_NS if deadline is None else deadline - _monotonic_ns()
            if remaining <= 0:
                raise timed_out(what, True, sent)
            rc = lib.fi_bc_publish_batch(h, blob, len(blob), sent, min(remaining, _SLICE_NS))

    def reserve(
        self, nbytes: int, timeout: float | None = None
    ) -> AbstractContextManager[memoryview]:
        validate_count(nbytes, "nbytes", 0)
        if nbytes > self.capacity:
            raise MessageTooLarge(
                f"reserve of {nbytes} bytes exceeds broadcast ring {self.name!r}'s "
                f"capacity of {self.capacity}"
            )
        if timeout is not None:
            timeout_ns(timeout)
        return self._reserve(nbytes, timeout)

    @contextmanager
    def _reserve(self, nbytes: int, timeout: float | None) -> Iterator[memoryview]:
        h, hf, ptr = self._h, self._hf, ffi.new("char **")
        # As NativeRing._reserve: C records the hold as it takes the lock and
        # the record's destructor lets go if nothing else did.
        held = ffi_fast.gc(ffi_fast.new("fi_bhold *"), _hold_drop)
        view: memoryview | None = None
        publish = False
        forks = FORKS[0]
        try:
            rec = ffi.cast("fi_bhold *", held)
            rc = _wait(lambda t: lib.fi_bc_reserve(h, nbytes, t, ptr, rec), _deadline(timeout))
            self._err(rc, True)
            view = self._lend(ptr[0], nbytes)
            yield view
            publish = True
        finally:
            try:
                if FORKS[0] != forks:  # a forked child's copy: the hold is the parent's
                    _hold_drop(held)  # this copy's record of it only (C keeps the lock)
                    raise inherited_block("reserve()")
                rc = lib_fast.fi_bc_commit(hf) if publish and not self._closed else 0
                _hold_drop(held)  # the publisher lock goes whatever the commit said
                self._err(rc, True)
            finally:
                if view is not None:
                    release_view(view)
        if self._closed:
            raise ValueError(
                f"broadcast ring {self.name!r} was closed inside reserve(); nothing was published"
            )


class NativeSubscriber(OwnBuffers, _Handle, SubscriberBase):
    """:class:`~fastipc.Subscriber` backed by the C core; see Subscriber."""

    _kind = "broadcast subscriber"
    _c_try_recv = staticmethod(_try_recv)
    _c_spin_recv1 = staticmethod(_spin_recv1)

    _scratch: Any
    _sbuf: Any
    _batch: Any
    _bview: memoryview | None
    _owner: int
    _threads: threading.local
    _busy: bool
    #: The slot's bell, opened at subscribe and owned here (readiness fds dup it),
    #: and what closes it once (close(), or the handle's collection).
    _bell: int = -1
    _bell_close: Any = staticmethod(lambda: None)

    @classmethod
    def _subscribe(cls, name: str, owners: frozenset[int] | None = None) -> NativeSubscriber:
        handle, mode = _open_handle(name, owners)
        self = cls.__new__(cls)
        self._wrap(name, handle, mode)
        self._owners = owners
        try:
            h = self._h
            self._err(_wait(lambda t: lib.fi_bc_subscribe(h, t), None))
            self._slot = lib.fi_bc_slot(handle)
            # The slot's bell now, while the name is this ring's (made with the
            # ring's mode if missing): publishers ring that FIFO, and readiness
            # fds duplicate this one (see _names.open_bell). Closed by close(),
            # or when the handle is collected unclosed.
            bells: list[int] = []
            self._bell_close = weakref.finalize(self, _close_each, bells)
            # `+= map`: no handler runs between the open and the store (no fd leaks).
            path = subscriber_bell_path(name, self._slot)
            bells += map(open_bell, (name,), (0,), (mode,), (owners,), (path,))
            self._bell = bells[0]
        except BaseException:
            self._bell_close()
            self._close_handle()
            raise
        self._scratch = ffi_fast.new("char[]", SCRATCH_BYTES)
        self._sbuf = ffi_fast.buffer(self._scratch)
        lib_fast.fi_bc_set_scratch(self._hf, self._scratch, SCRATCH_BYTES)
        self._batch = None
        self._bview = None
        # The thread whose receives use the buffers above (C checks it for the
        # scratch buffer; recv_many here for the batch); others get their own,
        # as on NativeRing: a message is sliced out of the buffer after the C
        # call, and another thread's receive must not refill it in between.
        self._owner = _ident()
        self._threads = threading.local()
        self._busy = False  # the buffers above are being filled and sliced (see recv)
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._unwatch_all()
        self._close_handle()
        # A fileno() in another thread may have stored a bell fd between the swap
        # in _unwatch_all and _closed: it is this close's to close (fileno() gives
        # back one it stored after _closed itself; each swap holds no call).
        fd, self._bell_fd = self._bell_fd, -1
        if fd >= 0:
            os.close(fd)
        self._bell_close()  # the slot's bell, after _closed (see dup_bell); once only

    def __len__(self) -> int:
        return self._err(lib_fast.fi_bc_len(self._hf))

    @property
    def missed(self) -> int:
        return int(lib_fast.fi_bc_missed(self._hf))

    def _lagged(self) -> Lagged:
        n = int(lib_fast.fi_bc_lagged(self._hf))
        return Lagged(
            f"broadcast ring {self.name!r}: this subscriber fell a full ring behind and "
            f"lost {n} message(s); the next receive returns the oldest kept",
            missed=n,
        )

    def _fail(self, rc: int) -> Any:
        if rc == _EOVERFLOW:
            raise self._lagged()
        self._err(rc, False)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- receive ------------------------------------------------------
    # A receive sets its buffers' busy flag: a signal handler receiving on
    # the handle whose receive it interrupted gets RuntimeError instead of
    # refilling the buffer being sliced (see NativeRing.recv).
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

    def _recv_wait(self, rc: int, timeout: float | None, cbuf: Any, pybuf: Any) -> bytes:
        if rc == _EAGAIN:
            h = self._h
            rc = _wait(lambda t: lib.fi_bc_recv(h, cbuf, SCRATCH_BYTES, t), _deadline(timeout))
            if rc >= 0:
                return pybuf[:rc]  # type: ignore[no-any-return]
        if rc == _EMSGSIZE:
            return self._recv_long(timeout)
        return self._fail(rc)  # type: ignore[no-any-return]

    def _recv_long(self, timeout: float | None) -> bytes:
        """A message longer than the scratch buffer: C copies it once, into the bytes returned.

        No hold on the handle (a view would take one, and a second thread's
        would then raise RuntimeError); another thread sharing the handle may
        take the message sized here first, and the next one is sized afresh.
        """
        h, hf, deadline = self._h, self._hf, _deadline(timeout)
        while True:
            n = lib_fast.fi_bc_next_len(hf)
            if n < 0:
                # Taken by another thread meanwhile (wait for the next), or
                # overrun (a hint unchecked against publishers): the receive
                # says which, and raises Lagged or the corruption it finds.
                tiny = ffi.new("char[]", 1)
                rc = _wait(partial(lib.fi_bc_recv, h, tiny, 1), deadline)
                if rc >= 0:  # a message of 0 or 1 byte came: it is received
                    return ffi.buffer(tiny, rc)[:]  # type: ignore[no-any-return]
                if rc != _EMSGSIZE:
                    self._fail(rc)
                continue
            big = bytes(n)  # nothing else refers to it: C writes the message straight in
            rc = _wait(partial(lib.fi_bc_recv, h, _from_buffer(big), n), deadline)
            if rc >= 0:
                return big if rc == n else big[:rc]
            if rc != _EMSGSIZE:  # EMSGSIZE: overrun meanwhile, or a longer one: size it again
                self._fail(rc)

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        if timeout is not None:
            timeout_ns(timeout)
        buf = _cbuffer(buffer, writable=True)
        size = len(buf)
        rc = _try_recv(self._hf, buf, size)
        if rc == _EAGAIN and timeout != 0:
            h = self._h
            rc = _wait(lambda t: lib.fi_bc_recv(h, buf, size, t), _deadline(timeout))
        if rc == _EMSGSIZE:
            need = lib_fast.fi_bc_next_len(self._hf)
            raise MessageTooLarge(
                f"the next message of broadcast ring {self.name!r} ({need} bytes) does not "
                f"fit in a buffer of {size} bytes; it stays"
            )
        if rc >= 0:
            return int(rc)
        return self._fail(rc)  # type: ignore[no-any-return]

    def _recv_batch(
        self, batch: Any, bview: memoryview, max_count: int, timeout: float | None
    ) -> list[bytes]:
        n = _try_recv_batch(self._hf, batch, BATCH_BYTES, max_count)
        if n > 0:
            return _loads(bview[:n])  # type: ignore[no-any-return]
        if n == _EAGAIN and timeout != 0:
            h = self._h
            n = _wait(
                lambda t: lib.fi_bc_recv_batch(h, batch, BATCH_BYTES, max_count, t),
                _deadline(timeout),
            )
            if n > 0:
                return _loads(bview[:n])  # type: ignore[no-any-return]
        if n == _EMSGSIZE:
            return [self._recv_long(timeout)]
        return self._fail(n)  # type: ignore[no-any-return]

    def recv_view(self, timeout: float | None = None) -> AbstractContextManager[memoryview]:
        if timeout is not None:
            timeout_ns(timeout)
        return self._recv_view(timeout)

    @contextmanager
    def _recv_view(self, timeout: float | None) -> Iterator[memoryview]:
        h, hf, ptr = self._h, self._hf, ffi.new("char **")
        held = ffi_fast.gc(ffi_fast.new("fi_bhold *"), _hold_drop)  # as in _reserve
        view: memoryview | None = None
        forks = FORKS[0]
        try:
            rec = ffi.cast("fi_bhold *", held)
            n = _wait(lambda t: lib.fi_bc_peek(h, t, ptr, rec), _deadline(timeout))
            if n < 0:
                if n == -errno.EDEADLK:
                    raise RuntimeError(
                        f"broadcast ring {self.name!r}: a recv_view() block is already open "
                        "on this subscriber"
                    )
                self._fail(n)
            # Pinned in the segment: no publisher writes over these bytes
            # until the block ends; the mapping stays while the view lives.
            view = self._lend(ptr[0], n).toreadonly()
            yield view
        finally:
            try:
                if FORKS[0] != forks:  # a forked child's copy: the hold is the parent's
                    _hold_drop(held)  # this copy's record of it only (C keeps the lock)
                    raise inherited_block("recv_view()")
                rc = lib_fast.fi_bc_release(hf) if view is not None and not self._closed else 0
                _hold_drop(held)  # the pin and the handle's receive lock go, whatever happened
                self._err(rc, False)
            finally:
                if view is not None:
                    release_view(view)

    # ---- readiness ----------------------------------------------------
    def _watch(self, delta: int) -> int:
        return self._err(lib_fast.fi_bc_watch(self._hf, delta))

    def _poll(self) -> bool:
        return self._err(lib_fast.fi_bc_poll(self._hf)) == 1

    def _open_bell(self) -> int:
        if self._closed:
            raise ValueError(f"broadcast ring {self.name!r}: subscriber is closed")
        return dup_bell(self, self._bell, f"broadcast ring {self.name!r}: subscriber")


def _close_each(fds: list[int]) -> None:
    """Close the fds in ``fds`` (a subscriber's slot bell: see _subscribe)."""
    for fd in fds:
        os.close(fd)
