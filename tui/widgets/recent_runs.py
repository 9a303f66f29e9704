"""The runs started on one VM from this TUI, newest first: command, exit, duration."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from limiquantix.protocol import safe_text

from ..state import RunRecord

__all__ = ["RecentRuns"]

#: Widths of the figures' columns: they are always shown whole, the command gets the rest.
_EXIT_WIDTH: Final = 7
_MS_WIDTH: Final = 6
#: How a run that did not exit is shown in the Exit column (at most _EXIT_WIDTH characters).
_REASONS: Final = {"timed_out": "timeout", "cancelled": "cancel", "signaled": "signal", "failed_to_start": "nostart"}


def exit_cell(run: RunRecord) -> str:
    """The exit code, else why there is none (an API error's code is ``error``)."""
    if run.exit_code is not None and run.reason in ("", "exited"):
        return str(run.exit_code)
    return _REASONS.get(run.reason, "error" if run.reason else "-")


def ms_cell(ms: int) -> str:
    """A duration in at most _MS_WIDTH characters: ms, then seconds."""
    return str(ms) if ms < 1_000_000 else f"{ms // 1000}s"


class RecentRuns(DataTable[str | Text]):
    """Recent runs, Exit and ms always visible: the command column takes the width the
    figures leave and is cut with an ellipsis (a long first line pushed Exit and ms off
    the table at 80 columns). ``enter`` asks for the run again (:class:`Rerun`), ``e`` for
    it in the editor (:class:`Edit`)."""

    BINDINGS = [
        Binding("enter", "rerun", "Re-run"),
        Binding("e", "edit", "Edit"),
    ]

    class Rerun(Message):
        """Run recent run ``index`` (0: the newest) again, as it was."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    class Edit(Message):
        """Recent run ``index`` into the editor."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def action_rerun(self) -> None:
        if 0 <= self.cursor_row < len(self._runs):
            self.post_message(self.Rerun(self.cursor_row))

    def action_edit(self) -> None:
        if 0 <= self.cursor_row < len(self._runs):
            self.post_message(self.Edit(self.cursor_row))

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row")
        self._runs: list[RunRecord] = []

    def on_mount(self) -> None:
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def show(self, runs: Iterable[RunRecord]) -> None:
        self._runs = list(runs)
        self._draw()

    def _draw(self) -> None:
        # Each column has one cell of padding on either side.
        room = self.scrollable_content_region.width or self.size.width
        command = max(6, room - (_EXIT_WIDTH + 2) - (_MS_WIDTH + 2) - 2)
        self.clear(columns=True)
        self.add_column("Recent runs", width=command, key="command")
        self.add_column("Exit", width=_EXIT_WIDTH, key="exit")
        self.add_column("ms", width=_MS_WIDTH, key="ms")
        for i, run in enumerate(self._runs):
            line = safe_text(run.first_line)
            if len(line) > command:
                line = line[: command - 1] + "…"
            self.add_row(Text(line), exit_cell(run), ms_cell(run.duration_ms), key=str(i))
