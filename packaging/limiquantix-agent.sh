#!/bin/sh
# limiquantix-agent launcher: runs the agent on the distribution's python3 (3.10 or newer)
# with its vendored dependencies from the private directory ../lib/limiquantix-agent.
# -I (isolated): neither PYTHONPATH nor the user's site-packages can shadow the vendored modules;
# -S: no site module either (the dependencies are all vendored).
# LIMIQUANTIX_AGENT_PYTHON names the interpreter explicitly. --compile-bytecode (alone)
# byte-compiles the private directory instead of running the agent (postinst does it).
#
# The agent's announce time after its service starts is a target, and at boot in a slow guest
# every process started costs a tenth of a second or more: this script runs no program but the
# interpreter (shell builtins only), and that interpreter once.

libdir=${0%/*}/../lib/limiquantix-agent
if [ ! -d "$libdir" ]; then
    # Started through a link from elsewhere: resolve it.
    self=$(readlink -f "$0" 2>/dev/null || echo "$0")
    libdir=${self%/*}/../lib/limiquantix-agent
    [ -d "$libdir" ] || libdir=/usr/lib/limiquantix-agent
fi

# Whether $1 is Python 3.10 or newer. Told without running it where the file is, or links to,
# python3.N in the same directory (python3 normally is); otherwise the interpreter is asked.
# test's -ef is not POSIX, but dash, bash and busybox have it; a shell without it fails the
# test and asks the interpreter.
# shellcheck disable=SC3013
is_new_enough() {
    path=$(command -v "$1") || return 1
    case $path in
        */*) dir=${path%/*} ;;
        *) return 1 ;;  # a function or builtin of that name
    esac
    for minor in 10 11 12 13 14 15 16 17 18 19; do
        if [ "$path" -ef "$dir/python3.$minor" ]; then return 0; fi
    done
    for minor in 6 7 8 9; do
        if [ "$path" -ef "$dir/python3.$minor" ]; then return 1; fi
    done
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null
}

found=
for py in ${LIMIQUANTIX_AGENT_PYTHON:-} python3 python3.12 python3.11 python3.10 python3.13 python3.14; do
    if is_new_enough "$py"; then found=$py; break; fi
done
if [ -z "$found" ]; then
    echo "limiquantix-agent: needs Python 3.10 or newer (python3, python3.12, python3.11 or python3.10)" >&2
    exit 1
fi
if [ "${1:-}" = --compile-bytecode ]; then
    # For the maintainer scripts: byte-compile the private directory for this
    # interpreter, so that the first start does not spend seconds compiling.
    exec "$found" -I -S -m compileall -q -j 0 "$libdir"
fi
exec "$found" -I -S -c '
import sys
sys.path.insert(0, sys.argv.pop(1))
from limiquantix.agent.__main__ import main
sys.argv[0] = "limiquantix-agent"
sys.exit(main())' "$libdir" "$@"
