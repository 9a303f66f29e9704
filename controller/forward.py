"""The controller's client for the hostd node API (``limiquantix.node.v1.NodeDaemonService``).

One :class:`NodeClient` per controller, over one pooled ``httpx.AsyncClient``
(plus one per Unix-socket node). Calls go out as Connect ``application/proto``
(unary) or ``application/connect+proto`` (server streaming) with the node's
bearer token. What crosses back:

* A Connect error body (``{"code", "message", "details"}``) becomes the
  :mod:`limiquantix.protocol.errors` class of its ``code``
  (:func:`errors.from_connect_code`), with the reason of a
  ``limiquantix.agent.v1.Error`` detail, so codes survive controller → hostd →
  agent → back.
* A node that cannot be reached (refused, DNS, no pooled connection in time)
  is ``unavailable`` at once, reason ``node_unreachable``: nothing was sent, so
  nothing ran. Connecting is bounded by :data:`CONNECT_TIMEOUT_S`, and a
  refused connection on a LAN fails in microseconds.
* Once the request is on its way the node may act on it: a connection that
  then breaks (hostd killed mid-command) is :class:`OutcomeUnknown`
  (``unavailable``, reason ``outcome_unknown``), and a budget that runs out is
  :class:`OutcomeUnknownDeadline` (``deadline_exceeded``, same reason). Both
  say that the action may have happened, so a caller must not retry it blindly,
  and :func:`outcome_unknown` tells the audit log to record ``unknown``.
* Time budgets come from the caller (derived from the Connect deadline and the
  command's own timeout) and are sent on as ``Connect-Timeout-Ms`` so hostd
  stops at the same moment. A budget that runs out is ``deadline_exceeded``.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, TypeVar, final

import httpx
import trio
from google.protobuf.message import Message

from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as pb

from .models import NodeInfo

__all__ = [
    "CLOSE_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "NODE_SERVICE",
    "OUTCOME_UNKNOWN",
    "NodeClient",
    "OutcomeUnknown",
    "OutcomeUnknownDeadline",
    "bytes_field_header",
    "outcome_unknown",
]

_M = TypeVar("_M", bound=Message)

#: The node API's Connect service path.
NODE_SERVICE: Final = "limiquantix.node.v1.NodeDaemonService"
#: Connecting to a hostd. A refused connection fails at once; this bounds a
#: host that drops packets, so calls for its VMs answer within a second.
CONNECT_TIMEOUT_S: Final = 1.0
#: Closing an upstream stream when our own client went away (shielded).
CLOSE_TIMEOUT_S: Final = 2.0
#: Keep-alive connections kept per controller: one per busy node is plenty.
_MAX_KEEPALIVE: Final = 200
#: Concurrent connections in total (the fleet runner will fan out to many nodes).
_MAX_CONNECTIONS: Final = 2000
# Streaming envelope: flags byte, big-endian u32 length.
_ENVELOPE: Final = struct.Struct(">BI")
_FLAG_COMPRESSED: Final = 0x01
_FLAG_END_STREAM: Final = 0x02
#: The longest error message kept from a node (it is relayed to our client).
_MAX_MESSAGE_CHARS: Final = 2000
# HTTP status → Connect code, for error answers without a Connect body (a
# proxy in between, hypercorn's own 5xx). Connect's table, inverted.
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


#: The reason of an error raised after the request was sent.
OUTCOME_UNKNOWN: Final = "outcome_unknown"
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class OutcomeUnknown(errors.Unavailable):
    """The request reached the node, then the connection broke: it may have run."""


class OutcomeUnknownDeadline(errors.DeadlineExceeded):
    """The request reached the node, then no answer came within the budget: it may have run."""


def outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc`` says a forwarded action may or may not have happened."""
    return isinstance(exc, (OutcomeUnknown, OutcomeUnknownDeadline))


def _after_send(node: NodeInfo, method: str, budget_s: float, exc: httpx.TransportError) -> errors.AgentError:
    """The error for a transport failure; ``outcome_unknown`` once the request may have been sent."""
    if isinstance(exc, _NOT_SENT):
        return _unreachable(node, exc)
    if isinstance(exc, httpx.TimeoutException):
        return OutcomeUnknownDeadline(
            f"node {node.node_id} did not answer {method} within {budget_s:.1f} s; "
            "the request was sent, so it may have run: its outcome is not known",
            reason=OUTCOME_UNKNOWN,
        )
    return OutcomeUnknown(
        f"node {node.node_id} ({node.url}) broke the connection ({type(exc).__name__}) after {method} was sent; "
        "it may have run: its outcome is not known",
        reason=OUTCOME_UNKNOWN,
    )


def _unreachable(node: NodeInfo, exc: BaseException) -> errors.Unavailable:
    return errors.Unavailable(
        f"node {node.node_id} ({node.url}) is unreachable: {type(exc).__name__}", reason="node_unreachable"
    )


def _error_from_body(status: int, body: bytes, node: NodeInfo) -> errors.AgentError:
    """The error a non-200 Connect answer stands for (its code kept end to end)."""
    try:
        data = json.loads(body)
        code = str(data["code"])
        message = str(data.get("message", ""))[:_MAX_MESSAGE_CHARS]
    except (ValueError, KeyError, TypeError):
        code = _HTTP_CODES.get(status, "internal" if status >= 500 else "unknown")
        return errors.from_connect_code(code, f"node {node.node_id} answered HTTP {status}")
    return errors.from_connect_code(code, message, reason=_reason(data))


def _reason(data: dict[str, Any]) -> str:
    """The ``reason`` of a ``limiquantix.agent.v1.Error`` detail, if any."""
    for detail in data.get("details") or ():
        if not isinstance(detail, dict) or detail.get("type") != pb.Error.DESCRIPTOR.full_name:
            continue
        value = str(detail.get("value", ""))
        try:
            err = pb.Error()
            err.ParseFromString(base64.b64decode(value + "=" * (-len(value) % 4)))
            return err.reason
        except (ValueError, TypeError):
            return ""
    return ""


def bytes_field_header(number: int, length: int) -> bytes:
    """The protobuf wire-format key and length that precede a bytes field of ``length``.

    ``message_without_the_field.SerializeToString() + header + data`` is the
    message with the field: a large field can be sent from where it already is,
    without a second message holding a copy and a third serialized one.
    """
    out = bytearray()
    for value in ((number << 3) | 2, length):  # wire type 2: length-delimited
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


async def _parts(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _timeout_header(budget_s: float) -> dict[str, str]:
    if math.isinf(budget_s):
        return {}
    return {"Connect-Timeout-Ms": str(max(1, int(budget_s * 1000)))}


@final
class NodeClient:
    """Calls into hostd node APIs. Use as an async context manager (closes the pools)."""

    def __init__(self) -> None:
        limits = httpx.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_KEEPALIVE)
        self._limits = limits
        self._http = httpx.AsyncClient(limits=limits, trust_env=False)
        self._unix: dict[str, httpx.AsyncClient] = {}

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        with trio.CancelScope(shield=True):
            await self._http.aclose()
            for client in self._unix.values():
                await client.aclose()
            self._unix.clear()

    def _target(self, node: NodeInfo, method: str) -> tuple[httpx.AsyncClient, str]:
        if node.url.startswith("unix:"):
            path = node.url[len("unix:") :]
            client = self._unix.get(path)
            if client is None:
                transport = httpx.AsyncHTTPTransport(uds=path, limits=self._limits)
                client = self._unix[path] = httpx.AsyncClient(transport=transport, trust_env=False)
            return client, f"http://localhost/{NODE_SERVICE}/{method}"
        return self._http, f"{node.url.rstrip('/')}/{NODE_SERVICE}/{method}"

    @staticmethod
    def _timeout(budget_s: float) -> httpx.Timeout:
        # read/write/pool are per operation in httpx; hostd answers a unary call
        # in one piece, so the read timeout is in effect the call's budget.
        rest = None if math.isinf(budget_s) else max(budget_s, 0.001)
        return httpx.Timeout(rest, connect=min(CONNECT_TIMEOUT_S, rest or CONNECT_TIMEOUT_S))

    async def call(self, node: NodeInfo, method: str, request: Message, response_cls: type[_M], *, budget_s: float) -> _M:
        """One unary call. Raises: as :meth:`call_parts`."""
        return await self.call_parts(node, method, (request.SerializeToString(),), response_cls, budget_s=budget_s)

    async def call_parts(
        self, node: NodeInfo, method: str, parts: Sequence[bytes], response_cls: type[_M], *, budget_s: float
    ) -> _M:
        """One unary call whose request is the concatenation of ``parts`` (serialized
        protobuf; see :func:`bytes_field_header`), sent as they are, with a Content-Length.

        Raises:
            errors.Unavailable: the node cannot be reached (reason ``node_unreachable``; nothing was sent).
            OutcomeUnknown: the connection broke after the request was sent.
            OutcomeUnknownDeadline: no answer within ``budget_s``.
            errors.AgentError: the error the node answered, code kept.
        """
        client, url = self._target(node, method)
        headers = {
            "Authorization": f"Bearer {node.token}",
            "Content-Type": "application/proto",
            "Connect-Protocol-Version": "1",
            "Content-Length": str(sum(len(p) for p in parts)),
            **_timeout_header(budget_s),
        }
        content = parts[0] if len(parts) == 1 else _parts(parts)
        try:
            resp = await client.post(url, content=content, headers=headers, timeout=self._timeout(budget_s))
        except httpx.TransportError as exc:
            raise _after_send(node, method, budget_s, exc) from exc
        if resp.status_code != 200:
            raise _error_from_body(resp.status_code, resp.content, node)
        msg = response_cls()
        try:
            msg.ParseFromString(resp.content)
        except Exception as exc:  # DecodeError: a node speaking another schema
            raise errors.Internal(f"node {node.node_id}: undecodable {method} answer") from exc
        return msg

    async def stream(
        self, node: NodeInfo, method: str, request: Message, event_cls: type[_M], *, budget_s: float
    ) -> AsyncIterator[_M]:
        """A server-streaming call: the node's messages as they arrive.

        Closing the generator early closes the upstream HTTP response, which
        hostd sees as a client disconnect (for ExecuteInGuestStream: the command
        is cancelled in the guest).

        Raises:
            errors.Unavailable: the node cannot be reached (nothing was sent).
            OutcomeUnknown: the stream broke off after the request was sent.
            OutcomeUnknownDeadline: nothing arrived within ``budget_s``.
            errors.AgentError: the error in the node's end-of-stream message.
        """
        client, url = self._target(node, method)
        payload = request.SerializeToString()
        headers = {
            "Authorization": f"Bearer {node.token}",
            "Content-Type": "application/connect+proto",
            "Connect-Protocol-Version": "1",
            **_timeout_header(budget_s),
        }
        req = client.build_request(
            "POST", url, content=_ENVELOPE.pack(0, len(payload)) + payload, headers=headers,
            timeout=self._timeout(budget_s),
        )  # fmt: skip
        try:
            resp = await client.send(req, stream=True)
        except httpx.TransportError as exc:
            raise _after_send(node, method, budget_s, exc) from exc
        try:
            if resp.status_code != 200:
                raise _error_from_body(resp.status_code, await resp.aread(), node)
            buf = bytearray()
            chunks = resp.aiter_raw()
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    raise OutcomeUnknown(
                        f"node {node.node_id}: {method} stream ended without its end message; its outcome is not known",
                        reason=OUTCOME_UNKNOWN,
                    ) from None
                except httpx.TransportError as exc:
                    raise _after_send(node, method, budget_s, exc) from exc
                buf += chunk
                while len(buf) >= _ENVELOPE.size:
                    flags, length = _ENVELOPE.unpack_from(buf)
                    if len(buf) < _ENVELOPE.size + length:
                        break
                    data = bytes(buf[_ENVELOPE.size : _ENVELOPE.size + length])
                    del buf[: _ENVELOPE.size + length]
                    if flags & _FLAG_COMPRESSED:
                        data = gzip.decompress(data)
                    if flags & _FLAG_END_STREAM:
                        end = json.loads(data or b"{}")
                        if end.get("error"):
                            raise _error_from_body(500, json.dumps(end["error"]).encode(), node)
                        return
                    msg = event_cls()
                    msg.ParseFromString(data)
                    yield msg
        finally:
            # Shielded: this runs when our own client went away (the request
            # task is cancelled), and it is what tells hostd to stop the command.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT_S):
                await resp.aclose()
