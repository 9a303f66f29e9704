"""``limiquantix-controller``: token administration on the controller's database.

::

    limiquantix-controller token create --user alice --role operator [--labels env=prod] [--description TEXT]
    limiquantix-controller token list [--active] [--json]
    limiquantix-controller token revoke ID
    limiquantix-controller serve [--listen HOST:PORT] [--db PATH] [--config FILE] ...   # the HTTP API

Every command takes ``--db PATH`` (default ``/var/lib/limiquantix/controller.db``,
created mode 0600). They work while the controller runs (SQLite WAL, busy
timeout) and are recorded in the audit log as user ``local:<login>`` from
``local-cli``: whoever can write the database file is an administrator.

Exit status: 0 done, 1 refused or failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio

from limiquantix.protocol import __version__, errors

from .auth import Principal, Role, parse_labels
from .models import AuditAction, AuditDetail, AuditOutcome, TokenInfo, iso_time
from .store import DEFAULT_DB_PATH, SQLiteStore, Store

__all__ = ["build_arg_parser", "main"]

PROG: Final = "limiquantix-controller"
#: What the audit log records as the source of CLI actions.
CLI_SOURCE_ADDRESS: Final = "local-cli"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


def build_arg_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", type=Path, default=argparse.SUPPRESS, help=f"controller database (default {DEFAULT_DB_PATH})"
    )
    p = argparse.ArgumentParser(
        prog=PROG,
        description="LimiQuantix control plane: the HTTP API (serve) and API tokens.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Listed for --help; `serve` and its flags are parsed by daemon.main (see main()).
    commands.add_parser("serve", help="run the controller's HTTP API (serve --help for its flags)")

    token = commands.add_parser("token", parents=[common], help="create, list or revoke API tokens")
    token_cmds = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_cmds.add_parser("create", parents=[common], help="create a token and print it (once)")
    create.add_argument("--user", required=True, help="owner (created when new)")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--labels", default="", metavar="K=V,...", help="limit the token to VMs with these labels")
    create.add_argument("--description", default="", help="what the token is for")
    listing = token_cmds.add_parser("list", parents=[common], help="list tokens (never their secrets)")
    listing.add_argument("--active", action="store_true", help="leave out revoked tokens")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = token_cmds.add_parser("revoke", parents=[common], help="revoke a token at once")
    revoke.add_argument("token_id", metavar="ID")
    return p


def _cli_principal() -> Principal:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry, no LOGNAME
        login = "unknown"
    return Principal(user=f"local:{login}", token_id="", role=Role.ADMIN)


async def _audited(store: Store, action: AuditAction, detail: AuditDetail) -> int:
    return await store.audit_begin(_cli_principal(), source_address=CLI_SOURCE_ADDRESS, action=action, detail=detail)


async def _token_create(store: Store, args: argparse.Namespace) -> int:
    role = Role(args.role)
    scope = parse_labels(args.labels) if args.labels else None
    await store.ensure_user(args.user)
    detail = AuditDetail(target=args.user, labels=scope or {}, flags=(f"role={role.value}",))
    audit_id = await _audited(store, AuditAction.TOKEN_CREATE, detail)
    try:
        info, token = await store.create_token(
            user=args.user, role=role, label_scope=scope, description=args.description
        )
    except errors.AgentError as exc:
        await store.audit_complete(audit_id, outcome=AuditOutcome.ERROR, error=exc.message)
        raise
    await store.audit_complete(audit_id, outcome=AuditOutcome.SUCCESS)
    scope_text = f", limited to {_scope(info)}" if info.label_scope else ""
    print(f"token {info.id} for {info.user} ({info.role.value}{scope_text}); shown once, keep it now:", file=sys.stderr)
    print(token)
    return 0


def _scope(info: TokenInfo) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((info.label_scope or {}).items())) or "-"


async def _token_list(store: Store, args: argparse.Namespace) -> int:
    tokens = await store.list_tokens(include_revoked=not args.active)
    if args.json:
        for t in tokens:
            row = {
                "id": t.id,
                "user": t.user,
                "role": t.role.value,
                "labelScope": dict(t.label_scope) if t.label_scope else None,
                "description": t.description,
                "createdAt": iso_time(t.created_at),
                "lastUsedAt": iso_time(t.last_used_at),
                "revokedAt": iso_time(t.revoked_at),
            }
            print(json.dumps(row, ensure_ascii=False))
        return 0
    header = ("ID", "USER", "ROLE", "SCOPE", "CREATED", "LAST USED", "STATUS", "DESCRIPTION")
    rows = [
        (
            t.id,
            t.user,
            t.role.value,
            _scope(t),
            (iso_time(t.created_at) or "")[:19],
            (iso_time(t.last_used_at) or "never")[:19],
            "active" if t.active else "revoked",
            t.description,
        )
        for t in tokens
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


async def _token_revoke(store: Store, args: argparse.Namespace) -> int:
    audit_id = await _audited(store, AuditAction.TOKEN_REVOKE, AuditDetail(target=args.token_id[:255]))
    try:
        info = await store.revoke_token(args.token_id)
    except errors.AgentError as exc:
        await store.audit_complete(audit_id, outcome=AuditOutcome.ERROR, error=exc.message)
        raise
    await store.audit_complete(audit_id, outcome=AuditOutcome.SUCCESS)
    print(f"revoked {info.id} ({info.user}, {info.role.value})", file=sys.stderr)
    return 0


async def _run(args: argparse.Namespace) -> int:
    db = getattr(args, "db", DEFAULT_DB_PATH)
    async with await SQLiteStore.open(db) as store:
        handler = {"create": _token_create, "list": _token_list, "revoke": _token_revoke}[args.token_command]
        return await handler(store, args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # serve has its own flags (every key of controller.toml); daemon parses them.
        from .daemon import main as serve_main

        return serve_main(argv[1:])
    args = build_arg_parser().parse_args(argv)
    try:
        return trio.run(_run, args)
    except errors.InvalidArgument as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except errors.AgentError as exc:
        print(f"{PROG}: {exc.connect_code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
