"""Fleet runs (commands and their targets) on SQLite."""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any, Final

from limiquantix.protocol import errors

from .._auth import Principal
from .._models import (
    AUDIT_ERROR_MAX_CHARS,
    MAX_COMMAND_TARGETS,
    MAX_CONCURRENCY_LIMIT,
    TERMINAL_COMMAND_STATUSES,
    TERMINAL_TARGET_STATUSES,
    Command,
    CommandPage,
    CommandSpec,
    CommandStatus,
    TargetResult,
    TargetSpec,
    TargetStatus,
    cap_output,
    check_page,
    parse_max_errors,
    unique_vm_ids,
)
from ._engine import SQLiteEngine, json_text, snapshot, transaction

__all__ = ["SQLiteCommands"]

log = logging.getLogger(__name__)


def _now_ms(start: float | None, end: float) -> int | None:
    return None if start is None else max(0, round((end - start) * 1000))


_TARGET_COLUMNS: Final = (
    "vm_id, node_id, status, exit_code, stdout, stderr, stdout_truncated, stderr_truncated, error,"
    " started_at, completed_at, duration_ms, exit_reason, signal"
)


def _target_from_row(row: Sequence[Any]) -> TargetResult:
    return TargetResult(
        vm_id=row[0],
        node_id=row[1],
        status=TargetStatus(row[2]),
        exit_code=row[3],
        stdout=row[4],
        stderr=row[5],
        stdout_truncated=bool(row[6]),
        stderr_truncated=bool(row[7]),
        error=row[8],
        started_at=row[9],
        completed_at=row[10],
        duration_ms=row[11],
        exit_reason=row[12],
        signal=row[13],
    )


def _command_status(conn: sqlite3.Connection, command_id: str) -> CommandStatus:
    row = conn.execute("SELECT status FROM commands WHERE id = ?", (command_id,)).fetchone()
    if row is None:
        raise errors.NotFound(f"no command {command_id!r}")
    return CommandStatus(row[0])


def _command(conn: sqlite3.Connection, command_id: str, *, with_targets: bool) -> Command:
    row = conn.execute(
        "SELECT id, created_at, completed_at, user_name, token_id, spec, target_spec, max_concurrency,"
        " max_errors, status FROM commands WHERE id = ?",
        (command_id,),
    ).fetchone()
    if row is None:
        raise errors.NotFound(f"no command {command_id!r}")
    counts = dict.fromkeys(TargetStatus, 0)
    for status, n in conn.execute(
        "SELECT status, COUNT(*) FROM command_targets WHERE command_id = ? GROUP BY status", (command_id,)
    ):
        counts[TargetStatus(status)] = n
    targets: tuple[TargetResult, ...] = ()
    if with_targets:
        targets = tuple(
            _target_from_row(r)
            for r in conn.execute(
                f"SELECT {_TARGET_COLUMNS} FROM command_targets WHERE command_id = ? ORDER BY position", (command_id,)
            )
        )
    return Command(
        id=row[0],
        created_at=row[1],
        completed_at=row[2],
        user=row[3],
        token_id=row[4],
        spec=CommandSpec.from_dict(json.loads(row[5])),
        target_spec=TargetSpec(**json.loads(row[6])),
        max_concurrency=row[7],
        max_errors=row[8],
        status=CommandStatus(row[9]),
        counts=counts,
        targets=targets,
    )


class SQLiteCommands(SQLiteEngine):
    # ---- fleet runs

    async def create_command(
        self,
        principal: Principal,
        *,
        spec: CommandSpec,
        target_spec: TargetSpec,
        vm_ids: Sequence[str],
        max_concurrency: int,
        max_errors: str,
    ) -> Command:
        if not 1 <= max_concurrency <= MAX_CONCURRENCY_LIMIT:
            raise errors.InvalidArgument(f"maxConcurrency must be within 1..{MAX_CONCURRENCY_LIMIT}")
        parse_max_errors(max_errors)
        targets = unique_vm_ids(vm_ids)
        if len(targets) > MAX_COMMAND_TARGETS:
            raise errors.InvalidArgument(f"at most {MAX_COMMAND_TARGETS} targets per run")
        command_id = str(uuid.uuid4())

        def run(conn: sqlite3.Connection) -> Command:
            now = self._clock()
            status = CommandStatus.PENDING if targets else CommandStatus.SUCCESS
            with transaction(conn, durable=True):
                conn.execute(
                    "INSERT INTO commands (id, created_at, completed_at, user_name, token_id, spec, target_spec,"
                    " max_concurrency, max_errors, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        command_id,
                        now,
                        None if targets else now,
                        principal.user,
                        principal.token_id,
                        json_text(spec.to_dict()),
                        json_text(target_spec.to_dict()),
                        max_concurrency,
                        max_errors.strip(),
                        status.value,
                    ),
                )
                conn.executemany(
                    "INSERT INTO command_targets (command_id, position, vm_id, status) VALUES (?, ?, ?, 'pending')",
                    [(command_id, i, vm_id) for i, vm_id in enumerate(targets)],
                )
                return _command(conn, command_id, with_targets=True)

        return await self._run(run)

    async def update_target(
        self,
        command_id: str,
        vm_id: str,
        *,
        status: TargetStatus,
        node_id: str | None = None,
        exit_code: int | None = None,
        exit_reason: str = "",
        signal: int = 0,
        stdout: str = "",
        stderr: str = "",
        stdout_truncated: bool = False,
        stderr_truncated: bool = False,
        error: str = "",
    ) -> TargetResult:
        status = TargetStatus(status)
        if status is TargetStatus.PENDING:
            raise errors.InvalidArgument("a target cannot go back to pending")
        out, out_cut = cap_output(stdout)
        err, err_cut = cap_output(stderr)

        def run(conn: sqlite3.Connection) -> TargetResult:
            now = self._clock()
            with transaction(conn, durable=False):
                row = conn.execute(
                    "SELECT status, started_at FROM command_targets WHERE command_id = ? AND vm_id = ?",
                    (command_id, vm_id),
                ).fetchone()
                if row is None:
                    raise errors.NotFound(f"command {command_id!r} has no target {vm_id!r}")
                if TargetStatus(row[0]) in TERMINAL_TARGET_STATUSES:
                    raise errors.FailedPrecondition(
                        f"target {vm_id!r} of command {command_id!r} already finished ({row[0]})",
                        reason="target_finished",
                    )
                started_at = row[1]
                if status is TargetStatus.IN_PROGRESS:
                    started_at = started_at or now
                    conn.execute(
                        "UPDATE command_targets SET status = ?, started_at = ?, node_id = COALESCE(?, node_id)"
                        " WHERE command_id = ? AND vm_id = ?",
                        (status.value, started_at, node_id, command_id, vm_id),
                    )
                else:
                    conn.execute(
                        "UPDATE command_targets SET status = ?, node_id = COALESCE(?, node_id), exit_code = ?,"
                        " exit_reason = ?, signal = ?, stdout = ?, stderr = ?, stdout_truncated = ?,"
                        " stderr_truncated = ?, error = ?, completed_at = ?, duration_ms = ?"
                        " WHERE command_id = ? AND vm_id = ?",
                        (
                            status.value,
                            node_id,
                            exit_code,
                            exit_reason,
                            signal,
                            out,
                            err,
                            stdout_truncated or out_cut,
                            stderr_truncated or err_cut,
                            error[:AUDIT_ERROR_MAX_CHARS],
                            now,
                            _now_ms(started_at, now),
                            command_id,
                            vm_id,
                        ),
                    )
                conn.execute(
                    "UPDATE commands SET status = 'in_progress' WHERE id = ? AND status = 'pending'", (command_id,)
                )
                return _target_from_row(
                    conn.execute(
                        f"SELECT {_TARGET_COLUMNS} FROM command_targets WHERE command_id = ? AND vm_id = ?",
                        (command_id, vm_id),
                    ).fetchone()
                )

        return await self._run(run)

    async def finish_command(self, command_id: str, status: CommandStatus) -> Command:
        status = CommandStatus(status)
        if status not in TERMINAL_COMMAND_STATUSES:
            raise errors.InvalidArgument(f"{status.value} is not a final command status")

        def run(conn: sqlite3.Connection) -> Command:
            with transaction(conn, durable=True):
                current = _command_status(conn, command_id)
                if current in TERMINAL_COMMAND_STATUSES:
                    raise errors.FailedPrecondition(f"command {command_id!r} already ended ({current.value})")
                open_targets = conn.execute(
                    "SELECT COUNT(*) FROM command_targets WHERE command_id = ? AND status IN ('pending', 'in_progress')",
                    (command_id,),
                ).fetchone()[0]
                if open_targets:
                    raise errors.FailedPrecondition(f"command {command_id!r} has {open_targets} unfinished targets")
                conn.execute(
                    "UPDATE commands SET status = ?, completed_at = ? WHERE id = ?",
                    (status.value, self._clock(), command_id),
                )
                return _command(conn, command_id, with_targets=False)

        return await self._run(run)

    async def cancel_command(self, command_id: str) -> Command:
        def run(conn: sqlite3.Connection) -> Command:
            with transaction(conn, durable=True):
                current = _command_status(conn, command_id)
                if current in (CommandStatus.SUCCESS, CommandStatus.FAILED):
                    raise errors.FailedPrecondition(f"command {command_id!r} already ended ({current.value})")
                if current in (CommandStatus.PENDING, CommandStatus.IN_PROGRESS):
                    now = self._clock()
                    conn.execute(
                        "UPDATE command_targets SET status = 'cancelled', completed_at = ?, error = 'cancelled before it started'"
                        " WHERE command_id = ? AND status = 'pending'",
                        (now, command_id),
                    )
                    running = conn.execute(
                        "SELECT COUNT(*) FROM command_targets WHERE command_id = ? AND status = 'in_progress'",
                        (command_id,),
                    ).fetchone()[0]
                    new = CommandStatus.CANCELLING if running else CommandStatus.CANCELLED
                    conn.execute(
                        "UPDATE commands SET status = ?, completed_at = ? WHERE id = ?",
                        (new.value, None if running else now, command_id),
                    )
                return _command(conn, command_id, with_targets=False)

        return await self._run(run)

    async def get_command(self, command_id: str) -> Command:
        def run(conn: sqlite3.Connection) -> Command:
            with snapshot(conn):
                return _command(conn, command_id, with_targets=True)

        return await self._run(run)

    async def list_commands(
        self,
        *,
        user: str | None = None,
        status: CommandStatus | None = None,
        limit: int = 50,
        page_token: str = "",
    ) -> CommandPage:
        check_page(limit, page_token)

        def run(conn: sqlite3.Connection) -> CommandPage:
            where: list[str] = []
            params: list[Any] = []
            if user is not None:
                where.append("user_name = ?")
                params.append(user)
            if status is not None:
                where.append("status = ?")
                params.append(CommandStatus(status).value)
            if page_token:
                where.append("seq < ?")
                params.append(int(page_token))
            sql = "SELECT seq, id FROM commands"
            if where:
                sql += " WHERE " + " AND ".join(where)
            with snapshot(conn):
                rows = conn.execute(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit + 1]).fetchall()
                page = rows[:limit]
                commands = tuple(_command(conn, r[1], with_targets=False) for r in page)
            return CommandPage(commands=commands, next_page_token=str(page[-1][0]) if len(rows) > limit else "")

        return await self._run(run)

    async def recover_interrupted_commands(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            now = self._clock()
            with transaction(conn, durable=True):
                rows = conn.execute(
                    "SELECT id, status FROM commands WHERE status IN ('pending', 'in_progress', 'cancelling')"
                ).fetchall()
                for command_id, status in rows:
                    conn.execute(
                        "UPDATE command_targets SET status = 'failed', completed_at = ?,"
                        " error = 'the controller restarted while this ran: outcome unknown'"
                        " WHERE command_id = ? AND status = 'in_progress'",
                        (now, command_id),
                    )
                    conn.execute(
                        "UPDATE command_targets SET status = 'cancelled', completed_at = ?,"
                        " error = 'the controller restarted before this ran'"
                        " WHERE command_id = ? AND status = 'pending'",
                        (now, command_id),
                    )
                    final = "cancelled" if status == "cancelling" else "failed"
                    conn.execute(
                        "UPDATE commands SET status = ?, completed_at = ? WHERE id = ?", (final, now, command_id)
                    )
            if rows:
                log.warning("ended %d fleet runs left unfinished by a previous controller process", len(rows))
            return len(rows)

        return await self._run(run)
