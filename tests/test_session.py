"""Bad input at the wire, concurrency and lifecycle of one agent connection.

A raw peer speaks bytes to a real agent over a real Unix socket, so the tests
can send what no well-behaved client would.
"""

from __future__ import annotations

import signal
import struct
import zlib

import pytest
import trio

from limiquantix.protocol import PROTOCOL_VERSION, errors
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.framing import MAGIC, FrameDecoder, encode_frame
from limiquantix.protocol.wire import encode_message, new_message, parse_frame


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


def test_version_flag(spawn_agent) -> None:
    import subprocess
    import sys

    from limiquantix.protocol import __version__

    out = subprocess.run(
        [sys.executable, "-m", "limiquantix.agent", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"limiquantix-agent {__version__}"


def test_bad_config_exits_2(tmp_path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "agent.toml"
    cfg.write_text("no_such_key = 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "limiquantix.agent", "--config", str(cfg)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "unknown configuration keys: no_such_key" in out.stderr
