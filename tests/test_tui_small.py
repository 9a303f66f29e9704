"""The TUI at the terminal sizes operators have (80×24 and 60×20), read off the rendered
screen with Pilot, and the smaller bugs of issue 13's bug 10 that have no test elsewhere.

The app is the still demo app (``limiquantix.tui.demo_data``: no poll, a fixed clock)
over an ``httpx.MockTransport`` playing the controller (application/proto, as the TUI
asks): the screens' real code paths run, nothing else does. The tests that start on
web-01's VM screen share one app (``web01``: test_tui_snapshots.KeptApp), brought back to
that screen at 80x24 after each.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
from test_tui_snapshots import (
    Kept,
    KeptApp,
    _answer,
    at_size,
    enter_web01,
    kept_app,
    opened,
    screen_text,
    until,
)
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Button, Input, Static, TextArea

from limiquantix.protocol._gen import vm_service_pb2 as vm_pb
from limiquantix.tui import ControllerClient, LimiQuantixApp, demo_data
from limiquantix.tui.screens.audit import AuditDetail, AuditScreen
from limiquantix.tui.screens.dialogs import ConfirmDialog
from limiquantix.tui.screens.files import FilesScreen
from limiquantix.tui.screens.runner import RunnerScreen

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quick_pilot", "shared_css")]

SMALL = (80, 24)
TINY = (60, 20)
SIZES = (SMALL, TINY)
"""Each test of a size starts the app at the first and resizes it to the next (an operator's
terminal resized; one app start instead of one per size, where a start costs more)."""
Handler = Callable[[httpx.Request], httpx.Response]
_S = TypeVar("_S", bound=Screen[Any])


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _streamed(events: list[vm_pb.ExecuteScriptEvent]) -> httpx.Response:
    frames = [e.SerializeToString() for e in events] + [b"{}"]
    body = b"".join(struct.pack(">BI", 2 if i == len(events) else 0, len(f)) + f for i, f in enumerate(frames))
    return httpx.Response(200, content=body, headers={"Content-Type": "application/connect+proto"})


def _unimplemented(request: httpx.Request) -> httpx.Response:
    return httpx.Response(501, json={"code": "unimplemented", "message": "not in this test's controller"})


def _app(handler: Handler = _unimplemented) -> tuple[LimiQuantixApp, Callable[[], None]]:
    # insecure: controller.example is a MockTransport, no token leaves the process.
    client = ControllerClient(
        demo_data.CONTROLLER_URL, "demo-token", transport=httpx.MockTransport(handler), insecure=True
    )
    return demo_data.demo_app(client=client, history=3)


async def _open_vm(pilot: Pilot[None], app: LimiQuantixApp) -> None:
    """web-01 (the 9th row by name) with a GetVM answer drawn."""
    screen = await enter_web01(pilot, app)
    screen.show(demo_data.vm_detail(0))
    await pilot.pause()


class _Controller:
    """The kept app's controller: the running test's answers (``handler``), unimplemented
    between tests."""

    def __init__(self) -> None:
        self.handler: Handler = _unimplemented

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


_CONTROLLER = _Controller()


async def _at_small(pilot: Pilot[None], app: LimiQuantixApp) -> None:
    await at_size(pilot, app, SMALL)


@pytest.fixture(scope="module")
async def _web01_app() -> AsyncIterator[KeptApp]:
    async with kept_app(_open_vm, reset=_at_small, make=lambda: _app(_CONTROLLER)) as kept:
        yield kept


@pytest.fixture
async def web01(_web01_app: KeptApp) -> AsyncIterator[Kept]:
    """web-01's VM screen, its fleet fed (3 polls), at SMALL: one app for the module's tests
    that start there (tests/test_tui_snapshots.KeptApp); their controller's answers are
    ``_CONTROLLER.handler``'s."""
    try:
        async with _web01_app.lend() as kept:
            yield kept
    finally:
        _CONTROLLER.handler = _unimplemented


async def _open_from_vm(kept: Kept, key: str, kind: type[_S], answers: Handler = _unimplemented) -> _S:
    """``key`` on web-01's VM screen, the controller answering with ``answers``: the screen
    it opens (a ``kind``)."""
    _CONTROLLER.handler = answers
    return await opened(kept, key, kind)


# ----------------------------------------------------------------------------- sizes


async def test_fleet_figures_and_help_stay_whole() -> None:
    """Every column header shown whole (Uptime read "Upti" at 60), the footer keeps "? Help"."""
    app, feed = _app()
    async with app.run_test(size=SIZES[0]) as pilot:
        feed()
        await pilot.pause()
        for size in SIZES:
            await at_size(pilot, app, size)
            # The footer draws its keys after the table (blank after one pause on a loaded machine).
            await until(pilot, lambda: bool(screen_text(app)[-1].strip()), "the footer")
            lines = screen_text(app)
            header = next(line for line in lines if " Name " in line)
            wide = ["OS", "IP"] if size == SMALL else []
            assert header.split() == ["Name", "State", *wide, "CPU", "Mem", "Uptime"], size
            assert all(len(line) <= size[0] for line in lines)
            web = next(line for line in lines if " web-01 " in line)
            assert web.split()[-3:] == ["16%", "31%", "36d02h"], web  # the figures, whole
            footer = lines[-1]
            assert footer.rstrip().endswith("? Help"), footer
            assert "⏎ Details" in footer and "/ Filter" in footer
            assert "q Q " not in footer + " " and not footer.rstrip().endswith("q Q"), footer  # whole keys or none


async def test_vm_screen_footer_keeps_help(web01: Kept) -> None:
    app, pilot = web01.app, web01.pilot
    for size in SIZES:
        await at_size(pilot, app, size)
        footer = screen_text(app)[-1]
        assert len(footer) == size[0], size
        assert footer.rstrip().endswith("? Help") and footer.startswith("esc Back"), footer
        # Keys that do not fit are left out whole, never cut (the last shown one is whole).
        keys = footer.split("? Help")[0].split()
        assert all(word in {"esc", "Back", "x", "Script", "f", "Files", "p", "Off", "r", "Reboot", "w", "Passwd",
                            "g", "Ping", "q", "Quit", "j", "Jobs"} for word in keys), footer  # fmt: skip


async def test_recent_runs_keep_exit_and_ms_visible(web01: Kept) -> None:
    """A run whose first line is long: the command is cut, Exit and ms stay on screen; the
    options row keeps Run and Cancel whole."""
    long_line = "for host in $(seq 1 100); do echo checking a rather long command line $host; done"

    def controller(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ExecuteScriptStream"):
            result = vm_pb.ExecuteScriptResponse(exit_code=3, exit_reason="exited", duration_ms=123456)
            return _streamed([vm_pb.ExecuteScriptEvent(execution_id="e1"), vm_pb.ExecuteScriptEvent(result=result)])
        return _unimplemented(request)

    app, pilot = web01.app, web01.pilot
    runner = await _open_from_vm(web01, "x", RunnerScreen, controller)
    runner.query_one("#script", TextArea).load_text(long_line)
    await pilot.press("ctrl+r")
    await until(pilot, lambda: bool(app.fleet.recent_runs.get(runner.vm_ids[0])) and not runner.running, "the run")
    for size in SIZES:
        await at_size(pilot, app, size)
        lines = screen_text(app)
        assert all(len(line) == size[0] for line in lines), size
        header = next(line for line in lines if "Recent runs" in line)
        assert header.rstrip().endswith("ms") and "Exit" in header, header
        row = lines[lines.index(header) + 1]  # the table's first row: the newest run
        assert row.split()[-2:] == ["3", "123456"], row
        assert "for h" in row and "…" in row and long_line not in row, row
        options = next(line for line in lines if "timeout s" in line)
        assert "Run ^R" in options and "Cancel ^B" in options, options


async def test_a_vm_no_longer_reported_shows_its_state_and_last_seen() -> None:
    """``off``/``gone`` (or any state a newer controller names) are shown as they arrive, the
    VM screen saying when the VM was last seen."""
    app, feed = _app()
    async with app.run_test(size=SMALL) as pilot:
        feed()
        vms = demo_data.fleet()
        # gone: the controller's state (its node no longer reports it); a newer agent state as it arrives.
        vms[0].state, vms[1].agent_state = "gone", "hibernating"
        vms[0].last_seen.CopyFrom(demo_data.timestamp(demo_data.FIXED_TIME - 300))
        vms[0].last_reported.CopyFrom(demo_data.timestamp(demo_data.FIXED_TIME - 120))
        app.apply_fleet(vms)
        await pilot.pause()
        lines = screen_text(app)
        assert "● gone 1" in lines[1] + lines[2] and "● hibernating 1" in lines[1] + lines[2]
        assert any(" web-01 " in line and " gone " in line for line in lines)
        await enter_web01(pilot, app)
        title = "\n".join(screen_text(app)[1:4])
        assert "gone" in title and "last seen 5 min ago" in title and "last reported by its node 2 min ago" in title, (
            title
        )


# ----------------------------------------------------------------------------- bug 10, the rest


async def test_a_binary_file_is_said_read_not_shown_in_header_and_body(web01: Kept) -> None:
    """The header said "first 1.0 MiB shown" while the body said "not shown"."""
    content = bytes(range(256)) * 8

    def controller(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ReadGuestFile"):
            sha = hashlib.sha256(content).hexdigest()
            return _answer(vm_pb.ReadGuestFileResponse(content=content, size=3 * len(content), sha256=sha))
        return _unimplemented(request)

    files = await _open_from_vm(web01, "f", FilesScreen, controller)
    files.query_one("#guest-path", Input).value = "/usr/bin/thing"
    await web01.pilot.press("ctrl+o")
    await until(web01.pilot, lambda: "SHA-256" in str(files.query_one("#transfer", Static).render()), "the view")
    header = str(files.query_one("#transfer", Static).render())
    assert "binary" in header and "read, not shown" in header and "shown:" not in header, header
    assert "not shown" in files.query_one("#viewer", TextArea).text


async def test_the_upload_says_it_waits_for_the_guest_once_every_byte_is_sent(web01: Kept, tmp_path: Path) -> None:
    """The bar sat at 100 % beside "uploading…": once sent, the status says the guest commits."""
    local = tmp_path / "up.bin"
    local.write_bytes(b"x" * (600 * 1024))  # three upload chunks
    seen: dict[str, Any] = {}

    def controller(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/WriteGuestFile"):
            # The whole body is sent before the controller answers: what the screen says meanwhile.
            files = web01.app.screen
            assert isinstance(files, FilesScreen)
            seen["status"] = str(files.query_one("#transfer", Static).render())
            seen["request"] = vm_pb.WriteGuestFileRequest.FromString(request.content)
            data = seen["request"].content
            return _answer(
                vm_pb.WriteGuestFileResponse(bytes_written=len(data), sha256=hashlib.sha256(data).hexdigest())
            )
        return _unimplemented(request)

    files = await _open_from_vm(web01, "f", FilesScreen, controller)
    files.query_one("#guest-path", Input).value = "/tmp/up.bin"
    files.query_one("#local-path", Input).value = str(local)
    await web01.pilot.press("ctrl+t")
    await until(web01.pilot, lambda: "= local file" in str(files.query_one("#transfer", Static).render()), "the upload")
    assert "waiting for the guest to check and commit /tmp/up.bin" in seen["status"], seen["status"]
    request = seen["request"]
    assert (request.vm_id, request.path, request.create_parents) == (demo_data.fleet()[0].vm_id, "/tmp/up.bin", True)
    assert request.content == local.read_bytes()  # the body written field by field is one valid message


@contextlib.asynccontextmanager
async def _on_audit() -> AsyncIterator[tuple[LimiQuantixApp, Pilot[None], AuditScreen]]:
    """A fed app at SMALL size, on its audit screen."""
    app, feed = _app()
    async with app.run_test(size=SMALL) as pilot:
        feed()
        await pilot.pause()
        await pilot.press("u")
        await pilot.pause()
        audit = app.screen
        assert isinstance(audit, AuditScreen)
        yield app, pilot, audit


async def test_audit_counts_its_rows_in_words() -> None:
    async with _on_audit() as (app, _pilot, audit):
        notes: list[str] = []
        app.notify = lambda message, **_: notes.append(message)  # type: ignore[method-assign]
        records = demo_data.audit_records([vm.vm_id for vm in demo_data.fleet()])
        for rows, said in [(1, "1 audit row"), (2, "2 audit rows"), (0, "0 audit rows")]:
            notes.clear()
            audit.show(records[:rows])
            assert notes == [said]


async def test_an_audit_rows_detail_opens_centred() -> None:
    """The row's detail dialog was drawn at the screen's top left, over the filters."""
    async with _on_audit() as (app, pilot, audit):
        audit.show(demo_data.audit_records([vm.vm_id for vm in demo_data.fleet()]))
        audit.query_one("#audit").focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, AuditDetail), "the row's detail")
        await pilot.pause()
        box = app.screen.query_one(".dialog").region
        left, right = box.x, SMALL[0] - box.right
        assert left > 0 and abs(left - right) <= 1, box


async def test_escape_during_an_upload_asks_with_buttons_that_say_what_they_do(web01: Kept) -> None:
    """Escape during an upload asks first; its buttons were "Cancel upload" and "Cancel", and
    "Cancel" kept the upload going."""
    app, pilot = web01.app, web01.pilot
    files = await _open_from_vm(web01, "f", FilesScreen)
    # A stand-in for the upload's worker (only whether it runs, and its cancel, are used).
    cancelled: list[bool] = []
    files.upload = SimpleNamespace(is_running=True, cancel=lambda: cancelled.append(True))  # type: ignore[assignment]
    try:
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the question")
        labels = [str(b.label) for b in app.screen.query(Button)]
        assert labels == ["Cancel upload", "Keep uploading"]
        assert app.screen.focused is not None and str(app.screen.focused.label) == "Keep uploading"  # type: ignore[attr-defined]
        await pilot.press("enter")  # the focused button: the upload goes on
        await until(pilot, lambda: app.screen is files, "back on Files")
        assert not cancelled
    finally:
        files.upload = None  # no upload: escape leaves the screen (the kept app goes back)


_JOBS_COLUMNS = ["#", "State", "VMs", "Script", "Result", "Time"]


async def test_the_jobs_screen_shows_every_column_at_60_columns() -> None:
    """At 60 columns the jobs list cut its Result and Time columns off (the script, a free
    text as wide as it was, pushed them out): every column shows at 80 and 60 columns, the
    script is what is cut ("…"), and a long result gives up cells only at 60."""
    app, feed = _app()
    async with app.run_test(size=SMALL) as pilot:
        feed()
        one = app.jobs.new(["web-01"], "for i in $(seq 1 100); do echo a rather long script line; done", 60, "")
        one.finish("success", "exit code 0")
        fleet = app.jobs.new(["web-01", "web-02", "web-03"], "apt-get -qq update && apt-get -y upgrade", 0, "")
        fleet.finish("failed", "failed 1  success 2")
        app.jobs.new(["db-01"], "sleep 30", 60, "")  # still running
        await pilot.press("j")
        await pilot.pause()
        for size in SIZES:
            await at_size(pilot, app, size)
            # The table's columns are set again at a new width: drawn a frame later, maybe.
            await until(pilot, lambda: any(line.split() == _JOBS_COLUMNS for line in screen_text(app)), f"{size}")
            lines = screen_text(app)
            rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("1", "2", "3")}
            assert "running" in rows["3"] and "db-01" in rows["3"] and "sleep" in rows["3"], rows
            assert "exit code 0" in rows["1"] and "web-01" in rows["1"] and "for i" in rows["1"], rows
            assert "…" in rows["1"] and "long script line" not in rows["1"], rows  # the script is cut
            assert rows["1"].rstrip().endswith(" s") and rows["2"].rstrip().endswith(" s"), rows  # Time shows
            assert "3 VMs" in rows["2"] and "failed 1" in rows["2"], rows
            assert ("failed 1  success 2" in rows["2"]) == (size == SMALL), rows


async def test_a_key_the_token_may_not_use_says_why_once_per_press() -> None:
    """A viewer's x (run) on the fleet and on a VM, and p (power), were ignored without a word
    (the footer hides them): each press says why, once."""
    from limiquantix.tui._client import WhoAmI

    app, feed = _app()
    async with app.run_test(size=SMALL) as pilot:
        feed()
        app.me = WhoAmI(user="val", role="viewer", token_id="t", permissions=frozenset({"vm.read"}), label_scope={})
        app.clear_notifications()
        await pilot.press("x", "x")
        await pilot.pause()
        said = [n.message for n in app._notifications]
        assert said == ["your token's role viewer may not run commands"] * 2, said
        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "VMScreen", "the VM screen")
        app.clear_notifications()
        await pilot.press("p")
        await pilot.pause()
        assert [n.message for n in app._notifications] == ["your token's role viewer may not shut down or reboot VMs"]


async def test_the_jobs_and_audit_footers_show_what_enter_does() -> None:
    """The focused table's own enter binding (hidden) shadowed the screen's: the footer showed
    neither "⏎ Open" (jobs) nor "⏎ Details" (audit), though enter did both."""
    app, feed = _app()
    async with app.run_test(size=SMALL) as pilot:
        feed()
        await pilot.pause()
        await pilot.press("j")
        await pilot.pause()
        assert "⏎ Open" in screen_text(app)[-1], screen_text(app)[-1]
        await pilot.press("escape", "u")
        await pilot.pause()
        audit = app.screen
        assert isinstance(audit, AuditScreen)
        assert "⏎ Details" in screen_text(app)[-1], screen_text(app)[-1]
        loads: list[bool] = []
        audit._start_load = lambda *, quiet: loads.append(quiet)  # type: ignore[method-assign]
        audit.query_one("#filter-action", Input).focus()
        await pilot.press("enter")  # in a filter: applies the filters, opens nothing
        assert loads == [False] and app.screen is audit
        audit.show(demo_data.audit_records([vm.vm_id for vm in demo_data.fleet()]))
        audit.query_one("#audit").focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, AuditDetail), "the row's detail")


async def test_viewing_a_directory_lists_it_and_enter_opens_an_entry(web01: Kept) -> None:
    """Viewing /etc stopped at "/etc: Is a directory": it is listed, enter on an entry opens it
    (a file viewed, a directory listed, ../ going up), guest names escaped."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from limiquantix.protocol import errors
    from limiquantix.protocol._gen import agent_pb2 as agent_pb
    from limiquantix.protocol.rpc._errors import error_json

    tree = {"/etc": ["hosts", "ssl", "bad\x1b[2Jname"], "/etc/ssl": ["certs"], "/": ["etc"]}
    listed: list[str] = []

    def controller(request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        if method == "ReadGuestFile":
            path = vm_pb.ReadGuestFileRequest.FromString(request.content).path
            if path in tree:
                refusal = errors.FailedPrecondition(f"{path}: Is a directory", reason="is_a_directory")
                return httpx.Response(400, json=error_json(refusal))
            return _answer(vm_pb.ReadGuestFileResponse(content=b"127.0.0.1 localhost\n", size=20, sha256="ab"))
        if method == "ListGuestDirectory":
            path = vm_pb.ListGuestDirectoryRequest.FromString(request.content).path
            listed.append(path)
            entries = [
                agent_pb.FileStat(
                    name=name,
                    path=f"{path.rstrip('/')}/{name}",
                    type=agent_pb.FILE_TYPE_DIRECTORY
                    if f"{path.rstrip('/')}/{name}" in tree
                    else agent_pb.FILE_TYPE_REGULAR,
                    size=20,
                    mode=0o644,
                    owner="root",
                    group="root",
                    modified=Timestamp(seconds=1_700_000_000),
                )
                for name in sorted(tree[path])
            ]
            return _answer(vm_pb.ListGuestDirectoryResponse(entries=entries))
        return _unimplemented(request)

    pilot = web01.pilot
    files = await _open_from_vm(web01, "f", FilesScreen, controller)
    viewer = files.query_one("#viewer", TextArea)
    status = files.query_one("#transfer", Static)
    files.query_one("#guest-path", Input).value = "/etc"
    await pilot.press("ctrl+o")
    await until(pilot, lambda: "directory, 3 entries" in str(status.render()), "the listing")
    lines = viewer.text.splitlines()
    assert lines[0].endswith("../") and lines[1].startswith("-rw-r--r--  root")
    assert [line.rsplit("  ", 1)[1] for line in lines] == ["../", "bad\\x1b[2Jname", "hosts", "ssl/"]
    viewer.focus()
    viewer.move_cursor((3, 0))
    await pilot.press("enter")  # ssl/: listed in turn
    await until(pilot, lambda: listed[-1:] == ["/etc/ssl"], "the subdirectory")
    await until(pilot, lambda: "/etc/ssl: directory, 1 entry" in str(status.render()), "its listing")
    assert files.query_one("#guest-path", Input).value == "/etc/ssl"
    viewer.move_cursor((0, 0))
    await pilot.press("enter")  # ../
    await until(pilot, lambda: listed[-1:] == ["/etc"] and len(listed) == 3, "back up")
    await until(pilot, lambda: "/etc: directory" in str(status.render()), "the parent's listing")
    viewer.move_cursor((2, 0))
    await pilot.press("enter")  # hosts: a file, viewed
    await until(pilot, lambda: viewer.text == "127.0.0.1 localhost\n", "the file")
    assert files.listing == [] and "/etc/hosts: 20 B" in str(status.render())


async def test_download_writes_the_guest_file_checked_and_asks_before_replacing(
    web01: Kept, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files could view and upload but not download: ctrl+s saves the guest path locally
    (SHA-256 checked), an existing file only after a confirmation, a file over the limit refused."""
    from limiquantix.tui._client import MAX_DOWNLOAD_BYTES
    from limiquantix.tui.widgets.path_dialog import PathDialog

    monkeypatch.chdir(tmp_path)
    data = b"line\n" * 1000
    sizes = {"/var/log/app.log": len(data), "/var/log/huge.log": MAX_DOWNLOAD_BYTES + 1}
    asked: list[int] = []

    def controller(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ReadGuestFile"):
            ask = vm_pb.ReadGuestFileRequest.FromString(request.content)
            asked.append(ask.length)
            sent = data if ask.path == "/var/log/app.log" else b"x" * 10
            return _answer(
                vm_pb.ReadGuestFileResponse(content=sent, size=sizes[ask.path], sha256=hashlib.sha256(sent).hexdigest())
            )
        return _unimplemented(request)

    app, pilot = web01.app, web01.pilot
    files = await _open_from_vm(web01, "f", FilesScreen, controller)
    status = files.query_one("#transfer", Static)
    files.query_one("#guest-path", Input).value = "/var/log/app.log"
    await pilot.press("ctrl+s")
    await until(pilot, lambda: isinstance(app.screen, PathDialog), "the local path asked")
    assert app.screen.query_one("#path", Input).value == "app.log"  # the guest file's name
    await pilot.press("enter")
    await until(pilot, lambda: "= guest file" in str(status.render()), "the download")
    assert (tmp_path / "app.log").read_bytes() == data and asked == [MAX_DOWNLOAD_BYTES]
    # Again: the file exists, so it asks; "Cancel" keeps it.
    (tmp_path / "app.log").write_bytes(b"mine")
    await pilot.press("ctrl+s")
    await until(pilot, lambda: isinstance(app.screen, PathDialog), "the local path asked again")
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "replace?")
    await pilot.press("escape")
    await pilot.pause()
    assert (tmp_path / "app.log").read_bytes() == b"mine" and len(asked) == 1
    # Over the limit: refused, pointing at limiquantix cp, nothing written.
    files.query_one("#guest-path", Input).value = "/var/log/huge.log"
    await pilot.press("ctrl+s")
    await until(pilot, lambda: isinstance(app.screen, PathDialog), "the local path for the huge file")
    await pilot.press("enter")
    await until(pilot, lambda: "limiquantix cp" in str(status.render()), "the refusal")
    assert not (tmp_path / "huge.log").exists()
    assert not list(tmp_path.glob(".*.part"))


async def test_help_uses_the_height_it_has() -> None:
    """The help was 22 rows whatever the terminal: at 120×40 most of it scrolled out of view."""
    app, feed = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        feed()
        await pilot.pause()
        await pilot.press("question_mark")
        await pilot.pause()
        box = app.screen.query_one(".help")
        assert box.region.height == 36, box.region  # 90 % of the screen
        await at_size(pilot, app, SMALL)
        assert box.region.height <= SMALL[1] and box.max_scroll_y > 0  # scrolls on a small one
