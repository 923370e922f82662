"""fastipc.serve / fastipc.connect over udp (unicast and multicast) and unixgram, server in a child.

The server child (``_server_workers serve``) answers each datagram with
PREFIX + the datagram to the address it came from; it is stopped with
SIGTERM and must exit 0 (and remove its unixgram socket file).
"""

from __future__ import annotations

import errno
import os
import random
import re
import selectors
import socket
import stat
import time

import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from _server_workers import Procs

import fastipc
from fastipc import MessageTooLarge, Timeout


def sockname(cli: fastipc.Client) -> object:
    s = socket.socket(fileno=os.dup(cli.fileno()))
    try:
        return s.getsockname()
    finally:
        s.close()


def random_group() -> str:
    rng = random.Random()
    return f"239.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"


# ---- udp ----------------------------------------------------------------------------
def test_udp_port_0_reports_the_real_port(procs: Procs) -> None:
    srv = procs.server("udp://127.0.0.1:0")
    m = re.fullmatch(r"udp://127\.0\.0\.1:(\d+)", srv.address)
    assert m and 0 < int(m.group(1)) < 65536, srv.address
    with fastipc.connect(srv.address) as cli:
        assert cli.request(b"port", timeout=10) == b"re:port"
    srv.stop()


def test_udp_replies_go_to_each_sender(procs: Procs) -> None:
    srv = procs.server("udp://127.0.0.1:0")
    with fastipc.connect(srv.address) as one, fastipc.connect(srv.address) as two:
        assert sockname(one) != sockname(two)
        for i in range(50):  # interleaved: each datagram's reply goes to whoever sent it
            one.send(f"one {i}".encode(), timeout=5)
            two.send(f"two {i}".encode(), timeout=5)
        assert [two.recv(timeout=5) for _ in range(50)] == [
            f"re:two {i}".encode() for i in range(50)
        ]
        assert [one.recv(timeout=5) for _ in range(50)] == [
            f"re:one {i}".encode() for i in range(50)
        ]
        # The handler sees each sender's own (host, port).
        assert one.request(b"?peer", timeout=5) == repr(sockname(one)).encode()
        assert two.request(b"?peer", timeout=5) == repr(sockname(two)).encode()
        with pytest.raises(Timeout):
            one.recv(timeout=0.2)  # nothing else came to this client
    srv.stop()


def test_udp_largest_datagram_works_one_more_byte_raises_before_sending(procs: Procs) -> None:
    srv = procs.server("udp://127.0.0.1:0", prefix="")  # a plain echo: the reply is as long
    payload = random.Random(65507).randbytes(65507)
    with fastipc.connect(srv.address) as cli:
        assert cli.request(payload, timeout=10) == payload
        with pytest.raises(MessageTooLarge) as info:
            cli.send(payload + b"!", timeout=10)
        assert isinstance(info.value, ValueError)
        assert "65507" in str(info.value)
        # Nothing went out: the next reply is the next request's.
        assert cli.request(b"after", timeout=10) == b"after"
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)
    srv.stop()


def test_udp_reply_too_large_to_send_is_dropped_and_the_server_goes_on(procs: Procs) -> None:
    srv = procs.server("udp://127.0.0.1:0")  # "re:" + 65507 bytes cannot be a datagram
    with fastipc.connect(srv.address) as cli:
        cli.send(b"x" * 65507, timeout=10)
        with pytest.raises(Timeout):
            cli.recv(timeout=0.3)
        assert cli.request(b"small", timeout=10) == b"re:small"
    srv.stop()


def test_udp_recv_timeout(procs: Procs) -> None:
    srv = procs.server("udp://127.0.0.1:0")
    with fastipc.connect(srv.address) as cli:
        cli.send(b"!quiet", timeout=5)  # the handler answers nothing
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)
        assert 0.18 <= time.monotonic() - t0 < 2.0
        assert cli.request(b"x", timeout=5) == b"re:x"
    srv.stop()


def test_udp_nobody_listening_surfaces_as_connection_refused() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nobody has now
    url = f"udp://127.0.0.1:{port}"
    with fastipc.connect(url) as cli:
        cli.send(b"anyone?", timeout=5)  # the ICMP "port unreachable" comes back...
        with pytest.raises(ConnectionRefusedError) as info:
            cli.recv(timeout=5)  # ...and the next call reports it
        assert info.value.filename == url


def test_udp_multicast_group_members_in_two_children_each_receive(procs: Procs) -> None:
    group = random_group()
    a = procs.server(f"udp://{group}:0?iface=127.0.0.1", prefix="A:")
    m = re.fullmatch(rf"udp://{re.escape(group)}:(\d+)\?iface=127\.0\.0\.1", a.address)
    assert m, a.address  # the group, the real port, and the interface clients must use
    port = int(m.group(1))
    b = procs.server(f"udp://{group}:{port}?iface=127.0.0.1", prefix="B:")  # same group and port
    assert b.address == a.address
    url = a.address  # connectable as it is
    with fastipc.connect(url) as cli:
        cli.send(b"hello group", timeout=5)
        # Each member got the one datagram and answered from its own address.
        got = sorted([cli.recv(timeout=5), cli.recv(timeout=5)])
        assert got == [b"A:hello group", b"B:hello group"]
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)
    b.stop()
    with fastipc.connect(url) as cli:
        assert cli.request(b"again", timeout=5) == b"A:again"  # B left the group
    a.stop()


def test_udp_multicast_bad_iface_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="iface"):
        fastipc.serve(f"udp://{random_group()}:0?iface=nonsense", lambda m, p: m)


# ---- unixgram -------------------------------------------------------------------------
def test_unixgram_replies_reach_autobound_clients(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/g.sock"
    srv = procs.server(f"unixgram://{path}")
    assert srv.address == f"unixgram://{path}"
    with fastipc.connect(srv.address) as one, fastipc.connect(srv.address) as two:
        me1, me2 = sockname(one), sockname(two)
        assert isinstance(me1, bytes) and me1.startswith(b"\0")  # autobind: an abstract name
        assert me1 != me2
        for i in range(20):
            one.send(f"one {i}".encode(), timeout=5)
            two.send(f"two {i}".encode(), timeout=5)
        assert [one.recv(timeout=5) for _ in range(20)] == [
            f"re:one {i}".encode() for i in range(20)
        ]
        assert [two.recv(timeout=5) for _ in range(20)] == [
            f"re:two {i}".encode() for i in range(20)
        ]
        assert one.request(b"?peer", timeout=5) == repr(me1).encode()
        assert two.request(b"?peer", timeout=5) == repr(me2).encode()
    srv.stop()


def test_unixgram_large_datagram_and_limit(procs: Procs, sock_dir: str) -> None:
    srv = procs.server(f"unixgram://{sock_dir}/big.sock", prefix="")
    payload = random.Random(2).randbytes(200_000)
    with fastipc.connect(srv.address) as cli:
        assert cli.request(payload, timeout=10) == payload
        with pytest.raises(MessageTooLarge):
            cli.send(b"z" * (4 * 1024 * 1024 + 1), timeout=10)
        assert cli.request(b"after", timeout=10) == b"after"
    srv.stop()


def unixgram_limit() -> int:
    """The largest unixgram datagram: the send buffer fastipc asks for, as the kernel caps it."""
    with open("/proc/sys/net/core/wmem_max") as f:
        wmem_max = int(f.read())
    want = 4 * 1024 * 1024
    # setsockopt(SO_SNDBUF, v) keeps 2 * min(v, wmem_max); a datagram may use all but 32 bytes.
    return min(want, 2 * min(want + 32, wmem_max) - 32)


def test_unixgram_datagram_as_large_as_the_kernel_allows(procs: Procs, sock_dir: str) -> None:
    """Beyond the default 208 KiB send buffer: fastipc grows it (up to net.core.wmem_max)."""
    limit = unixgram_limit()
    srv = procs.server(f"unixgram://{sock_dir}/huge.sock", prefix="")
    payload = random.Random(3).randbytes(limit)
    with fastipc.connect(srv.address) as cli:
        assert cli.request(payload, timeout=10) == payload
        with pytest.raises(MessageTooLarge, match=f"at most {limit} bytes"):
            cli.send(payload + b"!", timeout=10)
    srv.stop()


def test_unixgram_file_is_0600_and_removed_on_close(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/f.sock"
    srv = procs.server(f"unixgram://{path}")
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    srv.stop()
    assert not os.path.exists(path)


def test_unixgram_mode_option_and_live_and_stale_files(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/m.sock"
    srv = procs.server(f"unixgram://{path}?mode=0660")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    with pytest.raises(OSError) as info:
        fastipc.serve(f"unixgram://{path}", lambda m, p: m)
    assert info.value.errno == errno.EADDRINUSE and info.value.filename == path
    srv.popen.kill()  # leaves its file behind
    srv.wait()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    srv2 = procs.server(f"unixgram://{path}")  # the stale file is replaced
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    with fastipc.connect(f"unixgram://{path}") as cli:
        assert cli.request(b"new", timeout=5) == b"re:new"
    srv2.stop()
    assert not os.path.exists(path)


def test_unixgram_recv_timeout_and_missing_server(procs: Procs, sock_dir: str) -> None:
    srv = procs.server(f"unixgram://{sock_dir}/t.sock")
    with fastipc.connect(srv.address) as cli:
        cli.send(b"!quiet", timeout=5)
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)
        assert 0.18 <= time.monotonic() - t0 < 2.0
    srv.stop()
    with pytest.raises(FileNotFoundError) as info:
        fastipc.connect(srv.address)
    assert info.value.filename == f"{sock_dir}/t.sock"


@pytest.mark.parametrize("scheme", ["udp", "unixgram"])
def test_fileno_is_readable_when_a_reply_waits(procs: Procs, sock_dir: str, scheme: str) -> None:
    url = "udp://127.0.0.1:0" if scheme == "udp" else f"unixgram://{sock_dir}/r.sock"
    srv = procs.server(url)
    with fastipc.connect(srv.address) as cli, selectors.DefaultSelector() as sel:
        sel.register(cli.fileno(), selectors.EVENT_READ)
        assert sel.select(0.1) == []
        cli.send(b"wake", timeout=5)
        assert len(sel.select(5)) == 1
        assert cli.recv(timeout=0) == b"re:wake"
        assert sel.select(0.1) == []
    srv.stop()


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_unixgram_clients_do_not_each_hold_a_filled_receive_buffer(
    procs: Procs, sock_dir: str
) -> None:
    """Each client may receive up to 4 MiB, but must not touch that much memory up front."""
    srv = procs.server(f"unixgram://{sock_dir}/rss.sock", prefix="")
    before = _rss()
    clients = [fastipc.connect(srv.address) for _ in range(40)]
    try:
        grew = _rss() - before
        assert grew < 16 << 20, f"40 clients took {grew >> 20} MiB (4 MiB each when filled)"
        payload = os.urandom(150_000)
        clients[0].send(payload, timeout=5)
        assert clients[0].recv(timeout=5) == payload  # the buffer still takes a big one
    finally:
        for c in clients:
            c.close()
    srv.stop()
