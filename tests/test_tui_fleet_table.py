"""The fleet table (tui/widgets/fleet_table.py) with hundreds of VMs (thousands in the slow
tier): what is on screen after each churn is right (order, cells, cursor, selection), only the
rows on screen are built, the column widths are those of the widest cells, and the operator's
keys and clicks work.

The app is the still demo app (``limiquantix.tui.demo_data``: no poll, a fixed clock) fed by
``apply_fleet``, as bench/tui_bench.py feeds it; nothing here is timed (the benchmark times
5,000 VMs). A fleet of COUNT VMs is eight screens of rows: what these tests show (rows far
below the screen, only the screen's rows built, the cursor kept on its VM while the sort moves
it) is the same at 300 as at 3,000; the churns run at 3,000 too, in the slow tier.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from rich.cells import cell_len
from rich.text import Text
from test_tui_snapshots import until

from limiquantix.protocol._gen.vm_service_pb2 import VM
from limiquantix.tui import LimiQuantixApp, demo_data
from limiquantix.tui.screens.fleet import FleetScreen
from limiquantix.tui.screens.vm import VMScreen
from limiquantix.tui.widgets.fleet_table import (
    COLUMNS,
    MAX_CELL_WIDTH,
    FleetTable,
    column_widths,
    row_cells,
    shown_columns,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quick_pilot", "shared_css")]

SIZE = (120, 40)
COUNT = 300
"""VMs in the fleet (SIZE shows 39 rows of it)."""
CPU = [column.key for column in COLUMNS].index("cpu")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _churn(step: int, count: int = COUNT) -> list[VM]:
    """``count`` VMs moving as the benchmark's do: every figure moves, 7 VMs turn unresponsive
    (other ones each step), and a few VMs leave and others arrive at every step."""
    pool = demo_data.fleet(count + 40, step)
    keep = pool[: count - 20] + pool[count - 20 + step % 20 : count + step % 20]
    for vm in keep[100 + step * 7 : 107 + step * 7]:
        demo_data.set_unresponsive(vm)
    return keep


def _expected(app: LimiQuantixApp, screen: FleetScreen) -> list[VM]:
    """The screen's order computed the plain way: one sort by (the column's key, VM id)."""
    key = COLUMNS[screen.sort_column].sort_key
    return sorted(app.fleet.vms.values(), key=lambda vm: (key(vm), vm.vm_id), reverse=screen.sort_reverse)


def _lines(app: LimiQuantixApp) -> list[str]:
    return [strip.text for strip in app.screen._compositor.render_strips()]


def _rows_drawn(app: LimiQuantixApp, table: FleetTable) -> list[str]:
    """The table's lines on screen below its header, without the scrollbar."""
    region, width = table.region, table.scrollable_content_region.width
    return [line[region.x : region.x + width] for line in _lines(app)[region.y + 1 : region.bottom]]


def _plain(cells: tuple[str | Text, ...]) -> list[str]:
    return [cell.plain if isinstance(cell, Text) else cell for cell in cells]


def _check_screen(app: LimiQuantixApp, screen: FleetScreen, table: FleetTable) -> None:
    """Every VM in the expected order; each line drawn is its VM's row, the cursor's VM under
    the cursor; each selected VM marked."""
    want = _expected(app, screen)
    assert table.order == [vm.vm_id for vm in want]
    assert table.row_count == len(app.fleet.vms)
    drawn = _rows_drawn(app, table)
    first = table.scroll_offset.y
    assert first <= table.cursor_row < first + len(drawn)  # the cursor is on screen
    for offset, line in enumerate(drawn):
        vm = want[first + offset]
        cells = _plain(row_cells(vm, vm.vm_id in app.fleet.selected, table.tier))
        assert line.split() == [c for cell in cells for c in cell.split()], (offset, line)
        assert _plain(table.get_row_at(first + offset)) == cells


async def _fed(
    app: LimiQuantixApp, pilot: Any, *, by_cpu: bool = False, count: int = COUNT
) -> tuple[FleetScreen, FleetTable]:
    """The fleet screen and its table, fed ``_churn(0, count)`` (sorted by CPU, highest first, or by name)."""
    screen = app.screen
    assert isinstance(screen, FleetScreen)
    if by_cpu:
        screen.sort_column, screen.sort_reverse = CPU, True
    app.apply_fleet(_churn(0, count))
    await pilot.pause()
    return screen, screen.table


@pytest.mark.parametrize("count", [COUNT, pytest.param(3000, marks=pytest.mark.slow)])
async def test_many_vms_after_churns_keep_order_cursor_and_selection(count: int) -> None:
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _fed(app, pilot, by_cpu=True, count=count)
        _check_screen(app, screen, table)
        # Down the list: the cursor well below the first screenful, three VMs selected on the way.
        await pilot.press("pagedown", "pagedown", "down", "space", "space", "down", "down", "space")
        await pilot.pause()
        selected = set(app.fleet.selected)
        assert len(selected) == 3
        cursor_vm = table.cursor_vm
        assert cursor_vm is not None and table.cursor_row > 60
        for step in range(1, 8):
            app.apply_fleet(_churn(step, count))
            await pilot.pause()
            _check_screen(app, screen, table)
            assert table.cursor_vm == cursor_vm  # the cursor stays on its VM as the CPU sort moves it
            assert app.fleet.selected == selected
            assert sum(1 for vm_id in table.order if table.get_row(vm_id)[0] != " ") == len(selected)
        # Sorted by name, then reversed: still the cursor's VM, still every row right.
        screen.sort_column, screen.sort_reverse = 0, False
        screen.fleet_updated()
        await pilot.pause()
        _check_screen(app, screen, table)
        await pilot.press("S")
        await pilot.pause()
        assert screen.sort_reverse
        _check_screen(app, screen, table)
        assert table.cursor_vm == cursor_vm


async def test_only_the_rows_on_screen_are_built() -> None:
    """A poll that changes every VM builds the rows on screen, not the fleet's; a poll that
    changes nothing builds none. (Each poll's screen is drawn before counting: Textual draws
    on its own timer, which a pause does not always wait for.)"""
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _fed(app, pilot, by_cpu=True)
        _lines(app)
        on_screen = table.region.height - 1
        for step in (1, 2):
            built = table.rows_built
            app.apply_fleet(_churn(step))
            await pilot.pause()
            _lines(app)
            assert 0 < table.rows_built - built <= on_screen
        built = table.rows_built
        app.apply_fleet(_churn(2))  # the same answer again (new messages, equal ones)
        await pilot.pause()
        _check_screen(app, screen, table)
        assert table.rows_built == built


async def test_keys_and_clicks() -> None:
    """Page keys and ctrl+end / ctrl+home move the cursor and scroll; a click on a row moves the
    cursor there, a click on the cursor's row (or enter) opens the VM; a click on a header sorts."""
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _fed(app, pilot)
        await pilot.press("ctrl+end")
        await pilot.pause()
        assert table.cursor_row == COUNT - 1
        _check_screen(app, screen, table)
        assert _rows_drawn(app, table)[-1].split()[0] == _expected(app, screen)[-1].name
        await pilot.press("ctrl+home", "pagedown")
        await pilot.pause()
        page = table.region.height - 1
        assert table.cursor_row == page and table.scroll_offset.y == page
        _check_screen(app, screen, table)
        await pilot.press("pageup")
        assert table.cursor_row == 0
        # A click on the 4th row moves the cursor; a second one opens that VM.
        target = table.order[3]
        assert await pilot.click(FleetTable, offset=(5, 4))
        assert table.cursor_row == 3
        assert await pilot.click(FleetTable, offset=(5, 4))
        await pilot.pause()
        assert isinstance(app.screen, VMScreen) and app.screen.vm_id == target
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        # The header: "State" sorts by state, a second click reverses; the mark's column does nothing.
        x = _lines(app)[table.region.y].index(" State ") + 1
        assert await pilot.click(FleetTable, offset=(x, 0))
        await pilot.pause()
        assert COLUMNS[screen.sort_column].key == "state" and not screen.sort_reverse
        _check_screen(app, screen, table)
        assert await pilot.click(FleetTable, offset=(x, 0))
        await pilot.pause()
        assert screen.sort_reverse
        assert await pilot.click(FleetTable, offset=(1, 0))
        await pilot.pause()
        assert COLUMNS[screen.sort_column].key == "state" and screen.sort_reverse
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, VMScreen) and app.screen.vm_id == table.order[table.cursor_row]


async def test_filter_keeps_the_columns_and_the_cursor() -> None:
    """A filter shows only the matching VMs, in order; the columns keep the fleet's widths (they
    do not jump while the filter is typed); clearing it brings every VM back."""
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _fed(app, pilot)
        header = _lines(app)[table.region.y]
        await pilot.press("slash", *"vm-02", "enter")
        await pilot.pause()
        names = [vm.name for vm in _expected(app, screen) if "vm-02" in vm.name]
        assert [table.get_row(vm_id)[1].plain for vm_id in table.order] == names  # type: ignore[union-attr]
        assert len(names) == 100
        assert _lines(app)[table.region.y] == header
        await pilot.press("down", "down")
        cursor_vm = table.cursor_vm
        await pilot.press("escape")
        await pilot.pause()
        assert table.row_count == COUNT and table.cursor_vm == cursor_vm
        _check_screen(app, screen, table)


def _odd_vms() -> list[VM]:
    """VMs whose guest-chosen fields are what a hostile or broken guest may report."""
    vms = demo_data.fleet(14)
    odd: list[dict[str, Any]] = [
        {"name": "\x1b]0;pwned\x07evil", "os": "Evil\x1b]52;c;cHduZWQ= OS"},
        {"name": "[bold]markup[/bold] 名前テスト", "ip_addresses": ["2001:db8::1", "192.0.2.99"]},
        {"name": "x" * 80, "ip_addresses": ["9" * 300], "cpu_percent": 1e300, "memory_percent": -3.5},
        {"cpu_percent": math.nan, "memory_percent": math.inf, "uptime_seconds": math.nan},
        {"uptime_seconds": -5.0, "agent_version": "\u202e1.0"},
        {"uptime_seconds": 1e300, "node_id": "node-\u2066z"},
        {"agent_state": "weird\x1b[2J", "cpu_percent": 100.0},
    ]
    for vm, fields in zip(vms, odd, strict=False):
        for key, value in fields.items():
            if key == "ip_addresses":
                del vm.ip_addresses[:]
                vm.ip_addresses.extend(value)
            else:
                setattr(vm, key, value)
    vms[9].state = "off"
    vms[10].state = "gone"
    return vms


@pytest.mark.parametrize("tier", [0, 1, 2])
def test_column_widths_are_the_widest_cells(tier: int) -> None:
    """column_widths (computed from the fields, without building cells) equals the widest cell
    row_cells gives, capped, for odd values too: escapes, wide characters, NaN, infinities,
    negative and enormous figures, an IPv6 address first, unknown and off/gone states."""
    vms = _odd_vms()
    for subset in (vms, vms[:1], vms[3:4], [vm for vm in vms if vm.agent_state != "connected"], []):
        rows = [row_cells(vm, False, tier) for vm in subset]
        want = tuple(
            min(max((cell_len(_plain(row)[i]) for row in rows), default=0), MAX_CELL_WIDTH)
            for i in range(1 + len(shown_columns(tier)))
        )
        got = column_widths(subset, tier)
        labels = [1, *(cell_len(c.label) for c in shown_columns(tier))]
        # Where the label is wider the label decides: the uptime column's content width is a
        # bound that never exceeds its label's ("Uptime"), as the drawn table shows.
        assert [max(g, lab) for g, lab in zip(got, labels, strict=True)] == [
            max(w, lab) for w, lab in zip(want, labels, strict=True)
        ]
        assert all(g >= w for g, w in zip(got, want, strict=True))
        assert got[0] == 1


async def test_guest_text_is_escaped_and_odd_figures_are_drawn() -> None:
    """Controls and bidi characters shown escaped, markup shown as typed, wide characters
    aligned, a 300-character address cut to the cap with an ellipsis, NaN/inf/negative figures
    drawn without an error; every line exactly as wide as the screen."""
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=(200, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        table = screen.table
        app.apply_fleet(_odd_vms())
        await pilot.pause()
        lines = _lines(app)
        text = "\n".join(lines)
        for shown in ("\\x1b]0;pwned\\x07evil", "Evil\\x1b]52;c;cHduZWQ= OS", "[bold]markup[/bold] 名前テスト",
                      "\\u202e1.0", "node-\\u2066z", "weird\\x1b[2J", "9" * (MAX_CELL_WIDTH - 1) + "…"):  # fmt: skip
            assert shown in text, shown
        assert not any(c in text for c in "\x1b\x07\u202e\u2066")
        assert "9" * MAX_CELL_WIDTH not in text
        assert all(cell_len(line) == 200 for line in lines)
        row = _plain(table.get_row(_odd_vms()[3].vm_id))
        assert row[-3:] == ["  nan%", "  inf%", "-"]
        assert _plain(table.get_row(_odd_vms()[4].vm_id))[-1] == "-"


async def test_small_terminals_cut_names_by_cells() -> None:
    """At 80 columns (tier 1) a long or wide name is cut to 14 cells with an ellipsis."""
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        app.apply_fleet(_odd_vms())
        await pilot.pause()
        names = [screen.table.get_row(vm.vm_id)[1] for vm in _odd_vms()[:3]]
        assert [cell_len(n.plain) for n in names] == [14, 14, 14]  # type: ignore[union-attr]
        assert all(n.plain.endswith("…") for n in names)  # type: ignore[union-attr]
        assert all(cell_len(line) == 80 for line in _lines(app))


async def test_columns_grow_when_a_wider_cell_is_drawn_or_arrives() -> None:
    """A poll of the same VMs measures no columns: a cell that became wider widens its column
    when its row is drawn (never cut); a VM that arrives is measured (off screen too); when
    VMs leave, the columns fit the VMs still there."""
    app, _ = demo_data.demo_app(history=0)
    long_ip = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"
    async with app.run_test(size=(160, 40)) as pilot:  # the wider table still fits
        screen, table = await _fed(app, pilot)
        header = _lines(app)[table.region.y]
        assert long_ip not in "".join(_lines(app))
        # The same VMs; the first row's VM (batch-01, sorted by name) and one far below the
        # screen get a longer address.
        vms = _churn(0)
        far = vms[COUNT - 50]
        assert table.order[0] == vms[8].vm_id and table.order.index(far.vm_id) > 2 * table.region.height
        for vm in (vms[8], far):
            del vm.ip_addresses[:]
            vm.ip_addresses.append(long_ip)
        app.apply_fleet(vms)
        await pilot.pause()
        _check_screen(app, screen, table)  # the whole address on the first row: the column grew
        wide = _lines(app)[table.region.y]
        assert wide != header and wide.index(" CPU ") > header.index(" CPU ")
        # Far down: the other one is whole too, in the same columns.
        table.move_cursor(row=table.order.index(far.vm_id))
        await pilot.pause()
        assert any(long_ip in line for line in _rows_drawn(app, table))
        _check_screen(app, screen, table)
        assert _lines(app)[table.region.y] == wide
        # VMs leave and arrive; one that arrives has a long name and sorts last (off screen):
        # measured on arrival, the name column is wider; VMs left, so the IP column fits the
        # addresses of the VMs now here (the long ones are gone): as narrow as at first.
        vms = _churn(1)
        vms[-1].name = "vm-" + "z" * 30
        table.move_cursor(row=0)
        app.apply_fleet(vms)
        await pilot.pause()
        _check_screen(app, screen, table)
        wider = _lines(app)[table.region.y]
        assert wider.index(" Node ") > wide.index(" Node ")
        assert wider.index(" CPU ") - wider.index(" IP ") == header.index(" CPU ") - header.index(" IP ")


async def test_columns_shrink_when_the_vm_that_widened_them_leaves() -> None:
    """A VM with a long name went away and its column stayed as wide: measured again when
    VMs leave, the column fits the names still there (the header as before it came)."""
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=SIZE) as pilot:
        screen, table = await _fed(app, pilot)
        header = _lines(app)[table.region.y]
        long_named = VM()
        long_named.CopyFrom(_churn(0)[0])
        # Wider than every other name, not so wide that the table needs a horizontal scrollbar
        # (a layout change of its own that the screen may draw a frame later).
        long_named.vm_id, long_named.name = "long-one", "vm-" + "w" * 15
        app.apply_fleet([*_churn(0), long_named])
        await pilot.pause()
        assert table.virtual_size.width <= table.scrollable_content_region.width
        await until(pilot, lambda: _lines(app)[table.region.y].index(" Node ") > header.index(" Node "), "wider")
        app.apply_fleet(_churn(0))  # it left; every other VM as before
        await pilot.pause()
        await until(pilot, lambda: _lines(app)[table.region.y] == header, "the header as before")
        _check_screen(app, screen, table)
