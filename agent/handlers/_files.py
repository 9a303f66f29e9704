"""Files: chunked read, atomic chunked write, stat, paged directory listing.

Path policy (:func:`resolve_path`, used by all four requests): a path must be
absolute, free of NUL and of ``..`` components; symlinks are resolved and the
configured allow/deny prefixes (``file_read_*`` or ``file_write_*``) are
checked on the *resolved* path, by whole components (``/etc`` does not cover
``/etcetera``), deny winning. The file is then opened by its resolved path with
``O_NOFOLLOW``, and where ``/proc`` can tell, the policy is checked once more on
what was actually opened, so a path swapped after the check cannot escape.

Writes are transfers (see ``FileWriteRequest`` in agent.proto). The first
request stages a temp file ``.<name>.lqx-<random>.tmp`` (``O_EXCL``, 0600) in
the target's directory, which stays open as a directory fd for the whole
transfer: the final rename happens *in that directory*, whatever happens to the
path meanwhile. The commit (``last=true``) checks ``expected_sha256``, sets the
mode, fsyncs, renames over the target (``CREATE_NEW``: hard-links, so an
existing file is never replaced) and fsyncs the directory.

Each transfer is a :class:`~..session.SessionResource` of the session that
opened it, watched by one task in the session's nursery. The task discards the
transfer (temp file removed, target untouched) when it is idle longer than
``file_write_idle_timeout_s``, when a chunk or the commit fails, when a
``CancelRequest`` names its ``write_id``, and when the session ends (link
closed, agent stopping): its cleanup is a ``finally`` that runs on cancellation.

Blocking file I/O (and SHA-256, which releases the GIL) runs in worker threads;
each request does its syscalls from one thread call, so a cancelled request
never leaves a half-done operation behind.
"""

from __future__ import annotations

import enum
import errno
import grp
import hashlib
import logging
import math
import os
import pwd
import secrets
import stat
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import trio

from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as pb

from .._config import AgentConfig
from .._dispatch import RequestContext, handler

if TYPE_CHECKING:
    from .._session import Session

__all__ = [
    "Access",
    "ResolvedPath",
    "file_read",
    "file_stat",
    "file_write",
    "list_directory",
    "resolve_path",
]

log = logging.getLogger(__name__)

#: Room left in a frame beside a chunk's data (or a listing's entries) for the
#: envelope: message id, timestamp, offsets, sizes, SHA-256 and field tags take
#: well under 200 bytes; the rest is margin.
FRAME_HEADROOM_BYTES: Final = 4096
#: Page size of a listing that names none, and the largest allowed (agent.proto).
LIST_PAGE_DEFAULT: Final = 1000
LIST_PAGE_MAX: Final = 10000
#: Per-entry framing of a repeated message field (tag + length varint), used to
#: keep a listing page inside one frame whatever the length of the names.
_ENTRY_FRAMING_BYTES: Final = 6
#: Block size when copying the old content into an APPEND transfer's temp file:
#: large enough to amortize the syscalls, small enough not to matter in memory.
COPY_BLOCK_BYTES: Final = 1024 * 1024
#: Write transfers open at once on one connection. Each holds two fds (the temp
#: file and its directory); the cap keeps a host from exhausting the agent's.
MAX_WRITE_TRANSFERS: Final = 64
#: Mode of a new file that names none, and of a staged temp file (owner only,
#: so nobody reads a half-written file), and of directories made by create_parents.
DEFAULT_FILE_MODE: Final = 0o644
TEMP_FILE_MODE: Final = 0o600
NEW_DIRECTORY_MODE: Final = 0o755
#: The target's name is kept in the temp file's name for whoever finds one, cut
#: to this many characters (at most 128 bytes of UTF-8) so that the temp name
#: stays within NAME_MAX (255 bytes) for any target name.
TEMP_STEM_MAX_CHARS: Final = 32
#: Random bytes in a temp name: collisions are for O_EXCL to catch, not to expect.
TEMP_RANDOM_BYTES: Final = 6
TEMP_CREATE_ATTEMPTS: Final = 4
#: Largest offset os.pread accepts (off_t is signed 64-bit).
_MAX_OFFSET: Final = 2**63 - 1
#: Largest uid/gid: (uid_t)-1 itself means "unchanged" to chown.
_MAX_ID: Final = 2**32 - 2
#: Errors of link() meaning "no hard links on this filesystem" (vfat: EPERM).
_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})

_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_O_NOCTTY: Final = getattr(os, "O_NOCTTY", 0)


# --------------------------------------------------------------- path policy


class Access(enum.Enum):
    """Which of the configured prefix lists applies."""

    READ = "read"
    WRITE = "write"


@final
@dataclass(frozen=True, slots=True)
class ResolvedPath:
    #: The path as asked, in canonical lexical form (no empty or "." parts).
    requested: str
    #: The real path the request acts on (symlinks resolved).
    real: str


def _canonical(raw: str) -> str:
    """Check a requested path and return its lexical canonical form.

    Raises:
        InvalidArgument: empty, relative, contains NUL or a ``..`` component
            (reason ``invalid_path``).
    """
    shown = repr(raw)[:256]
    if not raw:
        raise errors.InvalidArgument("path is empty", reason="invalid_path")
    if "\0" in raw:
        raise errors.InvalidArgument(f"path {shown} contains a NUL character", reason="invalid_path")
    if not raw.startswith("/"):
        raise errors.InvalidArgument(f"path {shown} is not absolute", reason="invalid_path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.InvalidArgument(f"path {shown} contains a '..' component", reason="invalid_path")
    return "/" + "/".join(parts)


def _join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def _under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or inside it, by whole components."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@final
class _Policy:
    """The allow/deny prefixes of one access kind, themselves resolved.

    Prefixes are resolved at each use (a configured ``/var/run`` must cover
    ``/run``, where the paths it stands for resolve to) and not cached, since
    the links they go through may change while the agent runs.
    """

    def __init__(self, config: AgentConfig, access: Access) -> None:
        if access is Access.READ:
            allow, deny = config.file_read_allow, config.file_read_deny
        else:
            allow, deny = config.file_write_allow, config.file_write_deny
        self.access = access
        self.allow = tuple(os.path.realpath(p) for p in allow)
        self.deny = tuple(os.path.realpath(p) for p in deny)

    def allows(self, real: str) -> bool:
        if any(_under(real, p) for p in self.deny):
            return False
        return any(_under(real, p) for p in self.allow)

    def check(self, real: str, shown: str) -> None:
        """Raises: PermissionDenied (reason ``path_denied``)."""
        if not self.allows(real):
            raise errors.PermissionDenied(
                f"{shown}: {self.access.value} not allowed by the agent's configuration", reason="path_denied"
            )


def resolve_path(
    raw: str, config: AgentConfig, access: Access, *, follow: bool = True, policy: _Policy | None = None
) -> ResolvedPath:
    """Validate ``raw``, resolve it and check it against the configured prefixes.

    Args:
        raw: the path from the request.
        access: whose prefixes apply (read or write).
        follow: resolve the last component too (everything but stat). Without
            it, only the parent is resolved and the name appended (lstat
            semantics). A path that does not exist yet resolves as far as it
            exists, the rest appended.
        policy: an already built :class:`_Policy` for ``access`` (saves work).

    Blocking (resolving stats the path's components): call it from a thread.

    Raises:
        InvalidArgument: an invalid path (reason ``invalid_path``).
        PermissionDenied: the resolved path is outside the allowed prefixes or
            inside a denied one (reason ``path_denied``).
    """
    requested = _canonical(raw)
    if follow or requested == "/":
        real = os.path.realpath(requested)
    else:
        parent, name = requested.rsplit("/", 1)
        real = _join(os.path.realpath(parent or "/"), name)
    (policy or _Policy(config, access)).check(real, requested)
    return ResolvedPath(requested, real)


@contextmanager
def _os_errors(shown: str) -> Iterator[None]:
    """Translate OSError into the error hierarchy (chained)."""
    try:
        yield
    except OSError as exc:
        raise errors.from_os_error(exc, path=shown) from exc


def _errno_error(code: int, shown: str) -> errors.AgentError:
    """The error an OSError with ``code`` would have become."""
    return errors.from_os_error(OSError(code, os.strerror(code)), path=shown)


def _fd_path(fd: int) -> str | None:
    """What an fd really refers to, where /proc can tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _verify_opened(fd: int, expected: str, policy: _Policy, shown: str, *, name: str = "") -> str:
    """Check the policy on what ``fd`` is, should it differ from the checked path.

    Narrows the window between resolving and opening: a component swapped for
    a symlink in between makes the fd point elsewhere, and that is checked.
    ``name`` is appended for a directory fd that stands for a file in it.

    Raises:
        PermissionDenied: the opened object is outside the policy.
    """
    actual = _fd_path(fd)
    if actual is None or actual == expected:
        return expected
    policy.check(_join(actual, name) if name else actual, shown)
    return actual


def _display(name: str) -> str:
    """A file name as a proto string: names that are not UTF-8 are escaped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


# ---------------------------------------------------------------------- read


def _read_chunk_size(config: AgentConfig, asked: int) -> int:
    """The chunk size of a read: asked or default, capped so a chunk fits a frame."""
    limit = max(1, config.max_frame_bytes - FRAME_HEADROOM_BYTES)
    return min(asked or config.file_chunk_bytes, limit)


@final
class _Reader:
    """One open file being read, hashed as it goes (methods block: use threads)."""

    def __init__(self, fd: int, shown: str, offset: int, length: int, file_size: int) -> None:
        self.fd = fd
        self.shown = shown
        self.position = offset
        #: Bytes still wanted; None: to the end of the file.
        self.remaining: int | None = length or None
        self.file_size = file_size
        self.total = 0
        self.hasher = hashlib.sha256()

    @classmethod
    def open(cls, config: AgentConfig, raw: str, offset: int, length: int) -> _Reader:
        """Resolve, check and open ``raw`` for reading.

        Raises:
            InvalidArgument: invalid path or offset.
            PermissionDenied: denied by policy or by the OS.
            NotFound: no such file.
            FailedPrecondition: a directory (``is_a_directory``), a path through
                a file (``not_a_directory``), not a regular file
                (``not_a_regular_file``).
        """
        if offset > _MAX_OFFSET:
            raise errors.InvalidArgument(f"offset {offset} is too large", reason="invalid")
        policy = _Policy(config, Access.READ)
        rp = resolve_path(raw, config, Access.READ, policy=policy)
        shown = rp.requested
        with _os_errors(shown):
            # Look before opening: opening a FIFO or a device has side effects.
            _check_readable(os.stat(rp.real).st_mode, shown)
            # O_NONBLOCK: should a FIFO have replaced the file, open must not hang.
            flags = os.O_RDONLY | os.O_NONBLOCK | _O_NOFOLLOW | _O_CLOEXEC | _O_NOCTTY
            fd = os.open(rp.real, flags)
        try:
            with _os_errors(shown):
                st = os.fstat(fd)
                _check_readable(st.st_mode, shown)
                _verify_opened(fd, rp.real, policy, shown)
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, shown, offset, length, st.st_size)

    @property
    def finished(self) -> bool:
        """The requested range is complete."""
        return self.remaining == 0

    def read(self, size: int) -> tuple[int, bytes]:
        """The next piece: its offset and up to ``size`` bytes (empty at the end).

        Reads until the OS reports the end rather than up to the size seen at
        open, so files whose size the kernel does not report (/proc) read whole.

        Raises:
            AgentError: the read failed (from the OSError).
        """
        at = self.position
        want = size if self.remaining is None else min(size, self.remaining)
        if want <= 0:
            return at, b""
        with _os_errors(self.shown):
            data = os.pread(self.fd, want, at)
        self.hasher.update(data)
        self.position += len(data)
        self.total += len(data)
        if self.remaining is not None:
            self.remaining -= len(data)
        return at, data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _check_readable(mode: int, shown: str) -> None:
    if stat.S_ISDIR(mode):
        raise _errno_error(errno.EISDIR, shown)
    if not stat.S_ISREG(mode):
        raise errors.FailedPrecondition(f"{shown}: not a regular file", reason="not_a_regular_file")


@handler("file_read", "file_read_chunk")
async def file_read(ctx: RequestContext, req: pb.FileReadRequest) -> pb.FileReadChunk:
    """Stream ``req``'s range as chunks; return the last one (eof, SHA-256).

    One piece is read ahead, so the last data chunk is the one marked eof (an
    empty file or range gives a single empty eof chunk). The SHA-256 covers
    every byte sent: the whole file when no range was asked.

    Raises:
        InvalidArgument: invalid path or offset.
        PermissionDenied: denied by policy (``path_denied``) or by the OS.
        NotFound: no such file.
        FailedPrecondition: ``is_a_directory``, ``not_a_directory``, ``not_a_regular_file``.
    """
    chunk = _read_chunk_size(ctx.config, req.chunk_size)
    reader = await trio.to_thread.run_sync(_Reader.open, ctx.config, req.path, req.offset, req.length)
    try:
        offset, data = await trio.to_thread.run_sync(reader.read, chunk)
        while data and not reader.finished:
            next_offset, next_data = await trio.to_thread.run_sync(reader.read, chunk)
            if not next_data:
                break
            await ctx.send(file_read_chunk=pb.FileReadChunk(offset=offset, data=data, file_size=reader.file_size))
            offset, data = next_offset, next_data
        return pb.FileReadChunk(
            offset=offset,
            data=data,
            eof=True,
            sha256=reader.hasher.digest(),
            file_size=reader.file_size,
            total_bytes=reader.total,
        )
    finally:
        reader.close()


# --------------------------------------------------------------------- write


def _lookup_uid(owner: str) -> int:
    """Raises: InvalidArgument (reason ``unknown_user``)."""
    if not owner:
        return -1
    if owner.isdigit():
        if int(owner) > _MAX_ID:
            raise errors.InvalidArgument(f"uid {owner} is out of range", reason="unknown_user")
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise errors.InvalidArgument(f"unknown user {owner!r}", reason="unknown_user") from None


def _lookup_gid(group: str) -> int:
    """Raises: InvalidArgument (reason ``unknown_group``)."""
    if not group:
        return -1
    if group.isdigit():
        if int(group) > _MAX_ID:
            raise errors.InvalidArgument(f"gid {group} is out of range", reason="unknown_group")
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise errors.InvalidArgument(f"unknown group {group!r}", reason="unknown_group") from None


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _make_parents(directory: str, policy: _Policy, shown: str) -> None:
    """Create the missing directories up to ``directory`` (resolved).

    All are checked against the write policy before any is created.

    Raises:
        PermissionDenied: a directory to create is outside the write policy.
        AgentError: mkdir failed (from the OSError), e.g. ``not_a_directory``.
    """
    missing: list[str] = []
    current = directory
    while current != "/" and not os.path.lexists(current):
        missing.append(current)
        current = os.path.dirname(current)
    missing.reverse()
    for d in missing:
        policy.check(d, shown)
    for d in missing:
        with _os_errors(shown):
            try:
                os.mkdir(d, NEW_DIRECTORY_MODE)
            except FileExistsError:
                if not os.path.isdir(d):  # made by someone else meanwhile: fine if a directory
                    raise


@final
class _StagedFile:
    """A write transfer's temp file and its directory (methods block: use threads).

    Owns two fds: ``dirfd`` (the target's directory, where the temp file lives
    and the rename happens) and ``fd`` (the temp file). :meth:`discard` closes
    both and removes the temp file unless committed; it is idempotent.
    """

    def __init__(self, dirfd: int, name: str, shown: str) -> None:
        self.dirfd = dirfd
        self.name = name
        self.shown = shown
        self.fd = -1
        self.tmp_name = ""
        self.mode = DEFAULT_FILE_MODE
        self.create_new = False
        self.hasher = hashlib.sha256()
        #: Bytes in the temp file (the old content of an APPEND included).
        self.size = 0
        #: Bytes received in this transfer.
        self.bytes_written = 0
        self.committed = False

    def create_temp(self) -> None:
        """Create the temp file beside the target (O_EXCL, owner-only).

        Raises:
            OSError: the directory refuses it.
        """
        stem = self.name[:TEMP_STEM_MAX_CHARS]
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
        for _ in range(TEMP_CREATE_ATTEMPTS):
            tmp = f".{stem}.lqx-{secrets.token_hex(TEMP_RANDOM_BYTES)}.tmp"
            try:
                self.fd = os.open(tmp, flags, TEMP_FILE_MODE, dir_fd=self.dirfd)
            except FileExistsError:
                continue
            self.tmp_name = tmp
            return
        raise OSError(errno.EEXIST, "cannot create a unique temp file")  # pragma: no cover - 48 random bits

    def _append(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.hasher.update(data)
        self.size += len(data)

    def copy_existing(self) -> None:
        """APPEND: start the temp file with the target's current content.

        Raises:
            OSError: the target cannot be read.
        """
        src = os.open(self.name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self.dirfd)
        try:
            while block := os.read(src, COPY_BLOCK_BYTES):
                self._append(block)
        finally:
            os.close(src)

    def write(self, data: bytes) -> None:
        """Append a chunk of the transfer.

        Raises:
            AgentError: the write failed (e.g. ``no_space``).
        """
        with _os_errors(self.shown):
            self._append(data)
        self.bytes_written += len(data)

    def commit(self, data: bytes, expected_sha256: bytes) -> tuple[bytes, int]:
        """Write the last chunk and replace the target atomically.

        Returns:
            The SHA-256 and the size of the resulting file.

        Raises:
            FailedPrecondition: ``expected_sha256`` does not match (reason
                ``checksum_mismatch``); nothing was replaced.
            AlreadyExists: CREATE_NEW and the target appeared meanwhile.
            AgentError: an OS error (from the OSError).
        """
        self.write(data)
        digest = self.hasher.digest()
        if expected_sha256 and expected_sha256 != digest:
            raise errors.FailedPrecondition(
                f"{self.shown}: SHA-256 of the written content is {digest.hex()}, expected {expected_sha256.hex()}",
                reason="checksum_mismatch",
            )
        with _os_errors(self.shown):
            os.fchmod(self.fd, self.mode)  # after any chown, which may clear setuid bits
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            if self.create_new:
                self._link_new()
            else:
                os.rename(self.tmp_name, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
                self.committed = True
        try:
            os.fsync(self.dirfd)  # make the rename durable
        except OSError as exc:  # the file is in place: report success, but say so
            log.warning("%s: fsync of the directory failed: %s", self.shown, exc.strerror)
        return digest, self.size

    def _link_new(self) -> None:
        """CREATE_NEW commit: link() fails on an existing target, rename would replace it.

        Raises:
            AlreadyExists: the target exists.
            OSError: another failure.
        """
        try:
            os.link(self.tmp_name, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd, follow_symlinks=False)
        except FileExistsError as exc:
            raise errors.AlreadyExists(f"{self.shown}: file exists", reason="file_exists") from exc
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # No hard links on this filesystem: check, then rename (a small race).
            if _lstat_at(self.dirfd, self.name) is not None:
                raise errors.AlreadyExists(f"{self.shown}: file exists", reason="file_exists") from exc
            os.rename(self.tmp_name, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
            self.committed = True
            return
        self.committed = True
        try:
            os.unlink(self.tmp_name, dir_fd=self.dirfd)
        except OSError as exc:  # pragma: no cover - we just linked it in this directory
            log.warning("%s: cannot remove temp file %s: %s", self.shown, self.tmp_name, exc.strerror)

    def discard(self) -> None:
        """Close the fds; remove the temp file unless committed. Never raises."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp_name and not self.committed:
            try:
                os.unlink(self.tmp_name, dir_fd=self.dirfd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: cannot remove temp file %s: %s", self.shown, self.tmp_name, exc.strerror)
            self.tmp_name = ""
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1


def _stage(config: AgentConfig, req: pb.FileWriteRequest) -> _StagedFile:
    """Open a write transfer: check everything, create its temp file.

    Raises:
        InvalidArgument: invalid path, unknown owner or group.
        PermissionDenied: denied by policy (``path_denied``) or by the OS
            (e.g. chown when not root).
        NotFound: the directory does not exist (and create_parents is off).
        AlreadyExists: CREATE_NEW and the file exists (``file_exists``).
        FailedPrecondition: the target is a directory (``is_a_directory``),
            a path through a file (``not_a_directory``), not a regular file.
    """
    policy = _Policy(config, Access.WRITE)
    rp = resolve_path(req.path, config, Access.WRITE, policy=policy)
    shown = rp.requested
    directory, name = rp.real.rsplit("/", 1)
    directory = directory or "/"
    if not name:
        raise _errno_error(errno.EISDIR, shown)
    uid, gid = _lookup_uid(req.owner), _lookup_gid(req.group)
    if req.create_parents:
        _make_parents(directory, policy, shown)
    with _os_errors(shown):
        dirfd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    staged = _StagedFile(dirfd, name, shown)
    try:
        with _os_errors(shown):
            _verify_opened(dirfd, directory, policy, shown, name=name)
            existing = _lstat_at(dirfd, name)
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    raise _errno_error(errno.EISDIR, shown)
                if req.mode == pb.WRITE_MODE_CREATE_NEW:
                    raise errors.AlreadyExists(f"{shown}: file exists", reason="file_exists")
                if not stat.S_ISREG(existing.st_mode):
                    raise errors.FailedPrecondition(f"{shown}: not a regular file", reason="not_a_regular_file")
            staged.create_temp()
            # Ownership now, so that a chown the OS refuses fails the first request.
            if existing is not None and os.geteuid() == 0:
                uid = existing.st_uid if uid == -1 else uid
                gid = existing.st_gid if gid == -1 else gid
            if uid != -1 or gid != -1:
                os.fchown(staged.fd, uid, gid)
            if req.HasField("file_mode"):
                staged.mode = req.file_mode
            elif existing is not None:
                staged.mode = stat.S_IMODE(existing.st_mode)
            staged.create_new = req.mode == pb.WRITE_MODE_CREATE_NEW
            if req.mode == pb.WRITE_MODE_APPEND and existing is not None:
                staged.copy_existing()
    except BaseException:
        staged.discard()
        raise
    return staged


@final
class _WriteTransfer:
    """A staged write between requests: one per write_id, in ``session.resources``.

    Requests take :attr:`lock` (never waiting: a second request while one is
    being applied is refused), the watchdog (:func:`_watch`) waits for it
    before discarding. :attr:`idle_scope` is the watchdog's scope: its deadline
    is the idle timeout, pushed back after each request; cancelling it ends the
    transfer (committed, failed or cancelled).
    """

    def __init__(self, write_id: str, staged: _StagedFile, expected_sha256: bytes, idle_timeout_s: float) -> None:
        self.write_id = write_id
        self.staged = staged
        self.expected_sha256 = expected_sha256
        self.idle_timeout_s = idle_timeout_s
        self.lock = trio.Lock()
        self.idle_scope = trio.CancelScope(deadline=trio.current_time() + idle_timeout_s)
        #: Set once the transfer is over: requests find it gone.
        self.closing = False
        #: Why it ended, for the log (unset: idle or session ended).
        self.end_reason = ""

    def usable(self) -> bool:
        return not self.closing and not self.idle_scope.cancel_called and trio.current_time() < self.idle_scope.deadline

    def end(self, reason: str) -> None:
        """Finish the transfer; the watchdog then discards whatever is uncommitted."""
        if not self.closing:
            self.closing = True
            self.end_reason = reason
        self.idle_scope.cancel()

    def cancel(self) -> None:
        """A CancelRequest named this write_id (SessionResource)."""
        self.end("cancelled by request")


async def _watch(session: Session, transfer: _WriteTransfer) -> None:
    """Own ``transfer`` until it ends, then clean up; runs in the session's nursery."""
    try:
        with transfer.idle_scope:
            await trio.sleep_forever()
    finally:
        idle = not transfer.closing
        transfer.closing = True
        # Shielded, unbounded: the lock is held only around one worker-thread
        # call, which cannot be cancelled and always finishes.
        with trio.CancelScope(shield=True):
            async with transfer.lock:
                await trio.to_thread.run_sync(transfer.staged.discard)
        if session.resources.get(transfer.write_id) is transfer:
            del session.resources[transfer.write_id]
        if not transfer.staged.committed:
            if idle and transfer.idle_scope.cancelled_caught:
                reason = f"idle for {transfer.idle_timeout_s:g} s"
            else:
                reason = transfer.end_reason or "connection closed"
            log.info("write %s to %s discarded: %s", transfer.write_id, transfer.staged.shown, reason)


def _check_write_request(req: pb.FileWriteRequest) -> None:
    """Raises: InvalidArgument for options out of range."""
    if req.mode not in (pb.WRITE_MODE_TRUNCATE, pb.WRITE_MODE_APPEND, pb.WRITE_MODE_CREATE_NEW):
        raise errors.InvalidArgument(f"unknown write mode {req.mode}", reason="invalid")
    if req.HasField("file_mode") and req.file_mode > 0o7777:
        raise errors.InvalidArgument(f"file_mode {req.file_mode:o} is not a permission mode", reason="invalid")
    if req.expected_sha256 and len(req.expected_sha256) != hashlib.sha256().digest_size:
        raise errors.InvalidArgument("expected_sha256 must be 32 bytes", reason="invalid")


def _find_transfer(session: Session, req: pb.FileWriteRequest) -> _WriteTransfer:
    """Raises: NotFound (unknown, finished or expired write_id), InvalidArgument (path mismatch)."""
    transfer = session.resources.get(req.write_id)
    if not isinstance(transfer, _WriteTransfer) or not transfer.usable():
        raise errors.NotFound(
            f"no write transfer {req.write_id!r} on this connection (unknown, finished or expired)",
            reason="unknown_write_id",
        )
    if req.path and _canonical(req.path) != transfer.staged.shown:
        raise errors.InvalidArgument(f"write {req.write_id} is not for {req.path!r}", reason="path_mismatch")
    return transfer


async def _apply(transfer: _WriteTransfer, req: pb.FileWriteRequest) -> pb.FileWriteResponse:
    """Write ``req``'s data into the transfer, and commit it if ``req.last``.

    Any failure discards the transfer before the error is answered (the
    target is left as it was, the temp file is removed).

    Raises:
        FailedPrecondition: another request of this transfer is being applied
            (``transfer_busy``: send the next chunk after the previous answer),
            ``offset_mismatch`` (the transfer is kept), or ``checksum_mismatch``
            at commit.
        NotFound: the transfer ended meanwhile.
        AgentError: from the write or the commit.
    """
    try:
        transfer.lock.acquire_nowait()
    except trio.WouldBlock:
        raise errors.FailedPrecondition(
            f"write {transfer.write_id} is busy with another request", reason="transfer_busy"
        ) from None
    staged = transfer.staged
    try:
        if not transfer.usable():
            raise errors.NotFound(f"write transfer {transfer.write_id} has ended", reason="unknown_write_id")
        if req.HasField("offset") and req.offset != staged.bytes_written:
            # A resent or lost chunk: refuse it, keep the transfer.
            raise errors.FailedPrecondition(
                f"write {transfer.write_id} is at offset {staged.bytes_written}, not {req.offset}",
                reason="offset_mismatch",
            )
        transfer.idle_scope.deadline = math.inf  # a long chunk or commit is not idleness
        try:
            if req.last:
                digest, size = await trio.to_thread.run_sync(
                    staged.commit, req.data, req.expected_sha256 or transfer.expected_sha256
                )
            elif req.data:
                await trio.to_thread.run_sync(staged.write, req.data)
        except BaseException as exc:
            if not staged.committed:
                # Discard before answering: an error means the temp file is gone.
                transfer.end(f"failed: {exc!r}")
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(staged.discard)
            raise
    finally:
        if not transfer.closing:
            transfer.idle_scope.deadline = trio.current_time() + transfer.idle_timeout_s
        transfer.lock.release()
    if not req.last:
        return pb.FileWriteResponse(write_id=transfer.write_id, bytes_written=staged.bytes_written)
    transfer.end("committed")
    log.info("wrote %s: %d bytes", staged.shown, size)
    return pb.FileWriteResponse(
        write_id=transfer.write_id, bytes_written=staged.bytes_written, committed=True, sha256=digest, size=size
    )


@handler("file_write", "file_write_response")
async def file_write(ctx: RequestContext, req: pb.FileWriteRequest) -> pb.FileWriteResponse:
    """Open a write transfer (no write_id), continue it, or commit it (``last``).

    A continuing request needs only write_id, data and last (and may carry
    expected_sha256); the options of the first request are not read again,
    but a path, if given, must be the transfer's. Send a transfer's requests
    one at a time (each after the previous answer): requests run concurrently,
    so pipelined chunks could land out of order; one arriving while another
    of the same transfer is being applied is refused (``transfer_busy``).

    A path through a symlink writes the file it points to (the policy applies
    to that file); the link stays.

    Raises:
        InvalidArgument: invalid path or options.
        PermissionDenied: ``path_denied``, or refused by the OS.
        NotFound: missing directory; unknown write_id (``unknown_write_id``).
        AlreadyExists: CREATE_NEW on an existing file (``file_exists``).
        FailedPrecondition: ``is_a_directory``, ``not_a_directory``,
            ``checksum_mismatch``, ``transfer_busy``.
        ResourceExhausted: too many transfers open on this connection, or disk full.
    """
    _check_write_request(req)
    session = ctx.session
    if req.write_id:
        return await _apply(_find_transfer(session, req), req)
    if sum(isinstance(r, _WriteTransfer) for r in session.resources.values()) >= MAX_WRITE_TRANSFERS:
        raise errors.ResourceExhausted(
            f"{MAX_WRITE_TRANSFERS} write transfers already open on this connection", reason="too_many_transfers"
        )
    staged = await trio.to_thread.run_sync(_stage, ctx.config, req)
    # From here to start_soon there is no checkpoint: once staged, the temp
    # file always has a watchdog to remove it.
    write_id = secrets.token_hex(12)
    transfer = _WriteTransfer(write_id, staged, req.expected_sha256, ctx.config.file_write_idle_timeout_s)
    try:
        session.start_soon(_watch, session, transfer, name=f"file_write:{write_id}")
    except RuntimeError:  # pragma: no cover - a running handler implies a running session
        staged.discard()
        raise errors.Unavailable("the connection is closing") from None
    session.resources[write_id] = transfer
    log.debug("write %s to %s opened (%s)", write_id, staged.shown, staged.tmp_name)
    return await _apply(transfer, req)


# --------------------------------------------------------- stat and listing


@final
class _Names:
    """uid/gid -> name, looked up once per request (NSS lookups may be slow)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


def _file_type(mode: int) -> pb.FileType.ValueType:
    if stat.S_ISREG(mode):
        return pb.FILE_TYPE_REGULAR
    if stat.S_ISDIR(mode):
        return pb.FILE_TYPE_DIRECTORY
    if stat.S_ISLNK(mode):
        return pb.FILE_TYPE_SYMLINK
    return pb.FILE_TYPE_OTHER


def _to_file_stat(path: str, name: str, st: os.stat_result, link_target: str, names: _Names) -> pb.FileStat:
    out = pb.FileStat(
        path=path,
        name=name,
        type=_file_type(st.st_mode),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        owner=names.user(st.st_uid),
        group=names.group(st.st_gid),
        symlink_target=link_target,
    )
    for ts, ns in ((out.modified, st.st_mtime_ns), (out.accessed, st.st_atime_ns), (out.changed, st.st_ctime_ns)):
        ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)
    return out


def _stat_sync(config: AgentConfig, raw: str) -> pb.FileStat:
    rp = resolve_path(raw, config, Access.READ, follow=False)
    with _os_errors(rp.requested):
        st = os.lstat(rp.real)
        target = _display(os.readlink(rp.real)) if stat.S_ISLNK(st.st_mode) else ""
    name = rp.requested.rsplit("/", 1)[1] or "/"
    return _to_file_stat(rp.requested, name, st, target, _Names())


@handler("file_stat", "file_stat_response")
async def file_stat(ctx: RequestContext, req: pb.FileStatRequest) -> pb.FileStat:
    """Metadata of a path, lstat-style: a symlink is reported, not followed.

    The read policy applies to the path with its parent resolved.

    Raises:
        InvalidArgument: invalid path.
        PermissionDenied: ``path_denied``, or refused by the OS.
        NotFound: no such file.
        FailedPrecondition: ``not_a_directory`` (a path through a file).
    """
    return await trio.to_thread.run_sync(_stat_sync, ctx.config, req.path)


def _list_sync(config: AgentConfig, raw: str, page_size: int, page_token: str) -> pb.ListDirectoryResponse:
    policy = _Policy(config, Access.READ)
    rp = resolve_path(raw, config, Access.READ, policy=policy)
    shown = rp.requested
    with _os_errors(shown):
        fd = os.open(rp.real, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    try:
        with _os_errors(shown):
            real = _verify_opened(fd, rp.real, policy, shown)
            raw_names = os.listdir(fd)
        # Entries the read policy denies are left out, as stat refuses them.
        by_display = {_display(n): n for n in raw_names if policy.allows(_join(real, n))}
        names = sorted(by_display)
        start = bisect_right(names, page_token) if page_token else 0
        # Names after the token, not an index: a page boundary stays put when
        # entries come and go between pages, so no entry is seen twice.
        response = pb.ListDirectoryResponse()
        budget = config.max_frame_bytes - FRAME_HEADROOM_BYTES
        lookup = _Names()
        last = ""
        stop = min(start + page_size, len(names))
        i = start
        while i < stop:
            display = names[i]
            try:
                st = os.stat(by_display[display], dir_fd=fd, follow_symlinks=False)
                target = ""
                if stat.S_ISLNK(st.st_mode):
                    target = _display(os.readlink(by_display[display], dir_fd=fd))
            except FileNotFoundError:
                last = display  # gone since listdir: skip it, the page still ends after it
                i += 1
                continue
            except OSError as exc:
                raise errors.from_os_error(exc, path=_join(shown, display)) from exc
            entry = _to_file_stat(_join(shown, display), display, st, target, lookup)
            budget -= entry.ByteSize() + _ENTRY_FRAMING_BYTES
            if budget < 0 and response.entries:
                break  # the frame is full: this entry starts the next page
            response.entries.append(entry)
            last = display
            i += 1
        if i < len(names):
            response.next_page_token = last
        return response
    finally:
        os.close(fd)


@handler("list_directory", "list_directory_response")
async def list_directory(ctx: RequestContext, req: pb.ListDirectoryRequest) -> pb.ListDirectoryResponse:
    """One page of a directory's entries (lstat each), sorted by name.

    ``page_token`` is the name of the previous page's last entry: the page
    holds the entries named after it. A page also ends early when its
    entries would overflow a frame.

    Raises:
        InvalidArgument: invalid path.
        PermissionDenied: ``path_denied``, or refused by the OS.
        NotFound: no such directory.
        FailedPrecondition: ``not_a_directory``.
    """
    page_size = min(req.page_size or LIST_PAGE_DEFAULT, LIST_PAGE_MAX)
    return await trio.to_thread.run_sync(_list_sync, ctx.config, req.path, page_size, req.page_token)
