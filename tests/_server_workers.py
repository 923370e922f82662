"""Child processes of the transport tests (fastipc.serve / fastipc.connect), and the helpers that run them.

Run as ``python -m _server_workers ROLE ...`` with ``tests/`` on PYTHONPATH
(:func:`start` does that). No pytest import at module level, so children
start fast. Every role prints one ``ready ...`` line when it is set up, and
its results as lines on stdout; a role that fails raises (exit status 1
with a traceback on stderr).

Roles:

``serve URL FRAMING PREFIX [max_clients]``
    ``fastipc.serve(URL)`` with a handler that answers ``PREFIX + message``
    (PREFIX ``-`` for none), in ``serve_forever()`` in the main thread.
    Prints ``ready ADDRESS``; when a signal stops it, ``stopped SIGNUM``,
    then ``closed`` after ``srv.close()``. Control messages (length framing
    or one-at-a-time raw requests): ``?clients`` answers ``srv.clients``,
    ``?peer`` answers ``repr(peer.address)``, ``!close:DATA`` sends DATA
    then ``peer.close()``, ``!abort`` calls ``peer.abort()`` (no reply),
    ``!quiet`` answers nothing.
``clients URL FRAMING N ROUNDS``
    Opens N clients at once, makes one request on each (so the server has
    accepted them all), prints ``connected N``, waits for a line on stdin,
    then runs ROUNDS rounds: every client sends a tagged request (in a
    shuffled order), then every client receives its reply (in another
    order); prints ``done REPLIES`` and waits for another stdin line before
    closing them all and printing ``closed``.
``blocked URL WHAT FRAMING``
    Connects and blocks in ``recv(timeout=30)`` (WHAT ``recv``) or in a
    ``send`` to a full FIFO (WHAT ``send``); prints ``ready`` first. On
    KeyboardInterrupt prints ``interrupted SECONDS`` (since ready) and
    exits 0.
``fifo_writer URL WRITER COUNT SIZE``
    Sends COUNT self-checking messages of SIZE bytes (``mixed``: sizes
    from 20 to 4088) through ``fastipc.connect(URL)``; prints ``sent COUNT``.
``mq_send URL PRIO:TAG ...``
    Sends each TAG with priority PRIO through ``fastipc.connect(URL)``, in
    argument order; prints ``sent N``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import struct
import subprocess
import sys
import time

import fastipc

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

#: Self-checking message header: writer id, total size, sequence number.
HEAD = struct.Struct("<IIQ")


# ---- self-checking messages ---------------------------------------------------
def make_msg(writer: int, seq: int, size: int) -> bytes:
    """A message of exactly ``size`` bytes (>= 16) that names its writer and sequence number."""
    assert size >= HEAD.size
    head = HEAD.pack(writer, size, seq)
    seed = struct.pack("<IQI", writer, seq, 0x5EED)
    body = (seed * ((size - HEAD.size) // len(seed) + 1))[: size - HEAD.size]
    return head + body


def check_msg(msg: bytes) -> tuple[int, int]:
    """(writer, seq) of a message from :func:`make_msg`; AssertionError if it is not intact."""
    assert len(msg) >= HEAD.size, f"message of {len(msg)} bytes is shorter than its header"
    writer, size, seq = HEAD.unpack_from(msg)
    assert size == len(msg), f"writer {writer} seq {seq}: {len(msg)} bytes, header says {size}"
    assert msg == make_msg(writer, seq, size), f"writer {writer} seq {seq}: content corrupted"
    return writer, seq


def mixed_size(writer: int, seq: int) -> int:
    """Sizes from 16 to 4088 bytes (the largest frame a FIFO carries atomically)."""
    return 4088 if seq % 7 == 0 else 16 + (writer * 7919 + seq * 104729) % (4088 - 16)


# ---- roles --------------------------------------------------------------------
def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_serve(url: str, framing: str, prefix: str, max_clients: int) -> int:
    tag = b"" if prefix == "-" else prefix.encode()
    holder: list[fastipc.Server] = []

    def handler(message: bytes, peer: fastipc.Peer) -> bytes | None:
        srv = holder[0]
        if message == b"?clients":
            return str(srv.clients).encode()
        if message == b"?peer":
            return repr(peer.address).encode()
        if message.startswith(b"!close:"):
            peer.send(message[len(b"!close:") :])
            peer.close()
            return None
        if message == b"!abort":
            peer.abort()
            return None
        if message == b"!quiet":
            return None
        return tag + message if tag else message

    srv = fastipc.serve(url, handler, framing=framing, max_clients=max_clients)
    holder.append(srv)
    # Say "ready" from inside the loop: serve_forever catches SIGINT/SIGTERM by then.
    srv.call_later(0, lambda: _print(f"ready {srv.address}"))
    srv.serve_forever()
    _print(f"stopped {srv.stopped_by}")
    srv.close()
    _print("closed")
    return 0


def run_clients(url: str, framing: str, n: int, rounds: int) -> int:
    pid = os.getpid()
    clis = [fastipc.connect(url, framing=framing, timeout=20) for _ in range(n)]
    for i, c in enumerate(clis):
        tag = f"hello {pid}/{i}".encode()
        got = c.request(tag, timeout=20)
        assert got == b"re:" + tag, f"client {i}: asked {tag!r}, got {got!r}"
    _print(f"connected {n}")
    sys.stdin.readline()
    rng = random.Random(pid)
    replies = 0
    order = list(range(n))
    for r in range(rounds):
        rng.shuffle(order)
        for i in order:
            clis[i].send(f"{pid}/{i}/{r}".encode() + b"." * (i % 50), timeout=20)
        rng.shuffle(order)
        for i in order:
            got = clis[i].recv(timeout=20)
            want = b"re:" + f"{pid}/{i}/{r}".encode() + b"." * (i % 50)
            assert got == want, f"client {i} round {r}: got {got!r}, want {want!r}"
            replies += 1
    _print(f"done {replies}")
    sys.stdin.readline()
    for c in clis:
        c.close()
    _print("closed")
    return 0


def run_blocked(url: str, what: str, framing: str) -> int:
    cli = fastipc.connect(url, framing=framing, timeout=10)
    if what == "send":
        # Fill the pipe (nobody reads it) so that the next send blocks.
        while True:
            try:
                cli.send(b"x" * 4000, timeout=0)
            except fastipc.Timeout:
                break
    t0 = time.monotonic()
    _print("ready")
    try:
        if what == "recv":
            got = cli.recv(timeout=30)
            _print(f"received {got!r}")
        else:
            cli.send(b"x" * 4000, timeout=30)
            _print("sent")
    except KeyboardInterrupt:
        _print(f"interrupted {time.monotonic() - t0:.3f}")
        return 0
    except Exception as exc:  # noqa: BLE001 - reported: the test shows this line
        _print(f"raised {type(exc).__name__}: {exc}")
        return 1
    return 1


def run_fifo_writer(url: str, writer: int, count: int, size: str) -> int:
    with fastipc.connect(url) as cli:
        _print("ready")
        for seq in range(count):
            n = mixed_size(writer, seq) if size == "mixed" else int(size)
            cli.send(make_msg(writer, seq, n), timeout=30)
    _print(f"sent {count}")
    return 0


def run_mq_send(url: str, items: list[str]) -> int:
    with fastipc.connect(url) as cli:
        for item in items:
            prio, _, tag = item.partition(":")
            cli.send(tag.encode(), priority=int(prio), timeout=10)
    _print(f"sent {len(items)}")
    return 0


def main(argv: list[str]) -> int:
    role, *rest = argv
    if role == "serve":
        url, framing, prefix, *more = rest
        return run_serve(url, framing, prefix, int(more[0]) if more else 1024)
    if role == "clients":
        url, framing, n, rounds = rest
        return run_clients(url, framing, int(n), int(rounds))
    if role == "blocked":
        url, what, framing = rest
        return run_blocked(url, what, framing)
    if role == "fifo_writer":
        url, writer, count, size = rest
        return run_fifo_writer(url, int(writer), int(count), size)
    if role == "mq_send":
        url, *items = rest
        return run_mq_send(url, items)
    raise SystemExit(f"unknown role {role}")


# ---- for the tests (run in the pytest process) ------------------------------------
def child_env() -> dict[str, str]:
    """os.environ for a child: this fastipc and backend, tests/ importable."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastipc.__file__)))
    env = dict(os.environ)
    parts = [pkg_parent, TESTS_DIR]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["FASTIPC_BACKEND"] = fastipc.BACKEND
    return env


class Proc:
    """A ``python -m _server_workers`` child; read its lines with a timeout, stop it, check its exit."""

    def __init__(self, *args: object, registry: list[Proc] | None = None) -> None:
        self.args = [str(a) for a in args]
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "_server_workers", *self.args],
            env=child_env(),
            cwd=TESTS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if registry is not None:
            registry.append(self)  # so that it is killed at teardown even if it fails to start
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def readline(self, timeout: float = 20) -> str:
        """The child's next stdout line; AssertionError (with its stderr) if none within ``timeout``."""
        out = self.popen.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            self.kill()
            raise AssertionError(
                f"child {self.args} said nothing within {timeout} s; stderr:\n{self.stderr()}"
            )
        line = out.readline()
        if not line:
            self.wait(10)
            raise AssertionError(
                f"child {self.args} exited ({self.popen.returncode}) instead of talking; "
                f"stderr:\n{self.stderr()}"
            )
        self.lines.append(line.strip())
        return line.strip()

    def expect(self, prefix: str, timeout: float = 20) -> str:
        """Read a line that must start with ``prefix``; return the rest of it."""
        line = self.readline(timeout)
        if not line.startswith(prefix):
            self.kill()
            raise AssertionError(
                f"child {self.args} said {line!r}, expected {prefix!r}...; stderr:\n{self.stderr()}"
            )
        return line[len(prefix) :].strip()

    def tell(self, line: str = "go") -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child {self.args} did not exit within {timeout} s") from None

    def finish(self, timeout: float = 20) -> list[str]:
        """Wait for a clean exit (status 0); return the rest of its stdout lines."""
        code = self.wait(timeout)
        assert self.popen.stdout is not None
        rest = [line.strip() for line in self.popen.stdout.read().splitlines()]
        self.lines.extend(rest)
        assert code == 0, (
            f"child {self.args} exited {code}; stdout {self.lines}; stderr:\n{self.stderr()}"
        )
        return rest

    def stderr(self) -> str:
        if self.popen.poll() is None:
            return "(still running)"
        assert self.popen.stderr is not None
        try:
            return self.popen.stderr.read()
        except ValueError:
            return "(closed)"

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self) -> None:
        self.kill()
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


class ServerProc(Proc):
    """A ``serve`` child: ``address`` is what it reported (srv.address)."""

    def __init__(
        self,
        url: str,
        framing: str = "length",
        prefix: str = "re:",
        max_clients: int = 1024,
        registry: list[Proc] | None = None,
    ) -> None:
        super().__init__("serve", url, framing, prefix or "-", max_clients, registry=registry)
        self.framing = framing
        self.address = self.expect("ready ")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Signal it; it must say it stopped by ``signum``, close, and exit 0."""
        self.signal(signum)
        assert self.expect("stopped ", timeout) == str(int(signum))
        assert self.expect("closed", timeout) == ""
        self.finish(timeout)


class Procs:
    """The children of one test; every one still running is killed at teardown."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    def start(self, *args: object) -> Proc:
        return Proc(*args, registry=self.all)

    def server(
        self, url: str, framing: str = "length", prefix: str = "re:", max_clients: int = 1024
    ) -> ServerProc:
        return ServerProc(url, framing, prefix, max_clients, registry=self.all)

    def cleanup(self) -> None:
        for proc in self.all:
            proc.cleanup()


def unlink_queue(name: str) -> None:
    import posix_ipc

    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        pass


def queue_exists(name: str) -> bool:
    import posix_ipc

    try:
        posix_ipc.MessageQueue(name).close()
    except posix_ipc.ExistentialError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
