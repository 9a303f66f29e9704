"""The fleet's table: every VM in one row, drawn only where visible.

A fleet of 5,000 VMs changes on every poll (each VM's CPU, memory and uptime). A
``DataTable`` holds a cell object per VM and column, measures each new one and
re-sorts its rows in Python: ~350 ms of CPU per poll at 5,000 VMs on a loaded
machine, most of it building and comparing 45,000 cells that are never on screen.
Here (Textual's Line API, as the runner's output view does) the table keeps only
the ordered list of VMs it was given; a row's cells are built when the row is
drawn, and kept per VM until that VM's record changes (:class:`_RowCache`). A
poll costs the list and the rows on screen; the columns are measured over the
VMs that arrived (:func:`column_widths`, from the fields, without building
cells), over the whole fleet when VMs left (so that they shrink back), and
otherwise grow when a row drawn needs it.

What the operator sees is what ``DataTable`` showed: a header (click it to sort),
zebra stripes, a row cursor kept on its VM across refreshes (up / down / page keys,
ctrl+home / ctrl+end, a click moves it; enter or a click on the cursor's row opens
the VM), the mouse's row highlighted, columns sized to their widest cell, guest
text shown with its controls escaped (:func:`~limiquantix.protocol.safe_text`)
and never read as markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, ClassVar, Final, NamedTuple

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from limiquantix.protocol import safe_text
from limiquantix.protocol._gen.vm_service_pb2 import VM

from .._format import STATE_LABELS, effective_state, percent, primary_ip, short_os, state_text, uptime

__all__ = [
    "COLUMNS",
    "MAX_CELL_WIDTH",
    "NAME_WIDTH_NARROW",
    "ROW_CACHE_SIZE",
    "TIER_BELOW",
    "Column",
    "FleetTable",
    "column_widths",
    "live",
    "row_cells",
    "tier",
]


def live(vm: VM) -> bool:
    """Whether the VM's figures are current (its agent connected, its node reachable)."""
    return vm.agent_state == "connected" and vm.node_reachable


def _figure(field: str) -> Callable[[VM], float]:
    """Sort key of a telemetry figure: VMs without current figures (shown ``-``) sort below 0.
    (:func:`live` inlined: a sort calls this for each of 5,000 VMs.)"""
    read = attrgetter(field)
    return lambda vm: read(vm) if vm.agent_state == "connected" and vm.node_reachable else -1.0


class Column(NamedTuple):
    """A column after the selection mark."""

    key: str
    label: str
    sort_key: Callable[[VM], Any]
    narrowest: int
    """The narrowest tier that shows it (see :data:`TIER_BELOW`)."""


#: The columns after the selection mark, in order.
COLUMNS: Final[tuple[Column, ...]] = (
    Column("name", "Name", lambda vm: (vm.name or vm.vm_id).lower(), 2),
    Column("node", "Node", lambda vm: vm.node_id, 0),
    Column("state", "State", effective_state, 2),
    Column("version", "Agent", lambda vm: vm.agent_version, 0),
    Column("os", "OS", lambda vm: vm.os, 1),
    Column("ip", "IP", primary_ip, 1),
    Column("cpu", "CPU", _figure("cpu_percent"), 2),
    Column("mem", "Mem", _figure("memory_percent"), 2),
    Column("uptime", "Uptime", _figure("uptime_seconds"), 2),
)
#: Terminal widths below which the table drops to the next tier. Tier 1 (narrow) leaves
#: out Node and Agent (the VM screen shows them), shortens names and OS, and shows whole
#: percents: it fits 80 columns. Tier 2 also leaves out OS and IP: the figures stay
#: whole at 60 columns (they were cut to "Upti").
TIER_BELOW: Final = (110, 72)
#: A name's cells in the narrow tiers (longer ones end in "…").
NAME_WIDTH_NARROW: Final = 14
#: The widest a column gets: a guest's 300-character "IP address" or a CPU figure of
#: 1e300 % is cut (ending in "…") rather than pushing every other column off screen.
MAX_CELL_WIDTH: Final = 48
#: Rows whose cells are kept between frames (a screenful is ~40; scrolling back and forth
#: over a few pages reuses them). Bounded: 5,000 VMs must not mean 5,000 kept rows.
ROW_CACHE_SIZE: Final = 1024
#: Every uptime under 10 days fits in this many cells ("23h59m", "59m59s", "9d23h").
_UPTIME_CELLS: Final = 6
#: Horizontal padding on each side of each cell (DataTable's default).
_PADDING: Final = 1
_SELECTED: Final = Text("✓", style="bold cyan")


def tier(width: int) -> int:
    """The table's tier at a terminal ``width``: 0 every column, 1 narrow, 2 narrowest."""
    return sum(width < below for below in TIER_BELOW)


def shown_columns(tier: int) -> tuple[Column, ...]:
    """The columns of ``tier``, in order (the selection mark not included)."""
    return tuple(column for column in COLUMNS if tier <= column.narrowest)


def row_cells(vm: VM, selected: bool, tier: int) -> tuple[str | Text, ...]:
    """The row of one VM as shown: the selection mark, then the columns of ``tier``.

    Text from the API has its controls shown (``safe_text``: a guest's OS name or a VM's
    name cannot drive the terminal); nothing here is read as markup. The name is a Text
    (so that it is cut by cells, not characters, in the narrow tiers).
    """
    narrow = tier > 0
    name = Text(safe_text(vm.name or vm.vm_id))
    if narrow and name.cell_len > NAME_WIDTH_NARROW:
        name.truncate(NAME_WIDTH_NARROW, overflow="ellipsis")
    is_live = live(vm)
    digits = 0 if narrow else 1
    values: dict[str, str | Text] = {
        "name": name,
        "node": safe_text(vm.node_id or "-"),
        "state": state_text(vm),
        "version": safe_text(vm.agent_version or "-"),
        "os": safe_text(short_os(vm.os or "-", 12 if narrow else 24)),
        "ip": safe_text(primary_ip(vm)),
        "cpu": percent(vm.cpu_percent, connected=is_live, digits=digits),
        "mem": percent(vm.memory_percent, connected=is_live, digits=digits),
        "uptime": uptime(vm.uptime_seconds) if is_live else "-",
    }
    mark: str | Text = _SELECTED if selected else " "
    return (mark, *(values[column.key] for column in shown_columns(tier)))


# ----------------------------------------------------------------------------- widths


def _text_width(values: Collection[str]) -> int:
    """The widest of ``values`` once shown (``safe_text``), in cells."""
    joined = "".join(values)
    if joined.isascii() and joined.isprintable():  # in C: one cell per character, nothing escaped
        return max(map(len, values), default=0)
    return max((cell_len(safe_text(value)) for value in values), default=0)


def _figure_width(values: Sequence[float], digits: int) -> int:
    """The widest of the ``values`` as :func:`percent` shows them, in cells.

    A formatted figure is never narrower than a smaller magnitude of the same sign, so
    the largest and the smallest value give the width; NaN and infinities (a guest may
    send anything) make min/max meaningless, and then every value is measured.
    """
    if not values:
        return 0
    if math.isfinite(math.fsum(values)):
        return max(len(percent(max(values), digits=digits)), len(percent(min(values), digits=digits)))
    return max(len(percent(value, digits=digits)) for value in values)


def _primary_ips(vms: Iterable[VM]) -> list[str]:
    """:func:`primary_ip` of each VM, with the usual case (an IPv4 address first) inline."""
    return [
        (first if ":" not in (first := addresses[0]) else primary_ip(vm)) if (addresses := vm.ip_addresses) else "-"
        for vm in vms
    ]


def column_widths(vms: Sequence[VM], tier: int, *, states: Iterable[str] | None = None) -> tuple[int, ...]:
    """The content width of each column of ``tier`` (the mark first) over ``vms``: the
    widest cell :func:`row_cells` would give, computed without building the cells
    (attributes read in C where it can be; a fleet of 5,000 is measured at every poll).

    ``states``: the :func:`effective_state` of each VM, if known (the fleet screen
    counts them for its header). At most :data:`MAX_CELL_WIDTH` (wider cells are cut when
    drawn); where a column's label is wider, the label decides (see :meth:`FleetTable.show`).
    """
    narrow = tier > 0
    on = [vm for vm in vms if vm.agent_state == "connected" and vm.node_reachable]  # live(), inlined
    dash = 1 if len(on) < len(vms) or not vms else 0  # "-": a VM without current figures
    widths: dict[str, int] = {}
    for column in shown_columns(tier):
        key = column.key
        if key == "name":
            width = _text_width([vm.name or vm.vm_id for vm in vms])
            widths[key] = min(width, NAME_WIDTH_NARROW) if narrow else width
        elif key == "node":
            widths[key] = _text_width({vm.node_id or "-" for vm in vms})
        elif key == "state":
            shown = set(states) if states is not None else {effective_state(vm) for vm in vms}
            widths[key] = _text_width({STATE_LABELS.get(state, state) for state in shown})
        elif key == "version":
            widths[key] = _text_width({vm.agent_version or "-" for vm in vms})
        elif key == "os":
            names = set(map(attrgetter("os"), vms))
            widths[key] = _text_width({short_os(name or "-", 12 if narrow else 24) for name in names})
        elif key == "ip":
            widths[key] = _text_width(_primary_ips(vms))
        elif key in ("cpu", "mem"):
            figures = list(map(attrgetter("cpu_percent" if key == "cpu" else "memory_percent"), on))
            widths[key] = max(_figure_width(figures, 0 if narrow else 1), dash)
        else:  # uptime
            top = max((s for s in map(attrgetter("uptime_seconds"), on) if s < math.inf), default=0.0)
            widths[key] = max(_UPTIME_CELLS, len(uptime(top)))  # NaN, inf and negatives are shown "-"
    return (1, *(min(widths[column.key], MAX_CELL_WIDTH) for column in shown_columns(tier)))


# ----------------------------------------------------------------------------- drawing


class _Cell(NamedTuple):
    """A cell drawn once: its segments (styles of its own, before the row's) and width."""

    segments: tuple[Segment, ...]
    width: int


class _Row(NamedTuple):
    vm: VM
    selected: bool
    cells: tuple[_Cell, ...]
    values: tuple[str | Text, ...]


def _drawn(value: str | Text, width: int, console: Console | None) -> _Cell:
    """``value`` as segments at most ``width`` cells wide (cut with an ellipsis beyond);
    a Text's styles are resolved by ``console`` (a str needs none)."""
    if isinstance(value, str):
        length = len(value) if value.isascii() else cell_len(value)
        if length > width:
            value = set_cell_size(value, width - 1) + "…"
            length = width
        return _Cell((Segment(value),), length)
    assert console is not None, "a Text cell is drawn with the app's console"
    if value.cell_len > width:
        value = value.copy()
        value.truncate(width, overflow="ellipsis")
    if value.spans:
        segments = tuple(segment for segment in value.render(console) if segment.text)
    else:  # Text.render leaves out the Text's own style when it has no spans
        segments = (Segment(value.plain, console.get_style(value.style) if value.style else None),)
    return _Cell(segments, value.cell_len)


class _RowCache:
    """Each drawn VM's cells, kept while its record is unchanged (the VM message compares
    equal: a poll that changed nothing about it costs a comparison, not a row). At most
    ROW_CACHE_SIZE rows; the one built longest ago goes first."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self.built = 0
        """Rows built so far (the tests' proof that unchanged rows are reused)."""

    def clear(self) -> None:
        self._rows.clear()

    def get(self, vm: VM, selected: bool, tier: int, console: Console) -> _Row:
        row = self._rows.get(vm.vm_id)
        if row is not None and row.selected == selected and (row.vm is vm or row.vm == vm):
            return row
        values = row_cells(vm, selected, tier)
        cells = tuple(_drawn(value, MAX_CELL_WIDTH, console) for value in values)
        row = _Row(vm, selected, cells, values)
        self._rows.pop(vm.vm_id, None)  # re-inserted last: the dict's order is the age
        self._rows[vm.vm_id] = row
        if len(self._rows) > ROW_CACHE_SIZE:
            del self._rows[next(iter(self._rows))]
        self.built += 1
        return row


class FleetTable(ScrollView, can_focus=True):
    """The fleet, one row per VM, sorted and filtered by its screen (:meth:`show`)."""

    ALLOW_SELECT = False

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Details"),
        Binding("up", "cursor(-1)", "Cursor up", show=False),
        Binding("down", "cursor(1)", "Cursor down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("ctrl+home", "edge(-1)", "Top", show=False),
        Binding("ctrl+end", "edge(1)", "Bottom", show=False),
        Binding("home", "scroll_home", "Home", show=False),
        Binding("end", "scroll_end", "End", show=False),
        Binding("left", "scroll_left", "Scroll left", show=False),
        Binding("right", "scroll_right", "Scroll right", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "fleet-table--cursor",
        "fleet-table--hover",
        "fleet-table--header",
        "fleet-table--header-hover",
        "fleet-table--odd-row",
        "fleet-table--even-row",
    }

    # DataTable's look (its DEFAULT_CSS, for the parts a row-cursor table uses).
    DEFAULT_CSS = """
    FleetTable {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;
        &:focus {
            background-tint: $foreground 5%;
            & > .fleet-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .fleet-table--header {
                background-tint: $foreground 5%;
            }
        }
        &:dark {
            & > .fleet-table--even-row {
                background: $surface-darken-1 40%;
            }
        }
        & > .fleet-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        &:ansi > .fleet-table--header {
            background: ansi_bright_blue;
            color: ansi_default;
        }
        & > .fleet-table--odd-row {
        }
        & > .fleet-table--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .fleet-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        & > .fleet-table--header-hover {
            background: $accent 30%;
        }
        & > .fleet-table--hover {
            background: $block-hover-background;
        }
    }
    """

    class RowSelected(Message):
        """Enter, or a click on the cursor's row."""

        def __init__(self, table: FleetTable, vm_id: str, row: int) -> None:
            super().__init__()
            self.table = table
            self.vm_id = vm_id
            self.row = row

        @property
        def control(self) -> FleetTable:
            return self.table

    class HeaderSelected(Message):
        """A click on a column's label (not on the selection mark's)."""

        def __init__(self, table: FleetTable, column: str) -> None:
            super().__init__()
            self.table = table
            self.column = column
            """The column's key (:data:`COLUMNS`)."""

        @property
        def control(self) -> FleetTable:
            return self.table

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.tier = 0
        self._columns: tuple[Column, ...] = shown_columns(0)
        self._vms: list[VM] = []
        self.order: list[str] = []
        """The VM ids in the table's order."""
        self._selected: Collection[str] = frozenset()
        self._measure: Mapping[str, VM] | None = None
        self._measured: set[str] | None = None
        """The VM ids the columns have been measured over (None: to measure all)."""
        self._content: list[int] = []
        """Each column's content width (the mark first): see :meth:`show`."""
        self._widths: tuple[int, ...] = ()
        """Each column's drawn width, its padding included (the mark first)."""
        self._header: tuple[_Cell, ...] = ()
        self._cache = _RowCache()
        self._cursor = 0
        self._hover = 0
        """The row under the mouse (-1: the header)."""
        self._show_hover = False
        """Whether the mouse's row is highlighted (keys hide it, as in DataTable)."""
        self._styles: dict[str, Style] | None = None
        self.set_tier(0)

    # -- data --------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._vms)

    @property
    def rows_built(self) -> int:
        """How many rows were built since the table was made (a row is built when drawn
        and its VM changed, or it scrolled into view from outside the cache)."""
        return self._cache.built

    @property
    def cursor_row(self) -> int:
        return self._cursor

    @property
    def cursor_vm(self) -> str | None:
        """The VM under the cursor (None: the table is empty)."""
        return self.order[self._cursor] if self._vms else None

    def set_tier(self, tier: int) -> None:
        """Show the columns of ``tier`` (rows already shown are drawn again)."""
        self.tier = tier
        self._columns = shown_columns(tier)
        self._header = tuple(_drawn(label, MAX_CELL_WIDTH, None) for label in (" ", *(c.label for c in self._columns)))
        self._cache.clear()
        self._measured = None
        self.show(self._vms, self._selected, measure=self._measure)

    def show(
        self,
        vms: Sequence[VM],
        selected: Collection[str],
        *,
        measure: Mapping[str, VM] | None = None,
        states: Iterable[str] | None = None,
    ) -> None:
        """Show ``vms`` in this order, the ``selected`` ones marked; the cursor stays on its VM
        (or goes to the first row if its VM is no longer shown). Rows are built when drawn.

        Column widths: each column as wide as its widest cell. Measured
        (:func:`column_widths`, without building cells) over ``measure`` (the VMs by id;
        default: ``vms``; the fleet screen gives the whole fleet, so that columns stay put
        while a filter is typed) when the tier changes or VMs left it (a column then shrinks
        to the cells still there: a departed VM's long name no longer holds it wide), and
        otherwise only over the VMs that arrived; between those, a column grows when a row
        about to be drawn has a wider cell. A poll of the same fleet (every figure moved)
        thus measures nothing (all 5,000 VMs: ~25 ms on a loaded machine). ``states``: the
        effective states of ``measure``'s VMs, if known.
        """
        cursor_vm = self.cursor_vm
        self._vms = list(vms)
        self.order = [vm.vm_id for vm in self._vms]
        self._selected = selected
        self._measure = measure
        fleet = measure if measure is not None else dict(zip(self.order, self._vms, strict=True))
        # VMs left: the columns are measured again over those that are here, so that a
        # column a departed VM's long name (or address) widened gives its width back.
        if self._measured is None or not self._measured <= fleet.keys():
            self._content = list(column_widths(list(fleet.values()), self.tier, states=states))
            self._measured = set(fleet)
        elif arrived := fleet.keys() - self._measured:
            widths = column_widths([fleet[vm_id] for vm_id in arrived], self.tier, states=states)
            self._content = [max(old, new) for old, new in zip(self._content, widths, strict=True)]
            self._measured = set(fleet)
        self._set_widths()
        row = self.order.index(cursor_vm) if cursor_vm is not None and cursor_vm in self.order else 0
        if row != self._cursor:
            self.move_cursor(row=row)
        self.refresh()

    def _set_widths(self) -> None:
        self._widths = tuple(
            2 * _PADDING + max(width, header.width) for width, header in zip(self._content, self._header, strict=True)
        )
        self.virtual_size = Size(sum(self._widths), len(self._vms) + 1)

    def get_row_at(self, row: int) -> tuple[str | Text, ...]:
        """The cells of the ``row``-th row as shown (the mark first).

        Raises:
            IndexError: no such row.
        """
        vm = self._vms[row]
        return self._cache.get(vm, vm.vm_id in self._selected, self.tier, self.app.console).values

    def get_row(self, vm_id: str) -> tuple[str | Text, ...]:
        """The cells of ``vm_id``'s row as shown.

        Raises:
            ValueError: the VM is not shown.
        """
        return self.get_row_at(self.order.index(vm_id))

    # -- cursor --------------------------------------------------------------------------------

    def move_cursor(self, *, row: int, animate: bool = False, scroll: bool = True) -> None:
        """Put the cursor on ``row`` (clamped to the rows) and scroll it into view."""
        self._cursor = max(0, min(row, len(self._vms) - 1))
        if scroll:
            self._scroll_to_cursor(animate)
        self.refresh()

    def _page(self) -> int:
        """Rows in a screenful (the header excluded)."""
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_to_cursor(self, animate: bool = False) -> None:
        top = self.scroll_offset.y
        page = self._page()
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=animate, immediate=True, force=True)
        elif self._cursor >= top + page:
            self.scroll_to(y=self._cursor - page + 1, animate=animate, immediate=True, force=True)

    def action_cursor(self, delta: int) -> None:
        self._show_hover = False
        self.move_cursor(row=self._cursor + delta)

    def action_page(self, direction: int) -> None:
        self._show_hover = False
        page = self._page()
        self.scroll_to(y=self.scroll_y + direction * page, animate=False, immediate=True, force=True)
        self.move_cursor(row=self._cursor + direction * page)

    def action_edge(self, direction: int) -> None:
        self._show_hover = False
        self.move_cursor(row=0 if direction < 0 else len(self._vms) - 1)

    def action_select_cursor(self) -> None:
        self._show_hover = False
        if self._vms:
            self.post_message(self.RowSelected(self, self.order[self._cursor], self._cursor))

    # -- mouse ---------------------------------------------------------------------------------

    def _row_at(self, y: int) -> int:
        """The row at ``y`` in the widget (-1: the header)."""
        return -1 if y == 0 else self.scroll_offset.y + y - 1

    def _column_at(self, x: int) -> int:
        """The column (0: the mark) at ``x`` in the widget; -1 right of the last one."""
        x += self.scroll_offset.x
        for index, width in enumerate(self._widths):
            if x < width:
                return index
            x -= width
        return -1

    def on_mouse_move(self, event: events.MouseMove) -> None:
        row = self._row_at(event.y)
        if not self._show_hover or row != self._hover:
            self._show_hover, self._hover = True, row
            self.refresh()

    def on_leave(self, event: events.Leave) -> None:
        if self._show_hover:
            self._show_hover = False
            self.refresh()

    def on_click(self, event: events.Click) -> None:
        row = self._row_at(event.y)
        if row == -1:
            column = self._column_at(event.x)
            if column > 0:
                self.post_message(self.HeaderSelected(self, self._columns[column - 1].key))
            return
        if row >= len(self._vms):
            return
        event.stop()
        if row == self._cursor:
            self.post_message(self.RowSelected(self, self.order[row], row))
        else:
            self.move_cursor(row=row)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- drawing -------------------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        self._styles = None  # the styles once per frame, not per line (a walk of the CSS each)
        self._grow_columns()
        return super().render_lines(crop)

    def _grow_columns(self) -> None:
        """Build the rows on screen before drawing any, and widen the columns their cells
        need (see :meth:`show`): the whole frame is drawn at the new widths."""
        first = self.scroll_offset.y
        console = self.app.console
        content = self._content
        grown = False
        for vm in self._vms[first : first + self._page()]:
            for index, cell in enumerate(self._cache.get(vm, vm.vm_id in self._selected, self.tier, console).cells):
                if cell.width > content[index]:
                    content[index] = cell.width
                    grown = True
        if grown:
            self._set_widths()
            self.refresh()  # lines outside this frame's crop were drawn at the old widths

    def _frame_styles(self) -> dict[str, Style]:
        if self._styles is None:
            component = self.get_component_styles
            self._styles = {
                "": self.rich_style,
                "header": component("fleet-table--header").rich_style,
                "even": component("fleet-table--even-row").rich_style,
                "odd": component("fleet-table--odd-row").rich_style,
                "cursor": self.get_component_rich_style("fleet-table--cursor"),
                "hover": self.get_component_rich_style("fleet-table--hover"),
                "header-hover": self.get_component_rich_style("fleet-table--header-hover"),
            }
        return self._styles

    def render_line(self, y: int) -> Strip:
        styles = self._frame_styles()
        width = self.scrollable_content_region.width
        row = self._row_at(y)
        if row >= len(self._vms):
            return Strip.blank(width, styles[""])
        hover = self._show_hover and row == self._hover
        if row == -1:
            cells = self._header
            style = styles["header"]
            extra = styles["hover"] + styles["header-hover"] if hover else Style()
        else:
            vm = self._vms[row]
            cells = self._cache.get(vm, vm.vm_id in self._selected, self.tier, self.app.console).cells
            style = styles["odd" if row % 2 else "even"]
            extra = styles["hover"] if hover else Style()
            if row == self._cursor:
                extra += styles["cursor"]
        return self._line(cells, style, extra, width)

    def _line(self, cells: Iterable[_Cell], style: Style, extra: Style, width: int) -> Strip:
        """One row: each cell padded to its column (DataTable's look: the row's style, then
        the cursor's or the mouse's, then the cell's own, then the cursor's colour over it),
        cropped to the scroll position, and the row's style on to the right edge."""
        pre = style + extra
        post = Style.from_color(color=extra.color) if extra.color is not None else None
        blank = pre + post if post else pre  # the padding's style
        pad = " " * _PADDING
        segments: list[Segment] = []
        append = segments.append
        for cell, column_width in zip(cells, self._widths, strict=False):
            space = column_width - 2 * _PADDING
            if cell.width > space:  # pragma: no cover - _grow_columns widened it before the frame; were it not, cut
                cell = _Cell(tuple(Segment.adjust_line_length(list(cell.segments), space)), space)
            append(Segment(pad, blank))
            for text, own, _ in cell.segments:
                if own:
                    append(Segment(text, pre + own + post if post else pre + own))
                else:
                    append(Segment(text, blank))
            append(Segment(" " * (space - cell.width) + pad, blank))
        table_width = sum(self._widths)
        strip = Strip(segments, table_width)
        scroll_x = self.scroll_offset.x
        if scroll_x or table_width > width:
            strip = strip.crop(scroll_x, scroll_x + width)
        return strip.extend_cell_length(width, pre).simplify()
