"""The ``fastipc`` command's ls and rm, and the inventory they are built on.

Real rings, queues, socket files and FIFOs, held by real processes; every
command runs as ``python -m fastipc ...`` in a child process.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import posix_ipc
import pytest
from _channel_util import sock_dir_fixture  # noqa: F401
from _cli_util import (  # noqa: F401
    T,
    fastipc,
    ls_json,
    ok,
    one_error_line,
    queue_name_fixture,
    ring_row,
)
from conftest import child_env, new_name

from fastipc import BACKEND, Ring, inventory
from fastipc._names import bell_paths, segment_path, semaphore_paths
from fastipc.endpoints import parse

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
    assert table.splitlines()[0].split() == [
        "KIND", "NAME", "BACKEND", "SIZE", "MODE", "WAITING", "PIDS", "ALIVE"
    ]  # fmt: skip
    line = next(ln for ln in table.splitlines() if f"shm://{ring_name}" in ln)
    assert line.split()[-2:] == [str(ring_holder.pid), "yes"]

    ring_holder.kill()
    ring_holder.wait(T)
    row = ring_row(ring_name)
    assert row is not None and row["alive"] is False and row["pids"] == []
    ok(fastipc("rm", ring_name))
    assert ring_row(ring_name) is None


def test_ls_shows_the_backend_and_the_messages_waiting(ring_name: str) -> None:
    """Read from the segment of either backend's layout (checks ls's table of offsets)."""
    with Ring.create(ring_name, 4096, unlink_on_exit=True) as ring:
        row = ring_row(ring_name)
        assert row is not None and row["backend"] == BACKEND and row["waiting"] == 0
        for i in range(5):
            ring.send(b"m%d" % i)
        ring.recv()
        row = ring_row(ring_name)
        assert row is not None and row["waiting"] == 4
        ring.send_many([b"x"] * 10)
        line = next(ln for ln in ok(fastipc("ls")).splitlines() if f"shm://{ring_name}" in ln)
        assert line.split()[2] == BACKEND and line.split()[5] == "14"
        assert len(ring.recv_many(100)) == 14
        row = ring_row(ring_name)
        assert row is not None and row["waiting"] == 0


def test_ls_note_on_uninspectable_processes_names_them_when_it_matters(ring_name: str) -> None:
    """The note appears only with a not-alive row (the one it could be wrong about)."""
    Ring.create(ring_name, 4096).close()  # nobody maps it: not alive
    try:
        scan = inventory.ProcessScan()
        scan.unreadable, scan.unreadable_pids = 1, [424242]  # as if one could not be read
        entries, notes = inventory.inventory(scan)
        assert any(e.name == f"shm://{ring_name}" and not e.alive for e in entries)
        (note,) = [n for n in notes if "could not be inspected" in n]
        assert "424242" in note and "before removing" in note
    finally:
        Ring.unlink_name(ring_name)


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
        assert row["messages"] == 1 and row["waiting"] == 1
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


def test_ls_escapes_hostile_names_rather_than_print_or_fail_on_them() -> None:
    # Anyone may make a file in /dev/shm: a name with an escape sequence, a
    # newline (a made-up row) and a byte that is not UTF-8 (which a strict
    # UTF-8 stdout, as on a desktop's en_US.UTF-8, cannot encode).
    base = new_name()
    path = os.fsencode(segment_path(base)) + b"\x1b[2J\nring  fake\xff"
    with open(path, "wb"):
        pass
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastipc", "ls"],
            env=child_env(PYTHONIOENCODING="utf-8"),
            capture_output=True,
            timeout=T,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        rows = [r for r in proc.stdout.splitlines() if base.encode() in r]
        assert rows == [rows[0]] and b"\x1b" not in proc.stdout
        assert f"shm://{base}\\x1b[2J\\nring  fake\\xff ".encode() in rows[0]
    finally:
        os.unlink(path)


def test_symlink_squatting_a_ring_name_is_listed_as_itself_and_removable(
    ring_name: str, sock_dir: str
) -> None:
    # A symlink at a ring's name blocks Ring.create (FileExistsError): ls must
    # show it, never what it points to, and rm must remove it, never its target.
    target = f"{sock_dir}/target"
    with open(target, "wb") as f:
        f.write(b"x" * 1234)
    os.chmod(target, 0o640)
    for points_to in (target, f"{sock_dir}/missing"):
        os.symlink(points_to, segment_path(ring_name))
        with pytest.raises(FileExistsError):
            Ring.create(ring_name, 4096)
        row = ring_row(ring_name)
        assert row is not None, "a squatting symlink is not listed"
        assert row["size"] == len(points_to) and row["mode"] == "0777"
        ok(fastipc("rm", ring_name))
        assert not os.path.lexists(segment_path(ring_name))
    with open(target, "rb") as f:
        assert f.read() == b"x" * 1234
    with Ring.create(ring_name, 4096, unlink_on_exit=True):
        pass


def test_fifo_with_a_reader_is_live_by_any_path(sock_dir: str) -> None:
    # The same FIFO through a symlinked directory (as /var/run is /run): rm
    # must still see its reader, and refuse to remove it.
    os.mkdir(f"{sock_dir}/real")
    os.symlink(f"{sock_dir}/real", f"{sock_dir}/link")
    os.mkfifo(f"{sock_dir}/real/q.fifo", 0o600)
    path = f"{sock_dir}/link/q.fifo"
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        (row,) = ls_json(path)
        assert row["alive"] is True and row["pids"] == [os.getpid()]
        (row,) = ls_json(f"{sock_dir}/link/")  # the directory the link points to
        assert row["alive"] is True
        assert "in use by pid" in one_error_line(fastipc("rm", path))
        assert "in use by pid" in one_error_line(fastipc("rm", f"fifo://{path}"))
        assert os.path.exists(path)
    finally:
        os.close(fd)
    ok(fastipc("rm", path))
    assert not os.path.exists(path)


def test_doorbells_left_of_a_removed_ring_are_listed_and_removed(ring_name: str) -> None:
    # A doorbell FIFO left of a removed ring: all that is left of it. A handle
    # of the removed ring asking for its fd no longer makes one (its fd is a
    # duplicate of the bell it holds: tests/test_bell_fds.py), but an opener
    # racing the removal (it opened the segment just before, its bells just
    # after) or a fastipc before 2026-12 still may. ls lists it under the
    # ring's name, rm removes it once nobody holds it.
    ring = Ring.create(ring_name, 4096)
    ok(fastipc("rm", "--force", ring_name))
    ring.fileno()
    assert not any(os.path.lexists(p) for p in bell_paths(ring_name))
    assert ring_row(ring_name) is None
    bells = bell_paths(ring_name)[:1]
    os.mkfifo(bells[0], 0o600)
    held = os.open(bells[0], os.O_RDWR | os.O_NONBLOCK)
    try:
        row = ring_row(ring_name)
        assert row is not None and row["files"] == bells
        assert row["alive"] is True and row["pids"] == [os.getpid()]
        assert "in use by pid" in one_error_line(fastipc("rm", ring_name))
    finally:
        os.close(held)
        ring.close()
    row = ring_row(ring_name)
    assert row is not None and row["alive"] is False
    ok(fastipc("rm", ring_name))
    assert not any(os.path.lexists(p) for p in bells)
    assert ring_row(ring_name) is None


def test_ls_and_rm_follow_no_symlink_they_are_given(sock_dir: str) -> None:
    # ls used to stat() its PATHs: a link to a directory listed the directory, a
    # link to a FIFO showed the FIFO under the link's name, while rm (lstat)
    # refused the same link as "not a socket file or FIFO". Both now refuse a
    # link by name, and touch neither it nor what it points to.
    os.mkdir(f"{sock_dir}/dir")
    os.mkfifo(f"{sock_dir}/dir/q.fifo", 0o600)
    links = {
        "to-dir": f"{sock_dir}/dir",
        "to-fifo": f"{sock_dir}/dir/q.fifo",
        "dangling": f"{sock_dir}/missing",
    }
    for name, points_to in links.items():
        os.symlink(points_to, f"{sock_dir}/{name}")
    for name, points_to in links.items():
        link = f"{sock_dir}/{name}"
        for verb, arg in (("ls", link), ("ls", f"fifo://{link}"), ("rm", link)):
            line = one_error_line(fastipc(verb, arg))
            assert f"{link}: a symbolic link (to {points_to}): not followed" in line, line
            if verb == "ls" and name == "to-dir" and "://" not in arg:
                assert f"{link}/ lists that directory" in line, line
        assert os.readlink(link) == points_to  # rm removed neither the link...
    assert os.path.exists(f"{sock_dir}/dir/q.fifo")  # ... nor what it points to
    # A bare word naming a link in the current directory: the same, not "no such ring".
    proc = subprocess.run(
        [sys.executable, "-m", "fastipc", "rm", "to-fifo"],
        cwd=sock_dir, env=child_env(), capture_output=True, text=True, timeout=T, check=False,
    )  # fmt: skip
    assert "to-fifo: a symbolic link" in one_error_line(proc)
    # What the links point to, named as they are, is listed as before.
    (row,) = ls_json(f"{sock_dir}/to-dir/")
    assert row["name"] == f"fifo://{sock_dir}/to-dir/q.fifo"
    assert [r["name"] for r in ls_json(sock_dir)] == []  # links in a directory: skipped


def test_ls_paths_errors(sock_dir: str) -> None:
    one_error_line(fastipc("ls", f"{sock_dir}/missing"))
    path = f"{sock_dir}/plain"
    open(path, "w").close()
    assert "not a socket file or FIFO" in one_error_line(fastipc("ls", path))


def test_ls_reads_a_mounted_mqueue_filesystem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Where the mqueue filesystem is mounted, every queue is listed, held open or not."""
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


# ---------------------------------------------------------------------------
# the inventory in-process: naming one object, finding it, removing it
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "kind", "name"),
    [
        ("shm://ring1", "ring", "ring1"),
        ("SHM://ring1?capacity=4096", "ring", "ring1"),
        ("mq:///jobs", "queue", "/jobs"),
        ("unix:///tmp/app.sock", "file", "/tmp/app.sock"),
        ("unix://rel.sock", "file", "rel.sock"),
        ("unixgram:///tmp/g.sock", "file", "/tmp/g.sock"),
        ("fifo:///tmp/p.fifo", "file", "/tmp/p.fifo"),
        ("unix://@abstract", "abstract", "@abstract"),
        ("/tmp/app.sock", "file", "/tmp/app.sock"),
        ("sub/app.sock", "file", "sub/app.sock"),
        ("not a ring name", "file", "not a ring name"),
    ],
)
def test_rm_argument_names_its_object(arg: str, kind: str, name: str) -> None:
    target = inventory.parse_target(arg)
    assert (target.kind, target.name, target.given) == (kind, name, arg)


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "nul\0byte",
        "shm://bad/name",
        "shm://r?nosuch=1",
        "mq:///a/b",
        "unix://",
        "fifo://",
        "tcp://127.0.0.1:80",
        "bogus://x",
    ],
)
def test_rm_argument_malformed_is_a_value_error(arg: str) -> None:
    with pytest.raises(ValueError):
        inventory.parse_target(arg)


def test_rm_argument_urls_are_read_as_every_verb_reads_them() -> None:
    """A URL ``rm`` refuses fails with the same words as in ``send``/``recv`` (one parser)."""
    for url in ("shm://bad/name", "mq:///a/b", "bogus://x"):
        with pytest.raises(ValueError) as rm_error:
            inventory.parse_target(url)
        with pytest.raises(ValueError) as parse_error:
            parse(url)
        assert str(rm_error.value) == str(parse_error.value)


def test_rm_targets_keep_the_forms_they_took_before_the_one_parser() -> None:
    """mq://NAME still names queue /NAME, as the old rm/ls docs promised."""
    assert inventory.parse_target("mq://q") == inventory.Target("queue", "/q", "mq://q")
    assert inventory.parse_target("mq:///q").name == "/q"


def test_bare_word_is_a_ring_unless_a_socket_file_of_that_name_is_here(
    ring_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    assert inventory.parse_target(ring_name).kind == "ring"  # no such ring, no such file
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(ring_name)
    try:
        assert inventory.parse_target(ring_name).kind == "file"
        with Ring.create(ring_name, 4096):
            assert inventory.parse_target(ring_name).kind == "ring"  # an existing ring wins
    finally:
        os.unlink(ring_name)


def test_ring_found_and_removed_by_its_names_paths(ring_name: str) -> None:
    with Ring.create(ring_name, 4096) as ring:
        entry = inventory.lookup(inventory.parse_target(f"shm://{ring_name}"))
        assert entry.kind == "ring" and entry.name == f"shm://{ring_name}"
        assert entry.path == segment_path(ring_name)
        assert entry.pids == [] and entry.alive is False  # this process is left out of the scan
        made = [
            p for p in [segment_path(ring_name), *semaphore_paths(ring_name)] if os.path.exists(p)
        ]
        assert entry.detail["files"] == made
        assert ring_name in [e.name[len("shm://") :] for e in inventory.inventory()[0]]
        inventory.remove(entry)
        assert not any(os.path.lexists(p) for p in made)
        ring.send(b"still works")  # handles others hold keep working
        assert ring.recv(timeout=0) == b"still works"
    with pytest.raises(FileNotFoundError):
        inventory.lookup(inventory.parse_target(ring_name))
