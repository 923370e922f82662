"""Code that runs in the child processes of the channel tests (no pytest import, so children start fast).

Used as a module of functions that ``multiprocessing`` (spawn) workers call,
and as a script, ``python -m _channel_workers ROLE ...`` (with ``tests/`` on
``PYTHONPATH``), for children with another backend or that the tests signal.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import zlib

from fastipc import BACKEND, Channel, Closed

__all__ = ["payload"]


def payload(seq: int, size: int) -> bytes:
    """Deterministic, seq-dependent content of ``size`` bytes."""
    if size == 0:
        return b""
    seed = bytes(((seq * 131 + i * 7) ^ (seq >> 8)) & 0xFF for i in range(251))
    return (seed * (size // 251 + 1))[:size]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# multiprocessing (spawn) workers: each receives a pickled Channel
# ---------------------------------------------------------------------------


def mp_echo(ch: Channel) -> None:
    """Echo every message (with its fds) until the peer closes."""
    with ch:
        while True:
            try:
                data, fds = ch.recv_with_fds(timeout=60)
            except Closed:
                return
            ch.send(data, fds=fds, timeout=60)
            for fd in fds:
                os.close(fd)


def mp_batch_sender(ch: Channel, count: int, size: int, batch: int) -> None:
    """Send ``count`` numbered messages with send_many in batches of ``batch``."""
    with ch:
        seq = 0
        while seq < count:
            k = min(batch, count - seq)
            ch.send_many([seq_msg(seq + i, size) for i in range(k)], timeout=60)
            seq += k
        ch.shutdown("write")


_FILLER = bytes(range(256)) * 64


def seq_msg(seq: int, size: int) -> bytes:
    """``size`` (>= 8) bytes starting with seq, self-checking by crc."""
    fill = _FILLER if size < len(_FILLER) - 251 else _FILLER * (size // len(_FILLER) + 2)
    body = seq.to_bytes(4, "little") + fill[seq % 251 : seq % 251 + size - 8]
    return body + zlib.crc32(body).to_bytes(4, "little")


def check_seq_msg(msg: bytes) -> int:
    body, crc = msg[:-4], int.from_bytes(msg[-4:], "little")
    if zlib.crc32(body) != crc:
        raise AssertionError(f"bad checksum in a message of {len(msg)} bytes")
    return int.from_bytes(body[:4], "little")


# ---------------------------------------------------------------------------
# script workers (python -m _channel_workers ROLE ...)
# ---------------------------------------------------------------------------


def run_echo(url: str, mode: str) -> int:
    """Connect to ``url`` and echo until the peer closes: "single" (recv_with_fds/send)
    or "many" (recv_many/send_many)."""
    ch = Channel.connect(url, timeout=10)
    _say(f"ready {BACKEND}")
    with ch:
        while True:
            try:
                if mode == "many":
                    ch.send_many(ch.recv_many(1000, timeout=60), timeout=60)
                else:
                    data, fds = ch.recv_with_fds(timeout=60)
                    ch.send(data, fds=fds, timeout=60)
                    for fd in fds:
                        os.close(fd)
            except Closed:
                return 0


def run_blocked(url: str, what: str) -> int:
    """Connect and block in ``what`` (recv, recv_many, recv_into, send) until interrupted."""
    ch = Channel.connect(url, timeout=10)
    _say("ready")
    try:
        if what == "recv":
            ch.recv()
        elif what == "recv_many":
            ch.recv_many(10)
        elif what == "recv_into":
            ch.recv_into(bytearray(100))
        elif what == "send":
            while True:  # the parent never reads: fills the socket, then blocks
                ch.send(b"x" * 65536)
        else:
            raise ValueError(what)
    except KeyboardInterrupt:
        _say("interrupted")
        return 3
    return 0


def run_raw(url: str, script: str) -> int:
    """Connect a plain socket (no fastipc framing) and write ``script``'s bytes, then act.

    script: "hex:HEX[,sleep:S][,exit|kill]".
    """
    path = url.split("://", 1)[1]
    addr: str | bytes = b"\0" + path[1:].encode() if path.startswith("@") else path
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(addr)
    _say("ready")
    for step in script.split(","):
        kind, _, arg = step.partition(":")
        if kind == "hex":
            s.sendall(bytes.fromhex(arg))
        elif kind == "sleep":
            time.sleep(float(arg))
        elif kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "exit":
            os._exit(0)
    return 0


def run_creds(url: str) -> int:
    """Connect and report what this process is, then wait for the peer to close."""
    ch = Channel.connect(url, timeout=10)
    _say(f"ready {os.getpid()} {os.getuid()} {os.getgid()}")
    with ch:
        try:
            ch.recv(timeout=30)
        except Closed:
            pass
    return 0


def main(argv: list[str]) -> int:
    role, *rest = argv
    if role == "echo":
        return run_echo(*rest)
    if role == "blocked":
        return run_blocked(*rest)
    if role == "raw":
        return run_raw(*rest)
    if role == "creds":
        return run_creds(*rest)
    raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
