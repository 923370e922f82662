"""Socket files: fastipc never replaces one it cannot prove stale, and decides that under a lock.

Real processes race ``fastipc.listen()`` on one stale path (exactly one
wins, the other gets EADDRINUSE, the winner is the one reachable); a
socket another process has bound but not yet listening on, a live
SOCK_SEQPACKET listener and a live datagram socket are never replaced (by
``listen``, nor by the unix and unixgram servers); a truly stale file still
is; a symlink at the path is never followed; nothing (no lock file) is left
behind.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from conftest import child_env

import fastipc
from fastipc import Channel, listen
from fastipc.socket_file import is_live_socket

T = 10.0

#: A child that calls ``fastipc.listen(URL)`` each time it reads "go"; prints
#: ``won`` or ``lost ERRNO``; a winner accepts one connection, sends its pid,
#: closes (removing the file) and prints ``closed``.
RACER = r"""
import os, sys
import fastipc
url = sys.argv[1]
for line in sys.stdin:
    if line.strip() != "go":
        break
    try:
        lst = fastipc.listen(url)
    except OSError as exc:
        print(f"lost {exc.errno}", flush=True)
        continue
    print("won", flush=True)
    try:
        with lst:
            with lst.accept(timeout=3) as ch:
                ch.send(str(os.getpid()).encode())
                ch.recv(timeout=3)  # the parent closes: Closed
    except fastipc.Closed:
        pass
    except Exception as exc:
        print(f"unreached {exc!r}", flush=True)
        continue
    print("closed", flush=True)
"""

#: A child that binds (and with "listen", listens on) a socket of TYPE at PATH,
#: prints "ready" and waits for stdin to close.
HOLDER = r"""
import socket, sys
path, kind, listen = sys.argv[1], sys.argv[2], sys.argv[3] == "listen"
typ = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET,
       "dgram": socket.SOCK_DGRAM}[kind]
s = socket.socket(socket.AF_UNIX, typ)
s.bind(path)
if listen:
    s.listen(8)
print("ready", flush=True)
sys.stdin.read()
"""

TYPES = {
    "stream": socket.SOCK_STREAM,
    "seqpacket": socket.SOCK_SEQPACKET,
    "dgram": socket.SOCK_DGRAM,
}


class Procs:
    """Child interpreters, each killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def readline(proc: subprocess.Popen[str], timeout: float = T) -> str:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            pytest.fail(f"child said nothing within {timeout} s")
        line = proc.stdout.readline().strip()
        if not line:
            proc.wait(T)
            assert proc.stderr is not None
            pytest.fail(f"child exited ({proc.returncode}): {proc.stderr.read()}")
        return line

    @staticmethod
    def tell(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(T)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()


@pytest.fixture(name="procs")
def procs_fixture() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


def make_stale(path: str, kind: int = socket.SOCK_STREAM) -> None:
    """Leave a socket file at ``path`` whose socket is gone."""
    dead = socket.socket(socket.AF_UNIX, kind)
    dead.bind(path)
    dead.close()
    assert os.path.exists(path)


def hold(procs: Procs, path: str, kind: str, listening: bool) -> subprocess.Popen[str]:
    """A child process holding a ``kind`` socket bound at ``path`` (listening or not)."""
    proc = procs.start(HOLDER, path, kind, "listen" if listening else "bind")
    assert procs.readline(proc) == "ready"
    return proc


# How each entry point binds a unix socket file (and gives back something to close).
def _listen(path: str) -> Callable[[], None]:
    return listen(f"unix://{path}").close


def _serve_unix(path: str) -> Callable[[], None]:
    return fastipc.serve(f"unix://{path}", lambda m, p: m).close


def _serve_unixgram(path: str) -> Callable[[], None]:
    return fastipc.serve(f"unixgram://{path}", lambda m, p: m).close


BINDERS = {"listen": _listen, "serve-unix": _serve_unix, "serve-unixgram": _serve_unixgram}


# ---- two processes racing on one stale path ----------------------------------------------


def test_two_processes_racing_listen_on_a_stale_path_one_wins_and_is_reachable(
    sock_dir: str, procs: Procs
) -> None:
    path = f"{sock_dir}/race.sock"
    url = f"unix://{path}"
    racers = [procs.start(RACER, url) for _ in range(2)]
    for rounds in range(150):
        make_stale(path)
        for r in racers:
            Procs.tell(r, "go")
        said = [Procs.readline(r) for r in racers]
        winners = [r for r, s in zip(racers, said) if s == "won"]
        assert len(winners) == 1, f"round {rounds}: the racers said {said}"
        loser = said[1 - racers.index(winners[0])]
        assert loser == f"lost {errno.EADDRINUSE}", f"round {rounds}: the loser said {loser!r}"
        with Channel.connect(url, timeout=T) as ch:
            assert ch.recv(timeout=T) == str(winners[0].pid).encode()
        assert Procs.readline(winners[0]) == "closed"
        assert not os.path.exists(path)  # the winner removed its own file


# ---- what is alive is never replaced -----------------------------------------------------


@pytest.mark.parametrize("binder", BINDERS)
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_a_socket_bound_but_not_listening_is_not_replaced(
    sock_dir: str, procs: Procs, kind: str, binder: str
) -> None:
    path = f"{sock_dir}/bound.sock"
    hold(procs, path, kind, listening=False)
    before = os.lstat(path)
    with pytest.raises(OSError) as info:
        BINDERS[binder](path)
    assert info.value.errno == errno.EADDRINUSE
    assert info.value.filename == path
    after = os.lstat(path)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert is_live_socket(path, TYPES[kind])


@pytest.mark.parametrize("binder", BINDERS)
def test_a_live_seqpacket_listener_is_not_replaced(
    sock_dir: str, procs: Procs, binder: str
) -> None:
    path = f"{sock_dir}/seq.sock"
    hold(procs, path, "seqpacket", listening=True)
    before = os.lstat(path)
    with pytest.raises(OSError) as info:
        BINDERS[binder](path)
    assert info.value.errno == errno.EADDRINUSE
    after = os.lstat(path)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert is_live_socket(path)
    # ...and its owner still gets connections there.
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with c:
        c.connect(path)


@pytest.mark.parametrize("binder", BINDERS)
@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_a_live_listener_or_bound_datagram_socket_is_not_replaced(
    sock_dir: str, procs: Procs, kind: str, binder: str
) -> None:
    path = f"{sock_dir}/live.sock"
    hold(procs, path, kind, listening=kind == "stream")
    before = os.lstat(path)
    with pytest.raises(OSError) as info:
        BINDERS[binder](path)
    assert info.value.errno == errno.EADDRINUSE
    after = os.lstat(path)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


# ---- what is dead is still replaced ------------------------------------------------------


@pytest.mark.parametrize("binder", BINDERS)
@pytest.mark.parametrize("kind", ["stream", "seqpacket", "dgram"])
def test_a_truly_stale_file_is_replaced(sock_dir: str, binder: str, kind: str) -> None:
    path = f"{sock_dir}/stale.sock"
    make_stale(path, TYPES[kind])
    assert not is_live_socket(path)
    close = BINDERS[binder](path)
    try:
        assert is_live_socket(path)
        assert sorted(os.listdir(sock_dir)) == ["stale.sock"]  # no lock file left behind
    finally:
        close()
    assert os.listdir(sock_dir) == []


def test_the_file_of_a_killed_listener_is_replaced(sock_dir: str, procs: Procs) -> None:
    path = f"{sock_dir}/killed.sock"
    proc = hold(procs, path, "stream", listening=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(T)
    assert os.path.exists(path) and not is_live_socket(path)
    lst = listen(f"unix://{path}")
    with lst, Channel.connect(f"unix://{path}", timeout=T) as c, lst.accept(timeout=T) as s:
        c.send(b"fresh")
        assert s.recv(timeout=T) == b"fresh"


def test_a_stale_relative_path_is_replaced(sock_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sock_dir)
    make_stale("rel.sock")
    with listen("unix://rel.sock"):
        assert is_live_socket(os.path.join(sock_dir, "rel.sock"))
    assert os.listdir(sock_dir) == []


# ---- symlinks ------------------------------------------------------------------------------


@pytest.mark.parametrize("binder", BINDERS)
@pytest.mark.parametrize("target", ["stale socket", "dangling", "directory"])
def test_a_symlink_at_the_path_is_not_followed(sock_dir: str, binder: str, target: str) -> None:
    path = f"{sock_dir}/link.sock"
    dest = f"{sock_dir}/target"
    if target == "stale socket":
        make_stale(dest)
    elif target == "directory":
        os.mkdir(dest)
    os.symlink(dest, path)
    with pytest.raises(FileExistsError, match="not a socket"):
        BINDERS[binder](path)
    assert os.path.islink(path) and os.readlink(path) == dest
    if target == "stale socket":
        assert os.path.exists(dest)  # the target was not removed either
    elif target == "directory":
        assert os.listdir(dest) == []
    else:
        assert not os.path.lexists(dest)
