"""Smoke test of an installed fastipc (run by scripts/test_wheel.sh as ``python -I``).

Checks that the copy imported is the installed one (not a source tree), that
the backend is the one FASTIPC_BACKEND names (``auto``: native, with no
warning), and round trips: a Ring, a Channel pair (small messages, a batch
and a large message that takes the shared-memory hand-off, i.e. memfd), a
Channel over a Unix socket, and a TCP server with a client. Leaves nothing
in /dev/shm.
"""

from __future__ import annotations

import os
import sys
import warnings


def main() -> None:
    wanted = os.environ.get("FASTIPC_BACKEND", "auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fastipc
    where = os.path.dirname(fastipc.__file__)
    assert "site-packages" in where, f"imported from {where}, not an installed copy"
    assert os.path.dirname(where) != os.getcwd(), where
    expect = "native" if wanted == "auto" else wanted
    assert fastipc.BACKEND == expect, (fastipc.BACKEND, expect)
    if wanted == "auto":
        assert not caught, [str(w.message) for w in caught]
    if expect == "native":
        from fastipc import _native, _native_fast

        for mod in (_native, _native_fast):
            assert mod.__file__ and mod.__file__.endswith(".abi3.so"), mod.__file__

    from fastipc import Channel, Ring

    name = f"whlsmoke{os.getpid()}"
    r = Ring.create(name, 1 << 16)
    try:
        w = Ring.open(name)
        w.send(b"hello", timeout=5)
        assert r.recv(timeout=5) == b"hello"
        w.send_many([b"a", b"bb", b"ccc"])
        assert r.recv_many(10, timeout=5) == [b"a", b"bb", b"ccc"]
        with w.reserve(3) as view:
            view[:] = b"xyz"
        with r.recv_view(timeout=5) as view:
            assert bytes(view) == b"xyz"
        w.close()
    finally:
        r.close()
        Ring.unlink_name(name)
    left = [f for f in os.listdir("/dev/shm") if name in f]
    assert not left, left

    a, b = Channel.pair()
    with a, b:
        a.send(b"ping")
        assert b.recv(timeout=5) == b"ping"
        a.send_many([b"x"] * 100)
        got: list[bytes] = []
        while len(got) < 100:
            got += b.recv_many(100, timeout=5)
        assert got == [b"x"] * 100
        big = os.urandom(1 << 20)  # past handoff_min: the memfd area
        a.send(big, timeout=5)
        assert b.recv(timeout=5) == big

    with fastipc.listen(f"unix://@{name}") as srv:
        ch = Channel.connect(f"unix://@{name}")
        peer = srv.accept(timeout=5)
        with ch, peer:
            ch.send(b"over unix")
            assert peer.recv(timeout=5) == b"over unix"

    server = fastipc.serve("tcp://127.0.0.1:0", lambda msg, peer: msg[::-1])
    server.start()
    try:
        with fastipc.connect(server.address, timeout=5) as cli:
            assert cli.request(b"tcp round trip", timeout=5) == b"pirt dnuor pct"
    finally:
        server.close()
    print(
        f"smoke ok: fastipc {fastipc.__version__} backend={fastipc.BACKEND} "
        f"python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
