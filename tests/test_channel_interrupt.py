"""A signal handler that raises may interrupt a send at any instant; no damaged message may ever arrive.

A forked sender sends messages of 1-200 KB while a timer raises an exception
in it every 200 µs; after each interruption it goes on with the next message,
as a program that catches KeyboardInterrupt and carries on would. The
receiver checks every message it gets whole and intact, in order. An
interruption after part of a frame went out may close the channel (the
stream cannot be resynchronised), which ends that round (a new pair is
made for the next); it must never let a later message be spliced onto the
torn one. The Ring gets the same treatment; it has no torn state to close
over (a message is published whole or not at all), so its one round runs
for the whole time.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

import fastipc
from fastipc import Channel, Closed, Ring, Timeout

DURATION = 2.0  # seconds of interrupted sending per case
_SEQ = struct.Struct("<Q")


class Interrupted(Exception):
    pass


def message(seq: int) -> bytes:
    size = 1000 + (seq * 7919) % 200_000
    return _SEQ.pack(seq) + bytes([seq % 251]) * (size - 8)


_armed = [False]  # raise only inside a send: the harness's own loop must not be hit


def _interrupt(signum: int, frame: object) -> None:
    if _armed[0]:
        _armed[0] = False
        raise Interrupted


def _sender(ch: Channel | Ring, duration: float) -> tuple[int, int]:
    sent = interrupted = 0
    seq = 0
    signal.signal(signal.SIGALRM, _interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        msg = message(seq)
        seq += 1
        try:
            _armed[0] = True
            ch.send(msg)
            _armed[0] = False
            sent += 1
        except Interrupted:
            interrupted += 1
        except (Closed, ValueError):
            _armed[0] = False
            break  # closed after a torn frame: allowed, and the end of the run
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    return sent, interrupted


def _fork_sender(send_side: Callable[[], tuple[int, int]]) -> tuple[int, int]:
    """Fork a child that runs ``send_side()`` and writes its two counts to a pipe;
    (the child's pid, the pipe's read end). The child exits without unwinding pytest."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            first, second = send_side()
            os.write(w, f"{first} {second}".encode())
            code = 0
        except BaseException:  # noqa: BLE001 - report and exit without unwinding pytest
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _run_sender(
    send_side: Callable[[], tuple[int, int]],
    recv: Callable[[], bytes],
    close_parent: Callable[[], None],
) -> tuple[int, int, int]:
    """Fork a child running ``send_side()`` -> (sent, interrupted); take every message with ``recv``.

    ``close_parent`` drops the parent's copy of what the child sends on.
    Returns (sent, interrupted, received) after checking each message and
    the counts.
    """
    pid, r = _fork_sender(send_side)
    close_parent()
    got, last = 0, -1
    try:
        while True:
            try:
                msg = recv()
            except Closed:
                break
            except Timeout:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the sender stopped sending after {got} messages (hung?)")
            seq = _SEQ.unpack_from(msg)[0]
            assert seq > last, f"message {seq} after {last}: out of order or repeated"
            assert msg == message(seq), f"message {seq} arrived damaged ({len(msg)} bytes)"
            last = seq
            got += 1
    finally:
        _, status = os.waitpid(pid, 0)
        stats = os.read(r, 100).decode().split()
        os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"sender died: {status}"
    sent, interrupted = map(int, stats)
    # A message whose send was interrupted after it had gone out whole
    # arrives without being counted as sent.
    assert sent <= got <= sent + interrupted, f"{sent} sends completed, {got} messages arrived"
    return sent, interrupted, got


def _channel_round(handoff_min: int, duration: float) -> tuple[int, int, int]:
    """One sender process on a fresh pair until its channel closes or ``duration`` s pass."""
    a, b = Channel.pair(handoff_min=handoff_min)

    def send_side() -> tuple[int, int]:
        b.close()
        with a:
            return _sender(a, duration)

    try:
        return _run_sender(send_side, lambda: b.recv(timeout=30), a.close)
    finally:
        b.close()


@pytest.mark.parametrize("handoff_min", [0, 65536], ids=["socket", "handoff"])
def test_interrupted_sends_never_damage_the_stream(handoff_min: int) -> None:
    end = time.monotonic() + DURATION
    rounds = interrupted = got = 0
    while time.monotonic() < end:
        _, n_int, n_got = _channel_round(handoff_min, max(0.05, end - time.monotonic()))
        rounds += 1
        interrupted += n_int
        got += n_got
    assert interrupted > 0, "the timer never interrupted a send: the test proved nothing"
    assert got > 0, "no message arrived at all"


def test_interrupted_sends_never_damage_a_ring(make_ring: Any, ring_name: str) -> None:
    ring = make_ring(1 << 20)

    def send_side() -> tuple[int, int]:
        with Ring.open(ring_name) as mine:
            counts = _sender(mine, DURATION)
            mine.shutdown()
        return counts

    _, interrupted, _ = _run_sender(send_side, lambda: ring.recv(timeout=30), lambda: None)
    assert interrupted > 0, "the timer never interrupted a send: the test proved nothing"


RECEIVERS: dict[str, Callable[[Channel, bytearray], list[bytes]]] = {
    "recv": lambda ch, buf: [ch.recv(timeout=30)],
    "recv_into": lambda ch, buf: [bytes(buf[: ch.recv_into(buf, timeout=30)])],
    "recv_many": lambda ch, buf: ch.recv_many(16, timeout=30),
    "recv_with_fds": lambda ch, buf: [ch.recv_with_fds(timeout=30)[0]],
}


@pytest.mark.parametrize("how", sorted(RECEIVERS))
@pytest.mark.parametrize("handoff_min", [0, 65536], ids=["socket", "handoff"])
def test_interrupted_receives_damage_nothing(how: str, handoff_min: int) -> None:
    """The receiver is interrupted every 200 µs and carries on: messages still arrive whole, once, in order."""
    a, b = Channel.pair(handoff_min=handoff_min)
    count = 3000
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            b.close()
            with a:
                for seq in range(count):
                    a.send(message(seq) if seq % 3 else _SEQ.pack(seq) + b"s" * 56)
                a.shutdown("write")
            code = 0
        finally:
            os._exit(code)
    a.close()
    receive = RECEIVERS[how]
    # Raise only while fastipc's own code runs: an exception in this test's
    # code just after a receive returned would drop a message the library
    # did deliver (as it would with any function returning data).
    pkg = os.path.dirname(fastipc.__file__) + os.sep

    def interrupt_in_fastipc(signum: int, frame: Any) -> None:
        if _armed[0] and frame is not None and frame.f_code.co_filename.startswith(pkg):
            _armed[0] = False
            raise Interrupted

    buf = bytearray(256 * 1024)
    got: list[bytes] = []
    interrupted = 0
    signal.signal(signal.SIGALRM, interrupt_in_fastipc)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        while True:
            try:
                _armed[0] = True
                msgs = receive(b, buf)
                _armed[0] = False
            except Interrupted:
                interrupted += 1
                continue
            except Closed:
                _armed[0] = False
                break
            got.extend(msgs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        _armed[0] = False
        b.close()
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"sender died: {status}"
    assert interrupted > 0, "the timer never interrupted a receive: the test proved nothing"
    last = -1
    for msg in got:
        seq = _SEQ.unpack_from(msg)[0]
        assert seq > last, f"message {seq} after {last}: out of order or repeated"
        want = message(seq) if seq % 3 else _SEQ.pack(seq) + b"s" * 56
        assert msg == want, f"message {seq} arrived damaged ({len(msg)} bytes)"
        last = seq
    # A message is lost only when the exception ends the very receive that
    # took it, after C handed it over and before Python returned it (as with
    # any call returning data): at most what one call returns per interruption.
    lost = count - len(got)
    per_call = 16 if how == "recv_many" else 1
    assert 0 <= lost <= interrupted * per_call, (
        f"{lost} of {count} messages lost, {interrupted} interruptions"
    )


_HANDLER_SEQ = 1 << 63  # a handler's messages are numbered from here


def handler_message(k: int) -> bytes:
    return _SEQ.pack(_HANDLER_SEQ + k) + b"h" * 40


@pytest.mark.parametrize("handoff_min", [0, 65536], ids=["socket", "handoff"])
def test_a_signal_handler_sending_on_the_channel_it_interrupted_never_splices_frames(
    handoff_min: int,
) -> None:
    """A handler that sends on the channel whose send it interrupted (same thread, same side).

    Its send must not be written into the middle of the interrupted frame:
    it goes out whole when the side is free, or raises RuntimeError (a
    reentrant call, as io.BufferedWriter says) when the interrupted call holds
    the side; it must never wait for itself (a hang).
    """
    a, b = Channel.pair(handoff_min=handoff_min)
    duration = DURATION / 2

    def send_side() -> tuple[int, int]:
        b.close()
        counts = {"sent": 0, "refused": 0}

        def send_from_handler(signum: int, frame: object) -> None:
            if not _armed[0]:
                return
            try:
                a.send(handler_message(counts["sent"]), timeout=5)
                counts["sent"] += 1
            except RuntimeError as exc:
                assert "reentrant" in str(exc), exc
                counts["refused"] += 1

        sent = 0
        signal.signal(signal.SIGALRM, send_from_handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        end = time.monotonic() + duration
        seq = 0
        try:
            while time.monotonic() < end:
                _armed[0] = True
                a.send(message(seq))
                _armed[0] = False
                seq += 1
                sent += 1
        finally:
            _armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            a.close()
        assert counts["refused"] > 0, "no handler found the send busy: the test proved nothing"
        assert counts["sent"] > 0, "no handler's message went out"
        return sent, counts["sent"]

    pid, r = _fork_sender(send_side)
    a.close()
    last, got, handler_got = -1, 0, 0
    try:
        while True:
            try:
                msg = b.recv(timeout=30)
            except Closed:
                break
            seq = _SEQ.unpack_from(msg)[0]
            if seq >= _HANDLER_SEQ:
                assert msg == handler_message(seq - _HANDLER_SEQ), f"handler message damaged: {msg[:16]!r}"
                handler_got += 1
                continue
            assert seq == last + 1, f"message {seq} after {last}"
            assert msg == message(seq), f"message {seq} arrived damaged ({len(msg)} bytes)"
            last = seq
            got += 1
    finally:
        b.close()
        _, status = os.waitpid(pid, 0)
        stats = os.read(r, 100).decode().split()
        os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"sender failed: {status}"
    sent, from_handler = map(int, stats)
    assert (got, handler_got) == (sent, from_handler)
