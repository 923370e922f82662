"""A server's total memory budget across clients (``Limits.max_buffered``).

A real server (in a thread of this process, so the test can watch
:attr:`Server.buffered`) and real client sockets: clients holding large
partial frames push the total over the budget and the largest holder, not
the one that crossed the line, is cut off (and named in the log); a client
whose replies pile up counts too; every other client, and a fresh one, keep
getting exact answers. Budgets are counted in bytes that arrived, never in
sizes announced. Bad budgets are a ValueError.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from _abuse_util import (  # noqa: F401
    Chatter,
    StartServer,
    T,
    frame,
    raw_connect,
    start_server_fixture,
    wait_disconnected,
)
from _channel_util import sock_dir_fixture  # noqa: F401
from conftest import child_env

import fastipc
from fastipc.server import Limits

KiB = 1 << 10
MiB = 1 << 20


def handler(msg: bytes, peer: fastipc.Peer) -> bytes:
    if msg.startswith(b"big:"):  # several may come in one raw read
        return b"".join(b"B" * int(n) for n in msg.split(b"big:")[1:])
    if len(msg) >= 200:
        return b"len:%d" % len(msg)
    return b"re:" + msg


@pytest.fixture(name="serve")
def serve_fixture(sock_dir: str) -> Iterator[object]:
    made: list[fastipc.Server] = []

    def start(kind: str, **kw: object) -> fastipc.Server:
        url = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{sock_dir}/b{len(made)}.sock"
        srv = fastipc.serve(url, handler, **kw)  # type: ignore[arg-type]
        made.append(srv)
        return srv.start()

    yield start
    for srv in made:
        srv.close()


def wait_for(what: str, cond: object, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.005)


def partial(address: str, announced: int, sent: int) -> socket.socket:
    """A client that announced a frame of ``announced`` bytes and sent ``sent`` of them."""
    s = raw_connect(address)
    s.sendall(struct.pack("<II", announced, 0) + b"p" * sent)
    return s


def finish(s: socket.socket, announced: int, sent: int) -> bytes:
    """Send the rest of a :func:`partial` frame and return the server's framed answer."""
    s.sendall(b"p" * (announced - sent))
    return read_frame(s)


def read_frame(s: socket.socket) -> bytes:
    head = recv_exact(s, 8)
    length, flags = struct.unpack("<II", head)
    assert flags == 0
    return recv_exact(s, length)


def recv_exact(s: socket.socket, n: int) -> bytes:
    got = bytearray()
    s.settimeout(T)
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, f"the server closed after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def dropped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fastipc.server" and "max_buffered" in r.getMessage()
    ]


# ---- partial input ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_the_largest_partial_frame_is_cut_off_and_everyone_else_is_answered(
    serve: object, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastipc.server")
    budget = 2 * MiB
    srv = serve(kind, max_message=1 * MiB, max_buffered=budget)  # type: ignore[operator]
    with Chatter(srv.address) as good:
        # One client holds 900 KiB of an announced 1 MiB frame...
        big = partial(srv.address, MiB, 900 * KiB)
        name = f"127.0.0.1:{big.getsockname()[1]}" if kind == "tcp" else f"pid {os.getpid()}"
        wait_for("the server holds the large partial frame", lambda: srv.buffered >= 900 * KiB)
        # ...and many small ones 150 KiB each of frames of 160 KiB: all within budget.
        small = [partial(srv.address, 160 * KiB, 150 * KiB) for _ in range(6)]
        held = 900 * KiB + 6 * 150 * KiB
        wait_for("the server holds every partial frame", lambda: srv.buffered >= held)
        assert srv.buffered <= budget
        # One more small client pushes the total over: the largest holder goes, not it.
        last = partial(srv.address, 400 * KiB, 300 * KiB)
        assert wait_disconnected(big) == b""
        big.close()
        wait_for("the small clients' bytes are all held", lambda: srv.buffered >= 7 * 150 * KiB)
        assert srv.buffered <= budget
        good.wait_answers(2)
        for s in small:
            assert finish(s, 160 * KiB, 150 * KiB) == b"len:%d" % (160 * KiB)
        assert finish(last, 400 * KiB, 300 * KiB) == b"len:%d" % (400 * KiB)
        with fastipc.connect(srv.address, timeout=T) as fresh:
            assert fresh.request(b"fresh", timeout=T) == b"re:fresh"
        for s in [*small, last]:
            s.close()
    wait_for("nothing held once every client is done", lambda: srv.buffered == 0)
    lines = dropped_lines(caplog)
    assert len(lines) == 1, lines
    assert name in lines[0], lines[0]


def test_the_log_names_the_client_cut_off(serve: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastipc.server")
    srv = serve("tcp", max_message=MiB, max_buffered=MiB)  # type: ignore[operator]
    hog = partial(srv.address, MiB, 0)
    port = hog.getsockname()[1]
    try:
        hog.sendall(b"h" * (MiB - 1 * KiB))  # alone, within the budget
    except OSError:
        pytest.fail("a lone client within the budget was cut off")
    wait_for("the server holds it", lambda: srv.buffered >= MiB - KiB)
    other = partial(srv.address, 64 * KiB, 32 * KiB)  # pushes the total over
    assert wait_disconnected(hog) == b""
    assert finish(other, 64 * KiB, 32 * KiB) == b"len:%d" % (64 * KiB)
    other.close()
    hog.close()
    lines = dropped_lines(caplog)
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0]
    assert "max_buffered" in lines[0] and str(MiB) in lines[0]


def test_announced_sizes_are_not_counted_only_bytes_that_arrived(serve: object) -> None:
    srv = serve("tcp", max_message=4 * MiB, max_buffered=4 * MiB)  # type: ignore[operator]
    # Many clients each announcing the largest frame, sending a little: far
    # more announced than the budget, little held; nobody is cut off.
    clients = [partial(srv.address, 4 * MiB, 1 * KiB) for _ in range(20)]
    wait_for("the server holds every partial frame", lambda: srv.buffered >= 20 * (KiB + 8))
    assert srv.buffered <= 20 * (KiB + 8)
    with fastipc.connect(srv.address, timeout=T) as fresh:
        assert fresh.request(b"hi", timeout=T) == b"re:hi"
        assert srv.clients == 21  # nobody was cut off
    for c in clients:
        c.close()


def test_a_server_process_stays_within_its_budget_however_many_clients_hoard(
    start_server: StartServer,
) -> None:
    budget = 16 * MiB
    sp = start_server("unix", max_message=4 * MiB, max_buffered=budget, idle_timeout=60)
    base = sp.status("VmHWM")
    hoarders = []
    with Chatter(sp.address) as good:
        # 96 clients each send 1 MiB of an announced 4 MiB frame: 96 MiB if all were held.
        for _ in range(96):
            s = partial(sp.address, 4 * MiB, 0)
            try:
                s.sendall(b"h" * MiB)
            except (BrokenPipeError, ConnectionResetError):
                pass  # cut off while sending: it held the most
            hoarders.append(s)
        good.wait_answers(2)
        # Each one left holds 1 MiB and its 8-byte header: at most 15 fit in 16 MiB.
        sp.wait_log(r"WARNING dropping pid \d+ uid \d+: holds \d+ bytes.*max_buffered", count=81)
        with fastipc.connect(sp.address, timeout=T) as fresh:
            assert fresh.request(b"fresh", timeout=T) == b"re:fresh"
    grown = sp.status("VmHWM") - base
    for s in hoarders:
        s.close()
    # At most 16 MiB held at once (+ one 64 KiB read, allocator slack); 96 MiB without it.
    assert grown < 48 * MiB, (
        f"server peak RSS grew {grown >> 20} MiB with a {budget >> 20} MiB budget"
    )


# ---- queued output -----------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "raw"])
def test_a_client_whose_replies_pile_up_counts_and_is_cut_off(
    serve: object, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastipc.server")
    budget = 2 * MiB
    # max_output alone would let 64 MiB pile up: the budget is what stops it.
    srv = serve(  # type: ignore[operator]
        "unix", framing=framing, max_message=MiB, max_output=64 * MiB, max_buffered=budget
    )
    with Chatter(srv.address, framing=framing) as good:
        holder = partial(srv.address, 600 * KiB, 500 * KiB) if framing == "length" else None
        piler = raw_connect(srv.address)
        request = b"big:262144"
        try:
            for _ in range(64):  # 16 MiB of replies asked, none read
                piler.sendall(frame(request) if framing == "length" else request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off already
        got = wait_disconnected(piler)  # what it got before the cut, then EOF
        assert len(got) < 64 * 262144
        piler.close()
        assert srv.buffered <= budget
        good.wait_answers(2)
        if holder is not None:
            assert finish(holder, 600 * KiB, 500 * KiB) == b"len:%d" % (600 * KiB)
            holder.close()
        with fastipc.connect(srv.address, framing=framing, timeout=T) as fresh:
            assert fresh.request(b"fresh", timeout=T) == b"re:fresh"
    lines = dropped_lines(caplog)
    assert len(lines) == 1, lines
    assert "queued" in lines[0]


# ---- the budget's value ---------------------------------------------------------------------


def test_the_default_budget_and_how_it_follows_max_message() -> None:
    from fastipc.server import DEFAULT_MAX_BUFFERED

    assert DEFAULT_MAX_BUFFERED == 256 * MiB
    assert Limits().max_buffered == 256 * MiB
    assert Limits(max_buffered=MiB, max_message=MiB).max_buffered == MiB
    # A larger max_message raises the default so two such messages fit.
    assert Limits(max_message=512 * MiB).max_buffered == 1024 * MiB


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1024", 2**40 * 1.0])
def test_a_bad_budget_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="max_buffered"):
        Limits(max_buffered=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_buffered"):
        fastipc.serve("tcp://127.0.0.1:0", handler, max_buffered=bad)  # type: ignore[arg-type]


def test_a_budget_under_max_message_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"max_buffered .* at least max_message"):
        Limits(max_message=2 * MiB, max_buffered=MiB)


def test_the_cli_takes_max_buffered(sock_dir: str) -> None:
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-m", "fastipc", "serve", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--max-buffered" in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastipc",
            "serve",
            f"unix://{sock_dir}/c.sock",
            "--max-message",
            "2048",
            "--max-buffered",
            "1024",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and "max_buffered" in bad.stderr
    assert not os.path.exists(f"{sock_dir}/c.sock")
