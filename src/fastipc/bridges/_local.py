"""The local side of a bridge: each local endpoint kind as an awaitable source or sink.

A *source* hands the bridge ordered *streams* of messages: a ring or a
message queue is one stream; a Channel listener (``unix://``, ``tcp://``)
yields one stream per connected client, which can also take replies
(request/reply). A *sink* takes the messages the bridge delivers: into a
ring, onto a queue, or to a Channel server it connects to (which may answer
each message: a round trip).

The direction decides who waits for whom: a local endpoint the bridge reads
from is one it owns or listens at (local processes come to it); one it
writes to is one it opens or connects to (it goes to them).

To bridge another kind of local endpoint, write its source and/or sink
here and add them to ``_SOURCES``/``_SINKS`` under the endpoint's scheme
(which ``endpoints.parse`` must know).

Everything here runs on the bridge's event loop thread; no call blocks it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Callable

import posix_ipc

from ..aio import Channel, Listener, Ring, Subscriber, listen
from ..broadcast import Broadcast
from ..endpoints import Endpoint
from ..errors import Closed, Full, Lagged, MessageTooLarge, Timeout
from ..transports.mqueue import open_queue

__all__ = ["Sink", "Source", "Stream", "open_sink", "open_source"]

log = logging.getLogger("fastipc.bridge")

#: How long a queue waiter sleeps before looking again anyway (seconds): a
#: closed bridge or a missed edge never leaves it waiting for good.
_RECHECK = 0.2


class Stream:
    """One ordered run of local messages the bridge forwards (a ring, a queue, one client)."""

    name: str = ""

    async def take(self, max_count: int) -> list[bytes]:
        """Wait for 1 to ``max_count`` messages. Raises Closed when the stream has ended."""
        raise NotImplementedError

    async def reply(self, data: bytes) -> None:
        """Send ``data`` back to this stream's peer (only Channel clients have one)."""
        raise ValueError(f"{self.name}: this local endpoint takes no replies")

    def end(self) -> None:
        """Stop this stream (a client's connection is closed: it sees Closed; a ring stays)."""


class Source:
    """A local endpoint the bridge reads: yields its streams."""

    url: str = ""
    #: True for one stream (a ring, a queue): its end is the source's end.
    single = True

    def streams(self) -> AsyncIterator[Stream]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Sink:
    """A local endpoint the bridge writes to."""

    url: str = ""
    #: True when :meth:`round_trip` works (a Channel server answers).
    answers = False

    async def put(self, data: bytes) -> None:
        """Deliver ``data``. Raises Closed when the endpoint is gone for good
        (the bridge then stops), MessageTooLarge over its limit, OSError or
        Timeout when this one message could not be delivered."""
        raise NotImplementedError

    async def round_trip(self, data: bytes, timeout: float) -> bytes:
        """Deliver ``data`` and return the endpoint's reply (Channel servers only)."""
        raise ValueError(f"{self.url}: request/reply needs a unix:// or tcp:// Channel server")

    def close(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------
# shm://NAME: a Ring (opened, or created when ?capacity= is given and it is missing)
# ---------------------------------------------------------------------------


def _open_ring(ep: Endpoint) -> tuple[Ring, bool]:
    assert ep.name is not None
    try:
        return Ring.open(ep.name), False
    except FileNotFoundError:
        if ep.capacity is None:
            raise FileNotFoundError(
                2, "no such ring (give ?capacity=BYTES to create it)", ep.url
            ) from None
    mode = 0o600 if ep.mode is None else ep.mode
    return Ring.create(ep.name, ep.capacity, mode=mode), True


class _RingEnd(Stream, Source, Sink):
    """A ring as a source (one stream) or a sink; removed at close if the bridge made it."""

    def __init__(self, ep: Endpoint) -> None:
        self.url = self.name = ep.url
        self._ring, self._created = _open_ring(ep)

    async def streams(self) -> AsyncIterator[Stream]:
        yield self

    async def take(self, max_count: int) -> list[bytes]:
        return await self._ring.recv_many(max_count)

    async def put(self, data: bytes) -> None:
        await self._ring.send(data)

    def close(self) -> None:
        if self._created:
            _remove_if_empty(self.url, len(self._ring.sync), self._ring.sync.unlink)
        self._ring.close()


def _remove_if_empty(url: str, held: int, remove: Callable[[], None]) -> None:
    """Remove what the bridge made, unless messages still wait in it: keep it, and say so.

    A ring or queue outlives its name only in the processes that have it
    open: removed, what waits in it could never be taken (or forwarded by
    the next bridge) again, and no count would show the loss.
    """
    if held:
        log.warning(
            "%s: not removed at close: %d messages still wait in it (fastipc rm removes it)",
            url,
            held,
        )
        return
    remove()


# ---------------------------------------------------------------------------
# bcast://NAME: a broadcast ring; the bridge is one subscriber, or one publisher
# ---------------------------------------------------------------------------


class _BroadcastSource(Stream, Source):
    """A broadcast ring read by the bridge as one of its subscribers (joins at the newest).

    A lag (the ring overwrote what the bridge had not read yet, under
    ``policy="overwrite"``) is logged and counted in :attr:`lagged`; the
    bridge goes on with the oldest message kept, as any subscriber does.
    """

    def __init__(self, ep: Endpoint) -> None:
        assert ep.name is not None
        self.url = self.name = ep.url
        self._sub = Subscriber.subscribe(ep.name)
        self.lagged = 0

    async def streams(self) -> AsyncIterator[Stream]:
        yield self

    async def take(self, max_count: int) -> list[bytes]:
        while True:
            try:
                return await self._sub.recv_many(max_count)
            except Lagged as exc:
                self.lagged += exc.missed
                log.warning(
                    "%s: the bridge lagged behind and missed %d messages", self.url, exc.missed
                )

    def close(self) -> None:
        self._sub.close()


class _BroadcastSink(Sink):
    """A broadcast ring the bridge publishes into (made, and removed at close, with ?capacity=)."""

    #: A publisher has no doorbell to wait on: a full ``policy="block"`` ring is
    #: retried this often (seconds) until a subscriber makes room.
    RETRY = 0.001

    def __init__(self, ep: Endpoint) -> None:
        assert ep.name is not None
        self.url = ep.url
        self._created = False
        try:
            self._pub = Broadcast.open(ep.name)
        except FileNotFoundError:
            if ep.capacity is None:
                raise FileNotFoundError(
                    2, "no such broadcast ring (give ?capacity=BYTES to create it)", ep.url
                ) from None
            mode = 0o600 if ep.mode is None else ep.mode
            self._pub = Broadcast.create(ep.name, ep.capacity, mode=mode)
            self._created = True

    async def put(self, data: bytes) -> None:
        while True:
            try:
                self._pub.publish(data, timeout=0)
                return
            except Full:
                await asyncio.sleep(self.RETRY)

    def close(self) -> None:
        if self._created:
            # Removed even with messages in it: a subscriber joins at the
            # newest message, so none is kept for a later one, and those
            # attached read on from their own mapping.
            self._pub.unlink()
        self._pub.close()


# ---------------------------------------------------------------------------
# mq:///name: a POSIX message queue (created if missing, removed at close if so)
# ---------------------------------------------------------------------------


class _QueueEnd(Stream, Source, Sink):
    """A message queue as a source (one stream, priorities dropped) or a sink (priority 0)."""

    def __init__(self, ep: Endpoint) -> None:
        self.url = self.name = ep.url
        self._q, self._created = open_queue(ep)  # non-blocking descriptor

    async def streams(self) -> AsyncIterator[Stream]:
        yield self

    async def _ready(self, write: bool) -> None:
        """Until the queue polls readable (writable), or a re-check slice passes."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        fd = self._q.mqd
        (loop.add_writer if write else loop.add_reader)(fd, wake)
        try:
            await asyncio.wait_for(fut, _RECHECK)
        except asyncio.TimeoutError:
            pass
        finally:
            (loop.remove_writer if write else loop.remove_reader)(fd)

    async def take(self, max_count: int) -> list[bytes]:
        out: list[bytes] = []
        while True:
            while len(out) < max_count:
                try:
                    out.append(self._q.receive()[0])
                except posix_ipc.BusyError:
                    break
                except posix_ipc.SignalError:
                    continue
            if out:
                return out
            await self._ready(False)

    async def put(self, data: bytes) -> None:
        if len(data) > self._q.max_message_size:
            raise MessageTooLarge(
                f"{self.url}: the queue holds messages of at most {self._q.max_message_size} "
                f"bytes (msgsize), got {len(data)}"
            )
        while True:
            try:
                self._q.send(data)
                return
            except posix_ipc.BusyError:
                await self._ready(True)
            except posix_ipc.SignalError:
                continue

    def close(self) -> None:
        if self._created:
            _remove_if_empty(self.url, self._q.current_messages, self._unlink)
        self._q.close()

    def _unlink(self) -> None:
        try:
            self._q.unlink()
        except posix_ipc.ExistentialError:
            pass


# ---------------------------------------------------------------------------
# unix:// and tcp://: Channels (length framing)
# ---------------------------------------------------------------------------


class _ClientStream(Stream):
    """One client connected to the bridge's listener; ``ended(self)`` once its stream ends."""

    def __init__(self, channel: Channel, url: str, ended: Callable[[_ClientStream], None]) -> None:
        self._ch = channel
        self.name = url
        self._ended = ended

    async def take(self, max_count: int) -> list[bytes]:
        return await self._ch.recv_many(max_count)

    async def reply(self, data: bytes) -> None:
        await self._ch.send(data)

    def end(self) -> None:
        self._ch.close()
        self._ended(self)


#: accept() errors that pass: out of fds or memory (retried every _RETRY seconds)...
_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ...and a client that gave up (or was refused) before it was accepted.
_CLIENT_GAVE_UP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_RETRY = 0.1


class _ListenerSource(Source):
    """The bridge listens (a unix socket file of its own, or a tcp port); each client is a stream."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self.url = listener.url
        self.single = False
        #: The clients connected now (forgotten as each leaves: each holds its buffers).
        self._clients: set[_ClientStream] = set()
        self._accepted = 0

    async def streams(self) -> AsyncIterator[Stream]:
        starved = False
        while True:
            try:
                channel = await self._listener.accept()
            except ValueError:
                return  # closed
            except OSError as exc:
                if exc.errno in _CLIENT_GAVE_UP:
                    continue
                if exc.errno not in _STARVED:  # the listener is broken: the bridge stops
                    raise OSError(exc.errno, f"{self.url}: accept failed: {exc.strerror}") from None
                # Out of fds or memory: the clients wait in the backlog; try again
                # shortly rather than spin (or end the listener for good).
                if not starved:
                    log.warning("%s: accept failed: %s; retrying every %g s", self.url, exc, _RETRY)
                starved = True
                await asyncio.sleep(_RETRY)
                continue
            if starved:
                log.warning("%s: accept works again", self.url)
                starved = False
            self._accepted += 1
            name = f"{self.url} (client {self._accepted})"
            stream = _ClientStream(channel, name, self._clients.discard)
            self._clients.add(stream)
            yield stream
            del channel, stream  # not kept alive by this frame until the next client

    def close(self) -> None:
        self._listener.close()
        for client in list(self._clients):  # each end() removes itself
            client.end()


class _ChannelSink(Sink):
    """The bridge connects to a Channel server; it reconnects on the next message after a failure.

    Before each message it looks at the connection: a server that closed it
    (``idle_timeout``, a restart) is connected to again rather than written
    to (over tcp the write would succeed and the message vanish), and what
    the server sent unasked (an extra reply) is read and dropped, so each
    reply answers the request just sent. A send that fails is tried once
    more on a new connection. A round trip whose reply did not come is not
    sent again (the server may have acted on it).
    """

    answers = True

    def __init__(self, url: str, channel: Channel) -> None:
        self.url = url
        self._ch: Channel | None = channel

    async def _channel(self, asking: bool) -> Channel:
        if self._ch is not None and not self._still_open(self._ch, asking):
            self._drop()
        if self._ch is None:
            self._ch = await Channel.connect(self.url, timeout=5.0)
        return self._ch

    def _still_open(self, ch: Channel, asking: bool) -> bool:
        """Drop what the server sent unasked; False when it closed the connection.

        A zero-time receive, not a poll: what came with the last reply may
        already sit in the channel's own buffer, where a poll cannot see it.
        """
        extra = 0
        try:
            while True:
                ch.sync.recv(timeout=0)
                extra += 1
        except Timeout:
            return True  # nothing more buffered: the peer is still there
        except (OSError, Closed, ValueError) as exc:
            log.info("%s: the server closed the connection (%s); connecting again", self.url, exc)
            return False
        finally:
            if extra:  # a request's extra reply is a fault; a one-way server's answers are not
                (log.warning if asking else log.debug)(
                    "%s: dropped %d messages the server sent unasked (not replies to a request)",
                    self.url,
                    extra,
                )

    def _drop(self) -> None:
        if self._ch is not None:
            self._ch.close()
            self._ch = None

    async def _send(self, data: bytes, asking: bool) -> Channel:
        """Send ``data``; after a failure, once more on a new connection. Returns the channel."""
        ch = await self._channel(asking)
        try:
            await ch.send(data)
            return ch
        except (OSError, Closed) as exc:
            self._drop()
            log.info("%s: send failed (%s); connecting again", self.url, exc)
        ch = await self._channel(asking)
        try:
            await ch.send(data)
        except (OSError, Closed, ValueError) as exc:
            self._drop()
            raise ConnectionError(f"{self.url}: could not send: {exc}") from None
        return ch

    async def put(self, data: bytes) -> None:
        await self._send(data, False)

    async def round_trip(self, data: bytes, timeout: float) -> bytes:
        ch = await self._send(data, True)
        try:
            return await ch.recv(timeout=timeout)
        except Timeout:
            # A late reply would be taken as the next request's: start afresh.
            self._drop()
            raise Timeout(f"{self.url}: no reply within {timeout:g} s") from None
        except (OSError, Closed, ValueError) as exc:
            self._drop()
            raise ConnectionError(f"{self.url}: round trip failed: {exc}") from None

    def close(self) -> None:
        self._drop()


# ---------------------------------------------------------------------------
# the tables
# ---------------------------------------------------------------------------


async def _ring(ep: Endpoint) -> _RingEnd:
    return _RingEnd(ep)


async def _queue(ep: Endpoint) -> _QueueEnd:
    return _QueueEnd(ep)


async def _subscriber(ep: Endpoint) -> _BroadcastSource:
    return _BroadcastSource(ep)


async def _publisher(ep: Endpoint) -> _BroadcastSink:
    return _BroadcastSink(ep)


async def _listener(ep: Endpoint) -> Source:
    return _ListenerSource(await listen(ep.url))


async def _connect(ep: Endpoint) -> Sink:
    return _ChannelSink(ep.url, await Channel.connect(ep.url, timeout=5.0))


_Open = Callable[[Endpoint], Awaitable[Any]]

#: scheme -> how the bridge opens that local endpoint to read from it.
_SOURCES: dict[str, _Open] = {
    "shm": _ring, "bcast": _subscriber, "mq": _queue, "unix": _listener, "tcp": _listener,
}  # fmt: skip
#: scheme -> how the bridge opens that local endpoint to write to it.
_SINKS: dict[str, _Open] = {
    "shm": _ring, "bcast": _publisher, "mq": _queue, "unix": _connect, "tcp": _connect,
}  # fmt: skip
#: The local schemes whose endpoint can carry request/reply (a Channel).
ANSWERING = frozenset({"unix", "tcp"})
LOCAL_SCHEMES = frozenset(_SOURCES) | frozenset(_SINKS)


async def open_source(ep: Endpoint) -> Source:
    """Open local endpoint ``ep`` for the bridge to read (ValueError for an unbridgeable scheme)."""
    opener = _SOURCES.get(ep.scheme)
    if opener is None:
        raise ValueError(f"{ep.url}: a bridge cannot read {ep.scheme}:// endpoints")
    source: Source = await opener(ep)
    return source


async def open_sink(ep: Endpoint) -> Sink:
    """Open local endpoint ``ep`` for the bridge to write to."""
    opener = _SINKS.get(ep.scheme)
    if opener is None:
        raise ValueError(f"{ep.url}: a bridge cannot write to {ep.scheme}:// endpoints")
    sink: Sink = await opener(ep)
    return sink
