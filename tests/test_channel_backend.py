"""Both channel backends implement the channel contract (ChannelBase) with the same signatures."""

from __future__ import annotations

import importlib
import inspect
import os

import pytest

import fastipc
from fastipc import Channel


def _public(cls: type) -> dict[str, str]:
    out = {}
    for attr in sorted(
        a for a in dir(cls) if not a.startswith("_") or a in ("__enter__", "__exit__", "__iter__")
    ):
        obj = inspect.getattr_static(cls, attr)
        if isinstance(obj, property):
            out[attr] = "property"
        elif callable(obj) or isinstance(obj, (classmethod, staticmethod)):
            out[attr] = str(inspect.signature(getattr(cls, attr)))
    return out


def test_channel_backends_match_the_contract() -> None:
    from fastipc._contract import ChannelBase
    from fastipc.backends.python_channel import PythonChannel

    classes: list[type] = [PythonChannel]
    try:
        classes.append(importlib.import_module("fastipc.backends.native_channel").NativeChannel)
    except ImportError as exc:
        if os.environ.get("FASTIPC_BACKEND", "").strip().lower() == "native":
            pytest.fail(f"native backend required but does not import: {exc}")
    public = _public(ChannelBase)
    for cls in classes:
        assert issubclass(cls, ChannelBase)
        assert _public(cls) == public, cls.__name__
        for name in (
            "send",
            "send_many",
            "recv",
            "recv_into",
            "recv_many",
            "recv_with_fds",
            "pending",
            "_setup",
            "_release",
            "_buffered",
        ):
            assert getattr(cls, name) is not getattr(ChannelBase, name), (
                f"{cls.__name__} lacks {name}"
            )


def test_pair_makes_the_loaded_backend_class() -> None:
    from fastipc._backend import ChannelImpl

    a, b = Channel.pair()
    with a, b:
        # The public class subclasses the chosen backend's (as pyzmq's Socket does).
        assert type(a) is Channel
        assert Channel.__bases__ == (ChannelImpl,)
        expected = {"python": "PythonChannel", "native": "NativeChannel"}[fastipc.BACKEND]
        assert ChannelImpl.__name__ == expected
