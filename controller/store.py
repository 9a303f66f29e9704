"""The controller's storage: the :class:`Store` interface and its SQLite implementation.

The API layer sees only :class:`Store` (async methods taking and returning the
frozen records of :mod:`.models`), never SQL, rows or connections, so that a
PostgreSQL backend can be added for installations that outgrow one machine
(several controllers behind a load balancer). It is not built; it would be a
second subclass of :class:`Store` passing the same tests.

:class:`SQLiteStore` is the embedded default:

* **One connection, one worker at a time.** Every call runs in a trio worker
  thread (``trio.to_thread.run_sync``) behind a ``CapacityLimiter(1)`` and a
  lock, so the connection (opened with ``check_same_thread=False``) is never
  used by two threads at once. Calls are not abandoned on cancellation: a
  cancelled caller waits for its transaction to commit or roll back, so a
  cancel never leaves one half-done. SQLite serializes writers anyway; one
  connection keeps the code obviously correct, and a call is ~0.1 ms.
* **WAL journal**, so the CLI (``token create`` while the controller runs)
  and readers never block each other; ``busy_timeout`` for the rare moment two
  processes write at once; every write is ``BEGIN IMMEDIATE`` so it takes the
  write lock up front instead of failing to upgrade a read lock.
* **Durability per transaction.** ``synchronous=FULL`` (fsync of the WAL at
  every commit) for the writes that must survive a power cut: the audit row
  written *before* an action is forwarded (the issue requires it), tokens,
  users, nodes, fleet-run creation and cancellation. ``synchronous=NORMAL``
  (no fsync at commit; WAL mode still cannot be corrupted, the last commits
  can only be lost) for high-rate bookkeeping: heartbeats, a token's
  ``last_used_at``, fleet-run target progress and an audit row's completion. A
  lost completion leaves the row ``pending``, which reads, truthfully, as
  "outcome unknown"; and because the WAL is one sequential file, the next FULL
  commit makes every earlier NORMAL one durable too.
* **Versioned migrations** (:mod:`.schema`) applied in one transaction at
  open; a database from a newer controller is refused (:class:`SchemaTooNew`).
* **Foreign keys on**, and the audit log is append-only by trigger.

The database holds credentials: token hashes, and each hostd's bearer token
in clear (the controller must present it). The file is created mode 0600 (and
tightened to it when found wider); SQLite gives its ``-wal`` and ``-shm`` files
the same mode.

Error handling: every :mod:`sqlite3` error crosses into the
:mod:`limiquantix.protocol.errors` hierarchy once, in :func:`_translate`
(busy → ``Unavailable``, disk full → ``ResourceExhausted`` ...), chained
``from`` the original. :meth:`Store.audit_begin` raises
:class:`AuditWriteFailed` for any failure to write; the API must then refuse
the action.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TextIO, TypeVar, final

import trio

from limiquantix.protocol import errors

from . import auth
from .auth import Principal, Role
from .models import (
    AUDIT_ERROR_MAX_CHARS,
    MAX_COMMAND_TARGETS,
    MAX_CONCURRENCY_LIMIT,
    TERMINAL_COMMAND_STATUSES,
    TERMINAL_TARGET_STATUSES,
    AgentBrief,
    AuditAction,
    AuditDetail,
    AuditOutcome,
    AuditPage,
    AuditQuery,
    AuditRecord,
    Command,
    CommandPage,
    CommandSpec,
    CommandStatus,
    HeartbeatResult,
    NodeInfo,
    TargetResult,
    TargetSpec,
    TargetStatus,
    TokenInfo,
    User,
    VMClaim,
    VMInfo,
    VMMove,
    VMRoute,
    _check_page,
    _vm_ids,
    cap_output,
    parse_max_errors,
)
from .schema import MIGRATIONS, Migration

__all__ = [
    "BOOTSTRAP_ADMIN_USER",
    "BUSY_TIMEOUT_S",
    "DEFAULT_DB_PATH",
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "LAST_USED_RESOLUTION_S",
    "AuditWriteFailed",
    "SQLiteStore",
    "SchemaTooNew",
    "Store",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_DB_PATH: Final = Path("/var/lib/limiquantix/controller.db")
#: How long a write waits for another process's write lock before giving up
#: with ``Unavailable``: long enough for any single transaction here, short
#: enough that a wedged second process is reported rather than hung on.
BUSY_TIMEOUT_S: Final = 5.0
#: A node whose last heartbeat is older than this reads as unreachable (hostd
#: heartbeats every 5 s: three missed ones).
DEFAULT_HEARTBEAT_TIMEOUT_S: Final = 15.0
#: ``last_used_at`` is rewritten at most this often per token: it answers "is
#: this token still used", and a write per API call would cost more than the call.
LAST_USED_RESOLUTION_S: Final = 60.0
#: The user the first start creates.
BOOTSTRAP_ADMIN_USER: Final = "admin"
_SOURCE_ADDRESS_MAX_CHARS: Final = 255
_NODE_URL_MAX_CHARS: Final = 2048
_DB_FILE_MODE: Final = 0o600
_DB_DIR_MODE: Final = 0o700
#: Compared against when a token id is unknown, so that lookups of unknown and
#: known ids take the same path (no timing hint about which ids exist).
_DUMMY_HASH: Final = auth.hash_token("lqx_000000000000_" + "0" * 43)


class SchemaTooNew(errors.FailedPrecondition):
    """The database was written by a newer controller; this one refuses to touch it."""


class AuditWriteFailed(errors.Unavailable):
    """The audit row could not be written: the action must be refused.

    ``reason`` is ``audit_write_failed``; the cause is chained.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="audit_write_failed")


# ------------------------------------------------------------------ the interface


class Store(abc.ABC):
    """Everything the controller keeps. All methods are async and safe to call
    from any number of trio tasks at once.

    The store is an async context manager closing itself on exit.
    """

    # ---- users and tokens

    @abc.abstractmethod
    async def ensure_user(self, name: str) -> User:
        """The user ``name``, created when missing.

        Raises:
            errors.InvalidArgument: malformed name.
        """

    @abc.abstractmethod
    async def list_users(self) -> list[User]:
        """Every user, by name."""

    @abc.abstractmethod
    async def create_token(
        self,
        *,
        user: str,
        role: Role,
        label_scope: Mapping[str, str] | None = None,
        description: str = "",
    ) -> tuple[TokenInfo, str]:
        """A new token for an existing user: its record and the token itself,
        which is not stored and cannot be shown again.

        Raises:
            errors.NotFound: no such user.
            errors.InvalidArgument: malformed labels or description.
        """

    @abc.abstractmethod
    async def authenticate(self, token: str) -> Principal:
        """The principal ``token`` stands for.

        Raises:
            errors.Unauthenticated: malformed (reason ``malformed_token``), unknown
                or wrong (``invalid_token``), or revoked (``revoked_token``).
        """

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> TokenInfo:
        """Raises:
        errors.NotFound: no such token.
        """

    @abc.abstractmethod
    async def list_tokens(self, *, user: str | None = None, include_revoked: bool = True) -> list[TokenInfo]:
        """Tokens (never secrets), oldest first."""

    @abc.abstractmethod
    async def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke (idempotent: a revoked token keeps its first ``revoked_at``).

        Raises:
            errors.NotFound: no such token.
        """

    @abc.abstractmethod
    async def bootstrap_admin(self, env_token: str | None) -> str | None:
        """On a database without any token, create user ``admin`` with an admin
        token and return the token (``env_token`` when given, else a new one);
        otherwise do nothing and return None. Atomic: two controllers starting
        on one empty database bootstrap once.

        Raises:
            errors.InvalidArgument: ``env_token`` is neither a well-formed
                ``lqx_<id>_<secret>`` token nor ≥ 24 printable characters.
        """

    # ---- audit

    @abc.abstractmethod
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
        """Record, durably (fsynced), that ``principal`` is about to do ``action``.
        Call before forwarding anything; returns the row's id for :meth:`audit_complete`.
        ``principal`` None: a caller that did not authenticate (user, token and role empty).

        Raises:
            AuditWriteFailed: the row could not be written: refuse the action.
            errors.InvalidArgument: ``action`` or ``detail`` is not of the right type.
        """

    @abc.abstractmethod
    async def audit_complete(
        self,
        audit_id: int,
        *,
        outcome: AuditOutcome,
        exit_code: int | None = None,
        duration_ms: int | None = None,
        error: str = "",
    ) -> None:
        """Record how the action ended (once).

        Raises:
            errors.NotFound: no such row.
            errors.FailedPrecondition: already completed.
            errors.InvalidArgument: ``outcome`` is ``pending``.
            errors.Unavailable: the write failed (log it: the action already happened).
        """

    @abc.abstractmethod
    async def query_audit(self, query: AuditQuery) -> AuditPage:
        """One page of matching rows, newest first unless ``query.oldest_first``."""

    async def iter_audit(self, query: AuditQuery) -> AsyncIterator[AuditRecord]:
        """Every matching row, page after page (``query.limit`` is the page size)."""
        page_token = query.page_token
        while True:
            page = await self.query_audit(_replace(query, page_token=page_token))
            for record in page.records:
                yield record
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def export_audit(self, query: AuditQuery, out: TextIO) -> int:
        """Write every matching row to ``out`` as JSON lines (one object per line,
        the shape of :meth:`AuditRecord.to_json_dict`); returns the number written.
        Writes happen in a worker thread, a page at a time."""
        count = 0
        lines: list[str] = []
        async for record in self.iter_audit(query):
            lines.append(json.dumps(record.to_json_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
            if len(lines) >= query.limit:
                await trio.to_thread.run_sync(out.writelines, lines)
                lines = []
        if lines:
            await trio.to_thread.run_sync(out.writelines, lines)
        return count

    # ---- nodes

    @abc.abstractmethod
    async def register_node(self, node_id: str, *, url: str, token: str, owner_token_id: str | None = None) -> NodeInfo:
        """Add a hostd, or change its URL and token (its VM list is kept).

        ``owner_token_id``: the node-role API token registering it, which the node
        id is then bound to (None: an admin registers it; the binding is kept).

        Raises:
            errors.InvalidArgument: malformed id, URL or empty token.
            errors.PermissionDenied: reason ``node_owned``: the node id is bound to
                another node token that is still valid (revoke it to move the id).
        """

    @abc.abstractmethod
    async def remove_node(self, node_id: str) -> None:
        """Forget a node; its VMs stay in the inventory, gone (see :meth:`remove_vm`).

        Raises:
            errors.NotFound: no such node.
        """

    @abc.abstractmethod
    async def heartbeat(
        self,
        node_id: str,
        vms: Sequence[VMInfo],
        *,
        owner_token_id: str | None = None,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    ) -> HeartbeatResult:
        """A node is alive and hosts exactly ``vms`` (replacing its previous list).

        ``owner_token_id``: the node-role API token sending it (None: an admin).

        The inventory keeps every VM it has seen: one of this node's VMs missing
        from ``vms`` stays, as last reported, gone (``reported`` False) until an
        admin removes it (:meth:`remove_vm`) or a node reports it again.

        A VM id is bound to the first node that reports it. Another node's report
        of it is refused (left out of that node's list, returned in
        ``refused``) while the owner still reports it and has heartbeated within
        ``heartbeat_timeout_s``; otherwise the binding moves to this node
        (returned in ``moved``: a live migration or a restart elsewhere).

        Raises:
            errors.NotFound: the node is not registered.
            errors.PermissionDenied: reason ``node_owned``: another valid node token owns the id.
        """

    @abc.abstractmethod
    async def get_node(self, node_id: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> NodeInfo:
        """Raises:
        errors.NotFound: no such node.
        """

    @abc.abstractmethod
    async def list_nodes(self, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> list[NodeInfo]:
        """Every node by id; ``reachable`` is False once its last heartbeat is
        older than ``heartbeat_timeout_s`` (or it never sent one)."""

    @abc.abstractmethod
    async def list_vms(
        self, *, node_id: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[tuple[str, VMInfo]]:
        """``(node_id, vm)`` of every VM in the inventory (gone ones included), by
        VM id; ``node_id``: only VMs bound to it; ``labels``: only VMs carrying every pair."""

    @abc.abstractmethod
    async def node_for_vm(self, vm_id: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> VMRoute:
        """The node ``vm_id`` is bound to (see :meth:`heartbeat`), gone VMs included
        (``route.gone``). The caller answers ``unavailable`` when the VM is gone or
        ``route.node.reachable`` is False.

        Raises:
            errors.NotFound: no node ever reported the VM (or an admin removed it).
        """

    @abc.abstractmethod
    async def remove_vm(self, vm_id: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> VMRoute:
        """Forget a VM: gone, or bound to a node silent past ``heartbeat_timeout_s``.
        Returns it as it was.

        Raises:
            errors.NotFound: no such VM.
            errors.FailedPrecondition: reason ``vm_reported``: a reachable node still
                reports it (its next heartbeat would list it again).
        """

    # ---- fleet runs

    @abc.abstractmethod
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
        """A new fleet run over ``vm_ids`` (resolved by the caller from
        ``target_spec`` and the principal's scope), every target ``pending``.
        With no targets it is created ``success`` at once.

        Raises:
            errors.InvalidArgument: bad concurrency, maxErrors or VM ids, or
                more than MAX_COMMAND_TARGETS targets.
        """

    @abc.abstractmethod
    async def update_target(
        self,
        command_id: str,
        vm_id: str,
        *,
        status: TargetStatus,
        node_id: str | None = None,
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
        stdout_truncated: bool = False,
        stderr_truncated: bool = False,
        error: str = "",
    ) -> TargetResult:
        """Move a target on: to ``in_progress`` (sets ``started_at``; the command
        becomes ``in_progress``) or to a final status (sets ``completed_at`` and
        ``duration_ms``; output capped at TARGET_OUTPUT_MAX_BYTES).

        Raises:
            errors.NotFound: no such command or target.
            errors.FailedPrecondition: the target already finished (e.g. it was
                cancelled while the runner was about to start it): reason
                ``target_finished``; the runner must then leave it alone.
            errors.InvalidArgument: ``status`` is ``pending``.
        """

    @abc.abstractmethod
    async def finish_command(self, command_id: str, status: CommandStatus) -> Command:
        """Set a run's final status once every target is final.

        Raises:
            errors.NotFound: no such command.
            errors.InvalidArgument: ``status`` is not final.
            errors.FailedPrecondition: targets still pending or running, or the
                command already finished.
        """

    @abc.abstractmethod
    async def cancel_command(self, command_id: str) -> Command:
        """Cancel a run: pending targets become ``cancelled`` at once; with targets
        still running the command is ``cancelling`` (the runner stops them and
        calls :meth:`finish_command`), otherwise ``cancelled``. Idempotent.

        Raises:
            errors.NotFound: no such command.
            errors.FailedPrecondition: it already ended in success or failure.
        """

    @abc.abstractmethod
    async def get_command(self, command_id: str) -> Command:
        """A run with every target's result, in the order given at creation.

        Raises:
            errors.NotFound: no such command.
        """

    @abc.abstractmethod
    async def list_commands(
        self,
        *,
        user: str | None = None,
        status: CommandStatus | None = None,
        limit: int = 50,
        page_token: str = "",
    ) -> CommandPage:
        """Runs newest first, with per-status target counts but no target rows.

        Raises:
            errors.InvalidArgument: bad limit or page token.
        """

    @abc.abstractmethod
    async def recover_interrupted_commands(self) -> int:
        """At start-up: end the runs a previous controller process left unfinished
        (its runner is gone). Running targets become ``failed`` ("outcome unknown"),
        pending ones ``cancelled``, the run ``failed`` (``cancelled`` if it was
        being cancelled). Returns how many runs were ended."""

    # ---- lifetime

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close; later calls raise ``errors.Unavailable`` (reason ``store_closed``)."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()


def _replace(query: AuditQuery, **changes: Any) -> AuditQuery:
    return dataclasses.replace(query, **changes)


# ------------------------------------------------------------------ sqlite errors

#: SQLite primary result code → (error class, reason). The whole policy.
_SQLITE_ERRORS: Final[dict[str, tuple[type[errors.AgentError], str]]] = {
    "BUSY": (errors.Unavailable, "database_busy"),
    "LOCKED": (errors.Unavailable, "database_busy"),
    "FULL": (errors.ResourceExhausted, "disk_full"),
    "READONLY": (errors.Unavailable, "database_read_only"),
    "IOERR": (errors.Unavailable, "io_error"),
    "CANTOPEN": (errors.Unavailable, "cannot_open_database"),
    "PERM": (errors.Unavailable, "database_permission"),
    "CORRUPT": (errors.Internal, "database_corrupt"),
    "NOTADB": (errors.Internal, "database_corrupt"),
    "CONSTRAINT": (errors.FailedPrecondition, "constraint"),
}


def _translate(exc: sqlite3.Error) -> errors.AgentError:
    """The hierarchy's error for a sqlite3 error (the caller chains it)."""
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return errors.Unavailable("the store is closed", reason="store_closed")
    name = getattr(exc, "sqlite_errorname", "") or ""
    primary = name.split("_")[1] if name.startswith("SQLITE_") and "_" in name else ""
    cls, reason = _SQLITE_ERRORS.get(primary, (errors.Internal, "database_error"))
    return cls(f"database: {exc}", reason=reason)


# ------------------------------------------------------------------ sqlite store


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _now_ms(start: float | None, end: float) -> int | None:
    return None if start is None else max(0, round((end - start) * 1000))


@final
class SQLiteStore(Store):
    """:class:`Store` on one SQLite file. Open with ``await SQLiteStore.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        """Use :meth:`open`."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)

    @property
    def path(self) -> Path:
        return self._path

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> SQLiteStore:
        """Open (creating it mode 0600, and its directory 0700) and migrate.

        ``clock`` gives unix seconds (tests pass a fake). ``migrations`` is for
        tests of the migration machinery.

        Raises:
            SchemaTooNew: written by a newer controller.
            errors.Unavailable: cannot create or open the file, or it is locked.
            errors.Internal: not a database, or WAL mode could not be enabled.
        """
        db = Path(path)
        conn = await trio.to_thread.run_sync(_open_connection, db, tuple(migrations), clock)
        return cls(conn, db, clock)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    conn, self._conn = self._conn, None
                    conn.close()

        await trio.to_thread.run_sync(close, limiter=self._limiter)

    # ---- plumbing

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await trio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)

    def _call(self, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        with self._lock:
            if self._conn is None:
                raise errors.Unavailable("the store is closed", reason="store_closed")
            try:
                return fn(self._conn, *args)
            except sqlite3.Error as exc:
                raise _translate(exc) from exc

    # ---- users and tokens

    async def ensure_user(self, name: str) -> User:
        if not auth.valid_user_name(name):
            raise errors.InvalidArgument(f"bad user name {name[:64]!r}: 1-64 letters, digits, _.@:+- (not first)")

        def run(conn: sqlite3.Connection) -> User:
            with _write(conn, durable=True):
                conn.execute("INSERT OR IGNORE INTO users (name, created_at) VALUES (?, ?)", (name, self._clock()))
                row = conn.execute("SELECT name, created_at FROM users WHERE name = ?", (name,)).fetchone()
            return User(name=row[0], created_at=row[1])

        return await self._run(run)

    async def list_users(self) -> list[User]:
        def run(conn: sqlite3.Connection) -> list[User]:
            rows = conn.execute("SELECT name, created_at FROM users ORDER BY name").fetchall()
            return [User(name=r[0], created_at=r[1]) for r in rows]

        return await self._run(run)

    async def create_token(
        self,
        *,
        user: str,
        role: Role,
        label_scope: Mapping[str, str] | None = None,
        description: str = "",
    ) -> tuple[TokenInfo, str]:
        role = Role(role)
        scope = auth.validate_labels(label_scope, what="label scope") if label_scope else None
        _check_description(description)

        def run(conn: sqlite3.Connection) -> tuple[TokenInfo, str]:
            with _write(conn, durable=True):
                if conn.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone() is None:
                    raise errors.NotFound(f"no user {user!r}")
                token_id, token = _insert_token(conn, user, role, scope, description, self._clock())
                info = _token_info(conn, token_id)
            return info, token

        return await self._run(run)

    async def authenticate(self, token: str) -> Principal:
        token_id = auth.token_id_of(token)  # Unauthenticated when malformed
        presented = auth.hash_token(token)

        def run(conn: sqlite3.Connection) -> Principal:
            row = conn.execute(
                "SELECT user_name, role, label_scope, secret_hash, revoked_at, last_used_at FROM api_tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
            stored = row[3] if row is not None else _DUMMY_HASH
            # Constant time: how much of a guess matched must not show in the timing.
            if not hmac.compare_digest(presented, stored) or row is None:
                raise errors.Unauthenticated("invalid bearer token", reason="invalid_token")
            user, role, scope, _, revoked_at, last_used_at = row
            if revoked_at is not None:
                raise errors.Unauthenticated("this token has been revoked", reason="revoked_token")
            now = self._clock()
            if last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION_S:
                with _write(conn, durable=False):
                    conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now, token_id))
            return Principal(
                user=user, token_id=token_id, role=Role(role), label_scope=json.loads(scope) if scope else None
            )

        return await self._run(run)

    async def get_token(self, token_id: str) -> TokenInfo:
        return await self._run(_token_info, token_id)

    async def list_tokens(self, *, user: str | None = None, include_revoked: bool = True) -> list[TokenInfo]:
        def run(conn: sqlite3.Connection) -> list[TokenInfo]:
            where, params = [], []
            if user is not None:
                where.append("user_name = ?")
                params.append(user)
            if not include_revoked:
                where.append("revoked_at IS NULL")
            sql = f"SELECT {_TOKEN_COLUMNS} FROM api_tokens"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = conn.execute(sql + " ORDER BY created_at, id", params).fetchall()
            return [_token_from_row(r) for r in rows]

        return await self._run(run)

    async def revoke_token(self, token_id: str) -> TokenInfo:
        def run(conn: sqlite3.Connection) -> TokenInfo:
            with _write(conn, durable=True):
                conn.execute(
                    "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (self._clock(), token_id),
                )
                return _token_info(conn, token_id)

        return await self._run(run)

    async def bootstrap_admin(self, env_token: str | None) -> str | None:
        if env_token is not None:
            env_token = env_token.strip()
            try:
                auth.token_id_of(env_token)
            except errors.Unauthenticated:
                raise errors.InvalidArgument(
                    f"LQX_ADMIN_TOKEN must be a token from `limiquantix-controller token create` "
                    f"or at least {auth.ENV_TOKEN_MIN_CHARS} printable characters without spaces"
                ) from None

        def run(conn: sqlite3.Connection) -> str | None:
            with _write(conn, durable=True):
                if conn.execute("SELECT EXISTS (SELECT 1 FROM api_tokens)").fetchone()[0]:
                    return None
                now = self._clock()
                conn.execute(
                    "INSERT OR IGNORE INTO users (name, created_at) VALUES (?, ?)", (BOOTSTRAP_ADMIN_USER, now)
                )
                token_id, token = _insert_token(
                    conn, BOOTSTRAP_ADMIN_USER, Role.ADMIN, None, "created at first start", now, token=env_token
                )
                detail = AuditDetail(target=token_id, flags=("role=admin", "from_env" if env_token else "generated"))
                conn.execute(
                    "INSERT INTO audit_log (started_at, completed_at, user_name, token_id, role, source_address,"
                    " action, detail, outcome) VALUES (?, ?, ?, '', 'admin', 'local', ?, ?, 'success')",
                    (now, now, BOOTSTRAP_ADMIN_USER, AuditAction.ADMIN_BOOTSTRAP.value, _json(detail.to_dict())),
                )
                return token

        token = await self._run(run)
        if token is None and env_token is not None:
            with contextlib.suppress(errors.Unauthenticated):
                await self.authenticate(env_token)
                return None
            log.warning("LQX_ADMIN_TOKEN is ignored: the database already has tokens, and it is not one of them")
        return token

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
            _json(detail.to_dict()),
        )

        def run(conn: sqlite3.Connection) -> int:
            with _write(conn, durable=True):
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
            with _write(conn, durable=False):
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

    # ---- nodes

    async def register_node(self, node_id: str, *, url: str, token: str, owner_token_id: str | None = None) -> NodeInfo:
        if not _valid_node_id(node_id):
            raise errors.InvalidArgument(f"bad node id {node_id[:64]!r}")
        if not url.startswith(("http://", "https://", "unix:")) or len(url) > _NODE_URL_MAX_CHARS:
            raise errors.InvalidArgument("node url must be http://, https:// or unix:")
        if not token or any(c.isspace() for c in token):
            raise errors.InvalidArgument("node token must be non-empty, without spaces")

        def run(conn: sqlite3.Connection) -> NodeInfo:
            with _write(conn, durable=True):
                _check_node_owner(conn, node_id, owner_token_id)
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
            with _write(conn, durable=True):
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
            vm.vm_id: [vm.vm_id, node_id, vm.name, _json(dict(vm.labels)), vm.state, _json(vm.agent.to_dict())]
            for vm in vms
        }

        def run(conn: sqlite3.Connection) -> HeartbeatResult:
            with _write(conn, durable=False):
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
                return HeartbeatResult(moved=tuple(moved), refused=tuple(refused))

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
            with _read(conn):
                return _route(conn, vm_id, self._clock(), heartbeat_timeout_s)

        return await self._run(run)

    async def remove_vm(self, vm_id: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> VMRoute:
        def run(conn: sqlite3.Connection) -> VMRoute:
            with _write(conn, durable=True):
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
        targets = _vm_ids(vm_ids)
        if len(targets) > MAX_COMMAND_TARGETS:
            raise errors.InvalidArgument(f"at most {MAX_COMMAND_TARGETS} targets per run")
        command_id = str(uuid.uuid4())

        def run(conn: sqlite3.Connection) -> Command:
            now = self._clock()
            status = CommandStatus.PENDING if targets else CommandStatus.SUCCESS
            with _write(conn, durable=True):
                conn.execute(
                    "INSERT INTO commands (id, created_at, completed_at, user_name, token_id, spec, target_spec,"
                    " max_concurrency, max_errors, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        command_id,
                        now,
                        None if targets else now,
                        principal.user,
                        principal.token_id,
                        _json(spec.to_dict()),
                        _json(target_spec.to_dict()),
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
            with _write(conn, durable=False):
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
                        " stdout = ?, stderr = ?, stdout_truncated = ?, stderr_truncated = ?, error = ?,"
                        " completed_at = ?, duration_ms = ? WHERE command_id = ? AND vm_id = ?",
                        (
                            status.value,
                            node_id,
                            exit_code,
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
            with _write(conn, durable=True):
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
            with _write(conn, durable=True):
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
            with _read(conn):
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
        _check_page(limit, page_token)

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
            with _read(conn):
                rows = conn.execute(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit + 1]).fetchall()
                page = rows[:limit]
                commands = tuple(_command(conn, r[1], with_targets=False) for r in page)
            return CommandPage(commands=commands, next_page_token=str(page[-1][0]) if len(rows) > limit else "")

        return await self._run(run)

    async def recover_interrupted_commands(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            now = self._clock()
            with _write(conn, durable=True):
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


# ------------------------------------------------------------------ sync helpers (worker thread)


@contextlib.contextmanager
def _write(conn: sqlite3.Connection, *, durable: bool) -> Iterator[None]:
    """One write transaction; ``durable`` fsyncs the WAL at commit (see the module docstring)."""
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _read(conn: sqlite3.Connection) -> Iterator[None]:
    """A consistent snapshot across several SELECTs."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _open_connection(path: Path, migrations: tuple[Migration, ...], clock: Callable[[], float]) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=_DB_DIR_MODE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _DB_FILE_MODE)
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode & 0o077:
                log.warning("%s was mode %o; tightening to %o (it holds credentials)", path, mode, _DB_FILE_MODE)
                os.fchmod(fd, _DB_FILE_MODE)
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.Unavailable(f"cannot create {path}: {exc.strerror}", reason="cannot_open_database") from exc
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal).lower() != "wal":
            raise errors.Internal(f"{path}: cannot enable WAL mode (journal_mode is {journal})")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn, path, migrations, clock())
    except sqlite3.Error as exc:
        conn.close()
        raise _translate(exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path, migrations: tuple[Migration, ...], now: float) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or not versions or versions[0] < 1:  # pragma: no cover - a code bug
        raise errors.Internal("migrations must have increasing versions from 1")
    latest = versions[-1]
    with _write(conn, durable=True):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        if current > latest:
            raise SchemaTooNew(
                f"{path} has schema version {current}, newer than this controller's {latest}: "
                "upgrade limiquantix-controller (or restore a backup from before the upgrade)",
                reason="schema_too_new",
            )
        for migration in migrations:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, now),
            )
            log.info("%s: applied schema migration %d (%s)", path, migration.version, migration.description)


def _check_description(description: str) -> None:
    if len(description) > 256 or any(ord(c) < 0x20 for c in description):
        raise errors.InvalidArgument("description: at most 256 characters, no control characters")


def _insert_token(
    conn: sqlite3.Connection,
    user: str,
    role: Role,
    scope: Mapping[str, str] | None,
    description: str,
    now: float,
    *,
    token: str | None = None,
) -> tuple[str, str]:
    for _ in range(5):
        if token is None:
            token_id, secret = auth.generate_token()
        else:
            token_id, secret = auth.token_id_of(token), token
        if conn.execute("SELECT 1 FROM api_tokens WHERE id = ?", (token_id,)).fetchone() is None:
            conn.execute(
                "INSERT INTO api_tokens (id, user_name, role, label_scope, secret_hash, description, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token_id,
                    user,
                    role.value,
                    _json(dict(scope)) if scope else None,
                    auth.hash_token(secret),
                    description,
                    now,
                ),
            )
            return token_id, secret
        if token is not None:
            raise errors.AlreadyExists("that token is already stored")
    raise errors.Internal("could not draw an unused token id")  # pragma: no cover - 48-bit ids


_TOKEN_COLUMNS: Final = "id, user_name, role, label_scope, description, created_at, last_used_at, revoked_at"


def _token_from_row(row: Sequence[Any]) -> TokenInfo:
    return TokenInfo(
        id=row[0],
        user=row[1],
        role=Role(row[2]),
        label_scope=json.loads(row[3]) if row[3] else None,
        description=row[4],
        created_at=row[5],
        last_used_at=row[6],
        revoked_at=row[7],
    )


def _token_info(conn: sqlite3.Connection, token_id: str) -> TokenInfo:
    row = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
    if row is None:
        raise errors.NotFound(f"no token {token_id!r}")
    return _token_from_row(row)


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


#: A node id appears in URLs, metrics labels and logs: the plain-id rule hostd applies to VM ids.
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,254}")


def _valid_node_id(node_id: str) -> bool:
    return _NODE_ID_RE.fullmatch(node_id) is not None


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


_TARGET_COLUMNS: Final = (
    "vm_id, node_id, status, exit_code, stdout, stderr, stdout_truncated, stderr_truncated, error,"
    " started_at, completed_at, duration_ms"
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
