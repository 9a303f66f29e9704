"""The fleet screen: every VM, live, sortable, filterable, multi-selectable.

Refreshes change only the cells whose text changed, so the table neither
flickers nor loses its cursor or scroll position; the rows are rebuilt only
when the set or order of visible VMs changes (and the cursor stays on its VM).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Input, Static
from textual.widgets.data_table import ColumnKey

from limiquantix.protocol._gen.vm_service_pb2 import VM
from limiquantix.protocol.safetext import safe_text

from ..format import (
    STATE_LABELS,
    STATE_STYLES,
    age_s,
    effective_state,
    percent,
    primary_ip,
    short_os,
    state_text,
    uptime,
    vm_matches,
)
from ..messages import FleetUpdated
from ..widgets.footer import KeysFooter
from ..widgets.table import set_cells
from .audit import AuditScreen
from .base import LqxScreen
from .runner import RunnerScreen
from .vm import VMScreen

__all__ = ["COLUMNS", "FleetScreen"]


def _live(vm: VM) -> bool:
    """Whether the VM's figures are current (its agent connected, its node reachable)."""
    return vm.agent_state == "connected" and vm.node_reachable


def _figure(read: Callable[[VM], float]) -> Callable[[VM], float]:
    """Sort key of a telemetry figure: VMs without current figures (shown ``-``) sort below 0."""
    return lambda vm: read(vm) if _live(vm) else -1.0


#: (key, label, sort key, the narrowest tier showing it) of each column after the selection mark.
COLUMNS: Final[tuple[tuple[str, str, Callable[[VM], Any], int], ...]] = (
    ("name", "Name", lambda vm: (vm.name or vm.vm_id).lower(), 2),
    ("node", "Node", lambda vm: vm.node_id, 0),
    ("state", "State", effective_state, 2),
    ("version", "Agent", lambda vm: vm.agent_version, 0),
    ("os", "OS", lambda vm: vm.os, 1),
    ("ip", "IP", primary_ip, 1),
    ("cpu", "CPU", _figure(lambda vm: vm.cpu_percent), 2),
    ("mem", "Mem", _figure(lambda vm: vm.memory_percent), 2),
    ("uptime", "Uptime", _figure(lambda vm: vm.uptime_seconds), 2),
)
#: Terminal widths below which the table drops to the next tier. Tier 1 (narrow) leaves
#: out Node and Agent (the VM screen shows them), shortens names and OS, and shows whole
#: percents: it fits 80 columns. Tier 2 also leaves out OS and IP: the figures stay
#: whole at 60 columns (they were cut to "Upti").
TIER_BELOW: Final = (110, 72)


def tier(width: int) -> int:
    """The table's tier at a terminal ``width``: 0 every column, 1 narrow, 2 narrowest."""
    return sum(width < below for below in TIER_BELOW)


_STATE_ORDER: Final = (
    "connected",
    "waiting_for_agent",
    "connecting",
    "unresponsive",
    "no_socket",
    "disabled",
    "unreachable",
    "off",
    "gone",
)
_NAME: Final = 1
_SELECTED: Final = Text("✓", style="bold cyan")
#: More VMs gone from view than this at once (a filter typed) and the table is rebuilt.
_MAX_REMOVALS: Final = 32


def _cell(index: int, value: str | Text) -> str | Text:
    """A cell for the table. Text from the API has its controls shown (``safe_text``: a
    guest's OS name or a VM's name cannot drive the terminal); if it could read as markup
    (a ``[``) it becomes Text, so that it is shown as is; other str stay str (the garbage
    collector does not track them). The name cell is always a Text of its own: its
    identity orders the rows (see the sort in :meth:`FleetScreen.fleet_updated`)."""
    if isinstance(value, str):
        value = safe_text(value)
        if index == _NAME or "[" in value:
            return Text(value)
    return value


def _cells(vm: VM, selected: bool, tier: int) -> tuple[str | Text, ...]:
    """The row of one VM: the selection mark, then the :data:`COLUMNS` of ``tier``."""
    live = _live(vm)
    narrow = tier > 0
    name = vm.name or vm.vm_id
    if narrow and len(name) > 14:
        name = name[:13] + "…"
    digits = 0 if narrow else 1
    values: dict[str, str | Text] = {
        "name": name,
        "node": vm.node_id or "-",
        "state": state_text(vm),
        "version": vm.agent_version or "-",
        "os": short_os(vm.os or "-", 12 if narrow else 24),
        "ip": primary_ip(vm),
        "cpu": percent(vm.cpu_percent, connected=live, digits=digits),
        "mem": percent(vm.memory_percent, connected=live, digits=digits),
        "uptime": uptime(vm.uptime_seconds) if live else "-",
    }
    mark: str | Text = _SELECTED if selected else " "
    return (mark, *(values[key] for key, _, _, narrowest in COLUMNS if tier <= narrowest))


class FleetTable(DataTable[str | Text]):
    """The fleet's table; ``enter`` is shown in the footer."""

    BINDINGS = [Binding("enter", "select_cursor", "Details")]


class FleetScreen(LqxScreen):
    """The first screen."""

    BINDINGS = [
        Binding("space", "toggle_selection", "Select"),
        Binding("a", "select_all", "All", show=False),
        Binding("n", "select_none", "None", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse", "Reverse", show=False),
        Binding("x", "run", "Run"),
        Binding("u", "audit", "Audit"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]
    ACTION_PERMISSIONS = {"run": "vm.exec", "audit": "audit.read"}

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""
        self.sort_column = 0
        self.sort_reverse = False
        self._order: list[str] = []
        self._shown: dict[str, tuple[str | Text, ...]] = {}
        self.tier = 0
        """The tier of the table's columns (see TIER_BELOW)."""
        self._keys: tuple[str, ...] = ()
        self._names: dict[str, Text] = {}
        """The name cell in the table of each row (its identity orders the rows)."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="counts")
        yield FleetTable(id="fleet", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter: name, node, state, OS, IP, label=value (escape clears)", id="filter")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self._set_columns()
        self.fleet_updated()

    def _set_columns(self) -> None:
        """The table's columns for the terminal's width (all of them from TIER_BELOW[0] up)."""
        self.tier = tier(self.app.size.width)
        self._keys = ("sel", *(key for key, _, _, narrowest in COLUMNS if self.tier <= narrowest))
        table = self.query_one("#fleet", DataTable)
        table.clear(columns=True)
        table.add_column(" ", key="sel", width=1)
        labels = {key: label for key, label, _, _ in COLUMNS}
        for key in self._keys[1:]:
            table.add_column(labels[key], key=key)
        self._order, self._shown, self._names = [], {}, {}

    def on_resize(self) -> None:
        if self.is_mounted and tier(self.app.size.width) != self.tier:
            self._set_columns()
            self.fleet_updated()

    # -- refresh ---------------------------------------------------------------------

    def _visible(self) -> list[VM]:
        vms = [vm for vm in self.lqx.fleet.vms.values() if vm_matches(vm, self.filter_text)]
        key = COLUMNS[self.sort_column][2]
        vms.sort(key=lambda vm: (key(vm), vm.vm_id), reverse=self.sort_reverse)
        return vms

    def on_fleet_updated(self, message: FleetUpdated) -> None:
        message.prevent_default()  # LqxScreen's handler would draw it all a second time
        started = time.process_time()
        self.fleet_updated()
        # The update's cost as the benchmark reads it: the app's share plus the table's.
        self.lqx.refresh_cpu_s += time.process_time() - started

    def fleet_updated(self) -> None:
        """After each poll (FleetUpdated) and the actions here.

        Rows stay in the table from poll to poll: only the cells whose text
        changed are updated, VMs that left are removed and new ones added (the
        only rows Textual measures), and a new order is a :meth:`DataTable.sort`
        of the rows in place. Rebuilding the table instead (``clear`` +
        ``add_row`` for every VM) costs a measure of every cell and a new layout:
        with 500 VMs sorted by CPU, ~100 ms of CPU on every poll against ~45 ms
        (bench/tui_bench.py).
        """
        self._update_status()
        table = self.query_one("#fleet", DataTable)
        visible = self._visible()
        order = [vm.vm_id for vm in visible]
        selected = self.lqx.fleet.selected
        rows = {vm.vm_id: _cells(vm, vm.vm_id in selected, self.tier) for vm in visible}
        cursor_key = self._order[table.cursor_row] if 0 <= table.cursor_row < len(self._order) else None
        gone = [vm_id for vm_id in self._order if vm_id not in rows]
        if not self._order or len(gone) > _MAX_REMOVALS:
            table.clear()
            self._names = {}
            for vm_id in order:
                self._add(table, vm_id, rows[vm_id])
        else:
            for vm_id in gone:
                table.remove_row(vm_id)
                del self._names[vm_id]
            in_table = [vm_id for vm_id in self._order if vm_id in rows]
            columns = {column.key.value: column for column in table.ordered_columns}
            changed: list[tuple[str, ColumnKey, str | Text]] = []
            for vm_id in order:
                cells, before = rows[vm_id], self._shown.get(vm_id)
                if before is None:
                    self._add(table, vm_id, cells)
                    in_table.append(vm_id)
                    continue
                if before == cells:
                    continue
                for i, value in enumerate(cells):
                    if before[i] != value:
                        cell = _cell(i, value)
                        column = columns[self._keys[i]]
                        if column.auto_width and cell_len(str(cell)) > column.content_width:
                            table.update_cell(vm_id, self._keys[i], cell, update_width=True)
                        else:
                            changed.append((vm_id, column.key, cell))  # set together, one refresh
                        if i == _NAME:
                            self._names[vm_id] = cell  # type: ignore[assignment]  # always a Text (_cell)
            set_cells(table, changed)
            if in_table != order:
                # DataTable.sort passes the key function cells, not row keys: each row's
                # name cell is a Text object of its own, so its id() says which VM it is.
                rank = {id(self._names[vm_id]): i for i, vm_id in enumerate(order)}
                table.sort("name", key=lambda cell: rank[id(cell)])
        self._order = order
        self._shown = rows
        if cursor_key is not None:
            row = order.index(cursor_key) if cursor_key in rows else 0
            if row != table.cursor_row:
                table.move_cursor(row=row, animate=False)

    def _add(self, table: DataTable[str | Text], vm_id: str, cells: tuple[str | Text, ...]) -> None:
        """One row; its name cell is always a Text of its own (see the sort in fleet_updated)."""
        texts = [_cell(i, value) for i, value in enumerate(cells)]
        self._names[vm_id] = texts[_NAME]  # type: ignore[assignment]  # always a Text
        table.add_row(*texts, key=vm_id)

    def _update_status(self) -> None:
        """Counts by state, the total, the selection, the filter and the controller's state,
        packed into as many lines as the width needs (an entry is never split)."""
        app = self.lqx
        counts = Counter(effective_state(vm) for vm in app.fleet.vms.values())
        entries: list[Text] = []
        for state in sorted(counts, key=lambda s: _STATE_ORDER.index(s) if s in _STATE_ORDER else 99):
            entry = Text("● ", style=STATE_STYLES.get(state, ""))
            entry.append(f"{STATE_LABELS.get(state, state)} {counts[state]}")
            entries.append(entry)
        total = Text(f"│ {len(app.fleet.vms)} VMs", style="bold")
        if app.fleet.selected:
            total.append(f", {len(app.fleet.selected)} selected", style="cyan")
        entries.append(total)
        if self.filter_text:
            entries.append(Text(f"│ filter “{self.filter_text}”", style="italic"))
        updated = f"{time.strftime('%H:%M:%S', time.gmtime(app.last_refresh))} UTC" if app.last_refresh else ""
        if app.controller_ok is False and app.last_error is not None:
            what = app.last_error.code.replace("_", " ")
            entries.append(Text(f"│ controller: {what} (retrying)", style="bold red"))
            if updated:
                # How old what is shown is, since the controller stopped answering.
                entries.append(
                    Text(f"│ data from {updated}, {age_s(app.clock() - app.last_refresh)} old", style="yellow")
                )
        elif updated:
            entries.append(Text(f"│ updated {updated}", style="dim"))
        else:
            entries.append(Text("│ connecting…", style="dim"))
        width = max(20, (self.size.width or self.app.size.width) - 2)
        text, line = Text(), 0
        for entry in entries:
            if line and line + 2 + entry.cell_len > width:
                text.append("\n")
                line = 0
            elif line:
                text.append("  ")
                line += 2
            text.append_text(entry)
            line += entry.cell_len
        self.query_one("#counts", Static).update(text)

    # -- actions ---------------------------------------------------------------------

    def _cursor_vm(self) -> str | None:
        table = self.query_one("#fleet", DataTable)
        if 0 <= table.cursor_row < len(self._order):
            return self._order[table.cursor_row]
        return None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        keys = [c[0] for c in COLUMNS]
        if event.column_key.value in keys:  # not the selection mark
            index = keys.index(event.column_key.value)
            self.sort_reverse = not self.sort_reverse if index == self.sort_column else False
            self.sort_column = index
            self._announce_sort()

    def action_open(self) -> None:
        vm_id = self._cursor_vm()
        if vm_id is not None:
            self.app.push_screen(VMScreen(vm_id))

    def action_toggle_selection(self) -> None:
        vm_id = self._cursor_vm()
        if vm_id is None:
            return
        self.lqx.fleet.selected ^= {vm_id}
        table = self.query_one("#fleet", DataTable)
        self.fleet_updated()
        table.move_cursor(row=min(table.cursor_row + 1, len(self._order) - 1), animate=False)

    def action_select_all(self) -> None:
        self.lqx.fleet.selected |= set(self._order)
        self.fleet_updated()

    def action_select_none(self) -> None:
        self.lqx.fleet.selected.clear()
        self.fleet_updated()

    def action_sort(self) -> None:
        self.sort_column = (self.sort_column + 1) % len(COLUMNS)
        self.sort_reverse = False
        self._announce_sort()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._announce_sort()

    def _announce_sort(self) -> None:
        self.notify(f"sorted by {COLUMNS[self.sort_column][1]}{' (reversed)' if self.sort_reverse else ''}", timeout=2)
        self.fleet_updated()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter_text = event.value.strip()
            self.fleet_updated()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.input.display = bool(self.filter_text)
            self.query_one("#fleet", DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.query_one("#fleet", DataTable).focus()
        self.fleet_updated()

    def action_run(self) -> None:
        targets = sorted(self.lqx.fleet.selected) or [vm for vm in [self._cursor_vm()] if vm]
        if targets:
            self.app.push_screen(RunnerScreen(targets))

    def action_audit(self) -> None:
        if not self.lqx.may("audit.read"):
            self.notify("The audit log needs an admin token.", severity="warning")
            return
        self.app.push_screen(AuditScreen())
