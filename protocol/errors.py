"""The error hierarchy of the whole stack, and its one mapping to Connect and gRPC codes.

::

    AgentError                 Connect code         HTTP  grpc-status
    ├── InvalidArgument        invalid_argument     400    3
    ├── NotFound               not_found            404    5
    ├── AlreadyExists          already_exists       409    6
    ├── PermissionDenied       permission_denied    403    7
    ├── Unauthenticated        unauthenticated      401   16
    ├── ResourceExhausted      resource_exhausted   429    8
    ├── FailedPrecondition     failed_precondition  400    9
    ├── DeadlineExceeded       deadline_exceeded    504    4
    ├── Unavailable            unavailable          503   14
    ├── Unimplemented          unimplemented        501   12
    ├── Cancelled              canceled             499    1
    └── Internal               internal             500   13

The numbers come from one table, :data:`CODES` (every Connect code, those without
a class of their own included: ``unknown``, ``aborted``, ``out_of_range``,
``data_loss`` are read as :class:`Internal`), which the rpc layer uses both ways.

Handlers raise these; the agent's dispatcher turns them into ``Error`` frames,
hostd turns ``Error`` frames back into them (:func:`from_proto`) and the HTTP
layers turn them into Connect error bodies (:attr:`AgentError.connect_code`,
:attr:`AgentError.http_status`). OS errors cross into the hierarchy once,
through :func:`from_os_error`.
"""

from __future__ import annotations

import builtins
import errno
import sys
from dataclasses import dataclass
from typing import ClassVar, Final, final

from ._gen import agent_pb2 as pb

__all__ = [
    "CODES",
    "AgentError",
    "AlreadyExists",
    "Cancelled",
    "Code",
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
    "code_by_grpc_status",
    "code_by_name",
    "from_connect_code",
    "from_os_error",
    "from_proto",
    "leaves",
    "sole_error",
]

if sys.version_info >= (3, 11):  # novermin
    _BaseExceptionGroup = builtins.BaseExceptionGroup
else:  # pragma: no cover - Python 3.10: trio depends on the backport there
    from exceptiongroup import BaseExceptionGroup as _BaseExceptionGroup


@final
@dataclass(frozen=True)
class Code:
    """One row of the error table: a Connect code, its HTTP status, its grpc-status."""

    name: str
    http_status: int
    grpc_status: int


#: Every Connect code (https://connectrpc.com/docs/protocol#error-codes) with the HTTP
#: status Connect answers it with and the gRPC status number of the same name.
CODES: Final[tuple[Code, ...]] = (
    Code("canceled", 499, 1),
    Code("unknown", 500, 2),
    Code("invalid_argument", 400, 3),
    Code("deadline_exceeded", 504, 4),
    Code("not_found", 404, 5),
    Code("already_exists", 409, 6),
    Code("permission_denied", 403, 7),
    Code("resource_exhausted", 429, 8),
    Code("failed_precondition", 400, 9),
    Code("aborted", 409, 10),
    Code("out_of_range", 400, 11),
    Code("unimplemented", 501, 12),
    Code("internal", 500, 13),
    Code("unavailable", 503, 14),
    Code("data_loss", 500, 15),
    Code("unauthenticated", 401, 16),
)
_CODE_BY_NAME: Final = {code.name: code for code in CODES}
_CODE_BY_GRPC: Final = {code.grpc_status: code for code in CODES}


def code_by_name(name: str) -> Code | None:
    """The table's row for a Connect code name (None: not a Connect code)."""
    return _CODE_BY_NAME.get(name)


def code_by_grpc_status(number: int) -> Code | None:
    """The table's row for a grpc-status number (None: not a gRPC code; 0 is OK, not an error)."""
    return _CODE_BY_GRPC.get(number)


class AgentError(Exception):
    """Base of every error that crosses a process boundary.

    Args:
        message: human-readable text; must never contain secrets.
        reason: optional machine-readable refinement (``"is_a_directory"``).
    """

    connect_code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[int] = 13
    proto_code: ClassVar[pb.ErrorCode] = pb.ERROR_CODE_INTERNAL

    def __init_subclass__(cls, **kwargs: object) -> None:
        # A subclass names its Connect code; its HTTP status and grpc-status come from
        # the one table (a subclass that names no code inherits its parent's row).
        super().__init_subclass__(**kwargs)
        row = _CODE_BY_NAME[cls.connect_code]
        cls.http_status = row.http_status
        cls.grpc_status = row.grpc_status

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
    proto_code = pb.ERROR_CODE_INVALID_ARGUMENT


class NotFound(AgentError):
    connect_code = "not_found"
    proto_code = pb.ERROR_CODE_NOT_FOUND


class AlreadyExists(AgentError):
    connect_code = "already_exists"
    proto_code = pb.ERROR_CODE_ALREADY_EXISTS


class PermissionDenied(AgentError):
    connect_code = "permission_denied"
    proto_code = pb.ERROR_CODE_PERMISSION_DENIED


class Unauthenticated(AgentError):
    """Only raised by the HTTP layers (the agent channel has no credentials)."""

    connect_code = "unauthenticated"
    proto_code = pb.ERROR_CODE_UNAUTHENTICATED


class ResourceExhausted(AgentError):
    connect_code = "resource_exhausted"
    proto_code = pb.ERROR_CODE_RESOURCE_EXHAUSTED


class FailedPrecondition(AgentError):
    connect_code = "failed_precondition"
    proto_code = pb.ERROR_CODE_FAILED_PRECONDITION


class DeadlineExceeded(AgentError):
    connect_code = "deadline_exceeded"
    proto_code = pb.ERROR_CODE_DEADLINE_EXCEEDED


class Unavailable(AgentError):
    connect_code = "unavailable"
    proto_code = pb.ERROR_CODE_UNAVAILABLE


class Unimplemented(AgentError):
    connect_code = "unimplemented"
    proto_code = pb.ERROR_CODE_UNIMPLEMENTED


class Cancelled(AgentError):
    connect_code = "canceled"  # Connect's spelling
    proto_code = pb.ERROR_CODE_CANCELLED


class Internal(AgentError):
    connect_code = "internal"
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


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, exception groups (trio's nurseries) flattened."""
    if isinstance(exc, _BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def sole_error(exc: BaseException) -> AgentError | None:
    """The one :class:`AgentError` ``exc`` stands for (alone or as the only leaf of nested
    exception groups), else None: a daemon's ``main`` prints it as one line (a port in use)
    instead of the traceback of every nursery it crossed."""
    found = leaves(exc)
    return found[0] if len(found) == 1 and isinstance(found[0], AgentError) else None
