"""The one place that picks the native (C through cffi) or pure-Python backend.

``FASTIPC_BACKEND=auto`` (the default) uses native when the compiled module
imports. When that module is missing or cannot load (no wheel for this
platform and a source install without a compiler, a glibc older than 2.17,
a copy of another version), it falls back to python with one RuntimeWarning
that names why; any other ImportError in the native backend is raised.
``native`` raises ImportError with the reason when it cannot load;
``python`` never loads C.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["BACKEND", "BroadcastImpl", "ChannelImpl", "RingImpl", "SubscriberImpl"]

_choice = os.environ.get("FASTIPC_BACKEND", "auto").strip().lower() or "auto"
if _choice not in ("auto", "native", "python"):
    raise ImportError(f"FASTIPC_BACKEND={_choice!r}: expected auto, native or python")

BACKEND: str
if _choice == "python":
    from .backends.python_broadcast import PythonBroadcast as BroadcastImpl
    from .backends.python_broadcast import PythonSubscriber as SubscriberImpl
    from .backends.python_channel import PythonChannel as ChannelImpl
    from .backends.python_ring import PythonRing as RingImpl

    BACKEND = "python"
else:
    try:
        from .backends.native_broadcast import (  # type: ignore[assignment]
            NativeBroadcast as BroadcastImpl,
        )
        from .backends.native_broadcast import (  # type: ignore[assignment]
            NativeSubscriber as SubscriberImpl,
        )
        from .backends.native_channel import NativeChannel as ChannelImpl  # type: ignore[assignment]
        from .backends.native_ring import NativeRing as RingImpl  # type: ignore[assignment]
    except ImportError as exc:
        # Only the compiled module (missing, or not loadable here) may fall
        # back; any other failure of the native backend must be seen.
        if _choice == "native" or not (exc.name or "").startswith("fastipc._native"):
            raise ImportError(
                f"FASTIPC_BACKEND={_choice}: the native backend cannot load: {exc}"
            ) from exc
        warnings.warn(
            f"fastipc: the compiled C core cannot load ({exc}); using the pure-Python "
            "backend, which is slower. Install a prebuilt wheel (Linux x86_64/aarch64, "
            "glibc 2.17+) or reinstall with a C compiler and the Python headers; "
            "FASTIPC_BACKEND=python silences this, FASTIPC_BACKEND=native makes it an error.",
            RuntimeWarning,
            stacklevel=1,
        )
        from .backends.python_broadcast import PythonBroadcast as BroadcastImpl
        from .backends.python_broadcast import PythonSubscriber as SubscriberImpl
        from .backends.python_channel import PythonChannel as ChannelImpl
        from .backends.python_ring import PythonRing as RingImpl

        BACKEND = "python"
    else:
        BACKEND = "native"
