"""Command output as a virtualised line view: search, save, copy, follow the tail.

A guest prints a megabyte in 15 ms (``seq 1 300000``). Written one ``Text`` per
line into a ``RichLog``, that took 44 s to appear and 310 MB; even batched, every
line became a styled object. Here output is stored compactly
(:class:`LineStore`: each batch of whole lines is one ``str``, plus one 32-bit
start offset per line) and only the lines on screen are rendered, when drawn
(Textual's Line API: :meth:`OutputView.render_line`). Appending a megabyte is a
``split`` and an ``accumulate`` in C; drawing costs the same for ten lines or
a million.

Guest text is data: every chunk goes through
:func:`~limiquantix.protocol.safe_text` (controls, bidi overrides and
separators shown escaped; tabs expanded) and is never read as markup.

Keys on the view (the footer shows them): arrows / page keys / home / end move a
line cursor (shift extends a selection of whole lines; a mouse drag selects
too), ``y`` or ``ctrl+c`` copies the selection (or the cursor's line) to the
clipboard (Textual's ``copy_to_clipboard``: OSC 52 to the terminal), ``/``
searches (incremental; smart case: a query with a capital letter is case
sensitive), ``n`` / ``N`` go to the next / previous match (wrapping), ``ctrl+s``
saves the whole output to a file (asking for the path; an existing file only
after a confirmation). The view follows the tail while its cursor is on the
last line, as ``tail -f`` and ``less +F`` do; moving up stops that, ``end``
resumes it.
"""

from __future__ import annotations

import re
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from itertools import accumulate
from pathlib import Path
from typing import ClassVar, Final, final

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.geometry import Region, Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.timer import Timer
from textual.widgets import Input, Static

from limiquantix.protocol import safe_text

__all__ = [
    "KINDS",
    "GROW_INTERVAL_S",
    "MAX_LINE_CHARS",
    "MAX_MATCHES",
    "MAX_OUTPUT_CHARS",
    "LineStore",
    "OutputBuffer",
    "OutputPane",
    "OutputView",
]

#: Characters of output the view keeps (the oldest batches go first, and a line says how many
#: lines went): bounds the TUI's memory whatever a guest streams. A command's buffered output
#: is capped at 1 MiB by the guest, but a stream is not; 16 M characters of ASCII are 16 MiB of
#: text plus 4 bytes per line.
MAX_OUTPUT_CHARS: Final = 16 * 1024 * 1024
#: A line longer than this is broken into pieces of this length: a guest that prints no newline
#: must not grow one unbounded partial line (nor make drawing one line cost megabytes).
MAX_LINE_CHARS: Final = 16 * 1024
#: Matches a search keeps (beyond, the status says "+"): a one-letter query on a megabyte of
#: output would otherwise cost tens of megabytes of positions.
MAX_MATCHES: Final = 100_000
#: Line kinds: what a batch of lines is (its style is the component class ``output-view--KIND``).
KINDS: Final = ("stdout", "stderr", "note", "warning", "error", "heading")
_KIND_INDEX: Final = {name: i for i, name in enumerate(KINDS)}
#: Least time between two redraws for new lines (see OutputView._schedule_grow): 20 a second.
GROW_INTERVAL_S: Final = 0.05
_TAB_SIZE: Final = 8


@final
class LineStore:
    """Lines of text in batches: one ``str`` per batch (lines joined by ``\\n``), one start offset
    per line in an ``array``, one kind per batch. Bounded by ``max_chars`` (oldest batches dropped).

    Line numbers are 0-based and relative to the first line still kept; ``dropped`` counts the
    lines that went.
    """

    def __init__(self, max_chars: int = MAX_OUTPUT_CHARS) -> None:
        self.max_chars = max_chars
        self._batches: list[str] = []
        self._kinds = bytearray()
        self._first: list[int] = []
        """Per batch: the number of its first line (relative, like every line number here)."""
        self._starts = array("I")
        """Per line: its offset in its batch."""
        self.chars = 0
        self.dropped = 0
        self.widest = 0
        """Length of the longest line added (the view's virtual width)."""

    def __len__(self) -> int:
        return len(self._starts)

    def clear(self) -> None:
        self._batches.clear()
        self._kinds.clear()
        self._first.clear()
        self._starts = array("I")
        self.chars = self.dropped = self.widest = 0

    def add(self, text: str, kind: int) -> tuple[int, int]:
        """Add ``text`` (already safe, lines separated by ``\\n``, no final newline) as lines of
        ``kind``. Returns (first new line, lines dropped from the front to stay within bounds)."""
        first = len(self._starts)
        lengths = [len(line) for line in text.split("\n")]
        if max(lengths) > MAX_LINE_CHARS:
            text = _break_long_lines(text)
            lengths = [len(line) for line in text.split("\n")]
        starts = accumulate((n + 1 for n in lengths[:-1]), initial=0)
        self._starts.extend(starts)
        self._batches.append(text)
        self._kinds.append(kind)
        self._first.append(first)
        self.chars += len(text)
        self.widest = max(self.widest, max(lengths))
        dropped = 0
        while self.chars > self.max_chars and len(self._batches) > 1:
            dropped += self._drop_oldest()
        return first - dropped, dropped

    def _drop_oldest(self) -> int:
        count = self._first[1]
        self.chars -= len(self._batches[0])
        del self._batches[0], self._kinds[0], self._first[0], self._starts[:count]
        self._first = [n - count for n in self._first]
        self.dropped += count
        return count

    def _batch_of(self, line: int) -> int:
        return bisect_right(self._first, line) - 1

    def _bounds(self, batch: int, line: int) -> tuple[int, int]:
        """(start, end) offsets of ``line`` in ``batch``."""
        start = self._starts[line]
        following = self._first[batch + 1] if batch + 1 < len(self._first) else len(self._starts)
        end = self._starts[line + 1] - 1 if line + 1 < following else len(self._batches[batch])
        return start, end

    def line(self, line: int) -> tuple[str, int]:
        """(text, kind) of ``line``.

        Raises:
            IndexError: no such line.
        """
        if not 0 <= line < len(self._starts):
            raise IndexError(line)
        batch = self._batch_of(line)
        start, end = self._bounds(batch, line)
        return self._batches[batch][start:end], self._kinds[batch]

    def text(self, first: int = 0, last: int | None = None) -> str:
        """Lines ``first`` to ``last`` (inclusive; default: to the end), each ending in ``\\n``."""
        last = len(self._starts) - 1 if last is None else last
        return "".join(piece + "\n" for piece in self._pieces(first, last))

    def _pieces(self, first: int, last: int) -> Iterator[str]:
        """The text of lines ``first``..``last`` as few slices as possible (one per batch)."""
        if first > last:
            return
        batch = self._batch_of(first)
        line = first
        while line <= last and batch < len(self._batches):
            following = self._first[batch + 1] if batch + 1 < len(self._first) else len(self._starts)
            end_line = min(last, following - 1)
            start, _ = self._bounds(batch, line)
            _, end = self._bounds(batch, end_line)
            yield self._batches[batch][start:end]
            line, batch = end_line + 1, batch + 1

    def search(
        self, pattern: re.Pattern[str], first: int = 0, limit: int = MAX_MATCHES
    ) -> Iterator[tuple[int, int, int]]:
        """(line, column, length) of each match of ``pattern`` in lines ``first``.. (at most ``limit``)."""
        found = 0
        batch = self._batch_of(first) if self._first else 0
        for b in range(max(batch, 0), len(self._batches)):
            base = self._first[b]
            lo = max(first, base) - base
            following = self._first[b + 1] if b + 1 < len(self._first) else len(self._starts)
            starts = self._starts
            begin = starts[base + lo]
            for match in pattern.finditer(self._batches[b], begin):
                if match.start() == match.end():
                    continue
                line = bisect_right(starts, match.start(), base, following) - 1
                yield line, match.start() - starts[line], match.end() - match.start()
                found += 1
                if found >= limit:
                    return


def _query_pattern(query: str) -> re.Pattern[str]:
    """Smart case, as less -i and vim's smartcase: case sensitive only with a capital letter."""
    flags = 0 if any(c.isupper() for c in query) else re.IGNORECASE
    return re.compile(re.escape(query), flags)


@final
class OutputBuffer:
    """A command's output as it arrives: guest text made safe and cut into lines (each stream
    keeps its partial line until its newline), stored in a :class:`LineStore`. Lives as long as
    the run it belongs to (a background job's outlives every view); views showing it are its
    ``listeners``: ``listener(first, dropped)`` after lines were added (``first`` None: cleared)."""

    def __init__(self, max_chars: int = MAX_OUTPUT_CHARS) -> None:
        self.store = LineStore(max_chars)
        self._partial: dict[int, str] = {}
        self.listeners: list[Callable[[int | None, int], None]] = []

    def __len__(self) -> int:
        return len(self.store)

    def write(self, text: str, stream: str = "stdout") -> None:
        """Guest output, in chunks of any size and cut anywhere: whole lines are stored at once,
        a partial line when its end arrives (or at :meth:`end_output`). Each stream has its
        own partial line (``stdout``, ``stderr``), as a terminal's would."""
        kind = _KIND_INDEX["stderr" if stream == "stderr" else "stdout"]
        held = self._partial.pop(kind, "") + text
        cut = held.rfind("\n")
        if cut < 0:
            if len(held) >= MAX_LINE_CHARS:
                cut = len(held)  # no newline in sight: break the line rather than hold it all
                held += "\n"
            else:
                self._partial[kind] = held
                return
        whole, rest = held[:cut], held[cut + 1 :]
        if rest:
            self._partial[kind] = rest
        self._add(whole, kind)

    def end_output(self) -> None:
        """The command ended: its partial lines are stored as lines."""
        for kind, rest in sorted(self._partial.items()):
            self._add(rest, kind)
        self._partial.clear()

    def note(self, text: str, kind: str = "note") -> None:
        """One line of the TUI's own (a cut-here marker, a heading): safe-texted too, since it
        may quote guest names."""
        self._add(text, _KIND_INDEX[kind], multiline=False)

    def clear(self) -> None:
        self.store.clear()
        self._partial.clear()
        for listener in list(self.listeners):
            listener(None, 0)

    def _add(self, text: str, kind: int, *, multiline: bool = True) -> None:
        # Most output is printable but for its line breaks and tabs: checked in C (two
        # replaces and isprintable run at memory speed), where safe_text's translate
        # looks every character up in a dict (a megabyte: ~10 ms against ~0.5 ms).
        if not (multiline and text.replace("\n", "").replace("\t", "").isprintable()):
            text = safe_text(text, multiline=multiline)
        if "\t" in text:
            text = text.expandtabs(_TAB_SIZE)  # columns restart at each \n: lines stay right
        first, dropped = self.store.add(text, kind)
        for listener in list(self.listeners):
            listener(first, dropped)


class OutputView(ScrollView, can_focus=True):
    """The output lines, drawn only where visible. Feed it with :meth:`write` (guest text, any
    chunking), :meth:`note` (a line of the TUI's own), :meth:`end_output` (the partial lines
    that never got their newline)."""

    ALLOW_SELECT = False  # selection is by whole lines, the view's own (Textual's would not scroll)

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(-1)", "Top", show=False),
        Binding("end", "edge(1)", "End", show=False),
        Binding("shift+up", "cursor(-1, True)", "Select up", show=False),
        Binding("shift+down", "cursor(1, True)", "Select down", show=False),
        Binding("shift+pageup", "page(-1, True)", "Select page up", show=False),
        Binding("shift+pagedown", "page(1, True)", "Select page down", show=False),
        Binding("shift+home", "edge(-1, True)", "Select to top", show=False),
        Binding("shift+end", "edge(1, True)", "Select to end", show=False),
        Binding("escape", "clear_selection", "Unselect", show=False),
        Binding("y,ctrl+c", "copy", "Copy"),
        Binding("ctrl+s", "save", "Save"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        *(f"output-view--{kind}" for kind in KINDS),
        "output-view--cursor",
        "output-view--selection",
        "output-view--match",
        "output-view--match-current",
    }

    DEFAULT_CSS = """
    OutputView {
        background: $surface;
    }
    OutputView > .output-view--stdout { }
    OutputView > .output-view--stderr { color: $text-error; }
    OutputView > .output-view--note { color: $text-muted; }
    OutputView > .output-view--warning { color: $text-warning; text-style: bold; }
    OutputView > .output-view--error { color: $text-accent; }
    OutputView > .output-view--heading { text-style: bold; }
    OutputView > .output-view--cursor { background: $boost; }
    OutputView:focus > .output-view--cursor { background: $block-cursor-blurred-background; }
    OutputView > .output-view--selection { background: $primary 40%; }
    OutputView > .output-view--match { background: $warning 40%; }
    OutputView > .output-view--match-current { background: $warning; color: $background; }
    """

    cursor: reactive[int] = reactive(0, init=False)
    """The line the keys act on (shown while the view has the focus)."""

    def __init__(
        self,
        buffer: OutputBuffer | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.buffer = buffer or OutputBuffer()
        self.buffer.listeners.append(self._changed)
        self.follow = True
        """Whether new lines scroll the view (the cursor is on the last line)."""
        self.selection_anchor: int | None = None
        """The other end of the selection (None: nothing selected)."""
        self._dragging = False
        self.search_query = ""
        self._pattern: re.Pattern[str] | None = None
        self._match_lines = array("I")
        self._match_cols = array("I")
        self._match_lens = array("I")
        self.match_index = -1
        """The current match (-1: none yet)."""
        self.matches_capped = False
        self._styles: dict[str, Style] | None = None
        """The styles of the frame being drawn (None: to compute)."""
        self.grow_interval_s = GROW_INTERVAL_S
        self._last_grow = 0.0
        self._grow_timer: Timer | None = None

    # -- feeding -------------------------------------------------------------------------

    @property
    def store(self) -> LineStore:
        return self.buffer.store

    @property
    def line_count(self) -> int:
        return len(self.buffer.store)

    def attach(self, buffer: OutputBuffer) -> None:
        """Show ``buffer`` (another VM's output, a job's): at its tail, the search run on it."""
        if buffer is self.buffer:
            return
        if self._changed in self.buffer.listeners:
            self.buffer.listeners.remove(self._changed)
        self.buffer = buffer
        buffer.listeners.append(self._changed)
        self._reset_view()
        self._grown()

    def on_unmount(self) -> None:
        if self._changed in self.buffer.listeners:
            self.buffer.listeners.remove(self._changed)  # a job's buffer outlives the screen

    def write(self, text: str, stream: str = "stdout") -> None:
        """:meth:`OutputBuffer.write` on the buffer shown."""
        self.buffer.write(text, stream)

    def end_output(self) -> None:
        """:meth:`OutputBuffer.end_output` on the buffer shown."""
        self.buffer.end_output()

    def note(self, text: str, kind: str = "note") -> None:
        """:meth:`OutputBuffer.note` on the buffer shown."""
        self.buffer.note(text, kind)

    def clear(self) -> None:
        """Empty the buffer shown."""
        self.buffer.clear()

    def _reset_view(self) -> None:
        self.selection_anchor = None
        self.follow = True
        self.cursor = 0
        query = self.search_query
        self._reset_matches()
        self._pattern = None
        if query:
            self.search(query)
        if self.is_mounted:
            self.virtual_size = Size(0, 0)
            self.scroll_to(0, 0, animate=False, immediate=True, force=True)

    def _changed(self, first: int | None, dropped: int) -> None:
        """The buffer grew (lines from ``first``; ``dropped`` went from its front), or was
        cleared (``first`` None)."""
        if first is None:
            self._reset_view()
            self.refresh()
            return
        if dropped:
            self._lines_dropped(dropped)
        if self._pattern is not None:
            self._find(first)
        self._schedule_grow()

    def _schedule_grow(self) -> None:
        """:meth:`_grown` now, or once GROW_INTERVAL_S has passed since the last one: each
        grow is a new virtual size, a scroll and a frame, and output streamed at 10 MiB/s
        comes in ~600 chunks a second; the store takes them all at once regardless."""
        if self._grow_timer is not None:
            return
        wait = self._last_grow + self.grow_interval_s - time.monotonic()
        if wait <= 0:
            self._grown()
        else:
            self._grow_timer = self.set_timer(wait, self._grow_now)

    def _grow_now(self) -> None:
        self._grow_timer = None
        self._grown()

    def _lines_dropped(self, count: int) -> None:
        self.cursor = max(0, self.cursor - count)
        if self.selection_anchor is not None:
            self.selection_anchor = max(0, self.selection_anchor - count)
        if self._pattern is not None:
            keep = bisect_right(self._match_lines, count - 1)
            self._match_lines = array("I", (n - count for n in self._match_lines[keep:]))
            del self._match_cols[:keep], self._match_lens[:keep]
            self.match_index = max(-1, self.match_index - keep)
        if self.is_mounted:
            self.scroll_to(y=max(0, self.scroll_y - count), animate=False, immediate=True, force=True)

    def _grown(self) -> None:
        if not self.is_mounted:
            return
        self._last_grow = time.monotonic()
        self.virtual_size = Size(self.store.widest + 1, len(self.store))
        if self.follow:
            self.cursor = max(0, len(self.store) - 1)
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)
        self.refresh()

    def on_mount(self) -> None:
        self._grown()  # a buffer given at construction may hold lines already

    # -- drawing -------------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        # The styles, once per frame: computing them takes a walk of the CSS (~0.2 ms each),
        # which per line was most of a frame's cost while output streams.
        self._styles = None
        return super().render_lines(crop)

    def _frame_styles(self) -> dict[str, Style]:
        if self._styles is None:
            base = self.rich_style
            styles = {
                name: base + self.get_component_rich_style(f"output-view--{name}", partial=True) for name in KINDS
            }
            styles[""] = base
            for name in ("selection", "cursor", "match", "match-current"):
                styles[name] = self.get_component_rich_style(f"output-view--{name}", partial=True)
            self._styles = styles
        return self._styles

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        styles = self._frame_styles()
        number = scroll_y + y
        if number >= len(self.store):
            return Strip.blank(width, styles[""])
        line, kind = self.store.line(number)
        style = styles[KINDS[kind]]
        if self._selected(number):
            style += styles["selection"]
        elif number == self.cursor and self.has_focus:
            style += styles["cursor"]
        if line.isascii() and not self._match_lines:
            # One cell per character: slice before building anything (a 16 KiB line costs
            # what the visible part costs).
            return Strip([Segment(line[scroll_x : scroll_x + width], style)]).extend_cell_length(width, style)
        text = Text(line, no_wrap=True, end="")
        self._highlight(text, number)
        # The line's style applied to every segment: Text.render leaves a text's own style to
        # its caller (it yields bare segments when there is no span), so a non-ASCII line, or
        # one without a match while searching, lost its colour, the cursor and the selection.
        segments = list(Segment.apply_style(text.render(self.app.console), style))
        return Strip(segments).crop(scroll_x, scroll_x + width).extend_cell_length(width, style)

    def _highlight(self, text: Text, number: int) -> None:
        lines = self._match_lines
        i = bisect_right(lines, number - 1)
        match, current = self._frame_styles()["match"], self._frame_styles()["match-current"]
        while i < len(lines) and lines[i] == number:
            col = self._match_cols[i]
            text.stylize(current if i == self.match_index else match, col, col + self._match_lens[i])
            i += 1

    def watch_cursor(self) -> None:
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- cursor and selection -------------------------------------------------------------

    def _selected(self, number: int) -> bool:
        return self.selection_anchor is not None and min(self.selection_anchor, self.cursor) <= number <= max(
            self.selection_anchor, self.cursor
        )

    @property
    def selection(self) -> tuple[int, int] | None:
        """(first, last) selected line, or None."""
        if self.selection_anchor is None:
            return None
        return min(self.selection_anchor, self.cursor), max(self.selection_anchor, self.cursor)

    def move_cursor(self, line: int, *, select: bool = False) -> None:
        """Put the cursor on ``line`` (clamped) and scroll it into view; ``select`` extends the
        selection from where the cursor was, otherwise the selection ends."""
        if select and self.selection_anchor is None:
            self.selection_anchor = self.cursor
        elif not select:
            self.selection_anchor = None
        last = max(0, len(self.store) - 1)
        self.cursor = max(0, min(line, last))
        self.follow = self.cursor == last and self.selection_anchor is None
        height = self.scrollable_content_region.height
        if self.cursor < self.scroll_y:
            self.scroll_to(y=self.cursor, animate=False, immediate=True, force=True)
        elif height and self.cursor >= self.scroll_y + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True, force=True)
        self.refresh()

    def action_cursor(self, delta: int, select: bool = False) -> None:
        self.move_cursor(self.cursor + delta, select=select)

    def action_page(self, direction: int, select: bool = False) -> None:
        self.move_cursor(self.cursor + direction * max(1, self.scrollable_content_region.height - 1), select=select)

    def action_edge(self, direction: int, select: bool = False) -> None:
        self.move_cursor(0 if direction < 0 else len(self.store), select=select)

    def action_clear_selection(self) -> None:
        if self.selection_anchor is None:
            raise SkipAction()  # the screen's escape (back) then applies
        self.selection_anchor = None
        self.refresh()

    def _line_at(self, event: events.MouseEvent) -> int:
        return int(self.scroll_y) + event.y

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if event.button != 1:
            return
        self.focus()
        self.move_cursor(self._line_at(event))
        self.selection_anchor = self.cursor
        self._dragging = True
        self.capture_mouse()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if self._dragging:
            self.cursor = max(0, min(self._line_at(event), len(self.store) - 1))
            self.follow = False
            self.refresh()

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if not self._dragging:
            return
        self._dragging = False
        self.release_mouse()
        if self.selection_anchor == self.cursor:
            self.selection_anchor = None  # a click, not a drag: the cursor moved, nothing is selected
            self.refresh()

    def selected_text(self) -> str:
        """The selected lines (or the cursor's line), each ending in a newline."""
        if not len(self.store):
            return ""
        first, last = self.selection or (self.cursor, self.cursor)
        return self.store.text(first, last)

    def action_copy(self) -> None:
        text = self.selected_text()
        if not text:
            self.notify("Nothing to copy.", severity="warning", timeout=2)
            return
        self.app.copy_to_clipboard(text)
        lines = text.count("\n")
        self.notify(f"Copied {lines:,} line{'s' if lines != 1 else ''} to the clipboard.", timeout=2)

    # -- search -------------------------------------------------------------------------

    def _reset_matches(self) -> None:
        self._match_lines = array("I")
        self._match_cols = array("I")
        self._match_lens = array("I")
        self.match_index = -1
        self.matches_capped = False

    @property
    def match_count(self) -> int:
        return len(self._match_lines)

    def search(self, query: str) -> None:
        """Highlight every match of ``query`` (plain text, smart case) and go to the first one
        at or after the cursor. An empty query clears the search."""
        self.search_query = query
        self._reset_matches()
        self._pattern = _query_pattern(query) if query else None
        if self._pattern is not None:
            self._find(0)
            if self._match_lines:
                self.match_index = bisect_right(self._match_lines, self.cursor - 1) % len(self._match_lines)
                self._show_match()
        self.refresh()

    def _find(self, first: int) -> None:
        assert self._pattern is not None
        room = MAX_MATCHES - len(self._match_lines)
        for line, col, length in self.store.search(self._pattern, first, room + 1):
            if room == 0:
                self.matches_capped = True
                break
            self._match_lines.append(line)
            self._match_cols.append(col)
            self._match_lens.append(length)
            room -= 1

    def next_match(self, step: int = 1) -> bool:
        """Go to the next (``step=1``) or previous (``-1``) match, wrapping at the ends.
        Returns whether it wrapped."""
        if not self._match_lines:
            return False
        index = self.match_index + step
        wrapped = not 0 <= index < len(self._match_lines)
        self.match_index = index % len(self._match_lines)
        self._show_match()
        return wrapped

    def _show_match(self) -> None:
        line = self._match_lines[self.match_index]
        self.move_cursor(line)
        height = self.scrollable_content_region.height
        if height and not self.scroll_y <= line < self.scroll_y + height:
            self.scroll_to(y=max(0, line - height // 2), animate=False, immediate=True, force=True)
        col, width = self._match_cols[self.match_index], self.scrollable_content_region.width
        if width and not self.scroll_x <= col < self.scroll_x + width:
            self.scroll_to(x=max(0, col - width // 2), animate=False, immediate=True, force=True)

    @property
    def current_match(self) -> tuple[int, int] | None:
        """(line, column) of the current match."""
        if self.match_index < 0:
            return None
        return self._match_lines[self.match_index], self._match_cols[self.match_index]

    # -- save ---------------------------------------------------------------------------

    def save(self, path: Path, *, overwrite: bool = False) -> int:
        """Write every line kept (as shown: controls escaped) to ``path``; returns the lines written.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is false.
            OSError: the file cannot be written (a directory, no permission, no such folder).
        """
        with path.open("w" if overwrite else "x", encoding="utf-8") as out:
            out.writelines(piece + "\n" for piece in self.store._pieces(0, len(self.store) - 1))
        return len(self.store)

    def action_save(self) -> None:
        from .path_dialog import save_with_dialog

        save_with_dialog(self)


def _break_long_lines(text: str) -> str:
    """Lines longer than MAX_LINE_CHARS broken into pieces of that length."""
    return "\n".join(
        "\n".join(line[i : i + MAX_LINE_CHARS] for i in range(0, len(line), MAX_LINE_CHARS))
        if len(line) > MAX_LINE_CHARS
        else line
        for line in text.split("\n")
    )


class OutputPane(Vertical):
    """An :class:`OutputView` with its search bar (``/``: hidden until asked for)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "open_search", "Search"),
        Binding("n", "next_match(1)", "Next", show=False),
        Binding("N", "next_match(-1)", "Previous", show=False),
        Binding("escape", "close_search", "Close search", show=False),
    ]

    DEFAULT_CSS = """
    OutputPane {
        height: 1fr;
    }
    OutputPane > OutputView {
        height: 1fr;
    }
    OutputPane > .output-search {
        height: 1;
        display: none;
    }
    OutputPane.searching > .output-search {
        display: block;
    }
    OutputPane > .output-search > Input {
        width: 1fr;
    }
    OutputPane > .output-search > Static {
        width: auto;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None, view_id: str = "output") -> None:
        super().__init__(id=id, classes=classes)
        self._view_id = view_id

    def compose(self) -> ComposeResult:
        yield OutputView(id=self._view_id)
        with Horizontal(classes="output-search"):
            yield Input(placeholder="search (enter: done, n/N: next/previous)", compact=True, classes="output-query")
            yield Static("", classes="output-matches")

    @property
    def view(self) -> OutputView:
        return self.query_one(OutputView)

    @property
    def search_input(self) -> Input:
        return self.query_one(".output-query", Input)

    def action_open_search(self) -> None:
        self.add_class("searching")
        self.search_input.focus()

    def action_close_search(self) -> None:
        if not self.has_class("searching"):
            raise SkipAction()  # not searching: escape means what the screen says (back)
        self.remove_class("searching")
        self.view.focus()

    def action_next_match(self, step: int) -> None:
        if self.search_input.has_focus:
            raise SkipAction()  # n and N are letters of the query
        view = self.view
        if not view.search_query:
            self.notify("No search yet: / to search.", severity="information", timeout=2)
            return
        if not view.match_count:
            self.notify(f"Not found: {view.search_query}", severity="warning", timeout=2)
            return
        if view.next_match(step):
            self.notify("Search wrapped " + ("to the top." if step > 0 else "to the bottom."), timeout=2)
        self._show_status()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.view.search(event.value)
        self._show_status()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.view.focus()

    def _show_status(self) -> None:
        view = self.view
        if not view.search_query:
            status = ""
        elif not view.match_count:
            status = "not found"
        else:
            status = f"{view.match_index + 1:,}/{view.match_count:,}{'+' if view.matches_capped else ''}"
        self.query_one(".output-matches", Static).update(Text(status))
