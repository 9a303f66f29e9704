"""Modal dialogs: confirmation, password reset, help."""

from __future__ import annotations

from typing import Final

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from .._config import api_examples_path

__all__ = ["ConfirmDialog", "HelpScreen", "PasswordDialog"]


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no; ``No`` has the focus, so a stray enter changes nothing."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("y", "confirm", "Yes", show=False)]

    def __init__(self, question: str, detail: str = "", *, confirm: str = "Yes", cancel: str = "Cancel") -> None:
        """``confirm`` / ``cancel``: the two buttons' words; ``cancel`` must not read as the
        confirmation when the question is itself about cancelling (an upload's "Keep uploading")."""
        super().__init__()
        self.question = question
        self.detail = detail
        self.confirm_label = confirm
        self.cancel_label = cancel

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            if self.detail:
                yield Label(self.detail, classes="dialog-detail")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.confirm_label, variant="error", id="yes")
                yield Button(self.cancel_label, variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_cancel(self) -> None:
        self.dismiss(False)

    def action_confirm(self) -> None:
        self.dismiss(True)


class PasswordDialog(ModalScreen["tuple[str, str, bool] | None"]):
    """User name, new password twice (masked), expire flag."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, vm_id: str) -> None:
        super().__init__()
        self.vm_id = vm_id

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Reset a password on {self.vm_id}", classes="dialog-title")
            yield Input(placeholder="user name", id="user", value="root", compact=True)
            yield Input(placeholder="new password", password=True, id="password", compact=True)
            yield Input(placeholder="the same again", password=True, id="again", compact=True)
            yield Checkbox("expire: force a change at next login", id="expire")
            yield Label("", id="password-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Reset", variant="error", id="reset")
                yield Button("Cancel", variant="primary", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#password", Input).focus()

    def _submit(self) -> None:
        user = self.query_one("#user", Input).value.strip()
        password = self.query_one("#password", Input).value
        again = self.query_one("#again", Input).value
        error = self.query_one("#password-error", Label)
        if not user:
            error.update("a user name is needed")
        elif not password:
            error.update("the password is empty")
        elif password != again:
            error.update("the two passwords differ")
        else:
            self.dismiss((user, password, self.query_one("#expire", Checkbox).value))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "reset":
            self._submit()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "again":
            self._submit()
        else:
            self.focus_next()

    def action_cancel(self) -> None:
        self.dismiss(None)


#: (where, key, what) of every key, for the help screen.
HELP: Final = (
    ("everywhere", "?", "this help"),
    ("", "q / ctrl+q", "quit (q not while typing)"),
    ("", "escape", "back / close"),
    ("", "j", "jobs: runs started here, running or ended (enter opens, ctrl+b cancels)"),
    ("Fleet", "enter", "the VM's details"),
    ("", "space", "select / unselect (for fleet runs)"),
    ("", "a / n", "select every shown VM / none"),
    ("", "/", "filter: name, node, state, OS, IP, label=value"),
    ("", "s / S", "sort by the next column / reverse (or click a header)"),
    ("", "x", "run a script on the selected VMs (or the one under the cursor)"),
    ("", "u", "audit log (admin)"),
    ("VM", "x / f", "script runner / files"),
    ("", "p / r", "shut down / reboot (asks first)"),
    ("", "w / g", "reset a password (admin) / ping the agent"),
    ("Script runner", "ctrl+r / ctrl+b", "run / cancel the running script (escape leaves it running)"),
    ("", "ctrl+o", "load a script from a local file"),
    ("", "enter / e", "on a recent run: run it again / load it into the editor"),
    ("Output", "/ n N", "search (incremental) / next / previous match"),
    ("", "shift+arrows, y", "select lines (or drag the mouse) / copy them"),
    ("", "ctrl+s", "save the output to a local file"),
    ("Files", "ctrl+o / ctrl+t", "view the guest path (a directory: its listing) / upload the local file to it"),
    ("", "enter", "in a directory's listing: open the entry (../ goes up)"),
    ("", "ctrl+s", "download the guest path to a local file"),
    ("Audit", "enter / ctrl+l", "in a filter: apply the filters; on a row: its whole detail / reload"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "Close"), Binding("question_mark", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 1), show_header=False)
        table.add_column(style="bold")
        table.add_column(style="cyan", no_wrap=True)
        table.add_column()
        for where, key, what in HELP:
            table.add_row(where, key, what)
        with VerticalScroll(classes="dialog help"):
            yield Static(Text("LimiQuantix TUI: keys", style="bold"), classes="dialog-title")
            yield Static(table)
            yield Static(
                "The fleet refreshes every few seconds (--refresh-s). When the controller is down or "
                "refuses the token, a notification says so and the app keeps trying.",
                classes="dialog-detail",
            )
            examples = api_examples_path()
            if examples.is_file():
                yield Static(
                    Text(f"curl lines to try the API by hand (written by make run): {examples}"),
                    classes="dialog-detail",
                )
