"""The receive buffers of a native Ring or Subscriber handle, and who may fill them.

A native receive copies the message into a buffer and slices it out after
the C call. The thread that made the handle uses the handle's own buffers
(C answers -ECHILD to any other); every other thread gets buffers of its
own (:meth:`OwnBuffers._mine`). A buffer must not be refilled between the C
call and the slice: by another thread (hence a set per thread), or by a
signal handler receiving on the same handle, which CPython runs right after
the C call returns (hence the busy flags, ``_busy`` on the handle and in
each thread's set). A receive that finds its set busy raises RuntimeError
if its own thread's stack is in a receive on the handle (the handler's
reentrant call); otherwise it receives into fresh buffers, and clears the
flag if no thread is in such a receive (a handler raised after the C call
and left it set).
"""

from __future__ import annotations

import errno
import sys
import threading
from typing import Any, Callable, ClassVar

from .._checks import MAX_BATCH_COUNT, timeout_ns, validate_max_count
from .._turns import BUFFERS, refuse_or_free, takes_turn
from ._native import SPIN_NS, ffi_fast

__all__ = ["BATCH_BYTES", "GIL_SPIN_NS", "SCRATCH_BYTES", "OwnBuffers"]

#: A receive's buffer (bytes); longer messages are received into a fresh bytes.
SCRATCH_BYTES = 64 * 1024
#: Room for one recv_many batch in marshal format (bytes).
BATCH_BYTES = 256 * 1024

#: Spin for a peer holding the GIL, in the call that missed (nanoseconds): a
#: peer that keeps up is met without entering the blocking path (~1 us of
#: Python). Short, so other threads are barely held up.
GIL_SPIN_NS = min(SPIN_NS, 3000)

_ident = threading.get_ident
_EAGAIN = -errno.EAGAIN


class OwnBuffers:
    """The receive buffers of a native handle (mixed into NativeRing, NativeSubscriber).

    The class provides ``_kind`` (for messages), ``_c_try_recv`` and
    ``_c_spin_recv1`` (the C ``fi_*_try_recv(hf, buf, size)`` and
    ``fi_*_spin_recv1(hf, ns)``), ``_recv_wait`` and ``_recv_batch``; the
    handle sets ``_hf``, ``_scratch``, ``_sbuf``, ``_owner``, ``_threads``,
    ``_busy``, ``_batch`` and ``_bview`` when it is made.
    """

    _kind: ClassVar[str]
    _c_try_recv: ClassVar[Callable[..., int]]
    _c_spin_recv1: ClassVar[Callable[..., int]]
    name: str
    _hf: Any
    _scratch: Any
    _sbuf: Any
    _owner: int
    _threads: threading.local
    _busy: bool
    _batch: Any
    _bview: memoryview | None

    def _recv_wait(self, rc: int, timeout: float | None, cbuf: Any, pybuf: Any) -> bytes:
        raise NotImplementedError

    def _recv_batch(
        self, batch: Any, bview: memoryview, max_count: int, timeout: float | None
    ) -> list[bytes]:
        raise NotImplementedError

    @takes_turn(BUFFERS)
    def _recv_slow(self, rc: int, timeout: float | None) -> bytes:
        """recv() after the owner's first try missed (``rc``): spin, then wait."""
        if self._busy:  # called by recv/_try_recv: look above them
            return self._recv_fresh(timeout, self, sys._getframe(2))
        self._busy = True
        try:
            if rc == _EAGAIN and timeout != 0:
                rc = type(self)._c_spin_recv1(self._hf, GIL_SPIN_NS)
                if rc >= 0:
                    return self._sbuf[:rc]  # type: ignore[no-any-return]
            return self._recv_wait(rc, timeout, self._scratch, self._sbuf)
        finally:
            self._busy = False

    def _recv_fresh(self, timeout: float | None, holder: Any, above: Any) -> bytes:
        """Receive into buffers of this call alone: ``holder``'s (the handle's or
        this thread's) are busy, in another thread's call for an instant."""
        if refuse_or_free(self, BUFFERS, f"{self._kind} {self.name!r}", above):
            # Left set by a handler that raised after the C call. Cleared only by
            # the thread whose flag it is (all that call _recv_fresh): another
            # thread's receive may have set it after the look.
            holder._busy = False
        cbuf = ffi_fast.new("char[]", SCRATCH_BYTES)
        pybuf = ffi_fast.buffer(cbuf)
        n = type(self)._c_try_recv(self._hf, cbuf, SCRATCH_BYTES)
        if n >= 0:
            return pybuf[:n]  # type: ignore[no-any-return]
        return self._recv_wait(n, timeout, cbuf, pybuf)

    def _mine(self) -> Any:
        """This thread's own buffers on the handle (a thread other than its maker)."""
        mine = self._threads.__dict__
        if not mine:
            cbuf = ffi_fast.new("char[]", SCRATCH_BYTES)
            batch = ffi_fast.new("char[]", BATCH_BYTES)
            # Installed by one call: a handler's receive meanwhile finds all or nothing.
            mine.update(
                scratch=cbuf,
                sbuf=ffi_fast.buffer(cbuf),
                batch=batch,
                bview=memoryview(ffi_fast.buffer(batch)),
                _busy=False,  # as self._busy, this thread's
            )
        return mine

    @takes_turn(BUFFERS)
    def _recv_elsewhere(self, timeout: float | None) -> bytes:
        """recv() in a thread other than the handle's maker, into its own buffers."""
        mine = self._mine()
        if mine["_busy"]:  # called by recv/_try_recv: look above them
            return self._recv_fresh(timeout, self._threads, sys._getframe(2))
        mine["_busy"] = True
        try:
            cbuf, pybuf = mine["scratch"], mine["sbuf"]
            n = type(self)._c_try_recv(self._hf, cbuf, SCRATCH_BYTES)
            if n >= 0:
                return pybuf[:n]  # type: ignore[no-any-return]
            return self._recv_wait(n, timeout, cbuf, pybuf)
        finally:
            mine["_busy"] = False

    @takes_turn(BUFFERS)
    def recv_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        if type(max_count) is not int or not 0 < max_count <= MAX_BATCH_COUNT:
            max_count = validate_max_count(max_count)  # raises, or caps a huge one
        if timeout is not None:
            timeout_ns(timeout)
        holder: Any
        if _ident() != self._owner:  # this thread's own batch buffer
            mine = self._mine()
            holder = self._threads
            batch, bview = mine["batch"], mine["bview"]
        else:
            if self._bview is None:
                # One statement, no call between the stores: a handler's
                # recv_many here would otherwise pair one buffer with another's view.
                fresh = ffi_fast.new("char[]", BATCH_BYTES)
                self._batch, self._bview = fresh, memoryview(ffi_fast.buffer(fresh))
            batch, bview, holder = self._batch, self._bview, self
        if holder._busy:  # see the module docstring
            what = f"{self._kind} {self.name!r}"
            if refuse_or_free(self, BUFFERS, what, sys._getframe(1)) and (
                holder is not self or _ident() == self._owner
            ):
                holder._busy = False
            batch = ffi_fast.new("char[]", BATCH_BYTES)
            return self._recv_batch(batch, memoryview(ffi_fast.buffer(batch)), max_count, timeout)
        holder._busy = True
        try:
            return self._recv_batch(batch, bview, max_count, timeout)
        finally:
            holder._busy = False
