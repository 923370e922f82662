"""POSIX message queues (mq): ``mq:///name?maxmsg=10&msgsize=256&mode=0600&reply=/other&owner=UID``.

A queue holds whole messages with priorities: a receiver gets the highest
priority first, FIFO within a priority. ``connect`` and ``serve`` create
the queue if it does not exist (``maxmsg`` messages of at most ``msgsize``
bytes, permissions exactly ``mode``, default 0600) or open it as it is
(its attributes are then the ones it was made with). A queue that exists
already must be owned by this user, root or the uid ``?owner=`` names,
and allow no more than ``mode``, else PermissionError says so: another
user who made it first could read or forge its messages. A queue outlives its
users until it is unlinked: a server unlinks the queues it created when it
closes; ``fastipc rm mq:///name`` or :meth:`QueueClient.unlink` remove
others.

A queue has no sender addresses, so a server's replies go to a second
queue named by ``?reply=/name`` on both sides' URLs; the client then reads
its replies there.

On Linux a queue descriptor can be polled, so a queue joins the server's
selector loop like a socket. posix_ipc does the system calls.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import stat
from typing import Any

import posix_ipc

from .._checks import check_buffer, deadline, time_left
from .._registry import Transport, register
from ..endpoints import Endpoint
from ..errors import Closed, Empty, Full, MessageTooLarge
from ..server import Peer, Server, Source
from ..socket_file import mode_option
from .base import Client

__all__ = ["QueueClient", "QueuePeer", "QueueSource", "open_queue", "queue_limits"]

log = logging.getLogger("fastipc.server")

_PROC = "/proc/sys/fs/mqueue"
#: Messages read per readiness event.
READ_BATCH = 64
#: Longest wait (seconds) before Python checks for signals again.
_SLICE = 0.2


def _read_limit(name: str, fallback: int) -> int:
    try:
        with open(f"{_PROC}/{name}") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return fallback


def queue_limits() -> dict[str, int]:
    """The system's queue limits: msg_max, msgsize_max, msg_default, msgsize_default."""
    return {
        "msg_max": _read_limit("msg_max", 10),
        "msgsize_max": _read_limit("msgsize_max", 8192),
        "msg_default": _read_limit("msg_default", 10),
        "msgsize_default": _read_limit("msgsize_default", 8192),
    }


def _attr(
    ep: Endpoint, key: str, value: int | None, default: int, limit: int, limit_name: str
) -> int:
    """Option ``key``'s ``value`` (from parse(); None: ``default``), within the system's ``limit``."""
    if value is None:
        return min(default, limit)
    if value > limit:
        raise ValueError(
            f"endpoint {ep.url!r}: option {key}={value} exceeds the system limit "
            f"{_PROC}/{limit_name} ({limit})"
        )
    return value


def _os_error(exc: posix_ipc.Error, name: str) -> OSError:
    if isinstance(exc, posix_ipc.ExistentialError):
        code = errno.EEXIST if "exists" in str(exc) else errno.ENOENT
        return OSError(code, str(exc), f"mq:///{name[1:]}")
    if isinstance(exc, posix_ipc.PermissionsError):
        return OSError(errno.EACCES, str(exc), f"mq:///{name[1:]}")
    return OSError(f"mq:///{name[1:]}: {exc}")


def open_queue(ep: Endpoint, name: str | None = None) -> tuple[Any, bool]:
    """Create or open queue ``name`` (default: the endpoint's) with ``ep``'s options.

    Returns (queue, created). Raises ValueError naming a limit an option
    exceeds, OSError subclasses naming the queue.
    """
    qname = name or ep.name
    assert qname is not None
    limits = queue_limits()
    maxmsg = _attr(ep, "maxmsg", ep.maxmsg, limits["msg_default"], limits["msg_max"], "msg_max")
    msgsize = _attr(
        ep, "msgsize", ep.msgsize, limits["msgsize_default"], limits["msgsize_max"], "msgsize_max"
    )
    mode = mode_option(ep, None)
    try:
        try:
            q = posix_ipc.MessageQueue(
                qname, posix_ipc.O_CREX, mode=mode, max_messages=maxmsg, max_message_size=msgsize
            )
            created = True
        except posix_ipc.ExistentialError:
            q = posix_ipc.MessageQueue(qname)
            created = False
    except posix_ipc.Error as exc:
        raise _os_error(exc, qname) from None
    except ValueError as exc:  # EINVAL: e.g. over the kernel's hard limits
        raise ValueError(f"mq://{qname}: {exc} (maxmsg={maxmsg}, msgsize={msgsize})") from None
    if created:
        try:
            os.fchmod(q.mqd, mode)  # exactly `mode`: mq_open applies the umask
        except OSError:
            q.close()
            posix_ipc.unlink_message_queue(qname)
            raise
    else:
        try:
            _check_existing(q, qname, mode, ep.owner)
        except BaseException:
            q.close()
            raise
    q.block = False
    return q, created


def _check_existing(q: Any, name: str, mode: int, owner: int | None) -> None:
    """Refuse a queue this side did not make that an untrusted user owns or that is
    wider than ``mode``: whoever else can open it could read the messages or forge them."""
    st = os.fstat(q.mqd)
    where = f"mq://{name}"
    if st.st_uid not in (os.geteuid(), 0, owner):
        raise PermissionError(
            errno.EPERM,
            f"owned by uid {st.st_uid}, not by this user or root: refusing a queue another "
            f"user made (they could read or forge its messages); remove it "
            f"(fastipc rm {where}), or add ?owner={st.st_uid} to the URL to trust that user",
            where,
        )
    wider = stat.S_IMODE(st.st_mode) & ~mode
    if wider:
        raise PermissionError(
            errno.EPERM,
            f"mode {stat.S_IMODE(st.st_mode):04o} gives more than the {mode:04o} asked: "
            f"refusing it; add ?mode={stat.S_IMODE(st.st_mode):04o} to the URL if that is "
            f"meant, or remove the queue (fastipc rm {where})",
            where,
        )


def _check_size(q: Any, data: bytes | bytearray | memoryview, name: str, what: str) -> bytes:
    # Not bytes(data): of an int, that is so many NUL bytes (send(3) would send b"\0\0\0").
    payload = data if type(data) is bytes else bytes(check_buffer(data, what))
    if len(payload) > q.max_message_size:
        raise MessageTooLarge(
            f"mq://{name}: the queue holds messages of at most {q.max_message_size} bytes "
            f"(msgsize), got {len(payload)}"
        )
    return payload


class QueueSource(Source):
    """A queue a server receives from (and a reply queue it answers on)."""

    def __init__(self, ep: Endpoint, server: Server) -> None:
        assert ep.name is not None
        self.endpoint = ep
        self._server = server
        self._queue, self._created = open_queue(ep)
        self._reply: Any = None
        self._reply_created = False
        name = ep.reply
        if name is not None:
            try:
                self._reply, self._reply_created = open_queue(ep, name)
            except BaseException:
                self.close()
                raise
        self.address = ep.url

    def attach(self, server: Server) -> None:
        server.selector.register(self._queue.mqd, selectors.EVENT_READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        q = self._queue
        for _ in range(READ_BATCH):
            try:
                message, priority = q.receive()
            except posix_ipc.BusyError:
                return
            except posix_ipc.SignalError:
                continue
            self._server.dispatch(message, QueuePeer(self, priority))

    def reply(self, data: bytes | bytearray | memoryview, priority: int) -> None:
        q = self._reply
        if q is None:
            raise Closed(
                f"{self.endpoint.url}: no reply queue; add ?reply=/name to both URLs to answer"
            )
        payload = _check_size(q, data, q.name, "a reply")
        try:
            q.send(payload, priority=priority)
        except posix_ipc.BusyError:
            log.warning("reply dropped: reply queue %s is full", q.name)

    def close(self) -> None:
        for q, created in ((self._queue, self._created), (self._reply, self._reply_created)):
            if q is None:
                continue
            try:
                if created:
                    q.unlink()
            except posix_ipc.ExistentialError:
                pass  # someone removed it already
            finally:
                q.close()
        self._queue = self._reply = None


class QueuePeer(Peer):
    """The (anonymous) sender of one queue message; ``priority`` is the message's."""

    __slots__ = ("_source", "priority")

    def __init__(self, source: QueueSource, priority: int) -> None:
        self._source = source
        self.priority = priority
        self.address = None

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Answer on the server's reply queue, with this message's priority."""
        self._source.reply(data, self.priority)


class QueueClient(Client):
    """A message-queue client: :meth:`send` with a priority, :meth:`recv` highest priority first.

    Receives from the ``?reply=`` queue when one is named, else from the
    queue itself. Where replies go is the server's choice (its own URL's
    ``?reply=``): the client's ``?reply=`` only says where it listens, so
    both URLs must name the same queue. A reply queue this client had to
    create (no server had opened it: nobody would answer there) is removed
    when the client closes, so a client that gives up leaves nothing
    behind; the request queue stays, holding what was sent for a server
    to come.
    """

    def __init__(self, ep: Endpoint, timeout: float | None) -> None:
        super().__init__(ep)
        self._queue, _ = open_queue(ep)
        self._in = self._queue
        self._in_created = False
        name = ep.reply
        if name is not None:
            try:
                self._in, self._in_created = open_queue(ep, name)
            except BaseException:
                q, self._queue = self._queue, None  # closed: __del__ must not close it again
                q.close()
                raise

    def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Send ``data`` with ``priority`` (0 to 32767; higher is received first).

        Waits while the queue is full. Raises
        :class:`~fastipc.MessageTooLarge` over the queue's ``msgsize``,
        :class:`~fastipc.Timeout`, ValueError for a bad priority.
        """
        q = self._open(self._queue)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not 0 <= priority <= posix_ipc.QUEUE_PRIORITY_MAX:
            raise ValueError(
                f"priority must be between 0 and {posix_ipc.QUEUE_PRIORITY_MAX}, got {priority}"
            )
        payload = _check_size(q, data, q.name, "message")
        until = deadline(timeout)
        while True:
            try:
                q.send(payload, priority=priority)
                return
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                continue
            self._wait(q, select.POLLOUT, time_left(until), "the queue stayed full")

    def recv(self, timeout: float | None = None) -> bytes:
        return self.recv_priority(timeout)[0]

    def recv_priority(self, timeout: float | None = None) -> tuple[bytes, int]:
        """Wait for the next message; return (message, its priority). Highest priority first."""
        q = self._open(self._in)
        until = deadline(timeout)
        while True:
            try:
                message, priority = q.receive()
                return message, priority
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                continue
            self._wait(q, select.POLLIN, time_left(until), "nothing received")

    def _wait(self, q: Any, events: int, left: float | None, what: str) -> None:
        if left is not None and left <= 0:
            failed = Full if events == select.POLLOUT else Empty
            raise failed(f"mq://{q.name}: {what} within the timeout")
        poller = select.poll()
        poller.register(q.mqd, events)
        wait = _SLICE if left is None else min(left, _SLICE)
        poller.poll(max(1, int(wait * 1000)))

    def unlink(self) -> None:
        """Remove the queue (and the reply queue) from the system; this client stays usable."""
        for q in {id(self._queue): self._queue, id(self._in): self._in}.values():
            try:
                q.unlink()
            except posix_ipc.ExistentialError:
                pass

    def fileno(self) -> int:
        """The descriptor of the queue :meth:`recv` reads (pollable on Linux)."""
        return int(self._open(self._in).mqd)

    def close(self) -> None:
        q, self._queue = self._queue, None
        if q is None:
            return
        if self._in is not q:
            try:
                if self._in_created:
                    self._in.unlink()
            except posix_ipc.ExistentialError:
                pass  # removed already (unlink(), or `fastipc rm`)
            finally:
                self._in.close()
        q.close()
        self._in = None

    @property
    def closed(self) -> bool:
        return self._queue is None

    def _open(self, q: Any) -> Any:
        if self._queue is None:
            raise ValueError(f"operation on a closed client ({self.address})")
        return q


register(
    Transport(
        "mq",
        open_source=QueueSource,
        open_client=lambda ep, framing, timeout, max_message: QueueClient(ep, timeout),
        reply_option="reply",
    )
)
