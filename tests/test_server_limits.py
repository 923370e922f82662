"""The limits that protect a fastipc server, against a real server in a child process.

Silent clients and slow-loris senders are cut off after ``idle_timeout``,
slow readers once their queued output passes ``max_output`` (with the
server's peak RSS staying small), connections over ``max_clients`` are
accepted and closed at once (and a place that frees up is taken again),
``backlog`` is the kernel's queue of unaccepted connections, and SIGINT or
SIGTERM stop ``serve_forever`` cleanly: exit status 0, clients closed,
socket file removed. A well-behaved client keeps getting exact answers
throughout.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time

import pytest
from _abuse_util import (  # noqa: F401
    Chatter,
    StartServer,
    T,
    assert_no_traceback,
    frame,
    raw_connect,
    start_server_fixture,
    wait_disconnected,
    who,
)
from _channel_util import sock_dir_fixture  # noqa: F401

import fastipc
from fastipc import Closed, Timeout
from fastipc.endpoints import parse

KiB = 1 << 10
MiB = 1 << 20
IDLE = 0.5
#: How late past idle_timeout a cut may come (sweeps run every idle/4 s; a loaded CI box).
LATE = 2.0


# ---- idle_timeout: silent clients and slow-loris senders ------------------------------------


@pytest.mark.parametrize(
    ("kind", "framing"), [("tcp", "length"), ("unix", "length"), ("tcp", "raw")]
)
def test_a_silent_client_is_cut_off_after_idle_timeout(
    start_server: StartServer, kind: str, framing: str
) -> None:
    sp = start_server(kind, framing=framing, idle_timeout=IDLE)
    with Chatter(sp.address, framing=framing) as good:
        t0 = time.monotonic()
        silent = raw_connect(sp.address)
        me = who(silent)
        assert wait_disconnected(silent, timeout=IDLE + LATE + T) == b""
        took = time.monotonic() - t0
        silent.close()
        # One that spoke once, then went quiet: its clock starts at its last message.
        quiet = raw_connect(sp.address)
        me2 = who(quiet)
        time.sleep(IDLE * 0.6)
        quiet.sendall(frame(b"once") if framing == "length" else b"once")
        t1 = time.monotonic()
        assert quiet.recv(100) == (frame(b"re:once") if framing == "length" else b"re:once")
        assert wait_disconnected(quiet, timeout=IDLE + LATE + T) == b""
        took2 = time.monotonic() - t1
        quiet.close()
        good.wait_answers(3)
    assert IDLE * 0.9 <= took <= IDLE + LATE, f"silent client cut off after {took:.2f} s"
    assert IDLE * 0.9 <= took2 <= IDLE + LATE, (
        f"quiet client cut off {took2:.2f} s after its message"
    )
    for m in (me, me2):
        sp.wait_log(rf"WARNING dropping {m}: no complete message for 0.5 s \(idle_timeout\)")
    # The good client, which sent a message every 20 ms for longer than IDLE, was never cut off.
    assert sp.log().count("(idle_timeout)") == 2, sp.log()
    assert_no_traceback(sp)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_slow_loris_sender_is_cut_off_after_idle_timeout(
    start_server: StartServer, kind: str
) -> None:
    sp = start_server(kind, idle_timeout=IDLE)
    data = frame(b"L" * 100)  # 108 bytes at one per 0.1 s: 10.8 s to complete
    with Chatter(sp.address) as good:
        loris = raw_connect(sp.address)
        me = who(loris)
        t0 = time.monotonic()
        sent = 0
        got = None
        while sent < len(data):
            try:
                loris.send(data[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                got = b""
                break
            sent += 1
            if select.select([loris], [], [], 0.1)[0]:
                got = wait_disconnected(loris)
                break
        took = time.monotonic() - t0
        loris.close()
        good.wait_answers(3)
    assert got == b"", f"the slow-loris was never cut off ({sent} of {len(data)} bytes sent)"
    assert took <= IDLE + LATE, f"slow-loris cut off only after {took:.2f} s, {sent} bytes"
    assert sent < len(data)
    sp.wait_log(rf"WARNING dropping {me}: no complete message for 0.5 s \(idle_timeout\)")
    assert_no_traceback(sp)


# ---- max_output: slow readers -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_slow_readers_are_cut_off_over_max_output_and_memory_stays_bounded(
    start_server: StartServer, kind: str
) -> None:
    max_output = 256 * KiB
    reply = 64 * KiB
    sp = start_server(kind, max_output=max_output, idle_timeout=30)
    base = sp.status("VmHWM")
    with Chatter(sp.address) as good:
        # Five clients at once ask for 64 KiB replies as fast as they can and never read.
        readers = [raw_connect(sp.address) for _ in range(5)]
        names = [who(r) for r in readers]
        request = frame(b"big:%d" % reply)
        alive = list(readers)
        asked = 0
        deadline = time.monotonic() + T
        while alive:
            assert time.monotonic() < deadline, (
                f"{len(alive)} slow readers still connected after {T} s"
            )
            for r in list(alive):
                try:
                    r.sendall(request)
                    asked += 1
                except (BrokenPipeError, ConnectionResetError):
                    alive.remove(r)
        for r in readers:
            r.close()
        good.wait_answers(3)
    grown = sp.status("VmHWM") - base
    # 5 x (256 KiB queued + one 64 KiB reply) is under 2 MiB; allow for allocator slack.
    assert grown < 16 * MiB, (
        f"server peak RSS grew {grown} bytes with 5 slow readers ({asked} asks)"
    )
    if kind == "unix":
        found = sp.wait_log(
            rf"WARNING dropping {names[0]}: (\d+) bytes still queued when another reply came, over max_output: a slow reader",
            count=5,
        )
    else:
        found = [
            sp.wait_log(
                rf"WARNING dropping {n}: (\d+) bytes still queued when another reply came, over max_output: a slow reader"
            )[0]
            for n in names
        ]
    for m in found:
        assert max_output < int(m.group(1)) <= max_output + reply + 8, m.group(0)
    assert_no_traceback(sp)


# ---- max_clients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_over_max_clients_a_connection_is_accepted_and_closed_and_a_freed_place_is_taken(
    start_server: StartServer, kind: str
) -> None:
    sp = start_server(kind, max_clients=3, idle_timeout=30)
    goods = [fastipc.connect(sp.address, timeout=T) for _ in range(3)]
    try:
        for i, g in enumerate(goods):  # answered: the server holds all three now
            assert g.request(b"in %d" % i, timeout=T) == b"re:in %d" % i
        extra = raw_connect(sp.address)
        t0 = time.monotonic()
        assert wait_disconnected(extra) == b""
        assert time.monotonic() - t0 < 2.0, "the connection over max_clients was not closed at once"
        extra.close()
        with fastipc.connect(sp.address, timeout=T) as fourth, pytest.raises(Closed):
            fourth.request(b"let me in", timeout=T)
        # A flood of connections: every one refused cleanly, the three still served.
        flood = [raw_connect(sp.address) for _ in range(40)]
        for s in flood:
            assert wait_disconnected(s) == b""
            s.close()
        sp.wait_log(r"WARNING refused .*: 3 clients already \(max_clients\)", count=42)
        for i, g in enumerate(goods):
            assert g.request(b"still %d" % i, timeout=T) == b"re:still %d" % i
        # One leaves; once the server has seen it go, a newcomer gets its place.
        leaving = goods.pop(0)
        with socket.socket(fileno=os.dup(leaving.fileno())) as dup:
            leaving_name = who(dup)
        leaving.close()
        sp.wait_log(rf"INFO disconnect {leaving_name}: closed by the client")
        goods.append(fastipc.connect(sp.address, timeout=T))
        for i, g in enumerate(goods):
            assert g.request(b"after %d" % i, timeout=T) == b"re:after %d" % i
        with fastipc.connect(sp.address, timeout=T) as over, pytest.raises(Closed):
            over.request(b"and me?", timeout=T)
    finally:
        for g in goods:
            g.close()
    assert_no_traceback(sp)


# ---- backlog ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kwarg", "url"])
def test_backlog_is_the_queue_of_connections_not_yet_accepted(
    start_server: StartServer, sock_dir: str, how: str
) -> None:
    backlog = 2 if how == "kwarg" else 4
    url = f"unix://{sock_dir}/b.sock"
    sp = (
        start_server(url, backlog=backlog, idle_timeout=30)
        if how == "kwarg"
        else start_server(f"{url}?backlog={backlog}", idle_timeout=30)
    )
    path = parse(sp.address).path
    assert path is not None
    queued: list[socket.socket] = []
    with fastipc.connect(sp.address, timeout=T) as blocker:
        blocker.send(b"sleep:1.5", timeout=T)  # the loop is stuck in the handler: nobody accepts
        sp.wait_log(r"handler sleeping")
        refused = 0
        try:
            for _ in range(backlog + 5):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                try:
                    s.connect(path)
                except BlockingIOError:  # EAGAIN: the accept queue is full
                    refused += 1
                    s.close()
                    continue
                queued.append(s)
            # Linux queues backlog + 1 connections on a unix socket before refusing.
            assert (len(queued), refused) == (backlog + 1, 4)
            assert blocker.recv(timeout=T) == b"slept"
            for i, s in enumerate(queued):  # once the loop runs again, every queued one is served
                s.settimeout(T)
                s.sendall(frame(b"queued %d" % i))
                assert s.recv(100) == frame(b"re:queued %d" % i)
        finally:
            for s in queued:
                s.close()
    assert_no_traceback(sp)


# ---- SIGINT / SIGTERM ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_signal_stops_serve_forever_cleanly(
    start_server: StartServer, kind: str, signum: signal.Signals
) -> None:
    sp = start_server(kind, idle_timeout=30)
    ep = parse(sp.address)
    idle = fastipc.connect(sp.address, timeout=T)
    half = raw_connect(sp.address)
    busy = fastipc.connect(sp.address, timeout=T)
    try:
        assert idle.request(b"hi", timeout=T) == b"re:hi"
        half.sendall(frame(b"h" * 100)[:20])
        busy.send(b"sleep:0.5", timeout=T)
        sp.wait_log(r"handler sleeping")
        sp.signal(signum)
        # The request being handled is still answered, then every client is closed.
        assert busy.recv(timeout=T) == b"slept"
        assert sp.wait() == 0, f"server exit status {sp.proc.returncode}:\n{sp.log()}"
        assert sp.readline() == f"stopped_by {int(signum)}"
        with pytest.raises(Closed):
            busy.recv(timeout=T)
        with pytest.raises(Closed):
            idle.recv(timeout=T)
        assert wait_disconnected(half) == b""
    finally:
        for c in (idle, busy, half):
            c.close()
    if kind == "unix":
        assert ep.path is not None
        assert not os.path.exists(ep.path), "serve_forever stopped but the socket file is left"
        with pytest.raises(FileNotFoundError):
            fastipc.connect(sp.address, timeout=T)
    else:
        with pytest.raises(ConnectionRefusedError):
            fastipc.connect(sp.address, timeout=T)
    assert "Traceback" not in sp.log(), sp.log()


def test_connect_with_a_timeout_waits_while_a_unix_backlog_is_full(
    start_server: StartServer,
) -> None:
    sp = start_server("unix", backlog=1, idle_timeout=30)
    path = parse(sp.address).path
    assert path is not None
    queued: list[socket.socket] = []
    with fastipc.connect(sp.address, timeout=T) as blocker:
        blocker.send(b"sleep:1.0", timeout=T)
        sp.wait_log(r"handler sleeping")
        try:
            while True:  # fill the accept queue
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                queued.append(s)
                try:
                    s.connect(path)
                except BlockingIOError:
                    queued.pop().close()
                    break
                assert len(queued) < 10
            # A full queue is "not yet": a timeout says so, a longer one gets in once accepted.
            t0 = time.monotonic()
            with pytest.raises(Timeout, match="backlog stayed full"):
                fastipc.connect(sp.address, timeout=0.2)
            assert 0.15 < time.monotonic() - t0 < 1.0
            with fastipc.connect(sp.address, timeout=T) as late:
                assert late.request(b"late", timeout=T) == b"re:late"
            assert blocker.recv(timeout=T) == b"slept"
        finally:
            for s in queued:
                s.close()
    assert_no_traceback(sp)
