"""The echo servers of ``tcp_echo.py``, each in its own process, and what every child of the run shares.

``fastipc-raw`` and ``fastipc-length`` are ``fastipc.serve`` with raw and
length framing; ``asyncio`` is ``asyncio.start_server`` with the stock event
loop. Each child is ``tcp_echo.py`` started again with ``--child-*``
arguments (see :data:`SCRIPT`), through the process harness of
``fastipc.bench.harness``; children are pinned to the CPUs the parent chose
and die with it.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import tempfile
from typing import IO

from fastipc.bench.harness import BenchError, child_env, die_with_parent, read_line, spawn, stop

SERVERS = ("fastipc-raw", "fastipc-length", "asyncio")
FRAMING = {"fastipc-raw": "raw", "fastipc-length": "length", "asyncio": "raw"}
#: The script every child runs (with ``--child-server``, ``--child-load`` or ``--child-hold``).
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcp_echo.py")
_HDR = struct.Struct("<II")
_MSG = 64
_PIN_ENV = "FASTIPC_TCP_ECHO_CPUS"


def child_setup(sig: int = signal.SIGKILL) -> None:
    """Pin this child to the CPUs its parent chose (if any); have ``sig`` sent to it when the parent exits."""
    cpus = os.environ.get(_PIN_ENV, "")
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    die_with_parent(sig)


def tcp_child_env(cpus: str = "") -> dict[str, str]:
    """The environment of a child: this fastipc on PYTHONPATH, pinned to ``cpus`` ("": not pinned)."""
    return child_env({_PIN_ENV: cpus})


def request(i: int, framing: str) -> bytes:
    """Connection ``i``'s request, which is also the exact echo it expects."""
    payload = (b"%07d:" % i).ljust(_MSG, b"e")
    return _HDR.pack(len(payload), 0) + payload if framing == "length" else payload


def server_child(kind: str, backlog: int, max_clients: int, profile: str) -> None:
    """Serve echo on 127.0.0.1:0, print {"port": N} and serve until SIGTERM."""
    child_setup(signal.SIGTERM)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()

    def announce(port: int) -> None:
        print(json.dumps({"port": port}), flush=True)

    if kind == "asyncio":
        import asyncio

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        async def main() -> None:
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=backlog)
            loop = asyncio.get_running_loop()
            stop = loop.create_future()
            loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
            loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
            announce(srv.sockets[0].getsockname()[1])
            async with srv:
                await stop

        if prof is not None:
            prof.enable()
        asyncio.run(main())
    else:
        import fastipc

        srv = fastipc.serve(  # type: ignore[attr-defined]
            "tcp://127.0.0.1:0",
            lambda m, p: m,
            framing=FRAMING[kind],
            backlog=backlog,
            max_clients=max_clients,
        )
        try:
            announce(int(srv.address.rsplit(":", 1)[1]))
            if prof is not None:
                prof.enable()
            srv.serve_forever()  # returns on SIGTERM / SIGINT in the main thread
        finally:
            if prof is not None:
                prof.disable()
            srv.close()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)


class Server:
    """One echo server in its own process."""

    def __init__(
        self, kind: str, backlog: int, max_clients: int, profile: str = "", cpus: str = ""
    ) -> None:
        self.kind = kind
        self.profile = profile
        self.errlog: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = spawn(
            [SCRIPT, "--child-server", kind, str(backlog), str(max_clients), profile],
            tcp_child_env(cpus),
            stderr=self.errlog,
        )
        self.pid = self.proc.pid
        try:
            line = read_line(self.proc.stdout, 30.0, f"{kind} server")
        except BenchError as exc:
            raise BenchError(f"{exc}{self.stderr_tail()}") from None
        self.port = int(json.loads(line)["port"])

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.kind} server exited with {self.proc.returncode}{self.stderr_tail()}"
            )

    def stderr_tail(self) -> str:
        self.errlog.seek(0)
        tail = self.errlog.read().strip().splitlines()[-8:]
        return (":\n    " + "\n    ".join(tail)) if tail else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; always reaps the process."""
        stop([self.proc], signal.SIGTERM, grace=5.0)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.errlog.close()
