#!/usr/bin/env bash
# Prove the prebuilt wheel (issue 13): for every CPython 3.9-3.13 on this
# machine, a fresh venv where no C compiler can run installs
# wheelhouse/fastipc-*-cp39-abi3-manylinux_2_17_x86_64*.whl with
#   pip install --no-index --only-binary=:all: --find-links wheelhouse fastipc
# and passes scripts/wheel_smoke.py (both backends) and `fastipc bench --quick`,
# run from outside the source tree with `python -I`.
#
#   bash scripts/test_wheel.sh                 (after scripts/build_wheel.sh)
#   WHEEL_PYTHONS="3.11 3.12" bash scripts/test_wheel.sh
#   WHEEL_TEST_REQUIRE_ALL=1: fail when an expected interpreter is missing
#
# fastipc's dependencies (cffi, pycparser, posix_ipc) are fetched beforehand
# as wheels from PyPI, per interpreter, into a separate find-links directory.
# Should PyPI have no posix_ipc wheel for one, it is built beforehand with
# this machine's compiler and the run says so (fastipc's own wheel is still
# installed with none).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export PIP_DISABLE_PIP_VERSION_CHECK=1
started=$SECONDS
expected=${WHEEL_PYTHONS:-"3.9 3.10 3.11 3.12 3.13"}

shopt -s nullglob
wheels=(wheelhouse/fastipc-*-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl)
shopt -u nullglob
[ ${#wheels[@]} = 1 ] || { echo "want exactly one fastipc wheel in wheelhouse/ (run scripts/build_wheel.sh): ${wheels[*]:-none}" >&2; exit 1; }
wheel=$repo/${wheels[0]}
echo "wheel: ${wheel##*/} ($(stat -c %s "$wheel") bytes)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Compiler commands, shadowed: each fails loudly if anything tries to run it.
shims=$tmp/no-compiler
mkdir "$shims"
for tool in cc gcc clang c++ g++ clang++ cpp ld ld.gold ld.lld tcc zig icc \
        x86_64-linux-gnu-gcc x86_64-linux-gnu-g++ x86_64-linux-gnu-ld \
        gcc-12 gcc-13 gcc-14 clang-14 clang-15 clang-16 clang-17 clang-18 clang-19; do
    printf '#!/bin/sh\necho "test_wheel.sh: no C compiler here (%s was run)" >&2\nexit 1\n' "$tool" >"$shims/$tool"
    chmod +x "$shims/$tool"
done

find_python() {  # the newest CPython X.Y found: pyenv's versions, then PATH (not pyenv's shims)
    local v=$1 root=${PYENV_ROOT:-$HOME/.pyenv} p
    for p in $(ls -d "$root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V -r) \
             $(type -ap "python$v" | grep -v /shims/); do
        if "$p" -c "import sys; assert sys.implementation.name == 'cpython' and '%d.%d' % sys.version_info[:2] == '$v'" 2>/dev/null \
                && "$p" -c "import venv, ensurepip" 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

found=() missing=() passed=() failed=()
for v in $expected; do
    if py=$(find_python "$v"); then found+=("$v"); else missing+=("$v"); continue; fi
    tag=cp${v/./}
    echo
    echo "==== CPython $v ($py)"
    t0=$SECONDS
    deps=$tmp/deps-$tag
    # Dependencies, as wheels for this interpreter (the compiler is still usable
    # here, but --only-binary means nothing is built).
    "$py" -m venv "$tmp/fetch-$tag"
    if ! "$tmp/fetch-$tag/bin/pip" download -q --only-binary=:all: -d "$deps" \
            "cffi>=1.17" "posix_ipc>=1.1" 2>"$tmp/fetch-$tag.log"; then
        if grep -qi "posix.ipc" "$tmp/fetch-$tag.log"; then
            echo "NOTE: PyPI has no posix_ipc wheel for $tag: building one beforehand with this machine's compiler"
            "$tmp/fetch-$tag/bin/pip" wheel -q --no-deps -w "$deps" "posix_ipc>=1.1"
            "$tmp/fetch-$tag/bin/pip" download -q --only-binary=:all: -d "$deps" "cffi>=1.17"
        else
            cat "$tmp/fetch-$tag.log" >&2
            failed+=("$v"); continue
        fi
    fi
    echo "dependency wheels: $(cd "$deps" && ls | tr '\n' ' ')"

    venv=$tmp/venv-$tag
    "$py" -m venv "$venv"
    status=0
    (
        set -e
        # From here on no compiler can be used, and pip sees no configuration,
        # no index and no source distribution.
        export PATH="$shims:$venv/bin:$PATH" CC=false CXX=false LDSHARED=false CPP=false
        export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1
        unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PYTHONPATH
        if gcc --version >/dev/null 2>&1 || cc --version >/dev/null 2>&1; then
            echo "a C compiler is still usable" >&2; exit 1
        fi
        "$venv/bin/python" -m pip install -q --no-index --only-binary=:all: \
            --find-links "$repo/wheelhouse" --find-links "$deps" fastipc
        "$venv/bin/python" -m pip list 2>/dev/null | grep -iE "^(fastipc|cffi|posix.ipc) "
        cd "$tmp"   # outside the source tree; -I keeps src/ and the cwd off sys.path
        for backend in auto native python; do
            FASTIPC_BACKEND=$backend "$venv/bin/python" -I "$repo/scripts/wheel_smoke.py"
        done
        # The console script (its sys.path[0] is the venv's bin/, the cwd is $tmp).
        fastipc bench --quick >"$tmp/bench-$tag.txt" 2>&1 \
            || { cat "$tmp/bench-$tag.txt" >&2; exit 1; }
        tail -n 25 "$tmp/bench-$tag.txt"
    ) || status=$?
    if [ "$status" = 0 ]; then
        passed+=("$v"); echo "CPython $v: passed in $((SECONDS - t0)) s"
    else
        failed+=("$v"); echo "CPython $v: FAILED" >&2
    fi
    rm -rf "$venv" "$tmp/fetch-$tag"
done

# The fallback: the sdist installed where no compiler can run still installs
# and imports, on the python backend with one warning naming why; asking for
# native then fails loudly. (The newest interpreter found; its build
# dependencies come as wheels fetched beforehand.)
sdists=(wheelhouse/fastipc-*.tar.gz)
if [ ${#passed[@]} -gt 0 ] && [ -f "${sdists[0]}" ]; then
    v=${passed[${#passed[@]}-1]}; py=$(find_python "$v"); tag=cp${v/./}
    echo
    echo "==== sdist without a compiler (CPython $v): installs, falls back to python with a warning"
    status=0
    (
        set -e
        "$py" -m venv "$tmp/fetch-sdist"
        "$tmp/fetch-sdist/bin/pip" download -q --only-binary=:all: -d "$tmp/deps-sdist" \
            "cffi>=1.17" "posix_ipc>=1.1" "setuptools>=77" wheel
        "$py" -m venv "$tmp/venv-sdist"
        export PATH="$shims:$tmp/venv-sdist/bin:$PATH" CC=false CXX=false LDSHARED=false CPP=false
        export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1
        unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PYTHONPATH
        "$tmp/venv-sdist/bin/python" -m pip install -q --no-index --no-cache-dir \
            --find-links "$tmp/deps-sdist" "$repo/${sdists[0]}"
        cd "$tmp"
        ! ls "$tmp"/venv-sdist/lib/python*/site-packages/fastipc/_native*.so 2>/dev/null
        out=$("$tmp/venv-sdist/bin/python" -I -c "import fastipc; print(fastipc.BACKEND)" 2>&1)
        echo "$out"
        [ "$(tail -n 1 <<<"$out")" = python ]
        [ "$(grep -c "RuntimeWarning: fastipc: the compiled C core cannot load (No module named 'fastipc._native')" <<<"$out")" = 1 ]
        if FASTIPC_BACKEND=native "$tmp/venv-sdist/bin/python" -I -c "import fastipc" 2>"$tmp/loud.txt"; then
            echo "FASTIPC_BACKEND=native imported without the compiled module" >&2; exit 1
        fi
        tail -n 1 "$tmp/loud.txt"
        grep -q "ImportError: FASTIPC_BACKEND=native: the native backend cannot load" "$tmp/loud.txt"
        FASTIPC_BACKEND=python "$tmp/venv-sdist/bin/python" -I "$repo/scripts/wheel_smoke.py"
    ) || status=$?
    if [ "$status" = 0 ]; then echo "sdist fallback: passed"; else echo "sdist fallback: FAILED" >&2; failed+=("sdist-$v"); fi
fi

echo
echo "==== wheel test: expected CPython ${expected// /, }"
echo "found: ${found[*]:-none}; passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
if [ ${#missing[@]} -gt 0 ]; then
    echo "WARNING: fewer interpreters than expected: ${#found[@]} of $(wc -w <<<"$expected") found; not tested on: ${missing[*]}"
fi
echo "wheel test took $((SECONDS - started)) s"
[ ${#failed[@]} = 0 ] || exit 1
[ ${#found[@]} -gt 0 ] || { echo "no CPython $expected found at all" >&2; exit 1; }
if [ ${#missing[@]} -gt 0 ] && [ "${WHEEL_TEST_REQUIRE_ALL:-0}" = 1 ]; then exit 1; fi
echo "wheel test passed on CPython ${passed[*]}"
