"""The jobs list (``j`` anywhere): every run started here, running or recently ended."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Header, Static

from limiquantix.protocol import safe_text

from .._format import age_s
from .._jobs import STATE_STYLES, Job, cancel_job
from ..widgets.footer import KeysFooter
from .base import LqxScreen

__all__ = ["JobsScreen"]

#: Seconds between redraws of the durations of running jobs.
TICK_S = 1.0


class JobsScreen(LqxScreen):
    BINDINGS = [
        # priority: the focused table's own enter binding (hidden) came first and took
        # "⏎ Open" out of the footer.
        Binding("enter", "open", "Open", priority=True),
        Binding("ctrl+b", "cancel", "Cancel job"),
        Binding("escape", "app.pop_screen", "Back"),
    ]
    ACTION_PERMISSIONS = {"cancel": "vm.exec"}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="jobs-count")
        table: DataTable[str | Text] = DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
        yield table
        yield KeysFooter()

    def on_mount(self) -> None:
        table = self.query_one("#jobs", DataTable)
        table.add_column("#", width=4, key="id")
        table.add_column("State", width=11, key="state")
        table.add_column("VMs", width=18, key="vms")
        table.add_column("Script", key="script")
        table.add_column("Result", key="result")
        table.add_column("Time", width=8, key="time")
        self.lqx.jobs.listeners.append(self._changed)
        self._show_jobs()
        self.set_interval(TICK_S, self._tick)
        table.focus()

    def on_unmount(self) -> None:
        if self._changed in self.lqx.jobs.listeners:
            self.lqx.jobs.listeners.remove(self._changed)

    def _row(self, job: Job) -> tuple[str | Text, ...]:
        vms = job.vm_ids[0] if not job.fleet else f"{len(job.vm_ids)} VMs"
        return (
            str(job.id),
            Text(job.state, style=STATE_STYLES.get(job.state, "")),
            Text(safe_text(vms if len(vms) <= 18 else vms[:17] + "…")),
            Text(safe_text(job.first_line)),
            Text(safe_text(job.summary)),
            age_s(job.duration_s),
        )

    def _changed(self) -> None:
        if self.is_mounted:
            self._show_jobs()

    def _show_jobs(self) -> None:
        """Rows follow the list: new jobs added, forgotten ones removed, the others updated in place."""
        table = self.query_one("#jobs", DataTable)
        jobs = {str(job.id): job for job in reversed(self.lqx.jobs.jobs)}  # newest first
        shown = [row.value for row in table.rows]
        if shown != list(jobs):
            cursor = shown[table.cursor_row] if 0 <= table.cursor_row < len(shown) else None
            table.clear()
            for key, job in jobs.items():
                table.add_row(*self._row(job), key=key)
            if cursor in jobs:
                table.move_cursor(row=list(jobs).index(cursor))
        else:
            for key, job in jobs.items():
                for column, value in zip(table.columns, self._row(job), strict=True):
                    table.update_cell(key, column, value)
        running = len(self.lqx.jobs.running)
        self.query_one("#jobs-count", Static).update(
            Text(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}, {running} running", style="bold")
            if jobs
            else Text("No jobs yet: x on a VM (or on selected VMs) opens the runner; ctrl+r runs.", style="dim")
        )

    def _tick(self) -> None:
        if self.lqx.jobs.running:
            self._show_jobs()

    def _selected(self) -> Job | None:
        table = self.query_one("#jobs", DataTable)
        if not 0 <= table.cursor_row < table.row_count:
            return None
        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        return next((job for job in self.lqx.jobs if str(job.id) == key), None)

    def action_open(self) -> None:
        job = self._selected()
        if job is not None:
            from .runner import RunnerScreen

            self.app.push_screen(RunnerScreen(list(job.vm_ids), job=job))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()  # enter on the table (the table's own enter binding comes first)

    async def action_cancel(self) -> None:
        job = self._selected()
        if job is not None:
            await cancel_job(self.lqx, job)
