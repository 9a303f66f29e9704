"""The controller's Connect services: ``VMService`` and ``NodeRegistryService``.

Every call has been authenticated by :func:`make_authenticator` (bearer token
→ :class:`~.auth.Principal` in ``ctx.auth``). Each handler then:

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
   heartbeats, else forwards to the node's hostd (:class:`~.forward.NodeClient`)
   with a time budget derived from the call's deadline and the command's own
   timeout;
5. completes the audit row with the outcome, exit code and duration (shielded
   from cancellation, so a client that hangs up still leaves a complete row:
   ``cancelled``). A call that reached hostd and then lost it (hostd killed
   mid-command, no answer in time) is ``unknown``: the guest may have acted,
   and the client's error (reason ``outcome_unknown``) says so.

Secrets never reach the audit log: :class:`~.models.AuditDetail` has no field
for passwords, file contents, stdin or environment values.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, final

import trio
from google.protobuf.timestamp_pb2 import Timestamp

from limiquantix.protocol import errors, guestcaps
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol.limits import check_message
from limiquantix.protocol.rpc import command_budget_s
from limiquantix.protocol.rpc.server import Authenticator, CallContext, peer_common_name
from limiquantix.protocol.wire import enum_name

from .auth import Permission, Principal, Role, require, token_id_of
from .forward import NodeClient, bytes_field_header, outcome_unknown
from .models import (
    MAX_PAGE_SIZE,
    AgentBrief,
    AuditAction,
    AuditDetail,
    AuditOutcome,
    HeartbeatResult,
    InventoryState,
    NodeInfo,
    VMInfo,
    VMRoute,
)
from .store import Store
from .throttle import AUTH_FAILURE_INTERVAL_S, AuditThrottle

__all__ = [
    "AUDIT_COMPLETE_TIMEOUT_S",
    "AUTH_FAILURE_REASONS",
    "DEFAULT_CALL_BUDGET_S",
    "DEFAULT_PAGE_SIZE",
    "FILE_CALL_BUDGET_S",
    "NODE_REGISTRY_SERVICE",
    "VM_CLAIM_AUDIT_INTERVAL_S",
    "VM_SERVICE",
    "AuthFailures",
    "NodeRegistryAPI",
    "VMAPI",
    "exec_detail",
    "execute_in_guest",
    "execute_request",
    "exit_reason_name",
    "make_authenticator",
    "record_event",
    "source_address",
]

log = logging.getLogger(__name__)

VM_SERVICE: Final = api_pb.DESCRIPTOR.services_by_name["VMService"]
NODE_REGISTRY_SERVICE: Final = api_pb.DESCRIPTOR.services_by_name["NodeRegistryService"]

#: ListVMs page size when the caller names none.
DEFAULT_PAGE_SIZE: Final = 100
#: Budget of a forwarded call that is not a command or a file transfer.
DEFAULT_CALL_BUDGET_S: Final = 30.0
#: Budget of a file transfer (up to 48 MiB over virtio-serial at a few MB/s).
FILE_CALL_BUDGET_S: Final = 300.0
#: Completing an audit row after the action, shielded from cancellation.
AUDIT_COMPLETE_TIMEOUT_S: Final = 5.0
#: The longest error text kept in an audit row's completion.
_AUDIT_ERROR_CHARS: Final = 500
#: A node's refused claim of a VM (sent again with every heartbeat) is audited at
#: most once per node and VM per this many seconds; the row's count says how many.
VM_CLAIM_AUDIT_INTERVAL_S: Final = 300.0

_NODE_WRITE_CONTENT_FIELD: Final = node_pb.WriteGuestFileRequest.DESCRIPTOR.fields_by_name["content"].number
_STREAM_NAMES: Final = {pb.OUTPUT_STREAM_STDOUT: "stdout", pb.OUTPUT_STREAM_STDERR: "stderr"}


#: The reasons refused authentications are counted under (anything else: ``other``),
#: so a client cannot mint metric labels.
AUTH_FAILURE_REASONS: Final = ("missing_token", "malformed_token", "invalid_token", "revoked_token")


@final
class AuthFailures:
    """Every bearer-token check of the controller (Connect calls and plain routes).

    A refusal (401) is counted (``count(reason)``, for ``/metrics``) and audited
    as ``auth.failed``, at most once per source address per
    :data:`~.throttle.AUTH_FAILURE_INTERVAL_S` (the row's ``count`` says how many
    it stands for), so a client retrying a bad token in a loop leaves a trace
    without flooding the log. The row names the path and the token id the
    client presented when it has the shape of one (never the secret).
    """

    def __init__(
        self, store: Store, count: Callable[[str], None], *, interval_s: float = AUTH_FAILURE_INTERVAL_S
    ) -> None:
        self.store = store
        self._count = count
        self._throttle = AuditThrottle(interval_s)

    async def authenticate(self, token: str | None, peer: tuple[str, int] | None, path: str) -> Principal:
        """The principal ``token`` stands for.

        Raises:
            errors.Unauthenticated: no token, or not a valid one (counted and audited).
        """
        try:
            if token is None:
                raise errors.Unauthenticated("an Authorization: Bearer token is required", reason="missing_token")
            return await self.store.authenticate(token)
        except errors.Unauthenticated as exc:
            await self._record(exc, token, peer, path)
            raise

    async def _record(
        self, exc: errors.Unauthenticated, token: str | None, peer: tuple[str, int] | None, path: str
    ) -> None:
        reason = exc.reason if exc.reason in AUTH_FAILURE_REASONS else "other"
        self._count(reason)
        held = self._throttle.hit(peer[0] if peer else "unix", trio.current_time())
        if held is None:
            return
        claimed = ""
        if token is not None:
            with contextlib.suppress(errors.Unauthenticated):
                claimed = token_id_of(token, allow_freeform=False)
        detail = AuditDetail(path=path, target=claimed, count=held, flags=(f"reason={reason}",))
        try:
            await record_event(
                self.store, None, source_address(peer), AuditAction.AUTH_FAILED, outcome=AuditOutcome.DENIED,
                error=f"{reason}: {exc.message}", detail=detail,
            )  # fmt: skip
        except errors.AgentError:
            # The caller gets its 401 either way; a full disk must not turn it into a 503.
            log.exception("the audit row of a refused authentication could not be written")


def make_authenticator(failures: AuthFailures) -> Authenticator:
    """The Connect ``authenticate`` hook: bearer token → ``ctx.auth`` (a Principal).

    Runs before the request body is read, so an anonymous client cannot make
    the controller buffer anything.
    """

    async def authenticate(ctx: CallContext) -> None:
        ctx.auth = await failures.authenticate(ctx.bearer_token, ctx.peer, f"/{ctx.procedure}")

    return authenticate


def _principal(ctx: CallContext) -> Principal:
    principal = ctx.auth
    if not isinstance(principal, Principal):  # pragma: no cover - the router always authenticates first
        raise errors.Unauthenticated("not authenticated")
    return principal


def source_address(peer: tuple[str, int] | None) -> str:
    """A client's address for audit rows: ``host:port``, ``[v6]:port``, or ``unix``."""
    if peer is None:
        return "unix"
    host, port = peer
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _source(ctx: CallContext) -> str:
    """The client's address for audit rows."""
    return source_address(ctx.peer)


async def record_event(
    store: Store,
    principal: Principal | None,
    source_address: str,
    action: AuditAction,
    *,
    outcome: AuditOutcome,
    error: str = "",
    vm_id: str = "",
    node_id: str = "",
    detail: AuditDetail | None = None,
) -> None:
    """An audit row for something already decided (a refusal, a move): begun and completed at once.

    Raises:
        AuditWriteFailed: the row could not be written.
    """
    audit_id = await store.audit_begin(
        principal, source_address=source_address, action=action, vm_id=vm_id, node_id=node_id, detail=detail
    )
    await store.audit_complete(audit_id, outcome=outcome, error=error[:_AUDIT_ERROR_CHARS])


def _state_name(state: int) -> str:
    """``AGENT_STATE_CONNECTED`` → ``connected`` (hostd's VMState values); unknown: the number."""
    return enum_name(node_pb.AgentState, state)


def _timestamp(ts: float | None) -> Timestamp | None:
    if ts is None:
        return None
    out = Timestamp()
    out.FromNanoseconds(int(ts * 1e9))
    return out


def _node_owner(principal: Principal) -> str | None:
    """The token a node id is bound to when this principal registers it: a node
    token's own id; None for an admin (who may act for any node)."""
    return principal.token_id if principal.role is Role.NODE else None


def _agent_brief(vm: api_pb.NodeVM) -> AgentBrief:
    """A heartbeat's agent summary, bounded (a node cannot grow the store without limit).

    hostd sends it within the same caps (protocol/guestcaps.py); they are applied
    again here because a heartbeat comes from another machine.
    """
    text = guestcaps.cut

    return AgentBrief(
        agent_version=text(vm.agent_version),
        os=text(vm.os),
        hostname=text(vm.hostname),
        kernel=text(vm.kernel),
        ip_addresses=tuple(text(a, guestcaps.ADDRESS_BYTES) for a in vm.ip_addresses[: guestcaps.HEARTBEAT_ADDRESSES]),
        cpu_percent=vm.cpu_percent,
        memory_percent=vm.memory_percent,
        uptime_seconds=vm.uptime_seconds,
        last_seen=vm.last_seen.ToNanoseconds() / 1e9 if vm.HasField("last_seen") else None,
        last_disconnect_reason=text(vm.last_disconnect_reason),
    )


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# ------------------------------------------------------------------ exec, shared with the fleet runner


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


@final
class _AuditHandle:
    """What a handler tells the audit row about how the action ended."""

    __slots__ = ("error", "exit_code", "outcome")

    def __init__(self) -> None:
        self.outcome = AuditOutcome.SUCCESS
        self.exit_code: int | None = None
        self.error = ""


@final
class VMAPI:
    """``limiquantix.compute.v1.VMService`` over the store and the nodes' APIs."""

    def __init__(self, store: Store, nodes: NodeClient, *, heartbeat_timeout_s: float) -> None:
        self.store = store
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
        principal = _principal(ctx)
        if not vm_id:
            raise errors.InvalidArgument("vmId is required")
        try:
            # The role first: a token that may not do this learns nothing about the VM.
            require(principal, permission)
            route = await self.store.node_for_vm(vm_id, heartbeat_timeout_s=self.heartbeat_timeout_s)
            require(principal, permission, vm_labels=route.vm.labels)
        except errors.PermissionDenied as exc:
            if action is not None:
                await self._record_denied(ctx, principal, action, vm_id, detail, exc)
            raise
        if route.gone and not gone_ok:
            raise route.gone_error()
        return principal, route

    async def _record_denied(
        self,
        ctx: CallContext,
        principal: Principal,
        action: AuditAction,
        vm_id: str,
        detail: AuditDetail | None,
        exc: errors.AgentError,
    ) -> None:
        await record_event(
            self.store,
            principal,
            _source(ctx),
            action,
            outcome=AuditOutcome.DENIED,
            error=exc.message,
            vm_id=vm_id,
            detail=detail,
        )

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

    @asynccontextmanager
    async def _audited(
        self, ctx: CallContext, principal: Principal, route: VMRoute, action: AuditAction, detail: AuditDetail
    ) -> AsyncIterator[_AuditHandle]:
        """Audit row begun before the body runs, completed however it ends.

        Raises:
            AuditWriteFailed: the row could not be written (nothing is forwarded).
        """
        started = trio.current_time()
        audit_id = await self.store.audit_begin(
            principal,
            source_address=_source(ctx),
            action=action,
            vm_id=route.vm.vm_id,
            node_id=route.node_id,
            detail=detail,
        )
        handle = _AuditHandle()
        try:
            yield handle
        except errors.AgentError as exc:
            # Sent, then the node went away: the guest may have acted, so not "error".
            handle.outcome = AuditOutcome.UNKNOWN if outcome_unknown(exc) else AuditOutcome.ERROR
            handle.error = f"{exc.connect_code}: {exc.message}"
            raise
        except (trio.Cancelled, GeneratorExit):
            handle.outcome, handle.error = AuditOutcome.CANCELLED, "the client went away"
            raise
        except BaseException as exc:
            handle.outcome, handle.error = AuditOutcome.ERROR, f"internal: {type(exc).__name__}"
            raise
        finally:
            duration_ms = round((trio.current_time() - started) * 1000)
            # Shielded: a client that hangs up must still leave a complete row.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + AUDIT_COMPLETE_TIMEOUT_S):
                try:
                    await self.store.audit_complete(
                        audit_id,
                        outcome=handle.outcome,
                        exit_code=handle.exit_code,
                        duration_ms=duration_ms,
                        error=handle.error[:_AUDIT_ERROR_CHARS],
                    )
                except errors.AgentError:
                    # The action already happened; the row stays pending ("outcome unknown").
                    log.exception("audit row %d could not be completed", audit_id)

    # -- inventory ------------------------------------------------------------------

    async def ListVMs(self, request: api_pb.ListVMsRequest, ctx: CallContext) -> api_pb.ListVMsResponse:
        """Every VM the controller knows (gone ones included), filtered, in pages (within the token's scope).

        ``state`` matches :class:`~.models.InventoryState` values (``running``,
        ``off``, ``unknown``, ``gone``), anything else the agent state of the VMs
        that are not gone (a gone VM's agent state is history).

        Raises:
            errors.InvalidArgument: page size above the maximum, malformed page token.
        """
        check_message(request)
        principal = _principal(ctx)
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
            vms=[self._vm(vm, node_id, nodes.get(node_id)) for node_id, vm in page],
            next_page_token=str(start + page_size) if more else "",
        )

    @staticmethod
    def _vm(vm: VMInfo, node_id: str, node: NodeInfo | None) -> api_pb.VM:
        """``node``: None once the VM's node was removed (the VM is then gone)."""
        brief = vm.agent
        out = api_pb.VM(
            vm_id=vm.vm_id,
            name=vm.name,
            labels=dict(vm.labels),
            node_id=node_id,
            agent_state=vm.state,
            state=(InventoryState.GONE if node is None else vm.inventory_state).value,
            node_reachable=bool(node and node.reachable),
            agent_version=brief.agent_version,
            ip_addresses=brief.ip_addresses,
            hostname=brief.hostname,
            os=brief.os,
            kernel=brief.kernel,
            last_disconnect_reason=brief.last_disconnect_reason,
            cpu_percent=brief.cpu_percent,
            memory_percent=brief.memory_percent,
            uptime_seconds=brief.uptime_seconds,
        )
        if brief.last_seen is not None:
            out.last_seen.CopyFrom(_timestamp(brief.last_seen))
        if vm.last_reported is not None:
            out.last_reported.CopyFrom(_timestamp(vm.last_reported))
        return out

    async def GetVM(self, request: api_pb.GetVMRequest, ctx: CallContext) -> api_pb.VM:
        """The VM live from its node; the last reported record when the node is
        unreachable or the VM is gone."""
        check_message(request)
        _, route = await self._route(ctx, request.vm_id, Permission.VM_READ, gone_ok=True)
        out = self._vm(route.vm, route.node_id, route.node)
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
        agent, telemetry = status.agent, status.resource_usage.telemetry
        out.agent_state = _state_name(agent.state)
        out.state = InventoryState.of(out.agent_state).value
        out.agent_version = agent.version
        out.ip_addresses[:] = agent.ip_addresses
        out.hostname = agent.identity.hostname
        out.os = agent.identity.os.pretty_name or agent.identity.os.name
        out.kernel = agent.identity.kernel
        out.last_disconnect_reason = agent.last_disconnect_reason
        out.ClearField("last_seen")
        if agent.HasField("last_seen"):
            out.last_seen.CopyFrom(agent.last_seen)
        # hostd keeps these within guestcaps' bounds; capped again as they come from another machine.
        if agent.HasField("identity"):
            out.identity.CopyFrom(guestcaps.cap_identity(agent.identity)[0])
        if status.resource_usage.HasField("telemetry"):
            out.telemetry.CopyFrom(guestcaps.cap_telemetry(telemetry)[0])
            out.cpu_percent = telemetry.cpu_percent
            out.memory_percent = telemetry.memory.percent
            out.uptime_seconds = telemetry.uptime_seconds
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
    def _execute_request(request: api_pb.ExecuteScriptRequest) -> pb.ExecuteRequest:
        """See :func:`execute_request`.

        Raises:
            errors.InvalidArgument: no command.
        """
        return execute_request(request)

    @staticmethod
    def _exec_detail(request: api_pb.ExecuteScriptRequest) -> AuditDetail:
        return exec_detail(request)

    @staticmethod
    def _exec_budget(ctx: CallContext, request: api_pb.ExecuteScriptRequest) -> float:
        return ctx.budget_s(command_budget_s(request.timeout_seconds))

    @staticmethod
    def _result(result: pb.ExecuteResponse, execution_id: str, handle: _AuditHandle) -> api_pb.ExecuteScriptResponse:
        """The agent's result in the reference's field names; the audit outcome set from it."""
        reason = exit_reason_name(result)
        exited = result.exit_reason == pb.EXIT_REASON_EXITED
        if exited:
            handle.exit_code = result.exit_code
            if result.exit_code != 0:
                # It ran and said it failed: not plain "success" (exit_code holds the status).
                handle.outcome = AuditOutcome.FAILURE
        elif result.exit_reason == pb.EXIT_REASON_CANCELLED:
            handle.outcome, handle.error = AuditOutcome.CANCELLED, reason
        else:  # timed out, killed by a signal, failed to start
            handle.outcome, handle.error = AuditOutcome.ERROR, result.error or reason
        return api_pb.ExecuteScriptResponse(
            exit_code=result.exit_code if exited else None,  # absent unless it exited
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
        detail = self._exec_detail(request)
        execute = self._execute_request(request)
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
    ) -> AsyncIterator[api_pb.ExecuteScriptEvent]:
        """Relay hostd's ExecuteInGuestStream; closing this stream cancels the guest command."""
        check_message(request)
        detail = self._exec_detail(request)
        execute = self._execute_request(request)
        principal, route = await self._route(ctx, request.vm_id, Permission.VM_EXEC, AuditAction.EXEC_STREAM, detail)
        # One incremental decoder per stream: a UTF-8 character split across
        # two chunks must come out whole.
        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in _STREAM_NAMES.values()}
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
                        name = _STREAM_NAMES.get(event.output.stream, "stdout")
                        text = decoders[name].decode(event.output.data)
                        yield api_pb.ExecuteScriptEvent(
                            output=api_pb.ExecuteScriptOutput(seq=event.output.seq, stream=name, text=text)
                        )
                    elif kind == "result":
                        result = self._result(event.result, execution_id, audit)
                        # What the decoders held back (a cut-off character) ends the output.
                        result.stdout = decoders["stdout"].decode(b"", final=True)
                        result.stderr = decoders["stderr"].decode(b"", final=True)
                        yield api_pb.ExecuteScriptEvent(result=result)
            finally:
                # Closing upstream is what cancels the command in the guest.
                await upstream.aclose()

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
        check_message(request)
        if not request.path:
            raise errors.InvalidArgument("path is required")
        flags = tuple(f"{k}={v}" for k, v in (("offset", request.offset), ("length", request.length)) if v)
        detail = AuditDetail(path=request.path, flags=flags)
        principal, route = await self._route(ctx, request.vm_id, Permission.FILE_READ, AuditAction.FILE_READ, detail)
        async with self._audited(ctx, principal, route, AuditAction.FILE_READ, detail):
            answer = await self.nodes.call(
                self._reachable(route),
                "ReadGuestFile",
                node_pb.ReadGuestFileRequest(
                    vm_id=route.vm.vm_id, path=request.path, offset=request.offset, length=request.length
                ),
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
        check_message(request)
        if not request.path:
            raise errors.InvalidArgument("path is required")
        flags = tuple(f"{k}={v}" for k, v in (("offset", request.offset), ("length", request.length)) if v)
        detail = AuditDetail(path=request.path, flags=(*flags, "stream"))
        principal, route = await self._route(ctx, request.vm_id, Permission.FILE_READ, AuditAction.FILE_READ, detail)
        remaining = ctx.time_remaining()
        budget = ctx.budget_s(FILE_CALL_BUDGET_S if math.isinf(remaining) else remaining)
        async with self._audited(ctx, principal, route, AuditAction.FILE_READ, detail):
            upstream = self.nodes.stream(
                self._reachable(route),
                "ReadGuestFileStream",
                node_pb.ReadGuestFileRequest(
                    vm_id=route.vm.vm_id, path=request.path, offset=request.offset, length=request.length
                ),
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
        check_message(request)
        if not request.path:
            raise errors.InvalidArgument("path is required")
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
        check_message(request)
        if not request.path:
            raise errors.InvalidArgument("path is required")
        detail = AuditDetail(path=request.path)
        principal, route = await self._route(ctx, request.vm_id, Permission.FILE_READ, AuditAction.FILE_STAT, detail)
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
        check_message(request)
        if not request.path:
            raise errors.InvalidArgument("path is required")
        detail = AuditDetail(path=request.path)
        principal, route = await self._route(ctx, request.vm_id, Permission.FILE_READ, AuditAction.FILE_LIST, detail)
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


def require_node_certificate(node_id: str) -> None:
    """The connection a node's call came on must carry its client certificate (verified against
    the controller's ``tls_client_ca_file``), whose common name is ``node_id``: a node token
    alone (stolen, or another host's) cannot register or heartbeat as this node.

    Raises:
        errors.PermissionDenied: reason ``node_certificate``: none, or another node's.
    """
    name = peer_common_name()
    if name is None:
        raise errors.PermissionDenied(
            f"node {node_id[:255]} must present its client certificate (common name {node_id[:255]}) "
            "from the controller's tls_client_ca_file",
            reason="node_certificate",
        )
    if name != node_id:
        raise errors.PermissionDenied(
            f"node {node_id[:255]} presented the client certificate of {name[:255]!r}", reason="node_certificate"
        )


@final
class NodeRegistryAPI:
    """``limiquantix.compute.v1.NodeRegistryService``: hostd registration, heartbeats, ListNodes.

    ``check_node`` (:func:`require_node_certificate` when the controller asks for client
    certificates) runs before a registration or heartbeat is taken.
    """

    def __init__(
        self, store: Store, *, heartbeat_timeout_s: float, check_node: Callable[[str], None] | None = None
    ) -> None:
        self.store = store
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._check_node = check_node
        self._claims = AuditThrottle(VM_CLAIM_AUDIT_INTERVAL_S)

    async def _heartbeat(self, ctx: CallContext, principal: Principal, node_id: str, vms: list[VMInfo]) -> None:
        """Store the node's VM list; audit the VMs that moved to it and (rate-limited) those it may not host.

        Raises:
            errors.NotFound: reason ``unknown_node``.
            errors.PermissionDenied: reason ``node_owned``.
        """
        result = await self.store.heartbeat(
            node_id, vms, owner_token_id=_node_owner(principal), heartbeat_timeout_s=self.heartbeat_timeout_s
        )
        if result.moved or result.refused:
            # Shielded: the bindings changed already; their rows must not be lost to a hung-up node.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + AUDIT_COMPLETE_TIMEOUT_S):
                await self._record_claims(_source(ctx), principal, node_id, result)

    async def _record_claims(self, source: str, principal: Principal, node_id: str, result: HeartbeatResult) -> None:
        try:
            for move in result.moved:
                log.info("VM %s moved from node %s to node %s (%s)", move.vm_id, move.from_node, node_id, move.reason)
                await record_event(
                    self.store, principal, source, AuditAction.VM_MOVED, outcome=AuditOutcome.SUCCESS,
                    vm_id=move.vm_id, node_id=node_id,
                    detail=AuditDetail(target=move.from_node, flags=(f"reason={move.reason}",)),
                )  # fmt: skip
            for claim in result.refused:
                count = self._claims.hit((node_id, claim.vm_id), trio.current_time())
                if count is None:
                    continue
                log.warning(
                    "node %s reports VM %s, which node %s hosts: refused", node_id, claim.vm_id, claim.owner_node
                )
                await record_event(
                    self.store, principal, source, AuditAction.VM_CLAIM, outcome=AuditOutcome.DENIED,
                    error=f"vm_owned: VM {claim.vm_id} is bound to node {claim.owner_node}, which still reports it",
                    vm_id=claim.vm_id, node_id=node_id, detail=AuditDetail(target=claim.owner_node, count=count),
                )  # fmt: skip
        except errors.AgentError:
            # The heartbeat itself is stored; a lost row is logged rather than failing the node.
            log.exception("audit rows for node %s's VM bindings could not be written", node_id)

    @staticmethod
    def _vms(vms: Iterable[api_pb.NodeVM]) -> list[VMInfo]:
        """Raises: errors.InvalidArgument: a VM without an id."""
        return [
            VMInfo(vm_id=v.vm_id, name=v.name, labels=dict(v.labels), state=v.state, agent=_agent_brief(v)) for v in vms
        ]

    async def RegisterNode(self, request: api_pb.RegisterNodeRequest, ctx: CallContext) -> api_pb.RegisterNodeResponse:
        """Add or update a node (audited), and take its VM list as its first heartbeat.

        A node token binds the node id to itself: another node token cannot take
        the id over (and so the VMs' routing) while this one is valid.

        Raises:
            errors.InvalidArgument: malformed node id, URL or token (from the store).
            errors.PermissionDenied: reason ``node_owned`` (audited as denied).
        """
        principal = _principal(ctx)
        detail = AuditDetail(target=request.node_id[:255], count=len(request.vms))
        try:
            require(principal, Permission.NODE_REGISTER)
            if self._check_node is not None:
                self._check_node(request.node_id)
        except errors.PermissionDenied as exc:
            await record_event(
                self.store, principal, _source(ctx), AuditAction.NODE_REGISTER, outcome=AuditOutcome.DENIED,
                error=exc.message, detail=detail,
            )  # fmt: skip
            raise
        vms = self._vms(request.vms)
        started = trio.current_time()
        audit_id = await self.store.audit_begin(
            principal,
            source_address=_source(ctx),
            action=AuditAction.NODE_REGISTER,
            node_id=request.node_id[:255],
            detail=detail,
        )
        outcome, error = AuditOutcome.ERROR, ""
        try:
            owner = _node_owner(principal)
            await self.store.register_node(request.node_id, url=request.url, token=request.token, owner_token_id=owner)
            await self._heartbeat(ctx, principal, request.node_id, vms)
            outcome = AuditOutcome.SUCCESS
        except errors.AgentError as exc:
            error = f"{exc.connect_code}: {exc.message}"
            if isinstance(exc, errors.PermissionDenied):  # the node id is another token's
                outcome = AuditOutcome.DENIED
            raise
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + AUDIT_COMPLETE_TIMEOUT_S):
                await self.store.audit_complete(
                    audit_id,
                    outcome=outcome,
                    duration_ms=round((trio.current_time() - started) * 1000),
                    error=error,
                )
        log.info("node %s registered at %s with %d VMs", request.node_id, request.url, len(vms))
        return api_pb.RegisterNodeResponse(heartbeat_timeout_seconds=self.heartbeat_timeout_s)

    async def Heartbeat(self, request: api_pb.HeartbeatRequest, ctx: CallContext) -> api_pb.HeartbeatResponse:
        """Not audited (every few seconds per node): it only refreshes the VM list.
        VMs that move to this node are (``vm.moved``), and VMs another node hosts
        are refused and audited at most every :data:`VM_CLAIM_AUDIT_INTERVAL_S`
        (``vm.claim``, denied, ``vm_owned``).

        Raises:
            errors.NotFound: reason ``unknown_node``: the node must RegisterNode again.
            errors.PermissionDenied: reason ``node_owned``: another valid node token registered it.
        """
        principal = _principal(ctx)
        require(principal, Permission.NODE_REGISTER)
        if self._check_node is not None:
            self._check_node(request.node_id)
        await self._heartbeat(ctx, principal, request.node_id, self._vms(request.vms))
        return api_pb.HeartbeatResponse()

    async def ListNodes(self, request: api_pb.ListNodesRequest, ctx: CallContext) -> api_pb.ListNodesResponse:
        require(_principal(ctx), Permission.NODE_READ)
        nodes = await self.store.list_nodes(heartbeat_timeout_s=self.heartbeat_timeout_s)
        return api_pb.ListNodesResponse(
            nodes=[
                api_pb.Node(
                    node_id=n.node_id,
                    url=n.url,
                    registered_at=_timestamp(n.registered_at),
                    last_heartbeat=_timestamp(n.last_heartbeat),
                    reachable=n.reachable,
                    vm_count=n.vm_count,
                )
                for n in nodes
            ]
        )
