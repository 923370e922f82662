"""The NATS side of a bridge: one nats-py connection on an event loop, and the forwarding tasks.

Runs entirely on the bridge's own thread and event loop (fastipc.bridges
starts it). nats-py is imported here, so ``import fastipc`` never needs it.

What each message can become (``received`` is the sum of the others once
the bridge has stopped):

* local -> NATS: ``forwarded`` when the server confirmed it (a flush round
  trip, PING/PONG, on the same connection that carried it); ``unconfirmed``
  when that connection broke first: it may or may not have reached the
  server, and it is never sent again, so no message is duplicated;
  ``too_large`` over the server's ``max_payload``; ``undelivered`` when
  nats-py's reconnect buffer was full or the connection was closed, or when
  taken while disconnected and the bridge stopped before it reconnected.
* NATS -> local: ``forwarded`` when written to the local endpoint;
  ``too_large`` over the local endpoint's limit; ``undelivered`` when the
  local endpoint failed, when nats-py dropped it because the local side
  fell ``pending_bytes`` behind (a slow consumer), or when it was still
  waiting at close.
* request/reply: ``forwarded`` when the reply went back; ``undelivered``
  when the request timed out, found no responder, the local server failed,
  or it still waited for its reply at close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Callable

from ..endpoints import Endpoint
from ..errors import Closed, MessageTooLarge, Timeout
from ._local import Sink, Source, Stream, open_sink, open_source

__all__ = ["Counters", "Options", "run"]

log = logging.getLogger("fastipc.bridge")

#: Messages taken from a local endpoint per publish round (one flush each).
BATCH = 256
#: How often (seconds) a batch held for a reconnect looks whether the
#: connection was closed for good.
_RECHECK = 0.1


@dataclass
class Options:
    """The bridge's settings, checked by :class:`fastipc.bridges.Bridge`."""

    request: bool
    request_timeout: float
    reconnect_wait: float
    max_reconnects: int
    connect_timeout: float
    buffer_bytes: int
    pending_bytes: int
    close_timeout: float
    name: str | None


class Counters:
    """The live counts (only the loop thread writes them; any thread may read one)."""

    def __init__(self) -> None:
        self.received = 0
        self.forwarded = 0
        self.too_large = 0
        self.unconfirmed = 0
        self.undelivered = 0
        self.disconnects = 0
        self.reconnects = 0
        self.connected = False
        self.last_error: str | None = None
        self.max_payload = 0
        self.gave_up = False
        self._said: dict[str, float] = {}

    def error(self, kind: str, text: str) -> None:
        """Record ``text`` as the last error; log it, at most once a second per kind."""
        self.last_error = text
        now = time.monotonic()
        if now - self._said.get(kind, -2.0) >= 1.0:
            self._said[kind] = now
            log.warning("bridge: %s", text)


def _import_nats() -> Any:
    try:
        import nats
    except ImportError:
        raise ImportError(
            "the NATS bridge needs the nats-py client: pip install 'fastipc[nats]'"
        ) from None
    return nats


async def run(
    local: Endpoint,
    remote: Endpoint,
    to_nats: bool,
    opts: Options,
    counts: Counters,
    stop: asyncio.Event,
    ready: Callable[[str], None],
) -> None:
    """Bridge until ``stop`` is set or the local endpoint ends; ``ready(local_url)`` once running.

    Raises (before ``ready``) what opening either side raised: ImportError
    without nats-py, ConnectionError when no NATS server answers, the local
    endpoint's errors.
    """
    nats = _import_nats()
    errors = nats.errors
    connected = asyncio.Event()
    server = f"nats://{remote.host}:{remote.port}"
    if remote.host and ":" in remote.host:
        server = f"nats://[{remote.host}]:{remote.port}"

    async def on_disconnect() -> None:
        if stop.is_set():
            return  # our own close
        counts.connected = False
        counts.disconnects += 1
        connected.clear()
        counts.error("disconnect", f"{server}: disconnected from the NATS server; reconnecting")

    async def on_reconnect() -> None:
        counts.connected = True
        counts.reconnects += 1
        counts.max_payload = nc.max_payload
        connected.set()
        log.info("bridge: %s: reconnected", server)

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, errors.SlowConsumerError):
            counts.received += 1
            counts.undelivered += 1
            counts.error(
                "slow",
                f"{remote.url}: a message was dropped: the local side is over "
                f"{opts.pending_bytes} bytes behind (slow consumer)",
            )
        elif not isinstance(exc, (OSError, asyncio.TimeoutError)):
            counts.error("nats", f"{server}: {type(exc).__name__}: {exc}")

    async def on_closed() -> None:
        if not stop.is_set():
            counts.gave_up = True  # max_reconnects used up
        counts.connected = False
        connected.clear()
        stop.set()

    if stop.is_set():
        return  # closed before it began
    nc = nats.NATS()
    try:
        # nats-py retries a first connect as often as a reconnect (forever
        # here): the first one gets connect_timeout in all. A close (Ctrl-C)
        # meanwhile ends the attempt rather than waiting it out.
        await _until(
            stop,
            asyncio.wait_for(
                nc.connect(
                    servers=[server],
                    name=opts.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=opts.max_reconnects,
                    reconnect_time_wait=opts.reconnect_wait,
                    connect_timeout=opts.connect_timeout,
                    pending_size=opts.buffer_bytes,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    error_cb=on_error,
                    closed_cb=on_closed,
                ),
                opts.connect_timeout,
            ),
        )
    except (OSError, asyncio.TimeoutError, errors.Error) as exc:
        await _abandon(nc, stop, opts)
        why = "no answer" if isinstance(exc, asyncio.TimeoutError) else repr(exc)
        raise ConnectionError(
            f"{server}: cannot connect to the NATS server within {opts.connect_timeout:g} s ({why})"
        ) from None
    if stop.is_set():  # closed while connecting: a stop, not a failure
        await _abandon(nc, stop, opts)
        return
    counts.connected = True
    counts.max_payload = nc.max_payload
    connected.set()
    tasks: set[asyncio.Task[Any]] = set()
    source: Source | None = None
    sink: Sink | None = None
    sub: Any = None
    settle: Callable[[Any], Awaitable[None]] | None = None
    ended = asyncio.Event()  # the local endpoint is done (a ring shut down and drained)
    try:
        if to_nats:
            source = await open_source(local)
            forward = _requests_to_nats if opts.request else _publish_to_nats
            tasks.add(
                asyncio.ensure_future(
                    _each_stream(source, forward, nc, remote, opts, counts, connected, stop, ended)
                )
            )
            ready(source.url)
        else:
            sink = await open_sink(local)
            deliver, settle = _make_delivery(sink, nc, remote, opts, counts, ended)
            sub = await nc.subscribe(
                remote.subject,
                queue=remote.queue or "",
                cb=deliver,
                pending_bytes_limit=opts.pending_bytes,
            )
            await nc.flush(timeout=opts.connect_timeout)  # subscribed at the server from here on
            ready(sink.url)
        stopper = asyncio.ensure_future(stop.wait())
        done = asyncio.ensure_future(ended.wait())
        # A pump that ends by itself failed (a broken listener): stop, then raise its error.
        await asyncio.wait({stopper, done, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        done.cancel()
        stop.set()  # the pumps finish their round and return
        if sub is not None:
            await _drain(sub, opts)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=opts.close_timeout)
            for task in late:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    raise outcome
    finally:
        for task in tasks:
            task.cancel()
        try:
            if not nc.is_closed:
                await asyncio.wait_for(nc.close(), opts.close_timeout)
        except Exception as exc:  # noqa: BLE001 - closing: the local side must close regardless
            log.debug("bridge: closing the NATS connection: %r", exc)
        finally:
            try:
                if settle is not None and sub is not None:
                    await settle(sub)  # the connection is closed: nothing more arrives
            finally:
                if source is not None:
                    source.close()
                if sink is not None:
                    sink.close()


async def _abandon(nc: Any, stop: asyncio.Event, opts: Options) -> None:
    """Close a connection that never came up."""
    stop.set()  # our close: no callbacks count it
    try:
        await asyncio.wait_for(nc.close(), opts.close_timeout)
    except Exception as exc:  # noqa: BLE001 - it never connected
        log.debug("bridge: closing a failed connection: %r", exc)


async def _drain(sub: Any, opts: Options) -> None:
    """Unsubscribe and deliver what already arrived (up to close_timeout).

    What is left is counted once the connection is closed (the delivery's settle).
    """
    try:
        await asyncio.wait_for(sub.drain(), opts.close_timeout)
    except Exception as exc:  # noqa: BLE001 - a timeout, or the connection is gone
        log.debug("bridge: draining the subscription: %r", exc)


async def _until(stop: asyncio.Event, work: Any) -> Any:
    """``await work`` unless ``stop`` is set first (then cancel it and return None).

    Cancelling a local take loses nothing (fastipc.aio's guarantee), so a
    stopping bridge leaves untaken messages where they are.
    """
    if stop.is_set():
        work.close()
        return None
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # not left behind to fail on a closed endpoint, unseen
        raise
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        result = await task
    except asyncio.CancelledError:
        return None
    return result  # it finished in the same instant: keep its messages


_Forward = Callable[..., Any]


async def _each_stream(
    source: Source,
    forward: _Forward,
    nc: Any,
    remote: Endpoint,
    opts: Options,
    counts: Counters,
    connected: asyncio.Event,
    stop: asyncio.Event,
    ended: asyncio.Event,
) -> None:
    """Run ``forward`` on every stream of ``source`` (a listener has one per client).

    A source of one stream (a ring, a queue) ends the bridge when its stream
    ends (a ring shut down and drained); a listener runs until stopped, and
    raises if it stops before (so the bridge stops with that error).
    """
    running: set[asyncio.Task[Any]] = set()
    streams = source.streams()
    try:
        while True:
            try:
                stream = await _until(stop, streams.__anext__())
            except StopAsyncIteration:
                stream = None
            if stream is None:
                if not stop.is_set() and not source.single:
                    raise RuntimeError(f"{source.url}: the listener stopped accepting clients")
                return
            task = asyncio.ensure_future(forward(stream, nc, remote, opts, counts, connected, stop))
            if source.single:
                await task
                ended.set()
                return
            running.add(task)
            task.add_done_callback(running.discard)
            del stream, task  # a client that left is not kept alive by this frame
    finally:
        if running:
            try:
                await asyncio.wait(set(running), timeout=opts.close_timeout)
            finally:  # even if this loop is cancelled itself (run() waits as long)
                for task in list(running):
                    task.cancel()
                # Each counts what it held as it ends: before the loop goes.
                await asyncio.gather(*running, return_exceptions=True)


async def _connected_again(nc: Any, connected: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait until the connection is up (messages wait in the local endpoint meanwhile)."""
    while not nc.is_connected:
        if nc.is_closed or stop.is_set():
            return False
        connected.clear()
        await _until(stop, connected.wait())
    return True


async def _held_until_connected(nc: Any, connected: asyncio.Event) -> bool:
    """Wait, stopping or not, until the connection is up; False once it is closed for good.

    For a batch already taken: it has nowhere to wait but here. A close
    cancels this wait after close_timeout.
    """
    while not nc.is_connected:
        if nc.is_closed:
            return False
        connected.clear()
        try:
            await asyncio.wait_for(connected.wait(), _RECHECK)
        except asyncio.TimeoutError:
            pass  # look at is_closed again
    return True


def _too_large(n: int, nc: Any, remote: Endpoint, counts: Counters) -> None:
    counts.too_large += 1
    counts.error(
        "too_large",
        f"{remote.url}: a message of {n} bytes was refused: over the NATS server's "
        f"max_payload of {nc.max_payload} bytes",
    )


async def _publish_to_nats(
    stream: Stream,
    nc: Any,
    remote: Endpoint,
    opts: Options,
    counts: Counters,
    connected: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Local messages -> NATS publishes, a batch at a time, each batch confirmed by a flush."""
    errors = _import_nats().errors
    subject = remote.subject
    try:
        while True:
            if not await _connected_again(nc, connected, stop):
                return
            try:
                batch = await _until(stop, stream.take(BATCH))
            except Closed:
                return
            if batch is None:
                return
            counts.received += len(batch)
            left = len(batch)  # taken, outcome not yet counted
            sent = 0
            try:
                # A take that was waiting when the connection broke returns
                # while disconnected. Published now, the batch would sit in
                # nats-py's reconnect buffer and the flush would return at
                # once (no PING/PONG without a read loop): hold it instead.
                if not await _held_until_connected(nc, connected):
                    counts.undelivered += left
                    counts.error(
                        "closed",
                        f"{remote.url}: {left} messages taken were not published: "
                        "the connection closed for good",
                    )
                    return
                epoch = (counts.disconnects, nc.stats["reconnects"])
                limit = nc.max_payload
                for message in batch:
                    left -= 1
                    if len(message) > limit:
                        _too_large(len(message), nc, remote, counts)
                        continue
                    try:
                        await nc.publish(subject, message)
                        sent += 1
                    except errors.OutboundBufferLimitError:
                        counts.undelivered += 1
                        counts.error(
                            "buffer",
                            f"{remote.url}: a message was dropped: disconnected and the "
                            f"reconnect buffer ({opts.buffer_bytes} bytes) is full",
                        )
                    except errors.Error as exc:  # closed, draining
                        counts.undelivered += 1
                        counts.error("publish", f"{remote.url}: publish failed: {exc!r}")
                if not sent:
                    continue
                try:
                    await nc.flush(timeout=max(opts.request_timeout, 1.0))
                    # A flush on a broken connection returns without a PONG:
                    # only a connection that stayed up confirms the batch.
                    confirmed = nc.is_connected and epoch == (
                        counts.disconnects,
                        nc.stats["reconnects"],
                    )
                except Exception:  # noqa: BLE001 - flush timeout, closed: not confirmed
                    confirmed = False
            except asyncio.CancelledError:
                # Stopped past close_timeout: what went out is unconfirmed, the rest undelivered.
                counts.unconfirmed += sent
                counts.undelivered += left
                if sent or left:
                    counts.error(
                        "close",
                        f"{remote.url}: stopped with {sent} messages unconfirmed and {left} "
                        "taken but not published (the server did not answer in close_timeout)",
                    )
                raise
            if confirmed:
                counts.forwarded += sent
            else:
                counts.unconfirmed += sent
                counts.error(
                    "unconfirmed",
                    f"{remote.url}: {sent} messages went out on a connection that broke before "
                    "the server confirmed them (not sent again)",
                )
    finally:
        stream.end()


async def _requests_to_nats(
    stream: Stream,
    nc: Any,
    remote: Endpoint,
    opts: Options,
    counts: Counters,
    connected: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """A local client's messages -> NATS requests; each reply goes back to that client, in order.

    A request that fails (too large, timed out, no responder) closes that
    client's connection, so it sees Closed instead of waiting for a reply.
    """
    try:
        while True:
            if not await _connected_again(nc, connected, stop):
                return
            try:
                batch = await _until(stop, stream.take(1))
            except Closed:
                return
            if batch is None:
                return
            for message in batch:
                counts.received += 1
                try:
                    go_on = await _request(message, stream, nc, remote, opts, counts, connected)
                except asyncio.CancelledError:  # stopped past close_timeout
                    counts.undelivered += 1
                    counts.error("close", f"{stream.name}: a request had no reply yet at close")
                    raise
                if not go_on:
                    return
    finally:
        stream.end()


async def _request(
    message: bytes,
    stream: Stream,
    nc: Any,
    remote: Endpoint,
    opts: Options,
    counts: Counters,
    connected: asyncio.Event,
) -> bool:
    """One request, its reply sent back, its outcome counted; False if the client must go."""
    errors = _import_nats().errors
    # Taken as the connection broke: a request now would wait in nats-py's
    # reconnect buffer and likely time out; wait for the reconnect instead.
    if not await _held_until_connected(nc, connected):
        counts.undelivered += 1
        counts.error(
            "closed", f"{remote.url}: the connection closed for good: closing {stream.name}"
        )
        return False
    if len(message) > nc.max_payload:
        _too_large(len(message), nc, remote, counts)
        return False
    try:
        answer = await nc.request(remote.subject, message, timeout=opts.request_timeout)
    except (errors.Error, asyncio.TimeoutError) as exc:
        counts.undelivered += 1
        what = type(exc).__name__
        counts.error("request", f"{remote.url}: request failed ({what}): closing {stream.name}")
        return False
    try:
        await stream.reply(answer.data)
    except (OSError, Closed, ValueError) as exc:
        counts.undelivered += 1
        counts.error("reply", f"{stream.name}: the reply could not be sent back: {exc}")
        return False
    counts.forwarded += 1
    return True


def _make_delivery(
    sink: Sink, nc: Any, remote: Endpoint, opts: Options, counts: Counters, ended: asyncio.Event
) -> tuple[Callable[[Any], Any], Callable[[Any], Awaitable[None]]]:
    """The subscription's callback (one NATS message -> the local endpoint, or a round trip),
    and ``settle(sub)``, which counts at close what the callback never got to."""
    errors = _import_nats().errors
    local = sink.url
    busy: set[asyncio.Task[Any]] = set()  # nats-py's tasks now in a delivery
    settled = False

    async def deliver(msg: Any) -> None:
        if settled:
            return  # counted by settle() with the queue it came from
        counts.received += 1
        if ended.is_set():
            counts.undelivered += 1
            return
        task = asyncio.current_task()
        assert task is not None
        busy.add(task)
        try:
            await _deliver_one(msg)
        except asyncio.CancelledError:  # closed while the local side was not taking it
            if not settled:
                counts.undelivered += 1
            raise
        finally:
            busy.discard(task)

    async def settle(sub: Any) -> None:
        """Once the connection is closed: count what nats-py still queued, and a stuck delivery.

        Closing cancelled nats-py's delivery task; a delivery in flight counts
        itself as it ends, so it is waited for first (up to close_timeout).
        """
        nonlocal settled
        if busy:
            await asyncio.wait(set(busy), timeout=opts.close_timeout)
        settled = True
        queued = sub.pending_msgs  # never handed to the callback: not yet received
        counts.received += queued
        counts.undelivered += queued + len(busy)
        if queued or busy:
            counts.error(
                "close", f"{queued + len(busy)} messages from NATS were still waiting at close"
            )

    async def _deliver_one(msg: Any) -> None:
        try:
            if opts.request:
                answer = await sink.round_trip(msg.data, opts.request_timeout)
                if msg.reply:
                    if len(answer) > nc.max_payload:
                        _too_large(len(answer), nc, remote, counts)
                        return
                    await nc.publish(msg.reply, answer)
            else:
                await sink.put(msg.data)
        except MessageTooLarge as exc:
            counts.too_large += 1
            counts.error("local_too_large", str(exc))
            return
        except Closed:
            counts.undelivered += 1
            counts.error("local_closed", f"{local}: closed; the bridge stops")
            ended.set()
            return
        except (OSError, Timeout, ValueError, errors.Error) as exc:
            counts.undelivered += 1
            counts.error("local", f"{local}: not delivered: {exc}")
            return
        counts.forwarded += 1

    return deliver, settle
