"""Administration: ``audit`` (filters, ``--follow``, JSON lines or CSV) and ``tokens``
(list, create, revoke). Both need an admin token."""

from __future__ import annotations

import csv
import json
import sys
import time
from typing import Any

import click

from ._fast import ADMIN, Client
from ._output import print_json, print_table, say, short_time
from ._state import json_option, label_option, labels_dict, pass_client

__all__ = ["COMMANDS", "EXPORT_FIELDS", "export_shape"]

#: The export's fields (``GET /v1/audit/export.jsonl``, ExportAudit), in order: every row
#: this command prints as JSON lines or CSV has them, followed or exported.
EXPORT_FIELDS = (
    "id",
    "startedAt",
    "completedAt",
    "user",
    "tokenId",
    "role",
    "sourceAddress",
    "action",
    "vmId",
    "nodeId",
    "outcome",
    "exitCode",
    "durationMs",
    "error",
    "detail",
)
_PAGE_SIZE = 1000
#: An export's budget (every matching row, streamed), or --request-timeout when longer.
_EXPORT_TIMEOUT_S = 300.0
_INT_FIELDS = ("id", "exitCode", "durationMs")


def export_shape(record: dict[str, Any]) -> dict[str, Any]:
    """A QueryAudit record (proto3 JSON: 64-bit numbers as strings, empty fields left out) in
    the export's shape (numbers, every field present, null when unset)."""
    out: dict[str, Any] = {key: record.get(key) for key in EXPORT_FIELDS}
    for key in _INT_FIELDS:
        if out[key] is not None:
            out[key] = int(out[key])
    for key in ("user", "tokenId", "role", "sourceAddress", "action", "vmId", "nodeId", "outcome", "error"):
        out[key] = out[key] or ""
    out["detail"] = out["detail"] or {}
    return out


def _filter(user: str, action: str, vm: str, node: str, outcome: str, since: str, until: str) -> dict[str, str]:
    values = {"user": user, "action": action, "vmId": vm, "nodeId": node, "outcome": outcome, "since": since}
    values["until"] = until
    return {k: v for k, v in values.items() if v}


def _query(client: Client, filt: dict[str, str], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` matching rows (0: all), newest first, in the export's shape."""
    rows: list[dict[str, Any]] = []
    token = ""
    while True:
        size = _PAGE_SIZE if not limit else min(_PAGE_SIZE, limit - len(rows))
        answer = client.call(ADMIN, "QueryAudit", {"filter": filt, "pageSize": size, "pageToken": token})
        rows.extend(export_shape(r) for r in answer.get("records", ()))
        token = answer.get("nextPageToken", "")
        if not token or (limit and len(rows) >= limit):
            return rows


def _newer(client: Client, filt: dict[str, str], after: int) -> list[dict[str, Any]]:
    """Rows with an id above ``after``, oldest first (pages read until an older row shows)."""
    rows: list[dict[str, Any]] = []
    token = ""
    while True:
        answer = client.call(ADMIN, "QueryAudit", {"filter": filt, "pageSize": _PAGE_SIZE, "pageToken": token})
        page = [export_shape(r) for r in answer.get("records", ())]
        rows.extend(r for r in page if r["id"] > after)
        token = answer.get("nextPageToken", "")
        if not token or any(r["id"] <= after for r in page):
            return sorted(rows, key=lambda r: r["id"])


class _Printer:
    """Rows to stdout in one format; a table's header only once."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._csv = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None
        self._header = False
        self._widths: list[int] = []
        """A table's column widths so far: rows followed later line up under the header."""

    def rows(self, rows: list[dict[str, Any]]) -> None:
        if self._csv is not None:
            if not self._header:
                self._csv.writerow(EXPORT_FIELDS)
            for r in rows:
                cells = [json.dumps(r[k], ensure_ascii=True) if k == "detail" else r[k] for k in EXPORT_FIELDS]
                self._csv.writerow(["" if c is None else c for c in cells])
        elif self.fmt == "jsonl":
            for r in rows:
                sys.stdout.write(json.dumps(r, ensure_ascii=True) + "\n")
        elif rows or not self._header:
            table = [
                (
                    r["id"],
                    short_time(r["startedAt"]),
                    r["user"],
                    r["action"],
                    r["vmId"],
                    r["outcome"],
                    "" if r["exitCode"] is None else r["exitCode"],
                    "" if r["durationMs"] is None else r["durationMs"],
                    r["error"] or _detail_text(r["detail"]),
                )
                for r in rows
            ]
            headers = ("ID", "STARTED", "USER", "ACTION", "VM", "OUTCOME", "EXIT", "MS", "DETAIL")
            print_table(headers, table, header=not self._header, widths=self._widths)
        self._header = True
        sys.stdout.flush()


def _detail_text(detail: dict[str, Any]) -> str:
    for key in ("command", "path", "username", "target"):
        if detail.get(key):
            return f"{key}: {detail[key]}"
    return ""


@click.command("audit", short_help="Show, follow or export the audit log.")
@click.option("--user", default="", help="rows of users whose name starts with this")
@click.option("--action", default="", help="actions starting with this (vm.exec finds vm.exec_stream; file.)")
@click.option("--vm", default="", help="rows of VMs whose id starts with this")
@click.option("--node", default="", help="rows of nodes whose id starts with this")
@click.option(
    "--outcome",
    type=click.Choice(["pending", "success", "failure", "error", "denied", "cancelled", "unknown"]),
    help="rows with this outcome",
)
@click.option("--since", default="", metavar="RFC3339", help="rows started at or after (2024-05-01T00:00:00Z)")
@click.option("--until", default="", metavar="RFC3339", help="rows started before")
@click.option("--limit", type=click.IntRange(0), default=50, help="the newest N rows (0: all); an export takes all")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "jsonl", "csv"]),
    default="table",
    help="table, or JSON lines / CSV in the export's shape (every matching row, oldest first)",
)
@click.option("--follow", "-f", is_flag=True, help="keep printing new rows as they are recorded (Ctrl-C ends: 130)")
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=2.0, help="seconds between polls with --follow")
@pass_client
def audit_cmd(
    client: Client,
    user: str,
    action: str,
    vm: str,
    node: str,
    outcome: str | None,
    since: str,
    until: str,
    limit: int,
    fmt: str,
    follow: bool,
    interval: float,
) -> None:
    """Show or export the controller's audit log (admin token).

    \b
      limiquantix audit --action vm.exec --since 2024-05-01T00:00:00Z
      limiquantix audit --format jsonl > audit.jsonl
      limiquantix audit --outcome denied --follow
    """
    filt = _filter(user, action, vm, node, outcome or "", since, until)
    printer = _Printer(fmt)
    if fmt == "table":
        rows = list(reversed(_query(client, filt, limit)))
    else:
        rows = []
        for chunk in client.stream(
            ADMIN, "ExportAudit", {"filter": filt}, timeout_s=max(client.request_timeout_s, _EXPORT_TIMEOUT_S)
        ):
            rows.extend(json.loads(line) for line in chunk.get("jsonl", "").splitlines() if line)
        rows = [{key: r.get(key) for key in EXPORT_FIELDS} for r in rows]
    printer.rows(rows)
    if not follow:
        return
    # A row is recorded when its action starts and completed later: follow by id (increasing,
    # never reused); a row still pending when printed is not printed again.
    last = max((r["id"] for r in rows), default=0)
    if not rows:
        latest = _query(client, filt, 1)
        last = latest[0]["id"] if latest else 0
    while True:  # until Ctrl-C (130, as tail -f under a shell)
        time.sleep(interval)
        new = _newer(client, filt, last)
        if new:
            printer.rows(new)
            last = new[-1]["id"]


@click.group("tokens", short_help="List, create and revoke API tokens.")
def tokens_group() -> None:
    """API tokens: list, create, revoke (admin token)."""


@tokens_group.command("list")
@click.option("--user", default="", help="only this user's tokens")
@click.option("--active", is_flag=True, help="leave out revoked tokens")
@json_option
@pass_client
def tokens_list(client: Client, user: str, active: bool, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    tokens = client.call(ADMIN, "ListTokens", {"user": user, "activeOnly": active}).get("tokens", [])
    if as_json:
        print_json(tokens)
        return
    rows = [
        (
            t.get("id", ""),
            t.get("user", ""),
            t.get("role", ""),
            ",".join(f"{k}={v}" for k, v in sorted(t.get("labelScope", {}).items())) or "every VM",
            "yes" if t.get("active") else "revoked",
            short_time(t.get("lastUsedAt", "")),
            t.get("description", ""),
        )
        for t in tokens
    ]
    print_table(("ID", "USER", "ROLE", "SCOPE", "ACTIVE", "LAST USED", "DESCRIPTION"), rows)


@tokens_group.command("create")
@click.option("--user", required=True, help="the token's user (created when new)")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "admin", "node"]), help="its role")
@label_option("limit the token to VMs carrying this label (repeatable)", server_checked=True)
@click.option("--description", default="", help="what the token is for")
@json_option
@pass_client
def tokens_create(
    client: Client, user: str, role: str, labels: tuple[str, ...], description: str, as_json: bool
) -> None:
    """Create a token: the secret is printed once on stdout, alone on its line (store it:
    it cannot be shown again). Its id and scope go to stderr.

    \b
      limiquantix tokens create --user ci --role operator --label env=staging > ci.token
    """
    answer = client.call(
        ADMIN, "CreateToken", {"user": user, "role": role, "labels": labels_dict(labels), "description": description}
    )
    if as_json:
        print_json(answer)
        return
    info = answer.get("info", {})
    print(f"token {info.get('id', '')} for {user} ({role}) created; the secret follows, shown once", file=sys.stderr)
    say(answer.get("token", ""))


@tokens_group.command("revoke")
@click.argument("token_id")
@json_option
@pass_client
def tokens_revoke(client: Client, token_id: str, as_json: bool) -> None:
    """Revoke a token by its id (effective at its next call)."""
    answer = client.call(ADMIN, "RevokeToken", {"tokenId": token_id})
    if as_json:
        print_json(answer)
    else:
        say(f"token {token_id} of {answer.get('user', '')} revoked")


COMMANDS = (audit_cmd, tokens_group)
