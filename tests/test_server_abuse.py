"""Bad input to fastipc.serve / fastipc.connect: a clear ValueError, or that one client cut off.

Malformed URLs, framings and limits are refused before anything is bound or
created. Against a real server in a child process: oversized length headers,
garbage bytes, reserved flag bits, clients that vanish mid-frame (closed,
reset or SIGKILLed), handlers that raise and oversized datagrams each cost
only the offending client (or datagram), never memory the size of what was
announced, and a well-behaved client on its own connection keeps getting
exact answers during and after every abuse.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import posix_ipc
import pytest
from _abuse_util import (  # noqa: F401
    Chatter,
    ServerProc,
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
from conftest import child_env, new_name

import fastipc
from fastipc import Closed, MessageTooLarge, Timeout
from fastipc.endpoints import parse

MiB = 1 << 20
#: A FIFO server's idle_timeout (it has no clients to time out, only partial frames).
IDLE_FIFO = 0.5


# ---- malformed URLs, framings and limits -----------------------------------------------

#: (url, regex the ValueError must match: it names the wrong part) for both serve and connect.
BAD_URLS = [
    ("tcp:/127.0.0.1:1", r"missing scheme"),
    ("127.0.0.1:80", r"missing scheme"),
    ("foo://x", r"unknown scheme 'foo'"),
    ("shm://ring", r"scheme 'shm' is not accepted here"),
    ("tcp://127.0.0.1", r"port: missing ':PORT'"),
    ("tcp://127.0.0.1:", r"port '' is not a number"),
    ("tcp://127.0.0.1:99999", r"port '99999' is not a number from 0 to 65535"),
    ("tcp://127.0.0.1:-1", r"port '-1' is not a number"),
    ("TCP://127.0.0.1:http", r"port 'http' is not a number"),
    ("tcp://:80", r"host: empty"),
    ("tcp://[::1:80", r"host: unclosed '\['"),
    ("tcp://[nothex]:80", r"host 'nothex' is not an IPv6 address"),
    ("tcp://::1:80", r"host: write an IPv6 address as \[ADDR\]"),
    ("tcp://[::1]80", r"port: missing ':PORT'"),
    ("tcp://127.0.0.1:80/path", r"unexpected path '/path'"),
    ("tcp://127.0.0.1:0?foo=1", r"unknown option 'foo' \(known: backlog, max_message\)"),
    ("tcp://127.0.0.1:0?backlog", r"option 'backlog' is not KEY=VALUE"),
    ("tcp://127.0.0.1:0?=1", r"option '=1' is not KEY=VALUE"),
    ("tcp://127.0.0.1:0?max_message=1&max_message=2", r"option 'max_message' given twice"),
    ("tcp://127.0.0.1:0?max_message=big", r"option max_message='big' is not a whole number >= 1"),
    ("tcp://127.0.0.1:0?max_message=0", r"option max_message='0' is not a whole number >= 1"),
    ("udp://127.0.0.1:0?backlog=1", r"unknown option 'backlog' \(known: iface\)"),
    ("udp://239.1.2.3:0?iface=eth0", r"option iface='eth0' is not an IPv4 address"),
    ("unix://", r"empty path"),
    ("unix:///tmp/dir/", r"path '/tmp/dir/' names a directory"),
    ("unix://" + "/x" * 60, r"path is 120 bytes, over the 107-byte limit"),
    ("unix://@", r"empty abstract socket name"),
    ("unix://@" + "a" * 108, r"abstract name is 108 bytes, over the 107-byte limit"),
    ("unix:///tmp/a\0b", r"NUL byte"),
    ("unix:///tmp/x.sock?max_message=5000000000", r"max_message must be between 1 and"),
    ("unixgram://@", r"empty abstract socket name"),
    ("unixgram:///tmp/x.sock?backlog=1", r"unknown option 'backlog'"),
    ("mq://name", r"queue name must start with '/'"),
    ("mq:///", r"empty queue name"),
    ("mq:///a/b", r"queue name 'a/b' may not contain '/'"),
    ("mq:///" + "q" * 255, r"queue name is 255 bytes, over the 254-byte limit"),
    ("mq:///fiabad?maxmsg=0", r"option maxmsg='0' is not a whole number >= 1"),
    ("mq:///fiabad?msgsize=x", r"option msgsize='x' is not a whole number >= 1"),
    ("mq:///fiabad?maxmsg=100000000", r"option maxmsg=100000000 exceeds the system limit"),
    ("mq:///fiabad?mode=9", r"option mode='9' is not an octal permission mask"),
    ("mq:///fiabad?max_message=1", r"unknown option 'max_message'"),
    ("fifo://", r"empty path"),
    ("fifo:///tmp/d/", r"path '/tmp/d/' names a directory"),
    ("fifo:///tmp/x.fifo?backlog=1", r"unknown option 'backlog'"),
]

#: Malformed only for serve(): options the server side reads (a client ignores them).
BAD_SERVE_URLS = [
    ("tcp://127.0.0.1:0?backlog=x", r"option backlog='x' is not a whole number >= 0"),
    ("tcp://127.0.0.1:0?backlog=0", r"backlog must be an int >= 1, got 0"),
    ("unix://{d}/m.sock?mode=999", r"option mode='999' is not an octal permission mask"),
    ("unix://{d}/m.sock?mode=1777", r"mode\W+(0o)?1777\b"),  # as written, not 1023
    ("unixgram://{d}/m.sock?mode=rw", r"option mode='rw' is not an octal permission mask"),
    ("fifo://{d}/m.fifo?mode=88", r"option mode='88' is not an octal permission mask"),
]


def _ids(table: list[tuple[str, str]]) -> list[str]:
    return [re.sub(r"[^\w:/.?=&@\[\]-]", "_", url)[:50] for url, _ in table]


@pytest.mark.parametrize(
    ("url", "match"), BAD_URLS + BAD_SERVE_URLS, ids=_ids(BAD_URLS + BAD_SERVE_URLS)
)
def test_serve_refuses_a_malformed_url_naming_the_wrong_part(
    url: str, match: str, sock_dir: str
) -> None:
    url = url.replace("{d}", sock_dir)
    with pytest.raises(ValueError, match=match):
        fastipc.serve(url, lambda m, p: None)
    assert os.listdir(sock_dir) == [], "a refused URL left a file behind"


@pytest.mark.parametrize(("url", "match"), BAD_URLS, ids=_ids(BAD_URLS))
def test_connect_refuses_a_malformed_url_naming_the_wrong_part(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fastipc.connect(url, timeout=1)


@pytest.mark.parametrize("side", ["serve", "connect"])
def test_a_bad_mq_reply_option_is_named_and_creates_no_queue(side: str) -> None:
    name = "/" + new_name("fiaq")
    url = f"mq://{name}?reply=noslash"
    with pytest.raises(ValueError) as info:
        if side == "serve":
            fastipc.serve(url, lambda m, p: None)
        else:
            fastipc.connect(url)
    left = []
    try:
        q = posix_ipc.MessageQueue(name)
    except posix_ipc.ExistentialError:
        pass
    else:
        left.append(name)
        q.unlink()
        q.close()
    assert "reply" in str(info.value), f"the error does not name the reply option: {info.value}"
    assert not left, f"{side}() refused {url!r} but left the queue {name} behind"


def test_a_bad_fifo_single_writer_option_is_a_value_error_before_opening(
    sock_dir: str,
) -> None:
    url = f"fifo://{sock_dir}/none.fifo?single_writer=yes"
    with pytest.raises(ValueError, match=r"single_writer='yes'"):
        fastipc.connect(url)


@pytest.mark.parametrize("framing", ["lenght", "LENGTH", "", "line", None])
def test_an_unknown_framing_is_refused(framing: object, sock_dir: str) -> None:
    url = f"unix://{sock_dir}/f.sock"
    with pytest.raises(ValueError, match=r"framing must be 'raw' or 'length', got "):
        fastipc.serve(url, lambda m, p: None, framing=framing)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"framing must be 'raw' or 'length', got "):
        fastipc.connect(url, framing=framing)  # type: ignore[arg-type]
    assert os.listdir(sock_dir) == []


BAD_LIMITS = [
    ("max_clients", 0, ValueError, r"max_clients must be an int >= 1, got 0"),
    ("max_clients", -5, ValueError, r"max_clients must be an int >= 1, got -5"),
    ("max_clients", 2.5, ValueError, r"max_clients must be an int >= 1, got 2.5"),
    ("max_clients", True, ValueError, r"max_clients must be an int >= 1, got True"),
    ("max_message", 0, ValueError, r"max_message must be between 1 and 4294967295 bytes, got 0"),
    ("max_message", 1 << 32, ValueError, r"max_message must be between 1 and 4294967295"),
    ("max_message", "1024", TypeError, r"max_message must be an int"),
    ("max_output", 0, ValueError, r"max_output must be an int >= 1, got 0"),
    ("max_output", None, ValueError, r"max_output must be an int >= 1, got None"),
    (
        "idle_timeout",
        -1,
        ValueError,
        r"idle_timeout must be a number of seconds > 0 or None, got -1",
    ),
    ("idle_timeout", 0, ValueError, r"idle_timeout must be .* got 0"),
    ("idle_timeout", math.nan, ValueError, r"idle_timeout must be .* got nan"),
    ("idle_timeout", "5", ValueError, r"idle_timeout must be .* got '5'"),
    ("idle_timeout", True, ValueError, r"idle_timeout must be .* got True"),
    ("backlog", 0, ValueError, r"backlog must be an int >= 1, got 0"),
    ("backlog", -1, ValueError, r"backlog must be an int >= 1, got -1"),
]


@pytest.mark.parametrize(
    ("name", "value", "exc", "match"), BAD_LIMITS, ids=[f"{n}={v!r}" for n, v, _, _ in BAD_LIMITS]
)
def test_a_bad_limit_is_refused_before_binding(
    name: str, value: object, exc: type[Exception], match: str, sock_dir: str
) -> None:
    for url in (f"unix://{sock_dir}/l.sock", "tcp://127.0.0.1:0", "udp://127.0.0.1:0"):
        with pytest.raises(exc, match=match):
            fastipc.serve(url, lambda m, p: None, **{name: value})  # type: ignore[arg-type]
    assert os.listdir(sock_dir) == []


def test_a_handler_that_is_not_callable_is_refused(sock_dir: str) -> None:
    with pytest.raises(TypeError, match="handler must be callable, not bytes"):
        fastipc.serve(f"unix://{sock_dir}/h.sock", b"echo")  # type: ignore[arg-type]
    assert os.listdir(sock_dir) == []


# ---- length-framed streams: hostile headers and bytes ------------------------------------

STREAMS = ["tcp", "unix"]


@pytest.mark.parametrize("announced", [MiB + 1, 3 << 30, 0xFFFFFFFF])
@pytest.mark.parametrize("kind", STREAMS)
def test_a_header_over_max_message_disconnects_that_client_and_allocates_nothing(
    start_server: StartServer, kind: str, announced: int
) -> None:
    sp = start_server(kind, max_message=MiB, idle_timeout=30)
    base = sp.status("VmHWM")
    with Chatter(sp.address) as good:
        bad = raw_connect(sp.address)
        bad.sendall(frame(b"first"))
        assert bad.recv(100) == frame(b"re:first")
        me = who(bad)
        bad.sendall(frame(b"", length=announced))
        assert wait_disconnected(bad) == b"", "the server answered a refused frame"
        bad.close()
        sp.wait_log(
            rf"WARNING dropping {me}: bad frame: frame header announces {announced} bytes, "
            rf"over max_message \({MiB} bytes\)"
        )
        good.wait_answers(3)
    grown = sp.status("VmHWM") - base
    assert grown < 8 * MiB, (
        f"server peak RSS grew {grown} bytes on a refused {announced}-byte header"
    )
    assert_no_traceback(sp)


@pytest.mark.parametrize("kind", STREAMS)
def test_a_fastipc_client_sending_over_max_message_gets_closed(
    start_server: StartServer, kind: str
) -> None:
    sp = start_server(kind, max_message=4096, idle_timeout=30)
    with Chatter(sp.address) as good:
        cli = fastipc.connect(sp.address, timeout=T)  # its own max_message is the default
        with cli:
            assert cli.request(b"x" * 4096, timeout=T) == b"len:4096"  # exactly max_message: fine
            with pytest.raises(Closed):
                cli.send(b"y" * 4097, timeout=T)
                cli.recv(timeout=T)
        sp.wait_log(
            r"dropping .*: bad frame: frame header announces 4097 bytes, over max_message \(4096"
        )
        good.wait_answers(3)
    assert_no_traceback(sp)


def test_a_payload_announced_within_max_message_is_not_allocated_before_it_arrives(
    start_server: StartServer,
) -> None:
    sp = start_server("unix", idle_timeout=30)  # default max_message: 64 MiB
    base = sp.status("VmHWM")
    with Chatter(sp.address) as good:
        bad = raw_connect(sp.address)
        bad.sendall(frame(b"", length=64 * MiB)[:8] + b"z" * 1000)
        good.wait_answers(5)
        grown = sp.status("VmHWM") - base
        me = who(bad)
        bad.close()
        sp.wait_log(
            rf"WARNING dropping {me}: closed in the middle of a frame \(1008 bytes of it sent\)"
        )
    assert grown < 8 * MiB, f"server peak RSS grew {grown} bytes for a 64 MiB frame never sent"
    assert_no_traceback(sp)


GARBAGE = {
    "random": random.Random(4).randbytes(4096),
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "tls-hello": bytes.fromhex("160301020001000001fc0303") + bytes(500),
    "text": b"hello server, are you there?\n",
}


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
@pytest.mark.parametrize("kind", STREAMS)
def test_garbage_bytes_disconnect_that_client(
    start_server: StartServer, kind: str, garbage: str
) -> None:
    sp = start_server(kind, max_message=MiB, idle_timeout=30)
    with Chatter(sp.address) as good:
        bad = raw_connect(sp.address)
        me = who(bad)
        bad.sendall(GARBAGE[garbage])
        assert wait_disconnected(bad) == b"", "the server answered garbage"
        bad.close()
        sp.wait_log(rf"WARNING dropping {me}: bad frame: ")
        good.wait_answers(3)
    assert_no_traceback(sp)


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (0x80000000, "unknown flag bits 0x80000000"),
        (2, r"flags 0x2: a Channel's shared-memory hand-off, which this stream does not take"),
        (0xFFFFFFFE, r"flags 0xfffffffe: a Channel's shared-memory hand-off"),
    ],
)
@pytest.mark.parametrize("kind", STREAMS)
def test_unknown_flag_bits_disconnect_that_client(
    start_server: StartServer, kind: str, flags: int, why: str
) -> None:
    sp = start_server(kind, max_message=MiB, idle_timeout=30)
    with Chatter(sp.address) as good:
        bad = raw_connect(sp.address)
        me = who(bad)
        bad.sendall(frame(b"ok") + frame(b"flagged", flags=flags) + frame(b"after"))
        # The frame before the bad one is answered; nothing after it is.
        assert wait_disconnected(bad) == frame(b"re:ok")
        bad.close()
        sp.wait_log(rf"WARNING dropping {me}: bad frame: frame header has {why}")
        good.wait_answers(3)
    assert_no_traceback(sp)


# ---- clients that vanish mid-frame -----------------------------------------------------


@pytest.mark.parametrize("cut", [3, 8, 8 + 50])
@pytest.mark.parametrize(
    ("kind", "how"),
    [
        ("tcp", "close"),
        ("tcp", "shutdown"),
        ("tcp", "reset"),
        ("unix", "close"),
        ("unix", "shutdown"),
    ],
)
def test_a_client_vanishing_mid_frame_is_dropped_and_others_are_served(
    start_server: StartServer, kind: str, how: str, cut: int
) -> None:
    sp = start_server(kind, idle_timeout=30)
    with Chatter(sp.address) as good:
        bad = raw_connect(sp.address)
        bad.sendall(frame(b"first"))
        assert bad.recv(100) == frame(b"re:first")
        me = who(bad)
        bad.sendall(frame(b"p" * 100)[:cut])
        good.wait_answers(2)  # the partial frame reached the server before we leave
        if how == "shutdown":
            bad.shutdown(socket.SHUT_WR)
            assert wait_disconnected(bad) == b""
        elif how == "reset":
            bad.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        bad.close()
        if how == "reset":
            sp.wait_log(rf"INFO disconnect {me}: read failed: Connection reset by peer")
        else:
            sp.wait_log(
                rf"WARNING dropping {me}: closed in the middle of a frame \({cut} bytes of it sent\)"
            )
        good.wait_answers(3)
    assert_no_traceback(sp)


KILLED_CLIENT = r"""
import socket, struct, sys, time
from fastipc.endpoints import parse
ep = parse(sys.argv[1])
s = socket.socket(socket.AF_UNIX if ep.scheme == "unix" else socket.AF_INET)
s.settimeout(10)
s.connect(ep.address)
s.sendall(struct.pack("<II", 2, 0) + b"hi")
got = s.recv(100)
s.sendall(struct.pack("<II", 1000, 0) + b"k" * 300)
name = s.getsockname()
print(got.hex(), name[1] if isinstance(name, tuple) else "-", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("kind", STREAMS)
def test_a_client_process_killed_mid_frame_is_dropped(start_server: StartServer, kind: str) -> None:
    sp = start_server(kind, idle_timeout=30)
    with Chatter(sp.address) as good:
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILLED_CLIENT), sp.address],
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            reply, port = child.stdout.readline().split()
            assert bytes.fromhex(reply) == frame(b"re:hi")
            good.wait_answers(2)
            child.send_signal(signal.SIGKILL)
            child.wait(T)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(T)
            child.stdout.close()  # type: ignore[union-attr]
        me = who(port=int(port)) if kind == "tcp" else who(pid=child.pid)
        sp.wait_log(
            rf"WARNING dropping {me}: closed in the middle of a frame \(308 bytes of it sent\)"
        )
        good.wait_answers(3)
    assert_no_traceback(sp)


# ---- handlers that raise -----------------------------------------------------------------


@pytest.mark.parametrize("kind", STREAMS)
def test_a_handler_raising_drops_only_that_client(start_server: StartServer, kind: str) -> None:
    sp = start_server(kind, idle_timeout=30)
    with Chatter(sp.address) as good:
        for _ in range(2):  # and the server still takes new clients afterwards
            with fastipc.connect(sp.address, timeout=T) as bad:
                assert bad.request(b"before", timeout=T) == b"re:before"
                bad.send(b"boom", timeout=T)
                with pytest.raises(Closed):
                    bad.recv(timeout=T)
            good.wait_answers(2)
        sp.wait_log(r"ERROR handler failed on a message from .*; dropping that client", count=2)
    sp.alive()
    assert sp.log().count("RuntimeError: boom on purpose") == 2, sp.log()


@pytest.mark.parametrize("kind", ["udp", "unixgram"])
def test_a_handler_raising_on_a_datagram_does_not_stop_the_server(
    start_server: StartServer, kind: str
) -> None:
    sp = start_server(kind)
    with Chatter(sp.address) as good, fastipc.connect(sp.address, timeout=T) as bad:
        bad.send(b"boom", timeout=T)
        with pytest.raises(Timeout):
            bad.recv(timeout=0.3)
        assert bad.request(b"again", timeout=T) == b"re:again"
        sp.wait_log(r"ERROR handler failed on a message from .*; message dropped")
        good.wait_answers(3)
    sp.alive()


# ---- datagrams -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["udp", "unixgram"])
def test_an_oversized_datagram_is_dropped_and_the_server_goes_on(
    start_server: StartServer, kind: str
) -> None:
    sp = start_server(kind, max_message=1000)
    ep = parse(sp.address)
    family = socket.AF_INET if kind == "udp" else socket.AF_UNIX
    with Chatter(sp.address) as good, socket.socket(family, socket.SOCK_DGRAM) as raw:
        if kind == "unixgram":
            raw.bind("")  # autobind, so that replies can reach it
        raw.settimeout(0.3)
        for size in (1001, 5000, 60000):
            raw.sendto(b"o" * size, ep.address)
            with pytest.raises(socket.timeout):
                print("unexpected reply", raw.recv(70000))
        sp.wait_log(r"WARNING dropped a datagram from .*: over 1000 bytes \(max_message\)", count=3)
        raw.settimeout(T)
        raw.sendto(b"n" * 1000, ep.address)  # exactly max_message: served
        assert raw.recv(70000) == b"len:1000"
        raw.sendto(b"small", ep.address)
        assert raw.recv(70000) == b"re:small"
        good.wait_answers(3)
    assert_no_traceback(sp)


def test_a_udp_client_refuses_a_datagram_over_the_ip_limit_before_sending() -> None:
    with (
        fastipc.connect("udp://127.0.0.1:9", timeout=1) as cli,
        pytest.raises(MessageTooLarge, match="at most 65507 bytes, got a 65508-byte"),
    ):
        cli.send(b"u" * 65508)


# ---- FIFOs (always length-framed) and message queues ------------------------------------------


def _fifo_writes_get_through(sp: ServerProc, writer: fastipc.Client, tag: str, n: int = 5) -> None:
    for i in range(n):
        writer.send(b"log:%s %d" % (tag.encode(), i), timeout=T)
    for i in range(n):
        sp.wait_log(re.escape(f"got b'log:{tag} {i}'"), timeout=5)


def test_a_fifo_frame_over_max_message_is_dropped_and_the_fifo_read_on(
    start_server: StartServer, sock_dir: str
) -> None:
    path = f"{sock_dir}/big.fifo"
    sp = start_server(f"fifo://{path}", max_message=MiB, idle_timeout=30)
    base = sp.status("VmHWM")
    with fastipc.connect(sp.address, timeout=T) as good:
        _fifo_writes_get_through(sp, good, "before")
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, frame(b"", length=3 << 30))
        finally:
            os.close(fd)
        sp.wait_log(r"broken frame \(frame header announces 3221225472 bytes, over max_message")
        _fifo_writes_get_through(sp, good, "after")
    grown = sp.status("VmHWM") - base
    assert grown < 8 * MiB, f"server peak RSS grew {grown} bytes on a refused 3 GiB header"
    assert_no_traceback(sp)


def test_a_short_stray_write_to_a_fifo_does_not_swallow_the_next_messages(
    start_server: StartServer, sock_dir: str
) -> None:
    # Two stray bytes, then a good frame: bytes 0-7 read as a header announcing
    # 0x00050010 bytes with flags 0, which is under max_message.
    path = f"{sock_dir}/stray.fifo"
    sp = start_server(f"fifo://{path}", idle_timeout=IDLE_FIFO)
    with fastipc.connect(sp.address, timeout=T) as good:
        _fifo_writes_get_through(sp, good, "before")
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"\x10\x00")
        finally:
            os.close(fd)
        # The server has read the two bytes on their own. (Waiting past idle_timeout
        # too, so that dropping a partial frame that old would also do.)
        time.sleep(IDLE_FIFO + 0.3)
        _fifo_writes_get_through(sp, good, "after")
    assert_no_traceback(sp)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_handler_raising_on_a_queue_message_does_not_stop_the_server(
    start_server: StartServer, stop: signal.Signals
) -> None:
    names = ["/" + new_name("fiamq"), "/" + new_name("fiamr")]
    url = f"mq://{names[0]}?reply={names[1]}"
    try:
        sp = start_server(url)
        with fastipc.connect(url, timeout=T) as cli:
            assert cli.request(b"one", timeout=T) == b"re:one"
            cli.send(b"boom", timeout=T)
            with pytest.raises(Timeout):
                cli.recv(timeout=0.3)
            assert cli.request(b"two", timeout=T) == b"re:two"
        sp.wait_log(r"ERROR handler failed on a message from -; message dropped")
        sp.signal(stop)
        assert sp.wait() == 0, sp.log()
    finally:
        left = []
        for name in names:
            try:
                q = posix_ipc.MessageQueue(name)
            except posix_ipc.ExistentialError:
                continue
            left.append(name)
            q.unlink()
            q.close()
    assert not left, f"the server stopped by {stop!r} left its queues behind: {left}"
