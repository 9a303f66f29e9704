"""Server side of the Connect protocol for Quart-Trio apps: unary and server streaming.

hostd (``limiquantix.node.v1.NodeDaemonService``) and the controller
(``limiquantix.compute.v1.VMService``) serve their APIs with this module. The
protocol is https://connectrpc.com/docs/protocol; what is implemented::

    POST /<package>.<Service>/<Method>
      unary             application/json | application/proto      bare message
      server streaming  application/connect+json | +proto         enveloped messages

A service is a protobuf ``ServiceDescriptor`` plus an object whose async
methods are named after its RPCs::

    class NodeAPI:
        async def PingAgent(self, request: PingAgentRequest, ctx: CallContext) -> AgentPingResponse: ...
        async def ExecuteInGuestStream(self, request, ctx) -> AsyncIterator[ExecuteInGuestEvent]:
            yield ...  # an async generator: one response message per yield

    router = ConnectRouter([Service(SERVICE_DESCRIPTOR, NodeAPI())], authenticate=..., observe=...)
    router.register(app)

Behaviour, and why where Connect leaves a choice:

* **Routing.** One catch-all rule ``/<service>/<method>`` per app (under an
  optional routing prefix). An unknown procedure answers 404 with code
  ``unimplemented`` (404 is what connect-go answers, and ``unimplemented`` is
  what the spec's HTTP-to-code table infers from it). An RPC that is in the
  descriptor but not on the implementation object answers 501 ``unimplemented``.
  Client- and bidi-streaming RPCs answer ``unimplemented`` as well.
* **HTTP method.** POST only: nothing in our schemas is marked
  ``NO_SIDE_EFFECTS``, so Connect's GET form never applies. Anything else gets
  405 with ``Allow: POST`` and no body, like connect-go.
* **Content types.** Unary RPCs take ``application/json`` (optionally
  ``; charset=utf-8``) or ``application/proto``; streaming RPCs take
  ``application/connect+json`` or ``application/connect+proto``. Anything else,
  or none, gets 415 with an ``Accept-Post`` header (spec: "must respond with
  415"). The response uses the request's codec.
* **JSON.** The proto3 JSON mapping: responses use camelCase names and include
  fields left at their defaults (``"connected": false``), so clients and curl
  users see every field. Requests may use camelCase or the proto field names.
  Unknown request fields are ignored, as connect-go does, so clients built
  against a newer schema still work. An empty JSON body is rejected (it is not a
  JSON object; send ``{}``), as connect-go does.
* **Compression.** Request bodies (unary ``Content-Encoding``) and request
  envelopes (streaming ``Connect-Content-Encoding``) may be gzip; unknown
  encodings answer ``unimplemented`` listing the supported ones. Decompression
  is bounded: no message may exceed ``max_message_bytes`` before or after it
  (``resource_exhausted``). Responses, and streamed messages, are gzipped when
  the client accepts gzip and they are at least ``compress_min_bytes`` long.
* **Errors.** Unary: JSON ``{"code", "message"}`` with the status of
  :attr:`errors.AgentError.http_status`. An :class:`~errors.AgentError` with a
  ``reason`` also carries it as a Connect error detail of type
  ``limiquantix.agent.v1.Error``. Streaming: HTTP 200, and the error goes in the
  end-of-stream message (the spec says "Streaming responses always have an HTTP
  status of 200"), also when the call fails before the first message.
  Malformed input is ``invalid_argument``. A handler exception that is not an
  ``AgentError`` is ``internal`` with a generic message. Its traceback goes to
  the log and never to the client. An exception group holding exactly one
  ``AgentError`` (a handler's nursery wraps what its child raised) counts as
  that error.
* **Deadlines.** ``Connect-Timeout-Ms`` (1 to 10 digits) becomes a trio cancel
  scope around authentication, reading the body and the handler (for streams:
  around each step of the generator). When it expires the answer is
  ``deadline_exceeded``. ``trio.Cancelled`` from anywhere else (the client went
  away, the server is shutting down) always propagates.
* **Client disconnect.** quart-trio cancels the request's task when hypercorn
  reports ``http.disconnect``. A streaming handler's generator is then closed at
  once (its ``finally`` runs, under that cancellation: shield cleanup that must
  await). hostd relies on this to cancel the command in the guest.
* **Hooks.** ``authenticate(ctx)`` runs before the request body is read, so an
  unauthenticated client cannot make the server buffer or decompress anything.
  It raises :class:`~errors.Unauthenticated` (401) or
  :class:`~errors.PermissionDenied` (403), and may store an identity in
  ``ctx.auth`` for the handler. ``observe(procedure, code, seconds)`` is called
  exactly once per call to a known procedure: ``code`` is ``"ok"`` or a Connect
  code, ``"canceled"`` if the client went away. Requests rejected before they
  are calls (404, 405, 415) are not observed. Unknown paths must not add metric
  labels.
* **Bytes in flight.** An optional :class:`InFlightBytes` bounds the request
  bytes that calls in progress hold, per caller (its ``key`` of the
  authenticated ``ctx``) and in total: a call's body is counted as it arrives
  (its ``Content-Length`` at once, so an upload over the bound is refused
  before it is read), a gzip body's inflated size on top, until the call ends
  (unary: its answer is encoded; streaming: its handler is closed). Beyond
  either bound the call answers ``resource_exhausted``. The body is dropped
  as soon as it is decoded, and the decoded message is the handler's alone
  (this module keeps no reference to it while the handler runs), so a handler
  that forwards a large field can release the rest early.
* **Early answers.** An HTTP/1 response sent before the request body was read
  (404, 405, 415, refused authentication, oversize) says ``Connection: close``.
  hypercorn would otherwise wedge a connection whose client is still uploading,
  and a keep-alive client reusing it would hang.
* **Quart settings.** Connect responses set ``Response.timeout = None``, because
  Quart's ``RESPONSE_TIMEOUT`` (60 s) would silently cut a long command's output
  stream; ``Connect-Timeout-Ms`` is the deadline. :meth:`ConnectRouter.register`
  raises the app's ``MAX_CONTENT_LENGTH`` (16 MiB by default) to the router's
  limit when it is lower. Quart's ``BODY_TIMEOUT`` still bounds how long a
  request body may take to arrive (``deadline_exceeded``).
* **Metadata.** ``ctx.response_headers`` become response headers.
  ``ctx.response_trailers`` become ``Trailer-`` headers (unary) or the
  end-of-stream ``metadata`` (streaming). A streaming response's headers are sent
  before the generator starts, so headers the generator sets are not sent; set
  trailers instead.
"""

from __future__ import annotations

import base64
import builtins
import gzip
import inspect
import json
import logging
import math
import re
import struct
import sys
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, final

import trio
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from quart import current_app
from quart import request as current_request
from quart.wrappers import Response
from quart.wrappers.response import ResponseBody
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge

from . import errors

if sys.version_info >= (3, 11):  # novermin
    _BaseExceptionGroup = builtins.BaseExceptionGroup
else:  # pragma: no cover - Python 3.10: trio depends on the backport there
    from exceptiongroup import BaseExceptionGroup as _BaseExceptionGroup

__all__ = [
    "CODE_OK",
    "COMPRESS_MIN_BYTES",
    "MAX_MESSAGE_BYTES",
    "Authenticator",
    "CallContext",
    "ConnectRouter",
    "InFlightBytes",
    "Observer",
    "Service",
]

log = logging.getLogger(__name__)

#: The ``code`` passed to ``observe`` for a call that succeeded. Connect itself
#: has no name for success; this is the one our metrics use.
CODE_OK: Final = "ok"
#: Largest request message accepted, on the wire and after decompression. A
#: whole-file WriteGuestFile has to fit, and the limit bounds what one call can
#: make the server buffer.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: Responses (and streamed messages) shorter than this are sent uncompressed
#: even to clients that accept gzip. Below about 1 KiB, gzip saves a few bytes on
#: a LAN and costs latency on every small call (pings, telemetry).
COMPRESS_MIN_BYTES: Final = 1024

#: Called before the request body is read. Raises Unauthenticated or
#: PermissionDenied to refuse the call, and may set ``ctx.auth``.
Authenticator = Callable[["CallContext"], Awaitable[None]]
#: ``observe(procedure, code, seconds)``, once per finished call (sync: it is
#: meant for prometheus-client counters and histograms).
Observer = Callable[[str, str, float], None]

# gzip level for responses: hosts talk over a LAN, where CPU (hostd's budget is
# 15 % of a core for 500 VMs) is scarcer than bandwidth. Level 1 gets most of
# the ratio on JSON for a fraction of level 6's time.
_GZIP_LEVEL: Final = 1
# Codec and compression work on payloads above this size runs in a worker
# thread, so that one 64 MiB file transfer (about a second of JSON work) does not
# stall every other VM's connection on the event loop.
_OFFLOAD_BYTES: Final = 1024 * 1024
# Streaming envelope: flags byte, then the message length as a big-endian u32.
_ENVELOPE: Final = struct.Struct(">BI")
_FLAG_COMPRESSED: Final = 0x01
_FLAG_END_STREAM: Final = 0x02
# Spec: "positive integer as ASCII string of at most 10 digits".
_TIMEOUT_RE: Final = re.compile(r"[0-9]{1,10}")
_PROTOCOL_VERSION: Final = "1"
# Parser messages quote the client's own input; cap them.
_MAX_DETAIL_CHARS: Final = 200
_SUPPORTED_ENCODINGS: Final = "gzip, identity"
# Every verb reaches the view, so that all but POST get Connect's 405 rather than
# Quart's HTML one (OPTIONS included: nothing here answers CORS preflights).
_ROUTE_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


# ---------------------------------------------------------------- codecs


def _encode_json(msg: Message) -> bytes:
    data = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _decode_json(data: bytes | bytearray, cls: type[Message]) -> Message:
    """The message in ``data``; a bytearray (a request body as read) is emptied once
    it is text, so that a large body is not held through the parse's own copies."""
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
    json_format.ParseDict(tree, msg, ignore_unknown_fields=True)
    return msg


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's keys, each once (as json_format.Parse insists)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise json_format.ParseError(f"Failed to load JSON: duplicate key {key[:_MAX_DETAIL_CHARS]!r}.")
        out[key] = value
    return out


def _encode_proto(msg: Message) -> bytes:
    return msg.SerializeToString()


def _decode_proto(data: bytes, cls: type[Message]) -> Message:
    msg = cls()
    msg.ParseFromString(data)
    return msg


@final
@dataclass(frozen=True)
class _Codec:
    name: str
    encode: Callable[[Message], bytes]
    decode: Callable[[bytes, type[Message]], Message]


_JSON: Final = _Codec("json", _encode_json, _decode_json)
_PROTO: Final = _Codec("proto", _encode_proto, _decode_proto)
_UNARY_TYPES: Final = {"application/json": _JSON, "application/proto": _PROTO}
_STREAM_TYPES: Final = {"application/connect+json": _JSON, "application/connect+proto": _PROTO}


def _negotiate_codec(content_type: str, *, streaming: bool) -> _Codec | None:
    """The codec a request's Content-Type names, or None (-> 415)."""
    media, _, params = content_type.partition(";")
    codec = (_STREAM_TYPES if streaming else _UNARY_TYPES).get(media.strip().lower())
    if codec is None or not params.strip():
        return codec
    # Like connect-go: JSON may say charset=utf-8; any other parameter is refused.
    name, _, value = params.strip().partition("=")
    if codec is _JSON and name.strip().lower() == "charset" and value.strip().strip('"').lower() == "utf-8":
        return codec
    return None


def _content_encoding(value: str | None) -> bool:
    """Whether a request says gzip (True) or identity (False).

    Raises:
        Unimplemented: any other encoding (the spec's code for it).
    """
    name = (value or "identity").strip().lower()
    if name == "identity":
        return False
    if name == "gzip":
        return True
    raise errors.Unimplemented(
        f"unknown compression {name[:_MAX_DETAIL_CHARS]!r}: supported encodings are {_SUPPORTED_ENCODINGS}"
    )


def _accepts_gzip(accept: str | None, request_encoding: str | None) -> bool:
    """Whether the client accepts gzip responses.

    Spec: without an Accept-Encoding the client accepts what it sent with.
    """
    if accept is None:
        return (request_encoding or "").strip().lower() == "gzip"
    for item in accept.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() == "gzip":
            quality = params.strip().lower()
            return not (quality.startswith("q=") and quality[2:].strip().strip("0.") == "")
    return False


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data`` (members concatenated), never beyond ``limit`` bytes.

    Raises:
        ResourceExhausted: the result would exceed ``limit``.
        InvalidArgument: ``data`` is not complete, valid gzip.
    """
    out = bytearray()
    rest = data
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


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)


async def _offload(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, in a worker thread when ``size`` says the work is big."""
    if size > _OFFLOAD_BYTES:
        return await trio.to_thread.run_sync(fn, *args)
    return fn(*args)


def _envelope(flags: int, data: bytes) -> bytes:
    return _ENVELOPE.pack(flags, len(data)) + data


def _error_json(exc: errors.AgentError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.connect_code}
    if exc.message:
        body["message"] = exc.message
    if exc.reason:
        detail = exc.to_proto()
        body["details"] = [
            {
                "type": detail.DESCRIPTOR.full_name,
                # Spec: unpadded standard base64 of the binary message.
                "value": base64.b64encode(detail.SerializeToString()).decode().rstrip("="),
                "debug": json_format.MessageToDict(detail),
            }
        ]
    return body


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, _BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


# ---------------------------------------------------------------- services


@final
@dataclass(frozen=True)
class _Route:
    procedure: str  # "limiquantix.node.v1.NodeDaemonService/PingAgent"
    input_type: type[Message]
    output_type: type[Message]
    streaming: bool  # uses the streaming content types (any streaming kind)
    handler: Callable[[Message, CallContext], Any] | None  # None: answers unimplemented
    why_unimplemented: str


@final
class Service:
    """One protobuf service bound to the object that implements it.

    Args:
        descriptor: e.g. ``node_daemon_pb2.DESCRIPTOR.services_by_name["NodeDaemonService"]``.
        impl: an object with one method per RPC, named like the RPC. A unary
            RPC is ``async def Method(self, request, ctx) -> response``. A
            server-streaming RPC is an async generator ``async def Method(self,
            request, ctx)`` that yields responses. RPCs the object lacks answer
            ``unimplemented``.

    Raises:
        TypeError: an RPC's attribute is not callable, or a unary RPC is an
            async generator, or a streaming RPC is a plain coroutine function
            (mistakes that would otherwise only show up as ``internal`` at call time).
    """

    def __init__(self, descriptor: ServiceDescriptor, impl: object) -> None:
        self.name: str = descriptor.full_name
        self.impl = impl
        routes: dict[str, _Route] = {}
        for method in descriptor.methods:
            procedure = f"{descriptor.full_name}/{method.name}"
            handler = getattr(impl, method.name, None)
            why = ""
            if handler is not None and not callable(handler):
                raise TypeError(f"{type(impl).__name__}.{method.name} is not callable")
            if method.client_streaming:
                why = f"{procedure} is client or bidi streaming, which this server does not support"
                handler = None
            elif handler is None:
                why = f"{procedure} is not implemented"
            elif method.server_streaming and inspect.iscoroutinefunction(handler):
                raise TypeError(f"{procedure} is server streaming: {method.name} must be an async generator")
            elif not method.server_streaming and inspect.isasyncgenfunction(handler):
                raise TypeError(f"{procedure} is unary: {method.name} must return one message, not yield")
            routes[procedure] = _Route(
                procedure=procedure,
                input_type=message_factory.GetMessageClass(method.input_type),
                output_type=message_factory.GetMessageClass(method.output_type),
                streaming=method.client_streaming or method.server_streaming,
                handler=handler,
                why_unimplemented=why,
            )
        self._routes = routes

    @property
    def procedures(self) -> tuple[str, ...]:
        """Every procedure of the service (``"<package>.<Service>/<Method>"``)."""
        return tuple(self._routes)

    @property
    def unimplemented(self) -> tuple[str, ...]:
        """The procedures that answer ``unimplemented``."""
        return tuple(p for p, r in self._routes.items() if r.handler is None)


@final
class CallContext:
    """What a handler knows about its call besides the request message.

    Attributes:
        procedure: ``"<package>.<Service>/<Method>"``.
        service: ``"<package>.<Service>"``.
        method: ``"<Method>"``.
        headers: the request headers (case-insensitive, multi-valued).
        peer: the client's ``(host, port)``; None on a Unix socket.
        deadline: the ``Connect-Timeout-Ms`` deadline on trio's clock
            (``math.inf`` if none). Handlers that forward the call (to an agent,
            to hostd) derive their own timeouts from it.
        streaming: whether this is a streaming call.
        auth: whatever ``authenticate`` stored (None until then).
        response_headers: extra response headers.
        response_trailers: trailing metadata (unary: ``Trailer-`` headers;
            streaming: the end-of-stream ``metadata``).
    """

    __slots__ = (
        "__weakref__",
        "_body_read",
        "_held",
        "_started",
        "auth",
        "deadline",
        "headers",
        "method",
        "peer",
        "procedure",
        "response_headers",
        "response_trailers",
        "service",
        "streaming",
    )

    def __init__(
        self,
        *,
        procedure: str,
        headers: Headers,
        peer: tuple[str, int] | None = None,
        streaming: bool = False,
    ) -> None:
        self.procedure = procedure
        self.service, _, self.method = procedure.partition("/")
        self.headers = headers
        self.peer = peer
        self.streaming = streaming
        self.deadline: float = math.inf
        self.auth: Any = None
        self.response_headers = Headers()
        self.response_trailers = Headers()
        self._started = trio.current_time()
        self._body_read = False
        self._held: _Held | None = None

    @property
    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header, if any."""
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def time_remaining(self) -> float:
        """Seconds until :attr:`deadline` (``math.inf`` without one; may be negative)."""
        return self.deadline - trio.current_time()

    def elapsed(self) -> float:
        """Seconds since the call arrived."""
        return trio.current_time() - self._started

    def __repr__(self) -> str:
        return f"CallContext({self.procedure!r}, peer={self.peer!r})"


# ---------------------------------------------------------------- bytes in flight


@final
class _Held:
    """The bytes one call holds (shared with a finalizer, so it must not refer to the call)."""

    __slots__ = ("key", "nbytes")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.nbytes = 0


@final
class InFlightBytes:
    """Request bytes held by calls in progress, bounded per caller and in total.

    Args:
        max_total_bytes: over every call.
        max_bytes_per_key: over the calls of one caller.
        key: the caller of an authenticated call (e.g. its user); called once
            per call, after ``authenticate``.

    A call that would go beyond either bound answers ``resource_exhausted``
    (reason ``caller_bytes_in_flight`` or ``server_bytes_in_flight``) and what
    it held is released. Everything a call holds is released when it ends, and
    at the latest when its context is garbage-collected (a call abandoned in a
    way that skipped its cleanup cannot leak the budget).
    """

    def __init__(
        self, *, max_total_bytes: int, max_bytes_per_key: int, key: Callable[[CallContext], Hashable] = lambda ctx: None
    ) -> None:
        if max_total_bytes < 1 or max_bytes_per_key < 1:
            raise ValueError("byte bounds must be positive")
        self.max_total_bytes = max_total_bytes
        self.max_bytes_per_key = max_bytes_per_key
        self._key = key
        self.total = 0
        self._per_key: dict[Hashable, int] = {}

    def held(self, key: Hashable) -> int:
        """Bytes the calls of ``key`` hold now."""
        return self._per_key.get(key, 0)

    def reserve(self, ctx: CallContext, nbytes: int) -> None:
        """Count ``nbytes`` more for the call ``ctx``.

        Raises:
            ResourceExhausted: beyond the caller's bound or the total.
        """
        held = ctx._held
        if held is None:
            held = ctx._held = _Held(self._key(ctx))
            weakref.finalize(ctx, self._release, held)
        mine = self._per_key.get(held.key, 0)
        if mine + nbytes > self.max_bytes_per_key:
            raise errors.ResourceExhausted(
                f"this caller's requests in progress would hold more than {self.max_bytes_per_key} bytes "
                f"({mine} held now): retry when they finish",
                reason="caller_bytes_in_flight",
            )
        if self.total + nbytes > self.max_total_bytes:
            raise errors.ResourceExhausted(
                f"requests in progress would hold more than {self.max_total_bytes} bytes: retry later",
                reason="server_bytes_in_flight",
            )
        held.nbytes += nbytes
        self._per_key[held.key] = mine + nbytes
        self.total += nbytes

    def release(self, ctx: CallContext) -> None:
        """Everything the call ``ctx`` holds (idempotent)."""
        if ctx._held is not None:
            self._release(ctx._held)

    def _release(self, held: _Held) -> None:
        if held.nbytes == 0:
            return
        self.total -= held.nbytes
        left = self._per_key[held.key] - held.nbytes
        if left:
            self._per_key[held.key] = left
        else:
            del self._per_key[held.key]
        held.nbytes = 0


# ---------------------------------------------------------------- the router


@final
class ConnectRouter:
    """The Connect endpoints of one app: several services, one set of hooks.

    Args:
        services: the services to serve (more with :meth:`add`).
        authenticate: ``await authenticate(ctx)`` before each call's body is
            read. It raises :class:`errors.Unauthenticated` or
            :class:`errors.PermissionDenied` to refuse the call.
        observe: ``observe(procedure, code, seconds)`` once per finished call.
            Its exceptions are logged and never affect the call.
        max_message_bytes: largest request message, compressed or not.
        compress_min_bytes: smallest response that is gzipped for clients that
            accept gzip.
        in_flight: bounds the request bytes calls in progress hold (None: only
            ``max_message_bytes`` per call).
    """

    def __init__(
        self,
        services: Iterable[Service] = (),
        *,
        authenticate: Authenticator | None = None,
        observe: Observer | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        compress_min_bytes: int = COMPRESS_MIN_BYTES,
        in_flight: InFlightBytes | None = None,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.in_flight = in_flight
        self.authenticate = authenticate
        self.observe = observe
        self.max_message_bytes = max_message_bytes
        self.compress_min_bytes = compress_min_bytes
        self._services: dict[str, Service] = {}
        self._routes: dict[str, _Route] = {}
        for service in services:
            self.add(service)

    def add(self, service: Service) -> None:
        """Serve one more service.

        Raises:
            ValueError: a service of that name is already served.
        """
        if service.name in self._services:
            raise ValueError(f"service {service.name} is already registered")
        self._services[service.name] = service
        self._routes.update(service._routes)

    @property
    def procedures(self) -> tuple[str, ...]:
        """Every procedure served (e.g. to initialise metric label sets)."""
        return tuple(self._routes)

    def register(self, app: QuartTrio, *, prefix: str = "") -> None:
        """Add the Connect endpoints to ``app``: one rule, ``<prefix>/<service>/<method>``.

        Other rules of the app (``/healthz``, ``/metrics``) keep working:
        werkzeug prefers rules with literal parts. Any other two-segment path
        answers Connect's 404. This raises ``app.config["MAX_CONTENT_LENGTH"]``
        to ``max_message_bytes`` (plus an envelope header) when it is set lower,
        since Quart enforces it before this module sees the body.

        Args:
            app: a Quart-Trio app (the handlers use trio).
            prefix: Connect's optional routing prefix, e.g. ``"/api"``.

        Raises:
            ValueError: ``prefix`` is malformed, or ``app`` already has Connect
                endpoints under it.
        """
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"prefix must start with '/' and not end with one: {prefix!r}")
        rule = f"{prefix}/<service>/<method>"
        if any(r.rule == rule for r in app.url_map.iter_rules()):
            raise ValueError(f"{rule} is already routed on this app")
        app.add_url_rule(
            rule,
            endpoint=f"connect:{prefix}",
            view_func=self._view,
            methods=list(_ROUTE_METHODS),
            provide_automatic_options=False,
        )
        wire_limit = self.max_message_bytes + _ENVELOPE.size
        quart_limit = app.config.get("MAX_CONTENT_LENGTH")
        if quart_limit is not None and quart_limit < wire_limit:
            app.config["MAX_CONTENT_LENGTH"] = wire_limit

    # -- dispatch --------------------------------------------------------------

    async def _view(self, service: str, method: str) -> Response:
        request = current_request
        route = self._routes.get(f"{service}/{method}")
        if route is None:
            # Not a call: no observe (unknown paths must not mint metric labels).
            error = errors.Unimplemented(f"{service}/{method} is not a known procedure"[:_MAX_DETAIL_CHARS])
            headers = _unread_body(Headers({"Content-Type": "application/json"}), request.content_length != 0)
            return _response(json.dumps(_error_json(error)).encode(), 404, headers)
        if request.method != "POST":
            return _response(b"", 405, _unread_body(Headers({"Allow": "POST"}), request.content_length != 0))
        codec = _negotiate_codec(request.headers.get("Content-Type", ""), streaming=route.streaming)
        if codec is None:
            accept = ", ".join(_STREAM_TYPES if route.streaming else _UNARY_TYPES)
            return _response(b"", 415, _unread_body(Headers({"Accept-Post": accept}), request.content_length != 0))
        client = request.scope.get("client")
        ctx = CallContext(
            procedure=route.procedure,
            headers=request.headers,
            peer=(str(client[0]), int(client[1])) if client else None,
            streaming=route.streaming,
        )
        if route.streaming:
            return await self._stream(route, codec, ctx)
        return await self._unary(route, codec, ctx)

    async def _unary(self, route: _Route, codec: _Codec, ctx: CallContext) -> Response:
        code = errors.Cancelled.connect_code  # what observe hears if Cancelled propagates
        try:
            try:
                with trio.CancelScope(deadline=_call_deadline(ctx)) as scope:
                    payload, gzipped = await self._unary_steps(route, codec, ctx)
                if scope.cancelled_caught:
                    raise _deadline_error(ctx)
            except errors.AgentError as exc:
                code = exc.connect_code
                return self._error_response(exc, ctx)
            except Exception as exc:
                error = self._internal(route, exc)
                code = error.connect_code
                return self._error_response(error, ctx)
            code = CODE_OK
            headers = Headers({"Content-Type": f"application/{codec.name}"})
            if gzipped:
                headers["Content-Encoding"] = "gzip"
            _add_metadata(headers, ctx)
            return _response(payload, 200, headers)
        finally:
            self._release(ctx)
            self._observe(route.procedure, code, ctx)

    async def _unary_steps(self, route: _Route, codec: _Codec, ctx: CallContext) -> tuple[bytes, bool]:
        request = current_request
        await self._authorize(route, ctx)
        message = await self._unary_message(route, codec, ctx)
        assert route.handler is not None  # _authorize checked
        # The handler's coroutine is the only holder of the message: one that
        # forwards a large field can drop the rest while it waits.
        call = route.handler(message, ctx)
        del message
        result = await call
        payload = await self._encode(route, codec, result)
        gzip_response = len(payload) >= self.compress_min_bytes and _accepts_gzip(
            request.headers.get("Accept-Encoding"), request.headers.get("Content-Encoding")
        )
        if gzip_response:
            payload = await _offload(len(payload), _gzip, payload)
        return payload, gzip_response

    async def _unary_message(self, route: _Route, codec: _Codec, ctx: CallContext) -> Message:
        """Read and decode the request; the body is gone when this returns."""
        gzipped = _content_encoding(current_request.headers.get("Content-Encoding"))
        body = await self._read_body(ctx, self.max_message_bytes)
        if gzipped and body:  # spec: never decompress an empty body
            body = await _offload(len(body), _gunzip, body, self.max_message_bytes)
            self._reserve(ctx, len(body))
        return await self._decode(codec, body, route.input_type)

    def _reserve(self, ctx: CallContext, nbytes: int) -> None:
        """Raises: ResourceExhausted: beyond the bytes-in-flight bounds."""
        if self.in_flight is not None:
            self.in_flight.reserve(ctx, nbytes)

    def _release(self, ctx: CallContext) -> None:
        if self.in_flight is not None:
            self.in_flight.release(ctx)

    async def _stream(self, route: _Route, codec: _Codec, ctx: CallContext) -> Response:
        request = current_request
        content_type = f"application/connect+{codec.name}"
        gzip_messages = _accepts_gzip(
            request.headers.get("Connect-Accept-Encoding"), request.headers.get("Connect-Content-Encoding")
        )
        error: errors.AgentError | None = None
        started = False
        try:
            try:
                with trio.CancelScope(deadline=_call_deadline(ctx)) as scope:
                    message = await self._stream_prelude(route, codec, ctx)
                if scope.cancelled_caught:
                    raise _deadline_error(ctx)
            except errors.AgentError as exc:
                error = exc
            except Exception as exc:
                error = self._internal(route, exc)
            headers = Headers({"Content-Type": content_type})
            if error is not None:
                # Spec: streams answer 200 and carry the error in the end message.
                for key, value in ctx.response_headers.items():
                    headers.add(key, value)
                return _response(_end_stream(error, ctx), 200, _unread_body(headers, not ctx._body_read))
            if gzip_messages:
                headers["Connect-Content-Encoding"] = "gzip"
            for key, value in ctx.response_headers.items():
                headers.add(key, value)
            body = _StreamBody(self, route, codec, ctx, message, gzip_messages=gzip_messages)
            started = True
            return _response(body, 200, headers)
        finally:
            if not started:
                self._release(ctx)
                code = error.connect_code if error is not None else errors.Cancelled.connect_code
                self._observe(route.procedure, code, ctx)

    async def _stream_prelude(self, route: _Route, codec: _Codec, ctx: CallContext) -> Message:
        """Authorize, then read and decode the one enveloped request message."""
        request = current_request
        await self._authorize(route, ctx)
        gzipped = _content_encoding(request.headers.get("Connect-Content-Encoding"))
        body = await self._read_body(ctx, self.max_message_bytes + _ENVELOPE.size)
        flags, data = _single_envelope(body, gzipped=gzipped, limit=self.max_message_bytes)
        del body
        if data and flags & _FLAG_COMPRESSED:  # spec: never decompress an empty message
            data = await _offload(len(data), _gunzip, data, self.max_message_bytes)
            self._reserve(ctx, len(data))
        return await self._decode(codec, data, route.input_type)

    # -- steps shared by unary and streaming calls -----------------------------

    async def _authorize(self, route: _Route, ctx: CallContext) -> None:
        version = ctx.headers.get("Connect-Protocol-Version")
        if version is not None and version.strip() != _PROTOCOL_VERSION:
            raise errors.InvalidArgument(f"Connect-Protocol-Version must be {_PROTOCOL_VERSION!r}")
        if self.authenticate is not None:
            await self.authenticate(ctx)
        if route.handler is None:
            raise errors.Unimplemented(route.why_unimplemented)

    async def _read_body(self, ctx: CallContext, limit: int) -> bytearray:
        """The whole request body, refusing more than ``limit`` bytes. Returned as
        read (a bytearray: the decoders take it as is, no second copy).

        Raises:
            ResourceExhausted: the body (or its Content-Length) exceeds ``limit``,
                or the bytes-in-flight bounds.
            DeadlineExceeded: it did not arrive within Quart's BODY_TIMEOUT.
        """
        request = current_request
        too_big = errors.ResourceExhausted(f"request message larger than {self.max_message_bytes} bytes")
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_big
        if declared is not None:
            self._reserve(ctx, declared)  # refused before a byte is read
        # Sized once when the length is known: growing by += reallocates, and a
        # reallocation briefly holds the body twice.
        body = bytearray(declared or 0)
        filled = 0
        timeout = request.body_timeout if request.body_timeout is not None else math.inf
        with trio.move_on_after(timeout) as scope:
            try:
                async for chunk in request.body:
                    end = filled + len(chunk)
                    if end > limit:
                        raise too_big
                    if declared is None:  # chunked: counted as it arrives
                        self._reserve(ctx, len(chunk))
                    if end <= len(body):
                        body[filled:end] = chunk  # same length: copied in place
                    else:
                        del body[filled:]
                        body += chunk
                    filled = end
            except RequestEntityTooLarge as exc:  # Quart's own MAX_CONTENT_LENGTH
                raise too_big from exc
        if scope.cancelled_caught:
            raise errors.DeadlineExceeded(f"request body not received within {timeout} s")
        del body[filled:]  # a body shorter than announced
        ctx._body_read = True
        return body

    async def _decode(self, codec: _Codec, data: bytes, cls: type[Message]) -> Message:
        try:
            return await _offload(len(data), codec.decode, data, cls)
        except errors.AgentError:
            raise
        except Exception as exc:  # anything the parser says about client input
            detail = str(exc)[:_MAX_DETAIL_CHARS]
            what = f"cannot decode {cls.DESCRIPTOR.full_name} from {codec.name}"
            raise errors.InvalidArgument(f"{what}: {detail}") from exc

    async def _encode(self, route: _Route, codec: _Codec, result: object) -> bytes:
        if not isinstance(result, route.output_type):
            expected = route.output_type.DESCRIPTOR.full_name
            raise TypeError(f"{route.procedure} returned {type(result).__name__}, not {expected}")
        payload: bytes = await _offload(result.ByteSize(), codec.encode, result)
        return payload

    def _internal(self, route: _Route, exc: Exception) -> errors.AgentError:
        """The error a non-AgentError exception becomes (logged, never sent)."""
        leaves = _leaves(exc)
        # A nursery in the handler wraps a single AgentError in a group.
        if len(leaves) == 1 and isinstance(leaves[0], errors.AgentError):
            return leaves[0]
        log.error("%s failed: %s", route.procedure, type(exc).__name__, exc_info=exc)
        return errors.Internal("internal error")

    def _error_response(self, error: errors.AgentError, ctx: CallContext) -> Response:
        headers = _unread_body(Headers({"Content-Type": "application/json"}), not ctx._body_read)
        _add_metadata(headers, ctx)
        return _response(json.dumps(_error_json(error)).encode(), error.http_status, headers)

    def _observe(self, procedure: str, code: str, ctx: CallContext) -> None:
        if self.observe is None:
            return
        try:
            self.observe(procedure, code, ctx.elapsed())
        except Exception:
            log.exception("observe hook failed for %s", procedure)


# ---------------------------------------------------------------- streaming


@final
class _StreamBody(ResponseBody):
    """The body of a streaming response: the handler's messages, then the end.

    Quart iterates it in the request's task and closes it (``__aexit__``)
    however the iteration ends, including by cancellation when the client
    disconnects. Each step of the handler's generator runs in its own cancel
    scope carrying the call's deadline. A scope must never stay open across a
    ``yield`` to Quart.
    """

    def __init__(
        self,
        router: ConnectRouter,
        route: _Route,
        codec: _Codec,
        ctx: CallContext,
        message: Message,
        *,
        gzip_messages: bool,
    ) -> None:
        self._router = router
        self._route = route
        self._codec = codec
        self._ctx = ctx
        self._message: Message | None = message
        self._gzip = gzip_messages
        self._agen: AsyncIterator[Message] | None = None
        self._done = False

    async def __aenter__(self) -> _StreamBody:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> _StreamBody:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            message = await self._next_message()
            if message is None:
                return await self._finish(None)
            payload = await self._router._encode(self._route, self._codec, message)
            if self._gzip and len(payload) >= self._router.compress_min_bytes:
                return _envelope(_FLAG_COMPRESSED, await _offload(len(payload), _gzip, payload))
            return _envelope(0, payload)
        except errors.AgentError as exc:
            return await self._finish(exc)
        except Exception as exc:
            return await self._finish(self._router._internal(self._route, exc))

    async def _next_message(self) -> Message | None:
        """The handler's next message, None at its end.

        Raises:
            DeadlineExceeded: the call's deadline passed.
        """
        if self._agen is None:
            assert self._route.handler is not None and self._message is not None
            agen = self._route.handler(self._message, self._ctx)
            self._message = None
            if not hasattr(agen, "__anext__"):
                raise TypeError(f"{self._route.procedure} returned {type(agen).__name__}, not an async iterator")
            self._agen = agen
        deadline = self._ctx.deadline
        # A generator that yields without awaiting never reaches a checkpoint
        # where the scope could cancel it: check the deadline between messages too.
        if trio.current_time() >= deadline:
            raise _deadline_error(self._ctx)
        with trio.CancelScope(deadline=deadline) as scope:
            try:
                return await self._agen.__anext__()
            except StopAsyncIteration:
                return None
        if scope.cancelled_caught:
            raise _deadline_error(self._ctx)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _finish(self, error: errors.AgentError | None) -> bytes:
        """Close the handler and return the end-of-stream envelope (observed once)."""
        self._done = True
        try:
            await self._close_handler()
        finally:
            code = error.connect_code if error is not None else CODE_OK
            self._router._observe(self._route.procedure, code, self._ctx)
        return _end_stream(error, self._ctx)

    async def aclose(self) -> None:
        """Close the handler's generator now (its ``finally`` runs)."""
        try:
            await self._close_handler()
        finally:
            if not self._done:  # the client went away, or the server is stopping
                self._done = True
                self._router._observe(self._route.procedure, errors.Cancelled.connect_code, self._ctx)

    async def _close_handler(self) -> None:
        agen, self._agen = self._agen, None
        self._message = None
        aclose = getattr(agen, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        except Exception:
            log.exception("%s: closing the stream handler failed", self._route.procedure)
        finally:
            self._router._release(self._ctx)


def _single_envelope(body: bytes, *, gzipped: bool, limit: int) -> tuple[int, bytes]:
    """The flags and message of the one envelope a server-streaming request holds.

    Raises:
        ResourceExhausted: an envelope claims more than ``limit`` bytes.
        InvalidArgument: truncated envelopes, unknown flags, a compressed
            message without Connect-Content-Encoding.
        Unimplemented: not exactly one message (connect-go's code for it).
    """
    messages: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < _ENVELOPE.size:
            raise errors.InvalidArgument("truncated envelope header")
        flags, length = _ENVELOPE.unpack_from(body, pos)
        if length > limit:  # from the header alone, before buffering anything
            raise errors.ResourceExhausted(f"request message larger than {limit} bytes")
        if flags & ~_FLAG_COMPRESSED:
            raise errors.InvalidArgument(f"invalid envelope flags 0x{flags:02x} in a request")
        if flags & _FLAG_COMPRESSED and not gzipped:
            raise errors.InvalidArgument("compressed message without Connect-Content-Encoding")
        end = pos + _ENVELOPE.size + length
        if end > len(body):
            raise errors.InvalidArgument("truncated message envelope")
        messages.append((flags, body[pos + _ENVELOPE.size : end]))
        pos = end
    if len(messages) != 1:
        raise errors.Unimplemented(f"a server-streaming request holds exactly one message, not {len(messages)}")
    return messages[0]


def _end_stream(error: errors.AgentError | None, ctx: CallContext) -> bytes:
    end: dict[str, Any] = {}
    if error is not None:
        end["error"] = _error_json(error)
    if ctx.response_trailers:
        metadata: dict[str, list[str]] = {}
        for key, value in ctx.response_trailers.items():
            metadata.setdefault(key.lower(), []).append(value)
        end["metadata"] = metadata
    return _envelope(_FLAG_END_STREAM, json.dumps(end).encode())


# ---------------------------------------------------------------- helpers


def _call_deadline(ctx: CallContext) -> float:
    """Parse Connect-Timeout-Ms into ``ctx.deadline`` (counted from arrival).

    Raises:
        InvalidArgument: the header is not 1 to 10 digits.
    """
    value = ctx.headers.get("Connect-Timeout-Ms")
    if value is not None:
        if not _TIMEOUT_RE.fullmatch(value.strip()):
            shown = value[:_MAX_DETAIL_CHARS]
            raise errors.InvalidArgument(f"invalid Connect-Timeout-Ms {shown!r}: 1 to 10 digits expected")
        ctx.deadline = ctx._started + int(value) / 1000
    return ctx.deadline


def _deadline_error(ctx: CallContext) -> errors.DeadlineExceeded:
    timeout_ms = ctx.headers.get("Connect-Timeout-Ms", "")
    return errors.DeadlineExceeded(f"{ctx.procedure}: deadline of {timeout_ms} ms exceeded")


def _unread_body(headers: Headers, unread: bool) -> Headers:
    """Ask an HTTP/1 client to close when answering before its body was read.

    hypercorn hands the body to the app through a bounded queue that nobody
    drains once the app has answered. A client still sending a large body then
    wedges the connection, and a keep-alive client that reuses it hangs until
    its own timeout. A closed connection cannot be reused. (HTTP/2 streams are
    independent and forbid this header.)
    """
    if unread and current_request.http_version in ("1.0", "1.1"):
        headers["Connection"] = "close"
    return headers


def _add_metadata(headers: Headers, ctx: CallContext) -> None:
    for key, value in ctx.response_headers.items():
        headers.add(key, value)
    for key, value in ctx.response_trailers.items():
        headers.add(f"Trailer-{key}", value)


def _response(body: bytes | ResponseBody, status: int, headers: Headers) -> Response:
    response: Response = current_app.response_class(body, status=status, headers=headers)
    if "Content-Type" not in headers:
        response.headers.pop("Content-Type", None)  # not Quart's default text/html
    # Quart's RESPONSE_TIMEOUT would silently cut long streams; Connect-Timeout-Ms rules.
    response.timeout = None
    return response
