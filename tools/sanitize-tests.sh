#!/usr/bin/env bash
# Run the test suite against the C core built with AddressSanitizer + UBSan.
#   bash tools/sanitize-tests.sh [pytest args...]
# Python itself is not instrumented, so the ASan runtime is preloaded into
# every interpreter the tests start (children inherit LD_PRELOAD); leak
# checking is off because CPython's own allocations would drown the report.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-sanitize
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# The flag reaches build_ffi.py through the environment of pip's (isolated)
# build. setuptools reuses objects in build/ whatever the flags were, so the
# sanitized build starts from none and leaves none for a normal build.
rm -rf build/temp.* build/lib.*
FASTIPC_SANITIZE=1 "$venv/bin/pip" install -q --force-reinstall --no-cache-dir .
rm -rf build/temp.* build/lib.*
# (Found by path: importing it before LD_PRELOAD is set would fail. Not grep -q:
# it would stop reading early and pipefail would count nm's SIGPIPE.)
if ! nm -D "$venv"/lib/python3*/site-packages/fastipc/_native.*so | grep __asan >/dev/null; then
    echo "the C core was not built with AddressSanitizer" >&2
    exit 1
fi
# The test extra (pytest, hypothesis, nats-py...), without reinstalling fastipc unsanitized.
"$venv/bin/pip" install -q pytest hypothesis numpy uvloop nats-py
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# ASan keeps freed memory in a quarantine (256 MiB by default) to catch
# use-after-free; the server tests that bound a process's peak RSS would
# measure the quarantine instead, so it is kept small: a block is still
# caught when used soon after it was freed.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:handle_segv=1:quarantine_size_mb=4
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
[ $# -gt 0 ] || set -- -q tests
FASTIPC_BACKEND=native "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
