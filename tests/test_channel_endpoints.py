"""Endpoint URLs: every form parses to the right address; every malformed part is named."""

from __future__ import annotations

import pytest

from fastipc.endpoints import SUN_PATH_MAX, parse


def test_unix_absolute_relative_and_abstract_forms() -> None:
    ep = parse("unix:///run/app.sock")
    assert (ep.scheme, ep.path, ep.abstract, ep.address) == (
        "unix",
        "/run/app.sock",
        False,
        "/run/app.sock",
    )
    ep = parse("unix://rel/dir/app.sock")
    assert ep.path == "rel/dir/app.sock" and ep.address == "rel/dir/app.sock"
    ep = parse("unix://@my-service")
    assert ep.abstract and ep.name == "my-service" and ep.address == b"\0my-service"
    assert ep.display == "@my-service"


def test_query_options_are_parsed_and_unknown_ones_named() -> None:
    ep = parse("unix:///tmp/a.sock?mode=0660&backlog=5")
    assert dict(ep.options) == {"mode": "0660", "backlog": "5"}
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        parse("unix:///tmp/a.sock?colour=red")
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse("unix:///tmp/a.sock?mode")


def test_options_come_typed_and_checked_once() -> None:
    ep = parse("unix:///tmp/a.sock?mode=0660&backlog=5&max_message=1024")
    assert (ep.mode, ep.backlog, ep.max_message) == (0o660, 5, 1024)
    ep = parse("mq:///q?maxmsg=3&msgsize=100&reply=/answers")
    assert (ep.maxmsg, ep.msgsize, ep.reply, ep.mode) == (3, 100, "/answers", None)
    assert parse("fifo:///tmp/f?single_writer=1").single_writer is True
    assert parse("fifo:///tmp/f?single_writer=0").single_writer is False
    assert parse("fifo:///tmp/f").single_writer is False
    assert parse("udp://239.1.1.1:5000?iface=127.0.0.1").iface == "127.0.0.1"
    assert parse("shm://ring?capacity=4096").capacity == 4096
    ep = parse("tcp://127.0.0.1:1")
    assert (ep.backlog, ep.max_message, ep.options) == (None, None, {})


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("unix:///a?mode=0999", "option mode='0999' is not an octal permission mask"),
        ("unix:///a?mode=1777", "option mode='1777' is not a permission mask between"),
        ("unix:///a?backlog=-1", "option backlog='-1' is not a whole number >= 0"),
        # listen() takes a C int: more was an OverflowError from serve()
        ("tcp://h:1?backlog=2147483648", "option backlog='2147483648' is over 2147483647"),
        ("unix:///a?max_message=0", "option max_message='0' is not a whole number >= 1"),
        ("shm://r?capacity=²", "option capacity='²' is not a whole number >= 1"),
        ("fifo:///f?single_writer=yes", "option single_writer='yes' is not 0 or 1"),
        ("udp://h:1?iface=eth0", "option iface='eth0' is not an IPv4 address"),
        ("mq:///q?reply=q", "option reply='q' is not a queue name"),
        ("unix:///a?mode=0600&mode=0600", "option 'mode' given twice"),
    ],
)
def test_a_malformed_option_is_named(url: str, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        parse(url)


def test_path_limit_is_107_bytes() -> None:
    ok = "/" + "a" * (SUN_PATH_MAX - 1)
    assert parse("unix://" + ok).path == ok
    with pytest.raises(ValueError, match="108 bytes, over the 107-byte limit"):
        parse("unix://" + ok + "b")
    with pytest.raises(ValueError, match="107-byte limit"):
        parse("unix://@" + "n" * 108)
    # multi-byte characters count in bytes, not characters
    with pytest.raises(ValueError, match="107-byte limit"):
        parse("unix:///" + "é" * 54)


@pytest.mark.parametrize(
    "url, part",
    [
        ("/run/app.sock", "missing scheme"),
        ("http://x", "unknown scheme 'http'"),
        ("unix://", "empty path"),
        ("unix://@", "empty abstract"),
        ("unix:///run/dir/", "directory"),
        ("tcp://127.0.0.1", "port"),
        ("tcp://127.0.0.1:99999", "port '99999'"),
        ("tcp://:80", "host"),
        ("tcp://[::1:80", "host"),
        ("tcp://::1:80", "IPv6"),
        ("unix:///a\0b", "NUL"),
        # numbers are ASCII digits: not '²' (int() refuses it), nor another script's
        ("tcp://127.0.0.1:²", "port '²'"),
        ("udp://127.0.0.1:٨٠", "port '٨٠'"),
        ("fd://١", "fd '١' is not a descriptor number"),
        ("signal://١٢٣?sig=USR1", "process '١٢٣' is not a pid"),
        ("signal://123?sig=٣", "no signal name"),
        ("signal://123?sig=RTMIN+١", "expected RTMIN"),
        ("shm://r?capacity=١٠٠", "option capacity='١٠٠' is not a whole number"),
    ],
)
def test_malformed_urls_name_the_wrong_part(url: str, part: str) -> None:
    with pytest.raises(ValueError, match=part.replace("[", r"\[")):
        parse(url)


def test_tcp_forms() -> None:
    assert parse("tcp://127.0.0.1:8080").address == ("127.0.0.1", 8080)
    assert parse("tcp://[::1]:5000").address == ("::1", 5000)
    assert parse("udp://localhost:53").port == 53


def test_scheme_restriction_and_type() -> None:
    with pytest.raises(ValueError, match="not accepted here"):
        parse("tcp://h:1", schemes=("unix",))
    with pytest.raises(TypeError):
        parse(b"unix:///x")  # type: ignore[arg-type]
