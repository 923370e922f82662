"""Child processes of the broadcast tests: ``python -m _bcast_workers ROLE NAME ...``.

Each prints ``ready`` once set up, then reports on stdout (one line per fact)
so the test can follow along; the tests SIGKILL them at will. Messages are the
self-checking ones of ``_workers`` (producer id, seq, crc), so a torn or
stale message is detected.
"""

from __future__ import annotations

import os
import sys
import time

from _workers import BadMessage, make_msg, parse_msg

from fastipc import Broadcast, Closed, Lagged


def _say(*words: object) -> None:
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


def sub_count(name: str, count: str) -> None:
    """Subscribe, say ready, receive ``count`` messages; say each publisher's seqs are in order."""
    with Broadcast.subscribe(name) as sub:
        _say("ready")
        last: dict[int, int] = {}
        for _ in range(int(count)):
            producer, seq = parse_msg(sub.recv(timeout=60))
            if seq != last.get(producer, -1) + 1:
                raise BadMessage(f"producer {producer}: seq {seq} after {last.get(producer)}")
            last[producer] = seq
        _say("done", " ".join(f"{p}:{s}" for p, s in sorted(last.items())))


def sub_hold(name: str) -> None:
    """Subscribe, say ready and never receive (a subscriber that stalls, to be killed)."""
    sub = Broadcast.subscribe(name)
    _say("ready", sub._slot)
    time.sleep(3600)


def sub_view_hold(name: str) -> None:
    """Subscribe, wait for one message and hold a view of it open forever (to be killed)."""
    sub = Broadcast.subscribe(name)
    _say("ready")
    with sub.recv_view(timeout=60) as v:
        _say("viewing", len(v))
        time.sleep(3600)


def pub_seq(name: str, producer: str, count: str, size: str) -> None:
    """Publish ``count`` self-checking messages of ``size`` bytes as ``producer``."""
    with Broadcast.open(name) as pub:
        _say("ready")
        for seq in range(int(count)):
            pub.publish(make_msg(int(producer), seq, int(size)), timeout=60)
        _say("done")


def pub_forever(name: str, size: str) -> None:
    """Publish self-checking messages as fast as possible until killed."""
    pub = Broadcast.open(name)
    _say("ready")
    seq = 0
    while True:
        pub.publish(make_msg(9, seq, int(size)), timeout=60)
        seq += 1


def sub_check_all(name: str) -> None:
    """Receive until Closed; every message must be intact (Lagged is allowed); say how many."""
    got = lagged = 0
    with Broadcast.subscribe(name) as sub:
        _say("ready")
        while True:
            try:
                parse_msg(sub.recv(timeout=60))
                got += 1
            except Lagged:
                lagged += 1
            except Closed:
                break
    _say("done", got, lagged)


ROLES = {
    "sub_count": sub_count,
    "sub_hold": sub_hold,
    "sub_view_hold": sub_view_hold,
    "pub_seq": pub_seq,
    "pub_forever": pub_forever,
    "sub_check_all": sub_check_all,
}

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    ROLES[sys.argv[1]](*sys.argv[2:])
