"""Broadcast handles under threads and fork(): close() racing calls in other threads, a forked
child with an inherited subscriber. Each case runs in a child interpreter, so that a crash is
reported as a failure rather than taking pytest down; real threads, processes and shared memory.
"""

from __future__ import annotations

from conftest import run_python


def test_subscribers_count_racing_close_from_another_thread_never_crashes(ring_name: str) -> None:
    """``subscribers`` reads every slot (and /proc) with the GIL released: a close() from
    another thread meanwhile must not unmap the segment under it (it segfaulted)."""
    out = run_python(
        f"""
        import threading, time
        from fastipc import Broadcast

        name = {ring_name!r}
        pub = Broadcast.create(name, 4096, subscribers=64)
        subs = [Broadcast.subscribe(name) for _ in range(60)]
        odd = []
        for trial in range(100):
            p = Broadcast.open(name)
            started = threading.Event()

            def count():
                try:
                    while True:
                        n = p.subscribers
                        if n != 60:
                            odd.append(n)
                        started.set()
                except ValueError as exc:  # the handle is closed: the only way out
                    assert "closed" in str(exc), exc
                    started.set()

            t = threading.Thread(target=count)
            t.start()
            started.wait(10)
            time.sleep(0.001)
            p.close()
            t.join(10)
            assert not t.is_alive()
        assert not odd, odd
        for s in subs:
            s.close()
        pub.close()
        print("done")
        """
    )
    assert out.stdout.strip() == "done"
