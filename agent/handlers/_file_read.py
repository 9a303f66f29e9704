"""file_read: a file in chunks, each answered as the host asks for it (policy: :mod:`._paths`)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Final, final

import trio

from limiquantix.protocol import FRAME_HEADROOM_BYTES, errors
from limiquantix.protocol._gen import agent_pb2 as pb

from .._config import AgentConfig
from .._dispatch import RequestContext, handler
from ._paths import O_CLOEXEC, O_NOCTTY, O_NOFOLLOW, Access, Policy, errno_error, os_errors, resolve_path, verify_opened

__all__ = ["file_read"]

#: Largest offset os.pread accepts (off_t is signed 64-bit).
_MAX_OFFSET: Final = 2**63 - 1


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
        policy = Policy(config, Access.READ)
        rp = resolve_path(raw, config, Access.READ, policy=policy)
        shown = rp.requested
        with os_errors(shown):
            # Look before opening: opening a FIFO or a device has side effects.
            _check_readable(os.stat(rp.real).st_mode, shown)
            # O_NONBLOCK: should a FIFO have replaced the file, open must not hang.
            flags = os.O_RDONLY | os.O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY
            fd = os.open(rp.real, flags)
        try:
            with os_errors(shown):
                st = os.fstat(fd)
                _check_readable(st.st_mode, shown)
                verify_opened(fd, rp.real, policy, shown)
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
        with os_errors(self.shown):
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
        raise errno_error(errno.EISDIR, shown)
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
