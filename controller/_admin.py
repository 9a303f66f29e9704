"""The controller's ``AdminService`` (audit query and export, tokens, node and VM
removal) and the curl-friendly ``GET /v1/audit/export.jsonl``.

Every RPC needs an admin permission (:data:`~._auth.Permission.AUDIT_READ`,
``TOKEN_MANAGE``, ``NODE_MANAGE`` or ``VM_MANAGE``); a label-scoped token never holds them
(:data:`~._auth.GLOBAL_PERMISSIONS`). Token, node and VM changes are audited like
the VM actions of ``_vms.py``: the row is written (and fsynced) *before* the
change, refusals are recorded as ``denied``, and the row is completed with the
outcome. The audit row of a new token names its owner, role and label scope:
never the token, which is answered once and stored only as a hash.

Reading the audit log (QueryAudit, ExportAudit, the GET export) is not itself
audited: it changes nothing, and an admin dashboard polling it would drown
the log in its own reads.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, final

from google.protobuf.timestamp_pb2 import Timestamp
from quart import Quart, Response, request

from limiquantix.protocol import errors
from limiquantix.protocol._gen import admin_pb2 as admin_pb
from limiquantix.protocol.rpc import error_body
from limiquantix.protocol.rpc.server import CallContext

from ._audit import AuditEntry, AuditTrail
from ._auth import Permission, Principal, Role, require, valid_token_id, valid_user_name
from ._authn import AuthFailures
from ._context import principal_of, source_of, timestamp
from ._models import (
    MAX_PAGE_SIZE,
    AuditAction,
    AuditDetail,
    AuditOutcome,
    AuditQuery,
    AuditRecord,
    TokenInfo,
    audit_id,
    check_id,
)
from .store import DEFAULT_HEARTBEAT_TIMEOUT_S, Store

__all__ = [
    "ADMIN_SERVICE",
    "AUDIT_EXPORT_PATH",
    "DEFAULT_AUDIT_PAGE_SIZE",
    "EXPORT_CHUNK_ROWS",
    "NDJSON_CONTENT_TYPE",
    "AdminAPI",
    "audit_jsonl_chunks",
    "audit_query_from_params",
    "authenticate_request",
    "error_response",
    "register_export_route",
]

log = logging.getLogger(__name__)

ADMIN_SERVICE: Final = admin_pb.DESCRIPTOR.services_by_name["AdminService"]
#: The plain-HTTP export (bearer auth, query parameters as filters).
AUDIT_EXPORT_PATH: Final = "/v1/audit/export.jsonl"
NDJSON_CONTENT_TYPE: Final = "application/x-ndjson"
#: QueryAudit page size when the caller names none.
DEFAULT_AUDIT_PAGE_SIZE: Final = 100
#: Rows read from the store per page, and sent per chunk, by the exports.
EXPORT_CHUNK_ROWS: Final = 500
#: The GET export's query parameters (camelCase like the API; snake_case accepted).
_PARAM_NAMES: Final = {
    "user": "user",
    "action": "action",
    "vmId": "vm_id",
    "vm_id": "vm_id",
    "nodeId": "node_id",
    "node_id": "node_id",
    "outcome": "outcome",
    "since": "since",
    "until": "until",
}


# ------------------------------------------------------------------ helpers


def _seconds(ts: Timestamp, present: bool) -> float | None:
    return ts.ToNanoseconds() / 1e9 if present else None


def _enum(cls: Any, value: str, what: str) -> Any:
    """``value`` as a member of the enum ``cls`` (None when empty).

    Raises:
        errors.InvalidArgument: not one of its values.
    """
    if not value:
        return None
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise errors.InvalidArgument(f"{what} must be one of {allowed}, not {value[:64]!r}") from None


def _action_prefix(value: str) -> str | None:
    """An action filter: a prefix of at least one action (``vm.exec`` finds ``vm.exec_stream``).

    Raises:
        errors.InvalidArgument: no action starts with it (a typo would silently match nothing).
    """
    if not value:
        return None
    if not any(a.value.startswith(value) for a in AuditAction):
        allowed = ", ".join(a.value for a in AuditAction)
        raise errors.InvalidArgument(f"action must be one of (or a prefix of) {allowed}, not {value[:64]!r}")
    return value


def _audit_query(
    *,
    user: str = "",
    action: str = "",
    vm_id: str = "",
    node_id: str = "",
    outcome: str = "",
    since: float | None = None,
    until: float | None = None,
    limit: int = DEFAULT_AUDIT_PAGE_SIZE,
    page_token: str = "",
    oldest_first: bool = False,
) -> AuditQuery:
    """Raises: errors.InvalidArgument: an unknown action or outcome, a bad page or range."""
    return AuditQuery(
        user=user or None,
        action=_action_prefix(action),
        vm_id=vm_id or None,
        node_id=node_id or None,
        prefix=True,
        outcome=_enum(AuditOutcome, outcome, "outcome"),
        since=since,
        until=until,
        limit=limit,
        page_token=page_token,
        oldest_first=oldest_first,
    )


def _query_from_filter(
    f: admin_pb.AuditFilter, *, limit: int, page_token: str = "", oldest_first: bool = False
) -> AuditQuery:
    """Raises: errors.InvalidArgument: see :func:`_audit_query`."""
    return _audit_query(
        user=f.user,
        action=f.action,
        vm_id=f.vm_id,
        node_id=f.node_id,
        outcome=f.outcome,
        since=_seconds(f.since, f.HasField("since")),
        until=_seconds(f.until, f.HasField("until")),
        limit=limit,
        page_token=page_token,
        oldest_first=oldest_first,
    )


def _parse_time(value: str, name: str) -> float:
    """RFC 3339 (``2024-05-01T12:00:00Z``) or unix seconds.

    Raises:
        errors.InvalidArgument: neither.
    """
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise errors.InvalidArgument(f"{name} must be RFC 3339 or unix seconds, not {value[:64]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def audit_query_from_params(params: Mapping[str, str]) -> AuditQuery:
    """The export's query (oldest first) from URL parameters: ``user``, ``action``,
    ``vmId``, ``nodeId``, ``outcome``, ``since``, ``until`` (RFC 3339 or unix seconds).

    Raises:
        errors.InvalidArgument: an unknown parameter or a malformed value.
    """
    values: dict[str, Any] = {}
    for key, value in params.items():
        name = _PARAM_NAMES.get(key)
        if name is None:
            raise errors.InvalidArgument(f"unknown parameter {key[:64]!r}; known: {', '.join(sorted(_PARAM_NAMES))}")
        values[name] = _parse_time(value, key) if name in ("since", "until") else value
    return _audit_query(**values, limit=EXPORT_CHUNK_ROWS, oldest_first=True)


def _record(r: AuditRecord) -> admin_pb.AuditRecord:
    d = r.detail
    out = admin_pb.AuditRecord(
        id=r.id,
        started_at=timestamp(r.started_at),
        completed_at=timestamp(r.completed_at),
        user=r.user,
        token_id=r.token_id,
        role=r.role,
        source_address=r.source_address,
        action=r.action.value,
        vm_id=r.vm_id,
        node_id=r.node_id,
        detail=admin_pb.AuditRecordDetail(
            command=d.command,
            args=d.args,
            working_directory=d.working_directory,
            run_as_user=d.run_as_user,
            env_keys=d.env_keys,
            path=d.path,
            size=d.size,
            sha256=d.sha256,
            username=d.username,
            target=d.target,
            labels=dict(d.labels),
            count=d.count,
            flags=d.flags,
            truncated=d.truncated,
            vm_ids=d.vm_ids,
        ),
        outcome=r.outcome.value,
        exit_code=r.exit_code,
        duration_ms=r.duration_ms,
        error=r.error,
    )
    return out


def _token(t: TokenInfo) -> admin_pb.ApiToken:
    return admin_pb.ApiToken(
        id=t.id,
        user=t.user,
        role=t.role.value,
        label_scope=dict(t.label_scope or {}),
        description=t.description,
        created_at=timestamp(t.created_at),
        last_used_at=timestamp(t.last_used_at),
        revoked_at=timestamp(t.revoked_at),
        active=t.active,
    )


def _jsonl(records: list[AuditRecord]) -> str:
    return "".join(json.dumps(r.to_json_dict(), ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


async def audit_jsonl_chunks(store: Store, query: AuditQuery) -> AsyncIterator[tuple[str, int]]:
    """The audit export (ExportAudit, the GET route): matching rows as whole JSON lines (one
    object per line, the shape of :meth:`~._models.AuditRecord.to_json_dict`), ``query.limit``
    rows at a time: ``(text, rows)``."""
    batch: list[AuditRecord] = []
    async for record in store.iter_audit(query):
        batch.append(record)
        if len(batch) >= query.limit:
            yield _jsonl(batch), len(batch)
            batch = []
    if batch:
        yield _jsonl(batch), len(batch)


# ------------------------------------------------------------------ the service


@final
class AdminAPI:
    """``limiquantix.compute.v1.AdminService`` over the store."""

    def __init__(self, store: Store, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> None:
        self.store = store
        self.audit = AuditTrail(store)
        self.heartbeat_timeout_s = heartbeat_timeout_s

    async def _allowed(
        self,
        ctx: CallContext,
        permission: Permission,
        action: AuditAction,
        detail: Callable[[], AuditDetail],
        *,
        vm_id: str = "",
        node_id: str = "",
    ) -> Principal:
        """The caller, if it holds ``permission``; a refusal is recorded ``denied``.

        Checked before the request is validated, so a token without the
        permission learns nothing from the answer.

        Raises:
            errors.PermissionDenied: the token lacks ``permission``.
        """
        principal = principal_of(ctx)
        try:
            require(principal, permission)
        except errors.PermissionDenied as exc:
            try:
                what = detail()
            except errors.InvalidArgument:
                what = AuditDetail()
            await self.audit.denied(principal, source_of(ctx), action, exc, vm_id=vm_id, node_id=node_id, detail=what)
            raise
        return principal

    def _audited(
        self,
        ctx: CallContext,
        principal: Principal,
        action: AuditAction,
        detail: AuditDetail,
        *,
        vm_id: str = "",
        node_id: str = "",
    ) -> AbstractAsyncContextManager[AuditEntry]:
        """The change's audit row (see :meth:`~._audit.AuditTrail.action`).

        Raises:
            AuditWriteFailed: the row could not be written (nothing is changed).
        """
        return self.audit.action(principal, source_of(ctx), action, vm_id=vm_id, node_id=node_id, detail=detail)

    # -- audit ------------------------------------------------------------------------

    async def QueryAudit(self, request: admin_pb.QueryAuditRequest, ctx: CallContext) -> admin_pb.QueryAuditResponse:
        """One page of matching rows, newest first.

        Raises:
            errors.PermissionDenied: no ``audit.read``.
            errors.InvalidArgument: page size above the maximum, malformed page
                token, unknown action or outcome, ``since`` after ``until``.
        """
        require(principal_of(ctx), Permission.AUDIT_READ)
        page_size = request.page_size or DEFAULT_AUDIT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument(f"pageSize must be at most {MAX_PAGE_SIZE}")
        query = _query_from_filter(request.filter, limit=page_size, page_token=request.page_token)
        page = await self.store.query_audit(query)
        return admin_pb.QueryAuditResponse(
            records=[_record(r) for r in page.records], next_page_token=page.next_page_token
        )

    async def ExportAudit(
        self, request: admin_pb.ExportAuditRequest, ctx: CallContext
    ) -> AsyncIterator[admin_pb.ExportAuditChunk]:
        """Every matching row, oldest first, as chunks of JSON lines.

        Raises:
            errors.PermissionDenied: no ``audit.read``.
            errors.InvalidArgument: unknown action or outcome, ``since`` after ``until``.
        """
        require(principal_of(ctx), Permission.AUDIT_READ)
        query = _query_from_filter(request.filter, limit=EXPORT_CHUNK_ROWS, oldest_first=True)
        async for text, count in audit_jsonl_chunks(self.store, query):
            yield admin_pb.ExportAuditChunk(jsonl=text, count=count)

    # -- tokens -----------------------------------------------------------------------

    async def CreateToken(self, request: admin_pb.CreateTokenRequest, ctx: CallContext) -> admin_pb.CreateTokenResponse:
        """A new token for ``user`` (created when new); the token is answered once.

        Raises:
            errors.PermissionDenied: no ``token.manage``.
            errors.InvalidArgument: malformed user, role, labels or description.
        """

        def detail() -> AuditDetail:
            flags = (f"role={request.role}",) if _is_flag(f"role={request.role}") else ()
            return AuditDetail(target=request.user, labels=dict(request.labels), flags=flags)

        principal = await self._allowed(ctx, Permission.TOKEN_MANAGE, AuditAction.TOKEN_CREATE, detail)
        role = _enum(Role, request.role, "role")
        if role is None:
            raise errors.InvalidArgument("role is required")
        if not valid_user_name(request.user):
            raise errors.InvalidArgument("user must be 1-64 letters, digits or _.@:+- (not first)")
        async with self._audited(ctx, principal, AuditAction.TOKEN_CREATE, detail()):
            await self.store.ensure_user(request.user)
            info, token = await self.store.create_token(
                user=request.user,
                role=role,
                label_scope=dict(request.labels) or None,
                description=request.description,
            )
        log.info("token %s created for %s (%s) by %s", info.id, info.user, info.role.value, principal.user)
        return admin_pb.CreateTokenResponse(info=_token(info), token=token)

    async def ListTokens(self, request: admin_pb.ListTokensRequest, ctx: CallContext) -> admin_pb.ListTokensResponse:
        """Tokens, oldest first, never their secrets.

        Raises:
            errors.PermissionDenied: no ``token.manage``.
        """
        require(principal_of(ctx), Permission.TOKEN_MANAGE)
        tokens = await self.store.list_tokens(user=request.user or None, include_revoked=not request.active_only)
        return admin_pb.ListTokensResponse(tokens=[_token(t) for t in tokens])

    async def RevokeToken(self, request: admin_pb.RevokeTokenRequest, ctx: CallContext) -> admin_pb.ApiToken:
        """Revoke at once (idempotent).

        Raises:
            errors.PermissionDenied: no ``token.manage``.
            errors.InvalidArgument: not a token id.
            errors.NotFound: no such token.
        """

        def detail() -> AuditDetail:
            return AuditDetail(target=request.token_id)

        principal = await self._allowed(ctx, Permission.TOKEN_MANAGE, AuditAction.TOKEN_REVOKE, detail)
        if not valid_token_id(request.token_id):
            raise errors.InvalidArgument("tokenId must be a token id (12 hex digits)")
        async with self._audited(ctx, principal, AuditAction.TOKEN_REVOKE, detail()):
            info = await self.store.revoke_token(request.token_id)
        log.info("token %s of %s revoked by %s", info.id, info.user, principal.user)
        return _token(info)

    # -- nodes ------------------------------------------------------------------------

    async def RemoveNode(self, request: admin_pb.RemoveNodeRequest, ctx: CallContext) -> admin_pb.RemoveNodeResponse:
        """Forget a node and its VM list.

        Raises:
            errors.PermissionDenied: no ``node.manage``.
            errors.InvalidArgument: no node id.
            errors.NotFound: no such node.
        """
        # Named, cut and marked if need be, in the rows of a refused request (audit_id).
        node_id = audit_id(request.node_id)

        def detail() -> AuditDetail:
            return AuditDetail.naming(node_id)

        principal = await self._allowed(ctx, Permission.NODE_MANAGE, AuditAction.NODE_REMOVE, detail, node_id=node_id)
        check_id(request.node_id, "nodeId")
        async with self._audited(ctx, principal, AuditAction.NODE_REMOVE, detail(), node_id=node_id):
            await self.store.remove_node(node_id)
        log.info("node %s removed by %s", node_id, principal.user)
        return admin_pb.RemoveNodeResponse()

    # -- VMs --------------------------------------------------------------------------

    async def RemoveVM(self, request: admin_pb.RemoveVMRequest, ctx: CallContext) -> admin_pb.RemoveVMResponse:
        """Forget a VM that is gone, or whose node is unreachable (ListVMs stops listing it).

        Raises:
            errors.PermissionDenied: no ``vm.manage``.
            errors.InvalidArgument: no VM id.
            errors.NotFound: no such VM (not audited, as for VMService calls).
            errors.FailedPrecondition: reason ``vm_reported``: a reachable node still
                reports it (audited as an error).
        """
        vm_id = audit_id(request.vm_id)
        principal = await self._allowed(ctx, Permission.VM_MANAGE, AuditAction.VM_REMOVE, AuditDetail, vm_id=vm_id)
        check_id(request.vm_id, "vmId")
        # Looked up first so that the row names the VM's node.
        route = await self.store.node_for_vm(vm_id, heartbeat_timeout_s=self.heartbeat_timeout_s)
        async with self._audited(
            ctx, principal, AuditAction.VM_REMOVE, AuditDetail(), vm_id=vm_id, node_id=route.node_id
        ):
            await self.store.remove_vm(vm_id, heartbeat_timeout_s=self.heartbeat_timeout_s)
        log.info("VM %s (node %s) removed by %s", vm_id, route.node_id, principal.user)
        return admin_pb.RemoveVMResponse()

    # -- caller -----------------------------------------------------------------------

    async def WhoAmI(self, request: admin_pb.WhoAmIRequest, ctx: CallContext) -> admin_pb.WhoAmIResponse:
        """The caller's token: user, role, scope and the permissions it holds (any valid token)."""
        principal = principal_of(ctx)
        return admin_pb.WhoAmIResponse(
            user=principal.user,
            token_id=principal.token_id,
            role=principal.role.value,
            label_scope=dict(principal.label_scope or {}),
            permissions=sorted(p.value for p in Permission if principal.has(p)),
        )


def _is_flag(value: str) -> bool:
    """Whether ``value`` may be an audit row's flag."""
    try:
        AuditDetail(flags=(value,))
    except errors.InvalidArgument:
        return False
    return True


# ------------------------------------------------------------------ GET export


def _error_response(exc: errors.AgentError) -> Response:
    # The same body as the Connect routes' (reason as a typed detail), from the one encoder.
    return Response(error_body(exc), status=exc.http_status, content_type="application/json")


async def authenticate_request(failures: AuthFailures) -> Principal:
    """The caller of a plain (non-Connect) route, from its bearer token.

    Raises:
        errors.Unauthenticated: no token, or not a valid one (counted and audited by ``failures``).
    """
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    token = token.strip()
    client = request.scope.get("client")
    peer = (str(client[0]), int(client[1])) if client else None
    bearer = token if scheme.lower() == "bearer" and token else None
    return await failures.authenticate(bearer, peer, request.path)


def error_response(exc: errors.AgentError) -> Response:
    """A plain route's error, as Connect's JSON error body."""
    return _error_response(exc)


def register_export_route(app: Quart, store: Store, failures: AuthFailures) -> None:
    """``GET /v1/audit/export.jsonl``: every matching row, oldest first, one JSON
    object per line (``application/x-ndjson``), streamed a page at a time.

    Bearer auth like the Connect API (401 without a valid token, 403 without
    ``audit.read``); errors answer Connect's JSON error body. Filters are query
    parameters (see :func:`audit_query_from_params`).
    """

    @app.get(AUDIT_EXPORT_PATH)
    async def export_audit_jsonl() -> Response:
        try:
            principal = await authenticate_request(failures)
            require(principal, Permission.AUDIT_READ)
            query = audit_query_from_params(request.args.to_dict())
        except errors.AgentError as exc:
            return _error_response(exc)

        async def body() -> AsyncIterator[bytes]:
            async for text, _ in audit_jsonl_chunks(store, query):
                yield text.encode()

        response = Response(body(), content_type=NDJSON_CONTENT_TYPE)
        response.timeout = None  # a large export must not be cut by Quart's RESPONSE_TIMEOUT
        return response
