"""The one place that picks the native (C through cffi) or pure-Python backend.

``FASTIPC_BACKEND=auto`` (the default) uses native when the compiled module
imports and falls back to python only when it is missing; ``native`` raises
ImportError with the reason when it cannot load; ``python`` never loads C.
"""

from __future__ import annotations

import os

__all__ = ["BACKEND", "ChannelImpl", "RingImpl"]

_choice = os.environ.get("FASTIPC_BACKEND", "auto").strip().lower() or "auto"
if _choice not in ("auto", "native", "python"):
    raise ImportError(f"FASTIPC_BACKEND={_choice!r}: expected auto, native or python")

BACKEND: str
if _choice == "python":
    from .backends.python_channel import PythonChannel as ChannelImpl
    from .backends.python_ring import PythonRing as RingImpl

    BACKEND = "python"
else:
    try:
        from .backends.native_channel import NativeChannel as ChannelImpl  # type: ignore[assignment]
        from .backends.native_ring import NativeRing as RingImpl  # type: ignore[assignment]
    except ModuleNotFoundError as exc:
        # Only a missing compiled module may fall back; a broken one must be seen.
        if _choice == "native" or not (exc.name or "").startswith("fastipc._native"):
            raise ImportError(
                f"FASTIPC_BACKEND={_choice}: the native backend cannot load: {exc}"
            ) from exc
        from .backends.python_channel import PythonChannel as ChannelImpl
        from .backends.python_ring import PythonRing as RingImpl

        BACKEND = "python"
    else:
        BACKEND = "native"
