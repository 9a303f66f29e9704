#!/usr/bin/env bash
# Create or reuse the project's virtualenv (.venv) and install the project into it.
# Works on a fresh Debian machine: installs python3-venv with apt when `python3 -m venv`
# is unavailable (Debian splits it out of python3). Re-running is cheap: the install
# step is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "bootstrap: $PY not found; installing python3 with apt" >&2
    apt_install=1
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -n "${apt_install:-}" ]; then
    as_root apt-get update -qq && as_root apt-get install -y -qq python3 python3-venv >/dev/null
fi

"$PY" - <<'PYEOF' || { echo "bootstrap: Python 3.10 or newer is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PYEOF

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        echo "bootstrap: python3 -m venv failed; installing python3-venv with apt" >&2
        ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        as_root apt-get update -qq
        as_root apt-get install -y -qq "python${ver}-venv" >/dev/null || as_root apt-get install -y -qq python3-venv >/dev/null
        "$PY" -m venv "$VENV"
    fi
fi

stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log="$VENV/install.log"
    echo "bootstrap: installing the project and its dependencies into $VENV (log: $log)" >&2
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[dev]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: pip install failed (full log: $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi

# The buf CLI, a third-party Connect/gRPC/gRPC-Web client the tests use (npm package, pinned).
VENV="$VENV" ./scripts/install_buf.sh
