"""list_directory: a directory's entries, sorted, in pages that each fit one frame."""

from __future__ import annotations

import os
import stat
from bisect import bisect_right
from typing import Final

import trio

from limiquantix.protocol import FRAME_HEADROOM_BYTES, errors
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.limits import MAX_LIST_PAGE_ENTRIES

from .._config import AgentConfig
from .._dispatch import RequestContext, handler
from ._file_stat import Names, to_file_stat
from ._paths import (
    O_CLOEXEC,
    O_DIRECTORY,
    O_NOFOLLOW,
    Access,
    Policy,
    display_name,
    join,
    os_errors,
    resolve_path,
    verify_opened,
)

__all__ = ["list_directory"]

#: Page size of a listing that names none, and the largest allowed (agent.proto; hostd
#: refuses a page of more fields than this many entries hold).
LIST_PAGE_DEFAULT: Final = 1000
LIST_PAGE_MAX: Final = MAX_LIST_PAGE_ENTRIES
#: Per-entry framing of a repeated message field (tag + length varint), used to
#: keep a listing page inside one frame whatever the length of the names.
_ENTRY_FRAMING_BYTES: Final = 6
#: The page token a page may end with: one entry's name, NAME_MAX (255) bytes,
#: each escaped to 4 (\xNN) when the name is not UTF-8, and its field's framing.
_PAGE_TOKEN_BYTES: Final = 4 * 255 + _ENTRY_FRAMING_BYTES


def _list_sync(config: AgentConfig, raw: str, page_size: int, page_token: str) -> pb.ListDirectoryResponse:
    policy = Policy(config, Access.READ)
    rp = resolve_path(raw, config, Access.READ, policy=policy)
    shown = rp.requested
    with os_errors(shown):
        fd = os.open(rp.real, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    try:
        with os_errors(shown):
            real = verify_opened(fd, rp.real, policy, shown)
            raw_names = os.listdir(fd)
        # Entries the read policy denies are left out, as stat refuses them.
        by_display = {display_name(n): n for n in raw_names if policy.allows(join(real, n))}
        names = sorted(by_display)
        start = bisect_right(names, page_token) if page_token else 0
        # Names after the token, not an index: a page boundary stays put when
        # entries come and go between pages, so no entry is seen twice.
        response = pb.ListDirectoryResponse()
        budget = config.max_frame_bytes - FRAME_HEADROOM_BYTES - _PAGE_TOKEN_BYTES
        lookup = Names()
        last = ""
        stop = min(start + page_size, len(names))
        i = start
        while i < stop:
            display = names[i]
            try:
                st = os.stat(by_display[display], dir_fd=fd, follow_symlinks=False)
                target = ""
                if stat.S_ISLNK(st.st_mode):
                    target = display_name(os.readlink(by_display[display], dir_fd=fd))
            except FileNotFoundError:
                last = display  # gone since listdir: skip it, the page still ends after it
                i += 1
                continue
            except OSError as exc:
                raise errors.from_os_error(exc, path=join(shown, display)) from exc
            entry = to_file_stat(join(shown, display), display, st, target, lookup)
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
