"""``limiquantix-controller``: the HTTP API, and administration on the controller's database.

::

    limiquantix-controller token create --user alice --role operator [--labels env=prod] [--description TEXT]
    limiquantix-controller token list [--active] [--json]
    limiquantix-controller token revoke ID
    limiquantix-controller vm remove ID [--heartbeat-timeout-s S]          # forget a gone VM
    limiquantix-controller serve [--listen HOST:PORT] [--db PATH] [--config FILE] ...   # the HTTP API
    limiquantix-controller pki ca [--dir DIR] [--force]                      # a small CA (ca.pem, ca.key)
    limiquantix-controller pki server NAME [--dns NAME]... [--ip ADDR]... [--dir DIR] [--force]
    limiquantix-controller pki client NAME [--cn NAME] [--dir DIR] [--force]

``pki`` is for installs without their own PKI: a CA and the certificates for
the controller, each hostd (server: its DNS names and IPs; default this host's
name, localhost, 127.0.0.1 and ::1) and their mutual-TLS client certificates (a
hostd's common name is its node id). Files go to ``--dir`` (default
``/etc/limiquantix/pki``) as ``NAME.pem`` and ``NAME.key``, mode 0600; an
existing file is never replaced without ``--force``. See controller/README.md.

Every command takes ``--db PATH`` (default ``/var/lib/limiquantix/controller.db``):
``serve`` creates it (mode 0600) in an existing directory; the token and vm commands
refuse a database that does not exist rather than create an empty one. They work while the controller runs (SQLite WAL, busy
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
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final

import trio

from limiquantix.protocol import __version__, errors

from ._audit import AuditEntry, AuditTrail
from ._auth import Principal, Role, parse_labels
from ._models import AuditAction, AuditDetail, TokenInfo, iso_time
from .store import DEFAULT_DB_PATH, DEFAULT_HEARTBEAT_TIMEOUT_S, SQLiteStore, Store

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
        description="LimiQuantix control plane: the HTTP API (serve), API tokens and the VM inventory.",
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
    vm = commands.add_parser("vm", parents=[common], help="remove a VM that is gone from the inventory")
    vm_cmds = vm.add_subparsers(dest="vm_command", required=True, metavar="ACTION")
    remove = vm_cmds.add_parser(
        "remove",
        parents=[common],
        help="forget a VM whose node no longer reports it, or is unreachable (AdminService/RemoveVM offline)",
    )
    remove.add_argument("vm_id", metavar="ID")
    remove.add_argument(
        "--heartbeat-timeout-s",
        type=float,
        default=None,
        metavar="S",
        help="a node silent this long is unreachable (default: the controller's default, 35)",
    )
    _add_pki_parser(commands)
    return p


def _add_pki_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # pki imports cryptography's x509 (~0.06 s of CPU): only the commands that build this
    # parser pay for it, never ``serve`` (every controller start).
    from . import pki

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir", type=Path, default=pki.DEFAULT_PKI_DIR, help=f"CA and certificates (default {pki.DEFAULT_PKI_DIR})"
    )
    where.add_argument("--force", action="store_true", help="replace files that exist")
    cmd = commands.add_parser("pki", help="a small CA and the TLS certificates of the controller and each hostd")
    actions = cmd.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    ca = actions.add_parser("ca", parents=[where], help="create the CA (ca.pem, ca.key)")
    ca.add_argument("--name", default="LimiQuantix CA", help="the CA's common name")
    ca.add_argument("--days", type=int, default=pki.DEFAULT_CA_DAYS, help=f"validity (default {pki.DEFAULT_CA_DAYS})")
    dns, ips = pki.default_server_names()
    server = actions.add_parser(
        "server", parents=[where], help="an HTTPS certificate for the controller or a hostd (NAME.pem, NAME.key)"
    )
    server.add_argument("name", metavar="NAME", help="file name and common name (e.g. controller, hostd-node-1)")
    server.add_argument(
        "--dns", action="append", default=[], help=f"a DNS name clients use (repeatable; default {', '.join(dns)})"
    )
    server.add_argument(
        "--ip", action="append", default=[], help=f"an IP address clients use (repeatable; default {', '.join(ips)})"
    )
    server.add_argument(
        "--days", type=int, default=pki.DEFAULT_CERT_DAYS, help=f"validity (default {pki.DEFAULT_CERT_DAYS})"
    )
    client = actions.add_parser(
        "client",
        parents=[where],
        help="a client certificate for mutual TLS: the controller's (calling hostd) or a hostd's (calling the controller)",
    )
    client.add_argument("name", metavar="NAME", help="file name (e.g. controller-client, node-1-client)")
    client.add_argument("--cn", default="", help="common name (a hostd's: its node id; default NAME)")
    client.add_argument(
        "--days", type=int, default=pki.DEFAULT_CERT_DAYS, help=f"validity (default {pki.DEFAULT_CERT_DAYS})"
    )


def _pki(args: argparse.Namespace) -> int:
    """``pki ca|server|client``.

    Raises:
        pki.PKIError: refused or failed (the message says why).
    """
    from . import pki

    if args.days < 1:
        raise pki.PKIError("--days must be at least 1")
    if args.pki_command == "ca":
        issued = pki.create_ca(args.dir, common_name=args.name, days=args.days, force=args.force)
        print(f"created the CA {issued.cert} (key {issued.key}, keep it off the hosts)", file=sys.stderr)
        return 0
    if args.pki_command == "server":
        default_dns, default_ips = pki.default_server_names()
        dns, ips = args.dns, args.ip
        if not dns and not ips:
            dns, ips = default_dns, default_ips
        issued = pki.issue(
            args.dir, args.name, pki.CertKind.SERVER, dns_names=dns, ip_addresses=ips, days=args.days, force=args.force
        )
        print(f"issued {issued.cert} (key {issued.key}) for {', '.join([*dns, *ips])}", file=sys.stderr)
        return 0
    issued = pki.issue(args.dir, args.name, pki.CertKind.CLIENT, common_name=args.cn, days=args.days, force=args.force)
    print(f"issued client certificate {issued.cert} (key {issued.key}) for {args.cn or args.name}", file=sys.stderr)
    return 0


def _cli_principal() -> Principal:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry, no LOGNAME
        login = "unknown"
    return Principal(user=f"local:{login}", token_id="", role=Role.ADMIN)


def _audited(
    store: Store, action: AuditAction, detail: AuditDetail | None = None, *, vm_id: str = "", node_id: str = ""
) -> AbstractAsyncContextManager[AuditEntry]:
    """The command's audit row, as the API's (user ``local:<login>``, source ``local-cli``).

    Raises:
        AuditWriteFailed: the row could not be written (nothing is changed).
    """
    return AuditTrail(store).action(
        _cli_principal(), CLI_SOURCE_ADDRESS, action, vm_id=vm_id, node_id=node_id, detail=detail
    )


async def _token_create(store: Store, args: argparse.Namespace) -> int:
    role = Role(args.role)
    scope = parse_labels(args.labels) if args.labels else None
    await store.ensure_user(args.user)
    detail = AuditDetail(target=args.user, labels=scope or {}, flags=(f"role={role.value}",))
    async with _audited(store, AuditAction.TOKEN_CREATE, detail):
        info, token = await store.create_token(
            user=args.user, role=role, label_scope=scope, description=args.description
        )
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
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())
    return 0


async def _token_revoke(store: Store, args: argparse.Namespace) -> int:
    async with _audited(store, AuditAction.TOKEN_REVOKE, AuditDetail.naming(args.token_id)):
        info = await store.revoke_token(args.token_id)
    print(f"revoked {info.id} ({info.user}, {info.role.value})", file=sys.stderr)
    return 0


def _existing_db(args: argparse.Namespace) -> Path:
    """The database the token commands work on: it must exist (``serve`` creates it).

    Raises:
        errors.FailedPrecondition: it does not; a typo in ``--db``, or no ``--db`` on a host
            whose controller keeps it elsewhere, would otherwise create an empty database
            (and its directory) that no controller reads.
    """
    db = Path(getattr(args, "db", DEFAULT_DB_PATH))
    if not db.is_file():
        given = "" if hasattr(args, "db") else " (the default; pass --db PATH where `serve` keeps it)"
        raise errors.FailedPrecondition(
            f"no controller database at {db}{given}: `limiquantix-controller serve --db {db}` creates it"
        )
    return db


async def _vm_remove(store: Store, args: argparse.Namespace) -> int:
    """As AdminService/RemoveVM: refused while a reachable node reports the VM; audited ``vm.remove``."""
    timeout_s = args.heartbeat_timeout_s
    if timeout_s is None:
        timeout_s = DEFAULT_HEARTBEAT_TIMEOUT_S
    if not timeout_s > 0:
        raise errors.InvalidArgument("--heartbeat-timeout-s must be > 0")
    route = await store.node_for_vm(args.vm_id, heartbeat_timeout_s=timeout_s)
    async with _audited(store, AuditAction.VM_REMOVE, vm_id=args.vm_id, node_id=route.node_id):
        await store.remove_vm(args.vm_id, heartbeat_timeout_s=timeout_s)
    print(f"removed VM {args.vm_id} (node {route.node_id})", file=sys.stderr)
    return 0


async def _run(args: argparse.Namespace) -> int:
    db = _existing_db(args)
    async with await SQLiteStore.open(db) as store:
        if args.command == "vm":
            return await _vm_remove(store, args)
        handler = {"create": _token_create, "list": _token_list, "revoke": _token_revoke}[args.token_command]
        return await handler(store, args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # serve has its own flags (every key of controller.toml); daemon parses them.
        from ._daemon import main as serve_main

        return serve_main(argv[1:])
    args = build_arg_parser().parse_args(argv)
    if args.command == "pki":
        from . import pki

        try:
            return _pki(args)
        except pki.PKIError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_FAILED
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
