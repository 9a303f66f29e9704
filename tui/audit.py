"""The audit log (admin): recent actions, newest first, filterable."""

from __future__ import annotations

from typing import Any, Final

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Input

from .client import ApiError
from .format import guest
from .screen import LqxScreen


__all__ = ["AuditScreen"]

_OUTCOME_STYLES: Final = {"success": "green", "error": "red", "denied": "bold red", "pending": "yellow", "cancelled": "yellow"}
#: Filter inputs → the API's AuditFilter fields.
_FILTERS: Final = (("user", "user"), ("action", "action"), ("vmId", "VM"), ("outcome", "outcome"))


def _what(record: dict[str, Any]) -> str:
    detail = record.get("detail", {})
    if detail.get("command"):
        return " ".join([detail["command"], *detail.get("args", [])]).replace("\n", "⏎ ")[:80]
    parts = [detail.get(k, "") for k in ("path", "username", "target")]
    parts += detail.get("flags", [])
    if detail.get("sha256"):
        parts.append(f"sha256 {detail['sha256'][:12]}…")
    return " ".join(p for p in parts if p)[:80]


class AuditScreen(LqxScreen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("ctrl+l", "load", "Reload", priority=True)]


    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="audit-filters"):
            for key, label in _FILTERS:
                yield Input(placeholder=label, id=f"filter-{key}", compact=True)
        table: DataTable[str | Text] = DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = "audit log"
        self.query_one("#audit", DataTable).add_columns("When UTC", "User", "Action", "VM", "Outcome", "Exit", "ms", "What")
        if self.lqx.poll:  # a still app (snapshots, benchmarks) is fed through show()
            self.action_load()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_load()

    def action_load(self) -> None:
        filt = {key: self.query_one(f"#filter-{key}", Input).value.strip() for key, _ in _FILTERS}
        self.run_worker(self._load(filt), group="audit", exclusive=True)

    async def _load(self, filt: dict[str, str]) -> None:
        try:
            records = await self.lqx.client.query_audit(filt)
        except ApiError as exc:
            self.lqx.report(exc, "Audit")
            return
        self.show(records)

    def show(self, records: list[dict[str, Any]]) -> None:
        table = self.query_one("#audit", DataTable)
        table.clear()
        for r in records:
            outcome = r.get("outcome", "")
            # Text, never str: a command such as grep "[/]" is not markup; controls shown.
            table.add_row(
                r.get("startedAt", "").replace("T", " ").rstrip("Z")[5:16],
                guest(r.get("user", "")),
                guest(r.get("action", "")),
                guest(r.get("vmId", "") or r.get("nodeId", "") or "-"),
                guest(outcome, _OUTCOME_STYLES.get(outcome, "")),
                "" if r.get("exitCode") is None else str(r["exitCode"]),
                str(r.get("durationMs", "")),
                guest(_what(r)),
                key=str(r.get("id")),
            )
        self.notify(f"{len(records)} audit rows", timeout=2)
