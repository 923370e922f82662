"""Signals (signal): ``signal://PID?sig=USR1`` to send, ``signal://self?sig=USR1,RTMIN+1`` to serve.

A signal carries one 32-bit int (``sigqueue(2)``'s ``sival_int``) and says
who sent it (pid, uid). A client sends with :func:`sigqueue
<fastipc.transports._sigsys.sigqueue>`; a server reads a ``signalfd(2)`` in
the server core's selector, so each signal is a message: the handler gets
the payload as decimal text (``b"42"``; ``int(message)`` gives it back) and
a :class:`SignalPeer` with ``signal``, ``value``, ``pid``, ``uid``.

Kernel semantics, kept as they are: standard signals (USR1, ...) merge while
pending, so two sent quickly may arrive as one (with the first payload);
real-time signals (``RTMIN+n``) queue, in order, up to the receiver's user's
``RLIMIT_SIGPENDING``; a full queue fails the send with ``BlockingIOError``
(EAGAIN), never silently.

Signal masks. A signalfd sees a signal only while it is blocked in every
thread (otherwise the kernel runs its default action in a thread that does
not block it: USR1 would kill the process). Opening a server blocks the
served signals in the calling thread; threads it starts afterwards (the
server's own thread of :meth:`~fastipc.Server.start` included) inherit the
mask. A thread that is already running cannot have its mask changed from
outside, so opening refuses (RuntimeError naming the threads) when one of
them does not block a served signal: open the server before starting
threads, or block the signals in them first (``signal.pthread_sigmask``).
Closing the server, from the thread that opened it, reads away the signals
still pending for it (logged) and unblocks what it blocked; closed from
another thread, the opener's mask cannot be restored (logged at WARNING).
SIGKILL and SIGSTOP cannot be caught and SEGV, BUS, FPE and ILL mean a crash:
serving them is refused; one process serves a signal in one server at a time.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import threading

from .._registry import Transport, register
from ..endpoints import Endpoint, signal_name
from ..errors import Closed
from ..server import Peer, Server, Source
from . import _sigsys
from .base import Client

__all__ = ["UNSERVABLE", "SignalClient", "SignalPeer", "SignalSource"]

log = logging.getLogger("fastipc.server")

#: Signals a server refuses: uncatchable (KILL, STOP) or a crash (SEGV, BUS, FPE, ILL).
UNSERVABLE = frozenset(
    int(s)
    for s in (
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
    )
)
#: Records read per readiness event (one read).
READ_BATCH = 64

_served: set[int] = set()  # signals some open SignalSource of this process serves
_served_lock = threading.Lock()


def _names(signos: object) -> str:
    return ", ".join(signal_name(s) for s in sorted(signos))  # type: ignore[call-overload]


def _unblocking_threads(signos: set[int]) -> list[str]:
    """Other threads of this process (``tid (name)``) in which one of ``signos`` is not blocked."""
    me = threading.get_native_id()
    names = {t.native_id: t.name for t in threading.enumerate()}
    found = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return []
    for tid in tids:
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # the thread ended meanwhile
        missing = [s for s in signos if not blocked >> (s - 1) & 1]
        if missing:
            found.append(f"{tid} ({names.get(int(tid), 'not a Python thread')}: {_names(missing)})")
    return found


class SignalSource(Source):
    """A signalfd of the signals in ``?sig=``, blocked in this thread while it is open."""

    def __init__(self, ep: Endpoint, server: Server) -> None:
        self.endpoint = ep
        self._server = server
        self._fd = -1
        self._claimed: set[int] = set()
        self._blocked: set[int] = set()  # what this source blocked (was not blocked before)
        self._thread = threading.get_ident()
        if ep.pid is not None and ep.pid != os.getpid():
            raise ValueError(
                f"endpoint {ep.url!r}: a server receives its own process's signals; "
                "serve signal://self?sig=..."
            )
        signos = set(ep.sig)
        if not signos:
            raise ValueError(f"endpoint {ep.url!r}: say which signals to serve: ?sig=USR1,RTMIN+1")
        refused = signos & UNSERVABLE
        if refused:
            raise ValueError(
                f"endpoint {ep.url!r}: {_names(refused)} cannot be served (SIGKILL and SIGSTOP "
                "cannot be caught; SEGV, BUS, FPE and ILL report a crash)"
            )
        with _served_lock:
            taken = signos & _served
            if taken:
                raise OSError(
                    errno.EADDRINUSE,
                    f"{_names(taken)} already served by another server of this process",
                    ep.url,
                )
            _served.update(signos)
        self._claimed = signos
        try:
            before = signal.pthread_sigmask(signal.SIG_BLOCK, signos)
            self._blocked = {s for s in signos if s not in {int(b) for b in before}}
            loose = _unblocking_threads(signos)
            if loose:
                raise RuntimeError(
                    f"{ep.url}: threads already running do not block the served signals, so "
                    f"the kernel could deliver them there instead: {'; '.join(loose)}. Serve "
                    "signals before starting threads, or block them in those threads first "
                    "(signal.pthread_sigmask)"
                )
            try:
                self._fd = _sigsys.signalfd(sorted(signos))
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, ep.url) from None
        except BaseException:
            self.close()
            raise
        self.address = ep.url

    def attach(self, server: Server) -> None:
        server.selector.register(self._fd, selectors.EVENT_READ, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        try:
            data = os.read(self._fd, _sigsys.SIGINFO_SIZE * READ_BATCH)
        except (BlockingIOError, InterruptedError):
            return
        for info in _sigsys.unpack(data):
            self._server.dispatch(str(info.value).encode(), SignalPeer(info))

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                dropped = 0
                while True:
                    try:
                        data = os.read(fd, _sigsys.SIGINFO_SIZE * READ_BATCH)
                    except (BlockingIOError, InterruptedError):
                        break
                    if not data:
                        break
                    dropped += len(data) // _sigsys.SIGINFO_SIZE
                if dropped:
                    log.info("%s: %d signals pending at close dropped", self.address, dropped)
            finally:
                os.close(fd)
        blocked, self._blocked = self._blocked, set()
        if blocked:
            if threading.get_ident() == self._thread:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
            else:
                log.warning(
                    "%s closed in another thread than the one that opened it: %s stay blocked "
                    "there",
                    self.endpoint.url,
                    _names(blocked),
                )
        with _served_lock:
            _served.difference_update(self._claimed)
        self._claimed = set()


class SignalPeer(Peer):
    """The sender of one signal: ``signal`` (number), ``value`` (the int payload), ``pid``, ``uid``.

    ``queued`` is True when it came from ``sigqueue`` (a payload was sent),
    False for ``kill()`` or the kernel (``value`` is then 0). ``address`` is
    the sender's pid. A signal cannot be answered: :meth:`send` raises Closed.
    """

    def __init__(self, info: _sigsys.SigInfo) -> None:
        self.signal = info.signo
        self.value = info.value
        self.pid = info.pid
        self.uid = info.uid
        self.queued = info.code == _sigsys.SI_QUEUE
        self.address = info.pid

    @property
    def name(self) -> str:
        """The signal's name: ``SIGUSR1``, ``SIGRTMIN+1``."""
        return signal_name(self.signal)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        raise Closed(f"a signal cannot be answered (send one to pid {self.pid} instead)")

    def describe(self) -> str:
        return f"{self.name} from pid {self.pid} uid {self.uid}"


def _value(data: object) -> int:
    if isinstance(data, bool):
        raise TypeError("a signal's payload is an int, not a bool")
    if isinstance(data, int):
        value = data
    else:
        try:
            text = bytes(data).decode("ascii").strip().rstrip("\0")  # type: ignore[call-overload]
            value = int(text, 0)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise ValueError(
                f"a signal carries one int: send an int or its decimal text, not {data!r}"
            ) from None
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"a signal's payload is a 32-bit int (sival_int), got {value}")
    return value


class SignalClient(Client):
    """Sends one signal per message, with an int payload, to the process of ``signal://PID``.

    :meth:`send` takes an int (``send(42)``) rather than bytes, because the
    payload is one int; bytes holding its decimal text (``b"42"``, what the
    command line passes) are accepted too. It never blocks. One-way.
    """

    def __init__(self, ep: Endpoint) -> None:
        super().__init__(ep)
        if len(ep.sig) != 1:
            raise ValueError(
                f"endpoint {ep.url!r}: name the one signal to send: ?sig=USR1 (or RTMIN+1)"
            )
        self.signal = ep.sig[0]
        self._open = True

    @property
    def pid(self) -> int:
        """The process signals go to (this process for ``signal://self``)."""
        return os.getpid() if self.endpoint.pid is None else self.endpoint.pid

    def send(
        self,
        data: int | bytes | bytearray | memoryview,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Queue the signal carrying ``data`` (an int from -2**31 to 2**31-1) to the process.

        Never waits (``timeout`` is accepted for the common signature).
        Raises ProcessLookupError (no such pid), PermissionError (not
        allowed to signal it; naming the pid), BlockingIOError (EAGAIN: its
        queue of pending signals is full, RLIMIT_SIGPENDING: nothing was
        sent), ValueError for a payload that is not a 32-bit int.
        """
        self._no_priority(priority)
        if not self._open:
            raise ValueError(f"operation on a closed client ({self.address})")
        value = _value(data)
        pid = self.pid
        try:
            _sigsys.sigqueue(pid, self.signal, value)
        except OSError as exc:
            what = {
                errno.ESRCH: "no such process",
                errno.EPERM: f"not allowed to send {signal_name(self.signal)} to this process "
                "(another user's)",
                errno.EAGAIN: "its queue of pending signals is full (RLIMIT_SIGPENDING); "
                "the signal was not sent",
            }.get(exc.errno or 0, exc.strerror)
            raise OSError(exc.errno, what, f"pid {pid}") from None

    def recv(self, timeout: float | None = None) -> bytes:
        raise ValueError(
            f"{self.address}: signals are received by serving signal://self?sig=..., "
            "not by a client"
        )

    def fileno(self) -> int:
        raise ValueError(f"{self.address}: a signal client has no fd")

    def close(self) -> None:
        self._open = False

    @property
    def closed(self) -> bool:
        return not self._open


register(
    Transport(
        "signal",
        open_source=SignalSource,
        open_client=lambda ep, framing, timeout, max_message: SignalClient(ep),
        one_way=True,
        receive_by_connecting=False,
    )
)
