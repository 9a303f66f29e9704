"""The base of the TUI's full screens."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final

from textual import events
from textual.binding import Binding
from textual.screen import Screen

from ..messages import FleetUpdated

if TYPE_CHECKING:
    from .._app import LimiQuantixApp

__all__ = ["PERMISSION_WORDS", "LqxScreen"]

#: What each permission a key needs lets its holder do, as the refusal says it ("your token's
#: role viewer may not run commands").
PERMISSION_WORDS: Final = {
    "vm.exec": "run commands",
    "audit.read": "read the audit log",
    "file.read": "read guest files",
    "file.write": "write guest files",
    "vm.power": "shut down or reboot VMs",
    "vm.password_reset": "reset guest passwords",
}


class LqxScreen(Screen[None]):
    """A full screen of :class:`~limiquantix.tui.LimiQuantixApp`."""

    ACTION_PERMISSIONS: ClassVar[dict[str, str]] = {}
    """Action → the permission it needs (WhoAmI's names): without it the key is neither
    shown in the footer nor run (a viewer was offered Run and failed only on Confirm)."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        permission = self.ACTION_PERMISSIONS.get(action)
        return permission is None or self.lqx.may(permission)

    def on_key(self, event: events.Key) -> None:
        """A key of this screen's that the token may not use is not run (:meth:`check_action`)
        and was ignored without a word: say why, once per press. Keys that anything else on
        the screen binds or consumes (a focused input's letters) are left alone."""
        refused = self._refused_permission(event.key)
        if refused is None or event.key in self.active_bindings:
            return
        event.stop()
        event.prevent_default()
        me = self.lqx.me
        who = f"your token's role {me.role}" if me is not None and me.role else "your token"
        self.notify(f"{who} may not {PERMISSION_WORDS.get(refused, refused)}", severity="warning", title="Not allowed")

    def _refused_permission(self, key: str) -> str | None:
        """The permission this screen's binding of ``key`` needs and the token lacks (None: no
        such binding, or it is allowed)."""
        for binding in Binding.make_bindings(self.BINDINGS):
            if binding.key == key:
                permission = self.ACTION_PERMISSIONS.get(binding.action.partition("(")[0])
                if permission is not None and not self.lqx.may(permission):
                    return permission
        return None

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
