"""The command line for files, binary data and what peers send (issue 15).

Real ``python -m fastipc`` children against real sockets: ``send --file`` and
``send -`` are binary-safe; ``send`` half-closes a stream so a peer reading to
EOF answers; ``--wait-reply --until-eof``/``--idle`` print every reply;
``recv --json``/``--null`` tell one message with newlines from several; the
server's log escapes control characters and names an mq message's priority.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from _cli_util import T, fastipc, fastipc_bytes, ok, one_error_line, running_fixture  # noqa: F401
from conftest import child_env

from fastipc import Ring

BINARY = bytes(range(256)) * 4 + b"\n\x00end"


@contextmanager
def fastipc_ring(name: str) -> Iterator[Ring]:
    with Ring.create(name, 65536, unlink_on_exit=True) as ring:
        yield ring


class EOFReader:
    """A plain TCP server that reads until EOF, then answers with what it got in three pieces."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.got = b""
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(T)
            while chunk := conn.recv(65536):
                self.got += chunk
            for part in (b"one", b"two", b"three"):
                conn.sendall(part)
                threading.Event().wait(0.05)  # separate reads for a raw client

    def close(self) -> None:
        self.thread.join(T)
        self.sock.close()


def test_send_file_and_stdin_are_binary_safe_and_half_close_gets_the_answer(
    tmp_path: os.PathLike[str],
) -> None:
    path = os.path.join(tmp_path, "blob")
    with open(path, "wb") as f:
        f.write(BINARY)
    for how in ("file", "stdin"):
        peer = EOFReader()
        try:
            args = [sys.executable, "-m", "fastipc", "send", peer.url]
            args += ["--file", path] if how == "file" else ["-"]
            done = subprocess.run(
                [*args, "--framing", "raw", "--wait-reply", "--until-eof", "--binary"],
                input=BINARY if how == "stdin" else b"",
                capture_output=True,
                env=child_env(),
                timeout=T,
                check=False,
            )
        finally:
            peer.close()
        assert done.returncode == 0, done.stderr
        assert peer.got == BINARY  # every byte, NULs and newlines included
        assert (
            done.stdout == b"onetwothree"
        )  # read until the server closed, not just the first read


def test_wait_reply_idle_stops_when_the_server_goes_quiet() -> None:
    peer = EOFReader()
    try:
        out = ok(
            fastipc(
                "send", peer.url, "hi", "--framing", "raw", "--wait-reply", "--idle", "2", "--json"
            )
        )
    finally:
        peer.close()
    assert "".join(json.loads(line) for line in out.splitlines()) == "onetwothree"


def test_message_and_file_together_or_neither_is_an_error() -> None:
    assert "one of them" in one_error_line(fastipc("send", "tcp://127.0.0.1:9"))
    assert "one of them" in one_error_line(
        fastipc("send", "tcp://127.0.0.1:9", "x", "--file", "/etc/hostname")
    )
    assert "--wait-reply" in one_error_line(
        fastipc("send", "tcp://127.0.0.1:9", "x", "--until-eof")
    )


@pytest.mark.parametrize("mode", ["--json", "--null"])
def test_recv_output_tells_one_message_with_newlines_from_several(
    running: object, mode: str
) -> None:
    r = running("recv", "udp://127.0.0.1:0", "--count", "3", mode)  # type: ignore[operator]
    url = r.address()
    for m in ("a\nb", "c", "d\x1b[2J"):
        ok(fastipc("send", url, m))
    assert r.finish() == 0
    if mode == "--json":
        assert [json.loads(line) for line in r.stdout.splitlines()] == ["a\nb", "c", "d\x1b[2J"]
    else:
        assert r.out.split(b"\0") == [b"a\nb", b"c", b"d\x1b[2J", b""]


def test_default_output_and_the_serve_log_escape_control_characters(running: object) -> None:
    srv = running("serve", "udp://127.0.0.1:0")  # type: ignore[operator]
    url = srv.address()
    ok(fastipc("send", url, "clear\x1b[2Jnow\nsecond line\n"))
    line = srv.wait_for("clear")
    assert "\x1b" not in line and "clear\\x1b[2Jnow\\nsecond line" in line
    assert not line.endswith("\\n")  # the trailing newline is not doubled or shown
    rcv = running("recv", "udp://127.0.0.1:0", "--count", "1")  # type: ignore[operator]
    ok(fastipc_bytes("send", rcv.address(), "bin\udcff\x07"))  # type: ignore[arg-type]
    assert rcv.finish() == 0
    assert rcv.stdout == "bin\\xff\\x07\n"


def test_recv_progress_counts_messages_and_bytes(ring_name: str) -> None:
    """Piped stderr: one summary line at the end; a terminal: a line redrawn in place too."""
    url = f"shm://{ring_name}"
    with fastipc_ring(ring_name) as ring:
        for i in range(5):
            ring.send(b"x" * (10 + i))
        proc = fastipc("recv", url, "--count", "5", "--progress", "--timeout", "10")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("\n") == 5
        (summary,) = proc.stderr.splitlines()
        assert summary.startswith("fastipc: received 5 messages, 60 bytes in ")
        assert "\r" not in proc.stderr  # not a terminal: nothing redrawn

        ring.send_many([b"y" * 100] * 3)
        main, sub = pty.openpty()  # stderr on a terminal
        try:
            child = subprocess.run(
                [sys.executable, "-m", "fastipc", "recv", url, "--count", "3", "--progress"],
                check=False, env=child_env(), stdout=subprocess.PIPE, stderr=sub, timeout=T,
            )  # fmt: skip
            os.close(sub)
            sub = -1
            err = b""
            while select.select([main], [], [], 1)[0]:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # EIO: the child's side is closed
                    break
                if not chunk:
                    break
                err += chunk
        finally:
            if sub >= 0:
                os.close(sub)
            os.close(main)
        assert child.returncode == 0
        assert b"\r\x1b[K" in err  # drawn in place, then cleared for the summary
        assert b"fastipc: received 3 messages, 300 bytes" in err


def test_recv_progress_summary_after_ctrl_c(ring_name: str) -> None:
    with fastipc_ring(ring_name) as ring:
        ring.send(b"only one")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastipc", "recv", f"shm://{ring_name}", "--progress"],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline() == "only one\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=T)
        assert proc.returncode == 0
        assert "fastipc: received 1 message, 8 bytes" in err


def test_closed_stdout_is_an_error_before_anything_is_received(ring_name: str) -> None:
    # `fastipc recv URL >&-`: no traceback, and the message stays in the ring.
    with fastipc_ring(ring_name) as ring:
        ring.send(b"keep me")
        for args in (["recv", f"shm://{ring_name}", "--count", "1"], ["ls"], ["info"]):
            proc = subprocess.run(
                ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "fastipc", *args],
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=T,
                check=False,
            )
            assert "stdout is closed" in one_error_line(proc), args
        assert ring.recv(timeout=0) == b"keep me"


def test_send_dash_with_stdin_closed_is_one_error_line(ring_name: str) -> None:
    with fastipc_ring(ring_name) as ring:
        proc = subprocess.run(
            ["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m", "fastipc"]
            + ["send", f"shm://{ring_name}", "-"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=T,
            check=False,
        )
        assert "stdin is closed" in one_error_line(proc)
        assert len(ring) == 0


def test_a_reader_of_stdout_gone_is_a_quiet_status_1_for_every_verb(
    ring_name: str, tmp_path: os.PathLike[str]
) -> None:
    # `fastipc ls | head -0`: the reader is gone before anything is printed. Every
    # verb ends with status 1 and nothing on stderr (as recv did already), also
    # when stdout is buffered, where print() only fills the buffer and the EPIPE
    # came in the interpreter's exit flush: status 120, "Exception ignored".
    fifo = os.path.join(tmp_path, "f")
    with fastipc_ring(ring_name) as ring:
        for buffered in (True, False):
            ring.send(b"one")  # for recv to take and fail to print
            env = child_env()
            env.pop("PYTHONUNBUFFERED", None)
            if not buffered:
                env["PYTHONUNBUFFERED"] = "1"
            os.mkfifo(fifo)
            for args in (
                ["ls"],
                ["ls", "--json"],
                ["ls", os.fspath(tmp_path)],
                ["info"],
                ["rm", "-v", fifo],
                ["recv", f"shm://{ring_name}", "--count", "1"],
            ):
                r, w = os.pipe()
                os.close(r)  # the reader already gone, as after `| head -0`
                try:
                    proc = subprocess.run(
                        [sys.executable, "-m", "fastipc", *args],
                        env=env, stdout=w, stderr=subprocess.PIPE, text=True, timeout=T, check=False,
                    )  # fmt: skip
                finally:
                    os.close(w)
                assert (proc.returncode, proc.stderr) == (1, ""), (args, buffered)
            assert not os.path.exists(fifo)  # rm -v removed it, then could not say so
