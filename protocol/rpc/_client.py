"""The one rpc client: Connect unary and server-streaming calls on httpx.

Used by the controller (to every hostd), by hostd (registration and heartbeats to the
controller) and by the TUI. It runs on trio and on asyncio alike: httpx does, and the
only loop-specific question (the caller's effective deadline) is asked through
``sniffio`` in :func:`~._deadline.remaining_s`.

What crosses back, the same for every caller:

* A Connect error (a non-200 answer's JSON body, or a stream's end message) becomes
  the :mod:`~limiquantix.protocol.errors` class of its code, its ``reason`` read from
  the ``limiquantix.agent.v1.Error`` detail (:mod:`._errors`).
* httpx's exceptions become :mod:`~limiquantix.protocol.errors` through one table,
  :data:`TRANSPORT_ERRORS` (most specific first, like httpcore's ``map_exceptions``):
  a server that cannot be reached (refused, DNS, connect timeout, no pooled
  connection in time) is ``unavailable`` with the target's ``unreachable_reason``:
  nothing was sent, so nothing ran. Once the request may have left, a broken
  connection is :class:`OutcomeUnknown` and a deadline that runs out is
  :class:`OutcomeUnknownDeadline` (reason ``outcome_unknown``): the action may
  have happened, so it must not be retried blindly.
* Answers are bounded: a unary answer or a streamed message over
  ``max_message_bytes`` (before or after gzip) is ``resource_exhausted``; responses
  are read raw and inflated by the bounded :func:`~._codec.gunzip`, never by httpx.

Deadlines flow (:mod:`._deadline`): the time the caller has left (its explicit
``deadline``, and on trio its effective cancel-scope deadline) goes out as
``Connect-Timeout-Ms`` and bounds httpx's own timeouts, so the server stops at the
same moment the caller gives up.

TLS lives in one place, :class:`ClientTLS`: what to verify the server with and which
client certificate to present (``verify=protocol.tls.client_ssl_context(files)`` builds a
context that also records why a handshake failed). A handshake that fails is
``unavailable`` with the target's ``tls_reason``, naming why (wrong CA, expired,
another host's name): the server reads no request before its handshake is done, so
nothing ran. So is a server's refusal of this client's certificate (its alert: under TLS 1.3 it
fails the first read, after the request was written, which the server never read): not an
outcome unknown. A token is never sent over plain ``http://`` to another machine unless
the client was made ``insecure`` (:func:`~limiquantix.protocol.check_token_transport`).
"""

from __future__ import annotations

import json
import math
import ssl
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, final

import anyio
from google.protobuf.message import Message

from .. import errors
from .._tls import InsecureTransportError, check_token_transport, refusal_message, tls_failure
from ._codec import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    PROTO,
    Codec,
    EnvelopeReader,
    encode_envelope,
    gunzip,
)
from ._deadline import remaining_s, timeout_headers
from ._errors import MAX_ERROR_MESSAGE_CHARS, error_from_body, error_from_json
from ._httpx import httpcore, httpx

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MAX_RESPONSE_BYTES",
    "OUTCOME_UNKNOWN",
    "TRANSPORT_ERRORS",
    "ClientTLS",
    "OutcomeUnknown",
    "OutcomeUnknownDeadline",
    "RpcClient",
    "Target",
    "outcome_unknown",
]

_M = TypeVar("_M", bound=Message)

#: Connecting to a server. A refused connection fails at once; this bounds a host
#: that drops packets, so that calls for it answer within a second.
CONNECT_TIMEOUT_S: Final = 1.0
#: The largest answer (unary) or streamed message accepted: a whole-file read fits.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
#: The reason of an error raised after the request may have been sent.
OUTCOME_UNKNOWN: Final = "outcome_unknown"
# A non-200 answer's body is an error object: a few KiB at most.
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
#: After a stream's end message, how long the body's own end (chunked's last chunk) is waited
#: for: read to its end, the response leaves its connection in the pool; closed before, the
#: connection is closed with it, and the next call to that server opens another (a TCP connect,
#: a name lookup in a thread, a new connection task on the server: on every ExecuteScriptStream
#: the controller relayed). Our servers send it in the same write as the end message; one that
#: holds it back is not waited on longer than this, its connection closed as before.
STREAM_END_DRAIN_S: Final = 1.0


class OutcomeUnknown(errors.Unavailable):
    """The request reached the server, then the connection broke: it may have run."""


class OutcomeUnknownDeadline(errors.DeadlineExceeded):
    """The request reached the server, then no answer came in time: it may have run."""


def outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc`` says a call's action may or may not have happened."""
    return isinstance(exc, (OutcomeUnknown, OutcomeUnknownDeadline))


#: httpx exception → (error class, whether the request may have been sent). The first
#: row that matches wins, so the more specific classes come first.
TRANSPORT_ERRORS: Final[tuple[tuple[type[httpx.HTTPError], type[errors.AgentError], bool], ...]] = (
    (httpx.ConnectTimeout, errors.Unavailable, False),
    (httpx.ConnectError, errors.Unavailable, False),
    (httpx.PoolTimeout, errors.Unavailable, False),
    (httpx.UnsupportedProtocol, errors.Unavailable, False),
    (httpx.TimeoutException, OutcomeUnknownDeadline, True),
    (httpx.TransportError, OutcomeUnknown, True),
)


@final
@dataclass(frozen=True)
class ClientTLS:
    """How a client checks the servers it calls, and what it shows them.

    Attributes:
        verify: True (the system's CAs), False (no check: tests only), a CA
            bundle's path, or a ready ``ssl.SSLContext``.
        cert: a client certificate (``(cert_file, key_file)``) for mutual TLS.
    """

    verify: bool | str | ssl.SSLContext = True
    cert: tuple[str, str] | None = None

    def httpx_verify(self) -> bool | ssl.SSLContext:
        """What httpx's ``verify`` takes: a context holding the CA file and the client
        certificate when there are any (httpx no longer takes paths itself).

        Raises:
            OSError: the CA file or the certificate cannot be read.
            ssl.SSLError: they are not valid PEM.
        """
        if self.cert is None and not isinstance(self.verify, str):
            return self.verify
        if isinstance(self.verify, ssl.SSLContext):
            context = self.verify
        elif self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
        if self.cert is not None:
            context.load_cert_chain(*self.cert)
        return context


@final
@dataclass(frozen=True)
class Target:
    """A server to call.

    Attributes:
        url: ``http(s)://host:port[/prefix]`` or ``unix:/path/to/socket``.
        token: the bearer token sent with every call ("": none).
        name: how messages name the server (``"node n1"``).
        unreachable_reason: the ``reason`` of the error for a server that cannot be reached.
        tls_reason: the ``reason`` of the error for a TLS handshake that failed.
    """

    url: str
    token: str = field(default="", repr=False)
    name: str = "the server"
    unreachable_reason: str = "unreachable"
    tls_reason: str = "tls_handshake"


@final
class RpcClient:
    """Connect calls over one httpx connection pool (plus one per Unix socket).

    Use as an async context manager, or call :meth:`aclose`.

    Args:
        tls: how to verify servers and the client certificate to present.
        limits: httpx's pool limits.
        keepalive: False: a new connection per call (for calls seconds apart).
        transport: an httpx transport to use instead of the network (tests).
        max_message_bytes: the largest answer accepted.
        insecure: send tokens over plain ``http://`` to other machines too.
    """

    def __init__(
        self,
        *,
        insecure: bool = False,
        tls: ClientTLS | None = None,
        limits: httpx.Limits | None = None,
        keepalive: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        max_message_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.tls = tls or ClientTLS()
        self.insecure = insecure
        limits = limits or httpx.Limits()
        if not keepalive:
            limits = httpx.Limits(max_connections=limits.max_connections, max_keepalive_connections=0)
        self._limits = limits
        self._transport = transport
        self.max_message_bytes = max_message_bytes
        self._http = self._new_client(transport)
        self._unix: dict[str, httpx.AsyncClient] = {}

    def _new_client(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        verify = self.tls.httpx_verify()
        if transport is None:
            transport = httpx.AsyncHTTPTransport(verify=verify, limits=self._limits, trust_env=False)
            _read_tls_records_together(transport)
        return httpx.AsyncClient(limits=self._limits, trust_env=False, transport=transport, verify=verify)

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()
        unix, self._unix = self._unix, {}
        for client in unix.values():
            await client.aclose()

    def _target(self, target: Target, procedure: str) -> tuple[httpx.AsyncClient, str]:
        """The client and URL for ``procedure`` on ``target``.

        Raises:
            errors.Unavailable: reason ``insecure_transport``: a token for plain ``http://`` to
                another machine, and the client is not ``insecure`` (nothing was sent).
        """
        if target.token:
            try:
                check_token_transport(target.url, insecure=self.insecure, what=f"{target.name}'s token")
            except InsecureTransportError as exc:
                raise errors.Unavailable(str(exc), reason="insecure_transport") from None
        if target.url.startswith("unix:") and self._transport is None:
            path = target.url[len("unix:") :]
            client = self._unix.get(path)
            if client is None:
                transport = httpx.AsyncHTTPTransport(uds=path, limits=self._limits)
                client = self._unix[path] = httpx.AsyncClient(transport=transport, trust_env=False)
            return client, f"http://localhost/{procedure}"
        return self._http, f"{target.url.rstrip('/')}/{procedure}"

    @staticmethod
    def _timeout(remaining: float) -> httpx.Timeout:
        # read/write/pool are per operation in httpx; a unary answer comes in one
        # piece, so the read timeout is in effect the call's deadline.
        rest = None if math.isinf(remaining) else max(remaining, 0.001)
        return httpx.Timeout(rest, connect=min(CONNECT_TIMEOUT_S, rest or CONNECT_TIMEOUT_S))

    @staticmethod
    def _headers(
        target: Target, content_type: str, remaining: float, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Connect-Protocol-Version": "1", **timeout_headers(remaining)}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        if extra:
            headers.update(extra)
        return headers

    def _transport_error(
        self, target: Target, procedure: str, remaining: float, exc: httpx.HTTPError
    ) -> errors.AgentError:
        """The error an httpx exception stands for (:data:`TRANSPORT_ERRORS`), or a failed TLS
        handshake's (before the table: the server read no request, whatever httpx raised)."""
        method = procedure.rpartition("/")[2]
        why = tls_failure(exc)
        if why is not None:
            refused = refusal_message(f"{target.name} ({target.url})", why, method)
            if refused is not None:
                # Its alert, sent while its handshake failed: it read no request (under TLS 1.3
                # ours was written already, and was not delivered).
                return errors.Unavailable(refused, reason=target.tls_reason)
            return errors.Unavailable(
                f"{target.name} ({target.url}): TLS handshake failed: {why}; nothing was sent", reason=target.tls_reason
            )
        # Under TLS 1.3 a server refusing our client certificate closes the connection after our
        # side of the handshake is done: that looks like a connection broken mid-call.
        hint = " (or it refused this client's certificate: see its log)" if target.url.startswith("https:") else ""
        for cls, error_cls, sent in TRANSPORT_ERRORS:
            if not isinstance(exc, cls):
                continue
            if not sent:
                return error_cls(
                    f"cannot reach {target.name} at {target.url}: it is unreachable ({type(exc).__name__})",
                    reason=target.unreachable_reason,
                )
            if error_cls is OutcomeUnknownDeadline:
                within = "" if math.isinf(remaining) else f" within {remaining:.1f} s"
                return error_cls(
                    f"{target.name} did not answer {method}{within}; "
                    "the request was sent, so it may have run: its outcome is not known",
                    reason=OUTCOME_UNKNOWN,
                )
            return error_cls(
                f"{target.name} ({target.url}) broke the connection ({type(exc).__name__}) after {method} "
                f"was sent; it may have run: its outcome is not known{hint}",
                reason=OUTCOME_UNKNOWN,
            )
        # Not a transport error (httpx.DecodingError, TooManyRedirects...): a peer
        # speaking something else.
        return errors.Internal(f"{target.name}: {method}: {type(exc).__name__}")

    # -- unary ---------------------------------------------------------------------

    async def unary(
        self,
        target: Target,
        procedure: str,
        content: bytes | Sequence[bytes] | AsyncIterable[bytes],
        *,
        codec: Codec = PROTO,
        content_length: int | None = None,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """One unary call; the answer's bytes (inflated).

        Args:
            procedure: ``"<package>.<Service>/<Method>"``.
            content: the encoded request, or its parts (sent as they are, one
                after the other), or an async iterable of them.
            content_length: the request's length when ``content`` is an async iterable.
            deadline: an explicit deadline (trio: on trio's clock, combined with the
                caller's cancel scopes; asyncio: on ``time.monotonic()``).

        Raises:
            errors.Unavailable: the server cannot be reached (nothing was sent).
            OutcomeUnknown: the connection broke after the request may have been sent.
            OutcomeUnknownDeadline: no answer before the deadline.
            errors.ResourceExhausted: an answer over ``max_message_bytes``.
            errors.AgentError: the error the server answered, its code and reason kept.
        """
        remaining = remaining_s(deadline)
        client, url = self._target(target, procedure)
        body: bytes | AsyncIterable[bytes]
        length: int | None
        # The async iterable first: mypy cannot tell a Sequence[bytes] from bytes (a Sequence[int]).
        if isinstance(content, bytes):
            body, length = content, len(content)
        elif isinstance(content, AsyncIterable):
            body, length = content, content_length
        else:
            body, length = (content[0] if len(content) == 1 else _parts(content)), sum(len(p) for p in content)
        sent = self._headers(target, f"application/{codec.name}", remaining, headers)
        sent["Accept-Encoding"] = "gzip"  # read raw and inflated here, bounded
        if length is not None:
            sent["Content-Length"] = str(length)
        request = client.build_request("POST", url, content=body, headers=sent, timeout=self._timeout(remaining))
        try:
            resp = await client.send(request, stream=True)
            try:
                if resp.status_code != 200:
                    raw = await _read_raw(resp, _MAX_ERROR_BODY_BYTES)
                    raise error_from_body(
                        resp.status_code, _inflate(resp, raw, _MAX_ERROR_BODY_BYTES), what=target.name
                    )
                raw = await _read_raw(resp, self.max_message_bytes)
                return _inflate(resp, raw, self.max_message_bytes)
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            raise self._transport_error(target, procedure, remaining, exc) from exc

    async def unary_message(
        self,
        target: Target,
        procedure: str,
        request: Message | Sequence[bytes],
        response_cls: type[_M],
        *,
        deadline: float | None = None,
    ) -> _M:
        """One unary call in ``application/proto``: ``request`` (or its serialized
        parts) out, a ``response_cls`` back.

        Raises:
            errors.Internal: an answer that is not a ``response_cls``.
            errors.AgentError: as :meth:`unary`.
        """
        parts = (request.SerializeToString(),) if isinstance(request, Message) else request
        data = await self.unary(target, procedure, parts, deadline=deadline)
        try:
            return response_cls.FromString(data)
        except Exception as exc:  # DecodeError: a server speaking another schema
            method = procedure.rpartition("/")[2]
            raise errors.Internal(f"{target.name}: undecodable {method} answer") from exc

    # -- server streaming ------------------------------------------------------------

    async def stream(
        self,
        target: Target,
        procedure: str,
        message: bytes,
        *,
        codec: Codec = PROTO,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """A server-streaming call: each message's bytes (inflated) as it arrives.

        Closing the generator early closes the HTTP response, which the server sees
        as a client disconnect (hostd then cancels the command in the guest). The
        close is the caller's to shield when it runs under cancellation.

        Raises:
            errors.Unavailable: the server cannot be reached (nothing was sent).
            OutcomeUnknown: the stream broke off, or ended without its end message.
            OutcomeUnknownDeadline: the deadline passed while waiting.
            errors.InvalidArgument: the server broke the envelope framing.
            errors.AgentError: the error in the server's end-of-stream message.
        """
        remaining = remaining_s(deadline)
        client, url = self._target(target, procedure)
        sent = self._headers(target, f"application/connect+{codec.name}", remaining, headers)
        sent["Connect-Accept-Encoding"] = "gzip"
        sent["Accept-Encoding"] = "identity"  # envelopes are compressed one by one, not the body
        request = client.build_request(
            "POST", url, content=encode_envelope(0, message), headers=sent, timeout=self._timeout(remaining)
        )
        try:
            resp = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(target, procedure, remaining, exc) from exc
        try:
            if resp.status_code != 200:
                try:
                    raw = await _read_raw(resp, _MAX_ERROR_BODY_BYTES)
                except httpx.HTTPError as exc:
                    raise self._transport_error(target, procedure, remaining, exc) from exc
                raise error_from_body(resp.status_code, _inflate(resp, raw, _MAX_ERROR_BODY_BYTES), what=target.name)
            gzipped = (resp.headers.get("Connect-Content-Encoding") or "identity").strip().lower() == "gzip"
            reader = EnvelopeReader(
                limit=self.max_message_bytes, allowed_flags=FLAG_COMPRESSED | FLAG_END_STREAM, compressed_ok=gzipped
            )
            chunks = _raw_chunks(resp)
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    raise OutcomeUnknown(
                        f"{target.name}: {procedure.rpartition('/')[2]} stream ended without its end message; "
                        "its outcome is not known",
                        reason=OUTCOME_UNKNOWN,
                    ) from None
                except httpx.HTTPError as exc:
                    raise self._transport_error(target, procedure, remaining, exc) from exc
                for flags, data in reader.feed(chunk):
                    if flags & FLAG_COMPRESSED:
                        data = gunzip(data, self.max_message_bytes)
                    if flags & FLAG_END_STREAM:
                        await _read_to_end(chunks)
                        _raise_end_stream(data, target)
                        return
                    yield data
        finally:
            await resp.aclose()


def _read_tls_records_together(transport: httpx.AsyncHTTPTransport) -> None:
    """Make ``transport``'s connections return every TLS record already received in one read.

    A TLS record carries at most 16 KiB, and an SSL stream (trio's, anyio's) hands over one record
    per read where a plain socket hands over 64 KiB: httpcore's read loop (h11, a timeout scope,
    the stream's locks) then runs four times as often over TLS, which cost a 64 MiB read through
    the controller about a third of its speed (bench/rpc_bench.py). httpx takes no network
    backend, so this one wraps its pool's (``_pool._network_backend``; tests/test_rpc.py fails
    when httpx or httpcore move it).
    """
    pool = transport._pool  # noqa: SLF001 - see the docstring
    pool._network_backend = _RecordsTogetherBackend(pool._network_backend)  # noqa: SLF001


@final
class _RecordsTogetherBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend whose TLS streams read whole runs of records (see above)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _RecordsTogetherStream(await self._inner.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _RecordsTogetherStream(await self._inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@final
class _RecordsTogetherStream(httpcore.AsyncNetworkStream):
    """A network stream whose reads, over TLS, add the records already decryptable to the first."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(max_bytes, timeout)
        ssl_object = self._inner.get_extra_info("ssl_object")
        if not data or ssl_object is None:
            return data
        parts, have = [data], len(data)
        while have < max_bytes:
            try:
                more = ssl_object.read(max_bytes - have)
            except ssl.SSLError:
                # Want-read: no whole record is there yet. Anything else (an alert, the peer's
                # close) the next read meets again through the stream, which reports it.
                break
            if not more:
                break
            parts.append(more)
            have += len(more)
        return data if len(parts) == 1 else b"".join(parts)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _RecordsTogetherStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


async def _parts(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _raw_chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent, chunk by chunk. A response built with its content already in
    it (``httpx.MockTransport`` in tests) has no stream left to read: that content."""
    if resp.is_stream_consumed:
        yield resp.content
        return
    async for chunk in resp.aiter_raw():
        yield chunk


async def _read_to_end(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows a stream's end message to the body's end, for at most
    :data:`STREAM_END_DRAIN_S` (so that the connection can be kept, see there). Bytes after the
    end message (a server breaking the protocol) or a broken connection end it at once: the
    response is closed with its connection. anyio's scope: the TUI calls this on asyncio, the
    controller on trio."""
    with anyio.move_on_after(STREAM_END_DRAIN_S):
        try:
            async for chunk in chunks:
                if chunk:
                    return
        except httpx.HTTPError:
            return


async def _read_raw(resp: httpx.Response, limit: int) -> bytes:
    """The response body as sent (not inflated), refusing more than ``limit`` bytes.

    Raises:
        errors.ResourceExhausted: the body is longer.
    """
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise errors.ResourceExhausted(f"answer larger than {limit} bytes")
    out = bytearray()
    async for chunk in _raw_chunks(resp):
        out += chunk
        if len(out) > limit:
            raise errors.ResourceExhausted(f"answer larger than {limit} bytes")
    return bytes(out)


def _inflate(resp: httpx.Response, raw: bytes, limit: int) -> bytes:
    """``raw`` decoded per its Content-Encoding, bounded.

    Raises:
        errors.Internal: an encoding that was not asked for.
        errors.ResourceExhausted, errors.InvalidArgument: from :func:`gunzip`.
    """
    encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding == "gzip":
        return gunzip(raw, limit) if raw else raw
    raise errors.Internal(f"answer in an encoding that was not asked for: {encoding[:40]!r}")


def _raise_end_stream(data: bytes, target: Target) -> None:
    """Raise the error in an end-of-stream message, if it holds one.

    Raises:
        errors.AgentError: the end message's error.
        errors.Internal: an end message that is not a JSON object.
    """
    try:
        end: Any = json.loads(data or b"{}")
    except ValueError:
        end = None
    if not isinstance(end, dict):
        raise errors.Internal(f"{target.name} sent an end-of-stream message that is not a JSON object")
    if end.get("error"):
        error = error_from_json(end["error"])
        if error is None:
            message = str(end["error"])[:MAX_ERROR_MESSAGE_CHARS]
            raise errors.Internal(f"{target.name} ended the stream with a malformed error: {message}")
        raise error
