"""Bridges to engines beyond one machine: :func:`bridge` forwards between a local endpoint and NATS.

``fastipc.bridge("shm://ticks", "nats://127.0.0.1:4222/ticks")`` reads the
ring and publishes each message on the subject; swapped, it subscribes and
sends what arrives into the ring. One bridge runs one nats-py connection on
an asyncio event loop in its own thread (no thread per message); its local
side is fastipc's awaitable Ring and Channel, or a message queue's pollable
descriptor.

This module imports neither asyncio nor nats-py: ``import fastipc`` stays
light and works without the ``nats`` extra; :meth:`Bridge.start` loads them.
"""

from __future__ import annotations

import atexit
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any, TypeVar

from .._checks import timeout_ns
from ..endpoints import Endpoint, parse

__all__ = ["Bridge", "BridgeStats", "bridge"]

_BridgeT = TypeVar("_BridgeT", bound="Bridge")

#: Local schemes a bridge can read or write (the table lives in ._local; this
#: copy lets the constructor refuse a URL without importing asyncio).
_LOCAL = ("shm", "bcast", "unix", "tcp", "mq")
_ANSWERING = ("unix", "tcp")


@dataclass(frozen=True)
class BridgeStats:
    """A snapshot of what a bridge did, in messages (see :class:`Bridge` for each outcome).

    Once the bridge has stopped, ``received == forwarded + too_large +
    unconfirmed + undelivered`` (messages from NATS still queued in
    nats-py at close count as received and undelivered).
    """

    received: int
    forwarded: int
    too_large: int
    unconfirmed: int
    undelivered: int
    disconnects: int
    reconnects: int
    connected: bool
    max_payload: int
    last_error: str | None

    def __str__(self) -> str:
        line = (
            f"received {self.received}, forwarded {self.forwarded}, too large {self.too_large}, "
            f"unconfirmed {self.unconfirmed}, undelivered {self.undelivered}, "
            f"disconnects {self.disconnects}, reconnects {self.reconnects}"
        )
        return line + (f"; last error: {self.last_error}" if self.last_error else "")


class Bridge:
    """Forwards messages between a local endpoint and a NATS subject, in one direction.

    ``src`` and ``dst`` are endpoint URLs; exactly one is ``nats://HOST:PORT/subject``
    (port 4222 when left out), the other local:

    * ``shm://NAME``: a Ring, opened (or created when the URL gives
      ``?capacity=BYTES`` and none exists, then removed when the bridge
      closes, unless messages still wait in it: then it is kept, and logged);
    * ``bcast://NAME``: a broadcast ring (:class:`fastipc.Broadcast`). As a
      source the bridge is one more subscriber (joining at the newest
      message; a lag under ``policy="overwrite"`` is logged and it goes on);
      as a destination it publishes (a full ``policy="block"`` ring is
      retried every millisecond), creating the ring as ``shm://`` does;
    * ``mq:///name``: a POSIX message queue (created if missing, then removed
      at close as a ring is: kept while messages wait in it); priorities
      are not carried;
    * ``unix://PATH``, ``tcp://HOST:PORT``: Channels (length framing). As a
      source the bridge *listens* there and every client's messages are
      forwarded (out of fds, it stops accepting for a moment and tries
      again every 0.1 s; a listener that fails otherwise stops the bridge
      with that :attr:`error`); as a destination it *connects* to a server
      there (and reconnects, on the next message, after a failure or once
      the server closed the connection: ``idle_timeout``, a restart; a send
      that fails is tried once more on a new connection).

    Local -> NATS: each message is published on the subject. NATS -> local:
    the bridge subscribes (``nats://.../subject?queue=workers`` joins queue
    group ``workers``: each message goes to one member, so several bridges
    share the work), wildcards allowed.

    ``request=True`` maps request/reply onto Channel round trips: NATS ->
    ``unix://``/``tcp://``: each NATS request is sent to the Channel server and
    its reply published to the request's reply subject; ``unix://``/``tcp://``
    -> NATS: each message of a connected client is sent as a NATS request and
    the reply sent back to that client (a failed request closes that
    client's connection, so it sees :class:`~fastipc.Closed` rather than
    waiting). ``request_timeout`` (seconds) bounds each round trip. A
    Channel server's message that answers no request (a second reply) is
    dropped and logged before the next request is sent, so it never
    reaches the wrong requester.

    Limits and reliability:

    * A message over the NATS server's ``max_payload`` (from its INFO, 1 MiB
      by default) is refused, counted in ``stats.too_large`` and logged
      (logger ``fastipc.bridge``) with the limit; a message over the local
      endpoint's limit likewise. Nothing is split.
    * The connection reconnects forever (``max_reconnects=None``) every
      ``reconnect_wait`` seconds. While disconnected the bridge stops taking
      from the local endpoint, so messages wait there (a ring's capacity, a
      queue's ``maxmsg``, the sockets' buffers are the bound). A batch taken
      in the instant the connection broke is held by the bridge and
      published once it reconnects (closed before that, it is counted
      ``undelivered``). One published in that instant waits in nats-py's
      reconnect buffer (``buffer_bytes``; counted ``undelivered`` when full).
    * Nothing is ever sent twice. A published batch counts as ``forwarded``
      only once the server confirmed it (a PING/PONG on a connection that
      stayed up); one whose connection broke first is counted
      ``unconfirmed``: it may or may not have reached the server. Core NATS
      is at-most-once: a message the server accepted while no subscriber
      had interest (e.g. before the other side's bridge re-subscribed after
      a server restart), or lost in the server's own crash, is invisible to
      both bridges.
    * NATS -> local: messages wait in nats-py for the local endpoint up to
      ``pending_bytes``; past that nats-py drops them (a slow consumer),
      counted ``undelivered``.
    * :meth:`close` (or the end of a ``with`` block) stops taking, delivers
      what is in hand for up to ``close_timeout`` seconds, counts the rest,
      closes the connection and the local endpoint (removing the ring or
      queue the bridge created, unless messages still wait in it: then it
      stays, with them). A ring source that is shut down and drained ends
      the bridge.

    Raises (from the constructor) ValueError for a bad URL or pair, and
    (from :meth:`start`) ImportError without nats-py (``pip install
    'fastipc[nats]'``), ConnectionError when no NATS server answers within
    ``connect_timeout``, and what opening the local endpoint raises
    (FileNotFoundError for a missing ring, OSError(EADDRINUSE)...).
    """

    def __init__(
        self,
        src: str,
        dst: str,
        *,
        request: bool = False,
        request_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        max_reconnects: int | None = None,
        connect_timeout: float = 5.0,
        buffer_bytes: int = 8 << 20,
        pending_bytes: int = 64 << 20,
        close_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        a, b = parse(src), parse(dst)
        if (a.scheme == "nats") == (b.scheme == "nats"):
            raise ValueError(
                f"bridge {src!r} -> {dst!r}: one side must be a nats:// subject and the "
                "other a local endpoint (shm://, unix://, tcp://, mq://)"
            )
        self._to_nats = b.scheme == "nats"
        local, remote = (a, b) if self._to_nats else (b, a)
        if local.scheme not in _LOCAL:
            raise ValueError(
                f"bridge: {local.url!r}: a bridge's local side is one of "
                f"{', '.join(s + '://' for s in _LOCAL)}, not {local.scheme}://"
            )
        if self._to_nats and remote.wildcard:
            raise ValueError(f"bridge: {remote.url!r}: cannot publish to a wildcard subject")
        if self._to_nats and remote.queue is not None:
            raise ValueError(
                f"bridge: {remote.url!r}: ?queue= is for subscribing (a nats:// source)"
            )
        if request and local.scheme not in _ANSWERING:
            raise ValueError(
                f"bridge: request/reply needs a unix:// or tcp:// Channel, not {local.url!r}"
            )
        for key, value, low in (
            ("request_timeout", request_timeout, 0.0),
            ("reconnect_wait", reconnect_wait, 0.0),
            ("connect_timeout", connect_timeout, 0.0),
            ("close_timeout", close_timeout, 0.0),
        ):
            if not isinstance(value, (int, float)) or not low < value < math.inf:
                raise ValueError(f"bridge: {key} must be a number of seconds > 0, got {value!r}")
        for key, count in (("buffer_bytes", buffer_bytes), ("pending_bytes", pending_bytes)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"bridge: {key} must be a whole number of bytes >= 1")
        if max_reconnects is not None and (
            isinstance(max_reconnects, bool)
            or not isinstance(max_reconnects, int)
            or max_reconnects < 1
        ):
            raise ValueError("bridge: max_reconnects must be None (forever) or a count >= 1")
        self.src, self.dst = src, dst
        self._local: Endpoint = local
        self._remote: Endpoint = remote
        self._opts: dict[str, Any] = {
            "request": bool(request),
            "request_timeout": float(request_timeout),
            "reconnect_wait": float(reconnect_wait),
            "max_reconnects": -1 if max_reconnects is None else max_reconnects,
            "connect_timeout": float(connect_timeout),
            "buffer_bytes": buffer_bytes,
            "pending_bytes": pending_bytes,
            "close_timeout": float(close_timeout),
            "name": name,
        }
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: Any = None
        self._stop: Any = None
        self._counts: Any = None
        self._ready = threading.Event()
        # Set as the thread's last act. Waiting joins only after it: a join
        # interrupted by Ctrl-C can leave Thread.is_alive() wrongly False.
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._local_url = local.url
        # Set by close(): the loop's stop event may not exist yet (a close
        # while start() connects), so the loop looks at this once it makes it.
        self._closing = False

    # ---- running --------------------------------------------------------
    def start(self: _BridgeT) -> _BridgeT:
        """Connect to NATS, open the local endpoint, and start forwarding; returns self.

        Blocks until the bridge runs (at most about ``connect_timeout`` plus
        opening the local endpoint); a :meth:`close` from another thread
        meanwhile ends the connecting at once (start() then returns the
        stopped bridge, no error). Raises what :class:`Bridge` lists; a
        bridge is started once (RuntimeError after).
        """
        from ._nats import Counters, _import_nats

        _import_nats()  # the ImportError here, in the caller's thread
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"{self!r} was already started")
            self._counts = Counters()
            self._thread = threading.Thread(
                target=self._main, name=f"fastipc-bridge {self.src} -> {self.dst}", daemon=True
            )
            self._thread.start()
        _live.add(self)
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _main(self) -> None:
        import asyncio

        from ._nats import Options, run

        loop = asyncio.new_event_loop()
        self._loop = loop

        def ready(url: str) -> None:
            self._local_url = url
            self._ready.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            if self._closing:
                self._stop.set()
            await run(
                self._local,
                self._remote,
                self._to_nats,
                Options(**self._opts),
                self._counts,
                self._stop,
                ready,
            )

        try:
            loop.run_until_complete(main())
            if self._counts.gave_up:
                self._error = ConnectionError(
                    f"{self._remote.url}: gave up after {self._opts['max_reconnects']} "
                    "reconnect attempts"
                )
        except BaseException as exc:  # noqa: BLE001 - raised by start(), or kept in .error
            self._error = exc
            if self._ready.is_set():
                self._counts.error("failed", f"the bridge failed: {exc!r}")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._ready.set()
                self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (Ctrl-C-able) until the bridge has stopped; return True if it has.

        It stops by :meth:`close`, when its ring source is shut down and
        drained or its ring destination is shut down, when its listener
        fails, or when the NATS connection is closed for good
        (``max_reconnects`` reached); :attr:`error` says why.
        """
        thread = self._thread
        if thread is None:
            return True
        wait_ns = timeout_ns(timeout)  # TypeError/ValueError for a bad one; -1: no deadline
        end = None if wait_ns < 0 else _now() + wait_ns / 1e9
        while not self._done.wait(0.2 if end is None else max(0.0, min(0.2, end - _now()))):
            if end is not None and _now() >= end:
                return False
        thread.join()
        return True

    def close(self) -> None:
        """Stop the bridge and wait for it (idempotent, any thread but the bridge's own).

        Delivers what it holds for up to ``close_timeout`` seconds and counts
        the rest in ``stats.undelivered``; closes the NATS connection and the
        local endpoint, removing the ring or queue it created (kept, and
        logged, while messages still wait in it).
        """
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        loop, stop = self._loop, self._stop
        if not self._done.is_set() and loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already ended
        self.wait()
        _live.discard(self)

    def __enter__(self: _BridgeT) -> _BridgeT:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- state ----------------------------------------------------------
    @property
    def stats(self) -> BridgeStats:
        """What the bridge did so far (a snapshot; see :class:`BridgeStats`)."""
        c = self._counts
        if c is None:
            return BridgeStats(0, 0, 0, 0, 0, 0, 0, False, 0, None)
        return BridgeStats(
            received=c.received,
            forwarded=c.forwarded,
            too_large=c.too_large,
            unconfirmed=c.unconfirmed,
            undelivered=c.undelivered,
            disconnects=c.disconnects,
            reconnects=c.reconnects,
            connected=c.connected,
            max_payload=c.max_payload,
            last_error=c.last_error,
        )

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the bridge has stopped."""
        return self._thread is not None and not self._done.is_set()

    @property
    def error(self) -> BaseException | None:
        """What ended the bridge abnormally, or None."""
        return self._error

    @property
    def local_url(self) -> str:
        """The local endpoint (for ``tcp://HOST:0``, with the port the bridge listens on)."""
        return self._local_url

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._thread else "new"
        return f"<fastipc.Bridge {self.src} -> {self.dst} {state}>"


def bridge(src: str, dst: str, **options: Any) -> Bridge:
    """Start and return a :class:`Bridge` from ``src`` to ``dst`` (same keywords).

    Use it as a context manager, or call :meth:`Bridge.close`::

        with fastipc.bridge("shm://ticks", "nats://127.0.0.1:4222/ticks") as b:
            b.wait()          # until Ctrl-C (or the ring is shut down)
        print(b.stats)
    """
    return Bridge(src, dst, **options).start()


def _now() -> float:
    import time

    return time.monotonic()


#: Bridges still running at interpreter exit are closed (their threads are
#: daemons, so exit never waits on a forgotten bridge; this closes it properly).
_live: weakref.WeakSet[Bridge] = weakref.WeakSet()


@atexit.register
def _close_live() -> None:
    for b in list(_live):
        b.close()
