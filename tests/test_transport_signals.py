"""Signals and the transports: Ctrl-C in a blocked client call, SIGINT/SIGTERM stopping serve_forever.

Every process here is a real child (``_server_workers``): a client blocked in
``recv`` (or in a FIFO ``send``) must raise KeyboardInterrupt soon after a
SIGINT; a server in ``serve_forever()`` in its main thread must return on
SIGINT or SIGTERM with ``stopped_by`` set, and ``close()`` must remove what
it created, the process exiting 0.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from _server_workers import Procs, queue_exists, unlink_queue

import fastipc
from fastipc import Closed


@pytest.fixture
def qnames() -> Iterator[list[str]]:
    """Two fresh queue names, unlinked at teardown."""
    names = [f"/fastipc.t{os.getpid()}_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    yield names
    for name in names:
        unlink_queue(name)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2]


def wait_until_sleeping(pid: int, timeout: float = 5) -> None:
    """Wait until ``pid`` is asleep in the kernel (blocked), for a few samples in a row."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 5:
        assert time.monotonic() < deadline, f"process {pid} never settled into a blocking call"
        streak = streak + 1 if proc_state(pid) == "S" else 0
        time.sleep(0.02)


BLOCKED = ["tcp-length", "tcp-raw", "unix-length", "unix-raw", "udp", "unixgram", "mq", "fifo-send"]


@pytest.mark.parametrize("kind", BLOCKED)
def test_ctrl_c_interrupts_a_blocked_client_call_promptly(
    procs: Procs, sock_dir: str, qnames: list[str], kind: str
) -> None:
    scheme, _, framing = kind.partition("-")
    what = "send" if framing == "send" else "recv"
    framing = framing if framing in ("raw", "length") else "length"
    rfd = -1
    if scheme in ("tcp", "unix", "udp", "unixgram"):
        url = {
            "tcp": "tcp://127.0.0.1:0",
            "udp": "udp://127.0.0.1:0",
            "unix": f"unix://{sock_dir}/s.sock",
            "unixgram": f"unixgram://{sock_dir}/g.sock",
        }[scheme]
        srv = procs.server(url, framing)
        url = srv.address
    elif scheme == "mq":
        url = f"mq://{qnames[0]}"  # an empty queue: recv waits
    else:
        path = f"{sock_dir}/f.fifo"
        os.mkfifo(path, 0o600)
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads
        url = f"fifo://{path}"
    try:
        kid = procs.start("blocked", url, what, framing)
        kid.expect("ready")
        wait_until_sleeping(kid.pid)
        t0 = time.monotonic()
        kid.signal(signal.SIGINT)
        took = float(kid.expect("interrupted ", 5))
        latency = time.monotonic() - t0
        kid.finish()
        assert took >= 0.05  # it really was blocked before the signal
        assert latency < 1.0, f"KeyboardInterrupt came {latency:.2f} s after SIGINT"
    finally:
        if rfd >= 0:
            os.close(rfd)
    if scheme in ("tcp", "unix", "udp", "unixgram"):
        srv.stop()


SERVED = ["tcp", "unix", "udp", "unixgram", "mq", "fifo"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("scheme", SERVED)
def test_signal_stops_serve_forever_and_close_cleans_up(
    procs: Procs, sock_dir: str, qnames: list[str], scheme: str, signum: int
) -> None:
    url = {
        "tcp": "tcp://127.0.0.1:0",
        "udp": "udp://127.0.0.1:0",
        "unix": f"unix://{sock_dir}/s.sock",
        "unixgram": f"unixgram://{sock_dir}/g.sock",
        "mq": f"mq://{qnames[0]}?reply={qnames[1]}",
        "fifo": f"fifo://{sock_dir}/f.fifo",
    }[scheme]
    srv = procs.server(url)
    cli = fastipc.connect(srv.address if scheme != "mq" else url, timeout=10)
    try:
        if scheme == "fifo":
            cli.send(b"one-way", timeout=5)
        else:
            assert cli.request(b"before", timeout=5) == b"re:before"
        srv.stop(signum)  # "stopped SIGNUM", "closed", exit status 0
        if scheme in ("tcp", "unix"):
            with pytest.raises(Closed):  # close() closed its clients
                cli.recv(timeout=5)
    finally:
        cli.close()
    if scheme in ("unix", "unixgram", "fifo"):
        path = url.split("://", 1)[1]
        assert not os.path.exists(path), f"{path} left behind"
    elif scheme == "mq":
        assert not queue_exists(qnames[0]) and not queue_exists(qnames[1])
    elif scheme == "tcp":
        with pytest.raises(ConnectionRefusedError):
            fastipc.connect(srv.address, timeout=5)
    else:  # udp: the port is free again
        port = int(srv.address.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))


def test_serve_forever_keeps_serving_until_the_signal(procs: Procs, sock_dir: str) -> None:
    """SIGTERM arrives while clients are mid-conversation: everyone else still got every answer."""
    path = f"{sock_dir}/busy.sock"
    srv = procs.server(f"unix://{path}")
    clis = [fastipc.connect(f"unix://{path}", timeout=10) for _ in range(10)]
    try:
        for r in range(20):
            for i, c in enumerate(clis):
                c.send(f"{i}/{r}".encode(), timeout=5)
            for i, c in enumerate(clis):
                assert c.recv(timeout=5) == f"re:{i}/{r}".encode()
        srv.stop(signal.SIGTERM)
        for c in clis:
            with pytest.raises(Closed):
                c.recv(timeout=5)
    finally:
        for c in clis:
            c.close()
    assert not os.path.exists(path)
