"""A Channel closed while another thread is inside a call, views kept past their block,
received fds whose close() would block, and a peer that breaks the framing: never a crash.

docs/architecture.md, "Threads, lifetimes, interrupts" and "Errors". The thread tests run in
a child interpreter, so a crash (SIGSEGV, heap corruption) fails the test
instead of killing the run.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time

import pytest
from conftest import run_python

import fastipc
from fastipc import Channel, FastIPCError, ProtocolError


def test_close_from_another_thread_wakes_a_blocked_recv_and_fabricates_nothing() -> None:
    out = run_python(
        """
        import random, threading, time
        from fastipc import Channel, Closed
        rng = random.Random(1)
        woke = 0
        for i in range(30):
            a, b = Channel.pair()
            got = []
            def reader():
                try:
                    got.append(b.recv())
                except BaseException as exc:
                    got.append(exc)
            t = threading.Thread(target=reader)
            t.start()
            time.sleep(rng.random() * 0.01)
            b.close()
            t.join(5)
            assert not t.is_alive(), "recv still blocked 5 s after close()"
            assert len(got) == 1 and isinstance(got[0], (ValueError, Closed)), got
            woke += 1
            a.close()
        print("woke", woke)
        """,
        timeout=60,
    )
    assert "woke 30" in out.stdout


def test_a_protocol_error_in_the_receiver_wakes_a_sender_blocked_on_a_full_socket() -> None:
    # The receiving thread's protocol error closes the channel (_fail) while
    # the sending thread is inside C, blocked on a socket the peer does not
    # read: the sender must raise, never touch freed memory.
    run_python(
        """
        import socket, threading, time
        from fastipc import Channel, Closed, ProtocolError
        for i in range(10):
            mine, peer = socket.socketpair()
            ch = Channel.from_socket(mine, handoff_min=0)
            sent = []
            def sender():
                try:
                    while True:
                        ch.send(b"s" * 65536)
                except BaseException as exc:
                    sent.append(exc)
            t = threading.Thread(target=sender)
            t.start()
            time.sleep(0.05)                 # the socket is full by now
            peer.sendall(b"\\xff" * 16)     # garbage: the receive fails
            try:
                ch.recv(timeout=5)
                raise AssertionError("garbage was delivered")
            except ProtocolError:
                pass
            t.join(5)
            assert not t.is_alive(), "the sender stayed blocked after the channel closed"
            assert isinstance(sent[0], (ValueError, Closed)), sent
            peer.close()
        """,
        timeout=60,
    )


def test_threads_closing_channels_at_random_moments_never_crash() -> None:
    # The "Threads" guard for Channels: one sender and one receiver
    # per end (the documented model), a third thread closing at random.
    out = run_python(
        """
        import random, struct, threading, time
        from fastipc import Channel, Closed, Timeout
        rng = random.Random(3)
        bad, rounds = [], 0
        def message(seq):
            return struct.pack("<Q", seq) + bytes([seq % 251]) * (seq * 97 % 150_000)
        def sender(ch):
            seq = 0
            try:
                while True:
                    if seq % 5 == 0:
                        ch.send_many([message(seq)], timeout=0.05)
                    else:
                        ch.send(message(seq), timeout=0.05)
                    seq += 1
            except (ValueError, Closed, Timeout, OSError):
                pass
        def receiver(ch):
            try:
                while True:
                    k = rng.randrange(3)
                    if k == 0:
                        ms = [ch.recv(timeout=0.05)]
                    elif k == 1:
                        with ch.recv_view(timeout=0.05) as v:
                            ms = [bytes(v)]
                    else:
                        ms = ch.recv_many(20, timeout=0.05)
                    for m in ms:
                        seq = struct.unpack_from("<Q", m)[0]
                        if m != message(seq):
                            bad.append(seq)
            except (ValueError, Closed, Timeout, OSError):
                pass
        end = time.monotonic() + 4
        while time.monotonic() < end:
            a, b = Channel.pair(handoff_min=16384, handoff_area=1 << 20)
            ts = [threading.Thread(target=sender, args=(a,)), threading.Thread(target=receiver, args=(b,)),
                  threading.Thread(target=sender, args=(b,)), threading.Thread(target=receiver, args=(a,))]
            for t in ts:
                t.start()
            for ch in rng.sample([a, b], 2):
                time.sleep(rng.random() * 0.02)
                ch.close()
            for t in ts:
                t.join(10)
                assert not t.is_alive(), "a thread did not return after its channel was closed"
            rounds += 1
        assert not bad, bad[:10]
        print("rounds", rounds)
        """,
        timeout=120,
    )
    assert "rounds" in out.stdout


def test_a_handed_off_view_kept_past_its_block_and_the_close_never_faults() -> None:
    out = run_python(
        """
        import gc
        from fastipc import Channel
        a, b = Channel.pair(handoff_min=4096, handoff_area=1 << 16)
        a.send(b"v" * 20000)
        with b.recv_view(timeout=5) as view:
            part = view[100:200]
            whole = memoryview(view)
        b.close()
        a.close()
        gc.collect()
        print("read", len(bytes(part)), len(bytes(whole)))
        del part, whole
        gc.collect()
        print("ok")
        """,
        timeout=30,
    )
    assert "ok" in out.stdout


def test_a_received_socket_whose_close_would_linger_does_not_stall_the_receiver() -> None:
    # A peer passes a TCP socket with SO_LINGER (60 s) and unsent data, and
    # drops its own copy: the receiver's recv() discards it (no keep), and a
    # close() of it would block for the linger time. It must return promptly
    # (and never holding the GIL: another thread keeps running).
    listener = socket.socket()
    # A tiny receive buffer at the far end keeps the data unsent (else the
    # kernel drains it into an autotuned buffer and close() never lingers).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    tcp = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()  # never reads: data stays unsent
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 60))
    tcp.setblocking(False)
    try:
        while True:
            tcp.send(b"x" * 65536)
    except BlockingIOError:
        pass
    tcp.setblocking(True)
    a, b = Channel.pair()
    ticks = [0]
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    try:
        a.send(b"here", fds=[tcp])
        tcp.close()  # the channel now holds the last reference
        a.send(b"after")
        t.start()
        start = time.monotonic()
        assert b.recv(timeout=30) == b"here"
        assert b.recv(timeout=30) == b"after"
        took = time.monotonic() - start
        before = ticks[0]
        time.sleep(0.05)
        assert ticks[0] > before
        # A hang detector, not a speed test: the linger time is 60 s.
        assert took < 30, f"recv() waited {took:.1f} s on a lingering close"
    finally:
        stop.set()
        if t.is_alive():
            t.join(5)
        a.close()
        b.close()
        server_side.close()
        listener.close()


def test_garbage_on_a_channel_is_a_protocol_error_that_names_the_framing() -> None:
    for garbage, hint in ((b"\xff" * 16, False), (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True)):
        mine, peer = socket.socketpair()
        ch = Channel.from_socket(mine)
        try:
            peer.sendall(garbage)
            with pytest.raises(ProtocolError) as info:
                ch.recv(timeout=5)
            exc = info.value
            assert isinstance(exc, OSError) and isinstance(exc, FastIPCError)
            assert exc.errno == errno.EPROTO
            assert "channel closed" in str(exc)
            assert ("length framing" in str(exc)) == hint, str(exc)
            assert ch.closed
        finally:
            ch.close()
            peer.close()
    assert fastipc.ProtocolError is ProtocolError


def test_fds_in_the_middle_of_a_frame_are_a_protocol_error_and_all_are_closed() -> None:
    mine, peer = socket.socketpair()
    ch = Channel.from_socket(mine, handoff_min=0)
    r, w = os.pipe()
    try:
        before = len(os.listdir("/proc/self/fd"))
        # A long frame, read straight into its destination; fds ride on a
        # byte in its middle, where no message starts.
        peer.sendall(struct.pack("<II", 200_000, 0) + bytes(100_000))
        with pytest.raises(fastipc.Timeout):
            ch.recv(timeout=0.05)
        peer.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", w))])
        with pytest.raises(ProtocolError):
            ch.recv(timeout=5)
        assert len(os.listdir("/proc/self/fd")) <= before
    finally:
        ch.close()
        peer.close()
        os.close(r)
        os.close(w)
