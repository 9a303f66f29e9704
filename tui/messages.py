"""Messages shared by the app and its screens (a widget's own messages live in its class)."""

from __future__ import annotations

from textual.message import Message

__all__ = ["FleetUpdated"]


class FleetUpdated(Message, bubble=False):
    """The fleet or the controller's status changed (a poll answered, failed or is late):
    each screen on the stack redraws what it shows of them.

    Posted to the screens, drawn in each screen's own message loop: a screen that is
    closing (the app quitting) gets none, so nothing draws into widgets already removed.
    Replaceable: two updates waiting in a screen's queue are one redraw.
    """

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FleetUpdated)
