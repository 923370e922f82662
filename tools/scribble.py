#!/usr/bin/env python3
"""Scribble: the blocking calls of a Ring or Broadcast over a corrupted segment, timed.

Usage::

    python tools/scribble.py [--backend native|python|both] [--kind ring|broadcast|both]
                             [--seeds N] [--seed S] [--timeout T] [--jobs J] [-v]

The libFuzzer harnesses (fuzz/*.c) drive only try-calls and timeout-0 calls,
so a corrupted segment that makes a *waiting* call spin or hang is out of
their reach. This driver goes there. For each of N seeds (S, S+1, ...; the
seed alone decides everything, so ``--seed X --seeds 1 -v`` repeats one), a
child process (``--child``, so a crash or a hang cannot take the driver
down):

1. makes a Ring (a second handle opened as the consumer) or a Broadcast
   (1-3 subscribers, either policy, maybe a recv_view held open so a pin is
   in the slots), of a random capacity, and moves messages through it so the
   positions have wrapped, leaving it empty, part full or full;
2. overwrites 1 to 5 words of the shared segment, mostly control words:
   header words (geometry, positions, counters, futex and wake words), a
   subscriber's or handle's slot words, record headers found in the data
   area; the values are hostile constants, the old value nudged by a few
   records or by a lap, another word's value (so positions that are
   plausible but inconsistent), or random;
3. calls, each with a timeout of T seconds (default 0.05): recv, recv_many,
   recv_into, recv_view, send/publish, send_many/publish_many, reserve, a
   new open (and subscribe), sometimes shutdown, then close of every handle,
   measuring each call's wall time, CPU time and runnable time.

The native backend's spin before sleeping is turned off
(``FASTIPC_SPIN_US=0``), so a call that waits out its timeout should use
next to no CPU. A *finding* is:

* ``crash``: the child died by a signal, or exited without finishing;
* ``hang``: a call had not returned ``--hang`` seconds (default 2) after it
  started (the child is killed);
* ``overrun``: a call returned more than 0.5 s after its timeout (open and
  subscribe, which have none, wait up to 1 s for a creator still initialising);
* ``spin``: a call was runnable (on a CPU or queued for one:
  /proc/thread-self/schedstat, which a busy machine does not shrink as it
  does CPU time) for at least half its timeout and half its wall time, and
  on a CPU for a tenth of that (a waiting call busy-looping);
* ``error``: an exception other than the documented ones escaped (anything
  but fastipc's own errors -- IncompatibleSegment, Empty/Full, Closed,
  Lagged, MessageTooLarge -- and ValueError; subscribe may also raise
  OSError(EUSERS)).

What a call returns is not judged: over a scribbled segment a message may
be fabricated from the bytes there, and telling that apart from a real one
is out of scope. Each finding is printed with the command that repeats it;
the driver exits 1 if there is any. ``--sabotage`` proves the checks can fail:
each child also spins and raises KeyError (seed % 3 == 0), hangs (1) or dies of
SIGSEGV (2), and each must be reported.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import json
import mmap
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.abspath(__file__)
SLOW_S = 0.5  # a call returning this long after its timeout is an overrun
#: open and subscribe (no timeout) wait this long for a creator still initialising
#: (a zeroed magic looks like one): backends/python_*.py _OPEN_WAIT, native likewise
OPEN_WAIT_S = 1.0
SETUP_S = 30.0  # a child's start and set-up before its first call, on a loaded machine
SPIN_SHARE = 0.5  # of the timeout and of the wall time, runnable: a spin...
#: ... if it also ran for this share of it: a short call that only waited in the
#: run queue on a loaded machine (runnable 25 ms, CPU 0) is not one
CPU_SHARE = 0.1
M64 = (1 << 64) - 1

# ---- the segment layouts (csrc/ring.c, csrc/broadcast.c, backends/python_*.py) ----


@dataclass
class Layout:
    ctrl: list[tuple[int, int]]  # other header control words: (byte offset, width)
    slots: list[tuple[int, int]]  # other subscriber / handle slot words
    pos: list[int]  # u64 words holding a byte position (head, tail, cursors, pins...)
    cnt: list[int]  # u64 words holding a message count or sequence number
    data: int  # byte offset of the data area
    size: int  # its size (D)
    cap: int  # the payload capacity


def _u64(seg: Any, off: int) -> int:
    return int(struct.unpack_from("<Q", seg, off)[0])


def layout(backend: str, kind: str, seg: Any, used_slots: int) -> Layout:
    geometry = [(o, 8) for o in (0, 8, 16, 24, 32)]
    if backend == "native" and kind == "ring":
        # struct fi_header: geometry, prod {lock, tail, produced}, cons {lock, head,
        # consumed}, wake {cons_futex, cons_sleeping, prod_futex, prod_sleeping,
        # closed, cons_watchers, prod_watchers}
        ctrl = geometry + [(128, 8), (256, 8)] + [(384 + 4 * k, 4) for k in range(7)]
        return Layout(ctrl, [], [136, 264], [144, 272], _u64(seg, 16), _u64(seg, 32), _u64(seg, 24))
    if backend == "native":
        # struct bc_header: geometry (max_subscribers, policy: u32 at 40, 44), prod
        # {lock, seq, head, head_seq}, pub {tail, reserved}, wake {sub_futex,
        # sub_sleeping, pub_futex, pub_sleeping, closed, pins, watchers}; struct
        # bc_slot (128 bytes from 4096): owner, pos, seq, pinned, watchers (u32), missed
        ctrl = geometry + [(40, 4), (44, 4), (128, 8)] + [(384 + 4 * k, 4) for k in range(7)]
        slots, pos, cnt = [], [144, 256, 264], [136, 152]
        for i in range(used_slots):
            base = 4096 + 128 * i
            slots += [(base, 8), (base + 32, 4), (base + 40, 8)]
            pos += [base + 8, base + 24]
            cnt += [base + 16]
        return Layout(ctrl, slots, pos, cnt, _u64(seg, 16), _u64(seg, 32), _u64(seg, 24))
    if kind == "ring":
        # python_ring.py: words 0-21 (tail generation 8, its two slots of (tail,
        # count) at 9 and 11; head generation 16, slots at 17 and 19), one word per
        # handle slot from byte 8192, the data area from 16384
        other = [w for w in range(22) if w not in (9, 10, 11, 12, 17, 18, 19, 20)]
        ctrl = [(8 * w, 8) for w in other]
        slots = [(8192 + 8 * i, 8) for i in range(4)]
        pos, cnt = [8 * w for w in (9, 11, 17, 19)], [8 * w for w in (10, 12, 18, 20)]
        return Layout(ctrl, slots, pos, cnt, 16384, _u64(seg, 24), _u64(seg, 16))
    # python_broadcast.py: words 0-18 (state slots 8-11 and 12-15: tail, published,
    # floor, floor seq), 16-word slots from byte 512 (cursor pairs (pos, seq) at
    # words 2 and 9, the pin at 6), the data area after the page-rounded slots
    other = [w for w in range(19) if w not in range(8, 16)]
    ctrl = [(8 * w, 8) for w in other]
    pos, cnt = [8 * w for w in (8, 10, 12, 14)], [8 * w for w in (9, 11, 13, 15)]
    slots = []
    for i in range(used_slots):
        base = 512 + 128 * i
        slots += [(base + 8 * w, 8) for w in range(16) if w not in (2, 3, 6, 9, 10)]
        pos += [base + 16, base + 48, base + 72]
        cnt += [base + 24, base + 80]
    nslots = _u64(seg, 48)
    page = mmap.PAGESIZE
    data = (512 + 128 * nslots + page - 1) // page * page
    return Layout(ctrl, slots, pos, cnt, data, _u64(seg, 24), _u64(seg, 16))


# ---- the child: one seed ---------------------------------------------------------

ALLOWED = ("FastIPCError", "ValueError")


def busy_time() -> float:
    """Seconds this thread has been runnable: on a CPU or waiting in the run queue
    (/proc/thread-self/schedstat). Unlike CPU time it does not shrink on a busy
    machine: a spinning call is runnable for its whole wait, a sleeping one is not."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, queued = f.read().split()[:2]
        return (int(on_cpu) + int(queued)) / 1e9
    except (OSError, ValueError):
        return time.thread_time()


def emit(**ev: Any) -> None:
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()


def record_headers(seg: Any, lay: Layout) -> list[int]:
    """Offsets of words in the data area that look like record headers: the payloads
    written are bytes >= 0x80, so a non-zero word whose low half is at most the
    capacity is a header (or a broadcast record's sequence number)."""
    out = []
    end = min(lay.data + lay.size, len(seg))
    for off in range(lay.data, end - 7, 8):
        w = _u64(seg, off)
        if w and (w & 0xFFFFFFFF) <= lay.cap:
            out.append(off)
    return out


HOSTILE = [0, 1, 7, 8, 64, 4096, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, M64]


def pick_value(rng: random.Random, old: int, width: int, lay: Layout) -> int:
    """Any control word: a hostile constant, the old value nudged, or random."""
    r = rng.random()
    if r < 0.35:
        v = rng.choice(HOSTILE)
    elif r < 0.75:
        step = rng.choice([1, 4, 8, 16, 64, 128, lay.size])
        v = old + rng.choice([-2, -1, 1, 2]) * step
    elif r < 0.9:
        v = old ^ (1 << rng.randrange(8 * width))
    else:
        v = rng.getrandbits(8 * width)
    return v & (M64 if width == 8 else 0xFFFFFFFF)


def pick_related(rng: random.Random, words: list[int], lay: Layout, position: bool) -> int:
    """A position or count word: mostly another such word's value, moved a little
    (a record or two, a cache line, a lap): plausible, but not consistent."""
    if rng.random() < 0.15:
        return rng.choice(HOSTILE)
    base = rng.choice(sorted(set(words)))
    if rng.random() < 0.2:  # one byte of it replaced: a jump of any size
        shift = 8 * rng.randrange(3)
        return (base & ~(0xFF << shift) | rng.randrange(256) << shift) & M64
    if position:
        D = lay.size
        delta = rng.choice([8, -8, 16, 64, -64, 128, D, -D, D + 8, D - 8, D - 64, D - 128])
    else:
        delta = rng.choice([0, 1, -1, 2, -2, 5, 64, -64])
    return (base + delta) & M64


def scribble(rng: random.Random, seg: Any, lay: Layout) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    recs = record_headers(seg, lay)
    positions = [_u64(seg, o) for o in lay.pos]
    counts = [_u64(seg, o) for o in lay.cnt]
    nops = rng.choice([1, 1, 1, 1, 1, 1, 2, 2, 3, 5])
    for _ in range(nops):
        r = rng.random()
        related = None
        if r < 0.5:
            where, off, width, related = "position", rng.choice(lay.pos), 8, True
        elif r < 0.62:
            where, off, width, related = "count", rng.choice(lay.cnt), 8, False
        elif r < 0.75 or (r < 0.8 and not lay.slots):
            where, (off, width) = "header", rng.choice(lay.ctrl)
        elif r < 0.8:
            where, (off, width) = "slot", rng.choice(lay.slots)
        elif r < 0.95 and recs:
            where, off = "record", rng.choice(recs)
            width = rng.choice([8, 4, 4])
            if width == 4 and rng.random() < 0.5:
                off += 4  # the stride half of a native record header
        else:
            where, width = "byte", 1
            off = rng.choice([rng.randrange(0, 4096), rng.randrange(lay.data, lay.data + lay.size)])
        if width == 1:
            old, value = seg[off], rng.randrange(256)
            seg[off] = value
        else:
            fmt = "<Q" if width == 8 else "<I"
            old = struct.unpack_from(fmt, seg, off)[0]
            if related is None:
                value = pick_value(rng, old, width, lay)
            else:
                value = pick_related(rng, positions if related else counts, lay, related)
            struct.pack_into(fmt, seg, off, value)
        ops.append({"where": where, "off": off, "width": width, "old": old, "new": value})
    return ops


def payload(rng: random.Random, cap: int) -> bytes:
    n = rng.choice([0, 1, 7, 8, 9, 40, 48, 56, 100, 300, cap])
    return bytes(rng.randrange(0x80, 0x100) for _ in range(min(n, cap)))


def sabotage(seed: int, timeout: float, hang: float) -> list[tuple[str, Any]]:
    """Calls that misbehave on purpose (``--sabotage``: the driver must report them)."""

    def spin() -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pass

    def error() -> None:
        raise KeyError("sabotage")

    if seed % 3 == 0:
        return [("sabotage_spin", spin), ("sabotage_error", error)]
    if seed % 3 == 1:
        return [("sabotage_hang", lambda: time.sleep(hang + 30))]
    return [("sabotage_crash", lambda: os.kill(os.getpid(), signal.SIGSEGV))]


def run_child(seed: int, kind: str, timeout: float, hang: float, sabotaged: bool) -> int:
    import fastipc
    from fastipc import Broadcast, Ring

    rng = random.Random(seed)
    if kind == "both":
        kind = rng.choice(["ring", "broadcast"])
    backend = str(fastipc.BACKEND)
    name = os.environ["SCRIBBLE_NAME"]
    cap = rng.choice([64, 200, 1000, 4096])
    handles: list[Any] = []
    held: list[Any] = []  # an open recv_view: a pin in the slots
    calls: list[tuple[str, Any]] = []
    T = timeout

    def fill(send: Any, send_many: Any, recvs: list[Any]) -> None:
        # wrap the positions (batches too: a batch's records share its padding, so
        # receiving them one by one leaves the head mid-line), then leave the ring
        # empty, part full or full
        for _ in range(rng.randrange(0, 4)):
            for _ in range(rng.randrange(1, 12)):
                with contextlib.suppress(fastipc.Full):
                    if rng.random() < 0.3:
                        send_many([payload(rng, cap)] * rng.randrange(2, 5), timeout=0)
                    else:
                        send(payload(rng, cap), timeout=0)
            for r in recvs:
                for _ in range(rng.randrange(0, 12)):
                    with contextlib.suppress(fastipc.Empty, fastipc.Lagged):
                        r.recv(timeout=0)
        level = rng.choice(["empty", "some", "some", "full"])
        # "full" under overwrite never is: a couple of laps of small records do
        n = {"empty": 0, "some": rng.randrange(1, 5), "full": 2000}[level]
        for _ in range(n):
            try:
                send(payload(rng, cap), timeout=0)
            except fastipc.Full:
                break
        if level == "empty":
            for r in recvs:
                for _ in range(10**4):
                    try:
                        r.recv(timeout=0)
                    except fastipc.Lagged:
                        continue
                    except fastipc.Empty:
                        break

    if kind == "ring":
        prod: Any = Ring.create(name, cap)
        cons = Ring.open(name)
        handles += [prod, cons]
        fill(prod.send, prod.send_many, [cons])
        used_slots = 2
        buf = bytearray(cap)

        def reserve() -> None:
            with prod.reserve(rng.randrange(0, cap + 1), timeout=T) as v:
                v[:] = b"\x99" * len(v)

        def view() -> None:
            with cons.recv_view(timeout=T) as v:
                bytes(v)

        calls = [
            ("recv", lambda: cons.recv(timeout=T)),
            ("recv_many", lambda: cons.recv_many(8, timeout=T)),
            ("recv_into", lambda: cons.recv_into(buf, timeout=T)),
            ("recv_view", view),
            ("send", lambda: prod.send(payload(rng, cap), timeout=T)),
            ("send_many", lambda: prod.send_many([payload(rng, cap)] * 3, timeout=T)),
            ("reserve", reserve),
            ("open", lambda: handles.append(Ring.open(name))),
        ]
    else:
        nslots = rng.choice([1, 2, 4, 8])
        policy = rng.choice(["overwrite", "block"])
        prod = Broadcast.create(name, cap, subscribers=nslots, policy=policy)
        subs = [Broadcast.subscribe(name) for _ in range(rng.randrange(1, min(nslots, 3) + 1))]
        handles += [prod, *subs]
        fill(prod.publish, prod.publish_many, subs)
        used_slots = len(subs)
        sub = subs[0]
        if len(subs) > 1 and rng.random() < 0.4:
            cm = subs[-1].recv_view(timeout=0)
            with contextlib.suppress(fastipc.Empty, fastipc.Lagged):
                cm.__enter__()
                held.append(cm)
        buf = bytearray(cap)

        def reserve() -> None:
            with prod.reserve(rng.randrange(0, cap + 1), timeout=T) as v:
                v[:] = b"\x99" * len(v)

        def view() -> None:
            with sub.recv_view(timeout=T) as v:
                bytes(v)

        calls = [
            ("recv", lambda: sub.recv(timeout=T)),
            ("recv_many", lambda: sub.recv_many(8, timeout=T)),
            ("recv_into", lambda: sub.recv_into(buf, timeout=T)),
            ("recv_view", view),
            ("publish", lambda: prod.publish(payload(rng, cap), timeout=T)),
            ("publish_many", lambda: prod.publish_many([payload(rng, cap)] * 3, timeout=T)),
            ("reserve", reserve),
            ("open", lambda: handles.append(Broadcast.open(name))),
            ("subscribe", lambda: handles.append(Broadcast.subscribe(name))),
        ]
    fd = os.open(f"/dev/shm/fastipc.{name}", os.O_RDWR)
    seg = mmap.mmap(fd, 0)
    os.close(fd)
    lay = layout(backend, kind, seg, used_slots)
    ops = scribble(rng, seg, lay)
    emit(ev="plan", kind=kind, backend=backend, cap=cap, ops=ops, held=bool(held))
    rng.shuffle(calls)
    if sabotaged:
        calls[:0] = sabotage(seed, T, hang)
    if rng.random() < 0.25:
        calls.append(("shutdown", prod.shutdown))
        calls += [calls[k] for k in range(2)]  # a call or two after the shutdown
    for cm in held:
        calls.append(("view_exit", lambda cm=cm: cm.__exit__(None, None, None)))
    calls += [(f"close{i}", h.close) for i, h in enumerate(handles)]
    calls.append(("close_new", lambda: [h.close() for h in handles]))
    for what, call in calls:
        emit(ev="start", call=what)
        t0, c0, b0 = time.monotonic(), time.process_time(), busy_time()
        try:
            call()
            outcome, ok = "ok", True
        except BaseException as e:  # every escape is judged below
            names = [c.__name__ for c in type(e).__mro__]
            ok = any(a in names for a in ALLOWED) or (
                what == "subscribe" and isinstance(e, OSError) and e.errno == errno.EUSERS
            )
            outcome = f"{type(e).__name__}: {e}"[:300]
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        emit(
            ev="done",
            call=what,
            wall=time.monotonic() - t0,
            cpu=time.process_time() - c0,
            busy=busy_time() - b0,
            outcome=outcome,
            ok=ok,
        )
    seg.close()
    emit(ev="end")
    return 0


# ---- the driver --------------------------------------------------------------------


@dataclass
class Child:
    seed: int
    backend: str
    name: str
    proc: subprocess.Popen[bytes]
    buf: bytes = b""
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float | None = None  # when the running call started
    killed: bool = False


def cleanup(name: str) -> None:
    for path in glob.glob(f"/dev/shm/*fastipc.{name}*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def judge(c: Child, timeout: float, hang: float) -> list[str]:
    out: list[str] = []
    done = {e["call"]: e for e in c.events if e["ev"] == "done"}
    for e in c.events:
        if e["ev"] != "done":
            continue
        what, wall, busy = e["call"], e["wall"], e["busy"]
        if not e["ok"]:
            out.append(f"error: {what} raised {e['outcome']}")
        budget = OPEN_WAIT_S if what in ("open", "subscribe") else timeout
        if wall > budget + SLOW_S:
            out.append(f"overrun: {what} took {wall:.2f} s ({e['outcome']})")
        if (
            busy >= SPIN_SHARE * timeout
            and busy >= SPIN_SHARE * wall
            and e["cpu"] >= CPU_SHARE * busy
        ):
            out.append(
                f"spin: {what} was runnable {busy:.3f} s (CPU {e['cpu']:.3f} s) "
                f"in {wall:.3f} s ({e['outcome']})"
            )
    starts = [e["call"] for e in c.events if e["ev"] == "start"]
    if c.killed:
        if starts:
            out.append(f"hang: {starts[-1]} had not returned after {hang} s")
        else:
            out.append(f"hang: the set-up had not finished after {SETUP_S + hang} s")
    elif c.proc.returncode and c.proc.returncode < 0:
        last = starts[-1] if starts and starts[-1] not in done else "setup or exit"
        out.append(f"crash: signal {-c.proc.returncode} in {last}")
    elif not any(e["ev"] == "end" for e in c.events):
        out.append(f"crash: exit {c.proc.returncode} before the end")
    return out


def describe(c: Child) -> str:
    lines = []
    for e in c.events:
        if e["ev"] == "plan":
            lines.append(f"    {e['kind']} cap={e['cap']} held_view={e['held']}")
            for op in e["ops"]:
                lines.append(
                    f"    scribble {op['where']} +{op['off']} u{8 * op['width']}: "
                    f"{op['old']:#x} -> {op['new']:#x}"
                )
        elif e["ev"] == "done":
            lines.append(
                f"    {e['call']:<13} wall {e['wall']:.3f} busy {e['busy']:.3f} "
                f"cpu {e['cpu']:.3f}  {e['outcome'][:110]}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    backends = ["native", "python"] if args.backend == "both" else [args.backend]
    todo = [(b, args.seed + i) for b in backends for i in range(args.seeds)]
    todo.reverse()
    running: dict[int, Child] = {}
    sel = selectors.DefaultSelector()
    findings = 0
    counts: dict[str, int] = {b: 0 for b in backends}
    t0 = time.monotonic()
    tag = f"scribble{os.getpid()}"

    def finish(c: Child) -> None:
        nonlocal findings
        sel.unregister(c.proc.stdout)  # type: ignore[arg-type]
        c.proc.wait()
        assert c.proc.stdout is not None and c.proc.stderr is not None
        c.proc.stdout.close()
        err = c.proc.stderr.read().decode(errors="replace")
        c.proc.stderr.close()
        cleanup(c.name)
        counts[c.backend] += 1
        found = judge(c, args.timeout, args.hang)
        repro = (
            f"FASTIPC_BACKEND={c.backend} python tools/scribble.py --backend {c.backend} "
            f"--kind {args.kind} --timeout {args.timeout} --seed {c.seed} --seeds 1 -v"
        )
        if found:
            findings += len(found)
            print(f"FINDING seed={c.seed} backend={c.backend}: " + "; ".join(found), flush=True)
            print(f"  repeat: {repro}")
            print(describe(c))
            if err.strip():
                print(
                    "  stderr:\n" + "\n".join("    " + ln for ln in err.strip().splitlines()[-15:])
                )
        elif args.verbose:
            print(f"seed={c.seed} backend={c.backend}: ok\n{describe(c)}")
            if err.strip():
                print(err)

    try:
        while todo or running:
            while todo and len(running) < args.jobs:
                backend, seed = todo.pop()
                name = f"{tag}_{backend[0]}{seed}z"
                env = dict(os.environ, FASTIPC_BACKEND=backend, FASTIPC_SPIN_US="0")
                env["SCRIBBLE_NAME"] = name
                cmd = [sys.executable, HERE, "--child", str(seed), "--kind", args.kind]
                cmd += ["--timeout", str(args.timeout), "--hang", str(args.hang)]
                cmd += ["--sabotage"] if args.sabotage else []
                proc = subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
                # the set-up (start-up, the ring, its messages) is not timed as a call
                c = Child(seed, backend, name, proc, started=time.monotonic() + SETUP_S)
                running[proc.pid] = c
                assert proc.stdout is not None
                os.set_blocking(proc.stdout.fileno(), False)
                sel.register(proc.stdout, selectors.EVENT_READ, c)
            for key, _ in sel.select(timeout=0.05):
                c = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    running.pop(c.proc.pid)
                    finish(c)
                    continue
                c.buf += chunk
                *lines, c.buf = c.buf.split(b"\n")
                for ln in lines:
                    e = json.loads(ln)
                    c.events.append(e)
                    if e["ev"] == "start":
                        c.started = time.monotonic()
                    elif e["ev"] == "done":
                        c.started = None
            now = time.monotonic()
            for c in list(running.values()):
                if c.started is not None and now - c.started > args.hang and not c.killed:
                    c.killed = True
                    c.proc.kill()
    finally:
        for c in running.values():
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
            cleanup(c.name)
    took = time.monotonic() - t0
    runs = " ".join(f"{b}={n}" for b, n in counts.items())
    print(
        f"scribble: seeds {args.seed}..{args.seed + args.seeds - 1} kind={args.kind} "
        f"runs: {runs} findings={findings} seconds={took:.1f}",
        flush=True,
    )
    return 1 if findings else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--backend",
        choices=("native", "python", "both"),
        default=os.environ.get("FASTIPC_BACKEND", "native"),
    )
    p.add_argument("--kind", choices=("ring", "broadcast", "both"), default="both")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds (children)")
    p.add_argument("--seed", type=int, default=None, help="the first seed (default: random)")
    p.add_argument("--timeout", type=float, default=0.05, help="each call's timeout (s)")
    p.add_argument("--hang", type=float, default=2.0, help="a call not back by then hangs (s)")
    p.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("-v", "--verbose", action="store_true", help="describe every seed")
    p.add_argument(
        "--sabotage",
        action="store_true",
        help="self-test: each child also spins and raises KeyError, hangs, or crashes (must exit 1)",
    )
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return run_child(args.child, args.kind, args.timeout, args.hang, args.sabotage)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
