"""The host side of one agent connection: hello/sync, request correlation, events.

Used by hostd (one per VM), by ``limiquantix-agent-cli``, by the benchmarks and
by the tests. It speaks over any trio stream: the QEMU chardev's Unix socket in
production, the agent's own Unix socket in development.

Connection start (see DESIGN.md): the byte stream may hold stale frames from an
earlier connection, so the client sends ``hello`` with a random ``sync_id`` (in a
SYNC frame, resent every :data:`HELLO_RESEND_S` until answered) and discards
everything until the ``hello_response`` echoing it.

Events (telemetry, ip_changed, ...) are rate-limited per connection by a token
bucket (:data:`EVENT_RATE_PER_S`, bursts of :data:`EVENT_BURST`), so that a
guest flooding them costs its host little beyond decoding: over the rate,
telemetry is coalesced to the newest report (delivered once the rate allows)
and other events are dropped; both are counted in ``rate_limited_events``.

What a guest sends is read before it is parsed (:func:`~._wire.peek_message`: the id and the
kind at the top level), because parsing costs per entry, not per byte: 16 MiB of 2-byte
entries (8 million empty interfaces in one telemetry report, or list_directory entries) took
the parser 3-5 s of CPU, in which no other VM of the process was served, and 1 GiB of memory.
Dropped unparsed, and counted: everything before the hello's echo (``discarded_before_sync``);
an answer to no pending call (``late_replies``); a request, which only a host sends, a message
larger than its kind may be (:data:`MAX_PAYLOAD_BYTES`), and one that holds more fields than
its kind may (:data:`MAX_PAYLOAD_FIELDS`: list entries, values, nested ones, counted on the
wire by :class:`~.limits.FieldWalk`, a slice at a time, stopping at the first field over)
(``bad_messages``, logged once a minute per reason). An answer dropped so fails its call at
once (``resource_exhausted``) rather than at its deadline. The time each walk and parse takes
is charged to the reader's share of work, like decoding: what is parsed holds at most its
kind's bound of fields (a report 64 Ki: ~5-10 ms and ~8 MB of parse, then its capped copy).

Timeouts belong to the caller: wrap calls in ``trio.fail_after``. A call that is
cancelled while its request is in flight sends the agent a ``cancel`` for it.
When the reader ends, every pending call fails at once with ``Unavailable``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Final, NamedTuple, cast, final

import trio
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from . import errors
from ._framing import MAX_FRAME_BYTES, FrameDecoder
from ._gen import agent_pb2 as pb
from ._logs import LogThrottle
from ._tokenbucket import TokenBucket
from ._transport import DECODE_SLICE_WORK, MessageWriter, direct_reader, direct_writer, receive_frames
from ._wire import BadMessage, new_message, parse_frame, peek_message
from .errors import InvalidArgument
from .limits import MAX_BYTES, MAX_LIST_PAGE_ENTRIES, MIN_FIELD_BYTES, FieldWalk

__all__ = [
    "EVENT_BURST",
    "EVENT_RATE_PER_S",
    "HELLO_RESEND_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_FIELDS",
    "REPORT_FIELDS",
    "AgentClient",
    "is_terminal",
]

log = logging.getLogger(__name__)

#: Resend the hello this often until the agent echoes it (it may be starting,
#: or its decoder may be waiting out a stale frame).
HELLO_RESEND_S: Final = 1.0
#: Messages buffered per pending call before the reader waits for its consumer.
CALL_BUFFER: Final = 64
#: Events buffered before new ones are dropped (and counted).
EVENT_BUFFER: Final = 256
#: Bulk reads (file chunks of 1 MiB) cost fewer decoder passes in big pieces.
READ_SIZE: Final = 1024 * 1024
#: Work a reader with a budget (hostd's) may do at once before its rate applies
#: (framing.py's units, ~1 ns each: ~50 ms).
READER_WORK_BURST: Final = 50_000_000
#: Events let through per second, on average. An agent sends telemetry every few
#: seconds and the rest on changes; this leaves a wide margin for those.
EVENT_RATE_PER_S: Final = 10.0
#: Fields a walk counts between two checkpoints: ~0.25 ms of walking (~0.5 us a field), as a
#: reader decodes DECODE_SLICE_WORK at a time.
WALK_SLICE_FIELDS: Final = 512
#: Events let through at once after a quiet spell (a restart's ready, addresses,
#: first telemetry and a shutdown notice all together).
EVENT_BURST: Final = 20

#: Unsolicited messages (agent.proto numbers them from 100): they go to ``events``.
_EVENTS: Final = frozenset(
    f.name for f in pb.AgentMessage.DESCRIPTOR.oneofs_by_name["payload"].fields if f.number >= 100
)
#: Requests (agent.proto numbers them below 50): only a host sends them.
_REQUESTS: Final = frozenset(
    f.name for f in pb.AgentMessage.DESCRIPTOR.oneofs_by_name["payload"].fields if f.number < 50
)
#: A message's bytes (its whole AgentMessage) beyond the size of its payload kind's largest.
_ENVELOPE_BYTES: Final = 1024
#: Answers with no bulk field and no list: a few hundred bytes (an error's message: at most 8 KiB).
_SMALL_BYTES: Final = 64 * 1024
#: The largest AgentMessage of each payload kind a guest may send, checked before it is parsed;
#: a kind not named here: :data:`_SMALL_BYTES`. Answers carrying bulk data (command output, file
#: chunks) may fill a frame: their fields are bytes, which parse at memory speed. Identity,
#: telemetry and addresses may too: hostd keeps a capped copy of whatever a guest reports
#: (guestcaps; an identity with a 1 MiB hostname is cut, not refused); what bounds their cost
#: is their count of fields (:data:`MAX_PAYLOAD_FIELDS`).
MAX_PAYLOAD_BYTES: Final[dict[str, int]] = {
    **dict.fromkeys(
        (
            "hello_response",
            "info_response",
            "agent_ready",
            "telemetry",
            "telemetry_response",
            "ip_changed",
            "execute_response",
            "execute_output",
            "file_read_chunk",
        ),
        MAX_FRAME_BYTES,
    ),
    # A ping's payload comes back (MAX_BYTES at most, limits.py).
    "pong": MAX_BYTES + _ENVELOPE_BYTES,
    # A page of at most MAX_LIST_PAGE_ENTRIES (10,000) entries, each a name of at most 255 bytes
    # and its stat.
    "list_directory_response": 4 * 1024 * 1024,
}


def _fields_of_one(descriptor: Descriptor) -> int:
    """The fields a message of a type without lists holds on the wire when every field is set
    (each once, nested messages' fields too): a FileStat's 19."""
    total = 0
    for f in descriptor.fields:
        assert not f.is_repeated, f.full_name
        total += 1 + (_fields_of_one(f.message_type) if f.message_type is not None else 0)
    return total


#: Fields an AgentMessage of a kind without lists may hold: its schema holds a few dozen (an
#: ExecuteResponse and its envelope ~20); the rest is room for what a newer agent adds.
_SMALL_FIELDS: Final = 1024
#: What a guest sends, for the walk (the stubs type a generated DESCRIPTOR as either kind).
_AGENT_MESSAGE: Final = cast(Descriptor, pb.AgentMessage.DESCRIPTOR)
#: Fields of what an agent reports of a guest (an identity, a telemetry report, an address set).
#: ~20 fields an interface (its counters; each address 3-4), 8 a filesystem, 7 a logged-in user:
#: a VM's few dozen of each are a few thousand (a typical report: 1-4 KiB, a few hundred), a busy
#: container host's hundreds 10-20 thousand (the agent leaves out veths and the like). Within the
#: bound hostd keeps a capped copy (guestcaps) of whatever is reported (a 1 MiB hostname, 10,000
#: interfaces); a report at the bound costs hostd a parse of ~5-10 ms and ~8 MB while it is held
#: (a guest's reports back to back: the parse, the one held over the rate, the one being capped).
REPORT_FIELDS: Final = 64 * 1024
#: Fields (:class:`~.limits.FieldWalk`'s count: list entries, values, nested ones) the largest
#: AgentMessage of each payload kind a guest may send holds, checked before it is parsed (a
#: parse costs per field; the walk stops at the first field over); a kind not named here:
#: :data:`_SMALL_FIELDS`. A message over its kind's bound is dropped, not cut.
MAX_PAYLOAD_FIELDS: Final[dict[str, int]] = {
    **dict.fromkeys(
        ("hello_response", "info_response", "agent_ready", "telemetry", "telemetry_response", "ip_changed"),
        REPORT_FIELDS,
    ),
    # A page of at most MAX_LIST_PAGE_ENTRIES entries, each a FileStat with every field set.
    "list_directory_response": MAX_LIST_PAGE_ENTRIES * (1 + _fields_of_one(cast(Descriptor, pb.FileStat.DESCRIPTOR)))
    + _SMALL_FIELDS,
}
#: Requests the agent can stop midway: a caller that gives up tells it to.
_CANCELLABLE: Final = frozenset({"execute", "file_read"})


def is_terminal(msg: pb.AgentMessage) -> bool:
    """Whether ``msg`` ends its request (streams send non-terminal parts first)."""
    kind = msg.WhichOneof("payload")
    if kind == "execute_output":
        return False
    if kind == "file_read_chunk":
        return msg.file_read_chunk.eof
    return True


@final
class _Unary:
    """A pending call that wants only its terminal answer."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: pb.AgentMessage | errors.AgentError | None = None

    def finish(self, result: pb.AgentMessage | errors.AgentError) -> None:
        self.result = result
        self.done.set()


_Call = _Unary | trio.MemorySendChannel  # type: ignore[type-arg]


class _Peeked(NamedTuple):
    """What a message is, read from its top level before it is parsed."""

    message_id: str
    kind: str | None
    #: Its kind's bound of fields (MAX_PAYLOAD_FIELDS).
    max_fields: int


def _fail_call(call: _Call, exc: errors.AgentError) -> None:
    """End a pending call (taken out of the pending table) with ``exc``."""
    if isinstance(call, _Unary):
        call.finish(exc)
        return
    with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        call.send_nowait(exc)
    call.close()


@final
class AgentClient:
    """One connection to one agent. Create with :meth:`open` or :meth:`connect_unix`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        event_rate_per_s: float = EVENT_RATE_PER_S,
        event_burst: int = EVENT_BURST,
        reader_work_per_s: float | None = None,
    ) -> None:
        self._stream = stream
        self.writer = MessageWriter(stream.send_all, try_write=direct_writer(stream), max_frame_bytes=max_frame_bytes)
        self.decoder = FrameDecoder(max_frame_bytes=max_frame_bytes)
        self._receive_some = direct_reader(stream, READ_SIZE)
        self.identity: pb.AgentIdentity | None = None
        self._pending: dict[str, _Call] = {}
        self._events_tx, self.events = trio.open_memory_channel[pb.AgentMessage](EVENT_BUFFER)
        self._event_tokens = TokenBucket(event_rate_per_s, event_burst)
        # Decoding work per second (framing.py's units) before the reader pauses
        # and the peer's writes wait: a bounded share of the process per peer.
        self._reader_budget = TokenBucket(reader_work_per_s, READER_WORK_BURST) if reader_work_per_s else None
        # The newest telemetry that arrived over the rate, and a wake-up for
        # the task that delivers it once a token is there.
        self._held_telemetry: pb.AgentMessage | None = None
        self._telemetry_held = trio.Event()
        self._sync_id = secrets.randbits(63) + 1
        self._synced = trio.Event()
        self._closed_reason: str | None = None
        self.late_replies = 0
        self.dropped_events = 0
        self.discarded_before_sync = 0
        self.bad_messages = 0
        #: Events over the rate: dropped, or telemetry replaced by a newer report.
        self.rate_limited_events = 0
        #: Times the reader paused, over its share of decoding work.
        self.reader_pauses = 0
        self._bad_log = LogThrottle()

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        stream: trio.abc.Stream,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        event_rate_per_s: float = EVENT_RATE_PER_S,
        event_burst: int = EVENT_BURST,
        reader_work_per_s: float | None = None,
        on_start: Callable[[AgentClient], None] | None = None,
    ) -> AsyncIterator[AgentClient]:
        """Run a client over ``stream``; returns once the agent answered hello.

        ``reader_work_per_s`` bounds the decoding work the reader does per second
        (framing.py's units, ~1 ns each; None: no bound), so that one peer gets a
        bounded share of the process: over it, the reader pauses. ``on_start`` is given
        the client before the hello is answered (its counters, for a guest that never
        answers one usably).

        Raises:
            Unavailable: the stream ended before the agent answered.
            ValueError: a rate or burst that is not positive.
        """
        client = cls(
            stream,
            max_frame_bytes=max_frame_bytes,
            event_rate_per_s=event_rate_per_s,
            event_burst=event_burst,
            reader_work_per_s=reader_work_per_s,
        )
        if on_start is not None:
            on_start(client)
        # Errors from the caller's block are re-raised as they are, not wrapped
        # in the ExceptionGroup the nursery would make of them.
        error: Exception | None = None
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(client._write_loop)
            nursery.start_soon(client._read_loop)
            nursery.start_soon(client._hello_loop)
            nursery.start_soon(client._release_held_telemetry)
            await client._synced.wait()
            if client._closed_reason is None:
                try:
                    yield client
                except Exception as exc:
                    error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        if client._closed_reason is not None and client.identity is None:
            raise errors.Unavailable(f"agent connection closed before hello: {client._closed_reason}")

    @classmethod
    @asynccontextmanager
    async def connect_unix(cls, path: str, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> AsyncIterator[AgentClient]:
        """Connect to an agent (or a QEMU chardev) listening on a Unix socket.

        Raises:
            Unavailable: the socket cannot be connected or closed before hello.
        """
        try:
            stream = await trio.open_unix_socket(path)
        except OSError as exc:
            raise errors.Unavailable(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        async with cls.open(stream, max_frame_bytes=max_frame_bytes) as client:
            yield client

    @property
    def closed_reason(self) -> str | None:
        """Why the connection ended (None while it is open)."""
        return self._closed_reason

    @property
    def connected(self) -> bool:
        return self._synced.is_set() and self._closed_reason is None

    def _close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        self._fail_pending(errors.Unavailable(f"agent connection lost: {reason}"))
        self._events_tx.close()
        self._synced.set()  # wake open() if it is still waiting

    def _fail_pending(self, exc: errors.AgentError) -> None:
        pending, self._pending = self._pending, {}
        for call in pending.values():
            _fail_call(call, exc)

    async def _write_loop(self) -> None:
        try:
            await self.writer.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._close(f"write failed: {exc}")

    async def _hello_loop(self) -> None:
        while not self._synced.is_set():
            hello = new_message(hello=pb.HelloRequest(sync_id=self._sync_id))
            try:
                await self.writer.send(hello)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            with trio.move_on_after(HELLO_RESEND_S):
                await self._synced.wait()

    async def _read_loop(self) -> None:
        reason = "closed by peer"
        charged = 0
        try:
            while True:
                frames = await receive_frames(self._receive_some, self.decoder)
                if frames is None:
                    break
                if self._reader_budget is not None:
                    # Over its share: pause (the slices already let others run between).
                    pause = self._reader_budget.charge(self.decoder.stats.work - charged)
                    charged = self.decoder.stats.work
                    if pause > 0:
                        self.reader_pauses += 1
                        await trio.sleep(pause)
                parse_ns = 0
                for frame in frames:
                    peeked = self._admit(frame.payload)
                    if peeked is None or not await self._within_fields(frame.payload, peeked):
                        continue
                    started = time.perf_counter_ns()
                    try:
                        msg = parse_frame(frame)
                    except BadMessage as exc:
                        self._bad_message("undecodable", str(exc))
                        continue
                    finally:
                        parse_ns += time.perf_counter_ns() - started
                    if parse_ns > DECODE_SLICE_WORK:
                        # Parsing is reading work too (~1 ns a unit): charged to the share,
                        # and a slice's worth lets the other tasks run.
                        self._charge_parse(parse_ns)
                        parse_ns = 0
                        await trio.lowlevel.checkpoint()
                    await self._route(msg)
                self._charge_parse(parse_ns)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            # Its buffer can hold a frame's worth (16 MiB) of a hostile guest's
            # bytes: free it now, not when a cycle collection frees the client.
            self.decoder.reset()
            self._close(reason)

    def _charge_parse(self, ns: int) -> None:
        """Charge ``ns`` of parsing to the reader's budget (its pause comes at the next read)."""
        if self._reader_budget is not None and ns:
            self._reader_budget.charge(ns)

    def _admit(self, payload: bytes | bytearray | memoryview) -> _Peeked | None:
        """What a frame's payload is, when it is worth parsing (None when it is not), decided
        from its top level (see the module docstring); what is not is counted here."""
        try:
            message_id, kind = peek_message(payload)
        except BadMessage as exc:
            self._bad_message("undecodable", str(exc))
            return None
        if not message_id:
            self._bad_message("no id", "message without message_id")
            return None
        if not self._synced.is_set() and kind != "hello_response":
            self.discarded_before_sync += 1
            return None
        if kind in _REQUESTS:
            self._bad_message("request", f"a {kind} request (only a host sends requests)")
            return None
        if kind not in _EVENTS and kind != "hello_response" and message_id not in self._pending:
            self.late_replies += 1
            return None
        peeked = _Peeked(message_id, kind, MAX_PAYLOAD_FIELDS.get(kind or "", _SMALL_FIELDS))
        limit = MAX_PAYLOAD_BYTES.get(kind or "", _SMALL_BYTES)
        if len(payload) > limit:
            self._refuse(peeked, "too large", f"a {kind} of {len(payload)} bytes (at most {limit}), unread")
            return None
        return peeked

    async def _within_fields(self, payload: bytes | bytearray | memoryview, peeked: _Peeked) -> bool:
        """Whether a payload :meth:`_admit` let through holds at most its kind's bound of fields,
        walked (:class:`~.limits.FieldWalk`) a slice at a time, each charged to the reader's
        share like a parse; what does not is counted and refused here."""
        max_fields = peeked.max_fields
        if len(payload) <= MIN_FIELD_BYTES * max_fields:
            return True  # too small to hold more
        walk = FieldWalk(payload, _AGENT_MESSAGE)
        try:
            while True:
                started = time.perf_counter_ns()
                done = walk.advance(min(WALK_SLICE_FIELDS, max_fields + 1 - walk.fields))
                self._charge_parse(time.perf_counter_ns() - started)
                if done or walk.fields > max_fields:
                    break
                await trio.lowlevel.checkpoint()
        except InvalidArgument as exc:
            self._refuse(peeked, "undecodable", f"undecodable payload of {len(payload)} bytes ({exc.message})")
            return False
        if walk.fields > max_fields:
            self._refuse(
                peeked,
                "too dense",
                f"a {peeked.kind} of over {max_fields} fields (list entries, values) in {len(payload)} bytes, unread",
            )
            return False
        return True

    def _refuse(self, peeked: _Peeked, reason: str, what: str) -> None:
        """Drop a message :meth:`_admit` peeked at as unusable (see :meth:`_bad_message`); a call
        waiting for it fails now, not at its deadline."""
        self._bad_message(reason, what)
        call = self._pending.pop(peeked.message_id, None) if peeked.kind not in _EVENTS else None
        if call is not None:
            _fail_call(call, errors.ResourceExhausted(f"the agent's answer was refused: {what}", reason="bad_answer"))

    def _bad_message(self, reason: str, what: str) -> None:
        """Count a message dropped as unusable; logged once a minute per ``reason`` (a guest
        can send them at line rate: one line each was a line per frame)."""
        self.bad_messages += 1
        more = self._bad_log.due(reason)
        if more is not None:
            log.warning("dropped frame from agent: %s%s", what, more)

    async def _route(self, msg: pb.AgentMessage) -> None:
        kind = msg.WhichOneof("payload")
        if not self._synced.is_set():
            if kind == "hello_response" and msg.hello_response.sync_id == self._sync_id:
                self.identity = msg.hello_response.identity
                self._synced.set()
            else:
                self.discarded_before_sync += 1
            return
        if kind == "hello_response":
            return  # an answer to a resent hello
        if kind in _EVENTS:
            if kind == "agent_ready":
                # The agent reopened its port (restarted): nothing in flight will be answered.
                self.identity = msg.agent_ready.identity
                self._fail_pending(errors.Unavailable("agent restarted"))
            elif kind == "agent_stopping":
                # Its last frame: what it has not answered by now, it will not.
                self._fail_pending(errors.Unavailable(f"agent stopped ({msg.agent_stopping.reason})"))
            self._offer_event(kind, msg)
            return
        tx = self._pending.get(msg.message_id)
        if tx is None:
            self.late_replies += 1
            return
        if isinstance(tx, _Unary):
            if is_terminal(msg):  # a unary caller does not want the partials
                del self._pending[msg.message_id]
                tx.finish(msg)
            return
        try:
            await tx.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._pending.pop(msg.message_id, None)
            return
        if is_terminal(msg):
            self._pending.pop(msg.message_id, None)
            tx.close()

    def _offer_event(self, kind: str, msg: pb.AgentMessage) -> None:
        """Queue an event if the rate allows; else hold (telemetry) or drop it."""
        if self._event_tokens.take():
            if kind == "telemetry" and self._held_telemetry is not None:
                self._held_telemetry = None  # this one is newer
                self.rate_limited_events += 1
            self._queue_event(msg)
            return
        self.rate_limited_events += 1
        if kind == "telemetry":
            if self._held_telemetry is None:
                self.rate_limited_events -= 1  # held, not dropped (yet)
                self._telemetry_held.set()
            self._held_telemetry = msg

    def _queue_event(self, msg: pb.AgentMessage) -> None:
        try:
            self._events_tx.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped_events += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _release_held_telemetry(self) -> None:
        """Deliver the newest telemetry held over the rate once a token is there."""
        while True:
            await self._telemetry_held.wait()
            self._telemetry_held = trio.Event()
            while self._held_telemetry is not None:
                await trio.sleep(self._event_tokens.wait_s())
                if self._held_telemetry is not None and self._event_tokens.take():
                    msg, self._held_telemetry = self._held_telemetry, None
                    self._queue_event(msg)

    # -- calls ---------------------------------------------------------------

    def _new_request(self, message_id: str | None, payload: dict[str, Message]) -> pb.AgentMessage:
        if self._closed_reason is not None:
            raise errors.Unavailable(f"agent connection lost: {self._closed_reason}")
        if message_id is not None and message_id in self._pending:
            raise errors.AlreadyExists(f"request {message_id} is already pending", reason="duplicate_id")
        return new_message(message_id, **payload)

    async def stream(self, *, message_id: str | None = None, **payload: Message) -> AsyncIterator[pb.AgentMessage]:
        """Send one request; yield every message answering it, the terminal one last.

        An ``error`` answer is raised as its :class:`~.errors.AgentError`.
        Leaving the iteration early (or being cancelled) cancels the request in
        the agent. ``message_id`` names the request (so that another task can
        cancel it); by default a fresh one is drawn.
        """
        msg = self._new_request(message_id, payload)
        mid = msg.message_id
        tx, rx = trio.open_memory_channel[pb.AgentMessage | errors.AgentError](CALL_BUFFER)
        self._pending[mid] = tx
        done = False
        try:
            await self.writer.send(msg)
            # ``with``, not ``async with``: the channel's aclose() is a checkpoint, and a task
            # that waits there after the terminal answer lets a stream's consumer (hostd's
            # ExecuteInGuestStream) flush that answer alone, its end-of-stream in a second write.
            with rx:
                async for item in rx:
                    if isinstance(item, errors.AgentError):
                        done = True
                        raise item
                    if item.WhichOneof("payload") == "error":
                        done = True
                        raise errors.from_proto(item.error)
                    if is_terminal(item):
                        done = True
                    yield item
                    if done:
                        return
            done = True
            raise errors.Unavailable(f"agent connection lost: {self._closed_reason}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            done = True
            raise errors.Unavailable("agent connection lost") from exc
        finally:
            if self._pending.get(mid) is tx:
                del self._pending[mid]
            if not done and self._closed_reason is None and payload.keys() & _CANCELLABLE:
                self.writer.try_send(new_message(cancel=pb.CancelRequest(target_message_id=mid)))

    async def request(self, *, message_id: str | None = None, **payload: Message) -> pb.AgentMessage:
        """Send one request and return its terminal answer (partials discarded).

        Raises:
            AgentError: the agent answered with an error, or the connection was lost.
            AlreadyExists: ``message_id`` names a request still pending.
        """
        msg = self._new_request(message_id, payload)
        mid = msg.message_id
        call = _Unary()
        self._pending[mid] = call
        sent = False
        try:
            await self.writer.send(msg)
            sent = True
            await call.done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise errors.Unavailable("agent connection lost") from exc
        finally:
            if self._pending.get(mid) is call:
                del self._pending[mid]
                if sent and self._closed_reason is None and payload.keys() & _CANCELLABLE:
                    self.writer.try_send(new_message(cancel=pb.CancelRequest(target_message_id=mid)))
        result = call.result
        if isinstance(result, errors.AgentError):
            raise result
        assert result is not None
        if result.WhichOneof("payload") == "error":
            raise errors.from_proto(result.error)
        return result

    async def ping(self, payload: bytes = b"") -> pb.PongResponse:
        return (await self.request(ping=pb.PingRequest(payload=payload))).pong
