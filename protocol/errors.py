"""The error hierarchy of the whole stack, and its one mapping to Connect codes.

::

    AgentError
    ├── InvalidArgument        invalid_argument     400
    ├── NotFound               not_found            404
    ├── AlreadyExists          already_exists       409
    ├── PermissionDenied       permission_denied    403
    ├── Unauthenticated        unauthenticated      401
    ├── ResourceExhausted      resource_exhausted   429
    ├── FailedPrecondition     failed_precondition  400
    ├── DeadlineExceeded       deadline_exceeded    504
    ├── Unavailable            unavailable          503
    ├── Unimplemented          unimplemented        501
    ├── Cancelled              canceled             499
    └── Internal               internal             500

Handlers raise these; the agent's dispatcher turns them into ``Error`` frames,
hostd turns ``Error`` frames back into them (:func:`from_proto`) and the HTTP
layers turn them into Connect error bodies (:attr:`AgentError.connect_code`,
:attr:`AgentError.http_status`). OS errors cross into the hierarchy once,
through :func:`from_os_error`.
"""

from __future__ import annotations

import errno
from typing import ClassVar, Final

from ._gen import agent_pb2 as pb

__all__ = [
    "AgentError",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_connect_code",
    "from_os_error",
    "from_proto",
]


class AgentError(Exception):
    """Base of every error that crosses a process boundary.

    Args:
        message: human-readable text; must never contain secrets.
        reason: optional machine-readable refinement (``"is_a_directory"``).
    """

    connect_code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    proto_code: ClassVar[int] = pb.ERROR_CODE_INTERNAL

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def to_proto(self) -> pb.Error:
        return pb.Error(code=self.proto_code, message=self.message, reason=self.reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(AgentError):
    connect_code = "invalid_argument"
    http_status = 400
    proto_code = pb.ERROR_CODE_INVALID_ARGUMENT


class NotFound(AgentError):
    connect_code = "not_found"
    http_status = 404
    proto_code = pb.ERROR_CODE_NOT_FOUND


class AlreadyExists(AgentError):
    connect_code = "already_exists"
    http_status = 409
    proto_code = pb.ERROR_CODE_ALREADY_EXISTS


class PermissionDenied(AgentError):
    connect_code = "permission_denied"
    http_status = 403
    proto_code = pb.ERROR_CODE_PERMISSION_DENIED


class Unauthenticated(AgentError):
    """Only raised by the HTTP layers (the agent channel has no credentials)."""

    connect_code = "unauthenticated"
    http_status = 401
    proto_code = pb.ERROR_CODE_UNAUTHENTICATED


class ResourceExhausted(AgentError):
    connect_code = "resource_exhausted"
    http_status = 429
    proto_code = pb.ERROR_CODE_RESOURCE_EXHAUSTED


class FailedPrecondition(AgentError):
    connect_code = "failed_precondition"
    http_status = 400
    proto_code = pb.ERROR_CODE_FAILED_PRECONDITION


class DeadlineExceeded(AgentError):
    connect_code = "deadline_exceeded"
    http_status = 504
    proto_code = pb.ERROR_CODE_DEADLINE_EXCEEDED


class Unavailable(AgentError):
    connect_code = "unavailable"
    http_status = 503
    proto_code = pb.ERROR_CODE_UNAVAILABLE


class Unimplemented(AgentError):
    connect_code = "unimplemented"
    http_status = 501
    proto_code = pb.ERROR_CODE_UNIMPLEMENTED


class Cancelled(AgentError):
    connect_code = "canceled"  # Connect's spelling
    http_status = 499
    proto_code = pb.ERROR_CODE_CANCELLED


class Internal(AgentError):
    connect_code = "internal"
    http_status = 500
    proto_code = pb.ERROR_CODE_INTERNAL


_ALL: Final[tuple[type[AgentError], ...]] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    DeadlineExceeded,
    Unavailable,
    Unimplemented,
    Cancelled,
    Internal,
    Unauthenticated,
)
_BY_PROTO: Final = {cls.proto_code: cls for cls in _ALL}
_BY_CONNECT: Final = {cls.connect_code: cls for cls in _ALL}


def from_proto(err: pb.Error) -> AgentError:
    """The exception an ``Error`` frame stands for; its text cut to the agent's own
    bounds (a guest writes it, and it is forwarded to API clients and logged)."""
    from .limits import MAX_ERROR_MESSAGE_BYTES, MAX_NAME_BYTES, clip_utf8  # limits imports this module

    cls = _BY_PROTO.get(err.code, Internal)
    return cls(clip_utf8(err.message, MAX_ERROR_MESSAGE_BYTES), reason=clip_utf8(err.reason, MAX_NAME_BYTES))


def from_connect_code(code: str, message: str, *, reason: str = "") -> AgentError:
    """The exception a Connect error body stands for (unknown codes: Internal)."""
    return _BY_CONNECT.get(code, Internal)(message, reason=reason)


# errno -> (class, reason). The table is the whole policy for OS errors.
_OS_ERRORS: Final[dict[int, tuple[type[AgentError], str]]] = {
    errno.ENOENT: (NotFound, "not_found"),
    errno.EACCES: (PermissionDenied, "permission_denied"),
    errno.EPERM: (PermissionDenied, "permission_denied"),
    errno.EISDIR: (FailedPrecondition, "is_a_directory"),
    errno.ENOTDIR: (FailedPrecondition, "not_a_directory"),
    errno.EEXIST: (AlreadyExists, "file_exists"),
    errno.ENOTEMPTY: (FailedPrecondition, "directory_not_empty"),
    errno.EROFS: (FailedPrecondition, "read_only_filesystem"),
    errno.ENOSPC: (ResourceExhausted, "no_space"),
    errno.EDQUOT: (ResourceExhausted, "quota_exceeded"),
    errno.EMFILE: (ResourceExhausted, "too_many_open_files"),
    errno.ENAMETOOLONG: (InvalidArgument, "name_too_long"),
    errno.ELOOP: (InvalidArgument, "symlink_loop"),
    errno.EINVAL: (InvalidArgument, "invalid"),
    errno.EXDEV: (FailedPrecondition, "cross_device"),
    errno.ETXTBSY: (FailedPrecondition, "text_file_busy"),
}


def from_os_error(exc: OSError, *, path: str = "") -> AgentError:
    """Translate an OSError (chain with ``raise ... from exc``)."""
    cls, reason = _OS_ERRORS.get(exc.errno or 0, (Internal, "os_error"))
    what = exc.strerror or str(exc)
    return cls(f"{path}: {what}" if path else what, reason=reason)
