"""The audit trail as the controller writes it: one home for the sequence every audited
action follows (VMService, NodeRegistryService, AdminService, FleetService, the
``limiquantix-controller token`` commands).

* :meth:`AuditTrail.action` — the row is begun (fsynced) *before* the action runs, so a
  failed write (:class:`~.store.AuditWriteFailed`) refuses it with nothing done; the
  body fills in the :class:`AuditEntry` (exit code, an outcome other than success) and
  the row is completed however the body ends, shielded from cancellation: a client that
  hangs up still leaves a complete row (``cancelled``). An error that says the request
  reached the node and then was lost (:func:`~._forward.outcome_unknown`) is ``unknown``:
  the guest may have acted.
* :meth:`AuditTrail.denied` and :meth:`AuditTrail.event` — a row for something already
  decided (a refusal, a VM that moved), begun and completed at once.
* :meth:`AuditTrail.begin` and :meth:`AuditTrail.complete` — for an action that outlives
  the call that started it (a fleet run).

Error texts are kept up to :data:`~._models.AUDIT_ERROR_MAX_CHARS` (the store cuts them,
whoever writes the row); secrets never get here, since
:class:`~._models.AuditDetail` has no field for them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, final

import trio

from limiquantix.protocol import errors

from ._auth import Principal
from ._forward import outcome_unknown
from ._models import AuditAction, AuditDetail, AuditOutcome
from .store import Store

__all__ = ["AUDIT_COMPLETE_TIMEOUT_S", "AuditEntry", "AuditTrail"]

log = logging.getLogger(__name__)

#: Completing an audit row after the action, shielded from cancellation.
AUDIT_COMPLETE_TIMEOUT_S: Final = 5.0


@final
class AuditEntry:
    """An action's row while the action runs: what the body tells it about how it ended."""

    __slots__ = ("error", "exit_code", "id", "outcome")

    def __init__(self, audit_id: int) -> None:
        self.id = audit_id
        self.outcome = AuditOutcome.SUCCESS
        """What a body that returns normally ends with (it may say ``failure``)."""
        self.exit_code: int | None = None
        self.error = ""


@final
class AuditTrail:
    """The audit log as the API layer and the CLI write it, over a :class:`~.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def begin(
        self,
        principal: Principal | None,
        source: str,
        action: AuditAction,
        *,
        vm_id: str = "",
        node_id: str = "",
        detail: AuditDetail | None = None,
    ) -> int:
        """A ``pending`` row, durable before this returns; its id for :meth:`complete`.

        Raises:
            AuditWriteFailed: the row could not be written (the action must not happen).
        """
        return await self.store.audit_begin(
            principal, source_address=source, action=action, vm_id=vm_id, node_id=node_id, detail=detail
        )

    async def complete(
        self,
        audit_id: int,
        outcome: AuditOutcome,
        *,
        started: float | None = None,
        exit_code: int | None = None,
        error: str = "",
    ) -> None:
        """Complete a row begun with :meth:`begin`; ``started``: ``trio.current_time()`` when
        the action began (the row's duration).

        Shielded from cancellation (bounded by :data:`AUDIT_COMPLETE_TIMEOUT_S`), and never
        raises: the action already happened, so a failed write is logged and the row stays
        ``pending``, which reads, truthfully, as "outcome unknown".
        """
        now = trio.current_time()
        duration_ms = round((now - started) * 1000) if started is not None else None
        with trio.CancelScope(shield=True, deadline=now + AUDIT_COMPLETE_TIMEOUT_S):
            try:
                await self.store.audit_complete(
                    audit_id,
                    outcome=outcome,
                    exit_code=exit_code,
                    duration_ms=duration_ms,
                    error=error,
                )
            except errors.AgentError:
                log.exception("audit row %d could not be completed", audit_id)

    async def event(
        self,
        principal: Principal | None,
        source: str,
        action: AuditAction,
        *,
        outcome: AuditOutcome,
        error: str = "",
        vm_id: str = "",
        node_id: str = "",
        detail: AuditDetail | None = None,
    ) -> None:
        """A row for something already decided (a refusal, a move): begun and completed at once.

        Raises:
            AuditWriteFailed: the row could not be written.
            errors.AgentError: it could not be completed.
        """
        audit_id = await self.begin(principal, source, action, vm_id=vm_id, node_id=node_id, detail=detail)
        await self.store.audit_complete(audit_id, outcome=outcome, error=error)

    async def denied(
        self,
        principal: Principal | None,
        source: str,
        action: AuditAction,
        refusal: errors.AgentError,
        *,
        vm_id: str = "",
        node_id: str = "",
        detail: AuditDetail | None = None,
    ) -> None:
        """A refused action's row (``denied``, the refusal's message).

        Raises:
            AuditWriteFailed: the row could not be written.
            errors.AgentError: it could not be completed.
        """
        await self.event(
            principal, source, action, outcome=AuditOutcome.DENIED, error=refusal.message,
            vm_id=vm_id, node_id=node_id, detail=detail,
        )  # fmt: skip

    @asynccontextmanager
    async def action(
        self,
        principal: Principal | None,
        source: str,
        action: AuditAction,
        *,
        vm_id: str = "",
        node_id: str = "",
        detail: AuditDetail | None = None,
        refusals_denied: bool = False,
    ) -> AsyncIterator[AuditEntry]:
        """The row begun before the body runs, completed however it ends.

        ``refusals_denied``: a :class:`~limiquantix.protocol.errors.PermissionDenied` from the
        body is recorded ``denied`` (the store refused, as a node id another token owns),
        not ``error``.

        Raises:
            AuditWriteFailed: the row could not be written (the body does not run).
        """
        started = trio.current_time()
        entry = AuditEntry(await self.begin(principal, source, action, vm_id=vm_id, node_id=node_id, detail=detail))
        try:
            yield entry
        except errors.AgentError as exc:
            if refusals_denied and isinstance(exc, errors.PermissionDenied):
                entry.outcome = AuditOutcome.DENIED
            else:
                # Sent, then the node went away: the guest may have acted, so not "error".
                entry.outcome = AuditOutcome.UNKNOWN if outcome_unknown(exc) else AuditOutcome.ERROR
            entry.error = f"{exc.connect_code}: {exc.message}"
            raise
        except (trio.Cancelled, GeneratorExit):
            entry.outcome, entry.error = AuditOutcome.CANCELLED, "the client went away"
            raise
        except BaseException as exc:
            entry.outcome, entry.error = AuditOutcome.ERROR, f"internal: {type(exc).__name__}"
            raise
        finally:
            await self.complete(entry.id, entry.outcome, started=started, exit_code=entry.exit_code, error=entry.error)
