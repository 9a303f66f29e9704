"""The audit log (admin): recent actions, newest first, filterable."""

from __future__ import annotations

from functools import partial
from typing import Final

from google.protobuf import json_format
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Header, Input, Static

from limiquantix.protocol._gen.admin_pb2 import AuditRecord

from .._client import ApiError
from .._format import guest
from .._workers import run_async
from ..widgets.footer import KeysFooter
from .base import LqxScreen

__all__ = ["AUDIT_REFRESH_S", "AuditDetail", "AuditScreen"]

_OUTCOME_STYLES: Final = {
    "success": "green",
    "failure": "red",
    "error": "red",
    "denied": "bold red",
    "pending": "yellow",
    "cancelled": "yellow",
    "unknown": "magenta",
}
#: Seconds between reloads of the audit view while it is shown (new rows appear by themselves).
AUDIT_REFRESH_S: Final = 5.0
#: Filter inputs → the API's AuditFilter fields.
_FILTERS: Final = (("user", "user"), ("action", "action"), ("vm_id", "VM"), ("outcome", "outcome"))


def _what(record: AuditRecord) -> str:
    detail = record.detail
    if detail.command:
        return " ".join([detail.command, *detail.args]).replace("\n", "⏎ ")[:80]
    parts = [detail.path, detail.username, detail.target, *detail.flags]
    if detail.sha256:
        parts.append(f"sha256 {detail.sha256[:12]}…")
    return " ".join(p for p in parts if p)[:80]


class AuditDetail(ModalScreen[None]):
    """One audit row, every field (the table shows a cut of "what")."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Close"), Binding("enter", "app.pop_screen", "Close")]

    def __init__(self, record: AuditRecord) -> None:
        super().__init__()
        self.record = record

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 1), show_header=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")  # the whole value, wrapped: the point of opening a row
        # Every field the row has, by its API name (as curl shows it): the point of opening a row.
        for key, value in _flatten(json_format.MessageToDict(self.record)):
            if value:
                table.add_row(key, guest(value, multiline=True))
        with VerticalScroll(classes="dialog help"):
            yield Static(Text(f"Audit row {self.record.id}", style="bold"), classes="dialog-title")
            yield Static(table)


def _flatten(record: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """``detail.command``-style keys with their values (lists joined), in the API's order."""
    out: list[tuple[str, str]] = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flatten(value, f"{name}.")
        elif isinstance(value, list):
            out.append((name, ", ".join(str(v) for v in value)))
        else:
            out.append((name, str(value)))
    return out


class AuditScreen(LqxScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+l", "load", "Reload", priority=True),
        # priority: the focused table's (or filter's) own enter binding, hidden, came first and
        # took "⏎ Details" out of the footer; action_open applies a filter when one has the focus.
        Binding("enter", "open", "Details", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, AuditRecord] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="audit-filters"):
            for key, label in _FILTERS:
                yield Input(placeholder=label, id=f"filter-{key}", compact=True)
        table: DataTable[str | Text] = DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        yield table
        yield KeysFooter()

    def on_mount(self) -> None:
        self.sub_title = "audit log"
        self.query_one("#audit", DataTable).add_columns(
            "When UTC", "User", "Action", "VM", "Outcome", "Exit", "ms", "What"
        )
        if self.lqx.poll:  # a still app (snapshots, benchmarks) is fed through show()
            self.action_load()
            self.set_interval(AUDIT_REFRESH_S, self._reload)

    def _reload(self) -> None:
        """The periodic reload: quiet (no notification), and not over a load in progress."""
        if not any(w.is_running for w in self.workers if w.group == "audit"):
            self._start_load(quiet=True)

    def action_open(self) -> None:
        """Enter: the row's whole detail; in a filter, apply the filters."""
        if isinstance(self.focused, Input):
            self.action_load()
            return
        table = self.query_one("#audit", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            if key in self.records:
                self.app.push_screen(AuditDetail(self.records[key]))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_load()

    def action_load(self) -> None:
        self._start_load(quiet=False)

    def _start_load(self, *, quiet: bool) -> None:
        filt = {key: self.query_one(f"#filter-{key}", Input).value.strip() for key, _ in _FILTERS}
        # The function, not a coroutine: an exclusive worker replaced before it starts
        # (a reload and a key press in the same tick) never creates its coroutine,
        # where a coroutine object made here would be dropped never awaited.
        run_async(self, partial(self._load, filt, quiet=quiet), group="audit", exclusive=True)

    class Loaded(Message, bubble=False):
        """A QueryAudit answer, drawn in the screen's message loop (as the VM screen's GetVM
        answer is): a screen that is closing gets none, where drawing from the worker raced
        the screen's widgets being removed (NoMatches on '#audit')."""

        def __init__(self, records: list[AuditRecord], *, quiet: bool) -> None:
            super().__init__()
            self.records = records
            self.quiet = quiet

    def on_audit_screen_loaded(self, message: Loaded) -> None:
        self.show(message.records, quiet=message.quiet)

    async def _load(self, filt: dict[str, str], *, quiet: bool = False) -> None:
        try:
            records = await self.lqx.client.query_audit(filt)
        except ApiError as exc:
            if not quiet:
                self.lqx.report(exc, "Audit")
            return
        self.post_message(self.Loaded(records, quiet=quiet))

    def show(self, records: list[AuditRecord], *, quiet: bool = False) -> None:
        table = self.query_one("#audit", DataTable)
        # The cursor stays on its row across reloads (new rows arrive on top).
        keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
        table.clear()
        self.records = {str(r.id): r for r in records}
        for r in records:
            # Text, never str: a command such as grep "[/]" is not markup; controls shown.
            table.add_row(
                r.started_at.ToDatetime().strftime("%m-%d %H:%M") if r.HasField("started_at") else "",
                guest(r.user),
                guest(r.action),
                guest(r.vm_id or r.node_id or "-"),
                guest(r.outcome, _OUTCOME_STYLES.get(r.outcome, "")),
                str(r.exit_code) if r.HasField("exit_code") else "",
                str(r.duration_ms) if r.HasField("duration_ms") else "",
                guest(_what(r)),
                key=str(r.id),
            )
        if keep in self.records:
            table.move_cursor(row=table.get_row_index(keep))
        if not quiet:
            self.notify(f"{len(records)} audit row{'' if len(records) == 1 else 's'}", timeout=2)
