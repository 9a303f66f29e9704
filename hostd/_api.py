"""``limiquantix.node.v1.NodeDaemonService``: the node API the controller calls.

Each RPC finds the VM's :class:`~limiquantix.hostd._vmconn.VMConnection` in the
registry and forwards one agent request through it; errors keep their codes
end to end (an agent's ``not_found`` is the API's ``not_found``; an agent that
is gone is ``unavailable`` at once). File transfers are checked with SHA-256
end to end: the agent's digest must equal the one hostd computes over the
bytes it received or sent.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from types import MappingProxyType
from typing import Final, TypeAlias, final

import trio

from limiquantix.protocol import command_budget_s, errors, guestcaps, new_message_id, set_timestamp
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol.limits import check_message
from limiquantix.protocol.rpc.server import CallContext, Last

from ._discovery import VMRegistry
from ._vmconn import VMConnection, VMState

__all__ = [
    "DEFAULT_READ_BYTES",
    "MAX_READ_BYTES",
    "MAX_WRITE_BYTES",
    "READ_CHUNK_BYTES",
    "SERVICE",
    "STREAM_CHUNK_BYTES",
    "WRITE_CHUNK_BYTES",
    "AGENT_STATES",
    "NodeAPI",
    "heartbeat_status",
    "vm_status",
]

log = logging.getLogger(__name__)

#: The requests that name one VM (by ``vm_id``).
_VMRequest: TypeAlias = (
    node_pb.CancelExecutionRequest
    | node_pb.ExecuteInGuestRequest
    | node_pb.GetVMRequest
    | node_pb.GuestShutdownRequest
    | node_pb.ListGuestDirectoryRequest
    | node_pb.PingAgentRequest
    | node_pb.ReadGuestFileRequest
    | node_pb.ResetGuestPasswordRequest
    | node_pb.StatGuestFileRequest
    | node_pb.WriteGuestFileRequest
)

SERVICE: Final = node_pb.DESCRIPTOR.services_by_name["NodeDaemonService"]
#: Largest ReadGuestFile answer: it travels in one Connect message; larger
#: files are read in ranges (offset, length).
MAX_READ_BYTES: Final = 48 * 1024 * 1024
#: What a ReadGuestFile without a length may return: its answer (content, size,
#: digest, framing) must fit the 4 MiB message limit gRPC clients have by default.
#: A larger file is refused (too_large): give a length, or use ReadGuestFileStream.
DEFAULT_READ_BYTES: Final = 4 * 1024 * 1024 - 4096
#: Largest chunk of a ReadGuestFileStream: far below every client's message limit,
#: and the most one streamed call holds in hostd at a time.
STREAM_CHUNK_BYTES: Final = 1024 * 1024
#: Largest WriteGuestFile content, for the same reason.
MAX_WRITE_BYTES: Final = 48 * 1024 * 1024
#: Chunk size hostd asks of the agent's file reads: over virtio-serial in a QEMU TCG
#: guest 4 MiB chunks read at about 45 MB/s where the agent's default 1 MiB gave 34.
READ_CHUNK_BYTES: Final = 4 * 1024 * 1024
#: Bytes per write request to the agent: the agent's own read chunk size.
WRITE_CHUNK_BYTES: Final = 1024 * 1024
#: Time budget for a file transfer beyond the connection's default, per MiB
#: (a TCG guest moves a few MB/s over virtio-serial).
TRANSFER_S_PER_MIB: Final = 1.0


#: hostd's connection states as the node API's ``AgentState``.
AGENT_STATES: Final[Mapping[VMState, node_pb.AgentState]] = MappingProxyType(
    {
        VMState.NO_SOCKET: node_pb.AGENT_STATE_NO_SOCKET,
        VMState.CONNECTING: node_pb.AGENT_STATE_CONNECTING,
        VMState.WAITING_FOR_AGENT: node_pb.AGENT_STATE_WAITING_FOR_AGENT,
        VMState.CONNECTED: node_pb.AGENT_STATE_CONNECTED,
        VMState.UNRESPONSIVE: node_pb.AGENT_STATE_UNRESPONSIVE,
        VMState.DISABLED: node_pb.AGENT_STATE_DISABLED,
    }
)


def vm_status(conn: VMConnection) -> node_pb.VMStatus:
    """The VM as ``ListVMs``/``GetVM`` report it: the one view of a connection."""
    info = node_pb.GuestAgentInfo(
        state=AGENT_STATES[conn.state],
        connected=conn.connected,
        version=conn.identity.agent_version if conn.identity is not None else "",
        last_disconnect_reason=conn.last_disconnect_reason,
        ip_addresses=conn.ip_addresses,
        ip_addresses_truncated=conn.interfaces_truncated,
    )
    if conn.identity is not None:
        info.identity.CopyFrom(conn.identity)
    if conn.last_seen is not None:
        set_timestamp(info.last_seen, conn.last_seen)
    status = node_pb.VMStatus(
        vm_id=conn.vm_id, name=conn.name, labels=conn.labels, socket_path=conn.socket_path, agent=info
    )
    if conn.telemetry is not None:
        status.resource_usage.telemetry.CopyFrom(conn.telemetry)
    return status


def heartbeat_status(full: node_pb.VMStatus) -> node_pb.VMStatus:
    """The VM as a registration or heartbeat reports it: its :func:`vm_status` in brief.

    What the controller's inventory keeps and nothing more: the agent's state, version,
    last contact and last disconnect reason; of its identity the OS, hostname and kernel;
    the first ``HEARTBEAT_ADDRESSES`` addresses; of its telemetry CPU, memory and uptime.
    So a node's heartbeat stays far below the controller's request limit whatever its
    guests report (identity strings were capped on arrival, protocol/guestcaps.py); GetVM
    has the rest.
    """
    agent, identity, telemetry = full.agent, full.agent.identity, full.resource_usage.telemetry
    brief = node_pb.VMStatus(vm_id=full.vm_id, name=full.name, labels=full.labels)
    brief.agent.state = agent.state
    brief.agent.connected = agent.connected
    brief.agent.version = agent.version
    brief.agent.last_disconnect_reason = agent.last_disconnect_reason
    brief.agent.ip_addresses[:] = agent.ip_addresses[: guestcaps.HEARTBEAT_ADDRESSES]
    brief.agent.ip_addresses_truncated = agent.ip_addresses_truncated or len(agent.ip_addresses) > len(
        brief.agent.ip_addresses
    )
    if agent.HasField("last_seen"):
        brief.agent.last_seen.CopyFrom(agent.last_seen)
    if agent.HasField("identity"):
        brief.agent.identity.os.pretty_name = identity.os.pretty_name
        brief.agent.identity.os.name = identity.os.name
        brief.agent.identity.hostname = identity.hostname
        brief.agent.identity.kernel = identity.kernel
    if full.resource_usage.HasField("telemetry"):
        brief.resource_usage.telemetry.cpu_percent = telemetry.cpu_percent
        brief.resource_usage.telemetry.memory.percent = telemetry.memory.percent
        brief.resource_usage.telemetry.uptime_seconds = telemetry.uptime_seconds
    return brief


@final
class NodeAPI:
    """The NodeDaemonService implementation over a :class:`VMRegistry`.

    Every method first checks its request against :mod:`limiquantix.protocol.limits`
    (``invalid_argument`` naming the field and its limit), so nothing oversized
    is looked up, logged or forwarded to an agent.
    """

    def __init__(self, registry: VMRegistry) -> None:
        self.registry = registry

    def _vm(self, request: _VMRequest) -> VMConnection:
        """The connection of the VM a request names (its ``vm_id``), once the request is
        checked against its limits (nothing oversized is looked up).

        Raises:
            errors.InvalidArgument: a field over its limit.
            errors.NotFound: no such VM on this host (reason ``vm_not_found``).
        """
        check_message(request)
        return self.registry.get(request.vm_id)

    # -- inventory ---------------------------------------------------------------

    async def ListVMs(self, request: node_pb.ListVMsRequest, ctx: CallContext) -> node_pb.ListVMsResponse:
        check_message(request)
        return node_pb.ListVMsResponse(vms=[vm_status(conn) for conn in self.registry.connections()])

    async def GetVM(self, request: node_pb.GetVMRequest, ctx: CallContext) -> node_pb.VMStatus:
        return vm_status(self._vm(request))

    async def PingAgent(self, request: node_pb.PingAgentRequest, ctx: CallContext) -> node_pb.AgentPingResponse:
        """Connectivity check: ``connected: false`` with the reason rather than an error."""
        vm = self._vm(request)
        started = trio.current_time()
        try:
            pong = await vm.ping()
        except (errors.Unavailable, errors.DeadlineExceeded) as exc:
            return node_pb.AgentPingResponse(connected=False, error=exc.message)
        return node_pb.AgentPingResponse(
            connected=True,
            version=pong.agent_version,
            latency_ms=round((trio.current_time() - started) * 1000, 3),
            agent_uptime_seconds=pong.agent_uptime_seconds,
            system_uptime_seconds=pong.system_uptime_seconds,
        )

    # -- commands ----------------------------------------------------------------

    @staticmethod
    def _command_budget(req: pb.ExecuteRequest) -> float:
        # The agent enforces the command's timeout; every hop waits the one budget
        # (its timeout, or the default, plus the stated margin: command_budget_s in protocol/__init__.py).
        return command_budget_s(req.timeout_seconds)

    async def ExecuteInGuest(
        self, request: node_pb.ExecuteInGuestRequest, ctx: CallContext
    ) -> node_pb.ExecuteInGuestResponse:
        vm = self._vm(request)
        execution_id = request.execution_id or new_message_id()
        answer = await vm.request(
            deadline_s=ctx.budget_s(self._command_budget(request.request)),
            message_id=execution_id,
            execute=request.request,
        )
        return node_pb.ExecuteInGuestResponse(execution_id=execution_id, result=answer.execute_response)

    async def ExecuteInGuestStream(
        self, request: node_pb.ExecuteInGuestRequest, ctx: CallContext
    ) -> AsyncIterator[node_pb.ExecuteInGuestEvent | Last]:
        """Output chunks as the guest produces them, then the result (with the stream's end:
        :class:`~limiquantix.protocol.rpc.server.Last`).

        A client that goes away closes this generator; leaving the agent's
        stream early cancels the command in the guest.
        """
        vm = self._vm(request)
        execution_id = request.execution_id or new_message_id()
        req = pb.ExecuteRequest()
        req.CopyFrom(request.request)
        req.stream = True
        yield node_pb.ExecuteInGuestEvent(execution_id=execution_id)
        stream = vm.stream(deadline_s=ctx.budget_s(self._command_budget(req)), message_id=execution_id, execute=req)
        async with aclosing(stream) as answers:
            async for msg in answers:
                if msg.HasField("execute_output"):
                    yield node_pb.ExecuteInGuestEvent(output=msg.execute_output)
                else:  # the agent's terminal answer: nothing follows it
                    yield Last(node_pb.ExecuteInGuestEvent(result=msg.execute_response))

    async def CancelExecution(
        self, request: node_pb.CancelExecutionRequest, ctx: CallContext
    ) -> node_pb.CancelExecutionResponse:
        vm = self._vm(request)
        if not request.execution_id:
            raise errors.InvalidArgument("execution_id is required")
        answer = await vm.request(cancel=pb.CancelRequest(target_message_id=request.execution_id))
        return node_pb.CancelExecutionResponse(found=answer.cancel_response.found)

    # -- files -------------------------------------------------------------------

    async def ReadGuestFile(
        self, request: node_pb.ReadGuestFileRequest, ctx: CallContext
    ) -> node_pb.ReadGuestFileResponse:
        """A whole file or a range (offset, length), SHA-256 checked end to end.

        Without a length, at most :data:`DEFAULT_READ_BYTES`.

        Raises:
            InvalidArgument: a length over :data:`MAX_READ_BYTES`.
            ResourceExhausted: no length and the file is larger than
                :data:`DEFAULT_READ_BYTES` (reason ``too_large``).
            Internal: the digests differ.
        """
        vm = self._vm(request)
        if request.length > MAX_READ_BYTES:
            raise errors.InvalidArgument(f"length is limited to {MAX_READ_BYTES} bytes per call")
        limit = request.length or DEFAULT_READ_BYTES
        parts: list[bytes] = []
        last: node_pb.ReadGuestFileChunk | None = None
        budget = ctx.budget_s(vm.config.default_deadline_s + TRANSFER_S_PER_MIB * limit / 2**20)
        received = 0
        async with aclosing(self._read_chunks(vm, request, READ_CHUNK_BYTES, budget)) as chunks:
            async for chunk in chunks:
                received += len(chunk.data)
                if received > limit:
                    raise errors.ResourceExhausted(
                        f"{request.path} is larger than {limit} bytes: give a length (up to {MAX_READ_BYTES}) "
                        "and read it in ranges, or use ReadGuestFileStream",
                        reason="too_large",
                    )
                parts.append(chunk.data)
                last = chunk
        assert last is not None and last.eof
        return node_pb.ReadGuestFileResponse(content=b"".join(parts), file_size=last.file_size, sha256=last.sha256)

    async def ReadGuestFileStream(
        self, request: node_pb.ReadGuestFileRequest, ctx: CallContext
    ) -> AsyncIterator[node_pb.ReadGuestFileChunk]:
        """A file of any size (or a range) in chunks of at most :data:`STREAM_CHUNK_BYTES`,
        the last with ``eof`` and the SHA-256 of every byte sent, checked here first.

        The deadline is the client's alone (a stream of any size has no fitting
        budget of its own); leaving the stream early cancels the read in the agent.

        Raises:
            Internal: the digests differ (in the last chunk's place).
        """
        vm = self._vm(request)
        async with aclosing(self._read_chunks(vm, request, STREAM_CHUNK_BYTES, ctx.budget_s(math.inf))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _read_chunks(
        self, vm: VMConnection, request: node_pb.ReadGuestFileRequest, chunk_size: int, budget: float | None
    ) -> AsyncGenerator[node_pb.ReadGuestFileChunk, None]:
        """The agent's read of ``request`` in chunks of at most ``chunk_size``; the
        last (``eof``) carries the digest, and only once it matched what was sent.

        Raises:
            Internal: the agent's digest differs from that of the bytes received.
        """
        req = pb.FileReadRequest(path=request.path, offset=request.offset, length=request.length, chunk_size=chunk_size)
        digest = hashlib.sha256()
        async with aclosing(vm.stream(deadline_s=budget, file_read=req)) as answers:
            async for msg in answers:
                chunk = msg.file_read_chunk
                digest.update(chunk.data)
                out = node_pb.ReadGuestFileChunk(offset=chunk.offset, data=chunk.data, file_size=chunk.file_size)
                if chunk.eof:
                    if chunk.sha256 != digest.digest():
                        raise errors.Internal(f"SHA-256 mismatch reading {request.path}: the transfer was corrupted")
                    out.eof = True
                    out.sha256 = chunk.sha256
                yield out

    async def WriteGuestFile(
        self, request: node_pb.WriteGuestFileRequest, ctx: CallContext
    ) -> node_pb.WriteGuestFileResponse:
        """One atomic write transfer in 1 MiB pieces; the agent checks the SHA-256 on commit."""
        vm = self._vm(request)
        content = request.content
        if len(content) > MAX_WRITE_BYTES:
            raise errors.ResourceExhausted(f"content is limited to {MAX_WRITE_BYTES} bytes per call")
        whole = hashlib.sha256(content).digest()
        first = pb.FileWriteRequest(
            path=request.path,
            mode=request.write_mode,
            owner=request.owner,
            group=request.group,
            create_parents=request.create_parents,
        )
        if request.HasField("mode"):
            first.file_mode = request.mode
        pieces = [content[i : i + WRITE_CHUNK_BYTES] for i in range(0, len(content), WRITE_CHUNK_BYTES)] or [b""]
        write_id = ""
        offset = 0
        answer = pb.FileWriteResponse()
        for n, piece in enumerate(pieces):
            req = pb.FileWriteRequest() if write_id else first
            req.write_id = write_id
            req.data = piece
            req.offset = offset
            if n == len(pieces) - 1:
                req.last = True
                if request.write_mode != pb.WRITE_MODE_APPEND:
                    req.expected_sha256 = whole  # for append, the digest is of the whole resulting file
            budget = ctx.budget_s(vm.config.default_deadline_s)
            answer = (await vm.request(deadline_s=budget, file_write=req)).file_write_response
            write_id = answer.write_id
            offset += len(piece)
        return node_pb.WriteGuestFileResponse(bytes_written=answer.bytes_written, sha256=answer.sha256)

    async def StatGuestFile(self, request: node_pb.StatGuestFileRequest, ctx: CallContext) -> pb.FileStat:
        vm = self._vm(request)
        return (await vm.request(file_stat=pb.FileStatRequest(path=request.path))).file_stat_response

    async def ListGuestDirectory(
        self, request: node_pb.ListGuestDirectoryRequest, ctx: CallContext
    ) -> pb.ListDirectoryResponse:
        vm = self._vm(request)
        req = pb.ListDirectoryRequest(path=request.path, page_size=request.page_size, page_token=request.page_token)
        return (await vm.request(list_directory=req)).list_directory_response

    # -- power and passwords -----------------------------------------------------

    async def GuestShutdown(
        self, request: node_pb.GuestShutdownRequest, ctx: CallContext
    ) -> node_pb.GuestShutdownResponse:
        vm = self._vm(request)
        mode = pb.SHUTDOWN_MODE_REBOOT if request.reboot else request.mode
        req = pb.ShutdownRequest(mode=mode, delay_seconds=request.delay_seconds, message=request.message)
        answer = (await vm.request(shutdown=req)).shutdown_response
        return node_pb.GuestShutdownResponse(accepted=answer.accepted, scheduled_at=answer.scheduled_at)

    async def ResetGuestPassword(
        self, request: node_pb.ResetGuestPasswordRequest, ctx: CallContext
    ) -> node_pb.ResetGuestPasswordResponse:
        vm = self._vm(request)
        req = pb.ResetPasswordRequest(username=request.username, password=request.password, expire=request.expire)
        answer = (await vm.request(reset_password=req)).reset_password_response
        return node_pb.ResetGuestPasswordResponse(expired=answer.expired)
