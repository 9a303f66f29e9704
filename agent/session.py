"""One link to a host: read frames, dispatch requests, write answers.

The reader never waits for a handler: every request runs in its own task in the
session's nursery (a 60 s command never delays a ping), and every answer goes
through the session's single :class:`MessageWriter`. When the link ends, the
nursery is cancelled: running commands are killed with their process groups
and unfinished write transfers are discarded by their handlers' cleanup.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import trio

from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.framing import FrameDecoder
from limiquantix.protocol.transport import MessageWriter, receive_frames
from limiquantix.protocol.wire import BadMessage, new_message, parse_frame

from .channel import Link, LinkGone
from .dispatch import HANDLERS, RequestContext, error_message, run_inline, run_request

if TYPE_CHECKING:
    from .daemon import Agent

__all__ = ["Session", "SessionResource"]

log = logging.getLogger(__name__)

#: Payload kinds that are answers or events: a host must not send them.
_NOT_REQUESTS: Final = frozenset(
    f.name for f in pb.AgentMessage.DESCRIPTOR.oneofs_by_name["payload"].fields if f.number >= 50
)


class SessionResource(Protocol):
    """Something a handler keeps open across requests (a file write transfer)."""

    def cancel(self) -> None:
        """Discard it: a CancelRequest named its id."""


@final
class Session:
    """Serves one :class:`Link` until it ends."""

    def __init__(self, agent: Agent, link: Link) -> None:
        self.agent = agent
        self.link = link
        self.writer = MessageWriter(
            link.send_all, try_write=link.try_write, max_frame_bytes=agent.config.max_frame_bytes
        )
        self.decoder = FrameDecoder(max_frame_bytes=agent.config.max_frame_bytes)
        self.inflight: dict[str, RequestContext] = {}
        self.bad_messages = 0
        #: What handlers keep open across requests (write transfers), by id. A
        #: CancelRequest naming an id found here cancels it; the owning handler
        #: cleans it up from a task started with :meth:`start_soon`, which ends
        #: with the session.
        self.resources: dict[str, SessionResource] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Serve the link; returns when it ends (never raises for link errors)."""
        self.link.on_host_absent = self._host_absent
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                # Announce unprompted: the agent cannot see a host attach.
                self.writer.try_send(new_message(agent_ready=pb.AgentReadyEvent(identity=self.agent.identity())))
                try:
                    await self._read_loop()
                except LinkGone as exc:
                    log.info("%s: %s", self.link.description, exc)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None

    def start_soon(self, async_fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        """Run a task that lives at most as long as this session.

        It is cancelled when the link ends (put cleanup in ``finally``).

        Raises:
            RuntimeError: the session is not running.
        """
        if self._nursery is None:
            raise RuntimeError("session is not running")
        self._nursery.start_soon(async_fn, *args, name=name)

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        try:
            await self.writer.run()
        except LinkGone as exc:
            log.info("%s: write failed: %s", self.link.description, exc)
            scope.cancel()

    async def _read_loop(self) -> None:
        while True:
            frames = await receive_frames(self.link.receive_some, self.decoder)
            if frames is None:
                log.info("%s closed by host", self.link.description)
                return
            for frame in frames:
                try:
                    msg = parse_frame(frame)
                except BadMessage as exc:
                    self.bad_messages += 1
                    log.warning("%s: dropped frame: %s", self.link.description, exc)
                    continue
                self._dispatch(msg)

    def _host_absent(self) -> None:
        # The host that sent any half-frame is gone; its successor starts afresh.
        if self.decoder.buffered:
            log.info("dropping %d bytes of a departed host's partial frame", self.decoder.buffered)
        self.decoder.reset()

    def _reply(self, answer: pb.AgentMessage) -> None:
        if not self.writer.try_send(answer):
            # Queue full: answer from a task so the reader keeps reading.
            assert self._nursery is not None
            self._nursery.start_soon(self.writer.send, answer)

    def _reply_error(self, message_id: str, exc: errors.AgentError) -> None:
        self._reply(error_message(message_id, exc))

    def _dispatch(self, msg: pb.AgentMessage) -> None:
        kind = msg.WhichOneof("payload")
        mid = msg.message_id
        assert self._nursery is not None
        if kind is None:
            self._reply_error(mid, errors.Unimplemented("unknown request type", reason="unknown_request"))
            return
        if kind in _NOT_REQUESTS:
            self._reply_error(mid, errors.InvalidArgument(f"{kind} is not a request", reason="not_a_request"))
            return
        if kind in self.agent.config.disable:
            self._reply_error(
                mid, errors.Unimplemented(f"{kind} is disabled by the agent's configuration", reason="disabled")
            )
            return
        if kind == "cancel":
            target_id = msg.cancel.target_message_id
            target: RequestContext | SessionResource | None = self.inflight.get(target_id)
            if target is None:
                target = self.resources.get(target_id)
            if target is not None:
                target.cancel()
            self._nursery.start_soon(
                self.writer.send, new_message(mid, cancel_response=pb.CancelResponse(found=target is not None))
            )
            return
        spec = HANDLERS.get(kind)
        if spec is None:
            self._reply_error(mid, errors.Unimplemented(f"{kind} is not implemented by this agent"))
            return
        if spec.inline:
            self._reply(run_inline(self.agent, mid, spec, getattr(msg, kind)))
            return
        if mid in self.inflight:
            self._reply_error(mid, errors.AlreadyExists(f"request {mid} is already running", reason="duplicate_id"))
            return
        if len(self.inflight) >= self.agent.config.max_inflight_requests:
            self._reply_error(
                mid,
                errors.ResourceExhausted(
                    f"{len(self.inflight)} requests already running", reason="too_many_requests"
                ),
            )
            return
        ctx = RequestContext(self.agent, self, mid, kind)
        self.inflight[mid] = ctx
        self._nursery.start_soon(self._run, ctx, spec, getattr(msg, kind), name=f"{kind}:{mid}")

    async def _run(self, ctx: RequestContext, spec, request) -> None:  # type: ignore[no-untyped-def]
        try:
            await run_request(ctx, spec, request)
        finally:
            self.inflight.pop(ctx.message_id, None)
