"""file_stat: one path's metadata, and the FileStat both it and list_directory answer with."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from typing import final

import trio

from limiquantix.protocol import set_timestamp_ns
from limiquantix.protocol._gen import agent_pb2 as pb

from .._config import AgentConfig
from .._dispatch import RequestContext, handler
from ._paths import Access, display_name, os_errors, resolve_path

__all__ = ["Names", "file_stat", "to_file_stat"]


@final
class Names:
    """uid/gid -> name, looked up once per request (NSS lookups may be slow)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        """``uid``'s name; "" when it has none."""
        return _cached(self._users, uid, lambda: pwd.getpwuid(uid).pw_name)

    def group(self, gid: int) -> str:
        """``gid``'s name; "" when it has none."""
        return _cached(self._groups, gid, lambda: grp.getgrgid(gid).gr_name)


def _cached(names: dict[int, str], key: int, lookup: Callable[[], str]) -> str:
    """``names[key]``, looked up first if need be ("" for an id NSS does not know)."""
    if key not in names:
        try:
            names[key] = lookup()
        except KeyError:
            names[key] = ""
    return names[key]


def file_type(mode: int) -> pb.FileType:
    if stat.S_ISREG(mode):
        return pb.FILE_TYPE_REGULAR
    if stat.S_ISDIR(mode):
        return pb.FILE_TYPE_DIRECTORY
    if stat.S_ISLNK(mode):
        return pb.FILE_TYPE_SYMLINK
    return pb.FILE_TYPE_OTHER


def to_file_stat(path: str, name: str, st: os.stat_result, link_target: str, names: Names) -> pb.FileStat:
    out = pb.FileStat(
        path=path,
        name=name,
        type=file_type(st.st_mode),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        owner=names.user(st.st_uid),
        group=names.group(st.st_gid),
        symlink_target=link_target,
    )
    for ts, ns in ((out.modified, st.st_mtime_ns), (out.accessed, st.st_atime_ns), (out.changed, st.st_ctime_ns)):
        set_timestamp_ns(ts, ns)
    return out


def _stat_sync(config: AgentConfig, raw: str) -> pb.FileStat:
    rp = resolve_path(raw, config, Access.READ, follow=False)
    with os_errors(rp.requested):
        st = os.lstat(rp.real)
        target = display_name(os.readlink(rp.real)) if stat.S_ISLNK(st.st_mode) else ""
    name = rp.requested.rsplit("/", 1)[1] or "/"
    return to_file_stat(rp.requested, name, st, target, Names())


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
