"""A dialog asking for a local file's path, and the two flows built on it: save the output to a
file (an existing file only after a confirmation) and load a local file's text (a script)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label

if TYPE_CHECKING:
    from .output import OutputView

__all__ = ["MAX_SCRIPT_BYTES", "PathDialog", "load_with_dialog", "save_with_dialog"]

#: Largest script loaded from a file: the controller refuses a command text beyond 64 KiB
#: anyway, and a path typed by mistake (a disk image) must not be read into the editor.
MAX_SCRIPT_BYTES: Final = 64 * 1024


class PathDialog(ModalScreen["Path | None"]):
    """One path (``~`` expanded; relative to the TUI's working directory, which the dialog
    names, and given back absolute so that every message names the file written or read);
    escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    PathDialog {
        align: center middle;
    }
    PathDialog > Vertical {
        width: 70;
        max-width: 100%;
        height: auto;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    PathDialog .path-title {
        text-style: bold;
        margin-bottom: 1;
    }
    PathDialog .path-hint {
        color: $text-muted;
    }
    PathDialog .path-error {
        color: $text-error;
    }
    PathDialog Horizontal {
        height: auto;
        margin-top: 1;
    }
    """

    def __init__(self, title: str, *, value: str = "", action: str = "OK", example: str = "~/output.txt") -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.action = action
        self.example = example

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="path-title")
            yield Input(self.value, placeholder=f"path, e.g. {self.example}", id="path", compact=True)
            # make run starts the TUI in the checkout: "output.txt" alone landed there, unsaid.
            yield Label(f"relative to {Path.cwd()}", classes="path-hint")
            yield Label("", classes="path-error")
            with Horizontal():
                yield Button(self.action, variant="primary", id="ok", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    def _submit(self) -> None:
        raw = self.query_one("#path", Input).value.strip()
        if not raw:
            self.query_one(".path-error", Label).update("a path is needed")
            return
        self.dismiss(Path(os.path.expanduser(raw)).absolute())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


def save_with_dialog(view: OutputView, *, suggested: str = "output.txt") -> None:
    """Ask for a path, then write the view's lines there; an existing file is replaced only
    after a confirmation, and any error is one notification (nothing is lost: the output stays)."""
    from ..screens.dialogs import ConfirmDialog

    app = view.app

    def write(path: Path, overwrite: bool) -> None:
        try:
            lines = view.save(path, overwrite=overwrite)
        except FileExistsError:
            app.push_screen(
                ConfirmDialog(
                    f"{path} exists. Replace it?", "The output replaces the file's content.", confirm="Replace"
                ),
                lambda yes: write(path, True) if yes else app.notify("Not saved.", timeout=2),
            )
        except OSError as exc:
            app.notify(f"Cannot save to {path}: {exc.strerror or exc}", severity="error", timeout=6)
        else:
            app.notify(f"Saved {lines:,} line{'s' if lines != 1 else ''} to {path}.", timeout=3)

    if not view.line_count:
        app.notify("No output to save.", severity="warning", timeout=2)
        return
    app.push_screen(
        PathDialog("Save the output to a file", value=suggested, action="Save"),
        lambda path: None if path is None else write(path, False),
    )


def load_with_dialog(widget: Widget, loaded: Callable[[str, Path], None], *, title: str = "Load a script") -> None:
    """Ask for a path, read the file (UTF-8 text, at most MAX_SCRIPT_BYTES) and give its text to
    ``loaded``; a missing, unreadable, binary or oversized file is one notification."""
    app = widget.app

    def read(path: Path | None) -> None:
        if path is None:
            return
        try:
            with path.open("rb") as f:
                data = f.read(MAX_SCRIPT_BYTES + 1)
        except OSError as exc:
            app.notify(f"Cannot read {path}: {exc.strerror or exc}", severity="error", timeout=6)
            return
        if len(data) > MAX_SCRIPT_BYTES:
            app.notify(f"{path} is larger than {MAX_SCRIPT_BYTES // 1024} KiB: not a script.", severity="error")
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            app.notify(f"{path} is not UTF-8 text: not loaded.", severity="error", timeout=6)
            return
        if "\0" in text:
            app.notify(f"{path} is binary (it holds NUL bytes): not loaded.", severity="error", timeout=6)
            return
        loaded(text, path)

    app.push_screen(PathDialog(title, action="Load", example="~/script.sh"), read)
