"""Snapshot tests of every TUI screen (pytest-textual-snapshot), with deterministic data.

The app runs still (``poll=False``, a fixed clock, ``limiquantix.tui.demo_data``)
and is driven by key presses, as an operator would. The calls a screen makes
when asked (a streamed script, a fleet run, a file view) are answered by an
``httpx.MockTransport`` playing the controller with the same demo data, so the
screens' real code paths fill them; the audit log is fed through
``AuditScreen.show``. Before each screenshot, cursors stop blinking (always
drawn) and notifications (toasts with timeouts) are cleared, so the SVGs depend
on nothing but the code.

The SVGs live in ``tests/__snapshots__/test_tui_snapshots/``. After a deliberate
change of the UI, look at the report of the failing run (``snapshot_report.html``),
then ``pytest tests/test_tui_snapshots.py --snapshot-update`` and commit the SVGs.

The tests share one app per screen they start on (the fed fleet, web-01's VM
screen: ``fleet``, ``web01``, :class:`KeptApp`), kept running in the module's
asyncio loop (anyio, ``pytest.mark.anyio``) and brought back to its screen after
each test, which must leave it drawn as it found it; their screenshots are taken
as ``snap_compare`` takes them of an app it runs, and compared and reported by it
(``snapshot_of``). pytest-trio (``trio_mode = false``) leaves them alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import textual._doc
from conftest import quicken_pilot, share_parsed_css
from google.protobuf.message import Message
from rich.text import Text
from textual.pilot import Pilot
from textual.screen import Screen
from textual.strip import Strip
from textual.widgets import Input, TextArea

from limiquantix.protocol._gen import fleet_pb2 as fleet_pb
from limiquantix.protocol._gen import vm_service_pb2 as vm_pb
from limiquantix.tui import ControllerClient, LimiQuantixApp, demo_data
from limiquantix.tui.screens.audit import AuditScreen
from limiquantix.tui.screens.fleet import FleetScreen
from limiquantix.tui.screens.runner import RunnerScreen
from limiquantix.tui.screens.vm import VMScreen

pytestmark = pytest.mark.usefixtures("quick_pilot", "shared_css")

_S = TypeVar("_S", bound=Screen[Any])

SMALL = (80, 24)
"""The issue's minimum terminal."""
LARGE = (120, 35)


# ----------------------------------------------------------------------------- the fake controller


def _envelope(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _answer(message: Message) -> httpx.Response:
    return httpx.Response(200, content=message.SerializeToString(), headers={"Content-Type": "application/proto"})


def _controller(request: httpx.Request) -> httpx.Response:
    """The controller's answers (application/proto, as the TUI asks) to what the screens ask
    when a key is pressed."""
    method = request.url.path.rsplit("/", 1)[-1]
    if method == "ExecuteScriptStream":
        body = vm_pb.ExecuteScriptRequest.FromString(request.content[5:])
        events = demo_data.stream_events(body.vm_id)
        content = b"".join(_envelope(0, e.SerializeToString()) for e in events) + _envelope(0x02, b"{}")
        return httpx.Response(200, content=content, headers={"Content-Type": "application/connect+proto"})
    if method == "WatchCommand":
        vm_ids, ended = _controller.vm_ids, _controller.run_ended  # type: ignore[attr-defined]
        events = demo_data.fleet_watch_events(vm_ids)

        async def still_running() -> AsyncIterator[bytes]:
            for event in events:
                yield _envelope(0, event.SerializeToString())
            # The run goes on: the stream stays open (closed at exit) until the test ends the run.
            await ended.wait()
            command = demo_data.fleet_command(vm_ids)
            command.status = "cancelled"
            yield _envelope(0, fleet_pb.FleetCommandEvent(command=command).SerializeToString())
            yield _envelope(0x02, b"{}")

        return httpx.Response(200, content=still_running(), headers={"Content-Type": "application/connect+proto"})
    if method == "RunCommand":
        vm_ids = list(fleet_pb.RunCommandRequest.FromString(request.content).vm_ids)
        _controller.vm_ids = vm_ids  # type: ignore[attr-defined]
        _controller.run_ended = asyncio.Event()  # type: ignore[attr-defined]
        return _answer(fleet_pb.RunCommandResponse(command_id="cmd-0001", target_count=len(vm_ids), status="pending"))
    if method == "GetCommand":
        return _answer(demo_data.fleet_command(_controller.vm_ids))  # type: ignore[attr-defined]
    if method == "ReadGuestFile":
        data = demo_data.OS_RELEASE.encode()
        return _answer(
            vm_pb.ReadGuestFileResponse(content=data, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        )
    return httpx.Response(501, json={"code": "unimplemented", "message": f"{method} is not in the snapshot controller"})


def make_app() -> tuple[LimiQuantixApp, Callable[[], None]]:
    # insecure: the demo's controller.example is a MockTransport, no token leaves the process.
    client = ControllerClient(
        demo_data.CONTROLLER_URL, "demo-token", transport=httpx.MockTransport(_controller), insecure=True
    )
    return demo_data.demo_app(client=client)


# ----------------------------------------------------------------------------- helpers


async def settle(pilot: Pilot[None]) -> None:
    """Let the screen render, then make it still: no blinking cursor, no toasts."""
    await pilot.pause()
    for widget in pilot.app.screen.query("Input, TextArea"):
        assert isinstance(widget, (Input, TextArea))
        widget.cursor_blink = False
        if isinstance(widget, TextArea):
            # Its line cache does not key on the blink: a line drawn while the blink hid the
            # cursor stayed cursorless (test_runner_fleet failed about one run in three).
            widget.notify_style_update()
    pilot.app.clear_notifications()
    await pilot.pause()


async def until(pilot: Pilot[None], done: Callable[[], bool], what: str) -> None:
    """Pause until ``done()`` (a worker answered by the fake controller), at most ~5 s."""
    for _ in range(500):
        if done():
            return
        await pilot.pause(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def shown_whole(runner: RunnerScreen) -> bool:
    """Every line of the runner's output is in its view's size (the view grows at most every
    50 ms while output streams: the last grow may be on a timer still)."""
    return runner.view.virtual_size.height == runner.view.line_count


Step = Callable[[Pilot[None], LimiQuantixApp], Awaitable[None]]
MakeApp = Callable[[], tuple[LimiQuantixApp, Callable[[], None]]]


def scenario(*steps: Step, make: MakeApp = make_app) -> tuple[LimiQuantixApp, Any]:
    """An app (``make``'s) and the run_before that feeds it, then runs ``steps``, then settles."""
    app, feed = make()

    async def run_before(pilot: Pilot[None]) -> None:
        await pilot.pause()
        feed()
        await pilot.pause()
        for step in steps:
            await step(pilot, app)
        await settle(pilot)

    return app, run_before


def vm_id(index: int) -> str:
    return demo_data.fleet()[index].vm_id


async def enter_web01(pilot: Pilot[None], app: LimiQuantixApp) -> VMScreen:
    """Enter on web-01 (sorted by name, the 9th row): its VM screen.

    The fleet's cursor is put there by the table's own call, not by eight ``down`` keys: those
    keys are test_fleet's and test_tui_fleet_table's; here they drew eight fleets no test reads.
    """
    fleet = app.screen
    assert isinstance(fleet, FleetScreen)
    fleet.table.move_cursor(row=8)
    await pilot.press("enter")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, VMScreen) and screen.vm_id == vm_id(0)
    return screen


async def open_vm(pilot: Pilot[None], app: LimiQuantixApp) -> None:
    """web-01's VM screen, then 30 GetVM answers."""
    screen = await enter_web01(pilot, app)
    for step in range(30):
        screen.show(demo_data.vm_detail(0, step))
    await pilot.pause()


# ----------------------------------------------------------------------------- one app for a screen's tests


def _drawn(app: LimiQuantixApp) -> list[Strip]:
    """The screen as drawn: every line's characters and styles."""
    return app.screen._compositor.render_strips()


@dataclass
class Kept:
    """A running app on the screen its module's tests start from (``screen``, drawn as
    ``drawn``); ``reset`` undoes on that screen what the tests may change there."""

    app: LimiQuantixApp
    pilot: Pilot[None]
    screen: Screen[Any]
    drawn: list[Strip]
    reset: Step

    async def back(self) -> bool:
        """Back on ``screen`` (escape, as an operator leaves a screen), reset and settled;
        whether it is drawn as when the app first got there."""
        for _ in range(5):
            if self.app.screen is self.screen:
                break
            await self.pilot.press("escape")
        if self.app.screen is not self.screen:
            return False
        await self.reset(self.pilot, self.app)
        await settle(self.pilot)
        return _drawn(self.app) == self.drawn


class KeptApp:
    """One still app kept running for a module's tests that start on the same screen: the
    app's start, its feed and the keys that lead to the screen cost more than most of these
    tests' own steps, and are done once, at the first test. After each test the app goes
    back to that screen and must be drawn as it was: else the test fails (at teardown) and
    the next one gets a new app, so what a test leaves behind never reaches another's
    snapshot, whichever tests run and in whatever order."""

    def __init__(self, steps: tuple[Step, ...], reset: Step, make: MakeApp) -> None:
        self._steps, self._reset, self._make = steps, reset, make
        self._kept: Kept | None = None
        self._running = AsyncExitStack()

    async def _start(self) -> Kept:
        app, run_before = scenario(*self._steps, make=self._make)
        try:
            pilot = await self._running.enter_async_context(app.run_test(size=SMALL))
            await run_before(pilot)
        except BaseException:
            await self.close()
            raise
        return Kept(app, pilot, app.screen, _drawn(app), self._reset)

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[Kept]:
        """The app, for one test: the active app while the test runs (what its widgets call
        ``self.app`` when the test calls them, as in the app's own tasks; a module may keep
        more than one app, all started in the loop's one task)."""
        if self._kept is None:
            self._kept = await self._start()
        with self._kept.app._context():
            yield self._kept
        try:
            restored = await self._kept.back()
        except BaseException:
            await self.close()
            raise
        if not restored:
            await self.close()
            raise AssertionError("the test left its screen changed (the next test gets a new app)")

    async def close(self) -> None:
        """Stop the app, if one is running."""
        self._kept = None
        await self._running.aclose()


@asynccontextmanager
async def kept_app(*steps: Step, reset: Step, make: MakeApp = make_app) -> AsyncIterator[KeptApp]:
    """A :class:`KeptApp` for a module (``make``'s app at SMALL, fed, ``steps`` done); what the
    tests' own fixtures do for their app (quick_pilot, shared_css, _no_real_controller) done
    for its whole life."""
    with pytest.MonkeyPatch.context() as mp:
        quicken_pilot(mp)
        share_parsed_css(mp)
        mp.setattr(LimiQuantixApp, "refresh_fleet", _refuse)
        kept = KeptApp(steps, reset, make)
        try:
            yield kept
        finally:
            await kept.close()


def screen_text(app: LimiQuantixApp) -> list[str]:
    """The screen's characters, row by row."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


async def at_size(pilot: Pilot[None], app: LimiQuantixApp, size: tuple[int, int]) -> None:
    """The terminal at ``size`` (resized if it is not) and the screen drawn at it."""
    if app.size == size:
        return
    await pilot.resize_terminal(*size)
    # Textual passes a resize on to the screen after 1/120 s: until the screen is drawn at the
    # new size, then a pause for what its widgets do about it (the footer fits its keys again).
    await until(pilot, lambda: [len(line) for line in screen_text(app)] == [size[0]] * size[1], f"the screen at {size}")
    await pilot.pause()


async def _as_fed(pilot: Pilot[None], app: LimiQuantixApp) -> None:
    """The fleet as fed: at SMALL, sorted by name, no filter (escape), nothing selected (``n``),
    the cursor on the first row."""
    await at_size(pilot, app, SMALL)
    fleet = app.screen
    assert isinstance(fleet, FleetScreen)
    fleet.sort_column, fleet.sort_reverse = 0, False
    await pilot.press("escape", "n")
    fleet.table.move_cursor(row=0)


async def _at_top(pilot: Pilot[None], app: LimiQuantixApp) -> None:
    """The VM screen scrolled to its top."""
    app.screen.query_one("#vm-body").scroll_home(animate=False)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def _fleet_app() -> AsyncIterator[KeptApp]:
    async with kept_app(reset=_as_fed) as kept:
        yield kept


@pytest.fixture
async def fleet(_fleet_app: KeptApp) -> AsyncIterator[Kept]:
    """The fleet screen, fed (60 polls), at SMALL."""
    async with _fleet_app.lend() as kept:
        yield kept


@pytest.fixture(scope="module")
async def _web01_app() -> AsyncIterator[KeptApp]:
    async with kept_app(open_vm, reset=_at_top) as kept:
        yield kept


@pytest.fixture
async def web01(_web01_app: KeptApp) -> AsyncIterator[Kept]:
    """web-01's VM screen as :func:`open_vm` leaves it (60 fleet polls, 30 GetVM answers), at SMALL."""
    async with _web01_app.lend() as kept:
        yield kept


async def opened(kept: Kept, key: str, kind: type[_S]) -> _S:
    """``key`` pressed on the kept app: the screen it opens (a ``kind``)."""
    await kept.pilot.press(key)
    await kept.pilot.pause()
    screen = kept.app.screen
    assert isinstance(screen, kind)
    return screen


async def snapshot_of(kept: Kept, snap_compare: Any) -> bool:
    """``snap_compare`` of the kept app as it is now, settled: the screenshot taken as
    ``snap_compare`` takes it of an app it runs (textual._doc.take_svg_screenshot's steps
    after ``run_before``), compared and reported by the plugin as any other."""
    app, pilot = kept.app, kept.pilot
    await settle(pilot)
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    svg = app.export_screenshot(title=app.title, simplify=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(textual._doc, "take_svg_screenshot", lambda **_: svg)
        return bool(snap_compare(app, terminal_size=tuple(app.size)))


# ----------------------------------------------------------------------------- fleet


async def _select_some(pilot: Pilot[None], app: LimiQuantixApp) -> None:
    # sorted by name: batch-01, build-01, build-02, cache-01, db-01, db-02, legacy-01, mail-01 ...:
    # select db-01 and legacy-01 (space moves down), which leaves the cursor on mail-01
    await pilot.press(*["down"] * 4, "space", *["down"] * 1, "space")


@pytest.mark.anyio
async def test_fleet(fleet: Kept, snap_compare: Any) -> None:
    """12 VMs in every agent state (node-c unreachable), sorted by name, two selected."""
    await _select_some(fleet.pilot, fleet.app)
    assert await snapshot_of(fleet, snap_compare)


@pytest.mark.anyio
async def test_fleet_large(fleet: Kept, snap_compare: Any) -> None:
    """The same at 120x35, sorted by CPU, highest first."""
    await at_size(fleet.pilot, fleet.app, LARGE)
    await _select_some(fleet.pilot, fleet.app)
    await fleet.pilot.press(*["s"] * 6, "S")
    assert await snapshot_of(fleet, snap_compare)


@pytest.mark.anyio
async def test_fleet_filtered(fleet: Kept, snap_compare: Any) -> None:
    """``/`` then ``web`` and enter: the filter stays shown, the table has the focus."""
    await fleet.pilot.press("slash", *"prod", "enter")
    assert await snapshot_of(fleet, snap_compare)


# ----------------------------------------------------------------------------- VM detail


@pytest.mark.anyio
async def test_vm_detail(web01: Kept, snap_compare: Any) -> None:
    """Identity and sparklines (60 fleet polls, 30 GetVM answers for network rates)."""
    assert await snapshot_of(web01, snap_compare)


@pytest.mark.anyio
async def test_vm_detail_scrolled(web01: Kept, snap_compare: Any) -> None:
    """The same scrolled to the end: filesystems, interfaces, capabilities."""
    web01.app.screen.query_one("#vm-body").scroll_end(animate=False)
    assert await snapshot_of(web01, snap_compare)


# ----------------------------------------------------------------------------- runner


@pytest.mark.anyio
async def test_runner_finished(web01: Kept, snap_compare: Any) -> None:
    """``x`` on a VM, ctrl+r: the streamed output (stderr red), exit code, recent runs."""
    app, pilot = web01.app, web01.pilot
    screen = await opened(web01, "x", RunnerScreen)
    screen.query_one("#script", TextArea).load_text(demo_data.SCRIPT)
    await pilot.press("ctrl+r")
    await until(
        pilot,
        lambda: bool(app.fleet.recent_runs.get(vm_id(0))) and not screen.running and shown_whole(screen),
        "the streamed run",
    )
    # The output has the focus (its cursor on the last line): a TextArea that had it through a
    # run is drawn with or without its cursor, as the blink was when it last drew the line.
    screen.view.focus()
    assert await snapshot_of(web01, snap_compare)


@pytest.mark.anyio
async def test_runner_fleet(fleet: Kept, snap_compare: Any) -> None:
    """``a`` (every VM), ``x``, ctrl+r: a fleet run in progress, per-VM statuses, the first VM's output."""
    pilot = fleet.pilot
    await pilot.press("a")
    screen = await opened(fleet, "x", RunnerScreen)
    assert screen.fleet
    await pilot.press("ctrl+r")
    await until(pilot, lambda: len(screen.targets) == 12 and shown_whole(screen), "the fleet run's WatchCommand")
    screen.view.focus()  # as in test_runner_finished
    try:
        assert await snapshot_of(fleet, snap_compare)
    finally:
        # The run ends (cancelled, as the controller's stream says): the kept app runs nothing after the test.
        _controller.run_ended.set()  # type: ignore[attr-defined]
        await until(pilot, lambda: not screen.running, "the fleet run's end")


# ----------------------------------------------------------------------------- files, dialogs, audit, help


@pytest.mark.anyio
async def test_files_view(web01: Kept, snap_compare: Any) -> None:
    """``f`` on a VM, ctrl+o: /etc/os-release in the viewer with its size and SHA-256."""
    app, pilot = web01.app, web01.pilot
    await pilot.press("f")
    await pilot.pause()
    await pilot.press("ctrl+o")
    await until(pilot, lambda: bool(app.screen.query_one("#viewer", TextArea).text), "the file view")
    assert await snapshot_of(web01, snap_compare)


@pytest.mark.anyio
async def test_confirm_dialog(web01: Kept, snap_compare: Any) -> None:
    """``r`` on a VM: the reboot confirmation over the VM screen, Cancel focused."""
    await web01.pilot.press("r")
    assert await snapshot_of(web01, snap_compare)


@pytest.mark.anyio
async def test_password_dialog(web01: Kept, snap_compare: Any) -> None:
    """``w`` on a VM (admin token): user, two masked passwords typed, expire ticked."""
    pilot = web01.pilot
    await pilot.press("w")
    await pilot.pause()
    await pilot.press(*"s3cret!", "tab", *"s3cret!", "tab", "space")
    assert await snapshot_of(web01, snap_compare)


@pytest.mark.anyio
async def test_audit(fleet: Kept, snap_compare: Any) -> None:
    """``u`` on the fleet (admin token), fed eight records through show()."""
    screen = await opened(fleet, "u", AuditScreen)
    screen.show(demo_data.audit_records([vm.vm_id for vm in demo_data.fleet()]))
    assert await snapshot_of(fleet, snap_compare)


@pytest.mark.anyio
async def test_help(fleet: Kept, snap_compare: Any) -> None:
    """``?`` on the fleet."""
    await fleet.pilot.press("question_mark")
    assert await snapshot_of(fleet, snap_compare)


# ----------------------------------------------------------------------------- the fleet's refresh


def _churn(step: int) -> list[vm_pb.VM]:
    """60 VMs moving as bench/tui_bench.py moves 500: CPU every step, states, one VM swapped."""
    vms = demo_data.fleet(70, step)
    keep = vms[:59] + [vms[59 + (step // 3) % 11]]
    for vm in keep[12 + step % 40 : 15 + step % 40]:
        demo_data.set_unresponsive(vm)
    return keep


@pytest.mark.anyio
async def test_fleet_refresh_in_place_matches_a_rebuild() -> None:
    """The in-place refresh (cells updated, rows removed / added, DataTable.sort) shows what a
    rebuild would: every row's cells in the screen's order, the cursor on its VM, markup shown
    as text; with the CPU sort reordering rows on every update."""
    from limiquantix.tui.widgets.fleet_table import FleetTable
    from limiquantix.tui.widgets.fleet_table import row_cells as _cells

    app, _ = make_app()
    async with app.run_test(size=LARGE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        table = screen.query_one("#fleet", FleetTable)
        screen.sort_column, screen.sort_reverse = 6, True
        # 20 polls: the sort reorders rows at each (every CPU figure moves), VMs' states change
        # at each, one VM leaves and another arrives every third; the cursor is moved by hand
        # twice and stays on its VM through the polls after (test_tui_fleet_table's churns
        # check the same on 300 VMs, each line drawn).
        for step in range(20):
            fleet = _churn(step)
            if step == 7:
                fleet[20].name = "[bold]web[/bold] [1]"
            app.apply_fleet(fleet)
            await pilot.pause()
            if step in (5, 12):  # the cursor moved by hand (space selects and moves down)
                await pilot.press(*(("down",) * 3 if step == 5 else ("space", "down", "space")))
                cursor_vm = screen._order[table.cursor_row]
            elif step > 5:
                assert screen._order[table.cursor_row] == cursor_vm
            visible = screen._visible()
            assert [vm.vm_id for vm in visible] == screen._order
            assert table.row_count == len(visible)
            for i, vm in enumerate(visible):
                shown = [c.plain if hasattr(c, "plain") else c for c in table.get_row_at(i)]
                want = [
                    c.plain if hasattr(c, "plain") else c
                    for c in _cells(vm, vm.vm_id in app.fleet.selected, screen.tier)
                ]
                assert shown == want, (step, i)
            if step == 7:  # a name that reads as markup is stored as Text: shown as is
                row = table.get_row(fleet[20].vm_id)
                assert isinstance(row[1], Text) and row[1].plain == "[bold]web[/bold] [1]"
        assert len(app.fleet.selected) == 2
        names = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert len(set(names)) == len(names)


# ----------------------------------------------------------------------------- the data itself


def test_demo_data_is_deterministic() -> None:
    """Same answers on every call (what the SVGs rely on); every agent state is shown."""
    assert demo_data.fleet(500, 7) == demo_data.fleet(500, 7)
    assert demo_data.vm_detail(3, 2) == demo_data.vm_detail(3, 2)
    states = {(vm.agent_state, vm.node_reachable) for vm in demo_data.fleet()}
    assert {s for s, _ in states} >= {
        "connected",
        "unresponsive",
        "waiting_for_agent",
        "connecting",
        "no_socket",
        "disabled",
    }
    assert ("connected", False) in states


@pytest.fixture(autouse=True)
def _no_real_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: a still app must not poll even if a screen forgets."""
    monkeypatch.setattr(LimiQuantixApp, "refresh_fleet", _refuse)


async def _refuse(self: LimiQuantixApp) -> None:
    raise AssertionError("the still app polled the controller")
