#!/usr/bin/env python3
"""Chaos driver: real processes talk through fastipc while random participants are SIGKILLed or SIGSTOPped.

Usage::

    python tools/chaos.py --transport ring|channel|tcp|unix|all --seconds N --seed S

Per transport (``all`` runs them one after the other, N seconds each) the
driver starts a set of worker processes (this same file, ``--worker ROLE``):

``ring``
    One :class:`fastipc.Ring` (made by the driver), 3 producers (``send``,
    ``send_many``, ``reserve``) and 4 consumers (``recv``, ``recv_many(8)``,
    ``recv_view``, ``recv_into``), all on that ring at once (MPMC).
``channel``
    2 pairs; in each the receiver ``fastipc.listen()``s on a socket file and
    accepts one connection at a time, the sender ``Channel.connect()``s and
    sends (``send`` / ``send_many``), reconnecting whenever its connection ends.
    Some messages are large enough (64 KiB to 300 KiB) to take the shared-memory
    hand-off path.
``tcp``, ``unix``
    One ``fastipc.serve()`` echo server (length framing) and 3 clients
    (``fastipc.connect``), each keeping 1 to 4 requests in flight and checking
    every reply against the request it answers; clients reconnect whenever
    their connection ends.

At random instants (every 0.05 to 0.4 s) a random participant is SIGKILLed
(and restarted 0 to 0.3 s later as a new incarnation: a reopened ring, a new
listener replacing the stale socket file, a restarted server on the same
address, a reconnecting client) or SIGSTOPped for 0.05 to 1.5 s and then
SIGCONTed. At the end every stopped worker is continued, the senders are
asked to finish (SIGTERM: they end their current call and exit), the
receivers drain, and the logs are checked.

Every message is ``<u32 writer><u32 connection><u64 seq><u32 length>``, a
random payload (0 bytes to 300 KiB) and a 16-byte BLAKE2b of all that
precedes it. ``writer`` is unique per incarnation of a sending process, so
a message's identity is (writer, seq) and no two sends ever share one.
Workers log what they did as fixed 28-byte records appended with one
``os.write`` each (a SIGKILL never tears one): what was committed (the send
call returned), what was received, connections made and ended, and a tick
at least every 0.3 s while their calls are returning. Every blocking call a
worker makes has a timeout of at most 1 s.

The rules (a breach of any is a *violation*; the driver exits 1 if there is one):

All transports
    * every message received is whole and intact: length field and BLAKE2b
      match (a torn, truncated or foreign message fails);
    * no worker dies by itself (every exit other than our SIGKILL, or a clean
      exit at the end, is a violation, its stderr is shown);
    * no worker's calls stop returning: a running (not stopped) worker must
      log something at least every 10 s (``HANG_S``); its calls all time out
      within 1 s, so only a hang can break this;
    * messages keep moving: summed over the moments when every participant
      of a group is up, ready and not stopped, 10 s (``STALL_S``) may not
      pass without the group's receive count rising, nor without each of its
      senders, receivers and clients moving a message of its own (so a
      restarted participant that never resumes is caught);
    * the end is clean: after SIGTERM/shutdown every worker exits 0 within
      30 s, and nothing of the run is left in /dev/shm or as a socket file.

``ring`` (messages are (writer, seq); per-writer bitmaps over all consumers)
    * never duplicated: no (writer, seq) is received twice, by one consumer or
      by two. A killed consumer never logged what it held, so a kill explains
      no duplicate;
    * never fabricated: seq <= the writer's last committed seq, plus one if
      that writer was killed (the message it was publishing when killed may
      be published whole, or not at all); ``send_many`` may publish up to the
      batch (8) unlogged messages that way;
    * in order per writer, as each consumer sees them;
    * lost (committed but never received) at most: 1 per consumer kill
      (``recv``, ``recv_view``, ``recv_into``: the message it held), 8 for
      ``recv_many(8)`` (the batch it held).
``channel`` (per connection (writer, conn); the sender logs the first seq)
    * what a receiver gets on a connection is exactly the sender's seqs on it
      in order from the first: no gap, no duplicate, nothing reordered;
    * never more than the sender committed on that connection, except, if
      the sender was killed on it, the message (``send``) or batch (up to 8,
      ``send_many``) it was sending when killed;
    * never less, unless the receiver holding the connection was killed (then
      what sat in the socket is lost with it) or, when nothing of it was
      received, a receiver of the pair died (was reaped) after the sender
      began to connect (the connection sat in a dying listener's backlog); a
      sender killed, or a send that timed out having put part of a frame out
      (the channel closes), still delivers everything committed before;
    * a ``send_many`` cut short by ``Closed`` commits ``Closed.sent`` messages
      (native). The python backend leaves ``Closed.sent`` at 0, so there the
      batch being sent when the receiver died may arrive unlogged (allowed,
      and reported as a gap of that backend);
    * the survivor of a killed peer sees ``Closed`` (receiver) or
      ``Closed``/``BrokenPipeError``/``ConnectionResetError`` (sender), never
      another error.
``tcp``/``unix`` (each client checks its own replies)
    * every reply is whole and equals the oldest outstanding request of that
      connection: never fabricated, never duplicated, never reordered;
    * the server checks every request it gets is intact;
    * a connection may end only if the server process it was connected to
      (the client asks its pid, ``?pid``) was killed; its outstanding requests
      are then the explained losses. Nothing else may end one.

A summary line per transport is printed: messages, kills, stops, restarts,
explained losses, violations, seconds. Logs are kept with ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any, ClassVar

# ---- messages -------------------------------------------------------------------
MHEAD = struct.Struct("<IIQI")  # writer, conn, seq, total length
DIGEST = 16
MIN_SIZE = MHEAD.size + DIGEST


class BadMessage(Exception):
    """A received message failed its self-check."""


def make_msg(rng: random.Random, writer: int, conn: int, seq: int, payload: int) -> bytes:
    size = MIN_SIZE + payload
    head = MHEAD.pack(writer, conn, seq, size) + rng.randbytes(payload)
    return head + hashlib.blake2b(head, digest_size=DIGEST).digest()


def parse_msg(msg: bytes) -> tuple[int, int, int]:
    """(writer, conn, seq) of an intact message, else BadMessage saying what is wrong."""
    if len(msg) < MIN_SIZE:
        raise BadMessage(f"{len(msg)} bytes, shorter than the {MIN_SIZE}-byte minimum")
    writer, conn, seq, size = MHEAD.unpack_from(msg)
    if size != len(msg):
        raise BadMessage(
            f"writer {writer} conn {conn} seq {seq}: {len(msg)} bytes, header says {size}"
        )
    if hashlib.blake2b(msg[:-DIGEST], digest_size=DIGEST).digest() != msg[-DIGEST:]:
        raise BadMessage(f"writer {writer} conn {conn} seq {seq} ({size} bytes): checksum mismatch")
    return writer, conn, seq


def payload_size(rng: random.Random, big: int) -> int:
    """Mostly small, some medium, about 2 % large (``big`` bytes at most)."""
    x = rng.random()
    if x < 0.02:
        return rng.randint(big // 2, big)
    if x < 0.12:
        return rng.randint(4096, 32768)
    return rng.randint(0, 2048)


# ---- worker logs ----------------------------------------------------------------
REC = struct.Struct("<B3xIIQQ")  # kind, a, b, seq, t_ns (CLOCK_MONOTONIC, shared by all processes)
READY, TICK, SENT, RECV, CONN, END, BAD, DONE, ACK = range(1, 10)
# END reasons
END_CLEAN, END_PEER, END_TORN, END_OTHER = range(4)
TICK_S = 0.3


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.last = 0.0

    @staticmethod
    def rec(kind: int, a: int = 0, b: int = 0, seq: int = 0, t: int = 0) -> bytes:
        return REC.pack(kind, a, b, seq, t or time.monotonic_ns())

    def write(self, *recs: bytes) -> None:
        if recs:
            os.write(self.fd, b"".join(recs))
            self.last = time.monotonic()

    def beat(self) -> None:
        if time.monotonic() - self.last >= TICK_S:
            self.write(self.rec(TICK))

    def bad(self, what: str) -> None:
        sys.stderr.write(f"VIOLATION: {what}\n")
        sys.stderr.flush()
        self.write(self.rec(BAD))


# ---- workers ----------------------------------------------------------------------
_stop = [False]


def _on_term(signum: int, frame: object) -> None:
    _stop[0] = True


def w_ring_producer(log: Log, a: dict[str, Any]) -> None:
    from fastipc import Ring, Timeout

    rng = random.Random(a["seed"])
    writer, mode = a["writer"], a["mode"]
    ring = Ring.open(a["name"])
    log.write(log.rec(READY))
    seq = 0
    pending: list[bytes] = []
    while not _stop[0]:
        if not pending:
            k = rng.randint(1, 8) if mode == "send_many" else 1
            pending = [
                make_msg(rng, writer, 0, seq + i, payload_size(rng, a["big"])) for i in range(k)
            ]
        try:
            if mode == "send":
                ring.send(pending[0], timeout=1.0)
                n = 1
            elif mode == "send_many":
                n = ring.send_many(pending, timeout=1.0)
            else:
                with ring.reserve(len(pending[0]), timeout=1.0) as view:
                    view[:] = pending[0]
                n = 1
        except Timeout as exc:
            n = getattr(exc, "sent", 0) or 0
        if n:
            log.write(*(log.rec(SENT, writer, 0, seq + i) for i in range(n)))
            seq += n
            del pending[:n]
        else:
            log.beat()
    log.write(log.rec(DONE, writer, 0, seq))
    ring.close()


def w_ring_consumer(log: Log, a: dict[str, Any]) -> None:
    from fastipc import Closed, Ring, Timeout

    mode = a["mode"]
    ring = Ring.open(a["name"])
    buf = bytearray(a["big"] + MIN_SIZE)
    sabotage, count = a.get("sabotage", False), 0
    log.write(log.rec(READY))
    while True:
        try:
            if mode == "recv":
                msgs = [ring.recv(timeout=1.0)]
            elif mode == "recv_many":
                msgs = ring.recv_many(8, timeout=1.0)
            elif mode == "recv_view":
                with ring.recv_view(timeout=1.0) as view:
                    msgs = [bytes(view)]
            else:
                n = ring.recv_into(buf, timeout=1.0)
                msgs = [bytes(buf[:n])]
        except Timeout:
            log.beat()
            continue
        except Closed:
            break
        recs = []
        for m in msgs:
            count += 1
            if sabotage and count == 50:  # the self-test: a damaged message must be caught
                m = m[:-1] + bytes([m[-1] ^ 1])
            try:
                w, _, seq = parse_msg(m)
            except BadMessage as exc:
                log.bad(f"ring consumer {mode}: {exc}")
                continue
            if sabotage and 150 <= count < 250:
                continue  # ... a lost one
            recs.append(log.rec(RECV, w, 0, seq))
            if sabotage and count == 100:
                recs.append(log.rec(RECV, w, 0, seq))  # ... a duplicate
        log.write(*recs)
    log.write(log.rec(DONE))
    ring.close()


def w_chan_receiver(log: Log, a: dict[str, Any]) -> None:
    from fastipc import Closed, Timeout, listen

    mode = a["mode"]
    lst = listen(a["url"])
    log.write(log.rec(READY))
    while True:
        try:
            ch = lst.accept(timeout=0.2 if _stop[0] else 1.0)
        except Timeout:
            if _stop[0]:
                break  # the senders are gone: nothing more can be waiting
            log.beat()
            continue
        log.write(log.rec(CONN))
        last = (0, 0)
        while True:
            try:
                if mode == "recv":
                    msgs = [ch.recv(timeout=1.0)]
                elif mode == "recv_many":
                    msgs = ch.recv_many(8, timeout=1.0)
                else:
                    with ch.recv_view(timeout=1.0) as view:
                        msgs = [bytes(view)]
            except Timeout:
                log.beat()
                continue
            except Closed:
                log.write(log.rec(END, last[0], last[1], END_PEER))
                break
            except Exception as exc:  # noqa: BLE001 - any other outcome is the violation
                log.bad(f"channel receiver: {type(exc).__name__}: {exc} (after writer/conn {last})")
                log.write(log.rec(END, last[0], last[1], END_OTHER))
                break
            recs = []
            for m in msgs:
                try:
                    w, c, seq = parse_msg(m)
                except BadMessage as exc:
                    log.bad(f"channel receiver {mode}: {exc}")
                    continue
                last = (w, c)
                recs.append(log.rec(RECV, w, c, seq))
            log.write(*recs)
        ch.close()
    lst.close()
    log.write(log.rec(DONE))


def w_chan_sender(log: Log, a: dict[str, Any]) -> None:
    from fastipc import Channel, Closed, Timeout

    rng = random.Random(a["seed"])
    writer, mode = a["writer"], a["mode"]
    seq, conn = 0, 0
    log.write(log.rec(READY))
    while not _stop[0]:
        t_connect = time.monotonic_ns()  # a listener killed from here on can take this connection
        try:
            ch = Channel.connect(a["url"], timeout=1.0)
        except (FileNotFoundError, ConnectionRefusedError, Timeout):
            log.beat()
            time.sleep(0.02)
            continue
        conn += 1
        log.write(log.rec(CONN, writer, conn, seq, t_connect))
        pending: list[bytes] = []
        reason = END_CLEAN
        while not _stop[0]:
            if not pending:
                k = rng.randint(1, 8) if mode == "send_many" else 1
                pending = [
                    make_msg(rng, writer, conn, seq + i, payload_size(rng, a["big"]))
                    for i in range(k)
                ]
            n = 0
            try:
                if mode == "send":
                    ch.send(pending[0], timeout=1.0)
                    n = 1
                else:
                    n = ch.send_many(pending, timeout=1.0)
            except Timeout as exc:
                n = getattr(exc, "sent", 0) or 0
                if ch.closed:
                    reason = END_TORN
            except (Closed, BrokenPipeError, ConnectionResetError) as exc:
                n = getattr(exc, "sent", 0) or 0  # a batch cut short says how many went
                reason = END_PEER
            except Exception as exc:  # noqa: BLE001
                log.bad(f"channel sender: {type(exc).__name__}: {exc}")
                reason = END_OTHER
            if n:
                log.write(*(log.rec(SENT, writer, conn, seq + i) for i in range(n)))
                seq += n
                del pending[:n]
            else:
                log.beat()
            if reason != END_CLEAN:
                seq += len(pending)  # abandoned, never reused
                break
        ch.close()
        log.write(log.rec(END, writer, conn, reason))
    log.write(log.rec(DONE, writer, conn, seq))


def w_server(log: Log, a: dict[str, Any]) -> None:
    import fastipc

    pid = str(os.getpid()).encode()

    def handler(msg: bytes, peer: object) -> bytes:
        if msg == b"?pid":
            return pid
        try:
            parse_msg(msg)
        except BadMessage as exc:
            log.bad(f"server got a bad request: {exc}")
        return msg

    srv = fastipc.serve(a["url"], handler, framing="length", max_clients=64)

    def tick() -> None:
        log.write(log.rec(TICK))
        srv.call_later(TICK_S, tick)

    srv.call_later(0, lambda: log.write(log.rec(READY)))
    srv.call_later(TICK_S, tick)
    srv.serve_forever()  # SIGTERM ends it
    srv.close()
    log.write(log.rec(DONE))


def w_client(log: Log, a: dict[str, Any]) -> None:
    import fastipc
    from fastipc import Closed, Timeout

    rng = random.Random(a["seed"])
    writer = a["writer"]
    seq, conn = 0, 0
    log.write(log.rec(READY))
    outstanding: list[tuple[int, bytes]] = []
    while True:
        if _stop[0] and not outstanding:
            break
        try:
            cli = fastipc.connect(a["url"], timeout=1.0)
            server_pid = int(cli.request(b"?pid", timeout=1.0))
        except (OSError, Timeout, Closed, ValueError):
            with contextlib.suppress(UnboundLocalError, OSError):
                cli.close()
            if _stop[0]:
                break
            log.beat()
            time.sleep(0.02)
            continue
        conn += 1
        log.write(log.rec(CONN, server_pid, conn, seq))
        window = rng.randint(1, 4)
        reason = END_CLEAN
        while True:
            try:
                while not _stop[0] and len(outstanding) < window:
                    m = make_msg(rng, writer, conn, seq, payload_size(rng, a["big"]))
                    try:
                        cli.send(m, timeout=1.0)
                    except Timeout:
                        if cli.closed:
                            raise Closed("send timed out mid-frame") from None
                        log.beat()
                        continue
                    outstanding.append((seq, m))
                    seq += 1
                if not outstanding:
                    break  # stopping, all answered
                try:
                    got = cli.recv(timeout=1.0)
                except Timeout:
                    log.beat()
                    continue
            except (Closed, BrokenPipeError, ConnectionResetError):
                reason = END_PEER
                break
            except Exception as exc:  # noqa: BLE001
                log.bad(f"client: {type(exc).__name__}: {exc}")
                reason = END_OTHER
                break
            want_seq, want = outstanding.pop(0)
            if got != want:
                try:
                    w, c, s = parse_msg(got)
                    what = f"reply is writer {w} conn {c} seq {s}, expected seq {want_seq} of writer {writer} conn {conn}"
                except BadMessage as exc:
                    what = f"reply to seq {want_seq} is damaged: {exc}"
                log.bad(f"client: {what}")
                reason = END_OTHER
                break
            log.write(log.rec(ACK, writer, conn, want_seq))
        cli.close()
        log.write(log.rec(END, server_pid, conn, reason * 1_000_000 + len(outstanding)))
        outstanding.clear()
    log.write(log.rec(DONE, writer, conn, seq))


WORKERS = {
    "ring_producer": w_ring_producer,
    "ring_consumer": w_ring_consumer,
    "chan_receiver": w_chan_receiver,
    "chan_sender": w_chan_sender,
    "server": w_server,
    "client": w_client,
}


def worker_main(role: str, args_json: str) -> int:
    a = json.loads(args_json)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    log = Log(a["log"])
    try:
        WORKERS[role](log, a)
    except BaseException:  # noqa: BLE001 - every failure of a worker is reported
        traceback.print_exc()
        log.bad(f"{role} raised")
        return 3
    return 0


# ---- the driver ---------------------------------------------------------------------
HANG_S = 10.0
STALL_S = 10.0
START_S = 30.0  # a (re)started worker must say READY within this
END_S = 30.0


class Worker:
    def __init__(self, slot: str, role: str, mode: str, group: Sequence[str]) -> None:
        self.slot, self.role, self.mode = slot, role, mode
        self.groups = list(group)
        self.proc: subprocess.Popen[bytes] | None = None
        self.inc = 0
        self.writer = 0
        self.log_path = ""
        self.err_path = ""
        self.offset = 0
        self.ready = False
        self.started = 0.0
        self.last_activity = 0.0
        self.stopped_until: float | None = None
        self.restart_at: float | None = None
        self.killed = False  # this incarnation was SIGKILLed by us
        self.done = False
        self.moved = 0  # messages this slot sent, received or had answered (all incarnations)
        self.idle = 0.0  # running time, with its whole group up, since it last moved one
        self.moved_seen = 0


class Scenario:
    """One transport's processes, events and rules; subclasses fill in the specifics."""

    name = ""

    def __init__(self, driver: Driver) -> None:
        self.d = driver
        self.workers: dict[str, Worker] = {}
        self.groups: dict[str, list[str]] = {}
        self.progress: dict[str, int] = {}
        self.messages = 0
        self.lost = 0
        self.violations: list[str] = []
        # kills: (role, writer, pid, t_ns)
        self.kills: list[tuple[str, int, int, int]] = []
        # writer -> when its process was gone (after wait(): its sockets closed), t_ns
        self.dead_at: dict[int, int] = {}

    def add(self, slot: str, role: str, mode: str, groups: Sequence[str]) -> None:
        self.workers[slot] = Worker(slot, role, mode, groups)
        for g in groups:
            self.groups.setdefault(g, []).append(slot)
            self.progress.setdefault(g, 0)

    def args(self, w: Worker) -> dict[str, Any]:
        raise NotImplementedError

    def on_record(self, w: Worker, kind: int, a: int, b: int, seq: int, t: int) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def verify(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def clean(self, ws: list[Worker]) -> bool:
        """True if messages must move among ``ws`` now: every one up, ready and running."""
        return all(self.d.alive(w) and w.ready and w.stopped_until is None for w in ws)

    def violation(self, what: str) -> None:
        self.violations.append(what)
        self.d.say(f"VIOLATION [{self.name}] {what}")


class RingScenario(Scenario):
    name = "ring"
    CAPACITY = 256 * 1024
    BIG = 100 * 1024  # > 64 KiB: a plain recv of it takes the view path
    LOSS: ClassVar[dict[str, int]] = {"recv": 1, "recv_many": 8, "recv_view": 1, "recv_into": 1}

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        from fastipc import Ring

        self.ring_name = f"chaos{os.getpid()}_{driver.rng.getrandbits(32):08x}"
        self.ring = Ring.create(self.ring_name, self.CAPACITY)
        for i, mode in enumerate(["send", "send_many", "reserve"]):
            self.add(f"prod{i}", "ring_producer", mode, ["ring"])
        for i, mode in enumerate(["recv", "recv_many", "recv_view", "recv_into"]):
            self.add(f"cons{i}", "ring_consumer", mode, ["ring"])
        self.committed: dict[int, int] = {}  # writer -> seqs committed (0..n-1)
        self.batch: dict[int, int] = {}  # writer -> most it may publish unlogged when killed
        self.seen: dict[int, bytearray] = {}
        self.last_seq: dict[
            tuple[int, int], int
        ] = {}  # (consumer writer, producer writer) -> last seq
        self.max_seen: dict[int, int] = {}

    def clean(self, ws: list[Worker]) -> bool:
        # A dead ring participant blocks nobody (its lock is taken over); a stopped one
        # may hold a lock, so: nobody stopped, and someone up on each side.
        if any(w.stopped_until is not None for w in ws):
            return False
        up = {w.role for w in ws if self.d.alive(w) and w.ready}
        return up >= {"ring_producer", "ring_consumer"}

    def args(self, w: Worker) -> dict[str, Any]:
        sabotage = self.d.sabotage and w.slot == "cons0"
        return {"name": self.ring_name, "mode": w.mode, "big": self.BIG, "sabotage": sabotage}

    def on_record(self, w: Worker, kind: int, a: int, b: int, seq: int, t: int) -> None:
        if kind == SENT:
            n = self.committed.get(a, 0)
            if seq != n:
                self.violation(
                    f"producer writer {a} logged seq {seq} after {n} commits (log out of order)"
                )
            self.committed[a] = seq + 1
            self.batch[a] = 8 if w.mode == "send_many" else 1
        elif kind == RECV:
            self.messages += 1
            self.progress["ring"] += 1
            bits = self.seen.setdefault(a, bytearray())
            if seq >= len(bits):
                bits.extend(bytes(seq + 1 - len(bits) + 4096))
            if bits[seq]:
                self.violation(
                    f"duplicate: writer {a} seq {seq} received twice (now by {w.slot} {w.mode})"
                )
            bits[seq] = 1
            self.max_seen[a] = max(self.max_seen.get(a, -1), seq)
            key = (w.writer, a)
            last = self.last_seq.get(key, -1)
            if seq <= last:
                self.violation(f"order: {w.slot} got writer {a} seq {seq} after seq {last}")
            self.last_seq[key] = seq

    def finish(self) -> None:
        d = self.d
        d.terminate([w for w in self.workers.values() if w.role == "ring_producer"])
        self.ring.shutdown()
        d.await_exit([w for w in self.workers.values() if w.role == "ring_consumer"])

    def verify(self) -> None:
        killed_writers = {wr for role, wr, _, _ in self.kills if role == "ring_producer"}
        writers = set(self.committed) | set(self.max_seen)
        for wr in sorted(writers):
            n = self.committed.get(wr, 0)
            allowed = n + (self.batch.get(wr, 8) if wr in killed_writers else 0)
            top = self.max_seen.get(wr, -1)
            if top >= allowed:
                self.violation(
                    f"fabricated: writer {wr} seq {top} received, but it committed only {n}"
                    + (" (killed)" if wr in killed_writers else "")
                )
            bits = self.seen.get(wr, bytearray())
            got = sum(bits[:n])
            self.lost += n - got
        budget = sum(
            self.LOSS[self.d.mode_of(role, wr)]
            for role, wr, _, _ in self.kills
            if role == "ring_consumer"
        )
        if self.lost > budget:
            self.violation(
                f"lost: {self.lost} committed messages never received; consumer kills explain at most {budget}"
            )

    def cleanup(self) -> None:
        from fastipc import Ring

        with contextlib.suppress(Exception):
            self.ring.close()
        with contextlib.suppress(FileNotFoundError):
            Ring.unlink_name(self.ring_name)
        left = [f for f in os.listdir("/dev/shm") if self.ring_name in f]
        if left:
            self.violation(f"left in /dev/shm: {left}")
            for f in left:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join("/dev/shm", f))


class ChannelScenario(Scenario):
    name = "channel"
    BIG = 300 * 1024  # >= 64 KiB goes through the hand-off area
    PAIRS: ClassVar[list[tuple[str, str]]] = [
        ("send", "recv_view"),
        ("send_many", "recv_many"),
        ("send", "recv"),
    ]

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        for i, (smode, rmode) in enumerate(self.PAIRS[:2]):
            self.add(f"recv{i}", "chan_receiver", rmode, [f"pair{i}"])
            self.add(f"send{i}", "chan_sender", smode, [f"pair{i}"])
        # (writer, conn) -> [first seq, committed count, t_start, ended(bool), pair]
        self.conns: dict[tuple[int, int], list[Any]] = {}
        # (writer, conn) -> [first seq received, count, receiver writer id]
        self.got: dict[tuple[int, int], list[int]] = {}
        self.batch: dict[int, int] = {}

    def url(self, pair: str) -> str:
        return f"unix://{self.d.sockdir}/ch{pair}.sock"

    def args(self, w: Worker) -> dict[str, Any]:
        return {"url": self.url(w.slot[-1]), "mode": w.mode, "big": self.BIG}

    def on_record(self, w: Worker, kind: int, a: int, b: int, seq: int, t: int) -> None:
        if w.role == "chan_sender":
            self.batch[w.writer] = 8 if w.mode == "send_many" else 1
            if kind == CONN:
                self.conns[(a, b)] = [seq, 0, t, False, w.slot[-1]]
            elif kind == SENT:
                c = self.conns[(a, b)]
                if seq != c[0] + c[1]:
                    self.violation(f"sender log: writer {a} conn {b} seq {seq} out of order")
                c[1] += 1
            elif kind == END:
                self.conns[(a, b)][3] = True
                self.conns[(a, b)].extend([seq, t])
                if seq == END_OTHER:
                    self.violation(
                        f"{w.slot} ({w.mode}): its connection ended with an unexpected error (see its stderr)"
                    )
        else:
            if kind == RECV:
                self.messages += 1
                self.progress[f"pair{w.slot[-1]}"] += 1
                g = self.got.get((a, b))
                if g is None:
                    self.got[(a, b)] = [seq, 1, w.writer]
                elif g[2] != w.writer:
                    self.violation(
                        f"writer {a} conn {b} reached two receivers ({g[2]} and {w.writer})"
                    )
                elif seq != g[0] + g[1]:
                    self.violation(
                        f"{w.slot}: writer {a} conn {b} seq {seq} after {g[0] + g[1] - 1}: "
                        + ("duplicate/reordered" if seq < g[0] + g[1] else "gap")
                    )
                    g[1] = seq - g[0] + 1
                else:
                    g[1] += 1
            elif kind == END and seq == END_OTHER:
                self.violation(
                    f"{w.slot} ({w.mode}): a connection ended with an error other than Closed"
                )

    def finish(self) -> None:
        self.d.terminate([w for w in self.workers.values() if w.role == "chan_sender"])
        self.d.terminate([w for w in self.workers.values() if w.role == "chan_receiver"])

    def verify(self) -> None:
        killed_recv = {wr for role, wr, _, _ in self.kills if role == "chan_receiver"}
        killed_send = {wr for role, wr, _, _ in self.kills if role == "chan_sender"}
        # A listener lives until its process is reaped, not just until SIGKILL is sent.
        recv_kill_times = [
            (self.dead_at[wr], self.d.pair_of(wr))
            for role, wr, _, _ in self.kills
            if role == "chan_receiver"
        ]
        for key in self.got:
            if key not in self.conns:
                self.violation(
                    f"fabricated: messages of writer {key[0]} conn {key[1]}, which never connected"
                )
        for key, conn in self.conns.items():
            first, n, t0, ended, pair = conn[:5]
            got_first, got_n, receiver = self.got.get(key) or [first, 0, 0]
            if got_n and got_first != first:
                self.violation(
                    f"writer {key[0]} conn {key[1]}: first message received is seq {got_first}, first sent {first}"
                )
            extra = self.batch.get(key[0], 1) if (key[0] in killed_send and not ended) else 0
            if ended and conn[5] == END_PEER and _backend() == "python":
                # Known gap (python backend): Channel.send_many raising Closed midway
                # does not say how many frames went out (Closed.sent stays 0; native
                # sets it), so the batch it was sending may arrive unlogged.
                extra = self.batch.get(key[0], 1)
            end = (
                f"ended reason {conn[5]} at {(conn[6] - t0) / 1e9:+.3f} s" if ended else "not ended"
            )
            what = (
                f"writer {key[0]} ({self.d.writer_mode[key[0]]}{', killed' if key[0] in killed_send else ''}) "
                f"conn {key[1]} (pair {pair}, {end})"
            )
            if got_n > n + extra:
                self.violation(
                    f"fabricated/torn: {what}: {got_n} received, {n} committed; "
                    f"events of the pair around it: {self.d.events_near(pair, t0)}"
                )
            if got_n < n:
                explained = (
                    receiver in killed_recv
                    if got_n
                    else any(t >= t0 and p == pair for t, p in recv_kill_times)
                )
                if explained:
                    self.lost += n - got_n
                else:
                    self.violation(
                        f"lost: {what}: {n} committed, {got_n} received, "
                        f"no receiver kill explains it; events of the pair around it: "
                        + self.d.events_near(pair, t0)
                    )

    def cleanup(self) -> None:
        self.d.check_sockdir(self)


class ServerScenario(Scenario):
    BIG = 100 * 1024

    def __init__(self, driver: Driver, transport: str) -> None:
        super().__init__(driver)
        self.name = transport
        if transport == "tcp":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            self.url = f"tcp://127.0.0.1:{port}"
        else:
            self.url = f"unix://{driver.sockdir}/srv.sock"
        self.add("server", "server", "echo", [f"cli{i}" for i in range(3)])
        for i in range(3):
            self.add(f"cli{i}", "client", "window", [f"cli{i}"])
        self.ends: list[tuple[int, int, int, int]] = []  # (client writer, server pid, reason, t)

    def args(self, w: Worker) -> dict[str, Any]:
        return {"url": self.url, "big": self.BIG}

    def on_record(self, w: Worker, kind: int, a: int, b: int, seq: int, t: int) -> None:
        if kind == ACK:
            self.messages += 1
            self.progress[w.slot] += 1
        elif kind == END:
            reason, lost = divmod(seq, 1_000_000)
            self.ends.append((w.writer, a, reason, t))
            if reason == END_PEER:
                self.lost += lost

    def finish(self) -> None:
        self.d.terminate([w for w in self.workers.values() if w.role == "client"])
        self.d.terminate([self.workers["server"]])

    def verify(self) -> None:
        server_kills = {pid: t for role, _, pid, t in self.kills if role == "server"}
        for wr, pid, reason, t in self.ends:
            if reason == END_PEER and not (pid in server_kills and server_kills[pid] <= t):
                self.violation(
                    f"client writer {wr}: its connection to server pid {pid} ended, but that server was not killed"
                )
            elif reason == END_OTHER:
                self.violation(
                    f"client writer {wr}: connection ended by an unexpected error or reply (see its stderr)"
                )

    def cleanup(self) -> None:
        self.d.check_sockdir(self)


class Driver:
    def __init__(self, seconds: float, seed: int, keep: bool, sabotage: bool = False) -> None:
        self.seconds, self.seed, self.keep, self.sabotage = seconds, seed, keep, sabotage
        self.rng = random.Random(seed)
        self.base = tempfile.mkdtemp(prefix="fastipc-chaos-")
        self.sockdir = os.path.join(self.base, "s")
        self.logdir = os.path.join(self.base, "logs")
        os.mkdir(self.sockdir, 0o700)
        os.mkdir(self.logdir, 0o700)
        self.next_writer = 1
        self.writer_info: dict[int, Worker] = {}
        self.writer_mode: dict[int, str] = {}
        self.sc: Scenario | None = None
        self.kills = self.stops = self.restarts = 0
        self.events: list[tuple[int, str, str, int]] = []

    def events_near(self, pair: str, t0: int, window_s: float = 3.0) -> str:
        """The chaos events of workers whose slot ends in ``pair`` within ``window_s`` of ``t0``."""
        near = [
            f"{what} {slot}(w{wr}) {(t - t0) / 1e9:+.3f}s"
            for t, what, slot, wr in self.events
            if slot.endswith(pair) and abs(t - t0) < window_s * 1e9
        ]
        return ", ".join(near) or "none"

    def say(self, text: str) -> None:
        print(text, flush=True)

    def mode_of(self, role: str, writer: int) -> str:
        return self.writer_mode[writer]

    def pair_of(self, writer: int) -> str:
        return self.writer_info[writer].slot[-1]

    # -- processes --
    def spawn(self, w: Worker) -> None:
        assert self.sc is not None
        w.inc += 1
        w.writer = self.next_writer
        self.next_writer += 1
        self.writer_info[w.writer] = w
        self.writer_mode[w.writer] = w.mode
        stem = os.path.join(self.logdir, f"{self.sc.name}.{w.slot}.{w.inc}")
        w.log_path, w.err_path = stem + ".log", stem + ".err"
        a = self.sc.args(w)
        a.update(log=w.log_path, writer=w.writer, seed=self.rng.getrandbits(48))
        with open(w.err_path, "wb") as err:
            w.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", w.role, json.dumps(a)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        self.events.append((time.monotonic_ns(), "start", w.slot, w.writer))
        w.offset = 0
        w.ready = w.killed = w.done = False
        w.started = w.last_activity = time.monotonic()
        w.stopped_until = w.restart_at = None

    def stderr_tail(self, w: Worker, n: int = 15) -> str:
        try:
            with open(w.err_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return ""
        return "\n".join("      " + x for x in lines[-n:])

    def read_log(self, w: Worker) -> None:
        assert self.sc is not None
        try:
            with open(w.log_path, "rb") as f:
                f.seek(w.offset)
                data = f.read()
        except FileNotFoundError:
            return
        n = len(data) // REC.size * REC.size
        if not n:
            return
        w.offset += n
        w.last_activity = time.monotonic()
        for off in range(0, n, REC.size):
            kind, a, b, seq, t = REC.unpack_from(data, off)
            if kind == READY:
                w.ready = True
            elif kind == DONE:
                w.done = True
            elif kind == BAD:
                self.sc.violation(
                    f"{w.slot} ({w.role} {w.mode}, pid {w.proc.pid if w.proc else '?'}) reported:\n{self.stderr_tail(w)}"
                )
            elif kind != TICK:
                if kind in (SENT, RECV, ACK):
                    w.moved += 1
                self.sc.on_record(w, kind, a, b, seq, t)

    def kill(self, w: Worker, restart: bool = True) -> None:
        assert self.sc is not None and w.proc is not None
        t = time.monotonic_ns()
        w.proc.kill()
        w.proc.wait()
        self.sc.kills.append((w.role, w.writer, w.proc.pid, t))
        self.sc.dead_at[w.writer] = time.monotonic_ns()
        self.events.append((t, "kill", w.slot, w.writer))
        w.killed = True
        self.kills += 1
        self.read_log(w)
        if restart:
            w.restart_at = time.monotonic() + self.rng.uniform(0, 0.3)

    def stop(self, w: Worker) -> None:
        assert w.proc is not None
        os.kill(w.proc.pid, signal.SIGSTOP)
        self.events.append((time.monotonic_ns(), "stop", w.slot, w.writer))
        w.stopped_until = time.monotonic() + self.rng.uniform(0.05, 1.5)
        self.stops += 1

    def cont(self, w: Worker) -> None:
        if w.stopped_until is not None and w.proc is not None and w.proc.poll() is None:
            os.kill(w.proc.pid, signal.SIGCONT)
            self.events.append((time.monotonic_ns(), "cont", w.slot, w.writer))
        w.stopped_until = None
        w.last_activity = time.monotonic()

    def alive(self, w: Worker) -> bool:
        return w.proc is not None and w.restart_at is None and w.proc.poll() is None

    def poll(self, chaos: bool) -> None:
        """Read logs, restart, continue, and check for deaths, hangs and stalls."""
        assert self.sc is not None
        now = time.monotonic()
        for w in self.sc.workers.values():
            self.read_log(w)
            if w.stopped_until is not None and now >= w.stopped_until:
                self.cont(w)
            if w.restart_at is not None:
                if now >= w.restart_at:
                    self.spawn(w)
                    self.restarts += 1
                continue
            assert w.proc is not None
            rc = w.proc.poll()
            if rc is not None:
                if chaos or rc != 0:
                    self.sc.violation(
                        f"{w.slot} ({w.role} {w.mode}) exited by itself with status {rc}:\n{self.stderr_tail(w)}"
                    )
                    if chaos:
                        w.restart_at = now
                continue
            if w.stopped_until is None:
                limit = HANG_S if w.ready else START_S
                if now - w.last_activity > limit:
                    self.sc.violation(
                        f"{w.slot} ({w.role} {w.mode}) hung: nothing logged for {now - w.last_activity:.1f} s while running"
                    )
                    self.kill(w, restart=chaos)

    def check_stalls(self, dt: float, acc: dict[str, float], seen: dict[str, int]) -> None:
        assert self.sc is not None
        for g, slots in self.sc.groups.items():
            ws = [self.sc.workers[s] for s in slots]
            if self.sc.progress[g] != seen.get(g):
                seen[g] = self.sc.progress[g]
                acc[g] = 0.0
                continue
            if self.sc.clean(ws):
                acc[g] = acc.get(g, 0.0) + dt
                if acc[g] > STALL_S:
                    self.sc.violation(
                        f"stalled: group {g} moved no message in {STALL_S:.0f} s with all of {slots} running"
                    )
                    acc[g] = 0.0
        # Each participant too: one that is up, with every peer of its groups up and
        # running, must move a message of its own within STALL_S (a restarted consumer
        # or client that never resumes is caught here even if the others carry on).
        for w in self.sc.workers.values():
            if w.role == "server":
                continue
            if w.moved != w.moved_seen:
                w.moved_seen, w.idle = w.moved, 0.0
                continue
            peers = {s for g in w.groups for s in self.sc.groups[g]}
            me_up = self.alive(w) and w.ready and w.stopped_until is None
            if me_up and self.sc.clean([self.sc.workers[s] for s in sorted(peers)]):
                w.idle += dt
                if w.idle > STALL_S:
                    self.sc.violation(
                        f"stalled: {w.slot} ({w.role} {w.mode}) moved no message of its own in "
                        f"{STALL_S:.0f} s with all of {sorted(peers)} running"
                    )
                    w.idle = 0.0

    def terminate(self, ws: list[Worker]) -> None:
        for w in ws:
            if self.alive(w):
                assert w.proc is not None
                w.proc.send_signal(signal.SIGTERM)
        self.await_exit(ws)

    def await_exit(self, ws: list[Worker]) -> None:
        assert self.sc is not None
        deadline = time.monotonic() + END_S
        for w in ws:
            assert w.proc is not None
            try:
                rc = w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.sc.violation(
                    f"{w.slot} ({w.role} {w.mode}) did not finish within {END_S:.0f} s of the end:\n{self.stderr_tail(w)}"
                )
                w.proc.kill()
                w.proc.wait()
                continue
            self.read_log(w)
            if rc != 0:
                self.sc.violation(
                    f"{w.slot} ({w.role} {w.mode}) ended with status {rc}:\n{self.stderr_tail(w)}"
                )

    def check_sockdir(self, sc: Scenario) -> None:
        left = os.listdir(self.sockdir)
        if left:
            sc.violation(f"left in {self.sockdir}: {left}")
            for f in left:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.sockdir, f))

    # -- one transport --
    def run(self, transport: str) -> Scenario:
        self.kills = self.stops = self.restarts = 0
        self.events = []
        sc: Scenario
        if transport == "ring":
            sc = RingScenario(self)
        elif transport == "channel":
            sc = ChannelScenario(self)
        else:
            sc = ServerScenario(self, transport)
        self.sc = sc
        t0 = time.monotonic()
        try:
            # Listeners and servers first, so the others find them.
            order = sorted(
                sc.workers.values(), key=lambda w: w.role not in ("chan_receiver", "server")
            )
            for w in order:
                self.spawn(w)
            deadline = time.monotonic() + START_S
            while not all(w.ready for w in sc.workers.values()) and time.monotonic() < deadline:
                self.poll(chaos=False)
                time.sleep(0.02)
            end = time.monotonic() + self.seconds
            next_event = time.monotonic() + self.rng.uniform(0.05, 0.4)
            acc: dict[str, float] = {}
            seen: dict[str, int] = {}
            last = time.monotonic()
            while time.monotonic() < end:
                self.poll(chaos=True)
                now = time.monotonic()
                dt, last = now - last, now
                if dt < 1.0:  # a driver starved by the scheduler proves nothing
                    self.check_stalls(dt, acc, seen)
                if now >= next_event:
                    next_event = now + self.rng.uniform(0.05, 0.4)
                    cands = [
                        w for w in sc.workers.values() if self.alive(w) and w.stopped_until is None
                    ]
                    if cands:
                        w = self.rng.choice(cands)
                        if self.rng.random() < 0.6:
                            self.kill(w)
                        else:
                            self.stop(w)
                time.sleep(0.01)
            # The end: everyone running and up, then the transport's orderly finish.
            for w in sc.workers.values():
                self.cont(w)
                if w.restart_at is not None:
                    self.spawn(w)
                    self.restarts += 1
            deadline = time.monotonic() + START_S
            while not all(
                w.ready or w.proc is None or w.proc.poll() is not None for w in sc.workers.values()
            ):
                if time.monotonic() > deadline:
                    sc.violation("workers restarted at the end did not come up")
                    break
                self.poll(chaos=False)
                time.sleep(0.02)
            sc.finish()
            for w in sc.workers.values():
                self.read_log(w)
            sc.verify()
        finally:
            for w in sc.workers.values():
                if w.proc is not None and w.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.proc.pid, signal.SIGCONT)
                    w.proc.kill()
                    w.proc.wait()
            sc.cleanup()
        took = time.monotonic() - t0
        self.say(
            f"chaos {transport}: backend={_backend()} messages={sc.messages} kills={self.kills} "
            f"stops={self.stops} restarts={self.restarts} lost_explained={sc.lost} "
            f"violations={len(sc.violations)} seconds={took:.1f}"
        )
        return sc

    def close(self) -> None:
        if self.keep:
            self.say(f"logs kept in {self.logdir}")
            return
        shutil.rmtree(self.base, ignore_errors=True)


def _backend() -> str:
    import fastipc

    return str(fastipc.BACKEND)


TRANSPORTS = ("ring", "channel", "tcp", "unix")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1], argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transport", choices=(*TRANSPORTS, "all"), default="all")
    p.add_argument("--seconds", type=float, default=10.0, help="chaos time per transport")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the worker logs")
    p.add_argument(
        "--sabotage",
        action="store_true",
        help="self-test: one ring consumer damages, duplicates and drops messages (must exit 1)",
    )
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    transports = TRANSPORTS if args.transport == "all" else (args.transport,)
    print(
        f"chaos: seed={seed} seconds={args.seconds} transports={','.join(transports)} backend={_backend()}",
        flush=True,
    )
    d = Driver(args.seconds, seed, args.keep, args.sabotage)
    total = 0
    try:
        for t in transports:
            total += len(d.run(t).violations)
    finally:
        d.close()
    return 1 if total else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
    sys.exit(errno.EPIPE)
