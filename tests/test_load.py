"""Load: one server process holds 1,000 TCP and 1,000 Unix clients at once, and answers each of them.

The server process runs two ``fastipc.serve`` servers (tcp and unix, length
framing, ``max_clients`` raised above the 1,024 default), each in its own
thread. Two client processes open plain sockets (1,000 each, all kept open),
send one length-framed request on every socket, then read every reply and
check it; while all 2,000 are still connected, each server is asked how many
clients it holds. The server's memory per idle client (VmRSS delta / clients)
is printed; ``docs/reliability-chaos-load.md`` records it.

The soft RLIMIT_NOFILE is raised to the hard limit (children inherit it);
the test is skipped only when the hard limit cannot hold the clients.
``FASTIPC_LOAD_CLIENTS`` (default 1000) sets the clients per transport.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator

import pytest
from conftest import child_env

N = int(os.environ.get("FASTIPC_LOAD_CLIENTS", "1000"))
#: fds a process needs besides its sockets (stdio, the interpreter, epoll, listeners).
SPARE_FDS = 64

SERVER = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, fastipc
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for stacks on a hang
    servers = {}

    def make(kind, url):
        def handler(msg, peer):
            if msg == b"?clients":
                return str(servers[kind].clients).encode()
            return b"re:" + msg
        srv = fastipc.serve(url, handler, max_clients=4 * %(n)d, backlog=1024, idle_timeout=None)
        servers[kind] = srv
        srv.start()
        return srv.address

    tcp = make("tcp", "tcp://127.0.0.1:0")
    unix = make("unix", sys.argv[1])
    print("ready", tcp, unix, flush=True)
    sys.stdin.readline()
    for srv in servers.values():
        srv.close()
    print("closed", flush=True)
    """
)

CLIENT = textwrap.dedent(
    """
    import selectors, socket, struct, sys
    url, n = sys.argv[1], int(sys.argv[2])
    HEAD = struct.Struct("<II")
    if url.startswith("tcp://"):
        host, port = url[len("tcp://"):].rsplit(":", 1)
        family, addr = socket.AF_INET, (host, int(port))
    else:
        family, addr = socket.AF_UNIX, url[len("unix://"):]

    def frame(b):
        return HEAD.pack(len(b), 0) + b

    def read_frame(s):
        buf = b""
        while len(buf) < 8:
            chunk = s.recv(8 - len(buf))
            assert chunk, "server closed a connection"
            buf += chunk
        size, flags = HEAD.unpack(buf)
        body = b""
        while len(body) < size:
            chunk = s.recv(size - len(body))
            assert chunk, "server closed a connection mid-reply"
            body += chunk
        return body

    socks = []
    for i in range(n):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.connect(addr)  # blocking: a unix connect waits for room in the backlog
        s.settimeout(30)
        socks.append(s)
    print("connected", len(socks), flush=True)
    # All connected at once: every client sends, then every client reads its reply.
    for i, s in enumerate(socks):
        s.sendall(frame(b"client %d of %s" % (i, url.encode())))
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    left = set(range(n))
    while left:
        events = sel.select(timeout=30)
        assert events, f"{len(left)} replies missing after 30 s"
        for key, _ in events:
            i = key.data
            got = read_frame(socks[i])
            want = b"re:client %d of %s" % (i, url.encode())
            assert got == want, (i, got, want)
            sel.unregister(socks[i])
            left.discard(i)
    socks[0].sendall(frame(b"?clients"))
    held = int(read_frame(socks[0]))
    print("answered", n, "held", held, flush=True)
    sys.stdin.readline()
    for s in socks:
        s.close()
    print("closed", flush=True)
    """
)


def _vmrss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _who(proc: subprocess.Popen[str]) -> str:
    args = [str(a) for a in proc.args]  # type: ignore[union-attr]
    return ("server " if "fastipc.serve" in args[2] else "client ") + " ".join(args[3:])


#: The server process, for its thread stacks when something hangs.
_SERVER: list[subprocess.Popen[str]] = []


def _server_stacks() -> str:
    if not _SERVER or _SERVER[0].poll() is not None:
        return ""
    srv = _SERVER[0]
    srv.send_signal(signal.SIGUSR1)
    time.sleep(1)  # faulthandler writes from the signal handler
    srv.send_signal(signal.SIGKILL)
    srv.wait(10)
    assert srv.stderr is not None
    return "\nserver threads:\n" + srv.stderr.read()


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of ``proc``'s stdout, read byte by byte from the fd (a buffered readline
    could swallow the next line, which select() would then never report)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    out = b""
    while not out.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"{_who(proc)} said nothing within {timeout} s{_server_stacks()}")
        byte = os.read(fd, 1)
        if not byte:
            assert proc.stderr is not None
            proc.wait(5)
            pytest.fail(f"{_who(proc)} exited {proc.returncode}: {proc.stderr.read()}")
        out += byte
    return out.decode().strip()


@pytest.fixture
def nofile() -> Iterator[int]:
    """Raise the soft fd limit to the hard limit for this process and its children; restore after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * N + SPARE_FDS
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(
            f"RLIMIT_NOFILE hard limit {hard} < {need} needed for {N} tcp + {N} unix clients"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_one_server_holds_1000_tcp_and_1000_unix_clients(nofile: int) -> None:
    d = tempfile.mkdtemp(prefix="fild", dir="/tmp")
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        return p

    try:
        server = start(SERVER % {"n": N}, f"unix://{d}/load.sock")
        _SERVER[:] = [server]
        word, tcp_url, unix_url = _line(server, 30).split()
        assert word == "ready"
        rss0 = _vmrss_kib(server.pid)
        clients = [start(CLIENT, url, str(N)) for url in (tcp_url, unix_url)]
        for c in clients:
            assert _line(c, 60) == f"connected {N}"
        for c, url in zip(clients, (tcp_url, unix_url)):
            line = _line(c, 60)
            assert line == f"answered {N} held {N}", f"{url}: {line}"
        # Every client has had its answer and is idle, all still connected.
        rss1 = _vmrss_kib(server.pid)
        per_client = (rss1 - rss0) * 1024 / (2 * N)
        print(
            f"\nload: backend={os.environ.get('FASTIPC_BACKEND', 'auto')} clients={N} tcp + {N} unix, "
            f"server VmRSS {rss0} KiB idle -> {rss1} KiB holding them: {per_client:.0f} bytes per idle client"
        )
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("\n")
            c.stdin.flush()
            assert _line(c, 60) == "closed"
            assert c.wait(30) == 0
        assert server.stdin is not None
        server.stdin.write("\n")
        server.stdin.flush()
        assert _line(server, 30) == "closed"
        assert server.wait(30) == 0
        assert os.listdir(d) == [], f"the unix server left {os.listdir(d)}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        shutil.rmtree(d, ignore_errors=True)
