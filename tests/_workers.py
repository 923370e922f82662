"""Code that runs in the child processes of the ring tests (no pytest import, so children start fast).

Used two ways: as a module of functions that ``multiprocessing`` (spawn) workers
call, and as a script, ``python -m _workers ROLE ...`` (with ``tests/`` on
``PYTHONPATH``), for children the tests must SIGKILL or SIGINT at will.

Messages the children exchange are self-checking: ``<u32 producer><u32 length>
<u64 seq>`` + a body derived from (producer, seq) + ``<u32 crc32>`` of all that
precedes it, so a torn, truncated or stale message is detected on receipt.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import time
import zlib

from fastipc import Closed, Ring, Timeout

__all__ = [
    "HEAD",
    "LOG_REC",
    "MIN_SIZE",
    "BadMessage",
    "make_msg",
    "parse_msg",
]

HEAD = struct.Struct("<IIQ")
CRC = struct.Struct("<I")
MIN_SIZE = HEAD.size + CRC.size  # 20 bytes
#: Consumer log record: producer id, seq. One os.write per received batch, so a
#: SIGKILL never leaves half a record behind a complete one.
LOG_REC = struct.Struct("<IQ")
#: Producer log record: seq committed (send returned).
SEQ_REC = struct.Struct("<Q")


class BadMessage(Exception):
    """A received message failed its self-check (torn, truncated, stale or foreign)."""


def _body(producer: int, seq: int, n: int) -> bytes:
    if n <= 0:
        return b""
    seed = struct.pack("<IQI", producer, seq, 0x5EED) * 2  # 32 bytes, unique per message
    reps = n // len(seed) + 1
    return (seed * reps)[:n]


def make_msg(producer: int, seq: int, size: int) -> bytes:
    """A self-checking message of exactly ``size`` bytes (>= MIN_SIZE)."""
    assert size >= MIN_SIZE
    head = HEAD.pack(producer, size, seq) + _body(producer, seq, size - MIN_SIZE)
    return head + CRC.pack(zlib.crc32(head))


def parse_msg(msg: bytes | memoryview) -> tuple[int, int]:
    """Return (producer, seq) of a message made by make_msg, or raise BadMessage."""
    msg = bytes(msg)
    if len(msg) < MIN_SIZE:
        raise BadMessage(f"message of {len(msg)} bytes is shorter than {MIN_SIZE}")
    producer, size, seq = HEAD.unpack_from(msg)
    if size != len(msg):
        raise BadMessage(
            f"length field {size} != actual {len(msg)} (producer {producer} seq {seq})"
        )
    (crc,) = CRC.unpack_from(msg, len(msg) - CRC.size)
    if crc != zlib.crc32(msg[: -CRC.size]):
        raise BadMessage(f"bad checksum (producer {producer} seq {seq} size {size})")
    if msg[HEAD.size : -CRC.size] != _body(producer, seq, size - MIN_SIZE):
        raise BadMessage(f"bad body (producer {producer} seq {seq})")
    return producer, seq


def pattern(seq: int, size: int) -> bytes:
    """Deterministic, seq-dependent content of ``size`` bytes (for the simple tests)."""
    if size == 0:
        return b""
    seed = bytes(((seq * 131 + i * 7) ^ (seq >> 8)) & 0xFF for i in range(257))
    return (seed * (size // 257 + 1))[:size]


# ---------------------------------------------------------------------------
# multiprocessing (spawn) workers: each receives a pickled Ring
# ---------------------------------------------------------------------------


def mp_producer(ring: Ring, producer: int, count: int, mode: str, seed: int) -> None:
    """Send ``count`` self-checking messages (sizes 20..400) using ``mode``."""
    rnd = random.Random(seed)
    seq = 0
    with ring:
        while seq < count:
            if mode == "send":
                ring.send(make_msg(producer, seq, rnd.randint(MIN_SIZE, 400)), timeout=30)
                seq += 1
            elif mode == "send_many":
                k = min(rnd.randint(1, 16), count - seq)
                batch = [make_msg(producer, seq + i, rnd.randint(MIN_SIZE, 400)) for i in range(k)]
                assert ring.send_many(batch, timeout=30) == k
                seq += k
            elif mode == "reserve":
                msg = make_msg(producer, seq, rnd.randint(MIN_SIZE, 400))
                with ring.reserve(len(msg), timeout=30) as mv:
                    mv[:] = msg
                seq += 1
            else:
                raise ValueError(mode)


def _consume_one(ring: Ring, mode: str, buf: bytearray, timeout: float | None) -> list[bytes]:
    if mode == "recv":
        return [ring.recv(timeout=timeout)]
    if mode == "recv_many":
        msgs = ring.recv_many(8, timeout=timeout)
        if not 1 <= len(msgs) <= 8:
            raise BadMessage(f"recv_many(8) returned {len(msgs)} messages")
        return msgs
    if mode == "recv_into":
        n = ring.recv_into(buf, timeout=timeout)
        return [bytes(buf[:n])]
    if mode == "recv_view":
        with ring.recv_view(timeout=timeout) as mv:
            if not mv.readonly:
                raise BadMessage("recv_view yielded a writable view")
            data = bytes(mv)
        return [data]
    raise ValueError(mode)


def mp_consumer(ring: Ring, mode: str, out_path: str) -> None:
    """Receive until Closed; write the (producer, seq) list, in order, as JSON."""
    got: list[tuple[int, int]] = []
    buf = bytearray(ring.capacity)
    with ring:
        while True:
            try:
                msgs = _consume_one(ring, mode, buf, timeout=60)
            except Closed:
                break
            got.extend(parse_msg(m) for m in msgs)
    with open(out_path, "w") as f:
        json.dump(got, f)


def mp_echo(ring_in: Ring, ring_out: Ring, count: int) -> None:
    """Receive ``count`` messages on ring_in and send each back reversed on ring_out."""
    with ring_in, ring_out:
        for _ in range(count):
            ring_out.send(ring_in.recv(timeout=20)[::-1], timeout=20)


# ---------------------------------------------------------------------------
# script workers (python -m _workers ...): killed, interrupted, measured
# ---------------------------------------------------------------------------


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def run_producer(name: str, producer: int, mode: str, log: str, count: int, seed: int) -> int:
    """Send self-checking messages forever (count < 0) or ``count`` of them.

    After each send returns, append the seq(s) to ``log``: a seq in the log was
    committed. Timeouts of 10 s per call (only reached if the ring is broken).
    """
    rnd = random.Random(seed)
    ring = Ring.open(name)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _ready()
    seq = 0
    tmo = 10.0
    try:
        while count < 0 or seq < count:
            if mode == "send":
                ring.send(make_msg(producer, seq, rnd.randint(MIN_SIZE, 200)), timeout=tmo)
                os.write(fd, SEQ_REC.pack(seq))
                seq += 1
            elif mode == "send_many":
                k = rnd.randint(1, 6)
                if count >= 0:
                    k = min(k, count - seq)
                batch = [make_msg(producer, seq + i, rnd.randint(MIN_SIZE, 200)) for i in range(k)]
                ring.send_many(batch, timeout=tmo)
                os.write(fd, b"".join(SEQ_REC.pack(seq + i) for i in range(k)))
                seq += k
            elif mode == "reserve":
                msg = make_msg(producer, seq, rnd.randint(MIN_SIZE, 200))
                half = len(msg) // 2
                with ring.reserve(len(msg), timeout=tmo) as mv:
                    mv[:half] = msg[:half]
                    mv[half:] = msg[half:]
                os.write(fd, SEQ_REC.pack(seq))
                seq += 1
            else:
                raise ValueError(mode)
    except Closed:
        pass
    return 0


def run_consumer(name: str, consumer: int, mode: str, log: str) -> int:
    """Receive until Closed, appending (producer, seq) records to ``log``.

    A message that fails its check is logged with producer 0xFFFFFFFF and the
    process exits 3 after printing why.
    """
    ring = Ring.open(name)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    buf = bytearray(ring.capacity)
    _ready()
    while True:
        try:
            msgs = _consume_one(ring, mode, buf, timeout=None)
        except Closed:
            return 0
        recs = []
        for m in msgs:
            try:
                recs.append(LOG_REC.pack(*parse_msg(m)))
            except BadMessage as exc:
                os.write(fd, b"".join(recs) + LOG_REC.pack(0xFFFFFFFF, 0))
                print(f"consumer {consumer}: {exc}: {bytes(m)[:64]!r}", file=sys.stderr)
                return 3
        os.write(fd, b"".join(recs))


def run_hold(name: str, what: str, size: int) -> int:
    """Enter reserve(size) (writing half of a message) or recv_view(), say so, then sleep."""
    ring = Ring.open(name)
    if what == "reserve":
        msg = make_msg(999, 0, size)
        with ring.reserve(size, timeout=10) as mv:
            mv[: size // 2] = msg[: size // 2]
            _print("holding")
            time.sleep(60)
    elif what == "recv_view":
        with ring.recv_view(timeout=10) as mv:
            _print(f"holding {bytes(mv[: HEAD.size]).hex()}")
            time.sleep(60)
    else:
        raise ValueError(what)
    return 1


def run_blocked(name: str, what: str, size: int, timeout: float) -> int:
    """Say "ready" then do one blocking call; print the monotonic time it returned and its outcome."""
    ring = Ring.open(name)
    _print("ready")
    try:
        if what == "send":
            ring.send(make_msg(777, 0, size), timeout=timeout)
            out = "sent"
        elif what == "recv":
            out = "recv {}:{}".format(*parse_msg(ring.recv(timeout=timeout)))
        elif what == "recv_many":
            out = "recv_many " + ",".join(
                "{}:{}".format(*parse_msg(m)) for m in ring.recv_many(4, timeout=timeout)
            )
        else:
            raise ValueError(what)
    except Closed:
        out = "closed"
    except Timeout:
        out = "timeout"
    _print(f"{time.monotonic():.6f} {out}")
    return 0


def run_corruption_trials(prefix: str, spec_path: str) -> int:
    """Create a ring per trial, corrupt its segment file as the spec says, then call everything.

    Every call must work or raise one of the allowed errors within timeout + 1 s;
    close() and unlink must work. Prints each trial before running it (so a
    crash names the culprit) and "FAIL ..." lines; exits 1 if any call failed.
    """
    import traceback

    from fastipc import IncompatibleSegment, MessageTooLarge

    allowed = (IncompatibleSegment, Closed, Timeout, MessageTooLarge, OSError)
    tmo = 0.5
    with open(spec_path) as f:
        trials = json.load(f)
    failures = 0
    for i, trial in enumerate(trials):
        name = f"{prefix}_{i}"
        _print(f"trial {i} {json.dumps(trial)}")
        ring = Ring.create(name, trial.get("capacity", 2000))
        cap = ring.capacity
        rnd = random.Random(trial.get("seed", i))
        for k in range(37 + i % 11):  # move head and tail around the data area
            ring.send(pattern(k, rnd.randint(0, 250)), timeout=1)
            ring.recv(timeout=1)
        for k in range(32):  # and leave enough in that no receive below has to wait
            ring.send(pattern(k, rnd.randint(0, 24)), timeout=1)
        path = f"/dev/shm/fastipc.{name}"
        size = os.path.getsize(path)
        header = min(4096, size)
        fd = os.open(path, os.O_RDWR)
        try:
            kind = trial["kind"]
            if kind == "word":
                os.pwrite(fd, struct.pack("<Q", trial["value"]), trial["offset"])
            elif kind == "words":
                for _ in range(trial["count"]):
                    off = rnd.randrange(0, header // 8) * 8
                    val = rnd.choice(
                        [0, 2**64 - 1, rnd.getrandbits(64), rnd.randrange(0, 4 * size), 2**63]
                    )
                    os.pwrite(fd, struct.pack("<Q", val), off)
            elif kind == "data":
                lo = header if size > header else 0
                for _ in range(trial["count"]):
                    off = rnd.randrange(lo, size)
                    os.pwrite(fd, os.urandom(min(rnd.randint(1, 64), size - off)), off)
            elif kind == "everything":
                os.pwrite(fd, os.urandom(size), 0)
            else:
                raise ValueError(kind)
        finally:
            os.close(fd)

        def view_call(r: Ring) -> int:
            with r.recv_view(timeout=tmo) as mv:
                return len(bytes(mv))

        def reserve_call(r: Ring) -> int:
            with r.reserve(9, timeout=tmo) as mv:
                mv[:] = b"r" * 9
            return 0

        def many_call(r: Ring) -> int:
            msgs = r.recv_many(8, timeout=tmo)
            if not 1 <= len(msgs) <= 8:
                raise AssertionError(f"recv_many(8) returned {len(msgs)} messages")
            for m in msgs:
                check_len(len(m))
            return len(msgs)

        def check_len(n: int, cap: int = cap) -> int:
            if not 0 <= n <= cap:
                raise AssertionError(f"a message of {n} bytes from a ring of capacity {cap}")
            return n

        calls = [
            ("len", lambda r: len(r)),
            ("recv", lambda r: check_len(len(r.recv(timeout=tmo)))),
            ("recv_into", lambda r, cap=cap: check_len(r.recv_into(bytearray(cap), timeout=tmo))),
            ("recv_many", many_call),
            ("recv_view", lambda r: check_len(view_call(r))),
            ("send", lambda r: r.send(b"s" * 17, timeout=tmo)),
            ("send_many", lambda r: r.send_many([b"m" * 5] * 3, timeout=tmo)),
            ("reserve", reserve_call),
            ("recv", lambda r: check_len(len(r.recv(timeout=tmo)))),
            ("shutdown", lambda r: r.shutdown()),
            ("recv after shutdown", lambda r: check_len(len(r.recv(timeout=tmo)))),
            ("send after shutdown", lambda r: r.send(b"s", timeout=tmo)),
        ]

        def attempt(what: str, fn: object, *args: object, i: int = i) -> object:
            nonlocal failures
            t0 = time.monotonic()
            result = None
            try:
                result = fn(*args)  # type: ignore[operator]
            except allowed:
                pass
            except Exception:  # noqa: BLE001 - anything else is the failure being looked for
                failures += 1
                _print(f"FAIL trial {i} {what}: unexpected {traceback.format_exc()!r}")
            took = time.monotonic() - t0
            if took > tmo + 1.0:
                failures += 1
                _print(f"FAIL trial {i} {what}: took {took:.2f} s (timeout {tmo})")
            return result

        for what, fn in calls[:9]:
            attempt(what, fn, ring)
        other = attempt("Ring.open", Ring.open, name)
        if isinstance(other, Ring):
            for what, fn in calls:
                attempt("reopened " + what, fn, other)
            attempt("reopened close", other.close)
        for what, fn in calls[9:]:
            attempt(what, fn, ring)
        try:
            ring.close()
            ring.close()
            ring.unlink()
            if os.path.exists(path):
                raise AssertionError(f"{path} still exists after unlink()")
        except Exception:  # noqa: BLE001 - close/unlink must not raise anything
            failures += 1
            _print(f"FAIL trial {i} close/unlink: {traceback.format_exc()!r}")
    _print(f"done {len(trials)} trials, {failures} failures")
    return 1 if failures else 0


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    role, name, *rest = argv
    if role == "producer":
        producer, mode, log, count, seed = rest
        return run_producer(name, int(producer), mode, log, int(count), int(seed))
    if role == "consumer":
        consumer, mode, log = rest
        return run_consumer(name, int(consumer), mode, log)
    if role == "hold":
        what, size = rest
        return run_hold(name, what, int(size))
    if role == "blocked":
        what, size, timeout = rest
        return run_blocked(name, what, int(size), None if timeout == "None" else float(timeout))
    if role == "corrupt":
        (spec,) = rest
        return run_corruption_trials(name, spec)
    raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
