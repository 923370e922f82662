"""The multiplexed server core: one selector loop (epoll on Linux) serving every client of an endpoint.

One loop and what it owns (peers, limits, the shared budget), in one file.

The course notes' ``select()`` server, grown up: the loop watches the
endpoint (a listening socket, a datagram socket, a message queue or a FIFO)
and every connected client at once, so a slow or silent client never stalls
the others. Transports plug in as *sources*: each module of
``fastipc.transports`` registers its scheme in ``fastipc._registry`` when
imported (this module imports no transport); a source registers its fds
with :attr:`Server.selector` and hands each complete message to
:meth:`Server.dispatch`, which calls the user's handler and sends back what
it returns (docs/architecture.md, "Servers, transports, clients").

The loop runs in one thread; the handler runs in it too, so handlers must
not block for long. Limits (:class:`Limits`) keep memory bounded whatever
the clients do.
"""

from __future__ import annotations

import heapq
import logging
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Optional, TypeVar, Union

from ._registry import FRAMINGS, schemes, transport
from .endpoints import Endpoint, parse
from .errors import FastIPCError
from .framing import DEFAULT_MAX_MESSAGE, validate_max_message

__all__ = [
    "DEFAULT_MAX_BUFFERED",
    "FRAMINGS",
    "Handler",
    "Limits",
    "Peer",
    "Server",
    "Source",
    "serve",
]

log = logging.getLogger("fastipc.server")

_S = TypeVar("_S", bound="Server")

#: What a handler may return: bytes-like to send back, or None for no reply.
Reply = Optional[Union[bytes, bytearray, memoryview]]
#: ``handler(message, peer) -> reply``.
Handler = Callable[[bytes, "Peer"], Reply]
#: The default budget (bytes) of client input held and output queued across
#: all clients of a server (:attr:`Limits.max_buffered`), raised to twice
#: ``max_message`` when that is larger.
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What protects a server from its clients; every client past a limit is cut off, alone.

    ``max_clients``: stream connections at once (more are accepted and
    closed at once). ``max_message``: bytes in one message (a longer length
    frame closes that client; a longer datagram is dropped). ``max_output``:
    bytes queued for one client that is not reading (more closes it: a slow
    reader). ``idle_timeout``: seconds a stream client may go without
    completing a message (catches silent clients and slow-loris senders),
    None for never. ``backlog``: the kernel's queue of connections not yet
    accepted.

    ``max_buffered``: bytes the server holds for all its stream clients
    together: the part of a length frame received so far (counted as it
    arrives, never as the size its header announces) plus replies queued
    for clients that do not read them fast enough. When a client's read or
    a queued reply takes the total past it, the client holding the most is
    cut off (logged at WARNING, naming it), then the next largest if still
    over, so many clients each sending a little of a large message cannot
    exhaust memory while honest small clients keep working. Default (None):
    :data:`DEFAULT_MAX_BUFFERED` (256 MiB), or ``2 * max_message`` when
    larger; after construction it is always an int. It must be at least
    ``max_message`` (one whole message always fits).

    The real bound on what a server holds for its clients is then about
    ``max_buffered`` + 64 KiB (one read, or the one reply that crossed the
    line) + the message being handled and its reply (up to ``max_message``
    each, in the handler); per client it is ``max_message + max_output +
    one reply``. Not counted: the kernel's socket buffers (outside the
    process, per socket, capped by ``net.core.rmem_max``/``wmem_max``), a
    FIFO source's one partial frame (at most ``max_message``), and the
    allocator's slack (a growing buffer may hold up to about 1/8 more; queued
    replies under 16 KiB are packed into shared 64 KiB buffers, so a queue of
    tiny replies costs about what it counts).
    Raw framing holds no input between reads (one read is one message).

    Raises ValueError for a value out of range or of the wrong type
    (TypeError for a ``max_message`` that is not an int).
    """

    max_clients: int = 1024
    max_message: int = DEFAULT_MAX_MESSAGE
    max_output: int = 16 * 1024 * 1024
    idle_timeout: float | None = 300.0
    backlog: int = 128
    max_buffered: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_clients", "max_output", "backlog"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        validate_max_message(self.max_message)
        idle = self.idle_timeout
        if idle is not None and (
            isinstance(idle, bool) or not isinstance(idle, (int, float)) or not idle > 0
        ):
            raise ValueError(f"idle_timeout must be a number of seconds > 0 or None, got {idle!r}")
        budget = self.max_buffered
        if budget is None:
            # Frozen: fill in the default the way __init__ would have.
            object.__setattr__(
                self, "max_buffered", max(DEFAULT_MAX_BUFFERED, 2 * self.max_message)
            )
        elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"max_buffered must be an int >= 1 (bytes) or None, got {budget!r}")
        elif budget < self.max_message:
            raise ValueError(
                f"max_buffered ({budget} bytes) must be at least max_message "
                f"({self.max_message} bytes): one whole message must fit"
            )


class Peer:
    """One client as a handler sees it: where it is, and how to answer or drop it.

    ``address`` is the client's address: ``(host, port)`` for tcp/udp, the
    socket name for unix/unixgram (``""`` when the client did not bind one),
    None for mq and fifo. Methods must be called from the server's thread:
    from the handler, or from other threads through
    :meth:`Server.call_soon_threadsafe`.
    """

    address: Any = None
    #: True for a stream connection (one client, closed on failure), False
    #: for the sender of a datagram or queue message.
    connected = False
    #: Bytes the server holds for this client now (int): its partial input
    #: plus its queued output; what :attr:`Limits.max_buffered` counts.
    #: Always 0 for datagram and queue senders.
    buffered = 0

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (one message) to this client, queued if it cannot take it now.

        Raises :class:`~fastipc.Closed` if the client is gone or cannot be
        answered, :class:`~fastipc.MessageTooLarge` for a datagram too large.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection once what is queued for it has been sent (stream transports)."""

    def abort(self) -> None:
        """Close the connection now, dropping what is queued (tcp: reset, SO_LINGER 0)."""

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (or closing)."""
        return False

    def describe(self) -> str:
        """The client as log lines name it: ``host:port``, ``pid N uid U`` (unix), a path, or ``-``."""
        addr = self.address
        if isinstance(addr, tuple) and len(addr) >= 2:
            host, port = str(addr[0]), addr[1]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if isinstance(addr, bytes):
            addr = addr.decode(errors="replace")
        if isinstance(addr, str) and addr:
            return "@" + addr[1:] if addr.startswith("\0") else addr
        return "-"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class Source:
    """What a transport adds to the loop: its fds, its address, what it leaves behind."""

    #: The URL actually served (with the real port when 0 was asked).
    address: str = ""

    def attach(self, server: Server) -> None:
        """Register this source's fds with ``server.selector``."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop serving and remove what this source created (socket file, FIFO, queue)."""
        raise NotImplementedError


class Server:
    """Serves one endpoint with a handler; made by :func:`serve`.

    Use :meth:`start` to serve in a background thread or
    :meth:`serve_forever` in this one; :meth:`close` stops it, closes every
    client and removes what it created. A context manager (closes on exit).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        handler: Handler,
        framing: str,
        limits: Limits,
        on_connect: Callable[[Peer], None] | None = None,
        on_disconnect: Callable[[Peer], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.handler = handler
        #: Called with the :class:`Peer` of each stream client that connects / goes (see :func:`serve`).
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.framing = framing
        self.limits = limits
        self.selector = _selector()
        self._source: Source | None = None
        self._clients: set[Any] = set()
        self._buffered = 0
        budget = limits.max_buffered
        assert budget is not None  # Limits fills in the default
        self._budget: int = budget
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._soon: deque[Callable[[], None]] = deque()
        self._timer_seq = 0
        self._stop = False
        #: The thread that called close(): it tears down (sources that set a
        #: thread's signal mask, signal://, can restore it only there).
        self._closer: threading.Thread | None = None
        self._signalled = False
        self._closed = False
        self._serving = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, 1, self._drain_wake)
        #: The signal number that stopped :meth:`serve_forever`, else None.
        self.stopped_by: int | None = None

    # ---- public ---------------------------------------------------------
    @property
    def address(self) -> str:
        """The URL served, with the real port when port 0 was asked (e.g. ``tcp://127.0.0.1:43817``)."""
        return self._source.address if self._source is not None else self.endpoint.url

    @property
    def clients(self) -> int:
        """The number of stream clients connected now (an int; :attr:`peers` lists them)."""
        return len(self._clients)

    @property
    def peers(self) -> tuple[Peer, ...]:
        """The stream clients connected now, as :class:`Peer` objects (a snapshot).

        To publish to every client, ``for p in srv.peers: p.send(msg)`` from
        the server's thread: in the handler, in ``on_connect``/``on_disconnect``,
        or in a callback given to :meth:`call_soon_threadsafe`.
        """
        return tuple(self._clients)

    @property
    def buffered(self) -> int:
        """Bytes held for all clients now (partial input + queued output), what ``max_buffered`` caps."""
        return self._buffered

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self: _S) -> _S:
        """Serve in a background (daemon) thread; return self. Raises RuntimeError if serving."""
        self._check_open()
        if self._thread is not None:
            raise RuntimeError("server already started")
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run_thread,
            args=(started,),
            name=f"fastipc-serve {self.address}",
            daemon=True,
        )
        self._thread.start()
        started.wait()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close`, or SIGINT/SIGTERM when this is the main thread.

        A signal stops the loop and returns normally (``stopped_by`` tells
        which); the server stays open until :meth:`close`. Raises
        RuntimeError if the server is already serving in another thread.
        """
        self._check_open()
        self._serve(None)

    def close(self) -> None:
        """Stop serving, close every client and remove the socket file/FIFO/queue this server made.

        Idempotent; safe from the handler and from other threads (waits for
        the serving thread to finish, unless called from it).
        """
        if self._closed:
            return
        me = threading.current_thread()
        self._closer = me
        self._stop = True
        self._wake()
        if self._loop_thread is me:
            return  # inside the handler: the loop tears down when it returns
        thread = self._thread
        if thread is not None and thread is not me:
            thread.join()
        with self._serving:
            self._teardown()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.clients} clients"
        return f"<Server {self.address} {self.framing} {state}>"

    # ---- for sources ----------------------------------------------------
    def dispatch(self, message: bytes, peer: Peer) -> None:
        """Hand ``message`` from ``peer`` to the handler and send back what it returns.

        A handler that raises is logged and only that client is dropped.
        """
        try:
            reply = self.handler(message, peer)
        except Exception:
            log.exception(
                "handler failed on a message from %s; %s",
                peer.describe(),
                "dropping that client" if peer.connected else "message dropped",
            )
            peer.abort()
            return
        if reply is None or peer.closed:
            return
        try:
            peer.send(reply)
        except (FastIPCError, OSError, ValueError, TypeError) as exc:
            # A reply that cannot go (bad type, too large, peer gone) must not stop the loop.
            log.warning("reply to %s not sent: %s", peer.describe(), exc)

    def _client_joined(self, client: Any) -> None:
        """A stream source's new connection (registered, ready to send): count it, run on_connect."""
        self._clients.add(client)
        self._run_hook(self.on_connect, client, "on_connect")

    def _client_left(self, client: Any) -> None:
        """A connection is gone (closed, cut off or lost): forget it, run on_disconnect once."""
        if client in self._clients:
            self._clients.discard(client)
            self._run_hook(self.on_disconnect, client, "on_disconnect")

    def _run_hook(self, hook: Callable[[Peer], None] | None, peer: Any, what: str) -> None:
        if hook is None:
            return
        try:
            hook(peer)
        except Exception:
            # A failing hook must not stop the loop; on_connect's client is
            # dropped (it was not set up as the hook meant).
            log.exception("%s failed for %s", what, peer.describe())
            if what == "on_connect" and not peer.closed:
                peer.abort()

    def account(self, delta: int) -> None:
        """Add ``delta`` bytes (negative: released) to what clients hold; enforce ``max_buffered``.

        A client calls it after changing its ``buffered`` by ``delta``. When
        the total passes :attr:`Limits.max_buffered`, the clients holding
        the most are cut off (``expire``), largest first, until it fits: the
        caller itself may be one of them. Call it from the loop's thread.
        Raises nothing; cut-off clients are logged at WARNING.
        """
        self._buffered += delta
        if delta > 0 and self._buffered > self._budget:
            self._over_budget()

    def _over_budget(self) -> None:
        budget = self._budget
        while self._buffered > budget:
            victim = max(self._clients, key=_held, default=None)
            if victim is None or victim.buffered <= 0:
                return
            before = self._buffered
            victim.expire(
                f"holds {victim.buffered} bytes ({victim.holding()}), the most of any "
                f"client, and all clients together held {before} bytes, over "
                f"max_buffered ({budget} bytes)"
            )
            if self._buffered >= before:
                return  # nothing was freed: do not spin

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop after ``delay`` seconds.

        Call it from the loop's thread (a handler) or before serving starts;
        it is not thread-safe.
        """
        self._timer_seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_seq, callback))

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop's thread soon; callable from any thread.

        The way for other threads to act on peers (e.g. push a message with
        ``peer.send``), which must happen in the loop's thread. Callbacks
        run in the order given; one that raises is logged and the loop goes
        on. Raises ValueError once the server is closed.
        """
        self._check_open()
        self._soon.append(callback)  # deque.append is atomic under the GIL
        self._wake()

    # ---- the loop ---------------------------------------------------------
    def _attach(self, source: Source) -> None:
        self._source = source
        source.attach(self)
        idle = self.limits.idle_timeout
        if idle is not None:
            self.call_later(_sweep_interval(idle), self._sweep)

    def _run_thread(self, started: threading.Event) -> None:
        self._serve(started)

    def _serve(self, started: threading.Event | None) -> None:
        if not self._serving.acquire(blocking=False):
            if started is not None:
                started.set()
            raise RuntimeError("server is already serving in another thread")
        restore: list[tuple[int, Any]] = []
        try:
            self._loop_thread = threading.current_thread()
            if threading.current_thread() is threading.main_thread():
                restore = self._catch_signals()
            if started is not None:
                started.set()
            self._loop()
        finally:
            for signum, old in restore:
                signal.signal(signum, old)
            self._loop_thread = None
            if self._stop and self._closer in (None, threading.current_thread()):
                self._teardown()
            self._serving.release()

    def _loop(self) -> None:
        select = self.selector.select
        timers = self._timers
        self._signalled = False
        while not (self._stop or self._signalled):
            timeout = None
            if timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            for key, mask in select(timeout):
                key.data(mask)
                if self._stop or self._signalled:
                    return
            if timers:
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    _, _, callback = heapq.heappop(timers)
                    callback()

    def _sweep(self) -> None:
        """Cut off stream clients that went ``idle_timeout`` without completing a message."""
        idle = self.limits.idle_timeout
        assert idle is not None
        now = time.monotonic()
        for client in list(self._clients):
            if client.deadline <= now:
                client.expire(f"no complete message for {idle:g} s (idle_timeout)")
        self.call_later(_sweep_interval(idle), self._sweep)

    def _catch_signals(self) -> list[tuple[int, Any]]:
        def stop(signum: int, frame: FrameType | None) -> None:
            # The wake byte makes the select() that Python retries after the
            # handler (PEP 475) return at once.
            self.stopped_by = signum
            self._signalled = True
            self._wake()

        saved: list[tuple[int, Any]] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            saved.append((signum, signal.signal(signum, stop)))
        return saved

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closed

    def _drain_wake(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        soon = self._soon
        while soon:
            callback = soon.popleft()
            try:
                callback()
            except Exception:
                log.exception("callback %r given to call_soon_threadsafe failed", callback)

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in list(self._clients):
            client.shutdown_now("server closed")
        self._clients.clear()
        try:
            if self._source is not None:
                self._source.close()
        finally:
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"server {self.address} is closed")


def _held(client: Any) -> int:
    held: int = client.buffered
    return held


def _sweep_interval(idle: float) -> float:
    return min(1.0, max(0.01, idle / 4))


def _selector() -> Any:
    import selectors

    return selectors.DefaultSelector()


def serve(
    url: str,
    handler: Handler,
    *,
    framing: str = "length",
    max_clients: int = 1024,
    max_message: int | None = None,
    max_output: int = 16 * 1024 * 1024,
    idle_timeout: float | None = 300.0,
    backlog: int | None = None,
    max_buffered: int | None = None,
    on_connect: Callable[[Peer], None] | None = None,
    on_disconnect: Callable[[Peer], None] | None = None,
) -> Server:
    """Bind ``url`` and return a :class:`Server` that calls ``handler(message, peer)`` per message.

    ``url``: ``tcp://HOST:PORT`` (port 0 picks one: see
    :attr:`Server.address`), ``unix://PATH``, ``udp://HOST:PORT`` (a
    multicast group joins it: ``?iface=ADDR``), ``unixgram://PATH``,
    ``mq:///name`` (created or opened; ``?reply=/name`` names the queue
    replies go to), ``fifo:///path`` (created owner-only), ``fd://N`` (an
    inherited fd, read only; taken over and released on close),
    ``signal://self?sig=USR1,RTMIN+1`` (a signalfd: the handler gets the
    int payload as decimal text, the signal and its sender on the peer;
    see :mod:`fastipc.transports.signals` for the signal masks). A bytes-like
    value the handler returns is sent back to that peer.

    ``framing`` (stream transports): ``"length"`` (default;
    docs/architecture.md, "Wire format") or ``"raw"`` (what one read
    returns is one message; what classic C peers and ``nc`` speak). FIFOs are always length-framed;
    datagrams and queue messages are messages already. The limits are
    described in :class:`Limits`; ``max_message`` defaults to 64 MiB (the
    URL's ``?max_message=`` when given), ``backlog`` to 128 (``?backlog=``),
    ``max_buffered`` (bytes held for all clients together) to 256 MiB or
    twice ``max_message``, whichever is larger.

    ``on_connect(peer)`` / ``on_disconnect(peer)`` (stream transports) run
    in the server's thread when a client connects (it may already send to
    it) and when it is gone, however it went; with :attr:`Server.peers`
    they make publish-to-all patterns plain. An exception in ``on_connect``
    is logged and drops that client; in ``on_disconnect`` it is logged.

    Serving starts with :meth:`Server.start` or :meth:`Server.serve_forever`.
    Raises ValueError for a bad URL, framing or limit, OSError (naming the
    endpoint) when it cannot be bound, e.g. OSError(EADDRINUSE).
    """
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be 'raw' or 'length', got {framing!r}")
    ep = parse(url, schemes=schemes())
    if max_message is None:
        max_message = DEFAULT_MAX_MESSAGE if ep.max_message is None else ep.max_message
    if backlog is None:
        backlog = 128 if ep.backlog is None else ep.backlog
    limits = Limits(
        max_clients=max_clients,
        max_message=max_message,
        max_output=max_output,
        idle_timeout=idle_timeout,
        backlog=backlog,
        max_buffered=max_buffered,
    )
    kind = transport(ep.scheme)
    assert kind is not None  # parse() accepted only registered schemes
    server = Server(ep, handler, framing, limits, on_connect, on_disconnect)
    try:
        server._attach(kind.open_source(ep, server))
    except BaseException:
        server._teardown()
        raise
    return server
