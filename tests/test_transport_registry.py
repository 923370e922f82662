"""Transports register with fastipc._registry; the server core and connect() look schemes up there."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fastipc
from fastipc import _registry
from fastipc.endpoints import parse


def test_every_served_scheme_is_registered_in_the_order_users_see() -> None:
    assert _registry.schemes() == (
        "tcp",
        "unix",
        "udp",
        "unixgram",
        "mq",
        "fifo",
        "fd",
        "signal",
    )
    assert _registry.transport("shm") is None  # a Ring, not a transport


@pytest.mark.parametrize(
    ("scheme", "one_way", "connects", "closes_peer", "framed"),
    [
        ("tcp", False, True, True, True),
        ("unix", False, True, True, True),
        ("udp", False, False, False, False),
        ("unixgram", False, False, False, False),
        ("mq", False, True, False, False),
        ("fifo", True, False, False, False),
        ("fd", True, True, False, True),
        ("signal", True, False, False, False),
    ],
)
def test_each_transport_declares_its_rules(
    scheme: str, one_way: bool, connects: bool, closes_peer: bool, framed: bool
) -> None:
    kind = _registry.transport(scheme)
    assert kind is not None and kind.scheme == scheme
    assert kind.one_way is one_way
    assert kind.receive_by_connecting is connects
    assert kind.closes_peer is closes_peer
    assert kind.framed is framed


def test_who_can_answer() -> None:
    def can(url: str) -> bool:
        ep = parse(url)
        kind = _registry.transport(ep.scheme)
        assert kind is not None
        return kind.can_answer(ep)

    assert can("tcp://127.0.0.1:1") and can("unixgram:///tmp/x") and can("mq:///a?reply=/b")
    assert not can("mq:///a")  # a queue has no way back without ?reply=
    assert not can("fifo:///tmp/f")  # one-way


def test_a_second_transport_for_a_scheme_is_refused() -> None:
    held = _registry.transport("tcp")
    assert held is not None
    assert _registry.register(held) is held  # the same one again: harmless
    other = _registry.Transport("tcp", held.open_source, held.open_client)
    with pytest.raises(ValueError, match="'tcp' already has a transport"):
        _registry.register(other)
    assert _registry.transport("tcp") is held


def test_framings_are_the_servers() -> None:
    assert fastipc.server.FRAMINGS == _registry.FRAMINGS == ("raw", "length")


def test_importing_fastipc_loads_no_transport_until_a_scheme_is_looked_up() -> None:
    code = (
        "import sys, fastipc\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith('fastipc.transports.'))\n"
        "print(loaded(), 'posix_ipc' in sys.modules)\n"
        "fastipc._registry.transport('mq')\n"
        "print(loaded(), 'posix_ipc' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # base holds fastipc.Client, the public class every client is; no transport.
    # The python ring backend needs posix_ipc for its semaphores; native does not.
    uses_posix_ipc = fastipc.BACKEND == "python"
    assert out[0] == f"['fastipc.transports.base'] {uses_posix_ipc}", "import loaded a transport"
    assert out[1] == "['fastipc.transports.base', 'fastipc.transports.mqueue'] True"
