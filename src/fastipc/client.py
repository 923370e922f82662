"""connect(): a client for any endpoint URL, the counterpart of :func:`fastipc.serve`."""

from __future__ import annotations

from ._registry import FRAMINGS, schemes, transport
from .endpoints import parse
from .framing import DEFAULT_MAX_MESSAGE, validate_max_message
from .transports.base import Client

__all__ = ["Client", "connect"]


def connect(
    url: str,
    *,
    framing: str = "length",
    timeout: float | None = None,
    max_message: int | None = None,
) -> Client:
    """Connect to the endpoint ``url`` and return its :class:`Client`.

    ``url``: ``tcp://HOST:PORT``, ``unix://PATH``, ``udp://HOST:PORT``,
    ``unixgram://PATH``, ``mq:///name`` (created or opened, options
    ``maxmsg``, ``msgsize``, ``mode``, ``reply``), ``fifo:///path`` (its
    reader must be there), ``fd://N`` (an inherited fd, taken over),
    ``signal://PID?sig=USR1`` (``send(42)`` queues the signal with that int). ``framing`` applies to stream transports:
    ``"length"`` (default; docs/architecture.md, "Wire format") or
    ``"raw"`` (classic C peers).
    ``timeout`` (seconds) bounds connecting. ``max_message`` (bytes,
    default 64 MiB or the URL's ``?max_message=``) is the largest message
    received.

    Raises ValueError for a bad URL or argument, :class:`~fastipc.Timeout`,
    OSError subclasses naming the endpoint (ConnectionRefusedError when
    nobody listens, FileNotFoundError for a missing socket file).
    """
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be 'raw' or 'length', got {framing!r}")
    ep = parse(url, schemes=schemes())
    if max_message is None:
        max_message = DEFAULT_MAX_MESSAGE if ep.max_message is None else ep.max_message
    kind = transport(ep.scheme)
    assert kind is not None  # parse() accepted only registered schemes
    return kind.open_client(ep, framing, timeout, validate_max_message(max_message))
