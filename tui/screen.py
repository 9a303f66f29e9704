"""The base of the TUI's full screens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen

if TYPE_CHECKING:
    from .app import LimiQuantixApp

__all__ = ["LqxScreen"]


class LqxScreen(Screen[None]):
    """A full screen of :class:`~limiquantix.tui.app.LimiQuantixApp`."""

    @property
    def lqx(self) -> LimiQuantixApp:
        """The app, typed (its client, config and shared state)."""
        return self.app  # type: ignore[return-value]
