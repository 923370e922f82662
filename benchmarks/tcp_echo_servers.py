"""The echo servers of ``tcp_echo.py``, each in its own process, and what every child of the run shares.

``fastipc-raw`` and ``fastipc-length`` are ``fastipc.serve`` with raw and
length framing; ``asyncio-streams`` is ``asyncio.start_server`` with the
stock event loop; ``asyncio-protocol`` and ``uvloop-protocol`` are
``loop.create_server`` with an ``asyncio.Protocol`` that writes back what
``data_received`` gets, on the stock loop and on uvloop; ``selectors`` is the
loop a careful Python programmer writes by hand (``selectors.DefaultSelector``,
non-blocking sockets, ``recv`` then ``send``, what the kernel did not take
queued until the socket is writable); ``c-epoll`` is a C epoll echo server
compiled at run time, the machine's own limit (what the kernel costs per
request with no Python at all). Each child is ``tcp_echo.py`` started again
with ``--child-*`` arguments (see :data:`SCRIPT`), through the process
harness of ``fastipc.bench.harness``; children are pinned to the CPUs the
parent chose and die with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from typing import IO, Any

from fastipc.bench.harness import BenchError, child_env, die_with_parent, read_line, spawn, stop

#: Every server, in table order; the last is the machine's own limit.
SERVERS = (
    "fastipc-raw",
    "fastipc-length",
    "asyncio-streams",
    "asyncio-protocol",
    "uvloop-protocol",
    "selectors",
    "c-epoll",
)
#: The servers fastipc is compared against (the "best other" of the tables).
OTHERS = ("asyncio-streams", "asyncio-protocol", "uvloop-protocol", "selectors")
#: The machine's own limit: no Python in the server at all.
MACHINE = "c-epoll"
#: The fastipc server every row is compared with (raw framing echoes the same bytes as the others).
REFERENCE = "fastipc-raw"
LABELS = {
    "fastipc-raw": "fastipc.serve, raw framing",
    "fastipc-length": "fastipc.serve, length framing",
    "asyncio-streams": "asyncio streams",
    "asyncio-protocol": "asyncio Protocol",
    "uvloop-protocol": "asyncio Protocol on uvloop",
    "selectors": "selectors loop, plain Python",
    "c-epoll": "C epoll loop (machine)",
}
FRAMING = {k: "length" if k == "fastipc-length" else "raw" for k in SERVERS}
#: The script every child runs (with ``--child-server``, ``--child-load`` or ``--child-hold``).
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcp_echo.py")
_HDR = struct.Struct("<II")
_MSG = 64
_PIN_ENV = "FASTIPC_TCP_ECHO_CPUS"

# The machine row: one recv and one send per request, nothing else. A reply
# the kernel does not take at once (never, for 64-byte echoes) is finished
# with a blocking poll() on that socket: simpler than a queue, and the
# benchmark's requests never reach it.
C_SERVER = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig; stopping = 1; }
static char buf[65536];

static int echo(int fd) {
    ssize_t got = recv(fd, buf, sizeof buf, 0);
    if (got < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (got == 0) return -1;
    for (ssize_t off = 0; off < got;) {
        ssize_t put = send(fd, buf + off, (size_t)(got - off), MSG_NOSIGNAL);
        if (put >= 0) { off += put; continue; }
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return -1;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 10000) <= 0) return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int backlog = argc > 1 ? atoi(argv[1]) : 128, one = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) { perror("socket"); return 1; }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, backlog)
        || getsockname(lfd, (struct sockaddr *)&addr, &len)) { perror("bind/listen"); return 1; }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev)) { perror("epoll"); return 1; }
    printf("{\"port\": %d}\n", ntohs(addr.sin_port));
    fflush(stdout);
    while (!stopping) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd != lfd) {
                if (echo(fd)) close(fd);  /* close() also takes it out of the epoll set */
                continue;
            }
            for (;;) {
                int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c < 0) break;  /* EAGAIN: all taken; anything else: try again next wakeup */
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev)) close(c);
            }
        }
    }
    return 0;
}
"""


class CPrograms:
    """C programs compiled once per run (``sources``: name -> C text); :meth:`close` removes the builds.

    ``exe[name]`` is the built program's path, or ``why[name]`` says why there is none.
    """

    def __init__(self, sources: dict[str, str]) -> None:
        self.dir: str | None = None
        self.exe: dict[str, str] = {}
        self.why: dict[str, str] = {}
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            self.why = {name: "no C compiler (cc)" for name in sources}
            return
        self.dir = tempfile.mkdtemp(prefix="fastipc-tcp-echo-c.")
        for name, text in sources.items():
            src = os.path.join(self.dir, f"{name}.c")
            with open(src, "w") as f:
                f.write(text)
            exe = os.path.join(self.dir, name)
            proc = subprocess.run(
                [cc, "-O2", "-o", exe, src],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if proc.returncode != 0:
                self.why[name] = f"{name}.c did not compile: " + (proc.stderr.strip()[-200:] or "?")
            else:
                self.exe[name] = exe

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def child_setup(sig: int = signal.SIGKILL) -> None:
    """Pin this child to the CPUs its parent chose (if any); have ``sig`` sent to it when the parent exits."""
    cpus = os.environ.get(_PIN_ENV, "")
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    die_with_parent(sig)


def tcp_child_env(cpus: str = "") -> dict[str, str]:
    """The environment of a child: this fastipc on PYTHONPATH, pinned to ``cpus`` ("": not pinned)."""
    return child_env({_PIN_ENV: cpus})


def request(i: int, framing: str) -> bytes:
    """Connection ``i``'s request, which is also the exact echo it expects."""
    payload = (b"%07d:" % i).ljust(_MSG, b"e")
    return _HDR.pack(len(payload), 0) + payload if framing == "length" else payload


def _announce(port: int) -> None:
    print(json.dumps({"port": port}), flush=True)


def _serve_asyncio(kind: str, backlog: int) -> None:
    import asyncio

    class Echo(asyncio.Protocol):
        # asyncio and uvloop set TCP_NODELAY on TCP transports themselves.
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.write = transport.write  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.write(data)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == "asyncio-streams":
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=backlog)
        else:
            srv = await loop.create_server(Echo, "127.0.0.1", 0, backlog=backlog)
        stopped = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stopped.set_result, None)
        loop.add_signal_handler(signal.SIGINT, stopped.set_result, None)
        _announce(srv.sockets[0].getsockname()[1])
        async with srv:
            await stopped

    if kind == "uvloop-protocol":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _serve_selectors(backlog: int) -> None:
    import selectors
    import socket

    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(backlog)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    pending: dict[socket.socket, bytes] = {}  # what the kernel did not take yet

    class Stop(Exception):
        pass

    def on_signal(signum: int, frame: object) -> None:
        raise Stop  # out of select(), which Python would otherwise retry (PEP 475)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def drop(conn: socket.socket) -> None:
        sel.unregister(conn)
        pending.pop(conn, None)
        conn.close()

    _announce(lsock.getsockname()[1])
    try:
        _selectors_loop(sel, lsock, pending, drop)
    except Stop:
        pass
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()


def _selectors_loop(sel: Any, lsock: Any, pending: dict[Any, bytes], drop: Any) -> None:
    import selectors
    import socket

    select = sel.select
    while True:
        for key, mask in select():
            sock = key.fileobj
            if sock is lsock:
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(conn, selectors.EVENT_READ, None)
                continue
            if mask & selectors.EVENT_WRITE:  # finish an earlier reply first
                data = pending.pop(sock)
                try:
                    sent = sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    drop(sock)
                    continue
                if sent < len(data):
                    pending[sock] = data[sent:]
                    continue
                sel.modify(sock, selectors.EVENT_READ, None)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                drop(sock)
                continue
            if not data:
                drop(sock)
                continue
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                drop(sock)
                continue
            if sent < len(data):  # stop reading until the kernel takes the rest
                pending[sock] = data[sent:]
                sel.modify(sock, selectors.EVENT_WRITE, None)


def server_child(kind: str, backlog: int, max_clients: int, profile: str, exe: str = "") -> None:
    """Serve echo on 127.0.0.1:0, print {"port": N} and serve until SIGTERM.

    ``c-epoll`` replaces this process with ``exe`` (same pid, pinning and
    parent-death signal).
    """
    child_setup(signal.SIGTERM)
    if kind == MACHINE:
        os.execv(exe, [exe, str(backlog)])
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    if kind.startswith("fastipc"):
        import fastipc

        srv = fastipc.serve(  # type: ignore[attr-defined]
            "tcp://127.0.0.1:0",
            lambda m, p: m,
            framing=FRAMING[kind],
            backlog=backlog,
            max_clients=max_clients,
        )
        try:
            _announce(int(srv.address.rsplit(":", 1)[1]))
            srv.serve_forever()  # returns on SIGTERM / SIGINT in the main thread
        finally:
            srv.close()
    elif kind == "selectors":
        _serve_selectors(backlog)
    else:
        _serve_asyncio(kind, backlog)
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)


class Server:
    """One echo server in its own process (``exe``: the C server's build, for ``c-epoll``)."""

    def __init__(
        self,
        kind: str,
        backlog: int,
        max_clients: int,
        profile: str = "",
        cpus: str = "",
        exe: str = "",
    ) -> None:
        self.kind = kind
        self.profile = profile
        self.errlog: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = spawn(
            [SCRIPT, "--child-server", kind, str(backlog), str(max_clients), profile, exe],
            tcp_child_env(cpus),
            stderr=self.errlog,
        )
        self.pid = self.proc.pid
        try:
            line = read_line(self.proc.stdout, 30.0, f"{kind} server")
            self.port = int(json.loads(line)["port"])
        except (BenchError, ValueError, KeyError) as exc:
            self.stop_quietly()
            raise BenchError(f"{exc}{self.stderr_tail()}") from None

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.kind} server exited with {self.proc.returncode}{self.stderr_tail()}"
            )

    def stderr_tail(self) -> str:
        if self.errlog.closed:
            return ""
        self.errlog.seek(0)
        tail = self.errlog.read().strip().splitlines()[-8:]
        return (":\n    " + "\n    ".join(tail)) if tail else ""

    def stop_quietly(self) -> None:
        stop([self.proc], signal.SIGTERM, grace=5.0)
        if self.proc.stdout:
            self.proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; always reaps the process."""
        self.stop_quietly()
        self.errlog.close()
