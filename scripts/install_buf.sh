#!/usr/bin/env bash
# Install the buf CLI (npm's @bufbuild/buf, pinned) into $VENV/node, where the tests find it
# (tests/conftest.py: BUF): `buf curl` is a Connect, gRPC and gRPC-Web client nobody here wrote.
# Works on a fresh Debian machine: installs nodejs and npm with apt when npm is missing. Re-running
# is cheap: nothing happens while the pinned version is installed. Run by scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BUF_VERSION=1.75.0
PREFIX="$VENV/node"
BUF="$PREFIX/node_modules/.bin/buf"

if [ -x "$BUF" ] && [ "$("$BUF" --version 2>/dev/null)" = "$BUF_VERSION" ]; then
    exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v npm >/dev/null 2>&1; then
    echo "install_buf: npm not found; installing nodejs and npm with apt" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
echo "install_buf: installing @bufbuild/buf@$BUF_VERSION into $PREFIX" >&2
mkdir -p "$PREFIX"
# The package's binary comes in a per-platform optional dependency (@bufbuild/buf-linux-x64);
# its postinstall script only checks that, so none is needed.
npm install --prefix "$PREFIX" --no-audit --no-fund --no-save --ignore-scripts --loglevel=error \
    "@bufbuild/buf@$BUF_VERSION" >&2
got=$("$BUF" --version)
if [ "$got" != "$BUF_VERSION" ]; then
    echo "install_buf: $BUF reports version $got, not $BUF_VERSION" >&2
    exit 1
fi
