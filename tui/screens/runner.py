"""The script runner: one VM streamed live, or several VMs as one fleet run, each VM's output live.

A run is a :class:`~._jobs.Job` of the app, not of this screen: escape leaves it running (``j``
lists the jobs and opens one again here). The output is an
:class:`~.widgets.output.OutputPane` (search, copy, save; only visible lines drawn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Header, Input, Label, Static, TextArea

from limiquantix.protocol import safe_text
from limiquantix.protocol._gen.fleet_pb2 import FleetTarget
from limiquantix.protocol._gen.vm_service_pb2 import ExecuteScriptResponse

from .._format import exit_cell
from .._jobs import STATE_STYLES, Job, cancel_job, start_job
from .._workers import run_async
from ..state import RunRecord
from ..widgets.footer import KeysFooter
from ..widgets.output import OutputBuffer, OutputPane, OutputView
from ..widgets.path_dialog import load_with_dialog
from ..widgets.recent_runs import RecentRuns
from .base import LqxScreen

__all__ = ["RunnerScreen"]

DEFAULT_SCRIPT: Final = "uname -a\nuptime\n"
DEFAULT_TIMEOUT_S: Final = 60


class RunnerScreen(LqxScreen):
    BINDINGS = [
        Binding("ctrl+r", "run", "Run", priority=True),
        Binding("ctrl+b", "cancel", "Cancel run", priority=True),
        Binding("ctrl+o", "load", "Open script"),
        Binding("escape", "back", "Back"),
    ]
    ACTION_PERMISSIONS = {"run": "vm.exec", "cancel": "vm.exec", "load": "vm.exec"}

    def __init__(self, vm_ids: list[str], *, job: Job | None = None) -> None:
        """``job``: show this job (opened from the jobs list) rather than a new editor."""
        super().__init__()
        self.vm_ids = list(job.vm_ids) if job is not None else vm_ids
        self.fleet = len(self.vm_ids) > 1
        self.job: Job | None = None
        self._opened = job
        self._shown: dict[str, tuple[str, str]] = {}
        """A fleet run's (status, exit code) per VM as the table shows them."""
        self._empty = OutputBuffer()
        """What the view shows before any run (and for a VM a fleet run has no output of)."""

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def targets(self) -> dict[str, FleetTarget]:
        """The fleet run's targets as last heard of."""
        return self.job.targets if self.job is not None else {}

    @property
    def execution_id(self) -> str:
        return self.job.execution_id if self.job is not None else ""

    @property
    def view(self) -> OutputView:
        return self.query_one("#output", OutputView)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runner"):
            if self.fleet:
                shown = ", ".join(self.vm_ids[:6]) + (f" … (+{len(self.vm_ids) - 6})" if len(self.vm_ids) > 6 else "")
                yield Label(safe_text(f"Fleet run on {len(self.vm_ids)} VMs: {shown}"), id="runner-title")
            else:
                yield Label(safe_text(f"Script on {self.vm_ids[0]}"), id="runner-title")
            yield TextArea(DEFAULT_SCRIPT, id="script", show_line_numbers=True)
            with Horizontal(id="runner-options"):
                yield Label("timeout s")
                yield Input(str(DEFAULT_TIMEOUT_S), id="timeout", restrict=r"[0-9]*", max_length=5, compact=True)
                yield Label("run as")
                yield Input(placeholder="(agent's user)", id="run-as", compact=True)
                yield Button("Run ^R", variant="success", id="run", compact=True)
                yield Button("Cancel ^B", variant="error", id="cancel", disabled=True, compact=True)
            yield Static("", id="result")
            with Horizontal(id="runner-bottom"):
                yield OutputPane(id="output-pane")
                if self.fleet:
                    side: DataTable[str | Text] = DataTable(id="side", cursor_type="row", classes="fleet")
                    yield side
                else:
                    yield RecentRuns(id="side")
        yield KeysFooter()

    def on_mount(self) -> None:
        if self.fleet:
            side = self.query_one("#side", DataTable)
            side.add_column("VM", width=15)
            side.add_column("Status", width=13)
            side.add_column("Exit", width=5)  # "SIG15"
            for vm_id in self.vm_ids:
                vm = self.lqx.fleet.vms.get(vm_id)
                name = (vm.name if vm else "") or vm_id
                side.add_row(
                    Text(safe_text(name if len(name) <= 15 else name[:14] + "…")), Text("-", style="dim"), "", key=vm_id
                )
        else:
            self._show_recent()
        self.view.attach(self._empty)
        if self._opened is not None:
            self._fill_editor(self._opened.script, self._opened.timeout_s, self._opened.run_as)
            self._show_job(self._opened)
            self.view.focus()
        else:
            self.query_one("#script", TextArea).focus()

    def on_unmount(self) -> None:
        if self.job is not None and self._job_changed in self.job.listeners:
            self.job.listeners.remove(self._job_changed)  # the job goes on without this screen

    # -- recent runs: re-run, edit ----------------------------------------------------------

    def _recent(self) -> list[RunRecord]:
        return list(self.lqx.fleet.recent_runs.get(self.vm_ids[0], ()))

    def _show_recent(self) -> None:
        self.query_one("#side", RecentRuns).show(self._recent())

    def on_recent_runs_rerun(self, message: RecentRuns.Rerun) -> None:
        self.rerun(message.index)

    def on_recent_runs_edit(self, message: RecentRuns.Edit) -> None:
        self.edit(message.index)

    def _fill_editor(self, script: str, timeout_s: int, run_as: str) -> None:
        self.query_one("#script", TextArea).load_text(script)
        self.query_one("#timeout", Input).value = str(timeout_s)
        self.query_one("#run-as", Input).value = run_as

    def _load_recent(self, index: int) -> bool:
        """Recent run ``index`` into the editor (script, timeout, user); False if there is none."""
        recent = self._recent()
        if not 0 <= index < len(recent):
            return False
        run = recent[index]
        self._fill_editor(run.script, run.timeout_s, run.run_as)
        return True

    def edit(self, index: int) -> None:
        """Recent run ``index`` into the editor, to change and run."""
        if self._load_recent(index):
            self.query_one("#script", TextArea).focus()
            self.notify("Loaded into the editor: ctrl+r runs it.", timeout=3)

    def rerun(self, index: int) -> None:
        """Recent run ``index`` again, as it was."""
        if self._load_recent(index):
            self.action_run()

    def action_load(self) -> None:
        """A local file into the editor (ctrl+o)."""

        def loaded(text: str, path: Path) -> None:
            self.query_one("#script", TextArea).load_text(text)
            self.query_one("#script", TextArea).focus()
            self.notify(f"Loaded {path} ({len(text.splitlines())} lines).", timeout=3)

        load_with_dialog(self, loaded, title="Load a script from a local file")

    # -- run -------------------------------------------------------------------------

    def _options(self) -> tuple[str, int, str] | None:
        script = self.query_one("#script", TextArea).text
        if not script.strip():
            self.notify("The script is empty.", severity="warning")
            return None
        raw = self.query_one("#timeout", Input).value or str(DEFAULT_TIMEOUT_S)
        timeout = int(raw)
        if not 1 <= timeout <= 86400:
            self.notify("The timeout must be 1-86400 seconds.", severity="warning")
            return None
        return script, timeout, self.query_one("#run-as", Input).value.strip()

    def action_run(self) -> None:
        if self.running:
            self.notify("A run is in progress (ctrl+b cancels it).", severity="warning")
            return
        options = self._options()
        if options is None:
            return
        script, timeout, run_as = options
        self._show_job(start_job(self.lqx, self.vm_ids, script, timeout_s=timeout, run_as=run_as))

    def _show_job(self, job: Job) -> None:
        """Show ``job``: its output (a fleet run: the highlighted VM's), state and targets."""
        if self.job is not None and self._job_changed in self.job.listeners:
            self.job.listeners.remove(self._job_changed)
        self.job = job
        self._shown.clear()
        job.listeners.append(self._job_changed)
        if self.fleet:
            self._show_target_output()
        else:
            self.view.attach(job.output)
        self._show_state(job)

    def _job_changed(self, job: Job) -> None:
        if job is self.job and self.is_mounted:
            self._show_state(job)

    def _show_state(self, job: Job) -> None:
        self._set_running(job.running)
        if self.fleet:
            self._show_fleet(job)
        else:
            self._show_result(job)
            if not job.running:
                self._show_recent()

    def _set_running(self, running: bool) -> None:
        self.query_one("#run", Button).disabled = running
        self.query_one("#cancel", Button).disabled = not running

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self.action_run()
        elif event.button.id == "cancel":
            run_async(self, self.action_cancel)

    def _show_result(self, job: Job) -> None:
        result_line = self.query_one("#result", Static)
        if job.running:
            result_line.update(Text("running…", style="cyan"))
            return
        result = job.result
        if not isinstance(result, ExecuteScriptResponse):
            result_line.update(Text(safe_text(job.summary), style="bold red"))
            return
        duration = result.duration_ms
        style = "bold green" if job.state == "success" else "bold red"
        text = Text(job.summary, style=style)
        # "exit code 3   exited": the reason, unless the summary already says it (timed out, cancelled ...).
        text.append(f"   exited   {duration} ms" if result.HasField("exit_code") else f"   {duration} ms", style="")
        if result.error:
            text.append(f"   {safe_text(result.error)}", style="red")
        result_line.update(text)

    def _show_fleet(self, job: Job) -> None:
        side = self.query_one("#side", DataTable)
        for vm_id, target in job.targets.items():
            status = target.status or "pending"
            code = exit_cell(target)
            # Only the rows that changed: a job tells of every event, and a run has hundreds of VMs.
            if vm_id in self.vm_ids and self._shown.get(vm_id) != (status, code):
                self._shown[vm_id] = (status, code)
                side.update_cell(vm_id, side.ordered_columns[1].key, Text(status, style=STATE_STYLES.get(status, "")))
                side.update_cell(vm_id, side.ordered_columns[2].key, code)
        summary = Text(f"{job.command_id or 'starting'}  ", style="bold")
        summary.append(job.state if not job.running else "running", style=STATE_STYLES.get(job.state, ""))
        if job.summary and not job.running:
            summary.append(f"   {safe_text(job.summary)}")
        elif job.targets:
            counts: dict[str, int] = {}
            for target in job.targets.values():
                status = target.status or "pending"
                counts[status] = counts.get(status, 0) + 1
            summary.append("   " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        self.query_one("#result", Static).update(summary)

    def _show_target_output(self) -> None:
        side = self.query_one("#side", DataTable)
        if not self.fleet or not (0 <= side.cursor_row < len(self.vm_ids)):
            return
        vm_id = self.vm_ids[side.cursor_row]
        self.view.attach(self.job.buffer_for(vm_id) if self.job is not None else self._empty)

    @on(DataTable.RowHighlighted, "#side")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.fleet:
            self._show_target_output()

    # -- cancel / back -----------------------------------------------------------------

    async def action_cancel(self) -> None:
        if self.job is None or not self.job.running:
            self.notify("Nothing is running.", severity="information", timeout=2)
            return
        await cancel_job(self.lqx, self.job)

    def action_back(self) -> None:
        if self.running:
            self.notify("The run goes on in the background: j lists the jobs.", timeout=4)
        self.app.pop_screen()
