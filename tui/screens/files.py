"""Files: view a guest file (with a size guard) or browse a directory, download a guest file,
upload a local file with a progress bar.

Every transfer ends with the SHA-256 the guest computed; an upload also shows
whether it equals the local file's. Viewing a directory lists it (``ListGuestDirectory``):
enter on an entry opens it (a file is viewed, a directory listed; ``../`` goes up).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat as stat_mod
from functools import partial
from pathlib import Path
from typing import Final

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Header, Input, Label, ProgressBar, Static, TextArea
from textual.worker import Worker

from limiquantix.protocol import safe_text
from limiquantix.protocol._gen.agent_pb2 import FILE_TYPE_DIRECTORY, FILE_TYPE_SYMLINK, FileStat

from .._client import MAX_DOWNLOAD_BYTES, MAX_UPLOAD_BYTES, ApiError
from .._format import human_bytes
from .._workers import run_async
from ..widgets.footer import KeysFooter
from ..widgets.path_dialog import PathDialog
from .base import LqxScreen
from .dialogs import ConfirmDialog

__all__ = ["LIST_LIMIT", "VIEW_LIMIT_BYTES", "FilesScreen"]

#: The viewer reads at most this much of a file (its size is checked first).
VIEW_LIMIT_BYTES: Final = 1024 * 1024
#: A directory's entries listed at most (beyond, the status says how to see the rest): a
#: directory of a million files must not become a million-line viewer.
LIST_LIMIT: Final = 5000


class FilesScreen(LqxScreen):
    BINDINGS = [
        Binding("ctrl+o", "view", "View guest file", priority=True),
        Binding("ctrl+t", "upload", "Upload", priority=True),
        # ctrl+s, as the runner saves its output: ctrl+d is the paths' delete-right.
        Binding("ctrl+s", "download", "Download", priority=True),
        Binding("escape", "back", "Back"),
    ]
    ACTION_PERMISSIONS = {"view": "file.read", "upload": "file.write", "download": "file.read"}

    def __init__(self, vm_id: str) -> None:
        super().__init__()
        self.vm_id = vm_id
        self.upload: Worker[None] | None = None
        """The upload in progress, if any (escape asks before cancelling it)."""
        self.listing: list[str] = []
        """While a directory is shown: the guest path of each line of the viewer (enter opens it)."""

    @property
    def uploading(self) -> bool:
        return self.upload is not None and self.upload.is_running

    def action_back(self) -> None:
        """Back; during an upload, ask first (like the runner: leaving would cancel it silently)."""
        if not self.uploading:
            self.app.pop_screen()
            return

        def answered(cancel: bool | None) -> None:
            if cancel and self.upload is not None:
                self.upload.cancel()
                self.app.pop_screen()

        self.app.push_screen(
            ConfirmDialog(
                "Cancel the upload and go back?",
                "The guest file stays as it was (a write is committed whole or not at all).",
                confirm="Cancel upload",
                cancel="Keep uploading",  # two buttons saying "Cancel" left the operator guessing
            ),
            answered,
        )

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="files"):
            yield Label(f"Files on {self.vm_id}", id="files-title")
            with Horizontal(classes="files-row"):
                yield Label("guest path", classes="files-label")
                yield Input("/etc/os-release", id="guest-path", compact=True)
                yield Button("View ^O", id="view", variant="primary", compact=True)
                yield Button("Download ^S", id="download", variant="default", compact=True)
            with Horizontal(classes="files-row"):
                yield Label("local file", classes="files-label")
                yield Input(
                    placeholder="a file on this machine, uploaded to the guest path", id="local-path", compact=True
                )
                yield Button("Upload ^T", id="upload", variant="warning", compact=True)
            yield ProgressBar(total=100, show_eta=False, id="progress")
            yield Static("", id="transfer")
            yield TextArea("", id="viewer", read_only=True, show_line_numbers=True)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.sub_title = self.vm_id
        for button in self.query(Button):
            button.can_focus = False  # tab moves between the two paths; ctrl+o / ctrl+t act
        self.query_one("#progress", ProgressBar).display = False  # shown during an upload
        self.query_one("#guest-path", Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "view":
            self.action_view()
        elif event.button.id == "download":
            self.action_download()
        elif event.button.id == "upload":
            self.action_upload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "guest-path":
            self.action_view()
        elif event.input.id == "local-path":
            self.action_upload()

    def _guest_path(self) -> str | None:
        path = self.query_one("#guest-path", Input).value.strip()
        if not path.startswith("/"):
            self.notify("The guest path must be absolute.", severity="warning")
            return None
        return path

    # -- view ------------------------------------------------------------------------

    def action_view(self) -> None:
        path = self._guest_path()
        if path is not None:
            run_async(self, partial(self._view, path), group="transfer", exclusive=True)

    async def _view(self, path: str) -> None:
        status = self.query_one("#transfer", Static)
        client = self.lqx.client
        self.listing = []
        try:
            # The size guard: never more than the limit is read (the answer
            # still tells the whole file's size).
            content, file_size, sha = await client.read_file(self.vm_id, path, length=VIEW_LIMIT_BYTES)
        except ApiError as exc:
            if exc.reason == "is_a_directory":  # browse it rather than stop at "Is a directory"
                await self._list(path)
                return
            # The API's message usually names the path already: said once.
            status.update(
                Text(safe_text(exc.summary if path in exc.summary else f"{path}: {exc.summary}"), style="bold red")
            )
            self.query_one("#viewer", TextArea).load_text("")  # not the previous file under this error
            self.lqx.report(exc, "View")
            return
        shown = content.decode("utf-8", errors="replace")
        binary = "\x00" in shown
        if binary:
            shown = f"(binary file: {human_bytes(file_size)}; not shown)"
        else:
            # The guest's bytes: lines and tabs kept, every other control shown (\x1b ...).
            shown = safe_text(shown, multiline=True)
        self.query_one("#viewer", TextArea).load_text(shown)
        text = Text(f"{path}: {human_bytes(file_size)}", style="bold")
        if binary:
            text.append(f"  (binary: first {human_bytes(len(content))} read, not shown)", style="yellow")
        elif len(content) < file_size:
            text.append(f"  (first {human_bytes(len(content))} shown: the viewer's limit)", style="yellow")
        text.append(f"\nSHA-256 of what was read: {sha}", style="dim")
        status.update(text)

    async def _list(self, path: str) -> None:
        """A directory in the viewer, one entry a line (``../`` first below ``/``)."""
        status = self.query_one("#transfer", Static)
        viewer = self.query_one("#viewer", TextArea)
        try:
            entries, more = await self.lqx.client.list_directory(self.vm_id, path, limit=LIST_LIMIT)
        except ApiError as exc:
            status.update(
                Text(safe_text(exc.summary if path in exc.summary else f"{path}: {exc.summary}"), style="bold red")
            )
            viewer.load_text("")
            self.lqx.report(exc, "List")
            return
        lines, targets = [], []
        if path != "/":
            lines.append(f"{'':10}  {'':8} {'':8} {'':>9}  {'':16}  ../")
            targets.append(posixpath.dirname(path.rstrip("/")) or "/")
        for entry in entries:
            lines.append(_entry_line(entry))
            targets.append(posixpath.join(path, entry.name))
        viewer.load_text("\n".join(lines))
        self.listing = targets
        text = Text(f"{path}: directory, {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}", style="bold")
        if more:
            text.append(f" (the first {LIST_LIMIT} by name: type a path to go further)", style="yellow")
        text.append("\nenter on an entry opens it (tab to the listing); ../ goes up", style="dim")
        status.update(text)

    def on_key(self, event: events.Key) -> None:
        """Enter in a directory's listing: open the entry under the cursor (the read-only
        viewer does nothing with enter and lets it through)."""
        viewer = self.query_one("#viewer", TextArea)
        if event.key != "enter" or self.focused is not viewer or not self.listing:
            return
        line = viewer.cursor_location[0]
        if 0 <= line < len(self.listing):
            event.stop()
            self.query_one("#guest-path", Input).value = self.listing[line]
            self.action_view()

    # -- download --------------------------------------------------------------------

    def action_download(self) -> None:
        """The guest path to a local file (asked for; an existing one replaced only after asking)."""
        path = self._guest_path()
        if path is None:
            return
        name = posixpath.basename(path.rstrip("/")) or "download"
        self.app.push_screen(
            PathDialog(f"Download {path} to a local file", value=name, action="Download"),
            lambda local: None if local is None else self._download_to(path, local, overwrite=False),
        )

    def _download_to(self, path: str, local: Path, *, overwrite: bool) -> None:
        if local.is_dir():
            local = local / (posixpath.basename(path.rstrip("/")) or "download")
        if local.exists() and not overwrite:
            self.app.push_screen(
                ConfirmDialog(f"{local} exists. Replace it?", f"It becomes {path} of {self.vm_id}.", confirm="Replace"),
                lambda yes: self._download_to(path, local, overwrite=True) if yes else None,
            )
            return
        run_async(self, partial(self._download, path, local), group="transfer", exclusive=True)

    async def _download(self, path: str, local: Path) -> None:
        status = self.query_one("#transfer", Static)
        status.update(Text(f"downloading {path} → {local}…", style="cyan"))
        try:
            # One answer holds the whole file (up to the limit; the size says if there is more).
            content, size, sha = await self.lqx.client.read_file(self.vm_id, path, length=MAX_DOWNLOAD_BYTES)
        except ApiError as exc:
            status.update(Text(safe_text(f"download failed: {exc.summary}"), style="bold red"))
            self.lqx.report(exc, "Download")
            return
        if size > len(content):
            status.update(
                Text(
                    f"{path} is {human_bytes(size)}; the TUI downloads at most {human_bytes(MAX_DOWNLOAD_BYTES)}"
                    f" (limiquantix cp {self.vm_id}:{path} . streams any size)",
                    style="bold red",
                )
            )
            return
        ours = hashlib.sha256(content).hexdigest()
        if ours != sha.lower():
            status.update(Text(f"{path}: SHA-256 mismatch (guest {sha}, received {ours}): not saved", style="bold red"))
            return
        part = local.with_name(f".{local.name}.part")
        try:
            part.write_bytes(content)
            os.replace(part, local)  # whole or not at all, as an upload is in the guest
        except OSError as exc:
            part.unlink(missing_ok=True)
            status.update(Text(safe_text(f"cannot write {local}: {exc.strerror or exc}"), style="bold red"))
            return
        text = Text(f"{path} → {local}: {human_bytes(len(content))}", style="bold")
        text.append(f"\nSHA-256 {sha}  ")
        text.append("= guest file", style="bold green")
        status.update(text)
        self.notify(f"Downloaded {path} to {local}.")

    # -- upload ----------------------------------------------------------------------

    def action_upload(self) -> None:
        path = self._guest_path()
        raw = self.query_one("#local-path", Input).value.strip()
        if path is None:
            return
        if not raw:
            self.notify("Name a local file to upload.", severity="warning")
            return
        local = Path(raw).expanduser()
        try:
            size = local.stat().st_size
            if not local.is_file():
                raise IsADirectoryError(raw)
        except OSError as exc:
            self.notify(f"{raw}: {exc.strerror or 'not a regular file'}", severity="error")
            return
        if size > MAX_UPLOAD_BYTES:
            self.notify(
                f"{raw} is {human_bytes(size)}; the TUI uploads at most {human_bytes(MAX_UPLOAD_BYTES)}.",
                severity="error",
            )
            return
        self.upload = run_async(self, partial(self._upload, local, path), group="transfer", exclusive=True)

    async def _upload(self, local: Path, path: str) -> None:
        status = self.query_one("#transfer", Static)
        progress = self.query_one("#progress", ProgressBar)
        content = local.read_bytes()
        local_sha = hashlib.sha256(content).hexdigest()
        progress.update(total=100, progress=0)
        progress.display = True
        status.update(Text(f"uploading {local} → {path} ({human_bytes(len(content))})…", style="cyan"))

        def sent(done: int, total: int) -> None:
            progress.update(progress=100 * done / max(total, 1))
            if done >= total:
                # Every byte is sent; the guest checks the SHA-256 and commits.
                status.update(
                    Text(f"sent {human_bytes(total)}; waiting for the guest to check and commit {path}…", style="cyan")
                )

        try:
            written, sha = await self.lqx.client.write_file(
                self.vm_id, path, content, create_parents=True, progress=sent
            )
        except ApiError as exc:
            status.update(Text(safe_text(f"upload failed: {exc.summary}"), style="bold red"))
            self.lqx.report(exc, "Upload")
            return
        progress.update(progress=100)
        ok = sha == local_sha
        text = Text(f"{path}: {human_bytes(written)} written", style="bold")
        text.append(f"\nSHA-256 {sha}  ")
        text.append("= local file" if ok else f"≠ local file {local_sha}", style="bold green" if ok else "bold red")
        status.update(text)
        self.notify(
            f"Uploaded {local.name} to {path}" + ("" if ok else " — SHA-256 MISMATCH"),
            severity="information" if ok else "error",
        )


def _entry_line(entry: FileStat) -> str:
    """``drwxr-xr-x  root     root          4096  2026-12-05 17:44  name/`` (guest text escaped)."""
    kind = "d" if entry.type == FILE_TYPE_DIRECTORY else "l" if entry.type == FILE_TYPE_SYMLINK else "-"
    mode = kind + stat_mod.filemode(entry.mode)[1:]
    when = entry.modified.ToDatetime().strftime("%Y-%m-%d %H:%M") if entry.HasField("modified") else ""
    name = safe_text(entry.name) + ("/" if entry.type == FILE_TYPE_DIRECTORY else "")
    if entry.symlink_target:
        name += f" -> {safe_text(entry.symlink_target)}"
    owner, group = safe_text(entry.owner or str(entry.uid)), safe_text(entry.group or str(entry.gid))
    return f"{mode:10}  {owner[:8]:8} {group[:8]:8} {entry.size:>9}  {when:16}  {name}"
