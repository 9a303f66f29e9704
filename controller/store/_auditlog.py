"""The audit log on SQLite (append-only: enforced by the schema's triggers)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from limiquantix.protocol import errors

from .._auth import Principal
from .._models import (
    AUDIT_ERROR_MAX_CHARS,
    AuditAction,
    AuditDetail,
    AuditOutcome,
    AuditPage,
    AuditQuery,
    AuditRecord,
)
from ._engine import SQLiteEngine, json_text, transaction
from ._interface import (
    AuditWriteFailed,
)

__all__ = ["SQLiteAudit"]

log = logging.getLogger(__name__)

_SOURCE_ADDRESS_MAX_CHARS: Final = 255


_AUDIT_COLUMNS: Final = (
    "id, started_at, completed_at, user_name, token_id, role, source_address, action, vm_id, node_id,"
    " detail, outcome, exit_code, duration_ms, error"
)


def _audit_from_row(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(
        id=row[0],
        started_at=row[1],
        completed_at=row[2],
        user=row[3],
        token_id=row[4],
        role=row[5],
        source_address=row[6],
        action=AuditAction(row[7]),
        vm_id=row[8],
        node_id=row[9],
        detail=AuditDetail.from_mapping(json.loads(row[10])),
        outcome=AuditOutcome(row[11]),
        exit_code=row[12],
        duration_ms=row[13],
        error=row[14],
    )


class SQLiteAudit(SQLiteEngine):
    # ---- audit

    async def audit_begin(
        self,
        principal: Principal | None,
        *,
        source_address: str,
        action: AuditAction,
        vm_id: str = "",
        node_id: str = "",
        detail: AuditDetail | None = None,
    ) -> int:
        if not isinstance(action, AuditAction):
            raise errors.InvalidArgument(f"audit action must be an AuditAction, not {action!r}")
        if detail is None:
            detail = AuditDetail()
        if not isinstance(detail, AuditDetail):
            raise errors.InvalidArgument("audit detail must be an AuditDetail (a closed set of fields)")
        row = (
            self._clock(),
            principal.user if principal else "",
            principal.token_id if principal else "",
            principal.role.value if principal else "",
            source_address[:_SOURCE_ADDRESS_MAX_CHARS],
            action.value,
            vm_id,
            node_id,
            json_text(detail.to_dict()),
        )

        def run(conn: sqlite3.Connection) -> int:
            with transaction(conn, durable=True):
                cur = conn.execute(
                    "INSERT INTO audit_log (started_at, user_name, token_id, role, source_address, action,"
                    " vm_id, node_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                return int(cur.lastrowid or 0)

        try:
            return await self._run(run)
        except errors.AgentError as exc:
            raise AuditWriteFailed(
                f"audit log write failed ({exc.reason or exc.connect_code}): action refused"
            ) from exc

    async def audit_complete(
        self,
        audit_id: int,
        *,
        outcome: AuditOutcome,
        exit_code: int | None = None,
        duration_ms: int | None = None,
        error: str = "",
    ) -> None:
        outcome = AuditOutcome(outcome)
        if outcome is AuditOutcome.PENDING:
            raise errors.InvalidArgument("an audit row is completed with a final outcome")

        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn, durable=False):
                cur = conn.execute(
                    "UPDATE audit_log SET outcome = ?, completed_at = ?, exit_code = ?, duration_ms = ?, error = ?"
                    " WHERE id = ? AND outcome = 'pending'",
                    (outcome.value, self._clock(), exit_code, duration_ms, error[:AUDIT_ERROR_MAX_CHARS], audit_id),
                )
                if cur.rowcount == 0:
                    if conn.execute("SELECT 1 FROM audit_log WHERE id = ?", (audit_id,)).fetchone() is None:
                        raise errors.NotFound(f"no audit row {audit_id}")
                    raise errors.FailedPrecondition(f"audit row {audit_id} is already complete")

        await self._run(run)

    async def query_audit(self, query: AuditQuery) -> AuditPage:
        def run(conn: sqlite3.Connection) -> AuditPage:
            where: list[str] = []
            params: list[Any] = []
            action = query.action
            for column, value, prefix in (
                ("user_name", query.user, query.prefix),
                ("action", action.value if isinstance(action, AuditAction) else action, isinstance(action, str)),
                ("vm_id", query.vm_id, query.prefix),
                ("node_id", query.node_id, query.prefix),
                ("outcome", query.outcome.value if query.outcome else None, False),
            ):
                if value is None:
                    continue
                # A prefix by substr, not LIKE: no wildcards to escape, and case-sensitive like '='.
                where.append(f"substr({column}, 1, ?) = ?" if prefix else f"{column} = ?")
                params.extend((len(value), value) if prefix else (value,))
            if query.since is not None:
                where.append("started_at >= ?")
                params.append(query.since)
            if query.until is not None:
                where.append("started_at < ?")
                params.append(query.until)
            if query.page_token:
                where.append("id > ?" if query.oldest_first else "id < ?")
                params.append(int(query.page_token))
            sql = f"SELECT {_AUDIT_COLUMNS} FROM audit_log"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += f" ORDER BY id {'ASC' if query.oldest_first else 'DESC'} LIMIT ?"
            rows = conn.execute(sql, [*params, query.limit + 1]).fetchall()
            more = len(rows) > query.limit
            records = tuple(_audit_from_row(r) for r in rows[: query.limit])
            return AuditPage(records=records, next_page_token=str(records[-1].id) if more else "")

        return await self._run(run)
