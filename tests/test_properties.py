"""Property tests (hypothesis): framing, endpoint parsing, and Ring/Channel against simple models.

- ``framing.LengthDecoder`` is compared with a one-shot model decoder over
  arbitrary byte streams (well-formed frames, hostile headers, garbage) fed
  in arbitrary chunks.
- ``endpoints.parse`` never raises anything but ValueError/TypeError, and
  valid URLs built from the grammar come back with the parts they were
  built from.
- A Ring and a ``Channel.pair()`` (whichever backend FASTIPC_BACKEND picks)
  are driven by random sequences of send/send_many/recv/recv_many/
  recv_into/recv_view with ``timeout=0`` and must behave like a deque.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import new_name

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastipc import Channel, MessageTooLarge, Ring, Timeout, endpoints, framing

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- framing.LengthDecoder ---------------------------------------------------


def model_decode(
    stream: bytes, max_message: int, allowed: int
) -> tuple[list[bytes], type | None, int]:
    """Decode the whole stream at once: (payloads, error type or None, bytes left over)."""
    out: list[bytes] = []
    off = 0
    while len(stream) - off >= 8:
        length, flags = struct.unpack_from("<II", stream, off)
        # Flags first, as csrc/channel.c: garbage is a protocol error even when
        # its length field is also too large.
        if flags & ~allowed:
            return out, framing.FramingError, 0
        if length > max_message:
            return out, MessageTooLarge, 0
        if off + 8 + length > len(stream):
            break
        out.append(stream[off + 8 : off + 8 + length])
        off += 8 + length
    return out, None, len(stream) - off


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack("<II", len(payload), flags) + payload


#: A stream piece: a good frame, a header with an odd length or flags, or raw garbage.
pieces = st.one_of(
    st.builds(frame, st.binary(max_size=40)),
    st.builds(frame, st.binary(max_size=10), st.sampled_from([1, 2, 4, 8, 0x80000000])),
    st.builds(
        lambda n, f: struct.pack("<II", n, f),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
    ),
    st.binary(max_size=20),
)


@st.composite
def chunked(draw: Any, stream: bytes) -> list[bytes]:
    """``stream`` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    out, prev = [], 0
    for c in [*cuts, len(stream)]:
        out.append(stream[prev:c])
        prev = c
    return out


@SETTINGS
@given(
    st.lists(pieces, max_size=8).map(b"".join).flatmap(lambda s: st.tuples(st.just(s), chunked(s))),
    st.sampled_from([1, 16, 100, 2**20, 2**32 - 1]),
    st.sampled_from([0, framing.FRAME_FDS, framing.CHANNEL_FLAGS]),
)
def test_length_decoder_matches_model(
    stream_chunks: tuple[bytes, list[bytes]], max_message: int, allowed: int
) -> None:
    stream, chunks = stream_chunks
    assert b"".join(chunks) == stream
    want, want_error, left = model_decode(stream, max_message, allowed)
    dec = framing.LengthDecoder(max_message, allowed_flags=allowed)
    got: list[bytes] = []
    for chunk in chunks:
        got.extend(dec.feed(chunk))
    assert got == want
    if want_error is None:
        assert dec.error is None
        assert dec.pending == left
    else:
        assert type(dec.error) is want_error
        assert dec.feed(frame(b"more")) == []  # nothing after a broken header
        dec.reset()
        assert dec.error is None and dec.pending == 0
        assert dec.feed(frame(b"a")) == [b"a"]


@SETTINGS
@given(st.binary(max_size=64), st.integers(1, 64))
def test_length_decoder_byte_at_a_time(stream: bytes, max_message: int) -> None:
    """Feeding one byte at a time gives what feeding everything at once gives."""
    whole = framing.LengthDecoder(max_message)
    at_once = whole.feed(stream)
    dec = framing.LengthDecoder(max_message)
    got: list[bytes] = []
    for i in range(len(stream)):
        got.extend(dec.feed(stream[i : i + 1]))
    assert got == at_once
    assert type(dec.error) is type(whole.error)
    assert dec.pending == whole.pending


# ---- endpoints.parse ---------------------------------------------------------

SCHEMES = ["unix", "unixgram", "tcp", "udp", "mq", "fifo", "shm", "UNIX", "nats", ""]
OPTION_KEYS = [
    "mode",
    "backlog",
    "max_message",
    "maxmsg",
    "msgsize",
    "capacity",
    "iface",
    "reply",
    "single_writer",
    "x",
    "",
]


@st.composite
def near_urls(draw: Any) -> str:
    """Strings shaped like endpoint URLs, mostly wrong somewhere."""
    scheme = draw(st.sampled_from(SCHEMES))
    sep = draw(st.sampled_from(["://", ":/", "://", ""]))
    rest = draw(st.text(max_size=40))
    url = scheme + sep + rest
    if draw(st.booleans()):
        opts = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(OPTION_KEYS), st.sampled_from(["=", ""]), st.text(max_size=8)
                ),
                max_size=3,
            )
        )
        url += "?" + "&".join(k + eq + v for k, eq, v in opts)
    return url


@SETTINGS
@given(st.one_of(st.text(max_size=80), near_urls()))
def test_parse_raises_only_value_or_type_error(url: str) -> None:
    try:
        ep = endpoints.parse(url)
    except (ValueError, TypeError):
        return
    assert ep.url == url
    assert ep.scheme in ("unix", "unixgram", "tcp", "udp", "mq", "fifo", "shm")
    assert isinstance(ep.display, str)
    if ep.scheme in ("unix", "unixgram", "tcp", "udp"):
        assert ep.address


@SETTINGS
@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_parse_non_str_is_type_error(obj: object) -> None:
    with pytest.raises(TypeError):
        endpoints.parse(obj)  # type: ignore[arg-type]


path_char = st.characters(blacklist_characters="?/\0", blacklist_categories=("Cs",))
segment = st.text(path_char, min_size=1, max_size=12)


@st.composite
def valid_endpoints(draw: Any) -> tuple[str, dict[str, Any]]:
    """A valid URL and the parts parse() must find in it."""
    scheme = draw(st.sampled_from(["unix", "unixgram", "tcp", "udp", "mq", "fifo", "shm"]))
    want: dict[str, Any] = {"scheme": scheme}
    if scheme in ("unix", "unixgram", "fifo"):
        kind = draw(
            st.sampled_from(["abs", "rel", "abstract"] if scheme != "fifo" else ["abs", "rel"])
        )
        if kind == "abstract":
            name = draw(
                st.text(
                    st.characters(blacklist_characters="?\0", blacklist_categories=("Cs",)),
                    min_size=1,
                    max_size=30,
                )
            )
            rest = "@" + name
            want.update(abstract=True, name=name, path=None)
        else:
            parts = draw(st.lists(segment, min_size=1, max_size=4))
            path = "/".join(parts)
            if path.startswith("@"):
                path = "_" + path
            if kind == "abs":
                path = "/" + path
            if scheme != "fifo":
                while len(path.encode()) > endpoints.SUN_PATH_MAX:
                    path = path[:-1]
                if path.endswith("/") or path in ("", "/"):
                    path = path.rstrip("/") + "x"
            rest = path
            want.update(path=path, abstract=False)
        keys = {
            "unix": ["mode", "backlog", "max_message"],
            "unixgram": ["mode", "max_message"],
            "fifo": ["mode", "single_writer", "max_message"],
        }[scheme]
    elif scheme in ("tcp", "udp"):
        host = draw(
            st.one_of(
                st.ip_addresses(v=4).map(str),
                st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
                st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
            )
        )
        port = draw(st.integers(0, 65535))
        rest = f"{host}:{port}"
        want.update(host=host.strip("[]"), port=port)
        keys = ["backlog", "max_message"] if scheme == "tcp" else ["iface"]
    elif scheme == "mq":
        name = draw(
            st.text(
                st.characters(blacklist_characters="?/\0", blacklist_categories=("Cs",)),
                min_size=1,
                max_size=40,
            )
        )
        while len(name.encode()) > endpoints.MQ_NAME_MAX:
            name = name[:-1]
        rest = "/" + name
        want.update(name="/" + name)
        keys = ["maxmsg", "msgsize", "mode", "reply"]
    else:
        name = draw(
            st.from_regex(r"[A-Za-z0-9._-]{1,50}", fullmatch=True).filter(
                lambda n: n not in (".", "..")  # valid characters, but never a ring name
            )
        )
        rest = name
        want.update(name=name)
        keys = ["capacity", "mode"]
    values = {
        "mode": st.integers(0, 0o777).map(lambda m: f"0{m:o}"),
        "backlog": st.integers(0, 4096).map(str),
        "max_message": st.integers(1, 2**32).map(str),
        "maxmsg": st.integers(1, 100).map(str),
        "msgsize": st.integers(1, 10**6).map(str),
        "capacity": st.integers(1, 10**9).map(str),
        "single_writer": st.sampled_from(["0", "1"]),
        "iface": st.ip_addresses(v=4).map(str),
        "reply": st.from_regex(r"/[a-z0-9_]{1,20}", fullmatch=True),
    }
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    options = {k: draw(values[k]) for k in chosen}
    url = f"{scheme}://{rest}"
    if options:
        url += "?" + "&".join(f"{k}={v}" for k, v in options.items())
    want["options"] = options
    return url, want


@SETTINGS
@given(valid_endpoints())
def test_parse_round_trips_valid_urls(case: tuple[str, dict[str, Any]]) -> None:
    url, want = case
    ep = endpoints.parse(url)
    assert ep.url == url
    for key, value in want.items():
        assert getattr(ep, key) == value, key
    assert dict(ep.options) == want["options"]
    again = endpoints.parse(ep.url)
    assert again == ep
    if ep.scheme in ("unix", "unixgram", "tcp", "udp"):
        assert ep.address  # a socket address can be made from it


# ---- Ring and Channel against a deque ------------------------------------------

small = st.binary(max_size=200)
#: (operation, argument) pairs; the argument's meaning depends on the operation.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), small),
        st.tuples(st.just("send"), st.integers(0, 3000).map(lambda n: bytes([n % 251]) * n)),
        st.tuples(st.just("send_many"), st.lists(small, max_size=6)),
        st.tuples(st.just("recv"), st.none()),
        st.tuples(st.just("recv_many"), st.integers(1, 5)),
        st.tuples(st.just("recv_into"), st.integers(0, 400)),
        st.tuples(st.just("recv_view"), st.none()),
    ),
    max_size=40,
)


def check_receive(op: str, arg: Any, endpoint: Any, model: collections.deque[bytes]) -> None:
    """One receive with timeout=0 on ``endpoint``; it must agree with ``model``."""
    if not model:
        with pytest.raises(Timeout):
            if op == "recv":
                endpoint.recv(timeout=0)
            elif op == "recv_many":
                endpoint.recv_many(arg, timeout=0)
            elif op == "recv_into":
                endpoint.recv_into(bytearray(arg), timeout=0)
            else:
                with endpoint.recv_view(timeout=0):
                    pass
        return
    if op == "recv":
        assert endpoint.recv(timeout=0) == model.popleft()
    elif op == "recv_many":
        got = endpoint.recv_many(arg, timeout=0)
        assert 1 <= len(got) <= arg
        assert got == [model.popleft() for _ in got]
    elif op == "recv_into":
        buf = bytearray(arg)
        if len(model[0]) > arg:
            with pytest.raises(MessageTooLarge):
                endpoint.recv_into(buf, timeout=0)
        else:
            n = endpoint.recv_into(buf, timeout=0)
            assert bytes(buf[:n]) == model.popleft()
    else:
        with endpoint.recv_view(timeout=0) as view:
            assert bytes(view) == model[0]
        model.popleft()


@contextmanager
def new_ring(capacity: int) -> Iterator[Ring]:
    """A fresh ring of a unique name; closed and unlinked afterwards."""
    name = new_name("tprop")
    ring = Ring.create(name, capacity)
    try:
        yield ring
    finally:
        ring.close()
        try:
            Ring.unlink_name(name)
        except FileNotFoundError:
            pass


@SLOW
@given(st.sampled_from([64, 1000, 4096]), ops)
def test_ring_matches_deque(capacity: int, program: list[tuple[str, Any]]) -> None:
    with new_ring(capacity) as ring:
        model: collections.deque[bytes] = collections.deque()
        for op, arg in program:
            if op == "send":
                if len(arg) > capacity:
                    with pytest.raises(MessageTooLarge):
                        ring.send(arg, timeout=0)
                elif not model:
                    ring.send(arg, timeout=0)  # one message up to capacity fits an empty ring
                    model.append(arg)
                else:
                    try:
                        ring.send(arg, timeout=0)
                        model.append(arg)
                    except Timeout:
                        pass
            elif op == "send_many":
                if any(len(m) > capacity for m in arg):
                    with pytest.raises(MessageTooLarge):
                        ring.send_many(arg, timeout=0)
                    continue
                try:
                    assert ring.send_many(arg, timeout=0) == len(arg)
                    model.extend(arg)
                except Timeout as exc:
                    assert 0 <= exc.sent < len(arg)
                    model.extend(arg[: exc.sent])
            else:
                check_receive(op, arg, ring, model)
            assert len(ring) == len(model)
        while model:
            assert ring.recv(timeout=0) == model.popleft()
        with pytest.raises(Timeout):
            ring.recv(timeout=0)


#: Channel messages also come long: past the hand-off threshold, and past 64 KiB
#: (the native receiver reads those straight into the destination).
channel_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), small),
        st.tuples(st.just("send"), st.integers(0, 3000).map(lambda n: bytes([n % 251]) * n)),
        st.tuples(st.just("send"), st.integers(60_000, 90_000).map(lambda n: bytes([n % 253]) * n)),
        st.tuples(st.just("send_many"), st.lists(small, max_size=6)),
        st.tuples(st.just("recv"), st.none()),
        st.tuples(st.just("recv_many"), st.integers(1, 5)),
        st.tuples(st.just("recv_into"), st.sampled_from([0, 10, 400, 70_000, 100_000])),
        st.tuples(st.just("recv_view"), st.none()),
    ),
    max_size=40,
)
CHANNEL_MAX = 100_000


@SLOW
@given(channel_ops, st.booleans())
def test_channel_matches_deque(program: list[tuple[str, Any]], handoff: bool) -> None:
    # A small hand-off area, so that messages of 1 KiB and more go through
    # shared memory (descriptors on the socket) when `handoff` is on.
    kw = {"handoff_min": 1024, "handoff_area": 256 * 1024} if handoff else {"handoff_min": 0}
    a, b = Channel.pair(max_message=CHANNEL_MAX, **kw)
    try:
        model: collections.deque[bytes] = collections.deque()
        for op, arg in program:
            if op in ("send", "send_many"):
                # Keep what is in flight well under the socket's buffer, so that
                # a send with timeout=0 never has to wait.
                while model and (len(model) > 16 or sum(map(len, model)) > 60_000):
                    check_receive("recv", None, b, model)
            if op == "send":
                if len(arg) > CHANNEL_MAX:
                    with pytest.raises(MessageTooLarge):
                        a.send(arg, timeout=0)
                else:
                    a.send(arg, timeout=0)
                    model.append(arg)
            elif op == "send_many":
                assert a.send_many(arg, timeout=0) == len(arg)
                model.extend(arg)
            else:
                check_receive(op, arg, b, model)
        while model:
            assert b.recv(timeout=0) == model.popleft()
        with pytest.raises(Timeout):
            b.recv(timeout=0)
        a.close()
        with pytest.raises(EOFError):
            b.recv(timeout=0)
    finally:
        a.close()
        b.close()
