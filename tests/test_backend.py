"""Backend selection: FASTIPC_BACKEND is obeyed, fallback is never silent, and both backends expose one interface."""

from __future__ import annotations

import importlib
import inspect
import os
import re

import pytest
from conftest import child_env, run_python

import fastipc
from fastipc import IncompatibleSegment, Ring


def test_backend_matches_environment_variable() -> None:
    wanted = os.environ.get("FASTIPC_BACKEND", "auto").strip().lower()
    if wanted in ("python", "native"):
        assert fastipc.BACKEND == wanted, (
            f"FASTIPC_BACKEND={wanted} but fastipc.BACKEND={fastipc.BACKEND}"
        )
    else:
        assert fastipc.BACKEND in ("python", "native")


@pytest.mark.parametrize("choice", ["python", "native"])
def test_named_backend_loads_or_fails_loudly(choice: str) -> None:
    proc = run_python(
        "import fastipc; print(fastipc.BACKEND)",
        env=child_env(FASTIPC_BACKEND=choice),
        check=False,
        timeout=30,
    )
    if proc.returncode == 0:
        assert proc.stdout.strip() == choice, "asked for one backend, silently got another"
    else:
        # Only native may fail (not built); it must say so with an ImportError.
        assert choice == "native", proc.stderr
        assert "ImportError" in proc.stderr and "native" in proc.stderr, proc.stderr


def test_unknown_backend_name_is_an_import_error() -> None:
    proc = run_python(
        "import fastipc", env=child_env(FASTIPC_BACKEND="turbo"), check=False, timeout=30
    )
    assert proc.returncode == 1
    assert "ImportError" in proc.stderr and "turbo" in proc.stderr


def test_ring_create_returns_the_loaded_backend_class(ring: Ring) -> None:
    from fastipc._backend import RingImpl

    # The public class subclasses the chosen backend's (as pyzmq's Socket does).
    assert type(ring) is Ring
    assert Ring.__bases__ == (RingImpl,)
    expected = {"python": "PythonRing", "native": "NativeRing"}[fastipc.BACKEND]
    assert RingImpl.__name__ == expected


def _both_backends() -> tuple[type, type]:
    from fastipc.backends.python_ring import PythonRing

    try:
        native = importlib.import_module("fastipc.backends.native_ring")
    except ImportError as exc:
        if (
            os.environ.get("FASTIPC_BACKEND", "").strip().lower() == "native"
            or fastipc.BACKEND == "native"
        ):
            pytest.fail(f"the native backend is required here but does not import: {exc}")
        pytest.skip(
            f"native backend not built ({exc}); compared when running with FASTIPC_BACKEND=native"
        )
    return PythonRing, native.NativeRing


_PROTOCOL = ["_create", "_open", "__len__", "__enter__", "__exit__", "__reduce__", "__iter__"]


def _interface(cls: type, returns: bool = False) -> dict[str, str]:
    """attr -> parameters (and with ``returns`` the return annotation, own class name as Self)."""
    out = {}
    for attr in sorted({a for a in dir(cls) if not a.startswith("_")} | set(_PROTOCOL)):
        try:
            obj = inspect.getattr_static(cls, attr)
        except AttributeError:
            continue
        if isinstance(obj, property):
            out[attr] = "property"
        elif isinstance(obj, (staticmethod, classmethod)) or callable(obj):
            sig = inspect.signature(getattr(cls, attr))
            text = str(sig.replace(return_annotation=inspect.Signature.empty))
            if returns:
                ret = sig.return_annotation
                ret = "" if ret is inspect.Signature.empty else str(ret)
                text += " -> " + re.sub(rf"\b(Ring|RingBase|_R|{cls.__name__})\b", "Self", ret)
            out[attr] = text
        else:
            out[attr] = "attribute"
    return out


def test_both_backends_have_the_same_public_methods_and_signatures() -> None:
    py, native = _both_backends()
    assert _interface(py) == _interface(native)


def test_backends_match_the_ring_contract_signatures_and_annotations() -> None:
    from fastipc._contract import RingBase

    py, native = _both_backends()
    public = _interface(RingBase, returns=True)
    problems = []
    for cls in (py, native):
        impl = _interface(cls, returns=True)
        for attr, sig in public.items():
            if attr not in impl:
                problems.append(f"{cls.__name__} lacks {attr}")
            elif impl[attr] != sig:
                problems.append(f"{cls.__name__}.{attr}{impl[attr]}  !=  RingBase.{attr}{sig}")
    assert not problems, "\n".join(problems)


def test_a_ring_of_the_other_backend_is_usable_or_incompatible(ring_name: str) -> None:
    """A segment made by one backend, opened by the other: works or IncompatibleSegment, never a crash."""
    _both_backends()
    other = "python" if fastipc.BACKEND == "native" else "native"
    run_python(
        f"""
        from fastipc import Ring
        r = Ring.create({ring_name!r}, 1000)
        r.send(b"from-{other}", timeout=1)
        r.close()
        """,
        env=child_env(FASTIPC_BACKEND=other),
        timeout=30,
    )
    try:
        r = Ring.open(ring_name)
    except IncompatibleSegment:
        return
    with r:
        assert r.recv(timeout=1) == f"from-{other}".encode()
        r.send(b"back", timeout=1)
        assert r.recv(timeout=1) == b"back"


_HIDE_NATIVE = """
import importlib.abc, sys
class HideNative(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("fastipc._native"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, HideNative())
"""


_FALLBACK_WARNING = "fastipc: the compiled C core cannot load"


def test_auto_falls_back_to_python_with_one_warning_when_the_compiled_module_is_missing() -> None:
    proc = run_python(
        _HIDE_NATIVE + "import fastipc; print(fastipc.BACKEND)",
        env=child_env(FASTIPC_BACKEND="auto"),
        timeout=30,
    )
    assert proc.stdout.strip() == "python"
    assert proc.stderr.count(_FALLBACK_WARNING) == 1, proc.stderr
    assert "RuntimeWarning" in proc.stderr and "fastipc._native" in proc.stderr, proc.stderr


def _copy_with(tmp_path: object, change: str) -> str:
    """A copy of the installed package with its compiled module broken one way; its parent dir."""
    import pathlib
    import shutil

    pkg = pathlib.Path(fastipc.__file__).parent
    if not list(pkg.glob("_native*.so")):
        pytest.skip("the compiled module is not built in this installation")
    copy = pathlib.Path(str(tmp_path)) / "fastipc"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    if change == "garbage":  # e.g. a wheel for another platform: dlopen fails
        for so in copy.glob("_native.*so"):
            so.write_bytes(b"not an ELF file" * 100)
    else:
        (copy / "_version.py").write_text('__version__ = "0.0.0+other"\n')
    return str(copy.parent)


@pytest.mark.parametrize(
    ("change", "reason"), [("garbage", "invalid ELF header"), ("version", "two copies")]
)
def test_auto_falls_back_with_one_warning_naming_why_the_compiled_module_cannot_load(
    tmp_path: object, change: str, reason: str
) -> None:
    path = _copy_with(tmp_path, change)
    proc = run_python(
        "import fastipc; print(fastipc.BACKEND)",
        env=child_env(FASTIPC_BACKEND="auto", PYTHONPATH=path),
        timeout=30,
    )
    assert proc.stdout.strip() == "python"
    assert proc.stderr.count(_FALLBACK_WARNING) == 1, proc.stderr
    assert reason in proc.stderr, proc.stderr
    loud = run_python(
        "import fastipc",
        env=child_env(FASTIPC_BACKEND="native", PYTHONPATH=path),
        check=False,
        timeout=30,
    )
    assert loud.returncode == 1
    assert "ImportError" in loud.stderr and reason in loud.stderr, loud.stderr


def test_auto_with_the_compiled_module_present_loads_native_without_warning() -> None:
    import pathlib

    if not list(pathlib.Path(fastipc.__file__).parent.glob("_native*.so")):
        pytest.skip("the compiled module is not built in this installation")
    proc = run_python(
        "import fastipc; print(fastipc.BACKEND)",
        env=child_env(FASTIPC_BACKEND="auto"),
        timeout=30,
    )
    assert proc.stdout.strip() == "native"
    assert _FALLBACK_WARNING not in proc.stderr, proc.stderr


def test_native_named_but_missing_is_an_import_error_with_the_reason() -> None:
    proc = run_python(
        _HIDE_NATIVE + "import fastipc",
        env=child_env(FASTIPC_BACKEND="native"),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "ImportError" in proc.stderr and "fastipc._native" in proc.stderr, proc.stderr


def test_python_files_and_compiled_module_of_different_versions_refuse_to_load(
    tmp_path: object,
) -> None:
    """Two copies installed over each other: the native backend says so instead of misbehaving."""
    import pathlib
    import shutil

    pkg = pathlib.Path(fastipc.__file__).parent
    if not list(pkg.glob("_native*.so")):
        pytest.skip("the compiled module is not built in this installation")
    copy = pathlib.Path(str(tmp_path)) / "fastipc"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "_version.py").write_text('__version__ = "0.0.0+other"\n')
    proc = run_python(
        "import fastipc",
        env=child_env(FASTIPC_BACKEND="native", PYTHONPATH=str(copy.parent)),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "two copies" in proc.stderr, proc.stderr
