"""The footer (tui/widgets/footer.py KeysFooter) on a small Textual app of its own: its keys
rebuilt only when the keys shown change, updated in place when only which are enabled
changed, left alone otherwise, and fitted beside ``? Help`` from widths it measured once.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets._footer import FooterKey

from limiquantix.tui.widgets.footer import KeysFooter

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quick_pilot", "shared_css")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Keys(Screen[None]):
    """Five keys and Help; ``state`` says per action what check_action answers (True: shown,
    None: shown disabled, False: hidden), as LqxScreen's permissions do."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "details", "Details"),
        Binding("r", "run", "Run"),
        Binding("u", "audit", "Audit"),
        Binding("q", "quit_it", "Quit"),
        Binding("j", "jobs", "Jobs"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.state: dict[str, bool | None] = {}

    def compose(self) -> ComposeResult:
        yield KeysFooter()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.state.get(action, True)


class _App(App[None]):
    def on_mount(self) -> None:
        self.push_screen(_Keys())


def _footer_line(app: App[None]) -> str:
    return app.screen._compositor.render_strips()[-1].text


def _keys(app: App[None]) -> list[FooterKey]:
    return list(app.screen.query_one(KeysFooter).query_children(FooterKey))


async def test_keys_rebuilt_only_when_the_keys_shown_change() -> None:
    app = _App()
    async with app.run_test(size=(80, 5)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, _Keys)
        before = _keys(app)
        line = _footer_line(app)
        assert line.split() == ["d", "Details", "r", "Run", "u", "Audit", "q", "Quit", "j", "Jobs", "?", "Help"]

        # Nothing changed (a focus change, a screen pushed and popped): the same widgets.
        screen.refresh_bindings()
        await pilot.pause()
        assert _keys(app) == before and _footer_line(app) == line

        # Run disabled: the same widgets, Run dimmed, the text the same.
        screen.state["run"] = None
        screen.refresh_bindings()
        await pilot.pause()
        assert _keys(app) == before and _footer_line(app) == line
        assert [key.action for key in before if key.has_class("-disabled")] == ["run"]
        assert next(key for key in before if key.action == "run")._disabled
        screen.state["run"] = True
        screen.refresh_bindings()
        await pilot.pause()
        assert not any(key.has_class("-disabled") or key._disabled for key in _keys(app))

        # Audit hidden (a viewer's token): rebuilt without it, Help still on the right.
        screen.state["audit"] = False
        screen.refresh_bindings()
        await pilot.pause()
        assert "audit" not in [key.action for key in _keys(app)]
        assert _footer_line(app).split() == ["d", "Details", "r", "Run", "q", "Quit", "j", "Jobs", "?", "Help"]
        assert _footer_line(app).rstrip().endswith("? Help")


async def test_narrower_leaves_keys_out_whole_and_wider_brings_them_back() -> None:
    app = _App()
    async with app.run_test(size=(80, 5)) as pilot:
        await pilot.pause()
        wide = _footer_line(app)
        # Keys with their margins: "d Details" 10, "r Run" 6, "u Audit" 8, "q Quit" 7, "? Help" 7:
        # at 34 columns Quit (ending at 31) no longer fits beside Help (27 left).
        await pilot.resize_terminal(34, 5)
        for _ in range(100):
            await pilot.pause(0.01)
            if len(_footer_line(app)) == 34:
                break
        await pilot.pause()
        narrow = _footer_line(app)
        assert narrow.split() == ["d", "Details", "r", "Run", "u", "Audit", "?", "Help"], narrow
        assert narrow.rstrip().endswith("? Help")
        await pilot.resize_terminal(80, 5)
        for _ in range(100):
            await pilot.pause(0.01)
            if len(_footer_line(app)) == 80:
                break
        await pilot.pause()
        assert _footer_line(app) == wide
