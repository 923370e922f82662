"""Channels between processes: a pair handed to a spawned child, batches at volume with self-checking messages."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from typing import Any

import pytest
from _channel_util import no_fd_leak_fixture  # noqa: F401
from _channel_workers import check_seq_msg, mp_batch_sender, mp_echo, payload

from fastipc import Channel, Closed


@pytest.fixture
def spawn() -> Any:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # once per process, and it keeps an fd: not a leak
    return multiprocessing.get_context("spawn")


def test_a_pair_crosses_spawn_and_carries_messages_and_fds(spawn: Any, no_fd_leak: None) -> None:
    a, b = Channel.pair()
    p = spawn.Process(target=mp_echo, args=(b,))
    p.start()
    b.close()  # the child has its own copy
    with a:
        assert a.peer_credentials()[0] == os.getpid()  # a socketpair's creds are its creator's
        for i, n in enumerate([0, 10, 100_000, 2_000_000]):
            a.send(payload(i, n), timeout=30)
            assert a.recv(timeout=30) == payload(i, n)
        r, w = os.pipe()
        a.send(b"fd", fds=[w], timeout=30)
        data, fds = a.recv_with_fds(timeout=30)
        assert data == b"fd" and len(fds) == 1
        os.write(fds[0], b"round trip")
        os.close(fds[0])
        os.close(w)
        assert os.read(r, 100) == b"round trip"
        os.close(r)
        a.shutdown("write")
        with pytest.raises(Closed):
            a.recv(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    p.close()


def test_300k_small_messages_in_batches_arrive_in_order(spawn: Any) -> None:
    a, b = Channel.pair()
    count = 300_000
    p = spawn.Process(target=mp_batch_sender, args=(b, count, 64, 1000))
    p.start()
    b.close()
    expected = 0
    with a:
        try:
            while True:
                for msg in a.recv_many(5000, timeout=60):
                    assert len(msg) == 64
                    seq = check_seq_msg(msg)
                    assert seq == expected, f"expected message {expected}, got {seq}"
                    expected += 1
        except Closed:
            pass
    p.join(30)
    assert p.exitcode == 0
    assert expected == count


def test_a_channel_with_buffered_bytes_refuses_to_be_passed() -> None:
    a, b = Channel.pair()
    with a, b:
        a.send_many([b"1", b"2"])
        assert b.recv(timeout=1) == b"1"  # "2" now waits in b's buffer
        from multiprocessing.reduction import ForkingPickler

        with pytest.raises(ValueError, match="buffered"):
            ForkingPickler.dumps(b)
        with pytest.raises(TypeError):
            pickle.dumps(a)  # only multiprocessing can carry the socket
