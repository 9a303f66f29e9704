"""hostd's ``VMStatus`` in the controller, mapped once: into the inventory's
:class:`~._models.VMInfo` (a heartbeat's VMs, a live GetVM answer) and from there into
the API's ``VM`` (ListVMs, GetVM).

A node is another machine: what it reports is cut to the same bounds hostd applies
to its guests (protocol/guestcaps.py) before it is kept or shown.
"""

from __future__ import annotations

from limiquantix.protocol import enum_name, guestcaps
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb

from ._context import timestamp
from ._models import AgentBrief, InventoryState, NodeInfo, VMInfo

__all__ = ["agent_state_name", "api_vm", "vm_info"]


def agent_state_name(state: int) -> str:
    """``AGENT_STATE_CONNECTED`` → ``connected`` (hostd's VMState values); unknown: the number."""
    return enum_name(node_pb.AgentState, state)


def vm_info(status: node_pb.VMStatus, *, max_addresses: int = guestcaps.HEARTBEAT_ADDRESSES) -> VMInfo:
    """The VM and its agent in brief, bounded (a node cannot grow the store without limit).

    ``max_addresses``: addresses kept (a heartbeat's first ones; GetVM's all hostd has).

    Raises:
        errors.InvalidArgument: no VM id.
    """
    text = guestcaps.cut
    agent, identity, telemetry = status.agent, status.agent.identity, status.resource_usage.telemetry
    brief = AgentBrief(
        agent_version=text(agent.version),
        os=text(identity.os.pretty_name or identity.os.name),
        hostname=text(identity.hostname),
        kernel=text(identity.kernel),
        ip_addresses=tuple(text(a, guestcaps.ADDRESS_BYTES) for a in agent.ip_addresses[:max_addresses]),
        cpu_percent=telemetry.cpu_percent,
        memory_percent=telemetry.memory.percent,
        uptime_seconds=telemetry.uptime_seconds,
        last_seen=agent.last_seen.ToNanoseconds() / 1e9 if agent.HasField("last_seen") else None,
        last_disconnect_reason=text(agent.last_disconnect_reason),
    )
    return VMInfo(
        vm_id=status.vm_id,
        name=status.name,
        labels=dict(status.labels),
        state=agent_state_name(agent.state),
        agent=brief,
    )


def api_vm(vm: VMInfo, node_id: str, node: NodeInfo | None) -> api_pb.VM:
    """The API's ``VM``; ``node``: None once the VM's node was removed (the VM is then gone)."""
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
        out.last_seen.CopyFrom(timestamp(brief.last_seen))
    if vm.last_reported is not None:
        out.last_reported.CopyFrom(timestamp(vm.last_reported))
    return out
