"""sigqueue(2) and signalfd(2), which Python's standard library lacks, for the signal:// transport.

The native backend calls the C core (``csrc/signals.c`` through cffi). The
python backend, which never loads the compiled modules, calls the same two
libc functions through ctypes: there is no pure-Python way to queue a signal
with a payload or to make a signalfd (``signal.sigwaitinfo`` exists, but its
result has no ``si_value`` and it gives no fd a selector can watch). Both
return the same errno for the same failure, raised here as
``OSError(errno, strerror)`` for the caller to name.

Reading a signalfd needs no C: each read returns whole 128-byte
``struct signalfd_siginfo`` records, unpacked by :func:`unpack`.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any, Callable, NamedTuple

from .._backend import BACKEND

__all__ = ["SIGINFO_SIZE", "SigInfo", "signalfd", "sigqueue", "unpack"]

#: Bytes of one ``struct signalfd_siginfo``.
SIGINFO_SIZE = 128
# ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid, ssi_fd, ssi_tid, ssi_band,
# ssi_overrun, ssi_trapno, ssi_status, ssi_int (then ssi_ptr, ...: not used).
_SIGINFO = struct.Struct("=IiiIIiIIIIii")
#: si_code of a signal sent by sigqueue(3).
SI_QUEUE = -1


class SigInfo(NamedTuple):
    """One signal as read from a signalfd: number, payload, sender, and how it was sent."""

    signo: int
    value: int  # ssi_int: the payload of sigqueue, 0 for kill()
    pid: int
    uid: int
    code: int  # SI_QUEUE (-1) for sigqueue, SI_USER (0) for kill, > 0 from the kernel


def unpack(data: bytes) -> list[SigInfo]:
    """The signals in ``data``, what one read of a signalfd returned (whole records)."""
    out = []
    for off in range(0, len(data) - SIGINFO_SIZE + 1, SIGINFO_SIZE):
        f = _SIGINFO.unpack_from(data, off)
        out.append(SigInfo(signo=f[0], value=f[11], pid=f[3], uid=f[4], code=f[2]))
    return out


def _check(ret: int) -> int:
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


def _native() -> tuple[Callable[[int, int, int], int], Callable[[list[int]], int]]:
    from ..backends._native import ffi, lib

    def queue(pid: int, signo: int, value: int) -> int:
        return int(lib.fi_sigqueue(pid, signo, value))

    def sfd(signos: list[int]) -> int:
        return int(lib.fi_signalfd(ffi.new("int[]", signos), len(signos)))

    return queue, sfd


def _ctypes() -> tuple[Callable[[int, int, int], int], Callable[[list[int]], int]]:
    import ctypes
    import ctypes.util

    libc: Any = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    libc.sigqueue.restype = ctypes.c_int
    libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.signalfd.restype = ctypes.c_int
    libc.sigemptyset.argtypes = [ctypes.c_void_p]
    libc.sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]
    sfd_flags = os.O_NONBLOCK | os.O_CLOEXEC  # SFD_NONBLOCK, SFD_CLOEXEC
    _BIG64 = sys.byteorder == "big" and ctypes.sizeof(ctypes.c_void_p) == 8

    def queue(pid: int, signo: int, value: int) -> int:
        # union sigval passed by value: on the 64-bit Linux ABIs it travels like
        # a pointer (ctypes cannot pass a union by value); sival_int is the
        # union's first 4 bytes, so the low half of the word on little-endian
        # machines and the high half on big-endian ones.
        word = ctypes.c_void_p((value & 0xFFFFFFFF) << (32 if _BIG64 else 0))
        if libc.sigqueue(pid, signo, word) < 0:
            return -ctypes.get_errno()
        return 0

    def sfd(signos: list[int]) -> int:
        mask = ctypes.create_string_buffer(128)  # sigset_t is 128 bytes in glibc
        libc.sigemptyset(mask)
        for signo in signos:
            if libc.sigaddset(mask, signo) < 0:
                return -ctypes.get_errno()
        fd = libc.signalfd(-1, mask, sfd_flags)
        return -ctypes.get_errno() if fd < 0 else int(fd)

    return queue, sfd


_queue, _signalfd = _native() if BACKEND == "native" else _ctypes()


def sigqueue(pid: int, signo: int, value: int) -> None:
    """Send ``signo`` with the 32-bit int ``value`` to ``pid``. Raises OSError (errno as the kernel's)."""
    _check(_queue(pid, signo, value))


def signalfd(signos: list[int]) -> int:
    """A new non-blocking, close-on-exec signalfd for ``signos``; the caller owns it. Raises OSError."""
    return _check(_signalfd(signos))
