"""The peers benchmark's measuring process: one figure of one transport, with forked producers and consumers.

Started by :mod:`fastipc.bench.peers` as ``python -m fastipc.bench peer
SPEC_JSON`` (``FASTIPC_BACKEND`` already set). :func:`measure` makes the
transport's shared objects, forks the producer and consumer processes (pinned
to distinct CPUs for one pair), plays the placement probe between them, and
returns the figure. This process only coordinates: it sleeps while they run
and reads the consumers' running message counts from a shared page at the
start and end of a fixed window, so every transport is timed the same way.

Every transport is a :class:`Transport` with the same small surface
(``send``/``recv`` one message, ``send_many``/``recv_many`` where it has a
batch API, ``recv_into`` a preallocated buffer, ``view`` where it lends
memory in place, ``wait`` for the idle figure). Every message's first byte
is 0; a message whose first byte is 1 tells the consumer to stop, so the
consumer touches every message it takes. The rule for "read" at 1 MiB: every
byte of every message passes through the consumer's CPU into memory the
consumer owns (``recv_into`` a preallocated buffer where the transport has
one, else the ``bytes`` its ``recv`` returns, or a copy out of a lent view).
The ``view`` figure instead reads the first and last byte in place.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import mmap
import os
import signal
import socket
import statistics
import struct
import tempfile
import time
from array import array
from collections.abc import Callable
from typing import Any

__all__ = ["TRANSPORTS", "Transport", "available", "measure"]

_STOP = 1  # first byte of the stop message
_HDR = struct.Struct("<I")
# The control page shared by the coordinator and its children.
_CTRL = 4096
_READY = 0  # one byte per child, 0..63
_GO = 64
_HALT = 65
_PING = 128  # the placement probe's bytes (as in ring_roles)
_PONG = 192
_COUNTS = 256  # int64 running message count per consumer, 8 consumers max
_PROBE_ROUNDS = 1000
_PROBE_BUDGET_S = 0.05


class Skip(Exception):
    """This transport cannot make this figure (or is not installed); the message says why."""


class Transport:
    """One direction of one transport; set up before the fork, opened on each side after it."""

    #: Shown in the report.
    label = ""
    #: send_many / recv_many exist (a real batch API of the transport).
    batch = False
    #: A zero-copy view of a received message exists.
    view = False
    #: Several producers and consumers may share one instance.
    fanin = False
    #: Said in the report when set (e.g. a capacity the kernel capped).
    note: str | None = None

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        self.spec = spec
        self.token = token
        self.size = int(spec["size"])

    # -- coordinator, before and after the children ------------------------
    def cleanup(self) -> None:
        """Remove what the transport left (named objects); called once, by the coordinator."""

    # -- each child --------------------------------------------------------
    def open_producer(self) -> None:
        """Open the sending side in this (forked) process."""

    def open_consumer(self) -> None:
        """Open the receiving side in this (forked) process."""

    def close(self) -> None:
        """Close this process's side."""

    def send(self, msg: bytes | bytearray) -> None:
        raise NotImplementedError

    def recv(self) -> Any:
        """One message as a buffer whose first byte can be read."""
        raise NotImplementedError

    def send_many(self, msgs: list[bytes]) -> None:
        raise Skip("no batch API")

    def recv_many(self, n: int) -> list[Any]:
        raise Skip("no batch API")

    def recv_into(self, buf: bytearray) -> int:
        """Read one message into ``buf``; default: ``recv`` returns it as new bytes."""
        data = self.recv()
        return len(data) if data[0] != _STOP else -1

    def first_last(self) -> tuple[int, int]:
        """The first and last byte of one message read in place (the view figure)."""
        raise Skip("no zero-copy view")

    def wait(self, seconds: float) -> bool:
        """Block up to ``seconds`` for one message; True if one came."""
        raise NotImplementedError


# -- fastipc -------------------------------------------------------------------


class FastRing(Transport):
    """fastipc Ring (shared memory, MPMC)."""

    batch = view = fanin = True

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        from fastipc import Ring

        self.name = f"{token}.r"
        Ring.create(self.name, int(spec["capacity"])).close()

    def _open(self) -> None:
        from fastipc import Ring

        self.r = Ring.open(self.name)
        self.send = self.r.send  # type: ignore[method-assign,assignment]
        self.recv = self.r.recv  # type: ignore[method-assign]
        self.send_many = self.r.send_many  # type: ignore[method-assign,assignment]
        self.recv_many = self.r.recv_many  # type: ignore[method-assign,assignment]
        self.recv_into = self.r.recv_into  # type: ignore[method-assign,assignment]

    open_producer = open_consumer = _open

    def close(self) -> None:
        self.r.close()

    def first_last(self) -> tuple[int, int]:
        with self.r.recv_view() as v:
            return v[0], v[-1]

    def wait(self, seconds: float) -> bool:
        from fastipc.errors import Timeout

        try:
            self.r.recv(timeout=seconds)
        except Timeout:
            return False
        return True

    def cleanup(self) -> None:
        from fastipc import Ring

        try:
            Ring.unlink_name(self.name)
        except FileNotFoundError:
            pass


class FastChannel(Transport):
    """fastipc Channel (Unix stream socket, shared-memory hand-off for large messages)."""

    batch = view = True

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        from fastipc import Channel

        self.a, self.b = Channel.pair()

    def open_producer(self) -> None:
        self.a.close()
        self.c = self.b
        self.send = self.c.send  # type: ignore[method-assign,assignment]
        self.send_many = self.c.send_many  # type: ignore[method-assign,assignment]

    def open_consumer(self) -> None:
        self.b.close()
        self.c = self.a
        self.recv = self.c.recv  # type: ignore[method-assign]
        self.recv_many = self.c.recv_many  # type: ignore[method-assign,assignment]
        self.recv_into = self.c.recv_into  # type: ignore[method-assign,assignment]

    def close(self) -> None:
        self.c.close()

    def first_last(self) -> tuple[int, int]:
        with self.c.recv_view() as v:
            return v[0], v[-1]

    def wait(self, seconds: float) -> bool:
        from fastipc.errors import Timeout

        try:
            self.c.recv(timeout=seconds)
        except Timeout:
            return False
        return True

    def cleanup(self) -> None:
        self.a.close()
        self.b.close()


# -- the standard library ------------------------------------------------------


class MpQueue(Transport):
    """multiprocessing.Queue: pickles every object, a feeder thread writes a pipe."""

    label = "multiprocessing.Queue"
    fanin = True

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        import multiprocessing

        # Bounded like every other transport here (the capacity in messages):
        # an unbounded Queue lets the producer run ahead into memory.
        depth = max(1, int(spec["capacity"]) // max(self.size, 1))
        self.q = multiprocessing.get_context("fork").Queue(maxsize=depth)
        self.send = self.q.put  # type: ignore[method-assign,assignment]
        self.recv = self.q.get  # type: ignore[method-assign]

    def close(self) -> None:
        self.q.close()
        self.q.join_thread()

    def wait(self, seconds: float) -> bool:
        import queue

        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return False
        return True


class MpPipe(Transport):
    """multiprocessing.Pipe(duplex=False) with send_bytes / recv_bytes (no pickling)."""

    label = "multiprocessing.Pipe bytes"

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        import multiprocessing

        self.r, self.w = multiprocessing.Pipe(duplex=False)

    def open_producer(self) -> None:
        self.r.close()
        self.send = self.w.send_bytes  # type: ignore[method-assign,assignment]

    def open_consumer(self) -> None:
        self.w.close()
        self.recv = self.r.recv_bytes  # type: ignore[method-assign]

    def recv_into(self, buf: bytearray) -> int:
        return self.r.recv_bytes_into(buf)

    def close(self) -> None:
        self.r.close()
        self.w.close()

    def wait(self, seconds: float) -> bool:
        return bool(self.r.poll(seconds))

    def cleanup(self) -> None:
        self.close()


class UnixStream(Transport):
    """A plain length-prefixed loop on an AF_UNIX stream socket, as a careful Python programmer writes it.

    The sender prefixes each message with its 4-byte length and ``sendall``s
    it (a batch: the frames joined into one ``sendall``); the receiver
    ``recv_into``s a 1 MiB bytearray and cuts frames from it, refilling it
    only when it holds no whole frame; a large message goes straight into
    the caller's buffer with ``MSG_WAITALL``.
    """

    label = "AF_UNIX stream (plain Python)"
    batch = True

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        self.s, self.t = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def open_producer(self) -> None:
        self.s.close()
        self.sock = self.t

    def open_consumer(self) -> None:
        self.t.close()
        self.sock = self.s
        self.buf = bytearray(1 << 20)
        self.mv = memoryview(self.buf)
        self.pos = self.end = 0

    def close(self) -> None:
        self.sock.close()

    def cleanup(self) -> None:
        self.s.close()
        self.t.close()

    def send(self, msg: bytes | bytearray) -> None:
        if len(msg) <= 65536:  # one syscall; the copy of a small message costs less
            self.sock.sendall(_HDR.pack(len(msg)) + msg)
        else:  # no 1 MiB concatenation: the header, then the message itself
            self.sock.sendall(_HDR.pack(len(msg)))
            self.sock.sendall(msg)

    def send_many(self, msgs: list[bytes]) -> None:
        pack = _HDR.pack
        self.sock.sendall(b"".join([pack(len(m)) + m for m in msgs]))

    def _fill(self, need: int) -> None:
        """Make at least ``need`` bytes available from ``pos`` (moving the tail to the front)."""
        if self.pos:
            left = self.end - self.pos
            self.buf[:left] = self.mv[self.pos : self.end]
            self.pos, self.end = 0, left
        while self.end < need:
            n = self.sock.recv_into(self.mv[self.end :])
            if n == 0:
                raise EOFError("the sender closed the socket")
            self.end += n

    def recv(self) -> Any:
        pos = self.pos
        if self.end - pos < 4:
            self._fill(4)
            pos = 0
        (length,) = _HDR.unpack_from(self.buf, pos)
        if self.end - pos - 4 < length:
            self._fill(4 + length)
            pos = 0
        self.pos = pos + 4 + length
        return self.buf[pos + 4 : pos + 4 + length]

    def recv_many(self, n: int) -> list[Any]:
        if self.end - self.pos < 4:
            self._fill(4)
        out: list[Any] = []
        buf, unpack_from, pos, end = self.buf, _HDR.unpack_from, self.pos, self.end
        while len(out) < n and end - pos >= 4:
            (length,) = unpack_from(buf, pos)
            if end - pos - 4 < length:
                break
            out.append(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
        self.pos = pos
        if not out:
            return [self.recv()]
        return out

    def recv_into(self, buf: bytearray) -> int:
        hdr = bytearray(4)
        if self.sock.recv_into(hdr, 4, socket.MSG_WAITALL) != 4:
            raise EOFError("the sender closed the socket")
        (length,) = _HDR.unpack(hdr)
        got = self.sock.recv_into(buf, length, socket.MSG_WAITALL)
        return got if buf[0] != _STOP else -1

    def wait(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv_into(self.buf, 4)
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(None)
        return True


class UnixSeqpacket(Transport):
    """An AF_UNIX SOCK_SEQPACKET socketpair: one message per send/recv, boundaries kept by the kernel."""

    label = "AF_UNIX SEQPACKET"

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        self.s, self.t = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self.size > 100_000:
            # A datagram larger than the send buffer fails with EMSGSIZE; a user
            # sending 1 MiB must raise it (SO_SNDBUFFORCE: root; else skipped).
            force = getattr(socket, "SO_SNDBUFFORCE", 32)
            try:
                self.t.setsockopt(socket.SOL_SOCKET, force, 4 * self.size)
            except OSError as exc:
                raise Skip(f"cannot raise the send buffer above 1 MiB: {exc}") from None

    def open_producer(self) -> None:
        self.s.close()
        self.send = self.t.send  # type: ignore[method-assign,assignment]

    def open_consumer(self) -> None:
        self.t.close()
        size = self.size
        recv = self.s.recv
        self.recv = lambda: recv(size)  # type: ignore[method-assign]
        self.recv_into = self.s.recv_into  # type: ignore[method-assign,assignment]

    def close(self) -> None:
        self.s.close()
        self.t.close()

    cleanup = close

    def wait(self, seconds: float) -> bool:
        self.s.settimeout(seconds)
        try:
            self.s.recv(16)
        except TimeoutError:
            return False
        return True


class PosixMQ(Transport):
    """posix_ipc.MessageQueue: a kernel message queue, one message per call."""

    label = "posix_ipc.MessageQueue"
    fanin = True

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        import resource

        self.name = "/" + token.replace("/", "_") + ".mq"
        depth = max(1, min(int(spec["capacity"]) // max(self.size, 1), 65536))
        # Without CAP_SYS_RESOURCE the kernel caps the depth and message size
        # (/proc/sys/fs/mqueue); the queue then gets what it may have.
        limits = {}
        for key in ("msg_max", "msgsize_max"):
            try:
                with open(f"/proc/sys/fs/mqueue/{key}") as f:
                    limits[key] = int(f.read())
            except (OSError, ValueError):
                pass
        if os.geteuid() != 0 or not self._create(depth, probe=True):
            if self.size > limits.get("msgsize_max", self.size):
                raise Skip(
                    f"{self.size} B messages exceed /proc/sys/fs/mqueue/msgsize_max "
                    f"({limits['msgsize_max']} B)"
                )
            if depth > limits.get("msg_max", depth):
                depth = limits["msg_max"]
                self.note = (
                    f"queue depth {depth} messages (/proc/sys/fs/mqueue/msg_max; "
                    "raising it needs CAP_SYS_RESOURCE), not the capacity the others get"
                )
        self.depth = depth
        need = depth * (self.size + 64)
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
            if soft != resource.RLIM_INFINITY and soft < need:
                resource.setrlimit(resource.RLIMIT_MSGQUEUE, (need * 2, max(hard, need * 2)))
        except (OSError, ValueError):
            pass
        if not self._create(depth, probe=False):
            raise Skip(f"a {depth} x {self.size} B queue was refused")

    def _create(self, depth: int, probe: bool) -> bool:
        import posix_ipc

        try:
            mq = posix_ipc.MessageQueue(
                self.name, posix_ipc.O_CREX, max_messages=depth, max_message_size=self.size
            )
        except (OSError, ValueError, posix_ipc.Error):
            return False
        if probe:
            mq.close()
            mq.unlink()
        else:
            self.mq = mq
        return True

    def _open(self) -> None:
        import posix_ipc

        self.mq = posix_ipc.MessageQueue(self.name)
        self.send = self.mq.send  # type: ignore[method-assign]
        receive = self.mq.receive
        self.recv = lambda: receive()[0]  # type: ignore[method-assign]

    open_producer = open_consumer = _open

    def close(self) -> None:
        self.mq.close()

    def wait(self, seconds: float) -> bool:
        import posix_ipc

        try:
            self.mq.receive(seconds)
        except posix_ipc.BusyError:
            return False
        return True

    def cleanup(self) -> None:
        import posix_ipc

        try:
            posix_ipc.unlink_message_queue(self.name)
        except posix_ipc.ExistentialError:
            pass


# -- third-party peers -----------------------------------------------------------


class FasterFifo(Transport):
    """faster-fifo Queue (a C++ circular buffer in shared memory), raw bytes (no pickle)."""

    label = "faster-fifo raw bytes"
    batch = fanin = True
    _pickle = False

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        from faster_fifo import Queue

        cap = int(spec["capacity"])
        if self._pickle:
            self.q = Queue(max_size_bytes=cap)
        else:
            # loads=bytes: get() returns an owned copy (a view would be overwritten
            # by the next get); dumps: the bytes go in as they are.
            self.q = Queue(max_size_bytes=cap, loads=bytes, dumps=lambda x: x)
        self.send = self.q.put  # type: ignore[method-assign]
        self.recv = self.q.get  # type: ignore[method-assign]
        self.send_many = self.q.put_many  # type: ignore[method-assign]
        get_many = self.q.get_many
        self.recv_many = lambda n: get_many(max_messages_to_get=n)  # type: ignore[method-assign]

    def wait(self, seconds: float) -> bool:
        import queue

        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return False
        return True

    def close(self) -> None:
        pass


class FasterFifoPickle(FasterFifo):
    """faster-fifo Queue as most use it: objects pickled on put, unpickled on get."""

    label = "faster-fifo pickled"
    _pickle = True


class ZmqPushPull(Transport):
    """pyzmq PUSH/PULL over ipc:// (the consumer binds, producers connect)."""

    label = "pyzmq PUSH/PULL ipc"
    fanin = True
    _pattern = "pushpull"

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        import zmq  # noqa: F401 - a missing pyzmq skips here, before the fork

        self.path = os.path.join(tempfile.gettempdir(), f"{token}.zmq")
        self.consumers = int(spec.get("consumers", 1))
        # The high-water marks hold the same capacity as every other transport.
        self.depth = max(1, int(spec["capacity"]) // max(self.size, 1))

    def _endpoint(self, i: int) -> str:
        return f"ipc://{self.path}.{i}"

    def open_consumer(self) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, self.depth)
        self.linger = 0
        self.sock.bind(self._endpoint(int(self.spec.get("index", 0))))
        self.recv = self.sock.recv  # type: ignore[method-assign]

    def open_producer(self) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, self.depth)
        # Close waits until the stop messages are delivered: for good with one
        # consumer (it reads until its stop), up to 2 s with several (those
        # that left early leave stop messages undeliverable).
        self.linger = -1 if self.consumers == 1 else 2000
        for i in range(self.consumers):
            self.sock.connect(self._endpoint(i))
        self.send = self.sock.send  # type: ignore[method-assign,assignment,unused-ignore]  # pyzmq typed or not

    def recv_into(self, buf: bytearray) -> int:
        # pyzmq has no recv_into: recv(copy=False) lends the frame's buffer,
        # which is then copied into buf (the "read" rule).
        frame = self.sock.recv(copy=False)
        mv = frame.buffer
        n = len(mv)
        buf[:n] = mv
        return n if buf[0] != _STOP else -1

    def wait(self, seconds: float) -> bool:
        return bool(self.sock.poll(int(seconds * 1000)))

    def close(self) -> None:
        self.sock.close(linger=self.linger)
        self.ctx.term()

    def cleanup(self) -> None:
        for i in range(max(self.consumers, 1)):
            try:
                os.unlink(f"{self.path}.{i}")
            except FileNotFoundError:
                pass


class ZmqReqRep(ZmqPushPull):
    """pyzmq REQ/REP over ipc:// (round trips only: a REQ socket waits for each reply)."""

    label = "pyzmq REQ/REP ipc"
    fanin = False
    _pattern = "reqrep"


class Iceoryx2(Transport):
    """iceoryx2 publish/subscribe of a byte slice (shared memory, zero copy for the receiver).

    The service has no lossy overflow and the publisher retries until
    delivered, so no message is dropped; the subscriber has no blocking
    receive in this pattern, so the consumer polls ``receive()``.
    """

    label = "iceoryx2 pub/sub"
    view = True

    def __init__(self, spec: dict[str, Any], token: str) -> None:
        super().__init__(spec, token)
        import iceoryx2  # noqa: F401 - a missing iceoryx2 skips here

        self.service = f"fastipc-bench/{token}"
        self.depth = max(2, min(int(spec["capacity"]) // max(self.size, 1), 4096))

    def _service(self) -> Any:
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        self.iox2 = iox2
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        return (
            self.node.service_builder(iox2.ServiceName.new(self.service))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(self.depth)
            .open_or_create()
        )

    def open_consumer(self) -> None:
        self.svc = self._service()
        self.sub = self.svc.subscriber_builder().buffer_size(self.depth).create()
        self.port = self.sub

    def open_producer(self) -> None:
        self.svc = self._service()
        iox2 = self.iox2
        self.pub = (
            self.svc.publisher_builder()
            .initial_max_slice_len(self.size)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.port = self.pub

    def send(self, msg: bytes | bytearray) -> None:
        s = self.pub.loan_slice_uninit(len(msg))
        s.payload().as_memory_view().cast("B")[:] = msg
        s.assume_init().send()

    def _sample(self) -> Any:
        receive = self.sub.receive
        s = receive()
        while s is None:
            s = receive()
        return s

    def recv(self) -> Any:
        # The sample is released when the view and the sample are dropped.
        return self._sample().payload().as_memory_view().cast("B")

    def recv_into(self, buf: bytearray) -> int:
        v = self._sample().payload().as_memory_view().cast("B")
        n = len(v)
        buf[:n] = v
        return n if buf[0] != _STOP else -1

    def first_last(self) -> tuple[int, int]:
        v = self._sample().payload().as_memory_view().cast("B")
        return v[0], v[-1]

    def wait(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        receive = self.sub.receive
        while time.monotonic() < end:
            if receive() is not None:
                return True
        return False

    def close(self) -> None:
        # Ports and the node are dropped before the process _exits, so that
        # iceoryx2 removes its files (os._exit would skip the destructors).
        self.port.delete()
        del self.port, self.svc, self.node


#: Transport key -> (class, pip package or None for the standard library / fastipc).
TRANSPORTS: dict[str, tuple[type[Transport], str | None]] = {
    "ring": (FastRing, None),
    "channel": (FastChannel, None),
    "mp_queue": (MpQueue, None),
    "mp_pipe": (MpPipe, None),
    "unix_stream": (UnixStream, None),
    "unix_seqpacket": (UnixSeqpacket, None),
    "faster_fifo": (FasterFifo, "faster-fifo"),
    "faster_fifo_pickle": (FasterFifoPickle, "faster-fifo"),
    "zmq_pushpull": (ZmqPushPull, "pyzmq"),
    "zmq_reqrep": (ZmqReqRep, "pyzmq"),
    "posix_mq": (PosixMQ, "posix_ipc"),
    "iceoryx2": (Iceoryx2, "iceoryx2"),
}

_MODULES = {
    "faster-fifo": "faster_fifo",
    "pyzmq": "zmq",
    "iceoryx2": "iceoryx2",
    "posix_ipc": "posix_ipc",
}


def available(key: str) -> str | None:
    """None if transport ``key`` can run here, else why not (e.g. its package is not installed)."""
    _, package = TRANSPORTS[key]
    if package is None:
        return None
    import importlib

    try:
        importlib.import_module(_MODULES[package])
    except ImportError as exc:
        return f"{package} not installed ({exc}); pip install 'fastipc[bench]'"
    return None


# -- the children ----------------------------------------------------------------


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def _wait_byte(ctrl: mmap.mmap, offset: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while ctrl[offset] == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the other side never became ready")
        time.sleep(0.0005)


def _probe(ctrl: mmap.mmap, ping: bool) -> float | None:
    """Plain shared-memory ping-pong on the control page (no transport code); median ns."""
    from .ring_roles import _probe_echo, _probe_ping

    if ping:
        return _probe_ping(ctrl)
    _probe_echo(ctrl)
    return None


def _messages(size: int) -> tuple[bytes, bytes]:
    body = bytes(range(1, 256)) * (size // 255 + 1)
    return b"\0" + body[: size - 1], b"\1" + body[: size - 1]


def _produce(t: Transport, spec: dict[str, Any], ctrl: mmap.mmap) -> dict[str, Any]:
    kind, size = spec["kind"], t.size
    msg, stop = _messages(size)
    rep = itertools.repeat
    sent = 0
    if kind == "batch":
        batch = [msg] * int(spec["batch"])
        send_many = t.send_many
        while not ctrl[_HALT]:
            send_many(batch)
            sent += len(batch)
    else:
        send = t.send
        n = 64 if size <= 4096 else 1
        while not ctrl[_HALT]:
            for _ in rep(None, n):
                send(msg)
            sent += n
    for _ in range(int(spec.get("consumers", 1))):
        t.send(stop)
    return {"sent": sent}


def _consume(t: Transport, spec: dict[str, Any], ctrl: mmap.mmap, slot: int) -> dict[str, Any]:
    kind, size = spec["kind"], t.size
    counts = memoryview(ctrl)[_COUNTS : _COUNTS + 64].cast("q")
    rep = itertools.repeat
    n = 0
    if kind == "batch":
        recv_many, batch = t.recv_many, int(spec["batch"])
        while True:
            msgs = recv_many(batch)
            if msgs[-1][0]:
                n += len(msgs) - 1
                break
            n += len(msgs)
            counts[slot] = n
    elif kind == "read" and size > 4096:
        buf = bytearray(size)
        recv_into = t.recv_into
        while True:
            got = recv_into(buf)
            if got < 0 or buf[0]:
                break
            if got != size:
                raise RuntimeError(f"a {size} B message arrived as {got} B")
            n += 1
            counts[slot] = n
    elif kind == "view":
        first_last = t.first_last
        while True:
            first, _last = first_last()
            if first:
                break
            n += 1
            counts[slot] = n
    else:  # one call per message; the first byte is read (the stop test)
        recv = t.recv
        done = False
        while not done:
            for _ in rep(None, 64):
                if recv()[0]:
                    done = True
                    break
                n += 1
            counts[slot] = n
    counts[slot] = n
    return {"received": n}


def _ping(t_out: Transport, t_in: Transport, spec: dict[str, Any]) -> dict[str, Any]:
    msg, stop = _messages(t_out.size)
    send, recv = t_out.send, t_in.recv
    pc = time.perf_counter_ns
    duration = float(spec["duration"])
    # The same warm-up for every transport: a tenth of the time, not counted.
    end_warm = pc() + int(duration * 1e8)
    while pc() < end_warm:
        send(msg)
        recv()
    samples = array("q")
    app = samples.append
    end = pc() + int(duration * 1e9)
    while True:
        t0 = pc()
        send(msg)
        recv()
        t1 = pc()
        app(t1 - t0)
        if t1 > end:
            break
    send(stop)
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "round_trips": n,
        "median_us": statistics.median(ordered) / 1000,
        "p99_us": ordered[min(n - 1, int(n * 0.99))] / 1000,
    }


def _echo(t_in: Transport, t_out: Transport) -> dict[str, Any]:
    recv, send = t_in.recv, t_out.send
    n = 0
    while True:
        m = recv()
        if m[0]:
            return {"round_trips": n}
        send(bytes(m))
        n += 1


def _reqrep(spec: dict[str, Any], token: str, side: str) -> dict[str, Any]:
    """REQ/REP round trips: the REP side binds, the REQ side times send+recv."""
    import zmq

    path = f"ipc://{tempfile.gettempdir()}/{token}.zmq.rr"
    ctx = zmq.Context()
    try:
        if side == "rep":
            s = ctx.socket(zmq.REP)
            s.bind(path)
            n = 0
            while True:
                m = s.recv()
                if m[0]:
                    break
                s.send(m)
                n += 1
            s.close(linger=0)
            return {"round_trips": n}
        s = ctx.socket(zmq.REQ)
        s.connect(path)

        class _Req(Transport):
            def send(self, msg: bytes | bytearray) -> None:
                s.send(msg)

            def recv(self) -> Any:
                return s.recv()

        t = _Req(spec, token)
        res = _ping(t, t, spec)
        s.close(linger=0)
        return res
    finally:
        ctx.term()


def _child(fn: Callable[[], dict[str, Any]], cpu: int | None, role: str, wfd: int) -> None:
    """Body of a forked child: pin, run ``fn``, write its JSON line to ``wfd``, _exit."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _pin(cpu)
        out = fn()
    except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, never unwinds
        out = {"error": f"{type(exc).__name__}: {exc}"}
        code = 1
    try:
        os.write(wfd, (json.dumps({**out, "role": role}) + "\n").encode())
    finally:
        os._exit(code)


def _cpus() -> list[int | None]:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2:
        return [allowed[0], allowed[1]]
    return [None, None]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Make one figure of ``spec["transport"]`` (kind throughput/batch/read/view/rtt/idle).

    Returns the figure's dict; raises :class:`Skip` when the transport cannot make it.
    """
    key, kind = spec["transport"], spec["kind"]
    cls, _ = TRANSPORTS[key]
    why = available(key)
    if why:
        raise Skip(why)
    if kind == "batch" and not cls.batch:
        raise Skip("no batch API")
    if kind == "view" and not cls.view:
        raise Skip("no zero-copy view")
    if key == "zmq_reqrep" and kind not in ("rtt", "idle"):
        raise Skip("REQ/REP is lock-step: round trips only")
    producers, consumers = int(spec.get("producers", 1)), int(spec.get("consumers", 1))
    if (producers > 1 or consumers > 1) and not cls.fanin:
        raise Skip("one-to-one only (no shared queue for several producers or consumers)")
    token = spec["token"]
    ctrl = mmap.mmap(-1, _CTRL)
    rfd, wfd = os.pipe()
    links: list[Transport] = []
    pids: list[int] = []
    pinned = producers == 1 and consumers == 1
    cpu_p, cpu_c = _cpus() if pinned and spec.get("pin", True) else (None, None)
    try:
        if kind == "rtt":
            if key == "zmq_reqrep":
                return _run_reqrep(spec, token, ctrl, rfd, wfd, cpu_p, cpu_c)
            links = [cls(spec, token + ".a"), cls(spec, token + ".b")]
        else:
            links = [cls({**spec, "consumers": consumers}, token)]
        t = links[0]
        roles: list[tuple[str, Callable[[], dict[str, Any]], int | None]] = []
        if kind == "rtt":
            a, b = links

            def echo() -> dict[str, Any]:
                a.open_consumer()
                b.open_producer()
                ctrl[1] = 1
                _wait_byte(ctrl, 0)
                _probe(ctrl, ping=False)
                try:
                    return _echo(a, b)
                finally:
                    a.close()
                    b.close()

            def ping() -> dict[str, Any]:
                _wait_byte(ctrl, 1)
                a.open_producer()
                b.open_consumer()
                ctrl[0] = 1
                probe = _probe(ctrl, ping=True)
                try:
                    return {**_ping(a, b, spec), "probe_ns": probe}
                finally:
                    a.close()
                    b.close()

            roles = [("echo", echo, cpu_c), ("ping", ping, cpu_p)]
        elif kind == "idle":

            def idle() -> dict[str, Any]:
                t.open_consumer()
                ctrl[1] = 1
                w0, c0 = time.monotonic(), time.process_time()
                got = t.wait(float(spec["duration"]))
                wall, cpu = time.monotonic() - w0, time.process_time() - c0
                ctrl[_HALT] = 1
                t.close()
                if got:
                    raise RuntimeError("a message arrived on an idle transport")
                return {"cpu_pct": 100 * cpu / wall}

            def quiet() -> dict[str, Any]:
                _wait_byte(ctrl, 1)
                t.open_producer()
                while not ctrl[_HALT]:
                    time.sleep(0.01)
                t.close()
                return {}

            roles = [("idle", idle, cpu_c), ("quiet", quiet, cpu_p)]
        else:

            def consumer(i: int) -> Callable[[], dict[str, Any]]:
                def run() -> dict[str, Any]:
                    spec_i = {**spec, "index": i}
                    t.spec = spec_i
                    t.open_consumer()
                    ctrl[_READY + 1 + i] = 1
                    if pinned:
                        _probe(ctrl, ping=False)
                    try:
                        return _consume(t, spec, ctrl, i)
                    finally:
                        t.close()

                return run

            def producer(i: int) -> Callable[[], dict[str, Any]]:
                def run() -> dict[str, Any]:
                    for j in range(consumers):
                        _wait_byte(ctrl, _READY + 1 + j)
                    t.open_producer()
                    out: dict[str, Any] = {}
                    if pinned:
                        out["probe_ns"] = _probe(ctrl, ping=True)
                    try:
                        out.update(_produce(t, spec, ctrl))
                    finally:
                        t.close()
                    return out

                return run

            roles = [(f"consumer{i}", consumer(i), cpu_c) for i in range(consumers)]
            roles += [(f"producer{i}", producer(i), cpu_p) for i in range(producers)]
        for name, fn, cpu in roles:
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                _child(fn, cpu, name, wfd)
            pids.append(pid)
        os.close(wfd)
        wfd = -1
        for link in links:
            _release_parent(link)
        result: dict[str, Any] = {}
        if kind not in ("rtt", "idle"):
            result.update(_window(ctrl, float(spec["duration"]), consumers, t.size, pids))
        # With several producers, those still sending their stop messages after
        # the last consumer left block on a full queue: once every consumer has
        # reported, they get a moment, then _reap ends them (the figure is made).
        outs = _read_results(
            rfd,
            len(roles),
            timeout=30 + 4 * float(spec["duration"]),
            enough=None if pinned else consumers,
        )
        errors = [o["error"] for o in outs if "error" in o]
        if errors:
            raise RuntimeError("; ".join(errors))
        for o in outs:
            if "probe_ns" in o and o["probe_ns"] is not None:
                result["probe_us"] = o["probe_ns"] / 1000
            for k in ("median_us", "p99_us", "cpu_pct", "round_trips"):
                if k in o:
                    result[k] = o[k]
        result["cpus"] = [cpu_p, cpu_c]
        if t.note:
            result["note"] = t.note
        return result
    finally:
        ctrl[_HALT] = 1
        _reap(pids)
        for link in links:
            link.cleanup()
        if wfd >= 0:
            os.close(wfd)
        os.close(rfd)
        ctrl.close()


def _release_parent(t: Transport) -> None:
    """Close the coordinator's copies of descriptors the children now hold (so EOF works)."""
    if isinstance(t, (UnixStream, UnixSeqpacket, MpPipe)):
        t.cleanup()


def _run_reqrep(
    spec: dict[str, Any],
    token: str,
    ctrl: mmap.mmap,
    rfd: int,
    wfd: int,
    cpu_p: int | None,
    cpu_c: int | None,
) -> dict[str, Any]:
    pids = []
    for side, cpu in (("rep", cpu_c), ("req", cpu_p)):
        pid = os.fork()
        if pid == 0:
            os.close(rfd)

            def fn(side: str = side) -> dict[str, Any]:
                return _reqrep(spec, token, side)

            _child(fn, cpu, side, wfd)
        pids.append(pid)
    try:
        outs = _read_results(rfd, 2, timeout=30 + 4 * float(spec["duration"]))
    finally:
        _reap(pids)
        try:
            os.unlink(f"{tempfile.gettempdir()}/{token}.zmq.rr")
        except FileNotFoundError:
            pass
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise RuntimeError("; ".join(errors))
    res = next(o for o in outs if "median_us" in o)
    return {**res, "cpus": [cpu_p, cpu_c]}


def _window(
    ctrl: mmap.mmap, duration: float, consumers: int, size: int, pids: list[int]
) -> dict[str, Any]:
    """Time the consumers' counts over ``duration`` s once all have started; then halt the producers."""
    counts = memoryview(ctrl)[_COUNTS : _COUNTS + 64].cast("q")
    deadline = time.monotonic() + 20
    while sum(counts[:consumers]) == 0:
        if time.monotonic() > deadline or _any_exited(pids):
            raise RuntimeError("no message arrived within 20 s")
        time.sleep(0.002)
    # The same warm-up for every transport: a tenth of the window after the first message.
    time.sleep(duration / 10)
    c0, t0 = sum(counts[:consumers]), time.perf_counter()
    time.sleep(duration)
    c1, t1 = sum(counts[:consumers]), time.perf_counter()
    # A slow transport in a short window (--quick) may not have moved the count
    # (consumers publish it every 64 small messages): widen the window, once per
    # duration, for up to 20 s.
    while c1 == c0 and t1 - t0 < 20:
        time.sleep(duration)
        c1, t1 = sum(counts[:consumers]), time.perf_counter()
    if c1 == c0:
        raise RuntimeError("no message counted in 20 s")
    ctrl[_HALT] = 1
    counts.release()
    rate = (c1 - c0) / (t1 - t0)
    return {"msgs_s": rate, "gb_s": rate * size / 1e9, "counted": c1 - c0}


def _any_exited(pids: list[int]) -> bool:
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            pids.remove(pid)
            return True
    return False


def _read_results(
    rfd: int, n: int, timeout: float, enough: int | None = None
) -> list[dict[str, Any]]:
    """The JSON lines of ``n`` children; with ``enough``, stop 1 s after that many consumers answered."""
    import select

    outs: list[dict[str, Any]] = []
    data = b""
    deadline = time.monotonic() + timeout
    while len(outs) < n:
        if enough is not None:
            answered = sum(o.get("role", "").startswith("consumer") for o in outs)
            if answered >= enough:
                deadline = min(deadline, time.monotonic() + 1.0)
                if time.monotonic() >= deadline:
                    break
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"{n - len(outs)} of {n} processes did not finish in {timeout:.0f} s"
            )
        ready, _, _ = select.select([rfd], [], [], min(left, 0.1))
        if not ready:
            continue
        chunk = os.read(rfd, 65536)
        if not chunk:
            if len(outs) < n:
                raise RuntimeError(f"{n - len(outs)} process(es) died without a result")
            break
        data += chunk
        while b"\n" in data:
            line, data = data.split(b"\n", 1)
            outs.append(json.loads(line))
    return outs


def _reap(pids: list[int], grace: float = 2.0) -> None:
    deadline = time.monotonic() + grace
    live = list(pids)
    while live and time.monotonic() < deadline:
        for pid in list(live):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                live.remove(pid)
        if live:
            time.sleep(0.005)
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def child_main(argv: list[str]) -> int:
    """``python -m fastipc.bench peer SPEC_JSON``: print the figure (or a skip) as one JSON line."""
    spec = json.loads(argv[0])
    try:
        out = measure(spec)
    except Skip as exc:
        out = {"skipped": str(exc)}
    print(json.dumps(out), flush=True)
    return 0
