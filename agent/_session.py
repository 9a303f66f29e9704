"""One link to a host: read frames, dispatch requests, write answers.

The reader never waits for a handler: every request runs in its own task in the
session's nursery (a 60 s command never delays a ping), and every answer goes
through the session's single :class:`MessageWriter`. When the link ends, the
nursery is cancelled: running commands are killed with their process groups
and unfinished write transfers are discarded by their handlers' cleanup.

What one host can make a session hold is bounded: every request's fields are
checked against :mod:`limiquantix.protocol.limits` before any handler runs; a
host that does not read its answers stops being read (the writer's queue is
bounded and the reader waits for room); a partial frame may stay incomplete for
``partial_frame_timeout_s`` at most, and all sessions together may buffer
``max_buffered_bytes`` of partial frames and run ``max_request_bytes`` of
requests; a frame must be taken by the host
within ``write_stall_timeout_s``: a link over any of these loses its session,
never the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, final

import trio

from limiquantix.protocol import (
    BadMessage,
    FrameDecoder,
    FrameTooLarge,
    MessageWriter,
    errors,
    new_message,
    parse_frame,
    receive_frames,
)
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.limits import check_message

from ._channel import Link, LinkGone
from ._dispatch import HANDLERS, AgentState, RequestContext, error_message, run_inline, run_request, send_answer

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

    def __init__(self, agent: AgentState, link: Link) -> None:
        self.agent = agent
        self.link = link
        self.writer = MessageWriter(
            self._send_all, try_write=link.try_write, max_frame_bytes=agent.config.max_frame_bytes
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
        #: This session's part of ``agent.buffered_bytes`` (its decoder's partial frame).
        self.accounted_bytes = 0
        #: When the buffered partial frame last made progress (a frame completed,
        #: or buffering began); it must complete within partial_frame_timeout_s.
        self._progress_at = 0.0

    async def run(self) -> None:
        """Serve the link; returns when it ends (never raises for link errors)."""
        self.link.on_host_absent = self._host_absent
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                # Announce unprompted: the agent cannot see a host attach.
                try:
                    self.writer.try_send(new_message(agent_ready=pb.AgentReadyEvent(identity=self.agent.identity())))
                except FrameTooLarge as exc:
                    log.warning("%s: announce not sent: %s", self.link.description, exc)
                try:
                    await self._read_loop()
                except LinkGone as exc:
                    log.info("%s: %s", self.link.description, exc)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._account(0)

    def start_soon(self, async_fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        """Run a task that lives at most as long as this session.

        It is cancelled when the link ends (put cleanup in ``finally``).

        Raises:
            RuntimeError: the session is not running.
        """
        if self._nursery is None:
            raise RuntimeError("session is not running")
        self._nursery.start_soon(async_fn, *args, name=name)

    async def _send_all(self, data: bytes) -> None:
        """The writer's ``send_all``: a host that does not take a frame in time loses the link.

        Raises:
            LinkGone: the link broke, or the frame was not taken within
                write_stall_timeout_s (the rest of it is never sent: the session ends).
        """
        timeout = self.agent.config.write_stall_timeout_s
        with trio.move_on_after(timeout):
            await self.link.send_all(data)
            return
        raise LinkGone(f"the host took no {len(data)}-byte frame within {timeout:g} s: closing the session")

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        try:
            await self.writer.run()
        except LinkGone as exc:
            log.info("%s: write failed: %s", self.link.description, exc)
            scope.cancel()

    async def _read_loop(self) -> None:
        """Read and dispatch until the host closes.

        Raises:
            LinkGone: the link broke, the writer stopped, or the host broke a
                bound (a partial frame too slow, too many bytes buffered).
        """
        config = self.agent.config
        while True:
            was_buffered = self.decoder.buffered
            deadline = self._progress_at + config.partial_frame_timeout_s if was_buffered else float("inf")
            with trio.move_on_at(deadline) as scope:
                frames = await receive_frames(self.link.receive_some, self.decoder)
            if scope.cancelled_caught:
                if self.decoder.buffered:
                    raise LinkGone(
                        f"a frame stayed incomplete for {config.partial_frame_timeout_s:g} s"
                        f" ({self.decoder.buffered} bytes buffered): closing the session"
                    )
                continue  # the host detached meanwhile and its partial frame was dropped
            if frames is None:
                log.info("%s closed by host", self.link.description)
                return
            if frames or not was_buffered:
                self._progress_at = trio.current_time()
            self._account(self.decoder.buffered)
            for frame in frames:
                try:
                    msg = parse_frame(frame)
                except BadMessage as exc:
                    self.bad_messages += 1
                    log.warning("%s: dropped frame: %s", self.link.description, exc)
                    continue
                await self._dispatch(msg, len(frame.payload))

    def _account(self, buffered: int) -> None:
        """Update this session's part of the agent's buffered bytes.

        Raises:
            LinkGone: the growth took every session's total over
                max_buffered_bytes (this session loses its link, not the others).
        """
        delta = buffered - self.accounted_bytes
        self.agent.buffered_bytes += delta
        self.accounted_bytes = buffered
        budget = self.agent.config.max_buffered_bytes
        if delta > 0 and self.agent.buffered_bytes > budget:
            raise LinkGone(
                f"{buffered} bytes of partial frames buffered, all sessions together"
                f" {self.agent.buffered_bytes} (max_buffered_bytes {budget}): closing the session"
            )

    def _host_absent(self) -> None:
        # The host that sent any half-frame is gone; its successor starts afresh.
        if self.decoder.buffered:
            log.info("dropping %d bytes of a departed host's partial frame", self.decoder.buffered)
        self.decoder.reset()
        self._account(0)

    async def _reply(self, answer: pb.AgentMessage) -> None:
        """Send an answer from the reader.

        When the writer's queue is full the reader waits for room: a host that
        does not read its answers stops being read, instead of making the
        session hold an answer (or a task) per request it keeps sending.

        Raises:
            LinkGone: the writer stopped (the link broke).
        """
        try:
            if self.writer.try_send(answer):
                return
        except FrameTooLarge:
            pass  # send_answer answers an Error instead
        try:
            await send_answer(self.writer, answer)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise LinkGone("the writer stopped") from exc

    async def _reply_error(self, message_id: str, exc: errors.AgentError) -> None:
        await self._reply(error_message(message_id, exc))

    async def _dispatch(self, msg: pb.AgentMessage, size: int) -> None:
        """Answer or start one message from the host (``size``: its encoded size).

        Raises:
            LinkGone: the writer stopped.
        """
        kind = msg.WhichOneof("payload")
        mid = msg.message_id
        assert self._nursery is not None
        if kind is None:
            await self._reply_error(mid, errors.Unimplemented("unknown request type", reason="unknown_request"))
            return
        if kind in _NOT_REQUESTS:
            await self._reply_error(mid, errors.InvalidArgument(f"{kind} is not a request", reason="not_a_request"))
            return
        try:
            # Before anything looks at the request: no handler sees an oversized
            # field, and no answer echoes one.
            check_message(msg, encoded_size=size)
        except errors.InvalidArgument as exc:
            log.warning("%s: refused %s: %s", self.link.description, kind, exc.message)
            await self._reply_error(mid, exc)
            return
        if kind in self.agent.config.disable:
            await self._reply_error(
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
            await self._reply(new_message(mid, cancel_response=pb.CancelResponse(found=target is not None)))
            return
        spec = HANDLERS.get(kind)
        if spec is None:
            await self._reply_error(mid, errors.Unimplemented(f"{kind} is not implemented by this agent"))
            return
        if spec.inline:
            await self._reply(run_inline(self.agent, mid, spec, getattr(msg, kind)))
            return
        if mid in self.inflight:
            await self._reply_error(
                mid, errors.AlreadyExists(f"request {mid} is already running", reason="duplicate_id")
            )
            return
        if len(self.inflight) >= self.agent.config.max_inflight_requests:
            await self._reply_error(
                mid,
                errors.ResourceExhausted(f"{len(self.inflight)} requests already running", reason="too_many_requests"),
            )
            return
        budget = self.agent.config.max_request_bytes
        if self.agent.request_bytes + size > budget:
            # A running request keeps its message (an execute's stdin, a write's
            # data) until it ends: without a bound, a host could pile up frames
            # of data faster than handlers finish.
            await self._reply_error(
                mid,
                errors.ResourceExhausted(
                    f"requests of {self.agent.request_bytes} bytes already running (max_request_bytes {budget})",
                    reason="too_many_bytes",
                ),
            )
            return
        ctx = RequestContext(self.agent, self, mid, kind)
        self.inflight[mid] = ctx
        self.agent.request_bytes += size
        self._nursery.start_soon(self._run, ctx, spec, getattr(msg, kind), size, name=f"{kind}:{mid}")

    async def _run(self, ctx: RequestContext, spec, request, size: int) -> None:  # type: ignore[no-untyped-def]
        try:
            await run_request(ctx, spec, request)
        finally:
            self.inflight.pop(ctx.message_id, None)
            self.agent.request_bytes -= size
