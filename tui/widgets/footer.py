"""The footer of every screen: its keys, with Help always shown."""

from __future__ import annotations

from typing import NamedTuple

from textual.app import ComposeResult
from textual.geometry import Size
from textual.widgets import Footer

# FooterKey is not exported by textual.widgets; the footer is made of them (pinned Textual).
from textual.widgets._footer import FooterKey

__all__ = ["KeysFooter"]


class _Shown(NamedTuple):
    """What the footer draws of one action's key (Textual's Footer shows the first binding
    of each action): all of it but ``enabled``, which is updated in place."""

    action: str
    key: str
    key_display: str
    description: str
    tooltip: str
    grouped: bool


class KeysFooter(Footer):
    """Textual's footer (compact, no command palette) with the app's ``? Help`` docked on
    the right, so that a narrow terminal never cuts it off; keys that do not fit beside it
    are left out whole, from the right, rather than cut mid-word (at 60 columns the footer
    lost ``? Help``, and ``q Quit`` read ``q Q``). ``?`` lists every key.

    Textual's Footer removes and remounts all its keys on every change of the screen's
    active bindings (each focus change, screen push and pop, ``refresh_bindings``), though
    the keys shown rarely change: this one rebuilds them only when the keys shown change,
    updates them in place when only which are enabled changed, and does nothing otherwise.
    That and measuring each key's text once were ~20-30 % of the TUI tests' CPU.
    """

    DEFAULT_CSS = """
    KeysFooter FooterKey.-help {
        dock: right;
    }
    """

    def __init__(self) -> None:
        super().__init__(compact=True, show_command_palette=False)
        self._shown: tuple[_Shown, ...] | None = None
        """The keys the children show (None: none composed yet)."""
        self._enabled: tuple[bool, ...] = ()
        """Which of :attr:`_shown` are enabled, in the same order."""
        self._widths: dict[tuple[str, str], int] = {}
        """Content width of a compact key's (key_display, description): the footer's CSS
        is fixed, so the text alone decides it; measuring means rendering the key."""

    def _bindings_shown(self) -> tuple[tuple[_Shown, ...], tuple[bool, ...]]:
        """The keys Footer.compose would show now (first binding of each action, in order)
        and whether each is enabled."""
        first: dict[str, tuple[_Shown, bool]] = {}
        for _node, binding, enabled, tooltip in self.screen.active_bindings.values():
            if binding.show and binding.action not in first:
                shown = _Shown(
                    binding.action,
                    binding.key,
                    self.app.get_key_display(binding),
                    binding.description,
                    tooltip,
                    binding.group is not None,
                )
                first[binding.action] = (shown, enabled)
        return tuple(s for s, _ in first.values()), tuple(e for _, e in first.values())

    def compose(self) -> ComposeResult:
        help_key: FooterKey | None = None
        if self._bindings_ready:
            self._shown, self._enabled = self._bindings_shown()
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action == "help" and help_key is None:
                help_key = widget
                continue
            yield widget
        if help_key is not None:
            help_key.add_class("-help")
            yield help_key
        self.call_after_refresh(self._fit)

    async def recompose(self) -> None:
        """Rebuild the keys only when the keys shown changed (Footer.bindings_changed calls
        this after every change of the active bindings)."""
        if not self.is_attached or self._shown is None:
            await super().recompose()
            return
        shown, enabled = self._bindings_shown()
        if shown == self._shown and enabled == self._enabled:
            return
        if shown != self._shown or any(item.grouped for item in shown):
            # New keys, or grouped ones (a group's keys sit in a KeyGroup): build them anew.
            await super().recompose()
        else:
            self._update_enabled(shown, enabled)

    def _update_enabled(self, shown: tuple[_Shown, ...], enabled: tuple[bool, ...]) -> None:
        """Mark each key enabled or disabled as FooterKey's constructor would (its
        ``-disabled`` class dims it; ``_disabled`` makes a click ring the bell)."""
        by_action = {key.action: key for key in self.query_children(FooterKey)}
        for item, is_enabled in zip(shown, enabled, strict=True):
            key = by_action[item.action]
            key._disabled = not is_enabled
            key.set_class(not is_enabled, "-disabled")
        self._enabled = enabled

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """Show the keys, in order, while they fit beside Help; leave the rest out."""
        keys = list(self.query_children(FooterKey))
        room = self.size.width - sum(self._width(key) for key in keys if key.has_class("-help"))
        used, full = 0, False
        for key in keys:
            if key.has_class("-help"):
                continue
            used += self._width(key)
            full = full or used > room
            key.display = not full

    def _width(self, key: FooterKey) -> int:
        if key.has_class("-compact"):
            text = (key.key_display, key.description)
            width = self._widths.get(text)
            if width is None:
                width = self._widths[text] = key.get_content_width(Size(0, 0), Size(0, 0))
        else:
            # A new key gets its -compact class (its padding) from the footer's data binding
            # after its first _fit: measured as it is, never cached.
            width = key.get_content_width(Size(0, 0), Size(0, 0))
        return width + key.styles.margin.width + key.styles.padding.width
