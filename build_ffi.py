"""The cffi builder: describes fastipc's two compiled modules, nothing else.

Both compile the same C sources against the same header (whose CDEF section
is the cdef, so Python's view cannot drift from the C):

* ``fastipc._native``: every call releases the GIL; used for calls that block.
* ``fastipc._native_fast``: calls keep the GIL. Only the never-blocking
  ``fi_*_try_*`` calls go through it, which saves the ~30-40 ns release and
  re-take per call that stock cffi pays (docs/architecture.md, "The C core").

``FASTIPC_SANITIZE=1`` builds them with AddressSanitizer and UBSan.
"""

import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADER = (HERE / "csrc" / "fastipc.h").read_text()
CDEF = HEADER.split("/* CDEF BEGIN */")[1].split("/* CDEF END */")[0]
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "src" / "fastipc" / "_version.py").read_text()
).group(1)

SOURCES = [
    "csrc/ring.c",
    "csrc/broadcast.c",
    "csrc/lock.c",
    "csrc/channel.c",
    "csrc/handoff.c",
    "csrc/signals.c",
]
# A changed header rebuilds every source (setuptools only compares these dates).
DEPENDS = sorted(str(p.relative_to(HERE)) for p in (HERE / "csrc").glob("*.h"))
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", f'-DFASTIPC_VERSION="{VERSION}"']
LDFLAGS = []
if os.environ.get("FASTIPC_SANITIZE", "") not in ("", "0"):
    CFLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    LDFLAGS += ["-fsanitize=address,undefined"]

# cffi wraps each call in these macros (see cffi/recompiler.py); emptying them
# in the preamble, which comes after Python.h, keeps the GIL and errno as is.
KEEP_GIL = """
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
#undef _cffi_restore_errno
#undef _cffi_save_errno
#define _cffi_restore_errno() ((void)0)
#define _cffi_save_errno() ((void)0)
"""


def _module(name: str, keep_gil: bool) -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        name,
        '#include "fastipc.h"\n' + (KEEP_GIL if keep_gil else ""),
        sources=SOURCES,
        depends=DEPENDS,
        include_dirs=["csrc"],
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
        libraries=["rt", "pthread"],
        # A source install where the C cannot compile (no compiler, no
        # Python.h) still installs; fastipc then imports on the python
        # backend with a warning that says why (src/fastipc/_backend.py).
        optional=True,
    )
    return ffi


ffi = _module("fastipc._native", keep_gil=False)
ffi_fast = _module("fastipc._native_fast", keep_gil=True)

if __name__ == "__main__":
    for builder in (ffi, ffi_fast):
        builder.compile(verbose=True)
