"""fastipc: fast inter-process communication on one Linux machine."""

from ._backend import BACKEND
from ._version import __version__
from .channel import Channel, Listener, listen
from .errors import Closed, FastIPCError, IncompatibleSegment, MessageTooLarge, Timeout
from .ring import Ring

__all__ = [
    "BACKEND",
    "Channel",
    "Closed",
    "FastIPCError",
    "IncompatibleSegment",
    "Listener",
    "MessageTooLarge",
    "Ring",
    "Timeout",
    "__version__",
    "listen",
]
