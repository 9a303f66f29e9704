"""Error bodies: an :class:`~limiquantix.protocol.errors.AgentError` to Connect's JSON
error and back, the same on the server and in every client.

Where ``reason`` goes (the one place, Connect's): an error with a reason carries a
Connect error detail of type ``limiquantix.agent.v1.Error`` (``type``, ``value``: its
binary form in unpadded base64, and ``debug``: the same as JSON, for curl users)::

    {"code": "unavailable", "message": "...",
     "details": [{"type": "limiquantix.agent.v1.Error", "value": "CA4S...",
                  "debug": {"code": "ERROR_CODE_UNAVAILABLE", "message": "...", "reason": "no_socket"}}]}

Decoding reads the detail's ``value`` (``debug`` is informational, as the spec says).
The codes and HTTP statuses come from the one table, :data:`errors.CODES`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from .. import errors
from .._gen import agent_pb2 as pb

__all__ = [
    "ERROR_DETAIL_TYPE",
    "MAX_ERROR_MESSAGE_CHARS",
    "error_body",
    "error_from_body",
    "error_from_json",
    "error_json",
    "error_reason",
]

#: The type of the error detail that carries ``reason``.
ERROR_DETAIL_TYPE: Final = pb.Error.DESCRIPTOR.full_name
#: The longest error message kept from a peer (it is relayed and logged).
MAX_ERROR_MESSAGE_CHARS: Final = 2000
# HTTP status -> Connect code, for error answers without a Connect body (a proxy in
# between, hypercorn's own 5xx). Connect's table, with 400 and 408 read as what they say.
_HTTP_CODES: Final = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "unimplemented",
    408: "deadline_exceeded",
    429: "unavailable",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def error_json(exc: errors.AgentError) -> dict[str, Any]:
    """Connect's JSON error object for ``exc`` (``reason`` as a typed detail)."""
    body: dict[str, Any] = {"code": exc.connect_code}
    if exc.message:
        body["message"] = exc.message
    if exc.reason:
        detail = exc.to_proto()
        body["details"] = [
            {
                "type": ERROR_DETAIL_TYPE,
                # Spec: unpadded standard base64 of the binary message.
                "value": base64.b64encode(detail.SerializeToString()).decode().rstrip("="),
                "debug": json_format.MessageToDict(detail),
            }
        ]
    return body


def error_body(exc: errors.AgentError) -> bytes:
    """:func:`error_json` as the bytes of a response body."""
    return json.dumps(error_json(exc)).encode()


def error_reason(data: Mapping[str, Any]) -> str:
    """The ``reason`` of a ``limiquantix.agent.v1.Error`` detail in a Connect error object ("" if none)."""
    for detail in data.get("details") or ():
        if not isinstance(detail, Mapping) or detail.get("type") != ERROR_DETAIL_TYPE:
            continue
        value = str(detail.get("value", ""))
        try:
            return pb.Error.FromString(base64.b64decode(value + "=" * (-len(value) % 4))).reason
        except (ValueError, TypeError, binascii.Error, DecodeError):
            return ""
    return ""


def error_from_json(data: object) -> errors.AgentError | None:
    """The error a Connect error object stands for, its code and reason kept (unknown
    codes: Internal); None when ``data`` is not one. The message is cut to
    :data:`MAX_ERROR_MESSAGE_CHARS`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("code"), str):
        return None
    message = str(data.get("message", ""))[:MAX_ERROR_MESSAGE_CHARS]
    return errors.from_connect_code(data["code"], message, reason=error_reason(data))


def error_from_body(status: int, body: bytes, *, what: str) -> errors.AgentError:
    """The error a non-200 answer stands for: its Connect body, else its HTTP status
    (``what`` names the peer in the message, e.g. ``"node n1"``)."""
    try:
        error = error_from_json(json.loads(body))
    except ValueError:
        error = None
    if error is not None:
        return error
    code = _HTTP_CODES.get(status, "internal" if status >= 500 else "unknown")
    return errors.from_connect_code(code, f"{what} answered HTTP {status}")
