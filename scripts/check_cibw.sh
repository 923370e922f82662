#!/usr/bin/env bash
# The cibuildwheel config ([tool.cibuildwheel] in pyproject.toml) selects
# exactly the builds of scripts/cibw-identifiers.txt. cibuildwheel cannot build
# here (no container engine); listing its builds needs none. Its pinned
# version is the one .github/workflows/wheels.yml uses.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "cibuildwheel==4.3.5"
"$tmp/venv/bin/cibuildwheel" --print-build-identifiers --platform linux >"$tmp/ids.txt"
if ! diff -u scripts/cibw-identifiers.txt "$tmp/ids.txt"; then
    echo "cibuildwheel would build other wheels than scripts/cibw-identifiers.txt lists (above)" >&2
    exit 1
fi
echo "cibuildwheel selects the $(wc -l <"$tmp/ids.txt") intended builds"
