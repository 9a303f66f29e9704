"""Request registry and the one place that turns exceptions into Error answers.

Handlers live one module per concern in ``agent/handlers/`` and register with
:func:`handler`, keyed by the request's oneof field name in ``AgentMessage``.
A handler receives a :class:`RequestContext` and the request message and
returns the terminal response message; it raises
:class:`~limiquantix.protocol.errors.AgentError` for a clean failure. Streaming
handlers send intermediate messages with :meth:`RequestContext.send`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast, final

import trio
from google.protobuf.message import Message

from limiquantix.protocol import FrameTooLarge, MessageWriter, errors, new_message
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.limits import MAX_ERROR_MESSAGE_BYTES, MAX_ID_BYTES, clip_utf8

if TYPE_CHECKING:
    from ._config import AgentConfig
    from ._session import Session
    from ._telemetry import TelemetryCollector

__all__ = [
    "HANDLERS",
    "AgentState",
    "HandlerSpec",
    "RequestContext",
    "error_message",
    "handler",
    "run_inline",
    "run_request",
    "send_answer",
]

log = logging.getLogger(__name__)

HandlerFunc = Callable[["RequestContext", Any], Awaitable[Message]]
#: An inline handler (``handler(..., inline=True)``): ``(agent, request) -> response``.
InlineFunc = Callable[["AgentState", Any], Message]
_F = TypeVar("_F", HandlerFunc, InlineFunc)
S = TypeVar("S")


class AgentState(Protocol):
    """What sessions and handlers use of the agent (:class:`~._daemon.Agent` is it).

    Declared here, below the daemon, so that the daemon imports dispatch, sessions and
    handlers and none of them imports the daemon back.
    """

    config: AgentConfig
    collector: TelemetryCollector
    #: Work that must outlive the session that asked for it (a delayed shutdown).
    background: trio.Nursery | None
    stopping: bool
    #: Bytes of partial frames buffered by every session together (max_buffered_bytes).
    buffered_bytes: int
    #: Bytes of the requests being handled by every session together (max_request_bytes).
    request_bytes: int

    def identity(self) -> pb.AgentIdentity: ...

    def uptime(self) -> float: ...

    def broadcast(self, **payload: object) -> None: ...

    def handler_state(self, cls: type[S]) -> S:
        """The agent's one ``cls()``: what a handler module keeps between requests, made on
        first use and gone with the agent (what one session keeps is in its ``resources``)."""
        ...


@final
@dataclass(frozen=True, slots=True)
class HandlerSpec:
    request: str  #: oneof field of the request
    response: str  #: oneof field of the terminal response
    #: An InlineFunc when ``inline``, a HandlerFunc otherwise.
    func: HandlerFunc | InlineFunc
    #: A plain function ``(agent, request) -> response`` run by the reader
    #: itself: for instant answers (ping), where a task would cost more than
    #: the work. It must not block.
    inline: bool = False


#: Every implemented request type. Filled by the modules in agent/handlers/.
HANDLERS: Final[dict[str, HandlerSpec]] = {}


def handler(request: str, response: str, *, inline: bool = False) -> Callable[[_F], _F]:
    """Register the decorated coroutine (or, with ``inline``, function) for ``request``."""
    fields = pb.AgentMessage.DESCRIPTOR.fields_by_name
    if request not in fields or response not in fields:  # pragma: no cover - programming error
        raise ValueError(f"unknown AgentMessage field {request!r} or {response!r}")

    def deco(func: _F) -> _F:
        if request in HANDLERS:  # pragma: no cover - programming error
            raise ValueError(f"two handlers for {request!r}")
        HANDLERS[request] = HandlerSpec(request, response, func, inline)
        return func

    return deco


@final
class RequestContext:
    """What a handler may use: the agent, its session, and cancellation."""

    def __init__(self, agent: AgentState, session: Session, message_id: str, kind: str) -> None:
        self.agent = agent
        self.session = session
        self.message_id = message_id
        self.kind = kind
        self.cancel_scope = trio.CancelScope()
        #: Set when a CancelRequest named this request.
        self.cancel_requested = False
        #: A handler that answers cancellation itself (execute: a result with
        #: exit_reason CANCELLED) installs a hook; otherwise the task is cancelled.
        self.on_cancel: Callable[[], None] | None = None
        #: Set once the terminal answer is queued on the session's writer (or
        #: there is nobody left to answer). Work that must follow its answer,
        #: such as a shutdown, waits for it.
        self.answered = trio.Event()

    @property
    def config(self):  # type: ignore[no-untyped-def]
        return self.agent.config

    async def send(self, **payload: Message) -> None:
        """Send a non-terminal message (a chunk) for this request."""
        await self.session.writer.send(new_message(self.message_id, **payload))

    def cancel(self) -> None:
        """Cancel this request (from a CancelRequest)."""
        self.cancel_requested = True
        if self.on_cancel is not None:
            self.on_cancel()
        else:
            self.cancel_scope.cancel()


def error_message(message_id: str, exc: errors.AgentError) -> pb.AgentMessage:
    """The Error answer to request ``message_id``; it always fits in a frame.

    The id and the text are clipped to their bounds (a request whose id is too
    long is refused, and its answer carries what fits of the id), so no Error
    can be too large to send, whatever it echoes.
    """
    error = exc.to_proto()
    error.message = clip_utf8(error.message, MAX_ERROR_MESSAGE_BYTES)
    error.reason = clip_utf8(error.reason, MAX_ID_BYTES)
    return new_message(clip_utf8(message_id, MAX_ID_BYTES), error=error)


def _too_large(message_id: str, exc: FrameTooLarge) -> pb.AgentMessage:
    return error_message(message_id, errors.ResourceExhausted(f"answer too large: {exc}", reason="frame_too_large"))


async def send_answer(writer: MessageWriter, answer: pb.AgentMessage) -> None:
    """Send a request's answer; one too large for a frame becomes an Error.

    The Error (``resource_exhausted``, reason ``frame_too_large``) carries the
    same message id, so the host learns what happened to its request.

    Raises:
        trio.ClosedResourceError / trio.BrokenResourceError: the writer stopped.
    """
    try:
        await writer.send(answer)
    except FrameTooLarge as exc:
        await writer.send(_too_large(answer.message_id, exc))


def run_inline(agent: AgentState, message_id: str, spec: HandlerSpec, request: Message) -> pb.AgentMessage:
    """Run an inline handler; return its answer (response or Error)."""
    try:
        response = cast("InlineFunc", spec.func)(agent, request)  # spec.inline: see HandlerSpec.func
        return new_message(message_id, **{spec.response: response})
    except errors.AgentError as exc:
        return error_message(message_id, exc)
    except Exception as exc:
        log.exception("%s %s failed", spec.request, message_id)
        return error_message(message_id, errors.Internal(f"internal error ({type(exc).__name__})"))


async def run_request(ctx: RequestContext, spec: HandlerSpec, request: Message) -> None:
    """Run one handler and send its terminal answer (response or Error).

    ``ctx.answered`` is set on the way out, whatever happened.
    """
    try:
        await _run_request(ctx, spec, request)
    finally:
        ctx.answered.set()


async def _run_request(ctx: RequestContext, spec: HandlerSpec, request: Message) -> None:
    answer: pb.AgentMessage | None = None
    with ctx.cancel_scope:
        try:
            response = await cast("HandlerFunc", spec.func)(ctx, request)  # not inline: see HandlerSpec.func
            answer = new_message(ctx.message_id, **{spec.response: response})
        except errors.AgentError as exc:
            answer = error_message(ctx.message_id, exc)
        except FrameTooLarge as exc:
            answer = _too_large(ctx.message_id, exc)
        except Exception as exc:
            log.exception("%s %s failed", spec.request, ctx.message_id)
            answer = error_message(ctx.message_id, errors.Internal(f"internal error ({type(exc).__name__})"))
    if answer is None:
        if not ctx.cancel_requested:
            return  # the session is closing: nobody to answer
        answer = error_message(ctx.message_id, errors.Cancelled("cancelled by request"))
    try:
        await send_answer(ctx.session.writer, answer)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass  # the link went away; the answer has nowhere to go
