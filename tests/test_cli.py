"""The ``fastipc`` command's verbs: serve, send, recv, ls, rm (and help for every verb).

Every test runs ``python -m fastipc ...`` as a real child process against real
sockets, queues, rings and FIFOs, and removes everything it made.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import posix_ipc
import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from conftest import child_env, new_name

from fastipc import Ring

T = 20.0  # seconds any one command or wait may take before the test fails

VERBS = ["serve", "send", "recv", "ls", "rm", "info", "bench"]


def fastipc(*args: str, timeout: float = T) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fastipc ARGS`` to completion; fail (not hang) past ``timeout``."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "fastipc", *args],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fastipc {' '.join(args)} did not finish within {timeout} s: {exc.stderr!r}")


def fastipc_bytes(*args: str, timeout: float = T) -> subprocess.CompletedProcess[bytes]:
    """Like :func:`fastipc`, with stdout and stderr as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "fastipc", *args],
        env=child_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert proc.returncode == 0, f"{proc.args} exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """A failed command's single ``fastipc: error: ...`` line (besides where recv listened)."""
    assert proc.returncode not in (0, None), f"{proc.args} succeeded: {proc.stdout}"
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("fastipc: receiving on ")]
    assert len(lines) == 1, f"expected one line on stderr, got {proc.stderr!r}"
    assert lines[0].startswith("fastipc: error: "), lines[0]
    return lines[0]


class Running:
    """A long-running ``fastipc`` child (serve, recv) whose stderr is read as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastipc", *args],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.err = b""
        self.out = b""

    def wait_for(self, text: str, timeout: float = T) -> str:
        """Read stderr until a line containing ``text`` arrives; return that line."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while True:
            for line in self.err.decode(errors="replace").splitlines():
                if text in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {text!r} on stderr within {timeout} s; got {self.err!r}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    self.finish(5)
                    pytest.fail(
                        f"{self.proc.args} exited ({self.proc.returncode}) before saying "
                        f"{text!r}; stderr: {self.err!r}"
                    )
                self.err += chunk

    def address(self) -> str:
        """The URL the child says it serves or receives on."""
        line = self.wait_for("fastipc: ")
        assert line.startswith(("fastipc: serving ", "fastipc: receiving on ")), line
        return line.rsplit(" ", 1)[1]

    def finish(self, timeout: float = T) -> int:
        """Wait for the child to exit (killing it past ``timeout``); collect its output."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"{self.proc.args} did not exit within {timeout} s; stderr: {self.err!r}")
        self.out += out
        self.err += err
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.finish()

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out.decode(errors="replace")


@pytest.fixture
def running() -> Iterator[Any]:
    """``running(*args)`` starts a fastipc child; whatever still runs is killed at teardown."""
    made: list[Running] = []

    def start(*args: str) -> Running:
        r = Running(*args)
        made.append(r)
        return r

    yield start
    for r in made:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.communicate()


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A fresh message queue name (``/tPID_...``); the queue is unlinked at teardown."""
    name = "/" + new_name()
    yield name
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        pass


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A local port nobody is listening on (just released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ls_json(*args: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(ok(fastipc("ls", "--json", *args)))["entries"]
    return entries


def ring_row(name: str) -> dict[str, Any] | None:
    rows = [e for e in ls_json() if e["name"] == f"shm://{name}"]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


# ---------------------------------------------------------------------------
# help, bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("verb", VERBS)
def test_help_for_every_verb(verb: str) -> None:
    out = ok(fastipc(verb, "--help"))
    assert out.startswith(f"usage: fastipc {verb}")
    assert "--help" in out


def test_top_level_help_lists_every_verb() -> None:
    out = ok(fastipc("--help"))
    for verb in VERBS:
        assert f"    {verb} " in out, verb


@pytest.mark.parametrize(
    "args",
    [
        ["send", "bogus://x", "hi"],
        ["send", "tcp://127.0.0.1", "hi"],
        ["send", "tcp://127.0.0.1:99999", "hi"],
        ["serve", "no-scheme"],
        ["recv", "unix://"],
        ["rm", "shm://bad/name"],
    ],
)
def test_bad_url_is_one_error_line(args: list[str]) -> None:
    one_error_line(fastipc(*args))


def test_unreachable_endpoints(sock_dir: str) -> None:
    port = free_port()
    line = one_error_line(fastipc("send", f"tcp://127.0.0.1:{port}", "hi", "--timeout", "5"))
    assert "refused" in line.lower()
    missing = f"{sock_dir}/none.sock"
    line = one_error_line(fastipc("send", f"unix://{missing}", "hi"))
    assert missing in line
    one_error_line(fastipc("recv", f"tcp://127.0.0.1:{port}", "--timeout", "5"))
    # A FIFO without a reader, a ring that does not exist.
    fifo = f"{sock_dir}/f"
    os.mkfifo(fifo)
    one_error_line(fastipc("send", f"fifo://{fifo}", "hi"))
    one_error_line(fastipc("send", f"shm://{new_name()}", "hi"))


def test_options_that_do_not_fit_the_scheme(ring_name: str) -> None:
    with Ring.create(ring_name, 4096):
        assert "mq" in one_error_line(fastipc("send", f"shm://{ring_name}", "x", "--priority", "3"))
        assert "reply" in one_error_line(fastipc("send", f"shm://{ring_name}", "x", "--wait-reply"))
    one_error_line(fastipc("send", "mq:///nope", "x", "--wait-reply"))


# ---------------------------------------------------------------------------
# serve + send
# ---------------------------------------------------------------------------


def test_serve_echo_over_tcp_and_send_wait_reply(running: Any) -> None:
    srv = running("serve", "tcp://127.0.0.1:0", "--echo")
    url = srv.address()
    assert url.startswith("tcp://127.0.0.1:") and not url.endswith(":0")
    assert ok(fastipc("send", url, "hello, world", "--wait-reply", "--timeout", "10")) == (
        "hello, world\n"
    )
    # Raw framing by default: a plain socket client (nc, C) gets its bytes back.
    host, port = url[len("tcp://") :].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=T) as s:
        s.sendall(b"plain bytes")
        assert s.recv(100) == b"plain bytes"
    srv.wait_for("plain bytes")
    assert srv.stop(signal.SIGTERM) == 0
    assert "connect" in srv.stderr
    assert "message from" in srv.stderr and "hello, world" in srv.stderr


def test_serve_echo_length_framing(running: Any) -> None:
    srv = running("serve", "tcp://127.0.0.1:0", "--echo", "--framing", "length")
    url = srv.address()
    out = fastipc("send", url, "framed", "--framing", "length", "--wait-reply", "--timeout", "10")
    assert ok(out) == "framed\n"
    assert srv.stop(signal.SIGINT) == 0


def test_serve_reply_nul_terminated_like_the_c_examples(running: Any, sock_dir: str) -> None:
    path = f"{sock_dir}/s.sock"
    srv = running("serve", f"unix://{path}", "--reply", "Hello from server")
    srv.address()
    # A C-style client: NUL-terminated greeting, NUL-terminated answer.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(T)
        s.connect(path)
        s.sendall(b"Hello from client\0")
        assert s.recv(100) == b"Hello from server\0"
    srv.wait_for("Hello from client")
    # No NUL in the request: none in the answer.
    reply = fastipc_bytes("send", f"unix://{path}", "hi", "--wait-reply", "--binary")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == b"Hello from server"
    reply = fastipc_bytes("send", f"unix://{path}", "hi", "--nul", "--wait-reply", "--binary")
    assert reply.stdout == b"Hello from server\0"
    # Printed as text, the NUL is dropped.
    assert ok(fastipc("send", f"unix://{path}", "hi", "--nul", "--wait-reply")) == (
        "Hello from server\n"
    )
    assert srv.stop(signal.SIGTERM) == 0
    assert not os.path.exists(path), "serve left its socket file behind"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_ends_with_status_0_on_signal(running: Any, sig: int) -> None:
    srv = running("serve", "udp://127.0.0.1:0")
    srv.address()
    assert srv.stop(sig) == 0
    assert "Traceback" not in srv.stderr


def test_serve_logs_only_and_send_without_reply(running: Any) -> None:
    srv = running("serve", "udp://127.0.0.1:0")
    url = srv.address()
    ok(fastipc("send", url, "just log me"))
    srv.wait_for("just log me")
    # Nothing answers: waiting for a reply times out.
    line = one_error_line(fastipc("send", url, "x", "--wait-reply", "--timeout", "0.5"))
    assert "timed out" in line
    assert srv.stop() == 0


def test_serve_address_in_use_fails(running: Any) -> None:
    srv = running("serve", "tcp://127.0.0.1:0")
    url = srv.address()
    one_error_line(fastipc("serve", url))
    assert srv.stop() == 0


def test_serve_max_clients(running: Any) -> None:
    srv = running("serve", "tcp://127.0.0.1:0", "--echo", "--max-clients", "1")
    host, port = srv.address()[len("tcp://") :].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=T) as first:
        first.sendall(b"one")
        assert first.recv(10) == b"one"
        with socket.create_connection((host, int(port)), timeout=T) as second:
            assert second.recv(10) == b"", "the client over --max-clients was not closed"
    assert srv.stop() == 0


# ---------------------------------------------------------------------------
# recv
# ---------------------------------------------------------------------------


def test_recv_timeout_fails(running: Any) -> None:
    proc = fastipc("recv", "udp://127.0.0.1:0", "--timeout", "0.3")
    assert "timed out" in one_error_line(proc)
    # Connected, nothing arrives.
    srv = running("serve", "tcp://127.0.0.1:0")
    url = srv.address()
    assert "timed out" in one_error_line(fastipc("recv", url, "--timeout", "0.3"))
    assert srv.stop() == 0


def test_recv_tcp_prints_until_eof() -> None:
    # The course's "write a message as soon as a client connects, then close" server.
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve_once() -> None:
        conn, _ = lsock.accept()
        with conn:
            conn.sendall(b"Hello from server\0")

    t = threading.Thread(target=serve_once, daemon=True)
    t.start()
    try:
        assert ok(fastipc("recv", f"tcp://127.0.0.1:{port}", "--timeout", "10")) == (
            "Hello from server\n"
        )
    finally:
        t.join(T)
        lsock.close()


def test_recv_udp_count(running: Any) -> None:
    rcv = running("recv", "udp://127.0.0.1:0", "--count", "2", "--timeout", "10")
    url = rcv.address()
    ok(fastipc("send", url, "first"))
    ok(fastipc("send", url, "caf\u00e9 \u2615"))
    assert rcv.finish() == 0, rcv.stderr
    assert rcv.stdout == "first\ncaf\u00e9 \u2615\n"


def test_recv_unixgram_binary(running: Any, sock_dir: str) -> None:
    path = f"{sock_dir}/g.sock"
    rcv = running("recv", f"unixgram://{path}", "--count", "1", "--binary", "--timeout", "10")
    rcv.address()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"\xff\x00bytes\0\0", path)
    assert rcv.finish() == 0, rcv.stderr
    assert rcv.out == b"\xff\x00bytes\0\0"
    assert not os.path.exists(path)


def test_send_recv_message_queue_priorities(queue_name: str) -> None:
    url = f"mq://{queue_name}"
    ok(fastipc("send", url, "low", "--priority", "1"))
    ok(fastipc("send", url, "high", "--priority", "9"))
    ok(fastipc("send", url, "default"))
    assert ok(fastipc("recv", url, "--count", "3", "--timeout", "10")) == "high\nlow\ndefault\n"
    assert "timed out" in one_error_line(fastipc("recv", url, "--timeout", "0.2"))


def test_serve_message_queue_reply(running: Any, queue_name: str) -> None:
    url = f"mq://{queue_name}?reply={queue_name}_r"  # both sides name the reply queue
    assert "reply=" in one_error_line(fastipc("serve", f"mq://{queue_name}", "--echo"))
    srv = running("serve", url, "--reply", "pong")
    srv.address()
    try:
        out = fastipc("send", url, "ping", "--wait-reply", "--timeout", "10")
        assert ok(out) == "pong\n"
        srv.wait_for("ping")
    finally:
        assert srv.stop() == 0
    # The server removes the queues it created.
    for name in (queue_name, f"{queue_name}_r"):
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.unlink_message_queue(name)


def test_send_recv_ring(ring_name: str) -> None:
    with Ring.create(ring_name, 4096) as ring:
        ok(fastipc("send", f"shm://{ring_name}", "into the ring", "--nul"))
        assert ring.recv(timeout=0) == b"into the ring\0"
        ring.send(b"out of the ring\0")
        ring.send(b"\xffsecond")
        assert ok(fastipc("recv", f"shm://{ring_name}", "--count", "2", "--timeout", "10")) == (
            "out of the ring\n\ufffdsecond\n"
        )
        line = one_error_line(fastipc("recv", f"shm://{ring_name}", "--timeout", "0.2"))
        assert "timed out" in line
        ring.send(b"last")
        ring.shutdown()
        # A shut-down ring is the end of the stream: drained, then exit 0.
        assert ok(fastipc("recv", f"shm://{ring_name}", "--timeout", "10")) == "last\n"


def test_recv_ring_created_with_capacity(running: Any, ring_name: str) -> None:
    rcv = running("recv", f"shm://{ring_name}?capacity=65536", "--count", "1", "--timeout", "10")
    deadline = time.monotonic() + T
    while not os.path.exists(f"/dev/shm/fastipc.{ring_name}"):
        assert time.monotonic() < deadline, rcv.stderr
        time.sleep(0.02)
    ok(fastipc("send", f"shm://{ring_name}", "made by recv"))
    assert rcv.finish() == 0, rcv.stderr
    assert rcv.stdout == "made by recv\n"
    assert not os.path.exists(f"/dev/shm/fastipc.{ring_name}"), "recv left the ring it made"


def test_recv_fifo(running: Any, sock_dir: str) -> None:
    path = f"{sock_dir}/p.fifo"
    rcv = running("recv", f"fifo://{path}", "--count", "2", "--timeout", "10")
    rcv.address()
    ok(fastipc("send", f"fifo://{path}", "through"))
    ok(fastipc("send", f"fifo://{path}", "the pipe"))
    assert rcv.finish() == 0, rcv.stderr
    assert rcv.stdout == "through\nthe pipe\n"
    assert not os.path.exists(path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_recv_ends_with_status_0_on_signal(running: Any, sig: int) -> None:
    rcv = running("recv", "udp://127.0.0.1:0")
    rcv.address()
    assert rcv.stop(sig) == 0


# ---------------------------------------------------------------------------
# ls, rm
# ---------------------------------------------------------------------------

HOLD_RING = """
import sys
from fastipc import Ring
r = Ring.create(sys.argv[1], 4096)
print("ready", flush=True)
sys.stdin.read()
"""


def hold_ring(name: str) -> subprocess.Popen[str]:
    """A child that creates ring ``name`` and keeps it mapped until killed or its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD_RING), name],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], T)
    assert ready and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def ring_holder(ring_name: str) -> Iterator[subprocess.Popen[str]]:
    proc = hold_ring(ring_name)
    yield proc
    proc.kill()
    proc.wait(T)
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()


def test_ls_ring_live_then_dead(ring_name: str, ring_holder: subprocess.Popen[str]) -> None:
    row = ring_row(ring_name)
    assert row is not None
    assert row["kind"] == "ring" and row["alive"] is True
    assert row["pids"] == [ring_holder.pid]
    assert row["mode"] == "0600" and row["size"] > 4096
    table = ok(fastipc("ls"))
    assert table.splitlines()[0].split() == ["KIND", "NAME", "SIZE", "MODE", "PIDS", "ALIVE"]
    line = next(ln for ln in table.splitlines() if f"shm://{ring_name}" in ln)
    assert line.split()[-2:] == [str(ring_holder.pid), "yes"]

    ring_holder.kill()
    ring_holder.wait(T)
    row = ring_row(ring_name)
    assert row is not None and row["alive"] is False and row["pids"] == []
    ok(fastipc("rm", ring_name))
    assert ring_row(ring_name) is None


def test_rm_refuses_a_live_ring_unless_forced(
    ring_name: str, ring_holder: subprocess.Popen[str]
) -> None:
    line = one_error_line(fastipc("rm", f"shm://{ring_name}"))
    assert ring_name in line and str(ring_holder.pid) in line and "--force" in line
    assert os.path.exists(f"/dev/shm/fastipc.{ring_name}")
    assert ok(fastipc("rm", "--force", "-v", ring_name)) == f"removed shm://{ring_name}\n"
    assert not os.path.exists(f"/dev/shm/fastipc.{ring_name}")
    assert ring_holder.poll() is None  # the holder is unharmed


def test_rm_missing_names_it(ring_name: str, sock_dir: str) -> None:
    assert ring_name in one_error_line(fastipc("rm", ring_name))
    proc = fastipc("rm", f"mq:///{new_name()}", f"{sock_dir}/nothing.sock")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and all(ln.startswith("fastipc: error: ") for ln in lines)
    assert f"{sock_dir}/nothing.sock" in lines[1]


def test_rm_refuses_regular_files(sock_dir: str) -> None:
    path = f"{sock_dir}/plain.txt"
    with open(path, "w") as f:
        f.write("keep me")
    assert "not a socket file or FIFO" in one_error_line(fastipc("rm", "--force", path))
    assert os.path.exists(path)


def test_socket_files_live_and_stale(sock_dir: str) -> None:
    live_path = f"{sock_dir}/live.sock"
    stale_path = f"{sock_dir}/stale.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(live_path)
    live.listen()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale_path)  # closed without unlinking: a stale socket file
    try:
        # ls with no argument: sockets bound by live processes (this one).
        rows = {e["path"]: e for e in ls_json() if e["kind"] == "socket"}
        assert rows[live_path]["alive"] is True and rows[live_path]["pids"] == [os.getpid()]
        assert rows[live_path]["name"] == f"unix://{live_path}"
        assert stale_path not in rows
        # ls DIR: every socket file in it, stale included.
        rows = {e["path"]: e for e in ls_json(sock_dir)}
        assert rows[live_path]["alive"] is True
        assert rows[stale_path]["alive"] is False and rows[stale_path]["pids"] == []
        # rm: refuses the live one, removes the stale one.
        assert live_path in one_error_line(fastipc("rm", live_path))
        assert os.path.exists(live_path)
        ok(fastipc("rm", f"unix://{stale_path}"))
        assert not os.path.exists(stale_path)
        ok(fastipc("rm", "--force", live_path))
        assert not os.path.exists(live_path)
    finally:
        live.close()


def test_ls_and_rm_queue(queue_name: str) -> None:
    q = posix_ipc.MessageQueue(
        queue_name, posix_ipc.O_CREX, max_messages=4, max_message_size=128, mode=0o640
    )
    try:
        q.send(b"waiting")
        rows = [e for e in ls_json() if e["name"] == f"mq://{queue_name}"]
        assert len(rows) == 1, ls_json()
        row = rows[0]
        assert row["kind"] == "queue" and row["alive"] is True and row["pids"] == [os.getpid()]
        assert row["size"] == 4 * 128 and row["mode"] == "0640"
        assert row["messages"] == 1
        assert queue_name in one_error_line(fastipc("rm", f"mq://{queue_name}"))
        ok(fastipc("rm", "--force", f"mq://{queue_name}"))
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.MessageQueue(queue_name)
    finally:
        q.close()


def test_ls_mqueue_note_when_not_mounted() -> None:
    proc = fastipc("ls")
    ok(proc)
    with open("/proc/self/mounts") as f:
        mounted = any(line.split()[2] == "mqueue" for line in f if len(line.split()) > 2)
    assert ("mqueue filesystem is not mounted" in proc.stderr) == (not mounted)


def test_fifo_with_a_reader_is_live(sock_dir: str) -> None:
    path = f"{sock_dir}/q.fifo"
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        (row,) = ls_json(path)
        assert row["kind"] == "fifo" and row["alive"] is True and row["pids"] == [os.getpid()]
        assert row["mode"] == "0600" and row["name"] == f"fifo://{path}"
        assert path in one_error_line(fastipc("rm", f"fifo://{path}"))
    finally:
        os.close(fd)
    (row,) = ls_json(path)
    assert row["alive"] is False
    ok(fastipc("rm", path))
    assert not os.path.exists(path)


def test_ls_paths_errors(sock_dir: str) -> None:
    one_error_line(fastipc("ls", f"{sock_dir}/missing"))
    path = f"{sock_dir}/plain"
    open(path, "w").close()
    assert "not a socket file or FIFO" in one_error_line(fastipc("ls", path))


def test_ls_reads_a_mounted_mqueue_filesystem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Where the mqueue filesystem is mounted, every queue is listed, held open or not."""
    from fastipc import inventory

    name = new_name()
    (tmp_path / name).write_text("QSIZE:5          NOTIFY:0     SIGNO:0     NOTIFY_PID:0\n")
    (tmp_path / name).chmod(0o640)
    monkeypatch.setattr(inventory, "mqueue_mount", lambda: str(tmp_path))
    entries, notes = inventory.inventory()
    assert not any("mqueue" in n for n in notes)
    (row,) = [e for e in entries if e.name == f"mq:///{name}"]
    assert row.kind == "queue" and row.alive is False and row.pids == []
    assert row.mode == 0o640 and row.detail["queued_bytes"] == 5
    assert row.path == f"{tmp_path}/{name}"
