"""Sans-IO pieces of the wire: message codecs, compression, envelopes.

Used alike by the server (:mod:`.server`) and by the client (:mod:`._client`); nothing
here does I/O or knows an event loop, so the same bytes rules hold on both sides.

Envelopes are Connect's streaming frames (and gRPC's length-prefixed messages, which
have the same layout): a flags byte, the message length as a big-endian u32, the
message. :class:`EnvelopeReader` takes bytes as they arrive and returns whole
envelopes, refusing a claimed length over its limit before buffering it.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import itertools
import json
import struct
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, final

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .. import errors

__all__ = [
    "ENVELOPE_HEADER",
    "FLAG_COMPRESSED",
    "FLAG_END_STREAM",
    "GZIP_LEVEL",
    "JSON",
    "MAX_DETAIL_CHARS",
    "PROTO",
    "SAMPLE_BYTES",
    "SAMPLE_FROM_BYTES",
    "SUPPORTED_ENCODINGS",
    "Codec",
    "EnvelopeReader",
    "accepts_gzip",
    "compressible",
    "decode_json",
    "encode_envelope",
    "encode_json",
    "gunzip",
    "gzip_bytes",
    "request_gzipped",
]

#: Envelope header: flags byte, then the message length as a big-endian u32.
ENVELOPE_HEADER: Final = struct.Struct(">BI")
FLAG_COMPRESSED: Final = 0x01
#: Connect's end-of-stream message (gRPC-Web calls the same bit "trailers").
FLAG_END_STREAM: Final = 0x02
#: gzip level: hosts talk over a LAN, where CPU (hostd's budget is 15 % of a core for
#: 500 VMs) is scarcer than bandwidth. Level 1 gets most of the ratio on JSON for a
#: fraction of level 6's time.
GZIP_LEVEL: Final = 1
#: Payloads from this size on are sampled before they are gzipped (:func:`compressible`):
#: below it, gzip is cheap whatever the bytes.
SAMPLE_FROM_BYTES: Final = 256 * 1024
#: Each of the three samples (start, middle, end): enough for gzip's window to see the data.
SAMPLE_BYTES: Final = 16 * 1024
#: Samples that gzip shrinks by less than this share: the payload goes uncompressed.
MIN_GZIP_SAVING: Final = 0.1
#: Parser messages quote the peer's own input; cap them.
MAX_DETAIL_CHARS: Final = 200
SUPPORTED_ENCODINGS: Final = "gzip, identity"


# ---------------------------------------------------------------- codecs


def encode_json(msg: Message) -> bytes:
    """The proto3 JSON mapping: camelCase names, fields at their defaults included
    (``"connected": false``), so that clients and curl users see every field."""
    data = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def decode_json(data: bytes | bytearray, cls: type[Message]) -> Message:
    """The message in ``data``; a bytearray (a request body as read) is emptied once
    it is text, so that a large body is not held through the parse's own copies.
    Unknown fields are ignored (as connect-go does: newer clients keep working).

    What it costs: ``json.loads`` and one walk of the tree beside the descriptor
    (:func:`_prepare`), which takes every string field's text out of what
    ``json_format.ParseDict`` sees and sets it on the message afterwards. json_format
    runs a regular expression over each string value, looking for lone surrogates
    (about 60 ns a character: a 16 MiB string took a second of CPU, GIL held, before
    any field limit was checked), and spends microseconds per item of a repeated
    field or map (16 MiB of one-letter ``args`` took 13 s). The walk checks strings
    for lone surrogates itself and hands repeated strings and string maps to the
    message in one call; bench/json_decode_bench.py has the figures.

    Raises:
        InvalidArgument: an empty body (not a JSON object: send ``{}``); a bytes field
            that is not base64 (named; proto3 JSON: standard or URL-safe, padding optional);
            a string holding a lone surrogate (named); an item of a repeated string field
            or a value of a string map that is not a string (named).
        json_format.ParseError: not JSON for ``cls`` (duplicate keys included).
        UnicodeDecodeError: not UTF-8.
    """
    if not data:
        raise errors.InvalidArgument("empty request body is not a JSON object (send {} for an empty message)")
    text = data.decode("utf-8")
    if isinstance(data, bytearray):
        data.clear()
    # json_format.Parse, in two steps so that the text goes before the message is built.
    try:
        tree = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise json_format.ParseError(f"Failed to load JSON: {exc}.") from exc
    del text
    msg = cls()
    deferred: list[_Deferred] = []
    _prepare(tree, msg.DESCRIPTOR, "", (), deferred)
    json_format.ParseDict(tree, msg, ignore_unknown_fields=True)
    for deferral in deferred:
        deferral.apply(msg)
    return msg


# proto3 JSON bytes: standard or URL-safe base64, padded or not. json_format's own
# decoder drops whatever is not in the alphabet ("hello world\n" became garbage bytes).
_BASE64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"

#: A way from the top message to a nested one: (field name, index or map key); None
#: for a singular message field.
_Step = tuple[str, int | str | None]


@final
@dataclass(frozen=True, slots=True)
class _Deferred:
    """A string field's value, set on the message once json_format has built it.

    ``kind`` says how: ``set`` a singular field (json_format set the placeholder
    ``""``, so presence and oneof checks are its own), ``list`` a repeated field's
    items (strings, integers), ``map`` a string-to-string map's entries (json_format
    saw them empty). ``label`` names the field in errors.
    """

    at: tuple[_Step, ...]
    name: str
    kind: str
    value: Any
    label: str

    def apply(self, msg: Any) -> None:
        """Raises: json_format.ParseError: an integer out of its field's range."""
        for name, index in self.at:
            msg = getattr(msg, name)
            if index is not None:
                msg = msg[index]
        if self.kind == "set":
            setattr(msg, self.name, self.value)
        elif self.kind == "list":
            try:
                getattr(msg, self.name).extend(self.value)
            except ValueError as exc:  # as json_format says it ("Value out of range: 4294967296")
                raise json_format.ParseError(f"Failed to parse {self.label} field: {exc}.") from None
        else:
            getattr(msg, self.name).update(self.value)


@functools.cache
def _json_fields(desc: Any) -> dict[str, Any]:
    """A message type's fields by proto name and by JSON name (json_format takes both)."""
    return {**desc.fields_by_name, **{f.json_name: f for f in desc.fields}}


def _prepare(tree: Any, desc: Any, path: str, at: tuple[_Step, ...] | None, deferred: list[_Deferred]) -> None:
    """Check what json_format checks badly or slowly, and take string values out of its way.

    Walks the parsed JSON beside the message's descriptor (nested messages, repeated
    fields and map values included). Bytes must be strict base64; strings must not
    hold a lone surrogate. String values are replaced in ``tree`` by what costs
    json_format nothing (``""``, ``[]``, ``{}``) and recorded in ``deferred``, to be
    set on the message after ``ParseDict``. ``at`` is how to reach this message from
    the top one, None where the way is not known for sure (then values are only
    checked). Everything else (types, numbers, enums, well-known types) is left
    to json_format.

    Raises:
        errors.InvalidArgument: a bytes field that is not strict base64; a string
            with a lone surrogate; a repeated string item or string map value that
            is not a string.
    """
    if not isinstance(tree, dict) or desc.full_name.startswith("google.protobuf."):
        return
    fields = _json_fields(desc)
    spelled: dict[str, str] = {}
    for key in list(tree):
        field = fields.get(key)
        if field is None:
            continue
        first = spelled.setdefault(field.name, key)
        if first != key:
            # json_format takes both spellings, in an order-dependent way (the last
            # clears a repeated field, merges a message, nulls what the first set);
            # protojson (connect-go) refuses them, and so do we.
            raise errors.InvalidArgument(
                f"{path + '.' if path else ''}{field.json_name} is given twice, as {first!r} and {key!r}"
            )
        value = tree[key]
        if value is None:
            continue
        name = f"{path}.{field.json_name}" if path else field.json_name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if isinstance(value, dict):
                _prepare_map(tree, key, value, field, name, at, deferred)
        elif field.is_repeated and isinstance(value, list):
            if field.type == field.TYPE_STRING:
                _check_texts(value, functools.partial(_item_name, name))
                if at is not None:
                    tree[key] = []
                    deferred.append(_Deferred(at, field.name, "list", value, name))
                continue
            if field.cpp_type in _INTEGER_TYPES:
                # json_format converts and appends numbers one at a time, at 3 µs each.
                numbers = _integers(value, name)
                if at is not None:
                    tree[key] = []
                    deferred.append(_Deferred(at, field.name, "list", numbers, name))
                continue
            for i, item in enumerate(value):
                _prepare_value(item, field, f"{name}[{i}]", None if at is None else (*at, (field.name, i)), deferred)
        elif field.type == field.TYPE_STRING:
            if isinstance(value, str):  # anything else: json_format says what is wrong
                _check_text(value, name)
                if at is not None and value:
                    tree[key] = ""
                    deferred.append(_Deferred(at, field.name, "set", value, name))
        else:
            _prepare_value(value, field, name, None if at is None else (*at, (field.name, None)), deferred)


def _prepare_map(
    tree: dict[str, Any],
    key: str,
    value: dict[str, Any],
    field: Any,
    name: str,
    at: tuple[_Step, ...] | None,
    deferred: list[_Deferred],
) -> None:
    """One map field's JSON object (see :func:`_prepare`).

    Raises:
        errors.InvalidArgument: as :func:`_prepare`.
    """
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    string_keys = key_field.type == key_field.TYPE_STRING
    string_values = value_field.type == value_field.TYPE_STRING
    if string_keys:
        _check_texts(value.keys(), lambda i: f"{name} key {_nth_key(value, i)!r}")
    if string_values:
        _check_texts(value.values(), lambda i: f"{name}[{_nth_key(value, i)!r}]")
    elif value_field.message_type is not None or value_field.type == value_field.TYPE_BYTES:
        for k, v in value.items():
            # The message of a string key is reached by the key as it is; other keys are
            # converted by json_format (numbers, booleans): only checked there.
            way = (*at, (field.name, k)) if at is not None and string_keys else None
            _prepare_value(v, value_field, f"{name}[{k[:MAX_DETAIL_CHARS]!r}]", way, deferred)
    if at is not None and string_keys and value_field.type == value_field.TYPE_STRING:
        tree[key] = {}
        deferred.append(_Deferred(at, field.name, "map", value, name))


def _prepare_value(value: Any, field: Any, name: str, at: tuple[_Step, ...] | None, deferred: list[_Deferred]) -> None:
    """One value of a bytes or message ``field`` (see :func:`_prepare`); others are json_format's.

    Raises:
        errors.InvalidArgument: as :func:`_prepare`.
    """
    if field.type == field.TYPE_BYTES:
        if isinstance(value, str) and not _is_base64(value):
            raise errors.InvalidArgument(
                f"{name} is not base64: a bytes field in JSON is base64 (standard or URL-safe, padding optional;"
                " no spaces or newlines)"
            )
    elif field.message_type is not None:
        _prepare(value, field.message_type, name, at, deferred)


def _text_error(value: Any) -> str | None:
    """What is wrong with a string field's value (None: nothing).

    JSON can carry what UTF-8 cannot: a lone surrogate (a ``\\ud800`` escape without its
    pair). json.loads joins escaped pairs, so any surrogate left in a string is lone, and
    encoding finds it exactly, where json_format's regular expression took 60 ns a character.
    """
    if type(value) is not str:
        return f"is {'null' if value is None else type(value).__name__}, not a string"
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"is not valid text: a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x}) at character {exc.start};"
            " a \\uD800-\\uDFFF escape in JSON needs its pair"
        )
    return None


def _check_text(value: Any, name: str) -> None:
    """Raises: errors.InvalidArgument: ``value`` is no string or has a lone surrogate (see :func:`_text_error`)."""
    problem = _text_error(value)
    if problem is not None:
        raise errors.InvalidArgument(f"{name} {problem}")


def _item_name(name: str, i: int) -> str:
    return f"{name}[{i}]"


def _check_texts(values: Collection[Any], name: Callable[[int], str]) -> None:
    """Every item of ``values`` as :func:`_check_text`; ``name(i)`` names the first that
    fails (the i-th). The usual case (all ASCII strings) runs in C loops.

    Raises:
        errors.InvalidArgument: see :func:`_check_text`.
    """
    if set(map(type, values)) <= _STR and all(map(str.isascii, values)):
        return
    for i, value in enumerate(values):
        problem = _text_error(value)
        if problem is not None:
            raise errors.InvalidArgument(f"{name(i)} {problem}")


_STR: Final = frozenset({str})
_INT: Final = frozenset({int})
_INTEGER_TYPES: Final = frozenset(
    {FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64}
    | {FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64}
)


def _integers(values: list[Any], name: str) -> list[int]:
    """A repeated integer field's JSON items as integers, by json_format's rules (numbers;
    integral floats; decimal strings, as proto3 JSON writes 64-bit values); ranges are the
    message's to check. The usual case (all JSON integers) is the list as it is.

    Raises:
        json_format.ParseError: an item that is no integer (named).
    """
    types = set(map(type, values))
    if types <= _INT:
        return values
    if types <= _STR and " " not in "".join(values):  # int() takes spaces, json_format does not
        with contextlib.suppress(ValueError):  # "1e3", "2.0", "x": one at a time below
            return list(map(int, values))
    out = []
    for i, value in enumerate(values):
        try:
            out.append(_integer(value))
        except (json_format.ParseError, ValueError, TypeError) as exc:
            raise json_format.ParseError(f"Failed to parse {name}[{i}]: {str(exc)[:MAX_DETAIL_CHARS]}.") from None
    return out


def _integer(value: Any) -> int:
    """One integer field value, as json_format's _ConvertInteger takes it.

    Raises:
        json_format.ParseError, ValueError: not an integer.
        TypeError: not a number or a string (null, a list, an object).
    """
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise json_format.ParseError(f"Bool value {value} is not acceptable for integer field")
    if isinstance(value, float):
        if not value.is_integer():
            raise json_format.ParseError(f"Couldn't parse integer: {value}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} is not an integer")
    if " " in value:
        raise json_format.ParseError(f'Couldn\'t parse integer: "{value[:MAX_DETAIL_CHARS]}"')
    try:
        return int(value)
    except ValueError as exc:
        try:
            number = float(value)  # "1e3" and "2.0" are integers too
        except ValueError:
            raise exc from None  # int's own complaint, as json_format gives it
        if not number.is_integer():
            raise json_format.ParseError(f'Couldn\'t parse non-integer string: "{value[:MAX_DETAIL_CHARS]}"') from None
        return int(number)


def _nth_key(mapping: dict[str, Any], i: int) -> str:
    """The i-th key of ``mapping``, cut for an error message (looked up on errors only)."""
    return next(itertools.islice(mapping, i, None))[:MAX_DETAIL_CHARS]


def _is_base64(value: str) -> bool:
    """Standard or URL-safe base64, at most two ``=`` of padding, and a length that is some
    bytes' (padded: a multiple of 4; unpadded: never one character over, 6 bits are no
    byte). In C loops: a regular expression took 9 ns a character."""
    data = value.rstrip("=")
    padding = len(value) - len(data)
    if padding > 2 or not data.isascii() or data.encode("ascii").translate(None, _BASE64_ALPHABET):
        return False
    return len(value) % 4 == 0 if padding else len(value) % 4 != 1


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's keys, each once (as json_format.Parse insists).

    Raises:
        json_format.ParseError: a key given twice (the first one named).
    """
    out = dict(pairs)  # in C: a loop here cost a µs per key of a million-key map
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise json_format.ParseError(f"Failed to load JSON: duplicate key {key[:MAX_DETAIL_CHARS]!r}.")
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs")  # pragma: no cover


def _encode_proto(msg: Message) -> bytes:
    return msg.SerializeToString()


def _decode_proto(data: bytes | bytearray, cls: type[Message]) -> Message:
    msg = cls()
    msg.ParseFromString(bytes(data) if isinstance(data, bytearray) else data)
    return msg


@final
@dataclass(frozen=True)
class Codec:
    """A message codec: ``name`` is the media type's suffix (``json``, ``proto``)."""

    name: str
    encode: Callable[[Message], bytes]
    decode: Callable[[bytes | bytearray, type[Message]], Message]


JSON: Final = Codec("json", encode_json, decode_json)
PROTO: Final = Codec("proto", _encode_proto, _decode_proto)


# ---------------------------------------------------------------- compression


def request_gzipped(value: str | None) -> bool:
    """Whether a ``Content-Encoding`` (or ``Connect-Content-Encoding``) says gzip (True)
    or identity (False).

    Raises:
        Unimplemented: any other encoding (Connect's code for it).
    """
    name = (value or "identity").strip().lower()
    if name == "identity":
        return False
    if name == "gzip":
        return True
    raise errors.Unimplemented(
        f"unknown compression {name[:MAX_DETAIL_CHARS]!r}: supported encodings are {SUPPORTED_ENCODINGS}"
    )


def accepts_gzip(accept: str | None, request_encoding: str | None) -> bool:
    """Whether the peer accepts gzip, from its ``Accept-Encoding`` (or Connect's
    streaming variant). Spec: without one, the peer accepts what it sent with."""
    if accept is None:
        return (request_encoding or "").strip().lower() == "gzip"
    for item in accept.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() == "gzip":
            quality = params.strip().lower()
            return not (quality.startswith("q=") and quality[2:].strip().strip("0.") == "")
    return False


def gunzip(data: bytes | bytearray, limit: int) -> bytes:
    """Decompress gzip ``data`` (members concatenated), never beyond ``limit`` bytes.

    Raises:
        ResourceExhausted: the result would exceed ``limit``.
        InvalidArgument: ``data`` is not complete, valid gzip.
    """
    out = bytearray()
    rest = bytes(data)
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            # Ask for one byte more than allowed: getting it means "too big",
            # without ever inflating more than limit + 1 bytes.
            out += inflater.decompress(rest, limit - len(out) + 1)
            if len(out) > limit:
                raise errors.ResourceExhausted(f"decompressed message larger than {limit} bytes")
            if not inflater.eof:
                raise errors.InvalidArgument("truncated gzip data")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise errors.InvalidArgument(f"malformed gzip data: {exc}") from exc
    return bytes(out)


def compressible(data: bytes | bytearray) -> bool:
    """Whether gzip is worth running on ``data``: true below :data:`SAMPLE_FROM_BYTES`, else
    when three samples of it shrink by at least :data:`MIN_GZIP_SAVING`.

    Files that are already compressed or random (archives, images, encrypted data) do not
    shrink, and gzipping 32 MiB of them cost hostd and the controller each a second of CPU per
    ReadGuestFile (bench/rpc_bench.py's read ran at 3 to 7 MiB/s): they go as they are.
    """
    size = len(data)
    if size < SAMPLE_FROM_BYTES:
        return True
    view = memoryview(data)
    packed = sum(
        len(zlib.compress(view[at : at + SAMPLE_BYTES], GZIP_LEVEL)) for at in (0, size // 2, size - SAMPLE_BYTES)
    )
    return packed <= (1 - MIN_GZIP_SAVING) * 3 * SAMPLE_BYTES


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzipped at :data:`GZIP_LEVEL` (mtime 0: the same input, the same bytes)."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


# ---------------------------------------------------------------- envelopes


def encode_envelope(flags: int, data: bytes) -> bytes:
    """One envelope: header and message."""
    return ENVELOPE_HEADER.pack(flags, len(data)) + data


@final
class EnvelopeReader:
    """Whole envelopes out of bytes fed as they arrive.

    Args:
        limit: the largest message accepted; a header claiming more is refused
            at once, before a byte of it is buffered.
        allowed_flags: flag bits a message may carry (a server reading requests
            allows only :data:`FLAG_COMPRESSED`; a client reading a stream also
            :data:`FLAG_END_STREAM`).
        compressed_ok: whether the stream said it compresses messages (a
            compressed message in a stream that did not is refused).

    A first byte that is no valid flags value is the mark of a body that is not
    enveloped at all (a bare JSON message starts with ``{``, 0x7b): that is
    ``invalid_argument`` saying so, never a length read out of the JSON text.
    """

    def __init__(self, *, limit: int, allowed_flags: int, compressed_ok: bool = True) -> None:
        self.limit = limit
        self.allowed_flags = allowed_flags
        self.compressed_ok = compressed_ok
        self._buf = bytearray()
        self.count = 0

    def feed(self, data: bytes | bytearray) -> list[tuple[int, bytes]]:
        """Add ``data``; return the envelopes now complete, as ``(flags, message)``.

        Raises:
            InvalidArgument: flags that are not allowed (the body is not enveloped),
                a compressed message where none may be.
            ResourceExhausted: a header claiming more than ``limit`` bytes.
        """
        self._buf += data
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        pos = 0
        while len(buf) > pos:
            # Flags first, from the first byte alone: a body that is not enveloped has
            # text where the length would be (and may be shorter than a header).
            flags = buf[pos]
            if flags & ~self.allowed_flags:
                if self.count == 0 and pos == 0 and flags & ~(FLAG_COMPRESSED | FLAG_END_STREAM):
                    raise errors.InvalidArgument(
                        f"the envelope is missing: a streaming message starts with a flags byte and a 4-byte "
                        f"big-endian length, and this body starts with 0x{flags:02x}"
                        + (" (a bare JSON message?)" if flags == ord("{") else ""),
                        reason="missing_envelope",
                    )
                raise errors.InvalidArgument(f"invalid envelope flags 0x{flags:02x}")
            if flags & FLAG_COMPRESSED and not self.compressed_ok:
                raise errors.InvalidArgument("compressed message without Connect-Content-Encoding")
            if len(buf) - pos < ENVELOPE_HEADER.size:
                break
            _, length = ENVELOPE_HEADER.unpack_from(buf, pos)
            if length > self.limit:  # from the header alone, before buffering anything
                raise errors.ResourceExhausted(f"message larger than {self.limit} bytes")
            end = pos + ENVELOPE_HEADER.size + length
            if end > len(buf):
                break
            out.append((flags, bytes(buf[pos + ENVELOPE_HEADER.size : end])))
            self.count += 1
            pos = end
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an envelope not yet complete (nonzero at the end: truncated)."""
        return len(self._buf)
