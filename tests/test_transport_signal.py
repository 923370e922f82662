"""signal:// as a transport: sigqueue with an int payload out, signalfd in the server loop, in real processes.

Servers run in child processes (a fresh interpreter has no other threads, and
a served signal must be blocked in every thread); C peers (tests/cpeers/sig_peer.c)
send with sigqueue(3) and receive with sigaction(SA_SIGINFO).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from _cli_util import T, fastipc
from _cpeers import CPeers, cpeer_bins_fixture, cpeers_fixture  # noqa: F401
from conftest import child_env, run_python

import fastipc as fi
from fastipc.endpoints import parse

RTMIN = int(signal.SIGRTMIN)
USR1 = int(signal.SIGUSR1)


class Child:
    """A Python child: a script fed lines on stdin, answering lines on stdout."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        import select

        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], T)
        if not ready:
            pytest.fail(f"child said nothing within {T} s")
        text = self.proc.stdout.readline().strip()
        if not text:
            self.proc.wait(T)
            assert self.proc.stderr is not None
            pytest.fail(f"child exited {self.proc.returncode}: {self.proc.stderr.read()}")
        return text

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self) -> str:
        out, err = self.proc.communicate(timeout=T)
        assert self.proc.returncode == 0, f"child exited {self.proc.returncode}: {err}"
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=T)


@pytest.fixture
def kids() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for kid in made:
        kid.kill()


#: A child that serves ?sig=SIGS and prints "SIGNO VALUE PID UID QUEUED" for COUNT signals.
SERVER = """
    import os, queue, sys, fastipc
    url, count = sys.argv[1], int(sys.argv[2])
    got = queue.Queue()
    srv = fastipc.serve(url, lambda m, p: got.put((p.signal, int(m), p.pid, p.uid, p.queued)))
    srv.start()
    print("ready", os.getpid(), flush=True)
    for _ in range(count):
        print(*got.get(timeout=60), flush=True)
    srv.close()
"""


def serving(kids: list[Child], sigs: str, count: int) -> tuple[Child, int]:
    kid = Child(SERVER, f"signal://self?sig={sigs}", str(count))
    kids.append(kid)
    word, pid = kid.line().split()
    assert word == "ready"
    return kid, int(pid)


# ---- the URL -----------------------------------------------------------------


def test_signal_names_numbers_and_real_time_offsets_are_accepted() -> None:
    ep = parse("signal://self?sig=USR1,SIGUSR2,15,RTMIN+1,SIGRTMAX-2,rtmin")
    assert ep.pid is None
    assert ep.sig == (USR1, int(signal.SIGUSR2), 15, RTMIN + 1, int(signal.SIGRTMAX) - 2, RTMIN)
    assert parse("signal://1234?sig=USR1").pid == 1234


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("signal://me?sig=USR1", "not a pid"),
        ("signal://1?sig=NOPE", "no signal name"),
        ("signal://1?sig=RTMIN+999", "real-time signals run from"),
        ("signal://1?sig=0", "signal numbers run from 1"),
        ("signal://1?sig=USR1+1", "only RTMIN"),
        ("signal://1?sig=USR1,USR1", "twice"),
    ],
)
def test_a_bad_signal_url_names_the_wrong_part(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(url)


@pytest.mark.parametrize("sig", ["KILL", "STOP", "SEGV", "BUS", "FPE", "ILL"])
def test_uncatchable_and_crash_signals_cannot_be_served(sig: str) -> None:
    with pytest.raises(ValueError, match=f"SIG{sig} cannot be served"):
        fi.serve(f"signal://self?sig=USR2,{sig}", lambda m, p: None)
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_client_sends_one_signal_and_cannot_receive() -> None:
    with pytest.raises(ValueError, match="one signal to send"):
        fi.connect("signal://1?sig=USR1,USR2")
    with fi.connect("signal://1?sig=USR1") as c:
        with pytest.raises(ValueError, match="received by serving"):
            c.recv()
        with pytest.raises(ValueError, match="32-bit int"):
            c.send(2**31)
        with pytest.raises(ValueError, match="one int"):
            c.send(b"twelve")


# ---- delivery, in real processes --------------------------------------------------


def test_c_peer_sigqueue_reaches_the_handler_with_payload_pid_and_uid(
    kids: list[Child], cpeers: CPeers
) -> None:
    kid, pid = serving(kids, "USR1,RTMIN+1", 1)
    out = cpeers.run("sig_peer", "send", pid, RTMIN + 1, -12345)
    assert out.strip() == "sent 1"
    signo, value, sender, uid, queued = kid.line().split()
    assert (int(signo), int(value), int(uid), queued) == (RTMIN + 1, -12345, os.getuid(), "True")
    assert int(sender) > 0 and int(sender) != os.getpid()  # the C peer's pid
    kid.finish()


def test_real_time_signals_queue_in_order(kids: list[Child], cpeers: CPeers) -> None:
    kid, pid = serving(kids, "RTMIN+2", 50)
    assert cpeers.run("sig_peer", "send", pid, RTMIN + 2, 1000, 50).strip() == "sent 50"
    values = [int(kid.line().split()[1]) for _ in range(50)]
    assert values == list(range(1000, 1050))
    kid.finish()


def test_standard_signals_merge_while_pending(kids: list[Child]) -> None:
    # The child blocks USR1 before serving: three sent meanwhile are one pending signal.
    kid = Child(
        """
        import os, queue, signal, sys, fastipc
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("ready", os.getpid(), flush=True)
        sys.stdin.readline()
        got = queue.Queue()
        srv = fastipc.serve("signal://self?sig=USR1", lambda m, p: got.put(int(m)))
        srv.start()
        print(got.get(timeout=60), flush=True)
        try:
            more = got.get(timeout=1)
        except queue.Empty:
            more = None
        print(more, flush=True)
        srv.close()
        """
    )
    kids.append(kid)
    pid = int(kid.line().split()[1])
    with fi.connect(f"signal://{pid}?sig=USR1") as c:
        for value in (1, 2, 3):
            c.send(value)
    kid.say("go")
    assert kid.line() == "1"  # the first one's payload
    assert kid.line() == "None"  # the other two merged into it
    kid.finish()


def test_python_sends_to_a_c_sigaction_receiver(cpeers: CPeers) -> None:
    proc, line = cpeers.spawn("sig_peer", "recv", RTMIN + 3, 2)
    pid = int(line.split()[1])
    with fi.connect(f"signal://{pid}?sig=RTMIN+3") as c:
        c.send(7)
        c.send(b"-8")  # decimal text, as the command line sends it
    rows = [list(map(int, r.split())) for r in cpeers.finish(proc).splitlines()]
    assert rows == [[RTMIN + 3, v, os.getpid(), os.getuid(), -1] for v in (7, -8)]


def test_the_command_line_sends_and_receives_signals(kids: list[Child], cpeers: CPeers) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastipc", "recv", "signal://self?sig=USR2,RTMIN+1", "--count", "2"],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import select

        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], T)
        assert ready and "receiving on" in proc.stderr.readline()
        sent = fastipc("send", f"signal://{proc.pid}?sig=RTMIN+1", "42")
        assert sent.returncode == 0, sent.stderr
        assert fastipc("ls").stdout.count(str(proc.pid)) == 0  # a signal owns no named object
        assert cpeers.run("sig_peer", "send", proc.pid, int(signal.SIGUSR2), 5).strip() == "sent 1"
        out, err = proc.communicate(timeout=T)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("SIGRTMIN+1 42 pid=") and lines[0].endswith(f"uid={os.getuid()}")
    assert lines[1].startswith("SIGUSR2 5 pid=")


def test_sending_to_a_missing_process_names_it() -> None:
    pid = _dead_pid()
    with pytest.raises(ProcessLookupError, match=f"pid {pid}"):
        fi.connect(f"signal://{pid}?sig=USR1").send(1)
    res = fastipc("send", f"signal://{pid}?sig=USR1", "1")
    assert res.returncode == 1 and f"pid {pid}: no such process" in res.stderr


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_permission_denied_is_a_permission_error_naming_the_pid(kids: list[Child]) -> None:
    # As root: a child that dropped to nobody signals a root process; else signal pid 1.
    target = os.getpid() if os.getuid() == 0 else 1
    code = f"""
        import os, fastipc
        import fastipc.transports.signals  # loaded before dropping privileges
        if os.getuid() == 0:
            os.setgid(65534); os.setuid(65534)
        try:
            fastipc.connect("signal://{target}?sig=USR1").send(1)
        except PermissionError as exc:
            print("denied", exc.filename, exc.strerror)
    """
    out = run_python(code).stdout
    assert out.startswith(f"denied pid {target} not allowed to send SIGUSR1"), out


def test_a_full_queue_is_reported_to_the_sender(kids: list[Child]) -> None:
    # The receiver lets 8 signals pend (RLIMIT_SIGPENDING counts the user's queued signals).
    kid = Child(
        """
        import os, resource, signal, sys
        resource.setrlimit(resource.RLIMIT_SIGPENDING, (8, 8))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN + 4})
        print("ready", os.getpid(), flush=True)
        sys.stdin.readline()
        """
    )
    kids.append(kid)
    pid = int(kid.line().split()[1])
    sent = 0
    c = fi.connect(f"signal://{pid}?sig=RTMIN+4")
    with pytest.raises(BlockingIOError, match="RLIMIT_SIGPENDING") as info:
        for sent in range(100):
            c.send(sent)
    c.close()
    assert info.value.filename == f"pid {pid}"
    assert sent <= 8
    kid.say("done")
    kid.finish()


# ---- signal masks -------------------------------------------------------------


MASKS = """
    import os, signal, threading, fastipc

    def blocked():
        return {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}

    def blocked_in(tid):
        with open(f"/proc/self/task/{tid}/status") as f:
            word = next(int(l.split()[1], 16) for l in f if l.startswith("SigBlk:"))
        return word >> (signal.SIGUSR1 - 1) & 1 == 1

    before = blocked()
    srv = fastipc.serve("signal://self?sig=USR1", lambda m, p: None)
    during = blocked()
    seen = []
    t = threading.Thread(target=lambda: seen.append(blocked_in(threading.get_native_id())))
    t.start(); t.join()
    srv.start()  # the loop's thread inherits the mask
    loop = srv._thread
    print(blocked_in(loop.native_id))
    srv.close()
    print(int(signal.SIGUSR1) in before, int(signal.SIGUSR1) in during, seen[0], blocked() == before)

    # A failing open restores the mask too.
    stop = threading.Event()
    loose = threading.Thread(target=stop.wait, name="loose")
    loose.start()
    try:
        fastipc.serve("signal://self?sig=USR1,USR2", lambda m, p: None)
    except RuntimeError as exc:
        print("refused", "loose" in str(exc), "SIGUSR1" in str(exc))
    stop.set(); loose.join()
    print(blocked() == before)
"""


def test_served_signals_are_blocked_while_open_and_restored_on_close() -> None:
    out = run_python(MASKS).stdout.split("\n")
    assert out[0] == "True"  # blocked in the server's own thread
    assert out[1] == "False True True True"  # blocked in the opener and in threads it starts
    assert out[2] == "refused True True"  # a running thread that does not block them
    assert out[3] == "True"


def test_one_signal_is_served_by_one_server_per_process() -> None:
    code = """
        import fastipc
        a = fastipc.serve("signal://self?sig=USR1,RTMIN+1", lambda m, p: None)
        try:
            fastipc.serve("signal://self?sig=RTMIN+1", lambda m, p: None)
        except OSError as exc:
            print("busy", exc.strerror)
        a.close()
        fastipc.serve("signal://self?sig=RTMIN+1", lambda m, p: None).close()
        print("free")
    """
    out = run_python(code).stdout.splitlines()
    assert out == ["busy SIGRTMIN+1 already served by another server of this process", "free"]


def test_signals_pending_at_close_are_dropped_not_fatal() -> None:
    # Without the drain, unblocking at close would run RTMIN's default action: termination.
    code = """
        import os, fastipc
        srv = fastipc.serve("signal://self?sig=RTMIN+5", lambda m, p: None)
        c = fastipc.connect("signal://self?sig=RTMIN+5")
        for i in range(3):
            c.send(i)
        srv.close()
        print("alive")
    """
    assert run_python(code).stdout.strip() == "alive"
