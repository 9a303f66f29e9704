"""Nodes and the VM inventory on SQLite: registrations, heartbeats, VM → node bindings."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

from limiquantix.protocol import errors
from limiquantix.protocol.limits import check_id

from .._models import (
    AgentBrief,
    HeartbeatResult,
    NodeInfo,
    VMClaim,
    VMInfo,
    VMMove,
    VMRoute,
)
from ._engine import SQLiteEngine, json_text, snapshot, transaction
from ._interface import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    MAX_GONE_VMS_PER_NODE,
    MAX_NODES_PER_TOKEN,
)

__all__ = ["SQLiteInventory"]

log = logging.getLogger(__name__)

_NODE_URL_MAX_CHARS: Final = 2048


_NODE_SELECT: Final = (
    "SELECT n.node_id, n.url, n.token, n.registered_at, n.last_heartbeat,"
    " (SELECT COUNT(*) FROM vms c WHERE c.node_id = n.node_id AND c.reported = 1) FROM nodes n"
)


def _check_node_owner(conn: sqlite3.Connection, node_id: str, token_id: str | None) -> None:
    """A node token may act for a node id that no other valid node token owns.

    Raises:
        errors.PermissionDenied: reason ``node_owned``.
    """
    if token_id is None:
        return
    row = conn.execute(
        "SELECT n.owner_token_id FROM nodes n JOIN api_tokens t ON t.id = n.owner_token_id"
        " WHERE n.node_id = ? AND t.revoked_at IS NULL",
        (node_id,),
    ).fetchone()
    if row is not None and row[0] != token_id:
        raise errors.PermissionDenied(
            f"node {node_id!r} is registered by another node token ({row[0]}); revoke that one first",
            reason="node_owned",
        )


#: VM ids looked up per query when a heartbeat's VMs are checked against their bindings
#: (below SQLite's default limit of host parameters).
_CLAIM_BATCH: Final = 500


def _claim_vms(
    conn: sqlite3.Connection, node_id: str, vm_ids: list[str], now: float, heartbeat_timeout_s: float
) -> tuple[list[VMMove], list[VMClaim]]:
    """Which of the VMs a node reports may be bound to it, and which move to it.

    A VM bound to another node moves here when that node's last heartbeat no
    longer lists it, when that node has been silent past ``heartbeat_timeout_s``,
    or when it was removed; otherwise it is refused. The caller's upsert then
    rebinds the moved ones.
    """
    moved: list[VMMove] = []
    refused: list[VMClaim] = []
    for start in range(0, len(vm_ids), _CLAIM_BATCH):
        batch = vm_ids[start : start + _CLAIM_BATCH]
        marks = ",".join("?" * len(batch))
        others = conn.execute(
            "SELECT v.vm_id, v.node_id, v.reported, n.node_id IS NOT NULL, n.last_heartbeat"
            f" FROM vms v LEFT JOIN nodes n ON n.node_id = v.node_id WHERE v.node_id <> ? AND v.vm_id IN ({marks})",
            (node_id, *batch),
        ).fetchall()
        for vm_id, owner, still_reported, owner_exists, last_heartbeat in others:
            owner_reachable = last_heartbeat is not None and now - last_heartbeat <= heartbeat_timeout_s
            if still_reported and owner_exists and owner_reachable:
                refused.append(VMClaim(vm_id=vm_id, owner_node=owner))
                continue
            if not owner_exists:
                reason = "owner_removed"
            else:
                reason = "owner_unreachable" if still_reported else "not_reported"
            moved.append(VMMove(vm_id=vm_id, from_node=owner, reason=reason))
    return moved, refused


def _node_from_row(row: Sequence[Any], now: float, heartbeat_timeout_s: float) -> NodeInfo:
    last = row[4]
    return NodeInfo(
        node_id=row[0],
        url=row[1],
        token=row[2],
        registered_at=row[3],
        last_heartbeat=last,
        reachable=last is not None and now - last <= heartbeat_timeout_s,
        vm_count=row[5],
    )


def _node(conn: sqlite3.Connection, node_id: str, now: float, heartbeat_timeout_s: float) -> NodeInfo:
    row = conn.execute(f"{_NODE_SELECT} WHERE n.node_id = ?", (node_id,)).fetchone()
    if row is None:
        raise errors.NotFound(f"no node {node_id!r}")
    return _node_from_row(row, now, heartbeat_timeout_s)


_VM_COLUMNS: Final = "vm_id, name, labels, state, agent, reported, last_reported"


def _vm_from_row(row: Sequence[Any]) -> VMInfo:
    return VMInfo(
        vm_id=row[0],
        name=row[1],
        labels=json.loads(row[2]),
        state=row[3],
        agent=AgentBrief.from_dict(json.loads(row[4])),
        reported=bool(row[5]),
        last_reported=row[6],
    )


def _route(conn: sqlite3.Connection, vm_id: str, now: float, heartbeat_timeout_s: float) -> VMRoute:
    """Raises: errors.NotFound: no such VM (reason ``unknown_vm``)."""
    # Only the node the VM is bound to: another node's report never routes a call.
    row = conn.execute(f"SELECT node_id, {_VM_COLUMNS} FROM vms WHERE vm_id = ?", (vm_id,)).fetchone()
    if row is None:
        raise errors.NotFound(f"no VM {vm_id!r}: no node has reported it", reason="unknown_vm")
    node_row = conn.execute(f"{_NODE_SELECT} WHERE n.node_id = ?", (row[0],)).fetchone()
    node = _node_from_row(node_row, now, heartbeat_timeout_s) if node_row is not None else None
    return VMRoute(node_id=row[0], node=node, vm=_vm_from_row(row[1:]))


def _check_nodes_per_token(conn: sqlite3.Connection, node_id: str, owner_token_id: str) -> None:
    """Refuse a new node id to a node token that registered :data:`MAX_NODES_PER_TOKEN` already.

    Raises:
        errors.ResourceExhausted: reason ``too_many_nodes``.
    """
    if conn.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone() is not None:
        return  # registering again: no new row
    (count,) = conn.execute("SELECT count(*) FROM nodes WHERE owner_token_id = ?", (owner_token_id,)).fetchone()
    if count >= MAX_NODES_PER_TOKEN:
        raise errors.ResourceExhausted(
            f"this node token has registered {count} nodes, the most one may; make a token per host"
            " (limiquantix-controller token create --role node), or remove nodes no longer used",
            reason="too_many_nodes",
        )


class SQLiteInventory(SQLiteEngine):
    # ---- nodes

    async def register_node(self, node_id: str, *, url: str, token: str, owner_token_id: str | None = None) -> NodeInfo:
        # A node id appears in URLs, metrics labels and logs: plain, as hostd checks it.
        check_id(node_id, "node id", plain=True)
        if not url.startswith(("http://", "https://", "unix:")) or len(url) > _NODE_URL_MAX_CHARS:
            raise errors.InvalidArgument("node url must be http://, https:// or unix:")
        if not token or any(c.isspace() for c in token):
            raise errors.InvalidArgument("node token must be non-empty, without spaces")

        def run(conn: sqlite3.Connection) -> NodeInfo:
            with transaction(conn, durable=True):
                _check_node_owner(conn, node_id, owner_token_id)
                if owner_token_id is not None:
                    _check_nodes_per_token(conn, node_id, owner_token_id)
                conn.execute(
                    "INSERT INTO nodes (node_id, url, token, registered_at, owner_token_id) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, token = excluded.token,"
                    " owner_token_id = COALESCE(excluded.owner_token_id, nodes.owner_token_id)",
                    (node_id, url, token, self._clock(), owner_token_id),
                )
                return _node(conn, node_id, self._clock(), DEFAULT_HEARTBEAT_TIMEOUT_S)

        return await self._run(run)

    async def remove_node(self, node_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn, durable=True):
                if conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount == 0:
                    raise errors.NotFound(f"no node {node_id!r}")
                # Its VMs stay, gone: should the id register again, they are back only once reported.
                conn.execute("UPDATE vms SET reported = 0 WHERE node_id = ? AND reported = 1", (node_id,))

        await self._run(run)

    async def heartbeat(
        self,
        node_id: str,
        vms: Sequence[VMInfo],
        *,
        owner_token_id: str | None = None,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    ) -> HeartbeatResult:
        rows = {
            vm.vm_id: [vm.vm_id, node_id, vm.name, json_text(dict(vm.labels)), vm.state, json_text(vm.agent.to_dict())]
            for vm in vms
        }

        def run(conn: sqlite3.Connection) -> HeartbeatResult:
            with transaction(conn, durable=False):
                _check_node_owner(conn, node_id, owner_token_id)
                now = self._clock()
                cur = conn.execute("UPDATE nodes SET last_heartbeat = ? WHERE node_id = ?", (now, node_id))
                if cur.rowcount == 0:
                    raise errors.NotFound(f"node {node_id!r} is not registered", reason="unknown_node")
                moved, refused = _claim_vms(conn, node_id, list(rows), now, heartbeat_timeout_s)
                for claim in refused:
                    del rows[claim.vm_id]
                # Not deleted: a VM this heartbeat leaves out is gone, and stays listed as such.
                conn.execute("UPDATE vms SET reported = 0 WHERE node_id = ? AND reported = 1", (node_id,))
                conn.executemany(
                    "INSERT INTO vms (vm_id, node_id, name, labels, state, agent, bound_at, last_reported, reported)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (vm_id) DO UPDATE SET"
                    " bound_at = CASE WHEN vms.node_id = excluded.node_id THEN vms.bound_at ELSE excluded.bound_at END,"
                    " node_id = excluded.node_id, name = excluded.name, labels = excluded.labels,"
                    " state = excluded.state, agent = excluded.agent, last_reported = excluded.last_reported,"
                    " reported = 1",
                    [(*row, now, now) for row in rows.values()],
                )
                forgotten = conn.execute(
                    "DELETE FROM vms WHERE vm_id IN (SELECT vm_id FROM vms WHERE node_id = ? AND reported = 0"
                    " ORDER BY last_reported DESC, vm_id LIMIT -1 OFFSET ?)",
                    (node_id, MAX_GONE_VMS_PER_NODE),
                ).rowcount
                return HeartbeatResult(moved=tuple(moved), refused=tuple(refused), forgotten=forgotten)

        return await self._run(run)

    async def get_node(self, node_id: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> NodeInfo:
        return await self._run(lambda conn: _node(conn, node_id, self._clock(), heartbeat_timeout_s))

    async def list_nodes(self, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> list[NodeInfo]:
        def run(conn: sqlite3.Connection) -> list[NodeInfo]:
            rows = conn.execute(f"{_NODE_SELECT} ORDER BY n.node_id").fetchall()
            now = self._clock()
            return [_node_from_row(r, now, heartbeat_timeout_s) for r in rows]

        return await self._run(run)

    async def list_vms(
        self, *, node_id: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[tuple[str, VMInfo]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, VMInfo]]:
            sql = f"SELECT node_id, {_VM_COLUMNS} FROM vms"
            params: tuple[Any, ...] = ()
            if node_id is not None:
                sql += " WHERE node_id = ?"
                params = (node_id,)
            out = []
            for row in conn.execute(sql + " ORDER BY vm_id, node_id", params):
                vm = _vm_from_row(row[1:])
                if not labels or all(vm.labels.get(k) == v for k, v in labels.items()):
                    out.append((row[0], vm))
            return out

        return await self._run(run)

    async def node_for_vm(self, vm_id: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> VMRoute:
        def run(conn: sqlite3.Connection) -> VMRoute:
            with snapshot(conn):
                return _route(conn, vm_id, self._clock(), heartbeat_timeout_s)

        return await self._run(run)

    async def remove_vm(self, vm_id: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> VMRoute:
        def run(conn: sqlite3.Connection) -> VMRoute:
            with transaction(conn, durable=True):
                route = _route(conn, vm_id, self._clock(), heartbeat_timeout_s)
                if not route.gone and route.node is not None and route.node.reachable:
                    raise errors.FailedPrecondition(
                        f"node {route.node_id} still reports VM {vm_id} (it would be listed again at its next"
                        " heartbeat): remove the VM from that host first",
                        reason="vm_reported",
                    )
                conn.execute("DELETE FROM vms WHERE vm_id = ?", (vm_id,))
                return route

        return await self._run(run)
