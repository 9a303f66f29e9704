"""Users and API tokens on SQLite."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

from limiquantix.protocol import errors

from .. import _auth as auth
from .._auth import Principal, Role
from .._models import (
    AuditAction,
    AuditDetail,
    TokenInfo,
    User,
)
from ._engine import SQLiteEngine, json_text, transaction
from ._interface import (
    BOOTSTRAP_ADMIN_USER,
    LAST_USED_RESOLUTION_S,
)

__all__ = ["SQLiteTokens"]

log = logging.getLogger(__name__)

#: Compared against when a token id is unknown, so that lookups of unknown and
#: known ids take the same path (no timing hint about which ids exist).
_DUMMY_HASH: Final = auth.hash_token("lqx_000000000000_" + "0" * 43)


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
                    json_text(dict(scope)) if scope else None,
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


class SQLiteTokens(SQLiteEngine):
    # ---- users and tokens

    async def ensure_user(self, name: str) -> User:
        if not auth.valid_user_name(name):
            raise errors.InvalidArgument(f"bad user name {name[:64]!r}: 1-64 letters, digits, _.@:+- (not first)")

        def run(conn: sqlite3.Connection) -> User:
            with transaction(conn, durable=True):
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
            with transaction(conn, durable=True):
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
                with transaction(conn, durable=False):
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
            with transaction(conn, durable=True):
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
            with transaction(conn, durable=True):
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
                    (now, now, BOOTSTRAP_ADMIN_USER, AuditAction.ADMIN_BOOTSTRAP.value, json_text(detail.to_dict())),
                )
                return token

        token = await self._run(run)
        if token is None and env_token is not None:
            with contextlib.suppress(errors.Unauthenticated):
                await self.authenticate(env_token)
                return None
            log.warning("LQX_ADMIN_TOKEN is ignored: the database already has tokens, and it is not one of them")
        return token
