"""Structural guards of the daemons' start-up: what each one's serving path imports leaves out
the modules it does not need (timings belong to bench/; figures in the commits).

Each case is a fresh interpreter (sys.modules is per process, and this one has imported
everything) importing what the daemon's ``main`` imports before it serves: the controller's
``serve`` (``limiquantix.controller._daemon``, which ``__main__`` imports for it), hostd's and
the agent's ``__main__`` (each imports its daemon), and the simulated VM the tests start
hundreds of times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Final

import pytest

#: httpx's command-line client and what it pulls in (~0.1 s of CPU per start): httpx imports it
#: whenever click is installed, unless imported through protocol's import_http_stack.
HTTPX_CLI: Final = frozenset({"httpx._main", "pygments", "rich"})
#: The web stack and the HTTP client: the agent and the simulated VM speak frames, not HTTP.
WEB_STACK: Final = frozenset({"httpx", "httpcore", "quart", "hypercorn", "flask", "click"})

#: Entry module -> (modules it must load, modules it must not load at start).
CASES: Final = {
    # cryptography only for ``pki`` (certificates are loaded by ssl, not cryptography); gRPC's
    # module and reflection's descriptors only at the first gRPC call.
    "limiquantix.controller._daemon": (
        {"httpx", "httpcore", "quart", "limiquantix.protocol.rpc"},
        HTTPX_CLI
        | {
            "cryptography",
            "limiquantix.controller.pki",
            "limiquantix.protocol.rpc.server._grpc",
            "limiquantix.protocol.rpc.server._reflection",
        },
    ),
    "limiquantix.hostd.__main__": (
        {"httpx", "httpcore", "quart", "limiquantix.hostd._daemon"},
        HTTPX_CLI
        | {"cryptography", "limiquantix.protocol.rpc.server._grpc", "limiquantix.protocol.rpc.server._reflection"},
    ),
    "limiquantix.agent.__main__": (
        {"trio", "limiquantix.agent._daemon"},
        HTTPX_CLI | WEB_STACK | {"cryptography", "limiquantix.protocol.rpc"},
    ),
    "limiquantix.hostd.simvm": (
        {"trio"},
        HTTPX_CLI | WEB_STACK | {"cryptography", "limiquantix.protocol.rpc", "limiquantix.hostd._daemon"},
    ),
}


@pytest.mark.parametrize("entry", sorted(CASES))
def test_a_daemons_start_leaves_out_what_it_does_not_use(entry: str) -> None:
    must, must_not = CASES[entry]
    code = f"import json, sys\nimport {entry}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert must <= loaded, f"{entry}: the check imports less than the daemon serves with"
    assert not must_not & loaded


def test_httpx_imported_through_protocol_still_runs_its_command_line_later() -> None:
    """Hiding httpx._main while httpx imports is undone: a later import of it works (a test
    process, or a tool run in the same interpreter), and httpcore keeps its trio support."""
    code = (
        "import sys\n"
        "from limiquantix.protocol.rpc._httpx import httpcore, httpx\n"
        "assert 'httpx._main' not in sys.modules and 'trio' in sys.modules\n"
        "import httpx._main\n"
        "print(callable(httpx._main.main), httpcore.AsyncConnectionPool.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "AsyncConnectionPool"]
