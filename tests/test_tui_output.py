"""The output view (``tui/widgets/output.py``): storage, drawing, search, copy, save, follow.

Pilot tests on a small app holding one :class:`OutputPane`, plus the store on its own.
Textual tests run under asyncio (``pytest.mark.anyio``; DESIGN.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input, Label

from limiquantix.tui.widgets.output import MAX_LINE_CHARS, LineStore, OutputPane, OutputView
from limiquantix.tui.widgets.path_dialog import PathDialog, load_with_dialog

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quick_pilot", "shared_css")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class OutputApp(App[None]):
    """One output pane filling the screen; its view redraws at every write (no 50 ms batching:
    tests read the screen right after writing; test_redraws_are_batched checks the batching)."""

    def compose(self) -> ComposeResult:
        yield OutputPane()

    def on_mount(self) -> None:
        self.view.grow_interval_s = 0

    @property
    def view(self) -> OutputView:
        return self.query_one(OutputView)


def screen_text(view: OutputView) -> list[str]:
    """What the view draws, line by line (trailing blanks stripped)."""
    height = view.scrollable_content_region.height
    return [view.render_line(y).text.rstrip() for y in range(height)]


# ----------------------------------------------------------------------------- the store


def test_store_lines_across_batches_and_bounds() -> None:
    store = LineStore(max_chars=20)
    store.add("a\nbb\nccc", 0)
    store.add("dddd", 1)
    assert len(store) == 4
    assert [store.line(i) for i in range(4)] == [("a", 0), ("bb", 0), ("ccc", 0), ("dddd", 1)]
    assert store.text(1, 3) == "bb\nccc\ndddd\n"
    with pytest.raises(IndexError):
        store.line(4)
    # Over 20 characters: the oldest batch goes, line numbers restart at the first kept.
    first, dropped = store.add("0123456789ab", 0)
    assert (first, dropped) == (1, 3)
    assert store.dropped == 3 and len(store) == 2
    assert store.line(0) == ("dddd", 1) and store.line(1) == ("0123456789ab", 0)


def test_store_search_gives_line_column_length() -> None:
    store = LineStore()
    store.add("alpha\nbeta alpha", 0)
    store.add("gamma\nALPHA", 1)
    found = list(store.search(re.compile("alpha", re.IGNORECASE)))
    assert found == [(0, 0, 5), (1, 5, 5), (3, 0, 5)]
    assert list(store.search(re.compile("alpha"), first=1)) == [(1, 5, 5)]
    assert len(list(store.search(re.compile("a"), limit=2))) == 2


def test_store_breaks_endless_lines() -> None:
    store = LineStore()
    store.add("x" * (MAX_LINE_CHARS * 2 + 5), 0)
    assert [len(store.line(i)[0]) for i in range(len(store))] == [MAX_LINE_CHARS, MAX_LINE_CHARS, 5]


# ----------------------------------------------------------------------------- feeding and drawing


async def test_partial_lines_per_stream_and_guest_text_escaped() -> None:
    app = OutputApp()
    async with app.run_test(size=(60, 10)) as pilot:
        view = app.view
        view.write("out-1\nout-", "stdout")
        view.write("err\x1b]0;title\x07 [bold]x[/]\n", "stderr")
        view.write("2\tcol\nhalf", "stdout")
        assert view.line_count == 3
        view.end_output()
        view.note("── stdout cut here", "warning")
        await pilot.pause()
        lines = screen_text(view)
        assert lines[:5] == [
            "out-1",
            "err\\x1b]0;title\\x07 [bold]x[/]",  # controls shown, markup not read
            "out-2   col",  # the tab expanded
            "half",
            "── stdout cut here",
        ]
        # stderr is red; the rest is not.
        assert view.store.line(1)[1] == 1 and view.store.line(0)[1] == 0
        stderr_style = view.render_line(1)._segments[0].style
        assert stderr_style is not None and stderr_style.color is not None and stderr_style.color.name != "default"


async def test_every_line_keeps_its_style_non_ascii_and_while_searching() -> None:
    """A line drawn through rich's Text (non-ASCII, or any line while a search is active) has
    its kind's colour, the cursor and the selection, as an ASCII line drawn directly has: Text's
    render leaves the text's own style to its caller, and stderr's "é" lines came out uncoloured."""
    app = OutputApp()
    async with app.run_test(size=(40, 8)) as pilot:
        view = app.view
        view.write("err ascii\nerr é accent\n", "stderr")
        view.write("out é\n", "stdout")
        await pilot.pause()

        def first_style(y: int) -> tuple[object, object]:
            style = view.render_line(y)._segments[0].style
            assert style is not None
            return style.color, style.bgcolor

        red = first_style(0)
        assert red[0] is not None and red != first_style(2)  # stderr's colour is not stdout's
        assert first_style(1) == red  # the accented stderr line as red as the ASCII one
        view.search("ascii")  # now every line goes through Text, matched or not
        assert view.match_count == 1
        assert first_style(1) == red and first_style(2) != red
        unmatched = [seg for seg in view.render_line(0)._segments if seg.text.strip() == "err"]
        assert unmatched and unmatched[0].style is not None and unmatched[0].style.color == red[0]
        # The selection shows on a non-ASCII line.
        view.focus()
        view.move_cursor(1)
        view.move_cursor(2, select=True)
        await pilot.pause()
        selected = view.render_line(2)._segments[0].style
        assert selected is not None and selected.bgcolor is not None
        assert selected.bgcolor != view.rich_style.bgcolor


async def test_only_visible_lines_are_drawn_and_the_tail_is_followed() -> None:
    app = OutputApp()
    async with app.run_test(size=(40, 12)) as pilot:
        view = app.view
        view.write("".join(f"{i}\n" for i in range(1, 300_001)))
        await pilot.pause()
        assert view.line_count == 300_000
        assert view.follow and view.cursor == 299_999
        assert screen_text(view)[-1] == "300000"
        # Up: the view stops following; new lines do not move it.
        await pilot.click(OutputView)  # focus
        view.focus()
        await pilot.press("home")
        assert screen_text(view)[0] == "1" and not view.follow
        view.write("300001\n")
        await pilot.pause()
        assert screen_text(view)[0] == "1" and view.cursor == 0
        # end: back to the tail, followed again.
        await pilot.press("end")
        view.write("300002\n")
        await pilot.pause()
        assert view.follow and screen_text(view)[-1] == "300002"


async def test_redraws_are_batched() -> None:
    """Lines written within GROW_INTERVAL_S of a redraw are stored at once, drawn by one timer."""
    app = OutputApp()
    async with app.run_test(size=(40, 12)) as pilot:
        view = app.view
        view.grow_interval_s = 60.0  # the timer never fires by itself within the test
        view.write("first\n")  # the first redraw in a long while: at once
        assert view.virtual_size.height == 1
        view.write("second\nthird\n")
        view.write("fourth\n")
        assert view.line_count == 4 and view.virtual_size.height == 1  # stored, not yet drawn
        assert view._grow_timer is not None
        view._grow_timer.stop()
        view._grow_now()  # what the timer does
        await pilot.pause()
        assert view.virtual_size.height == 4 and screen_text(view)[3] == "fourth"


# ----------------------------------------------------------------------------- search


async def test_search_is_incremental_and_n_N_wrap() -> None:
    app = OutputApp()
    async with app.run_test(size=(50, 10)) as pilot:
        view = app.view
        view.write("".join(f"line {i}{' needle' if i in (5, 50, 500) else ''}\n" for i in range(1000)))
        view.focus()
        await pilot.press("home", "slash")
        pane = app.query_one(OutputPane)
        assert pane.search_input.has_focus
        await pilot.press(*"need")  # incremental: matches as typed
        assert view.match_count == 3 and view.current_match == (5, 7)
        await pilot.press("enter")
        assert view.has_focus
        await pilot.press("n")
        assert view.current_match == (50, 8) and view.cursor == 50
        await pilot.press("n")
        assert view.current_match == (500, 9)
        await pilot.press("n")  # wraps to the top
        assert view.current_match == (5, 7)
        await pilot.press("N")  # and back to the bottom
        assert view.current_match == (500, 9)
        assert str(pane.query_one(".output-matches").render()) == "3/3"
        # The match is highlighted on screen (the current one differently).
        y = view.cursor - int(view.scroll_y)
        strip = view.render_line(y)
        styles = [seg.style for seg in strip._segments if seg.text == "need"]
        assert styles and styles[0] is not None and styles[0].bgcolor is not None
        # Smart case: a capital letter makes it case sensitive.
        view.search("Needle")
        assert view.match_count == 0
        view.search("Line 99")
        assert view.match_count == 0
        view.search("line 99")
        assert view.match_count == 11  # "line 99", "line 990".."line 999"
        await pilot.press("slash", "ctrl+a")
        await pilot.press(*"zzz")
        assert view.match_count == 0
        assert "not found" in str(pane.query_one(".output-matches").render())
        await pilot.press("escape")  # closes the bar, not the screen
        assert not pane.has_class("searching") and view.has_focus


async def test_new_lines_are_searched_as_they_arrive() -> None:
    app = OutputApp()
    async with app.run_test(size=(50, 10)) as pilot:
        view = app.view
        view.write("a\nfound\n")
        view.search("found")
        assert view.match_count == 1
        view.write("b\nfound again\n")
        await pilot.pause()
        assert view.match_count == 2


# ----------------------------------------------------------------------------- copy


async def test_copy_selection_by_keyboard_and_mouse() -> None:
    app = OutputApp()
    async with app.run_test(size=(50, 12)) as pilot:
        view = app.view
        view.write("".join(f"row {i}\n" for i in range(20)))
        view.focus()
        await pilot.press("home", "down", "shift+down", "shift+down", "y")
        assert app.clipboard == "row 1\nrow 2\nrow 3\n"
        await pilot.press("down")  # moving without shift ends the selection: the cursor's line
        await pilot.press("ctrl+c")
        assert view.selection is None and app.clipboard == "row 4\n"
        # A mouse drag from the first visible row to the third selects those lines.
        await pilot.press("home")
        await pilot.mouse_down(OutputView, offset=(2, 0))
        await pilot.hover(OutputView, offset=(2, 2))
        await pilot.mouse_up(OutputView, offset=(2, 2))
        assert view.selection == (0, 2)
        await pilot.press("y")
        assert app.clipboard == "row 0\nrow 1\nrow 2\n"
        await pilot.press("escape")
        assert view.selection is None


# ----------------------------------------------------------------------------- save


async def test_save_writes_the_file_and_refuses_to_overwrite_without_confirm(tmp_path: Path) -> None:
    app = OutputApp()
    target = tmp_path / "out.txt"
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.view
        view.write("first\n\x1b[2Jsecond\n", "stdout")
        view.focus()
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, PathDialog)
        app.screen.query_one("#path", Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        assert target.read_text() == "first\n\\x1b[2Jsecond\n"  # as shown: controls escaped
        # Again to the same path: asked, and "Cancel" keeps the file.
        target.write_text("precious\n")
        await pilot.press("ctrl+s")
        app.screen.query_one("#path", Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmDialog"
        await pilot.press("escape")
        await pilot.pause()
        assert target.read_text() == "precious\n"
        # Confirmed: replaced.
        await pilot.press("ctrl+s")
        app.screen.query_one("#path", Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert target.read_text() == "first\n\\x1b[2Jsecond\n"
        # A path that cannot be written is a notification; the app and the output stay.
        await pilot.press("ctrl+s")
        app.screen.query_one("#path", Input).value = str(tmp_path / "no" / "such" / "dir.txt")
        await pilot.press("enter")
        await pilot.pause()
        assert any("Cannot save" in n.message for n in app._notifications)
        assert view.line_count == 2 and app.screen is not None and not isinstance(app.screen, PathDialog)


# ----------------------------------------------------------------------------- jobs


async def test_a_relative_path_is_said_where_it_lands_and_load_shows_a_script_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "output.txt" alone was saved in the TUI's working directory (make run's: the checkout),
    unsaid; the load dialog's example was "~/output.txt"."""
    monkeypatch.chdir(tmp_path)
    app = OutputApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.view
        view.write("kept\n")
        notes: list[str] = []
        app.notify = lambda message, **_: notes.append(message)  # type: ignore[method-assign]
        view.focus()
        await pilot.press("ctrl+s")
        dialog = app.screen
        assert isinstance(dialog, PathDialog)
        assert str(dialog.query_one(".path-hint", Label).render()) == f"relative to {tmp_path}"
        dialog.query_one("#path", Input).value = "saved.txt"
        await pilot.press("enter")
        await pilot.pause()
        assert (tmp_path / "saved.txt").read_text() == "kept\n"
        assert notes == [f"Saved 1 line to {tmp_path / 'saved.txt'}."]
        loaded: list[tuple[str, Path]] = []
        load_with_dialog(view, lambda text, path: loaded.append((text, path)))
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PathDialog)
        assert dialog.query_one("#path", Input).placeholder == "path, e.g. ~/script.sh"
        dialog.query_one("#path", Input).value = "saved.txt"
        await pilot.press("enter")
        await pilot.pause()
        assert loaded == [("kept\n", tmp_path / "saved.txt")]


def test_job_list_keeps_running_jobs_and_the_last_ended_ones() -> None:
    from limiquantix.tui._jobs import JOBS_KEPT, JobList

    jobs = JobList()
    told: list[int] = []
    jobs.listeners.append(lambda: told.append(len(jobs)))
    running = jobs.new(["vm-a"], "sleep 600", 60, "")
    for i in range(JOBS_KEPT + 5):
        job = jobs.new(["vm-a", "vm-b"], f"echo {i}", 60, "")
        job.buffer_for("vm-b").write("out\n")
        job.finish("success", "exit code 0")
    jobs.new(["vm-a"], "echo last", 60, "")  # a new job trims the list
    assert running in jobs.jobs and running.running
    ended = [job for job in jobs if not job.running]
    assert len(ended) == JOBS_KEPT and ended[0].script == "echo 5"  # the oldest went first
    assert [job.id for job in jobs] == sorted(job.id for job in jobs) and told
    assert ended[-1].buffer_for("vm-b").store.text() == "out\n" and ended[-1].fleet
