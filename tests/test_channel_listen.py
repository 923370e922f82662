"""listen/connect/accept over socket files and the abstract namespace: stale files, permissions, credentials."""

from __future__ import annotations

import errno
import os
import socket
import stat
import uuid

import pytest
from _channel_util import kids_fixture, no_fd_leak_fixture, sock_dir_fixture, sock_url_fixture  # noqa: F401

from fastipc import Channel, Timeout, listen


def test_listen_connect_accept_round_trip(sock_url: str, no_fd_leak: None) -> None:
    with listen(sock_url) as lst:
        c = Channel.connect(sock_url, timeout=5)
        s = lst.accept(timeout=5)
        with c, s:
            c.send(b"hello server\0")
            assert s.recv(timeout=5) == b"hello server\0"
            s.send(b"hello client\0")
            assert c.recv(timeout=5) == b"hello client\0"


def test_socket_file_is_owner_only_by_default_and_removed_on_close(sock_url: str) -> None:
    path = sock_url[len("unix://") :]
    old = os.umask(0)  # the umask must not widen the default
    try:
        lst = listen(sock_url)
    finally:
        os.umask(old)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    lst.close()
    assert not os.path.exists(path)
    lst.close()


@pytest.mark.parametrize("mode", [0o660, 0o666, 0o640])
def test_mode_is_exactly_what_was_asked_whatever_the_umask(sock_dir: str, mode: int) -> None:
    path = f"{sock_dir}/m.sock"
    old = os.umask(0o077)
    try:
        with listen(f"unix://{path}", mode=mode):
            assert stat.S_IMODE(os.stat(path).st_mode) == mode
        with listen(f"unix://{path}?mode={mode:o}"):
            assert stat.S_IMODE(os.stat(path).st_mode) == mode
    finally:
        os.umask(old)


def test_stale_socket_file_is_replaced(sock_dir: str) -> None:
    path = f"{sock_dir}/stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # bound, never listening, then closed: a leftover file
    dead.close()
    assert os.path.exists(path)
    with listen(f"unix://{path}") as lst:
        c = Channel.connect(f"unix://{path}", timeout=5)
        with c, lst.accept(timeout=5) as s:
            c.send(b"fresh")
            assert s.recv(timeout=5) == b"fresh"


def test_live_socket_file_is_eaddrinuse_naming_the_path(sock_url: str) -> None:
    path = sock_url[len("unix://") :]
    with listen(sock_url):
        with pytest.raises(OSError) as info:
            listen(sock_url)
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.filename == path and path in str(info.value)
        assert os.path.exists(path)  # the live one was left alone


def test_a_file_that_is_not_a_socket_is_not_replaced(sock_dir: str) -> None:
    path = f"{sock_dir}/plain"
    with open(path, "w") as f:
        f.write("keep me")
    with pytest.raises(FileExistsError, match="not a socket"):
        listen(f"unix://{path}")
    with open(path) as f:
        assert f.read() == "keep me"


def test_close_does_not_remove_a_file_another_listener_made(sock_url: str) -> None:
    path = sock_url[len("unix://") :]
    first = listen(sock_url)
    os.unlink(path)  # someone removes ours and listens there anew
    with listen(sock_url):
        first.close()
        assert os.path.exists(path)


def test_path_over_107_bytes_is_a_value_error_naming_the_limit(sock_dir: str) -> None:
    long = sock_dir + "/" + "p" * (108 - len(sock_dir) - 1)
    assert len(long) == 108
    with pytest.raises(ValueError, match="107-byte limit"):
        listen(f"unix://{long}")
    with pytest.raises(ValueError, match="107-byte limit"):
        Channel.connect(f"unix://{long}")


def test_abstract_namespace_leaves_no_file(sock_dir: str) -> None:
    name = f"fastipc-test-{uuid.uuid4().hex}"
    with listen(f"unix://@{name}") as lst:
        assert lst.name == f"@{name}"
        c = Channel.connect(f"unix://@{name}", timeout=5)
        with c, lst.accept(timeout=5) as s:
            s.send(b"abstract")
            assert c.recv(timeout=5) == b"abstract"
        with pytest.raises(OSError) as info:
            listen(f"unix://@{name}")
        assert info.value.errno == errno.EADDRINUSE
    assert os.listdir(sock_dir) == []


def test_relative_path_is_relative_to_the_working_directory(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sock_dir)
    with listen("unix://rel.sock") as lst:
        assert os.path.exists(os.path.join(sock_dir, "rel.sock"))
        with Channel.connect("unix://rel.sock", timeout=5) as c, lst.accept(timeout=5) as s:
            c.send(b"r")
            assert s.recv(timeout=5) == b"r"
    assert not os.path.exists(os.path.join(sock_dir, "rel.sock"))


def test_connect_errors_name_the_path(sock_dir: str) -> None:
    path = f"{sock_dir}/nobody.sock"
    with pytest.raises(FileNotFoundError) as info:
        Channel.connect(f"unix://{path}")
    assert info.value.filename == path
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(ConnectionRefusedError) as info2:
        Channel.connect(f"unix://{path}")
    assert info2.value.filename == path
    with pytest.raises(ValueError, match="scheme"):
        Channel.connect("tcp://127.0.0.1:1")


def test_accept_times_out(sock_url: str) -> None:
    import time

    with listen(sock_url) as lst:
        t0 = time.monotonic()
        with pytest.raises(Timeout):
            lst.accept(timeout=0.3)
        assert 0.29 <= time.monotonic() - t0 < 0.45
        with pytest.raises(Timeout):
            lst.accept(timeout=0)
    with pytest.raises(ValueError, match="closed"):
        lst.accept(timeout=0)


def test_peer_credentials_are_the_peer_process(sock_url: str, kids: object) -> None:
    with listen(sock_url) as lst:
        _, line = kids.spawn("creds", sock_url)  # type: ignore[attr-defined]
        _, pid, uid, gid = line.split()
        with lst.accept(timeout=10) as s:
            assert s.peer_credentials() == (int(pid), int(uid), int(gid))
            assert int(pid) != os.getpid()
    a, b = Channel.pair()
    with a, b:
        assert a.peer_credentials() == (os.getpid(), os.getuid(), os.getgid())


def test_bad_listen_options(sock_url: str) -> None:
    with pytest.raises(ValueError, match="mode"):
        listen(sock_url, mode=0o1777)
    with pytest.raises(ValueError, match="mode"):
        listen(sock_url + "?mode=rw")
    with pytest.raises(ValueError, match="backlog"):
        listen(sock_url, backlog=-1)
    with pytest.raises(ValueError, match="unknown option"):
        listen(sock_url + "?colour=red")


@pytest.mark.parametrize("timeout", [3e6, 1e300])
def test_accept_with_a_timeout_of_weeks_or_more_waits(sock_url: str, timeout: float) -> None:
    # Past ~24.8 days poll() refused the ms count (OverflowError); 1e300 is forever.
    import threading

    with listen(sock_url) as lst:
        threading.Timer(0.1, lambda: Channel.connect(sock_url).close()).start()
        with lst.accept(timeout=timeout):
            pass
