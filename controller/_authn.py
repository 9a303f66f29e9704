"""Bearer tokens of every call to the controller (Connect calls and plain routes): the
principal a token stands for, and refusals counted and audited.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Final, final

import trio

from limiquantix.protocol import Throttle, errors
from limiquantix.protocol.rpc.server import Authenticator, CallContext

from ._audit import AuditTrail
from ._auth import Principal, token_id_of
from ._context import source_address
from ._models import (
    AuditAction,
    AuditDetail,
    AuditOutcome,
)
from .store import Store

__all__ = [
    "AUTH_FAILURE_INTERVAL_S",
    "AUTH_FAILURE_REASONS",
    "AuthFailures",
    "make_authenticator",
]

log = logging.getLogger(__name__)


#: One ``auth.failed`` row per source address per this many seconds.
AUTH_FAILURE_INTERVAL_S: Final = 60.0

#: The reasons refused authentications are counted under (anything else: ``other``),
#: so a client cannot mint metric labels.
AUTH_FAILURE_REASONS: Final = ("missing_token", "malformed_token", "invalid_token", "revoked_token")


@final
class AuthFailures:
    """Every bearer-token check of the controller (Connect calls and plain routes).

    A refusal (401) is counted (``count(reason)``, for ``/metrics``) and audited
    as ``auth.failed``, at most once per source address per
    :data:`AUTH_FAILURE_INTERVAL_S` (the row's ``count`` says how many
    it stands for), so a client retrying a bad token in a loop leaves a trace
    without flooding the log. The row names the path and the token id the
    client presented when it has the shape of one (never the secret).
    """

    def __init__(
        self, store: Store, count: Callable[[str], None], *, interval_s: float = AUTH_FAILURE_INTERVAL_S
    ) -> None:
        self.store = store
        self.audit = AuditTrail(store)
        self._count = count
        self._throttle = Throttle(interval_s)

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
            await self.audit.event(
                None, source_address(peer), AuditAction.AUTH_FAILED, outcome=AuditOutcome.DENIED,
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
