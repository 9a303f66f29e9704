"""The one rule for a guest command's time budget at every hop.

A command runs in the guest for at most its own ``timeout_seconds`` (the agent's
:data:`DEFAULT_COMMAND_TIMEOUT_S` when 0). Every hop above it (hostd, the
controller, the TUI and the CLI) waits for it the same :func:`command_budget_s`:
that timeout plus one :data:`COMMAND_MARGIN_S` for carrying the result back. The
caller's deadline travels down with the call (``Connect-Timeout-Ms`` /
``grpc-timeout``) and each hop waits ``min(command_budget_s(...), what the caller
has left)``, so all hops end at the same instant and raising a command's timeout
raises every hop's deadline with it.

Pure: the agent ships this module (it needs the default timeout); every hop imports it from
the package (``from limiquantix.protocol import command_budget_s``).
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs more than this module: ``limiquantix exec`` imports it at start
    from typing import Final

__all__ = ["COMMAND_MARGIN_S", "DEFAULT_COMMAND_TIMEOUT_S", "command_budget_s"]

#: A command's timeout when the request names none (``timeout_seconds`` 0).
DEFAULT_COMMAND_TIMEOUT_S: "Final" = 60.0
#: What every hop allows beyond a command's own timeout: the agent killing the process
#: group and reaping it, the result's frame over virtio-serial, and two HTTP hops back.
COMMAND_MARGIN_S: "Final" = 10.0
_INFINITY: "Final" = float("inf")


def command_budget_s(timeout_seconds: float) -> float:
    """How long any hop waits for a command whose own timeout is ``timeout_seconds``
    (0: the default): that timeout plus :data:`COMMAND_MARGIN_S`.

    Raises:
        ValueError: ``timeout_seconds`` is negative or not a number.
    """
    # A comparison rather than math.isinf: math is a shared library to load, and
    # ``limiquantix exec`` imports this module at start. NaN fails both comparisons.
    if not 0 <= timeout_seconds < _INFINITY:
        raise ValueError(f"a command timeout must be a finite number >= 0, not {timeout_seconds}")
    return (timeout_seconds or DEFAULT_COMMAND_TIMEOUT_S) + COMMAND_MARGIN_S
