"""The controller's store on real SQLite files: migrations, tokens, roles, audit, nodes, fleet runs.

Time is a fake clock passed to the store (no sleeps); failures are real SQLite
failures (a full database, a closed connection), not mocks.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from limiquantix.controller import _auth as auth
from limiquantix.controller._admin import audit_jsonl_chunks
from limiquantix.controller._auth import GLOBAL_PERMISSIONS, Permission, Principal, Role, require
from limiquantix.controller._models import (
    ID_CUT_MARK,
    TARGET_OUTPUT_MAX_BYTES,
    AuditAction,
    AuditDetail,
    AuditOutcome,
    AuditQuery,
    CommandSpec,
    CommandStatus,
    InventoryState,
    TargetSpec,
    TargetStatus,
    VMClaim,
    VMInfo,
    VMMove,
    max_errors_limit,
)
from limiquantix.controller.store import (
    LAST_USED_RESOLUTION_S,
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditWriteFailed,
    Migration,
    SchemaTooNew,
    SQLiteStore,
)
from limiquantix.protocol import errors
from limiquantix.protocol.limits import MAX_ID_BYTES


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(db_tmp: Path) -> Path:
    """In memory where there is a tmpfs (conftest.db_tmp): each durable commit's fsync cost
    ~6 ms on the test machine's disk; nothing here is about what a power cut leaves."""
    return db_tmp / "state" / "controller.db"


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteStore]:
    s = await SQLiteStore.open(db_path, clock=clock)
    try:
        yield s
    finally:
        await s.aclose()


def raw(db_path: Path) -> sqlite3.Connection:
    """A second, plain connection to inspect what the store wrote."""
    return sqlite3.connect(db_path)


ALICE = Principal(user="alice", token_id="aaaaaaaaaaaa", role=Role.OPERATOR)
ADMIN = Principal(user="admin", token_id="bbbbbbbbbbbb", role=Role.ADMIN)


# ------------------------------------------------------------------ exports


@pytest.mark.parametrize("name", ["_auth", "_models", "store._schema", "store", "__main__"])
def test_controller_modules_export_what_exists(name: str) -> None:
    module = importlib.import_module(f"limiquantix.controller.{name}")
    exported = module.__all__
    assert not [n for n in exported if not hasattr(module, n)]
    assert len(set(exported)) == len(exported)


def test_package_reexports_sorted() -> None:
    import limiquantix.controller as pkg

    assert pkg.__all__ == sorted(pkg.__all__)
    assert all(hasattr(pkg, n) for n in pkg.__all__)


# ------------------------------------------------------------------ opening, migrations


@pytest.mark.trio
async def test_open_creates_private_wal_database_and_migrates_once(db_path: Path, clock: FakeClock) -> None:
    async with await SQLiteStore.open(db_path, clock=clock) as store:
        await store.ensure_user("alice")  # something in the WAL
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    async with await SQLiteStore.open(db_path, clock=clock):
        pass
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT version, description FROM schema_migrations").fetchall()
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
        assert MIGRATIONS[-1].version == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.trio
async def test_pending_migrations_apply_in_order_on_an_existing_database(db_path: Path, clock: FakeClock) -> None:
    async with await SQLiteStore.open(db_path, clock=clock) as store:
        await store.ensure_user("alice")
    extra = Migration(SCHEMA_VERSION + 1, "test: a notes table", ("CREATE TABLE notes (x TEXT)",))
    clock.advance(10)
    async with await SQLiteStore.open(db_path, clock=clock, migrations=(*MIGRATIONS, extra)) as store:
        assert [u.name for u in await store.list_users()] == ["alice"]  # data kept
    with raw(db_path) as conn:
        rows = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [*range(1, SCHEMA_VERSION + 1), SCHEMA_VERSION + 1]
        assert rows[-1][1] == clock.now and rows[0][1] == clock.now - 10
        conn.execute("SELECT x FROM notes")


@pytest.mark.trio
async def test_a_failing_migration_leaves_the_database_as_it_was(db_path: Path, clock: FakeClock) -> None:
    async with await SQLiteStore.open(db_path, clock=clock):
        pass
    broken = Migration(SCHEMA_VERSION + 1, "broken", ("CREATE TABLE ok_so_far (x)", "THIS IS NOT SQL"))
    with pytest.raises(errors.AgentError):
        await SQLiteStore.open(db_path, clock=clock, migrations=(*MIGRATIONS, broken))
    with raw(db_path) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "ok_so_far" not in tables


@pytest.mark.trio
async def test_a_database_from_a_newer_controller_is_refused(db_path: Path, clock: FakeClock) -> None:
    async with await SQLiteStore.open(db_path, clock=clock):
        pass
    with raw(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew) as info:
        await SQLiteStore.open(db_path, clock=clock)
    assert info.value.connect_code == "failed_precondition"
    assert f"schema version {SCHEMA_VERSION + 1}" in info.value.message


@pytest.mark.trio
async def test_a_wide_open_database_file_is_tightened(db_path: Path, clock: FakeClock) -> None:
    db_path.parent.mkdir()
    db_path.touch(mode=0o644)
    os.chmod(db_path, 0o644)
    async with await SQLiteStore.open(db_path, clock=clock):
        pass
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


@pytest.mark.trio
async def test_not_a_database(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(errors.Internal) as info:
        await SQLiteStore.open(db_path)
    assert info.value.reason == "database_corrupt"


# ------------------------------------------------------------------ tokens


@pytest.mark.trio
async def test_token_create_authenticate_revoke(store: SQLiteStore, db_path: Path, clock: FakeClock) -> None:
    with pytest.raises(errors.NotFound):
        await store.create_token(user="alice", role=Role.OPERATOR)
    await store.ensure_user("alice")
    info, token = await store.create_token(user="alice", role=Role.OPERATOR, description="ci runner")
    assert token.startswith(f"lqx_{info.id}_") and len(token) == 4 + 12 + 1 + 43
    assert (info.user, info.role, info.label_scope, info.description) == ("alice", Role.OPERATOR, None, "ci runner")
    assert info.active and info.last_used_at is None

    principal = await store.authenticate(token)
    assert principal == Principal(user="alice", token_id=info.id, role=Role.OPERATOR, label_scope=None)
    assert (await store.get_token(info.id)).last_used_at == clock.now

    # Only a hash is stored: the secret appears nowhere in the file.
    with raw(db_path) as conn:
        (stored,) = conn.execute("SELECT secret_hash FROM api_tokens WHERE id = ?", (info.id,)).fetchone()
    assert stored == auth.hash_token(token)
    secret = token[len(f"lqx_{info.id}_") :]
    for name in os.listdir(db_path.parent):
        assert secret.encode() not in (db_path.parent / name).read_bytes()

    listed = await store.list_tokens()
    assert [t.id for t in listed] == [info.id]

    revoked = await store.revoke_token(info.id)
    assert revoked.revoked_at == clock.now and not revoked.active
    clock.advance(5)
    assert (await store.revoke_token(info.id)).revoked_at == revoked.revoked_at  # idempotent
    with pytest.raises(errors.Unauthenticated) as exc:
        await store.authenticate(token)
    assert exc.value.reason == "revoked_token"
    assert await store.list_tokens(include_revoked=False) == []
    with pytest.raises(errors.NotFound):
        await store.revoke_token("000000000000")


@pytest.mark.trio
@pytest.mark.parametrize(
    "bad",
    [
        "",
        "lqx_",
        "Bearer something",
        "lqx_XYZ_abc",
        "short-token",
        "x" * 300,
        "has spaces in it but is long enough",
        "lqx_0123456789ab_" + "a" * 42 + "\n",
    ],
)
async def test_malformed_tokens_are_unauthenticated(store: SQLiteStore, bad: str) -> None:
    with pytest.raises(errors.Unauthenticated) as exc:
        await store.authenticate(bad)
    assert exc.value.reason in ("malformed_token", "invalid_token")
    assert exc.value.http_status == 401


@pytest.mark.trio
async def test_wrong_secret_and_unknown_id_are_unauthenticated(store: SQLiteStore) -> None:
    await store.ensure_user("alice")
    info, token = await store.create_token(user="alice", role=Role.VIEWER)
    wrong_secret = token[:-1] + ("A" if token[-1] != "A" else "B")
    _, unknown = auth.generate_token()
    for guess in (wrong_secret, unknown):
        with pytest.raises(errors.Unauthenticated) as exc:
            await store.authenticate(guess)
        assert exc.value.reason == "invalid_token"
        assert "lqx_" not in exc.value.message  # the presented token is never echoed


@pytest.mark.trio
async def test_last_used_is_written_at_most_once_a_minute(store: SQLiteStore, clock: FakeClock) -> None:
    await store.ensure_user("alice")
    info, token = await store.create_token(user="alice", role=Role.VIEWER)
    await store.authenticate(token)
    first = clock.now
    clock.advance(LAST_USED_RESOLUTION_S / 2)
    await store.authenticate(token)
    assert (await store.get_token(info.id)).last_used_at == first
    clock.advance(LAST_USED_RESOLUTION_S)
    await store.authenticate(token)
    assert (await store.get_token(info.id)).last_used_at == clock.now


@pytest.mark.trio
async def test_bad_user_names_labels_and_descriptions(store: SQLiteStore) -> None:
    for name in ("", "-alice", "a b", "x" * 65, "alice\n"):
        with pytest.raises(errors.InvalidArgument):
            await store.ensure_user(name)
    await store.ensure_user("alice")
    with pytest.raises(errors.InvalidArgument):
        await store.create_token(user="alice", role=Role.VIEWER, label_scope={"env": "has space"})
    with pytest.raises(errors.InvalidArgument):
        await store.create_token(user="alice", role=Role.VIEWER, description="line\nbreak")
    with pytest.raises(ValueError):
        await store.create_token(user="alice", role="superuser")  # type: ignore[arg-type]


# ------------------------------------------------------------------ roles and label scope

# Written out on purpose rather than derived from ROLE_PERMISSIONS: this is the policy.
EXPECTED_MINIMUM_ROLE = {
    Permission.VM_READ: Role.VIEWER,
    Permission.NODE_READ: Role.VIEWER,
    Permission.COMMAND_READ: Role.VIEWER,
    Permission.VM_EXEC: Role.OPERATOR,
    Permission.FILE_READ: Role.OPERATOR,
    Permission.FILE_WRITE: Role.OPERATOR,
    Permission.VM_POWER: Role.OPERATOR,
    Permission.COMMAND_RUN: Role.OPERATOR,
    Permission.PASSWORD_RESET: Role.ADMIN,
    Permission.TOKEN_MANAGE: Role.ADMIN,
    Permission.NODE_MANAGE: Role.ADMIN,
    Permission.VM_MANAGE: Role.ADMIN,
    Permission.AUDIT_READ: Role.ADMIN,
    Permission.NODE_REGISTER: Role.ADMIN,
}
RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
#: The node role is not in the ladder: it registers and heartbeats, nothing else.
NODE_ROLE_PERMISSIONS = {Permission.NODE_REGISTER}


def test_every_permission_is_in_the_expected_table() -> None:
    assert set(EXPECTED_MINIMUM_ROLE) == set(Permission)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_role_matrix(role: Role, permission: Permission) -> None:
    principal = Principal(user="u", token_id="t", role=role)
    if role is Role.NODE:
        allowed = permission in NODE_ROLE_PERMISSIONS
    else:
        allowed = RANK[role] >= RANK[EXPECTED_MINIMUM_ROLE[permission]]
    assert principal.has(permission) is allowed
    if allowed:
        require(principal, permission)
        require(principal, permission, vm_labels={"env": "dev"})
    else:
        with pytest.raises(errors.PermissionDenied) as exc:
            require(principal, permission)
        assert exc.value.reason == "role" and exc.value.http_status == 403


def test_label_scope() -> None:
    scoped = Principal(user="u", token_id="t", role=Role.ADMIN, label_scope={"env": "prod", "team": "web"})
    assert scoped.may_access({"env": "prod", "team": "web", "extra": "x"})
    assert not scoped.may_access({"env": "prod"})
    assert not scoped.may_access({"env": "dev", "team": "web"})
    assert not scoped.may_access({})
    require(scoped, Permission.VM_EXEC, vm_labels={"env": "prod", "team": "web"})
    with pytest.raises(errors.PermissionDenied) as exc:
        require(scoped, Permission.VM_EXEC, vm_labels={"env": "dev", "team": "web"})
    assert exc.value.reason == "outside_label_scope"
    # A scoped admin keeps per-VM powers but none that would let it leave its scope.
    require(scoped, Permission.PASSWORD_RESET, vm_labels={"env": "prod", "team": "web"})
    for permission in GLOBAL_PERMISSIONS:
        with pytest.raises(errors.PermissionDenied) as exc:
            require(scoped, permission)
        assert exc.value.reason == "label_scope"
    unscoped = Principal(user="u", token_id="t", role=Role.VIEWER)
    assert unscoped.may_access({}) and unscoped.may_access({"env": "prod"})
    with pytest.raises(TypeError):
        scoped.label_scope["env"] = "dev"  # type: ignore[index]


@pytest.mark.trio
async def test_token_label_scope_round_trips(store: SQLiteStore) -> None:
    await store.ensure_user("ci")
    info, token = await store.create_token(user="ci", role=Role.OPERATOR, label_scope={"env": "prod"})
    assert dict(info.label_scope or {}) == {"env": "prod"}
    principal = await store.authenticate(token)
    assert principal.scoped and principal.may_access({"env": "prod"}) and not principal.may_access({"env": "dev"})


def test_parse_labels() -> None:
    assert auth.parse_labels("env=prod, team=web,") == {"env": "prod", "team": "web"}
    for bad in ("env", "=x", "env=a b", "k=" + "v" * 70):
        with pytest.raises(errors.InvalidArgument):
            auth.parse_labels(bad)


# ------------------------------------------------------------------ audit


async def _seed_audit(store: SQLiteStore, clock: FakeClock) -> list[int]:
    """Three audit rows a minute apart: alice's exec (success) and file write (error), then the
    admin's password reset (begun, not completed)."""
    rows = (
        (ALICE, "10.0.0.5:51234", AuditAction.EXEC, "web-1",
         AuditDetail(command="/bin/sh", args=("-c", "uptime"), env_keys=("PATH",), run_as_user="deploy"),
         {"outcome": AuditOutcome.SUCCESS, "exit_code": 0, "duration_ms": 12}),
        (ALICE, "10.0.0.5:51235", AuditAction.FILE_WRITE, "web-2",
         AuditDetail(path="/etc/motd", size=3, sha256="a" * 64, flags=("append",)),
         {"outcome": AuditOutcome.ERROR, "error": "permission denied", "duration_ms": 4}),
        (ADMIN, "10.0.0.9:40000", AuditAction.PASSWORD_RESET, "web-1", AuditDetail(username="root"), None),
    )  # fmt: skip
    ids = []
    for i, (who, source, action, vm_id, detail, completed) in enumerate(rows):
        if i:
            clock.advance(60)
        ids.append(
            await store.audit_begin(
                who, source_address=source, action=action, vm_id=vm_id, node_id="host-a", detail=detail
            )
        )
        if completed is not None:
            await store.audit_complete(ids[-1], **completed)
    return ids


@pytest.mark.trio
async def test_audit_begin_complete_and_query(store: SQLiteStore, clock: FakeClock) -> None:
    t0 = clock.now
    ids = await _seed_audit(store, clock)
    assert ids == sorted(ids)

    page = await store.query_audit(AuditQuery())
    assert [r.id for r in page.records] == ids[::-1]  # newest first
    assert page.next_page_token == ""
    pending = page.records[0]
    assert (pending.outcome, pending.completed_at, pending.user, pending.role) == (
        AuditOutcome.PENDING, None, "admin", "admin",
    )  # fmt: skip
    first = page.records[-1]
    assert first.detail.args == ("-c", "uptime") and first.detail.run_as_user == "deploy"
    assert (first.outcome, first.exit_code, first.duration_ms, first.token_id) == (
        AuditOutcome.SUCCESS, 0, 12, ALICE.token_id,
    )  # fmt: skip
    assert first.source_address == "10.0.0.5:51234" and first.started_at == t0

    async def ids_for(**filters: object) -> list[int]:
        return [r.id for r in (await store.query_audit(AuditQuery(**filters))).records]  # type: ignore[arg-type]

    assert await ids_for(user="alice") == ids[1::-1]
    assert await ids_for(action=AuditAction.FILE_WRITE) == [ids[1]]
    assert await ids_for(vm_id="web-1") == [ids[2], ids[0]]
    assert await ids_for(outcome=AuditOutcome.ERROR) == [ids[1]]
    assert await ids_for(outcome=AuditOutcome.PENDING) == [ids[2]]
    assert await ids_for(since=t0 + 30) == [ids[2], ids[1]]
    assert await ids_for(since=t0, until=t0 + 60) == [ids[0]]
    assert await ids_for(user="alice", vm_id="web-1") == [ids[0]]
    assert await ids_for(node_id="elsewhere") == []

    # Paging, both directions.
    p1 = await store.query_audit(AuditQuery(limit=2))
    assert [r.id for r in p1.records] == [ids[2], ids[1]] and p1.next_page_token
    p2 = await store.query_audit(AuditQuery(limit=2, page_token=p1.next_page_token))
    assert [r.id for r in p2.records] == [ids[0]] and p2.next_page_token == ""
    asc = [r.id async for r in store.iter_audit(AuditQuery(limit=1, oldest_first=True))]
    assert asc == ids

    for bad in ({"limit": 0}, {"limit": 5000}, {"page_token": "abc"}, {"since": 5.0, "until": 1.0}):
        with pytest.raises(errors.InvalidArgument):
            AuditQuery(**bad)  # type: ignore[arg-type]


@pytest.mark.trio
async def test_audit_rows_complete_once_and_are_never_deleted(store: SQLiteStore, db_path: Path) -> None:
    audit_id = await store.audit_begin(ALICE, source_address="x", action=AuditAction.SHUTDOWN, vm_id="v")
    with pytest.raises(errors.InvalidArgument):
        await store.audit_complete(audit_id, outcome=AuditOutcome.PENDING)
    await store.audit_complete(audit_id, outcome=AuditOutcome.SUCCESS)
    with pytest.raises(errors.FailedPrecondition):
        await store.audit_complete(audit_id, outcome=AuditOutcome.ERROR)
    with pytest.raises(errors.NotFound):
        await store.audit_complete(audit_id + 100, outcome=AuditOutcome.SUCCESS)
    # Enforced by the database, for any writer.
    with raw(db_path) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
        with pytest.raises(sqlite3.IntegrityError, match="completed once"):
            conn.execute("UPDATE audit_log SET vm_id = 'other'")


async def _export(store: SQLiteStore, query: AuditQuery) -> tuple[str, int]:
    """The audit export the API serves (ExportAudit, the GET route): its text and row count."""
    chunks = [chunk async for chunk in audit_jsonl_chunks(store, query)]
    return "".join(text for text, _ in chunks), sum(n for _, n in chunks)


@pytest.mark.trio
async def test_audit_export_json_lines(store: SQLiteStore, clock: FakeClock, tmp_path: Path) -> None:
    ids = await _seed_audit(store, clock)
    text, count = await _export(store, AuditQuery(limit=2, oldest_first=True))
    assert count == 3
    lines = text.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == ids
    assert rows[0]["action"] == "vm.exec" and rows[0]["startedAt"].endswith("Z")
    assert rows[0]["detail"] == {
        "command": "/bin/sh",
        "args": ["-c", "uptime"],
        "run_as_user": "deploy",
        "env_keys": ["PATH"],
    }
    assert rows[1]["detail"]["sha256"] == "a" * 64 and rows[1]["outcome"] == "error"
    assert rows[2]["completedAt"] is None and rows[2]["outcome"] == "pending"
    # To a real file, filtered.
    out = tmp_path / "audit.jsonl"
    text, count = await _export(store, AuditQuery(user="admin"))
    assert count == 1
    out.write_text(text)
    assert json.loads(out.read_text())["detail"] == {"username": "root"}


def test_audit_detail_cannot_hold_secrets() -> None:
    with pytest.raises(TypeError):
        AuditDetail(password="hunter2")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        AuditDetail(content=b"file bytes")  # type: ignore[call-arg]
    for key in ("password", "content", "stdin", "environment", "token"):
        with pytest.raises(errors.InvalidArgument) as exc:
            AuditDetail.from_mapping({"path": "/etc/shadow", key: "secret"})
        assert exc.value.reason == "forbidden_audit_field" and "secret" not in exc.value.message
    with pytest.raises(errors.InvalidArgument) as exc:
        AuditDetail.from_mapping({"whatever": 1})
    assert exc.value.reason == "forbidden_audit_field"
    for bad in ({"sha256": "xyz"}, {"size": -1}, {"env_keys": ("A=1",)}, {"flags": ("Has Space",)}, {"target": "a b"}):
        with pytest.raises(errors.InvalidArgument):
            AuditDetail.from_mapping(bad)
    # Huge scripts are cut, and say so.
    big = AuditDetail(command="x" * 100_000, args=tuple("y" * 5000 for _ in range(5)))
    assert big.truncated and len(big.command) == 8192 and sum(map(len, big.args)) <= 8192


def test_audit_detail_ids_cut_are_marked_not_silently_cut() -> None:
    """An id over MAX_ID_BYTES (a refused request's) is recorded cut with ID_CUT_MARK and
    ``truncated``: two long ids that share their first 128 bytes are not recorded as one
    id that exists. Ids within the bound are kept as they are."""
    a, b = "x" * 200 + "a", "x" * 200 + "b"
    one, two = AuditDetail(target=a), AuditDetail(target=b, vm_ids=(a, "web-1"))
    assert one.target == two.target == "x" * 125 + ID_CUT_MARK and one.truncated and two.truncated
    assert two.vm_ids == ("x" * 125 + ID_CUT_MARK, "web-1")
    assert len(one.target.encode()) == MAX_ID_BYTES
    within = "\u00e9" * 64  # 128 bytes, 64 characters
    kept = AuditDetail(target=within, vm_ids=(within,))
    assert (kept.target, kept.vm_ids, kept.truncated) == (within, (within,), False)
    # Cut on a character boundary: 300 bytes of 3-byte characters.
    assert AuditDetail(target="\u20ac" * 100).target == "\u20ac" * 41 + ID_CUT_MARK
    # naming(): a request's id as it came, left out of the row when it is no id at all.
    assert AuditDetail.naming("a b\x1b", count=2) == AuditDetail(count=2)
    assert AuditDetail.naming(a).target == one.target
    assert AuditDetail.naming("host-a").target == "host-a"


@pytest.mark.trio
async def test_audit_begin_takes_only_typed_details(store: SQLiteStore, db_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument):
        await store.audit_begin(
            ALICE, source_address="x", action=AuditAction.PASSWORD_RESET,
            detail={"username": "root", "password": "hunter2"},  # type: ignore[arg-type]
        )  # fmt: skip
    with pytest.raises(errors.InvalidArgument):
        await store.audit_begin(ALICE, source_address="x", action="vm.exec")  # type: ignore[arg-type]
    with raw(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] == 0
    for name in os.listdir(db_path.parent):
        assert b"hunter2" not in (db_path.parent / name).read_bytes()


@pytest.mark.trio
async def test_audit_write_failure_on_a_full_database_refuses(store: SQLiteStore) -> None:
    await store.audit_begin(ALICE, source_address="x", action=AuditAction.EXEC, vm_id="v")

    # A real SQLITE_FULL: cap the database at its current size, as a full disk would.
    def fill(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await store._run(fill)
    big = AuditDetail(command="x" * 8000)
    with pytest.raises(AuditWriteFailed) as exc:
        for _ in range(200):
            await store.audit_begin(ALICE, source_address="x", action=AuditAction.EXEC, vm_id="v", detail=big)
    assert exc.value.connect_code == "unavailable" and exc.value.reason == "audit_write_failed"
    assert "action refused" in exc.value.message and "disk_full" in exc.value.message
    assert isinstance(exc.value.__cause__, errors.ResourceExhausted)
    # The store is still consistent and readable.
    assert (await store.query_audit(AuditQuery(limit=1))).records


@pytest.mark.trio
async def test_audit_write_failure_on_a_read_only_database_refuses(store: SQLiteStore) -> None:
    await store._run(lambda conn: conn.execute("PRAGMA query_only = ON"))
    with pytest.raises(AuditWriteFailed) as exc:
        await store.audit_begin(ALICE, source_address="x", action=AuditAction.FILE_READ, vm_id="v")
    assert "action refused" in exc.value.message


@pytest.mark.trio
async def test_audit_write_failure_on_a_closed_store_refuses(db_path: Path) -> None:
    store = await SQLiteStore.open(db_path)
    await store.aclose()
    with pytest.raises(AuditWriteFailed) as exc:
        await store.audit_begin(ALICE, source_address="x", action=AuditAction.EXEC, vm_id="v")
    assert exc.value.__cause__ is not None and exc.value.__cause__.reason == "store_closed"  # type: ignore[attr-defined]
    with pytest.raises(errors.Unavailable):
        await store.list_users()
    await store.aclose()  # idempotent


@pytest.mark.trio
async def test_a_locked_database_is_unavailable_not_hung(db_path: Path, clock: FakeClock) -> None:
    async with await SQLiteStore.open(db_path, clock=clock) as store:
        await store._run(lambda conn: conn.execute("PRAGMA busy_timeout = 50"))  # instead of BUSY_TIMEOUT_S
        other = raw(db_path)
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with trio.fail_after(10), pytest.raises(AuditWriteFailed) as exc:
                await store.audit_begin(ALICE, source_address="x", action=AuditAction.EXEC, vm_id="v")
            assert "database_busy" in exc.value.message
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.audit_begin(ALICE, source_address="x", action=AuditAction.EXEC, vm_id="v")


# ------------------------------------------------------------------ nodes


@pytest.mark.trio
async def test_nodes_register_heartbeat_unreachable_route(store: SQLiteStore, clock: FakeClock) -> None:
    with pytest.raises(errors.NotFound):
        await store.heartbeat("host-a", [])
    for bad in ({"url": "ftp://x", "token": "t"}, {"url": "http://x", "token": ""}):
        with pytest.raises(errors.InvalidArgument):
            await store.register_node("host-a", **bad)
    with pytest.raises(errors.InvalidArgument):
        await store.register_node("bad id", url="http://x", token="t")

    node = await store.register_node("host-a", url="http://10.0.0.1:8081", token="hostd-secret-a")
    assert not node.reachable and node.last_heartbeat is None and node.vm_count == 0
    assert "hostd-secret-a" not in repr(node) and "hostd-secret-a" not in json.dumps(node.public_dict())
    await store.register_node("host-b", url="http://10.0.0.2:8081", token="hostd-secret-b")

    await store.heartbeat(
        "host-a",
        [
            VMInfo(vm_id="web-1", name="Web 1", labels={"env": "prod", "role": "web"}, state="connected"),
            VMInfo(vm_id="db-1", labels={"env": "prod"}, state="waiting_for_agent"),
        ],
    )
    clock.advance(10)
    await store.heartbeat("host-b", [VMInfo(vm_id="dev-1", labels={"env": "dev"})])

    nodes = {n.node_id: n for n in await store.list_nodes(heartbeat_timeout_s=15)}
    assert nodes["host-a"].reachable and nodes["host-b"].reachable
    assert (nodes["host-a"].vm_count, nodes["host-a"].token) == (2, "hostd-secret-a")

    route = await store.node_for_vm("web-1")
    assert route.node.node_id == "host-a" and route.node.url == "http://10.0.0.1:8081"
    assert route.vm.name == "Web 1" and dict(route.vm.labels) == {"env": "prod", "role": "web"}
    with pytest.raises(errors.NotFound):
        await store.node_for_vm("nope")

    assert [vm.vm_id for _, vm in await store.list_vms()] == ["db-1", "dev-1", "web-1"]
    assert [vm.vm_id for _, vm in await store.list_vms(labels={"env": "prod"})] == ["db-1", "web-1"]
    assert [vm.vm_id for _, vm in await store.list_vms(node_id="host-b")] == ["dev-1"]

    # host-a misses heartbeats: unreachable at read time, its VMs route to an unreachable node.
    clock.advance(10)
    nodes = {n.node_id: n for n in await store.list_nodes(heartbeat_timeout_s=15)}
    assert not nodes["host-a"].reachable and nodes["host-b"].reachable
    assert not (await store.node_for_vm("web-1", heartbeat_timeout_s=15)).node.reachable
    assert (await store.get_node("host-a", heartbeat_timeout_s=60)).reachable  # the threshold is the caller's

    # web-1 migrates to host-b: the reachable node wins while both list it.
    await store.heartbeat("host-b", [VMInfo(vm_id="dev-1"), VMInfo(vm_id="web-1", labels={"env": "prod"})])
    assert (await store.node_for_vm("web-1", heartbeat_timeout_s=15)).node.node_id == "host-b"
    # A heartbeat replaces the node's list.
    await store.heartbeat("host-a", [VMInfo(vm_id="db-1")])
    assert [vm.vm_id for _, vm in await store.list_vms(node_id="host-a")] == ["db-1"]

    # Re-registering changes URL and token, keeps the VM list.
    await store.register_node("host-a", url="https://10.0.0.1:8443", token="rotated")
    node_a = await store.get_node("host-a")
    assert (node_a.url, node_a.token, node_a.vm_count) == ("https://10.0.0.1:8443", "rotated", 1)

    await store.remove_node("host-a")
    # Its VMs stay in the inventory, gone, bound to the removed node's id.
    route = await store.node_for_vm("db-1")
    assert route.gone and route.node is None and route.node_id == "host-a" and not route.vm.reported
    with pytest.raises(errors.NotFound):
        await store.remove_node("host-a")
    assert [n.node_id for n in await store.list_nodes()] == ["host-b"]


@pytest.mark.trio
async def test_a_vm_is_bound_to_its_node_and_moves_only_when_its_owner_lets_go(
    store: SQLiteStore, clock: FakeClock
) -> None:
    for node in ("host-a", "host-b"):
        await store.register_node(node, url=f"http://{node}:8081", token=f"secret-{node}")
    first = await store.heartbeat("host-a", [VMInfo(vm_id="web-1", labels={"env": "prod"}), VMInfo(vm_id="db-1")])
    assert (first.moved, first.refused) == ((), ())
    # Another node claims web-1 while host-a still reports it and is alive: refused,
    # left out of host-b's list, calls still go to host-a.
    clock.advance(1)
    claim = await store.heartbeat("host-b", [VMInfo(vm_id="web-1", labels={"env": "dev"}), VMInfo(vm_id="b-1")])
    assert claim.refused == (VMClaim(vm_id="web-1", owner_node="host-a"),) and claim.moved == ()
    assert [vm.vm_id for _, vm in await store.list_vms(node_id="host-b")] == ["b-1"]
    route = await store.node_for_vm("web-1", heartbeat_timeout_s=15)
    assert route.node.node_id == "host-a" and dict(route.vm.labels) == {"env": "prod"}
    # A live migration: host-a stops reporting web-1, host-b's next heartbeat takes it.
    await store.heartbeat("host-a", [VMInfo(vm_id="db-1")])
    gone = await store.node_for_vm("web-1")  # the owner no longer reports it: gone, still bound to host-a
    assert gone.gone and gone.node_id == "host-a" and dict(gone.vm.labels) == {"env": "prod"}
    moved = await store.heartbeat("host-b", [VMInfo(vm_id="web-1"), VMInfo(vm_id="b-1")], heartbeat_timeout_s=15)
    assert moved.moved == (VMMove(vm_id="web-1", from_node="host-a", reason="not_reported"),)
    assert (await store.node_for_vm("web-1")).node.node_id == "host-b"
    # host-a reporting it again (a stale hypervisor) is now the refused claim.
    back = await store.heartbeat("host-a", [VMInfo(vm_id="db-1"), VMInfo(vm_id="web-1")], heartbeat_timeout_s=15)
    assert back.refused == (VMClaim(vm_id="web-1", owner_node="host-b"),)
    # A restart elsewhere: host-a goes silent still listing db-1; once it is past the
    # timeout host-b may take db-1, and host-a's stale row goes.
    clock.advance(10)
    assert (await store.heartbeat("host-b", [VMInfo(vm_id="db-1")], heartbeat_timeout_s=15)).refused != ()
    clock.advance(10)
    taken = await store.heartbeat("host-b", [VMInfo(vm_id="db-1"), VMInfo(vm_id="web-1")], heartbeat_timeout_s=15)
    assert taken.moved == (VMMove(vm_id="db-1", from_node="host-a", reason="owner_unreachable"),)
    listed = [(n, vm.vm_id, vm.reported) for n, vm in await store.list_vms()]
    # b-1, left out of host-b's last heartbeat, stays listed: gone.
    assert listed == [("host-b", "b-1", False), ("host-b", "db-1", True), ("host-b", "web-1", True)]
    # Removing a node frees its VMs for anyone.
    await store.remove_node("host-b")
    freed = await store.heartbeat("host-a", [VMInfo(vm_id="web-1")])
    assert freed.moved == (VMMove(vm_id="web-1", from_node="host-b", reason="owner_removed"),)
    assert (await store.node_for_vm("web-1")).node.node_id == "host-a"


@pytest.mark.trio
async def test_migration_5_binds_each_reported_vm_to_its_freshest_node(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    clock = FakeClock()
    async with await SQLiteStore.open(db, migrations=MIGRATIONS[:4], clock=clock) as store:
        # This code's queries are for the latest schema: a v4 database is written in SQL.
        await store._run(
            lambda conn: conn.executemany(
                "INSERT INTO nodes (node_id, url, token, registered_at) VALUES (?, ?, ?, ?)",
                [(node, f"http://{node}:8081", f"secret-{node}", clock()) for node in ("host-a", "host-b")],
            )
        )
        await store._run(
            lambda conn: conn.executemany(
                "INSERT INTO node_vms (node_id, vm_id) VALUES (?, ?)",
                [("host-a", "web-1"), ("host-a", "only-a"), ("host-b", "web-1")],
            )
        )
        await store._run(lambda conn: conn.execute("UPDATE nodes SET last_heartbeat = node_id = 'host-b'"))
    async with await SQLiteStore.open(db, clock=clock) as store:
        assert (await store.node_for_vm("web-1")).node.node_id == "host-b"  # the fresher heartbeat
        assert (await store.node_for_vm("only-a")).node.node_id == "host-a"
        assert [(n, vm.vm_id) for n, vm in await store.list_vms()] == [("host-a", "only-a"), ("host-b", "web-1")]
        refused = await store.heartbeat(
            "host-a", [VMInfo(vm_id="only-a"), VMInfo(vm_id="web-1")], heartbeat_timeout_s=1e12
        )
        assert refused.refused == (VMClaim(vm_id="web-1", owner_node="host-b"),)


@pytest.mark.trio
async def test_the_inventory_keeps_every_vm_seen_until_an_admin_removes_it(
    store: SQLiteStore, clock: FakeClock
) -> None:
    await store.register_node("host-a", url="http://host-a:8081", token="secret-a")
    first = clock()
    await store.heartbeat(
        "host-a",
        [
            VMInfo(vm_id="web-1", labels={"env": "prod"}, state="connected"),
            VMInfo(vm_id="web-2", name="Web 2", labels={"env": "prod"}, state="no_socket"),
            VMInfo(vm_id="web-3", state="disabled"),
        ],
    )
    states = {vm.vm_id: (vm.inventory_state, vm.last_reported) for _, vm in await store.list_vms()}
    assert states == {
        "web-1": (InventoryState.RUNNING, first),
        "web-2": (InventoryState.OFF, first),
        "web-3": (InventoryState.UNKNOWN, first),
    }
    # hostd forgets web-2 (powered off for minutes): it stays, gone, as last reported.
    clock.advance(300)
    await store.heartbeat("host-a", [VMInfo(vm_id="web-1", labels={"env": "prod"}, state="connected")])
    (_, web2), *_ = [(n, vm) for n, vm in await store.list_vms(labels={"env": "prod"}) if vm.vm_id == "web-2"]
    assert web2.inventory_state is InventoryState.GONE and web2.last_reported == first
    assert (web2.name, web2.state) == ("Web 2", "no_socket")
    assert (await store.node_for_vm("web-1")).vm.last_reported == first + 300
    assert (await store.get_node("host-a")).vm_count == 1  # the VMs its last heartbeat listed

    # A VM its reachable node still reports cannot be removed: it would be back in 10 s.
    with pytest.raises(errors.FailedPrecondition) as refused:
        await store.remove_vm("web-1", heartbeat_timeout_s=15)
    assert refused.value.reason == "vm_reported"
    removed = await store.remove_vm("web-2", heartbeat_timeout_s=15)
    assert removed.node_id == "host-a" and removed.gone
    with pytest.raises(errors.NotFound):
        await store.node_for_vm("web-2")
    with pytest.raises(errors.NotFound):
        await store.remove_vm("web-2")
    # A node silent past the timeout no longer holds its VMs in place.
    clock.advance(60)
    assert (await store.remove_vm("web-1", heartbeat_timeout_s=15)).vm.reported
    # Reported again, a removed VM is back.
    await store.heartbeat("host-a", [VMInfo(vm_id="web-2", state="connected")])
    assert [(vm.vm_id, vm.inventory_state) for _, vm in await store.list_vms()] == [
        ("web-2", InventoryState.RUNNING),
        ("web-3", InventoryState.GONE),
    ]


@pytest.mark.trio
async def test_migration_6_keeps_a_v5_databases_vms_and_their_bindings(tmp_path: Path) -> None:
    db = tmp_path / "v5.db"
    clock = FakeClock()
    beat = clock() - 30
    agent = json.dumps({"agent_version": "0.1.0", "hostname": "web-1"})
    async with await SQLiteStore.open(db, migrations=MIGRATIONS[:5], clock=clock):
        pass
    # A v5 file as a v5 controller leaves it (this code's queries are for the latest schema).
    with raw(db) as conn:
        conn.execute(
            "INSERT INTO nodes (node_id, url, token, registered_at, last_heartbeat) VALUES (?, ?, ?, ?, ?)",
            ("host-a", "http://host-a:8081", "secret-a", beat - 100, beat),
        )
        conn.execute(
            "INSERT INTO node_vms (node_id, vm_id, name, labels, state, agent) VALUES (?, ?, ?, ?, ?, ?)",
            ("host-a", "web-1", "Web 1", '{"env": "prod"}', "connected", agent),
        )
        # old-1: bound to host-a, then left out of its heartbeats (v5 dropped its record).
        conn.executemany(
            "INSERT INTO vm_owners (vm_id, node_id, bound_at) VALUES (?, ?, ?)",
            [("web-1", "host-a", beat - 100), ("old-1", "host-a", beat - 50)],
        )
    async with await SQLiteStore.open(db, clock=clock) as store:
        vms = {vm.vm_id: (node, vm) for node, vm in await store.list_vms()}
        node, web1 = vms["web-1"]
        assert (node, web1.name, dict(web1.labels), web1.state) == ("host-a", "Web 1", {"env": "prod"}, "connected")
        assert web1.agent.hostname == "web-1" and web1.reported and web1.last_reported == beat
        node, old1 = vms["old-1"]
        assert node == "host-a" and old1.inventory_state is InventoryState.GONE and old1.last_reported == beat - 50
        assert (await store.get_node("host-a")).vm_count == 1
        # The binding is kept: another node cannot take web-1 while host-a reports it.
        await store.register_node("host-b", url="http://host-b:8081", token="secret-b")
        claim = await store.heartbeat("host-b", [VMInfo(vm_id="web-1")], heartbeat_timeout_s=60)
        assert claim.refused == (VMClaim(vm_id="web-1", owner_node="host-a"),)
    with raw(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "vms" in tables and not tables & {"node_vms", "vm_owners"}


@pytest.mark.trio
async def test_migration_7_keeps_a_v6_databases_fleet_targets(tmp_path: Path) -> None:
    """Targets stored before v7 read back with no exit reason and no signal; new ones keep theirs."""
    db = tmp_path / "v6.db"
    clock = FakeClock()
    async with await SQLiteStore.open(db, migrations=MIGRATIONS[:6], clock=clock):
        pass
    with raw(db) as conn:  # a v6 run with one finished target, as a v6 controller leaves it
        conn.execute(
            "INSERT INTO commands (id, created_at, user_name, token_id, spec, target_spec, max_concurrency,"
            " max_errors, status) VALUES ('cmd-1', ?, 'alice', 'tok', ?, ?, 1, '0', 'in_progress')",
            (clock(), json.dumps({"command": "true"}), json.dumps({"vm_ids": ["vm-0", "vm-1"]})),
        )
        conn.executemany(
            "INSERT INTO command_targets (command_id, position, vm_id, status, exit_code) VALUES (?, ?, ?, ?, ?)",
            [("cmd-1", 0, "vm-0", "success", 0), ("cmd-1", 1, "vm-1", "in_progress", None)],
        )
    async with await SQLiteStore.open(db, clock=clock) as store:
        old = (await store.get_command("cmd-1")).targets[0]
        assert (old.status, old.exit_code, old.exit_reason, old.signal) == (TargetStatus.SUCCESS, 0, "", 0)
        new = await store.update_target("cmd-1", "vm-1", status=TargetStatus.FAILED, exit_reason="signaled", signal=9)
        assert (new.exit_code, new.exit_reason, new.signal) == (None, "signaled", 9)


@pytest.mark.trio
async def test_migration_8_forgets_ids_no_request_could_name(tmp_path: Path) -> None:
    """A v7 controller took VM and node ids of 129-255 characters, which no request could name
    (not even RemoveVM): v8 forgets them; ids within 128 bytes (non-ASCII too) stay."""
    db = tmp_path / "v7.db"
    clock = FakeClock()
    async with await SQLiteStore.open(db, migrations=MIGRATIONS[:7], clock=clock) as store:
        await store.register_node("host-a", url="http://x", token="t")
    long_vm, kept_vm = "v" * 129, "\u00e9" * 64  # 129 bytes; 128 bytes
    with raw(db) as conn:  # as a v7 controller left them (its rule was 255 characters)
        conn.execute(
            "INSERT INTO nodes (node_id, url, token, registered_at) VALUES (?, 'http://y', 't', ?)",
            ("n" * 200, clock()),
        )
        conn.executemany(
            "INSERT INTO vms (vm_id, node_id, bound_at, last_reported) VALUES (?, 'host-a', ?, ?)",
            [(vm, clock(), clock()) for vm in (long_vm, kept_vm, "web-1")],
        )
    async with await SQLiteStore.open(db, clock=clock) as store:
        assert sorted(v.vm_id for _, v in await store.list_vms()) == sorted([kept_vm, "web-1"])
        assert [n.node_id for n in await store.list_nodes(heartbeat_timeout_s=15)] == ["host-a"]


# ------------------------------------------------------------------ fleet runs


SPEC = CommandSpec(command="/bin/sh", args=("-c", "uptime"), timeout_seconds=30, env_keys=("FOO",))


@pytest.mark.trio
async def test_command_lifecycle(store: SQLiteStore, clock: FakeClock) -> None:
    vms = [f"vm-{i}" for i in range(5)]
    cmd = await store.create_command(
        ALICE, spec=SPEC, target_spec=TargetSpec(labels={"env": "prod"}), vm_ids=[*vms, "vm-0"],
        max_concurrency=2, max_errors="1",
    )  # fmt: skip
    assert cmd.status is CommandStatus.PENDING and cmd.user == "alice" and cmd.token_id == ALICE.token_id
    assert [t.vm_id for t in cmd.targets] == vms  # de-duplicated, in order
    assert cmd.counts[TargetStatus.PENDING] == 5 and cmd.target_count == 5
    assert cmd.spec == SPEC and dict(cmd.target_spec.labels) == {"env": "prod"}

    t = await store.update_target(cmd.id, "vm-0", status=TargetStatus.IN_PROGRESS, node_id="host-a")
    assert t.status is TargetStatus.IN_PROGRESS and t.started_at == clock.now and t.node_id == "host-a"
    assert (await store.get_command(cmd.id)).status is CommandStatus.IN_PROGRESS
    clock.advance(1.5)
    big = "é" * TARGET_OUTPUT_MAX_BYTES  # 2 bytes each: cut at half, on a character boundary
    t = await store.update_target(cmd.id, "vm-0", status=TargetStatus.SUCCESS, exit_code=0, stdout=big, stderr="warn\n")
    assert (t.exit_code, t.duration_ms, t.completed_at, t.stderr, t.stderr_truncated) == (
        0,
        1500,
        clock.now,
        "warn\n",
        False,
    )
    assert t.stdout_truncated and t.stdout == "é" * (TARGET_OUTPUT_MAX_BYTES // 2)
    with pytest.raises(errors.FailedPrecondition) as exc:
        await store.update_target(cmd.id, "vm-0", status=TargetStatus.FAILED)
    assert exc.value.reason == "target_finished"
    with pytest.raises(errors.InvalidArgument):
        await store.update_target(cmd.id, "vm-1", status=TargetStatus.PENDING)
    with pytest.raises(errors.NotFound):
        await store.update_target(cmd.id, "vm-99", status=TargetStatus.IN_PROGRESS)

    await store.update_target(cmd.id, "vm-1", status=TargetStatus.IN_PROGRESS)
    await store.update_target(cmd.id, "vm-2", status=TargetStatus.UNDELIVERABLE, error="agent not connected")
    t = await store.update_target(
        cmd.id, "vm-3", status=TargetStatus.TIMED_OUT, exit_reason="timed_out", signal=15, stdout_truncated=True
    )
    assert t.duration_ms is None and t.stdout_truncated  # never started; the agent's flag is kept
    assert (t.exit_code, t.exit_reason, t.signal) == (None, "timed_out", 15)  # no exit code, the reason instead

    with pytest.raises(errors.FailedPrecondition):
        await store.finish_command(cmd.id, CommandStatus.FAILED)  # vm-1 still running, vm-4 pending

    cancelled = await store.cancel_command(cmd.id)
    assert cancelled.status is CommandStatus.CANCELLING  # vm-1 is still running
    assert cancelled.counts[TargetStatus.CANCELLED] == 1 and cancelled.counts[TargetStatus.IN_PROGRESS] == 1
    assert (await store.cancel_command(cmd.id)).status is CommandStatus.CANCELLING  # idempotent
    with pytest.raises(errors.FailedPrecondition):  # the runner lost the race: leave it
        await store.update_target(cmd.id, "vm-4", status=TargetStatus.IN_PROGRESS)
    await store.update_target(cmd.id, "vm-1", status=TargetStatus.CANCELLED, error="cancelled")
    done = await store.finish_command(cmd.id, CommandStatus.CANCELLED)
    assert done.status is CommandStatus.CANCELLED and done.completed_at == clock.now
    with pytest.raises(errors.FailedPrecondition):
        await store.finish_command(cmd.id, CommandStatus.SUCCESS)
    with pytest.raises(errors.InvalidArgument):
        await store.finish_command(cmd.id, CommandStatus.IN_PROGRESS)

    full = await store.get_command(cmd.id)
    assert [t.status for t in full.targets] == [
        TargetStatus.SUCCESS, TargetStatus.CANCELLED, TargetStatus.UNDELIVERABLE,
        TargetStatus.TIMED_OUT, TargetStatus.CANCELLED,
    ]  # fmt: skip
    with pytest.raises(errors.NotFound):
        await store.get_command("nope")


@pytest.mark.trio
async def test_cancel_without_running_targets_and_finished_commands(store: SQLiteStore) -> None:
    cmd = await store.create_command(
        ALICE,
        spec=SPEC,
        target_spec=TargetSpec(vm_ids=("a", "b")),
        vm_ids=["a", "b"],
        max_concurrency=1,
        max_errors="0",
    )
    assert (await store.cancel_command(cmd.id)).status is CommandStatus.CANCELLED
    ok = await store.create_command(
        ALICE, spec=SPEC, target_spec=TargetSpec(vm_ids=("a",)), vm_ids=["a"], max_concurrency=1, max_errors="0"
    )
    await store.update_target(ok.id, "a", status=TargetStatus.SUCCESS, exit_code=0)
    await store.finish_command(ok.id, CommandStatus.SUCCESS)
    with pytest.raises(errors.FailedPrecondition):
        await store.cancel_command(ok.id)
    empty = await store.create_command(
        ALICE, spec=SPEC, target_spec=TargetSpec(labels={"env": "none"}), vm_ids=[], max_concurrency=5, max_errors="10%"
    )
    assert empty.status is CommandStatus.SUCCESS and empty.target_count == 0 and empty.completed_at is not None


@pytest.mark.trio
async def test_command_validation(store: SQLiteStore) -> None:
    target = TargetSpec(vm_ids=("a",))
    for kwargs in ({"max_concurrency": 0}, {"max_errors": "x"}, {"max_errors": "150%"}, {"vm_ids": [""]}):
        args = {"spec": SPEC, "target_spec": target, "vm_ids": ["a"], "max_concurrency": 1, "max_errors": "0", **kwargs}
        with pytest.raises(errors.InvalidArgument):
            await store.create_command(ALICE, **args)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument):
        TargetSpec()
    with pytest.raises(errors.InvalidArgument):
        CommandSpec(command="")
    with pytest.raises(errors.InvalidArgument):
        CommandSpec(command="x", env_keys=("BAD=1",))
    assert [max_errors_limit(v, 25) for v in ("0", "2", "10%", "100%")] == [0, 2, 2, 25]


@pytest.mark.trio
async def test_list_commands_paged_and_filtered(store: SQLiteStore, clock: FakeClock) -> None:
    ids = []
    for i in range(5):
        who = ALICE if i % 2 == 0 else ADMIN
        cmd = await store.create_command(
            who,
            spec=SPEC,
            target_spec=TargetSpec(vm_ids=("a", "b")),
            vm_ids=["a", "b"],
            max_concurrency=1,
            max_errors="0",
        )
        ids.append(cmd.id)
        clock.advance(1)
    await store.update_target(ids[4], "a", status=TargetStatus.FAILED, exit_code=1)
    page = await store.list_commands(limit=2)
    assert [c.id for c in page.commands] == [ids[4], ids[3]] and page.next_page_token
    assert page.commands[0].targets == () and page.commands[0].counts[TargetStatus.FAILED] == 1
    rest = await store.list_commands(limit=10, page_token=page.next_page_token)
    assert [c.id for c in rest.commands] == [ids[2], ids[1], ids[0]] and rest.next_page_token == ""
    assert [c.id for c in (await store.list_commands(user="alice")).commands] == [ids[4], ids[2], ids[0]]
    assert [c.id for c in (await store.list_commands(status=CommandStatus.IN_PROGRESS)).commands] == [ids[4]]
    with pytest.raises(errors.InvalidArgument):
        await store.list_commands(page_token="x")


# ------------------------------------------------------------------ restart


@pytest.mark.trio
async def test_state_survives_a_controller_restart(db_path: Path, clock: FakeClock) -> None:
    async with await SQLiteStore.open(db_path, clock=clock) as store:
        admin_token = await store.bootstrap_admin(None)
        assert admin_token
        await store.ensure_user("alice")
        info, token = await store.create_token(user="alice", role=Role.OPERATOR, label_scope={"env": "prod"})
        revoked, revoked_token = await store.create_token(user="alice", role=Role.VIEWER)
        await store.revoke_token(revoked.id)
        principal = await store.authenticate(token)
        audit_id = await store.audit_begin(
            principal, source_address="1.2.3.4", action=AuditAction.FLEET_RUN, detail=AuditDetail(count=3)
        )
        await store.register_node("host-a", url="http://h:8081", token="node-token")
        await store.heartbeat("host-a", [VMInfo(vm_id="web-1")])
        running = await store.create_command(
            principal, spec=SPEC, target_spec=TargetSpec(vm_ids=("x", "y", "z")), vm_ids=["x", "y", "z"],
            max_concurrency=2, max_errors="0",
        )  # fmt: skip
        await store.update_target(running.id, "x", status=TargetStatus.IN_PROGRESS)
        await store.update_target(running.id, "y", status=TargetStatus.SUCCESS, exit_code=0, stdout="hi\n")
        # the "process" ends here, with the audit row still pending and the run unfinished

    clock.advance(3600)
    async with await SQLiteStore.open(db_path, clock=clock) as store:
        assert await store.bootstrap_admin(None) is None  # once only
        assert (await store.authenticate(admin_token)).role is Role.ADMIN
        again = await store.authenticate(token)
        assert again.role is Role.OPERATOR and dict(again.label_scope or {}) == {"env": "prod"}
        with pytest.raises(errors.Unauthenticated):
            await store.authenticate(revoked_token)
        (row,) = (await store.query_audit(AuditQuery(action=AuditAction.FLEET_RUN))).records
        assert row.id == audit_id and row.outcome is AuditOutcome.PENDING and row.detail.count == 3
        await store.audit_complete(audit_id, outcome=AuditOutcome.SUCCESS)
        assert (await store.node_for_vm("web-1", heartbeat_timeout_s=15)).node.token == "node-token"
        assert not (await store.get_node("host-a")).reachable  # an hour without heartbeats

        assert await store.recover_interrupted_commands() == 1
        cmd = await store.get_command(running.id)
        assert cmd.status is CommandStatus.FAILED and cmd.completed_at == clock.now
        by_vm = {t.vm_id: t for t in cmd.targets}
        assert by_vm["y"].status is TargetStatus.SUCCESS and by_vm["y"].stdout == "hi\n"
        assert by_vm["x"].status is TargetStatus.FAILED and "outcome unknown" in by_vm["x"].error
        assert by_vm["z"].status is TargetStatus.CANCELLED
        assert await store.recover_interrupted_commands() == 0


# ------------------------------------------------------------------ bootstrap


@pytest.mark.trio
async def test_bootstrap_admin_once(store: SQLiteStore) -> None:
    token = await store.bootstrap_admin(None)
    assert token is not None and token.startswith("lqx_")
    principal = await store.authenticate(token)
    assert (principal.user, principal.role, principal.label_scope) == ("admin", Role.ADMIN, None)
    assert await store.bootstrap_admin(None) is None
    assert await store.bootstrap_admin("another-long-enough-token-0123456789") is None
    (row,) = (await store.query_audit(AuditQuery(action=AuditAction.ADMIN_BOOTSTRAP))).records
    assert row.outcome is AuditOutcome.SUCCESS and row.detail.target == principal.token_id


@pytest.mark.trio
@pytest.mark.parametrize("env_token", ["lqx_0123456789ab_" + "Q" * 43, "dev-admin-token-for-make-run-0001"])
async def test_bootstrap_admin_from_env(store: SQLiteStore, db_path: Path, env_token: str) -> None:
    assert await store.bootstrap_admin(f"{env_token}\n") == env_token  # a trailing newline from a file is fine
    assert (await store.authenticate(env_token)).role is Role.ADMIN
    assert await store.bootstrap_admin(env_token) is None
    for name in os.listdir(db_path.parent):
        assert env_token.encode() not in (db_path.parent / name).read_bytes()


@pytest.mark.trio
@pytest.mark.parametrize("env_token", ["short", "has a space but is long enough!!", "", "é" * 30])
async def test_bootstrap_admin_rejects_weak_env_tokens(store: SQLiteStore, env_token: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="LQX_ADMIN_TOKEN"):
        await store.bootstrap_admin(env_token)
    assert await store.list_tokens() == []


@pytest.mark.trio
async def test_two_controllers_bootstrap_one_database_once(db_path: Path) -> None:
    stores = [await SQLiteStore.open(db_path) for _ in range(4)]
    results: list[str | None] = []
    try:

        async def boot(s: SQLiteStore) -> None:
            results.append(await s.bootstrap_admin(None))

        async with trio.open_nursery() as nursery:
            for s in stores:
                nursery.start_soon(boot, s)
    finally:
        for s in stores:
            await s.aclose()
    assert len([r for r in results if r]) == 1


# ------------------------------------------------------------------ concurrency


@pytest.mark.trio
async def test_concurrent_writers_neither_corrupt_nor_deadlock(db_path: Path) -> None:
    """Many trio tasks on one store, plus a second store (another process's
    connection, like the CLI) on the same file, all writing at once."""
    server = await SQLiteStore.open(db_path)
    cli = await SQLiteStore.open(db_path)
    try:
        await server.register_node("host-a", url="http://h", token="t")
        await server.ensure_user("alice")
        cmd = await server.create_command(
            ALICE, spec=SPEC, target_spec=TargetSpec(labels={"env": "prod"}),
            vm_ids=[f"vm-{i}" for i in range(40)], max_concurrency=40, max_errors="0",
        )  # fmt: skip

        async def audited(i: int) -> None:
            audit_id = await server.audit_begin(ALICE, source_address="x", action=AuditAction.EXEC, vm_id=f"vm-{i}")
            await trio.lowlevel.checkpoint()
            await server.audit_complete(audit_id, outcome=AuditOutcome.SUCCESS, exit_code=0)

        async def target(i: int) -> None:
            await server.update_target(cmd.id, f"vm-{i}", status=TargetStatus.IN_PROGRESS)
            await server.update_target(cmd.id, f"vm-{i}", status=TargetStatus.SUCCESS, exit_code=0, stdout=str(i))

        async def heartbeat(i: int) -> None:
            await server.heartbeat("host-a", [VMInfo(vm_id=f"vm-{j}") for j in range(i % 7)])

        async def token(i: int) -> None:
            _, tok = await cli.create_token(user="alice", role=Role.VIEWER, description=f"t{i}")
            assert (await server.authenticate(tok)).user == "alice"

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(audited, i)
                    nursery.start_soon(target, i)
                    nursery.start_soon(heartbeat, i)
                    if i % 4 == 0:
                        nursery.start_soon(token, i)

        rows = [r async for r in server.iter_audit(AuditQuery(action=AuditAction.EXEC, limit=7))]
        assert len(rows) == 40 and {r.outcome for r in rows} == {AuditOutcome.SUCCESS}
        assert sorted(r.vm_id for r in rows) == sorted(f"vm-{i}" for i in range(40))
        done = await server.get_command(cmd.id)
        assert done.counts[TargetStatus.SUCCESS] == 40
        assert sorted(int(t.stdout) for t in done.targets) == list(range(40))
        assert len(await server.list_tokens()) == 10
    finally:
        await server.aclose()
        await cli.aclose()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


@pytest.mark.trio
async def test_a_cancelled_caller_never_leaves_half_a_transaction(store: SQLiteStore) -> None:
    with trio.move_on_after(0):  # cancelled before the call can even start its thread
        await store.ensure_user("alice")
    # Cancellation is not abandoned mid-call: either it ran whole or not at all,
    # and the store is usable either way.
    users = [u.name for u in await store.list_users()]
    assert users in ([], ["alice"])
    await store.ensure_user("bob")
    assert "bob" in [u.name for u in await store.list_users()]


@pytest.mark.trio
async def test_migration_2_keeps_tokens_and_allows_the_node_role(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    async with await SQLiteStore.open(db, migrations=MIGRATIONS[:1]) as store:
        await store.ensure_user("alice")
        info, token = await store.create_token(user="alice", role=Role.OPERATOR, label_scope={"env": "prod"})
        with pytest.raises(errors.AgentError):
            await store.create_token(user="alice", role=Role.NODE)
    async with await SQLiteStore.open(db) as store:
        assert (await store.authenticate(token)).label_scope == {"env": "prod"}
        node_info, node_token = await store.create_token(user="alice", role=Role.NODE)
        assert (await store.authenticate(node_token)).role is Role.NODE
        assert [t.id for t in await store.list_tokens()] == [info.id, node_info.id]


@pytest.mark.trio
async def test_a_node_keeps_its_newest_gone_vms_only(
    store: SQLiteStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every VM seen is kept, gone, for its history; a heartbeat that lists new VM ids each time
    (a node token holder on another machine: 1,024 a heartbeat) grew the inventory forever. A
    node keeps its newest MAX_GONE_VMS_PER_NODE gone VMs (5 here); older ones are forgotten and
    the heartbeat says how many. Its reported VMs, and other nodes', are untouched."""
    from limiquantix.controller.store import _inventory

    monkeypatch.setattr(_inventory, "MAX_GONE_VMS_PER_NODE", 5)
    await store.register_node("host-a", url="http://10.0.0.1:8081", token="a")
    await store.register_node("host-b", url="http://10.0.0.2:8081", token="b")
    await store.heartbeat("host-b", [VMInfo(vm_id=f"b-{i}") for i in range(8)])
    await store.heartbeat("host-b", [])  # all 8 of host-b gone: beyond 5, the first 3 forgotten
    forgotten = []
    for round_ in range(4):
        clock.advance(1)
        result = await store.heartbeat("host-a", [VMInfo(vm_id=f"a-{round_}-{i}") for i in range(3)])
        forgotten.append(result.forgotten)
    assert forgotten == [0, 0, 1, 3]  # gone: 0, 3, 6 -> 5, 9 -> 5
    listed = {vm.vm_id for node, vm in await store.list_vms(node_id="host-a")}
    # The 3 reported now, and the 5 gone most recently reported (round 2's, then round 1's last by id).
    assert {f"a-3-{i}" for i in range(3)} | {f"a-2-{i}" for i in range(3)} <= listed and len(listed) == 8
    assert len(await store.list_vms(node_id="host-b")) == 5


@pytest.mark.trio
async def test_a_node_token_registers_a_bounded_number_of_nodes(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One node token registering ever new node ids (each keeping its last 1,024 VMs while
    silent) grew the inventory without end: at most MAX_NODES_PER_TOKEN (3 here) per token,
    then resource_exhausted naming the way out; registering an owned id again, another
    token's and an admin's (no owner) go on."""
    from limiquantix.controller.store import _inventory

    monkeypatch.setattr(_inventory, "MAX_NODES_PER_TOKEN", 3)
    for i in range(3):
        await store.register_node(f"n-{i}", url="http://x:1", token="t", owner_token_id="tok-a")
    with pytest.raises(errors.ResourceExhausted, match="make a token per host") as refused:
        await store.register_node("n-3", url="http://x:1", token="t", owner_token_id="tok-a")
    assert refused.value.reason == "too_many_nodes"
    await store.register_node("n-0", url="http://x:2", token="t", owner_token_id="tok-a")
    await store.register_node("n-3", url="http://x:1", token="t", owner_token_id="tok-b")
    await store.register_node("n-4", url="http://x:1", token="t")
    assert {n.node_id for n in await store.list_nodes()} == {"n-0", "n-1", "n-2", "n-3", "n-4"}
