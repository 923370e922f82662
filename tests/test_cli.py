"""The ``fastipc`` command's message verbs: serve, send, recv (and help and bad input for every verb).

Every test runs ``python -m fastipc ...`` as a real child process against real
sockets, queues, rings and FIFOs, and removes everything it made. ``ls`` and
``rm`` are in test_cli_ls_rm.py; the shared helpers in _cli_util.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import posix_ipc
import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from _cli_util import (  # noqa: F401
    T,
    fastipc,
    fastipc_bytes,
    free_port,
    ok,
    one_error_line,
    queue_name_fixture,
    running_fixture,
)
from conftest import child_env, new_name

from fastipc import Ring

VERBS = ["serve", "send", "recv", "ls", "rm", "info", "bench"]


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
        ["send", "signal://self?sig=USR1", "1"],  # would end the command itself
        ["send", "signal://self?sig=QUIT", "1"],
    ],
)
def test_bad_url_is_one_error_line(args: list[str]) -> None:
    one_error_line(fastipc(*args))


@pytest.mark.parametrize("verb", ["recv", "serve"])
@pytest.mark.parametrize("sig", ["INT", "TERM", "USR1,TERM"])
def test_own_signals_that_stop_the_command_are_refused(verb: str, sig: str) -> None:
    # Taken as messages, SIGINT and SIGTERM would leave only SIGKILL to stop it.
    line = one_error_line(fastipc(verb, f"signal://self?sig={sig}", timeout=10))
    assert "signal://self cannot receive SIG" in line and "USR1" in line


@pytest.mark.parametrize(
    ("args", "part"),
    [
        (["--broadcast", "--peers"], "--broadcast is a run of its own"),
        (["--broadcast", "--scaling"], "--broadcast is a run of its own"),
        (["--aio", "--peers"], "--aio adds to the Ring and Channel run"),
        (["--aio", "--broadcast"], "--aio adds to the Ring and Channel run"),
        (["--json", "/nonexistent/dir/report.json"], "cannot write there"),
    ],
)
def test_bench_flags_another_run_would_ignore_are_refused_at_once(
    args: list[str], part: str
) -> None:
    # Refused before measuring (not ignored, nor found out after the run).
    assert part in one_error_line(fastipc("bench", "--quick", *args, timeout=10))


@pytest.mark.parametrize("value", ["1e300", "1e309", "nan", "-1"])
def test_a_timeout_out_of_range_is_a_usage_error(ring_name: str, value: str) -> None:
    # 1e300 s overflowed the conversion to nanoseconds: an OverflowError traceback.
    with Ring.create(ring_name, 4096):
        for verb in (["send", f"shm://{ring_name}", "x"], ["recv", f"shm://{ring_name}"]):
            proc = fastipc(*verb, "--timeout", value)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            assert "argument --timeout: must be a number of seconds" in proc.stderr


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
    with Ring.create(ring_name, 4096) as ring:
        assert "mq" in one_error_line(fastipc("send", f"shm://{ring_name}", "x", "--priority", "3"))
        assert "reply" in one_error_line(fastipc("send", f"shm://{ring_name}", "x", "--wait-reply"))
        # --keep-open: only tcp/unix sends half-close; elsewhere it was ignored, and the
        # message sent all the same. Now refused before sending.
        line = one_error_line(fastipc("send", f"shm://{ring_name}", "x", "--keep-open"))
        assert "--keep-open applies to" in line and "not shm://" in line, line
        assert len(ring) == 0
    one_error_line(fastipc("send", "mq:///nope", "x", "--wait-reply"))
    for url in ("udp://127.0.0.1:9", "mq:///nope", "fd://1"):
        line = one_error_line(fastipc("send", url, "x", "--keep-open"))
        assert "--keep-open applies to" in line and f"not {url.split(':')[0]}://" in line, line
    # --until-eof on an endpoint with no end of stream would wait forever after the replies.
    for url in ("udp://127.0.0.1:9", "mq:///nope?reply=/nope", "unixgram:///tmp/nope.sock"):
        line = one_error_line(fastipc("send", url, "x", "--wait-reply", "--until-eof"))
        assert "--until-eof" in line and "--idle" in line, line


def test_framing_and_max_message_where_they_would_be_ignored_are_refused(
    ring_name: str, queue_name: str, sock_dir: str
) -> None:
    # A ring and a queue keep messages whole, at the size they were made with:
    # --framing and --max-message were ignored there without a word (recv took
    # the message, of any size). Now refused, naming the flag and the endpoint
    # kind, before anything is taken, sent or bound.
    with Ring.create(ring_name, 4096) as ring:
        ring.send(b"twelve bytes")
        mq = posix_ipc.MessageQueue(queue_name, posix_ipc.O_CREX, mode=0o600)
        try:
            mq.send(b"twelve bytes")
            ring_url, mq_url = f"shm://{ring_name}", f"mq://{queue_name}"
            count = ["--count", "1", "--timeout", "5"]
            for args, flag, kind, part in (
                (["recv", ring_url, *count, "--max-message", "4"], "--max-message", "shm", "capacity="),
                (["recv", mq_url, *count, "--max-message", "4"], "--max-message", "mq", "msgsize="),
                (["serve", mq_url, "--max-message", "4"], "--max-message", "mq", "msgsize="),
                (["recv", ring_url, *count, "--framing", "raw"], "--framing", "shm", "whole"),
                (["recv", mq_url, *count, "--framing", "length"], "--framing", "mq", "whole"),
                (["send", ring_url, "x", "--framing", "length"], "--framing", "shm", "whole"),
                (["send", mq_url, "x", "--framing", "raw"], "--framing", "mq", "whole"),
                (["serve", mq_url, "--framing", "length"], "--framing", "mq", "whole"),
                # The same for the other endpoints that are no streams, and signals.
                (["recv", "udp://127.0.0.1:0", *count, "--framing", "length"], "--framing", "udp", "datagram"),
                (["recv", f"fifo://{sock_dir}/f", *count, "--framing", "raw"], "--framing", "fifo", "always"),
                (["serve", "signal://self?sig=USR1", "--max-message", "4"], "--max-message", "signal", "int"),
            ):  # fmt: skip
                line = one_error_line(fastipc(*args, timeout=10))
                assert f"{flag} " in line and f"{kind}://" in line and part in line, (args, line)
            assert len(ring) == 1 and mq.current_messages == 1  # nothing taken, nothing sent
            assert not os.path.exists(f"{sock_dir}/f")  # nor a FIFO made
        finally:
            mq.close()
    # Where they apply they are taken as before (the shm:// and mq:// limits ride in the URL).
    line = one_error_line(
        fastipc("recv", "tcp://127.0.0.1:9", "--framing", "length", "--max-message", "4")
    )
    assert "--framing" not in line and "--max-message" not in line, line


def test_serve_close_where_there_is_no_connection_is_refused(
    queue_name: str, sock_dir: str
) -> None:
    # serve --close on a datagram, queue or FIFO endpoint used to serve on as if
    # it was not given (no connection to close); now one error line, before binding.
    for url in (
        "udp://127.0.0.1:0",
        f"unixgram://{sock_dir}/g.sock",
        f"fifo://{sock_dir}/f",
        f"mq://{queue_name}",
    ):
        line = one_error_line(fastipc("serve", url, "--close", timeout=10))
        scheme = url.split("://")[0]
        assert "--close applies to" in line and f"not {scheme}://" in line, line
    assert os.listdir(sock_dir) == []  # nothing bound or made
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.MessageQueue(queue_name)


def test_serve_stream_client_limits_where_there_are_none_are_refused(
    running: Any, queue_name: str, sock_dir: str
) -> None:
    # --max-clients, --max-buffered and --idle-timeout limit stream clients (and
    # --idle-timeout a FIFO writer's half-written frame); on udp, unixgram, mq, fd
    # and signals they were ignored without a word. Now refused, before binding.
    for url, flag in (
        ("udp://127.0.0.1:0", ["--max-clients", "4"]),
        (f"unixgram://{sock_dir}/g.sock", ["--max-buffered", "1000000000"]),
        (f"mq://{queue_name}", ["--idle-timeout", "5"]),
        ("signal://self?sig=USR1", ["--idle-timeout", "0"]),
        (f"fifo://{sock_dir}/f", ["--max-clients", "4"]),
    ):
        line = one_error_line(fastipc("serve", url, *flag, timeout=10))
        scheme = url.split("://")[0]
        assert f"{flag[0]} applies to stream clients" in line, line
        assert f"not {scheme}://" in line, line
    assert os.listdir(sock_dir) == []
    # A FIFO takes --idle-timeout (its half-written frames), a stream all three.
    for url, flags in (
        (f"fifo://{sock_dir}/f", ["--idle-timeout", "5"]),
        ("tcp://127.0.0.1:0", ["--max-clients", "4", "--max-buffered", "1000000000",
                               "--idle-timeout", "0"]),
    ):  # fmt: skip
        srv = running("serve", url, *flags)
        srv.address()
        assert srv.stop() == 0, srv.stderr


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


def test_serve_log_escapes_what_a_peer_names_itself(running: Any, sock_dir: str) -> None:
    # A unixgram sender's address is a path it chose: an escape sequence and a
    # newline in it must not reach the operator's terminal as they are.
    path = f"{sock_dir}/g.sock"
    srv = running("serve", f"unixgram://{path}")
    srv.address()
    client = f"{sock_dir}/\x1b[2J\n2026-01-01 00:00:00 forged"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(client)
        s.sendto(b"a\\b", path)
        srv.wait_for("message from")
    os.unlink(client)
    assert srv.stop() == 0
    assert "\x1b" not in srv.stderr
    (line,) = [ln for ln in srv.stderr.splitlines() if "message from" in ln]
    assert line.endswith(f"message from {sock_dir}/\\x1b[2J\\n2026-01-01 00:00:00 forged: a\\\\b")
    assert not any(ln.startswith("2026-01-01") for ln in srv.stderr.splitlines())


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


def test_send_wait_reply_on_a_queue_removes_its_own_reply_queue_on_giving_up(
    queue_name: str,
) -> None:
    reply = f"{queue_name}_r"
    url = f"mq://{queue_name}?reply={reply}"
    try:
        assert "timed out" in one_error_line(
            fastipc("send", url, "anyone?", "--wait-reply", "--timeout", "0.3")
        )
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.unlink_message_queue(reply)  # gone with the client that made it
        assert (
            ok(fastipc("recv", url.split("?")[0], "--count", "1", "--timeout", "5")) == "anyone?\n"
        )
    finally:
        for name in (queue_name, reply):
            try:
                posix_ipc.unlink_message_queue(name)
            except posix_ipc.ExistentialError:
                pass


def test_send_recv_ring(ring_name: str) -> None:
    with Ring.create(ring_name, 4096) as ring:
        ok(fastipc("send", f"shm://{ring_name}", "into the ring", "--nul"))
        assert ring.recv(timeout=0) == b"into the ring\0"
        ring.send(b"out of the ring\0")
        ring.send(b"\xffsecond")
        assert ok(fastipc("recv", f"shm://{ring_name}", "--count", "2", "--timeout", "10")) == (
            "out of the ring\n\\xffsecond\n"
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


def test_recv_ring_it_made_is_kept_while_messages_wait_in_it(running: Any, ring_name: str) -> None:
    rcv = running("recv", f"shm://{ring_name}?capacity=65536", "--count", "1", "--timeout", "10")
    deadline = time.monotonic() + T
    while True:
        try:
            ring = Ring.open(ring_name)
            break
        except (FileNotFoundError, ValueError, OSError):
            assert time.monotonic() < deadline, rcv.stderr
            time.sleep(0.02)
    with ring:
        ring.send(b"one")
        ring.send(b"two")  # sent, and acknowledged: it may not vanish with the name
        assert rcv.finish() == 0, rcv.stderr
        assert rcv.stdout == "one\n"
        assert "not removed: 1 message still waits in it" in rcv.stderr
    assert ok(fastipc("recv", f"shm://{ring_name}", "--count", "1", "--timeout", "10")) == "two\n"


def test_recv_fifo(running: Any, sock_dir: str) -> None:
    path = f"{sock_dir}/p.fifo"
    rcv = running("recv", f"fifo://{path}", "--count", "2", "--timeout", "10")
    rcv.address()
    ok(fastipc("send", f"fifo://{path}", "through"))
    ok(fastipc("send", f"fifo://{path}", "the pipe"))
    assert rcv.finish() == 0, rcv.stderr
    assert rcv.stdout == "through\nthe pipe\n"
    assert not os.path.exists(path)


def test_recv_fifo_count_says_what_it_read_past_the_count(running: Any, sock_dir: str) -> None:
    # A FIFO is read in whole chunks: frames past --count that came in the
    # same write were read too, and nothing can put them back; they used to
    # vanish without a word.
    from fastipc.framing import pack_header

    path = f"{sock_dir}/p.fifo"
    rcv = running("recv", f"fifo://{path}", "--count", "1", "--timeout", "10")
    rcv.address()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"".join(pack_header(len(m), 0) + m for m in (b"one", b"two", b"three")))
    finally:
        os.close(fd)
    assert rcv.finish() == 0, rcv.stderr
    assert rcv.stdout == "one\n"
    assert "2 more messages arrived past --count 1 and were not printed" in rcv.stderr


def test_recv_prints_every_message_it_took_when_a_signal_ends_it(
    ring_name: str, sock_dir: str
) -> None:
    # A message recv took off the ring must be printed even when SIGINT comes
    # as it prints the one before: the ring's next message says where it got.
    # Long messages make printing most of recv's time; one stop takes 60% of
    # the time before the fix.
    pad = b"x" * 60000
    out = f"{sock_dir}/out"
    with Ring.create(ring_name, 1 << 24) as ring:
        for i in range(200):
            ring.send(b"%d " % i + pad)
        expected = 0
        for _ in range(10):
            with open(out, "wb") as f:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fastipc", "recv", f"shm://{ring_name}"],
                    env=child_env(),
                    stdout=f,
                    stderr=subprocess.PIPE,
                )
            deadline = time.monotonic() + T
            while os.path.getsize(out) == 0 and time.monotonic() < deadline:
                time.sleep(0.0005)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=T)
            assert proc.returncode == 0, err
            with open(out, "rb") as f:
                printed = [int(line.split()[0]) for line in f.read().splitlines()]
            assert printed == list(range(expected, expected + len(printed)))
            expected += len(printed)
            assert int(ring.recv(timeout=0).split()[0]) == expected, "a message was lost"
            expected += 1


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_recv_finishes_the_message_it_prints_when_a_signal_ends_it(
    ring_name: str, unbuffered: str
) -> None:
    # stdout is a pipe nobody reads yet: recv is blocked writing a message
    # when SIGINT comes. That message is written whole, then recv ends. An
    # unbuffered stdout (PYTHONUNBUFFERED) is a raw file whose write stops
    # short at the signal: the rest must not be dropped.
    size = 50000
    with Ring.create(ring_name, 1 << 22) as ring:
        for i in range(20):
            ring.send(b"%05d" % i + b"x" * (size - 6))
        r, w = os.pipe()
        with os.fdopen(r, "rb") as reader:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fastipc", "recv", f"shm://{ring_name}"],
                env=child_env(PYTHONUNBUFFERED=unbuffered),
                stdout=w,
                stderr=subprocess.PIPE,
            )
            os.close(w)
            # Blocked in the pipe's write (or, where wchan says nothing, surely so by 1 s).
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                with open(f"/proc/{proc.pid}/wchan") as f:
                    if "pipe_write" in f.read():
                        break
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
            lines = reader.read().splitlines()
        _, err = proc.communicate(timeout=T)
        assert proc.returncode == 0, err
        assert lines and all(len(line) == size - 1 for line in lines), [len(x) for x in lines]
        assert [int(line[:5]) for line in lines] == list(range(len(lines)))
        assert int(ring.recv(timeout=0)[:5]) == len(lines), "a message was lost"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_recv_ends_with_status_0_on_signal(running: Any, sig: int) -> None:
    rcv = running("recv", "udp://127.0.0.1:0")
    rcv.address()
    assert rcv.stop(sig) == 0


def test_recv_escapes_what_an_ascii_stdout_cannot_show() -> None:
    # The message was taken: an encoding error after that used to lose it (exit 1).
    env = child_env(PYTHONIOENCODING="ascii")
    proc = subprocess.run(
        [sys.executable, "-m", "fastipc", "recv", "fd://0"],
        input="café\n".encode(), env=env, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"caf\\xe9\n"


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_recv_writes_all_of_a_message_to_a_non_blocking_stdout(
    ring_name: str, unbuffered: str
) -> None:
    # A stdout pipe another process set O_NONBLOCK (flags are the pipe's, shared):
    # the buffered stdout raised BlockingIOError midway and the message was cut.
    import fcntl

    big = b"m" * 300_000
    with Ring.create(ring_name, 1 << 20) as ring:
        ring.send(big)
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
        env = {k: v for k, v in child_env().items() if k != "PYTHONUNBUFFERED"}
        if unbuffered:
            env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "fastipc", "recv", f"shm://{ring_name}", "--binary"]
        proc = subprocess.Popen(cmd + ["--count", "1"], stdout=w, stderr=subprocess.PIPE, env=env)
        os.close(w)
        try:
            time.sleep(0.5)  # the pipe fills: the writer meets EAGAIN
            out = b""
            while chunk := os.read(r, 1 << 20):
                out += chunk
            assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            os.close(r)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        assert out == big


def test_own_signals_named_by_this_pid_are_refused_too() -> None:
    # signal://PID with the command's own pid is signal://self.
    code = f'exec "{sys.executable}" -m fastipc recv "signal://$$?sig=TERM"'
    proc = subprocess.run(
        ["sh", "-c", code], env=child_env(), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "cannot receive SIGTERM" in proc.stderr
