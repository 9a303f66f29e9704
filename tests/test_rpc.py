"""protocol.rpc: the codec, the one error table, deadlines, and the one client under trio and asyncio.

The client talks to a real Router on real hypercorn over loopback: in the test's own trio
loop for the trio tests, in a thread running its own trio loop for the asyncio tests (the
TUI's world). httpx.MockTransport stands in only where a network failure has to happen
at an exact moment (a read that times out after the request went out).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import logging
import math
import random
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypercorn.trio
import pytest
import trio
from conftest import loopback_client
from hypercorn.config import Config
from quart_trio import QuartTrio

from limiquantix import protocol
from limiquantix.agent._config import AgentConfig
from limiquantix.controller._forward import NodeClient
from limiquantix.controller._models import NodeInfo
from limiquantix.hostd._api import NodeAPI
from limiquantix.protocol import TLSFiles, client_ssl_context, errors, rpc, setup_logging
from limiquantix.protocol._gen import agent_pb2 as apb
from limiquantix.protocol._gen import node_daemon_pb2 as npb
from limiquantix.protocol.rpc import _client as rpc_client
from limiquantix.protocol.rpc import server as rpc_server
from limiquantix.tui import ControllerClient

SERVICE = npb.DESCRIPTOR.services_by_name["NodeDaemonService"]
PING = "limiquantix.node.v1.NodeDaemonService/PingAgent"
STREAM = "limiquantix.node.v1.NodeDaemonService/ExecuteInGuestStream"
READ = "limiquantix.node.v1.NodeDaemonService/ReadGuestFile"
TOKEN = "rpc-test-token"
FOREVER_S = 3600.0


# ---------------------------------------------------------------- sans-IO


def test_one_error_table_drives_every_class() -> None:
    classes = [
        errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.PermissionDenied,
        errors.Unauthenticated, errors.ResourceExhausted, errors.FailedPrecondition, errors.DeadlineExceeded,
        errors.Unavailable, errors.Unimplemented, errors.Cancelled, errors.Internal,
    ]  # fmt: skip
    for cls in classes:
        row = errors.code_by_name(cls.connect_code)
        assert row is not None and (cls.http_status, cls.grpc_status) == (row.http_status, row.grpc_status)
        assert errors.code_by_grpc_status(row.grpc_status) is row
    assert (errors.Unavailable.http_status, errors.Unavailable.grpc_status) == (503, 14)
    assert (errors.Cancelled.connect_code, errors.Cancelled.grpc_status) == ("canceled", 1)
    assert len({c.grpc_status for c in errors.CODES}) == len(errors.CODES) == 16
    # Subclasses (the client's outcome-unknown errors) keep their parent's row.
    assert rpc.OutcomeUnknown.grpc_status == 14 and rpc.OutcomeUnknownDeadline.http_status == 504


def test_error_body_round_trip_keeps_code_and_reason_in_the_detail() -> None:
    body = rpc.error_json(errors.Unavailable("no agent", reason="no_socket"))
    assert "reason" not in body  # Connect's place: a typed detail, not a key of our own
    [detail] = body["details"]
    assert detail["type"] == "limiquantix.agent.v1.Error" and detail["debug"]["reason"] == "no_socket"
    back = rpc.error_from_json(json.loads(json.dumps(body)))
    assert isinstance(back, errors.Unavailable) and (back.message, back.reason) == ("no agent", "no_socket")
    assert rpc.error_from_json({"message": "no code"}) is None
    assert rpc.error_from_json({"code": "aborted", "message": "m"}).connect_code == "internal"  # no class: Internal


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (502, b"<html>bad gateway</html>", "unavailable"),
        (401, b"", "unauthenticated"),
        (500, b'{"code": 7}', "internal"),
        (404, b'{"code": "not_found", "message": "x", "details": [{"type": "limiquantix.agent.v1.Error", "value": "!!"}]}', "not_found"),
    ],
    ids=["proxy-html", "empty", "code-not-a-string", "bad-detail-value"],
)  # fmt: skip
def test_error_from_body_for_bodies_that_are_not_connect_errors(status: int, body: bytes, code: str) -> None:
    error = rpc.error_from_body(status, body, what="node n1")
    assert error.connect_code == code
    assert error.reason == ""


def test_envelope_reader_is_incremental_and_bounded() -> None:
    wire = rpc.encode_envelope(0, b"one") + rpc.encode_envelope(rpc.FLAG_END_STREAM, b"{}")
    reader = rpc.EnvelopeReader(limit=16, allowed_flags=rpc.FLAG_COMPRESSED | rpc.FLAG_END_STREAM)
    got = [envelope for byte in wire for envelope in reader.feed(bytes([byte]))]
    assert got == [(0, b"one"), (rpc.FLAG_END_STREAM, b"{}")] and reader.pending == 0
    # A header claiming more than the limit is refused from the header alone.
    with pytest.raises(errors.ResourceExhausted):
        rpc.EnvelopeReader(limit=16, allowed_flags=0).feed(rpc.ENVELOPE_HEADER.pack(0, 2**32 - 1))


@pytest.mark.parametrize("body", [b"{", b'{"vmId": "x"}', b"\xff\x00\x00\x00\x01x"])
def test_envelope_reader_names_a_missing_envelope(body: bytes) -> None:
    with pytest.raises(errors.InvalidArgument, match="envelope is missing") as info:
        rpc.EnvelopeReader(limit=2**26, allowed_flags=rpc.FLAG_COMPRESSED).feed(body)
    assert info.value.reason == "missing_envelope"


def test_gunzip_never_inflates_beyond_its_limit() -> None:
    bomb = gzip.compress(b"\0" * (1 << 20))
    with pytest.raises(errors.ResourceExhausted):
        rpc.gunzip(bomb, 1000)
    assert rpc.gunzip(bomb, 1 << 20) == b"\0" * (1 << 20)
    with pytest.raises(errors.InvalidArgument):
        rpc.gunzip(bomb[:-4], 1 << 20)


def test_only_payloads_that_shrink_are_worth_gzipping() -> None:
    noise = random.Random(11).randbytes(1 << 20)  # a compressed or encrypted file's bytes
    assert not rpc.compressible(noise)
    assert rpc.compressible(b"a log line, as text files have them\n" * 30_000)
    assert rpc.compressible(noise[: rpc.SAMPLE_FROM_BYTES - 1])  # small: gzip is cheap, not sampled
    # Sampled at its start, middle and end: mostly text around some noise is still worth it.
    text = b"x" * rpc.SAMPLE_BYTES
    assert rpc.compressible(text * 40 + noise[: 1 << 19] + text * 40)


def test_daemons_log_no_line_per_request_from_httpx() -> None:
    """httpx's INFO line per request (every forwarded call, every heartbeat) is off unless debugging."""
    root, client_log = logging.getLogger(), logging.getLogger("httpx")
    handlers, level, client_level = root.handlers[:], root.level, client_log.level
    try:
        setup_logging("text", "info")
        assert not client_log.isEnabledFor(logging.INFO) and client_log.isEnabledFor(logging.WARNING)
        assert logging.getLogger("limiquantix.hostd").isEnabledFor(logging.INFO)
        setup_logging("json", "debug")
        assert client_log.isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        client_log.setLevel(client_level)


def test_timeout_headers() -> None:
    assert rpc.timeout_headers(math.inf) == {}
    assert rpc.timeout_headers(100.0) == {"Connect-Timeout-Ms": "100000"}
    assert rpc.timeout_headers(-5.0) == {"Connect-Timeout-Ms": "1"}  # the server answers deadline_exceeded
    assert rpc.timeout_headers(2.5, grpc=True) == {"grpc-timeout": "2500m"}
    for seconds in (0.001, 1.0, 90.0, 10**6, 10**9):
        assert rpc.parse_grpc_timeout(rpc.encode_grpc_timeout(seconds)) <= seconds
    assert rpc.parse_grpc_timeout("3S") == 3.0
    for bad in ("", "10", "1s", "123456789S", "-1S"):
        with pytest.raises(errors.InvalidArgument):
            rpc.parse_grpc_timeout(bad)
    with pytest.raises(errors.InvalidArgument):
        rpc.parse_connect_timeout_ms("12345678901")


def test_remaining_outside_any_loop_is_the_explicit_deadline() -> None:
    assert rpc.remaining_s() == math.inf


# ---------------------------------------------------------------- a real server


class FakeNode:
    """Records what each call saw of its deadline."""

    def __init__(self) -> None:
        self.remaining: list[float] = []
        self.headers: list[dict[str, str]] = []

    async def PingAgent(self, request: npb.PingAgentRequest, ctx: rpc_server.CallContext) -> npb.AgentPingResponse:
        self.remaining.append(ctx.time_remaining())
        self.headers.append(dict(ctx.headers))
        if request.vm_id == "gone":
            raise errors.Unavailable("the agent of VM gone is not connected (no_socket)", reason="no_socket")
        return npb.AgentPingResponse(version="x" * (5000 if request.vm_id == "big" else 1))

    async def ReadGuestFile(
        self, request: npb.ReadGuestFileRequest, ctx: rpc_server.CallContext
    ) -> npb.ReadGuestFileResponse:
        content = b"text line\n" * 50_000 if request.path == "text" else random.Random(3).randbytes(1 << 19)
        return npb.ReadGuestFileResponse(content=content, file_size=len(content))

    async def ExecuteInGuestStream(
        self, request: npb.ExecuteInGuestRequest, ctx: rpc_server.CallContext
    ) -> AsyncIterator[npb.ExecuteInGuestEvent]:
        self.remaining.append(ctx.time_remaining())
        yield npb.ExecuteInGuestEvent(execution_id="e1")
        yield npb.ExecuteInGuestEvent(output=apb.ExecuteOutput(data=b"y" * 5000))
        if request.request.command == "fail":
            raise errors.NotFound("no such thing", reason="not_found_here")
        yield npb.ExecuteInGuestEvent(result=apb.ExecuteResponse(exit_code=0))


async def _authenticate(ctx: rpc_server.CallContext) -> None:
    if ctx.bearer_token != TOKEN:
        raise errors.Unauthenticated("bad token", reason="invalid_token")


async def _serve(
    node: FakeNode, *, pki: Path | None = None, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    app = QuartTrio(__name__)
    rpc_server.Router([rpc_server.Service(SERVICE, node)], authenticate=_authenticate).register(app)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    if pki is not None:
        config.certfile, config.keyfile = str(pki / "srv.pem"), str(pki / "srv.key")
    config.accesslog = None
    config.loglevel = "WARNING"
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn.trio.serve, app, config)
        task_status.started(binds[0])


@pytest.fixture(name="served")
async def _served(nursery: trio.Nursery) -> tuple[FakeNode, rpc.Target]:
    node = FakeNode()
    url = await nursery.start(_serve, node)
    return node, rpc.Target(url=url, token=TOKEN, name="node n1")


@pytest.mark.trio
async def test_trio_the_callers_effective_deadline_goes_out_as_connect_timeout(
    served: tuple[FakeNode, rpc.Target],
) -> None:
    node, target = served
    async with rpc.RpcClient() as client:
        with trio.fail_after(100):
            pong = await client.unary_message(target, PING, npb.PingAgentRequest(vm_id="v"), npb.AgentPingResponse)
        assert pong.version == "x"
        # No scope, an explicit deadline: that one.
        await client.unary_message(
            target, PING, npb.PingAgentRequest(vm_id="v"), npb.AgentPingResponse, deadline=trio.current_time() + 30
        )
        # Neither: no header, no deadline on the server.
        await client.unary_message(target, PING, npb.PingAgentRequest(vm_id="v"), npb.AgentPingResponse)
    assert 99 < node.remaining[0] <= 100
    assert 29 < node.remaining[1] <= 30
    assert node.remaining[2] == math.inf and "Connect-Timeout-Ms" not in node.headers[2]


@pytest.mark.trio
async def test_trio_errors_keep_code_and_reason_and_answers_are_bounded(served: tuple[FakeNode, rpc.Target]) -> None:
    _, target = served
    async with rpc.RpcClient() as client:
        with pytest.raises(errors.Unavailable) as info:
            await client.unary_message(target, PING, npb.PingAgentRequest(vm_id="gone"), npb.AgentPingResponse)
        assert info.value.reason == "no_socket" and "not connected" in info.value.message
        with pytest.raises(errors.Unauthenticated) as refused:
            await client.unary(rpc.Target(url=target.url, token="wrong"), PING, b"")
        assert refused.value.reason == "invalid_token"
        # A gzipped answer is inflated here, within the bound.
        pong = await client.unary_message(target, PING, npb.PingAgentRequest(vm_id="big"), npb.AgentPingResponse)
        assert len(pong.version) == 5000
    async with rpc.RpcClient(max_message_bytes=1000) as small:
        with pytest.raises(errors.ResourceExhausted):
            await small.unary_message(target, PING, npb.PingAgentRequest(vm_id="big"), npb.AgentPingResponse)


@pytest.mark.trio
async def test_incompressible_answers_go_uncompressed_to_clients_that_accept_gzip(
    served: tuple[FakeNode, rpc.Target],
) -> None:
    _, target = served
    async with loopback_client(base_url=target.url) as http:
        for path, encoding in (("text", "gzip"), ("noise", None)):
            body = npb.ReadGuestFileRequest(vm_id="v", path=path).SerializeToString()
            headers = {
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/proto",
                "Accept-Encoding": "gzip",
            }
            r = await http.post(f"/{READ}", content=body, headers=headers)
            assert r.status_code == 200 and r.headers.get("content-encoding") == encoding, path
            assert r.headers["vary"] == "Accept-Encoding"
            assert npb.ReadGuestFileResponse.FromString(r.content).file_size in (500_000, 1 << 19)


@pytest.mark.trio
async def test_tls_answers_are_read_several_records_at_a_time(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Over TLS the client's reads take every record already received (16 KiB each), not one:
    a 512 KiB answer arrives whole and in fewer, larger reads than records."""
    from limiquantix.controller import pki
    from limiquantix.protocol.rpc import _client

    pki.create_ca(tmp_path)
    pki.issue(tmp_path, "srv", pki.CertKind.SERVER, ip_addresses=["127.0.0.1"])
    url = await nursery.start(functools.partial(_serve, FakeNode(), pki=tmp_path))
    assert url.startswith("https://")
    target = rpc.Target(url=url, token=TOKEN, name="node n1")
    tls = rpc.ClientTLS(verify=client_ssl_context(TLSFiles(ca_file=str(tmp_path / "ca.pem"))))
    sizes: list[int] = []
    async with rpc.RpcClient(tls=tls) as client:
        backend = client._http._transport._pool._network_backend  # type: ignore[attr-defined]
        assert isinstance(backend, _client._RecordsTogetherBackend)
        read = _client._RecordsTogetherStream.read

        async def counted(self: Any, max_bytes: int, timeout: float | None = None) -> bytes:
            data = await read(self, max_bytes, timeout)
            sizes.append(len(data))
            return data

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_client._RecordsTogetherStream, "read", counted)
            with trio.fail_after(30):
                answer = await client.unary_message(
                    target, READ, npb.ReadGuestFileRequest(vm_id="v", path="noise"), npb.ReadGuestFileResponse
                )
    assert answer.content == random.Random(3).randbytes(1 << 19)
    assert max(sizes) > 16 * 1024  # more than one record in a read


@pytest.mark.trio
async def test_trio_stream_messages_then_the_end_error(served: tuple[FakeNode, rpc.Target]) -> None:
    node, target = served
    request = npb.ExecuteInGuestRequest(vm_id="v", request=apb.ExecuteRequest(command="ok"))
    async with rpc.RpcClient() as client:
        with trio.fail_after(50):
            got = [
                npb.ExecuteInGuestEvent.FromString(m)
                async for m in client.stream(target, STREAM, request.SerializeToString())
            ]
        assert [e.WhichOneof("event") for e in got] == ["execution_id", "output", "result"]
        assert len(got[1].output.data) == 5000  # a gzipped envelope, inflated
        assert 49 < node.remaining[0] <= 50
        request.request.command = "fail"
        with pytest.raises(errors.NotFound) as info:
            async for _ in client.stream(target, STREAM, request.SerializeToString()):
                pass
        assert info.value.reason == "not_found_here"


@pytest.mark.trio
async def test_trio_a_stream_read_to_its_end_leaves_its_connection_in_the_pool(
    served: tuple[FakeNode, rpc.Target],
) -> None:
    """A stream is read past its end message to the body's end: its connection goes back to the
    pool (closed before, it made every stream the controller relays open a new connection to
    hostd). Two streams (one ending in an error) and a unary call: one connection."""
    _, target = served
    transport = httpx.AsyncHTTPTransport()
    request = npb.ExecuteInGuestRequest(vm_id="v", request=apb.ExecuteRequest(command="ok"))
    async with rpc.RpcClient(transport=transport) as client:
        with trio.fail_after(50):
            assert len([m async for m in client.stream(target, STREAM, request.SerializeToString())]) == 3
            pool = transport._pool.connections  # noqa: SLF001 - httpcore's pool, what the test is about
            assert len(pool) == 1
            first = pool[0]
            request.request.command = "fail"
            with pytest.raises(errors.NotFound):
                async for _ in client.stream(target, STREAM, request.SerializeToString()):
                    pass
            await client.unary_message(target, PING, npb.PingAgentRequest(vm_id="v"), npb.AgentPingResponse)
        assert transport._pool.connections == [first] and first.is_idle()  # noqa: SLF001


async def _scripted_stream_server(
    after_end: bytes, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """One connection: reads a request, answers a Connect stream (one message, the end message)
    followed by ``after_end``, then holds the connection open without ending the body."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    conn = await listeners[0].accept()
    received = b""
    while b"\r\n\r\n" not in received:
        received += await conn.receive_some()
    envelopes = rpc.encode_envelope(0, b"one") + rpc.encode_envelope(rpc.FLAG_END_STREAM, b"{}")
    await conn.send_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/connect+proto\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(envelopes), envelopes)
        + after_end
    )
    await trio.sleep_forever()


@pytest.mark.trio
@pytest.mark.parametrize(
    ("after_end", "drain_s"),
    [
        (b"", 0.05),  # the body's end held back: not waited on beyond the bound
        (b"3\r\nabc\r\n", FOREVER_S),  # bytes after the end message: not waited on at all
    ],
)
async def test_trio_a_stream_whose_server_does_not_end_the_body_after_the_end_message(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, after_end: bytes, drain_s: float
) -> None:
    """The stream's outcome is in its end message: a server that does not end the HTTP body
    after it (a broken one) delays the call by STREAM_END_DRAIN_S at most, never to its deadline."""
    monkeypatch.setattr(rpc_client, "STREAM_END_DRAIN_S", drain_s)
    url = await nursery.start(_scripted_stream_server, after_end)
    async with rpc.RpcClient() as client:
        with trio.fail_after(30):
            got = [m async for m in client.stream(rpc.Target(url=url, name="node n1"), STREAM, b"")]
    assert got == [b"one"]


@pytest.mark.trio
async def test_trio_a_server_that_cannot_be_reached_is_unavailable_nothing_sent() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = rpc.Target(url=f"http://127.0.0.1:{port}", name="node n9", unreachable_reason="node_unreachable")
    async with rpc.RpcClient() as client:
        with pytest.raises(errors.Unavailable) as info:
            await client.unary(target, PING, b"")
    assert info.value.reason == "node_unreachable" and not rpc.outcome_unknown(info.value)
    assert "cannot reach node n9" in info.value.message and "unreachable" in info.value.message


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        (httpx.ConnectError("refused"), errors.Unavailable, "unreachable"),
        (httpx.ConnectTimeout("slow"), errors.Unavailable, "unreachable"),
        (httpx.PoolTimeout("busy"), errors.Unavailable, "unreachable"),
        (httpx.ReadTimeout("late"), rpc.OutcomeUnknownDeadline, "outcome_unknown"),
        (httpx.WriteTimeout("late"), rpc.OutcomeUnknownDeadline, "outcome_unknown"),
        (httpx.RemoteProtocolError("cut"), rpc.OutcomeUnknown, "outcome_unknown"),
        (httpx.ReadError("reset"), rpc.OutcomeUnknown, "outcome_unknown"),
    ],
)
def test_the_one_exception_mapping_under_asyncio(exc: httpx.HTTPError, cls: type[Exception], reason: str) -> None:
    """The table, exercised on asyncio: a mock transport raises exactly where the network would."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async def main() -> errors.AgentError:
        async with rpc.RpcClient(transport=httpx.MockTransport(handler)) as client:
            try:
                await client.unary(rpc.Target(url="http://10.0.0.1:1"), PING, b"")
            except errors.AgentError as error:
                return error
        raise AssertionError("no error")

    error = asyncio.run(main())
    assert type(error) is cls and error.reason == reason


@pytest.fixture(name="threaded")
def _threaded() -> Iterator[tuple[FakeNode, rpc.Target]]:
    """The same server in a thread of its own (its own trio loop), for asyncio clients."""
    node = FakeNode()
    ready: list[str] = []
    started = threading.Event()
    stop: list[trio.Event] = []
    token: list[Any] = []

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        stop.append(trio.Event())
        async with trio.open_nursery() as nursery:
            ready.append(await nursery.start(_serve, node))
            started.set()
            await stop[0].wait()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield node, rpc.Target(url=ready[0], token=TOKEN, name="node n1")
    finally:
        trio.from_thread.run_sync(stop[0].set, trio_token=token[0])
        thread.join(30)


def test_asyncio_the_same_client_with_an_explicit_deadline(threaded: tuple[FakeNode, rpc.Target]) -> None:
    node, target = threaded

    async def main() -> tuple[npb.AgentPingResponse, list[bytes], errors.AgentError]:
        async with rpc.RpcClient() as client:
            pong = await client.unary_message(
                target, PING, npb.PingAgentRequest(vm_id="big"), npb.AgentPingResponse, deadline=rpc.deadline_after(40)
            )
            request = npb.ExecuteInGuestRequest(vm_id="v", request=apb.ExecuteRequest(command="ok"))
            messages = [m async for m in client.stream(target, STREAM, request.SerializeToString())]
            try:
                await client.unary_message(target, PING, npb.PingAgentRequest(vm_id="gone"), npb.AgentPingResponse)
            except errors.AgentError as exc:
                return pong, messages, exc
        raise AssertionError("no error")

    pong, messages, error = asyncio.run(main())
    assert len(pong.version) == 5000 and len(messages) == 3
    assert 39 < node.remaining[0] <= 40 and node.remaining[1] == math.inf  # an asyncio caller's deadline is explicit
    assert isinstance(error, errors.Unavailable) and error.reason == "no_socket"


# ---------------------------------------------------------------- deadlines that flow


def test_a_90_s_command_is_not_cut_at_60_s_by_any_hop(threaded: tuple[FakeNode, rpc.Target]) -> None:
    """TUI → controller → hostd → agent, each hop's deadline read where it is set."""
    timeout = 90
    budget = protocol.command_budget_s(timeout)
    assert budget == timeout + protocol.COMMAND_MARGIN_S

    # TUI (asyncio): the Connect-Timeout-Ms the controller receives.
    seen: list[httpx.Request] = []

    def controller(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        end = rpc.encode_envelope(rpc.FLAG_END_STREAM, b"{}")
        return httpx.Response(200, headers={"Content-Type": "application/connect+json"}, content=end)

    async def tui() -> None:
        # insecure: "controller" is a MockTransport, the token never leaves the process.
        mock = httpx.MockTransport(controller)
        async with ControllerClient("http://controller", "t", transport=mock, insecure=True) as client:
            async for _ in client.execute_stream("vm1", "sleep 89", timeout_s=timeout):
                pass

    asyncio.run(tui())
    tui_ms = int(seen[0].headers["Connect-Timeout-Ms"])
    assert (budget - 1) * 1000 < tui_ms <= budget * 1000

    # Controller (trio): what it forwards to hostd under that deadline, read by a real server.
    node, target = threaded

    async def forward() -> None:
        with trio.fail_after(tui_ms / 1000):  # the router's scope for the TUI's call
            async with NodeClient() as nodes:
                info = NodeInfo(
                    node_id="n1",
                    url=target.url,
                    token=TOKEN,
                    registered_at=0.0,
                    last_heartbeat=None,
                    reachable=True,
                    vm_count=1,
                )
                request = npb.ExecuteInGuestRequest(vm_id="v", request=apb.ExecuteRequest(command="ok"))
                async for _ in nodes.stream(
                    info, "ExecuteInGuestStream", request, npb.ExecuteInGuestEvent, budget_s=budget
                ):
                    pass

    trio.run(forward)
    hostd_remaining = node.remaining[-1]
    assert budget - 2 < hostd_remaining <= budget

    # hostd: the budget it gives the agent connection for that command, within that deadline.
    hostd_budget = min(NodeAPI._command_budget(apb.ExecuteRequest(timeout_seconds=timeout)), hostd_remaining)
    assert hostd_budget > timeout

    # Agent: the command's own timeout, not the 60 s default.
    config = AgentConfig()
    assert min(float(timeout or config.exec_default_timeout_s), config.exec_max_timeout_s) == timeout
    # And the default is the one the hops budget for.
    assert protocol.command_budget_s(0) == config.exec_default_timeout_s + protocol.COMMAND_MARGIN_S


@pytest.mark.trio
async def test_a_hops_budget_is_its_own_bounded_by_the_callers_time() -> None:
    """CallContext.budget_s: the rule hostd and the controller both apply when they forward."""
    from werkzeug.datastructures import Headers

    ctx = rpc_server.CallContext(procedure="limiquantix.node.v1.NodeDaemonService/ExecuteInGuest", headers=Headers())
    assert ctx.budget_s(protocol.command_budget_s(90)) == 100  # no caller deadline: the command's own
    ctx.deadline = trio.current_time() + 30
    assert 29 < ctx.budget_s(protocol.command_budget_s(90)) <= 30  # the caller gave up earlier: that
    ctx.deadline = trio.current_time() - 1
    with pytest.raises(errors.DeadlineExceeded):
        ctx.budget_s(100)


def test_client_tls_is_one_value_for_httpx() -> None:
    """ClientTLS: where the TLS work plugs in (the CA file becomes a context: httpx takes no paths)."""
    import ssl

    import certifi

    assert rpc.ClientTLS().httpx_verify() is True
    assert rpc.ClientTLS(verify=False).httpx_verify() is False
    context = rpc.ClientTLS(verify=certifi.where()).httpx_verify()
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(OSError):
        rpc.ClientTLS(verify="/nonexistent/ca.pem").httpx_verify()
