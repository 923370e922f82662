#!/usr/bin/env bash
# Build the libFuzzer harnesses of fuzz/ and run each for a while over a copy
# of its seed corpus; exit non-zero on any crash, leak, hang or sanitizer
# report. Installs clang and libFuzzer's runtime (Debian packages) if missing.
#
#   tools/fuzz.sh                     every harness, FUZZ_SECONDS (45) each
#   tools/fuzz.sh chan_frames ...     only those
#   FUZZ_SECONDS=600 tools/fuzz.sh    longer runs
#   FUZZ_BUILD_ONLY=1 tools/fuzz.sh   build, run nothing
#   FUZZ_REPRO=1 tools/fuzz.sh        build with every known-bug workaround off
#                                     (fuzz/README.md, Findings) and run the
#                                     reproducers in fuzz/crashes/; fails while
#                                     any still reproduces
#   FUZZ_SRC=dir                      the C sources to fuzz (default csrc)
#   FUZZ_CFLAGS="-D..."               extra compiler flags
#
# Binaries, corpora and any crash artefacts go to build/fuzz/ (ignored by
# git): nothing the fuzzer finds is written into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

HARNESSES=(chan_frames chan_handoff ring_consumer marshal_batch bcast_subscriber)
if [ $# -gt 0 ]; then
    HARNESSES=("$@")
fi
SECONDS_EACH=${FUZZ_SECONDS:-45}
SRC=${FUZZ_SRC:-csrc}
OUT=build/fuzz
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

# ---- toolchain -------------------------------------------------------------

have_libfuzzer() {
    command -v clang >/dev/null 2>&1 || return 1
    local tmp
    tmp=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n){(void)d;(void)n;return 0;}\n' \
        >"$tmp/t.c"
    if clang -fsanitize=fuzzer,address,undefined -o "$tmp/t" "$tmp/t.c" >/dev/null 2>&1; then
        rm -rf "$tmp"
        return 0
    fi
    rm -rf "$tmp"
    return 1
}

if ! have_libfuzzer; then
    echo "== installing clang and libFuzzer's runtime (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    command -v clang >/dev/null 2>&1 || $SUDO apt-get install -y -qq clang >/dev/null
    # libFuzzer and the sanitizer runtimes come with compiler-rt, in the
    # package named after clang's major version (Debian 12: clang 14).
    major=$(clang -dumpversion | cut -d. -f1)
    $SUDO apt-get install -y -qq "libclang-rt-${major}-dev" >/dev/null
    have_libfuzzer || { echo "clang cannot build a libFuzzer binary" >&2; exit 1; }
fi

# ---- build -----------------------------------------------------------------

# Both findings of fuzz/README.md are fixed, so the harnesses check them
# always (odd max_fds, the strict fd-claim rule).
CFLAGS=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g -O1
        -I"$SRC" -DFASTIPC_VERSION='"fuzz"' -Wall -Wextra -Wno-unused-function
        -DFUZZ_ODD_MAX_FDS=1 -DFUZZ_STRICT_FD_CLAIM=1)
BIN=$OUT
if [ -n "${FUZZ_REPRO:-}" ]; then
    BIN=$OUT/strict
fi
# shellcheck disable=SC2206
CFLAGS+=(${FUZZ_CFLAGS:-})
mkdir -p "$BIN"
for h in "${HARNESSES[@]}"; do
    echo "== build $h"
    clang "${CFLAGS[@]}" -o "$BIN/$h" "fuzz/$h.c" "$SRC/ring.c" "$SRC/broadcast.c" "$SRC/lock.c" \
        "$SRC/channel.c" "$SRC/handoff.c"
done
[ -z "${FUZZ_BUILD_ONLY:-}" ] || exit 0

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

# ---- reproducers -----------------------------------------------------------

if [ -n "${FUZZ_REPRO:-}" ]; then
    status=0
    for h in "${HARNESSES[@]}"; do
        for f in fuzz/crashes/"$h"/*; do
            [ -f "$f" ] || continue
            if "$BIN/$h" "$f" >"$BIN/$h.$(basename "$f").log" 2>&1; then
                echo "fixed:       $f"
            else
                echo "reproduces:  $f (log: $BIN/$h.$(basename "$f").log)"
                grep -m1 -E 'fuzz check failed|ERROR: ' "$BIN/$h.$(basename "$f").log" || true
                status=1
            fi
        done
    done
    exit $status
fi

# ---- fuzz ------------------------------------------------------------------

status=0
for h in "${HARNESSES[@]}"; do
    work=$OUT/run/$h
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    cp fuzz/corpus/"$h"/* "$work/corpus/"
    echo "== fuzz $h for ${SECONDS_EACH}s"
    if "$OUT/$h" -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" \
        >"$work/log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$work/log" || true
    else
        echo "FAILED: $h (log: $work/log, input: $work/artifacts/)" >&2
        grep -E -A25 'fuzz check failed|ERROR: |runtime error' "$work/log" | head -40 >&2 || true
        status=1
    fi
done
[ $status = 0 ] && echo "fuzz: no crash, leak or sanitizer report"
exit $status
