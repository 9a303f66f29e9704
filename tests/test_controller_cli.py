"""``limiquantix-controller token ...`` on a real database file: its ``main`` in the test's
process (tests/inprocess.py), and as a real process once (test_help)."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from inprocess import run_main

from limiquantix.controller.__main__ import main
from limiquantix.controller._models import AuditAction, AuditOutcome, AuditQuery, VMInfo
from limiquantix.controller.store import SQLiteStore
from limiquantix.protocol import errors


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(main, *args)


def cli_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The same as a real process (``python -m limiquantix.controller``)."""
    return subprocess.run(
        [sys.executable, "-m", "limiquantix.controller", *args], capture_output=True, text=True, timeout=60
    )


def make_db(db: Path) -> Path:
    """A controller database, as ``serve`` leaves it (the token commands never create one)."""

    async def create() -> None:
        async with await SQLiteStore.open(db):
            pass

    trio.run(create)
    return db


def test_token_create_list_revoke(tmp_path: Path) -> None:
    db = make_db(tmp_path / "lib" / "controller.db")
    created = cli("--db", str(db), "token", "create", "--user", "alice", "--role", "operator",
                  "--labels", "env=prod,team=web", "--description", "deploy bot")  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("lqx_") and created.stdout.count("\n") == 1  # the token alone on stdout
    token_id = token.split("_")[1]
    assert f"token {token_id} for alice (operator, limited to env=prod,team=web)" in created.stderr
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    # --db after the subcommand works too.
    viewer = cli("token", "create", "--user", "bob", "--role", "viewer", "--db", str(db))
    assert viewer.returncode == 0, viewer.stderr

    listed = cli("--db", str(db), "token", "list")
    assert listed.returncode == 0
    assert token_id in listed.stdout and "deploy bot" in listed.stdout and "env=prod,team=web" in listed.stdout
    assert token not in listed.stdout and token[17:] not in listed.stdout  # never the secret
    as_json = [json.loads(line) for line in cli("--db", str(db), "token", "list", "--json").stdout.splitlines()]
    assert {r["user"] for r in as_json} == {"alice", "bob"}
    assert next(r for r in as_json if r["id"] == token_id)["labelScope"] == {"env": "prod", "team": "web"}

    revoked = cli("token", "revoke", token_id, "--db", str(db))
    assert revoked.returncode == 0 and f"revoked {token_id}" in revoked.stderr
    active = cli("--db", str(db), "token", "list", "--active").stdout
    assert token_id not in active and "bob" in active

    async def check() -> None:
        async with await SQLiteStore.open(db) as store:
            with pytest.raises(errors.Unauthenticated):
                await store.authenticate(token)
            rows = (await store.query_audit(AuditQuery(oldest_first=True))).records
            assert [r.action for r in rows] == [
                AuditAction.TOKEN_CREATE,
                AuditAction.TOKEN_CREATE,
                AuditAction.TOKEN_REVOKE,
            ]
            assert all(r.outcome is AuditOutcome.SUCCESS and r.user.startswith("local:") for r in rows)
            assert rows[0].detail.target == "alice" and "role=operator" in rows[0].detail.flags
            assert rows[2].detail.target == token_id

    trio.run(check)


def test_cli_errors(tmp_path: Path) -> None:
    db = str(make_db(tmp_path / "c.db"))
    unknown = cli("--db", db, "token", "revoke", "000000000000")
    assert unknown.returncode == 1 and "not_found" in unknown.stderr and "Traceback" not in unknown.stderr
    bad_labels = cli("--db", db, "token", "create", "--user", "a", "--role", "viewer", "--labels", "env")
    assert bad_labels.returncode == 2 and "key=value" in bad_labels.stderr
    bad_role = cli("--db", db, "token", "create", "--user", "a", "--role", "root")
    assert bad_role.returncode == 2
    bad_user = cli("--db", db, "token", "create", "--user", "a b", "--role", "viewer")
    assert bad_user.returncode == 2 and "bad user name" in bad_user.stderr
    newer = make_db(tmp_path / "newer.db")
    assert cli("--db", str(newer), "token", "list").returncode == 0
    import sqlite3

    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    refused = cli("--db", str(newer), "token", "list")
    assert refused.returncode == 1 and "newer than this controller" in refused.stderr


def test_vm_remove(tmp_path: Path) -> None:
    """`vm remove` offline, as AdminService/RemoveVM: a gone VM goes (audited vm.remove); one its
    reachable node still reports, an unknown one and a bad timeout are refused, nothing removed."""
    db = make_db(tmp_path / "c.db")

    async def seed() -> None:
        async with await SQLiteStore.open(db) as store:
            await store.register_node("host-a", url="http://host-a:8081", token="secret-a")
            await store.heartbeat("host-a", [VMInfo(vm_id="web-1"), VMInfo(vm_id="web-2")])
            await store.heartbeat("host-a", [VMInfo(vm_id="web-1")])  # web-2: gone

    trio.run(seed)
    reported = cli("--db", str(db), "vm", "remove", "web-1")
    assert reported.returncode == 1 and "failed_precondition" in reported.stderr and "still reports" in reported.stderr
    unknown = cli("--db", str(db), "vm", "remove", "nope")
    assert unknown.returncode == 1 and "not_found" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = cli("--db", str(db), "vm", "remove", "web-2", "--heartbeat-timeout-s", "0")
    assert bad.returncode == 2 and "--heartbeat-timeout-s must be > 0" in bad.stderr
    removed = cli("--db", str(db), "vm", "remove", "web-2")
    assert removed.returncode == 0 and "removed VM web-2 (node host-a)" in removed.stderr, removed.stderr

    async def check() -> None:
        async with await SQLiteStore.open(db) as store:
            assert [vm.vm_id for _, vm in await store.list_vms()] == ["web-1"]
            rows = (await store.query_audit(AuditQuery(action=AuditAction.VM_REMOVE, oldest_first=True))).records
            assert [(r.vm_id, r.node_id, r.outcome, r.source_address) for r in rows] == [
                ("web-1", "host-a", AuditOutcome.ERROR, "local-cli"),
                ("web-2", "host-a", AuditOutcome.SUCCESS, "local-cli"),
            ]
            assert all(r.user.startswith("local:") for r in rows)

    trio.run(check)


def test_token_commands_never_create_a_database(tmp_path: Path) -> None:
    """`token list` with a wrong or missing --db says so; it does not create an empty database
    (nor its directory) that no controller reads."""
    for args in (
        ("token", "list"), ("token", "create", "--user", "a", "--role", "viewer"), ("token", "revoke", "x"),
        ("vm", "remove", "x"),
    ):  # fmt: skip
        missing = tmp_path / "nowhere" / "controller.db"
        out = cli("--db", str(missing), *args)
        assert out.returncode == 1 and f"no controller database at {missing}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and not missing.parent.exists()
    # Without --db: the default path, named as the default (this test's machine has none there).
    if not Path("/var/lib/limiquantix/controller.db").exists():
        out = cli("token", "list")
        assert out.returncode == 1 and "(the default; pass --db PATH" in out.stderr, out.stderr
        assert not Path("/var/lib/limiquantix/controller.db").exists()


def test_serve_refuses_a_missing_database_directory(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "controller.db"
    out = cli("serve", "--db", str(missing), "--listen", "127.0.0.1:0", "--config", "/dev/null")
    assert out.returncode == 2 and f"the database's directory {missing.parent} does not exist" in out.stderr, out.stderr
    assert not missing.parent.exists() and "lqx_" not in out.stdout


def test_serve_flags() -> None:
    helped = cli("serve", "--help")
    assert helped.returncode == 0 and "--listen" in helped.stdout and "--heartbeat-timeout-s" in helped.stdout
    bad = cli("serve", "--listen", "nowhere", "--config", "/dev/null")
    assert bad.returncode == 2 and "listen must be host:port" in bad.stderr


def test_port_in_use_is_one_line_and_no_token_is_spent(tmp_path: Path) -> None:
    """A port in use: one line naming the address, exit 1, and no first admin token printed
    (only its hash is kept: a retry could never show it again)."""
    db = tmp_path / "c.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        out = cli("serve", "--listen", address, "--db", str(db), "--config", "/dev/null")
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"limiquantix-controller: unavailable: cannot listen on {address}: Address already in use"
    )
    assert "Traceback" not in out.stderr and "lqx_" not in out.stdout + out.stderr

    async def no_tokens() -> None:
        async with await SQLiteStore.open(db) as store:
            assert await store.list_tokens() == []

    trio.run(no_tokens)


def test_help() -> None:
    out = cli("token", "create", "--help")
    assert out.returncode == 0 and "--labels" in out.stdout and "--db" in out.stdout
    # A refusal as a process: its status, one line, no traceback.
    missing = cli_process("--db", "/nonexistent/controller.db", "token", "list")
    assert missing.returncode == 1 and "no controller database at /nonexistent" in missing.stderr
    assert "Traceback" not in missing.stderr
