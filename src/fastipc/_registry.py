"""The transport registry: each scheme's server source, client and rules, as its transport declares them.

The server core (:func:`fastipc.serve`) and :func:`fastipc.connect` look a
scheme up here; they import no transport. Each module of
``fastipc.transports`` calls :func:`register` when it is imported; this
module knows only which module serves which scheme (``_HOMES``) and imports
it the first time the scheme is looked up, so ``import fastipc`` loads no
transport (nor posix_ipc): about 70 M instructions, a sixth of the import,
saved for users of Ring and Channel alone. The command line asks the same
records what a transport can do (answer its clients, close one of them,
take a framing) instead of listing schemes itself.

Sits below both ``server`` and ``client``: it imports nothing of fastipc at
module level, and a transport module only by name, on first lookup
(docs/architecture.md, "Servers, transports, clients").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoints import Endpoint
    from .server import Server, Source
    from .transports.base import Client

__all__ = ["FRAMINGS", "Transport", "register", "schemes", "transport"]

#: Stream framings: "raw" (one read is one message) and "length"
#: (docs/architecture.md, "Wire format").
FRAMINGS = ("raw", "length")

#: ``open_source(ep, server)``: bind ``ep`` and return the source the server's loop watches.
OpenSource = Callable[["Endpoint", "Server"], "Source"]
#: ``open_client(ep, framing, timeout, max_message)``: connect to ``ep``.
OpenClient = Callable[["Endpoint", str, "float | None", int], "Client"]


@dataclass(frozen=True)
class Transport:
    """One scheme as a transport declares it: how to serve it, how to connect, what it can do.

    ``one_way``: data only flows from clients to the server (fifo): nothing
    can be answered or received by a client. ``reply_option``: the URL
    option that must name the way back before a server can answer (mq:
    ``"reply"``, the reply queue), else None. ``receive_by_connecting``: a
    receiver (``fastipc recv``) connects as a client and reads what the
    other side sends (tcp, unix, mq); False: it binds the endpoint and
    serves it, since senders come to it (udp, unixgram, fifo).
    ``closes_peer``: :meth:`Peer.close <fastipc.Peer.close>` ends that one
    client's connection (tcp, unix); elsewhere a peer is only the sender of
    a message. ``framed``: the ``framing`` argument ("raw" or "length")
    applies (stream transports: tcp, unix).
    """

    scheme: str
    open_source: OpenSource
    open_client: OpenClient
    one_way: bool = False
    reply_option: str | None = None
    receive_by_connecting: bool = True
    closes_peer: bool = False
    framed: bool = False

    def can_answer(self, ep: Endpoint) -> bool:
        """Whether a server on ``ep`` can send replies to its peers (and a client receive them)."""
        if self.one_way:
            return False
        return self.reply_option is None or ep.options.get(self.reply_option) is not None


_TRANSPORTS: dict[str, Transport] = {}

#: The module of ``fastipc.transports`` that registers each scheme, in the
#: order schemes are listed to users.
_HOMES = {
    "tcp": "stream",
    "unix": "stream",
    "udp": "datagram",
    "unixgram": "datagram",
    "mq": "mqueue",
    "fifo": "fifo",
    "fd": "pipe",
    "signal": "signals",
}


def register(transport: Transport) -> Transport:
    """Make ``transport`` the one serving its scheme; return it. Called by each transport at import.

    Raises ValueError if another transport already has the scheme.
    """
    held = _TRANSPORTS.get(transport.scheme)
    if held is not None and held != transport:
        raise ValueError(f"scheme {transport.scheme!r} already has a transport: {held!r}")
    _TRANSPORTS[transport.scheme] = transport
    return transport


def transport(scheme: str) -> Transport | None:
    """The transport registered for ``scheme``, or None (e.g. ``shm``: a Ring, not a transport).

    Imports the scheme's module the first time (it registers itself).
    """
    found = _TRANSPORTS.get(scheme)
    if found is None and scheme in _HOMES:
        importlib.import_module(f"fastipc.transports.{_HOMES[scheme]}")
        found = _TRANSPORTS.get(scheme)
    return found


def schemes() -> tuple[str, ...]:
    """The schemes :func:`fastipc.serve` and :func:`fastipc.connect` accept, in the order listed to users."""
    return tuple(_HOMES) + tuple(s for s in _TRANSPORTS if s not in _HOMES)
