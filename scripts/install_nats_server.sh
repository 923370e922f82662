#!/usr/bin/env bash
# Install nats-server (Debian's package) for the NATS bridge's tests and
# benchmark (tests/test_bridge_nats.py, benchmarks/nats_bridge_bench.py).
# Does nothing when a nats-server is already on PATH; uses sudo when not root.
#
#   scripts/install_nats_server.sh        install if missing, print the version
set -euo pipefail

if ! command -v nats-server >/dev/null 2>&1; then
    SUDO=
    [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "installing nats-server (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
nats-server --version
