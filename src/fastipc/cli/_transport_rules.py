"""What the verbs must know about each transport, kept apart so it can move to the transports.

Every scheme-specific rule of ``serve``, ``send`` and ``recv`` is here and
nowhere else in the command: which endpoints can answer, which take
``--close``, ``--priority`` or ``--wait-reply``, and whether ``recv``
connects or binds. The verbs ask these functions and constants instead of
testing ``ep.scheme`` themselves.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from .._registry import schemes, transport
from ..endpoints import Endpoint
from ._common import CLIError

__all__ = [
    "RECV_BY_BINDING",
    "RECV_BY_CONNECTING",
    "check_own_signals",
    "check_send",
    "check_serve_answers",
    "recv_framing",
    "recv_text",
    "send_options",
    "serve_can_close",
]


# ---------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------


def check_serve_answers(ep: Endpoint, answers: bool) -> None:
    """``serve --echo``/``--reply``: CLIError when the endpoint's senders cannot be answered."""
    kind = transport(ep.scheme)
    if answers and kind is not None and kind.one_way:
        raise CLIError("a FIFO is one-way: its writers cannot be answered (--echo, --reply)")
    if answers and kind is not None and not kind.can_answer(ep):
        raise CLIError("answering on a queue needs ?reply=/QUEUE in the URL (the client's too)")


def check_own_signals(ep: Endpoint, verb: str) -> None:
    """``recv``/``serve`` on ``signal://self``: CLIError for SIGINT/SIGTERM, which end the command.

    Taken as messages they would leave nothing but SIGKILL to stop it.
    """
    if ep.scheme != "signal" or (ep.pid is not None and ep.pid != os.getpid()):
        return  # another process's signals (signal://PID names this one too)
    stops = sorted({signal.Signals(s).name for s in ep.sig or () if s in _STOPS})
    if stops:
        they = "they stop" if len(stops) > 1 else "it stops"
        raise CLIError(
            f"{verb}: signal://self cannot receive {' or '.join(stops)}: {they} this "
            "command (receive USR1, USR2 or RTMIN+N)"
        )


_STOPS = (signal.SIGINT, signal.SIGTERM)


def serve_can_close(ep: Endpoint) -> bool:
    """``serve --close`` applies to stream connections only: tcp and unix."""
    kind = transport(ep.scheme)
    return kind is not None and kind.closes_peer


# ---------------------------------------------------------------------------
# send
# ---------------------------------------------------------------------------


def check_send(ep: Endpoint, args: argparse.Namespace) -> None:
    """``send``: CLIError for ``--priority`` off a queue and ``--wait-reply`` where none can come."""
    if args.priority is not None and ep.scheme != "mq":
        raise CLIError(f"--priority applies to mq:// queues only, not {ep.scheme}://")
    if ep.scheme == "signal" and ep.pid is None:
        # signal://self is the send command itself, which a signal it has no
        # handler for would kill (exit status 138 for USR1, a core for QUIT).
        raise CLIError(
            "send: signal://self is this fastipc process; name the receiver: signal://PID?sig=..."
        )
    if not args.wait_reply:
        return
    kind = transport(ep.scheme)
    if kind is None or kind.one_way:  # shm://, fifo://
        raise CLIError(f"--wait-reply: a {ep.scheme}:// endpoint carries no replies")
    if not kind.can_answer(ep):
        raise CLIError(
            "--wait-reply on a queue needs ?reply=/QUEUE in the URL, naming the queue "
            "the answer comes back on"
        )
    if getattr(args, "until_eof", False) and not kind.framed:
        # Only a stream (tcp, unix, fd) has an end; elsewhere it would wait forever.
        raise CLIError(
            f"--until-eof reads a stream to its end; {ep.scheme}:// has none (use --idle S)"
        )


def send_options(ep: Endpoint, args: argparse.Namespace) -> dict[str, Any]:
    """Keywords for the client's ``send`` besides the timeout: a queue's message priority."""
    if ep.scheme == "mq":
        return {"priority": args.priority or 0}
    return {}


# ---------------------------------------------------------------------------
# recv
# ---------------------------------------------------------------------------


def _receive_by_connecting(scheme: str) -> bool:
    kind = transport(scheme)
    return kind is not None and kind.receive_by_connecting


#: Schemes ``recv`` receives from by connecting a client (to a server, or to the queue).
#: (As the transports declare it in fastipc._registry; each is imported on its scheme's first lookup.)
RECV_BY_CONNECTING = tuple(s for s in schemes() if _receive_by_connecting(s))
#: Schemes ``recv`` receives on by binding a server (the datagrams or writers come to it).
RECV_BY_BINDING = tuple(s for s in schemes() if not _receive_by_connecting(s))


def recv_framing(kw: dict[str, Any], scheme: str, framing: str) -> None:
    """Add ``recv``'s ``--framing`` to the connect keywords ``kw``; a queue takes none."""
    kind = transport(scheme)
    if kind is not None and kind.framed:
        kw["framing"] = framing


def recv_text(message: bytes, peer: Any, binary: bool) -> bytes:
    """What ``recv`` prints for ``message``: a signal as ``SIGUSR1 42 pid=P uid=U``, else itself.

    A signal's message is only its payload; the signal and its sender are on
    its peer. ``--binary`` prints the payload alone.
    """
    name = getattr(peer, "name", None)
    if binary or not isinstance(name, str) or not hasattr(peer, "uid"):
        return message
    return f"{name} {message.decode()} pid={peer.pid} uid={peer.uid}".encode()
