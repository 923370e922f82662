"""A signal handler that receives on the handle whose receive it interrupted.

A native Ring (and Broadcast subscriber) handle receives into a buffer of
the handle and slices the message out after the C call; CPython runs signal
handlers right after a C call returns. A handler receiving on the same
handle there refilled that buffer, and the interrupted receive returned the
handler's bytes cut to its own message's length: one message fabricated,
one lost (110 of 30,000 here). The python backend's handle holds a lock
for the call: the handler's receive waited for it forever.

Now such a reentrant call raises RuntimeError, on both backends; a handler
firing between calls receives normally. Every message must arrive whole
and once, whoever receives it, and nothing may hang.
"""

from __future__ import annotations

import pytest
from conftest import run_python

_BODY = """
import signal
from fastipc import Broadcast, Empty, Ring

N = 30000

def message(k):
    return b"%06d:" % k + bytes([k % 251]) * (k % 300)

if KIND == "ring":
    tx = rx = Ring.create(NAME, 1 << 24)
    send = tx.send
else:
    tx = Broadcast.create(NAME, 1 << 24, policy="block")
    rx = Broadcast.subscribe(NAME)
    send = tx.publish
for k in range(N):
    send(message(k), timeout=5)

got, by_handler, refused = [], [], []
inside = [False]

def handler(signum, frame):
    if inside[0]:  # the timer outruns a handler: do not nest them
        return
    inside[0] = True
    try:
        for _ in range(3):
            # No timeout while messages are surely left: a reentrant call that
            # waited for the interrupted one would hang here.
            left = N - len(got) - len(by_handler)
            timeout = None if left > 1000 else 0
            if HOW == "recv":
                by_handler.append(rx.recv(timeout=timeout))
            else:
                by_handler.extend(rx.recv_many(2, timeout=timeout))
    except Empty:
        pass
    except RuntimeError as exc:
        assert "reentrant call" in str(exc), exc
        refused.append(1)
    finally:
        inside[0] = False

signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
try:
    while True:
        try:
            if HOW == "recv":
                got.append(rx.recv(timeout=0))
            else:
                got.extend(rx.recv_many(3, timeout=0))
        except Empty:
            break
finally:
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
everything = got + by_handler
bad = [m[:12] for m in everything if m != message(int(m[:6]))]
assert not bad, f"{len(bad)} damaged messages, e.g. {bad[:3]}"
seen = sorted(int(m[:6]) for m in everything)
assert seen == list(range(N)), f"lost or duplicated: {len(seen)} received of {N}"
assert by_handler, "the handler never received between calls"
assert refused, "no handler interrupted a receive: the test did not test reentry"
print("ok", len(got), len(by_handler), len(refused))
rx.close()
if tx is not rx:
    tx.close()
(Ring if KIND == "ring" else Broadcast).unlink_name(NAME)
"""


@pytest.mark.parametrize("how", ["recv", "recv_many"])
@pytest.mark.parametrize("kind", ["ring", "broadcast"])
def test_a_handler_receiving_on_the_handle_it_interrupted_is_refused_not_served_garbage(
    ring_name: str, kind: str, how: str
) -> None:
    head = f"KIND, NAME, HOW = {kind!r}, {ring_name!r}, {how!r}\n"
    out = run_python(head + _BODY, timeout=120)
    assert out.stdout.startswith("ok"), out.stdout + out.stderr


def test_a_busy_flag_left_set_by_no_call_is_cleared(ring_name: str) -> None:
    """The state a handler raising right after the C call leaves: the ring's
    buffers marked busy, no call using them. Receives go on, and clear it."""
    import fastipc
    from fastipc import Ring

    if fastipc.BACKEND != "native":
        pytest.skip("only the native handles receive into buffers of their own")
    with Ring.create(ring_name, 4096) as r:
        r.send_many([b"one", b"two", b"three", b"four"])
        r._busy = True  # type: ignore[attr-defined]
        assert r.recv(timeout=5) == b"one"  # fresh buffers, and the flag cleared
        assert r._busy is False  # type: ignore[attr-defined]
        r._busy = True  # type: ignore[attr-defined]
        assert r.recv_many(2, timeout=5) == [b"two", b"three"]
        assert r._busy is False  # type: ignore[attr-defined]
        assert r.recv(timeout=5) == b"four"
