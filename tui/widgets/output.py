"""The runner's output view: a command's stdout and stderr as they stream in.

The one place the runner's output goes through (so that a faster or searchable view
replaces this class and nothing else): :meth:`OutputLog.start` before a run,
:meth:`OutputLog.feed` for each streamed piece, :meth:`OutputLog.finish` at its end,
:meth:`OutputLog.mark_cut` where a cap cut the output, :meth:`OutputLog.show_lines`
and :meth:`OutputLog.note` for output that arrives whole (a fleet target's).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from rich.text import Text
from textual.widgets import RichLog

from limiquantix.protocol.safetext import safe_text

__all__ = ["OUTPUT_FLUSH_S", "OUTPUT_MAX_LINES", "OutputLog"]

#: Lines the output keeps (the oldest go first): bounds the TUI's memory whatever a guest prints.
OUTPUT_MAX_LINES: Final = 10_000
#: Seconds between writes of streamed output to the log: lines that arrive meanwhile are
#: written together, and only the last OUTPUT_MAX_LINES of them are rendered at all (rendering
#: is the cost: 300,000 lines written one by one took 44 s to appear).
OUTPUT_FLUSH_S: Final = 0.1
_STREAM_STYLES: Final = {"stdout": "", "stderr": "red"}


class OutputLog(RichLog):
    """A command's output: stderr in red, the guest's controls shown (``\\x1b``), never
    markup, written in batches every :data:`OUTPUT_FLUSH_S`, the last
    :data:`OUTPUT_MAX_LINES` kept (a line says how many were not shown)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, max_lines=OUTPUT_MAX_LINES, min_width=20, **kwargs)
        self._partial: dict[str, str] = dict.fromkeys(_STREAM_STYLES, "")
        self._pending: deque[tuple[str, str]] = deque(maxlen=OUTPUT_MAX_LINES)
        """Whole lines (text, style) waiting for the next flush."""
        self._dropped = 0
        """Lines of this run that were never shown (beyond OUTPUT_MAX_LINES in one flush)."""

    def on_mount(self) -> None:
        self.set_interval(OUTPUT_FLUSH_S, self._drain)

    def start(self) -> None:
        """A new run: the view emptied, nothing of the last run left waiting."""
        self.clear()
        self._partial = dict.fromkeys(_STREAM_STYLES, "")
        self._pending.clear()
        self._dropped = 0

    def feed(self, stream: str, text: str) -> None:
        """A streamed piece of ``stream`` (``stdout`` or ``stderr``): its whole lines
        are queued for the next flush; a partial line waits for its end."""
        *lines, self._partial[stream] = (self._partial.get(stream, "") + text).split("\n")
        self._queue(lines, _STREAM_STYLES.get(stream, ""))

    def finish(self) -> None:
        """The run ended: partial lines and everything queued are written now."""
        for stream, rest in self._partial.items():
            if rest:
                self._queue([rest], _STREAM_STYLES.get(stream, ""))
        self._partial = dict.fromkeys(_STREAM_STYLES, "")
        self._drain()

    def show_lines(self, stream: str, text: str) -> None:
        """Output that arrived whole (a fleet target's), written at once, line by line.

        ``split("\\n")``, not ``splitlines()``: the other separators are the guest's, shown escaped.
        """
        style = _STREAM_STYLES.get(stream, "")
        for line in text.removesuffix("\n").split("\n") if text else ():
            self.write(Text(safe_text(line, multiline=True), style=style))

    def note(self, text: str, style: str = "bold") -> None:
        """A line of the TUI's own (a heading, an error), written at once; ``text`` is shown as is."""
        self.write(Text(safe_text(text), style=style))

    def mark_cut(self, streams: list[str], limit: str) -> None:
        """Say where a cap cut the output (it was silently shorter): ``streams`` were cut at ``limit``."""
        if streams:
            self.write(
                Text(
                    f"── {' and '.join(streams)} cut here: more than {limit}; the rest was not kept",
                    style="bold yellow",
                )
            )

    def _queue(self, lines: list[str], style: str) -> None:
        """Lines for the next flush; beyond OUTPUT_MAX_LINES the oldest are counted, not kept."""
        overflow = len(self._pending) + len(lines) - OUTPUT_MAX_LINES
        if overflow > 0:
            self._dropped += overflow
        self._pending.extend((line, style) for line in lines[-OUTPUT_MAX_LINES:])

    def _drain(self) -> None:
        """Write the pending lines in one go (one render, not one per line)."""
        if not self._pending and not self._dropped:
            return
        if self._dropped:
            self.write(
                Text(f"── {self._dropped:,} lines not shown: the view keeps the last {OUTPUT_MAX_LINES:,}", style="dim")
            )
            self._dropped = 0
        if self._pending:
            self.write(
                Text("\n").join(Text(safe_text(line, multiline=True), style=style) for line, style in self._pending)
            )
            self._pending.clear()
