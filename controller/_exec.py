"""Commands in a guest, shared by VMService (:mod:`._vms`) and the fleet runner
(:mod:`._fleet`): the agent's request built from the API's, what the audit row records of
it, the forwarded call to the VM's hostd, its streamed output as text and how it ended.
"""

from __future__ import annotations

import codecs
import logging
from typing import Final, final

from limiquantix.protocol import enum_name, errors
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb

from ._forward import NodeClient
from ._models import (
    AuditDetail,
    NodeInfo,
)

__all__ = [
    "DEFAULT_CALL_BUDGET_S",
    "STREAM_NAMES",
    "OutputDecoder",
    "exec_detail",
    "execute_in_guest",
    "execute_request",
    "exit_code",
    "exit_reason_name",
]

log = logging.getLogger(__name__)


#: Budget of a forwarded call that is not a command or a file transfer.
DEFAULT_CALL_BUDGET_S: Final = 30.0

#: The API's names of the agent's output streams (``stream`` in ExecuteScriptOutput and
#: FleetTargetOutput); a number the schema lacks is shown as stdout.
STREAM_NAMES: Final = {pb.OUTPUT_STREAM_STDOUT: "stdout", pb.OUTPUT_STREAM_STDERR: "stderr"}


def execute_request(request: api_pb.ExecuteScriptRequest) -> pb.ExecuteRequest:
    """The agent's ExecuteRequest: ``command`` + ``args`` → argv when args are given, else a shell script.

    Raises:
        errors.InvalidArgument: no command.
    """
    if not request.command:
        raise errors.InvalidArgument("command is required")
    req = pb.ExecuteRequest(
        stdin=request.stdin,
        env=dict(request.environment),
        working_directory=request.working_directory,
        timeout_seconds=request.timeout_seconds,
    )
    if request.args:
        req.argv.extend([request.command, *request.args])
    else:
        req.command = request.command
    if request.run_as_user:
        req.run_as.user = request.run_as_user
    return req


def exec_detail(request: api_pb.ExecuteScriptRequest) -> AuditDetail:
    """What an audit row records about a command (environment *names* only, stdin's size only)."""
    return AuditDetail(
        command=request.command,
        args=tuple(request.args),
        working_directory=request.working_directory,
        run_as_user=request.run_as_user,
        env_keys=tuple(sorted(request.environment)),
        size=len(request.stdin) if request.stdin else None,
        flags=(f"timeout={request.timeout_seconds}",) if request.timeout_seconds else (),
    )


def exit_reason_name(result: pb.ExecuteResponse) -> str:
    """``EXIT_REASON_TIMED_OUT`` → ``timed_out``; a number the schema lacks stays a number."""
    return enum_name(pb.ExitReason, result.exit_reason)


def exit_code(result: pb.ExecuteResponse) -> int | None:
    """The command's exit code, only if it exited (after a timeout, a cancel or a signal the
    agent's ``exit_code`` means nothing: a script checking for 0 must not see one)."""
    return result.exit_code if result.exit_reason == pb.EXIT_REASON_EXITED else None


@final
class OutputDecoder:
    """A streamed command's output as text: one incremental UTF-8 decoder per stream, so that
    a character cut between two chunks comes out whole (invalid bytes replaced)."""

    def __init__(self) -> None:
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in STREAM_NAMES.values()}

    def decode(self, output: pb.ExecuteOutput) -> tuple[str, str]:
        """One chunk: its stream's name and its text (less a character it cuts off)."""
        name = STREAM_NAMES.get(output.stream, "stdout")
        return name, self._decoders[name].decode(output.data)

    def flush(self, name: str) -> str:
        """What stream ``name``'s decoder held back (a cut-off character), at the output's end."""
        return self._decoders[name].decode(b"", final=True)


async def execute_in_guest(
    nodes: NodeClient, node: NodeInfo, vm_id: str, execute: pb.ExecuteRequest, *, execution_id: str, budget_s: float
) -> node_pb.ExecuteInGuestResponse:
    """Forward one command to the VM's hostd (ExecuteInGuest) and wait for its result.

    Raises:
        errors.Unavailable: the node cannot be reached (``node_unreachable``) or
            the VM's agent is not connected (hostd's reason: its agent state).
        errors.DeadlineExceeded: no answer within ``budget_s``.
        errors.AgentError: any other error hostd answered, code kept.
    """
    return await nodes.call(
        node,
        "ExecuteInGuest",
        node_pb.ExecuteInGuestRequest(vm_id=vm_id, request=execute, execution_id=execution_id),
        node_pb.ExecuteInGuestResponse,
        budget_s=budget_s,
    )
