"""The NATS bridge against a real nats-server: local processes on both sides, restarts, limits.

Each test starts its own ``nats-server`` on a free loopback port (killed at
teardown). Without nats-server or nats-py the tests fail under CI (CI=true:
scripts/install_nats_server.sh and the ``test`` extra provide them) and
skip elsewhere, saying what to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import child_env, new_name, shm_entries

import fastipc
from fastipc import Ring

_CI = os.environ.get("CI") == "true"


def _missing(what: str) -> None:
    if _CI:
        pytest.fail(f"{what} (CI must have it: scripts/install_nats_server.sh, pip '.[test]')")
    pytest.skip(what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server child on 127.0.0.1:port that can be killed and started again on the same port."""

    def __init__(self, binary: str, log_dir: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, subject: str) -> str:
        return f"nats://127.0.0.1:{self.port}/{subject}"

    def start(self) -> None:
        log = open(os.path.join(self.log_dir, "nats-server.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while True:  # ready when it greets with INFO
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4096).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(self.log_dir, "nats-server.log")) as f:
                    pytest.fail(f"nats-server did not start on port {self.port}:\n{f.read()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def nats_server(tmp_path: os.PathLike[str]) -> Iterator[NatsServer]:
    binary = shutil.which("nats-server")
    if binary is None:
        _missing("nats-server is not installed (scripts/install_nats_server.sh)")
    try:
        import nats  # noqa: F401
    except ImportError:
        _missing("nats-py is not installed (pip install 'fastipc[nats]')")
    assert binary is not None
    server = NatsServer(binary, str(tmp_path))
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Ring names a test makes (``n = names.append(new_name())``); removed at teardown."""
    made: list[str] = []
    yield made
    for name in made:
        try:
            Ring.unlink_name(name)
        except (FileNotFoundError, AttributeError):
            pass
        for path in shm_entries(name):
            os.unlink(path)


def _ring(names: list[str], capacity: int = 1 << 20) -> Ring:
    name = new_name("nb")
    names.append(name)
    return Ring.create(name, capacity)


def _child(code: str) -> subprocess.Popen[str]:
    """A local process (fresh interpreter, same backend) running ``code``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"local process hung\nstdout:{out}\nstderr:{err}")
    assert proc.returncode == 0, f"local process failed ({proc.returncode}):\n{out}\n{err}"
    return out


def _producer(ring_name: str, count: int, size: int = 0) -> subprocess.Popen[str]:
    return _child(
        f"""
        from fastipc import Ring
        r = Ring.open({ring_name!r})
        for i in range({count}):
            r.send(b"%08d" % i + b"x" * {size}, timeout=60)
        r.close()
        """
    )


def _recv_all(ring: Ring, count: int) -> list[bytes]:
    return [ring.recv(timeout=30) for _ in range(count)]


def _accounted(b: fastipc.Bridge) -> None:
    """Once stopped, every message a bridge took has exactly one outcome."""
    s = b.stats
    assert s.received == s.forwarded + s.too_large + s.unconfirmed + s.undelivered, s


# ---------------------------------------------------------------------------


def test_ring_to_nats_to_ring_across_two_bridges(nats_server: NatsServer, names: list[str]) -> None:
    a, b = _ring(names), _ring(names)
    subject = nats_server.url("t.ring")
    with (
        fastipc.bridge(subject, f"shm://{b.name}") as into_b,
        fastipc.bridge(f"shm://{a.name}", subject) as from_a,
    ):
        producer = _producer(a.name, 5000, size=56)
        got = _recv_all(b, 5000)
        _finish(producer)
    assert got == [b"%08d" % i + b"x" * 56 for i in range(5000)]
    assert from_a.stats.forwarded == 5000 and into_b.stats.forwarded == 5000
    for br in (from_a, into_b):
        _accounted(br)
    a.close()
    b.close()


def test_broadcast_to_nats_to_broadcast_across_two_bridges(
    nats_server: NatsServer, names: list[str]
) -> None:
    """A broadcast ring's publisher in another process reaches every subscriber of a second
    broadcast ring, which the second bridge makes (and removes)."""
    a, b = new_name("nba"), new_name("nbb")
    names.extend([a, b])
    subject = nats_server.url("t.bcast")
    with fastipc.Broadcast.create(a, 1 << 20, policy="block") as pub_a:
        with (
            fastipc.bridge(subject, f"bcast://{b}?capacity=1048576") as into_b,
            fastipc.bridge(f"bcast://{a}", subject) as from_a,
        ):
            subs = [fastipc.Broadcast.subscribe(b) for _ in range(2)]
            assert pub_a.subscribers == 1  # the bridge
            producer = _child(
                f"""
                from fastipc import Broadcast
                p = Broadcast.open({a!r})
                for i in range(3000):
                    p.publish(b"%08d" % i, timeout=60)
                p.close()
                """
            )
            got = [[sub.recv(timeout=30) for _ in range(3000)] for sub in subs]
            _finish(producer)
            for sub in subs:
                sub.close()
        assert got == [[b"%08d" % i for i in range(3000)]] * 2
        assert from_a.stats.forwarded == 3000 and into_b.stats.forwarded == 3000
        assert pub_a.subscribers == 0  # the bridge's slot went with it
        pub_a.unlink()
    assert not shm_entries(b), "the bridge made ring b and must remove it"


def test_a_bridge_made_ring_is_removed_and_a_ring_shutdown_ends_the_bridge(
    nats_server: NatsServer, names: list[str]
) -> None:
    name = new_name("nb")
    names.append(name)
    with fastipc.bridge(f"shm://{name}?capacity=65536", nats_server.url("t.made")) as br:
        assert shm_entries(name)
        r = Ring.open(name)
        r.shutdown()
        assert br.wait(timeout=30), "a shut-down, drained ring source must end the bridge"
        r.close()
    assert not shm_entries(name)
    assert br.error is None


def test_unix_channel_clients_to_nats_to_a_channel_server(
    nats_server: NatsServer, names: list[str], tmp_path: os.PathLike[str]
) -> None:
    inbound = os.path.join(tmp_path, "in.sock")
    outbound = os.path.join(tmp_path, "out.sock")
    out = _ring(names)
    server = _child(
        f"""
        import fastipc
        from fastipc import Ring
        ring = Ring.open({out.name!r})
        with fastipc.listen("unix://{outbound}") as lis:
            print("ready", flush=True)
            ch = lis.accept(timeout=60)
            for _ in range(200):
                ring.send(ch.recv(timeout=60))
        """
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    subject = nats_server.url("t.chan")
    with (
        fastipc.bridge(subject, f"unix://{outbound}") as to_server,
        fastipc.bridge(f"unix://{inbound}", subject) as from_clients,
    ):
        clients = [
            _child(
                f"""
                from fastipc import Channel
                with Channel.connect("unix://{inbound}") as ch:
                    for i in range(100):
                        ch.send(b"c{k}-%d" % i)
                    ch.shutdown("write")
                    try:
                        ch.recv(timeout=30)
                    except EOFError:
                        pass  # the bridge closes us at its end
                """
            )
            for k in range(2)
        ]
        got = _recv_all(out, 200)
        _finish(server)
        for c in clients:
            c.kill()
            c.communicate()
    for k in range(2):  # each client's order is kept
        mine = [m for m in got if m.startswith(b"c%d-" % k)]
        assert mine == [b"c%d-%d" % (k, i) for i in range(100)]
    assert from_clients.stats.forwarded == 200 and to_server.stats.forwarded == 200
    assert not os.path.exists(inbound), "the bridge removes the socket file it listened at"
    out.close()


def test_message_queue_to_nats(nats_server: NatsServer, names: list[str]) -> None:
    queue = f"/{new_name('nbq')}"
    out = _ring(names)
    subject = nats_server.url("t.mq")
    try:
        with (
            fastipc.bridge(subject, f"shm://{out.name}") as into,
            fastipc.bridge(f"mq://{queue}", subject) as from_q,
        ):
            sender = _child(
                f"""
                import fastipc
                with fastipc.connect("mq://{queue}") as q:
                    for i in range(300):
                        q.send(b"m%d" % i, timeout=30)
                """
            )
            got = _recv_all(out, 300)
            _finish(sender)
        assert got == [b"m%d" % i for i in range(300)]
        _accounted(from_q)
        _accounted(into)
    finally:
        out.close()
    assert not os.path.exists(f"/dev/mqueue{queue}"), "the queue the bridge made is removed"


def test_a_queue_group_spreads_messages_over_two_bridges(
    nats_server: NatsServer, names: list[str]
) -> None:
    a, b1, b2 = _ring(names), _ring(names), _ring(names)
    group = nats_server.url("t.work?queue=workers")
    with (
        fastipc.bridge(group, f"shm://{b1.name}") as w1,
        fastipc.bridge(group, f"shm://{b2.name}") as w2,
        fastipc.bridge(f"shm://{a.name}", nats_server.url("t.work")),
    ):
        producer = _producer(a.name, 2000)
        _finish(producer)
        got: list[bytes] = []
        while len(got) < 2000:
            for ring in (b1, b2):
                try:
                    got.extend(ring.recv_many(256, timeout=0.05))
                except fastipc.Timeout:
                    pass
    assert sorted(got) == [b"%08d" % i for i in range(2000)], "each message exactly once"
    assert w1.stats.forwarded > 0 and w2.stats.forwarded > 0, (w1.stats, w2.stats)
    assert w1.stats.forwarded + w2.stats.forwarded == 2000
    for r in (a, b1, b2):
        r.close()


def test_request_reply_round_trips_through_nats(
    nats_server: NatsServer, tmp_path: os.PathLike[str]
) -> None:
    client_side = os.path.join(tmp_path, "rpc-in.sock")
    server_side = os.path.join(tmp_path, "rpc-srv.sock")
    server = _child(
        f"""
        import fastipc
        with fastipc.listen("unix://{server_side}") as lis:
            print("ready", flush=True)
            ch = lis.accept(timeout=60)
            while True:
                try:
                    m = ch.recv(timeout=60)
                except EOFError:
                    break
                ch.send(m.upper() + b"!")
        """
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    subject = nats_server.url("t.rpc")
    responder = fastipc.bridge(subject, f"unix://{server_side}", request=True)
    requester = fastipc.bridge(f"unix://{client_side}", subject, request=True)
    with responder, requester:
        client = _child(
            f"""
            from fastipc import Channel
            with Channel.connect("unix://{client_side}") as ch:
                for i in range(50):
                    ch.send(b"ask %d" % i)
                    print(ch.recv(timeout=30).decode())
            """
        )
        out = _finish(client)
    assert out.split("\n")[:50] == [f"ASK {i}!" for i in range(50)]
    assert requester.stats.forwarded == 50 and responder.stats.forwarded == 50
    _finish(server)  # the bridge's connection closed: it ends and removes its socket file
    assert not os.path.exists(server_side)


def test_a_message_over_max_payload_is_refused_and_counted(
    nats_server: NatsServer, names: list[str]
) -> None:
    a, b = _ring(names, 4 << 20), _ring(names)
    subject = nats_server.url("t.big")
    with (
        fastipc.bridge(subject, f"shm://{b.name}"),
        fastipc.bridge(f"shm://{a.name}", subject) as from_a,
    ):
        limit = from_a.stats.max_payload
        assert limit == 1 << 20, "nats-server's default max_payload, read from its INFO"
        a.send(b"before")
        a.send(b"x" * (limit + 1))
        a.send(b"y" * limit)  # exactly the limit passes
        a.send(b"after")
        got = _recv_all(b, 3)
    assert [len(m) for m in got] == [6, limit, 5]
    s = from_a.stats
    assert s.too_large == 1 and s.forwarded == 3, s
    assert s.last_error is not None and "max_payload of 1048576 bytes" in s.last_error
    assert f"{limit + 1} bytes" in s.last_error
    _accounted(from_a)
    a.close()
    b.close()


def test_the_server_killed_and_restarted_mid_stream(
    nats_server: NatsServer, names: list[str]
) -> None:
    """Both bridges reconnect; nothing arrives twice or out of order; every taken message is counted.

    A message the server confirmed and then lost in its own crash is what core
    NATS (at-most-once) allows: it shows as forwarded by the sending bridge and
    never received by the other; the test reports it rather than hiding it.
    """
    a, b = _ring(names, 4 << 20), _ring(names, 4 << 20)
    subject = nats_server.url("t.restart")
    opts = {"reconnect_wait": 0.05}
    with (
        fastipc.bridge(subject, f"shm://{b.name}", **opts) as into_b,
        fastipc.bridge(f"shm://{a.name}", subject, reconnect_wait=0.5) as from_a,
    ):
        phase1 = 20000
        producer = _producer(a.name, phase1)
        got = _recv_all(b, 100)  # the stream is flowing: kill it mid-way
        nats_server.kill()
        _finish(producer)  # the rest waits in ring A (or is counted by bridge A)
        while True:  # everything that crossed before the kill, then nothing (server down)
            try:
                got.extend(b.recv_many(4096, timeout=0.5))
            except fastipc.Timeout:
                break
        nats_server.start()
        deadline = time.monotonic() + 60
        while into_b.stats.reconnects < 1:  # B subscribed again before phase 2 is sent
            assert time.monotonic() < deadline, f"bridge B never reconnected: {into_b.stats}"
            time.sleep(0.05)
        phase2 = [b"p2-%05d" % i for i in range(500)]
        for m in phase2:
            a.send(m, timeout=30)
        while not got or got[-1] != phase2[-1]:
            got.extend(b.recv_many(4096, timeout=60))
    seqs = [int(m) for m in got if not m.startswith(b"p2-")]
    assert len(set(got)) == len(got), "a message arrived twice"
    assert seqs == sorted(seqs), "order kept"
    assert [m for m in got if m.startswith(b"p2-")] == phase2, "after the restart all arrive"
    sa, sb = from_a.stats, into_b.stats
    assert sa.disconnects >= 1 and sa.reconnects >= 1 and sb.reconnects >= 1, (sa, sb)
    assert sa.received == phase1 + len(phase2), "bridge A took every message, once"
    _accounted(from_a)
    _accounted(into_b)
    assert sb.forwarded == len(got), "bridge B delivered everything it received"
    assert sb.undelivered == 0, sb
    # What was lost is what A counted as unconfirmed/undelivered, plus what
    # the server accepted (A: forwarded) and never passed on (B: not received).
    lost = phase1 + len(phase2) - len(got)
    assert lost == sa.unconfirmed + sa.undelivered + (sa.forwarded - sb.received), (lost, sa, sb)
    print(
        f"lost {lost}: counted by bridge A {sa.unconfirmed + sa.undelivered}, in the server "
        f"{sa.forwarded - sb.received}; {sa}; {sb}"
    )
    a.close()
    b.close()


def test_ctrl_c_stops_the_cli_bridge_cleanly(nats_server: NatsServer, names: list[str]) -> None:
    name = new_name("nbc")
    names.append(name)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastipc",
            "bridge",
            f"shm://{name}?capacity=65536",
            nats_server.url("t.cli"),
        ],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "bridging" in line, line + proc.stderr.read() if proc.poll() is not None else line
    with Ring.open(name) as r:
        r.send(b"one")
        r.send(b"x" * 2000)
        # taken (a ring still holding messages would be kept at the bridge's close)
        assert _eventually(lambda: len(r) == 0), "the CLI bridge did not take the messages"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the CLI bridge did not stop on SIGINT")
    assert proc.returncode == 0, err
    assert "bridge stats: received" in err
    assert not shm_entries(name), "the ring the CLI bridge made is removed"


def test_sigterm_stops_the_cli_bridge_cleanly(nats_server: NatsServer, tmp_path: str) -> None:
    sock = os.path.join(tmp_path, "cli.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastipc", "bridge", f"unix://{sock}", nats_server.url("t.cli2")],
        env=child_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert "bridging" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not os.path.exists(sock)


def test_a_missing_server_or_a_bad_pair_is_a_clear_error(nats_server: NatsServer) -> None:
    port = _free_port()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}: cannot connect"):
        fastipc.bridge("shm://x", f"nats://127.0.0.1:{port}/s", connect_timeout=1)
    with pytest.raises(ValueError, match="one side must be a nats:// subject"):
        fastipc.Bridge("shm://a", "shm://b")
    with pytest.raises(ValueError, match="wildcard"):
        fastipc.Bridge("shm://a", nats_server.url("a.*"))
    with pytest.raises(ValueError, match="request/reply needs a unix:// or tcp://"):
        fastipc.Bridge("shm://a", nats_server.url("a"), request=True)
    with pytest.raises(ValueError, match="queue=.*subscribing"):
        fastipc.Bridge("shm://a", nats_server.url("a?queue=q"))
    with pytest.raises(FileNotFoundError, match="capacity"):
        fastipc.bridge(f"shm://{new_name('nbm')}", nats_server.url("a"))


def _eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    """Whether ``check()`` comes true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def test_messages_taken_while_the_server_is_down_wait_for_it_and_are_not_counted_early(
    nats_server: NatsServer, names: list[str]
) -> None:
    """A bridge already waiting on its ring when the server dies takes what then arrives, but
    publishes it only once reconnected; stopped before that, the batch is undelivered, not
    forwarded (nats-py's flush returns at once while its read loop is down)."""
    a, b = _ring(names), _ring(names)
    subject = nats_server.url("t.down")
    with fastipc.bridge(f"shm://{a.name}", subject, reconnect_wait=2.0) as from_a:
        time.sleep(0.2)  # the bridge waits on the empty ring
        nats_server.kill()
        assert _eventually(lambda: from_a.stats.disconnects >= 1), "no disconnect seen"
        a.send(b"m0")  # taken by the waiting bridge, and held
        assert _eventually(lambda: from_a.stats.received == 1), from_a.stats
        for i in range(1, 5):
            a.send(b"m%d" % i)  # these wait in the ring
        time.sleep(0.3)
        assert from_a.stats.forwarded == 0, from_a.stats
        nats_server.start()
        with fastipc.bridge(subject, f"shm://{b.name}") as into_b:  # up before A reconnects
            assert _recv_all(b, 5) == [b"m%d" % i for i in range(5)]
        assert _eventually(lambda: from_a.stats.forwarded == 5), from_a.stats  # once confirmed
        assert into_b.stats.forwarded == 5, into_b.stats
    _accounted(from_a)
    with fastipc.bridge(f"shm://{a.name}", subject, close_timeout=0.5) as stopped:
        time.sleep(0.2)
        nats_server.kill()
        assert _eventually(lambda: stopped.stats.disconnects >= 1), "no disconnect seen"
        a.send(b"lost")
        assert _eventually(lambda: stopped.stats.received == 1), stopped.stats
    s = stopped.stats
    assert s.forwarded == 0 and s.undelivered == 1, s
    _accounted(stopped)
    a.close()
    b.close()


def _nats_publish(server: NatsServer, subject: str, messages: list[bytes], pause: float) -> None:
    """Publish each message from a plain nats-py client, flushed, ``pause`` seconds apart."""
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{server.port}")
        for m in messages:
            await nc.publish(subject, m)
            await nc.flush()
            await asyncio.sleep(pause)
        await nc.close()

    asyncio.run(main())


@pytest.mark.parametrize("scheme", ["unix", "tcp"])
def test_a_channel_server_that_dropped_the_bridge_gets_the_next_message_on_a_new_connection(
    nats_server: NatsServer, tmp_path: os.PathLike[str], scheme: str
) -> None:
    """The server cut the idle connection off (idle_timeout; a restart does the same): the
    next message must not go into the dead connection, lost and counted forwarded."""
    got: list[bytes] = []
    url = f"unix://{tmp_path}/idle.sock" if scheme == "unix" else "tcp://127.0.0.1:0"
    server = fastipc.serve(url, lambda msg, peer: got.append(msg), idle_timeout=0.3).start()
    try:
        with fastipc.bridge(nats_server.url("t.idle"), server.address) as into:
            _nats_publish(nats_server, "t.idle", [b"m1"], 0)
            assert _eventually(lambda: got == [b"m1"]), "m1 never arrived"
            time.sleep(1.0)  # the server drops the bridge's idle connection
            _nats_publish(nats_server, "t.idle", [b"m2", b"m3"], 0.1)
            assert _eventually(lambda: len(got) == 3, timeout=10), f"got {got}, {into.stats}"
    finally:
        server.close()
    assert got == [b"m1", b"m2", b"m3"]
    s = into.stats
    assert s.forwarded == 3 and s.undelivered == 0, s
    _accounted(into)


def test_an_extra_reply_from_the_channel_server_never_reaches_the_next_requester(
    nats_server: NatsServer, tmp_path: os.PathLike[str]
) -> None:
    """A server that answers one request twice: the extra message is dropped (and logged)
    before the next request, not passed to the next requester as its reply."""
    import asyncio

    import nats

    def answer(msg: bytes, peer: fastipc.Channel) -> bytes:
        if msg == b"req-1":
            peer.send(b"req-1 extra")
        return b"to " + msg

    path = os.path.join(tmp_path, "twice.sock")
    server = fastipc.serve(f"unix://{path}", answer).start()
    answers: list[bytes] = []

    async def ask() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{nats_server.port}")
        for i in range(1, 4):
            answers.append((await nc.request("t.twice", b"req-%d" % i, timeout=5)).data)
            await asyncio.sleep(0.1)  # the extra message is in the bridge's socket by now
        await nc.close()

    try:
        with fastipc.bridge(nats_server.url("t.twice"), f"unix://{path}", request=True) as br:
            asyncio.run(ask())
    finally:
        server.close()
    assert answers == [b"req-1 extra", b"to req-2", b"to req-3"], answers
    assert br.stats.forwarded == 3, br.stats
    _accounted(br)


def test_a_listener_out_of_fds_retries_and_serves_the_clients_that_come_later(
    nats_server: NatsServer, names: list[str], tmp_path: os.PathLike[str]
) -> None:
    """accept() failing with EMFILE pauses the listener, it does not end it for good while
    the bridge still claims to run."""
    import resource

    out = _ring(names)
    path = os.path.join(tmp_path, "starved.sock")
    subject = nats_server.url("t.starved")
    with (
        fastipc.bridge(subject, f"shm://{out.name}"),
        fastipc.bridge(f"unix://{path}", subject) as from_clients,
    ):
        socks = [socket.socket(socket.AF_UNIX) for _ in range(3)]  # fds made before the limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers = [os.open(os.devnull, os.O_RDONLY)]  # take every free fd below the highest
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        while fillers[-1] < highest:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))  # no new fd anywhere
        try:
            for s in socks:
                s.connect(path)  # waits in the backlog: the bridge's accept() gets EMFILE
            time.sleep(0.5)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for fd in fillers:
                os.close(fd)
        for s in socks:
            s.close()
        with fastipc.Channel.connect(f"unix://{path}") as late:
            late.send(b"late")
            assert out.recv(timeout=10) == b"late"
        assert from_clients.running and from_clients.error is None
    assert from_clients.stats.forwarded == 1, from_clients.stats
    out.close()


def _fd_of_listening_socket(port: int) -> socket.socket:
    """This process's listening tcp socket on ``port`` (a dup of it)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
        except OSError:
            continue  # the listing's own fd
        s = socket.socket(fileno=os.dup(int(name)))
        try:
            if (
                s.type == socket.SOCK_STREAM
                and s.getsockname()[1:2] == (port,)
                and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            ):
                return s
        except (OSError, IndexError, TypeError):
            pass
        s.close()
    raise AssertionError(f"no listening socket on port {port}")


def test_a_listener_that_fails_for_good_stops_the_bridge_with_the_error(
    nats_server: NatsServer,
) -> None:
    """shutdown() on the listening socket makes accept() fail (EINVAL) for good: the bridge
    must stop and say why, not run on without a listener."""
    with fastipc.bridge("tcp://127.0.0.1:0", nats_server.url("t.dead")) as br:
        port = int(br.local_url.rsplit(":", 1)[1])
        with _fd_of_listening_socket(port) as lis:
            lis.shutdown(socket.SHUT_RD)
        assert br.wait(timeout=10), "the bridge ran on without its listener"
    assert isinstance(br.error, OSError), br.error
    assert br.stats.last_error is not None and "failed" in br.stats.last_error


def test_a_client_that_left_is_forgotten(
    nats_server: NatsServer, tmp_path: os.PathLike[str]
) -> None:
    """The listener keeps no client's channel once its connection ended (each one held
    some 220 KiB: a server with short-lived clients grew without end)."""
    import gc

    path = os.path.join(tmp_path, "brief.sock")
    with fastipc.bridge(f"unix://{path}", nats_server.url("t.brief")) as br:
        _finish(
            _child(
                f"""
                import fastipc
                for i in range(100):
                    with fastipc.Channel.connect("unix://{path}") as ch:
                        ch.send(b"hi")
                """
            )
        )
        assert _eventually(lambda: br.stats.forwarded == 100, timeout=10), br.stats

        def live() -> int:
            gc.collect()
            return sum(isinstance(o, fastipc.aio.Channel) for o in gc.get_objects())

        assert _eventually(lambda: live() == 0, timeout=5), f"{live()} client channels kept"
    _accounted(br)


def test_messages_still_queued_in_nats_py_at_close_are_received_and_undelivered(
    nats_server: NatsServer, names: list[str]
) -> None:
    """A full ring nobody reads: at close, what waited in nats-py counts as received and
    undelivered, the one in hand as undelivered, so received == the sum of the outcomes."""
    out = _ring(names, 4096)  # full after a few dozen messages
    with fastipc.bridge(nats_server.url("t.full"), f"shm://{out.name}", close_timeout=0.5) as br:
        _nats_publish(nats_server, "t.full", [b"x" * 100] * 200, 0)
        assert _eventually(lambda: br.stats.received > 0), br.stats
        time.sleep(0.3)
    s = br.stats
    assert s.forwarded == len(out), (s, len(out))
    assert s.received == 200, s
    _accounted(br)
    out.close()


def _local_end(kind: str, name: str) -> fastipc.Ring | fastipc.Channel:
    """Ring ``name``, or a connection to message queue ``/name``."""
    return Ring.open(name) if kind == "shm" else fastipc.connect(f"mq:///{name}")


@pytest.mark.parametrize("kind", ["shm", "mq"])
def test_a_made_ring_or_queue_that_still_holds_messages_is_kept_at_close(
    nats_server: NatsServer, names: list[str], kind: str
) -> None:
    """Messages wait in the local endpoint while NATS is down; stopping the bridge then must
    not remove the ring or queue it made with them inside (it removes it once empty)."""
    name = new_name("nbk")
    names.append(name)
    url = f"shm://{name}?capacity=65536" if kind == "shm" else f"mq:///{name}"
    try:
        with fastipc.bridge(url, nats_server.url("t.kept"), close_timeout=0.5) as br:
            time.sleep(0.2)  # the bridge waits on the empty ring or queue
            nats_server.kill()
            assert _eventually(lambda: br.stats.disconnects >= 1), "no disconnect seen"
            with _local_end(kind, name) as producer:
                producer.send(b"w0", timeout=5)  # taken, held for the reconnect
                assert _eventually(lambda: br.stats.received == 1), br.stats
                for i in range(1, 11):
                    producer.send(b"w%d" % i, timeout=5)  # these wait in the ring or queue
            time.sleep(0.3)
        assert br.stats.received == 1 and br.stats.undelivered == 1, br.stats
        with _local_end(kind, name) as left:  # still there, messages and all
            got = [left.recv(timeout=5) for _ in range(10)]
        assert got == [b"w%d" % i for i in range(1, 11)]
    finally:
        if kind == "mq":
            try:
                os.unlink(f"/dev/mqueue/{name}")
            except FileNotFoundError:
                pass


def test_ctrl_c_while_the_cli_bridge_is_still_connecting_stops_it_at_once(
    names: list[str],
) -> None:
    """A server that accepts but never greets keeps the bridge connecting: Ctrl-C must not
    wait out --connect-timeout, and is a clean stop (status 0), not a failure."""
    try:
        import nats  # noqa: F401
    except ImportError:
        _missing("nats-py is not installed (pip install 'fastipc[nats]')")
    name = new_name("nbcc")
    names.append(name)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastipc",
                "bridge",
                f"shm://{name}?capacity=65536",
                f"nats://127.0.0.1:{port}/t.cc",
                "--connect-timeout",
                "30",
            ],
            env=child_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)  # started, and connecting
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the CLI bridge waited out --connect-timeout after SIGINT")
    assert time.monotonic() - start < 5, "the CLI bridge waited out --connect-timeout"
    assert proc.returncode == 0, err
    assert not shm_entries(name)


def test_a_request_still_waiting_for_its_reply_at_close_is_counted(
    nats_server: NatsServer, tmp_path: os.PathLike[str]
) -> None:
    """Both bridges of a request/reply pair close while a request waits for a server that
    never answers: each counts it (undelivered), and no task is left behind."""
    client_side = os.path.join(tmp_path, "ask.sock")
    server_side = os.path.join(tmp_path, "mute.sock")
    server = fastipc.serve(f"unix://{server_side}", lambda msg, peer: None).start()  # no reply
    subject = nats_server.url("t.mute")
    opts = {"request": True, "request_timeout": 30, "close_timeout": 0.5}
    try:
        responder = fastipc.bridge(subject, f"unix://{server_side}", **opts)
        requester = fastipc.bridge(f"unix://{client_side}", subject, **opts)
        with responder, requester, fastipc.Channel.connect(f"unix://{client_side}") as ch:
            ch.send(b"ask")
            assert _eventually(lambda: responder.stats.received == 1), responder.stats
    finally:
        server.close()
    for br in (requester, responder):
        s = br.stats
        assert s.received == 1 and s.undelivered == 1, s
        _accounted(br)
