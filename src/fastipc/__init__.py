"""fastipc: fast inter-process communication on one Linux machine."""

from ._backend import BACKEND
from ._version import __version__
from .errors import Closed, FastIPCError, IncompatibleSegment, MessageTooLarge, Timeout
from .ring import Ring

__all__ = [
    "BACKEND",
    "Closed",
    "FastIPCError",
    "IncompatibleSegment",
    "MessageTooLarge",
    "Ring",
    "Timeout",
    "__version__",
]
