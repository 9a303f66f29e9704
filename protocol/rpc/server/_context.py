"""What a handler knows about its call (:class:`CallContext`), and the bound on the
request bytes calls in progress hold (:class:`InFlightBytes`)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any, final

import trio
from werkzeug.datastructures import Headers

from ... import errors

__all__ = ["CallContext", "InFlightBytes"]


@final
class CallContext:
    """What a handler knows about its call besides the request message.

    Attributes:
        procedure: ``"<package>.<Service>/<Method>"``.
        service: ``"<package>.<Service>"``.
        method: ``"<Method>"``.
        headers: the request headers (case-insensitive, multi-valued).
        peer: the client's ``(host, port)``; None on a Unix socket.
        deadline: the call's deadline on trio's clock (from ``Connect-Timeout-Ms``
            or the protocol's own timeout header)
            (``math.inf`` if none). Handlers that forward the call (to an agent,
            to hostd) derive their own timeouts from it.
        streaming: whether this is a streaming call.
        protocol: the name of the wire protocol serving it (``"connect"``, ...).
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
        "protocol",
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
        protocol: str = "connect",
    ) -> None:
        self.procedure = procedure
        self.protocol = protocol
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

    @classmethod
    def from_scope(
        cls, scope: Mapping[str, Any], headers: Headers, *, procedure: str, streaming: bool, protocol: str
    ) -> CallContext:
        """The context of a call arriving as an ASGI request: the peer is the scope's
        ``client`` (absent on a Unix socket)."""
        client = scope.get("client")
        peer = (str(client[0]), int(client[1])) if client else None
        return cls(procedure=procedure, headers=headers, peer=peer, streaming=streaming, protocol=protocol)

    @property
    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header, if any."""
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def time_remaining(self) -> float:
        """Seconds until :attr:`deadline` (``math.inf`` without one; may be negative)."""
        return self.deadline - trio.current_time()

    def budget_s(self, own_s: float) -> float:
        """The budget of a call this handler makes on the caller's behalf (to hostd, to an
        agent): its own ``own_s`` (e.g. :func:`~limiquantix.protocol.command_budget_s`),
        bounded by the time the caller has left. The one rule every hop applies.

        Raises:
            DeadlineExceeded: the caller's deadline has already passed.
        """
        remaining = self.time_remaining()
        if remaining <= 0:
            raise errors.DeadlineExceeded(f"{self.procedure}: the call's deadline passed before it was forwarded")
        return min(own_s, remaining)

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
