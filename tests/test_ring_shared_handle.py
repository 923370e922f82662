"""Two threads on one Ring handle, and a block that ends in another thread (issue 10 review).

A handle is documented as not thread-safe, but sharing one must never
corrupt the ring or leave a side locked: a second reserve()/recv_view()
block on the handle, from any thread and on either side, is refused
(RuntimeError, EDEADLK) instead of sharing the handle's hold; and a block
whose generator is finalised in another thread than the one that entered it
still lets its side go. Afterwards another process must find the ring whole
and both sides free.
"""

from __future__ import annotations

import gc
import threading
import time

from conftest import run_python

from fastipc import Empty, Full, Ring, Timeout


def _other_process_finds_both_sides_free(name: str) -> None:
    run_python(
        f"""
from fastipc import Ring
r = Ring.open({name!r})
while len(r):
    r.recv(timeout=5)
r.send(b"probe", timeout=5)
with r.reserve(3, timeout=5) as w:
    w[:] = b"abc"
assert r.recv(timeout=5) == b"probe"
with r.recv_view(timeout=5) as v:
    assert bytes(v) == b"abc"
r.close()
""",
        timeout=60,
    )


def test_reserve_and_recv_view_from_two_threads_on_one_handle(ring_name: str) -> None:
    r = Ring.create(ring_name, 4096)
    stop = threading.Event()
    unexpected: list[BaseException] = []
    counts = {"published": 0, "read": 0}

    def producer() -> None:
        while not stop.is_set():
            try:
                with r.reserve(64, timeout=0.05) as b:
                    b[:8] = b"P" * 8
                counts["published"] += 1
            except (RuntimeError, Full, Timeout):
                pass  # refused (the other thread's block is open) or no room
            except BaseException as exc:  # noqa: BLE001 - anything else is the defect
                unexpected.append(exc)
                return

    def consumer() -> None:
        while not stop.is_set():
            try:
                with r.recv_view(timeout=0.05) as v:
                    assert bytes(v[:8]) == b"P" * 8, bytes(v[:8])
                counts["read"] += 1
            except (RuntimeError, Empty, Timeout):
                pass
            except BaseException as exc:  # noqa: BLE001
                unexpected.append(exc)
                return

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    try:
        assert not unexpected, unexpected
        assert counts["published"] > 0 and counts["read"] > 0, counts
        _other_process_finds_both_sides_free(ring_name)
    finally:
        r.close()


def test_a_block_finalised_in_another_thread_lets_its_side_go(ring_name: str) -> None:
    r = Ring.create(ring_name, 4096)
    entered = threading.Event()
    box: dict[str, object] = {}

    def enter_and_abandon() -> None:
        cm = r.reserve(8)
        cm.__enter__()
        box["cm"] = cm  # the only reference left once this thread returns
        del cm
        entered.set()

    t = threading.Thread(target=enter_and_abandon)
    t.start()
    t.join(30)
    assert entered.is_set()
    del box["cm"]  # the generator is finalised here, in the main thread
    gc.collect()
    try:
        with r.reserve(8, timeout=5) as w:  # this handle is usable again
            w[:] = b"12345678"
        _other_process_finds_both_sides_free(ring_name)
    finally:
        r.close()
