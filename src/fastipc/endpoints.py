"""Parsing and validating endpoint URLs: one name per transport for the API and the CLI.

Every transport is named by a URL (docs/architecture.md, "The parts")::

    unix:///abs/path   unix://rel/path   unix://@abstract     Unix stream socket
    unixgram://PATH                                           Unix datagram socket
    tcp://HOST:PORT    udp://HOST:PORT                        IPv4/IPv6 network sockets
    mq:///name                                                POSIX message queue
    fifo:///abs/path   fifo://rel/path                        named pipe (FIFO)
    shm://NAME                                                shared-memory Ring
    fd://N                                                    an inherited fd (pipe, socket, tty)
    signal://PID?sig=USR1   signal://self?sig=USR1,RTMIN+1    signals with an int payload
    nats://HOST:PORT/subject   nats://HOST/subject?queue=Q    a NATS subject (fastipc.bridge)

Options ride in the query string (``unix:///run/app.sock?mode=0660``); each
scheme says which options it knows. Each option is checked and converted
once, here, into a typed attribute of the :class:`Endpoint` (``ep.mode`` is
an int, ``ep.single_writer`` a bool, ``ep.reply`` a queue name), so nothing
downstream parses strings again; ``ep.options`` keeps the query as written.
A malformed URL raises ``ValueError`` naming the part that is wrong. Paths
are taken literally (no %-decoding), except that ``?`` starts the query
string.

Ground floor plus one: imports only the standard library and ``_names``.

To add a scheme, write a ``_parse_SCHEME(rest, url) -> Endpoint`` function
and register it in ``_PARSERS`` with the options it accepts; to add an
option, give it a converter in ``_OPTIONS`` and a typed field on
:class:`Endpoint`.
"""

from __future__ import annotations

import ipaddress
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Union

from ._names import validate_name

__all__ = [
    "MQ_NAME_MAX",
    "NATS_PORT",
    "SUN_PATH_MAX",
    "Endpoint",
    "parse",
    "signal_name",
    "signal_number",
]

#: The longest Unix socket path in bytes: ``sun_path`` is 108 bytes with the
#: terminating NUL (an abstract name gets the same 107 bytes after its NUL).
SUN_PATH_MAX = 107

#: What ``socket.bind``/``connect`` take for the endpoint's family.
Address = Union[str, bytes, "tuple[str, int]"]


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint URL.

    ``scheme`` is the transport; ``path`` the filesystem path (unix,
    unixgram, fifo) or ``None``; ``abstract`` is True for ``unix://@name``,
    whose ``name`` then is the abstract name (without the leading NUL);
    ``name`` is also the queue name with its slash (mq) or the ring name
    (shm); ``host`` and ``port`` are set for tcp/udp; ``options`` holds the
    query string as written (option -> text).

    The options, checked and typed (None, or False, when not given; which
    scheme takes which is in ``_PARSERS``): ``mode`` (int, a permission
    mask, ``?mode=0660``), ``backlog`` (int, 0 to 2**31 - 1), ``max_message`` (int >= 1,
    bytes; its upper bound, 2**32 - 1, is checked where it is used, as for
    the keyword), ``maxmsg``, ``msgsize`` and ``capacity`` (ints >= 1),
    ``single_writer`` (bool, ``0`` or ``1``), ``owner`` (int >= 0, a uid
    trusted to own an existing queue or FIFO besides this user and root),
    ``iface`` (an IPv4 address as text), ``reply`` (a queue name with its
    leading slash), ``sig`` (signal numbers, a tuple of ints:
    ``?sig=USR1,RTMIN+1``; names with or without ``SIG``, numbers,
    ``RTMIN+n`` and ``RTMAX-n``).

    ``fd`` is the descriptor number of ``fd://N``; ``pid`` the process of
    ``signal://PID`` (None for ``signal://self``: the calling process,
    whatever its pid is when the endpoint is used).

    ``nats://HOST:PORT/subject`` (port 4222 when left out) sets ``host``,
    ``port`` and ``subject`` (dot-separated tokens; ``*`` and ``>`` are
    wildcards, which only a subscription may use: :attr:`wildcard`) and the
    option ``queue`` (a queue group name, ``?queue=workers``).
    """

    url: str
    scheme: str
    path: str | None = None
    abstract: bool = False
    name: str | None = None
    host: str | None = None
    port: int | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    mode: int | None = None
    backlog: int | None = None
    max_message: int | None = None
    maxmsg: int | None = None
    msgsize: int | None = None
    capacity: int | None = None
    single_writer: bool = False
    owner: int | None = None
    iface: str | None = None
    reply: str | None = None
    sig: tuple[int, ...] = ()
    fd: int | None = None
    pid: int | None = None
    subject: str | None = None
    queue: str | None = None

    @property
    def wildcard(self) -> bool:
        """True for a NATS subject with a ``*`` or ``>`` token (it can be subscribed, not published)."""
        return self.subject is not None and any(t in ("*", ">") for t in self.subject.split("."))

    @property
    def address(self) -> Address:
        """The address to pass to ``socket.bind``/``socket.connect``."""
        if self.scheme in ("unix", "unixgram"):
            if self.abstract:
                assert self.name is not None
                return b"\0" + self.name.encode()
            assert self.path is not None
            return self.path
        if self.scheme in ("tcp", "udp"):
            assert self.host is not None and self.port is not None
            return (self.host, self.port)
        raise ValueError(f"{self.url!r}: scheme {self.scheme!r} has no socket address")

    @property
    def display(self) -> str:
        """The endpoint as it should appear in error messages (the path, or the URL)."""
        if self.path is not None:
            return self.path
        if self.abstract:
            return "@" + (self.name or "")
        return self.url


def parse(url: str, *, schemes: tuple[str, ...] | None = None) -> Endpoint:
    """Parse endpoint ``url``; with ``schemes``, only those transports are accepted.

    Raises TypeError if ``url`` is not a str, ValueError naming the wrong
    part (scheme, path, host, port, option) otherwise.
    """
    if not isinstance(url, str):
        raise TypeError(f"endpoint must be a URL string, not {type(url).__name__}")
    if "\0" in url:
        raise ValueError(f"endpoint {url!r}: NUL byte in the URL")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"endpoint {url!r}: missing scheme; expected SCHEME://..., e.g. unix:///run/app.sock"
        )
    scheme = scheme.lower()
    entry = _PARSERS.get(scheme)
    if entry is None:
        known = ", ".join(sorted(_PARSERS))
        raise ValueError(f"endpoint {url!r}: unknown scheme {scheme!r} (known: {known})")
    if schemes is not None and scheme not in schemes:
        elsewhere = _SERVED_ELSEWHERE.get(scheme, "")
        raise ValueError(
            f"endpoint {url!r}: scheme {scheme!r} is not accepted here (use {', '.join(schemes)})"
            + elsewhere
        )
    parser, allowed = entry
    rest, _, query = rest.partition("?")
    options, typed = _parse_query(query, allowed, url)
    ep = parser(rest, url)
    return replace(ep, url=url, scheme=scheme, options=options, **typed)


def _parse_query(
    query: str, allowed: frozenset[str], url: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """The options as written (key -> text) and converted (attribute -> typed value)."""
    options: dict[str, str] = {}
    typed: dict[str, Any] = {}
    if not query:
        return options, typed
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"endpoint {url!r}: option {part!r} is not KEY=VALUE")
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"endpoint {url!r}: unknown option {key!r} (known: {known})")
        if key in options:
            raise ValueError(f"endpoint {url!r}: option {key!r} given twice")
        try:
            typed[key] = _OPTIONS[key](value)
        except _BadOption as exc:
            raise ValueError(f"endpoint {url!r}: option {key}={value!r} {exc}") from None
        options[key] = value
    return options, typed


def _digits(text: str) -> bool:
    """Whether ``text`` is a number written in ASCII digits 0-9 (``isdecimal`` alone takes
    any script's digits, ``"١"`` for 1; ``isdigit`` even ``"²"``, which ``int`` refuses)."""
    return text.isascii() and text.isdecimal()


class _BadOption(ValueError):
    """What is wrong with an option's value (the text follows ``option KEY='VALUE'``)."""


def _count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def convert(value: str) -> int:
        if not _digits(value) or int(value) < minimum:
            raise _BadOption(f"is not a whole number >= {minimum}")
        if maximum is not None and int(value) > maximum:
            raise _BadOption(f"is over {maximum}")
        return int(value)

    return convert


def _mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise _BadOption("is not an octal permission mask (e.g. 0600)") from None
    if not 0 <= mode <= 0o777:
        raise _BadOption("is not a permission mask between 0 and 0777")
    return mode


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise _BadOption("is not 0 or 1")
    return value == "1"


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise _BadOption("is not an IPv4 address") from None
    return value


def _queue(value: str) -> str:
    try:
        name = _parse_mq(value, "mq://" + value).name
    except ValueError as exc:
        raise _BadOption("is not a queue name: " + str(exc).split(": ", 1)[-1]) from None
    assert name is not None
    return name


def _nats_token(value: str) -> str:
    # NATS protocol tokens end at whitespace; '*' and '>' are wildcards.
    if not value or any(c.isspace() or c in "*>" for c in value) or not value.isprintable():
        raise _BadOption("is not a queue group name (printable, no spaces, '*' or '>')")
    return value


def _signals(value: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in value.split(","):
        signo = signal_number(part)
        if signo in out:
            raise _BadOption(f"names {signal_name(signo)} twice")
        out.append(signo)
    return tuple(out)


def signal_number(text: str) -> int:
    """The number of signal ``text``: ``USR1``, ``SIGUSR1``, ``10``, ``RTMIN+2``, ``SIGRTMAX-1``.

    Raises ValueError (a ``_BadOption``) naming what is wrong; 0 is refused
    (it is no signal).
    """
    name = text.strip().upper()
    if _digits(name):
        signo = int(name)
    else:
        name = name.removeprefix("SIG")
        base, sign, offset = name, "", "0"
        for op in "+-":
            if op in name:
                base, sign, offset = name.partition(op)
                break
        rtmin, rtmax = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
        if base in ("RTMIN", "RTMAX"):
            if not _digits(offset):
                raise _BadOption(f"has {text!r}: expected RTMIN+N or RTMAX-N")
            n = int(offset) if sign != "-" else -int(offset)
            signo = (rtmin if base == "RTMIN" else rtmax) + n
        elif sign:
            raise _BadOption(f"has {text!r}: only RTMIN+N and RTMAX-N take an offset")
        else:
            found = getattr(signal.Signals, "SIG" + base, None) if base.isidentifier() else None
            if found is None:
                raise _BadOption(f"has {text!r}, which is no signal name (e.g. USR1, RTMIN+1)")
            return int(found)
        if base in ("RTMIN", "RTMAX") and not rtmin <= signo <= rtmax:
            raise _BadOption(
                f"has {text!r}: real-time signals run from RTMIN ({rtmin}) to RTMAX ({rtmax})"
            )
    if not 1 <= signo <= int(signal.SIGRTMAX):
        raise _BadOption(f"has {text!r}: signal numbers run from 1 to {int(signal.SIGRTMAX)}")
    return signo


def signal_name(signo: int) -> str:
    """``SIGUSR1``, ``SIGRTMIN+3``: how messages name signal ``signo``."""
    rtmin, rtmax = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    if rtmin <= signo <= rtmax:
        return "SIGRTMIN" if signo == rtmin else f"SIGRTMIN+{signo - rtmin}"
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


#: option -> converter from its text to its typed value (the Endpoint
#: attribute of the same name); raises _BadOption saying what is wrong.
_OPTIONS: dict[str, Callable[[str], Any]] = {
    # listen() takes a C int (the kernel caps it at net.core.somaxconn anyway).
    "backlog": _count(0, 2**31 - 1),
    "max_message": _count(1),
    "maxmsg": _count(1),
    "msgsize": _count(1),
    "capacity": _count(1),
    "mode": _mode,
    "single_writer": _flag,
    "owner": _count(0),
    "iface": _ipv4,
    "reply": _queue,
    "sig": _signals,
    "queue": _nats_token,
}


def _parse_unix(rest: str, url: str) -> Endpoint:
    """``///abs``, ``//rel`` (after the scheme: ``/abs``, ``rel``) or ``@abstract``."""
    if not rest:
        raise ValueError(f"endpoint {url!r}: empty path")
    if rest.startswith("@"):
        name = rest[1:]
        if not name:
            raise ValueError(f"endpoint {url!r}: empty abstract socket name after '@'")
        if len(name.encode()) > SUN_PATH_MAX:
            raise ValueError(
                f"endpoint {url!r}: abstract name is {len(name.encode())} bytes, over the "
                f"{SUN_PATH_MAX}-byte limit of a Unix socket address (sun_path)"
            )
        return Endpoint(url=url, scheme="", abstract=True, name=name)
    path = rest
    if path.endswith("/"):
        raise ValueError(f"endpoint {url!r}: path {path!r} names a directory, not a socket file")
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise ValueError(
            f"endpoint {url!r}: path is {size} bytes, over the {SUN_PATH_MAX}-byte limit "
            "of a Unix socket path (sun_path); use a shorter path or unix://@name"
        )
    return Endpoint(url=url, scheme="", path=path)


def _parse_host_port(rest: str, url: str) -> Endpoint:
    """``HOST:PORT`` with HOST a name, an IPv4 address or ``[IPv6]``."""
    if "/" in rest:
        raise ValueError(f"endpoint {url!r}: unexpected path {rest[rest.index('/') :]!r}")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"endpoint {url!r}: host: unclosed '[' of an IPv6 address")
        host, tail = rest[1:end], rest[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"endpoint {url!r}: host {host!r} is not an IPv6 address") from None
        if not tail.startswith(":"):
            raise ValueError(f"endpoint {url!r}: port: missing ':PORT' after the host")
        port_text = tail[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ValueError(f"endpoint {url!r}: port: missing ':PORT' after the host")
        if ":" in host:
            raise ValueError(f"endpoint {url!r}: host: write an IPv6 address as [ADDR]")
    if not host:
        raise ValueError(f"endpoint {url!r}: host: empty (use 0.0.0.0 for all interfaces)")
    if not _digits(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"endpoint {url!r}: port {port_text!r} is not a number from 0 to 65535")
    return Endpoint(url=url, scheme="", host=host, port=int(port_text))


def _parse_mq(rest: str, url: str) -> Endpoint:
    """``/name``: one slash, then 1-254 characters without a slash (mq_overview(7))."""
    if not rest.startswith("/"):
        raise ValueError(f"endpoint {url!r}: queue name must start with '/' (mq:///name)")
    name = rest[1:]
    if not name:
        raise ValueError(f"endpoint {url!r}: empty queue name")
    if "/" in name:
        raise ValueError(f"endpoint {url!r}: queue name {name!r} may not contain '/'")
    if len(name.encode()) > MQ_NAME_MAX:
        raise ValueError(
            f"endpoint {url!r}: queue name is {len(name.encode())} bytes, over the "
            f"{MQ_NAME_MAX}-byte limit (NAME_MAX less the leading slash)"
        )
    return Endpoint(url=url, scheme="", name="/" + name)


def _parse_fifo(rest: str, url: str) -> Endpoint:
    """``/abs/path`` or ``rel/path``: a filesystem path."""
    if not rest:
        raise ValueError(f"endpoint {url!r}: empty path")
    if rest.endswith("/"):
        raise ValueError(f"endpoint {url!r}: path {rest!r} names a directory, not a FIFO")
    return Endpoint(url=url, scheme="", path=rest)


def _parse_shm(rest: str, url: str) -> Endpoint:
    """``NAME``: a ring name (1-200 of ``A-Z a-z 0-9 . _ -``)."""
    try:
        name = validate_name(rest)
    except ValueError as exc:
        raise ValueError(f"endpoint {url!r}: ring name: {exc}") from None
    return Endpoint(url=url, scheme="", name=name)


def _parse_fd(rest: str, url: str) -> Endpoint:
    """``N``: a file descriptor number this process inherited or opened."""
    if not _digits(rest) or len(rest) > 9:
        raise ValueError(f"endpoint {url!r}: fd {rest!r} is not a descriptor number (fd://0)")
    return Endpoint(url=url, scheme="", fd=int(rest))


def _parse_signal(rest: str, url: str) -> Endpoint:
    """``PID`` (a process id) or ``self``; the signals come in ``?sig=``."""
    if rest == "self":
        return Endpoint(url=url, scheme="")
    if not _digits(rest) or not 0 < int(rest) < 2**31:
        raise ValueError(
            f"endpoint {url!r}: process {rest!r} is not a pid (signal://1234) or 'self'"
        )
    return Endpoint(url=url, scheme="", pid=int(rest))


#: The port of ``nats://HOST/subject``: the NATS server's default client port.
NATS_PORT = 4222


def _parse_nats(rest: str, url: str) -> Endpoint:
    """``HOST:PORT/subject`` or ``HOST/subject`` (port 4222): a NATS server and a subject."""
    hostport, slash, subject = rest.partition("/")
    if not slash or not subject:
        raise ValueError(
            f"endpoint {url!r}: subject: missing '/subject' after the server "
            "(nats://HOST:PORT/subject)"
        )
    tokens = subject.split(".")
    if any(not t for t in tokens):
        raise ValueError(f"endpoint {url!r}: subject {subject!r} has an empty token")
    if any(c.isspace() for c in subject) or not subject.isprintable():
        raise ValueError(
            f"endpoint {url!r}: subject {subject!r} has a space or a control character"
        )
    for i, t in enumerate(tokens):
        if t not in ("*", ">") and ("*" in t or ">" in t):
            raise ValueError(
                f"endpoint {url!r}: subject token {t!r}: a wildcard ('*', '>') is a whole token"
            )
        if t == ">" and i != len(tokens) - 1:
            raise ValueError(f"endpoint {url!r}: subject {subject!r}: '>' must be the last token")
    bracketed = hostport.startswith("[")
    if (bracketed and hostport.endswith("]")) or (not bracketed and ":" not in hostport):
        hostport += f":{NATS_PORT}"
    ep = _parse_host_port(hostport, url)
    return replace(ep, subject=subject)


#: The longest POSIX message queue name in bytes, after its leading slash.
MQ_NAME_MAX = 254

_Parser = Callable[[str, str], Endpoint]
_UNIX_OPTIONS = frozenset({"mode", "backlog", "max_message"})

#: scheme -> (parser, options its query string may carry)
_PARSERS: dict[str, tuple[_Parser, frozenset[str]]] = {
    "unix": (_parse_unix, _UNIX_OPTIONS),
    "unixgram": (_parse_unix, frozenset({"mode", "max_message"})),
    "tcp": (_parse_host_port, frozenset({"backlog", "max_message"})),
    "udp": (_parse_host_port, frozenset({"iface"})),
    "mq": (_parse_mq, frozenset({"maxmsg", "msgsize", "mode", "reply", "owner"})),
    "fifo": (_parse_fifo, frozenset({"mode", "single_writer", "max_message", "owner"})),
    "shm": (_parse_shm, frozenset({"capacity", "mode"})),
    # A broadcast ring (fastipc.Broadcast): the local side of a bridge.
    "bcast": (_parse_shm, frozenset({"capacity", "mode"})),
    "fd": (_parse_fd, frozenset({"max_message"})),
    "signal": (_parse_signal, frozenset({"sig"})),
    "nats": (_parse_nats, frozenset({"queue"})),
}

#: What a refused scheme's error adds: the API that does serve it.
_SERVED_ELSEWHERE = {
    "bcast": "; a broadcast ring is fastipc.Broadcast (publish, subscribe), and a bridge's "
    "local side (fastipc.bridge)",
    "nats": "; a NATS subject is reached through fastipc.bridge(LOCAL_URL, NATS_URL) "
    "or `fastipc bridge`",
}
