"""The base of the TUI's full screens."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.screen import Screen

if TYPE_CHECKING:
    from ..app import LimiQuantixApp

__all__ = ["LqxScreen"]


class LqxScreen(Screen[None]):
    """A full screen of :class:`~limiquantix.tui.app.LimiQuantixApp`."""

    ACTION_PERMISSIONS: ClassVar[dict[str, str]] = {}
    """Action → the permission it needs (WhoAmI's names): without it the key is neither
    shown in the footer nor run (a viewer was offered Run and failed only on Confirm)."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        permission = self.ACTION_PERMISSIONS.get(action)
        return permission is None or self.lqx.may(permission)

    @property
    def lqx(self) -> LimiQuantixApp:
        """The app, typed (its client, config and shared state)."""
        return self.app  # type: ignore[return-value]
