"""Size bounds of every request field, and the one check that applies them.

Every hop that takes a request from a less trusted peer checks it here before
acting on it: the agent for each request frame from a host (before any handler
runs), hostd and the controller for each API call (before forwarding it). An
oversized field is refused with ``invalid_argument`` naming the field and its
limit; nothing is truncated silently.

The check is driven by the message descriptors, so a field added to a ``.proto``
is bounded by default: strings by what their name says they hold (ids, paths,
names, else text), bytes by :data:`MAX_BYTES`, repeated fields and maps by
:data:`MAX_ITEMS`. :data:`OVERRIDES` raises or lowers single fields.

Why the agent needs this even though a frame is bounded: several request fields
come back in the answer (the message id in every answer; a ping's payload), so
a request that fits in a frame may have an answer that does not. Bounding what
is echoed to a small size makes every answer fit by construction.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ._varint import read_varint
from .errors import InvalidArgument

__all__ = [
    "LEFT_TO_HANDLER",
    "FieldWalk",
    "Limit",
    "MAX_ARGV_ENTRIES",
    "MAX_ARG_BYTES",
    "MAX_BYTES",
    "MAX_DIGEST_BYTES",
    "MAX_ENV_ENTRIES",
    "MAX_ERROR_MESSAGE_BYTES",
    "MAX_EXEC_ARGS_BYTES",
    "MAX_FILE_CHUNK_BYTES",
    "MAX_GROUPS",
    "MAX_ID_BYTES",
    "MAX_ITEMS",
    "MAX_LIST_PAGE_ENTRIES",
    "MAX_MESSAGE_FIELDS",
    "MAX_NAME_BYTES",
    "MAX_PASSWORD_BYTES",
    "MAX_PATH_BYTES",
    "MAX_SCRIPT_BYTES",
    "MAX_STDIN_BYTES",
    "MAX_TARGETS",
    "MAX_TEXT_BYTES",
    "MIN_FIELD_BYTES",
    "OVERRIDES",
    "PLAIN_ID_RULE",
    "check_density",
    "check_id",
    "check_message",
    "clip_utf8",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: Ids: message ids, execution ids, write ids, VM, node, token and command ids, in
#: UTF-8 bytes (a 100-character non-ASCII id can be 300). Ours are 20-odd characters
#: and UUIDs 36; an id is echoed in every answer, so it must stay small for every
#: answer to fit in a frame. The one bound of an id everywhere: hostd refuses a
#: longer VM or node id at load, the controller one in a heartbeat (see check_id),
#: so that no VM is listed that no request could name.
MAX_ID_BYTES: Final = 128
#: Names: user, owner, group, environment variable names, labels' keys. Linux
#: user and group names are at most 32 bytes; room for longer directory services.
MAX_NAME_BYTES: Final = 256
#: Paths: Linux's PATH_MAX; a longer path fails in the kernel anyway.
MAX_PATH_BYTES: Final = 4096
#: Any other string (a shutdown message, a page token, a version).
MAX_TEXT_BYTES: Final = 4096
#: Any bytes field without an override (a ping's payload, which the pong echoes).
MAX_BYTES: Final = 64 * KiB
#: Entries of a repeated field or map without an override.
MAX_ITEMS: Final = 1024
#: One argument, one environment value, a shell script (run as ``sh -c SCRIPT``):
#: the kernel refuses a single string over 128 KiB (MAX_ARG_STRLEN) with E2BIG.
MAX_ARG_BYTES: Final = 128 * KiB
MAX_SCRIPT_BYTES: Final = MAX_ARG_BYTES
#: argv entries and environment entries of a command.
MAX_ARGV_ENTRIES: Final = 4096
MAX_ENV_ENTRIES: Final = 4096
#: argv, environment and script together: Linux's usual ARG_MAX (a quarter of the
#: default 8 MiB stack); beyond it exec fails with E2BIG.
MAX_EXEC_ARGS_BYTES: Final = 2 * MiB
#: A command's stdin travels in its one request frame (16 MiB at most): half of
#: it, so that the rest of the request always fits.
MAX_STDIN_BYTES: Final = 8 * MiB
#: One file write request's data: hostd sends 1 MiB pieces; a frame's half.
MAX_FILE_CHUNK_BYTES: Final = 8 * MiB
#: A digest to check (SHA-256 is 32 bytes; room for a longer one).
MAX_DIGEST_BYTES: Final = 64
#: A password: chpasswd reads input lines into a fixed buffer; no real password is this long.
MAX_PASSWORD_BYTES: Final = 1024
#: Supplementary groups of a command's user: Linux's NGROUPS_MAX.
MAX_GROUPS: Final = 65536
#: Entries of one directory listing page (a ListDirectoryRequest's ``page_size`` is capped
#: there by the agent): an answer's bound, which hostd checks a page against.
MAX_LIST_PAGE_ENTRIES: Final = 10_000
#: VMs one fleet command names explicitly.
MAX_TARGETS: Final = 10_000
#: Fields (list entries, map entries, every value) one request message may hold, nested ones
#: too. Parsing costs per field, not per byte: a 16 MiB protobuf body of 2-byte entries (8
#: million empty VM records in a Heartbeat) took the controller 1.3 s and 800 MB before any
#: check could refuse it; a JSON body of ``[{},{},...]`` is alike. The largest real requests
#: (a heartbeat of 1,024 VMs, a command with 4,096 arguments and 4,096 variables) hold tens of
#: thousands; bulk data (file contents, stdin) is one field whatever its size.
MAX_MESSAGE_FIELDS: Final = 128 * 1024
#: An Error's message as the agent sends it: long enough for any of ours (a path
#: and a reason), short enough that every Error answer fits in a frame.
MAX_ERROR_MESSAGE_BYTES: Final = 8 * KiB


@final
@dataclass(frozen=True, slots=True)
class Limit:
    """Bounds of one field; ``None`` keeps the default of that dimension.

    Attributes:
        bytes: size of a string or bytes value (of each item, each map value).
        items: entries of a repeated field or map.
        key_bytes: size of each map key.
    """

    bytes: int | None = None
    items: int | None = None
    key_bytes: int | None = None


def _argv(full_name: str) -> dict[str, Limit]:
    return {full_name: Limit(bytes=MAX_ARG_BYTES, items=MAX_ARGV_ENTRIES)}


def _env(full_name: str) -> dict[str, Limit]:
    return {full_name: Limit(bytes=MAX_ARG_BYTES, items=MAX_ENV_ENTRIES, key_bytes=MAX_NAME_BYTES)}


_A: Final = "limiquantix.agent.v1."
_N: Final = "limiquantix.node.v1."
_C: Final = "limiquantix.compute.v1."

#: For a field whose handler applies its own, clearer limit (hostd's and the
#: controller's whole-file contents: ``resource_exhausted`` with advice to write
#: in ranges); the message that carries it is bounded by the HTTP layer.
LEFT_TO_HANDLER: Final = 2**62

#: Per-field bounds by full field name, where the default by type and name does
#: not fit.
OVERRIDES: Final[Mapping[str, Limit]] = {
    **_argv(_A + "ExecuteRequest.argv"),
    **_env(_A + "ExecuteRequest.env"),
    _A + "ExecuteRequest.command": Limit(bytes=MAX_SCRIPT_BYTES),
    _A + "ExecuteRequest.stdin": Limit(bytes=MAX_STDIN_BYTES),
    _A + "RunAs.groups": Limit(items=MAX_GROUPS),
    _A + "FileWriteRequest.data": Limit(bytes=MAX_FILE_CHUNK_BYTES),
    _A + "FileWriteRequest.expected_sha256": Limit(bytes=MAX_DIGEST_BYTES),
    # The agent's handler refuses a longer one itself (invalid_password), with the
    # rest of what makes a password unusable (a newline, a NUL).
    _A + "ResetPasswordRequest.password": Limit(bytes=LEFT_TO_HANDLER),
    _N + "WriteGuestFileRequest.content": Limit(bytes=LEFT_TO_HANDLER),
    _N + "ResetGuestPasswordRequest.password": Limit(bytes=MAX_PASSWORD_BYTES),
    **_argv(_C + "ExecuteScriptRequest.args"),
    **_env(_C + "ExecuteScriptRequest.environment"),
    _C + "ExecuteScriptRequest.command": Limit(bytes=MAX_SCRIPT_BYTES),
    _C + "ExecuteScriptRequest.stdin": Limit(bytes=MAX_STDIN_BYTES),
    _C + "WriteGuestFileRequest.content": Limit(bytes=LEFT_TO_HANDLER),
    _C + "ResetGuestPasswordRequest.password": Limit(bytes=MAX_PASSWORD_BYTES),
    **_argv(_C + "RunCommandRequest.args"),
    **_env(_C + "RunCommandRequest.environment"),
    _C + "RunCommandRequest.command": Limit(bytes=MAX_SCRIPT_BYTES),
    _C + "RunCommandRequest.vm_ids": Limit(bytes=MAX_ID_BYTES, items=MAX_TARGETS),
}

#: String fields named so hold names (see MAX_NAME_BYTES).
_NAME_FIELDS: Final = frozenset({"name", "user", "username", "owner", "group", "run_as_user"})
#: String fields named so hold paths.
_PATH_FIELDS: Final = frozenset({"path", "working_directory", "shell", "socket_path"})


def _default_string_bytes(name: str) -> int:
    if name == "id" or name.endswith("_id") or name.endswith("_ids"):
        return MAX_ID_BYTES
    if name in _PATH_FIELDS or name.endswith("_path"):
        return MAX_PATH_BYTES
    if name in _NAME_FIELDS:
        return MAX_NAME_BYTES
    return MAX_TEXT_BYTES


def _scalar_bytes(field: FieldDescriptor) -> int | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _default_string_bytes(field.name)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return MAX_BYTES
    return None


@final
@dataclass(frozen=True, slots=True)
class _Rule:
    """How one field is checked; built once per field from the descriptor."""

    name: str
    #: Bound of a string/bytes value (each item, each map value); None: no bound.
    max_bytes: int | None
    #: Bound of the entries of a repeated field or map; None: not repeated.
    max_items: int | None
    #: Map fields: bound of each key (None: not a map or not a string key).
    max_key_bytes: int | None
    is_map: bool
    #: The value is (or holds, for maps) a message to check recursively.
    nested: bool


def _message_type(field: FieldDescriptor) -> Descriptor:
    """A message field's type (the stubs say Optional: it is None for the other field types)."""
    assert field.message_type is not None, field.full_name
    return field.message_type


def _rule(field: FieldDescriptor) -> _Rule:
    override = OVERRIDES.get(field.full_name, Limit())
    is_map = field.type == FieldDescriptor.TYPE_MESSAGE and _message_type(field).GetOptions().map_entry
    value_field = _message_type(field).fields_by_name["value"] if is_map else field
    max_bytes = override.bytes if override.bytes is not None else _scalar_bytes(value_field)
    max_items = None
    if field.is_repeated:
        max_items = override.items if override.items is not None else MAX_ITEMS
    key_bytes = None
    if is_map:
        key_field = _message_type(field).fields_by_name["key"]
        default_key = MAX_NAME_BYTES if _scalar_bytes(key_field) is not None else None
        key_bytes = override.key_bytes if override.key_bytes is not None else default_key
    return _Rule(
        name=field.name,
        max_bytes=max_bytes,
        max_items=max_items,
        max_key_bytes=key_bytes,
        is_map=is_map,
        nested=value_field.type == FieldDescriptor.TYPE_MESSAGE,
    )


def _bounded(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a message type has anything to check (a Timestamp has not)."""
    if descriptor.full_name in seen:
        return False  # a recursive type: its other fields decide
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        if field.is_repeated or _scalar_bytes(field) is not None:
            return True
        if field.type == FieldDescriptor.TYPE_MESSAGE and _bounded(_message_type(field), seen):
            return True
    return False


@functools.cache
def _rules(descriptor: Descriptor) -> dict[int, _Rule]:
    """The rules of a message type's fields that need checking, by number (built once).

    Fields without a rule (numbers, enums, messages with nothing to bound) are
    skipped: the check costs a few microseconds per ping.
    """
    return {
        f.number: _rule(f)
        for f in descriptor.fields
        if f.is_repeated
        or _scalar_bytes(f) is not None
        or (f.type == FieldDescriptor.TYPE_MESSAGE and _bounded(_message_type(f)))
    }


def _size(value: str | bytes) -> int:
    """Size in bytes as it travels: UTF-8 for strings."""
    if isinstance(value, bytes):
        return len(value)
    # Most strings are ASCII: their length is their size, without encoding a copy.
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def _too_big(path: str, size: int, limit: int, unit: str) -> InvalidArgument:
    return InvalidArgument(f"{path} is {size} {unit}; the limit is {limit}", reason="too_large")


def _check_value(path: str, value: Any, max_bytes: int | None) -> None:
    if isinstance(value, Message):
        check_message(value, prefix=f"{path}.")
    elif max_bytes is not None and isinstance(value, (str, bytes)):
        size = _size(value)
        if size > max_bytes:
            raise _too_big(path, size, max_bytes, "bytes")


def check_message(msg: Message, *, prefix: str = "", encoded_size: int | None = None) -> None:
    """Check every set field of ``msg`` (nested, repeated, maps) against its bound.

    Args:
        msg: any request message.
        prefix: prepended to field paths in the error (``"execute."``).
        encoded_size: the serialized size of ``msg`` when known: a message no
            larger than the smallest bound cannot exceed any (a ping), and is
            passed without looking at its fields.

    Raises:
        InvalidArgument: reason ``too_large``; the message names the field's
            path (``execute.argv[3]``), its size and the limit.
    """
    if encoded_size is not None and encoded_size <= _SMALLEST_BOUND:
        return
    rules = _rules(msg.DESCRIPTOR)
    for field, value in msg.ListFields():
        rule = rules.get(field.number)
        if rule is None:
            continue
        path = prefix + rule.name
        if rule.max_items is None:
            _check_value(path, value, rule.max_bytes)
            continue
        if len(value) > rule.max_items:
            raise _too_big(path, len(value), rule.max_items, "entries")
        if rule.is_map:
            for key, item in value.items():
                if rule.max_key_bytes is not None and _size(key) > rule.max_key_bytes:
                    raise _too_big(f"{path} key", _size(key), rule.max_key_bytes, "bytes")
                # Keys within their bound name the entry; others (numbers) are short.
                _check_value(f"{path}[{key!r}]", item, rule.max_bytes)
        elif rule.nested or rule.max_bytes is not None:
            for i, item in enumerate(value):
                _check_value(f"{path}[{i}]", item, rule.max_bytes)
    extra = _EXTRA_CHECKS.get(msg.DESCRIPTOR.full_name)
    if extra is not None:
        extra(msg, prefix)


def _check_exec_total(msg: Any, prefix: str) -> None:
    """argv, environment and script together within ARG_MAX (see MAX_EXEC_ARGS_BYTES)."""
    total = _size(msg.command) + sum(map(_size, msg.argv)) + sum(_size(k) + _size(v) + 2 for k, v in msg.env.items())
    if total > MAX_EXEC_ARGS_BYTES:
        raise InvalidArgument(
            f"{prefix}argv, env and command are {total} bytes together; the limit is {MAX_EXEC_ARGS_BYTES}",
            reason="too_large",
        )


#: Checks that span several fields of one message type.
_EXTRA_CHECKS: Final[Mapping[str, Callable[[Any, str], None]]] = {
    _A + "ExecuteRequest": _check_exec_total,
}


#: No field of a message this small (serialized) can exceed its bound.
_SMALLEST_BOUND: Final = min(
    MAX_ITEMS,
    MAX_BYTES,
    MAX_TEXT_BYTES,
    MAX_NAME_BYTES,
    MAX_ID_BYTES,
    MAX_PATH_BYTES,
    *(b for limit in OVERRIDES.values() for b in (limit.bytes, limit.items, limit.key_bytes) if b is not None),
)


def check_density(data: bytes | bytearray, descriptor: Descriptor, *, json: bool) -> None:
    """Refuse a request body that holds more than :data:`MAX_MESSAGE_FIELDS` fields, before it
    is parsed (a parse costs per field: see there).

    A body too small to hold that many (a protobuf field takes :data:`MIN_FIELD_BYTES` at
    least, a JSON value 1) passes at once. Protobuf: the wire format is walked
    (:class:`FieldWalk`), into the nested messages the descriptor names, and left at the first
    field over the bound (~0.5-1 us a field, in Python: 0.1 s at most). JSON: an upper bound of
    its values, the number of ``,``, ``[`` and ``{`` (counted in C; strings that hold them count
    too, which real requests' text keeps far below the bound; bulk data is base64).

    Raises:
        InvalidArgument: reason ``too_large``, the body is over the bound, or its protobuf is
            malformed where the walk reads it (the parser would refuse it too).
    """
    if len(data) <= (MAX_MESSAGE_FIELDS if json else MIN_FIELD_BYTES * MAX_MESSAGE_FIELDS):
        return
    if json:
        fields = data.count(b",") + data.count(b"[") + data.count(b"{")
    else:
        walk = FieldWalk(data, descriptor)
        walk.advance(MAX_MESSAGE_FIELDS + 1)
        fields = walk.fields
    if fields > MAX_MESSAGE_FIELDS:
        raise InvalidArgument(
            f"the request holds over {MAX_MESSAGE_FIELDS} fields (list and map entries, values); the limit is"
            f" {MAX_MESSAGE_FIELDS}",
            reason="too_large",
        )


#: The fewest bytes a protobuf field takes on the wire (a key and a one-byte value or length):
#: a message of ``n`` bytes holds at most ``n // MIN_FIELD_BYTES`` fields, so one no larger than
#: twice a bound of fields need not be walked.
MIN_FIELD_BYTES: Final = 2


@final
class FieldWalk:
    """A count of a serialized message's fields (list and map entries, values, nested messages'
    fields: each field on the wire), read from its wire format without parsing it, in steps
    (:meth:`advance`): a caller bounds the count and stops at the first field over its bound,
    and one on an event loop walks a slice at a time (hostd, a guest's reports).

    Only the nested messages ``descriptor`` names are entered; an unknown field, a bytes or
    string value, a packed list is one field.

    One loop over a stack of (end, nested types) frames: no call or copy per field, which at
    millions of fields is what the walk costs (~0.5 us a field here).
    """

    __slots__ = ("_data", "_end", "_nested", "_pos", "_stack", "done", "fields")

    def __init__(self, data: bytes | bytearray | memoryview, descriptor: Descriptor) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data)
        self._nested = _nested_types(descriptor)
        self._stack: list[tuple[int, dict[int, Descriptor]]] = []
        #: Fields walked so far.
        self.fields = 0
        #: Whether the message's end was reached (:attr:`fields` is its count).
        self.done = False

    def advance(self, fields: int) -> bool:
        """Walk at most ``fields`` more fields; return :attr:`done`.

        Raises:
            InvalidArgument: the wire format is malformed where the walk reads it (a field
                running past its end, a truncated varint, a wire type no message holds); the
                parser would refuse it too.
        """
        data, pos, end, nested, stack = self._data, self._pos, self._end, self._nested, self._stack
        left = fields
        try:
            while True:
                while pos >= end:
                    if pos > end:
                        raise InvalidArgument("malformed protobuf: a field runs past its end")
                    if not stack:
                        self.done = True
                        return True
                    end, nested = stack.pop()
                if left <= 0:
                    return False
                left -= 1
                key = data[pos]
                pos += 1
                if key >= 0x80:
                    key, pos = _wire_varint(data, pos - 1)
                wire_type = key & 7
                if wire_type == 2:
                    length = data[pos] if pos < end else 0x80
                    if length < 0x80:
                        pos += 1
                    else:
                        length, pos = _wire_varint(data, pos)
                    inner = nested.get(key >> 3)
                    if inner is not None and length:
                        stack.append((end, nested))
                        end, nested = pos + length, _nested_types(inner)
                        if end > stack[-1][0]:
                            raise InvalidArgument("malformed protobuf: a field runs past its end")
                    else:
                        pos += length
                elif wire_type == 0:
                    _, pos = _wire_varint(data, pos)
                elif wire_type == 1:
                    pos += 8
                elif wire_type == 5:
                    pos += 4
                else:
                    raise InvalidArgument(f"malformed protobuf: wire type {wire_type}")
        finally:
            self._pos, self._end, self._nested = pos, end, nested
            self.fields += fields - left


@functools.cache
def _nested_types(descriptor: Descriptor) -> dict[int, Descriptor]:
    """Field number → message type, for a message type's message fields (map entries too)."""
    return {f.number: _message_type(f) for f in descriptor.fields if f.type == FieldDescriptor.TYPE_MESSAGE}


def _wire_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    try:
        return read_varint(data, pos)
    except ValueError:
        raise InvalidArgument("malformed protobuf: a truncated varint") from None


#: A plain id: ASCII letters and digits, then also ``_.:@+-``. What a host's
#: VM ids (file names, URLs, metrics labels too) and node ids (host names) are.
_PLAIN_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]*")
PLAIN_ID_RULE: Final = f"1-{MAX_ID_BYTES} letters, digits or _.:@+- (not first)"


def check_id(value: str, what: str, *, plain: bool = False) -> None:
    """Refuse what cannot be an id: empty, over :data:`MAX_ID_BYTES` of UTF-8, or
    holding a space, a control or another unprintable character.

    The rule for every id kept or listed (VM, node, token and command ids), by
    hostd and the controller alike; a request's id fields are bounded by the same
    :data:`MAX_ID_BYTES` in :func:`check_message`, so that whatever is listed can
    be named in a request. Printable, non-space characters only because ids land
    in operators' terminals, logs and audit rows; any other character (non-ASCII
    letters too) is allowed, as libvirt allows almost anything in a domain name.

    ``plain``: also only :data:`PLAIN_ID_RULE`'s characters, for ids that become
    file names, URLs and metrics labels (hostd's VM ids, node ids).

    Raises:
        InvalidArgument: naming ``what`` and the id (escaped, cut); reason
            ``too_large`` when it is only too long.
    """
    if not value:
        raise InvalidArgument(f"{what} is empty; an id is 1-{MAX_ID_BYTES} bytes")
    size = _size(value)
    if size > MAX_ID_BYTES:
        shown = clip_utf8(value, 32)
        raise InvalidArgument(f"{what} {shown!r}... is {size} bytes; the limit is {MAX_ID_BYTES}", reason="too_large")
    # isprintable() is False for controls, separators (but the ASCII space), format
    # characters and lone surrogates.
    if plain:
        if _PLAIN_ID_RE.fullmatch(value) is None:
            raise InvalidArgument(f"{what} {value!r} must be {PLAIN_ID_RULE}")
    elif " " in value or not value.isprintable():
        raise InvalidArgument(f"{what} {value!r} must be printable, without spaces")


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character boundary."""
    if len(text) <= max_bytes // 4 or _size(text) <= max_bytes:
        return text
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")
