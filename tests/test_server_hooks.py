"""on_connect / on_disconnect and Server.peers: publish to every client without thread tricks (issue 15).

A real server (its own thread) on tcp and unix, real clients: each client is
greeted from on_connect, a message from one is published to all from the
handler, every way of leaving (close, a killed connection, the server
cutting one off) runs on_disconnect exactly once, and a failing on_connect
drops only that client.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

import fastipc
from fastipc import Closed


@pytest.fixture(params=["tcp", "unix"])
def url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    if request.param == "tcp":
        return "tcp://127.0.0.1:0"
    return f"unix://{os.path.join(tmp_path, uuid.uuid4().hex[:8] + '.sock')}"


def _wait_for(cond: object, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_greet_on_connect_publish_to_all_peers_and_count_disconnects(url: str) -> None:
    joined: list[str] = []
    left: list[str] = []
    lock = threading.Lock()

    def on_connect(peer: fastipc.Peer) -> None:
        with lock:
            joined.append(peer.describe())
        peer.send(b"hello")

    def on_disconnect(peer: fastipc.Peer) -> None:
        with lock:
            left.append(peer.describe())

    def handler(message: bytes, peer: fastipc.Peer) -> None:
        for p in srv.peers:  # the server's thread: no call_soon_threadsafe needed
            p.send(b"all:" + message)

    srv = fastipc.serve(url, handler, on_connect=on_connect, on_disconnect=on_disconnect)
    srv.start()
    clients = []
    try:
        for _ in range(3):
            c = fastipc.connect(srv.address)
            assert c.recv(timeout=10) == b"hello"
            clients.append(c)
        _wait_for(lambda: srv.clients == 3, "three clients")
        assert len(srv.peers) == 3 and all(isinstance(p, fastipc.Peer) for p in srv.peers)
        clients[0].send(b"news")
        for c in clients:
            assert c.recv(timeout=10) == b"all:news"
        clients.pop().close()
        _wait_for(lambda: len(left) == 1, "one disconnect")
        assert srv.clients == 2
    finally:
        for c in clients:
            c.close()
        srv.close()
    assert len(joined) == 3
    assert sorted(left) == sorted(joined)  # each exactly once, however it left


def test_a_failing_on_connect_drops_only_that_client(url: str, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def on_connect(peer: fastipc.Peer) -> None:
        calls.append(peer)
        if len(calls) == 1:
            raise RuntimeError("boom")

    srv = fastipc.serve(url, lambda m, p: m.upper(), on_connect=on_connect)
    srv.start()
    try:
        first = fastipc.connect(srv.address)
        with pytest.raises((Closed, ConnectionError)):
            first.request(b"x", timeout=10)
        first.close()
        second = fastipc.connect(srv.address)
        assert second.request(b"ok", timeout=10) == b"OK"
        second.close()
    finally:
        srv.close()
    assert any("on_connect failed" in r.getMessage() for r in caplog.records)


def test_clients_is_an_int_and_the_client_book_keeping_is_private() -> None:
    srv = fastipc.serve("tcp://127.0.0.1:0", lambda m, p: None)
    try:
        assert srv.clients == 0 and isinstance(srv.clients, int)
        assert srv.peers == ()
        assert not hasattr(srv, "add_client") and not hasattr(srv, "remove_client")
    finally:
        srv.close()
