"""file_write: atomic chunked write transfers (policy: :mod:`._paths`).

Writes are transfers (see ``FileWriteRequest`` in agent.proto). The first
request stages a temp file ``.<name>.lqx-<random>.tmp`` (``O_EXCL``, 0600) in
the target's directory, which stays open as a directory fd for the whole
transfer: the final rename happens *in that directory*, whatever happens to the
path meanwhile. The commit (``last=true``) checks ``expected_sha256``, sets the
mode, fsyncs, renames over the target (``CREATE_NEW``: hard-links, so an
existing file is never replaced) and fsyncs the directory.

Each transfer is a :class:`~.._session.SessionResource` of the session that
opened it, watched by one task in the session's nursery. The task discards the
transfer (temp file removed, target untouched) when it is idle longer than
``file_write_idle_timeout_s``, when a chunk or the commit fails, when a
``CancelRequest`` names its ``write_id``, and when the session ends (link
closed, agent stopping): its cleanup is a ``finally`` that runs on cancellation.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import logging
import math
import os
import pwd
import secrets
import stat
from typing import TYPE_CHECKING, Final, final

import trio

from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as pb

from .._config import AgentConfig
from .._dispatch import RequestContext, handler
from ._paths import (
    O_CLOEXEC,
    O_DIRECTORY,
    O_NOFOLLOW,
    Access,
    Policy,
    canonical,
    errno_error,
    os_errors,
    resolve_path,
    verify_opened,
)

if TYPE_CHECKING:
    from .._session import Session

__all__ = ["file_write"]

log = logging.getLogger(__name__)


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
#: Largest uid/gid: (uid_t)-1 itself means "unchanged" to chown.
_MAX_ID: Final = 2**32 - 2
#: Errors of link() meaning "no hard links on this filesystem" (vfat: EPERM).
_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})


def _lookup_id(value: str, *, group: bool) -> int:
    """The uid of an owner, or with ``group`` the gid of a group (a name or a number);
    -1 (unchanged) when empty.

    Raises:
        NotFound: no such user or group in the guest (reason ``unknown_user`` as execute's
            run_as says it, or ``unknown_group``).
        InvalidArgument: a uid or gid out of range (reason ``id_out_of_range``).
    """
    if not value:
        return -1
    kind, word = ("gid", "group") if group else ("uid", "user")
    if value.isdigit():
        if int(value) > _MAX_ID:
            raise errors.InvalidArgument(f"{kind} {value} is out of range", reason="id_out_of_range")
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid if group else pwd.getpwnam(value).pw_uid
    except KeyError:
        raise errors.NotFound(f"no such {word} {value!r} in the guest", reason=f"unknown_{word}") from None


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _make_parents(directory: str, policy: Policy, shown: str) -> None:
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
        with os_errors(shown):
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
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC
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
        src = os.open(self.name, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=self.dirfd)
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
        with os_errors(self.shown):
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
        with os_errors(self.shown):
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
        InvalidArgument: invalid path, a uid or gid out of range.
        PermissionDenied: denied by policy (``path_denied``) or by the OS
            (e.g. chown when not root).
        NotFound: the directory does not exist (and create_parents is off), or
            the owner or group (``unknown_user``, ``unknown_group``).
        AlreadyExists: CREATE_NEW and the file exists (``file_exists``).
        FailedPrecondition: the target is a directory (``is_a_directory``),
            a path through a file (``not_a_directory``), not a regular file.
    """
    policy = Policy(config, Access.WRITE)
    rp = resolve_path(req.path, config, Access.WRITE, policy=policy)
    shown = rp.requested
    directory, name = rp.real.rsplit("/", 1)
    directory = directory or "/"
    if not name:
        raise errno_error(errno.EISDIR, shown)
    uid, gid = _lookup_id(req.owner, group=False), _lookup_id(req.group, group=True)
    if req.create_parents:
        _make_parents(directory, policy, shown)
    with os_errors(shown):
        dirfd = os.open(directory, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    staged = _StagedFile(dirfd, name, shown)
    try:
        with os_errors(shown):
            verify_opened(dirfd, directory, policy, shown, name=name)
            existing = _lstat_at(dirfd, name)
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    raise errno_error(errno.EISDIR, shown)
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
    if req.path and canonical(req.path) != transfer.staged.shown:
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
