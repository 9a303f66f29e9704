"""The :class:`Store` interface: what the API layer programs against (async methods taking
and returning the frozen records of :mod:`.._models`; no SQL, rows or connections).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import trio

from limiquantix.protocol import errors

from .._auth import Principal, Role
from .._models import (
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
    VMInfo,
    VMRoute,
)

__all__ = [
    "BOOTSTRAP_ADMIN_USER",
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "LAST_USED_RESOLUTION_S",
    "MAX_GONE_VMS_PER_NODE",
    "MAX_NODES_PER_TOKEN",
    "AuditWriteFailed",
    "SchemaTooNew",
    "Store",
]

log = logging.getLogger(__name__)

#: A node whose last heartbeat is older than this reads as unreachable, and calls
#: for its VMs answer unavailable (the controller's heartbeat_timeout_s): hostd
#: heartbeats every 5 s by default, so three missed ones.
DEFAULT_HEARTBEAT_TIMEOUT_S: Final = 15.0


#: ``last_used_at`` is rewritten at most this often per token: it answers "is
#: this token still used", and a write per API call would cost more than the call.
LAST_USED_RESOLUTION_S: Final = 60.0


#: The user the first start creates.
BOOTSTRAP_ADMIN_USER: Final = "admin"


class SchemaTooNew(errors.FailedPrecondition):
    """The database was written by a newer controller; this one refuses to touch it."""


class AuditWriteFailed(errors.Unavailable):
    """The audit row could not be written: the action must be refused.

    ``reason`` is ``audit_write_failed``; the cause is chained.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="audit_write_failed")


# ------------------------------------------------------------------ the interface


#: Gone VMs kept per node (the newest by when they were last reported); beyond, the oldest are
#: forgotten as a heartbeat makes more gone. Every VM seen is kept for its history, but a node
#: token holder (another machine) could otherwise grow the inventory without end: a heartbeat of
#: 1,024 new VM ids a second made 1,024 rows a second, kept forever. Ten heartbeats' worth of
#: VMs; a host that churns through more (CI VMs) keeps its newest 10,240.
MAX_GONE_VMS_PER_NODE: Final = 10 * 1024
#: Node ids one node token may register (an admin token: any number). A host has one, and the
#: guide makes a token per host; a shared one may serve this many. Each node keeps its last
#: reported VMs (up to 1,024) while it is silent: without a bound, one token registering new ids
#: grew the inventory without end.
MAX_NODES_PER_TOKEN: Final = 256


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
        """Record how the action ended (once); ``error`` is kept up to
        :data:`~.._models.AUDIT_ERROR_MAX_CHARS` characters.

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
        exit_reason: str = "",
        signal: int = 0,
        stdout: str = "",
        stderr: str = "",
        stdout_truncated: bool = False,
        stderr_truncated: bool = False,
        error: str = "",
    ) -> TargetResult:
        """Move a target on: to ``in_progress`` (sets ``started_at``; the command
        becomes ``in_progress``) or to a final status (sets ``completed_at`` and
        ``duration_ms``; output capped at TARGET_OUTPUT_MAX_BYTES, ``error`` at
        AUDIT_ERROR_MAX_CHARS). ``exit_code``,
        ``exit_reason`` and ``signal`` say how its command ended, as the agent's result does.

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
