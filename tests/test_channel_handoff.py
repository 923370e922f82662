"""Large messages through the shared-memory hand-off: whole, in order, across processes and backends, nothing left behind."""

from __future__ import annotations

import array
import ctypes
import itertools
import os
import threading
import time
from typing import Any

import pytest
from _channel_util import (  # noqa: F401
    fd_count,
    kids_fixture,
    no_fd_leak_fixture,
    other_backends,
    sock_dir_fixture,
    sock_url_fixture,
)
from _channel_workers import payload
from conftest import interrupted_at, run_python

from fastipc import Channel, Closed, Timeout, listen

AREA_NAME = "memfd:fastipc-channel"
MIB = 1 << 20
# Default hand-off: 64 KiB up to 2 MiB (half the 4 MiB area) go through it.
SIZES = [65535, 65536, 100_000, MIB, 2 * MIB, 2 * MIB + 1, 3_000_000, 10, 70_000]


def areas_mapped(pid: int | str = "self") -> int:
    """How many hand-off areas process ``pid`` has mapped (from /proc/PID/maps)."""
    with open(f"/proc/{pid}/maps") as f:
        return sum(AREA_NAME in line for line in f)


def in_thread(fn: Any) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("peer", other_backends())
def test_large_messages_cross_processes_through_the_area_both_ways(
    no_fd_leak: None, sock_url: str, kids: Any, peer: str
) -> None:
    with listen(sock_url) as lst:
        proc, line = kids.spawn("echo", sock_url, "single", backend=peer)
        assert line == f"ready {peer}"
        with lst.accept(timeout=10) as ch:
            assert areas_mapped() == 0
            for rnd in range(3):
                for i, n in enumerate(SIZES):
                    msg = payload(rnd * 100 + i, n)
                    ch.send(msg, timeout=30)
                    got = ch.recv(timeout=30)
                    assert got == msg, f"round {rnd}, {n} bytes through a {peer} echo"
            # Ours to send through and the child's that we receive from; the
            # child maps the same two.
            assert areas_mapped() == 2
            assert areas_mapped(proc.pid) == 2
        assert kids.wait(proc, 20) == 0, kids.stderr(proc)
    assert areas_mapped() == 0, "closing the channel unmaps both areas"


def test_a_first_hand_off_send_interrupted_at_any_instant_leaks_no_fd() -> None:
    """The first large send makes the area (a memfd): a raising signal handler at each
    instant of it, in turn, must leave no fd open once both ends are closed (the python
    backend's area leaked its memfd when the handler raised right after memfd_create,
    or after the mapping, before the area was kept)."""
    msg = b"h" * (128 * 1024)
    start = fd_count()
    for n in itertools.count(1):
        a, b = Channel.pair()
        with a, b:
            done = not interrupted_at(lambda a=a: a.send(msg, timeout=5), n)
            if done or not a.closed:
                a.send(b"after", timeout=5)
                got = b.recv(timeout=5)
                assert got in (msg, b"after"), n
                if got == msg:
                    assert b.recv(timeout=5) == b"after", n
        assert fd_count() == start, f"an fd leaked when interrupted at instant {n}"
        if done:
            break


def test_with_the_hand_off_off_everything_goes_through_the_socket(no_fd_leak: None) -> None:
    a, b = Channel.pair(handoff_min=0)
    with a, b:
        msg = payload(1, MIB)
        t = in_thread(lambda: [a.send(msg, timeout=30) for _ in range(5)])
        for _ in range(5):
            assert b.recv(timeout=30) == msg
        t.join()
        assert areas_mapped() == 0


def test_every_receive_call_takes_handed_off_messages(no_fd_leak: None) -> None:
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    with a, b:
        msgs = [payload(i, 5000 + 997 * i) for i in range(12)]
        t = in_thread(lambda: [a.send(m, timeout=30) for m in msgs])
        assert b.recv(timeout=10) == msgs[0]
        buf = bytearray(32_000)
        n = b.recv_into(buf, timeout=10)
        assert bytes(buf[:n]) == msgs[1]
        data, fds = b.recv_with_fds(timeout=10)
        assert data == msgs[2] and fds == []
        got: list[bytes] = []
        while len(got) < 9:
            got += b.recv_many(4, timeout=10)
        assert got == msgs[3:]
        t.join()
        assert areas_mapped() == 2


def test_messages_with_fds_and_small_ones_keep_their_order_among_handed_off_ones() -> None:
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    r, w = os.pipe()
    with a, b:
        a.send(payload(0, 9000))
        a.send(b"small")
        a.send(payload(1, 9000), fds=[w])
        a.send(payload(2, 9000))
        a.send_many([payload(3, 9000), b"batched"])
        assert b.recv(timeout=5) == payload(0, 9000)
        assert b.recv(timeout=5) == b"small"
        data, fds = b.recv_with_fds(timeout=5)
        assert data == payload(1, 9000) and len(fds) == 1
        os.write(fds[0], b"!")
        assert os.read(r, 1) == b"!"
        for fd in (*fds, r, w):
            os.close(fd)
        rest: list[bytes] = []
        while len(rest) < 3:
            rest += b.recv_many(10, timeout=5)
        assert rest == [payload(2, 9000), payload(3, 9000), b"batched"]


def test_a_receiver_that_falls_behind_gets_every_message_whole_and_in_order() -> None:
    # A 64 KiB area fills at once: the sender waits for room, then goes
    # inline; the stream interleaves both and nothing may be lost.
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    count = 1500
    sizes = [4096 + (i * 7919) % 28_000 for i in range(count)]
    with a, b:
        t = in_thread(lambda: [a.send(payload(i, n), timeout=60) for i, n in enumerate(sizes)])
        for i, n in enumerate(sizes):
            if i % 100 == 0:
                time.sleep(0.01)
            got = b.recv(timeout=30)
            assert len(got) == n and got == payload(i, n), f"message {i}"
        t.join()


def test_filling_the_area_and_the_socket_loses_and_repeats_nothing() -> None:
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    with a, b:
        sent = 0
        with pytest.raises(Timeout):
            while True:
                a.send(payload(sent, 20_000), timeout=0.2)
                sent += 1
        assert sent > 3, "the area alone holds three"
        for i in range(sent):
            assert b.recv(timeout=5) == payload(i, 20_000), f"message {i}"
        if a.closed:
            # The Timeout came in the middle of an inline frame: the peer
            # sees the cut, never a partial message.
            with pytest.raises(Closed):
                b.recv(timeout=5)
        else:
            a.send(payload(sent, 20_000), timeout=5)
            assert b.recv(timeout=5) == payload(sent, 20_000)


def test_a_channel_closed_with_messages_in_the_area_leaves_nothing_behind(
    no_fd_leak: None,
) -> None:
    before = fd_count()
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    for i in range(3):
        a.send(payload(i, 10_000))
    assert areas_mapped() == 1  # the receiver has not looked yet
    b.close()
    a.close()
    assert areas_mapped() == 0
    assert fd_count() == before


def test_the_listener_hands_its_settings_to_accepted_channels(sock_url: str) -> None:
    with (
        listen(sock_url, handoff_min=0) as lst,
        Channel.connect(sock_url, timeout=5, handoff_min=4096, handoff_area=8192) as c,
        lst.accept(timeout=5) as s,
    ):
        assert (s.handoff_min, c.handoff_min, c.handoff_area) == (0, 4096, 8192)
        msg = payload(7, 4096)
        c.send(msg)
        s.send(msg)
        assert s.recv(timeout=5) == msg and c.recv(timeout=5) == msg
        assert areas_mapped() == 2  # only the client sends through one


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"handoff_min": "1"}, TypeError, "handoff_min must be an int"),
        ({"handoff_min": True}, TypeError, "handoff_min must be an int"),
        ({"handoff_area": 1.5}, TypeError, "handoff_area must be an int"),
        ({"handoff_min": -1}, ValueError, "handoff_min must be >= 0"),
        ({"handoff_area": 5000}, ValueError, "multiple of 4096"),
        ({"handoff_area": 0}, ValueError, "multiple of 4096"),
        ({"handoff_area": 2 << 30}, ValueError, "multiple of 4096 bytes between"),
        ({"handoff_min": 8192, "handoff_area": 12288}, ValueError, "at least twice"),
    ],
)
def test_bad_hand_off_settings_are_refused_by_name(
    sock_url: str, kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        Channel.pair(**kwargs)
    with pytest.raises(error, match=text):
        listen(sock_url, **kwargs)
    assert not os.path.exists(sock_url[len("unix://") :])


def test_a_channel_that_mapped_the_peers_area_refuses_to_be_passed() -> None:
    # A process it went to would not have the area the peer's next
    # descriptors point into.
    from multiprocessing.reduction import ForkingPickler

    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    with a, b:
        ForkingPickler.dumps(a)  # a sent through its own area: its peer has it, fine
        ForkingPickler.dumps(b)  # b has received nothing yet
        a.send(payload(1, 10_000))
        assert b.recv(timeout=5) == payload(1, 10_000)
        with pytest.raises(ValueError, match="hand-off area"):
            ForkingPickler.dumps(b)


@pytest.mark.parametrize(
    "make",
    [
        lambda data: array.array("b", data),
        lambda data: memoryview(bytearray(data)).cast("c"),
        lambda data: (ctypes.c_char * len(data)).from_buffer_copy(data),
    ],
    ids=["array-b", "memoryview-c", "ctypes-char"],
)
def test_byte_buffers_of_any_one_byte_format_are_sent_and_received_into(make: Any) -> None:
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    with a, b:
        for n in (100, 10_000):  # through the socket, then through the area
            msg = payload(n, n)
            a.send(make(msg), timeout=5)
            assert b.recv(timeout=5) == msg
            a.send(msg, timeout=5)
            dst = make(bytes(n))
            assert b.recv_into(dst, timeout=5) == n
            assert bytes(memoryview(dst).cast("B")) == msg


def test_recv_view_lends_a_handed_off_message_in_place_until_the_block_exits() -> None:
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    with a, b:
        big = payload(1, 40_000)
        a.send(big)
        with b.recv_view(timeout=5) as v:
            assert v.readonly and v.nbytes == len(big) and v == big
            # Its room stays taken: 40 KB of a 64 KB area, so the next
            # 30 KB message cannot fit and comes through the socket, intact.
            a.send(payload(2, 30_000), timeout=5)
            assert b.recv(timeout=5) == payload(2, 30_000)
            assert v == big, "the lent message was not overwritten"
        with pytest.raises(ValueError):
            v[0]  # released at the end of the block
        # Room is back: messages keep flowing through the area.
        for i in range(10):
            a.send(payload(i, 30_000), timeout=5)
            with b.recv_view(timeout=5) as v:
                assert v == payload(i, 30_000)


def test_recv_view_of_a_message_that_came_through_the_socket_is_a_view_of_a_copy() -> None:
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    with a, b:
        a.send(b"small")
        a.send(payload(3, 40_000), fds=[0])  # fds: never handed off
        with b.recv_view(timeout=5) as v:
            assert v.readonly and v == b"small"
        with b.recv_view(timeout=5) as v:
            assert v == payload(3, 40_000)
        with pytest.raises(Timeout), b.recv_view(timeout=0.05):
            pass


def test_a_view_dropped_before_its_block_started_does_not_wedge_the_channel() -> None:
    # What an exception landing between the lend and the handle recording it
    # leaves: the backend lent a view nobody will release. (Driven through
    # the backend's hook, as the instant cannot be hit on purpose.)
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    with a, b:
        a.send(payload(1, 30_000))
        got: list[Any] = []
        b._take_view(5, got)  # lent, then lost before the handle recorded it
        b._view = None
        assert got[0] == payload(1, 30_000)
        del got
        for i in range(2, 12):  # 300 KB through a 64 KB area: its room must come back
            a.send(payload(i, 30_000), timeout=5)
            with b.recv_view(timeout=5) as v:
                assert v == payload(i, 30_000)


def test_one_recv_view_at_a_time_and_closing_inside_the_block_is_safe(no_fd_leak: None) -> None:
    a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
    a.send(payload(1, 10_000))
    a.send(payload(2, 10_000))
    with b.recv_view(timeout=5) as v:
        with pytest.raises(ValueError, match="already open"), b.recv_view(timeout=5):
            pass
        assert v == payload(1, 10_000)
        b.close()
    with pytest.raises(ValueError):
        v[0]
    a.close()
    assert areas_mapped() == 0


@pytest.mark.parametrize("peer", other_backends())
def test_recv_view_takes_messages_from_a_peer_of_each_backend(
    sock_url: str, kids: Any, peer: str
) -> None:
    with listen(sock_url) as lst:
        proc, _ = kids.spawn("echo", sock_url, "single", backend=peer)
        with lst.accept(timeout=10) as ch:
            for i, n in enumerate([10, 100_000, MIB, 70_000, 3_000_000]):
                ch.send(payload(i, n), timeout=30)
                with ch.recv_view(timeout=30) as v:
                    assert v == payload(i, n), f"{n} bytes"
        assert kids.wait(proc, 20) == 0, kids.stderr(proc)


def test_where_no_area_can_be_made_large_messages_go_through_the_socket() -> None:
    # RLIMIT_FSIZE caps the memfd's size too: making the area fails with
    # EFBIG (SIGXFSZ ignored), and the channel must keep to the socket.
    out = run_python(
        """
import os, resource, signal, threading
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
from fastipc import Channel
a, b = Channel.pair()
msg = os.urandom(1 << 20)
t = threading.Thread(target=lambda: [a.send(msg, timeout=10) for _ in range(3)])
t.start()
ok = all(b.recv(timeout=10) == msg for _ in range(3))
t.join()
maps = open("/proc/self/maps").read().count("memfd:fastipc-channel")
print(ok, maps)
"""
    )
    assert out.stdout.split() == ["True", "0"], out.stderr


def test_threads_sharing_a_channel_with_recv_view_never_see_a_reused_view() -> None:
    """One thread reads views (holding each a while), another receives copies, a third
    keeps trying recv_view too. A second recv_view must raise ValueError, never release
    the first one's view (the native backend let its room go, so the sender rewrote what
    the first thread was still reading), and a block's end racing the other thread's
    receive must never lose or reorder a release (the sender would stall or turn
    hand-off off)."""
    out = run_python(
        """
        import threading, time
        from fastipc import Channel, Timeout

        N, SIZE = 600, 20_000
        a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 17)
        got, bad, errors = [], [], []
        done = threading.Event()

        def body(i):
            return i.to_bytes(4, "little") * (SIZE // 4)

        def check(data, how):
            i = int.from_bytes(bytes(data[:4]), "little")
            if len(data) != SIZE or data != body(i):
                bad.append((how, i))
            got.append(i)

        def viewer(pause):
            while not done.is_set():
                try:
                    with b.recv_view(timeout=0.05) as v:
                        time.sleep(pause)  # the sender goes on meanwhile
                        check(v, "view")
                except ValueError as exc:
                    if "already open" not in str(exc):
                        errors.append(repr(exc))
                except Timeout:
                    pass
                except Exception as exc:
                    errors.append(repr(exc))
                    return

        def copier():
            while not done.is_set():
                try:
                    check(b.recv(timeout=0.05), "copy")
                except Timeout:
                    pass
                except Exception as exc:
                    errors.append(repr(exc))
                    return

        threads = [threading.Thread(target=viewer, args=(0.001,)),
                   threading.Thread(target=viewer, args=(0,)), threading.Thread(target=copier)]
        for t in threads:
            t.start()
        for i in range(N):
            a.send(body(i), timeout=30)
        deadline = time.monotonic() + 30
        while len(got) < N and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        done.set()
        for t in threads:
            t.join(10)
        assert not errors, errors[:3]
        assert not bad, bad[:5]
        assert sorted(got) == list(range(N)), (len(got), N)
        print("done")
        """
    )
    assert out.stdout.strip() == "done"


@pytest.mark.parametrize("at", ["call", "return"])
def test_a_recv_view_block_ending_never_frees_the_next_threads_view(at: str) -> None:
    """The end of a recv_view block gives its room back: a thread switch right there (forced
    here: the block's thread is paused as its give-back starts) used to let a second
    thread's recv_view lend its view and record its release first, which the first
    thread's give-back then made, freeing the room of a view still being read (the sender
    rewrote it); paused as it returns, the python backend's outer clean-up cleared the second
    thread's view mark. The second recv_view must fail ("already open") or keep its view
    whole."""
    out = run_python(
        f"""
        import sys, threading, time
        from fastipc import Channel

        MSG = 64 * 1024
        a, b = Channel.pair(handoff_min=MSG, handoff_area=2 * MSG)
        stop = threading.Event()
        paused, tried = threading.Event(), threading.Event()
        result = []
        first_done = threading.Event()

        def sender():
            i = 0
            while not stop.is_set():
                try:
                    a.send(bytes([i % 251]) * MSG, timeout=0.2)
                    i += 1
                except Exception:
                    pass

        def pause_at_give_back(frame, event, arg):
            if event == {at!r} and frame.f_code.co_name in ("give_back", "_release_lent"):
                paused.set()
                tried.wait(2)

        def first():
            sys.setprofile(pause_at_give_back)
            with b.recv_view(timeout=5):
                pass
            sys.setprofile(None)

        def second():
            paused.wait(5)
            try:
                with b.recv_view(timeout=5) as v:
                    before = bytes(v)
                    tried.set()
                    first_done.wait(5)
                    time.sleep(0.3)  # the sender runs, and the main thread receives
                    result.append("whole" if bytes(v) == before else "rewritten")
            except ValueError as exc:
                tried.set()
                result.append("refused" if "already open" in str(exc) else repr(exc))

        threads = [threading.Thread(target=f) for f in (sender, second, first)]
        for t in threads[:2]:
            t.start()
        time.sleep(0.1)
        threads[2].start()
        threads[2].join(10)
        first_done.set()
        for _ in range(5):  # copies: their releases must wait for the open view
            try:
                b.recv(timeout=0.5)
            except Exception:
                pass
        threads[1].join(10)
        stop.set()
        threads[0].join(10)
        assert paused.is_set(), "the hook never fired (give-back renamed?): nothing was tested"
        print(result)
        """
    )
    assert out.stdout.strip() in ("['refused']", "['whole']"), out.stdout
