"""``limiquantix.compute.v1.NodeRegistryService``: hostd registration, heartbeats (each
node's VM list, the VM → node bindings) and ListNodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final, final

import trio

from limiquantix.protocol import LogThrottle, Throttle, errors
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol.rpc.server import CallContext, peer_common_name

from ._audit import AUDIT_COMPLETE_TIMEOUT_S, AuditTrail
from ._auth import Permission, Principal, Role, require
from ._context import principal_of, source_of, timestamp
from ._models import (
    AuditAction,
    AuditDetail,
    AuditOutcome,
    HeartbeatResult,
    VMInfo,
    audit_id,
)
from ._vmview import vm_info
from .store import MAX_GONE_VMS_PER_NODE, Store

__all__ = [
    "NODE_REGISTRY_SERVICE",
    "VM_CLAIM_AUDIT_INTERVAL_S",
    "NodeRegistryAPI",
    "require_node_certificate",
]

log = logging.getLogger(__name__)


NODE_REGISTRY_SERVICE: Final = api_pb.DESCRIPTOR.services_by_name["NodeRegistryService"]


#: A node's refused claim of a VM (sent again with every heartbeat) is audited at
#: most once per node and VM per this many seconds; the row's count says how many.
VM_CLAIM_AUDIT_INTERVAL_S: Final = 300.0


def _node_owner(principal: Principal) -> str | None:
    """The token a node id is bound to when this principal registers it: a node
    token's own id; None for an admin (who may act for any node)."""
    return principal.token_id if principal.role is Role.NODE else None


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
            f"node {audit_id(node_id)!r} must present its client certificate (common name {audit_id(node_id)!r}) "
            "from the controller's tls_client_ca_file",
            reason="node_certificate",
        )
    if name != node_id:
        raise errors.PermissionDenied(
            f"node {audit_id(node_id)!r} presented the client certificate of {audit_id(name)!r}",
            reason="node_certificate",
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
        self.audit = AuditTrail(store)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._check_node = check_node
        self._claims = Throttle(VM_CLAIM_AUDIT_INTERVAL_S)
        self._forgot_log = LogThrottle()

    async def _heartbeat(self, ctx: CallContext, principal: Principal, node_id: str, vms: list[VMInfo]) -> None:
        """Store the node's VM list; audit the VMs that moved to it and (rate-limited) those it may not host.

        Raises:
            errors.NotFound: reason ``unknown_node``.
            errors.PermissionDenied: reason ``node_owned``.
        """
        result = await self.store.heartbeat(
            node_id, vms, owner_token_id=_node_owner(principal), heartbeat_timeout_s=self.heartbeat_timeout_s
        )
        if result.forgotten and (more := self._forgot_log.due(node_id)) is not None:
            log.warning(
                "node %s: forgot its %d oldest gone VMs (a node keeps the newest %d)%s",
                node_id,
                result.forgotten,
                MAX_GONE_VMS_PER_NODE,
                more,
            )
        if result.moved or result.refused:
            # Shielded: the bindings changed already; their rows must not be lost to a hung-up node.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + AUDIT_COMPLETE_TIMEOUT_S):
                await self._record_claims(source_of(ctx), principal, node_id, result)

    async def _record_claims(self, source: str, principal: Principal, node_id: str, result: HeartbeatResult) -> None:
        try:
            for move in result.moved:
                log.info("VM %s moved from node %s to node %s (%s)", move.vm_id, move.from_node, node_id, move.reason)
                await self.audit.event(
                    principal, source, AuditAction.VM_MOVED, outcome=AuditOutcome.SUCCESS,
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
                await self.audit.event(
                    principal, source, AuditAction.VM_CLAIM, outcome=AuditOutcome.DENIED,
                    error=f"vm_owned: VM {claim.vm_id} is bound to node {claim.owner_node}, which still reports it",
                    vm_id=claim.vm_id, node_id=node_id, detail=AuditDetail(target=claim.owner_node, count=count),
                )  # fmt: skip
        except errors.AgentError:
            # The heartbeat itself is stored; a lost row is logged rather than failing the node.
            log.exception("audit rows for node %s's VM bindings could not be written", node_id)

    @staticmethod
    def _vms(vms: Iterable[node_pb.VMStatus]) -> list[VMInfo]:
        """Raises: errors.InvalidArgument: a VM without an id."""
        return [vm_info(v) for v in vms]

    async def RegisterNode(self, request: api_pb.RegisterNodeRequest, ctx: CallContext) -> api_pb.RegisterNodeResponse:
        """Add or update a node (audited), and take its VM list as its first heartbeat.

        A node token binds the node id to itself: another node token cannot take
        the id over (and so the VMs' routing) while this one is valid.

        Raises:
            errors.InvalidArgument: malformed node id, URL or token (from the store).
            errors.PermissionDenied: reason ``node_owned`` (audited as denied).
        """
        principal = principal_of(ctx)
        detail = AuditDetail.naming(request.node_id, count=len(request.vms))
        try:
            require(principal, Permission.NODE_REGISTER)
            if self._check_node is not None:
                self._check_node(request.node_id)
        except errors.PermissionDenied as exc:
            await self.audit.denied(principal, source_of(ctx), AuditAction.NODE_REGISTER, exc, detail=detail)
            raise
        vms = self._vms(request.vms)
        # refusals_denied: the store refuses a node id another node token owns.
        async with self.audit.action(
            principal,
            source_of(ctx),
            AuditAction.NODE_REGISTER,
            node_id=audit_id(request.node_id),
            detail=detail,
            refusals_denied=True,
        ):
            owner = _node_owner(principal)
            await self.store.register_node(request.node_id, url=request.url, token=request.token, owner_token_id=owner)
            await self._heartbeat(ctx, principal, request.node_id, vms)
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
        principal = principal_of(ctx)
        require(principal, Permission.NODE_REGISTER)
        if self._check_node is not None:
            self._check_node(request.node_id)
        await self._heartbeat(ctx, principal, request.node_id, self._vms(request.vms))
        return api_pb.HeartbeatResponse()

    async def ListNodes(self, request: api_pb.ListNodesRequest, ctx: CallContext) -> api_pb.ListNodesResponse:
        require(principal_of(ctx), Permission.NODE_READ)
        nodes = await self.store.list_nodes(heartbeat_timeout_s=self.heartbeat_timeout_s)
        return api_pb.ListNodesResponse(
            nodes=[
                api_pb.Node(
                    node_id=n.node_id,
                    url=n.url,
                    registered_at=timestamp(n.registered_at),
                    last_heartbeat=timestamp(n.last_heartbeat),
                    reachable=n.reachable,
                    vm_count=n.vm_count,
                )
                for n in nodes
            ]
        )
