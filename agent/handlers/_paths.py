"""The agent's file access policy, shared by the file requests (read, write, stat, list).

A path must be absolute, free of NUL and of ``..`` components; symlinks are resolved and the
configured allow/deny prefixes (``file_read_*`` or ``file_write_*``) are
checked on the *resolved* path, by whole components (``/etc`` does not cover
``/etcetera``), deny winning. The file is then opened by its resolved path with
``O_NOFOLLOW``, and where ``/proc`` can tell, the policy is checked once more on
what was actually opened, so a path swapped after the check cannot escape.

Blocking file I/O (and SHA-256, which releases the GIL) runs in worker threads;
each request does its syscalls from one thread call, so a cancelled request
never leaves a half-done operation behind.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, final

from limiquantix.protocol import errors

from .._config import AgentConfig

__all__ = [
    "O_CLOEXEC",
    "O_DIRECTORY",
    "O_NOCTTY",
    "O_NOFOLLOW",
    "Access",
    "Policy",
    "ResolvedPath",
    "canonical",
    "display_name",
    "errno_error",
    "fd_path",
    "join",
    "os_errors",
    "resolve_path",
    "under",
    "verify_opened",
]

O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
O_NOCTTY: Final = getattr(os, "O_NOCTTY", 0)


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


def canonical(raw: str) -> str:
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


def join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or inside it, by whole components."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@final
class Policy:
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
        if any(under(real, p) for p in self.deny):
            return False
        return any(under(real, p) for p in self.allow)

    def check(self, real: str, shown: str) -> None:
        """Raises: PermissionDenied (reason ``path_denied``)."""
        if not self.allows(real):
            raise errors.PermissionDenied(
                f"{shown}: {self.access.value} not allowed by the agent's configuration", reason="path_denied"
            )


def resolve_path(
    raw: str, config: AgentConfig, access: Access, *, follow: bool = True, policy: Policy | None = None
) -> ResolvedPath:
    """Validate ``raw``, resolve it and check it against the configured prefixes.

    Args:
        raw: the path from the request.
        access: whose prefixes apply (read or write).
        follow: resolve the last component too (everything but stat). Without
            it, only the parent is resolved and the name appended (lstat
            semantics). A path that does not exist yet resolves as far as it
            exists, the rest appended.
        policy: an already built :class:`Policy` for ``access`` (saves work).

    Blocking (resolving stats the path's components): call it from a thread.

    Raises:
        InvalidArgument: an invalid path (reason ``invalid_path``).
        PermissionDenied: the resolved path is outside the allowed prefixes or
            inside a denied one (reason ``path_denied``).
    """
    requested = canonical(raw)
    if follow or requested == "/":
        real = os.path.realpath(requested)
    else:
        parent, name = requested.rsplit("/", 1)
        real = join(os.path.realpath(parent or "/"), name)
    (policy or Policy(config, access)).check(real, requested)
    return ResolvedPath(requested, real)


@contextmanager
def os_errors(shown: str) -> Iterator[None]:
    """Translate OSError into the error hierarchy (chained)."""
    try:
        yield
    except OSError as exc:
        raise errors.from_os_error(exc, path=shown) from exc


def errno_error(code: int, shown: str) -> errors.AgentError:
    """The error an OSError with ``code`` would have become."""
    return errors.from_os_error(OSError(code, os.strerror(code)), path=shown)


def fd_path(fd: int) -> str | None:
    """What an fd really refers to, where /proc can tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def verify_opened(fd: int, expected: str, policy: Policy, shown: str, *, name: str = "") -> str:
    """Check the policy on what ``fd`` is, should it differ from the checked path.

    Narrows the window between resolving and opening: a component swapped for
    a symlink in between makes the fd point elsewhere, and that is checked.
    ``name`` is appended for a directory fd that stands for a file in it.

    Raises:
        PermissionDenied: the opened object is outside the policy.
    """
    actual = fd_path(fd)
    if actual is None or actual == expected:
        return expected
    policy.check(join(actual, name) if name else actual, shown)
    return actual


def display_name(name: str) -> str:
    """A file name as a proto string: names that are not UTF-8 are escaped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name
