"""gRPC and gRPC-Web beside Connect: the same handlers, on the same paths, below Quart.

:meth:`Router.register <limiquantix.protocol.rpc.server.Router.register>` puts a
:class:`GrpcApp` in front of the Quart app (``app.asgi_app``): a request whose Content-Type is
``application/grpc[+proto|+json]`` or ``application/grpc-web[+proto|+json]`` is served here from
the router's handler table, with its hooks (``authenticate``, ``observe``, bytes in flight), and
everything else goes on to Quart. Below Quart because gRPC's status travels in HTTP trailers,
which hypercorn sends through ASGI's ``http.response.trailers`` extension and Quart's response
path cannot send. The protocols are https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md
and PROTOCOL-WEB.md. What is implemented, and why where they leave a choice:

* **Transports.** gRPC needs HTTP/2: h2c with prior knowledge on plain sockets (what grpcio's
  insecure channels and ``buf curl --http2-prior-knowledge`` speak; hypercorn recognises the
  preface), h2 by ALPN on TLS. gRPC-Web works on HTTP/1.1 and HTTP/2 alike: its trailers are
  the body's last frame (flag 0x80). ``application/grpc-web-text`` (base64) answers 415.
* **Calls.** Unary and server streaming RPCs (one request message), and the reflection
  service (bidi: one answer per request, as they arrive). Client- and bidi-streaming RPCs of the
  schemas answer ``unimplemented``, as in Connect. An unknown path answers ``unimplemented``
  (HTTP 200, the gRPC way), a verb other than POST 405, an unknown content type 415.
* **Status.** Always a full response (headers, messages, trailers ``grpc-status``,
  ``grpc-message`` percent-encoded), never trailers-only: some clients read a status in the
  first HEADERS frame only when it ends the stream, and one shape is enough. Error codes are
  Connect's (same names, same meaning), numbered as gRPC numbers them; an error with a
  ``reason`` also sends ``grpc-status-details-bin`` (a ``google.rpc.Status`` whose details hold
  the ``limiquantix.agent.v1.Error``, as Connect's error ``details`` do). A handler exception
  that is not an ``AgentError`` is ``internal`` with a generic message (logged, as in Connect).
* **Deadlines.** ``grpc-timeout`` (1 to 8 digits and a unit H M S m u n) is the call's deadline,
  like ``Connect-Timeout-Ms``: around authentication, reading the request and the handler
  (streams: each step of the generator); past it the status is ``deadline_exceeded``.
* **Compression.** Request messages flagged compressed must say ``grpc-encoding: gzip``; any
  other encoding is ``unimplemented`` with ``grpc-accept-encoding``. Response messages of at
  least ``compress_min_bytes`` that shrink (:meth:`Router.worth_gzipping`) are gzipped when
  ``grpc-accept-encoding`` names gzip.
* **Bounds.** A request is read up to the router's ``max_message_bytes`` (counted against its
  bytes in flight from ``Content-Length`` or as it arrives, inflated size too), after
  ``authenticate`` accepted it; reflection requests up to
  :data:`~._reflection.MAX_REFLECTION_REQUEST_BYTES` each.
* **Reflection.** ``grpc.reflection.v1`` and ``v1alpha`` need no token: they tell the schema,
  which is public (the .proto files ship with the package), and nothing about the server's
  state. ``Authorization`` is not looked at.
* **Client disconnect.** When hypercorn reports ``http.disconnect`` before the call ended, the
  call is cancelled (a streaming handler's generator is closed: hostd stops the guest's command).
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Literal, final

import trio
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from werkzeug.datastructures import Headers

from ... import errors
from ..._gen import grpc_reflection_v1_pb2, grpc_reflection_v1alpha_pb2
from .._codec import (
    ENVELOPE_HEADER,
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    JSON,
    MAX_DETAIL_CHARS,
    PROTO,
    Codec,
    EnvelopeReader,
    accepts_gzip,
    encode_envelope,
    gunzip,
    gzip_bytes,
    request_gzipped,
)
from .._deadline import GRPC_TIMEOUT_HEADER, parse_grpc_timeout
from .._errors import error_json
from ._connect import _STREAM_TYPES, _end_stream
from ._context import CallContext
from ._reflection import MAX_REFLECTION_REQUEST_BYTES, REFLECTION_SERVICES, Reflection
from ._router import CODE_OK, Router, offload
from ._service import Last, Route

__all__ = ["REFLECTION_STREAM_S", "GrpcApp", "StatusDetail"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# gRPC-Web: the body's last frame holds the trailers, as HTTP/1 header lines.
_FLAG_TRAILERS: Final = 0x80
# Spec: grpc-message is percent-encoded UTF-8; printable ASCII but '%' goes as is.
_MESSAGE_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
#: How long one reflection stream may stay open: clients ask a few questions and close it.
REFLECTION_STREAM_S: Final = 60.0


@final
class _Protocol:
    """gRPC, gRPC-Web or (for reflection only) Connect streaming, with the codec the Content-Type names."""

    __slots__ = ("codec", "connect", "content_type", "web")

    def __init__(self, *, web: bool, codec: Codec, connect: bool = False) -> None:
        self.web = web or connect  # no HTTP trailers: the status is the body's last frame
        self.connect = connect
        self.codec = codec
        base = "application/connect" if connect else "application/grpc-web" if web else "application/grpc"
        self.content_type = f"{base}+{codec.name}"


def _protocol(content_type: str) -> _Protocol | None | Literal[False]:
    """The protocol of a Content-Type: a _Protocol, None if it is not gRPC's at all (-> Quart),
    False if it is a gRPC type this server does not speak (-> 415)."""
    media = content_type.partition(";")[0].strip().lower()
    for base, web in (("application/grpc-web", True), ("application/grpc", False)):
        if media == base or media == f"{base}+proto":
            return _Protocol(web=web, codec=PROTO)
        if media == f"{base}+json":
            return _Protocol(web=web, codec=JSON)
    return False if media.startswith("application/grpc") else None


def _connect_stream_protocol(content_type: str) -> _Protocol | None:
    """Connect's streaming protocol, which buf curl's default (``--protocol connect``) asks
    reflection with; the Connect router serves every other call of it."""
    codec = _STREAM_TYPES.get(content_type.partition(";")[0].strip().lower())
    return None if codec is None else _Protocol(web=False, codec=codec, connect=True)


def _encode_message(value: str) -> str:
    return urllib.parse.quote(value, safe=_MESSAGE_SAFE)


def _status_detail_class() -> type[Message]:
    """``google.rpc.Status``, the message of ``grpc-status-details-bin``, built in a pool of its
    own: its .proto is not part of protobuf's runtime, and a second ``google/rpc/status.proto``
    in the default pool would clash with googleapis-common-protos if a process also loads that."""
    any_file = any_pb2.DESCRIPTOR
    file = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/status.proto", package="google.rpc", syntax="proto3", dependency=[any_file.name]
    )
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    status.field.add(
        name="details", number=3, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED, type_name=".google.protobuf.Any"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(any_file.serialized_pb).SerializeToString())
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_F = descriptor_pb2.FieldDescriptorProto
#: ``google.rpc.Status``: the code, the message and, for an error with a reason, the
#: ``limiquantix.agent.v1.Error`` (as Connect's error ``details`` carry it).
StatusDetail: Final = _status_detail_class()


def _status_headers(error: errors.AgentError | None, ctx: CallContext | None) -> list[tuple[bytes, bytes]]:
    """The trailers of a call: status, message, details (the reason), the handler's trailers."""
    out = [(b"grpc-status", str(error.grpc_status if error else 0).encode())]
    if error is not None and error.message:
        out.append((b"grpc-message", _encode_message(error.message).encode()))
    if error is not None and error.reason:
        # A class built at run time: Message's stub knows none of its fields.
        detail = StatusDetail(code=error.grpc_status, message=error.message)  # type: ignore[call-arg]
        detail.details.add().Pack(error.to_proto())  # type: ignore[attr-defined]
        # Binary metadata: base64; gRPC receivers accept it unpadded, as sent by grpc-go.
        out.append((b"grpc-status-details-bin", base64.b64encode(detail.SerializeToString()).rstrip(b"=")))
    if ctx is not None:
        out.extend(_latin1(ctx.response_trailers))
    return out


def _latin1(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers.items()]


@final
class _Exchange:
    """One request's ASGI side: reading its messages, sending the answer in the protocol's shape."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, protocol: _Protocol) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.protocol = protocol
        self.headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]])
        self.started = False
        self.body_done = False
        self.disconnected = False
        self._reader: EnvelopeReader | None = None
        self._ready: collections.deque[tuple[int, bytes]] = collections.deque()

    # -- reading ------------------------------------------------------------------

    async def next_message(self, limit: int, *, count: Callable[[int], None] | None = None) -> tuple[int, bytes] | None:
        """The next request message (flags, data), None at the end of the request.

        Raises:
            ResourceExhausted: a message over ``limit`` (from its prefix, before it is read),
                or beyond ``count``'s bounds.
            InvalidArgument: the request ends inside a message, or is not enveloped.
            Cancelled: the client went away.
        """
        if self._reader is None:
            self._reader = EnvelopeReader(limit=limit, allowed_flags=FLAG_COMPRESSED)
        while not self._ready:
            if self.body_done:
                if self._reader.pending:
                    raise errors.InvalidArgument("the request ends inside a message")
                return None
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise errors.Cancelled("the client went away")
            chunk = message.get("body", b"")
            self.body_done = not message.get("more_body", False)
            if chunk:
                if count is not None:
                    count(len(chunk))
                self._ready.extend(self._reader.feed(chunk))
        return self._ready.popleft()

    async def wait_disconnect(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` when the client goes away (run once the request is read)."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                scope.cancel()
                return

    # -- writing ------------------------------------------------------------------

    async def start(self, extra: list[tuple[bytes, bytes]]) -> None:
        if self.started:
            return
        self.started = True
        headers = [(b"content-type", self.protocol.content_type.encode()), (b"grpc-accept-encoding", b"gzip,identity")]
        if not self.body_done and self.scope.get("http_version") in ("1.0", "1.1"):
            # Answered before the request was read (see _plain): the connection cannot be reused.
            headers.append((b"connection", b"close"))
        await self._send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": headers + extra,
                "trailers": not self.protocol.web,
            }
        )

    async def message(self, flags: int, data: bytes) -> None:
        await self._send(
            {"type": "http.response.body", "body": ENVELOPE_HEADER.pack(flags, len(data)) + data, "more_body": True}
        )

    async def finish(self, error: errors.AgentError | None, ctx: CallContext | None) -> None:
        """Send the status (after the headers, if none were sent yet)."""
        await self.start([])
        if self.protocol.connect:
            await self._send(
                {"type": "http.response.body", "body": _end_stream(error, ctx) if ctx else _end_stream_bare(error)}
            )
            return
        trailers = _status_headers(error, ctx)
        if self.protocol.web:
            block = b"".join(k + b": " + v + b"\r\n" for k, v in trailers)
            await self._send(
                {"type": "http.response.body", "body": ENVELOPE_HEADER.pack(_FLAG_TRAILERS, len(block)) + block}
            )
            return
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        await self._send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


async def _plain(scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    """An answer before the request body was read: an HTTP/1 client is asked to close (see
    _router.unread_body: hypercorn would wedge a connection whose client is still sending)."""
    if scope.get("http_version") in ("1.0", "1.1"):
        headers = [*headers, (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@final
class GrpcApp:
    """An ASGI app serving ``router``'s services over gRPC and gRPC-Web in front of ``app``.

    Args:
        app: the Quart app's ASGI callable (everything that is not gRPC goes there).
        router: the handler table and hooks.
        prefix: the router's routing prefix (``""`` or ``"/api"``).
        body_timeout_s: how long a request's messages may take to arrive (Quart's
            ``BODY_TIMEOUT`` for Connect calls); a reflection stream is open at most
            :data:`REFLECTION_STREAM_S`.
    """

    def __init__(self, app: ASGIApp, router: Router, *, prefix: str = "", body_timeout_s: float = 60.0) -> None:
        self.app = app
        self.router = router
        self.prefix = prefix
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
        protocol = _protocol(content_type)
        path: str = scope["path"]
        if protocol is None and path.endswith("/ServerReflectionInfo"):
            protocol = _connect_stream_protocol(content_type)
        if protocol is None or not path.startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return
        if protocol is False:
            accept = b"application/grpc, application/grpc+json, application/grpc-web, application/grpc-web+json"
            await _plain(scope, send, 415, [(b"accept-post", accept)])
            return
        if scope["method"] != "POST":
            await _plain(scope, send, 405, [(b"allow", b"POST")])
            return
        if not protocol.web and scope.get("http_version") != "2":
            # Its status needs HTTP trailers, which HTTP/1.1 responses here cannot carry.
            await _plain(
                scope, send, 505, [(b"content-type", b"text/plain")], b"gRPC needs HTTP/2: use gRPC-Web or Connect\n"
            )
            return
        exchange = _Exchange(scope, receive, send, protocol)
        procedure = path[len(self.prefix) + 1 :]
        service = procedure.partition("/")[0]
        if service in REFLECTION_SERVICES and procedure.endswith("/ServerReflectionInfo"):
            await self._reflect(exchange, alpha=service.endswith("v1alpha"))
            return
        route = self.router._routes.get(procedure)
        if route is None:
            error = errors.Unimplemented(f"{procedure} is not a known procedure"[:MAX_DETAIL_CHARS])
            await exchange.finish(error, None)
            return
        await self._call(exchange, route)

    # -- calls ---------------------------------------------------------------------

    async def _call(self, exchange: _Exchange, route: Route) -> None:
        router = self.router
        ctx = CallContext.from_scope(
            exchange.scope,
            exchange.headers,
            procedure=route.procedure,
            streaming=route.streaming,
            protocol="grpc-web" if exchange.protocol.web else "grpc",
        )
        code = errors.Cancelled.connect_code  # what observe hears if Cancelled propagates
        error: errors.AgentError | None = None
        try:
            # The nursery's scope is the call's: the client going away cancels it.
            async with trio.open_nursery() as nursery:
                try:
                    timeout = exchange.headers.get(GRPC_TIMEOUT_HEADER)
                    if timeout is not None:
                        ctx.deadline = ctx._started + parse_grpc_timeout(timeout)
                    with trio.CancelScope(deadline=ctx.deadline) as scope:
                        # A one-item box: the handler must be the message's only holder
                        # (one that forwards a large field can drop the rest meanwhile).
                        box = [await self._prelude(exchange, route, ctx)]
                    if scope.cancelled_caught:
                        raise self._deadline_error(ctx)
                    # Read to its end: from here on, a receive() can only say the client left.
                    nursery.start_soon(exchange.wait_disconnect, nursery.cancel_scope)
                    await self._respond(exchange, route, ctx, box)
                except errors.AgentError as exc:
                    error = exc
                except Exception as exc:
                    error = router.internal(route, exc)
                nursery.cancel_scope.cancel()
            # Outside the nursery: the client leaving now cannot cut the status in half.
            if not exchange.disconnected:
                code = error.connect_code if error is not None else CODE_OK
                await exchange.finish(error, ctx)
        finally:
            router.release(ctx)
            router.observed(route.procedure, code, ctx)

    async def _prelude(self, exchange: _Exchange, route: Route, ctx: CallContext) -> Message:
        """Authorize, then read and decode the one request message.

        Raises:
            AgentError: refused, malformed, oversized (see :meth:`_Exchange.next_message`).
        """
        router = self.router
        if router.authenticate is not None:
            await router.authenticate(ctx)
        if route.handler is None:
            raise errors.Unimplemented(route.why_unimplemented)
        gzipped = request_gzipped(exchange.headers.get("grpc-encoding"))
        declared = _content_length(exchange.headers)
        limit = router.max_message_bytes
        if declared is not None:
            if declared > limit + ENVELOPE_HEADER.size:
                raise errors.ResourceExhausted(f"request message larger than {limit} bytes")
            router.reserve(ctx, declared)  # refused before a byte is read
        count = None if declared is not None else (lambda n: router.reserve(ctx, n))
        with trio.move_on_after(self.body_timeout_s) as body_scope:
            first = await exchange.next_message(limit, count=count)
            if first is None:
                raise errors.InvalidArgument(f"{route.procedure} takes one request message; none was sent")
            if await exchange.next_message(limit, count=count) is not None:
                raise errors.Unimplemented(f"{route.procedure} takes one request message, not several")
        if body_scope.cancelled_caught:
            raise errors.DeadlineExceeded(f"request body not received within {self.body_timeout_s} s")
        ctx._body_read = True
        assert first is not None  # not cancelled: the checks in the scope ran
        flags, data = first
        if data and flags & FLAG_COMPRESSED:
            if not gzipped:
                raise errors.InvalidArgument("compressed message without grpc-encoding")
            data = await offload(len(data), gunzip, data, limit)
            router.reserve(ctx, len(data))
        return await router.decode(exchange.protocol.codec, data, route.input_type)

    async def _respond(self, exchange: _Exchange, route: Route, ctx: CallContext, box: list[Message]) -> None:
        """Run the handler on the message in ``box`` (taken out) and send its messages (not the status).

        Raises:
            AgentError: from the handler, or DeadlineExceeded.
        """
        assert route.handler is not None  # _prelude checked
        gzip_out = accepts_gzip(exchange.headers.get("grpc-accept-encoding"), None)
        extra = _latin1(ctx.response_headers)
        if not route.streaming:
            with trio.CancelScope(deadline=ctx.deadline) as scope:
                call = route.handler(box.pop(), ctx)
                result = await call
                flags, payload = await self._encode(route, exchange, result, gzip_out)
            if scope.cancelled_caught:
                raise self._deadline_error(ctx)
            await exchange.start(_latin1(ctx.response_headers) + _encoding(flags))
            await exchange.message(flags, payload)
            return
        agen = route.handler(box.pop(), ctx)
        if not hasattr(agen, "__anext__"):
            raise TypeError(f"{route.procedure} returned {type(agen).__name__}, not an async iterator")
        try:
            await exchange.start(extra + ([(b"grpc-encoding", b"gzip")] if gzip_out else []))
            while True:
                if trio.current_time() >= ctx.deadline:
                    raise self._deadline_error(ctx)
                with trio.CancelScope(deadline=ctx.deadline) as scope:
                    try:
                        item = await agen.__anext__()
                    except StopAsyncIteration:
                        return
                if scope.cancelled_caught:
                    raise self._deadline_error(ctx)
                last = isinstance(item, Last)
                flags, payload = await self._encode(route, exchange, item.message if last else item, gzip_out)
                await exchange.message(flags, payload)
                if last:  # the handler ends here (closed below); the status follows
                    return
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await agen.aclose()
                except Exception:
                    log.exception("%s: closing the stream handler failed", route.procedure)

    async def _encode(self, route: Route, exchange: _Exchange, result: object, gzip_out: bool) -> tuple[int, bytes]:
        payload = await self.router.encode(route, exchange.protocol.codec, result)
        if gzip_out and await self.router.worth_gzipping(payload):
            return FLAG_COMPRESSED, await offload(len(payload), gzip_bytes, payload)
        return 0, payload

    @staticmethod
    def _deadline_error(ctx: CallContext) -> errors.DeadlineExceeded:
        return errors.DeadlineExceeded(f"{ctx.procedure}: deadline exceeded")

    # -- reflection ----------------------------------------------------------------

    async def _reflect(self, exchange: _Exchange, *, alpha: bool) -> None:
        """The bidi reflection stream: one answer per request, as they arrive, for at most
        :data:`REFLECTION_STREAM_S` (a client that keeps it open idle holds a task)."""
        error: errors.AgentError | None = None
        with trio.move_on_after(REFLECTION_STREAM_S) as scope:
            try:
                await self._reflect_steps(exchange, alpha=alpha)
            except errors.AgentError as exc:
                error = exc
            except Exception as exc:  # a JSON request the parser refused
                error = errors.InvalidArgument(f"cannot decode a reflection request: {str(exc)[:MAX_DETAIL_CHARS]}")
        if scope.cancelled_caught:
            error = errors.DeadlineExceeded(f"a reflection stream is closed after {REFLECTION_STREAM_S} s")
        if not exchange.disconnected:
            await exchange.finish(error, None)

    async def _reflect_steps(self, exchange: _Exchange, *, alpha: bool) -> None:
        header = "connect-content-encoding" if exchange.protocol.connect else "grpc-encoding"
        request_gzipped(exchange.headers.get(header))
        codec = exchange.protocol.codec
        # Per stream, not per app: services may be added to the router after register().
        reflection = Reflection(service.name for service in self.router.services)
        await exchange.start([])
        while True:
            item = await exchange.next_message(MAX_REFLECTION_REQUEST_BYTES)
            if item is None:
                return
            flags, data = item
            if flags & FLAG_COMPRESSED:
                data = gunzip(data, MAX_REFLECTION_REQUEST_BYTES)
            if codec.name != "proto":  # the answer works on the binary form
                data = _transcode(codec.decode(data, _request_type(alpha)), "proto")
            answer = reflection.answer(data, alpha=alpha)
            if codec.name != "proto":
                answer = _transcode(_response_type(alpha).FromString(answer), codec.name)
            await exchange.message(0, answer)


def _request_type(alpha: bool) -> type[Message]:
    return (
        grpc_reflection_v1alpha_pb2.ServerReflectionRequest if alpha else grpc_reflection_v1_pb2.ServerReflectionRequest
    )


def _response_type(alpha: bool) -> type[Message]:
    return (
        grpc_reflection_v1alpha_pb2.ServerReflectionResponse
        if alpha
        else grpc_reflection_v1_pb2.ServerReflectionResponse
    )


def _transcode(message: Message, codec_name: str) -> bytes:
    return (PROTO if codec_name == "proto" else JSON).encode(message)


def _end_stream_bare(error: errors.AgentError | None) -> bytes:
    """Connect's end-of-stream message for a call without a CallContext (reflection)."""
    return encode_envelope(FLAG_END_STREAM, json.dumps({"error": error_json(error)} if error else {}).encode())


def _encoding(flags: int) -> list[tuple[bytes, bytes]]:
    return [(b"grpc-encoding", b"gzip")] if flags & FLAG_COMPRESSED else []


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)
