"""AgentMessage <-> frame bytes: the message layer over :mod:`._framing`."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from typing import Final

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from ._framing import FLAG_SYNC, MAX_FRAME_BYTES, Frame, encode_frame
from ._gen import agent_pb2 as pb
from ._varint import read_varint

__all__ = [
    "MAX_ENVELOPE_FIELDS",
    "SYNC_PAYLOADS",
    "BadMessage",
    "encode_message",
    "enum_name",
    "new_message",
    "new_message_id",
    "parse_frame",
    "peek_message",
    "set_timestamp",
    "set_timestamp_ns",
]

#: Payload kinds sent in SYNC frames: they open a connection (see framing.py).
SYNC_PAYLOADS: Final = frozenset({"hello", "hello_response", "agent_ready"})


class BadMessage(ValueError):
    """A frame whose payload is not a usable AgentMessage."""


# A random per-process prefix and a counter: unique without a getrandom()
# syscall per message (the prefix is re-drawn in a forked child).
_id_prefix = secrets.token_hex(8)
_id_counter = itertools.count(1)


def _reseed_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = secrets.token_hex(8)
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


def new_message_id() -> str:
    """An id unique across processes and time (64 random bits + a counter)."""
    return f"{_id_prefix}{next(_id_counter):x}"


def new_message(message_id: str | None = None, **payload: object) -> pb.AgentMessage:
    """Build an AgentMessage with one payload field set, stamped with the time.

    ``new_message(ping=pb.PingRequest())`` or, for a response,
    ``new_message(request.message_id, pong=...)``.
    """
    msg = pb.AgentMessage(message_id=message_id or new_message_id(), **payload)  # type: ignore[arg-type]
    set_timestamp_ns(msg.timestamp, time.time_ns())
    return msg


def set_timestamp_ns(into: Timestamp, ns: int) -> None:
    """Set ``into`` to ``ns`` nanoseconds since the epoch (``time.time_ns()``, ``st_mtime_ns``)."""
    into.seconds, into.nanos = divmod(ns, 1_000_000_000)


def set_timestamp(into: Timestamp, seconds: float) -> None:
    """Set ``into`` to ``seconds`` since the epoch (``time.time()``), to the nearest nanosecond."""
    set_timestamp_ns(into, round(seconds * 1e9))


def encode_message(msg: pb.AgentMessage, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Serialize ``msg`` into one frame; SYNC-flagged when it opens a connection.

    Raises:
        FrameTooLarge: the serialized message exceeds ``max_frame_bytes``.
    """
    flags = FLAG_SYNC if msg.WhichOneof("payload") in SYNC_PAYLOADS else 0
    return encode_frame(msg.SerializeToString(), flags=flags, max_frame_bytes=max_frame_bytes)


def parse_frame(frame: Frame) -> pb.AgentMessage:
    """Decode a frame's payload.

    Raises:
        BadMessage: the payload is not an AgentMessage, or has no message_id.
    """
    msg = pb.AgentMessage()
    try:
        msg.ParseFromString(frame.payload)
    except DecodeError as exc:
        raise BadMessage(f"undecodable payload of {len(frame.payload)} bytes") from exc
    if not msg.message_id:
        raise BadMessage("message without message_id")
    return msg


#: Top-level fields :func:`peek_message` reads before it calls a payload not an AgentMessage. A
#: message has three (id, timestamp, payload); each field is read in Python, so a payload of
#: millions of tiny top-level fields must not be read to its end.
MAX_ENVELOPE_FIELDS: Final = 16
_MESSAGE_ID_FIELD: Final = pb.AgentMessage.DESCRIPTOR.fields_by_name["message_id"].number
_PAYLOAD_KINDS: Final = {f.number: f.name for f in pb.AgentMessage.DESCRIPTOR.oneofs_by_name["payload"].fields}


def peek_message(payload: bytes | bytearray | memoryview) -> tuple[str, str | None]:
    """An AgentMessage's ``message_id`` and payload kind (``"telemetry"``; None when none is
    set), read from the top level of its bytes without parsing the payload: what a reader
    decides by before it pays for the parse (a guest's 16 MiB of 2-byte list entries costs
    the parser seconds of CPU and a GiB of memory; see protocol/_agentclient.py).

    The same answers as :func:`parse_frame` gives for a well-formed message (the last
    occurrence of the id, and of a oneof member, wins).

    Raises:
        BadMessage: not an AgentMessage's wire format at the top level, more than
            :data:`MAX_ENVELOPE_FIELDS` top-level fields, or an id that is not UTF-8.
    """
    view = memoryview(payload)
    end = len(view)
    pos = 0
    message_id = b""
    kind: str | None = None
    for _ in range(MAX_ENVELOPE_FIELDS):
        if pos == end:
            break
        key, pos = _varint(view, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _varint(view, pos)
            start, pos = pos, pos + length
            if pos <= end:
                if number == _MESSAGE_ID_FIELD:
                    message_id = bytes(view[start:pos])
                elif number in _PAYLOAD_KINDS:
                    kind = _PAYLOAD_KINDS[number]
        else:
            raise BadMessage(f"undecodable payload of {end} bytes (wire type {wire_type} at the top level)")
        if pos > end:
            raise BadMessage(f"undecodable payload of {end} bytes (a field runs past its end)")
    else:
        if pos != end:
            raise BadMessage(f"payload of {end} bytes has over {MAX_ENVELOPE_FIELDS} top-level fields")
    try:
        return message_id.decode(), kind
    except UnicodeDecodeError:
        raise BadMessage(f"undecodable payload of {end} bytes (message_id is not UTF-8)") from None


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it.

    Raises:
        BadMessage: it runs past the end or over 10 bytes.
    """
    try:
        return read_varint(view, pos)
    except ValueError:
        raise BadMessage(f"undecodable payload of {len(view)} bytes (a truncated varint)") from None


def enum_name(enum_type: EnumTypeWrapper, value: int) -> str:
    """``SHUTDOWN_MODE_REBOOT`` → ``reboot``; a number outside the schema → ``"99"``.

    proto3 enums are open: a peer (a newer agent, or a hostile guest) may send
    any number, and the parsed message keeps it. Code that names a received
    value must not fail on one it does not know (``Name()`` raises ValueError),
    so it goes through here and keeps the number.
    """
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(_enum_prefix(enum_type)).lower()


def _enum_prefix(enum_type: EnumTypeWrapper) -> str:
    # proto style: the values of enum FooBar are FOO_BAR_*.
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.DESCRIPTOR.name).upper() + "_"
