"""limiquantix-tui driven by Textual's Pilot against a real stack.

The stack is real and started here: a controller process (SQLite file), a hostd
process registered with it, and simulated VMs (real agents on ptys). The TUI
talks to the controller over HTTP on loopback like an operator's would. These
tests run under asyncio (Textual's world: ``pytest.mark.anyio``), beside the
trio tests (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import hostile_guest
import httpx
import pytest
from procstack import DEADLINE_S, VMS, Stack, run_stack
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Static, TextArea

from limiquantix.protocol import ConfigError
from limiquantix.protocol._gen.fleet_pb2 import FleetTarget
from limiquantix.protocol._gen.vm_service_pb2 import ExecuteScriptResponse as Result
from limiquantix.tui import LimiQuantixApp, TuiConfig, parse_args
from limiquantix.tui import _jobs as tui_jobs
from limiquantix.tui._format import exit_cell, exit_summary
from limiquantix.tui.screens import audit as tui_audit
from limiquantix.tui.screens.audit import AuditScreen
from limiquantix.tui.screens.dialogs import ConfirmDialog
from limiquantix.tui.screens.files import FilesScreen
from limiquantix.tui.screens.fleet import FleetScreen
from limiquantix.tui.screens.runner import RunnerScreen
from limiquantix.tui.screens.vm import VMScreen
from limiquantix.tui.widgets.fleet_table import FleetTable
from limiquantix.tui.widgets.path_dialog import PathDialog

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REFRESH_S = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from run_stack(tmp_path_factory)


@pytest.fixture
def hostile_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One VM, ``evil``, whose guest reports terminal attacks (tests/hostile_guest.py)."""
    yield from run_stack(tmp_path_factory, hostile_guest="evil")


class RecordingApp(LimiQuantixApp):
    """The real app; its notifications are also kept for the test to read."""

    def __init__(self, config: TuiConfig) -> None:
        super().__init__(config)
        self.notes: list[str] = []

    def notify(self, message: str, **kwargs: object) -> None:  # type: ignore[override]
        self.notes.append(str(message))
        super().notify(message, **kwargs)  # type: ignore[arg-type]


def _app(stack: Stack, token: str | None = None) -> RecordingApp:
    return RecordingApp(TuiConfig(url=stack.url, token=token or stack.admin, refresh_s=REFRESH_S, source="the test"))


async def until(pilot: Pilot[None], what: str, predicate: Callable[[], bool | Awaitable[bool]]) -> None:
    """Let the app run until ``predicate`` holds (real processes: bounded by a deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"not within {DEADLINE_S} s: {what}")


def _all_connected(app: LimiQuantixApp) -> bool:
    return len(app.fleet.vms) == len(VMS) and all(
        v.agent_state == "connected" and v.memory_percent for v in app.fleet.vms.values()
    )


def _log_text(screen: RunnerScreen) -> str:
    return screen.view.store.text()


async def _open_vm(app: LimiQuantixApp, pilot: Pilot[None], vm: str) -> None:
    """Fleet → cursor on ``vm`` → its details screen."""
    fleet = app.screen
    assert isinstance(fleet, FleetScreen)
    # The table follows the app's state when the screen handles FleetUpdated: wait for the row.
    await until(pilot, f"{vm}'s row", lambda: vm in fleet._order)
    fleet.query_one("#fleet", FleetTable).move_cursor(row=fleet._order.index(vm))
    await pilot.press("enter")
    await until(pilot, "VM screen", lambda: isinstance(app.screen, VMScreen))


async def _open_runner(app: LimiQuantixApp, pilot: Pilot[None], vm: str, script: str) -> RunnerScreen:
    """Fleet → cursor on ``vm`` → details → script runner with ``script`` typed in."""
    await _open_vm(app, pilot, vm)
    await pilot.press("x")
    await until(pilot, "runner", lambda: isinstance(app.screen, RunnerScreen))
    runner = app.screen
    assert isinstance(runner, RunnerScreen)
    runner.query_one("#script", TextArea).load_text(script)
    return runner


async def test_fleet_shows_the_stack_and_runs_a_script(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected with telemetry", lambda: _all_connected(app))
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        await pilot.pause(REFRESH_S * 2)
        table = fleet.query_one("#fleet", FleetTable)
        assert table.row_count == len(VMS)
        names = sorted(str(table.get_row(key)[1]) for key in fleet._order)
        assert names == sorted(VMS)
        counts = str(fleet.query_one("#counts", Static).render())
        assert f"connected {len(VMS)}" in counts
        assert app.me is not None and app.me.role == "admin"

        runner = await _open_runner(app, pilot, "web-1", "echo hello-from-guest\necho to-stderr >&2\nexit 3\n")
        await pilot.press("ctrl+r")
        await until(pilot, "the run's result", lambda: "exit code" in str(runner.query_one("#result", Static).render()))
        result = str(runner.query_one("#result", Static).render())
        assert "exit code 3" in result and "exited" in result
        log = _log_text(runner)
        assert "hello-from-guest" in log and "to-stderr" in log
        # stderr is told apart: its line is drawn in the error colour.
        view = runner.view
        drawn = {strip.text.rstrip(): strip for strip in map(view.render_line, range(view.line_count))}
        error = view.get_component_rich_style("output-view--stderr").color
        assert error is not None
        assert {seg.style.color for seg in drawn["to-stderr"] if seg.text.strip() and seg.style} == {error}
        assert error not in {seg.style.color for seg in drawn["hello-from-guest"] if seg.style}
        # Recent runs for this VM.
        side = runner.query_one("#side", DataTable)
        assert side.row_count == 1 and str(side.get_row_at(0)[1]) == "3"


async def test_large_output_appears_with_the_cut_marked(stack: Stack) -> None:
    """seq 1 300000 (2 MB) in the runner: the output up to the guest's 1 MiB cap appears, every
    line of it, and where the cap cut it is marked (no timing here: bench/tui_bench.py)."""
    app = _app(stack)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        runner = await _open_runner(app, pilot, "web-1", "seq 1 300000\n")
        await pilot.press("ctrl+r")
        await until(pilot, "the run's result", lambda: "exit code" in str(runner.query_one("#result", Static).render()))
        await pilot.pause()
        log = _log_text(runner).splitlines()
        # 1 MiB of "1\n2\n...": the numbers up to 165668 fit, 165669 is cut after "16566"; then the mark.
        assert log[-4:-1] == ["165667", "165668", "16566"], log[-6:]
        assert log[-1] == "── stdout cut here: more than the guest's 1 MiB cap; the rest was not kept", log[-2:]
        assert log[:2] == ["1", "2"] and len(log) == 165_670  # all of it kept


async def test_cancel_a_long_script(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        runner = await _open_runner(app, pilot, "web-2", "echo started\nsleep 120\necho never\n")
        started = time.monotonic()
        await pilot.press("ctrl+r")
        await until(pilot, "the first output", lambda: "started" in _log_text(runner) and bool(runner.execution_id))
        assert runner.query_one("#cancel", Button).disabled is False
        await pilot.press("ctrl+b")
        await until(pilot, "the run to end", lambda: not runner.running)
        result = str(runner.query_one("#result", Static).render())
        assert "cancelled" in result and "never" not in _log_text(runner)
        assert "exit code" not in result, result  # no made-up "exit code 0" for a cancelled run
        assert time.monotonic() - started < 60
        # Nothing of the cancelled run is left in the way: a new run works.
        runner.query_one("#script", TextArea).load_text("echo again")
        await pilot.press("ctrl+r")
        await until(pilot, "second run", lambda: "exit code 0" in str(runner.query_one("#result", Static).render()))


async def test_fleet_output_is_live_and_runs_go_on_in_the_background(stack: Stack) -> None:
    """A fleet run's per-VM output appears while the VMs still run (the command prints, then
    waits for a file the test creates); leaving the runner leaves the run going; the jobs list
    shows it, and opens it again with all its output once it ended."""
    go = stack.tmp / "go-fleet"
    app = _app(stack)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        app.fleet.selected = {"web-1", "web-2"}
        await pilot.press("x")
        await until(pilot, "runner", lambda: isinstance(app.screen, RunnerScreen))
        runner = app.screen
        assert isinstance(runner, RunnerScreen) and runner.fleet
        runner.query_one("#script", TextArea).load_text(
            f'echo "started on $(hostname)"\nwhile [ ! -e {go} ]; do sleep 0.05; done\necho finished\n'
        )
        await pilot.press("ctrl+r")
        job = runner.job
        assert job is not None

        def started(vm: str) -> bool:
            return "started on" in job.buffer_for(vm).store.text()

        await until(pilot, "both VMs' first line", lambda: started("web-1") and started("web-2"))
        assert {job.targets[vm].status for vm in ("web-1", "web-2")} == {"in_progress"}  # not finished
        assert "started on" in _log_text(runner)  # the highlighted VM's output, on screen

        # Away from the runner: the run goes on.
        await pilot.press("escape")
        await until(pilot, "back on the fleet", lambda: isinstance(app.screen, FleetScreen))
        assert job.running and app.jobs.running == [job]
        await pilot.press("j")
        await until(pilot, "the jobs list", lambda: type(app.screen).__name__ == "JobsScreen")
        table = app.screen.query_one("#jobs", DataTable)
        assert table.row_count == 1 and str(table.get_row_at(0)[1]) == "running"

        go.write_text("")
        await until(pilot, "the run to end", lambda: not job.running)
        assert job.state == "success", job.summary
        await until(pilot, "the row to say so", lambda: str(table.get_row_at(0)[1]) == "success")
        await pilot.press("enter")
        await until(pilot, "the job in the runner", lambda: isinstance(app.screen, RunnerScreen))
        reopened = app.screen
        assert isinstance(reopened, RunnerScreen) and reopened.job is job
        text = _log_text(reopened)
        assert "started on" in text and "finished" in text and "exit code 0" in text
        assert reopened.query_one("#script", TextArea).text.startswith('echo "started on')


async def test_load_a_script_edit_and_rerun_a_recent_run(stack: Stack) -> None:
    script = stack.tmp / "script.sh"
    script.write_text("echo loaded-from-a-file\n")
    binary = stack.tmp / "blob.bin"
    binary.write_bytes(b"\x7fELF\x00\x01\xff\xfe")
    app = _app(stack)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        runner = await _open_runner(app, pilot, "web-1", "")
        editor = runner.query_one("#script", TextArea)

        async def load(path: Path) -> None:
            await pilot.press("ctrl+o")
            await until(pilot, "the path dialog", lambda: isinstance(app.screen, PathDialog))
            app.screen.query_one("#path", Input).value = str(path)
            await pilot.press("enter")
            await until(pilot, "the dialog to close", lambda: app.screen is runner)

        # Bad paths: said, and the editor keeps what it had.
        editor.load_text("kept")
        await load(stack.tmp / "missing.sh")
        await load(binary)
        assert editor.text == "kept"
        assert any("Cannot read" in m for m in app.notes) and any("not UTF-8" in m for m in app.notes)

        await load(script)
        assert editor.text == "echo loaded-from-a-file\n"
        await pilot.press("ctrl+r")
        await until(pilot, "the run", lambda: "exit code 0" in str(runner.query_one("#result", Static).render()))
        side = runner.query_one("#side", DataTable)
        assert side.row_count == 1 and "loaded-from-a-file" in _log_text(runner)

        # Edit: the recent run back into the editor.
        editor.load_text("echo something else")
        side.focus()
        await pilot.press("e")
        assert editor.text == "echo loaded-from-a-file\n"
        # Re-run: enter on the recent run runs it again, as it was.
        side.focus()
        await pilot.press("enter")
        await until(pilot, "the second run", lambda: side.row_count == 2 and not runner.running)
        assert len(app.jobs) == 2 and [job.script for job in app.jobs] == ["echo loaded-from-a-file\n"] * 2

        # A long run left in the background is cancelled from the jobs list.
        editor.load_text("echo long\nsleep 120\n")
        await pilot.press("ctrl+r")
        await until(pilot, "the long run's id", lambda: bool(runner.execution_id))
        long_job = runner.job
        assert long_job is not None
        await pilot.press("escape", "j")
        await until(pilot, "the jobs list", lambda: type(app.screen).__name__ == "JobsScreen")
        await pilot.press("ctrl+b")  # the cursor is on the newest job
        await until(pilot, "the cancel", lambda: long_job.state == "cancelled")
        assert str(app.screen.query_one("#jobs", DataTable).get_row_at(0)[1]) == "cancelled"


async def test_files_escape_during_an_upload_asks_and_errors_clear_the_viewer(stack: Stack) -> None:
    app = _app(stack)
    local = stack.tmp / "upload.bin"
    local.write_bytes(os.urandom(4 * 1024 * 1024))
    assert stack.hostd is not None
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        await _open_vm(app, pilot, "web-1")
        await pilot.press("f")
        await until(pilot, "files", lambda: isinstance(app.screen, FilesScreen))
        files = app.screen
        assert isinstance(files, FilesScreen)
        # A file shown, then one that does not exist: the error alone, the old content gone, the path said once.
        files.query_one("#guest-path", Input).value = "/etc/hostname"
        await pilot.press("ctrl+o")
        await until(pilot, "a file shown", lambda: "SHA-256" in str(files.query_one("#transfer", Static).render()))
        missing = "/no/such/file-7q"
        files.query_one("#guest-path", Input).value = missing
        await pilot.press("ctrl+o")
        await until(pilot, "the error", lambda: "not_found" in str(files.query_one("#transfer", Static).render()).lower()
                    or "no such" in str(files.query_one("#transfer", Static).render()).lower())  # fmt: skip
        error = str(files.query_one("#transfer", Static).render())
        assert error.count(missing) == 1, error
        assert files.query_one("#viewer", TextArea).text == ""
        # hostd stopped (a real process, SIGSTOP): the upload stays in progress.
        stack.hostd.send_signal(signal.SIGSTOP)
        try:
            files.query_one("#guest-path", Input).value = "/tmp/lqx-upload-esc.bin"
            files.query_one("#local-path", Input).value = str(local)
            await pilot.press("ctrl+t")
            await until(pilot, "the upload running", lambda: files.uploading)
            await pilot.press("escape")
            await until(pilot, "the question", lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("escape")  # no: the upload goes on
            await until(pilot, "back on Files", lambda: app.screen is files)
            assert files.uploading
            await pilot.press("escape")
            await until(pilot, "the question again", lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("y")
            await until(pilot, "the VM screen", lambda: isinstance(app.screen, VMScreen))
            assert not files.uploading
        finally:
            stack.hostd.send_signal(signal.SIGCONT)


async def test_shutdown_dialog(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        await _open_vm(app, pilot, "victim")
        # Asked first; escape changes nothing.
        await pilot.press("p")
        await until(pilot, "the dialog", lambda: isinstance(app.screen, ConfirmDialog))
        assert app.screen.focused is not None and app.screen.focused.id == "no"
        await pilot.press("escape")
        await until(pilot, "the dialog closed", lambda: isinstance(app.screen, VMScreen))
        await pilot.pause(REFRESH_S * 3)
        assert stack.sims["victim"].proc.poll() is None
        # Confirmed: the guest powers off (the simulated VM stops) and the fleet shows it.
        await pilot.press("p")
        await until(pilot, "the dialog", lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.click("#yes")
        await until(pilot, "accepted", lambda: any("shutdown accepted" in n for n in app.notes))
        await until(
            pilot, "the VM down", lambda: getattr(app.fleet.vms.get("victim"), "agent_state", "") != "connected"
        )
        await until(pilot, "simvm exited", lambda: stack.sims["victim"].proc.poll() is not None)


async def test_a_viewer_is_offered_only_what_it_may_do(stack: Stack) -> None:
    """WhoAmI's permissions decide the keys: a viewer's footer has no Run, Audit, Script, Files
    or power keys, and pressing them opens nothing (it could open the runner and fail on Run);
    each press says why, once (it was ignored without a word)."""
    app = _app(stack, token=stack.tokens["viewer"])
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        assert app.me is not None and app.me.role == "viewer"
        await pilot.pause()
        footer = _screen_text(app).splitlines()[-1]
        assert "Details" in footer and "Filter" in footer
        assert "Run" not in footer and "Audit" not in footer, footer
        app.notes.clear()
        await pilot.press("x", "u")
        await pilot.pause()
        assert isinstance(app.screen, FleetScreen)
        assert app.notes == [
            "your token's role viewer may not run commands",
            "your token's role viewer may not read the audit log",
        ]
        await pilot.press("slash", "x", "u", "enter")  # typed into the filter: its letters, no refusal
        await pilot.pause()
        assert len(app.notes) == 2
        await pilot.press("escape")
        await _open_vm(app, pilot, "web-1")
        await pilot.pause()
        footer = _screen_text(app).splitlines()[-1]
        assert "Ping" in footer and "Back" in footer
        assert not any(word in footer for word in ("Script", "Files", "Off", "Reboot", "Passwd")), footer
        app.notes.clear()
        await pilot.press("x", "f", "p", "r", "w")
        await pilot.pause()
        assert isinstance(app.screen, VMScreen)
        assert app.notes == [
            f"your token's role viewer may not {words}"
            for words in ("run commands", "read guest files", *["shut down or reboot VMs"] * 2, "reset guest passwords")
        ]


async def test_an_operator_gets_the_runner_but_not_the_password_reset(stack: Stack) -> None:
    app = _app(stack, token=stack.tokens["operator"])
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app) and app.me is not None)
        await _open_vm(app, pilot, "web-1")
        await pilot.pause()
        footer = _screen_text(app).splitlines()[-1]
        assert "Script" in footer and "Files" in footer and "Reboot" in footer and "Passwd" not in footer, footer


async def test_audit_view_refreshes_filters_by_prefix_and_opens_a_row(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tui_audit, "AUDIT_REFRESH_S", REFRESH_S)
    app = _app(stack)
    long_command = "echo " + "audit-detail-" * 12 + "end; exit 3"

    def exec_now(command: str) -> None:
        r = httpx.post(f"{stack.url}/limiquantix.compute.v1.VMService/ExecuteScript", timeout=DEADLINE_S,
                       json={"vmId": "web-1", "command": command}, headers={"Authorization": f"Bearer {stack.admin}"})  # fmt: skip
        assert r.status_code == 200, r.text

    exec_now("true")
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        await pilot.press("u")
        await until(pilot, "audit rows", lambda: isinstance(app.screen, AuditScreen) and bool(app.screen.records))
        audit = app.screen
        assert isinstance(audit, AuditScreen)
        before = len(audit.records)
        # A new action appears without a key press (the view reloads itself), quietly.
        await asyncio.to_thread(exec_now, long_command)
        await until(pilot, "the new row", lambda: len(audit.records) > before)
        assert sum("audit row" in n for n in app.notes) == 1  # the first load only
        # Filters match by prefix: vm.exec finds vm.exec (and vm.exec_stream).
        audit.query_one("#filter-action", Input).value = "vm.ex"
        audit.query_one("#filter-action", Input).focus()
        await pilot.press("enter")
        await until(
            pilot,
            "filtered",
            lambda: bool(audit.records) and all(r.action.startswith("vm.exec") for r in audit.records.values()),
        )
        row = next(r for r in audit.records.values() if r.detail.command == long_command)
        assert (row.outcome, row.exit_code) == ("failure", 3)
        # A row opens to its whole detail (the table cuts "what" at 80 characters).
        table = audit.query_one("#audit", DataTable)
        table.focus()
        table.move_cursor(row=table.get_row_index(str(row.id)))
        await pilot.press("enter")
        await until(pilot, "the detail", lambda: isinstance(app.screen, tui_audit.AuditDetail))
        await pilot.pause()
        shown = _screen_text(app)
        assert shown.count("audit-detail-") >= 11 and "end; exit 3" in shown, shown  # all of it (wrapped)
        await pilot.press("escape")
        await until(pilot, "back", lambda: app.screen is audit)


async def test_wrong_token_says_so_and_keeps_running(stack: Stack) -> None:
    app = _app(stack, token="lqx_0123456789ab_" + "A" * 43)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "refusal", lambda: any("refused the token" in n for n in app.notes))
        assert "the test" in next(n for n in app.notes if "refused the token" in n)
        assert app.is_running and app.fleet.vms == {}


async def test_controller_stopped_and_restarted(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        stack.stop_controller()
        await until(pilot, "controller down noticed", lambda: app.controller_ok is False)
        assert any("cannot reach the controller" in n for n in app.notes)
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        await pilot.pause(REFRESH_S * 3)
        assert "retrying" in str(fleet.query_one("#counts", Static).render())
        assert len(app.fleet.vms) == len(VMS)  # the last known fleet stays on screen
        # One notification, not one per poll.
        assert sum("cannot reach the controller" in n for n in app.notes) == 1
        stack.start_controller()
        await until(pilot, "recovered", lambda: app.controller_ok is True)
        assert any("reachable again" in n for n in app.notes)
        await until(pilot, "every VM connected again", lambda: _all_connected(app))


async def test_a_hung_controller_is_noticed(stack: Stack) -> None:
    """The controller stopped by SIGSTOP (a real process: it accepts connections, answers
    nothing): the header says "not answering" and how old its data is, instead of "connected"
    with a frozen time; SIGCONT: recovery notified, fresh data."""
    app = _app(stack)
    assert stack.controller is not None
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, "every VM connected", lambda: _all_connected(app))
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        stack.controller.send_signal(signal.SIGSTOP)
        try:
            await until(pilot, "the hang noticed", lambda: app.controller_ok is False)
            said = sum("has not answered" in n for n in app.notes)
            assert said >= 1, app.notes
            await pilot.pause(REFRESH_S * 4)
            header = " ".join(str(fleet.query_one("#counts", Static).render()).split())
            assert "controller: not answering (retrying)" in header and " s old" in header, header
            # Said once, not at every tick while it lasts.
            assert app.controller_ok is False and sum("has not answered" in n for n in app.notes) == said, app.notes
        finally:
            stack.controller.send_signal(signal.SIGCONT)
        await until(pilot, "recovered", lambda: app.controller_ok is True)
        assert any("reachable again" in n for n in app.notes)
        await pilot.pause(REFRESH_S * 2)
        assert "updated " in str(fleet.query_one("#counts", Static).render())


def _terminal_output(app: LimiQuantixApp) -> str:
    """What Textual writes to the terminal for the whole screen now (its own SGR and cursor moves included)."""
    update = app.screen._compositor.render_update(full=True)
    assert update is not None
    return update.render_segments(app.console)  # type: ignore[attr-defined, no-any-return]


def _screen_text(app: LimiQuantixApp) -> str:
    """The screen's characters, row by row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def _assert_inert(app: LimiQuantixApp, *visible: str) -> None:
    """No attack reaches the terminal raw, not even in part; each of ``visible`` is on screen."""
    output, text = _terminal_output(app), _screen_text(app)
    for attack in hostile_guest.ATTACKS:
        assert attack not in output
    for raw in ("\x1b]", "\x07", "\x9b", "\x9d", "\u202e", "\u2066", "\x1b[?1049", "\x1b[2J"):
        assert raw not in output, f"{raw!r} reached the terminal"
    assert not any(c in text for c in "\x1b\x07\x9b\u202e\u2066")
    for shown in visible:
        assert shown in text, f"{shown!r} not on screen:\n{text}"


async def test_guest_text_is_shown_escaped_never_interpreted(hostile_stack: Stack) -> None:
    """A guest reporting window-title, clipboard, alternate-screen and clear sequences,
    C1 controls, bidi overrides and Rich markup, in every place the TUI shows guest text."""
    stack = hostile_stack
    app = _app(stack)
    async with app.run_test(size=(200, 60)) as pilot:
        await until(pilot, "the guest connected", lambda: "evil" in app.fleet.vms and bool(app.fleet.vms["evil"].os))
        await pilot.pause(REFRESH_S * 2)
        _assert_inert(app, "Evil\\x1b]52;c;cHduZWQ=")  # the fleet table's OS column

        await _open_vm(app, pilot, "evil")
        vm = app.screen
        assert isinstance(vm, VMScreen)
        await until(pilot, "GetVM drawn", lambda: vm.detail is not None and vm.detail.HasField("telemetry"))
        await pilot.pause()
        _assert_inert(
            app,
            "\\x1b]0;pwned\\x07",  # hostname
            "6.1\\x1b[?1049l",  # kernel
            "\\u202elmth.exe\\u2066 [bold red]markup[/]",  # OS: bidi shown, markup not applied
            "eth\\x1b[2J0\\u202e",  # interface name
            "/mnt\\x1b]52;c;cHduZWQ=\\x07",  # filesystem
            "evil\\x9b31m",  # capability
        )

        await pilot.press("x")
        await until(pilot, "runner", lambda: isinstance(app.screen, RunnerScreen))
        runner = app.screen
        assert isinstance(runner, RunnerScreen)
        runner.query_one("#script", TextArea).load_text("echo \x1b]0;script\x07")  # lands in the audit log
        await pilot.press("ctrl+r")
        await until(pilot, "the run's result", lambda: "exit code" in str(runner.query_one("#result", Static).render()))
        assert "out-end" in _log_text(runner) and "[bold red]markup[/]" in _log_text(runner)
        # The editor shows what the operator typed as typed: not guest text, out of this test.
        runner.query_one("#script", TextArea).load_text("cat evil")
        _assert_inert(
            app, "line 0: \\x1b]0;pwned\\x07", "line 2: \\x1b[?1049l", "line 5: \\u202e", "exit code 0   exited"
        )

        await pilot.press("escape")
        await until(pilot, "VM screen", lambda: isinstance(app.screen, VMScreen))
        await pilot.press("f")
        await until(pilot, "files", lambda: isinstance(app.screen, FilesScreen))
        files = app.screen
        files.query_one("#guest-path", Input).value = "/home/evil.txt"
        await pilot.press("ctrl+o")
        await until(pilot, "the file shown", lambda: "out-end" in files.query_one("#viewer", TextArea).text)
        await pilot.pause()
        _assert_inert(app, "line 1: \\x1b]52;c;cHduZWQ=\\x07", "line 3: \\x1b[2J")

        await pilot.press("escape", "escape")
        await until(pilot, "fleet", lambda: isinstance(app.screen, FleetScreen))
        await pilot.press("u")
        await until(
            pilot,
            "audit rows",
            lambda: isinstance(app.screen, AuditScreen) and app.screen.query_one("#audit", DataTable).row_count > 0,
        )
        await pilot.pause()
        _assert_inert(app, "echo \\x1b]0;script\\x07")
    assert all(raw not in note for note in app.notes for raw in ("\x1b", "\x07"))


def test_the_keys_permissions_are_the_controllers() -> None:
    """Every permission a screen's key needs, and the demo admin's, is one the controller grants
    (a misspelt one would hide the key from everybody)."""
    from limiquantix.controller._auth import ROLE_PERMISSIONS, Permission, Role
    from limiquantix.tui import demo_data
    from limiquantix.tui.screens.base import LqxScreen

    names = {p.value for p in Permission}
    needed = {perm for cls in (FleetScreen, VMScreen, FilesScreen, RunnerScreen, AuditScreen, LqxScreen)
              for perm in cls.ACTION_PERMISSIONS.values()}  # fmt: skip
    assert needed <= names and demo_data.ADMIN.permissions <= names
    assert needed <= {p.value for p in ROLE_PERMISSIONS[Role.ADMIN]}


def test_exit_summary_says_why_there_is_no_exit_code() -> None:
    """exitCode is present only when the command exited; otherwise the reason, never "exit code 0"."""
    assert exit_summary(Result(exit_code=3, exit_reason="exited")) == "exit code 3"
    assert exit_summary(Result(exit_code=0, exit_reason="exited")) == "exit code 0"
    assert exit_summary(Result(exit_reason="timed_out", timed_out=True, duration_ms=1500, signal=15)) == (
        "timed out after 1.5 s (signal 15)"
    )
    assert exit_summary(Result(exit_reason="cancelled", signal=15)) == "cancelled (signal 15)"
    assert exit_summary(Result(exit_reason="signaled", signal=9)) == "killed by signal 9"
    assert exit_summary(Result(exit_reason="failed_to_start")) == "failed to start"
    assert exit_summary(Result(exit_code=2)) == "exit code 2"  # no reason: a fleet target before 0.3
    assert exit_summary(Result()) == "no exit status"


def test_a_fleet_target_that_timed_out_or_was_killed_says_how() -> None:
    """A fleet run's target ends its output with the reason and signal, as a single command's
    result does, and its row's Exit cell has the signal: never a bare missing code."""
    job = tui_jobs.Job(id=1, vm_ids=("web-1", "web-2", "web-3"), script="sleep 30", timeout_s=1, run_as="")
    timed = FleetTarget(vm_id="web-1", status="timed_out", exit_reason="timed_out", signal=15, duration_ms=1004)
    killed = FleetTarget(vm_id="web-2", status="failed", exit_reason="signaled", signal=9, duration_ms=7)
    exited = FleetTarget(vm_id="web-3", status="failed", exit_code=3, exit_reason="exited", duration_ms=5)
    for target in (timed, killed, exited):
        tui_jobs._target_changed(job, target)
    notes = {vm: job.buffer_for(vm).store.text() for vm in job.vm_ids}
    assert "── web-1: timed out after 1.0 s (signal 15), 1004 ms" in notes["web-1"]
    assert "── web-2: killed by signal 9, 7 ms" in notes["web-2"]
    assert "── web-3: exit code 3, 5 ms" in notes["web-3"]
    assert [exit_cell(t) for t in (timed, killed, exited)] == ["SIG15", "SIG9", "3"]
    # No result from an agent (undeliverable): the status, and an empty cell.
    gone = FleetTarget(vm_id="web-1", status="undeliverable", error="node node-c is unreachable")
    assert exit_cell(gone) == "" and exit_summary(gone) == "no exit status"


def test_config_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File, then environment, then flags; no token anywhere is a clear error."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no API token"):
        parse_args([], env={})
    conf = tmp_path / "limiquantix" / "tui.toml"
    conf.parent.mkdir()
    conf.write_text('url = "https://10.9.8.7:8080"\ntoken = "from-file"\n')
    assert parse_args([], env={}) == TuiConfig(url="https://10.9.8.7:8080", token="from-file", source="the config file")
    env = {"LQX_CONTROLLER_URL": "http://127.0.0.1:9", "LQX_TOKEN": "from-env"}
    got = parse_args([], env=env)
    assert (got.url, got.token, got.source) == ("http://127.0.0.1:9", "from-env", "LQX_TOKEN")
    token_file = tmp_path / "t"
    token_file.write_text("from-token-file\n")
    got = parse_args(["--url", "https://c.example:8443/", "--token-file", str(token_file)], env=env)
    assert (got.url, got.token) == ("https://c.example:8443", "from-token-file")
    # A token in argv is readable by every local user: refused, saying what to use instead.
    with pytest.raises(ConfigError, match=r"--token is refused: .*visible to every user.*--token-file"):
        parse_args(["--token", "flag"], env=env)
    with pytest.raises(ConfigError, match="--token is refused"):
        parse_args(["--token=flag"], env=env)
    proc = subprocess.run(
        [sys.executable, "-m", "limiquantix.tui", "--token", "secret-in-argv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "--token is refused" in proc.stderr and "--token-file" in proc.stderr, proc.stderr
    with pytest.raises(ConfigError, match="http:// or https://"):
        parse_args(["--url", "127.0.0.1:8080"], env=env)
    with pytest.raises(ConfigError, match="cannot read"):
        parse_args(["--token-file", str(tmp_path / "missing")], env=env)
    # A wrong file (here a TOML config) is named, not reported later as an unreachable controller.
    toml_file = tmp_path / "tui-copy.toml"
    toml_file.write_text('url = "http://10.9.8.7:8080"\ntoken = "lqx_abc"\n')
    with pytest.raises(
        ConfigError, match=rf"^{toml_file} does not hold a token: it has spaces or line breaks \(a TOML file"
    ):
        parse_args(["--token-file", str(toml_file)], env=env)
    with pytest.raises(ConfigError, match="^LQX_TOKEN does not hold a token: .*not printable ASCII"):
        parse_args([], env={"LQX_TOKEN": "tok\u00e9n"})
    conf.write_text("url = [")
    with pytest.raises(ConfigError, match="tui.toml"):
        parse_args([], env={})
    conf.write_text('tokn = "typo"\n')
    with pytest.raises(ConfigError, match="unknown key 'tokn'"):
        parse_args([], env={})
