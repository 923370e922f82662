"""Argument checks and time, shared by the public classes, both backends and the transports.

Ground floor: imports nothing of fastipc. Every check raises TypeError or
ValueError with a message naming the argument and what would be accepted.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from typing import Any, Union

__all__ = [
    "FORKS",
    "MAX_BATCH_COUNT",
    "MAX_CAPACITY",
    "MAX_FDS",
    "FdLike",
    "LentBuffer",
    "check_buffer",
    "deadline",
    "inherited_block",
    "release_view",
    "time_left",
    "timeout_ns",
    "validate_capacity",
    "validate_count",
    "validate_fds",
    "validate_max_count",
    "validate_mode",
    "validate_owners",
]

#: The largest ring capacity accepted (bytes): a record's size, padding included, is 32-bit.
MAX_CAPACITY = (1 << 32) - 128
#: Most fds one message may carry (the kernel's SCM_MAX_FD).
MAX_FDS = 253

#: Something that names an fd: an int or an object with ``fileno()``.
FdLike = Union[int, Any]

_monotonic_ns = time.monotonic_ns

#: How many fork()s lie between this process and the one that imported fastipc
#: (one item, bumped in each child): a view block compares it at its end with
#: its value at the start, to tell a forked child's copy of the block.
FORKS = [0]


def _count_fork() -> None:
    FORKS[0] += 1


os.register_at_fork(after_in_child=_count_fork)


def inherited_block(block: str) -> RuntimeError:
    """The error of a forked child leaving its copy of a parent's view block."""
    return RuntimeError(
        f"a {block} block open when fork() was called is the parent's: the child's copy "
        "of it publishes or consumes nothing (finish the block before forking)"
    )


_INF = float("inf")
#: Whole seconds above this take the checked path below (int * 1e9 stays exact here).
_INT_FAST_MAX = 1 << 32
#: Timeouts of this many ns or more wait forever (a deadline must fit an int64).
_FOREVER_NS = 1 << 62
_FLOAT_FAST_MAX = 1e9  # seconds: well under _FOREVER_NS


def timeout_ns(timeout: float | None) -> int:
    """Turn a timeout in seconds (None: forever) into nanoseconds (-1: forever)."""
    if timeout is None:
        return -1
    # Every non-blocking call (timeout=0, the asyncio layer's every take)
    # passes here: exact float and int first, a few comparisons each (NaN
    # fails the float test); anything else, and every error, below.
    kind = type(timeout)
    if kind is float:
        if 0.0 <= timeout < _FLOAT_FAST_MAX:
            return int(timeout * 1e9)
    elif kind is int and 0 <= timeout <= _INT_FAST_MAX:
        return timeout * 1_000_000_000  # type: ignore[return-value]
    return _timeout_ns_checked(timeout)


def _timeout_ns_checked(timeout: object) -> int:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if timeout < 0 or (isinstance(timeout, float) and math.isnan(timeout)):
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    # Integer arithmetic for an int (10**400 has no float); past ~146 years
    # (inf included) a deadline would not fit the C calls' int64: forever.
    ns = timeout * 1_000_000_000 if isinstance(timeout, int) else timeout * 1e9
    return -1 if ns >= _FOREVER_NS else int(ns)


def deadline(timeout: float | None) -> int | None:
    """The CLOCK_MONOTONIC deadline (ns) of ``timeout`` seconds from now; None: never."""
    tns = timeout_ns(timeout)
    return None if tns < 0 else _monotonic_ns() + tns


def time_left(until: int | None) -> float | None:
    """Seconds left before the deadline ``until`` (ns, from :func:`deadline`); None: no deadline."""
    if until is None:
        return None
    return max(0.0, (until - _monotonic_ns()) / 1e9)


def validate_capacity(capacity: object) -> int:
    """Return ``capacity`` (payload bytes) if it is an int in [1, MAX_CAPACITY]."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int (bytes), not {type(capacity).__name__}")
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY} bytes, got {capacity}")
    return capacity


def validate_mode(mode: object) -> int:
    """Return ``mode`` if it is a permission mask such as ``0o600``."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be a permission mask between 0 and 0o777, got {mode!r}")
    return mode


def validate_owners(owners: object) -> frozenset[int] | None:
    """``owners`` as a frozenset of uids (None: the default), or TypeError."""
    if owners is None:
        return None
    if not isinstance(owners, Iterable):
        raise TypeError("owners must be an iterable of uids (ints) or None")
    uids: frozenset[object] = frozenset(owners)
    out: set[int] = set()
    for u in uids:
        if isinstance(u, bool) or not isinstance(u, int) or u < 0:
            raise TypeError(f"owners must be uids (ints >= 0), got {u!r}")
        out.add(u)
    return frozenset(out)


def check_buffer(data: object, what: str = "message") -> memoryview:
    """A flat byte view of ``data``, or TypeError naming what was wrong."""
    if isinstance(data, str):
        raise TypeError(f"{what} must be a bytes-like object, not str (encode it first)")
    try:
        mv = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object, not {type(data).__name__}") from None
    if not mv.c_contiguous:
        raise TypeError(
            f"{what} must be a C-contiguous buffer, and this {type(data).__name__} is not "
            "(a sliced or transposed array: pass numpy.ascontiguousarray(a), or send_obj(a))"
        )
    if mv.format != "B" or mv.ndim != 1:
        # Also for one-byte formats ('b', 'c'): slice assignment between
        # views of different formats raises, so every view is made 'B'.
        mv = mv.cast("B")
    return mv


class LentBuffer(bytearray):
    """A bytearray of the handle's, lent as a read-only view (a record joined across the
    ring's end, a long frame). Hashable by identity, so that its view hashes as one of
    shared memory or of bytes does: a memoryview's hash first hashes what it views."""

    __slots__ = ()
    __hash__ = object.__hash__  # type: ignore[assignment]


def release_view(view: memoryview) -> bool:
    """Release a view lent by a ``with`` block; False if the caller still exports
    it (e.g. to numpy), which leaves it alive: it must not be used past the block."""
    try:
        view.release()
    except BufferError:
        return False
    return True


def validate_fds(fds: Iterable[FdLike]) -> list[int]:
    """The fd numbers of ``fds`` (ints or objects with ``fileno()``), at most MAX_FDS."""
    if isinstance(fds, (str, bytes)):
        raise TypeError("fds must be a sequence of ints or objects with fileno()")
    out: list[int] = []
    for f in fds:
        if isinstance(f, bool):
            raise TypeError("fds: bool is not an fd")
        fd = f if isinstance(f, int) else getattr(f, "fileno", None)
        if callable(fd):
            fd = fd()
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"fds: {f!r} is not an int or an object with fileno()")
        if fd < 0:
            raise ValueError(f"fds: {fd} is not a valid fd")
        out.append(fd)
    if len(out) > MAX_FDS:
        raise ValueError(f"at most {MAX_FDS} fds per message, got {len(out)}")
    return out


def validate_count(value: object, what: str, least: int) -> int:
    """``value`` if it is an int >= ``least``; TypeError for another type, ValueError if smaller."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < least:
        raise ValueError(f"{what} must be >= {least}, got {value}")
    return value


#: More messages than a batch call's C side counts in (size_t, and far more
#: than a batch buffer holds): a larger max_count is taken as this.
MAX_BATCH_COUNT = 1 << 31


def validate_max_count(max_count: object) -> int:
    """``max_count`` (how many messages a batch call may return) if it is an int >= 1,
    at most MAX_BATCH_COUNT (a larger one means as many as come)."""
    return min(validate_count(max_count, "max_count", 1), MAX_BATCH_COUNT)
