"""Loads the two compiled modules once and checks they match the Python files.

``fastipc._native`` holds the calls that release the GIL (anything that may
block); ``fastipc._native_fast`` the same C built to keep the GIL, for calls
that never block (try-calls, lengths, releases), where dropping and taking
the GIL would cost more than the call. Each cffi module has its own struct
types: a pointer made by one is cast before the other sees it.
"""

from __future__ import annotations

import os

from .._version import __version__

try:
    from .._native import ffi, lib
    from .._native_fast import ffi as ffi_fast
    from .._native_fast import lib as lib_fast
except ImportError as exc:
    # A module that dlopen refuses (another platform, a too-old glibc) raises
    # an ImportError named "_native" or nothing; _backend.py falls back on the
    # full name. (A missing cffi is named "_cffi_backend": no fallback.)
    if exc.name in (None, "_native", "_native_fast"):
        exc.name = "fastipc." + (exc.name or "_native")
    raise

__all__ = ["SPIN_NS", "ffi", "ffi_fast", "lib", "lib_fast"]

_compiled = ffi.string(lib.fi_version()).decode()
if _compiled != __version__ or ffi_fast.string(lib_fast.fi_version()).decode() != __version__:
    raise ImportError(
        f"fastipc._native is version {_compiled} but the Python files are {__version__}: "
        "two copies of fastipc are installed; reinstall it",
        name="fastipc._native",  # the compiled module is what cannot be used
    )

#: Busy-wait before sleeping (ns), for rings and channels; FASTIPC_SPIN_US
#: overrides (0 disables).
SPIN_NS = int(float(os.environ.get("FASTIPC_SPIN_US", "20")) * 1000)
