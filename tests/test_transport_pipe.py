"""fd:// as a transport: inherited pipes, socketpair ends and files, in real processes and a shell pipeline."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _cli_util import T
from conftest import child_env, run_python

import fastipc as fi
from fastipc import Closed, MessageTooLarge, ProtocolError, Timeout
from fastipc.framing import pack_header

FASTIPC = f"{sys.executable} -m fastipc"


def sh(script: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        ["sh", "-c", script],
        check=False,
        input=stdin,
        capture_output=True,
        env=child_env(),
        timeout=60,
    )
    return proc


def child(code: str, pass_fds: tuple[int, ...] = (), **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(),
        pass_fds=pass_fds,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[call-overload]
    )


def finish(proc: subprocess.Popen[bytes]) -> bytes:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"child exited {proc.returncode}: {err.decode()}"
    return out


# ---- the shell ------------------------------------------------------------------


def test_a_shell_pipeline_speaks_length_framing_and_ends_at_eof(tmp_path: object) -> None:
    script = (
        f"( {FASTIPC} send fd://1 - --framing length; "
        f"{FASTIPC} send fd://1 second --framing length ) "
        f"| {FASTIPC} recv fd://0 --framing length"
    )
    res = sh(script, stdin=b"first, from stdin")
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == ["first, from stdin", "second"]


def test_a_shell_pipeline_in_raw_framing() -> None:
    res = sh(f"printf 'hello' | {FASTIPC} recv fd://0 --count 1")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello\n"


def test_recv_reads_length_frames_from_a_redirected_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "msgs")
    with open(path, "wb") as f:
        f.writelines(pack_header(len(text), 0) + text for text in (b"one", b"two", b""))
    res = sh(f"{FASTIPC} recv fd://0 --framing length < {path}")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"one\ntwo\n\n"


def test_send_to_a_reader_that_went_away_is_an_error_not_a_sigpipe_death() -> None:
    # The command, its stdout a pipe whose reader is already gone.
    r, w = os.pipe()
    os.close(r)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "fastipc", "send", "fd://1", "hello"],
            check=False,
            stdout=w,
            stderr=subprocess.PIPE,
            env=child_env(),
            timeout=T,
        )
    finally:
        os.close(w)
    assert res.returncode == 1, res  # an error exit, not killed by SIGPIPE (-13)
    assert "fd://1: the reader is gone (EPIPE)" in res.stderr.decode()
    code = """
        import os, signal, fastipc
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a C program would have it
        r, w = os.pipe()
        os.close(r)
        c = fastipc.connect(f"fd://{w}")
        try:
            c.send(b"x")
        except fastipc.Closed as exc:
            print("closed:", exc)
        c.close()
        print(signal.SIGPIPE in signal.sigpending(), signal.SIGPIPE in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    """
    out = run_python(code).stdout.splitlines()
    assert out[0].startswith("closed: fd://") and "EPIPE" in out[0]
    assert out[1] == "False False"  # the SIGPIPE was taken back; the mask is as it was


# ---- parents and children ----------------------------------------------------------


def test_a_child_sends_on_an_inherited_pipe_to_a_served_fd() -> None:
    r, w = os.pipe()
    got: list[bytes] = []
    srv = fi.serve(f"fd://{r}", lambda m, p: got.append(m))
    try:
        srv.start()
        proc = child(
            f"""
            import fastipc
            with fastipc.connect("fd://{w}") as c:
                for i in range(100):
                    c.send(b"msg %d" % i)
                c.send(b"x" * 100000)  # longer than PIPE_BUF: written in pieces
            """,
            pass_fds=(w,),
        )
        os.close(w)
        finish(proc)
        deadline = time.monotonic() + T
        while len(got) < 101 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got[:100] == [b"msg %d" % i for i in range(100)]
        assert got[100] == b"x" * 100000
    finally:
        srv.close()
    assert srv.closed


def test_writers_sharing_a_pipe_never_interleave_frames_up_to_pipe_buf() -> None:
    r, w = os.pipe()
    got: list[bytes] = []
    size = 4096 - 8  # the frame is PIPE_BUF: one atomic write
    srv = fi.serve(f"fd://{r}", lambda m, p: got.append(m)).start()
    try:
        code = f"""
            import sys, fastipc
            tag = sys.argv[1].encode()
            with fastipc.connect("fd://{w}") as c:
                for i in range(200):
                    c.send(tag * {size})
        """
        kids = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code), tag],
                env=child_env(),
                pass_fds=(w,),
            )
            for tag in "ab"
        ]
        os.close(w)
        for kid in kids:
            assert kid.wait(60) == 0
        deadline = time.monotonic() + T
        while len(got) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(got) == 400
        assert all(m in (b"a" * size, b"b" * size) for m in got)
    finally:
        srv.close()


def test_request_and_reply_over_a_socketpair() -> None:
    parent, kid_end = socket.socketpair()
    try:
        proc = child(
            f"""
            import fastipc
            with fastipc.connect("fd://{kid_end.fileno()}") as c:
                while True:
                    try:
                        m = c.recv()
                    except fastipc.Closed:
                        break
                    c.send(m.upper())
            """,
            pass_fds=(kid_end.fileno(),),
        )
        kid_end.close()
        fd = parent.detach()  # the client owns it now: its close is the child's EOF
        with fi.connect(f"fd://{fd}") as c:
            assert c.request(b"hello", timeout=T) == b"HELLO"
            assert c.request(b"", timeout=T) == b""
        finish(proc)  # our close was its end of stream
    finally:
        parent.close()


def test_serve_on_stdin_redirected_from_a_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "msgs")
    with open(path, "wb") as f:
        f.writelines(pack_header(3, 0) + b"m%02d" % i for i in range(50))
    code = """
        import queue, fastipc
        got = queue.Queue()
        with fastipc.serve("fd://0", lambda m, p: got.put(m)) as srv:
            srv.start()
            print(b"".join(got.get(timeout=60) for _ in range(50)).decode())
    """
    with open(path, "rb") as f:
        out = finish(child(code, stdin=f)).decode().strip()
    assert out == "".join(f"m{i:02d}" for i in range(50))


# ---- the client's edges ---------------------------------------------------------------


def test_eof_timeout_and_a_broken_frame() -> None:
    r, w = os.pipe()
    with fi.connect(f"fd://{r}") as c:
        with pytest.raises(Timeout):
            c.recv(timeout=0.05)
        os.write(w, pack_header(10, 0) + b"abc")
        os.close(w)
        with pytest.raises(ProtocolError, match="middle of a frame"):
            c.recv(timeout=T)
        assert c.closed
    r, w = os.pipe()
    with fi.connect(f"fd://{r}") as c:
        os.close(w)
        for _ in range(2):
            with pytest.raises(Closed, match="end of stream"):
                c.recv(timeout=T)


@pytest.mark.parametrize(
    "bad",
    [pack_header(2**31, 0), pack_header(4, 0xFFFF0000) + b"abcd"],
    ids=["over-max-message", "unknown-flags"],
)
def test_a_bad_frame_right_after_a_good_one_is_reported_at_once(bad: bytes) -> None:
    """Read with the good frame, the bad header is raised by the next recv(), without
    waiting (the writer stays), never turned into a clean end of stream."""
    r, w = os.pipe()
    try:
        with fi.connect(f"fd://{r}", max_message=1 << 20) as c:
            os.write(w, pack_header(5, 0) + b"hello" + bad)
            assert c.recv(timeout=T) == b"hello"
            with pytest.raises(
                (ProtocolError, MessageTooLarge), match="bad frame|over max_message"
            ):
                c.recv(timeout=2)  # not a wait for more bytes, then Timeout
            assert c.closed
    finally:
        os.close(w)


def test_an_fd_is_checked_taken_once_and_released_on_close() -> None:
    with pytest.raises(OSError, match="fd://987654") as info:
        fi.connect("fd://987654")
    assert isinstance(info.value, OSError) and info.value.errno == 9
    r, w = os.pipe()
    c = fi.connect(f"fd://{r}")
    with pytest.raises(ValueError, match="already used"):
        fi.connect(f"fd://{r}")
    c.close()
    with pytest.raises(OSError):
        os.fstat(r)  # closed: the writer now gets EPIPE
    os.close(w)
    with pytest.raises(ValueError, match="closed client"):
        c.recv()


def test_closing_a_client_on_stdout_leaves_dev_null_in_its_place() -> None:
    code = """
        import os, fastipc
        fastipc.connect("fd://1", framing="raw").send(b"out\\n")
        fastipc.connect("fd://1").close()
        print(os.readlink("/proc/self/fd/1"), file=__import__("sys").stderr)
    """
    proc = run_python(code)
    assert proc.stdout == "out\n"
    assert proc.stderr.strip() == "/dev/null"


def test_a_served_fd_cannot_answer() -> None:
    r, w = os.pipe()
    with fi.serve(f"fd://{r}", lambda m, p: None) as srv:
        assert srv.address == f"fd://{r}"
    os.close(w)
    res = subprocess.run(
        [sys.executable, "-m", "fastipc", "serve", "fd://0", "--echo"],
        check=False,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=T,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 1 and "cannot be answered" in res.stderr


def test_serving_a_socket_fd_leaves_its_shared_flags_alone_under_a_default_timeout() -> None:
    """socket.socket(fileno=...) applies socket.setdefaulttimeout() to the open file it
    shares with the fd's other holders (O_NONBLOCK for everyone): the server undoes it."""
    a, b = socket.socketpair()
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)
    try:
        before = fcntl.fcntl(a.fileno(), fcntl.F_GETFL)
        assert not before & os.O_NONBLOCK
        with fi.serve(f"fd://{os.dup(a.fileno())}", lambda m, p: None, framing="raw").start():
            assert fcntl.fcntl(a.fileno(), fcntl.F_GETFL) == before
    finally:
        socket.setdefaulttimeout(old)
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["pipe", "socketpair"])
def test_a_served_fd_another_reader_shares_never_blocks_the_server(kind: str) -> None:
    """Another reader of the same open file takes the bytes between the server's poll and
    its read: the read must not block (the fd itself stays blocking), so close() returns."""
    if kind == "pipe":
        r, w = os.pipe()
        put = lambda data: os.write(w, data)
    else:
        a, b = socket.socketpair()
        r, w = os.dup(a.fileno()), b.fileno()
        a.close()
        put = b.send
    other = os.dup(r)  # the other reader: same open file, still blocking
    got: list[bytes] = []
    taken: list[bytes] = []

    def fire() -> None:
        # In the loop, between two polls: ready in this order for the next one, the
        # callback (which empties the fd through the other reader), then the fd itself.
        srv.call_soon_threadsafe(lambda: taken.append(os.read(other, 100)))
        put(b"x")

    srv = fi.serve(f"fd://{r}", lambda m, p: got.append(m), framing="raw").start()
    closed = threading.Event()
    try:
        srv.call_soon_threadsafe(lambda: srv.call_later(0.05, fire))
        alive = threading.Event()
        deadline = time.monotonic() + T
        while not taken and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.call_soon_threadsafe(alive.set)
        assert alive.wait(5), "the server's loop blocked in read()"
        assert taken == [b"x"] and got == []
        threading.Thread(target=lambda: (srv.close(), closed.set()), daemon=True).start()
        assert closed.wait(T)
    finally:
        if not closed.is_set():
            put(b"unblock")
            closed.wait(T)
        os.close(other)
        if kind == "pipe":
            os.close(w)
        else:
            b.close()
