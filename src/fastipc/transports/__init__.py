"""The transports: for each scheme, the source a server watches and the client that talks to it.

=========  =========================  ================================
scheme     server source              client
=========  =========================  ================================
tcp, unix  stream.StreamListener      stream.StreamClient
udp,       datagram.DatagramSource    datagram.DatagramClient
unixgram
mq         mqueue.QueueSource         mqueue.QueueClient
fifo       fifo.FifoSource            fifo.FifoClient
=========  =========================  ================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..endpoints import Endpoint

if TYPE_CHECKING:
    from ..server import Server, Source
    from .base import Client

__all__ = ["open_client", "open_source"]


def open_source(ep: Endpoint, server: Server) -> Source:
    """Bind ``ep`` for ``server``: the source its loop will watch."""
    if ep.scheme in ("tcp", "unix"):
        from .stream import StreamListener

        return StreamListener(ep, server)
    if ep.scheme in ("udp", "unixgram"):
        from .datagram import DatagramSource

        return DatagramSource(ep, server)
    if ep.scheme == "mq":
        from .mqueue import QueueSource

        return QueueSource(ep, server)
    if ep.scheme == "fifo":
        from .fifo import FifoSource

        return FifoSource(ep, server)
    raise ValueError(f"endpoint {ep.url!r}: scheme {ep.scheme!r} cannot be served")


def open_client(ep: Endpoint, framing: str, timeout: float | None, max_message: int) -> Client:
    """Connect to ``ep``: the client of its transport."""
    if ep.scheme in ("tcp", "unix"):
        from .stream import StreamClient

        return StreamClient(ep, framing, timeout, max_message)
    if ep.scheme in ("udp", "unixgram"):
        from .datagram import DatagramClient

        return DatagramClient(ep, timeout, max_message)
    if ep.scheme == "mq":
        from .mqueue import QueueClient

        return QueueClient(ep, timeout)
    if ep.scheme == "fifo":
        from .fifo import FifoClient

        return FifoClient(ep, timeout, max_message)
    raise ValueError(f"endpoint {ep.url!r}: scheme {ep.scheme!r} has no client")
