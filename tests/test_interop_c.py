"""fastipc against classic C peers (tests/cpeers/*.c, as the course notes write them), both ways.

Every C peer is a separate process built from plain socket/bind/listen/accept/read/write,
sendto/recvfrom or mq_open/mq_send/mq_receive code; fastipc runs in this process.
The C peers send their text with its terminating NUL (strlen + 1 bytes) and print what
they receive as ``N bytes: TEXT`` (servers: ``from HOST:PORT N bytes: TEXT``; mq: ``PRIO<TAB>TEXT``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Callable
from urllib.parse import urlsplit

import posix_ipc
import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from _cpeers import CPeers, cpeer_bins_fixture, cpeers_fixture  # noqa: F401
from conftest import child_env

import fastipc

T = 10.0  # seconds any single wait may take before the test fails


def printed(text: bytes | str) -> str:
    """What a C client prints for a reply whose bytes are ``text``."""
    raw = text.encode() if isinstance(text, str) else text
    shown = raw.split(b"\0")[0].decode()
    return f"{len(raw)} bytes: {shown}\n"


def local_port(cli: fastipc.Client, kind: socket.SocketKind) -> int:
    """The local port of a fastipc tcp/udp client's socket."""
    with socket.fromfd(cli.fileno(), socket.AF_INET, kind) as s:
        return int(s.getsockname()[1])


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def wait_until(pred: Callable[[], bool], what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def queue_exists(name: str) -> bool:
    try:
        posix_ipc.MessageQueue(name).close()
    except posix_ipc.ExistentialError:
        return False
    return True


@pytest.fixture
def mq_names() -> Iterator[Callable[[], str]]:
    """``mq_names()`` gives a fresh queue name; every queue named is unlinked at teardown."""
    made: list[str] = []

    def new() -> str:
        made.append(f"/fastipc.t{os.getpid()}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    try:
        yield new
    finally:
        for name in made:
            try:
                posix_ipc.unlink_message_queue(name)
            except posix_ipc.ExistentialError:
                pass


def welcome_and_close(seen: list[tuple[bytes, object]]) -> Callable[..., None]:
    """A raw stream handler: record (message, peer address), reply "welcome, " + message, close."""

    def handler(message: bytes, peer: fastipc.Peer) -> None:
        seen.append((message, peer.address))
        peer.send(b"welcome, " + message)  # the message's NUL terminates the reply too
        peer.close()

    return handler


# --- tcp -------------------------------------------------------------------------------


def test_c_tcp_clients_get_replies_from_a_fastipc_raw_tcp_server(cpeers: CPeers) -> None:
    seen: list[tuple[bytes, object]] = []
    with fastipc.serve("tcp://127.0.0.1:0", welcome_and_close(seen), framing="raw") as srv:
        srv.start()
        host, port = host_port(srv.address)
        assert host == "127.0.0.1" and port > 0, srv.address
        greetings = [f"hello {i} from C" for i in range(4)]
        procs = [cpeers.spawn("tcp_client", host, port, g, first_line=False)[0] for g in greetings]
        outs = [cpeers.finish(p, T) for p in procs]
    assert outs == [printed(f"welcome, {g}\0") for g in greetings]
    assert sorted(m for m, _ in seen) == sorted(f"{g}\0".encode() for g in greetings), (
        "the handler sees each greeting whole, NUL included"
    )
    for _, addr in seen:
        assert isinstance(addr, tuple) and addr[0] == "127.0.0.1" and addr[1] > 0, addr


def test_a_fastipc_raw_tcp_client_talks_to_a_c_tcp_server(cpeers: CPeers) -> None:
    proc, line = cpeers.spawn("tcp_server", 0, 3, "hello from C")
    port = int(line)
    ports = []
    for i in range(3):
        with fastipc.connect(f"tcp://127.0.0.1:{port}", framing="raw", timeout=T) as cli:
            ports.append(local_port(cli, socket.SOCK_STREAM))
            assert cli.request(f"request {i}\0".encode(), timeout=T) == b"hello from C\0"
            with pytest.raises(fastipc.Closed):
                cli.recv(timeout=T)
    out = cpeers.finish(proc, T)
    assert out == "".join(
        f"from 127.0.0.1:{p} {len(f'request {i}') + 1} bytes: request {i}\n"
        for i, p in enumerate(ports)
    )


def test_a_fastipc_raw_tcp_client_sees_eof_after_a_c_reply_without_a_request_reply_call(
    cpeers: CPeers,
) -> None:
    """send() then recv() separately; the NUL-terminated reply comes whole, then Closed, twice."""
    proc, line = cpeers.spawn("tcp_server", 0, 1)
    with fastipc.connect(f"tcp://127.0.0.1:{line}", framing="raw") as cli:
        cli.send(b"GET\0", timeout=T)
        assert cli.recv(timeout=T) == b"hello from the C server\0"
        for _ in range(2):
            with pytest.raises(fastipc.Closed):
                cli.recv(timeout=T)
    assert cpeers.finish(proc, T).endswith(" 4 bytes: GET\n")


# --- unix stream -----------------------------------------------------------------------


def test_c_unix_clients_get_replies_from_a_fastipc_raw_unix_server(
    cpeers: CPeers, sock_dir: str
) -> None:
    path = os.path.join(sock_dir, "s.sock")
    seen: list[tuple[bytes, object]] = []
    with fastipc.serve(f"unix://{path}", welcome_and_close(seen), framing="raw") as srv:
        srv.start()
        assert os.path.exists(path), srv.address
        greetings = [f"hi {i} over AF_UNIX" for i in range(3)]
        procs = [cpeers.spawn("unix_client", path, g, first_line=False)[0] for g in greetings]
        outs = [cpeers.finish(p, T) for p in procs]
    assert outs == [printed(f"welcome, {g}\0") for g in greetings]
    assert sorted(m for m, _ in seen) == sorted(f"{g}\0".encode() for g in greetings)
    assert [a for _, a in seen] == ["", "", ""], "an unbound C client has no socket name"
    assert not os.path.exists(path), "close() removes the socket file the server created"


def test_a_fastipc_raw_unix_client_talks_to_a_c_unix_server(cpeers: CPeers, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a stale socket file, as a crashed server leaves it; the C server removes it
    proc, line = cpeers.spawn("unix_server", path, 2, "hello from C")
    assert line == path
    for i in range(2):
        with fastipc.connect(f"unix://{path}", framing="raw", timeout=T) as cli:
            assert cli.request(f"request {i}\0".encode(), timeout=T) == b"hello from C\0"
            with pytest.raises(fastipc.Closed):
                cli.recv(timeout=T)
    assert cpeers.finish(proc, T) == "10 bytes: request 0\n10 bytes: request 1\n"
    assert not os.path.exists(path), "the C server unlinks its socket file"


# --- udp -------------------------------------------------------------------------------


def test_c_udp_clients_get_replies_from_a_fastipc_udp_server(cpeers: CPeers) -> None:
    seen: list[tuple[bytes, object]] = []

    def handler(message: bytes, peer: fastipc.Peer) -> bytes:
        seen.append((message, peer.address))
        return b"hello, " + message

    with fastipc.serve("udp://127.0.0.1:0", handler) as srv:
        srv.start()
        host, port = host_port(srv.address)
        assert host == "127.0.0.1" and port > 0, srv.address
        outs = [cpeers.run("udp_peer", "client", host, port, f"ping {i}", 5) for i in range(3)]
    assert outs == [printed(f"hello, ping {i}\0") for i in range(3)]
    assert [m for m, _ in seen] == [f"ping {i}\0".encode() for i in range(3)]
    for _, addr in seen:
        assert isinstance(addr, tuple) and addr[0] == "127.0.0.1" and addr[1] > 0, addr


def test_a_fastipc_udp_client_talks_to_a_c_udp_server(cpeers: CPeers) -> None:
    proc, line = cpeers.spawn("udp_peer", "server", 0, 3, "pong")
    with fastipc.connect(f"udp://127.0.0.1:{line}", timeout=T) as cli:
        port = local_port(cli, socket.SOCK_DGRAM)
        for i in range(3):
            assert cli.request(f"ping {i}".encode(), timeout=T) == b"pong\0"
    out = cpeers.finish(proc, T)
    assert out == "".join(f"from 127.0.0.1:{port} 6 bytes: ping {i}\n" for i in range(3))


# --- POSIX message queues --------------------------------------------------------------


def test_a_fastipc_mq_client_receives_from_c_senders_by_priority(
    cpeers: CPeers, mq_names: Callable[[], str]
) -> None:
    q = mq_names()
    for text, prio in [("first", 1), ("urgent", 7), ("second", 1), ("plain", 0), ("third", 1)]:
        assert cpeers.run("mq_peer", "send", q, text, prio) == ""
    with fastipc.connect(f"mq://{q}", timeout=T) as cli:
        got = [cli.recv_priority(timeout=T) for _ in range(4)]
        assert got == [(b"urgent\0", 7), (b"first\0", 1), (b"second\0", 1), (b"third\0", 1)]
        assert cli.recv(timeout=T) == b"plain\0"
        with pytest.raises(fastipc.Timeout):
            cli.recv(timeout=0.2)


def test_a_fastipc_mq_client_receives_while_c_sends_later(
    cpeers: CPeers, mq_names: Callable[[], str]
) -> None:
    q = mq_names()
    with fastipc.connect(f"mq://{q}", timeout=T) as cli:  # creates the queue
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(cli.recv(timeout=T)))
        t.start()
        time.sleep(0.1)
        cpeers.run("mq_peer", "send", q, "late news", 3)
        t.join(T + 5)
        assert not t.is_alive()
    assert got == [b"late news\0"]


def test_a_fastipc_mq_server_handles_messages_from_c_senders(
    cpeers: CPeers, mq_names: Callable[[], str]
) -> None:
    q = mq_names()
    seen: list[tuple[bytes, object]] = []

    def handler(message: bytes, peer: fastipc.Peer) -> None:
        seen.append((message, peer.address))

    with fastipc.serve(f"mq://{q}", handler) as srv:
        srv.start()
        assert queue_exists(q), "serve() creates the queue"
        for text in ("one", "two", "three"):
            cpeers.run("mq_peer", "send", q, text, 0)
        wait_until(lambda: len(seen) == 3, f"3 messages handled, got {seen}")
    assert seen == [(b"one\0", None), (b"two\0", None), (b"three\0", None)]
    assert not queue_exists(q), "close() unlinks the queue the server created"


def test_a_fastipc_mq_server_replies_to_the_reply_queue_a_c_peer_reads(
    cpeers: CPeers, mq_names: Callable[[], str]
) -> None:
    q, replies = mq_names(), mq_names()

    def handler(message: bytes, peer: fastipc.Peer) -> bytes:
        return b"ack " + message

    with fastipc.serve(f"mq://{q}?reply={replies}", handler) as srv:
        srv.start()
        reader, _ = cpeers.spawn("mq_peer", "recv", replies, 2, first_line=False)
        cpeers.run("mq_peer", "send", q, "first", 0)
        cpeers.run("mq_peer", "send", q, "second", 0)
        out = cpeers.finish(reader, T)
    assert out == "0\tack first\n0\tack second\n"


def test_c_mq_receiver_gets_fastipc_messages_by_priority_fifo_within_one(
    cpeers: CPeers, mq_names: Callable[[], str]
) -> None:
    q = mq_names()
    names = ["low 1", "high 1", "none", "low 2", "high 2", "mid", "low 3"]
    msgs = [(n.encode(), {"low": 1, "high": 9, "none": 0, "mid": 4}[n.split()[0]]) for n in names]
    with fastipc.connect(f"mq://{q}", timeout=T) as cli:
        for data, prio in msgs:
            cli.send(data, priority=prio, timeout=T)
    out = cpeers.run("mq_peer", "recv", q, len(msgs))
    assert out == "9\thigh 1\n9\thigh 2\n4\tmid\n1\tlow 1\n1\tlow 2\n1\tlow 3\n0\tnone\n"


def test_c_mq_receiver_reads_a_queue_with_the_attributes_from_the_url(
    cpeers: CPeers, mq_names: Callable[[], str]
) -> None:
    q = mq_names()
    big = bytes(range(32, 127)) * 10  # 950 printable bytes, over the default 256
    with fastipc.connect(f"mq://{q}?maxmsg=3&msgsize=1000", timeout=T) as cli:
        mq = posix_ipc.MessageQueue(q)
        try:
            assert (mq.max_messages, mq.max_message_size) == (3, 1000)
        finally:
            mq.close()
        cli.send(big, priority=2, timeout=T)
        with pytest.raises(fastipc.Timeout):
            for _ in range(3):
                cli.send(b"fill", timeout=0.2)  # the third one finds the queue full
    out = cpeers.run("mq_peer", "recv", q, 3)
    assert out == f"2\t{big.decode()}\n0\tfill\n0\tfill\n"


def test_c_mq_receiver_started_first_gets_a_fastipc_message(
    cpeers: CPeers, mq_names: Callable[[], str]
) -> None:
    q = mq_names()
    reader, _ = cpeers.spawn("mq_peer", "recv", q, 1, first_line=False)
    wait_until(lambda: queue_exists(q), "the C receiver creates the queue")
    with fastipc.connect(f"mq://{q}", timeout=T) as cli:
        cli.send(b"to the waiting C peer", priority=5, timeout=T)
    assert cpeers.finish(reader, T) == "5\tto the waiting C peer\n"


# --- the command line -------------------------------------------------------------------


def test_c_tcp_clients_get_the_reply_of_fastipc_serve_close(cpeers: CPeers) -> None:
    """``fastipc serve --reply TEXT --close`` is the course's one-shot server for clients reading to EOF."""
    server = subprocess.Popen(
        [sys.executable, "-m", "fastipc", "serve", "tcp://127.0.0.1:0", "--reply", "Hi, C", "--close"],
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert line.startswith("fastipc: serving tcp://127.0.0.1:"), line
        host, port = host_port(line.split()[-1])
        procs = [cpeers.spawn("tcp_client", host, port, f"C {i}", first_line=False)[0] for i in range(3)]
        # Each client reads until EOF: it ends only because the server closed after replying.
        assert [cpeers.finish(p, T) for p in procs] == [printed("Hi, C\0")] * 3
        server.terminate()
        _, err = server.communicate(timeout=T)
        assert server.returncode == 0, err
        for i in range(3):
            assert f"C {i}" in err, err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
