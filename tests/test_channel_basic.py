"""Channel basics on a socketpair: whole messages of every size, each receive form, input checks."""

from __future__ import annotations

import array
import selectors
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _channel_util import no_fd_leak_fixture  # noqa: F401
from _channel_workers import payload, seq_msg

from fastipc import Channel, Closed, MessageTooLarge, Timeout

SIZES = [0, 1, 7, 8, 63, 64, 4095, 65535, 65536, 65537, 131072, 300_001, 5 * 1024 * 1024]


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    orig_join = t.join

    def join(timeout: float | None = 60) -> None:
        orig_join(timeout)
        assert not t.is_alive(), "sender thread hung"
        if errors:
            raise errors[0]

    t.join = join  # type: ignore[method-assign]
    return t


@pytest.fixture
def pair() -> Any:
    a, b = Channel.pair()
    yield a, b
    a.close()
    b.close()


def test_every_size_arrives_whole_and_in_order(no_fd_leak: None, pair: Any) -> None:
    a, b = pair
    t = in_thread(lambda: [a.send(payload(i, n)) for i, n in enumerate(SIZES)])
    for i, n in enumerate(SIZES):
        got = b.recv(timeout=30)
        assert type(got) is bytes and len(got) == n and got == payload(i, n), (
            f"message {i} ({n} bytes)"
        )
    t.join()


def test_recv_into_fits_exactly_and_a_short_buffer_leaves_the_message(pair: Any) -> None:
    a, b = pair
    a.send(b"0123456789")
    small = bytearray(4)
    with pytest.raises(MessageTooLarge, match="10 bytes.*buffer of 4 bytes"):
        b.recv_into(small, timeout=1)
    assert not b.closed
    buf = bytearray(10)
    assert b.recv_into(buf, timeout=1) == 10 and buf == b"0123456789"
    big = payload(3, 1_000_000)
    t = in_thread(lambda: a.send(big))
    with pytest.raises(MessageTooLarge):
        b.recv_into(bytearray(999_999), timeout=10)
    out = bytearray(2_000_000)
    assert b.recv_into(memoryview(out), timeout=10) == len(big)
    assert out[: len(big)] == big
    t.join()
    arr = array.array("i", [0] * 4)
    a.send(b"\x01\x00\x00\x00" * 4)
    assert b.recv_into(arr, timeout=1) == 16 and list(arr) == [1, 1, 1, 1]


def test_send_accepts_any_contiguous_buffer(pair: Any) -> None:
    a, b = pair
    for data in (
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"xmemoryviewx")[1:-1],
        array.array("h", [1, 2]),
    ):
        a.send(data)
        assert b.recv(timeout=1) == bytes(memoryview(data).cast("B"))


@pytest.mark.parametrize("bad", ["text", 5, None, [b"x"]])
def test_send_refuses_non_buffers(pair: Any, bad: Any) -> None:
    a, b = pair
    with pytest.raises(TypeError):
        a.send(bad)
    with pytest.raises(TypeError):
        a.send_many([b"ok", bad])
    a.send(b"still fine")
    assert b.recv(timeout=1) == b"still fine"
    with pytest.raises(Timeout):
        b.recv(timeout=0)  # nothing of the refused calls went out


def test_send_over_max_message_sends_nothing() -> None:
    a, b = Channel.pair(max_message=1000)
    with a, b:
        with pytest.raises(MessageTooLarge, match="1001 bytes exceeds max_message=1000"):
            a.send(b"x" * 1001)
        with pytest.raises(MessageTooLarge, match="item 1"):
            a.send_many([b"ok", b"x" * 1001])
        a.send(b"x" * 1000)
        assert b.recv(timeout=1) == b"x" * 1000
        with pytest.raises(Timeout):
            b.recv(timeout=0)


def test_send_one_by_one_around_the_size_limits_of_its_fast_path(pair: Any) -> None:
    # send() frames short bytes from a table of headers (python backend: lengths
    # 0-1023), longer ones up to 16 KiB by packing, the rest on the general path.
    a, b = pair
    sizes = [0, 1, 1022, 1023, 1024, 1025, 16382, 16383, 16384, 16385, 70_000]
    for i, n in enumerate(sizes):
        a.send(payload(i, n))
        assert b.recv(timeout=5) == payload(i, n), n
    for i, n in enumerate(sizes):  # all queued before any is read
        a.send(payload(i, n))
    assert [b.recv(timeout=5) for _ in sizes] == [payload(i, n) for i, n in enumerate(sizes)]


def test_a_small_max_message_bounds_the_fast_path_too() -> None:
    a, b = Channel.pair(max_message=10)
    with a, b:
        a.send(b"0123456789")
        with pytest.raises(MessageTooLarge, match="11 bytes exceeds max_message=10"):
            a.send(b"0123456789a")
        assert b.recv(timeout=1) == b"0123456789"
        with pytest.raises(Timeout):
            b.recv(timeout=0)


def test_recv_many_takes_what_is_there_up_to_max_count(pair: Any) -> None:
    a, b = pair
    msgs = [payload(i, i % 200) for i in range(50)]
    a.send_many(msgs)
    got = b.recv_many(20, timeout=1)
    assert got == msgs[:20]
    rest: list[bytes] = []
    while len(rest) < 30:
        rest += b.recv_many(1000, timeout=1)
    assert rest == msgs[20:]
    with pytest.raises(Timeout):
        b.recv_many(5, timeout=0)
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error):
            b.recv_many(bad)


def test_send_many_of_many_messages_and_mixed_sizes_across_partial_writes(pair: Any) -> None:
    a, b = pair
    msgs = [seq_msg(i, 8 + (i * 37) % 300) for i in range(100_000)]
    msgs[500] = payload(500, 200_000)  # a long one among them, read straight into its buffer
    msgs[501] = b""
    # around the size where send_many stops copying a payload and points at it
    for i, n in enumerate([16383, 16384, 16385, 70_000, 65536, 65537], start=900):
        msgs[i] = payload(i, n)
    t = in_thread(lambda: a.send_many(msgs, timeout=60))
    got: list[bytes] = []
    while len(got) < len(msgs):
        got += b.recv_many(10_000, timeout=30)
    t.join()
    assert len(got) == len(msgs)
    bad = [i for i, (x, y) in enumerate(zip(got, msgs)) if x != y]
    assert not bad, f"{len(bad)} messages differ, first {bad[0]}"


def test_send_many_accepts_iterables_and_returns_the_count(pair: Any) -> None:
    a, b = pair
    assert a.send_many(payload(i, 10) for i in range(3)) == 3
    assert a.send_many([]) == 0
    assert a.send_many((bytearray(b"t"), memoryview(b"u"))) == 2
    got: list[bytes] = []
    while len(got) < 5:
        got += b.recv_many(10, timeout=1)
    assert got == [payload(i, 10) for i in range(3)] + [b"t", b"u"]


def test_pending_and_fileno_work_with_selectors(pair: Any) -> None:
    a, b = pair
    assert not b.pending()
    with selectors.DefaultSelector() as sel:
        sel.register(b.fileno(), selectors.EVENT_READ)
        assert sel.select(0) == []
        a.send_many([b"one", b"two"])
        assert sel.select(1)
    assert b.recv(timeout=1) == b"one"
    assert b.pending()  # the second came in the same read: buffered, invisible to select
    assert b.recv(timeout=0) == b"two"
    assert not b.pending()


def test_close_is_idempotent_and_use_after_close_is_a_value_error(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    with a:
        pass
    assert a.closed
    a.close()
    for call in (
        lambda: a.send(b"x"),
        lambda: a.recv(timeout=0),
        a.fileno,
        a.pending,
        lambda: a.recv_many(1),
        lambda: a.send_many([b"x"]),
        a.peer_credentials,
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(Closed):
        b.recv(timeout=1)
    b.close()
    assert "closed" in repr(b)


def test_iteration_ends_when_the_peer_closes(pair: Any) -> None:
    a, b = pair
    a.send_many([b"a", b"b", b"c"])
    a.close()
    assert list(b) == [b"a", b"b", b"c"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Channel.pair(max_message=0)
    with pytest.raises(TypeError):
        Channel.pair(max_message="big")  # type: ignore[arg-type]
    a, b = Channel.pair()
    with a, b:
        with pytest.raises(ValueError):
            a.recv(timeout=-1)
        with pytest.raises(TypeError):
            a.recv(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            a.shutdown("sideways")
        with pytest.raises(TypeError):
            a.recv_into(b"readonly", timeout=0)
        with pytest.raises(TypeError):
            Channel.from_socket("not a socket")  # type: ignore[arg-type]


def test_from_socket_adopts_a_stream_socket_and_refuses_others() -> None:
    import socket

    s1, s2 = socket.socketpair()
    a, b = Channel.from_socket(s1), Channel.from_socket(s2)
    with a, b:
        a.send(b"adopted")
        assert b.recv(timeout=1) == b"adopted"
    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with d1, d2, pytest.raises(ValueError, match="SOCK_STREAM"):
        Channel.from_socket(d1)


def test_from_socket_adopts_a_tcp_socket_with_no_handoff_and_no_fds() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        c = socket.create_connection(listener.getsockname())
        s, _ = listener.accept()
    a = Channel.from_socket(c, name="tcp-client", max_message=1 << 20)
    b = Channel.from_socket(s, handoff_min=4096)
    with a, b:
        assert a.name == "tcp-client" and b.name == "socket"
        assert a.handoff_min == 0 and b.handoff_min == 0, "hand-off needs SCM_RIGHTS: off on tcp"
        big = bytes(range(256)) * 2048  # 512 KiB: inline, in pieces
        b.send(big)
        assert a.recv(timeout=5) == big
        a.send_many([b"one", b"two"])
        assert b.recv_many(2, timeout=5) == [b"one", b"two"]
        with open("/dev/null") as f, pytest.raises(ValueError, match="tcp-client.*unix socket"):
            a.send(b"with an fd", fds=[f])
        a.send(b"still usable")  # the refused send sent nothing
        assert b.recv(timeout=5) == b"still usable"
        with pytest.raises(MessageTooLarge):
            a.send(bytes((1 << 20) + 1))
        with pytest.raises(ValueError, match="unix socket"):
            a.peer_credentials()  # no peer process on tcp: never made-up numbers
        for attr in ("max_message", "handoff_min", "handoff_area"):
            # Fixed when the channel is made (the native core keeps its own copies): a
            # store would make the two backends disagree, so neither takes one.
            with pytest.raises(AttributeError):
                setattr(b, attr, 1)
        assert b.handoff_min == 0 and a.max_message == 1 << 20
        b.send(bytes(200_000))
        assert a.recv(timeout=5) == bytes(200_000)
