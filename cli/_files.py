"""Guest files: ``cp`` both ways (SHA-256 checked, a progress bar for large files on a
terminal), ``ls``, ``stat``."""

from __future__ import annotations

import base64
import hashlib
import os
import stat as stat_mod
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import click

from limiquantix.protocol import write_file_parts

from ._fast import VM, ApiError, Client
from ._output import print_json, print_table, say, short_time
from ._state import json_option, pass_client, vm_argument

__all__ = ["COMMANDS", "MAX_UPLOAD_BYTES", "parse_remote"]

#: Largest file uploaded in one WriteGuestFile: base64 in JSON (4/3 of it) stays well below
#: the controller's 64 MiB message limit (the TUI's bound too).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: Files above this get a progress bar (on a terminal).
_PROGRESS_FROM_BYTES = 1024 * 1024
#: Upload body pieces: the progress bar moves after each.
_UPLOAD_PIECE = 256 * 1024
#: A file transfer's budget (the controller allows 300 s), or --request-timeout when longer.
_FILE_TIMEOUT_S = 300.0
_DIRECTORY = "FILE_TYPE_DIRECTORY"


def parse_remote(arg: str) -> tuple[str, str] | None:
    """``VM:PATH`` → (vm, path); None for a local path (no ``:`` before the first ``/``,
    as scp reads it: ``./a:b`` and ``/x:y`` are local)."""
    head, sep, tail = arg.partition(":")
    if not sep or not head or "/" in head:
        return None
    return head, tail


def _progress(total: int, label: str) -> AbstractContextManager[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal and the file is large; else None."""
    if total < _PROGRESS_FROM_BYTES or not sys.stderr.isatty():
        return nullcontext(None)
    from contextlib import contextmanager

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    @contextmanager
    def bar() -> Iterator[Callable[[int], None]]:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task(label.replace("[", "\\["), total=total)
            yield lambda done: progress.update(task, completed=done)

    return bar()


def _stat(client: Client, vm: str, path: str) -> dict[str, Any]:
    stat: dict[str, Any] = client.call(VM, "StatGuestFile", {"vmId": vm, "path": path}).get("stat", {})
    return stat


def upload(client: Client, local: Path, vm: str, path: str, *, parents: bool) -> tuple[int, str, str]:
    """``local`` → ``vm:path`` (atomically replaced in the guest; into it when ``path`` is a
    directory); (bytes, SHA-256, the guest path written).

    Raises:
        click.ClickException: a directory, not a regular file, too large, unreadable, or the
            guest's SHA-256 differs from ours.
        ApiError: the controller's error.
    """
    try:
        info = local.stat()
    except OSError as exc:
        raise click.ClickException(f"{local}: {exc.strerror}") from None
    if stat_mod.S_ISDIR(info.st_mode):
        raise click.ClickException(
            f"{local} is a directory: cp copies one file (for a tree: tar czf tree.tgz {local}, cp that, then tar xzf in the VM)"
        )
    if not stat_mod.S_ISREG(info.st_mode):
        raise click.ClickException(f"{local} is not a regular file")
    if info.st_size > MAX_UPLOAD_BYTES:
        raise click.ClickException(f"{local} is larger than {MAX_UPLOAD_BYTES >> 20} MiB, the largest file cp uploads")
    if path.endswith("/") or not path:
        path = path + local.name
    else:
        try:
            if _stat(client, vm, path).get("type") == _DIRECTORY:
                path = path.rstrip("/") + "/" + local.name
        except ApiError as exc:
            if exc.code != "not_found":
                raise
    try:
        content = local.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"{local}: {exc.strerror}") from None
    digest = hashlib.sha256(content).hexdigest()
    parts = write_file_parts(vm, path, content, create_parents=parents, piece_bytes=_UPLOAD_PIECE)
    del content
    total = sum(len(p) for p in parts)
    with _progress(total, f"{local.name} → {vm}") as advance:

        def body() -> Iterator[bytes]:
            sent = 0
            for piece in parts:
                yield piece
                sent += len(piece)
                if advance is not None:
                    advance(sent)

        try:
            answer = client.call_raw(
                f"{VM}/WriteGuestFile", body(), length=total, timeout_s=max(client.request_timeout_s, _FILE_TIMEOUT_S)
            )
        except ApiError as exc:
            if exc.code == "not_found" and not parents:
                # The guest's words name the file; what to do about its missing directory is ours.
                raise ApiError(exc.code, f"{exc.message} (its directory is missing: --parents creates it)") from None
            raise
    written, theirs = int(answer.get("bytesWritten", 0)), answer.get("sha256", "")
    if theirs.lower() != digest:
        raise click.ClickException(f"{vm}:{path}: the guest's SHA-256 is {theirs or 'missing'}, ours {digest}")
    return written, digest, path


def download(client: Client, vm: str, path: str, local: Path) -> tuple[int, str, Path]:
    """``vm:path`` → ``local`` (written beside it, renamed once checked; into it when ``local``
    is a directory); (bytes, SHA-256, the local file written).

    Raises:
        click.ClickException: a directory in the guest, an unwritable destination, or a SHA-256
            that differs from the guest's (the partial file is removed).
        ApiError: the controller's error.
    """
    info = _stat(client, vm, path)
    if info.get("type") == _DIRECTORY:
        raise click.ClickException(f"{vm}:{path} is a directory: cp copies one file (tar it in the VM first)")
    if local.is_dir():
        local = local / (path.rstrip("/").rpartition("/")[2] or "download")
    part = local.with_name(f".{local.name}.part")
    hasher = hashlib.sha256()
    size, theirs = 0, ""
    try:
        fh = part.open("wb")
    except OSError as exc:
        raise click.ClickException(f"{part}: {exc.strerror}") from None
    try:
        with fh, _progress(int(info.get("size", 0)), f"{vm} → {local.name}") as advance:
            stream = client.stream(
                VM,
                "ReadGuestFileStream",
                {"vmId": vm, "path": path},
                timeout_s=max(client.request_timeout_s, _FILE_TIMEOUT_S),
            )
            for chunk in stream:
                data = base64.b64decode(chunk.get("content", ""))
                fh.write(data)
                hasher.update(data)
                size += len(data)
                if advance is not None:
                    advance(size)
                if chunk.get("eof"):
                    theirs = chunk.get("sha256", "")
        if theirs.lower() != hasher.hexdigest():
            raise click.ClickException(
                f"{vm}:{path}: the guest's SHA-256 is {theirs or 'missing'}, what arrived {hasher.hexdigest()}: not kept"
            )
        os.replace(part, local)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return size, hasher.hexdigest(), local


@click.command("cp", short_help="Copy a file to or from a VM (SHA-256 checked).")
@click.argument("source")
@click.argument("destination")
@click.option("--parents", is_flag=True, help="upload: create missing directories in the guest")
@pass_client
def cp_cmd(client: Client, source: str, destination: str, parents: bool) -> None:
    """Copy one file between this machine and a VM, SHA-256 checked; VM:PATH names the
    guest's side (as scp). Directories are refused.

    \b
      limiquantix cp ./app.conf web-1:/etc/app.conf
      limiquantix cp web-1:/var/log/syslog ./web-1-syslog
    """
    src, dst = parse_remote(source), parse_remote(destination)
    if (src is None) == (dst is None):
        raise click.UsageError("exactly one of SOURCE and DESTINATION must be VM:PATH")
    if dst is not None:
        # The file written is named (cp into a directory puts it there under its own name).
        written, digest, path = upload(client, Path(source), dst[0], dst[1], parents=parents)
        say(f"{source} → {dst[0]}:{path}: {written} bytes, sha256 {digest}")
    else:
        assert src is not None
        size, digest, local = download(client, src[0], src[1], Path(destination))
        say(f"{source} → {local}: {size} bytes, sha256 {digest}")


def _mode(entry: dict[str, Any]) -> str:
    kinds = {"FILE_TYPE_DIRECTORY": "d", "FILE_TYPE_SYMLINK": "l", "FILE_TYPE_REGULAR": "-"}
    return kinds.get(entry.get("type", ""), "?") + stat_mod.filemode(int(entry.get("mode", 0)))[1:]


@click.command("ls", short_help="List a directory in a VM.")
@vm_argument()
@click.argument("path", default="/")
@json_option
@pass_client
def ls_cmd(client: Client, vm: str, path: str, as_json: bool) -> None:
    """List a directory in VM (all pages), sorted by name."""
    entries: list[dict[str, Any]] = []
    token = ""
    while True:
        answer = client.call(VM, "ListGuestDirectory", {"vmId": vm, "path": path, "pageToken": token})
        entries.extend(answer.get("entries", ()))
        token = answer.get("nextPageToken", "")
        if not token:
            break
    if as_json:
        print_json(entries)
        return
    rows = [
        (
            _mode(e),
            e.get("owner") or e.get("uid", 0),
            e.get("group") or e.get("gid", 0),
            e.get("size", "0"),
            short_time(e.get("modified", "")),
            e.get("name", "") + (f" -> {e['symlinkTarget']}" if e.get("symlinkTarget") else ""),
        )
        for e in entries
    ]
    print_table(("MODE", "OWNER", "GROUP", "SIZE", "MODIFIED", "NAME"), rows)


@click.command("stat", short_help="Show one path in a VM.")
@vm_argument()
@click.argument("path")
@json_option
@pass_client
def stat_cmd(client: Client, vm: str, path: str, as_json: bool) -> None:
    """Show one path in VM (not following a final symlink): type, size, mode, owner, times."""
    info = _stat(client, vm, path)
    if as_json:
        print_json(info)
        return
    rows = [
        ("path", info.get("path", path)),
        ("type", info.get("type", "").removeprefix("FILE_TYPE_").lower()),
        ("size", info.get("size", "0")),
        ("mode", _mode(info) + f" ({int(info.get('mode', 0)):04o})"),
        ("owner", f"{info.get('owner', '')} ({info.get('uid', 0)})"),
        ("group", f"{info.get('group', '')} ({info.get('gid', 0)})"),
        ("modified", info.get("modified", "")),
        ("accessed", info.get("accessed", "")),
        ("changed", info.get("changed", "")),
        ("symlink target", info.get("symlinkTarget", "")),
    ]
    print_table(("FIELD", "VALUE"), [r for r in rows if r[1]])


COMMANDS = (cp_cmd, ls_cmd, stat_cmd)
