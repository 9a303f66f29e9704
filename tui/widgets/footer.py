"""The footer of every screen: its keys, with Help always shown."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.geometry import Size
from textual.widgets import Footer

# FooterKey is not exported by textual.widgets; the footer is made of them (pinned Textual).
from textual.widgets._footer import FooterKey

__all__ = ["KeysFooter"]


class KeysFooter(Footer):
    """Textual's footer (compact, no command palette) with the app's ``? Help`` docked on
    the right, so that a narrow terminal never cuts it off; keys that do not fit beside it
    are left out whole, from the right, rather than cut mid-word (at 60 columns the footer
    lost ``? Help``, and ``q Quit`` read ``q Q``). ``?`` lists every key."""

    DEFAULT_CSS = """
    KeysFooter FooterKey.-help {
        dock: right;
    }
    """

    def __init__(self) -> None:
        super().__init__(compact=True, show_command_palette=False)

    def compose(self) -> ComposeResult:
        help_key: FooterKey | None = None
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action == "help" and help_key is None:
                help_key = widget
                continue
            yield widget
        if help_key is not None:
            help_key.add_class("-help")
            yield help_key
        self.call_after_refresh(self._fit)

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """Show the keys, in order, while they fit beside Help; leave the rest out."""
        keys = [key for key in self.query_children(FooterKey) if not key.has_class("-help")]
        help_width = sum(self._width(key) for key in self.query_children(FooterKey) if key.has_class("-help"))
        room = self.size.width - help_width
        used, full = 0, False
        for key in keys:
            used += self._width(key)
            full = full or used > room
            key.display = not full

    @staticmethod
    def _width(key: FooterKey) -> int:
        return key.get_content_width(Size(0, 0), Size(0, 0)) + key.styles.margin.width + key.styles.padding.width
