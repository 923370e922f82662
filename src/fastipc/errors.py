"""The fastipc exception hierarchy; every error fastipc raises on purpose is here or an OSError."""

from __future__ import annotations

__all__ = [
    "Closed",
    "FastIPCError",
    "IncompatibleSegment",
    "MessageTooLarge",
    "ProtocolError",
    "Timeout",
]

import errno as _errno


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


class MessageTooLarge(FastIPCError, ValueError):
    """A message is larger than the ring, queue, frame limit or caller's buffer can hold."""


class Closed(FastIPCError, EOFError):
    """The other side shut the ring or connection down; no more messages will come."""

    def __init__(self, message: str = "closed", *, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class IncompatibleSegment(FastIPCError):
    """A shared-memory segment is not a fastipc ring of this layout, or is corrupted."""


class ProtocolError(FastIPCError, OSError):
    """A peer broke the framing: bad flag bits, missing or hoarded fds, a bad hand-off area.

    An ``OSError`` with ``errno`` EPROTO (EBADMSG for a hand-off descriptor
    outside the area); the message says what was wrong and, where it fits,
    what to check. The connection it came on is closed.
    """

    def __init__(self, message: str, name: str = "", code: int = _errno.EPROTO) -> None:
        super().__init__(code, message, name) if name else super().__init__(code, message)
