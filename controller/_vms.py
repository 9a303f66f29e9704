"""The controller's Connect services: ``VMService`` and ``NodeRegistryService``.

Every call has been authenticated by :func:`make_authenticator` (bearer token
→ :class:`~._auth.Principal` in ``ctx.auth``). Each handler then:

1. checks the RPC's permission for the role (``permission_denied`` before the
   VM is even looked up, so a viewer cannot probe which VMs exist);
2. routes the VM to its node through the store (``not_found`` when no node
   ever reported it) and checks the token's label scope against the VM's
   labels; a VM that is gone (its node no longer reports it, or was removed)
   answers ``unavailable``, reason ``vm_gone`` (GetVM shows its last record);
3. for audited actions (exec, files, shutdown, password reset, cancel, node
   registration) writes the audit row *before* anything is forwarded; a
   failed write (:class:`~.store.AuditWriteFailed`) refuses the call with
   ``unavailable``. Refusals in steps 1-2 are recorded as ``denied``;
4. refuses at once with ``unavailable`` when the node has missed its
   heartbeats, else forwards to the node's hostd (:class:`~._forward.NodeClient`)
   with a time budget derived from the call's deadline and the command's own
   timeout;
5. completes the audit row with the outcome, exit code and duration (shielded
   from cancellation, so a client that hangs up still leaves a complete row:
   ``cancelled``). A call that reached hostd and then lost it (hostd killed
   mid-command, no answer in time) is ``unknown``: the guest may have acted,
   and the client's error (reason ``outcome_unknown``) says so.

Secrets never reach the audit log: :class:`~._models.AuditDetail` has no field
for passwords, file contents, stdin or environment values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Final, TypeAlias, final

import trio

from limiquantix.protocol import command_budget_s, errors, guestcaps
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol.limits import check_message
from limiquantix.protocol.rpc.server import CallContext, Last

from ._audit import AuditEntry, AuditTrail
from ._auth import Permission, Principal, require
from ._context import principal_of, source_of
from ._exec import (
    DEFAULT_CALL_BUDGET_S,
    OutputDecoder,
    exec_detail,
    execute_in_guest,
    execute_request,
    exit_code,
    exit_reason_name,
)
from ._forward import NodeClient, bytes_field_header
from ._models import (
    MAX_PAGE_SIZE,
    AuditAction,
    AuditDetail,
    AuditOutcome,
    InventoryState,
    NodeInfo,
    VMInfo,
    VMRoute,
)
from ._vmview import api_vm, vm_info
from .store import Store

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "FILE_CALL_BUDGET_S",
    "VMAPI",
    "VM_SERVICE",
]

log = logging.getLogger(__name__)


VM_SERVICE: Final = api_pb.DESCRIPTOR.services_by_name["VMService"]


#: ListVMs page size when the caller names none.
DEFAULT_PAGE_SIZE: Final = 100


#: Budget of a file transfer (up to 48 MiB over virtio-serial at a few MB/s).
FILE_CALL_BUDGET_S: Final = 300.0


_NODE_WRITE_CONTENT_FIELD: Final = node_pb.WriteGuestFileRequest.DESCRIPTOR.fields_by_name["content"].number


#: The requests of the file RPCs (each names a VM and a path in it).
_FileRequest: TypeAlias = (
    api_pb.ReadGuestFileRequest
    | api_pb.WriteGuestFileRequest
    | api_pb.StatGuestFileRequest
    | api_pb.ListGuestDirectoryRequest
)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _checked_path(request: _FileRequest) -> None:
    """A file RPC's request within its limits, naming a path.

    Raises:
        errors.InvalidArgument: a field over its limit, or no path.
    """
    check_message(request)
    if not request.path:
        raise errors.InvalidArgument("path is required")


def _range_flags(request: api_pb.ReadGuestFileRequest) -> tuple[str, ...]:
    """A read's audit flags: the range it asks for (``offset=…``, ``length=…``), if any."""
    return tuple(f"{k}={v}" for k, v in (("offset", request.offset), ("length", request.length)) if v)


def _node_read(route: VMRoute, request: api_pb.ReadGuestFileRequest) -> node_pb.ReadGuestFileRequest:
    return node_pb.ReadGuestFileRequest(
        vm_id=route.vm.vm_id, path=request.path, offset=request.offset, length=request.length
    )


@final
class VMAPI:
    """``limiquantix.compute.v1.VMService`` over the store and the nodes' APIs."""

    def __init__(self, store: Store, nodes: NodeClient, *, heartbeat_timeout_s: float) -> None:
        self.store = store
        self.audit = AuditTrail(store)
        self.nodes = nodes
        self.heartbeat_timeout_s = heartbeat_timeout_s

    # -- routing, permissions, audit ----------------------------------------------

    async def _route(
        self,
        ctx: CallContext,
        vm_id: str,
        permission: Permission,
        action: AuditAction | None = None,
        detail: AuditDetail | None = None,
        *,
        gone_ok: bool = False,
    ) -> tuple[Principal, VMRoute]:
        """Check the permission, find the VM's node, check the label scope.

        Raises:
            errors.InvalidArgument: no vmId.
            errors.PermissionDenied: role or label scope (recorded as ``denied``
                when ``action`` is audited).
            errors.NotFound: no node ever reported the VM.
            errors.Unavailable: reason ``vm_gone``: its node no longer reports it
                (unless ``gone_ok``).
        """
        principal = principal_of(ctx)
        if not vm_id:
            raise errors.InvalidArgument("vmId is required")
        try:
            # The role first: a token that may not do this learns nothing about the VM.
            require(principal, permission)
            route = await self.store.node_for_vm(vm_id, heartbeat_timeout_s=self.heartbeat_timeout_s)
            require(principal, permission, vm_labels=route.vm.labels)
        except errors.PermissionDenied as exc:
            if action is not None:
                await self.audit.denied(principal, source_of(ctx), action, exc, vm_id=vm_id, detail=detail)
            raise
        if route.gone and not gone_ok:
            raise route.gone_error()
        return principal, route

    def _reachable(self, route: VMRoute) -> NodeInfo:
        """The VM's node, if it has been heard from lately.

        Raises:
            errors.Unavailable: the node missed its heartbeats (reason ``node_unreachable``),
                or the VM is gone (reason ``vm_gone``).
        """
        if route.node is None or route.gone:
            raise route.gone_error()
        if not route.node.reachable:
            raise errors.Unavailable(
                f"node {route.node.node_id} hosting VM {route.vm.vm_id} has sent no heartbeat for "
                f"{self.heartbeat_timeout_s:g} s",
                reason="node_unreachable",
            )
        return route.node

    async def _file_route(
        self,
        ctx: CallContext,
        request: _FileRequest,
        permission: Permission,
        action: AuditAction,
        flags: tuple[str, ...] = (),
    ) -> tuple[Principal, VMRoute, AuditDetail]:
        """:meth:`_route` for a file RPC: its request checked (:func:`_checked_path`), and the
        audit detail that names the path (with ``flags``).

        Raises:
            errors.InvalidArgument: a field over its limit, no path, no vmId.
            errors.PermissionDenied, errors.NotFound, errors.Unavailable: as :meth:`_route`.
        """
        _checked_path(request)
        detail = AuditDetail(path=request.path, flags=flags)
        principal, route = await self._route(ctx, request.vm_id, permission, action, detail)
        return principal, route, detail

    def _audited(
        self, ctx: CallContext, principal: Principal, route: VMRoute, action: AuditAction, detail: AuditDetail
    ) -> AbstractAsyncContextManager[AuditEntry]:
        """The action's audit row (see :meth:`~._audit.AuditTrail.action`), naming the VM and its node.

        Raises:
            AuditWriteFailed: the row could not be written (nothing is forwarded).
        """
        return self.audit.action(
            principal, source_of(ctx), action, vm_id=route.vm.vm_id, node_id=route.node_id, detail=detail
        )

    # -- inventory ------------------------------------------------------------------

    async def ListVMs(self, request: api_pb.ListVMsRequest, ctx: CallContext) -> api_pb.ListVMsResponse:
        """Every VM the controller knows (gone ones included), filtered, in pages (within the token's scope).

        ``state`` matches :class:`~._models.InventoryState` values (``running``,
        ``off``, ``unknown``, ``gone``), anything else the agent state of the VMs
        that are not gone (a gone VM's agent state is history).

        Raises:
            errors.InvalidArgument: page size above the maximum, malformed page token.
        """
        check_message(request)
        principal = principal_of(ctx)
        require(principal, Permission.VM_READ)
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument(f"pageSize must be at most {MAX_PAGE_SIZE}")
        if request.page_token and not request.page_token.isdigit():
            raise errors.InvalidArgument("malformed pageToken")
        start = int(request.page_token or 0)
        rows = await self.store.list_vms(node_id=request.node_id or None, labels=dict(request.labels) or None)
        nodes = {n.node_id: n for n in await self.store.list_nodes(heartbeat_timeout_s=self.heartbeat_timeout_s)}
        states = {s.value for s in InventoryState}

        def wanted(vm: VMInfo) -> bool:
            if not request.state:
                return True
            if request.state in states:
                return vm.inventory_state.value == request.state
            return vm.reported and vm.state == request.state

        matching = [(node_id, vm) for node_id, vm in rows if principal.may_access(vm.labels) and wanted(vm)]
        page = matching[start : start + page_size]
        more = start + page_size < len(matching)
        return api_pb.ListVMsResponse(
            vms=[api_vm(vm, node_id, nodes.get(node_id)) for node_id, vm in page],
            next_page_token=str(start + page_size) if more else "",
        )

    async def GetVM(self, request: api_pb.GetVMRequest, ctx: CallContext) -> api_pb.VM:
        """The VM live from its node; the last reported record when the node is
        unreachable or the VM is gone."""
        check_message(request)
        _, route = await self._route(ctx, request.vm_id, Permission.VM_READ, gone_ok=True)
        out = api_vm(route.vm, route.node_id, route.node)
        if route.node is None or route.gone or not route.node.reachable:
            return out
        try:
            status = await self.nodes.call(
                route.node,
                "GetVM",
                node_pb.GetVMRequest(vm_id=route.vm.vm_id),
                node_pb.VMStatus,
                budget_s=ctx.budget_s(DEFAULT_CALL_BUDGET_S),
            )
        except errors.Unavailable:
            out.node_reachable = False
            return out
        # Name and labels stay the inventory's (what scopes are checked against); the
        # agent is live, with every address hostd keeps, and the last heartbeat's
        # telemetry while the agent has sent none.
        live = vm_info(status, max_addresses=guestcaps.MAX_ADDRESSES)
        telemetry = status.resource_usage.telemetry
        brief = live.agent
        if not status.resource_usage.HasField("telemetry"):
            kept = route.vm.agent
            brief = dataclasses.replace(
                brief,
                cpu_percent=kept.cpu_percent,
                memory_percent=kept.memory_percent,
                uptime_seconds=kept.uptime_seconds,
            )
        out = api_vm(dataclasses.replace(route.vm, state=live.state, agent=brief), route.node_id, route.node)
        # hostd keeps these within guestcaps' bounds; capped again as they come from another machine.
        if status.agent.HasField("identity"):
            out.identity.CopyFrom(guestcaps.cap_identity(status.agent.identity)[0])
        if status.resource_usage.HasField("telemetry"):
            out.telemetry.CopyFrom(guestcaps.cap_telemetry(telemetry)[0])
        return out

    async def PingAgent(self, request: api_pb.PingAgentRequest, ctx: CallContext) -> api_pb.PingAgentResponse:
        """``connected: false`` with the reason when the agent is not there (not an error)."""
        check_message(request)
        _, route = await self._route(ctx, request.vm_id, Permission.VM_READ)
        node = self._reachable(route)
        started = trio.current_time()
        pong = await self.nodes.call(
            node,
            "PingAgent",
            node_pb.PingAgentRequest(vm_id=route.vm.vm_id),
            node_pb.AgentPingResponse,
            budget_s=ctx.budget_s(DEFAULT_CALL_BUDGET_S),
        )
        return api_pb.PingAgentResponse(
            connected=pong.connected,
            version=pong.version,
            # Measured here: what a client of the controller actually waits.
            latency_ms=round((trio.current_time() - started) * 1000, 3) if pong.connected else 0.0,
            uptime_seconds=pong.agent_uptime_seconds,
            error=pong.error,
        )

    # -- commands -------------------------------------------------------------------

    @staticmethod
    def _exec_budget(ctx: CallContext, request: api_pb.ExecuteScriptRequest) -> float:
        return ctx.budget_s(command_budget_s(request.timeout_seconds))

    @staticmethod
    def _result(result: pb.ExecuteResponse, execution_id: str, handle: AuditEntry) -> api_pb.ExecuteScriptResponse:
        """The agent's result in the reference's field names; the audit outcome set from it."""
        reason = exit_reason_name(result)
        code = exit_code(result)
        if code is not None:
            handle.exit_code = code
            if code != 0:
                # It ran and said it failed: not plain "success" (exit_code holds the status).
                handle.outcome = AuditOutcome.FAILURE
        elif result.exit_reason == pb.EXIT_REASON_CANCELLED:
            handle.outcome, handle.error = AuditOutcome.CANCELLED, reason
        else:  # timed out, killed by a signal, failed to start
            handle.outcome, handle.error = AuditOutcome.ERROR, result.error or reason
        return api_pb.ExecuteScriptResponse(
            exit_code=code,  # absent unless it exited
            stdout=_decode(result.stdout),
            stderr=_decode(result.stderr),
            timed_out=result.timed_out,
            duration_ms=result.duration_ms,
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
            exit_reason=reason,
            signal=result.signal,
            error=result.error,
            execution_id=execution_id,
        )

    async def ExecuteScript(
        self, request: api_pb.ExecuteScriptRequest, ctx: CallContext
    ) -> api_pb.ExecuteScriptResponse:
        """Run a command or shell script in the guest and wait for it (ExecuteInGuest)."""
        check_message(request)
        detail = exec_detail(request)
        execute = execute_request(request)
        principal, route = await self._route(ctx, request.vm_id, Permission.VM_EXEC, AuditAction.EXEC, detail)
        async with self._audited(ctx, principal, route, AuditAction.EXEC, detail) as audit:
            answer = await execute_in_guest(
                self.nodes,
                self._reachable(route),
                route.vm.vm_id,
                execute,
                execution_id=request.execution_id,
                budget_s=self._exec_budget(ctx, request),
            )
            return self._result(answer.result, answer.execution_id, audit)

    async def ExecuteScriptStream(
        self, request: api_pb.ExecuteScriptRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb.ExecuteScriptEvent | Last]:
        """Relay hostd's ExecuteInGuestStream; closing this stream cancels the guest command.

        The command's result is sent once its audit row is complete, as ExecuteScript's answer
        is: a client that has seen a command end finds its row complete (its outcome, its exit
        code), and the result leaves with the stream's end in one write. That costs the client
        nothing: the end, which the client waits for, came after the row anyway. Output goes out
        as it comes.
        """
        check_message(request)
        detail = exec_detail(request)
        execute = execute_request(request)
        principal, route = await self._route(ctx, request.vm_id, Permission.VM_EXEC, AuditAction.EXEC_STREAM, detail)
        decoder = OutputDecoder()
        ended: api_pb.ExecuteScriptEvent | None = None
        async with self._audited(ctx, principal, route, AuditAction.EXEC_STREAM, detail) as audit:
            node = self._reachable(route)
            upstream = self.nodes.stream(
                node,
                "ExecuteInGuestStream",
                node_pb.ExecuteInGuestRequest(vm_id=route.vm.vm_id, request=execute, execution_id=request.execution_id),
                node_pb.ExecuteInGuestEvent,
                budget_s=self._exec_budget(ctx, request),
            )
            execution_id = ""
            try:
                async for event in upstream:
                    kind = event.WhichOneof("event")
                    if kind == "execution_id":
                        execution_id = event.execution_id
                        yield api_pb.ExecuteScriptEvent(execution_id=execution_id)
                    elif kind == "output":
                        name, text = decoder.decode(event.output)
                        yield api_pb.ExecuteScriptEvent(
                            output=api_pb.ExecuteScriptOutput(seq=event.output.seq, stream=name, text=text)
                        )
                    elif kind == "result":
                        result = self._result(event.result, execution_id, audit)
                        # What the decoders held back (a cut-off character) ends the output.
                        result.stdout = decoder.flush("stdout")
                        result.stderr = decoder.flush("stderr")
                        ended = api_pb.ExecuteScriptEvent(result=result)  # sent after the row (above)
            finally:
                # Closing upstream is what cancels the command in the guest.
                await upstream.aclose()
        if ended is not None:
            yield Last(ended)  # with the stream's end, in one piece

    async def CancelExecution(
        self, request: api_pb.CancelExecutionRequest, ctx: CallContext
    ) -> api_pb.CancelExecutionResponse:
        """Cancel a running command by its execution id."""
        check_message(request)
        if not request.execution_id:
            raise errors.InvalidArgument("executionId is required")
        detail = AuditDetail(target=request.execution_id)
        principal, route = await self._route(
            ctx, request.vm_id, Permission.VM_EXEC, AuditAction.CANCEL_EXECUTION, detail
        )
        async with self._audited(ctx, principal, route, AuditAction.CANCEL_EXECUTION, detail):
            answer = await self.nodes.call(
                self._reachable(route),
                "CancelExecution",
                node_pb.CancelExecutionRequest(vm_id=route.vm.vm_id, execution_id=request.execution_id),
                node_pb.CancelExecutionResponse,
                budget_s=ctx.budget_s(DEFAULT_CALL_BUDGET_S),
            )
            return api_pb.CancelExecutionResponse(found=answer.found)

    # -- files ----------------------------------------------------------------------

    async def ReadGuestFile(
        self, request: api_pb.ReadGuestFileRequest, ctx: CallContext
    ) -> api_pb.ReadGuestFileResponse:
        """A whole file or a range; the audit row names the path (never the contents)."""
        principal, route, detail = await self._file_route(
            ctx, request, Permission.FILE_READ, AuditAction.FILE_READ, _range_flags(request)
        )
        async with self._audited(ctx, principal, route, AuditAction.FILE_READ, detail):
            answer = await self.nodes.call(
                self._reachable(route),
                "ReadGuestFile",
                _node_read(route, request),
                node_pb.ReadGuestFileResponse,
                budget_s=ctx.budget_s(FILE_CALL_BUDGET_S),
            )
            return api_pb.ReadGuestFileResponse(
                content=answer.content, size=answer.file_size, sha256=answer.sha256.hex()
            )

    async def ReadGuestFileStream(
        self, request: api_pb.ReadGuestFileRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb.ReadGuestFileChunk]:
        """hostd's ReadGuestFileStream relayed chunk by chunk (at most 1 MiB each), audited as
        a file read. Its budget is the client's deadline, or :data:`FILE_CALL_BUDGET_S`
        without one (a stream of any size has no budget of its own); closing the stream
        stops the read in the guest."""
        principal, route, detail = await self._file_route(
            ctx, request, Permission.FILE_READ, AuditAction.FILE_READ, (*_range_flags(request), "stream")
        )
        remaining = ctx.time_remaining()
        budget = ctx.budget_s(FILE_CALL_BUDGET_S if math.isinf(remaining) else remaining)
        async with self._audited(ctx, principal, route, AuditAction.FILE_READ, detail):
            upstream = self.nodes.stream(
                self._reachable(route),
                "ReadGuestFileStream",
                _node_read(route, request),
                node_pb.ReadGuestFileChunk,
                budget_s=budget,
            )
            try:
                async for chunk in upstream:
                    yield api_pb.ReadGuestFileChunk(
                        offset=chunk.offset,
                        content=chunk.data,
                        eof=chunk.eof,
                        size=chunk.file_size,
                        sha256=chunk.sha256.hex(),
                    )
            finally:
                await upstream.aclose()

    async def WriteGuestFile(
        self, request: api_pb.WriteGuestFileRequest, ctx: CallContext
    ) -> api_pb.WriteGuestFileResponse:
        """An atomic write; the audit row has path, size and SHA-256 (never the contents).

        The content is taken out of the request once (each read of a protobuf
        bytes field is a new copy) and forwarded as it is, after the rest of the
        node's request: no second message, no re-encoded copy. The decoded
        request is dropped before the transfer, so a 45 MiB write holds the
        content about once while hostd works.
        """
        _checked_path(request)
        content = request.content
        flags = [name for name in ("append", "create_parents") if getattr(request, name)]
        if request.HasField("mode"):
            flags.append(f"mode={request.mode:o}")
        detail = AuditDetail(
            path=request.path, size=len(content), sha256=hashlib.sha256(content).hexdigest(), flags=tuple(flags)
        )
        principal, route = await self._route(ctx, request.vm_id, Permission.FILE_WRITE, AuditAction.FILE_WRITE, detail)
        head = node_pb.WriteGuestFileRequest(
            vm_id=route.vm.vm_id,
            path=request.path,
            write_mode=pb.WRITE_MODE_APPEND if request.append else pb.WRITE_MODE_TRUNCATE,
            create_parents=request.create_parents,
        )
        if request.HasField("mode"):
            head.mode = request.mode
        del request  # its own copy of the content goes now (the router keeps no reference)
        parts = (head.SerializeToString(), bytes_field_header(_NODE_WRITE_CONTENT_FIELD, len(content)), content)
        async with self._audited(ctx, principal, route, AuditAction.FILE_WRITE, detail):
            answer = await self.nodes.call_parts(
                self._reachable(route),
                "WriteGuestFile",
                parts,
                node_pb.WriteGuestFileResponse,
                budget_s=ctx.budget_s(FILE_CALL_BUDGET_S),
            )
            return api_pb.WriteGuestFileResponse(bytes_written=answer.bytes_written, sha256=answer.sha256.hex())

    async def StatGuestFile(
        self, request: api_pb.StatGuestFileRequest, ctx: CallContext
    ) -> api_pb.StatGuestFileResponse:
        principal, route, detail = await self._file_route(ctx, request, Permission.FILE_READ, AuditAction.FILE_STAT)
        async with self._audited(ctx, principal, route, AuditAction.FILE_STAT, detail):
            stat = await self.nodes.call(
                self._reachable(route),
                "StatGuestFile",
                node_pb.StatGuestFileRequest(vm_id=route.vm.vm_id, path=request.path),
                pb.FileStat,
                budget_s=ctx.budget_s(DEFAULT_CALL_BUDGET_S),
            )
            return api_pb.StatGuestFileResponse(stat=stat)

    async def ListGuestDirectory(
        self, request: api_pb.ListGuestDirectoryRequest, ctx: CallContext
    ) -> api_pb.ListGuestDirectoryResponse:
        principal, route, detail = await self._file_route(ctx, request, Permission.FILE_READ, AuditAction.FILE_LIST)
        async with self._audited(ctx, principal, route, AuditAction.FILE_LIST, detail):
            listing = await self.nodes.call(
                self._reachable(route),
                "ListGuestDirectory",
                node_pb.ListGuestDirectoryRequest(
                    vm_id=route.vm.vm_id,
                    path=request.path,
                    page_size=request.page_size,
                    page_token=request.page_token,
                ),
                pb.ListDirectoryResponse,
                budget_s=ctx.budget_s(DEFAULT_CALL_BUDGET_S),
            )
            return api_pb.ListGuestDirectoryResponse(entries=listing.entries, next_page_token=listing.next_page_token)

    # -- power and passwords --------------------------------------------------------

    async def GuestShutdown(
        self, request: api_pb.GuestShutdownRequest, ctx: CallContext
    ) -> api_pb.GuestShutdownResponse:
        check_message(request)
        flags = ["reboot" if request.reboot else "poweroff"]
        if request.delay_seconds:
            flags.append(f"delay={request.delay_seconds}")
        detail = AuditDetail(flags=tuple(flags))
        action = AuditAction.REBOOT if request.reboot else AuditAction.SHUTDOWN
        principal, route = await self._route(ctx, request.vm_id, Permission.VM_POWER, action, detail)
        async with self._audited(ctx, principal, route, action, detail):
            answer = await self.nodes.call(
                self._reachable(route),
                "GuestShutdown",
                node_pb.GuestShutdownRequest(
                    vm_id=route.vm.vm_id,
                    reboot=request.reboot,
                    delay_seconds=request.delay_seconds,
                    message=request.message,
                ),
                node_pb.GuestShutdownResponse,
                budget_s=ctx.budget_s(DEFAULT_CALL_BUDGET_S),
            )
            out = api_pb.GuestShutdownResponse(accepted=answer.accepted)
            if answer.HasField("scheduled_at"):
                out.scheduled_at.CopyFrom(answer.scheduled_at)
            return out

    async def ResetGuestPassword(
        self, request: api_pb.ResetGuestPasswordRequest, ctx: CallContext
    ) -> api_pb.ResetGuestPasswordResponse:
        """The audit row names the guest account, never the password."""
        check_message(request)
        if not request.username or not request.password:
            raise errors.InvalidArgument("username and password are required")
        detail = AuditDetail(username=request.username, flags=("expire",) if request.expire else ())
        principal, route = await self._route(
            ctx, request.vm_id, Permission.PASSWORD_RESET, AuditAction.PASSWORD_RESET, detail
        )
        async with self._audited(ctx, principal, route, AuditAction.PASSWORD_RESET, detail):
            answer = await self.nodes.call(
                self._reachable(route),
                "ResetGuestPassword",
                node_pb.ResetGuestPasswordRequest(
                    vm_id=route.vm.vm_id, username=request.username, password=request.password, expire=request.expire
                ),
                node_pb.ResetGuestPasswordResponse,
                budget_s=ctx.budget_s(DEFAULT_CALL_BUDGET_S),
            )
            return api_pb.ResetGuestPasswordResponse(expired=answer.expired)
