"""Shared fixtures and helpers for the ring tests: unique names, /dev/shm hygiene, child processes."""

from __future__ import annotations

import glob
import multiprocessing
import os
import select
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import fastipc
from fastipc import Ring

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
#: The directory fastipc was imported from (src/ or site-packages), for children.
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastipc.__file__)))
SHM = "/dev/shm"


def shm_entries(name: str) -> list[str]:
    """Every /dev/shm entry whose file name contains ``name``."""
    return sorted(glob.glob(os.path.join(SHM, f"*{glob.escape(name)}*")))


def new_name(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:8]}"


def child_env(**extra: str) -> dict[str, str]:
    """os.environ for a child: same fastipc (PYTHONPATH), same backend, tests/ importable."""
    env = dict(os.environ)
    parts = [PKG_PARENT, TESTS_DIR]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["FASTIPC_BACKEND"] = fastipc.BACKEND
    env.update(extra)
    return env


def run_python(
    code: str, timeout: float = 60, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail (not hang) past ``timeout`` seconds.

    With ``check`` the child must exit 0 (not by a signal); its output is shown otherwise.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            check=False,
            env=env or child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"child did not finish within {timeout} s (hung?)\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        )
    if check and proc.returncode != 0:
        how = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit {proc.returncode}"
        )
        pytest.fail(f"child {how}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


class _Interrupt(KeyboardInterrupt):
    """What :func:`interrupted_at` raises (a KeyboardInterrupt, as Ctrl-C's handler)."""


def interrupted_at(op: Any, n: int) -> bool:
    """Run ``op()`` with a KeyboardInterrupt raised at its ``n``-th signal check: a Python
    function's entry or right after a builtin call returns, where CPython 3.10+ runs a
    signal handler (so a handler raising there is what this simulates, one instant at a
    time). True if it was raised there; False if ``op`` finished first (``n`` is past
    its last such instant). Sweep ``n`` from 1 until it returns False."""
    seen = [0]

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_return"):
            seen[0] += 1
            if seen[0] == n:
                raise _Interrupt

    sys.setprofile(hook)
    try:
        op()
    except _Interrupt:
        return True
    finally:
        sys.setprofile(None)
    return False


class Children:
    """Child interpreters of one test (``python -m _workers`` or ``python -c code``); every
    one still alive is SIGKILLed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, *args: object, wait_for: str | None = "ready", timeout: float = 20
    ) -> subprocess.Popen[str]:
        """A ``python -m _workers ARGS`` child; waits for a first line starting with ``wait_for``."""
        proc = self._spawn(["-m", "_workers", *map(str, args)], None, False)
        if wait_for is not None:
            line = self.readline(proc, timeout)
            assert line.startswith(wait_for), (
                f"child said {line!r}, expected {wait_for!r}; stderr: {self.stderr(proc)}"
            )
        return proc

    def code(
        self,
        code: str,
        *args: object,
        wait_for: str | None = "ready",
        env: dict[str, str] | None = None,
        stdin: bool = False,
        timeout: float = 30,
    ) -> subprocess.Popen[str]:
        """A ``python -c CODE ARGS`` child (``code`` dedented); waits for its first line to be
        exactly ``wait_for``. ``stdin=True`` gives it a pipe for :meth:`tell`."""
        proc = self._spawn(["-c", textwrap.dedent(code), *map(str, args)], env, stdin)
        if wait_for is not None:
            line = self.readline(proc, timeout)
            if line != wait_for:
                proc.kill()
                proc.wait(10)
                pytest.fail(
                    f"child said {line!r}, expected {wait_for!r}; stderr:\n{self.stderr(proc)}"
                )
        return proc

    def _spawn(
        self, argv: list[str], env: dict[str, str] | None, stdin: bool
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            env=env or child_env(),
            cwd=TESTS_DIR,
            stdin=subprocess.PIPE if stdin else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def tell(proc: subprocess.Popen[str], line: str) -> None:
        """Write ``line`` and a newline to the child's stdin (started with ``stdin=True``)."""
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    @staticmethod
    def readline(proc: subprocess.Popen[str], timeout: float) -> str:
        """One line of the child's stdout, or fail after ``timeout`` seconds."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            pytest.fail(f"child {proc.args} said nothing within {timeout} s")
        return proc.stdout.readline().strip()

    @staticmethod
    def stderr(proc: subprocess.Popen[str]) -> str:
        if proc.poll() is None:
            return "(still running)"
        assert proc.stderr is not None
        return proc.stderr.read()

    def wait(self, proc: subprocess.Popen[str], timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child {proc.args} did not exit within {timeout} s")

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def children() -> Iterator[Children]:
    ch = Children()
    try:
        yield ch
    finally:
        ch.kill_all()


def _cleanup(name: str) -> None:
    try:
        Ring.unlink_name(name)
    except FileNotFoundError:
        pass
    left = shm_entries(name)
    for path in left:  # do not let one failure pollute /dev/shm for the others
        try:
            os.unlink(path)
        except OSError:
            pass
    assert not left, f"left in /dev/shm after Ring.unlink_name({name!r}): {left}"


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A fresh ring name; at teardown the ring is unlinked and nothing of it may remain in /dev/shm."""
    name = new_name()
    yield name
    _cleanup(name)


@pytest.fixture
def make_ring(ring_name: str) -> Iterator[object]:
    """``make_ring(capacity, **kw)`` creates ring ``ring_name``; handles are closed at teardown."""
    made: list[Ring] = []

    def make(capacity: int = 4096, **kw: object) -> Ring:
        r = Ring.create(ring_name, capacity, **kw)  # type: ignore[arg-type]
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def ring(make_ring: object) -> Ring:
    """A fresh ring of 4096 payload bytes."""
    return make_ring(4096)  # type: ignore[operator]


@pytest.fixture
def spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def join_all(procs: list[multiprocessing.process.BaseProcess], timeout: float) -> None:
    """Join every process within ``timeout`` seconds in total; kill and fail on a straggler or crash."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join(5)
    assert not stuck, f"processes still running after {timeout} s: {stuck}"
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    assert not bad, f"worker processes failed (name, exitcode): {bad}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill(ring: Ring, size: int) -> int:
    """Send ``size``-byte messages until the ring is full; return how many went in."""
    from fastipc import Timeout

    n = 0
    while True:
        try:
            ring.send(b"f" * size, timeout=0)
        except Timeout:
            return n
        n += 1
        assert n < 10_000_000


@pytest.fixture
def procs() -> Iterator[object]:
    """Children of the transport tests (``_server_workers.Procs``); all killed at teardown."""
    from _server_workers import Procs

    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


# ---- the leak check (issue 10, "Leaks") ---------------------------------------------
# After the session nothing fastipc made may be left: /dev/shm entries, POSIX
# message queues, socket files in the temp dirs the tests use, and the test
# process's fd count must be back where it started. Other sessions may run on
# the same machine at once, so a new object counts as ours if its name carries
# this process's pid (new_name() does) or if no live process holds it.
_LEAK_NOTES: list[str] = []
MQUEUE_DIR = "/dev/mqueue"


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fastipc_shm() -> set[str]:
    try:
        return {os.path.join(SHM, f) for f in os.listdir(SHM) if "fastipc" in f}
    except OSError:
        return set()


def _mqueue_mounted() -> str | None:
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "mqueue":
                    return parts[1]
    except OSError:
        pass
    return None


def _mount_mqueue() -> str | None:
    """Where the mqueue filesystem is mounted, mounting it at /dev/mqueue if we may; None if not."""
    where = _mqueue_mounted()
    if where is not None:
        return where
    if os.geteuid() != 0:
        _LEAK_NOTES.append(
            "leak check: the mqueue filesystem is not mounted and we are not root; only queues some "
            "live process holds open (/proc/PID/fd) can be seen, an unlinked-never queue nobody holds cannot"
        )
        return None
    try:
        os.makedirs(MQUEUE_DIR, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "mqueue", "none", MQUEUE_DIR],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        proc = subprocess.CompletedProcess([], 1, "", str(exc))
    if proc.returncode != 0:
        _LEAK_NOTES.append(
            f"leak check: could not mount the mqueue filesystem at {MQUEUE_DIR} ({proc.stderr.strip()}); "
            "only queues some live process holds open (/proc/PID/fd) can be seen"
        )
        return None
    return MQUEUE_DIR


def _held() -> tuple[set[str], set[str]]:
    """(paths of /dev/shm entries, names of queues) that some live process maps or holds open."""
    shm: set[str] = set()
    queues: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        shm.add(line[i:].rstrip("\n").removesuffix(" (deleted)"))
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                if target.startswith(SHM + "/"):
                    shm.add(target)
                elif target.startswith("/") and "/" not in target[1:]:
                    queues.add(target[1:])  # an mqueue fd reads as /NAME
        except OSError:
            continue
    return shm, queues


def _queues(where: str | None) -> set[str]:
    if where is None:
        return _held()[1]
    try:
        return set(os.listdir(where))
    except OSError:
        return set()


def _bound_unix_paths() -> set[str]:
    """Socket files some live socket is bound to (/proc/net/unix)."""
    out: set[str] = set()
    try:
        with open("/proc/net/unix") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7].startswith("/"):
                    out.add(parts[7])
    except OSError:
        pass
    return out


def _socket_files(roots: list[str], since: float) -> set[str]:
    """Socket files under ``roots`` (recursively) created or changed since ``since``."""
    import stat

    found: set[str] = set()
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISSOCK(st.st_mode) and st.st_ctime >= since:
                    found.add(path)
    return found


def _top_socket_files(root: str, since: float) -> set[str]:
    """Socket files directly in ``root`` (not in its subdirectories) created since ``since``."""
    import stat

    found: set[str] = set()
    try:
        names = os.listdir(root)
    except OSError:
        return found
    for name in names:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode) and st.st_ctime >= since:
            found.add(path)
    return found


def _resource_tracker_fd() -> int | None:
    """The pipe multiprocessing's resource tracker keeps open, if it was started."""
    try:
        from multiprocessing import resource_tracker

        fd = resource_tracker._resource_tracker._fd  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _resource_sharer_fds() -> int:
    """Fds multiprocessing's resource sharer holds for children (duplicates, its listener)."""
    try:
        from multiprocessing import resource_sharer

        sharer = resource_sharer._resource_sharer  # type: ignore[attr-defined]
        return len(sharer._cache) + (sharer._listener is not None)
    except (ImportError, AttributeError):
        return 0


def _someone_elses(name: str) -> bool:
    """True if ``name`` carries another process's new_name() mark (``<pid>_<8 hex>``)."""
    import re

    m = re.search(r"(\d+)_[0-9a-f]{8}", name)
    return m is not None and int(m.group(1)) != os.getpid()


def _marked_pid_gone(name: str) -> bool:
    """True if ``name`` carries another process's new_name() mark and that process has exited."""
    import re

    m = re.search(r"(\d+)_[0-9a-f]{8}", name)
    if m is None or int(m.group(1)) == os.getpid():
        return False
    try:
        with open(f"/proc/{int(m.group(1))}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not yet reaped
    except (OSError, IndexError):
        return True


@pytest.fixture(autouse=True)
def no_shm_left_by_exited_children() -> Iterator[None]:
    """Fail the test (at teardown) that let a child leave a /dev/shm entry named for its own pid.

    The session's leak check counts such names as another session's; once
    their process has exited they are nobody's, and this names the test.
    """
    before = _fastipc_shm()
    yield
    left = sorted(p for p in _fastipc_shm() - before if _marked_pid_gone(p))
    if left:
        for path in left:  # do not let one failure pollute /dev/shm for the others
            try:
                os.unlink(path)
            except OSError:
                pass
        pytest.fail(f"a child process that has exited left in /dev/shm: {left}", pytrace=False)


#: Temp dirs this test process made (tempfile.mkdtemp), and socket files found
#: in them when a test removed them (shutil.rmtree): reported, not failed, since
#: tests leave stale socket files on purpose (killed servers, stale-file tests).
_MADE_DIRS: list[str] = []
_SOCKETS_AT_RMTREE: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the session (an error at the last teardown) listing whatever fastipc left behind.

    Looks at: fastipc entries in /dev/shm, POSIX message queues (the mqueue fs,
    mounted at /dev/mqueue if needed and allowed), socket files directly in
    /tmp, in pytest's tmp_path tree and in every dir this process made with
    tempfile.mkdtemp that still exists, and this process's fd count. Objects
    named for another process (``<pid>_``, new_name()) are another session's;
    an unnamed one counts unless a live process holds it (a socket file some
    live socket is bound to, a segment some process maps).
    """
    import gc
    import shutil
    import tempfile

    mq_dir = _mount_mqueue()
    since = time.time() - 1
    ours = f"{os.getpid()}_"
    shm0, mq0 = _fastipc_shm(), _queues(mq_dir)
    real_mkdtemp, real_rmtree = tempfile.mkdtemp, shutil.rmtree

    def mkdtemp(*args: Any, **kw: Any) -> Any:
        path = real_mkdtemp(*args, **kw)
        _MADE_DIRS.append(os.fsdecode(path))
        return path

    def rmtree(path: Any, *args: Any, **kw: Any) -> Any:
        p = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if p in _MADE_DIRS:
            who = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            _SOCKETS_AT_RMTREE.extend(f"{f} ({who})" for f in sorted(_socket_files([p], since)))
        return real_rmtree(path, *args, **kw)

    tempfile.mkdtemp = mkdtemp  # type: ignore[assignment]
    shutil.rmtree = rmtree  # type: ignore[assignment]
    gc.collect()
    fds0 = _fd_count()
    fd_list0 = set(os.listdir("/proc/self/fd"))
    sharer0 = _resource_sharer_fds()
    try:
        yield
    finally:
        tempfile.mkdtemp, shutil.rmtree = real_mkdtemp, real_rmtree  # type: ignore[assignment]
    gc.collect()
    held_shm, held_mq = _held()
    bound = _bound_unix_paths()
    leaks: list[str] = []
    for path in sorted(_fastipc_shm() - shm0):
        if ours in path or (path not in held_shm and not _someone_elses(path)):
            leaks.append(f"/dev/shm: {path}")
    for q in sorted(_queues(mq_dir) - mq0):
        if ours in q or (q not in held_mq and not _someone_elses(q)):
            leaks.append(f"message queue: /{q}")
    socks = _top_socket_files("/tmp", since) | _top_socket_files(tempfile.gettempdir(), since)
    socks |= _socket_files([str(tmp_path_factory.getbasetemp())], since)
    socks |= _socket_files([d for d in _MADE_DIRS if os.path.isdir(d)], since)
    for path in sorted(socks):
        if ours in path or (path not in bound and not _someone_elses(path)):
            leaks.append(f"socket file: {path}")
    fds1 = _fd_count()
    # multiprocessing's resource tracker (started by the first spawn) keeps one pipe
    # open for the life of the process, by design: not ours to count.
    tracker_fd = _resource_tracker_fd()
    if tracker_fd is not None and str(tracker_fd) not in fd_list0:
        fds1 -= 1
    # Likewise fds pickled for a child outside a process start (ForkingPickler.dumps)
    # wait in multiprocessing's resource sharer, with its listening socket, until a
    # child fetches them: multiprocessing's, not a fastipc leak.
    fds1 -= _resource_sharer_fds() - sharer0
    if fds1 != fds0:
        extra = sorted(set(os.listdir("/proc/self/fd")) - fd_list0, key=int)
        where = []
        for fd in extra[:20]:
            try:
                where.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
            except OSError:
                pass
        leaks.append(
            f"fds: {fds0} open at the start, {fds1} at the end; new: {', '.join(where) or '-'}"
        )
    if _SOCKETS_AT_RMTREE:
        _LEAK_NOTES.append(
            f"leak check (not failed): {len(_SOCKETS_AT_RMTREE)} socket files were still there when "
            "a test removed its temp dir (stale files of killed servers, stale-file tests), e.g. "
            + "; ".join(_SOCKETS_AT_RMTREE[:5])
        )
    if leaks:
        _LEAK_NOTES.append("leak check FAILED:\n  " + "\n  ".join(leaks))
        pytest.fail("left behind by the test session:\n  " + "\n  ".join(leaks), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for note in _LEAK_NOTES:
        terminalreporter.write_line(note)
