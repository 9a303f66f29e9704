"""``/downloads/``: the guest agent's packages and ``install-agent.sh``, read-only, for
cloud-init and curl.

::

    GET  /downloads/               JSON index: {"files": [{"name", "size", "sha256", "modified"}]}
    GET  /downloads/SHA256SUMS     the same, in sha256sum's format (what install-agent.sh reads)
    GET  /downloads/NAME           the file, streamed (Content-Length, ETag, Last-Modified; HEAD works)

The files are those directly inside ``downloads_dir`` (default
``/var/lib/limiquantix/downloads``; a missing directory serves nothing but the
script), plus ``install-agent.sh`` from this package's data when the directory
has no copy of its own (a copy there wins, so an operator can adapt it).
``SHA256SUMS`` is always computed here; a file of that name in the directory
is ignored.

Open by default, like the public agent downloads of other hypervisors:
packages are not secret, and a fresh VM's cloud-init has no token. With
``downloads_require_token`` every request needs a bearer token of any role
(install-agent.sh sends ``LQX_TOKEN``).

What cannot be served answers 404 (Connect's JSON error body) without any
file outside the directory being opened: names are single path components of
safe characters (no ``/``, no leading dot, so no ``..`` and no dotfiles; an
encoded ``%2e%2e`` or ``%2f`` decodes to one of those); a symlink is followed
only when its target is a regular file directly inside the directory; the
file is then opened relative to the directory with ``O_NOFOLLOW`` and checked
to be a regular file on the descriptor that is streamed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import mimetypes
import os
import re
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Final, final

import trio
from prometheus_client import CollectorRegistry, Counter
from quart import Quart, Response, request

from limiquantix.protocol import errors

from ._admin import authenticate_request, error_response
from ._authn import AuthFailures

__all__ = [
    "BUILTIN_FILES",
    "DEFAULT_DOWNLOADS_DIR",
    "DOWNLOADS_PATH",
    "INSTALL_SCRIPT_NAME",
    "SUMS_NAME",
    "DownloadEntry",
    "Downloads",
    "register_downloads_route",
]

log = logging.getLogger(__name__)

DOWNLOADS_PATH: Final = "/downloads/"
DEFAULT_DOWNLOADS_DIR: Final = Path("/var/lib/limiquantix/downloads")
INSTALL_SCRIPT_NAME: Final = "install-agent.sh"
#: The generated checksum list (``sha256sum -c`` reads it).
SUMS_NAME: Final = "SHA256SUMS"
#: Served from the package when the directory has no file of that name
#: (``install-agent.sh`` here is a symlink to packaging/cloud-init/ in a
#: checkout; a wheel carries the file itself as package data).
BUILTIN_FILES: Final[Mapping[str, Path]] = {INSTALL_SCRIPT_NAME: Path(__file__).with_name(INSTALL_SCRIPT_NAME)}
#: Read per thread hop when streaming or hashing: big enough that a 6 MiB
#: package takes a couple of dozen hops, small enough to bound memory per download.
CHUNK_BYTES: Final = 256 * 1024
#: A servable name: one path component of safe characters, not starting with a dot.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+~-]{0,254}\Z")
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | getattr(os, "O_NOCTTY", 0)
_CONTENT_TYPES: Final = {
    ".deb": "application/vnd.debian.binary-package",
    ".rpm": "application/x-rpm",
    ".sh": "text/x-shellscript; charset=utf-8",
}


@final
@dataclasses.dataclass(frozen=True)
class DownloadEntry:
    """One served file, as the index lists it."""

    name: str
    size: int
    sha256: str
    mtime: float

    def to_json_dict(self) -> dict[str, object]:
        """The index's JSON object (``modified`` in RFC 3339, UTC)."""
        modified = datetime.datetime.fromtimestamp(self.mtime, datetime.timezone.utc)
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "modified": modified.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }


@dataclasses.dataclass(frozen=True)
class _Key:
    """What identifies a file's content for the digest cache."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Key:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@final
class Downloads:
    """The files under ``/downloads/``: a directory (which may be absent or None)
    plus :data:`BUILTIN_FILES`.

    SHA-256 digests are cached by (device, inode, size, mtime), so an index
    request hashes only new or changed files.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None, *, builtin: Mapping[str, Path] = BUILTIN_FILES
    ) -> None:
        self.directory = Path(directory) if directory else None
        self.builtin = dict(builtin)
        self._digests: dict[str, tuple[_Key, str]] = {}
        self._index_lock = trio.Lock()

    # -- opening (in a worker thread) -----------------------------------------------

    def _open_sync(self, name: str) -> io.FileIO:
        """The file ``name``, open for reading.

        Raises:
            errors.NotFound: not a servable name, absent, not a regular file,
                or a symlink leading outside the directory.
        """
        if name == SUMS_NAME or not _NAME_RE.match(name):
            raise errors.NotFound(f"no file {name[:80]!r} in /downloads/")
        f = self._open_in_directory(name)
        if f is None and name in self.builtin:
            try:
                f = io.FileIO(self.builtin[name], "rb")
            except OSError:
                f = None
            else:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # pragma: no cover - our own package data
                    f.close()
                    f = None
        if f is None:
            raise errors.NotFound(f"no file {name!r} in /downloads/")
        return f

    def _open_in_directory(self, name: str) -> io.FileIO | None:
        """``name`` inside the directory, or None (missing, not regular, or pointing outside)."""
        if self.directory is None:
            return None
        try:
            real_dir = os.path.realpath(self.directory)
            # A symlink is served only when it resolves to a file directly inside the directory.
            real = os.path.realpath(os.path.join(real_dir, name))
            if os.path.dirname(real) != real_dir:
                return None
            dir_fd = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            # Relative to the directory, never following a link: whatever is opened is in it.
            # O_NONBLOCK so that a FIFO opens at once (and is then refused) instead of blocking.
            fd = os.open(os.path.basename(real), _OPEN_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return None
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device must not be read
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)

    def _names_sync(self) -> list[str]:
        names = set(self.builtin)
        if self.directory is not None:
            try:
                names.update(n for n in os.listdir(self.directory) if _NAME_RE.match(n) and n != SUMS_NAME)
            except OSError as exc:
                log.debug("downloads: cannot list %s: %s", self.directory, exc)
        return sorted(names)

    def _entry_sync(self, name: str) -> DownloadEntry | None:
        try:
            f = self._open_sync(name)
        except errors.NotFound:
            return None
        with f:
            st = os.fstat(f.fileno())
            key = _Key.of(st)
            cached = self._digests.get(name)
            if cached is not None and cached[0] == key:
                digest = cached[1]
            else:
                h = hashlib.sha256()
                while chunk := f.read(CHUNK_BYTES):
                    h.update(chunk)
                digest = h.hexdigest()
                self._digests[name] = (key, digest)
        return DownloadEntry(name=name, size=st.st_size, sha256=digest, mtime=st.st_mtime)

    def _index_sync(self) -> list[DownloadEntry]:
        names = self._names_sync()
        self._digests = {n: v for n, v in self._digests.items() if n in names}  # forget removed files
        entries = (self._entry_sync(name) for name in names)
        return [e for e in entries if e is not None]

    # -- async API ------------------------------------------------------------------

    async def open(self, name: str) -> io.FileIO:
        """The file ``name``, open for reading (the caller closes it).

        Raises:
            errors.NotFound: nothing servable by that name.
        """
        return await trio.to_thread.run_sync(self._open_sync, name)

    async def index(self) -> list[DownloadEntry]:
        """Every servable file, sorted by name, with its size and SHA-256."""
        async with self._index_lock:  # one hashing pass at a time, sharing the cache
            return await trio.to_thread.run_sync(self._index_sync)


def _sums(entries: list[DownloadEntry]) -> str:
    """sha256sum's output format: ``<hex>  <name>`` per line."""
    return "".join(f"{e.sha256}  {e.name}\n" for e in entries)


async def _stream(f: io.FileIO, size: int) -> AsyncIterator[bytes]:
    """The file's first ``size`` bytes, CHUNK_BYTES at a time, read in a worker thread.

    A file truncated meanwhile ends early: the client sees a body shorter than
    its Content-Length and fails, as it should.
    """
    with f:
        offset = 0
        while offset < size:
            chunk = await trio.to_thread.run_sync(os.pread, f.fileno(), min(CHUNK_BYTES, size - offset), offset)
            if not chunk:
                log.warning("downloads: %s shrank while being sent", f.name)
                return
            offset += len(chunk)
            yield chunk


def _content_type(name: str) -> str:
    suffix = os.path.splitext(name)[1]
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _etag(st: os.stat_result) -> str:
    return f"{st.st_size:x}-{st.st_mtime_ns:x}"


def register_downloads_route(
    app: Quart,
    failures: AuthFailures,
    downloads: Downloads,
    *,
    registry: CollectorRegistry,
    require_token: bool = False,
) -> None:
    """``GET``/``HEAD`` ``/downloads/``, ``/downloads/SHA256SUMS`` and ``/downloads/<name>``.

    Args:
        app: the controller's app.
        failures: checks bearer tokens when ``require_token`` (counting and auditing refusals).
        downloads: what is served.
        registry: the app's Prometheus registry; ``lqx_controller_downloads{file}``
            counts files sent whole (GET answered 200).
        require_token: every request needs a bearer token of any role.
    """
    sent = Counter(
        "lqx_controller_downloads", "Files sent whole from /downloads/, by name", ["file"], registry=registry
    )

    async def allowed() -> Response | None:
        if not require_token:
            return None
        try:
            await authenticate_request(failures)
        except errors.AgentError as exc:
            return error_response(exc)
        return None

    @app.get(DOWNLOADS_PATH)
    async def downloads_index() -> Response:
        if (refused := await allowed()) is not None:
            return refused
        entries = await downloads.index()
        body = json.dumps({"files": [e.to_json_dict() for e in entries]}, indent=1) + "\n"
        return Response(body, content_type="application/json", headers={"Cache-Control": "no-cache"})

    @app.get(DOWNLOADS_PATH + "<path:name>")
    async def downloads_file(name: str) -> Response:
        # <path:...> so that any deeper path gets this JSON 404, not a generic one.
        if (refused := await allowed()) is not None:
            return refused
        if name == SUMS_NAME:
            body = _sums(await downloads.index())
            return Response(body, content_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-cache"})
        try:
            f = await downloads.open(name)
        except errors.NotFound as exc:
            return error_response(exc)
        st = os.fstat(f.fileno())
        etag = _etag(st)
        not_modified = request.if_none_match.contains(etag)
        if request.method == "HEAD" or not_modified:
            f.close()
            response = Response(b"", status=304 if not_modified else 200, content_type=_content_type(name))
        else:
            response = Response(_stream(f, st.st_size), content_type=_content_type(name))
            response.timeout = None  # a slow link must not be cut by Quart's RESPONSE_TIMEOUT
            sent.labels(name).inc()
        if response.status_code == 200:
            response.content_length = st.st_size
        response.set_etag(etag)
        response.last_modified = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
        response.headers["Cache-Control"] = "no-cache"  # revalidate: a package may be replaced in place
        return response
