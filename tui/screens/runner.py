"""The script runner: one VM streamed live, or several VMs as one fleet run."""

from __future__ import annotations

import asyncio
import time
from typing import Final

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Header, Input, Label, Static, TextArea
from textual.worker import Worker

from limiquantix.protocol._gen.fleet_pb2 import FleetCommand, FleetTarget
from limiquantix.protocol._gen.vm_service_pb2 import ExecuteScriptResponse
from limiquantix.protocol.safetext import safe_text

from ..client import ApiError
from ..format import exit_summary
from ..state import RunRecord
from ..widgets.footer import KeysFooter
from ..widgets.output import OutputLog
from ..widgets.recent_runs import RecentRuns
from .base import LqxScreen

__all__ = ["RunnerScreen"]

DEFAULT_SCRIPT: Final = "uname -a\nuptime\n"
#: Seconds between GetCommand polls of a fleet run.
FLEET_POLL_S: Final = 1.0
_TARGET_STYLES: Final = {
    "success": "green",
    "failed": "red",
    "timed_out": "red",
    "undeliverable": "magenta",
    "cancelled": "yellow",
    "skipped": "dim",
    "in_progress": "cyan",
    "pending": "dim",
}


class RunnerScreen(LqxScreen):
    BINDINGS = [
        Binding("ctrl+r", "run", "Run", priority=True),
        Binding("ctrl+b", "cancel", "Cancel run", priority=True),
        Binding("escape", "back", "Back"),
    ]
    ACTION_PERMISSIONS = {"run": "vm.exec", "cancel": "vm.exec"}

    def __init__(self, vm_ids: list[str]) -> None:
        super().__init__()
        self.vm_ids = vm_ids
        self.fleet = len(vm_ids) > 1
        self.execution_id = ""
        self.command_id = ""
        self.worker: Worker[None] | None = None
        self.targets: dict[str, FleetTarget] = {}

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runner"):
            if self.fleet:
                shown = ", ".join(self.vm_ids[:6]) + (f" … (+{len(self.vm_ids) - 6})" if len(self.vm_ids) > 6 else "")
                yield Label(f"Fleet run on {len(self.vm_ids)} VMs: {shown}", id="runner-title")
            else:
                yield Label(f"Script on {self.vm_ids[0]}", id="runner-title")
            yield TextArea(DEFAULT_SCRIPT, id="script", show_line_numbers=True)
            with Horizontal(id="runner-options"):
                yield Label("timeout s")
                yield Input("60", id="timeout", restrict=r"[0-9]*", max_length=5, compact=True)
                yield Label("run as")
                yield Input(placeholder="(agent's user)", id="run-as", compact=True)
                yield Button("Run ^R", variant="success", id="run", compact=True)
                yield Button("Cancel ^B", variant="error", id="cancel", disabled=True, compact=True)
            yield Static("", id="result")
            with Horizontal(id="runner-bottom"):
                yield OutputLog(id="output")
                if self.fleet:
                    side: DataTable[str | Text] = DataTable(id="side", cursor_type="row", classes="fleet")
                    yield side
                else:
                    yield RecentRuns(id="side")
        yield KeysFooter()

    def on_mount(self) -> None:
        if self.fleet:
            side = self.query_one("#side", DataTable)
            side.add_column("VM", width=16)
            side.add_column("Status", width=13)
            side.add_column("Exit", width=4)
            for vm_id in self.vm_ids:
                vm = self.lqx.fleet.vms.get(vm_id)
                name = (vm.name if vm else "") or vm_id
                side.add_row(
                    Text(safe_text(name if len(name) <= 16 else name[:15] + "…")), Text("-", style="dim"), "", key=vm_id
                )
        else:
            self._show_recent()
        self.query_one("#script", TextArea).focus()

    def _show_recent(self) -> None:
        self.query_one("#side", RecentRuns).show(self.lqx.fleet.recent_runs.get(self.vm_ids[0], ()))

    # -- run -------------------------------------------------------------------------

    def _options(self) -> tuple[str, int, str] | None:
        script = self.query_one("#script", TextArea).text
        if not script.strip():
            self.notify("The script is empty.", severity="warning")
            return None
        raw = self.query_one("#timeout", Input).value or "60"
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
        self.output.start()
        self.query_one("#result", Static).update(Text("running…", style="cyan"))
        self._set_running(True)
        job = self._fleet(*options) if self.fleet else self._stream(*options)
        self.worker = self.run_worker(job, group="run", exclusive=True)

    def _set_running(self, running: bool) -> None:
        self.query_one("#run", Button).disabled = running
        self.query_one("#cancel", Button).disabled = not running

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self.action_run()
        elif event.button.id == "cancel":
            self.run_worker(self.action_cancel())

    @property
    def output(self) -> OutputLog:
        """The output view (every line of output goes through it)."""
        return self.query_one("#output", OutputLog)

    async def _stream(self, script: str, timeout: int, run_as: str) -> None:
        vm_id = self.vm_ids[0]
        record = RunRecord(script=script, started=time.time())
        result: ExecuteScriptResponse | None = None
        try:
            async for event in self.lqx.client.execute_stream(vm_id, script, timeout_s=timeout, run_as=run_as):
                kind = event.WhichOneof("event")
                if kind == "execution_id":
                    self.execution_id = event.execution_id
                elif kind == "output":
                    self.output.feed(event.output.stream or "stdout", event.output.text)
                elif kind == "result":
                    result = event.result
        except ApiError as exc:
            self.output.finish()
            self.query_one("#result", Static).update(Text(f"failed: {safe_text(exc.summary)}", style="bold red"))
            self.lqx.report(exc, "Run")
            record.reason = exc.code
        else:
            self.output.finish()
            if result is not None:
                self._show_result(result, record)
        finally:
            self.execution_id = ""
            self._set_running(False)
            self.lqx.fleet.record_run(vm_id, record)
            self._show_recent()

    def _mark_truncated(self, result: ExecuteScriptResponse | FleetTarget, limit: str) -> None:
        """Say in the output where the guest's cap cut it (it was silently shorter)."""
        cut = {"stdout": result.stdout_truncated, "stderr": result.stderr_truncated}
        self.output.mark_cut([name for name, was in cut.items() if was], limit)

    def _show_result(self, result: ExecuteScriptResponse, record: RunRecord) -> None:
        self._mark_truncated(result, "the guest's 1 MiB cap")
        code = result.exit_code if result.HasField("exit_code") else None  # absent unless the command exited
        reason = result.exit_reason or ("timed_out" if result.timed_out else "exited")
        duration = result.duration_ms
        record.exit_code = code
        record.reason, record.duration_ms = reason, duration
        style = "bold green" if code == 0 and reason == "exited" else "bold red"
        text = Text(exit_summary(result), style=style)
        # "exit code 3   exited": the reason, unless the summary already says it (timed out, cancelled ...).
        text.append(f"   exited   {duration} ms" if code is not None else f"   {duration} ms", style="")
        if result.error:
            text.append(f"   {safe_text(result.error)}", style="red")
        self.query_one("#result", Static).update(text)

    async def _fleet(self, script: str, timeout: int, run_as: str) -> None:
        client = self.lqx.client
        try:
            self.command_id = await client.run_command(self.vm_ids, script, timeout_s=timeout, run_as=run_as)
            while True:
                command = await client.get_command(self.command_id)
                self._show_fleet(command)
                if command.status not in ("pending", "in_progress"):
                    break
                await asyncio.sleep(FLEET_POLL_S)
        except ApiError as exc:
            self.query_one("#result", Static).update(Text(f"failed: {safe_text(exc.summary)}", style="bold red"))
            self.lqx.report(exc, "Fleet run")
        finally:
            self._set_running(False)

    def _show_fleet(self, command: FleetCommand) -> None:
        side = self.query_one("#side", DataTable)
        for target in command.targets:
            vm_id = target.vm_id
            self.targets[vm_id] = target
            status = target.status or "pending"
            code = target.exit_code if target.HasField("exit_code") else None
            if vm_id in self.vm_ids:
                side.update_cell(vm_id, side.ordered_columns[1].key, Text(status, style=_TARGET_STYLES.get(status, "")))
                side.update_cell(vm_id, side.ordered_columns[2].key, "" if code is None else str(code))
        counts = command.counts
        summary = Text(f"{command.command_id}  {command.status}   ", style="bold")
        summary.append("  ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v))
        self.query_one("#result", Static).update(summary)
        self._show_target_output()

    def _show_target_output(self) -> None:
        side = self.query_one("#side", DataTable)
        if not self.fleet or not (0 <= side.cursor_row < len(self.vm_ids)):
            return
        target = self.targets.get(self.vm_ids[side.cursor_row])
        output = self.output
        output.start()
        if target is None:
            return
        duration = f", {target.duration_ms} ms" if target.duration_ms else ""
        output.note(f"── {target.vm_id}: {target.status}{duration}")
        output.show_lines("stdout", target.stdout)
        output.show_lines("stderr", target.stderr)
        self._mark_truncated(target, "64 KiB per VM kept by the controller")
        if target.error:
            output.note(target.error, "magenta")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.fleet:
            self._show_target_output()

    # -- cancel / back -----------------------------------------------------------------

    async def action_cancel(self) -> None:
        if not self.running:
            self.notify("Nothing is running.", severity="information", timeout=2)
            return
        try:
            if self.fleet and self.command_id:
                await self.lqx.client.cancel_command(self.command_id)
                self.notify("Fleet run cancelled.", timeout=3)
            elif self.execution_id:
                found = await self.lqx.client.cancel_execution(self.vm_ids[0], self.execution_id)
                self.notify("Cancelled." if found else "It had already ended.", timeout=3)
            elif self.worker is not None:
                self.worker.cancel()  # closing the stream cancels the command in the guest
        except ApiError as exc:
            self.lqx.report(exc, "Cancel")
            if self.worker is not None and not self.fleet:
                self.worker.cancel()

    def action_back(self) -> None:
        if self.running and not self.fleet:
            self.notify("Still running: ctrl+b cancels it, then escape.", severity="warning")
            return
        self.app.pop_screen()
