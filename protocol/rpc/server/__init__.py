"""The server half of the rpc layer, for Quart-Trio apps served by hypercorn.

Not shipped in the agent's package (it needs quart and hypercorn; the agent never
serves HTTP).

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
            yield Last(...)  # optional: the last message, sent with the stream's end (see Last)

    router = Router([Service(SERVICE_DESCRIPTOR, NodeAPI())], authenticate=..., observe=...)
    router.register(app)

Behaviour, and why where Connect leaves a choice:

* **Routing.** One catch-all rule ``/<service>/<method>`` per app (under an
  optional routing prefix). An unknown procedure answers 404 with code
  ``unimplemented`` (404 is what connect-go answers, and ``unimplemented`` is
  what the spec's HTTP-to-code table infers from it). An RPC that is in the
  descriptor but not on the implementation object answers 501 ``unimplemented``.
  Client- and bidi-streaming RPCs answer ``unimplemented`` as well.
* **Protocols.** One handler table; each wire protocol is a
  :class:`Protocol` chosen by HTTP method and ``Content-Type`` (see
  :mod:`._router`). Connect unary and server streaming are the defaults.
* **HTTP method.** POST; unary RPCs marked ``idempotency_level =
  NO_SIDE_EFFECTS`` also GET (:class:`ConnectGet`: the request in the query,
  ``message`` percent-encoded or, with ``base64=1``, URL-safe base64;
  ``encoding=json|proto``; ``compression``; ``connect=v1``; a query without a
  known ``encoding`` or ``message`` is ``invalid_argument``). Anything else gets
  405 with ``Allow: POST`` (or ``GET, POST``) and a Connect JSON error body (code
  ``unimplemented``, reason ``method_not_allowed``), so clients that show errors show why.
* **gRPC, gRPC-Web, reflection.** :meth:`Router.register` puts the gRPC layer
  (:mod:`._grpc`) in front of the app: the same handlers and shared steps over
  gRPC (HTTP/2) and gRPC-Web, on the same paths, and gRPC server reflection
  (``grpc.reflection.v1`` and ``v1alpha``, :mod:`._reflection`).
* **Content types.** Unary RPCs take ``application/json`` (optionally
  ``; charset=utf-8``) or ``application/proto``; streaming RPCs take
  ``application/connect+json`` or ``application/connect+proto``. Anything else,
  or none, gets 415 with an ``Accept-Post`` header (spec: "must respond with
  415") and a Connect JSON error body (reason ``unsupported_media_type``). The
  response uses the request's codec. A streaming request whose body is not
  enveloped (a bare JSON message) answers ``invalid_argument`` saying the
  envelope is missing.
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
  the client accepts gzip, they are at least ``compress_min_bytes`` long and,
  from 256 KiB on, samples of them shrink (``rpc._codec.compressible``: random or
  already compressed file contents go as they are); responses say ``Vary: Accept-Encoding`` (streams: ``Vary:
  Connect-Accept-Encoding``).
* **Errors.** Unary: JSON ``{"code", "message"}`` with the status of
  :attr:`errors.AgentError.http_status` (the one table, :data:`errors.CODES`;
  the body's encoding is :mod:`limiquantix.protocol.rpc`'s, shared with the clients). An :class:`~errors.AgentError` with a
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
  stream; ``Connect-Timeout-Ms`` is the deadline. :meth:`Router.register`
  raises the app's ``MAX_CONTENT_LENGTH`` (16 MiB by default) to the router's
  limit when it is lower. Quart's ``BODY_TIMEOUT`` still bounds how long a
  request body may take to arrive (``deadline_exceeded``).
* **Metadata.** ``ctx.response_headers`` become response headers.
  ``ctx.response_trailers`` become ``Trailer-`` headers (unary) or the
  end-of-stream ``metadata`` (streaming). A streaming response's headers are sent
  before the generator starts, so headers the generator sets are not sent; set
  trailers instead.
"""

from ._connect import CONNECT_PROTOCOLS as CONNECT_PROTOCOLS
from ._connect import ConnectGet as ConnectGet
from ._connect import ConnectStream as ConnectStream
from ._connect import ConnectUnary as ConnectUnary
from ._context import CallContext as CallContext
from ._context import InFlightBytes as InFlightBytes
from ._router import CODE_OK as CODE_OK
from ._router import COMPRESS_MIN_BYTES as COMPRESS_MIN_BYTES
from ._router import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from ._router import Authenticator as Authenticator
from ._router import Observer as Observer
from ._router import Protocol as Protocol
from ._router import Router as Router
from ._service import Last as Last
from ._service import Route as Route
from ._service import Service as Service
from ._serving import KEEP_ALIVE_TIMEOUT_S as KEEP_ALIVE_TIMEOUT_S
from ._serving import LISTEN_BACKLOG as LISTEN_BACKLOG
from ._serving import ServedApp as ServedApp
from ._serving import ServerTLS as ServerTLS
from ._serving import http_config as http_config
from ._serving import peer_common_name as peer_common_name
from ._serving import serve_http as serve_http
from ._serving import server_ssl_context as server_ssl_context
from ._serving import transport_summary as transport_summary

__all__ = [
    "CODE_OK",
    "COMPRESS_MIN_BYTES",
    "CONNECT_PROTOCOLS",
    "KEEP_ALIVE_TIMEOUT_S",
    "LISTEN_BACKLOG",
    "MAX_MESSAGE_BYTES",
    "Authenticator",
    "CallContext",
    "ConnectGet",
    "ConnectStream",
    "ConnectUnary",
    "InFlightBytes",
    "Last",
    "Observer",
    "Protocol",
    "Route",
    "Router",
    "ServedApp",
    "ServerTLS",
    "Service",
    "http_config",
    "peer_common_name",
    "serve_http",
    "server_ssl_context",
    "transport_summary",
]
