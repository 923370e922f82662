"""fastipc.serve / fastipc.connect over tcp and unix: a server in a child process, clients here.

Both framings: "length" (whole messages of any size) and "raw" (a byte stream,
one read is one message; the raw servers here echo what they read). The
server child (``_server_workers serve``) answers ``re:`` + the message in
length framing and echoes raw bytes in raw framing (its control words, such
as ``!abort``, work in both framings for one small request at a time); every
server child is stopped with SIGTERM and must exit 0 after removing its
socket file.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from _server_workers import HEAD, Procs, ServerProc, check_msg, make_msg

import fastipc
from fastipc import Closed, MessageTooLarge, Timeout

FRAME = struct.Struct("<II")


@pytest.fixture(scope="module")
def module_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="fitm", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


STREAMS = [("tcp", "length"), ("tcp", "raw"), ("unix", "length"), ("unix", "raw")]


def _url(scheme: str, where: str) -> str:
    return "tcp://127.0.0.1:0" if scheme == "tcp" else f"unix://{where}/{uuid_hex()}.sock"


def uuid_hex() -> str:
    return uuid.uuid4().hex[:8]


class Servers:
    """Server children shared by a module's tests, one per (scheme, framing), started on first use."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.procs = Procs()
        self.by_kind: dict[tuple[str, str], ServerProc] = {}

    def get(self, scheme: str, framing: str) -> ServerProc:
        key = (scheme, framing)
        if key not in self.by_kind:
            prefix = "re:" if framing == "length" else ""
            self.by_kind[key] = self.procs.server(_url(scheme, self.where), framing, prefix)
        return self.by_kind[key]

    def stop_all(self) -> None:
        """SIGTERM each; it must exit 0 and leave no socket file."""
        try:
            for srv in self.by_kind.values():
                srv.stop(signal.SIGTERM)
                if srv.address.startswith("unix:"):
                    path = srv.address[len("unix://") :]
                    assert not os.path.exists(path), f"{path} left behind by the server"
        finally:
            self.procs.cleanup()


@pytest.fixture(scope="module")
def servers(module_dir: str) -> Iterator[Servers]:
    s = Servers(module_dir)
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture(params=STREAMS, ids=[f"{s}-{f}" for s, f in STREAMS])
def server(request: pytest.FixtureRequest, servers: Servers) -> ServerProc:
    """A server child of one (scheme, framing): "length" answers re:+message, "raw" echoes."""
    return servers.get(*request.param)


@pytest.fixture(params=["tcp", "unix"])
def length_server(request: pytest.FixtureRequest, servers: Servers) -> ServerProc:
    return servers.get(request.param, "length")


def connect(srv: ServerProc, max_message: int | None = None) -> fastipc.Client:
    return fastipc.connect(srv.address, framing=srv.framing, timeout=10, max_message=max_message)


def is_raw(srv: ServerProc) -> bool:
    return srv.framing == "raw"


def recv_exactly(cli: fastipc.Client, n: int, timeout: float = 20) -> bytes:
    """Raw framing: read the byte stream until ``n`` bytes came (the reads split it anyhow)."""
    deadline = time.monotonic() + timeout
    out = bytearray()
    while len(out) < n:
        out += cli.recv(timeout=max(0.0, deadline - time.monotonic()))
    assert len(out) == n, f"got {len(out)} bytes, expected {n}"
    return bytes(out)


def recv_until_closed(cli: fastipc.Client, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    out = bytearray()
    while True:
        try:
            out += cli.recv(timeout=max(0.0, deadline - time.monotonic()))
        except Closed:
            return bytes(out)


# ---- basics: request/reply, order, size -------------------------------------------
def test_request_reply(server: ServerProc) -> None:
    with connect(server) as cli:
        for i in range(20):
            msg = f"ping {i}".encode()
            want = msg if is_raw(server) else b"re:" + msg
            assert cli.request(msg, timeout=10) == want
        if not is_raw(server):
            assert cli.request(b"", timeout=10) == b"re:"  # an empty message is a message


def test_many_pipelined_messages_come_back_in_order(server: ServerProc) -> None:
    rng = random.Random(1)
    msgs = [make_msg(7, seq, rng.randint(HEAD.size, 3000)) for seq in range(3000)]
    with connect(server) as cli:
        for m in msgs:  # all sent before any reply is read: the server queues the replies
            cli.send(m, timeout=10)
        if is_raw(server):
            data = recv_exactly(cli, sum(map(len, msgs)))
            assert data == b"".join(msgs)
        else:
            for seq, m in enumerate(msgs):
                got = cli.recv(timeout=10)
                assert got[:3] == b"re:"
                assert check_msg(got[3:]) == (7, seq)
                assert got[3:] == m


@pytest.mark.parametrize("size", [1 << 20, 16 << 20], ids=["1MiB", "16MiB"])
def test_large_message_arrives_whole(server: ServerProc, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    with connect(server) as cli:
        cli.send(payload, timeout=30)
        if is_raw(server):  # raw: a byte stream; it comes back complete and in order
            assert recv_exactly(cli, size, timeout=30) == payload
        else:
            got = cli.recv(timeout=30)
            assert len(got) == size + 3
            assert got == b"re:" + payload
            assert cli.request(b"after", timeout=10) == b"re:after"


def test_client_max_message_refuses_a_longer_reply(length_server: ServerProc) -> None:
    with connect(length_server, max_message=100) as cli:
        assert cli.request(b"x" * 97, timeout=10) == b"re:" + b"x" * 97  # exactly 100
        cli.send(b"x" * 98, timeout=10)
        with pytest.raises(MessageTooLarge):
            cli.recv(timeout=10)


def test_recv_timeout_then_the_client_still_works(server: ServerProc) -> None:
    with connect(server) as cli:
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)
        took = time.monotonic() - t0
        assert 0.18 <= took < 2.0, took
        want = b"x" if is_raw(server) else b"re:x"
        assert cli.request(b"x", timeout=10) == want


def test_peer_address_is_the_clients(server: ServerProc) -> None:
    with connect(server) as cli:
        got = cli.request(b"?peer", timeout=10)  # a control word: answered without the prefix
        s = socket.socket(fileno=os.dup(cli.fileno()))
        try:
            me = s.getsockname()
        finally:
            s.close()
        if server.address.startswith("tcp:"):
            assert got == repr(tuple(me[:2])).encode()
        else:
            assert got == b"''"  # the client did not bind a name


def test_unix_peer_address_is_the_clients_socket_name(servers: Servers, sock_dir: str) -> None:
    srv = servers.get("unix", "length")
    server_path = srv.address[len("unix://") :]
    for name in (f"{sock_dir}/client.sock", b"\0" + f"fastipc.t{uuid_hex()}".encode()):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.bind(name)  # a client that binds a name before connecting
            s.connect(server_path)
            s.sendall(FRAME.pack(5, 0) + b"?peer")
            want = repr(name).encode()
            assert s.recv(200) == FRAME.pack(len(want), 0) + want


# ---- ends of a connection --------------------------------------------------------
def test_half_close_still_gets_the_replies_then_closed(server: ServerProc) -> None:
    with connect(server) as cli:
        for i in range(3):
            cli.send(f"q{i}".encode(), timeout=10)
            if is_raw(server):
                assert cli.recv(timeout=10) == f"q{i}".encode()
        cli.shutdown("write")
        if not is_raw(server):
            assert [cli.recv(timeout=10) for _ in range(3)] == [b"re:q0", b"re:q1", b"re:q2"]
        with pytest.raises(Closed):
            cli.recv(timeout=10)


def test_half_close_right_after_a_request(server: ServerProc) -> None:
    with connect(server) as cli:
        cli.send(b"last words", timeout=10)
        cli.shutdown("write")
        got = recv_until_closed(cli) if is_raw(server) else cli.recv(timeout=10)
        assert got == (b"last words" if is_raw(server) else b"re:last words")
        with pytest.raises(Closed):
            cli.recv(timeout=10)


def test_server_closes_after_its_reply(server: ServerProc) -> None:
    with connect(server) as cli:
        assert cli.request(b"!close:bye", timeout=10) == b"bye"
        with pytest.raises(Closed):
            cli.recv(timeout=10)
        with pytest.raises(Closed):
            cli.recv(timeout=10)  # and stays so


def test_server_close_sends_a_large_queued_reply_first(length_server: ServerProc) -> None:
    body = random.Random(3).randbytes(8 << 20)
    with connect(length_server) as cli:
        cli.send(b"!close:" + body, timeout=30)
        time.sleep(0.3)  # the server queued most of the reply (we did not read) and closed
        got = cli.recv(timeout=30)
        assert len(got) == len(body)
        assert got == body
        with pytest.raises(Closed):
            cli.recv(timeout=10)


def test_server_abort_makes_the_client_see_closed(server: ServerProc) -> None:
    """What a client sees when the server aborts (tcp: RST, unix: close): Closed, not ConnectionResetError."""
    with connect(server) as cli:
        assert cli.request(b"?peer", timeout=10)  # connected and answered
        cli.send(b"!abort", timeout=10)
        with pytest.raises(Closed) as info:
            cli.recv(timeout=10)
        assert not isinstance(info.value, ConnectionResetError)
        if is_raw(server) and server.address.startswith("tcp:"):
            assert "reset" in str(info.value)  # the raw client says why
        with pytest.raises(Closed):
            cli.recv(timeout=10)
        with pytest.raises(Closed):  # sending into a reset/closed connection: Closed too
            for _ in range(100):  # (the first sends may still be buffered on unix/tcp)
                cli.send(b"more", timeout=10)
                time.sleep(0.001)


@pytest.mark.parametrize("scheme", ["tcp", "unix"])
def test_abort_on_the_wire_tcp_reset_unix_plain_close(servers: Servers, scheme: str) -> None:
    """A plain socket speaking length frames: tcp abort is an RST (ECONNRESET), unix an EOF."""
    srv = servers.get(scheme, "length")
    fam, addr = (
        (socket.AF_INET, ("127.0.0.1", int(srv.address.rsplit(":", 1)[1])))
        if scheme == "tcp"
        else (socket.AF_UNIX, srv.address[len("unix://") :])
    )
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(addr)
        s.sendall(FRAME.pack(5, 0) + b"hello")
        assert s.recv(100) == FRAME.pack(8, 0) + b"re:hello"
        s.sendall(FRAME.pack(6, 0) + b"!abort")
        if scheme == "tcp":
            with pytest.raises(ConnectionResetError):
                s.recv(100)
        else:
            assert s.recv(100) == b""
    with socket.socket(fam, socket.SOCK_STREAM) as s:  # and peer.close() is an orderly FIN
        s.settimeout(10)
        s.connect(addr)
        s.sendall(FRAME.pack(10, 0) + b"!close:bye")
        assert s.recv(100) == FRAME.pack(3, 0) + b"bye"
        assert s.recv(100) == b""


def test_client_abort_does_not_disturb_the_server(server: ServerProc) -> None:
    with connect(server) as other:
        cli = connect(server)
        cli.send(b"?peer", timeout=10)
        cli.abort()
        assert cli.closed
        want = b"ok" if is_raw(server) else b"re:ok"
        assert other.request(b"ok", timeout=10) == want


# ---- the listening side ------------------------------------------------------------
def test_tcp_port_0_reports_the_real_port(procs: Procs) -> None:
    srv = procs.server("tcp://127.0.0.1:0")
    m = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", srv.address)
    assert m, srv.address
    port = int(m.group(1))
    assert 0 < port < 65536
    with fastipc.connect(f"tcp://127.0.0.1:{port}", timeout=10) as cli:
        assert cli.request(b"port", timeout=10) == b"re:port"
    srv.stop()
    with pytest.raises(ConnectionRefusedError):
        fastipc.connect(srv.address, timeout=10)


def test_tcp_port_in_use_raises_eaddrinuse(procs: Procs) -> None:
    srv = procs.server("tcp://127.0.0.1:0")
    with pytest.raises(OSError) as info:
        fastipc.serve(srv.address, lambda m, p: m)
    assert info.value.errno == errno.EADDRINUSE
    assert srv.address in str(info.value)
    with fastipc.connect(srv.address, timeout=10) as cli:
        assert cli.request(b"still", timeout=10) == b"re:still"
    srv.stop()


def test_unix_socket_file_is_0600_and_removed_on_close(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/s.sock"
    srv = procs.server(f"unix://{path}")
    assert srv.address == f"unix://{path}"
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    srv.stop()
    assert not os.path.exists(path)


@pytest.mark.parametrize("mode", ["0660", "0666", "0640"])
def test_unix_mode_option_is_honoured(procs: Procs, sock_dir: str, mode: str) -> None:
    path = f"{sock_dir}/m.sock"
    srv = procs.server(f"unix://{path}?mode={mode}")
    assert srv.address == f"unix://{path}"  # the URL served, without its options
    assert stat.S_IMODE(os.lstat(path).st_mode) == int(mode, 8)
    with fastipc.connect(f"unix://{path}", timeout=10) as cli:
        assert cli.request(b"m", timeout=10) == b"re:m"
    srv.stop()
    assert not os.path.exists(path)


def test_unix_live_server_path_raises_eaddrinuse(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/live.sock"
    srv = procs.server(f"unix://{path}")
    ino = os.lstat(path).st_ino
    with pytest.raises(OSError) as info:
        fastipc.serve(f"unix://{path}", lambda m, p: m)
    assert info.value.errno == errno.EADDRINUSE
    assert info.value.filename == path
    assert os.lstat(path).st_ino == ino  # the live server's file was left alone
    with fastipc.connect(f"unix://{path}", timeout=10) as cli:
        assert cli.request(b"still", timeout=10) == b"re:still"
    srv.stop()
    assert not os.path.exists(path)


def test_unix_stale_file_of_a_killed_server_is_replaced(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/stale.sock"
    dead = procs.server(f"unix://{path}")
    dead.popen.kill()
    dead.wait()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left behind by the SIGKILL
    with pytest.raises(ConnectionRefusedError):
        fastipc.connect(f"unix://{path}", timeout=10)
    srv = procs.server(f"unix://{path}")
    with fastipc.connect(f"unix://{path}", timeout=10) as cli:
        assert cli.request(b"new", timeout=10) == b"re:new"
    srv.stop()
    assert not os.path.exists(path)


def test_unix_path_that_is_not_a_socket_is_never_replaced(sock_dir: str) -> None:
    path = f"{sock_dir}/file"
    with open(path, "w") as f:
        f.write("keep me")
    with pytest.raises(FileExistsError):
        fastipc.serve(f"unix://{path}", lambda m, p: m)
    with open(path) as f:
        assert f.read() == "keep me"


def test_unix_abstract_name(procs: Procs) -> None:
    name = f"fastipc.t{os.getpid()}_{uuid_hex()}"
    srv = procs.server(f"unix://@{name}")
    with fastipc.connect(f"unix://@{name}", timeout=10) as cli:
        assert cli.request(b"abstract", timeout=10) == b"re:abstract"
    srv.stop()
    with pytest.raises(ConnectionRefusedError):
        fastipc.connect(f"unix://@{name}", timeout=10)


def test_max_clients_accepts_and_closes_the_one_too_many(procs: Procs) -> None:
    srv = procs.server("tcp://127.0.0.1:0", max_clients=2)
    a = fastipc.connect(srv.address, timeout=10)
    b = fastipc.connect(srv.address, timeout=10)
    assert a.request(b"a", timeout=10) == b"re:a"
    assert b.request(b"b", timeout=10) == b"re:b"
    # The kernel completes the handshake; the server accepts, then closes at once.
    with fastipc.connect(srv.address, timeout=10) as c, pytest.raises(Closed):
        c.recv(timeout=10)
    assert a.request(b"?clients", timeout=10) == b"2"
    b.close()
    deadline = time.monotonic() + 10
    while a.request(b"?clients", timeout=10) != b"1":
        assert time.monotonic() < deadline, "the server did not see the client leave"
        time.sleep(0.01)
    with fastipc.connect(srv.address, timeout=10) as c:  # room again
        assert c.request(b"c", timeout=10) == b"re:c"
    a.close()
    srv.stop()


# ---- 200+ clients at once ------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["tcp", "unix"])
def test_240_clients_at_once_each_get_their_own_answers(
    procs: Procs, sock_dir: str, scheme: str
) -> None:
    nproc, per, rounds = 4, 60, 20
    srv = procs.server(_url(scheme, sock_dir), "length", "re:")
    kids = [procs.start("clients", srv.address, "length", per, rounds) for _ in range(nproc)]
    for k in kids:
        assert k.expect("connected ", 30) == str(per)
    with fastipc.connect(srv.address, timeout=10) as me:
        # Every child holds its clients open (each answered once): all are the server's now.
        assert me.request(b"?clients", timeout=10) == f"{nproc * per + 1}".encode()
        for k in kids:
            k.tell("go")
        for k in kids:
            assert k.expect("done ", 60) == str(per * rounds)
        assert me.request(b"?clients", timeout=10) == f"{nproc * per + 1}".encode()
        for k in kids:
            k.tell("close")
        for k in kids:
            assert k.expect("closed", 30) == ""
            k.finish()
        deadline = time.monotonic() + 10
        while (n := me.request(b"?clients", timeout=10)) != b"1":
            assert time.monotonic() < deadline, f"server still counts {n!r} clients"
            time.sleep(0.02)
    srv.stop()


@pytest.mark.parametrize("framing", ["raw", "length"])
def test_other_threads_push_to_a_peer_through_call_soon_threadsafe(framing: str) -> None:
    """A subscriber: the handler remembers the peer; another thread pushes to it later."""
    subscribers: list[fastipc.Peer] = []
    ready = threading.Event()

    def handler(message: bytes, peer: fastipc.Peer) -> bytes:
        subscribers.append(peer)
        ready.set()
        return b"subscribed"

    srv = fastipc.serve("tcp://127.0.0.1:0", handler, framing=framing).start()
    with srv, fastipc.connect(srv.address, framing=framing, timeout=5) as cli:
        assert cli.request(b"subscribe", timeout=5) == b"subscribed"
        assert ready.wait(5)
        failed: list[BaseException] = []

        def push() -> None:
            try:
                subscribers[0].send(b"news")
            except BaseException as exc:  # noqa: BLE001 - reported below
                failed.append(exc)

        pusher = threading.Thread(target=srv.call_soon_threadsafe, args=(push,))
        pusher.start()
        pusher.join(5)
        assert cli.recv(timeout=5) == b"news"
        assert failed == []
    with pytest.raises(ValueError, match="closed"):
        srv.call_soon_threadsafe(push)


@pytest.mark.parametrize("scheme", ["tcp", "unix"])
def test_a_reply_that_is_not_bytes_is_refused_not_sent_as_nul_bytes(
    scheme: str, sock_dir: str
) -> None:
    """bytes(3) is b"\\0\\0\\0": a reply of 3 must raise TypeError, never reach the client."""
    refused: list[BaseException] = []

    def handler(message: bytes, peer: fastipc.Peer) -> bytes | None:
        if message == b"int":
            return 3  # type: ignore[return-value] - the mistake under test
        try:
            peer.send(10**9)  # type: ignore[arg-type] - would allocate 1 GB
        except TypeError as exc:
            refused.append(exc)
        return b"after"

    srv = fastipc.serve(_url(scheme, sock_dir), handler).start()
    with srv, fastipc.connect(srv.address, timeout=5) as cli:
        cli.send(b"int")
        with pytest.raises(fastipc.Empty):
            cli.recv(timeout=0.3)
        assert cli.request(b"peer.send", timeout=5) == b"after"
    assert len(refused) == 1
    assert "must be a bytes-like object, not int" in str(refused[0])


def test_an_empty_raw_reply_behind_a_queued_one_never_stalls_the_server(sock_dir: str) -> None:
    """Raw framing: an empty reply sends nothing. Queued behind a reply the client had
    not read yet, it used to stay at the queue's front (a sendmsg of it sends 0 bytes),
    and the server's loop spun there for ever once the client read."""
    big = b"x" * (8 << 20)

    def reply(message: bytes, peer: fastipc.Peer) -> bytes:
        return big if message == b"big" else b"" if message == b"empty" else b"re:" + message

    url = f"unix://{sock_dir}/raw.sock"
    with fastipc.serve(url, reply, framing="raw").start(), socket.socket(socket.AF_UNIX) as sock:
        sock.connect(f"{sock_dir}/raw.sock")
        sock.settimeout(30)
        sock.sendall(b"big")
        time.sleep(0.3)  # the server has queued what the socket did not take
        sock.sendall(b"empty")
        time.sleep(0.3)
        got = 0
        while got < len(big):
            got += len(sock.recv(1 << 20))
        sock.sendall(b"ping")
        assert sock.recv(100) == b"re:ping"


def test_many_tiny_queued_replies_are_packed_not_one_object_each(sock_dir: str) -> None:
    """A client that sends many small requests and reads late: its queued replies must cost
    about what max_output counts (not ~200 bytes of objects each), in few queue entries
    (each sendmsg looks at the front only, so draining stays linear), and arrive intact."""
    count = 150_000
    handled = threading.Semaphore(0)
    peers: list[fastipc.Peer] = []

    def echo(message: bytes, peer: fastipc.Peer) -> bytes:
        if not peers:
            peers.append(peer)
        handled.release()
        return message

    wire = b"".join(FRAME.pack(4, 0) + i.to_bytes(4, "little") for i in range(count))
    srv = fastipc.serve(f"unix://{sock_dir}/tiny.sock", echo).start()
    with srv, socket.socket(socket.AF_UNIX) as sock:
        sock.connect(f"{sock_dir}/tiny.sock")
        sock.sendall(wire)  # nothing read yet
        for _ in range(count):
            assert handled.acquire(timeout=30)
        conn = peers[0]
        got: list[tuple[int, int, int]] = []
        srv.call_soon_threadsafe(
            lambda: got.append(
                (
                    len(conn._out or ()),  # type: ignore[attr-defined]
                    sum(sys.getsizeof(e) for e in conn._out or ()),  # type: ignore[attr-defined]
                    conn.buffered,  # type: ignore[attr-defined]
                )
            )
        )
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        entries, held, accounted = got[0]
        assert accounted > 256 * 1024  # the kernel's buffers are full: a real queue
        assert held <= accounted * 1.2 + 4096, (entries, held, accounted)
        assert entries <= accounted // 16384 + 2, (entries, accounted)
        out = bytearray()
        sock.settimeout(10)
        while len(out) < len(wire):
            data = sock.recv(1 << 20)
            assert data
            out += data
        assert out == wire  # every reply, whole and in order
