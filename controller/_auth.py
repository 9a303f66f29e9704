"""Who may do what: roles, permissions, principals and the API token format.

Roles are cumulative (an operator may do everything a viewer may, an admin
everything an operator may), except ``node``: the credential a hostd uses to
register itself and heartbeat, which may do that and nothing else (a stolen
hostd config then cannot run commands anywhere). The whole policy is the
:data:`ROLE_PERMISSIONS` table. A token may also carry a *label scope* (``{"env": "prod"}``): it then
reaches only VMs whose labels contain every pair of the scope, and it loses the
global permissions (:data:`GLOBAL_PERMISSIONS`) with which it could step out of
its scope — minting an unscoped token, reading every VM's audit trail,
re-pointing nodes.

Tokens look like ``lqx_<id>_<secret>``: ``id`` is 12 hex digits, public (it is
what ``token list`` shows and what audit rows name), ``secret`` is 32 random
bytes in URL-safe base64. Only the SHA-256 of the whole token is stored; a plain
hash is enough because the secret has 256 bits of entropy (there is nothing to
brute-force, so a slow password hash would only cost latency on every call).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import secrets
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, final

from limiquantix.protocol import check_labels, errors

__all__ = [
    "ENV_TOKEN_MIN_CHARS",
    "GLOBAL_PERMISSIONS",
    "ROLE_PERMISSIONS",
    "TOKEN_PREFIX",
    "Permission",
    "Principal",
    "Role",
    "generate_token",
    "hash_token",
    "parse_labels",
    "require",
    "token_id_of",
    "valid_token_id",
    "valid_user_name",
    "validate_labels",
]

#: Every generated token starts with this (secret scanners can match on it).
TOKEN_PREFIX: Final = "lqx_"
#: Bytes of randomness in a generated secret (256 bits).
_SECRET_BYTES: Final = 32
#: Length of a token id in hex digits (48 bits: collisions are retried anyway).
_TOKEN_ID_HEX: Final = 12
_TOKEN_ID_RE: Final = re.compile(rf"[0-9a-f]{{{_TOKEN_ID_HEX}}}")
#: A generated token: prefix, id, the secret's 43 base64url characters.
_TOKEN_RE: Final = re.compile(rf"lqx_([0-9a-f]{{{_TOKEN_ID_HEX}}})_([A-Za-z0-9_-]{{43}})")
#: An operator-chosen token (``LQX_ADMIN_TOKEN``) that is not in our format must
#: be at least this long (24 random characters from base64's alphabet ≈ 144 bits).
ENV_TOKEN_MIN_CHARS: Final = 24
#: Upper bound on any presented token: a 1 MB header must not be hashed.
_TOKEN_MAX_CHARS: Final = 256
#: Printable ASCII without spaces: what survives an HTTP header and a shell.
_FREEFORM_RE: Final = re.compile(r"[\x21-\x7e]+")

_USER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,63}")


class Role(enum.Enum):
    """A token's role. Values are what the database and the API carry."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    NODE = "node"
    """A hostd: RegisterNode and Heartbeat only."""


class Permission(enum.Enum):
    """One thing a principal may do. Each RPC of the API needs exactly one."""

    VM_READ = "vm.read"
    """ListVMs, GetVM, PingAgent."""
    NODE_READ = "node.read"
    """ListNodes."""
    COMMAND_READ = "command.read"
    """GetCommand, ListCommands (their per-target output included)."""
    VM_EXEC = "vm.exec"
    """ExecuteScript, ExecuteScriptStream, CancelExecution."""
    FILE_READ = "file.read"
    """ReadGuestFile, StatGuestFile, ListGuestDirectory."""
    FILE_WRITE = "file.write"
    """WriteGuestFile."""
    VM_POWER = "vm.power"
    """GuestShutdown (power off or reboot)."""
    COMMAND_RUN = "command.run"
    """RunCommand, CancelCommand (fleet runs)."""
    PASSWORD_RESET = "vm.password_reset"
    """ResetGuestPassword."""
    TOKEN_MANAGE = "token.manage"
    """Create, list and revoke API tokens."""
    NODE_MANAGE = "node.manage"
    """Register and remove hostd nodes."""
    VM_MANAGE = "vm.manage"
    """RemoveVM: forget a VM that is gone from the inventory."""
    AUDIT_READ = "audit.read"
    """Query and export the audit log."""
    NODE_REGISTER = "node.register"
    """RegisterNode and Heartbeat (what a hostd does with its controller token)."""


_VIEWER: Final = frozenset({Permission.VM_READ, Permission.NODE_READ, Permission.COMMAND_READ})
_OPERATOR: Final = _VIEWER | {
    Permission.VM_EXEC,
    Permission.FILE_READ,
    Permission.FILE_WRITE,
    Permission.VM_POWER,
    Permission.COMMAND_RUN,
}
_ADMIN: Final = _OPERATOR | {
    Permission.PASSWORD_RESET,
    Permission.TOKEN_MANAGE,
    Permission.NODE_MANAGE,
    Permission.VM_MANAGE,
    Permission.AUDIT_READ,
    Permission.NODE_REGISTER,
}
# Not cumulative: a hostd's credential registers its node and nothing else.
_NODE: Final = frozenset({Permission.NODE_REGISTER})

#: The whole role policy.
ROLE_PERMISSIONS: Final[Mapping[Role, frozenset[Permission]]] = MappingProxyType(
    {Role.VIEWER: _VIEWER, Role.OPERATOR: _OPERATOR, Role.ADMIN: _ADMIN, Role.NODE: _NODE}
)

#: Permissions not about one VM: a label-scoped token never has them, since
#: each would let it act beyond its scope.
GLOBAL_PERMISSIONS: Final = frozenset(
    {
        Permission.TOKEN_MANAGE,
        Permission.NODE_MANAGE,
        Permission.VM_MANAGE,
        Permission.AUDIT_READ,
        Permission.NODE_REGISTER,
    }
)


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class Principal:
    """The caller an API token stands for."""

    user: str
    """The user who owns the token."""
    token_id: str
    """The token's public id ("" for a local administrator using the CLI)."""
    role: Role
    label_scope: Mapping[str, str] | None = None
    """None: every VM. Otherwise only VMs whose labels contain every pair."""

    def __post_init__(self) -> None:
        if self.label_scope is not None:
            object.__setattr__(self, "label_scope", MappingProxyType(dict(self.label_scope)))

    @property
    def scoped(self) -> bool:
        """Whether the token is limited to some VMs."""
        return bool(self.label_scope)

    def has(self, permission: Permission) -> bool:
        """Whether the role grants ``permission`` (and the scope does not take it away)."""
        if permission in GLOBAL_PERMISSIONS and self.scoped:
            return False
        return permission in ROLE_PERMISSIONS[self.role]

    def may_access(self, vm_labels: Mapping[str, str]) -> bool:
        """Whether a VM with these labels is within the token's label scope."""
        if not self.label_scope:
            return True
        return all(vm_labels.get(key) == value for key, value in self.label_scope.items())


def require(principal: Principal, permission: Permission, *, vm_labels: Mapping[str, str] | None = None) -> None:
    """Refuse unless ``principal`` holds ``permission`` (on the VM with ``vm_labels``, if given).

    Raises:
        errors.PermissionDenied: reason ``role`` (the role lacks it), ``label_scope``
            (a scoped token asked for a global permission) or ``outside_label_scope``
            (the VM's labels do not match the token's scope).
    """
    if permission not in ROLE_PERMISSIONS[principal.role]:
        raise errors.PermissionDenied(f"role {principal.role.value} may not {permission.value}", reason="role")
    if not principal.has(permission):
        raise errors.PermissionDenied(f"a label-scoped token may not {permission.value}", reason="label_scope")
    if vm_labels is not None and not principal.may_access(vm_labels):
        raise errors.PermissionDenied("the VM is outside this token's label scope", reason="outside_label_scope")


# ------------------------------------------------------------------ tokens


def generate_token() -> tuple[str, str]:
    """A fresh ``(token_id, token)``; the caller stores only :func:`hash_token` of it."""
    token_id = secrets.token_hex(_TOKEN_ID_HEX // 2)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def hash_token(token: str) -> bytes:
    """What the store keeps of a token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()


def token_id_of(token: str, *, allow_freeform: bool = True) -> str:
    """The id under which ``token`` is stored.

    A generated token carries its id. An operator-chosen token (``LQX_ADMIN_TOKEN``
    in another format) is stored under an id derived from its hash, so it needs no
    second lookup path. ``allow_freeform=False`` accepts only generated tokens.

    Raises:
        errors.Unauthenticated: malformed (reason ``malformed_token``).
    """
    if len(token) <= _TOKEN_MAX_CHARS:
        match = _TOKEN_RE.fullmatch(token)
        if match:
            return match.group(1)
        if allow_freeform and len(token) >= ENV_TOKEN_MIN_CHARS and _FREEFORM_RE.fullmatch(token):
            return hashlib.sha256(b"lqx-token-id\0" + token.encode()).hexdigest()[:_TOKEN_ID_HEX]
    raise errors.Unauthenticated("malformed bearer token", reason="malformed_token")


def valid_token_id(token_id: str) -> bool:
    """Whether ``token_id`` has the shape of a token id."""
    return _TOKEN_ID_RE.fullmatch(token_id) is not None


def valid_user_name(name: str) -> bool:
    """Whether ``name`` may name a user (1-64 letters, digits, ``_.@:+-``, not first)."""
    return _USER_RE.fullmatch(name) is not None


def validate_labels(labels: Mapping[str, str], *, what: str = "labels") -> dict[str, str]:
    """A plain copy of ``labels`` after checking keys and values (the rules are
    :func:`limiquantix.protocol.check_labels`', which the command line runs before sending).

    Raises:
        errors.InvalidArgument: a key or value is malformed, or there are too many.
    """
    try:
        return check_labels(labels, what=what)
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None


def parse_labels(text: str) -> dict[str, str]:
    """``"env=prod,tier=web"`` as a mapping (the CLI's ``--labels``).

    Raises:
        errors.InvalidArgument: an item is not ``key=value`` or is malformed.
    """
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.InvalidArgument(f"labels take key=value, not {item!r}")
        labels[key.strip()] = value.strip()
    return validate_labels(labels)
