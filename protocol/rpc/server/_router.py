"""The router: one handler table, served over pluggable wire protocols.

A request is dispatched in three steps:

1. the path names a procedure of the handler table (:class:`~._service.Service`);
   an unknown one answers 404 ``unimplemented``;
2. the first :class:`Protocol` whose :meth:`Protocol.codec` accepts the request's
   HTTP method and ``Content-Type`` serves it (Connect unary and Connect streaming
   today; gRPC and gRPC-Web plug in the same way). No protocol for the method:
   405; none for the content type: 415 (both with a Connect JSON error body);
3. the protocol runs the call with the router's shared steps: :meth:`Router.authorize`,
   :meth:`Router.read_body`, :meth:`Router.decode`, :meth:`Router.encode`,
   :meth:`Router.internal`, :meth:`Router.observe`, and the bytes-in-flight bounds.

What each protocol decides alone: its deadline header, its framing, how it says an
error (Connect: JSON body or end-of-stream message; gRPC: trailers), compression
headers.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, Final, cast, final

import trio
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from quart import current_app
from quart import request as current_request
from quart.wrappers import Response
from quart.wrappers.response import ResponseBody
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge

from ... import errors
from ...limits import check_density
from .._codec import ENVELOPE_HEADER, MAX_DETAIL_CHARS, Codec, compressible
from .._errors import error_body
from ._context import CallContext, InFlightBytes
from ._service import Route, Service

__all__ = [
    "CODE_OK",
    "COMPRESS_MIN_BYTES",
    "MAX_MESSAGE_BYTES",
    "Authenticator",
    "Observer",
    "Protocol",
    "Router",
    "offload",
    "response",
    "unread_body",
]

log = logging.getLogger("limiquantix.protocol.rpc.server")

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
Authenticator = Callable[[CallContext], Awaitable[None]]
#: ``observe(procedure, code, seconds)``, once per finished call (sync: it is
#: meant for prometheus-client counters and histograms).
Observer = Callable[[str, str, float], None]

# Codec and compression work on payloads above this size runs in a worker
# thread, so that one 64 MiB file transfer (about a second of JSON work) does not
# stall every other VM's connection on the event loop.
_OFFLOAD_BYTES: Final = 1024 * 1024
# Every verb reaches the view, so that all but the protocols' own get a JSON 405
# rather than Quart's HTML one (OPTIONS included: nothing here answers CORS preflights).
_ROUTE_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def offload(size: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, in a worker thread when ``size`` says the work is big."""
    if size > _OFFLOAD_BYTES:
        return await trio.to_thread.run_sync(fn, *args)
    return fn(*args)


def _checked_decode(codec: Codec, data: bytes | bytearray, cls: type[Message]) -> Message:
    """``data`` as a ``cls`` once :func:`~limiquantix.protocol.limits.check_density` passed it.

    Raises:
        InvalidArgument: see :meth:`Router.decode`.
    """
    # (A class's DESCRIPTOR is typed as either of protobuf's Descriptor classes; it is the one.)
    check_density(data, cast(Descriptor, cls.DESCRIPTOR), json=codec.name == "json")
    return codec.decode(data, cls)


class Protocol(abc.ABC):
    """One wire protocol over the router's handler table.

    Subclasses set :attr:`name` (it is ``ctx.protocol``) and :attr:`methods`, and
    implement the three methods. They are stateless: one instance serves every call.
    """

    name: ClassVar[str]
    #: The HTTP methods this protocol serves (Connect: POST; Connect GET adds GET).
    methods: ClassVar[frozenset[str]] = frozenset({"POST"})

    def allows(self, route: Route) -> frozenset[str]:
        """The HTTP methods this protocol serves ``route`` with (for 405's ``Allow``)."""
        return self.methods

    @abc.abstractmethod
    def codec(self, method: str, content_type: str, route: Route) -> Codec | None:
        """The codec to serve ``route`` with when this protocol takes the request, else None."""

    @abc.abstractmethod
    def media_types(self, route: Route) -> Sequence[str]:
        """The content types this protocol takes for ``route`` (listed in 415 answers)."""

    @abc.abstractmethod
    async def serve(self, router: Router, route: Route, codec: Codec, ctx: CallContext) -> Response:
        """Run one call and answer it. Never raises but ``trio.Cancelled`` (the client
        went away, the server stops); it observes the call exactly once."""


@final
class Router:
    """The RPC endpoints of one app: several services, one set of hooks, several protocols.

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
        protocols: the wire protocols, tried in order (default: Connect unary and
            Connect server streaming).
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
        protocols: Sequence[Protocol] | None = None,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        if protocols is None:
            from ._connect import CONNECT_PROTOCOLS  # _connect builds on this module

            protocols = CONNECT_PROTOCOLS
        self.protocols: tuple[Protocol, ...] = tuple(protocols)
        self.in_flight = in_flight
        self.authenticate = authenticate
        self.observe = observe
        self.max_message_bytes = max_message_bytes
        self.compress_min_bytes = compress_min_bytes
        self._services: dict[str, Service] = {}
        self._routes: dict[str, Route] = {}
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
        self._routes.update(service.routes)

    @property
    def procedures(self) -> tuple[str, ...]:
        """Every procedure served (e.g. to initialise metric label sets)."""
        return tuple(self._routes)

    @property
    def services(self) -> tuple[Service, ...]:
        """The services served (e.g. for reflection)."""
        return tuple(self._services.values())

    def register(self, app: QuartTrio, *, prefix: str = "") -> None:
        """Add the endpoints to ``app``: one rule, ``<prefix>/<service>/<method>``.

        Other rules of the app (``/healthz``, ``/metrics``) keep working:
        werkzeug prefers rules with literal parts. Any other two-segment path
        answers a 404 ``unimplemented``. This raises ``app.config["MAX_CONTENT_LENGTH"]``
        to ``max_message_bytes`` (plus an envelope header) when it is set lower,
        since Quart enforces it before this module sees the body.

        Args:
            app: a Quart-Trio app (the handlers use trio).
            prefix: Connect's optional routing prefix, e.g. ``"/api"``.

        Raises:
            ValueError: ``prefix`` is malformed, or ``app`` already has endpoints under it.
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
        # gRPC and gRPC-Web on the same paths, below Quart (their status goes in trailers).
        from ._grpc import GrpcApp  # _grpc builds on this module

        # Quart's ASGI types are TypedDicts, GrpcApp's plain mappings of the same dicts.
        app.asgi_app = GrpcApp(  # type: ignore[method-assign, assignment]
            app.asgi_app,  # type: ignore[arg-type]
            self,
            prefix=prefix,
            body_timeout_s=app.config.get("BODY_TIMEOUT") or math.inf,
        )
        wire_limit = self.max_message_bytes + ENVELOPE_HEADER.size
        quart_limit = app.config.get("MAX_CONTENT_LENGTH")
        if quart_limit is not None and quart_limit < wire_limit:
            app.config["MAX_CONTENT_LENGTH"] = wire_limit

    # -- dispatch --------------------------------------------------------------

    async def _view(self, service: str, method: str) -> Response:
        request = current_request
        unread = request.content_length != 0
        route = self._routes.get(f"{service}/{method}")
        if route is None:
            # Not a call: no observe (unknown paths must not mint metric labels).
            error = errors.Unimplemented(f"{service}/{method} is not a known procedure"[:MAX_DETAIL_CHARS])
            return self.reject(error, 404, Headers(), unread=unread)
        allowed = sorted({m for p in self.protocols for m in p.allows(route)})
        if request.method not in allowed:
            error = errors.Unimplemented(
                f"HTTP {request.method[:16]} is not served here: use {', '.join(allowed)}", reason="method_not_allowed"
            )
            return self.reject(error, 405, Headers({"Allow": ", ".join(allowed)}), unread=unread)
        content_type = request.headers.get("Content-Type", "")
        for protocol in self.protocols:
            codec = protocol.codec(request.method, content_type, route)
            if codec is not None:
                break
        else:
            accept = [t for p in self.protocols if request.method in p.methods for t in p.media_types(route)]
            shown = content_type[:MAX_DETAIL_CHARS] or "none"
            error = errors.Unimplemented(
                f"Content-Type {shown!r} is not served for {route.procedure}: use one of {', '.join(accept)}",
                reason="unsupported_media_type",
            )
            return self.reject(error, 415, Headers({"Accept-Post": ", ".join(accept)}), unread=unread)
        ctx = CallContext.from_scope(
            request.scope, request.headers, procedure=route.procedure, streaming=route.streaming, protocol=protocol.name
        )
        return await protocol.serve(self, route, codec, ctx)

    def reject(self, error: errors.AgentError, status: int, headers: Headers, *, unread: bool) -> Response:
        """An answer to a request that is not a call (404, 405, 415): a Connect JSON
        error body with ``status`` (HTTP's own status, not the code's)."""
        headers["Content-Type"] = "application/json"
        return response(error_body(error), status, unread_body(headers, unread))

    # -- steps shared by the protocols ------------------------------------------

    async def authorize(self, route: Route, ctx: CallContext) -> None:
        """Authenticate the call and check its procedure is implemented.

        Raises:
            Unauthenticated, PermissionDenied: from the ``authenticate`` hook.
            Unimplemented: the procedure has no handler.
        """
        if self.authenticate is not None:
            await self.authenticate(ctx)
        if route.handler is None:
            raise errors.Unimplemented(route.why_unimplemented)

    async def read_body(self, ctx: CallContext, limit: int) -> bytearray:
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
            self.reserve(ctx, declared)  # refused before a byte is read
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
                        self.reserve(ctx, len(chunk))
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

    async def decode(self, codec: Codec, data: bytes | bytearray, cls: type[Message]) -> Message:
        """Raises: InvalidArgument: ``data`` is not a ``cls`` in ``codec``, or holds more fields
        than a request may (``limits.check_density``: checked before the parse, whose cost and
        memory are per field)."""
        try:
            # The check in the same worker thread as the parse when the body is big (~1 us a field).
            message: Message = await offload(len(data), _checked_decode, codec, data, cls)
            return message
        except errors.AgentError:
            raise
        except Exception as exc:  # anything the parser says about client input
            detail = str(exc)[:MAX_DETAIL_CHARS]
            what = f"cannot decode {cls.DESCRIPTOR.full_name} from {codec.name}"
            raise errors.InvalidArgument(f"{what}: {detail}") from exc

    async def encode(self, route: Route, codec: Codec, result: object) -> bytes:
        """Raises: TypeError: the handler returned something else than its output type."""
        if not isinstance(result, route.output_type):
            expected = route.output_type.DESCRIPTOR.full_name
            raise TypeError(f"{route.procedure} returned {type(result).__name__}, not {expected}")
        payload: bytes = await offload(result.ByteSize(), codec.encode, result)
        return payload

    async def worth_gzipping(self, payload: bytes) -> bool:
        """Whether a response ``payload`` is gzipped for a client that accepts gzip: at least
        ``compress_min_bytes`` long, and it shrinks (:func:`~.._codec.compressible`)."""
        if len(payload) < self.compress_min_bytes:
            return False
        return bool(await offload(len(payload), compressible, payload))

    def internal(self, route: Route, exc: Exception) -> errors.AgentError:
        """The error a non-AgentError exception becomes (logged, never sent)."""
        # A nursery in the handler wraps a single AgentError in a group.
        sole = errors.sole_error(exc)
        if sole is not None:
            return sole
        log.error("%s failed: %s", route.procedure, type(exc).__name__, exc_info=exc)
        return errors.Internal("internal error")

    def reserve(self, ctx: CallContext, nbytes: int) -> None:
        """Raises: ResourceExhausted: beyond the bytes-in-flight bounds."""
        if self.in_flight is not None:
            self.in_flight.reserve(ctx, nbytes)

    def release(self, ctx: CallContext) -> None:
        if self.in_flight is not None:
            self.in_flight.release(ctx)

    def observed(self, procedure: str, code: str, ctx: CallContext) -> None:
        """Tell the ``observe`` hook a call ended (its failures are logged, never raised)."""
        if self.observe is None:
            return
        try:
            self.observe(procedure, code, ctx.elapsed())
        except Exception:
            log.exception("observe hook failed for %s", procedure)


def unread_body(headers: Headers, unread: bool) -> Headers:
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


def response(body: bytes | ResponseBody, status: int, headers: Headers) -> Response:
    """A Quart response with exactly ``headers`` (no default Content-Type) and no
    Quart ``RESPONSE_TIMEOUT``: that would silently cut long streams; the call's
    own deadline rules."""
    resp: Response = current_app.response_class(body, status=status, headers=headers)
    if "Content-Type" not in headers:
        resp.headers.pop("Content-Type", None)  # not Quart's default text/html
    resp.timeout = None
    return resp
