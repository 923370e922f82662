"""fastipc: fast inter-process communication on one Linux machine."""

from ._backend import BACKEND
from ._version import __version__
from .bridges import Bridge, BridgeStats, bridge
from .broadcast import Broadcast, Subscriber
from .channel import Channel, Listener, listen
from .client import Client, connect
from .errors import (
    Closed,
    Empty,
    FastIPCError,
    Full,
    IncompatibleSegment,
    Lagged,
    MessageTooLarge,
    ProtocolError,
    Timeout,
)
from .ring import Ring
from .server import Peer, Server, serve
from .waiting import wait

__all__ = [
    "BACKEND",
    "Bridge",
    "BridgeStats",
    "Broadcast",
    "Channel",
    "Client",
    "Closed",
    "Empty",
    "FastIPCError",
    "Full",
    "IncompatibleSegment",
    "Lagged",
    "Listener",
    "MessageTooLarge",
    "Peer",
    "ProtocolError",
    "Ring",
    "Server",
    "Subscriber",
    "Timeout",
    "__version__",
    "bridge",
    "connect",
    "listen",
    "serve",
    "wait",
]
