"""The transports: for each scheme, the source a server watches and the client that talks to it.

=========  =========================  ================================
scheme     server source              client
=========  =========================  ================================
tcp, unix  stream.StreamListener      stream.StreamClient
udp,       datagram.DatagramSource    datagram.DatagramClient
unixgram
mq         mqueue.QueueSource         mqueue.QueueClient
fifo       fifo.FifoSource            fifo.FifoClient
fd         pipe.FdSource              pipe.FdClient
signal     signals.SignalSource       signals.SignalClient
=========  =========================  ================================

Each module registers its schemes in ``fastipc._registry`` when imported,
with what the transport can do (answer, close one peer, take a framing);
the registry imports a module the first time its scheme is looked up. The server core looks them up
there and never imports a transport (docs/architecture.md,
"Servers, transports, clients").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._registry import transport
from ..endpoints import Endpoint

if TYPE_CHECKING:
    from ..server import Server, Source
    from .base import Client

__all__ = ["open_client", "open_source"]


def open_source(ep: Endpoint, server: Server) -> Source:
    """Bind ``ep`` for ``server``: the source its loop will watch."""
    kind = transport(ep.scheme)
    if kind is None:
        raise ValueError(f"endpoint {ep.url!r}: scheme {ep.scheme!r} cannot be served")
    return kind.open_source(ep, server)


def open_client(ep: Endpoint, framing: str, timeout: float | None, max_message: int) -> Client:
    """Connect to ``ep``: the client of its transport."""
    kind = transport(ep.scheme)
    if kind is None:
        raise ValueError(f"endpoint {ep.url!r}: scheme {ep.scheme!r} has no client")
    return kind.open_client(ep, framing, timeout, max_message)
