"""The jobs list (``j`` anywhere): every run started here, running or recently ended."""

from __future__ import annotations

from typing import Final

from rich.cells import cell_len
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

__all__ = ["JobsScreen", "column_widths"]

#: Seconds between redraws of the durations of running jobs.
TICK_S = 1.0
#: The columns in order, by key: their labels.
_LABELS: Final = {"id": "#", "state": "State", "vms": "VMs", "script": "Script", "result": "Result", "time": "Time"}
#: The widths of the columns whose width is fixed (ids up to 9999; "cancelled" is the longest
#: state; age_s() writes at most "119 min").
_FIXED: Final = {"id": 4, "state": 9, "time": 7}
#: The widest the VMs and Result columns get; the narrowest each one keeps when the screen is
#: too narrow for them all (then the script, the long free text, is cut first, to SCRIPT_MIN).
VMS_MAX, VMS_MIN = 18, 8
RESULT_MAX, RESULT_MIN = 40, 11  # "exit code 0"
SCRIPT_MIN: Final = 6
#: Each cell's padding (DataTable's cell_padding, on both sides) and the vertical scrollbar,
#: kept free so that the last column is not under it once the list is longer than the screen.
_PADDING: Final = 1
_SCROLLBAR: Final = 2


def column_widths(width: int, vms: list[str], scripts: list[str], results: list[str]) -> dict[str, int]:
    """Each column's content width on a table ``width`` cells wide: #, State and Time fixed,
    VMs and Result as wide as their widest cell (up to VMS_MAX, RESULT_MAX), the script
    what is left (as wide as its widest, at least SCRIPT_MIN); when even that does not fit
    (60 columns), Result and then VMs give up cells down to their minimum, so that every
    column shows (cells cut end in "…")."""
    widths = dict(_FIXED)
    widths["vms"] = max(min(VMS_MAX, max(map(cell_len, vms), default=0)), len("VMs"))
    widths["result"] = max(min(RESULT_MAX, max(map(cell_len, results), default=0)), len("Result"))
    room = width - _SCROLLBAR - 2 * _PADDING * len(_LABELS) - sum(widths.values())
    widths["script"] = max(SCRIPT_MIN, len("Script"), min(room, max(map(cell_len, scripts), default=0)))
    over = sum(widths.values()) + 2 * _PADDING * len(_LABELS) + _SCROLLBAR - width
    for key, least in (("result", RESULT_MIN), ("vms", VMS_MIN)):
        if over > 0:
            give = min(over, max(0, widths[key] - least))
            widths[key] -= give
            over -= give
    return widths


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
        self._widths: dict[str, int] = {}
        """The columns' widths shown (set by :meth:`_show_jobs`: the screen's width and the jobs')."""
        self.lqx.jobs.listeners.append(self._changed)
        self._show_jobs()
        self.set_interval(TICK_S, self._tick)
        self.query_one("#jobs", DataTable).focus()

    def on_resize(self) -> None:
        self._show_jobs()

    def on_unmount(self) -> None:
        if self._changed in self.lqx.jobs.listeners:
            self.lqx.jobs.listeners.remove(self._changed)

    @staticmethod
    def _texts(job: Job) -> tuple[str, str, str]:
        """The job's VMs, script and result as shown (guest text escaped), before any cut."""
        vms = job.vm_ids[0] if not job.fleet else f"{len(job.vm_ids)} VMs"
        return safe_text(vms), safe_text(job.first_line), safe_text(job.summary)

    def _row(self, job: Job) -> tuple[str | Text, ...]:
        vms, script, result = self._texts(job)
        return (
            str(job.id),
            Text(job.state, style=STATE_STYLES.get(job.state, "")),
            _cut(vms, self._widths["vms"]),
            _cut(script, self._widths["script"]),
            _cut(result, self._widths["result"]),
            age_s(job.duration_s),
        )

    def _changed(self) -> None:
        if self.is_mounted:
            self._show_jobs()

    def _show_jobs(self) -> None:
        """Rows follow the list: new jobs added, forgotten ones removed, the others updated in place."""
        table = self.query_one("#jobs", DataTable)
        jobs = {str(job.id): job for job in reversed(self.lqx.jobs.jobs)}  # newest first
        texts = [self._texts(job) for job in jobs.values()]
        vms, scripts, results = ([text[i] for text in texts] for i in range(3))
        # The terminal's width: the table spans it (the screen's own size is 0 until its
        # first layout, which sends it no Resize).
        widths = column_widths(self.app.size.width, vms, scripts, results)
        shown = [row.value for row in table.rows]
        if shown != list(jobs) or widths != self._widths:
            cursor = shown[table.cursor_row] if 0 <= table.cursor_row < len(shown) else None
            # Fixed widths, set again when they change (DataTable's own widths only grow).
            table.clear(columns=widths != self._widths)
            if widths != self._widths:
                self._widths = widths
                for key, label in _LABELS.items():
                    table.add_column(label, width=widths[key], key=key)
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


def _cut(text: str, width: int) -> Text:
    """``text`` in at most ``width`` cells, ending in "…" when cut."""
    out = Text(text)
    if out.cell_len > width:
        out.truncate(width, overflow="ellipsis")
    return out
