"""The records the store takes and returns: frozen dataclasses, validated on construction.

Nothing here touches a database; the API layer builds these from requests and
renders them into responses. Two of them guard against secrets reaching disk:

* :class:`AuditDetail` is a closed set of fields (command text, path, size,
  SHA-256 ...). There is no field for file contents, passwords, stdin or
  environment values, and :meth:`AuditDetail.from_mapping` refuses any key it
  does not know, naming the usual suspects (``password``, ``content`` ...)
  explicitly.
* :class:`CommandSpec` (what a fleet run executes) keeps environment variable
  *names* only; their values and stdin stay in the runner's memory.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, final

from limiquantix.protocol import MAX_CONCURRENCY_LIMIT, errors
from limiquantix.protocol import parse_max_errors as max_errors_value
from limiquantix.protocol.limits import MAX_ID_BYTES, check_id, clip_utf8

from ._auth import Role, validate_labels

__all__ = [
    "AUDIT_ERROR_MAX_CHARS",
    "AUDIT_MAX_VM_IDS",
    "AUDIT_TEXT_MAX_CHARS",
    "FORBIDDEN_AUDIT_KEYS",
    "MAX_COMMAND_TARGETS",
    "ID_CUT_MARK",
    "MAX_CONCURRENCY_LIMIT",
    "MAX_PAGE_SIZE",
    "TARGET_OUTPUT_MAX_BYTES",
    "TERMINAL_COMMAND_STATUSES",
    "TERMINAL_TARGET_STATUSES",
    "AgentBrief",
    "AuditAction",
    "AuditDetail",
    "AuditOutcome",
    "AuditPage",
    "AuditQuery",
    "AuditRecord",
    "Command",
    "CommandPage",
    "CommandSpec",
    "CommandStatus",
    "HeartbeatResult",
    "InventoryState",
    "NodeInfo",
    "TargetResult",
    "TargetSpec",
    "TargetStatus",
    "TokenInfo",
    "User",
    "VMClaim",
    "VMInfo",
    "VMMove",
    "VMRoute",
    "cap_output",
    "audit_id",
    "check_id",
    "check_page",
    "iso_time",
    "max_errors_limit",
    "parse_max_errors",
    "unique_vm_ids",
]

#: Command text, argument lists and paths in an audit row are cut beyond this
#: many characters (with ``truncated`` set): a 1 MB inline script must not make
#: the audit log the biggest thing on disk, its SHA-256 is recorded in full.
AUDIT_TEXT_MAX_CHARS: Final = 8192
#: VM ids listed in one audit row (a fleet run over 10 000 VMs names the
#: first ones, its selector and its count).
AUDIT_MAX_VM_IDS: Final = 100
#: An error message in an audit row or a fleet target's result, cut by the store (the one
#: place every writer passes). Above the 2,000 characters the rpc client keeps of a peer's
#: error (``MAX_ERROR_MESSAGE_CHARS``), so a node's error reaches both rows whole, with the
#: controller's prefix ("node n1: ..."), and the audit row and the target say the same.
AUDIT_ERROR_MAX_CHARS: Final = 2048
#: stdout and stderr kept per fleet-run target, each (the agent's own cap is
#: 1 MiB; 500 targets × 2 × 64 KiB is a 64 MB worst case per command).
TARGET_OUTPUT_MAX_BYTES: Final = 64 * 1024
#: Largest page of any list call.
MAX_PAGE_SIZE: Final = 1000
#: Largest fleet run, and largest maxConcurrency.
MAX_COMMAND_TARGETS: Final = 10_000
#: Ends an id an audit row names cut (see :func:`audit_id`).
ID_CUT_MARK: Final = "\u2026"

#: Keys a caller might try to put in an audit detail that must never be recorded.
FORBIDDEN_AUDIT_KEYS: Final = frozenset(
    {"password", "new_password", "content", "contents", "data", "stdin", "secret", "token", "environment", "env"}
)

_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_FLAG_RE: Final = re.compile(r"[a-z][a-z0-9_.=-]{0,63}")


def iso_time(ts: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC with milliseconds (None stays None)."""
    if ts is None:
        return None
    return (
        datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _cap(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)


def cap_output(text: str, limit: int = TARGET_OUTPUT_MAX_BYTES) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (at a character boundary), and whether it was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


# ------------------------------------------------------------------ users, tokens


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class User:
    """A person or script that owns tokens."""

    name: str
    created_at: float


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenInfo:
    """An API token as listed: everything but the secret (which is never stored)."""

    id: str
    user: str
    role: Role
    label_scope: Mapping[str, str] | None
    description: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None


# ------------------------------------------------------------------ audit


class AuditAction(enum.Enum):
    """Every action the audit log records. Values are what rows carry."""

    EXEC = "vm.exec"
    EXEC_STREAM = "vm.exec_stream"
    CANCEL_EXECUTION = "vm.cancel_execution"
    FILE_READ = "file.read"
    FILE_WRITE = "file.write"
    FILE_STAT = "file.stat"
    FILE_LIST = "file.list"
    SHUTDOWN = "vm.shutdown"
    REBOOT = "vm.reboot"
    PASSWORD_RESET = "vm.password_reset"
    FLEET_RUN = "command.run"
    FLEET_CANCEL = "command.cancel"
    TOKEN_CREATE = "token.create"
    TOKEN_REVOKE = "token.revoke"
    NODE_REGISTER = "node.register"
    NODE_REMOVE = "node.remove"
    VM_REMOVE = "vm.remove"
    """An admin removed a VM from the inventory (gone, or its node unreachable)."""
    ADMIN_BOOTSTRAP = "admin.bootstrap"
    VM_CLAIM = "vm.claim"
    """A node reported a VM bound to another node that still hosts it: refused (reason ``vm_owned``)."""
    VM_MOVED = "vm.moved"
    """A VM's binding moved to another node (its owner stopped reporting it, or went unreachable)."""
    AUTH_FAILED = "auth.failed"
    """Requests refused 401, recorded at most once per source address and interval (``count``: how many)."""


class AuditOutcome(enum.Enum):
    """How an audited action ended; ``pending`` until :meth:`Store.audit_complete`."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    """The command ran and exited with a non-zero status (the row's exit_code holds it)."""
    ERROR = "error"
    DENIED = "denied"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    """The request reached the node, then the connection broke or timed out:
    the action may have happened (a caller must not retry it blindly)."""


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditDetail:
    """What an audit row records about an action besides who, where and when.

    A closed set of fields on purpose: no contents, passwords, stdin or
    environment values can be recorded, because there is nowhere to put them.
    Long text is cut at :data:`AUDIT_TEXT_MAX_CHARS` with ``truncated`` set.

    Raises:
        errors.InvalidArgument: a field is malformed (``sha256`` not 64 hex
            digits, negative ``size``, a flag or env name with odd characters).
    """

    command: str = ""
    """Command or shell script text, as the caller sent it."""
    args: tuple[str, ...] = ()
    working_directory: str = ""
    run_as_user: str = ""
    env_keys: tuple[str, ...] = ()
    """Names of environment variables set (never their values)."""
    path: str = ""
    size: int | None = None
    """Bytes read or written, or of stdin."""
    sha256: str = ""
    """Of the bytes read or written (lowercase hex)."""
    username: str = ""
    """The guest account of a password reset."""
    target: str = ""
    """The object acted on when it is not a VM: a token, node or command id."""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """A label selector (fleet run) or a new token's label scope."""
    count: int | None = None
    """How many targets a fleet run resolved to (or how many refused requests an ``auth.failed`` row stands for)."""
    vm_ids: tuple[str, ...] = ()
    """The VMs a fleet run named or resolved to (at most :data:`AUDIT_MAX_VM_IDS`, then ``truncated``)."""
    flags: tuple[str, ...] = ()
    """Short options: ``reboot``, ``append``, ``create_parents``, ``role=operator`` ..."""
    truncated: bool = False
    """Some text above was cut at AUDIT_TEXT_MAX_CHARS."""

    def __post_init__(self) -> None:
        cut = self.truncated
        for name in ("command", "working_directory", "path", "run_as_user", "username"):
            value, was_cut = _cap(getattr(self, name), AUDIT_TEXT_MAX_CHARS)
            object.__setattr__(self, name, value)
            cut |= was_cut
        args: list[str] = []
        budget = AUDIT_TEXT_MAX_CHARS
        for arg in self.args:
            if budget <= 0:
                cut = True
                break
            piece, was_cut = _cap(str(arg), budget)
            args.append(piece)
            budget -= len(piece)
            cut |= was_cut
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "env_keys", tuple(self.env_keys))
        object.__setattr__(self, "flags", tuple(self.flags))
        vm_ids = tuple(audit_id(str(v)) for v in self.vm_ids)
        cut |= vm_ids != tuple(map(str, self.vm_ids))
        if len(vm_ids) > AUDIT_MAX_VM_IDS:
            vm_ids, cut = vm_ids[:AUDIT_MAX_VM_IDS], True
        object.__setattr__(self, "vm_ids", vm_ids)
        # A refused request's id may be any length: recorded cut, marked so (audit_id).
        target = audit_id(self.target)
        cut |= target != self.target
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "truncated", cut)
        for key in self.env_keys:
            if not _ENV_NAME_RE.fullmatch(key):
                raise errors.InvalidArgument(f"audit detail: bad environment variable name {key[:64]!r}")
        for flag in self.flags:
            if not _FLAG_RE.fullmatch(flag):
                raise errors.InvalidArgument(f"audit detail: bad flag {flag[:64]!r}")
        if self.size is not None and self.size < 0:
            raise errors.InvalidArgument("audit detail: size must be >= 0")
        if self.count is not None and self.count < 0:
            raise errors.InvalidArgument("audit detail: count must be >= 0")
        if self.sha256 and not _SHA256_RE.fullmatch(self.sha256):
            raise errors.InvalidArgument("audit detail: sha256 must be 64 lowercase hex digits")
        if self.target:
            check_id(self.target, "audit detail: target")
        object.__setattr__(self, "labels", MappingProxyType(validate_labels(self.labels, what="audit detail labels")))

    @classmethod
    def naming(cls, target: str, **fields: Any) -> AuditDetail:
        """A detail whose ``target`` is the id a request named, as it came: cut and
        marked when too long (see :func:`audit_id`), left out when it holds spaces or
        controls (the request is refused for it, and the row says so in its error).

        Raises:
            errors.InvalidArgument: another field is malformed.
        """
        try:
            check_id(audit_id(target), "target")
        except errors.InvalidArgument:
            target = ""
        return cls(target=target, **fields)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AuditDetail:
        """Build from a plain mapping (e.g. a stored row), refusing unknown keys.

        Raises:
            errors.InvalidArgument: a key is not a field (reason
                ``forbidden_audit_field`` for keys such as ``password`` or
                ``content``), or a value is malformed.
        """
        for key in data:
            if key in FORBIDDEN_AUDIT_KEYS:
                raise errors.InvalidArgument(f"audit detail may never record {key!r}", reason="forbidden_audit_field")
        unknown = sorted(set(data) - _AUDIT_FIELDS)
        if unknown:
            raise errors.InvalidArgument(f"audit detail has no field {unknown[0]!r}", reason="forbidden_audit_field")
        values = dict(data)
        for key in ("args", "env_keys", "flags", "vm_ids"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - keys were checked above
            raise errors.InvalidArgument(f"audit detail: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that are set (compact rows, readable exports)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value in ("", (), None, False) or (isinstance(value, Mapping) and not value):
                continue
            out[field.name] = (
                dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value
            )
        return out


_AUDIT_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(AuditDetail))


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One audit row."""

    id: int
    """Increasing, never reused: the order actions were begun in."""
    started_at: float
    completed_at: float | None
    user: str
    token_id: str
    role: str
    source_address: str
    action: AuditAction
    vm_id: str
    node_id: str
    detail: AuditDetail
    outcome: AuditOutcome
    exit_code: int | None
    duration_ms: int | None
    error: str

    def to_json_dict(self) -> dict[str, Any]:
        """The export's shape: camelCase like the API, RFC 3339 times."""
        return {
            "id": self.id,
            "startedAt": iso_time(self.started_at),
            "completedAt": iso_time(self.completed_at),
            "user": self.user,
            "tokenId": self.token_id,
            "role": self.role,
            "sourceAddress": self.source_address,
            "action": self.action.value,
            "vmId": self.vm_id,
            "nodeId": self.node_id,
            "detail": self.detail.to_dict(),
            "outcome": self.outcome.value,
            "exitCode": self.exit_code,
            "durationMs": self.duration_ms,
            "error": self.error,
        }


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Filters of an audit query; every set filter must match.

    Raises:
        errors.InvalidArgument: ``limit`` outside 1..MAX_PAGE_SIZE, a malformed
            ``page_token``, or ``since`` after ``until``.
    """

    user: str | None = None
    action: AuditAction | str | None = None
    """An action, or a string: a prefix of actions (``vm.exec`` finds ``vm.exec_stream`` too)."""
    vm_id: str | None = None
    node_id: str | None = None
    prefix: bool = False
    """``user``, ``vm_id`` and ``node_id`` match rows whose value starts with them (the API's filters)."""
    outcome: AuditOutcome | None = None
    since: float | None = None
    """Rows started at or after (unix seconds)."""
    until: float | None = None
    """Rows started before (unix seconds)."""
    limit: int = 100
    page_token: str = ""
    """From the previous page's ``next_page_token``."""
    oldest_first: bool = False
    """Newest first by default (the API); exports read oldest first."""

    def __post_init__(self) -> None:
        check_page(self.limit, self.page_token)
        if self.since is not None and self.until is not None and self.since > self.until:
            raise errors.InvalidArgument("since must not be after until")


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditPage:
    records: tuple[AuditRecord, ...]
    next_page_token: str
    """Empty on the last page."""


# ------------------------------------------------------------------ nodes


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentBrief:
    """A VM's agent in brief, as its node's last heartbeat told it (what a
    fleet view shows without asking each node)."""

    agent_version: str = ""
    os: str = ""
    hostname: str = ""
    kernel: str = ""
    ip_addresses: tuple[str, ...] = ()
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    uptime_seconds: float = 0.0
    """The guest's uptime, from its telemetry."""
    last_seen: float | None = None
    """Unix time of the agent's last message (None: never seen)."""
    last_disconnect_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that are set (a compact stored row)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["ip_addresses"] = list(self.ip_addresses)
        return {k: v for k, v in out.items() if v not in ("", [], 0.0, None)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentBrief:
        """Inverse of :meth:`to_dict`; keys this version does not know are ignored
        (a row written by a newer controller still reads)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "ip_addresses" in values:
            values["ip_addresses"] = tuple(values["ip_addresses"])
        return cls(**values)


class InventoryState(enum.Enum):
    """A VM as the controller knows it (the API's ``VM.state``)."""

    RUNNING = "running"
    """Its node reports it and its QEMU chardev socket exists."""
    OFF = "off"
    """Its node reports it without the socket (hostd's ``no_socket``: powered off, or not created yet)."""
    UNKNOWN = "unknown"
    """Its node reports it but cannot tell (the agent connection is ``disabled``: hostd does not look)."""
    GONE = "gone"
    """Its node no longer reports it, or the node was removed: kept until an admin removes it."""

    @classmethod
    def of(cls, agent_state: str, *, reported: bool = True) -> InventoryState:
        """The state of a VM whose node reports hostd's ``agent_state`` (or no longer reports it)."""
        if not reported:
            return cls.GONE
        return _INVENTORY_STATES.get(agent_state, cls.RUNNING)


#: hostd's agent states that say something about the VM itself; every other one
#: (connecting, waiting_for_agent, connected, unresponsive) needs the socket, so QEMU runs.
_INVENTORY_STATES: Final = {"no_socket": InventoryState.OFF, "disabled": InventoryState.UNKNOWN}


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class VMInfo:
    """A VM as its node last reported it."""

    vm_id: str
    name: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    state: str = ""
    """hostd's agent connection state (``connected``, ``waiting_for_agent`` ...)."""
    agent: AgentBrief = dataclasses.field(default_factory=AgentBrief)
    reported: bool = True
    """Its node's latest heartbeat lists it (False: gone, the rest is as last reported)."""
    last_reported: float | None = None
    """Unix time of the last heartbeat that listed it (None: a record not read from the store)."""

    def __post_init__(self) -> None:
        check_id(self.vm_id, "vm_id")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    @property
    def inventory_state(self) -> InventoryState:
        """``running``, ``off``, ``unknown`` or ``gone``."""
        return InventoryState.of(self.state, reported=self.reported)


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeInfo:
    """A registered hostd.

    ``token`` is the credential the controller presents to that hostd: never
    render it (it is left out of ``repr`` and of :meth:`public_dict`).
    """

    node_id: str
    url: str
    token: str = dataclasses.field(repr=False)
    registered_at: float
    last_heartbeat: float | None
    reachable: bool
    """A heartbeat arrived within the read's ``heartbeat_timeout_s``."""
    vm_count: int

    def public_dict(self) -> dict[str, Any]:
        """Everything but the token, camelCase."""
        return {
            "nodeId": self.node_id,
            "url": self.url,
            "registeredAt": iso_time(self.registered_at),
            "lastHeartbeat": iso_time(self.last_heartbeat),
            "reachable": self.reachable,
            "vmCount": self.vm_count,
        }


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class VMRoute:
    """Where a VM lives: the node to call, and the VM as that node reported it
    (its labels are what a token's label scope is checked against)."""

    node_id: str
    """The node the VM is bound to (it may have been removed since)."""
    node: NodeInfo | None
    """That node; None once it was removed (the VM is then gone)."""
    vm: VMInfo

    @property
    def gone(self) -> bool:
        """Its node no longer reports the VM (or was removed): nothing can be forwarded."""
        return self.node is None or not self.vm.reported

    def gone_error(self) -> errors.Unavailable:
        """What a call for a gone VM answers (reason ``vm_gone``)."""
        when = iso_time(self.vm.last_reported) or "an unknown time"
        node = f"node {self.node_id}" if self.node is not None else f"node {self.node_id} (since removed)"
        return errors.Unavailable(f"VM {self.vm.vm_id} is gone: {node} last reported it at {when}", reason="vm_gone")


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class VMMove:
    """A VM's binding moved to the heartbeating node (audited ``vm.moved``)."""

    vm_id: str
    from_node: str
    reason: str
    """``not_reported`` (the owner's last heartbeat no longer lists it),
    ``owner_unreachable`` (the owner is silent past the heartbeat timeout) or
    ``owner_removed`` (an admin removed the owner)."""


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class VMClaim:
    """A VM the heartbeating node reported but may not host: another node owns it
    and still reports it (refused: left out of the node's list, audited ``vm.claim``)."""

    vm_id: str
    owner_node: str


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class HeartbeatResult:
    """What a heartbeat changed in the VM → node bindings."""

    moved: tuple[VMMove, ...] = ()
    refused: tuple[VMClaim, ...] = ()
    forgotten: int = 0
    """Gone VMs of the node forgotten, the oldest, to keep at most ``MAX_GONE_VMS_PER_NODE``."""


# ------------------------------------------------------------------ fleet runs


class CommandStatus(enum.Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    CANCELLING = "cancelling"
    """Cancel requested; targets already running are being stopped."""
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TargetStatus(enum.Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    UNDELIVERABLE = "undeliverable"
    """The VM's agent (or its node) was not connected."""
    SKIPPED = "skipped"
    """Not started because maxErrors was exceeded."""


TERMINAL_COMMAND_STATUSES: Final = frozenset({CommandStatus.SUCCESS, CommandStatus.FAILED, CommandStatus.CANCELLED})
TERMINAL_TARGET_STATUSES: Final = frozenset(set(TargetStatus) - {TargetStatus.PENDING, TargetStatus.IN_PROGRESS})


def parse_max_errors(value: str) -> tuple[int, bool]:
    """``"2"`` → ``(2, False)``, ``"10%"`` → ``(10, True)`` (the rule is
    :func:`limiquantix.protocol.parse_max_errors`', which the command line runs before sending).

    Raises:
        errors.InvalidArgument: not a count or a percentage within 0..100.
    """
    try:
        return max_errors_value(value)
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None


def max_errors_limit(value: str, n_targets: int) -> int:
    """Errors a run of ``n_targets`` tolerates; once failures exceed it, the rest are skipped.

    A percentage is of the targets, rounded down (``"10%"`` of 25 targets is 2).

    Raises:
        errors.InvalidArgument: see :func:`parse_max_errors`.
    """
    number, percent = parse_max_errors(value)
    return math.floor(n_targets * number / 100) if percent else number


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class CommandSpec:
    """What a fleet run executes on each target (what ExecuteScript takes, minus secrets).

    Raises:
        errors.InvalidArgument: empty command, negative timeout, bad env names.
    """

    command: str
    args: tuple[str, ...] = ()
    timeout_seconds: int = 0
    """0: the agent's default."""
    working_directory: str = ""
    run_as_user: str = ""
    env_keys: tuple[str, ...] = ()
    """Names of the environment variables set (their values are never stored)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "env_keys", tuple(self.env_keys))
        if not self.command:
            raise errors.InvalidArgument("command must not be empty")
        if self.timeout_seconds < 0:
            raise errors.InvalidArgument("timeout_seconds must be >= 0")
        for key in self.env_keys:
            if not _ENV_NAME_RE.fullmatch(key):
                raise errors.InvalidArgument(f"bad environment variable name {key[:64]!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "args": list(self.args), "env_keys": list(self.env_keys)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CommandSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            errors.InvalidArgument: unknown keys or bad values.
        """
        try:
            return cls(**{**data, "args": tuple(data.get("args", ())), "env_keys": tuple(data.get("env_keys", ()))})
        except TypeError as exc:
            raise errors.InvalidArgument(f"command spec: {exc}") from exc


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """How a fleet run chose its targets, as the caller said it (kept for the record).

    Raises:
        errors.InvalidArgument: neither VM ids nor labels, or malformed labels.
    """

    vm_ids: tuple[str, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vm_ids", tuple(self.vm_ids))
        object.__setattr__(self, "labels", MappingProxyType(validate_labels(self.labels, what="target labels")))
        if not self.vm_ids and not self.labels:
            raise errors.InvalidArgument("a fleet run needs VM ids or labels")

    def to_dict(self) -> dict[str, Any]:
        return {"vm_ids": list(self.vm_ids), "labels": dict(self.labels)}


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetResult:
    """One VM's part of a fleet run."""

    vm_id: str
    node_id: str
    status: TargetStatus
    exit_code: int | None
    """Set only when the command exited (``exit_reason`` ``exited``)."""
    exit_reason: str
    """How the command ended, as the agent said (``exited``, ``timed_out``, ``cancelled``,
    ``signaled``, ``failed_to_start``); empty without a result from the agent."""
    signal: int
    """The signal that killed it (signaled), or that was sent (timed out, cancelled); else 0."""
    stdout: str
    stderr: str
    stdout_truncated: bool
    """Cut by the agent or by TARGET_OUTPUT_MAX_BYTES."""
    stderr_truncated: bool
    error: str
    started_at: float | None
    completed_at: float | None
    duration_ms: int | None


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class Command:
    """A fleet run. ``targets`` is filled by ``get_command`` and empty in lists."""

    id: str
    created_at: float
    completed_at: float | None
    user: str
    token_id: str
    spec: CommandSpec
    target_spec: TargetSpec
    max_concurrency: int
    max_errors: str
    status: CommandStatus
    counts: Mapping[TargetStatus, int]
    """Targets per status (every status present, zeros included)."""
    targets: tuple[TargetResult, ...] = ()

    @property
    def target_count(self) -> int:
        return sum(self.counts.values())


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class CommandPage:
    commands: tuple[Command, ...]
    next_page_token: str
    """Empty on the last page."""


def check_page(limit: int, page_token: str) -> None:
    """A list call's page: ``limit`` within 1..:data:`MAX_PAGE_SIZE`, ``page_token`` a number or empty.

    Raises:
        errors.InvalidArgument: either is not.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.InvalidArgument(f"limit must be within 1..{MAX_PAGE_SIZE}")
    if page_token and not page_token.isdigit():
        raise errors.InvalidArgument("malformed page token")


def unique_vm_ids(values: Sequence[str]) -> tuple[str, ...]:
    """``values`` without repeats, in their order.

    Raises:
        errors.InvalidArgument: an id :func:`check_id` refuses.
    """
    seen: dict[str, None] = {}
    for vm_id in values:
        check_id(vm_id, "vm ids")
        seen.setdefault(vm_id)
    return tuple(seen)


def audit_id(value: str) -> str:
    """``value`` as an audit row or a log line names an id that may be too long.

    An id the controller refused (over :data:`MAX_ID_BYTES`) is still recorded in
    the row of its refused request, cut, and the cut is said by :data:`ID_CUT_MARK`
    at its end: a cut id is another id, and the mark keeps a reader from taking it
    for a VM or node that exists. Ids that pass :func:`check_id` come back as they are.
    """
    if clip_utf8(value, MAX_ID_BYTES) == value:
        return value
    return clip_utf8(value, MAX_ID_BYTES - len(ID_CUT_MARK.encode())) + ID_CUT_MARK
