"""The base of the TUI's full screens."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.screen import Screen

from ..messages import FleetUpdated

if TYPE_CHECKING:
    from .._app import LimiQuantixApp

__all__ = ["LqxScreen"]


class LqxScreen(Screen[None]):
    """A full screen of :class:`~limiquantix.tui.LimiQuantixApp`."""

    ACTION_PERMISSIONS: ClassVar[dict[str, str]] = {}
    """Action → the permission it needs (WhoAmI's names): without it the key is neither
    shown in the footer nor run (a viewer was offered Run and failed only on Confirm)."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        permission = self.ACTION_PERMISSIONS.get(action)
        return permission is None or self.lqx.may(permission)

    def on_fleet_updated(self, message: FleetUpdated) -> None:
        self.fleet_updated()

    def fleet_updated(self) -> None:
        """Redraw what this screen shows of the fleet (:attr:`LimiQuantixApp.fleet`) and of the
        controller's status: after each poll, and when a screen's own data changes. Runs in
        the screen's message loop (FleetUpdated), never while the screen's widgets go away."""

    @property
    def lqx(self) -> LimiQuantixApp:
        """The app, typed (its client, config and shared state)."""
        return self.app  # type: ignore[return-value]
