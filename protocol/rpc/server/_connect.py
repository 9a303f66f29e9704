"""The Connect protocol over the router: unary and server streaming.

https://connectrpc.com/docs/protocol; what is implemented::

    POST /<package>.<Service>/<Method>
      unary             application/json | application/proto      bare message
      server streaming  application/connect+json | +proto         enveloped messages

The behaviour where Connect leaves a choice is described in the package's docstring
(:mod:`limiquantix.protocol.rpc.server`).
"""

from __future__ import annotations

import abc
import base64
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, final

import trio
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.message import Message
from quart import request as current_request
from quart.wrappers import Response
from quart.wrappers.response import ResponseBody
from werkzeug.datastructures import Headers

from ... import errors
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
from .._deadline import CONNECT_TIMEOUT_HEADER, parse_connect_timeout_ms
from .._errors import error_body, error_json
from ._context import CallContext
from ._router import CODE_OK, Protocol, Router, offload, response, unread_body
from ._service import Last, Route

__all__ = ["CONNECT_PROTOCOLS", "ConnectGet", "ConnectStream", "ConnectUnary"]

log = logging.getLogger("limiquantix.protocol.rpc.server")

_PROTOCOL_VERSION: Final = "1"
_UNARY_TYPES: Final = {"application/json": JSON, "application/proto": PROTO}
_STREAM_TYPES: Final = {"application/connect+json": JSON, "application/connect+proto": PROTO}


def _negotiate(content_type: str, types: dict[str, Codec]) -> Codec | None:
    """The codec a request's Content-Type names, or None (-> 415)."""
    media, _, params = content_type.partition(";")
    codec = types.get(media.strip().lower())
    if codec is None or not params.strip():
        return codec
    # Like connect-go: JSON may say charset=utf-8; any other parameter is refused.
    name, _, value = params.strip().partition("=")
    if codec is JSON and name.strip().lower() == "charset" and value.strip().strip('"').lower() == "utf-8":
        return codec
    return None


def _check_version(ctx: CallContext) -> None:
    """Raises: InvalidArgument: a Connect-Protocol-Version other than 1."""
    version = ctx.headers.get("Connect-Protocol-Version")
    if version is not None and version.strip() != _PROTOCOL_VERSION:
        raise errors.InvalidArgument(f"Connect-Protocol-Version must be {_PROTOCOL_VERSION!r}")


def _call_deadline(ctx: CallContext) -> float:
    """Parse Connect-Timeout-Ms into ``ctx.deadline`` (counted from arrival).

    Raises:
        InvalidArgument: the header is not 1 to 10 digits.
    """
    value = ctx.headers.get(CONNECT_TIMEOUT_HEADER)
    if value is not None:
        ctx.deadline = ctx._started + parse_connect_timeout_ms(value)
    return ctx.deadline


def _deadline_error(ctx: CallContext) -> errors.DeadlineExceeded:
    timeout_ms = ctx.headers.get(CONNECT_TIMEOUT_HEADER, "")
    return errors.DeadlineExceeded(f"{ctx.procedure}: deadline of {timeout_ms} ms exceeded")


def _add_metadata(headers: Headers, ctx: CallContext) -> None:
    for key, value in ctx.response_headers.items():
        headers.add(key, value)
    for key, value in ctx.response_trailers.items():
        headers.add(f"Trailer-{key}", value)


class _Unary(Protocol):
    """Connect unary calls: a bare message each way, errors as a JSON body; the request
    comes from :meth:`_message` (a POST's body, a GET's query)."""

    name: ClassVar[str] = "connect"

    async def serve(self, router: Router, route: Route, codec: Codec, ctx: CallContext) -> Response:
        code = errors.Cancelled.connect_code  # what observe hears if Cancelled propagates
        try:
            try:
                with trio.CancelScope(deadline=_call_deadline(ctx)) as scope:
                    payload, gzipped = await self._steps(router, route, codec, ctx)
                if scope.cancelled_caught:
                    raise _deadline_error(ctx)
            except errors.AgentError as exc:
                code = exc.connect_code
                return self._error_response(exc, ctx)
            except Exception as exc:
                error = router.internal(route, exc)
                code = error.connect_code
                return self._error_response(error, ctx)
            code = CODE_OK
            # The response's encoding depends on Accept-Encoding: caches must key on it.
            headers = Headers({"Content-Type": f"application/{codec.name}", "Vary": "Accept-Encoding"})
            if gzipped:
                headers["Content-Encoding"] = "gzip"
            _add_metadata(headers, ctx)
            return response(payload, 200, headers)
        finally:
            router.release(ctx)
            router.observed(route.procedure, code, ctx)

    async def _steps(self, router: Router, route: Route, codec: Codec, ctx: CallContext) -> tuple[bytes, bool]:
        request = current_request
        _check_version(ctx)
        await router.authorize(route, ctx)
        message = await self._message(router, route, codec, ctx)
        assert route.handler is not None  # authorize checked
        # The handler's coroutine is the only holder of the message: one that
        # forwards a large field can drop the rest while it waits.
        call = route.handler(message, ctx)
        del message
        result = await call
        payload = await router.encode(route, codec, result)
        gzip_response = accepts_gzip(
            request.headers.get("Accept-Encoding"), request.headers.get("Content-Encoding")
        ) and await router.worth_gzipping(payload)
        if gzip_response:
            payload = await offload(len(payload), gzip_bytes, payload)
        return payload, gzip_response

    @staticmethod
    @abc.abstractmethod
    async def _message(router: Router, route: Route, codec: Codec, ctx: CallContext) -> Message:
        """Read and decode the request; the body is gone when this returns."""

    @staticmethod
    def _error_response(error: errors.AgentError, ctx: CallContext) -> Response:
        headers = unread_body(Headers({"Content-Type": "application/json"}), not ctx._body_read)
        _add_metadata(headers, ctx)
        return response(error_body(error), error.http_status, headers)


@final
class ConnectUnary(_Unary):
    """Connect unary calls by POST."""

    def codec(self, method: str, content_type: str, route: Route) -> Codec | None:
        if method != "POST" or route.streaming:
            return None
        return _negotiate(content_type, _UNARY_TYPES)

    def media_types(self, route: Route) -> Sequence[str]:
        return () if route.streaming else tuple(_UNARY_TYPES)

    @staticmethod
    async def _message(router: Router, route: Route, codec: Codec, ctx: CallContext) -> Message:
        """Read and decode the request; the body is gone when this returns."""
        gzipped = request_gzipped(current_request.headers.get("Content-Encoding"))
        body: bytes | bytearray = await router.read_body(ctx, router.max_message_bytes)
        if gzipped and body:  # spec: never decompress an empty body
            body = await offload(len(body), gunzip, body, router.max_message_bytes)
            router.reserve(ctx, len(body))
        return await router.decode(codec, body, route.input_type)


def _no_side_effects(route: Route) -> bool:
    return not route.streaming and route.descriptor.GetOptions().idempotency_level == MethodOptions.NO_SIDE_EFFECTS


@final
class ConnectGet(_Unary):
    """Connect unary calls by GET, for the RPCs marked ``idempotency_level = NO_SIDE_EFFECTS``:
    the request in the query (``message``, percent-encoded or, with ``base64=1``, URL-safe
    base64 with or without padding; ``encoding=json|proto``; ``compression``; ``connect=v1``)."""

    methods: ClassVar[frozenset[str]] = frozenset({"GET"})

    def allows(self, route: Route) -> frozenset[str]:
        return self.methods if _no_side_effects(route) else frozenset()

    def codec(self, method: str, content_type: str, route: Route) -> Codec | None:
        if method != "GET" or not _no_side_effects(route):
            return None
        # An unknown encoding still reaches _message, which says what is wrong with the query.
        return _GET_ENCODINGS.get(_GetQuery.parse(current_request.query_string).encoding, JSON)

    def media_types(self, route: Route) -> Sequence[str]:
        return ()

    @staticmethod
    async def _message(router: Router, route: Route, codec: Codec, ctx: CallContext) -> Message:
        query = _GetQuery.parse(current_request.query_string)
        ctx._body_read = True  # a GET has none
        if query.encoding not in _GET_ENCODINGS:
            raise errors.InvalidArgument("a GET call needs encoding=json or encoding=proto in its query")
        gzipped = request_gzipped(query.compression)
        data = query.message_bytes(router.max_message_bytes)
        router.reserve(ctx, len(data))
        if gzipped and data:
            data = await offload(len(data), gunzip, data, router.max_message_bytes)
            router.reserve(ctx, len(data))
        return await router.decode(codec, data, route.input_type)


_GET_ENCODINGS: Final = {"json": JSON, "proto": PROTO}


@final
@dataclass(frozen=True)
class _GetQuery:
    """A Connect GET call's query fields (values kept as bytes: a proto message need not be UTF-8)."""

    raw: bytes | None
    encoding: str
    base64: bool
    compression: str | None
    connect: str | None

    @classmethod
    def parse(cls, query: bytes) -> _GetQuery:
        fields: dict[str, bytes] = {}
        for pair in query.split(b"&"):
            key, _, value = pair.partition(b"=")
            name = urllib.parse.unquote_to_bytes(key.replace(b"+", b" ")).decode("latin-1")
            if name in ("message", "encoding", "base64", "compression", "connect"):
                fields[name] = urllib.parse.unquote_to_bytes(value.replace(b"+", b" "))
        text = {k: v.decode("latin-1") for k, v in fields.items() if k != "message"}
        return cls(
            raw=fields.get("message"),
            encoding=text.get("encoding", ""),
            base64=text.get("base64", "") == "1",
            compression=text.get("compression") or None,
            connect=text.get("connect"),
        )

    def message_bytes(self, limit: int) -> bytes:
        """The request message, as sent (still compressed if it was).

        Raises:
            InvalidArgument: no message, bad base64, ``connect`` other than ``v1``.
            ResourceExhausted: over ``limit`` bytes.
        """
        if self.connect is not None and self.connect != "v1":
            raise errors.InvalidArgument(f"connect={self.connect[:MAX_DETAIL_CHARS]!r}: only v1 is known")
        if self.raw is None:
            raise errors.InvalidArgument("a GET call needs the request in its query's message parameter")
        data = self.raw
        if self.base64:
            try:
                data = base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
            except ValueError as exc:
                raise errors.InvalidArgument(f"message is not URL-safe base64: {exc}") from exc
        if len(data) > limit:
            raise errors.ResourceExhausted(f"request message larger than {limit} bytes")
        return data


@final
class ConnectStream(Protocol):
    """Connect server streaming: enveloped messages, the error in the end-of-stream message."""

    name: ClassVar[str] = "connect"

    def codec(self, method: str, content_type: str, route: Route) -> Codec | None:
        if method != "POST" or not route.streaming:
            return None
        return _negotiate(content_type, _STREAM_TYPES)

    def media_types(self, route: Route) -> Sequence[str]:
        return tuple(_STREAM_TYPES) if route.streaming else ()

    async def serve(self, router: Router, route: Route, codec: Codec, ctx: CallContext) -> Response:
        request = current_request
        content_type = f"application/connect+{codec.name}"
        gzip_messages = accepts_gzip(
            request.headers.get("Connect-Accept-Encoding"), request.headers.get("Connect-Content-Encoding")
        )
        error: errors.AgentError | None = None
        started = False
        try:
            try:
                with trio.CancelScope(deadline=_call_deadline(ctx)) as scope:
                    message = await self._prelude(router, route, codec, ctx)
                if scope.cancelled_caught:
                    raise _deadline_error(ctx)
            except errors.AgentError as exc:
                error = exc
            except Exception as exc:
                error = router.internal(route, exc)
            # The messages' encoding depends on Connect-Accept-Encoding.
            headers = Headers({"Content-Type": content_type, "Vary": "Connect-Accept-Encoding"})
            if error is not None:
                # Spec: streams answer 200 and carry the error in the end message.
                for key, value in ctx.response_headers.items():
                    headers.add(key, value)
                return response(_end_stream(error, ctx), 200, unread_body(headers, not ctx._body_read))
            if gzip_messages:
                headers["Connect-Content-Encoding"] = "gzip"
            for key, value in ctx.response_headers.items():
                headers.add(key, value)
            body = _StreamBody(router, route, codec, ctx, message, gzip_messages=gzip_messages)
            started = True
            return response(body, 200, headers)
        finally:
            if not started:
                router.release(ctx)
                code = error.connect_code if error is not None else errors.Cancelled.connect_code
                router.observed(route.procedure, code, ctx)

    @staticmethod
    async def _prelude(router: Router, route: Route, codec: Codec, ctx: CallContext) -> Message:
        """Authorize, then read and decode the one enveloped request message."""
        _check_version(ctx)
        await router.authorize(route, ctx)
        gzipped = request_gzipped(current_request.headers.get("Connect-Content-Encoding"))
        body = await router.read_body(ctx, router.max_message_bytes + ENVELOPE_HEADER.size)
        flags, data = _single_envelope(body, gzipped=gzipped, limit=router.max_message_bytes)
        del body
        if data and flags & FLAG_COMPRESSED:  # spec: never decompress an empty message
            data = await offload(len(data), gunzip, data, router.max_message_bytes)
            router.reserve(ctx, len(data))
        return await router.decode(codec, data, route.input_type)


#: The router's default protocols.
CONNECT_PROTOCOLS: Final[tuple[Protocol, ...]] = (ConnectUnary(), ConnectStream(), ConnectGet())


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
        router: Router,
        route: Route,
        codec: Codec,
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
        self._agen: AsyncIterator[Message | Last] | None = None
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
            last = isinstance(message, Last)
            if isinstance(message, Last):
                message = message.message
            payload = await self._router.encode(self._route, self._codec, message)
            if self._gzip and await self._router.worth_gzipping(payload):
                envelope = encode_envelope(FLAG_COMPRESSED, await offload(len(payload), gzip_bytes, payload))
            else:
                envelope = encode_envelope(0, payload)
            # The handler's Last: it ends here, and the end leaves in the same chunk.
            return envelope + await self._finish(None) if last else envelope
        except errors.AgentError as exc:
            return await self._finish(exc)
        except Exception as exc:
            return await self._finish(self._router.internal(self._route, exc))

    async def _next_message(self) -> Message | Last | None:
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
            self._router.observed(self._route.procedure, code, self._ctx)
        return _end_stream(error, self._ctx)

    async def aclose(self) -> None:
        """Close the handler's generator now (its ``finally`` runs)."""
        try:
            await self._close_handler()
        finally:
            if not self._done:  # the client went away, or the server is stopping
                self._done = True
                self._router.observed(self._route.procedure, errors.Cancelled.connect_code, self._ctx)

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
            self._router.release(self._ctx)


def _single_envelope(body: bytes | bytearray, *, gzipped: bool, limit: int) -> tuple[int, bytes]:
    """The flags and message of the one envelope a server-streaming request holds.

    Raises:
        ResourceExhausted: an envelope claims more than ``limit`` bytes.
        InvalidArgument: no envelope at all (a bare message), truncated envelopes,
            unknown flags, a compressed message without Connect-Content-Encoding.
        Unimplemented: not exactly one message (connect-go's code for it).
    """
    reader = EnvelopeReader(limit=limit, allowed_flags=FLAG_COMPRESSED, compressed_ok=gzipped)
    messages = reader.feed(body)
    if reader.pending:
        what = "envelope header" if reader.pending < ENVELOPE_HEADER.size else "message envelope"
        raise errors.InvalidArgument(f"truncated {what}")
    if len(messages) != 1:
        raise errors.Unimplemented(f"a server-streaming request holds exactly one message, not {len(messages)}")
    return messages[0]


def _end_stream(error: errors.AgentError | None, ctx: CallContext) -> bytes:
    end: dict[str, Any] = {}
    if error is not None:
        end["error"] = error_json(error)
    if ctx.response_trailers:
        metadata: dict[str, list[str]] = {}
        for key, value in ctx.response_trailers.items():
            metadata.setdefault(key.lower(), []).append(value)
        end["metadata"] = metadata
    return encode_envelope(FLAG_END_STREAM, json.dumps(end).encode())
