"""Blocking C calls from Python: deadlines, time slices and signals, shared by the native backends."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from .._checks import deadline

__all__ = ["SLICE_NS", "deadline", "wait"]

#: Longest single wait in C (ns). C cannot run Python's signal handlers, so a
#: blocking call comes back to Python this often (and at once on EINTR) and a
#: Ctrl-C handler runs between slices.
SLICE_NS = 200_000_000

_ETIMEDOUT = -errno.ETIMEDOUT
_EINTR = -errno.EINTR
_monotonic_ns = time.monotonic_ns


def wait(call: Callable[[int], int], until: int | None) -> int:
    """Run C ``call(slice_ns)`` until it stops timing out or ``until`` (ns) passes.

    Returns what the call returned, or -ETIMEDOUT once the deadline passed.
    """
    if until is None:
        while True:
            rc = call(SLICE_NS)
            if rc != _ETIMEDOUT and rc != _EINTR:
                return rc
    while True:
        remaining = max(0, until - _monotonic_ns())
        rc = call(min(remaining, SLICE_NS))
        if rc != _ETIMEDOUT and rc != _EINTR:
            return rc
        if remaining == 0 or _monotonic_ns() >= until:
            return _ETIMEDOUT
