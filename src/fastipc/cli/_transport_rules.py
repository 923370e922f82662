"""What the verbs must know about each transport, kept apart so it can move to the transports.

Every scheme-specific rule of ``serve``, ``send`` and ``recv`` is here and
nowhere else in the command: which endpoints can answer, which take
``--close``, ``--priority``, ``--wait-reply``, ``--framing`` or
``--max-message``, and whether ``recv`` connects or binds. The verbs ask these functions and constants instead of
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
    "check_message_options",
    "check_own_signals",
    "check_send",
    "check_serve_answers",
    "check_serve_close",
    "check_serve_limits",
    "framing",
    "recv_framing",
    "recv_text",
    "send_half_closes",
    "send_options",
    "serve_can_close",
]


# ---------------------------------------------------------------------------
# all verbs
# ---------------------------------------------------------------------------

#: Why ``--framing`` means nothing on an endpoint that is not a stream.
_NO_FRAMING = {
    "shm": "a ring keeps each message whole",
    "mq": "a queue keeps each message whole",
    "udp": "a datagram is one message",
    "unixgram": "a datagram is one message",
    "fifo": "a FIFO's messages are always length-framed",
    "signal": "a signal carries one int",
}

#: Where ``--max-message`` would be ignored, and what sets the largest message there.
_NO_MAX_MESSAGE = {
    "shm": "a ring's largest message is set by its capacity: shm://NAME?capacity=BYTES "
    "when it is made",
    "mq": "a queue's largest message is its msgsize: mq:///NAME?msgsize=BYTES when it is made",
    "signal": "a signal carries one int",
}


def check_message_options(ep: Endpoint, args: argparse.Namespace, rings: bool = True) -> None:
    """``--framing`` and ``--max-message``: CLIError naming the flag and the endpoint kind
    where it would be ignored (``--framing`` off a stream, ``--max-message`` on a ring,
    a queue or signals), rather than ignore it silently. ``rings``: the verb takes
    shm:// (send, recv; not serve)."""
    kind = transport(ep.scheme)
    if kind is None and not (rings and ep.scheme == "shm"):
        return  # not an endpoint of these verbs: they say so themselves
    if getattr(args, "framing", None) is not None and (kind is None or not kind.framed):
        streams = ", ".join(f"{s}://" for s in schemes() if _framed(s))
        why = _NO_FRAMING.get(ep.scheme, "not a stream")
        raise CLIError(f"--framing applies to streams ({streams}) only, not {ep.scheme}:// ({why})")
    if getattr(args, "max_message", None) is not None and ep.scheme in _NO_MAX_MESSAGE:
        raise CLIError(
            f"--max-message does not apply to {ep.scheme}://: {_NO_MAX_MESSAGE[ep.scheme]}"
        )


def _framed(scheme: str) -> bool:
    kind = transport(scheme)
    return kind is not None and kind.framed


def framing(args: argparse.Namespace) -> str:
    """The framing the verb uses: ``--framing``, else raw (what nc, socat and C peers speak)."""
    return str(args.framing or "raw")


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


def check_serve_close(ep: Endpoint, close: bool) -> None:
    """``serve --close``: CLIError off tcp/unix, where there is no connection to close
    (it was ignored there)."""
    if close and transport(ep.scheme) is not None and not serve_can_close(ep):
        raise CLIError(
            f"--close applies to stream connections ({_connections()}) only, not "
            f"{ep.scheme}://, whose senders have no connection to close"
        )


def check_serve_limits(ep: Endpoint, args: argparse.Namespace) -> None:
    """``serve --max-clients``, ``--max-buffered``, ``--idle-timeout``: CLIError where
    there are no stream clients for them to limit (they were ignored there); a FIFO's
    half-written frame is given up after ``--idle-timeout`` too."""
    if transport(ep.scheme) is None or serve_can_close(ep):
        return
    given = [
        flag
        for flag, value in (
            ("--max-clients", args.max_clients),
            ("--max-buffered", args.max_buffered),
            ("--idle-timeout", None if ep.scheme == "fifo" else args.idle_timeout),
        )
        if value is not None
    ]
    if given:
        also = " and FIFO writers" if given[0] == "--idle-timeout" else ""
        raise CLIError(
            f"{given[0]} applies to stream clients ({_connections()}){also} only, "
            f"not {ep.scheme}://"
        )


def _connections() -> str:
    return ", ".join(f"{s}://" for s in schemes() if (k := transport(s)) and k.closes_peer)


# ---------------------------------------------------------------------------
# send
# ---------------------------------------------------------------------------


def check_send(ep: Endpoint, args: argparse.Namespace) -> None:
    """``send``: CLIError for ``--priority`` off a queue and ``--wait-reply`` where none can come."""
    if args.priority is not None and ep.scheme != "mq":
        raise CLIError(f"--priority applies to mq:// queues only, not {ep.scheme}://")
    if getattr(args, "keep_open", False) and not send_half_closes(ep):
        raise CLIError(
            f"--keep-open applies to connections send half-closes ({_connections()}) only, "
            f"not {ep.scheme}://"
        )
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


def send_half_closes(ep: Endpoint) -> bool:
    """Whether ``send`` half-closes after the message (unless ``--keep-open``): tcp and unix."""
    return serve_can_close(ep)


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


def recv_framing(kw: dict[str, Any], scheme: str, args: argparse.Namespace) -> None:
    """Add ``recv``'s ``--framing`` to the connect keywords ``kw``; a queue takes none."""
    if _framed(scheme):
        kw["framing"] = framing(args)


def recv_text(message: bytes, peer: Any, binary: bool) -> bytes:
    """What ``recv`` prints for ``message``: a signal as ``SIGUSR1 42 pid=P uid=U``, else itself.

    A signal's message is only its payload; the signal and its sender are on
    its peer. ``--binary`` prints the payload alone.
    """
    name = getattr(peer, "name", None)
    if binary or not isinstance(name, str) or not hasattr(peer, "uid"):
        return message
    return f"{name} {message.decode()} pid={peer.pid} uid={peer.uid}".encode()
