"""The single-writer discipline: frames never interleave, a cancelled sender never leaves half a frame."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from limiquantix.protocol import encode_message, errors, new_message, parse_frame
from limiquantix.protocol._agentclient import HELLO_RESEND_S, AgentClient
from limiquantix.protocol._framing import CANDIDATE_WORK, HEADER_SIZE, MAGIC, Frame, FrameDecoder, encode_frame
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._transport import DECODE_SLICE_WORK, MessageWriter, direct_reader, direct_writer


def big(n: int, tag: bytes) -> pb.AgentMessage:
    return new_message(ping=pb.PingRequest(payload=tag * n))


async def drain(stream: trio.abc.ReceiveStream, dec: FrameDecoder, want: int) -> list[pb.AgentMessage]:
    out: list[pb.AgentMessage] = []
    while len(out) < want:
        out += [parse_frame(f) for f in dec.feed(await stream.receive_some(65536))]
    return out


@pytest.mark.trio
async def test_cancelled_sender_leaves_no_partial_frame() -> None:
    """A sender cancelled while waiting for queue space has sent nothing at all."""
    left, right = trio.testing.lockstep_stream_pair()  # send_all blocks until read
    writer = MessageWriter(left.send_all, queue_frames=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.send(big(100_000, b"a"))  # taken by the writer, which blocks mid-frame
        await trio.testing.wait_all_tasks_blocked()
        await writer.send(big(10, b"b"))  # fills the queue
        with trio.move_on_after(0.1) as scope:  # the reader is not reading: this one must wait
            await writer.send(big(10, b"c"))
        assert scope.cancelled_caught
        dec = FrameDecoder()
        got = await drain(right, dec, 2)
        assert [m.ping.payload[:1] for m in got] == [b"a", b"b"]
        assert len(got[0].ping.payload) == 100_000
        assert dec.stats.bad_frames == 0 and dec.stats.dropped_bytes == 0
        writer.close()
        with trio.fail_after(5):
            await writer.drained.wait()


@pytest.mark.trio
async def test_queued_bytes_are_bounded() -> None:
    """Senders wait while queue_bytes are queued: a peer that does not read holds at most that (plus one frame)."""
    left, right = trio.testing.lockstep_stream_pair()  # send_all blocks until read
    writer = MessageWriter(left.send_all, queue_bytes=50_000)
    sent: list[bytes] = []

    async def send(tag: bytes, n: int) -> None:
        await writer.send(big(n, tag))
        sent.append(tag)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await send(b"a", 100_000)  # larger than queue_bytes, alone in the queue: it goes
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, b"b", 10)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"a"]  # b waits for room, holding nothing in the queue
        assert writer.queued_bytes > 100_000 and writer.queued_bytes < 100_100
        assert not writer.try_send(big(10, b"e"))  # events are dropped meanwhile
        got = await drain(right, FrameDecoder(), 2)
        assert [m.ping.payload[:1] for m in got] == [b"a", b"b"]
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [b"a", b"b"] and writer.queued_bytes == 0
        writer.close()


@pytest.mark.trio
async def test_senders_waiting_for_room_fail_when_the_writer_stops() -> None:
    left, _right = trio.testing.lockstep_stream_pair()
    writer = MessageWriter(left.send_all, queue_bytes=1000)

    async def broken_run() -> None:
        with trio.CancelScope() as scope:
            stop_writer.append(scope)
            await writer.run()

    stop_writer: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broken_run)
        await writer.send(big(5000, b"a"))
        await trio.testing.wait_all_tasks_blocked()
        failed: list[BaseException] = []

        async def waiting_sender() -> None:
            try:
                await writer.send(big(10, b"b"))
            except trio.BrokenResourceError as exc:
                failed.append(exc)

        async with trio.open_nursery() as waiters:
            waiters.start_soon(waiting_sender)
            await trio.testing.wait_all_tasks_blocked()
            stop_writer[0].cancel()  # the link broke: run() ends
        assert len(failed) == 1
        assert writer.queued_bytes == len(encode_message(big(5000, b"a")))  # b was never queued


@pytest.mark.trio
async def test_direct_write_remainder_follows_before_anything_else() -> None:
    """When the socket takes part of a frame at once, its rest is written next, whole."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    left = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    right = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    writer = MessageWriter(left.send_all, try_write=direct_writer(left))
    dec = FrameDecoder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled before it even starts: a partial direct write must still complete
            await writer.send(big(200_000, b"x"))
        for i in range(20):
            writer.try_send(big(1000, bytes([65 + i])))
        reader = direct_reader(right, 65536)
        got: list[pb.AgentMessage] = []
        with trio.fail_after(10):
            while len(got) < 21:
                got += [parse_frame(f) for f in dec.feed(await reader())]
        assert got[0].ping.payload == b"x" * 200_000
        assert [m.ping.payload[:1] for m in got[1:]] == [bytes([65 + i]) for i in range(20)]
        assert dec.stats.bad_frames == 0
        nursery.cancel_scope.cancel()


# ------------------------------------------- the host-side reader (AgentClient)


async def answer_hello(agent_side: trio.abc.Stream) -> None:
    """The agent's half of the hello (a fake agent: the test scripts what follows)."""
    dec = FrameDecoder()
    while True:
        for frame in dec.feed(await agent_side.receive_some(65536)):
            msg = parse_frame(frame)
            if msg.WhichOneof("payload") == "hello":
                answer = pb.HelloResponse(sync_id=msg.hello.sync_id, identity=pb.AgentIdentity(agent_version="fake"))
                await agent_side.send_all(encode_message(new_message(msg.message_id, hello_response=answer)))
                return


@pytest.mark.trio
async def test_events_over_the_rate_are_dropped_and_telemetry_coalesced_to_the_newest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host_side, agent_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_hello, agent_side)
        async with AgentClient.open(host_side, event_rate_per_s=10, event_burst=5) as client:
            flood = [new_message(telemetry=pb.TelemetryReport(uptime_seconds=i)) for i in range(1000)]
            flood += [new_message(ip_changed=pb.IpChangedEvent()) for _ in range(100)]
            await agent_side.send_all(b"".join(encode_message(m) for m in flood))
            received: list[pb.AgentMessage] = []
            with trio.move_on_after(5):
                async for msg in client.events:
                    received.append(msg)
            nursery.cancel_scope.cancel()
    kinds = [m.WhichOneof("payload") for m in received]
    # The burst, then the newest telemetry once a token is back; no ip_changed
    # got a token (the burst went to the telemetry that came first).
    assert kinds == ["telemetry"] * 6, kinds
    assert received[-1].telemetry.uptime_seconds == 999
    assert client.rate_limited_events == 1100 - 6
    assert client.dropped_events == 0


@pytest.mark.trio
@pytest.mark.parametrize("magics", [64 * 1024, pytest.param(256 * 1024, marks=pytest.mark.slow)])
async def test_the_reader_yields_between_slices_of_a_dense_stream(magics: int) -> None:
    """256 KiB of magic spam (1 MiB in the slow tier) arrives at once: the reader decodes
    them in slices (768; 3,072) and lets another task run between them (counted: no wall
    time)."""
    host_side, agent_side = trio.testing.memory_stream_pair()
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_hello, agent_side)
        async with AgentClient.open(host_side) as client:
            nursery.start_soon(other_task)
            spam = MAGIC * magics
            await agent_side.send_all(spam)
            while client.decoder.stats.dropped_bytes < len(spam) - HEADER_SIZE:
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    slices = len(spam) // len(MAGIC) * CANDIDATE_WORK // DECODE_SLICE_WORK
    assert ticks >= slices // 2, (ticks, slices)


# --------------------------- AgentClient over memory streams (no socket, no agent process)
# The socket tests (test_session.py, test_hostd_vm.py) run the client against a
# real agent; these script the agent's half byte by byte, so that the cases a
# real agent never produces (answers out of order, unknown ids, garbage, a close
# mid-frame) are exercised deterministically.


class ScriptedAgent:
    """The agent's end of a memory stream pair: reads whole messages, writes what the test says."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._ready: list[pb.AgentMessage] = []

    async def receive(self) -> pb.AgentMessage:
        """The next message from the client (resent hellos included)."""
        while not self._ready:
            self._ready += [parse_frame(f) for f in self._decoder.feed(await self.stream.receive_some(65536))]
        return self._ready.pop(0)

    async def receive_request(self) -> pb.AgentMessage:
        """The next message that is not a hello."""
        while (msg := await self.receive()).WhichOneof("payload") == "hello":
            pass
        return msg

    async def send(self, msg: pb.AgentMessage) -> None:
        await self.stream.send_all(encode_message(msg))


@pytest.fixture(name="scripted")
def _scripted(nursery: trio.Nursery):  # type: ignore[no-untyped-def]
    """Open an AgentClient over a memory stream pair, hello answered by a ScriptedAgent."""

    @asynccontextmanager
    async def open_pair() -> AsyncIterator[tuple[AgentClient, ScriptedAgent]]:
        host_side, agent_side = trio.testing.memory_stream_pair()
        nursery.start_soon(answer_hello, agent_side)
        async with AgentClient.open(host_side) as client:
            yield client, ScriptedAgent(agent_side)

    return open_pair


@pytest.mark.trio
async def test_memory_answers_out_of_order_reach_their_callers(scripted) -> None:  # type: ignore[no-untyped-def]
    async with scripted() as (client, agent), trio.open_nursery() as nursery:
        results: dict[bytes, bytes] = {}

        async def ping(tag: bytes) -> None:
            results[tag] = (await client.ping(tag)).payload

        nursery.start_soon(ping, b"a")
        nursery.start_soon(ping, b"b")
        first, second = await agent.receive_request(), await agent.receive_request()
        for req in (second, first):  # answered in the reverse order
            await agent.send(new_message(req.message_id, pong=pb.PongResponse(payload=req.ping.payload)))
    assert results == {b"a": b"a", b"b": b"b"}
    assert client.late_replies == 0


@pytest.mark.trio
async def test_memory_an_answer_for_an_unknown_id_is_counted_and_harms_nothing(scripted) -> None:  # type: ignore[no-untyped-def]
    async with scripted() as (client, agent), trio.open_nursery() as nursery:
        got: list[pb.PongResponse] = []

        async def ping() -> None:
            got.append(await client.ping(b"mine"))

        nursery.start_soon(ping)
        req = await agent.receive_request()
        await agent.send(new_message("nobody-asked", pong=pb.PongResponse(payload=b"stray")))
        await agent.send(new_message(req.message_id, pong=pb.PongResponse(payload=b"mine")))
    assert [p.payload for p in got] == [b"mine"]
    assert client.late_replies == 1


@pytest.mark.trio
async def test_memory_garbage_and_an_undecodable_frame_are_skipped_and_counted(scripted) -> None:  # type: ignore[no-untyped-def]
    async with scripted() as (client, agent), trio.open_nursery() as nursery:
        got: list[pb.PongResponse] = []

        async def ping() -> None:
            got.append(await client.ping(b"after"))

        nursery.start_soon(ping)
        req = await agent.receive_request()
        garbage = b"\x00not a frame\xff" * 10 + MAGIC + b"\x01"  # a torn header, too
        undecodable = encode_frame(b"\xff\xff\xff\xff")  # a valid frame, not a protobuf
        answer = encode_message(new_message(req.message_id, pong=pb.PongResponse(payload=b"after")))
        await agent.stream.send_all(garbage + undecodable + answer)
    assert [p.payload for p in got] == [b"after"]
    assert client.bad_messages == 1
    assert client.decoder.stats.dropped_bytes >= len(garbage)


@pytest.mark.trio
async def test_memory_the_peer_closing_mid_frame_fails_pending_calls_at_once(scripted) -> None:  # type: ignore[no-untyped-def]
    async with scripted() as (client, agent):
        async with trio.open_nursery() as nursery:
            failures: list[errors.AgentError] = []

            async def ping() -> None:
                with pytest.raises(errors.Unavailable) as info:
                    await client.ping(b"x")
                failures.append(info.value)

            nursery.start_soon(ping)
            req = await agent.receive_request()
            whole = encode_message(new_message(req.message_id, pong=pb.PongResponse(payload=b"x")))
            await agent.stream.send_all(whole[: len(whole) // 2])
            await agent.stream.aclose()
        assert len(failures) == 1
        assert client.closed_reason is not None
        assert not client.connected
        # A call after the close fails at once, without waiting for anything.
        with pytest.raises(errors.Unavailable):
            await client.ping(b"y")


@pytest.mark.trio
async def test_memory_a_cancelled_call_tells_the_agent_and_leaves_nothing_pending(scripted) -> None:  # type: ignore[no-untyped-def]
    async with scripted() as (client, agent), trio.open_nursery() as nursery:
        cancel_scope = trio.CancelScope()

        async def run() -> None:
            with cancel_scope:
                await client.request(execute=pb.ExecuteRequest(argv=["sleep", "100"]))

        nursery.start_soon(run)
        req = await agent.receive_request()
        assert req.WhichOneof("payload") == "execute"
        cancel_scope.cancel()
        cancel = await agent.receive_request()
        assert cancel.cancel.target_message_id == req.message_id
        assert not client._pending
        # The agent's answer to the cancelled request arrives late: counted, not delivered.
        await agent.send(new_message(req.message_id, execute_response=pb.ExecuteResponse()))
        nursery.start_soon(client.ping, b"next")
        ping = await agent.receive_request()
        await agent.send(new_message(ping.message_id, pong=pb.PongResponse(payload=b"next")))
    assert client.late_replies == 1


@pytest.mark.trio
async def test_memory_a_stream_yields_partials_then_raises_the_error_answer(scripted) -> None:  # type: ignore[no-untyped-def]
    async with scripted() as (client, agent), trio.open_nursery() as nursery:
        seen: list[bytes] = []

        async def run() -> None:
            with pytest.raises(errors.NotFound, match="gone"):
                async for msg in client.stream(execute=pb.ExecuteRequest(argv=["x"])):
                    seen.append(msg.execute_output.data)

        nursery.start_soon(run)
        req = await agent.receive_request()
        for i in range(3):
            await agent.send(new_message(req.message_id, execute_output=pb.ExecuteOutput(seq=i, data=b"%d" % i)))
        error = pb.Error(code=pb.ERROR_CODE_NOT_FOUND, message="gone")
        await agent.send(new_message(req.message_id, error=error))
    assert seen == [b"0", b"1", b"2"]
    assert not client._pending


@pytest.mark.trio
async def test_memory_an_agent_restart_fails_what_is_in_flight(scripted) -> None:  # type: ignore[no-untyped-def]
    async with scripted() as (client, agent), trio.open_nursery() as nursery:

        async def ping() -> None:
            with pytest.raises(errors.Unavailable, match="restarted"):
                await client.ping(b"lost")

        nursery.start_soon(ping)
        await agent.receive_request()
        identity = pb.AgentIdentity(agent_version="2")
        await agent.send(new_message(agent_ready=pb.AgentReadyEvent(identity=identity)))
    assert client.identity is not None and client.identity.agent_version == "2"
    assert (await client.events.receive()).WhichOneof("payload") == "agent_ready"


@pytest.mark.trio
async def test_memory_hello_is_resent_and_stale_frames_before_its_echo_are_discarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host_side, agent_side = trio.testing.memory_stream_pair()
    agent = ScriptedAgent(agent_side)

    async def slow_agent() -> None:
        first = await agent.receive()
        # Stale answers from an earlier connection, and a hello answer with the wrong id.
        await agent.send(new_message("old", pong=pb.PongResponse()))
        await agent.send(new_message(hello_response=pb.HelloResponse(sync_id=first.hello.sync_id + 1)))
        before = trio.current_time()
        second = await agent.receive()  # not answered: the client resends
        assert trio.current_time() - before == pytest.approx(HELLO_RESEND_S)
        assert second.hello.sync_id == first.hello.sync_id
        answer = pb.HelloResponse(sync_id=second.hello.sync_id, identity=pb.AgentIdentity(agent_version="v"))
        await agent.send(new_message(second.message_id, hello_response=answer))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_agent)
        async with AgentClient.open(host_side) as client:
            assert client.identity is not None and client.identity.agent_version == "v"
            assert client.discarded_before_sync == 2


@pytest.mark.trio
async def test_memory_the_peer_closing_before_hello_is_unavailable() -> None:
    host_side, agent_side = trio.testing.memory_stream_pair()
    await agent_side.aclose()
    with pytest.raises(errors.Unavailable, match="before hello"):
        async with AgentClient.open(host_side):
            pytest.fail("opened without a hello answer")


@pytest.mark.trio
async def test_memory_an_answer_over_its_kinds_size_and_a_request_are_dropped_unparsed(  # type: ignore[no-untyped-def]
    scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a frame is parsed its top level says its id and kind: a pending ping answered by a
    pong larger than a pong may be (MAX_PAYLOAD_BYTES: the echoed payload's bound and a little)
    and a request (only hosts send them) are counted bad and never parsed (parse_frame's
    wrapper counts what is); the ping fails at once with resource_exhausted (not at its
    deadline), an answer to it after that is late, and the next ping goes through."""
    from limiquantix.protocol import MAX_PAYLOAD_BYTES
    from limiquantix.protocol import _agentclient as agentclient

    parsed: list[str | None] = []
    real_parse = agentclient.parse_frame

    def counting(frame: Frame) -> pb.AgentMessage:
        msg = real_parse(frame)
        parsed.append(msg.WhichOneof("payload"))
        return msg

    async with scripted() as (client, agent), trio.open_nursery() as nursery:
        monkeypatch.setattr(agentclient, "parse_frame", counting)
        refused = trio.Event()

        async def ping() -> None:
            with pytest.raises(errors.ResourceExhausted, match="answer was refused: a pong of") as caught:
                await client.ping(b"mine")
            assert caught.value.reason == "bad_answer"
            refused.set()

        nursery.start_soon(ping)
        req = await agent.receive_request()
        oversized = pb.PongResponse(payload=b"x" * MAX_PAYLOAD_BYTES["pong"])
        await agent.send(new_message(req.message_id, pong=oversized))
        await agent.send(new_message(execute=pb.ExecuteRequest(argv=["a"] * 100)))
        await agent.send(new_message(req.message_id, pong=pb.PongResponse(payload=b"mine")))
        await refused.wait()

        async def answer_next() -> None:
            nxt = await agent.receive_request()
            await agent.send(new_message(nxt.message_id, pong=pb.PongResponse(payload=b"next")))

        nursery.start_soon(answer_next)
        assert (await client.ping(b"next")).payload == b"next"
    assert client.bad_messages == 2 and client.late_replies == 1
    assert parsed == ["pong"]  # the next ping's answer only
