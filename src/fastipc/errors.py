"""The fastipc exception hierarchy; every error fastipc raises on purpose is here or an OSError."""

from __future__ import annotations

__all__ = [
    "Closed",
    "Empty",
    "FastIPCError",
    "Full",
    "IncompatibleSegment",
    "Lagged",
    "MessageTooLarge",
    "ProtocolError",
    "Timeout",
    "broadcast_error",
    "channel_error",
    "channel_keeps_open",
    "ring_error",
]

import errno as _errno
import os as _os
import queue as _queue


class FastIPCError(Exception):
    """Base class of the errors fastipc defines itself (OS failures stay ``OSError``)."""


class Timeout(FastIPCError, TimeoutError):
    """A blocking call's ``timeout`` (seconds) passed before it could complete.

    ``sent`` is how many messages of a batch went out before the deadline
    (0 for single-message calls).
    """

    def __init__(self, message: str = "timed out", *, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class Empty(Timeout, _queue.Empty):
    """A receive timed out: no message came within ``timeout`` (seconds).

    Also a :class:`queue.Empty`, so code written for ``queue.Queue`` or
    ``multiprocessing.Queue`` (``except queue.Empty``) works unchanged.
    """


class Full(Timeout, _queue.Full):
    """A send timed out: no room (ring) or socket buffer space came within ``timeout`` (seconds).

    Also a :class:`queue.Full`. ``sent`` counts the messages of a batch that
    went out before the deadline.
    """


class MessageTooLarge(FastIPCError, ValueError):
    """A message is larger than the ring, queue, frame limit or caller's buffer can hold."""


class Closed(FastIPCError, EOFError):
    """The other side shut the ring or connection down; no more messages will come."""

    def __init__(self, message: str = "closed", *, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class IncompatibleSegment(FastIPCError):
    """A shared-memory segment is not a fastipc ring of this layout, or is corrupted."""


class Lagged(FastIPCError):
    """A broadcast subscriber fell a full ring behind and lost messages to ``policy="overwrite"``.

    ``missed`` is how many messages it lost since its previous receive. Raised
    once, by the receive that notices; the next receive returns the oldest
    message the ring still keeps. No message is ever torn or repeated.
    """

    def __init__(self, message: str = "lagged", *, missed: int = 0) -> None:
        super().__init__(message)
        self.missed = missed


class ProtocolError(FastIPCError, OSError):
    """A peer broke the framing: bad flag bits, missing or hoarded fds, a bad hand-off area.

    An ``OSError`` with ``errno`` EPROTO (EBADMSG for a hand-off descriptor
    outside the area); the message says what was wrong and, where it fits,
    what to check. The connection it came on is closed.
    """

    def __init__(self, message: str, name: str = "", code: int = _errno.EPROTO) -> None:
        super().__init__(code, message, name) if name else super().__init__(code, message)


# ---- the one place errno becomes an exception --------------------------
# The C core returns -errno; the python backends report the same codes, so
# both backends raise the same exception with the same message for the same
# condition. Each object kind has its table: EPIPE on a ring means "shut
# down", on a channel "the peer closed".


def os_error(exc: OSError, where: str) -> OSError:
    """``exc`` again, naming ``where`` (a path, ``@name`` or URL) instead of what the kernel saw.

    How fastipc's endpoint code (sockets, socket files, FIFOs) turns an errno
    into an exception:
    ``OSError(errno, strerror, where)``, which CPython makes the matching
    subclass (FileNotFoundError, ConnectionRefusedError, ...). An OSError
    without an errno keeps its text, prefixed with ``where``.
    """
    if exc.errno is None:
        return OSError(f"{where}: {exc}")
    return OSError(exc.errno, exc.strerror, where)


def timed_out(what: str, sending: bool | None, sent: int = 0) -> Timeout:
    """The Timeout of a call on ``what`` (e.g. ``ring 'jobs'``): :class:`Full` for a send
    (``sending`` True), :class:`Empty` for a receive (False), plain otherwise."""
    if sending is None:
        return Timeout(f"{what}: timed out", sent=sent)
    if sending:
        tail = f" ({sent} of the batch sent)" if sent else ""
        return Full(f"{what}: no room for the message within the timeout{tail}", sent=sent)
    return Empty(f"{what}: no message within the timeout")


def ring_error(code: int, name: str, path: str, sending: bool | None = None) -> Exception:
    """The exception for errno ``code`` (positive) from a call on ring ``name`` (segment ``path``).

    ``sending``: the call was a send (a timeout is then :class:`Full`), a
    receive (False: :class:`Empty`) or neither (None).
    """
    if code in (_errno.ETIMEDOUT, _errno.EAGAIN):
        return timed_out(f"ring {name!r}", sending)
    if code == _errno.EPIPE:
        return Closed(f"ring {name!r} was shut down")
    if code == _errno.EBADMSG:
        return IncompatibleSegment(f"{path}: corrupted (an index or length is out of bounds)")
    if code == _errno.EMSGSIZE:
        return MessageTooLarge(f"ring {name!r}: message too large")
    if code == _errno.EBADF:
        return ValueError(f"ring {name!r}: operation on a closed handle")
    if code == _errno.EDEADLK:
        return RuntimeError(
            f"ring {name!r}: a reserve() or recv_view() block is already open on this handle "
            "(in this thread, or in another: give each thread its own Ring.open())"
        )
    return OSError(code, _os.strerror(code), path)


def broadcast_error(
    code: int, name: str, path: str, sending: bool | None = None, slots: int = 0
) -> Exception:
    """The exception for errno ``code`` (positive) from a call on broadcast ring ``name``.

    As :func:`ring_error` (``sending``: a publish times out with :class:`Full`,
    a receive with :class:`Empty`), plus EUSERS: every one of the ``slots``
    subscriber slots is taken by a live subscriber.
    """
    if code == _errno.EUSERS:
        return OSError(
            code,
            f"broadcast ring {name!r}: all {slots} subscriber slots are taken by live "
            "subscribers; create it with subscribers=... set higher, or close a subscriber",
            path,
        )
    if code in (_errno.ETIMEDOUT, _errno.EAGAIN):
        return timed_out(f"broadcast ring {name!r}", sending)
    if code == _errno.EPIPE:
        return Closed(f"broadcast ring {name!r} was shut down")
    if code == _errno.EBADF:
        return ValueError(f"broadcast ring {name!r} is closed")
    if code == _errno.EMSGSIZE:
        return MessageTooLarge(f"broadcast ring {name!r}: message too large")
    if code == _errno.EDEADLK:
        return RuntimeError(
            f"broadcast ring {name!r}: a reserve() or recv_view() block is already open on "
            "this handle (in this thread, or in another: give each thread its own handle, "
            "Broadcast.open() or Broadcast.subscribe())"
        )
    return ring_error(code, name, path, sending)


_KEEPS_OPEN = frozenset(
    (_errno.ETIMEDOUT, _errno.EAGAIN, _errno.EPIPE, _errno.ENOBUFS, _errno.EMSGSIZE)
)


def channel_keeps_open(code: int, closed: bool) -> bool:
    """False if errno ``code`` leaves a channel's byte stream unusable, so it must be closed."""
    return code in _KEEPS_OPEN or (code == _errno.EBADF and closed)


def channel_error(
    code: int,
    name: str,
    *,
    closed: bool = False,
    max_message: int = 0,
    length: int = 0,
    detail: str = "",
    hint: str = "",
    sending: bool = False,
) -> Exception:
    """The exception for errno ``code`` (positive) on channel ``name``.

    ``closed``: the channel was closed before the call failed (EBADF then
    means "used after close"); ``length``: the announced length of the
    frame at fault; ``detail``: what exactly was wrong; ``hint``: what to
    check, appended to protocol errors; ``sending``: a send failed (ENOBUFS
    is then the kernel's "no buffer space", not a truncated receive).
    """
    if code in (_errno.ETIMEDOUT, _errno.EAGAIN):
        return timed_out(f"channel {name}", sending)
    if code == _errno.EPIPE:
        return Closed(f"channel {name}: the peer closed the connection")
    if code == _errno.EBADF and closed:
        return ValueError(f"operation on a closed channel ({name})")
    if code == _errno.ENOBUFS and not sending:
        return OSError(
            code,
            "MSG_CTRUNC: a message carried more fds than fit (the ones that arrived were "
            "closed; the message was dropped)",
            name,
        )
    if code == _errno.EMSGSIZE:
        return MessageTooLarge(f"channel {name}: {detail or 'message too large'}")
    # The rest leave the byte stream unusable: the caller has closed the channel.
    if code == _errno.ENODATA:
        return Closed(
            f"channel {name}: the peer closed the connection in the middle of a message "
            "(the partial message was dropped); channel closed"
        )
    if code == _errno.EFBIG:
        return MessageTooLarge(
            f"channel {name}: the peer announced a message of {length} bytes, over "
            f"max_message={max_message}{hint}; channel closed"
        )
    if code == _errno.EPROTO:
        what = detail or (
            "bad frame flags, fds attached where no message starts or more than one "
            "message may carry, or a hand-off area that is not a sealed memfd"
        )
        return ProtocolError(f"protocol error: {what}{hint}; channel closed", name)
    if code == _errno.EBADMSG:
        return ProtocolError(
            "protocol error: a hand-off descriptor points outside the shared area; channel closed",
            name,
            _errno.EBADMSG,
        )
    return OSError(code, _os.strerror(code), name)
