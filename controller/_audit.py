"""The audit trail as the API layer writes it: rows for decided events, and the handle
an action's body fills in.
"""

from __future__ import annotations

import logging
from typing import Final, final

from .auth import Principal
from .models import (
    AuditAction,
    AuditDetail,
    AuditOutcome,
)
from .store import Store

__all__ = [
    "AUDIT_COMPLETE_TIMEOUT_S",
    "record_event",
]

log = logging.getLogger(__name__)


#: Completing an audit row after the action, shielded from cancellation.
AUDIT_COMPLETE_TIMEOUT_S: Final = 5.0


#: The longest error text kept in an audit row's completion.
_AUDIT_ERROR_CHARS: Final = 500


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


@final
class _AuditHandle:
    """What a handler tells the audit row about how the action ended."""

    __slots__ = ("error", "exit_code", "outcome")

    def __init__(self) -> None:
        self.outcome = AuditOutcome.SUCCESS
        self.exit_code: int | None = None
        self.error = ""
