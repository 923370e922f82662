"""A fastipc server in a child process, for the abuse and limit tests; clients that behave.

``ServerProc`` runs :data:`SERVER_CODE` (``fastipc.serve(URL, handler, **limits)``
then ``serve_forever``) with ``python -c``; the child prints ``srv.address`` and
its log (logger ``fastipc.server`` at INFO) goes to a file the test can wait on.
The handler answers ``b"re:" + message`` (``b"len:N"`` for N >= 200 bytes),
``big:N`` with N bytes of ``B``, raises on ``boom``, sleeps on ``sleep:SECONDS``
(freezing the loop on purpose) and logs ``log:...`` messages without answering (``got b'log:...'``: how a
test sees what a FIFO, which cannot be answered, delivered).

``Chatter`` is a well-behaved client on its own connection that keeps asking
and checking exact answers in a thread while a test abuses the server.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from conftest import child_env

import fastipc
from fastipc.endpoints import parse

__all__ = [
    "SERVER_CODE",
    "Chatter",
    "ServerProc",
    "StartServer",
    "T",
    "assert_no_traceback",
    "frame",
    "raw_connect",
    "start_server_fixture",
    "wait_disconnected",
    "who",
]

_C = TypeVar("_C", bound="Chatter")

#: Seconds any single wait may take before the test fails instead of hanging.
T = 10.0

SERVER_CODE = r"""
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(created).3f %(name)s %(levelname)s %(message)s")
import fastipc
from fastipc.endpoints import parse

hlog = logging.getLogger("abuse.handler")

def handler(msg, peer):
    if msg == b"boom":
        raise RuntimeError("boom on purpose")
    if msg.startswith(b"log:"):
        hlog.info("got %r", msg)
        return None
    if msg.startswith(b"big:"):
        return b"B" * int(msg[4:])
    if msg.startswith(b"sleep:"):
        hlog.info("handler sleeping")
        time.sleep(float(msg[6:]))
        return b"slept"
    if len(msg) >= 200:
        return b"len:%d" % len(msg)
    return b"re:" + msg

url, kwargs = sys.argv[1], json.loads(sys.argv[2])
with fastipc.serve(url, handler, **kwargs) as srv:
    print(srv.address, flush=True)
    srv.serve_forever()
    print("stopped_by", srv.stopped_by, flush=True)
"""


def frame(payload: bytes, flags: int = 0, length: int | None = None) -> bytes:
    """A length frame: ``<II`` (payload length, flags) then the payload."""
    return struct.pack("<II", len(payload) if length is None else length, flags) + payload


class ServerProc:
    """``fastipc.serve(url, handler, **kwargs).serve_forever()`` in a child; killed at :meth:`stop`."""

    def __init__(self, url: str, log_path: str, **kwargs: Any) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, url, json.dumps(kwargs)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        line = self.readline()
        if not line:
            self.proc.wait(T)
            pytest.fail(
                f"server for {url} did not start (exit {self.proc.returncode}):\n{self.log()}"
            )
        self.address = line

    def readline(self, timeout: float = T) -> str:
        out = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            pytest.fail(f"server said nothing within {timeout} s; log:\n{self.log()}")
        return out.readline().decode().strip()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, pattern: str, timeout: float = T, count: int = 1) -> list[re.Match[str]]:
        """Wait until the log has ``count`` lines matching regex ``pattern``; return the matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in map(rx.search, self.log().splitlines()) if m]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                pytest.fail(
                    f"server exited ({self.proc.returncode}) waiting for {pattern!r}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {count} log lines matching {pattern!r} within {timeout} s:\n{self.log()}"
                )
            time.sleep(0.02)

    def status(self, key: str) -> int:
        """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM) in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"server died ({self.proc.returncode}):\n{self.log()}"

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = T) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not exit within {timeout} s; log:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(T)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()


def raw_connect(address: str, timeout: float = T) -> socket.socket:
    """A plain socket connected to a tcp:// or unix:// server address (the test plays the peer)."""
    ep = parse(address)
    family = socket.AF_UNIX if ep.scheme == "unix" else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(ep.address)
    return s


def wait_disconnected(s: socket.socket, timeout: float = T) -> bytes:
    """Read until the server ends the connection (EOF or reset); fail on a hang. Returns what came."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(
                f"the server did not disconnect within {timeout} s (got {bytes(got[:100])!r})"
            )
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return bytes(got)
        except socket.timeout:
            continue
        if not chunk:
            return bytes(got)
        got += chunk


class Chatter:
    """A well-behaved client on its own connection, asking and checking answers in a thread.

    ``with Chatter(address) as good: ...abuse...`` — on exit it must have got
    at least ``min_answers`` exact answers, none wrong or late, and it asks
    once more after the abuse.
    """

    def __init__(
        self, address: str, *, framing: str = "length", every: float = 0.02, min_answers: int = 3
    ) -> None:
        self.address = address
        self.framing = framing
        self.every = every
        self.min_answers = min_answers
        self.answers = 0
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.client = fastipc.connect(address, framing=framing, timeout=T)

    def ask(self, tag: str) -> None:
        data = tag.encode()
        got = self.client.request(data, timeout=T)
        assert got == b"re:" + data, f"good client asked {data!r}, got {got[:100]!r}"
        self.answers += 1

    def _run(self) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                i += 1
                self.ask(f"good {i}")
                self._stop.wait(self.every)
        except Exception as exc:  # noqa: BLE001 - reported by __exit__
            self.error = exc

    def __enter__(self: _C) -> _C:
        self.ask("good hello")
        self._thread.start()
        return self

    def wait_answers(self, n: int, timeout: float = T) -> None:
        """Wait until ``n`` more answers came (the server is serving this client now)."""
        target = self.answers + n
        deadline = time.monotonic() + timeout
        while self.answers < target:
            if self.error is not None:
                raise self.error
            assert time.monotonic() < deadline, f"good client got no answers for {timeout} s"
            time.sleep(0.01)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._stop.set()
        self._thread.join(T + 5)
        try:
            if exc_type is None:
                assert not self._thread.is_alive(), "good client's thread hung"
                if self.error is not None:
                    raise AssertionError(f"good client failed during the abuse: {self.error!r}")
                self.ask("good bye")
                assert self.answers >= self.min_answers, (
                    f"good client got only {self.answers} answers"
                )
        finally:
            self.client.close()


# ---- fixtures (a test module imports the *_fixture functions it uses) ----------------------

StartServer = Callable[..., ServerProc]


@pytest.fixture(name="start_server")
def start_server_fixture(sock_dir: str) -> Iterator[StartServer]:
    """``start_server(kind, **serve_kwargs)``: a server child for tcp, unix, udp or unixgram.

    Its socket (and log) live in ``sock_dir``; every server is SIGKILLed at teardown.
    """
    made: list[ServerProc] = []

    def start(kind: str, **kwargs: Any) -> ServerProc:
        n = len(made)
        url = {
            "tcp": "tcp://127.0.0.1:0",
            "udp": "udp://127.0.0.1:0",
            "unix": f"unix://{sock_dir}/s{n}.sock",
            "unixgram": f"unixgram://{sock_dir}/g{n}.sock",
        }.get(kind, kind)
        sp = ServerProc(url, os.path.join(sock_dir, f"server{n}.log"), **kwargs)
        made.append(sp)
        return sp

    yield start
    for sp in made:
        sp.stop()


def who(s: socket.socket | None = None, *, pid: int | None = None, port: int | None = None) -> str:
    """Regex for how the server's log names a client: ``127.0.0.1:PORT`` (tcp), ``pid P uid U`` (unix).

    ``s`` is a client socket of this process (tcp: its port; unix: our
    pid); with none of ``s``, ``port``, ``pid`` any unix client matches.
    """
    if s is not None:
        if s.family == socket.AF_INET:
            port = s.getsockname()[1]
        else:
            pid = os.getpid()
    if port is not None:
        return rf"127\.0\.0\.1:{port}"
    return f"pid {pid} uid {os.getuid()}" if pid is not None else r"pid \d+ uid \d+"


def assert_no_traceback(sp: ServerProc) -> None:
    """The server is still running and never logged a traceback."""
    sp.alive()
    assert "Traceback" not in sp.log(), f"the server logged a traceback:\n{sp.log()}"
