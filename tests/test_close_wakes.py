"""close() from another thread wakes a call blocked on the same handle (docs/architecture.md, "Handles and threads").

The blocked call must raise ``ValueError(... closed)`` or ``Closed`` soon
after the close (within its wait slice), never hang, never return a
fabricated message, never crash. Each case runs in a child interpreter so
that a crash is reported as a failure rather than taking pytest down; the
child gives the blocked thread 10 s (a hang bound, not a timing check).
"""

from __future__ import annotations

import pytest
from conftest import new_name, run_python

_PRELUDE = """
import threading, time, sys
import fastipc
from fastipc import Channel, Closed, Ring

outcome = []

def blocked(call):
    def run():
        try:
            got = call()
        except (ValueError, Closed) as exc:
            if isinstance(exc, ValueError) and "closed" not in str(exc):
                outcome.append(f"wrong ValueError: {exc}")
            else:
                outcome.append("ok")
        except BaseException as exc:
            outcome.append(f"raised {type(exc).__name__}: {exc}")
        else:
            outcome.append(f"returned {got!r:.80}")
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t

def blocked_quietly(call):
    def run():
        try:
            call()
        except (ValueError, Closed):
            pass
    return run

def fill(h, size=4000):
    while True:
        try:
            h.send(bytes(size), timeout=0)
        except fastipc.Timeout:
            return

def check(t, close):
    time.sleep(0.3)  # let it block
    assert t.is_alive(), f"the call did not block: {outcome}"
    close()
    t.join(10)
    assert not t.is_alive(), "the blocked call did not wake after close()"
    assert outcome == ["ok"], outcome
    print("done")
"""

RING_CASES = {
    "recv": """
        r = Ring.create(NAME, 4096)
        t = blocked(lambda: r.recv())
        check(t, r.close)
    """,
    "recv_view": """
        r = Ring.create(NAME, 4096)
        def view():
            with r.recv_view() as v:
                return bytes(v)
        t = blocked(view)
        check(t, r.close)
    """,
    "send_full": """
        r = Ring.create(NAME, 4096)
        fill(r)
        t = blocked(lambda: r.send(bytes(4000)))
        check(t, r.close)
    """,
    "reserve_full": """
        r = Ring.create(NAME, 4096)
        fill(r)
        def res():
            with r.reserve(4000) as v:
                v[:] = bytes(4000)
        t = blocked(res)
        check(t, r.close)
    """,
    # A second handle waits for the consumer side while the first one holds it.
    "recv_behind_other_handle": """
        r = Ring.create(NAME, 4096)
        other = Ring.open(NAME)
        holder = threading.Thread(target=blocked_quietly(r.recv), daemon=True)
        holder.start()
        time.sleep(0.2)
        t = blocked(lambda: other.recv())
        check(t, other.close)
        r.close()
        holder.join(10)
    """,
}

CHANNEL_CASES = {
    "recv": """
        a, b = Channel.pair()
        t = blocked(lambda: a.recv())
        check(t, a.close)
        b.close()
    """,
    "recv_into": """
        a, b = Channel.pair()
        buf = bytearray(100)
        t = blocked(lambda: a.recv_into(buf))
        check(t, a.close)
        b.close()
    """,
    # Part of a long message arrived: the reader waits in the middle of it.
    "recv_mid_message": """
        a, b = Channel.pair(handoff_min=0)
        import struct
        b._socket().send(struct.pack("<II", 1 << 20, 0) + bytes(100_000))
        t = blocked(lambda: a.recv())
        check(t, a.close)
        b.close()
    """,
    "send_full": """
        a, b = Channel.pair(handoff_min=0)
        fill(a, 8)  # small frames go out whole or not at all
        t = blocked(lambda: a.send(bytes(65536)))
        check(t, a.close)
        b.close()
    """,
}


def _run(body: str, name: str) -> None:
    import textwrap

    code = _PRELUDE + f"NAME = {name!r}\n" + textwrap.dedent(body)
    code += "\ntry:\n    Ring.unlink_name(NAME)\nexcept FileNotFoundError:\n    pass\n"
    proc = run_python(code, timeout=60)
    assert "done" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", sorted(RING_CASES))
def test_ring_close_wakes_blocked_call(case: str) -> None:
    _run(RING_CASES[case], new_name("cw"))


@pytest.mark.parametrize("case", sorted(CHANNEL_CASES))
def test_channel_close_wakes_blocked_call(case: str) -> None:
    _run(CHANNEL_CASES[case], new_name("cw"))
