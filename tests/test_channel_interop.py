"""Framing interop: a native and a python peer (separate processes) talk on one socket, both directions."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from _channel_util import (  # noqa: F401
    kids_fixture,
    no_fd_leak_fixture,
    other_backends,
    sock_dir_fixture,
    sock_url_fixture,
)
from _channel_workers import payload, seq_msg

import fastipc
from fastipc import listen

SIZES = [0, 1, 64, 1000, 65535, 65536, 65537, 250_000, 3_000_000]


@pytest.mark.parametrize("peer", other_backends())
def test_messages_round_trip_through_a_peer_of_each_backend(
    no_fd_leak: None, sock_url: str, kids: Any, peer: str
) -> None:
    with listen(sock_url) as lst:
        proc, line = kids.spawn("echo", sock_url, "single", backend=peer)
        assert line == f"ready {peer}", "the child runs the other backend"
        with lst.accept(timeout=10) as ch:
            for i, n in enumerate(SIZES):
                ch.send(payload(i, n), timeout=30)
                assert ch.recv(timeout=30) == payload(i, n), (
                    f"{fastipc.BACKEND} -> {peer} -> back, {n} bytes"
                )
            r, w = os.pipe()
            ch.send(b"with a pipe", fds=[w], timeout=30)
            data, fds = ch.recv_with_fds(timeout=30)
            assert data == b"with a pipe" and len(fds) == 1
            os.write(fds[0], b"via two processes")
            os.close(fds[0])
            os.close(w)
            assert os.read(r, 100) == b"via two processes"
            os.close(r)
        assert kids.wait(proc, 20) == 0, kids.stderr(proc)


@pytest.mark.parametrize("peer", other_backends())
def test_batches_round_trip_through_a_peer_of_each_backend(
    sock_url: str, kids: Any, peer: str
) -> None:
    msgs = [seq_msg(i, 8 + (i * 13) % 500) for i in range(50_000)]
    with listen(sock_url) as lst:
        proc, _ = kids.spawn("echo", sock_url, "many", backend=peer)
        with lst.accept(timeout=10) as ch:
            got: list[bytes] = []
            t = threading.Thread(target=lambda: ch.send_many(msgs, timeout=60))
            t.start()
            while len(got) < len(msgs):
                got += ch.recv_many(4096, timeout=30)
            t.join(60)
            assert got == msgs
        assert kids.wait(proc, 20) == 0, kids.stderr(proc)


@pytest.mark.parametrize("peer", other_backends())
@pytest.mark.parametrize("seed", [1, 2])
def test_a_random_mix_of_calls_round_trips_through_a_peer(
    no_fd_leak: None, sock_url: str, kids: Any, peer: str, seed: int
) -> None:
    """Single sends (some with fds, some long), batches with long items among short ones,
    and every receive form, interleaved at random, through an echo peer of each backend."""
    import random

    rnd = random.Random(seed)
    sizes = [0, 1, 8, 64, 200, 4096, 16384, 16385, 65536, 65537, 300_000]
    plan: list[tuple[bytes, bool]] = []  # (message, carries an fd)
    ops: list[tuple[str, list[tuple[bytes, bool]]]] = []
    for i in range(300):
        if rnd.random() < 0.6:
            item = (seq_msg(i, 8 + rnd.choice(sizes)), rnd.random() < 0.2)
            ops.append(("send", [item]))
            plan.append(item)
        else:
            batch = [
                (seq_msg(i * 1000 + k, 8 + rnd.choice(sizes)), False)
                for k in range(rnd.randint(1, 40))
            ]
            ops.append(("send_many", batch))
            plan.extend(batch)
    r, w = os.pipe()
    with listen(sock_url) as lst:
        proc, _ = kids.spawn("echo", sock_url, "single", backend=peer)
        with lst.accept(timeout=10) as ch:

            def send_all() -> None:
                for op, items in ops:
                    if op == "send":
                        data, with_fd = items[0]
                        ch.send(data, fds=[w] if with_fd else (), timeout=30)
                    else:
                        ch.send_many([d for d, _ in items], timeout=30)

            t = threading.Thread(target=send_all)
            t.start()
            i = 0
            while i < len(plan):
                how = rnd.choice(["recv", "recv_many", "recv_into", "recv_with_fds"])
                if how == "recv_many":
                    got = [(m, None) for m in ch.recv_many(rnd.randint(1, 50), timeout=30)]
                elif how == "recv_into":
                    buf = bytearray(400_000)
                    n = ch.recv_into(buf, timeout=30)
                    got = [(bytes(buf[:n]), None)]
                elif how == "recv_with_fds":
                    data, fds = ch.recv_with_fds(timeout=30)
                    for fd in fds:
                        os.close(fd)
                    got = [(data, len(fds))]
                else:
                    got = [(ch.recv(timeout=30), None)]
                for data, nfds in got:
                    want, with_fd = plan[i]
                    assert data == want, f"message {i}: {len(data)} bytes, expected {len(want)}"
                    if nfds is not None:
                        assert nfds == (1 if with_fd else 0), f"message {i}: {nfds} fds"
                    i += 1
            t.join(30)
            assert not t.is_alive()
        assert kids.wait(proc, 20) == 0, kids.stderr(proc)
    os.close(r)
    os.close(w)
