#!/bin/sh
# limiquantix-agent launcher: runs the agent on the distribution's python3 (3.10 or newer)
# with its vendored dependencies from the private directory ../lib/limiquantix-agent.
# -I (isolated): neither PYTHONPATH nor the user's site-packages can shadow the vendored modules.
# LIMIQUANTIX_AGENT_PYTHON names the interpreter explicitly. --compile-bytecode (alone)
# byte-compiles the private directory instead of running the agent (postinst does it).
self=$(readlink -f "$0" 2>/dev/null || echo "$0")
libdir=$(cd "$(dirname "$self")/../lib/limiquantix-agent" 2>/dev/null && pwd) || libdir=/usr/lib/limiquantix-agent

for py in ${LIMIQUANTIX_AGENT_PYTHON:-} python3 python3.12 python3.11 python3.10 python3.13 python3.14; do
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
        if [ "${1:-}" = --compile-bytecode ]; then
            # For the maintainer scripts: byte-compile the private directory for this
            # interpreter, so that the first start does not spend seconds compiling.
            exec "$py" -I -m compileall -q -j 0 "$libdir"
        fi
        exec "$py" -I -c '
import sys
sys.path.insert(0, sys.argv.pop(1))
from limiquantix.agent.__main__ import main
sys.argv[0] = "limiquantix-agent"
sys.exit(main())' "$libdir" "$@"
    fi
done
echo "limiquantix-agent: needs Python 3.10 or newer (python3, python3.12, python3.11 or python3.10)" >&2
exit 1
