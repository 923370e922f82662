"""fastipc.serve / fastipc.connect over POSIX message queues (mq) and named pipes (fifo).

mq: queues are named ``/fastipc.t<pid>_<hex>`` and always unlinked at
teardown. Senders and servers run in child processes (``_server_workers``).
fifo: the writers are child processes; the multi-writer checks run the
reading server in this process (``srv.start()``) so that it can check every
message it gets; the file and lifecycle checks run it in a child.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import selectors
import signal
import stat
import struct
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from _server_workers import Procs, check_msg, queue_exists, unlink_queue
from conftest import run_python

import fastipc
from fastipc import Closed, MessageTooLarge, Timeout


@pytest.fixture
def qname() -> Iterator[Callable[[], str]]:
    """``qname()`` gives a fresh queue name; every one given is unlinked at teardown."""
    made: list[str] = []

    def new() -> str:
        name = f"/fastipc.t{os.getpid()}_{uuid.uuid4().hex[:8]}"
        made.append(name)
        return name

    yield new
    for name in made:
        unlink_queue(name)


def queue_attrs(name: str) -> tuple[int, int]:
    import posix_ipc

    q = posix_ipc.MessageQueue(name)
    try:
        return q.max_messages, q.max_message_size
    finally:
        q.close()


# ---- mq -----------------------------------------------------------------------------
def test_mq_create_then_open_as_it_is(qname: Callable[[], str]) -> None:
    name = qname()
    with fastipc.connect(f"mq://{name}?maxmsg=5&msgsize=64") as a:
        assert queue_attrs(name) == (5, 64)
        # Opening an existing queue keeps its attributes, whatever the URL says.
        with fastipc.connect(f"mq://{name}?maxmsg=2&msgsize=16") as b:
            assert queue_attrs(name) == (5, 64)
            b.send(b"m" * 64, timeout=5)  # the queue's msgsize, not the URL's
            assert a.recv(timeout=5) == b"m" * 64
            for i in range(5):
                a.send(bytes([i]), timeout=5)
            with pytest.raises(Timeout):  # maxmsg=5: the sixth waits, then times out
                a.send(b"6", timeout=0.2)
            assert [b.recv(timeout=5) for _ in range(5)] == [bytes([i]) for i in range(5)]


def test_mq_priorities_highest_first_fifo_within_one(
    procs: Procs, qname: Callable[[], str]
) -> None:
    name = qname()
    with fastipc.connect(f"mq://{name}?maxmsg=10&msgsize=32") as cli:
        items = ["1:a1", "5:b1", "3:c1", "5:b2", "0:d1", "1:a2", "3:c2", "5:b3", "0:d2", "9:e1"]
        sender = procs.start("mq_send", f"mq://{name}", *items)
        assert sender.expect("sent ", 20) == str(len(items))
        sender.finish()
        got = [cli.recv_priority(timeout=5) for _ in items]
        assert got == [
            (b"e1", 9),
            (b"b1", 5),
            (b"b2", 5),
            (b"b3", 5),
            (b"c1", 3),
            (b"c2", 3),
            (b"a1", 1),
            (b"a2", 1),
            (b"d1", 0),
            (b"d2", 0),
        ]
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)


def test_mq_message_over_msgsize_raises(qname: Callable[[], str]) -> None:
    name = qname()
    with fastipc.connect(f"mq://{name}?msgsize=100") as cli:
        cli.send(b"k" * 100, timeout=5)
        with pytest.raises(MessageTooLarge) as info:
            cli.send(b"k" * 101, timeout=5)
        assert "100" in str(info.value)
        assert cli.recv(timeout=5) == b"k" * 100
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)  # the refused one never went in


def test_mq_send_and_reply_refuse_an_int_not_send_nul_bytes(qname: Callable[[], str]) -> None:
    """bytes(4) is b"\\0\\0\\0\\0": an int must raise TypeError, on the client and in a reply."""
    req, rep = qname(), qname()
    url = f"mq://{req}?reply={rep}"
    srv = fastipc.serve(url, lambda m, p: 3 if m == b"int" else b"re:" + m).start()  # type: ignore[arg-type,return-value]
    with srv, fastipc.connect(url) as cli:
        with pytest.raises(TypeError, match="must be a bytes-like object, not int"):
            cli.send(4, timeout=5)  # type: ignore[arg-type] - the mistake under test
        cli.send(b"int", timeout=5)
        assert cli.request(b"next", timeout=5) == b"re:next"  # nothing came before it


def make_queue(name: str, mode: int, uid: int | None = None) -> None:
    """Create queue ``name`` with exactly ``mode`` (and owner ``uid``), as someone else would."""
    import posix_ipc

    q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=4, max_message_size=64)
    try:
        os.fchmod(q.mqd, mode)
        if uid is not None:
            os.fchown(q.mqd, uid, uid)
        q.send(b"FORGED")
    finally:
        q.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a queue of another user needs root")
def test_mq_a_queue_another_user_made_is_refused(qname: Callable[[], str]) -> None:
    req, rep = qname(), qname()
    make_queue(rep, 0o666, uid=65534)  # nobody's reply queue, there first
    url = f"mq://{req}?reply={rep}"
    with pytest.raises(PermissionError, match="owned by uid 65534") as info:
        fastipc.serve(url, lambda m, p: b"re:" + m)
    assert "fastipc rm" in str(info.value)
    assert not queue_exists(req)  # the server removed the queue it had made
    with pytest.raises(PermissionError, match="owned by uid 65534") as info:
        fastipc.connect(url)
    assert "?owner=65534" in str(info.value)
    # Trusted by name (and as wide as it is): the client takes it, forged message and all.
    with fastipc.connect(f"mq://{rep}?owner=65534&mode=0666") as cli:
        assert cli.recv(timeout=5) == b"FORGED"


def test_mq_a_queue_wider_than_the_mode_asked_is_refused(qname: Callable[[], str]) -> None:
    name = qname()
    make_queue(name, 0o644)
    with pytest.raises(PermissionError, match="0644 gives more than the 0600") as info:
        fastipc.connect(f"mq://{name}")
    assert "?mode=0644" in str(info.value)
    with fastipc.connect(f"mq://{name}?mode=0644") as cli:  # what the URL allows
        assert cli.recv(timeout=5) == b"FORGED"
    with fastipc.connect(f"mq://{name}?mode=0666") as cli:  # narrower than asked: fine
        cli.send(b"x", timeout=5)


def test_mq_maxmsg_over_the_system_limit_names_msg_max(qname: Callable[[], str]) -> None:
    with open("/proc/sys/fs/mqueue/msg_max") as f:
        msg_max = int(f.read())
    name = qname()
    with pytest.raises(ValueError, match="msg_max") as info:
        fastipc.connect(f"mq://{name}?maxmsg={msg_max + 1}")
    assert str(msg_max) in str(info.value)
    assert not queue_exists(name)
    with fastipc.connect(f"mq://{name}?maxmsg={msg_max}"):
        assert queue_attrs(name)[0] == msg_max


def test_mq_priority_range_is_0_to_32767(qname: Callable[[], str]) -> None:
    with fastipc.connect(f"mq://{qname()}") as cli:
        with pytest.raises(ValueError):
            cli.send(b"x", priority=-1)
        with pytest.raises(ValueError):
            cli.send(b"x", priority=32768)
        cli.send(b"x", priority=32767)
        assert cli.recv_priority(timeout=5) == (b"x", 32767)


@pytest.mark.parametrize("mode", [None, "0640"])
def test_mq_created_queue_mode(qname: Callable[[], str], mode: str | None) -> None:
    name = qname()
    url = f"mq://{name}" + (f"?mode={mode}" if mode else "")
    old = os.umask(0o077)  # the umask must not change the mode asked
    try:
        cli = fastipc.connect(url)
    finally:
        os.umask(old)
    with cli:
        want = int(mode, 8) if mode else 0o600
        assert stat.S_IMODE(os.fstat(cli.fileno()).st_mode) == want


def test_mq_server_in_a_child_replies_on_the_reply_queue(
    procs: Procs, qname: Callable[[], str]
) -> None:
    req, rep = qname(), qname()
    url = f"mq://{req}?reply={rep}&maxmsg=10&msgsize=256"
    srv = procs.server(url)
    assert queue_exists(req) and queue_exists(rep)  # the server made both
    with fastipc.connect(url) as cli:
        assert stat.S_IMODE(os.fstat(cli.fileno()).st_mode) == 0o600  # the reply queue's
        assert cli.request(b"hello", timeout=5) == b"re:hello"
        cli.send(b"urgent", priority=7, timeout=5)
        assert cli.recv_priority(timeout=5) == (b"re:urgent", 7)  # the reply keeps the priority
        for i in range(30):  # more than maxmsg: the server keeps up
            assert cli.request(f"n{i}".encode(), timeout=5) == f"re:n{i}".encode()
        cli.send(b"!quiet", timeout=5)
        with pytest.raises(Timeout):
            cli.recv(timeout=0.2)
        srv.stop()
        # The server created both queues, so it unlinked both (our handle still works).
        assert not queue_exists(req)
        assert not queue_exists(rep)


def test_mq_fileno_is_the_reply_queue_and_readable_when_a_reply_waits(
    procs: Procs, qname: Callable[[], str]
) -> None:
    req, rep = qname(), qname()
    url = f"mq://{req}?reply={rep}"
    srv = procs.server(url)
    with fastipc.connect(url) as cli, selectors.DefaultSelector() as sel:
        sel.register(cli.fileno(), selectors.EVENT_READ)
        assert sel.select(0.1) == []
        cli.send(b"wake", timeout=5)
        assert len(sel.select(5)) == 1
        assert cli.recv(timeout=0) == b"re:wake"
        assert sel.select(0.1) == []
    srv.stop()


def test_mq_server_leaves_a_queue_it_did_not_create(procs: Procs, qname: Callable[[], str]) -> None:
    req, rep = qname(), qname()
    mine = fastipc.connect(f"mq://{req}")  # made here, before the server
    try:
        srv = procs.server(f"mq://{req}?reply={rep}")
        with fastipc.connect(f"mq://{req}?reply={rep}") as cli:
            assert cli.request(b"x", timeout=5) == b"re:x"
        srv.stop()
        assert queue_exists(req)  # not the server's to remove
        assert not queue_exists(rep)  # the server made this one
    finally:
        mine.close()


def test_mq_client_removes_the_reply_queue_it_made_when_it_gives_up(
    qname: Callable[[], str],
) -> None:
    """No server: the client made both queues; closing removes only the reply queue."""
    req, rep = qname(), qname()
    with fastipc.connect(f"mq://{req}?reply={rep}") as cli:
        assert queue_exists(req) and queue_exists(rep)
        cli.send(b"for a server to come", timeout=5)
        with pytest.raises(Timeout):
            cli.recv(timeout=0.1)  # nobody answers: give up
    assert not queue_exists(rep)  # nobody would ever read it
    assert queue_depth(req) == 1  # the request waits for a server


def test_mq_client_keeps_a_reply_queue_it_did_not_make(
    procs: Procs, qname: Callable[[], str]
) -> None:
    req, rep = qname(), qname()
    url = f"mq://{req}?reply={rep}"
    srv = procs.server(url)
    with fastipc.connect(url) as cli:
        assert cli.request(b"x", timeout=5) == b"re:x"
    assert queue_exists(rep)  # the server's, still answering the next client
    with fastipc.connect(url) as cli:
        assert cli.request(b"y", timeout=5) == b"re:y"
    srv.stop()
    assert not queue_exists(rep)


def test_mq_server_without_reply_queue_cannot_answer(
    procs: Procs, qname: Callable[[], str]
) -> None:
    name = qname()
    srv = procs.server(f"mq://{name}")
    with fastipc.connect(f"mq://{name}") as cli:
        cli.send(b"echo?", timeout=5)
        # The server read it (and logged that it cannot reply): the queue is empty.
        deadline = time.monotonic() + 5
        while queue_depth(name) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue_depth(name) == 0
    srv.stop()
    assert not queue_exists(name)


def queue_depth(name: str) -> int:
    import posix_ipc

    q = posix_ipc.MessageQueue(name)
    try:
        return int(q.current_messages)
    finally:
        q.close()


# ---- fifo ---------------------------------------------------------------------------
class Collector:
    """A handler that keeps every message (called in the server's thread)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, message: bytes, peer: fastipc.Peer) -> None:
        assert peer.address is None
        with self.lock:
            self.messages.append(message)

    def wait_for(self, count: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = list(self.messages)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.01)


def test_fifo_many_writers_every_message_intact_and_in_order_per_writer(
    procs: Procs, sock_dir: str
) -> None:
    path = f"{sock_dir}/w.fifo"
    nwriters, count = 4, 1500
    got = Collector()
    with fastipc.serve(f"fifo://{path}", got).start():
        writers = [
            procs.start("fifo_writer", f"fifo://{path}", w, count, "mixed") for w in range(nwriters)
        ]
        for w in writers:
            w.expect("ready")
        for w in writers:
            assert w.expect("sent ", 60) == str(count)
            w.finish()
        msgs = got.wait_for(nwriters * count)
    assert len(msgs) == nwriters * count
    seqs: dict[int, list[int]] = {w: [] for w in range(nwriters)}
    for m in msgs:
        writer, seq = check_msg(m)  # whole, not torn or mixed with another writer's
        seqs[writer].append(seq)
    for w in range(nwriters):
        assert seqs[w] == list(range(count)), f"writer {w}: messages lost or out of order"
    assert max(map(len, msgs)) == 4088  # the largest atomic frame went through


def test_fifo_4089_bytes_refused_unless_single_writer(procs: Procs, sock_dir: str) -> None:
    """Both sides must say ?single_writer=1 for frames over PIPE_BUF."""
    path = f"{sock_dir}/s.fifo"
    got = Collector()
    with fastipc.serve(f"fifo://{path}?single_writer=1", got).start():
        with fastipc.connect(f"fifo://{path}") as cli:
            cli.send(b"a" * 4088, timeout=5)
            with pytest.raises(MessageTooLarge, match="single_writer"):
                cli.send(b"a" * 4089, timeout=5)
            cli.send(b"end", timeout=5)  # the client is still good
        writer = procs.start("fifo_writer", f"fifo://{path}?single_writer=1", 9, 3, 1 << 20)
        writer.expect("ready")
        assert writer.expect("sent ", 30) == "3"
        writer.finish()
        msgs = got.wait_for(5)
    assert [len(m) for m in msgs] == [4088, 3, 1 << 20, 1 << 20, 1 << 20]
    assert msgs[:2] == [b"a" * 4088, b"end"]
    assert [check_msg(m) for m in msgs[2:]] == [(9, 0), (9, 1), (9, 2)]


def test_fifo_connect_without_reader_is_refused(sock_dir: str) -> None:
    path = f"{sock_dir}/nobody.fifo"
    with pytest.raises(FileNotFoundError):
        fastipc.connect(f"fifo://{path}")
    os.mkfifo(path, 0o600)  # a FIFO nobody reads
    with pytest.raises(ConnectionRefusedError) as info:
        fastipc.connect(f"fifo://{path}")
    assert info.value.filename == path


def test_fifo_client_does_not_follow_a_symlink_at_the_name(sock_dir: str) -> None:
    real, link = f"{sock_dir}/real.fifo", f"{sock_dir}/link.fifo"
    got = Collector()
    with fastipc.serve(f"fifo://{real}", got).start():
        os.symlink(real, link)
        with pytest.raises(OSError, match="symbolic link") as info:
            fastipc.connect(f"fifo://{link}")
        assert info.value.errno == errno.ELOOP
        with fastipc.connect(f"fifo://{real}") as cli:
            cli.send(b"direct", timeout=5)
        assert got.wait_for(1, timeout=5) == [b"direct"]  # nothing came through the link


@pytest.mark.skipif(os.geteuid() != 0, reason="making a FIFO of another user needs root")
def test_fifo_client_refuses_a_fifo_another_user_owns(sock_dir: str) -> None:
    """Its owner reads whatever is written: the client must not connect, whoever reads."""
    path = f"{sock_dir}/foreign.fifo"
    os.mkfifo(path, 0o622)
    os.chown(path, 65534, 65534)  # nobody's FIFO
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(PermissionError, match="owned by uid 65534") as info:
            fastipc.connect(f"fifo://{path}")
        assert "?owner=65534" in str(info.value)
        assert os.read(reader, 100) == b""  # nothing was written
        with fastipc.connect(f"fifo://{path}?owner=65534"):
            pass  # trusted by name
        os.chown(path, os.geteuid(), -1)  # ours: accepted
        with fastipc.connect(f"fifo://{path}") as cli:
            cli.send(b"ok", timeout=5)
        assert os.read(reader, 100) == struct.pack("<II", 2, 0) + b"ok"
    finally:
        os.close(reader)


def test_fifo_file_0600_removed_on_close_and_mode_option(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/p.fifo"
    srv = procs.server(f"fifo://{path}")
    assert srv.address == f"fifo://{path}"
    st = os.lstat(path)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with fastipc.connect(srv.address) as cli:
        cli.send(b"hi", timeout=5)
        with pytest.raises(ValueError):
            cli.recv(timeout=0.2)  # one-way
    srv.stop()
    assert not os.path.exists(path)
    srv = procs.server(f"fifo://{path}?mode=0620")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o620
    srv.stop()
    assert not os.path.exists(path)


def test_fifo_live_reader_refused_stale_fifo_replaced(procs: Procs, sock_dir: str) -> None:
    path = f"{sock_dir}/l.fifo"
    srv = procs.server(f"fifo://{path}")
    with pytest.raises(OSError) as info:
        fastipc.serve(f"fifo://{path}", lambda m, p: None)
    assert info.value.errno == errno.EADDRINUSE and info.value.filename == path
    srv.popen.kill()
    srv.wait()
    assert stat.S_ISFIFO(os.lstat(path).st_mode)  # left behind
    with pytest.raises(ConnectionRefusedError):
        fastipc.connect(f"fifo://{path}")
    got = Collector()
    with fastipc.serve(f"fifo://{path}", got).start():
        with fastipc.connect(f"fifo://{path}") as cli:
            cli.send(b"to the new reader", timeout=5)
        assert got.wait_for(1) == [b"to the new reader"]
    assert not os.path.exists(path)


def test_fifo_writer_sees_closed_when_the_reader_goes(sock_dir: str) -> None:
    path = f"{sock_dir}/c.fifo"
    srv = fastipc.serve(f"fifo://{path}", lambda m, p: None).start()
    cli = fastipc.connect(f"fifo://{path}")
    with cli:
        cli.send(b"one", timeout=5)
        srv.close()
        with pytest.raises(Closed):
            cli.send(b"two", timeout=5)


def test_fifo_send_timeout_when_the_pipe_stays_full(sock_dir: str) -> None:
    path = f"{sock_dir}/full.fifo"
    os.mkfifo(path, 0o600)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads
    try:
        with fastipc.connect(f"fifo://{path}") as cli:
            sent = 0
            with pytest.raises(Timeout):
                while True:
                    cli.send(b"f" * 4000, timeout=0.2)
                    sent += 1
                    assert sent < 10_000
            assert sent * 4008 >= 4096  # some went in before the pipe was full
            assert pipe_bytes(rfd) == sent * 4008  # whole frames only
    finally:
        os.close(rfd)


def pipe_bytes(fd: int) -> int:
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def test_fifo_server_skips_a_broken_frame_and_goes_on(sock_dir: str) -> None:
    path = f"{sock_dir}/b.fifo"
    got = Collector()
    with fastipc.serve(f"fifo://{path}", got).start():
        wfd = os.open(path, os.O_WRONLY)
        try:
            os.write(wfd, struct.pack("<II", 5, 0) + b"first")
            os.write(wfd, struct.pack("<II", 5, 0x40) + b"bad!!")  # reserved flag bit
            deadline = time.monotonic() + 5
            while pipe_bytes(wfd) and time.monotonic() < deadline:
                time.sleep(0.01)  # the server read (and dropped) it
            assert pipe_bytes(wfd) == 0
        finally:
            os.close(wfd)
        with fastipc.connect(f"fifo://{path}") as cli:
            cli.send(b"second", timeout=5)
        assert got.wait_for(2) == [b"first", b"second"]


def test_fifo_server_without_single_writer_drops_frames_over_pipe_buf(
    procs: Procs, sock_dir: str
) -> None:
    """A big frame a multi-writer server cannot trust is dropped; the FIFO stays in step."""
    path = f"{sock_dir}/m.fifo"
    got = Collector()
    with fastipc.serve(f"fifo://{path}", got).start():
        with fastipc.connect(f"fifo://{path}?single_writer=1") as big:
            big.send(b"b" * 10_000, timeout=5)
        time.sleep(0.3)  # the server reads (and drops) it before the next writer
        with fastipc.connect(f"fifo://{path}") as cli:
            cli.send(b"after", timeout=5)
        assert got.wait_for(1) == [b"after"]


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            if text in record.getMessage():
                return record.getMessage()
        time.sleep(0.01)
    raise AssertionError(f"no log line with {text!r}: {[r.getMessage() for r in caplog.records]}")


def test_fifo_single_writer_half_frame_of_a_killed_writer_is_dropped_not_glued(
    sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer killed mid-frame: the next writer's messages must not become its payload."""
    path = f"{sock_dir}/sw.fifo"
    url = f"fifo://{path}?single_writer=1"
    got = Collector()
    with (
        caplog.at_level(logging.WARNING, "fastipc.server"),
        fastipc.serve(url, got, max_message=1 << 20).start(),
    ):
        code = (
            "import os, signal, struct\n"
            f"fd = os.open({path!r}, os.O_WRONLY)\n"
            "os.write(fd, struct.pack('<II', 100_000, 0) + b'h' * 1000)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        child = run_python(code, timeout=30, check=False)
        assert child.returncode == -signal.SIGKILL
        line = wait_for_log(caplog, "unfinished frame")
        assert "1008 bytes" in line and "closed the FIFO midway" in line
        with fastipc.connect(url) as cli:
            for i in range(3):
                cli.send(b"after-%d" % i, timeout=5)
        assert got.wait_for(3) == [b"after-0", b"after-1", b"after-2"]
        time.sleep(0.1)
        assert len(got.messages) == 3  # nothing made up


def test_fifo_single_writer_long_frame_in_many_writes_keeps_one_idle_check(
    sock_dir: str,
) -> None:
    """Each read that empties the pipe mid-frame used to schedule an idle check of its
    own, each kept for idle_timeout (300 s by default): a timer per 64 KiB streamed."""
    path = f"{sock_dir}/lf.fifo"
    url = f"fifo://{path}?single_writer=1"
    got = Collector()
    with fastipc.serve(url, got, idle_timeout=60, max_message=1 << 20).start() as srv:
        w = os.open(path, os.O_WRONLY)
        try:
            os.write(w, struct.pack("<II", 50 * 1000, 0))
            most = 0
            for _ in range(50):
                os.write(w, b"p" * 1000)
                time.sleep(0.005)  # the server empties the pipe between writes
                most = max(most, len(srv._timers))  # type: ignore[attr-defined]
        finally:
            os.close(w)
        assert got.wait_for(1) == [b"p" * 50_000]
    assert most <= 2, most


def test_fifo_single_writer_half_frame_that_stalls_is_dropped_after_idle_timeout(
    sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"{sock_dir}/st.fifo"
    url = f"fifo://{path}?single_writer=1"
    got = Collector()
    with (
        caplog.at_level(logging.WARNING, "fastipc.server"),
        fastipc.serve(url, got, idle_timeout=0.2).start(),
    ):
        stalled = os.open(path, os.O_WRONLY)  # stays open: no end of file
        try:
            os.write(stalled, struct.pack("<II", 500, 0) + b"s" * 100)
            line = wait_for_log(caplog, "unfinished frame")
            assert "108 bytes" in line and "idle_timeout" in line
            # The writer resumes: the rest of its frame holds what looks like a frame,
            # which must not be delivered (it was, before: a fabricated message).
            rest = struct.pack("<II", 5, 0) + b"FAKE!"
            os.write(stalled, rest + b"r" * (400 - len(rest)))
            time.sleep(0.3)
            assert got.messages == []
        finally:
            os.close(stalled)  # its end: the FIFO is in step again
        wait_for_log(caplog, "reading frames again")
        with fastipc.connect(url) as cli:
            cli.send(b"fresh", timeout=5)
        assert got.wait_for(1) == [b"fresh"]
        time.sleep(0.1)
        assert got.messages == [b"fresh"]
