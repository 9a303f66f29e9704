"""Bad input at the wire, concurrency and lifecycle of one agent connection.

A raw peer speaks bytes to a real agent over a real Unix socket, so the tests
can send what no well-behaved client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import zlib
from functools import partial

import pytest
import trio
from inprocess import run_main

from limiquantix.agent.handlers._execute import running_commands
from limiquantix.protocol import (
    MAGIC,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
    encode_message,
    errors,
    new_message,
    parse_frame,
)
from limiquantix.protocol._gen import agent_pb2 as pb


class RawPeer:
    """A host that writes whatever bytes it likes and reads answers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self._queue: list[pb.AgentMessage] = []

    @classmethod
    async def connect(cls, path: str) -> RawPeer:
        return cls(await trio.open_unix_socket(path))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, msg: pb.AgentMessage) -> None:
        await self.stream.send_all(encode_message(msg))

    async def recv(self, *, skip_events: bool = True) -> pb.AgentMessage:
        while True:
            while self._queue:
                msg = self._queue.pop(0)
                if skip_events and msg.WhichOneof("payload") in ("agent_ready", "telemetry", "ip_changed"):
                    continue
                return msg
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self._queue.extend(parse_frame(f) for f in self.decoder.feed(data))

    async def hello(self, sync_id: int = 42) -> pb.AgentMessage:
        await self.send(new_message(hello=pb.HelloRequest(sync_id=sync_id)))
        msg = await self.recv()
        assert msg.WhichOneof("payload") == "hello_response"
        assert msg.hello_response.sync_id == sync_id
        return msg


def bad_header(length: int) -> bytes:
    head = struct.pack(">4sBBII", MAGIC, PROTOCOL_VERSION, 0, length, 0)
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.trio
async def test_agent_announces_itself_on_connect(start_agent) -> None:
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    with trio.fail_after(5):
        msg = await peer.recv(skip_events=False)
    assert msg.WhichOneof("payload") == "agent_ready"
    assert msg.agent_ready.identity.pid > 0


@pytest.mark.trio
async def test_garbage_and_huge_length_then_hello(start_agent) -> None:
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    with trio.fail_after(5):
        await peer.send_bytes(b"\x00garbage\xff" * 100)
        await peer.send_bytes(bad_header(0xFFFFFFFF))
        await peer.send_bytes(bytes(range(256)))
        await peer.hello()
        pong = await peer_call(peer, ping=pb.PingRequest(payload=b"x"))
        assert pong.pong.payload == b"x"
    [session] = agent.sessions
    assert session.decoder.stats.dropped_bytes > 1000
    assert session.decoder.stats.resyncs >= 1


async def peer_call(peer: RawPeer, **payload: object) -> pb.AgentMessage:
    msg = new_message(**payload)  # type: ignore[arg-type]
    await peer.send(msg)
    answer = await peer.recv()
    assert answer.message_id == msg.message_id
    return answer


@pytest.mark.trio
async def test_undecodable_payload_is_dropped_and_counted(start_agent) -> None:
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    with trio.fail_after(5):
        await peer.send_bytes(encode_frame(b"\xff\xff\xff\xff not protobuf"))
        await peer.hello()
    [session] = agent.sessions
    assert session.bad_messages == 1


@pytest.mark.trio
async def test_unknown_payload_gets_unimplemented(start_agent) -> None:
    """A request type from a newer host: an unknown oneof field number."""
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    # field 1 (message_id) = "mid-1"; field 999, wire type 2, 3 bytes.
    raw = b"\x0a\x05mid-1" + b"\xba\x3e\x03abc"
    with trio.fail_after(5):
        await peer.send_bytes(encode_frame(raw))
        answer = await peer.recv()
    assert answer.message_id == "mid-1"
    assert answer.WhichOneof("payload") == "error"
    assert answer.error.code == pb.ERROR_CODE_UNIMPLEMENTED


@pytest.mark.trio
async def test_response_sent_as_request_is_invalid(start_agent) -> None:
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    with trio.fail_after(5):
        answer = await peer_call(peer, pong=pb.PongResponse())
    assert answer.error.code == pb.ERROR_CODE_INVALID_ARGUMENT


@pytest.mark.trio
async def test_disabled_request_type(start_agent, connect) -> None:
    agent = await start_agent(disable=("ping",))
    async with connect(agent) as client:
        assert "ping" in client.identity.disabled_capabilities
        with pytest.raises(errors.Unimplemented) as info:
            await client.ping()
        assert info.value.reason == "disabled"
        # Other requests still work.
        await client.request(info=pb.InfoRequest())


@pytest.mark.trio
async def test_thousand_pipelined_requests_in_one_write(start_agent) -> None:
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    msgs = [new_message(ping=pb.PingRequest(payload=str(i).encode())) for i in range(1000)]
    with trio.fail_after(20):
        await peer.hello()
        await peer.send_bytes(b"".join(encode_message(m) for m in msgs))
        answers = {}
        while len(answers) < 1000:
            a = await peer.recv()
            answers[a.message_id] = a
    assert all(answers[m.message_id].pong.payload == m.ping.payload for m in msgs)


@pytest.mark.trio
async def test_inflight_cap(start_agent) -> None:
    """Beyond max_inflight_requests: resource_exhausted, and nothing is lost."""
    agent = await start_agent(max_inflight_requests=1)
    peer = await RawPeer.connect(agent.config.socket)
    msgs = [new_message(get_telemetry=pb.TelemetryRequest()) for _ in range(3)]
    with trio.fail_after(20):
        await peer.send_bytes(b"".join(encode_message(m) for m in msgs))
        answers = [await peer.recv() for _ in range(3)]
    kinds = sorted(a.WhichOneof("payload") for a in answers)
    assert kinds == ["error", "error", "telemetry_response"]
    assert all(a.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED for a in answers if a.HasField("error"))


@pytest.mark.trio
async def test_truncated_frame_then_disconnect_leaves_agent_healthy(start_agent, connect) -> None:
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    whole = encode_message(new_message(ping=pb.PingRequest(payload=b"p" * 10000)))
    await peer.send_bytes(whole[: len(whole) // 2])
    await peer.stream.aclose()
    with trio.fail_after(5):
        async with connect(agent) as client:
            assert (await client.ping(b"after")).payload == b"after"


@pytest.mark.trio
async def test_cancel_unknown_id_is_not_found_false(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        answer = await client.request(cancel=pb.CancelRequest(target_message_id="nope"))
    assert answer.cancel_response.found is False


@pytest.mark.trio
async def test_stale_half_frame_before_hello_is_discarded(start_agent) -> None:
    """Bytes a previous host left mid-frame must not swallow the new hello."""
    agent = await start_agent()
    peer = await RawPeer.connect(agent.config.socket)
    stale = encode_message(new_message(ping=pb.PingRequest(payload=b"s" * 50_000)))[:1000]
    with trio.fail_after(5):
        await peer.send_bytes(stale)
        await peer.hello(sync_id=7)


@pytest.mark.trio
async def test_sigterm_stops_cleanly_and_tells_the_host(spawn_agent, connect) -> None:
    """The real process: SIGTERM → agent_stopping as the last frame, then exit 0, socket removed."""
    proc = spawn_agent()
    async with connect(proc.socket) as client:
        await client.ping()
        proc.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            events = [msg async for msg in client.events]  # until the agent closes the link
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds and kinds[-1] == "agent_stopping", kinds
    assert events[-1].agent_stopping.reason == "SIGTERM"
    with trio.fail_after(10):
        rc = await trio.to_thread.run_sync(proc.proc.wait)
    assert rc == 0, proc.output()
    assert "received SIGTERM" in proc.output()


def test_version_flag() -> None:
    """main() in this process (tests/inprocess.py): the process itself is
    test_sigterm_stops_cleanly_and_tells_the_host's."""
    from limiquantix.agent.__main__ import main
    from limiquantix.protocol import __version__

    out = run_main(main, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"limiquantix-agent {__version__}"


def test_bad_config_exits_2(tmp_path) -> None:
    from limiquantix.agent.__main__ import main

    cfg = tmp_path / "agent.toml"
    cfg.write_text("no_such_key = 1\n")
    out = run_main(main, "--config", str(cfg))
    assert out.returncode == 2
    assert "unknown configuration keys: no_such_key" in out.stderr


# -- bounds: what a host sends never costs more than its own connection ---------


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    """Until ``predicate()`` holds: the agent's state changes in its own tasks."""
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.005)


async def assert_serving(agent) -> None:  # type: ignore[no-untyped-def]
    """A fresh client is answered: the agent (and its listener) lives."""
    peer = await RawPeer.connect(agent.config.socket)
    with trio.fail_after(10):
        await peer.hello()
        assert (await peer_call(peer, ping=pb.PingRequest(payload=b"alive"))).pong.payload == b"alive"
    await peer.stream.aclose()


@pytest.mark.trio
async def test_16_mib_message_id_is_refused_and_the_agent_keeps_serving(start_agent) -> None:
    """An id whose echo cannot fit in an answer frame (it crashed the agent)."""
    agent = await start_agent()
    other = await RawPeer.connect(agent.config.socket)
    peer = await RawPeer.connect(agent.config.socket)
    huge_id = "x" * (16 * 1024 * 1024 - 100)
    with trio.fail_after(20):
        await other.hello()
        await peer.send(new_message(huge_id, execute=pb.ExecuteRequest(argv=["true"])))
        answer = await peer.recv()
        assert answer.error.code == pb.ERROR_CODE_INVALID_ARGUMENT
        assert answer.error.message == f"message_id is {len(huge_id)} bytes; the limit is 128"
        assert answer.message_id == huge_id[:128]  # what fits of it
        # The same connection and the other one are still served.
        assert (await peer_call(peer, ping=pb.PingRequest(payload=b"a"))).pong.payload == b"a"
        assert (await peer_call(other, ping=pb.PingRequest(payload=b"b"))).pong.payload == b"b"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"ping": pb.PingRequest(payload=b"p" * (1024 * 1024))}, "ping.payload"),
        ({"execute": pb.ExecuteRequest(argv=["a"] * 5000)}, "execute.argv"),
        ({"execute": pb.ExecuteRequest(argv=["true", "a" * 200_000])}, "execute.argv[1]"),
        ({"execute": pb.ExecuteRequest(command="x" * 200_000)}, "execute.command"),
        ({"execute": pb.ExecuteRequest(argv=["true"], env={"K": "v" * 200_000})}, "execute.env['K']"),
        ({"execute": pb.ExecuteRequest(argv=["true"], run_as=pb.RunAs(user="u" * 1000))}, "execute.run_as.user"),
        ({"execute": pb.ExecuteRequest(argv=["a" * 100_000] * 30)}, "execute.argv, env and command"),
        ({"file_stat": pb.FileStatRequest(path="/" + "d" * 5000)}, "file_stat.path"),
        ({"file_write": pb.FileWriteRequest(path="/tmp/x", write_id="w" * 1000)}, "file_write.write_id"),
        ({"reset_password": pb.ResetPasswordRequest(username="u" * 300, password="p")}, "reset_password.username"),
        ({"cancel": pb.CancelRequest(target_message_id="c" * 10_000)}, "cancel.target_message_id"),
        ({"shutdown": pb.ShutdownRequest(message="m" * 10_000)}, "shutdown.message"),
    ],
)
@pytest.mark.trio
async def test_oversized_request_fields_are_invalid_argument(start_agent, payload, field) -> None:
    """Checked before any handler runs: nothing is executed, written or shut down."""
    agent = await start_agent(
        poweroff_command=("/bin/false",), password_command=("/bin/false",), password_expire_command=("/bin/false",)
    )
    peer = await RawPeer.connect(agent.config.socket)
    with trio.fail_after(20):
        await peer.hello()
        answer = await peer_call(peer, **payload)
        assert answer.error.code == pb.ERROR_CODE_INVALID_ARGUMENT, answer
        assert answer.error.reason == "too_large"
        assert answer.error.message.startswith(field + " ")
        assert "the limit is" in answer.error.message
        assert (await peer_call(peer, ping=pb.PingRequest(payload=b"ok"))).pong.payload == b"ok"
    assert running_commands(agent) == 0


@pytest.mark.trio
async def test_an_answer_larger_than_a_frame_is_an_error_with_the_same_id(start_agent, monkeypatch) -> None:
    """By construction no answer exceeds the frame limit: too large becomes resource_exhausted."""
    agent = await start_agent(max_frame_bytes=8192, max_buffered_bytes=64 * 1024, file_chunk_bytes=1024)
    # A guest with a thousand interfaces (a test cannot create them): its
    # identity does not fit in one 8 KiB frame.
    many = [pb.NetworkInterface(name=f"dummy{i}", mac="02:00:00:00:00:00") for i in range(1000)]
    monkeypatch.setattr(agent, "identity", lambda: pb.AgentIdentity(hostname="guest", interfaces=many))
    peer = await RawPeer.connect(agent.config.socket)
    peer.decoder = FrameDecoder(max_frame_bytes=8192)
    with trio.fail_after(20):
        # An inline answer: the pong echoes a payload that fits in the request's frame, not in the answer's.
        ping = new_message(ping=pb.PingRequest(payload=b"p" * 8150))
        await peer.send(ping)
        answer = await peer.recv()
        assert answer.message_id == ping.message_id
        assert answer.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
        assert answer.error.reason == "frame_too_large"
        # A handler's answer, and the hello's.
        for payload in ({"info": pb.InfoRequest()}, {"hello": pb.HelloRequest(sync_id=1)}):
            too_big = await peer_call(peer, **payload)
            assert too_big.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
        assert (await peer_call(peer, ping=pb.PingRequest(payload=b"small"))).pong.payload == b"small"
    # The announce to a new connection does not fit either: it is not sent, and the agent serves on.
    late = await RawPeer.connect(agent.config.socket)
    late.decoder = FrameDecoder(max_frame_bytes=8192)
    with trio.fail_after(10):
        assert (await peer_call(late, ping=pb.PingRequest(payload=b"late"))).pong.payload == b"late"


async def write_until_stalled(peer: RawPeer, data: bytes) -> int:
    """Write ``data`` until all is sent or the agent stops taking it (or closes); return what was sent.

    A client that does not read cannot expect to write forever: once the agent
    stops reading it (its answers have nowhere to go), a blocking send would
    wait for good, so this one gives up when a round makes no progress.
    """
    fd = peer.stream.socket.fileno()
    view = memoryview(data)
    sent = 0
    while sent < len(data):
        before = sent
        try:
            while sent < len(data):
                sent += os.write(fd, view[sent:])
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            break  # the agent already closed this connection
        if sent == before:
            break
        await trio.sleep(0.02)  # let the agent read (and stall) before the next round
    return sent


@pytest.mark.trio
async def test_10000_pings_then_close_without_reading_costs_only_that_connection(start_agent) -> None:
    """It made the agent exit (BrokenResourceError from an answer's task)."""
    agent = await start_agent()
    other = await RawPeer.connect(agent.config.socket)
    pings = b"".join(encode_message(new_message(ping=pb.PingRequest(payload=b"x"))) for _ in range(10_000))
    with trio.fail_after(30):
        await other.hello()
        for _ in range(3):
            rude = await RawPeer.connect(agent.config.socket)
            await write_until_stalled(rude, pings)
            await rude.stream.aclose()
        await wait_for(lambda: len(agent.sessions) == 1)
        assert (await peer_call(other, ping=pb.PingRequest(payload=b"still"))).pong.payload == b"still"
    await assert_serving(agent)


@pytest.mark.trio
async def test_a_client_that_never_reads_is_not_read_either(start_agent) -> None:
    """The reader waits for room in the writer's queue: no answer (or task) per request piles up."""
    agent = await start_agent()
    rude = await RawPeer.connect(agent.config.socket)
    pings = b"".join(encode_message(new_message(ping=pb.PingRequest(payload=b"y" * 1000))) for _ in range(20_000))
    with trio.fail_after(30):
        sent = await write_until_stalled(rude, pings)
    assert sent < len(pings)  # the agent stopped reading long before the end
    [session] = agent.sessions
    assert session.writer.dropped <= 1  # at most the one that found the queue full: the reader then waited
    await assert_serving(agent)
    await rude.stream.aclose()
    await wait_for(lambda: len(agent.sessions) == 0)


@pytest.mark.trio
async def test_a_client_that_does_not_take_its_answers_in_time_loses_its_connection(start_agent) -> None:
    agent = await start_agent(write_stall_timeout_s=0.3)
    rude = await RawPeer.connect(agent.config.socket)
    pings = b"".join(encode_message(new_message(ping=pb.PingRequest(payload=b"w" * 1000))) for _ in range(20_000))
    with trio.fail_after(30):
        await write_until_stalled(rude, pings)
        await wait_for(lambda: not agent.sessions)  # while the client still holds its end open
        assert agent.buffered_bytes == 0
    await assert_serving(agent)
    await rude.stream.aclose()


@pytest.mark.trio
async def test_requests_held_by_running_handlers_are_bounded_in_bytes(start_agent, connect) -> None:
    """A running execute keeps its stdin: beyond max_request_bytes, resource_exhausted (not memory)."""
    mib = 1024 * 1024
    agent = await start_agent(max_frame_bytes=mib, max_request_bytes=mib, file_chunk_bytes=mib // 2)
    stdin = b"s" * 700_000
    async with connect(agent) as client, trio.open_nursery() as nursery:
        with trio.fail_after(20):
            nursery.start_soon(
                partial(
                    client.request, message_id="first", execute=pb.ExecuteRequest(argv=["sleep", "30"], stdin=stdin)
                )
            )
            await wait_for(lambda: agent.request_bytes > len(stdin))
            with pytest.raises(errors.ResourceExhausted) as info:
                await client.request(execute=pb.ExecuteRequest(argv=["true"], stdin=stdin))
            assert info.value.reason == "too_many_bytes"
            assert (await client.ping(b"small")).payload == b"small"
            await client.request(cancel=pb.CancelRequest(target_message_id="first"))
            await wait_for(lambda: agent.request_bytes == 0)
            done = await client.request(execute=pb.ExecuteRequest(argv=["true"], stdin=stdin))
            assert done.execute_response.exit_reason == pb.EXIT_REASON_EXITED


@pytest.mark.trio
async def test_20_connections_holding_partial_frames_stay_within_the_budget(start_agent) -> None:
    """They took the agent to 358 MiB; now all together may buffer max_buffered_bytes."""
    frame_max = 1024 * 1024
    budget = 4 * frame_max
    agent = await start_agent(
        max_frame_bytes=frame_max, max_buffered_bytes=budget, max_connections=32, file_chunk_bytes=frame_max // 2
    )
    whole = encode_message(new_message(ping=pb.PingRequest(payload=b"z" * 60_000)))
    big = encode_frame(b"\x0a\x01z" + b"\xff" * (frame_max - 100), max_frame_bytes=frame_max)
    partial = big[: 900 * 1024]
    peers = []
    with trio.fail_after(30):
        for _ in range(20):
            peer = await RawPeer.connect(agent.config.socket)
            await peer.recv(skip_events=False)  # agent_ready: its session exists
            peers.append(peer)
        kept = 0
        for peer in peers:
            alive = len(agent.sessions)
            with contextlib.suppress(trio.BrokenResourceError):  # closed by the agent mid-send
                await peer.send_bytes(partial)
            await wait_for(
                lambda: agent.buffered_bytes == (kept + 1) * len(partial) or len(agent.sessions) == alive - 1  # noqa: B023
            )
            if len(agent.sessions) == alive:
                kept += 1
            assert agent.buffered_bytes <= budget
        assert kept == budget // len(partial)
        assert agent.buffered_bytes == kept * len(partial)
        assert sum(s.accounted_bytes for s in agent.sessions) == agent.buffered_bytes
        # The connections over the budget were closed; the others still hold theirs.
        for peer in peers[kept:]:
            with pytest.raises((EOFError, trio.BrokenResourceError)):
                await peer.recv()
        # Small frames complete within one read and buffer nothing: still served.
        await assert_serving(agent)
        fresh = await RawPeer.connect(agent.config.socket)
        await fresh.send_bytes(whole)
        assert (await fresh.recv()).pong.payload == b"z" * 60_000
        for peer in peers[:kept]:
            await peer.stream.aclose()
        await wait_for(lambda: agent.buffered_bytes == 0)


@pytest.mark.trio
async def test_a_partial_frame_that_stalls_loses_its_connection(start_agent) -> None:
    agent = await start_agent(partial_frame_timeout_s=0.2)
    peer = await RawPeer.connect(agent.config.socket)
    other = await RawPeer.connect(agent.config.socket)
    whole = encode_message(new_message(ping=pb.PingRequest(payload=b"s" * 50_000)))
    with trio.fail_after(10):
        await peer.hello()
        await other.hello()
        await peer.send_bytes(whole[:-1])
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            await peer.recv()
        await wait_for(lambda: agent.buffered_bytes == 0)
        assert (await peer_call(other, ping=pb.PingRequest(payload=b"o"))).pong.payload == b"o"


@pytest.mark.trio
async def test_frames_that_keep_completing_are_not_a_stall(start_agent) -> None:
    """The deadline restarts with every completed frame, even if bytes stay buffered between reads."""
    agent = await start_agent(partial_frame_timeout_s=0.3)
    peer = await RawPeer.connect(agent.config.socket)
    frame = encode_message(new_message(ping=pb.PingRequest(payload=b"q" * 1000)))
    stream = frame * 8
    with trio.fail_after(10):
        await peer.hello()
        # Each write completes a frame and leaves part of the next one buffered,
        # for longer in total than the timeout.
        step = len(frame) + 100
        for start in range(0, len(stream), step):
            await peer.send_bytes(stream[start : start + step])
            await trio.sleep(0.1)
        answers = [await peer.recv() for _ in range(8)]
    assert all(a.pong.payload == b"q" * 1000 for a in answers)


@pytest.mark.trio
async def test_connections_over_max_connections_are_closed(start_agent, caplog) -> None:
    agent = await start_agent(max_connections=2)
    first = await RawPeer.connect(agent.config.socket)
    second = await RawPeer.connect(agent.config.socket)
    with trio.fail_after(10):
        await first.hello()
        await second.hello()
        third = await RawPeer.connect(agent.config.socket)
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            await third.recv(skip_events=False)  # closed without even an announce
        assert agent.channel.refused == 1
        assert "max_connections" in caplog.text
        await first.stream.aclose()
        await wait_for(lambda: agent.channel.active == 1)
        await assert_serving(agent)
