"""AdminService end to end: a real controller (in-process, temp SQLite, real HTTP on loopback),
no hostd (nodes register through NodeRegistryService as hostd would). Audit rows are seeded with
a fake clock before the controller starts, so the time filters have known answers."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import db_tempdir, loopback_client
from test_controller_api import _make_tokens

from limiquantix.controller._admin import AUDIT_EXPORT_PATH, NDJSON_CONTENT_TYPE
from limiquantix.controller._auth import Principal, Role
from limiquantix.controller._daemon import ControllerConfig
from limiquantix.controller._daemon import serve as controller_serve
from limiquantix.controller._models import AuditAction, AuditDetail, AuditOutcome
from limiquantix.controller.store import SQLiteStore

ADMIN = "/limiquantix.compute.v1.AdminService"
VM = "/limiquantix.compute.v1.VMService"
NODES = "/limiquantix.compute.v1.NodeRegistryService"
DEADLINE_S = 30
#: Seeded rows: one a minute from 2024-01-01T00:00:00Z.
SEED_T0 = 1_704_067_200.0
SEED_ROWS = 30
SEED_USERS = ("alice", "bob")
GUEST_PASSWORD = "Hunter2-guest-password-never-logged"
FILE_CONTENT = b"file-content-never-logged-7f3a"
ENV_VALUE = "env-value-never-logged-91c2"
STDIN = b"stdin-never-logged-55e0"
NODE_SECRET = "node-api-token-never-shown-0123456789"


@dataclass
class Stack:
    db: Path
    tokens: dict[str, str]
    client: httpx.AsyncClient
    nursery: trio.Nursery
    url: str = ""
    stop: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)

    async def start(self) -> None:
        self.stop, self.done = trio.Event(), trio.Event()
        config = ControllerConfig(listen="127.0.0.1:0", db=str(self.db))
        stop, done = self.stop, self.done

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await controller_serve(config, shutdown=stop, task_status=task_status)
            finally:
                done.set()

        self.url = (await self.nursery.start(run))[0]

    async def restart(self) -> None:
        await self.client.aclose()  # a fresh client for the restarted controller
        self.client = loopback_client(timeout=DEADLINE_S)
        self.stop.set()
        with trio.fail_after(DEADLINE_S):
            await self.done.wait()
        await self.start()

    def headers(self, who: str | None) -> dict[str, str]:
        if who is None:
            return {}
        token = self.tokens.get(who, who)  # a name from the fixture, or a token itself
        return {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, body: dict[str, Any], *, who: str | None = "admin", service: str = ADMIN
    ) -> httpx.Response:
        return await self.client.post(f"{self.url}{service}/{method}", json=body, headers=self.headers(who))

    async def ok(
        self, method: str, body: dict[str, Any], *, who: str = "admin", service: str = ADMIN
    ) -> dict[str, Any]:
        r = await self.call(method, body, who=who, service=service)
        assert r.status_code == 200, r.text
        return r.json()

    async def stream(
        self, method: str, body: dict[str, Any], *, who: str | None = "admin"
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """A server-streaming call in Connect's JSON envelopes: (messages, end-of-stream)."""
        data = json.dumps(body).encode()
        headers = {**self.headers(who), "Content-Type": "application/connect+json"}
        r = await self.client.post(
            f"{self.url}{ADMIN}/{method}", content=struct.pack(">BI", 0, len(data)) + data, headers=headers
        )
        assert r.status_code == 200, r.text
        messages, end, buf, i = [], None, r.content, 0
        while i < len(buf):
            flags, n = struct.unpack(">BI", buf[i : i + 5])
            payload = json.loads(buf[i + 5 : i + 5 + n])
            i += 5 + n
            if flags & 0x02:
                end = payload
            else:
                messages.append(payload)
        assert end is not None, "no end-of-stream message"
        return messages, end

    async def export(self, params: dict[str, str] | None = None, *, who: str | None = "admin") -> httpx.Response:
        return await self.client.get(f"{self.url}{AUDIT_EXPORT_PATH}", params=params or {}, headers=self.headers(who))


def _seed_row(i: int) -> dict[str, Any]:
    return {
        "user": SEED_USERS[i % 2],
        "action": AuditAction.EXEC if i % 4 == 0 else AuditAction.EXEC_STREAM if i % 4 == 2 else AuditAction.FILE_WRITE,
        "vm_id": f"vm-{i % 3}",
        "node_id": f"node-{i % 2}",
        "outcome": AuditOutcome.ERROR if i % 5 == 0 else AuditOutcome.SUCCESS,
        "started_at": SEED_T0 + 60 * i,
    }


async def _seed(db: Path) -> dict[str, str]:
    """The fixture's tokens, and SEED_ROWS audit rows at known times."""
    now = [SEED_T0]
    async with await SQLiteStore.open(db, clock=lambda: now[0]) as store:
        for i in range(SEED_ROWS):
            row = _seed_row(i)
            now[0] = row["started_at"]
            principal = Principal(user=row["user"], token_id="", role=Role.OPERATOR)
            audit_id = await store.audit_begin(
                principal,
                source_address="127.0.0.1:1",
                action=row["action"],
                vm_id=row["vm_id"],
                node_id=row["node_id"],
                detail=AuditDetail(command=f"echo seed-{i}"),
            )
            await store.audit_complete(audit_id, outcome=row["outcome"], exit_code=0, duration_ms=1)
    return await _make_tokens(
        db,
        (
            ("admin", Role.ADMIN, None),
            ("operator", Role.OPERATOR, None),
            ("viewer", Role.VIEWER, None),
            ("scoped_admin", Role.ADMIN, {"env": "prod"}),
            ("node", Role.NODE, None),
        ),
    )


@pytest.fixture(scope="session")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A database as :func:`_seed` leaves it, and its tokens: made once (sixty durable SQLite
    transactions), copied by each test."""
    db = tmp_path_factory.mktemp("admin-seed") / "controller.db"
    return db, trio.run(_seed, db)


@pytest.fixture
async def stack(nursery: trio.Nursery, seeded_db: tuple[Path, dict[str, str]]) -> AsyncIterator[Stack]:
    seed, tokens = seeded_db
    with db_tempdir() as db_dir:
        for part in seed.parent.glob(f"{seed.name}*"):  # the database, and its -wal and -shm if any
            shutil.copyfile(part, db_dir / part.name)
        async with loopback_client(timeout=DEADLINE_S) as client:
            st = Stack(db_dir / seed.name, tokens, client, nursery)
            await st.start()
            try:
                yield st
            finally:  # stopped before its database goes, the test failed or not
                with trio.CancelScope(shield=True):
                    await st.client.aclose()
                    st.stop.set()
                    with trio.fail_after(DEADLINE_S):
                        await st.done.wait()


async def _query_all(stack: Stack, filt: dict[str, Any], page_size: int = 7) -> list[dict[str, Any]]:
    """Every page of a QueryAudit, checking each page's size and order."""
    rows: list[dict[str, Any]] = []
    token = ""
    for _ in range(100):
        page = await stack.ok("QueryAudit", {"filter": filt, "pageSize": page_size, "pageToken": token})
        assert len(page["records"]) <= page_size
        rows += page["records"]
        token = page["nextPageToken"]
        if not token:
            break
        assert len(page["records"]) == page_size
    ids = [int(r["id"]) for r in rows]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids), "newest first, no repeats"
    return rows


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- audit query and export


@pytest.mark.trio
async def test_query_audit_filters_and_paging(stack: Stack) -> None:
    seeded = [_seed_row(i) for i in range(SEED_ROWS)]
    everything = await _query_all(stack, {})
    assert len(everything) == SEED_ROWS  # tokens made through the store are not audited; reads are not
    first = everything[-1]
    assert first["action"] == "vm.exec" and first["detail"]["command"] == "echo seed-0"
    assert first["startedAt"] == "2024-01-01T00:00:00Z" and first["outcome"] == "error"

    cases: list[tuple[dict[str, Any], Any]] = [
        ({"user": "alice"}, lambda r: r["user"] == "alice"),
        ({"action": "file.write"}, lambda r: r["action"] is AuditAction.FILE_WRITE),
        # Text filters match by prefix: vm.exec finds vm.exec_stream, "vm." every VM action.
        ({"action": "vm.exec"}, lambda r: r["action"] in (AuditAction.EXEC, AuditAction.EXEC_STREAM)),
        ({"action": "vm.exec_"}, lambda r: r["action"] is AuditAction.EXEC_STREAM),
        ({"action": "vm."}, lambda r: r["action"].value.startswith("vm.")),
        ({"user": "al"}, lambda r: r["user"].startswith("al")),
        ({"nodeId": "node-"}, lambda r: True),
        ({"vmId": "vm-1"}, lambda r: r["vm_id"] == "vm-1"),
        ({"nodeId": "node-0"}, lambda r: r["node_id"] == "node-0"),
        ({"outcome": "error"}, lambda r: r["outcome"] is AuditOutcome.ERROR),
        ({"since": _iso(SEED_T0 + 600)}, lambda r: r["started_at"] >= SEED_T0 + 600),
        ({"until": _iso(SEED_T0 + 600)}, lambda r: r["started_at"] < SEED_T0 + 600),
        (
            {"user": "bob", "vmId": "vm-0", "since": _iso(SEED_T0 + 120), "until": _iso(SEED_T0 + 1500)},
            lambda r: r["user"] == "bob" and r["vm_id"] == "vm-0" and SEED_T0 + 120 <= r["started_at"] < SEED_T0 + 1500,
        ),
    ]
    for filt, keep in cases:
        rows = await _query_all(stack, filt, page_size=4)
        expected = [f"echo seed-{i}" for i, r in reversed(list(enumerate(seeded))) if keep(r)]
        # "since" also matches rows written now (none are written by queries: reads are not audited).
        got = [r["detail"].get("command") for r in rows if r["detail"].get("command", "").startswith("echo seed-")]
        assert got == expected, (filt, got, expected)
        assert len(rows) == len(expected) or "since" in filt, filt

    for bad in ({"filter": {"action": "nope"}}, {"filter": {"action": "vm.exec%"}}, {"filter": {"outcome": "fine"}}, {"pageSize": 5000}, {"pageToken": "x"},
                {"filter": {"since": _iso(SEED_T0 + 60), "until": _iso(SEED_T0)}}):  # fmt: skip
        r = await stack.call("QueryAudit", bad)
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument", (bad, r.text)


@pytest.mark.trio
async def test_export_is_json_lines_without_secrets(stack: Stack) -> None:
    # Actions carrying secrets, refused (viewer) but audited as denied: the secrets must not be recorded.
    refused = (
        ("ResetGuestPassword", {"vmId": "vm-0", "username": "root", "password": GUEST_PASSWORD}),
        ("WriteGuestFile", {"vmId": "vm-0", "path": "/etc/x", "content": base64.b64encode(FILE_CONTENT).decode()}),
        ("ExecuteScript", {"vmId": "vm-0", "command": "env", "environment": {"K": ENV_VALUE}, "stdin": base64.b64encode(STDIN).decode()}),
    )  # fmt: skip
    for method, body in refused:
        r = await stack.call(method, body, who="viewer", service=VM)
        assert r.status_code == 403, r.text
    await stack.ok(
        "RegisterNode",
        {"nodeId": "host-a", "url": "http://127.0.0.1:1", "token": NODE_SECRET},
        who="node",
        service=NODES,
    )
    created = await stack.ok("CreateToken", {"user": "carol", "role": "operator", "labels": {"env": "dev"}})
    await stack.ok("RevokeToken", {"tokenId": created["info"]["id"]})

    r = await stack.export()
    assert r.status_code == 200 and r.headers["content-type"].startswith(NDJSON_CONTENT_TYPE)
    lines = r.text.splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses on its own
    assert r.text.endswith("\n") and all(line.startswith("{") for line in lines)
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids), "oldest first"
    actions = [row["action"] for row in rows]
    assert actions[:SEED_ROWS] == [_seed_row(i)["action"].value for i in range(SEED_ROWS)]
    assert {"vm.password_reset", "file.write", "vm.exec", "node.register", "token.create", "token.revoke"} <= set(
        actions
    )
    reset = next(row for row in rows if row["action"] == "vm.password_reset")
    assert reset["outcome"] == "denied" and reset["detail"]["username"] == "root" and reset["user"] == "viewer"
    write = next(row for row in rows if row["action"] == "file.write" and row["outcome"] == "denied")
    assert write["detail"]["sha256"] == hashlib.sha256(FILE_CONTENT).hexdigest() and write["detail"]["size"] == len(
        FILE_CONTENT
    )
    create = next(row for row in rows if row["action"] == "token.create")
    assert create["detail"] == {"target": "carol", "labels": {"env": "dev"}, "flags": ["role=operator"]}
    assert create["outcome"] == "success" and create["user"] == "admin"

    secrets = [
        *stack.tokens.values(),
        created["token"],
        GUEST_PASSWORD,
        FILE_CONTENT.decode(),
        ENV_VALUE,
        STDIN.decode(),
        NODE_SECRET,
    ]
    secrets += [base64.b64encode(s.encode()).decode() for s in (GUEST_PASSWORD, FILE_CONTENT.decode(), STDIN.decode())]
    for secret in secrets:
        assert secret not in r.text
    for token in [*stack.tokens.values(), created["token"]]:  # nor what the store keeps of a token
        assert hashlib.sha256(token.encode()).hexdigest() not in r.text
        assert base64.b64encode(hashlib.sha256(token.encode()).digest()).decode() not in r.text

    # The Connect stream says the same, in chunks of whole lines.
    messages, end = await stack.stream("ExportAudit", {})
    assert "error" not in end
    streamed = "".join(m["jsonl"] for m in messages)
    assert all(m["jsonl"].endswith("\n") and m["jsonl"].count("\n") == m["count"] for m in messages)
    assert [json.loads(line)["id"] for line in streamed.splitlines()] == ids

    # Filters, on both.
    r = await stack.export({"user": "alice", "action": "vm.exec", "since": _iso(SEED_T0), "until": str(SEED_T0 + 900)})
    got = [json.loads(line) for line in r.text.splitlines()]
    want = [
        i for i in range(15) if _seed_row(i)["user"] == "alice" and _seed_row(i)["action"].value.startswith("vm.exec")
    ]
    assert [g["detail"]["command"] for g in got] == [f"echo seed-{i}" for i in want]
    messages, _ = await stack.stream("ExportAudit", {"filter": {"vmId": "vm-2", "outcome": "success"}})
    lines = [json.loads(line) for m in messages for line in m["jsonl"].splitlines()]
    assert lines and all(x["vmId"] == "vm-2" and x["outcome"] == "success" for x in lines)
    for bad in ({"since": "yesterday"}, {"colour": "red"}, {"action": "nope"}):
        r = await stack.export(bad)
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text

    curl = shutil.which("curl")
    if curl is not None:
        argv = [
            curl,
            "-sS",
            "-H",
            f"Authorization: Bearer {stack.tokens['admin']}",
            f"{stack.url}{AUDIT_EXPORT_PATH}?vmId=vm-1",
        ]
        proc = await trio.run_process(argv, capture_stdout=True)
        assert [json.loads(line)["vmId"] for line in proc.stdout.decode().splitlines()] == ["vm-1"] * 10


# ---------------------------------------------------------------- who may


@pytest.mark.trio
async def test_auth_matrix(stack: Stack) -> None:
    await stack.ok(
        "RegisterNode",
        {"nodeId": "host-m", "url": "http://127.0.0.1:1", "token": NODE_SECRET},
        who="node",
        service=NODES,
    )
    calls = {
        "QueryAudit": {},
        "CreateToken": {"user": "mallory", "role": "admin"},
        "ListTokens": {},
        "RevokeToken": {"tokenId": "0123456789ab"},
        "RemoveNode": {"nodeId": "host-m"},
    }
    for method, body in calls.items():
        for who, status, code in (
            (None, 401, "unauthenticated"),
            ("lqx_0123456789ab_" + "A" * 43, 401, "unauthenticated"),
            ("viewer", 403, "permission_denied"),
            ("operator", 403, "permission_denied"),
            ("scoped_admin", 403, "permission_denied"),
            ("node", 403, "permission_denied"),
        ):
            r = await stack.call(method, body, who=who)
            assert (r.status_code, r.json()["code"]) == (status, code), (method, who, r.text)
    for who in ("viewer", "operator", "scoped_admin", "node", None):
        _, end = await stack.stream("ExportAudit", {}, who=who)
        assert end["error"]["code"] == ("unauthenticated" if who is None else "permission_denied"), who
        r = await stack.export(who=who)
        assert r.status_code == (401 if who is None else 403) and "\n{" not in r.text, (who, r.text)
    # Nothing changed: mallory has no token, the node is still there.
    tokens = (await stack.ok("ListTokens", {}))["tokens"]
    assert "mallory" not in {t["user"] for t in tokens}
    assert [n["nodeId"] for n in (await stack.ok("ListNodes", {}, service=NODES))["nodes"]] == ["host-m"]
    # The refused changes are audited as denied, by whom.
    denied = await _query_all(stack, {"outcome": "denied"}, page_size=50)
    by_action = {(r["action"], r["user"]) for r in denied}
    for action in ("token.create", "token.revoke", "node.remove"):
        for who in ("viewer", "operator", "scoped_admin", "node"):
            assert (action, who) in by_action, (action, who)
    assert not any(r["action"] == "token.create" and r["outcome"] == "success" for r in denied)


@pytest.mark.trio
async def test_whoami_for_every_role(stack: Stack) -> None:
    """Any valid token may ask who it is; the permissions are the role's, less what a scope takes away."""
    admin = await stack.ok("WhoAmI", {})
    assert (admin["user"], admin["role"]) == ("admin", "admin") and len(admin["tokenId"]) == 12
    assert {"audit.read", "token.manage", "vm.password_reset", "vm.exec"} <= set(admin["permissions"])
    viewer = await stack.ok("WhoAmI", {}, who="viewer")
    assert viewer["role"] == "viewer" and viewer["permissions"] == ["command.read", "node.read", "vm.read"]
    scoped = await stack.ok("WhoAmI", {}, who="scoped_admin")
    assert scoped["role"] == "admin" and scoped["labelScope"]
    assert "audit.read" not in scoped["permissions"] and "vm.exec" in scoped["permissions"]
    node = await stack.ok("WhoAmI", {}, who="node")
    assert node["permissions"] == ["node.register"]
    r = await stack.call("WhoAmI", {}, who=None)
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")


# ---------------------------------------------------------------- tokens


@pytest.mark.trio
async def test_create_list_revoke_token(stack: Stack) -> None:
    created = await stack.ok("CreateToken", {"user": "dave", "role": "viewer", "description": "dashboards"})
    info, token = created["info"], created["token"]
    assert token.startswith(f"lqx_{info['id']}_") and info["role"] == "viewer" and info["active"] is True
    stack.tokens["dave"] = token
    # It authenticates, with its role: reads yes, exec no, admin no.
    assert (await stack.ok("ListVMs", {}, who="dave", service=VM))["vms"] == []
    r = await stack.call("ExecuteScript", {"vmId": "vm-0", "command": "true"}, who="dave", service=VM)
    assert r.status_code == 403
    assert (await stack.call("ListTokens", {}, who="dave")).status_code == 403

    # An admin token made through the API can do admin things; a scoped one only VM things.
    admin2 = (await stack.ok("CreateToken", {"user": "erin", "role": "admin"}))["token"]
    assert (await stack.call("ListTokens", {}, who=admin2)).status_code == 200
    scoped = await stack.ok("CreateToken", {"user": "erin", "role": "admin", "labels": {"env": "prod"}})
    assert scoped["info"]["labelScope"] == {"env": "prod"}
    assert (await stack.call("ListTokens", {}, who=scoped["token"])).status_code == 403

    listed = (await stack.ok("ListTokens", {"user": "dave"}))["tokens"]
    assert [t["id"] for t in listed] == [info["id"]] and listed[0]["description"] == "dashboards"
    assert listed[0]["lastUsedAt"]  # it was used above
    everything = await stack.call("ListTokens", {})
    for token in [*stack.tokens.values(), admin2, scoped["token"]]:
        # lqx_<id>_<secret>: the secret itself may contain "_" (base64url).
        secret = token.split("_", 2)[2] if token.startswith("lqx_") else token
        assert len(secret) >= 24 and secret not in everything.text

    revoked = await stack.ok("RevokeToken", {"tokenId": info["id"]})
    assert revoked["active"] is False and revoked["revokedAt"]
    r = await stack.call("ListVMs", {}, who="dave", service=VM)  # at once
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert (await stack.ok("RevokeToken", {"tokenId": info["id"]}))["revokedAt"] == revoked["revokedAt"]  # idempotent
    assert [t["id"] for t in (await stack.ok("ListTokens", {"user": "dave", "activeOnly": True}))["tokens"]] == []

    for bad, status in (
        ({"user": "frank", "role": "root"}, 400),
        ({"user": "", "role": "viewer"}, 400),
        ({"user": "frank", "role": "viewer", "labels": {"bad key": "x"}}, 400),
    ):
        r = await stack.call("CreateToken", bad)
        assert r.status_code == status, (bad, r.text)
    assert (await stack.call("RevokeToken", {"tokenId": "not-an-id"})).status_code == 400
    r = await stack.call("RevokeToken", {"tokenId": "0123456789ab"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    rows = await _query_all(stack, {"action": "token.revoke"})
    assert [(r["outcome"], r["detail"]["target"]) for r in rows] == [
        ("error", "0123456789ab"), ("success", info["id"]), ("success", info["id"])
    ]  # fmt: skip


# ---------------------------------------------------------------- nodes


@pytest.mark.trio
async def test_remove_node(stack: Stack) -> None:
    for node in ("host-a", "host-b"):
        body = {"nodeId": node, "url": "http://127.0.0.1:1", "token": NODE_SECRET, "vms": [{"vmId": f"{node}-vm"}]}
        await stack.ok("RegisterNode", body, who="node", service=NODES)
    assert len((await stack.ok("ListVMs", {}, service=VM))["vms"]) == 2
    await stack.ok("RemoveNode", {"nodeId": "host-a"})
    assert [n["nodeId"] for n in (await stack.ok("ListNodes", {}, service=NODES))["nodes"]] == ["host-b"]
    # host-a's VM stays listed, gone (issue 13); calls for it say so.
    listed = (await stack.ok("ListVMs", {}, service=VM))["vms"]
    assert [(v["vmId"], v["nodeId"], v["state"]) for v in listed] == [
        ("host-a-vm", "host-a", "gone"),
        ("host-b-vm", "host-b", "running"),
    ]
    r = await stack.call("PingAgent", {"vmId": "host-a-vm"}, service=VM)
    assert r.status_code == 503 and "vm_gone" in r.text
    r = await stack.call("RemoveNode", {"nodeId": "host-a"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert (await stack.call("RemoveNode", {"nodeId": ""})).status_code == 400
    # A heartbeat from the removed node is told to register again.
    r = await stack.call("Heartbeat", {"nodeId": "host-a"}, who="node", service=NODES)
    assert r.status_code == 404
    rows = await _query_all(stack, {"action": "node.remove"})
    assert [(r["nodeId"], r["outcome"], r["user"]) for r in rows] == [
        ("host-a", "error", "admin"),
        ("host-a", "success", "admin"),
    ]


@pytest.mark.trio
async def test_ids_are_one_rule_what_is_listed_can_be_named(stack: Stack) -> None:
    """protocol.limits.check_id is the rule of a VM or node id (128 bytes of UTF-8): a node
    cannot list a VM that no request could name (129-255 characters were taken), and an id
    cut for an audit row says so."""
    longest, accented = "v" * 128, "\u00e9" * 64  # both 128 bytes
    body = {"nodeId": "host-a", "url": "http://127.0.0.1:1", "token": NODE_SECRET}
    await stack.ok("RegisterNode", {**body, "vms": [{"vmId": longest}, {"vmId": accented}]}, who="node", service=NODES)
    assert sorted(v["vmId"] for v in (await stack.ok("ListVMs", {}, service=VM))["vms"]) == sorted([longest, accented])
    for vm_id in (longest, accented):  # named in a request: found (its node is down), not refused
        r = await stack.call("PingAgent", {"vmId": vm_id}, service=VM)
        assert r.status_code != 400 and r.json()["code"] != "invalid_argument", r.text
    # Bytes, not characters: 100 characters, 200 bytes; and 129 bytes. Refused, nothing changed.
    for vm_id in ("\u00e9" * 100, "v" * 129):
        for method, request in (
            ("RegisterNode", {**body, "vms": [{"vmId": vm_id}]}),
            ("Heartbeat", {"nodeId": "host-a", "vms": [{"vmId": vm_id}]}),
        ):
            r = await stack.call(method, request, who="node", service=NODES)
            assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
            assert "bytes; the limit is 128" in r.json()["message"]
    assert sorted(v["vmId"] for v in (await stack.ok("ListVMs", {}, service=VM))["vms"]) == sorted([longest, accented])
    # A node id over the bound is refused at registration (audited: its row names it cut, marked).
    long_node = "n" * 300
    r = await stack.call("RegisterNode", {**body, "nodeId": long_node, "vms": []}, who="node", service=NODES)
    assert r.status_code == 400 and "node id 'nnn" in r.json()["message"] and "300 bytes" in r.json()["message"], r.text
    assert [n["nodeId"] for n in (await stack.ok("ListNodes", {}, service=NODES))["nodes"]] == ["host-a"]
    r = await stack.call("RemoveNode", {"nodeId": long_node})
    assert r.status_code == 400 and "300 bytes" in r.json()["message"]
    cut = "n" * 125 + "\u2026"  # 128 bytes with the mark: not taken for a node that exists
    rows = [r for r in await _query_all(stack, {"action": "node.register"}) if r["nodeId"] != "host-a"]
    assert [(r["nodeId"], r["outcome"], r["detail"]["target"], r["detail"]["truncated"]) for r in rows] == [
        (cut, "error", cut, True)
    ]
    # A malformed id in RemoveNode is refused before its audit row, as an empty one is.
    assert await _query_all(stack, {"action": "node.remove"}) == []
    # An id with spaces or controls is refused, and not recorded as an audit target.
    r = await stack.call("RemoveNode", {"nodeId": "host a\x1b"})
    assert r.status_code == 400 and "must be printable, without spaces" in r.json()["message"]


@pytest.mark.trio
async def test_a_node_id_is_bound_to_the_node_token_that_registered_it(stack: Stack) -> None:
    """Another hostd's token cannot take over a node id (and so its VMs' routing) while the
    first is valid; revoking the first frees the id; an admin may act for any node."""
    first = await stack.ok("CreateToken", {"user": "hostd-a", "role": "node"})
    second = await stack.ok("CreateToken", {"user": "hostd-b", "role": "node"})
    body = {"nodeId": "host-a", "url": "http://127.0.0.1:1", "token": NODE_SECRET, "vms": [{"vmId": "a-vm"}]}
    await stack.ok("RegisterNode", body, who=first["token"], service=NODES)
    await stack.ok("Heartbeat", {"nodeId": "host-a", "vms": [{"vmId": "a-vm"}]}, who=first["token"], service=NODES)
    hijack = {**body, "url": "http://127.0.0.1:2", "vms": [{"vmId": "a-vm"}, {"vmId": "planted"}]}
    for method, request in (("RegisterNode", hijack), ("Heartbeat", {"nodeId": "host-a", "vms": hijack["vms"]})):
        r = await stack.call(method, request, who=second["token"], service=NODES)
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "permission_denied"
        assert r.json()["details"][0]["debug"]["reason"] == "node_owned"
        assert first["info"]["id"] in r.json()["message"]
    nodes = (await stack.ok("ListNodes", {}, service=NODES))["nodes"]
    assert [(n["nodeId"], n["url"], n["vmCount"]) for n in nodes] == [("host-a", "http://127.0.0.1:1", 1)]
    denied = await _query_all(stack, {"action": "node.register", "outcome": "denied"})
    assert [r["user"] for r in denied] == ["hostd-b"]
    # An admin may re-register it (the binding stays with the first token) ...
    await stack.ok("RegisterNode", {**body, "url": "http://127.0.0.1:3"}, service=NODES)
    assert (await stack.call("RegisterNode", hijack, who=second["token"], service=NODES)).status_code == 403
    # ... and once the first token is revoked, another node token may take the id.
    await stack.ok("RevokeToken", {"tokenId": first["info"]["id"]})
    await stack.ok("RegisterNode", hijack, who=second["token"], service=NODES)
    r = await stack.call("RegisterNode", body, who=first["token"], service=NODES)
    assert r.status_code == 401  # revoked


# ---------------------------------------------------------------- restart


@pytest.mark.trio
async def test_restart_keeps_tokens_and_audit(stack: Stack) -> None:
    kept = await stack.ok("CreateToken", {"user": "gina", "role": "operator"})
    gone = await stack.ok("CreateToken", {"user": "gina", "role": "operator"})
    await stack.ok("RevokeToken", {"tokenId": gone["info"]["id"]})
    before = (await stack.export()).text
    tokens_before = (await stack.ok("ListTokens", {}))["tokens"]

    await stack.restart()

    assert (await stack.export()).text == before
    tokens_after = (await stack.ok("ListTokens", {}))["tokens"]
    assert [(t["id"], t["active"]) for t in tokens_after] == [(t["id"], t["active"]) for t in tokens_before]
    assert (await stack.call("ListVMs", {}, who=kept["token"], service=VM)).status_code == 200
    assert (await stack.call("ListVMs", {}, who=gone["token"], service=VM)).status_code == 401
    assert (await stack.call("ListTokens", {}, who="scoped_admin")).status_code == 403
