"""A stream server's idle connections cost little memory, and a reply queue exists only while replies wait.

An idle connection used to carry an empty ``deque`` for replies the kernel
had not taken (760 bytes each, most of what a connection cost); the queue is
now made when a reply does not fit and given back once it has drained. These
tests hold real TCP connections to a real server thread: the memory that the
stream transport's own code allocates per accepted connection (tracemalloc,
filtered to that module) stays under a bound, and a reply queued behind a
client that is not reading is still delivered whole and in order, the next
one again directly.
"""

from __future__ import annotations

import json

from conftest import run_python

#: An idle accepted connection's allocations in the stream transport, bytes (measured: ~365;
#: 1,124 while every connection carried an empty deque).
IDLE_BOUND = 600

# Each test runs in a fresh interpreter: the server in a thread of it, the
# clients in its main thread, and (first test) tracemalloc over both.
_COMMON = """
import json, socket, time, tracemalloc
import fastipc
from fastipc.transports import stream

def recv_exactly(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        assert chunk, "the server closed the connection"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)

def wait_for(cond, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what + ": not within 10 s")
        time.sleep(0.005)
"""

_IDLE = """
CLIENTS = 200
tracemalloc.start()
# a backlog above CLIENTS: all connect before the (traced, slower) server accepts them
with fastipc.serve("tcp://127.0.0.1:0", lambda m, p: m, framing="raw", backlog=512) as srv:
    srv.start()
    port = int(srv.address.rsplit(":", 1)[1])
    only_stream = [tracemalloc.Filter(True, stream.__file__)]
    before = tracemalloc.take_snapshot().filter_traces(only_stream)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CLIENTS)]
    for i, s in enumerate(socks):
        s.sendall(b"%064d" % i)
    for i, s in enumerate(socks):  # every connection accepted and answered once
        assert recv_exactly(s, 64) == b"%064d" % i
    after = tracemalloc.take_snapshot().filter_traces(only_stream)
    clients = srv.clients
    for s in socks:
        s.close()
grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
print(json.dumps({"clients": clients, "per_client": grown / CLIENTS}))
"""

_QUEUED = """
REPLY = 4 << 20  # more than the kernel's buffers take at once

def handler(message, peer):
    return b"".join(bytes([c]) * REPLY for c in message)  # 4 MiB per byte received

with fastipc.serve("tcp://127.0.0.1:0", handler, framing="raw") as srv:
    srv.start()
    port = int(srv.address.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the kernel holds little
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(b"a")
        # the kernel cannot take it all at once: the rest waits in the reply queue
        wait_for(lambda: srv.buffered > 0, "a reply queued")
        s.sendall(b"b")  # queued behind the first reply
        got = recv_exactly(s, 2 * REPLY)
        assert got == b"a" * REPLY + b"b" * REPLY, "replies out of order or cut"
        wait_for(lambda: srv.buffered == 0, "the queue drained")
        s.sendall(b"c")  # the queue is gone: this one goes out directly again
        assert recv_exactly(s, REPLY) == b"c" * REPLY
        wait_for(lambda: srv.buffered == 0, "the queue drained again")
print(json.dumps({"ok": True}))
"""


def test_idle_tcp_connections_cost_under_600_bytes_each_in_the_stream_transport() -> None:
    out = json.loads(run_python(_COMMON + _IDLE, timeout=120).stdout.strip().splitlines()[-1])
    assert out["clients"] == 200
    assert out["per_client"] < IDLE_BOUND, f"{out['per_client']:.0f} bytes per idle connection"


def test_replies_queued_behind_a_reader_arrive_whole_in_order_and_the_queue_drains() -> None:
    out = json.loads(run_python(_COMMON + _QUEUED, timeout=120).stdout.strip().splitlines()[-1])
    assert out == {"ok": True}
