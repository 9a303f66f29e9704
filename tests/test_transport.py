"""The single-writer discipline: frames never interleave, a cancelled sender never leaves half a frame."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.client import AgentClient
from limiquantix.protocol.framing import CANDIDATE_WORK, HEADER_SIZE, MAGIC, FrameDecoder
from limiquantix.protocol.transport import DECODE_SLICE_WORK, MessageWriter, direct_reader, direct_writer
from limiquantix.protocol.wire import encode_message, new_message, parse_frame


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
async def test_the_reader_yields_between_slices_of_a_dense_stream() -> None:
    """1 MiB of magic spam arrives at once: the reader decodes them in slices and
    lets another task run between them (counted: no wall time)."""
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
            spam = MAGIC * (256 * 1024)
            await agent_side.send_all(spam)
            while client.decoder.stats.dropped_bytes < len(spam) - HEADER_SIZE:
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    slices = len(spam) // len(MAGIC) * CANDIDATE_WORK // DECODE_SLICE_WORK
    assert ticks >= slices // 2, (ticks, slices)
