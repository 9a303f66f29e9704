"""protocol.rpc.server (Connect): a Connect server on real hypercorn, spoken to over real HTTP.

The server under test serves ``limiquantix.node.v1.NodeDaemonService`` backed by
:class:`FakeNode`, a small implementation whose behaviour each test picks
through the request (``vm_id`` for unary calls, ``request.command`` for the
stream). Two clients talk to it: httpx, to check bytes, headers and statuses
against the protocol text; and connect-python's sync client, a Connect
implementation nobody here wrote, run in a worker thread (its async client is
asyncio-only).
"""

from __future__ import annotations

import base64
import gc
import gzip
import json
import logging
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import hypercorn.trio
import pytest
import trio
from conftest import loopback_client
from connectrpc.client import ConnectClientSync
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from google.protobuf import message_factory
from hypercorn.config import Config
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from limiquantix.protocol import errors, limits, varint_bytes
from limiquantix.protocol._gen import agent_pb2 as apb
from limiquantix.protocol._gen import node_daemon_pb2 as npb
from limiquantix.protocol.rpc import server as connect
from limiquantix.protocol.rpc._codec import decode_json

SERVICE = npb.DESCRIPTOR.services_by_name["NodeDaemonService"]
PREFIX = "/limiquantix.node.v1.NodeDaemonService"
JSON = {"Content-Type": "application/json"}
PROTO = {"Content-Type": "application/proto"}
STREAM_JSON = {"Content-Type": "application/connect+json"}
STREAM_PROTO = {"Content-Type": "application/connect+proto"}
ENVELOPE = struct.Struct(">BI")
SECRET = "s3cr3t-in-the-traceback"


class FakeNode:
    """The collaborator: a NodeDaemonService that does what the request asks.

    CancelExecution and ResetGuestPassword are deliberately missing.
    """

    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.release = trio.Event()
        self.stream_closed = trio.Event()
        self.after_last = False
        self.vm_count = 3
        self.calls = 0

    async def PingAgent(self, request: npb.PingAgentRequest, ctx: connect.CallContext) -> Any:
        self.calls += 1
        vm = request.vm_id
        if vm.startswith("raise:"):
            name, _, reason = vm[len("raise:") :].partition(":")
            raise getattr(errors, name)(f"{name} from the handler", reason=reason)
        if vm == "boom":
            raise RuntimeError(SECRET)
        if vm == "group":
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._raise_not_found)
        if vm == "wrong-type":
            return npb.GetVMRequest(vm_id=vm)
        if vm == "slow":
            self.started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.cancelled.set()
                raise
        ctx.response_headers["X-Served-By"] = "fake"
        ctx.response_trailers["Acme-Cost"] = "7"
        return npb.AgentPingResponse(connected=vm == "vm-1", version="1.2.3", latency_ms=1.5)

    async def _raise_not_found(self) -> None:
        raise errors.NotFound("vm-x is gone")

    async def GetVM(self, request: npb.GetVMRequest, ctx: connect.CallContext) -> npb.VMStatus:
        return npb.VMStatus(vm_id=request.vm_id, name=f"auth={ctx.auth} peer={ctx.peer is not None}")

    async def ListVMs(self, request: npb.ListVMsRequest, ctx: connect.CallContext) -> npb.ListVMsResponse:
        return npb.ListVMsResponse(
            vms=[npb.VMStatus(vm_id=f"vm-{i}", name=f"virtual machine number {i}") for i in range(self.vm_count)]
        )

    async def WriteGuestFile(
        self, request: npb.WriteGuestFileRequest, ctx: connect.CallContext
    ) -> npb.WriteGuestFileResponse:
        if request.path == "hold":  # stays in progress until released
            await self.release.wait()
        return npb.WriteGuestFileResponse(bytes_written=len(request.content))

    async def ExecuteInGuestStream(
        self, request: npb.ExecuteInGuestRequest, ctx: connect.CallContext
    ) -> AsyncIterator[npb.ExecuteInGuestEvent]:
        command = request.request.command
        try:
            yield npb.ExecuteInGuestEvent(execution_id="exec-1")
            if command == "boom":
                raise RuntimeError(SECRET)
            yield npb.ExecuteInGuestEvent(output=apb.ExecuteOutput(seq=1, data=b"hello\n"))
            if command == "block":
                await self.release.wait()
            elif command == "forever":
                self.started.set()
                await trio.sleep_forever()
            elif command == "fail":
                raise errors.Unavailable("agent gone", reason="agent_disconnected")
            elif command == "flood":  # never awaits: parks at yield when TCP pushes back
                for seq in range(2, 10**6):
                    yield npb.ExecuteInGuestEvent(output=apb.ExecuteOutput(seq=seq, data=b"y" * 65536))
            elif command == "big":
                yield npb.ExecuteInGuestEvent(output=apb.ExecuteOutput(seq=2, data=b"x" * 5000))
            elif command == "last":
                ctx.response_trailers["Exit-Seen"] = "last"
                yield connect.Last(npb.ExecuteInGuestEvent(result=apb.ExecuteResponse(exit_code=7)))
                self.after_last = True  # never: the handler is closed at its Last
            ctx.response_trailers["Exit-Seen"] = "yes"
            yield npb.ExecuteInGuestEvent(result=apb.ExecuteResponse(exit_code=0))
        finally:
            self.stream_closed.set()


def method_info(name: str) -> MethodInfo[Any, Any]:
    """connect-python's method object, built by hand from our descriptor (no codegen)."""
    method = SERVICE.methods_by_name[name]
    return MethodInfo(
        name=name,
        service_name=SERVICE.full_name,
        input=message_factory.GetMessageClass(method.input_type),
        output=message_factory.GetMessageClass(method.output_type),
        idempotency_level=IdempotencyLevel.UNKNOWN,
    )


async def authenticate(ctx: connect.CallContext) -> None:
    """Test policy: no token is anonymous; "wrong" is refused; "viewer" may not write."""
    token = ctx.bearer_token
    if token == "wrong":
        raise errors.Unauthenticated("invalid token")
    if token == "viewer" and ctx.method.startswith("Write"):
        raise errors.PermissionDenied("viewer may not write")
    ctx.auth = token or "anonymous"


class Server:
    def __init__(self, url: str, node: FakeNode, observed: list[tuple[str, str, float]]) -> None:
        self.url = url
        self.node = node
        self.observed = observed
        # Whether the stream handler had finished when each call was observed.
        self.closed_when_observed: list[bool] = []
        self.http = loopback_client(base_url=url)

    async def post(self, method: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        with trio.fail_after(10):
            return await self.http.post(f"{PREFIX}/{method}", content=content, headers=headers)

    def codes(self, method: str) -> list[str]:
        return [code for procedure, code, _ in self.observed if procedure.endswith(f"/{method}")]


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture(name="start_server")
def _start_server(nursery: trio.Nursery) -> StartServer:
    """``await start_server(**router_options)``: hypercorn on 127.0.0.1:<OS-chosen port>."""

    async def start(*, quart_config: dict[str, Any] | None = None, **options: Any) -> Server:
        node = FakeNode()
        observed: list[tuple[str, str, float]] = []
        app = QuartTrio(__name__)
        app.config.update(quart_config or {})

        @app.route("/healthz")
        async def healthz() -> str:
            return "ok"

        options.setdefault("authenticate", authenticate)
        closed_when_observed: list[bool] = []

        def observe(procedure: str, code: str, seconds: float) -> None:
            observed.append((procedure, code, seconds))
            closed_when_observed.append(node.stream_closed.is_set())

        router = connect.Router([connect.Service(SERVICE, node)], observe=observe, **options)
        router.register(app)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.loglevel = "WARNING"
        binds = await nursery.start(hypercorn.trio.serve, app, config)
        server = Server(binds[0], node, observed)
        server.closed_when_observed = closed_when_observed
        return server

    return start


@pytest.fixture(name="server")
async def _server(start_server: StartServer) -> AsyncIterator[Server]:
    server = await start_server()
    async with server.http:
        yield server


def envelope(message: bytes, flags: int = 0) -> bytes:
    return ENVELOPE.pack(flags, len(message)) + message


class EnvelopeReader:
    """Reads Connect envelopes off a streaming httpx response as they arrive.

    ``async with EnvelopeReader(response) as reader``: leaving closes httpx's
    chunk iterator.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._buffer = bytearray()

    async def __aenter__(self) -> EnvelopeReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]

    async def next(self) -> tuple[int, bytes]:
        while True:
            if len(self._buffer) >= ENVELOPE.size:
                flags, length = ENVELOPE.unpack_from(self._buffer)
                if len(self._buffer) >= ENVELOPE.size + length:
                    data = bytes(self._buffer[ENVELOPE.size : ENVELOPE.size + length])
                    del self._buffer[: ENVELOPE.size + length]
                    return flags, data
            self._buffer += await self._chunks.__anext__()

    async def rest(self) -> list[tuple[int, bytes]]:
        """Every remaining envelope, the end-of-stream one last (nothing may follow it)."""
        out = []
        while True:
            flags, data = await self.next()
            out.append((flags, data))
            if flags & 0x02:
                async for chunk in self._chunks:
                    self._buffer += chunk
                assert not self._buffer, "bytes after the end-of-stream message"
                return out


def stream_request(command: str, *, codec: str = "json") -> bytes:
    msg = npb.ExecuteInGuestRequest(vm_id="vm-1", request=apb.ExecuteRequest(command=command))
    if codec == "json":
        return envelope(json.dumps({"vmId": "vm-1", "request": {"command": command}}).encode())
    return envelope(msg.SerializeToString())


async def read_stream(server: Server, body: bytes, headers: dict[str, str]) -> list[tuple[int, bytes]]:
    with trio.fail_after(10):
        async with server.http.stream("POST", f"{PREFIX}/ExecuteInGuestStream", content=body, headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == headers["Content-Type"]
            async with EnvelopeReader(r) as reader:
                return await reader.rest()


# ---------------------------------------------------------------- unary


@pytest.mark.trio
async def test_json_round_trip_uses_camel_case_and_prints_defaults(server: Server) -> None:
    r = await server.post("PingAgent", b'{"vmId": "vm-2"}', JSON)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "connected": False,
        "version": "1.2.3",
        "latencyMs": 1.5,
        "agentUptimeSeconds": 0.0,
        "systemUptimeSeconds": 0.0,
        "error": "",
    }
    assert r.headers["x-served-by"] == "fake"
    assert r.headers["trailer-acme-cost"] == "7"


@pytest.mark.trio
@pytest.mark.parametrize(
    "body",
    [b'{"vm_id": "vm-1"}', b'{"vmId": "vm-1", "fieldFromANewerSchema": [1, 2]}'],
    ids=["proto-field-name", "unknown-field-ignored"],
)
async def test_json_requests_accept_proto_names_and_ignore_unknown_fields(server: Server, body: bytes) -> None:
    r = await server.post("PingAgent", body, {"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text
    assert r.json()["connected"] is True


@pytest.mark.trio
async def test_proto_round_trip(server: Server) -> None:
    r = await server.post("PingAgent", npb.PingAgentRequest(vm_id="vm-1").SerializeToString(), PROTO)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/proto"
    assert npb.AgentPingResponse.FromString(r.content) == npb.AgentPingResponse(
        connected=True, version="1.2.3", latency_ms=1.5
    )


@pytest.mark.trio
async def test_empty_proto_body_is_the_default_message(server: Server) -> None:
    r = await server.post("ListVMs", b"", PROTO)
    assert r.status_code == 200
    assert len(npb.ListVMsResponse.FromString(r.content).vms) == 3


@pytest.mark.trio
async def test_gzip_request_body_is_accepted(server: Server) -> None:
    body = gzip.compress(json.dumps({"vmId": "vm-1", "content": "aGVsbG8h" * 100}).encode())
    r = await server.post("WriteGuestFile", body, {**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["bytesWritten"] == "600"  # uint64: a string in proto3 JSON


@pytest.mark.trio
async def test_bytes_fields_are_strict_base64(server: Server) -> None:
    """proto3 JSON bytes: standard or URL-safe base64, padded or not; anything else is refused
    naming the field (json_format alone drops the characters it does not know and writes garbage)."""
    raw = bytes(range(256)) * 3 + b"\xfb\xff"
    for text in (
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        r = await server.post("WriteGuestFile", json.dumps({"vmId": "vm-1", "content": text}).encode(), JSON)
        assert r.status_code == 200 and r.json()["bytesWritten"] == str(len(raw)), (text[-8:], r.text)
    for bad in ("hello world\n", "aGVsbG8h\n", "aGVs bG8h", "aGVsbG8h=", "aGVsb", "a===", "=aGVs", "aGVs*bG8h"):
        r = await server.post("WriteGuestFile", json.dumps({"vmId": "vm-1", "content": bad}).encode(), JSON)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["code"] == "invalid_argument" and r.json()["message"].startswith("content is not base64"), (
            r.text
        )
    # Nested messages are checked too (the agent's ExecuteRequest.stdin inside a node request), by the
    # codec every server shares.
    body = {"vmId": "vm-1", "request": {"command": "cat", "stdin": "not base64!"}}
    with pytest.raises(errors.InvalidArgument, match=r"^request\.stdin is not base64"):
        decode_json(json.dumps(body).encode(), npb.ExecuteInGuestRequest)
    body["request"]["stdin"] = "aW5wdXQ"
    assert decode_json(json.dumps(body).encode(), npb.ExecuteInGuestRequest).request.stdin == b"input"  # type: ignore[attr-defined]


@pytest.mark.trio
async def test_responses_are_gzipped_only_when_accepted_and_big(server: Server) -> None:
    server.node.vm_count = 50  # a few KiB of JSON
    r = await server.post("ListVMs", b"{}", {**JSON, "Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert len(r.json()["vms"]) == 50  # httpx inflated it
    r = await server.post("ListVMs", b"{}", {**JSON, "Accept-Encoding": "identity"})
    assert "content-encoding" not in r.headers
    assert len(r.json()["vms"]) == 50
    r = await server.post("PingAgent", b"{}", {**JSON, "Accept-Encoding": "gzip"})
    assert "content-encoding" not in r.headers  # below COMPRESS_MIN_BYTES
    # Whether compressed or not, the answer depends on Accept-Encoding: caches must know.
    assert r.headers["vary"] == "Accept-Encoding"


@pytest.mark.trio
async def test_stream_answers_vary_on_connect_accept_encoding(server: Server) -> None:
    async with server.http.stream(
        "POST", f"{PREFIX}/ExecuteInGuestStream", content=stream_request("x"), headers=STREAM_JSON
    ) as r:
        assert r.headers["vary"] == "Connect-Accept-Encoding"
        await r.aread()


@pytest.mark.trio
@pytest.mark.parametrize(
    "body",
    [b'{"vmId": "vm-1"}', b"{}", b'  {"vmId": "vm-1"}', b"[1, 2, 3, 4, 5]", b"\xff" * 64],
    ids=["json-object", "empty-object", "leading-spaces", "json-array", "binary-junk"],
)
async def test_unenveloped_stream_body_is_invalid_argument_saying_the_envelope_is_missing(
    server: Server, body: bytes
) -> None:
    """A bare message on a streaming RPC (curl's first try): the first byte is no flags
    value, so its next four are text, not a length; never "larger than 64 MiB"."""
    [(flags, data)] = await read_stream(server, body, STREAM_JSON)
    assert flags == 0x02
    error = json.loads(data)["error"]
    assert error["code"] == "invalid_argument"
    assert "envelope is missing" in error["message"]
    assert error["details"][0]["debug"]["reason"] == "missing_envelope"
    assert not server.node.stream_closed.is_set()  # the handler never started


@pytest.mark.trio
async def test_unknown_content_encoding_is_unimplemented(server: Server) -> None:
    r = await server.post("PingAgent", b"{}", {**JSON, "Content-Encoding": "br"})
    assert r.status_code == 501
    assert r.json()["code"] == "unimplemented"
    assert "gzip, identity" in r.json()["message"]


@pytest.mark.trio
@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"vmId": ', JSON),
        (b"[1, 2]", JSON),
        (b'{"vmId": 5}', JSON),
        (b"", JSON),
        (b"\xff\xfe{}", JSON),
        (b"\xff\xff\xff\xff", PROTO),
        (b"not gzip at all", {**JSON, "Content-Encoding": "gzip"}),
        (gzip.compress(b'{"vmId": "vm-1"}')[:-6], {**JSON, "Content-Encoding": "gzip"}),
        (b'{"vmId": "vm-1", "vmId": "vm-2"}', JSON),
    ],
    ids=[
        "truncated",
        "array",
        "wrong-type",
        "empty",
        "not-utf8",
        "bad-proto",
        "bad-gzip",
        "truncated-gzip",
        "duplicate-key",
    ],
)
async def test_malformed_requests_are_invalid_argument(server: Server, body: bytes, headers: dict[str, str]) -> None:
    r = await server.post("PingAgent", body, headers)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "invalid_argument"
    assert server.node.calls == 0
    assert server.codes("PingAgent") == ["invalid_argument"]


@pytest.mark.trio
@pytest.mark.parametrize(
    ("method", "content_type"),
    [
        ("PingAgent", "text/plain"),
        ("PingAgent", None),
        ("PingAgent", "application/connect+json"),
        ("PingAgent", "application/proto; charset=utf-8"),
        ("PingAgent", "application/json; charset=latin-1"),
        ("ExecuteInGuestStream", "application/json"),
    ],
)
async def test_unsupported_content_type_is_415(server: Server, method: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = await server.post(method, b"{}", headers)
    assert r.status_code == 415
    expected = "application/connect+" if method.endswith("Stream") else "application/json, application/proto"
    assert expected in r.headers["accept-post"]
    assert server.observed == []  # not a call
    # A Connect JSON error that says what to send, not an empty text/html answer.
    assert r.headers["content-type"] == "application/json"
    error = r.json()
    assert error["code"] == "unimplemented" and expected in error["message"]
    assert error["details"][0]["debug"]["reason"] == "unsupported_media_type"


@pytest.mark.trio
async def test_other_http_methods_are_405(server: Server) -> None:
    r = await server.http.get(f"{PREFIX}/ExecuteInGuest")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    r = await server.http.put(f"{PREFIX}/PingAgent", content=b"{}", headers=JSON)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"  # PingAgent has no side effects: Connect GET serves it
    # A Connect JSON error naming the method to use.
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "unimplemented" and "POST" in r.json()["message"]
    assert r.json()["details"][0]["debug"]["reason"] == "method_not_allowed"
    assert server.observed == []  # not a call


@pytest.mark.trio
@pytest.mark.parametrize("path", [f"{PREFIX}/NoSuchMethod", "/foo.v1.Bar/Baz"])
async def test_unknown_procedure_is_404_unimplemented(server: Server, path: str) -> None:
    r = await server.http.post(path, content=b"{}", headers=JSON)
    assert r.status_code == 404
    assert r.json()["code"] == "unimplemented"
    assert server.observed == []  # unknown paths must not become metric labels
    assert (await server.http.get("/healthz")).text == "ok"  # the app's own routes still work


@pytest.mark.trio
async def test_rpc_missing_from_the_implementation_is_unimplemented(server: Server) -> None:
    r = await server.post("CancelExecution", b'{"vmId": "vm-1"}', JSON)
    assert r.status_code == 501
    assert r.json() == {
        "code": "unimplemented",
        "message": "limiquantix.node.v1.NodeDaemonService/CancelExecution is not implemented",
    }
    assert server.codes("CancelExecution") == ["unimplemented"]


@pytest.mark.trio
@pytest.mark.parametrize(
    "cls",
    [errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.PermissionDenied,
     errors.ResourceExhausted, errors.FailedPrecondition, errors.DeadlineExceeded, errors.Unavailable,
     errors.Unimplemented, errors.Cancelled, errors.Internal, errors.Unauthenticated],
    ids=lambda cls: cls.__name__,
)  # fmt: skip
async def test_agent_errors_map_to_their_code_and_status(server: Server, cls: type[errors.AgentError]) -> None:
    r = await server.post("PingAgent", json.dumps({"vmId": f"raise:{cls.__name__}"}).encode(), JSON)
    assert r.status_code == cls.http_status
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"code": cls.connect_code, "message": f"{cls.__name__} from the handler"}
    assert server.codes("PingAgent") == [cls.connect_code]


@pytest.mark.trio
async def test_error_reason_travels_as_a_connect_error_detail(server: Server) -> None:
    r = await server.post("PingAgent", b'{"vmId": "raise:FailedPrecondition:is_a_directory"}', JSON)
    assert r.status_code == 400
    [detail] = r.json()["details"]
    assert detail["type"] == "limiquantix.agent.v1.Error"
    value = detail["value"]
    decoded = apb.Error.FromString(base64.b64decode(value + "=" * (-len(value) % 4)))
    assert decoded.reason == "is_a_directory"
    assert decoded.code == apb.ERROR_CODE_FAILED_PRECONDITION
    assert "=" not in value  # spec: unpadded


@pytest.mark.trio
async def test_unexpected_exception_is_internal_and_keeps_the_traceback_in_the_log(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="limiquantix.protocol.rpc.server"):
        r = await server.post("PingAgent", b'{"vmId": "boom"}', JSON)
    assert r.status_code == 500
    assert r.json() == {"code": "internal", "message": "internal error"}
    assert SECRET not in r.text and "Traceback" not in r.text
    [record] = [rec for rec in caplog.records if rec.name == "limiquantix.protocol.rpc.server"]
    assert record.exc_info is not None and SECRET in str(record.exc_info[1])
    assert server.codes("PingAgent") == ["internal"]


@pytest.mark.trio
async def test_wrong_response_type_is_internal(server: Server) -> None:
    r = await server.post("PingAgent", b'{"vmId": "wrong-type"}', JSON)
    assert r.status_code == 500
    assert r.json()["code"] == "internal"


@pytest.mark.trio
async def test_agent_error_inside_a_handler_nursery_keeps_its_code(server: Server) -> None:
    r = await server.post("PingAgent", b'{"vmId": "group"}', JSON)
    assert r.status_code == 404
    assert r.json() == {"code": "not_found", "message": "vm-x is gone"}


@pytest.mark.trio
async def test_connect_timeout_expiry_is_deadline_exceeded_and_cancels_the_handler(server: Server) -> None:
    # 500 ms: long enough for the handler to have started (and so be cancelled) on a loaded
    # machine; with 50 ms the deadline could pass before it ran (seen at load 9 on 2 cores).
    r = await server.post("PingAgent", b'{"vmId": "slow"}', {**JSON, "Connect-Timeout-Ms": "500"})
    assert r.status_code == 504
    assert r.json()["code"] == "deadline_exceeded"
    assert server.node.cancelled.is_set()
    [(_, code, seconds)] = server.observed
    assert code == "deadline_exceeded" and 0.5 <= seconds < 5


@pytest.mark.trio
@pytest.mark.parametrize("value", ["soon", "-5", "12345678901", "1.5"])
async def test_malformed_timeout_is_invalid_argument(server: Server, value: str) -> None:
    r = await server.post("PingAgent", b'{"vmId": "vm-1"}', {**JSON, "Connect-Timeout-Ms": value})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"


@pytest.mark.trio
async def test_generous_timeout_and_protocol_version_1_are_fine(server: Server) -> None:
    headers = {**JSON, "Connect-Timeout-Ms": "9999999999", "Connect-Protocol-Version": "1"}
    r = await server.post("PingAgent", b'{"vmId": "vm-1"}', headers)
    assert r.status_code == 200


@pytest.mark.trio
async def test_unknown_protocol_version_is_invalid_argument(server: Server) -> None:
    r = await server.post("PingAgent", b'{"vmId": "vm-1"}', {**JSON, "Connect-Protocol-Version": "2"})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"


@pytest.mark.trio
async def test_client_disconnect_cancels_a_unary_handler(server: Server) -> None:
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            await server.http.post(f"{PREFIX}/PingAgent", content=b'{"vmId": "slow"}', headers=JSON)

        nursery.start_soon(call)
        with trio.fail_after(5):
            await server.node.started.wait()
        nursery.cancel_scope.cancel()  # httpx drops the connection
    with trio.fail_after(5):
        await server.node.cancelled.wait()
        while not server.observed:  # observe runs as the cancellation unwinds
            await trio.sleep(0.01)
    assert server.codes("PingAgent") == ["canceled"]


@pytest.mark.trio
async def test_authenticate_rejects_before_the_body_is_read(server: Server) -> None:
    headers = {**JSON, "Authorization": "Bearer wrong"}
    r = await server.post("PingAgent", b"this is not json", headers)
    assert r.status_code == 401
    assert r.json() == {"code": "unauthenticated", "message": "invalid token"}
    r = await server.post("CancelExecution", b"{}", headers)  # unimplemented, but you may not know
    assert r.status_code == 401
    assert server.node.calls == 0
    assert server.codes("PingAgent") == ["unauthenticated"]


BodiesSeen = list[str]


@pytest.fixture(name="bodies_seen")
def _bodies_seen(monkeypatch: pytest.MonkeyPatch) -> BodiesSeen:
    """What every router in this process does with request bodies: ``"read"`` for each
    Router.read_body (Connect), ``"decode"`` for each Router.decode (every protocol).
    Wrapped, not replaced: the calls run as they would."""
    seen: BodiesSeen = []
    read_body, decode = connect.Router.read_body, connect.Router.decode

    async def counting_read_body(self: connect.Router, ctx: connect.CallContext, limit: int) -> bytearray:
        seen.append("read")
        return await read_body(self, ctx, limit)

    async def counting_decode(self: connect.Router, codec: Any, data: bytes | bytearray, cls: Any) -> Any:
        seen.append("decode")
        return await decode(self, codec, data, cls)

    monkeypatch.setattr(connect.Router, "read_body", counting_read_body)
    monkeypatch.setattr(connect.Router, "decode", counting_decode)
    return seen


#: A JSON request whose decode costs (a 4 MiB string; json_format alone spent 0.25 s on it).
BIG_JSON = json.dumps({"vmId": "vm-1", "path": "p" * (4 * 1024 * 1024)}).encode()


@pytest.mark.trio
async def test_a_refused_token_is_answered_before_a_large_body_is_read_or_decoded(
    server: Server, bodies_seen: BodiesSeen
) -> None:
    """Connect unary, Connect streaming and gRPC-Web: authentication runs on the headers; an
    anonymous client cannot make the server read, buffer or parse what it sends."""
    wrong = {"Authorization": "Bearer wrong"}
    r = await server.post("WriteGuestFile", BIG_JSON, {**JSON, **wrong})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    stream_body = envelope(json.dumps({"vmId": "vm-1", "request": {"command": "c" * 4_000_000}}).encode())
    r = await server.post("ExecuteInGuestStream", stream_body, {"Content-Type": "application/connect+json", **wrong})
    assert r.status_code == 200 and b'"unauthenticated"' in r.content  # a stream's error: in its end message
    r = await server.post("WriteGuestFile", envelope(BIG_JSON), {"Content-Type": "application/grpc-web+json", **wrong})
    assert r.status_code == 200 and b"grpc-status:16" in r.content.replace(b" ", b"")  # in the trailers frame
    assert bodies_seen == []
    assert server.node.calls == 0
    # The same calls with a token the test's policy takes: read and decoded.
    r = await server.post("WriteGuestFile", BIG_JSON, {**JSON, "Authorization": "Bearer admin"})
    assert r.status_code == 200, r.text
    assert bodies_seen == ["read", "decode"]


@pytest.mark.trio
async def test_authenticate_can_deny_and_can_pass_an_identity_to_the_handler(server: Server) -> None:
    r = await server.post("WriteGuestFile", b'{"vmId": "vm-1"}', {**JSON, "Authorization": "Bearer viewer"})
    assert r.status_code == 403
    assert r.json()["code"] == "permission_denied"
    r = await server.post("GetVM", b'{"vmId": "vm-1"}', {**JSON, "Authorization": "Bearer viewer"})
    assert r.json()["name"] == "auth=viewer peer=True"


@pytest.mark.trio
async def test_oversize_bodies_are_resource_exhausted(start_server: StartServer) -> None:
    server = await start_server(max_message_bytes=4096)
    async with server.http:
        big = npb.WriteGuestFileRequest(vm_id="vm-1", content=b"x" * 5000).SerializeToString()
        r = await server.post("WriteGuestFile", big, PROTO)
        assert r.status_code == 429
        assert r.json()["code"] == "resource_exhausted"

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to refuse early
            for _ in range(5):
                yield b"\x00" * 1000

        r = await server.post("WriteGuestFile", chunked(), PROTO)  # type: ignore[arg-type]
        assert r.status_code == 429

        bomb = gzip.compress(npb.WriteGuestFileRequest(content=b"\x00" * 1_000_000).SerializeToString())
        assert len(bomb) < 4096
        r = await server.post("WriteGuestFile", bomb, {**PROTO, "Content-Encoding": "gzip"})
        assert r.status_code == 429
        assert "decompressed" in r.json()["message"]

        fits = npb.WriteGuestFileRequest(content=b"x" * 4000).SerializeToString()
        r = await server.post("WriteGuestFile", fits, PROTO)
        assert r.status_code == 200
        assert server.codes("WriteGuestFile") == ["resource_exhausted"] * 3 + ["ok"]


@pytest.mark.trio
async def test_early_rejections_of_large_uploads_do_not_wedge_keep_alive_connections(start_server: StartServer) -> None:
    """Answering before reading a big body must not leave a reused connection hanging."""
    server = await start_server(max_message_bytes=64 * 1024)
    big = b"\x00" * (8 * 1024 * 1024)  # more than the socket buffers hold
    async with server.http:
        for _ in range(2):  # the same keep-alive client throughout
            r = await server.post("WriteGuestFile", big, {**PROTO, "Authorization": "Bearer wrong"})
            assert (r.status_code, r.headers["connection"]) == (401, "close")
            r = await server.post("WriteGuestFile", big, PROTO)
            assert (r.status_code, r.headers["connection"]) == (429, "close")
            r = await server.post("WriteGuestFile", big, {"Content-Type": "text/plain"})
            assert (r.status_code, r.headers["connection"]) == (415, "close")
            r = await server.post("PingAgent", b'{"vmId": "raise:NotFound"}', JSON)
            assert r.status_code == 404
            assert "connection" not in r.headers  # the body was read: keep the connection


@pytest.mark.trio
async def test_observe_is_called_once_per_call(server: Server) -> None:
    await server.post("PingAgent", b'{"vmId": "vm-1"}', JSON)
    await server.post("PingAgent", b'{"vmId": "raise:NotFound"}', JSON)
    await server.post("ListVMs", b"{}", JSON)
    assert [(p.rsplit("/", 1)[1], c) for p, c, _ in server.observed] == [
        ("PingAgent", "ok"),
        ("PingAgent", "not_found"),
        ("ListVMs", "ok"),
    ]
    assert all(0 <= seconds < 5 for _, _, seconds in server.observed)


# ---------------------------------------------------------------- server streaming


@pytest.mark.trio
async def test_stream_messages_reach_the_client_while_the_handler_is_still_running(server: Server) -> None:
    with trio.fail_after(10):
        async with server.http.stream(
            "POST", f"{PREFIX}/ExecuteInGuestStream", content=stream_request("block"), headers=STREAM_JSON
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/connect+json"
            async with EnvelopeReader(r) as reader:
                assert await reader.next() == (0, b'{"executionId":"exec-1"}')
                flags, data = await reader.next()
                assert flags == 0
                assert json.loads(data) == {
                    "output": {"seq": "1", "stream": "OUTPUT_STREAM_UNSPECIFIED", "data": "aGVsbG8K"}
                }
                # Both arrived while the handler is parked on release.
                assert not server.node.release.is_set() and not server.node.stream_closed.is_set()
                server.node.release.set()
                rest = await reader.rest()
    assert [flags for flags, _ in rest] == [0, 2]
    assert json.loads(rest[0][1])["result"]["exitCode"] == 0
    assert json.loads(rest[1][1]) == {"metadata": {"exit-seen": ["yes"]}}
    assert server.codes("ExecuteInGuestStream") == ["ok"]


@pytest.mark.trio
async def test_quarts_response_timeout_does_not_cut_streams(start_server: StartServer) -> None:
    server = await start_server(quart_config={"RESPONSE_TIMEOUT": 0.05})
    async with server.http:
        with trio.fail_after(10):
            async with (
                server.http.stream(
                    "POST", f"{PREFIX}/ExecuteInGuestStream", content=stream_request("block"), headers=STREAM_JSON
                ) as r,
                EnvelopeReader(r) as reader,
            ):
                await reader.next()
                await trio.sleep(0.2)  # well past RESPONSE_TIMEOUT
                server.node.release.set()
                envelopes = await reader.rest()
    assert json.loads(envelopes[-1][1]) == {"metadata": {"exit-seen": ["yes"]}}


def _chunks(body: bytes) -> list[bytes]:
    """A chunked HTTP body's chunks, as framed (the last, empty one left out).

    Raises:
        AssertionError: the framing is broken or the body does not end.
    """
    chunks = []
    while True:
        size_line, crlf, body = body.partition(b"\r\n")
        assert crlf, "a chunk size line without its end"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return chunks
        chunks.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def _envelopes(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    out = []
    while data:
        flags, size = ENVELOPE.unpack_from(data)
        out.append((flags, json.loads(data[ENVELOPE.size : ENVELOPE.size + size])))
        data = data[ENVELOPE.size + size :]
    return out


@pytest.mark.trio
async def test_a_last_message_leaves_with_the_end_of_the_stream(server: Server) -> None:
    """``yield Last(message)``: the message and the end-of-stream message (its trailers in it) go
    in one HTTP chunk, the handler ends at that yield (what follows it does not run, its
    ``finally`` does), and the call is observed ok, once."""
    body = envelope(b'{"vmId": "vm-1", "request": {"command": "last"}}')
    host, _, port = server.url.removeprefix("http://").partition(":")
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(host, int(port)) as conn:
            await conn.send_all(
                f"POST {PREFIX}/ExecuteInGuestStream HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/connect+json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            answer = b""
            while not answer.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
                answer += await conn.receive_some()
    head, _, raw = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    chunks = [_envelopes(chunk) for chunk in _chunks(raw)]
    (result_flags, result), (end_flags, end) = chunks[-1]
    assert (result_flags, result["result"]["exitCode"]) == (0, 7)
    assert (end_flags, end) == (2, {"metadata": {"exit-seen": ["last"]}})
    assert [list(event) for chunk in chunks[:-1] for _, event in chunk] == [["executionId"], ["output"]]
    await server.node.stream_closed.wait()
    assert not server.node.after_last
    assert server.codes("ExecuteInGuestStream") == ["ok"]


@pytest.mark.trio
async def test_stream_error_after_messages_goes_in_the_end_message(server: Server) -> None:
    envelopes = await read_stream(server, stream_request("fail"), STREAM_JSON)
    assert [flags for flags, _ in envelopes] == [0, 0, 2]
    end = json.loads(envelopes[-1][1])
    assert end["error"]["code"] == "unavailable"
    assert end["error"]["message"] == "agent gone"
    assert end["error"]["details"][0]["debug"]["reason"] == "agent_disconnected"
    assert server.node.stream_closed.is_set()
    assert server.codes("ExecuteInGuestStream") == ["unavailable"]


@pytest.mark.trio
async def test_stream_unexpected_exception_is_internal_without_details(server: Server) -> None:
    envelopes = await read_stream(server, stream_request("boom"), STREAM_JSON)
    assert json.loads(envelopes[-1][1]) == {"error": {"code": "internal", "message": "internal error"}}
    assert all(SECRET.encode() not in data for _, data in envelopes)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        (stream_request("x"), {**STREAM_JSON, "Authorization": "Bearer wrong"}, "unauthenticated"),
        (b"\x00\x00\x00", STREAM_JSON, "invalid_argument"),
        (envelope(b'{"vmId": "vm-1"}')[:-2], STREAM_JSON, "invalid_argument"),
        (envelope(b"{}", flags=0x02), STREAM_JSON, "invalid_argument"),
        (envelope(b"{}", flags=0x01), STREAM_JSON, "invalid_argument"),
        (envelope(b"{not json"), STREAM_JSON, "invalid_argument"),
        (b"", STREAM_JSON, "unimplemented"),
        (envelope(b"{}") * 2, STREAM_JSON, "unimplemented"),
        (stream_request("x"), {**STREAM_JSON, "Connect-Content-Encoding": "br"}, "unimplemented"),
        (stream_request("x"), {**STREAM_JSON, "Connect-Timeout-Ms": "later"}, "invalid_argument"),
    ],
    ids=["unauthenticated", "short-header", "truncated", "end-flag", "compressed-without-encoding",
         "bad-json", "no-message", "two-messages", "unknown-encoding", "bad-timeout"],
)  # fmt: skip
async def test_stream_that_fails_before_starting_answers_200_and_an_end_message(
    server: Server, body: bytes, headers: dict[str, str], code: str
) -> None:
    envelopes = await read_stream(server, body, headers)
    [(flags, data)] = envelopes
    assert flags == 0x02
    assert json.loads(data)["error"]["code"] == code
    assert not server.node.stream_closed.is_set()  # the handler never started
    assert server.codes("ExecuteInGuestStream") == [code]


@pytest.mark.trio
async def test_stream_request_envelope_larger_than_the_limit_is_resource_exhausted(start_server: StartServer) -> None:
    server = await start_server(max_message_bytes=1024)
    async with server.http:
        # The header alone claims too much: refused before any payload is buffered.
        envelopes = await read_stream(server, ENVELOPE.pack(0, 10**9) + b"{}", STREAM_JSON)
        assert json.loads(envelopes[-1][1])["error"]["code"] == "resource_exhausted"
        bomb = gzip.compress(b" " * 100_000 + b"{}")
        headers = {**STREAM_JSON, "Connect-Content-Encoding": "gzip"}
        envelopes = await read_stream(server, envelope(bomb, flags=0x01), headers)
        assert json.loads(envelopes[-1][1])["error"]["code"] == "resource_exhausted"


async def closed_by_the_server_as_cancelled(server: Server) -> None:
    """The stream's generator closed promptly after the client left, and the call counted as cancelled."""
    with trio.fail_after(2):
        await server.node.stream_closed.wait()
        while not server.observed:
            await trio.sleep(0.01)
    assert server.codes("ExecuteInGuestStream") == ["canceled"]
    # Closed by the server in the request's task, not later by the garbage collector.
    assert server.closed_when_observed == [True]


@pytest.mark.trio
async def test_stream_client_disconnect_closes_the_generator_promptly(server: Server) -> None:
    with trio.fail_after(10):
        async with (
            server.http.stream(
                "POST", f"{PREFIX}/ExecuteInGuestStream", content=stream_request("forever"), headers=STREAM_JSON
            ) as r,
            EnvelopeReader(r) as reader,
        ):
            await reader.next()
            await reader.next()
            await server.node.started.wait()
            assert not server.node.stream_closed.is_set()
        # Leaving the block closes the connection mid-stream.
    await closed_by_the_server_as_cancelled(server)


@pytest.mark.trio
async def test_stream_client_disconnect_closes_a_generator_parked_at_yield(server: Server) -> None:
    with trio.fail_after(10):
        async with (
            server.http.stream(
                "POST", f"{PREFIX}/ExecuteInGuestStream", content=stream_request("flood"), headers=STREAM_JSON
            ) as r,
            EnvelopeReader(r) as reader,
        ):
            await reader.next()
            await trio.sleep(0.1)  # let the server fill the socket buffers and block in send
    await closed_by_the_server_as_cancelled(server)


@pytest.mark.trio
async def test_stream_deadline_ends_the_stream_with_deadline_exceeded(server: Server) -> None:
    envelopes = await read_stream(server, stream_request("forever"), {**STREAM_JSON, "Connect-Timeout-Ms": "100"})
    assert [flags for flags, _ in envelopes] == [0, 0, 2]
    assert json.loads(envelopes[-1][1])["error"]["code"] == "deadline_exceeded"
    assert server.node.stream_closed.is_set()
    assert server.codes("ExecuteInGuestStream") == ["deadline_exceeded"]


@pytest.mark.trio
async def test_stream_deadline_stops_a_generator_that_never_awaits(server: Server) -> None:
    request = npb.ExecuteInGuestRequest(vm_id="vm-1", request=apb.ExecuteRequest(command="flood"))
    envelopes = await read_stream(
        server, envelope(request.SerializeToString()), {**STREAM_PROTO, "Connect-Timeout-Ms": "100"}
    )
    assert json.loads(envelopes[-1][1])["error"]["code"] == "deadline_exceeded"
    assert server.node.stream_closed.is_set()


@pytest.mark.trio
async def test_stream_proto_codec_with_gzip_both_ways(server: Server) -> None:
    request = npb.ExecuteInGuestRequest(vm_id="vm-1", request=apb.ExecuteRequest(command="big"))
    body = envelope(gzip.compress(request.SerializeToString()), flags=0x01)
    headers = {**STREAM_PROTO, "Connect-Content-Encoding": "gzip", "Connect-Accept-Encoding": "gzip"}
    with trio.fail_after(10):
        async with server.http.stream("POST", f"{PREFIX}/ExecuteInGuestStream", content=body, headers=headers) as r:
            assert r.headers["connect-content-encoding"] == "gzip"
            async with EnvelopeReader(r) as reader:
                envelopes = await reader.rest()
    assert [flags for flags, _ in envelopes] == [0, 0, 0x01, 0, 0x02]  # only the 5000-byte message is big enough
    events = [
        npb.ExecuteInGuestEvent.FromString(gzip.decompress(data) if flags & 1 else data)
        for flags, data in envelopes[:-1]
    ]
    assert [e.WhichOneof("event") for e in events] == ["execution_id", "output", "output", "result"]
    assert events[2].output.data == b"x" * 5000
    assert json.loads(envelopes[-1][1]) == {"metadata": {"exit-seen": ["yes"]}}


# ---------------------------------------------------------------- connect-python as the oracle


def _client_call(url: str, *, proto_json: bool, fn: Callable[[ConnectClientSync], Any]) -> Any:
    with ConnectClientSync(url, proto_json=proto_json) as client:
        return fn(client)


async def in_thread(url: str, proto_json: bool, fn: Callable[[ConnectClientSync], Any]) -> Any:
    with trio.fail_after(10):
        return await trio.to_thread.run_sync(lambda: _client_call(url, proto_json=proto_json, fn=fn))


def _raises(fn: Callable[[], Any]) -> ConnectError:
    try:
        fn()
    except ConnectError as exc:
        return exc
    raise AssertionError("no ConnectError")


@pytest.mark.trio
@pytest.mark.parametrize("proto_json", [True, False], ids=["json", "proto"])
async def test_connect_python_unary(server: Server, proto_json: bool) -> None:
    server.node.vm_count = 50  # a response big enough to come back gzipped
    ping, vms = await in_thread(
        server.url,
        proto_json,
        lambda c: (
            c.execute_unary(request=npb.PingAgentRequest(vm_id="vm-1"), method=method_info("PingAgent")),
            c.execute_unary(request=npb.ListVMsRequest(), method=method_info("ListVMs")),
        ),
    )
    assert ping == npb.AgentPingResponse(connected=True, version="1.2.3", latency_ms=1.5)
    assert len(vms.vms) == 50 and vms.vms[49].name == "virtual machine number 49"


@pytest.mark.trio
@pytest.mark.parametrize("proto_json", [True, False], ids=["json", "proto"])
async def test_connect_python_sees_our_error_codes(server: Server, proto_json: bool) -> None:
    def calls(c: ConnectClientSync) -> list[ConnectError]:
        ping = method_info("PingAgent")
        return [
            _raises(lambda: c.execute_unary(request=npb.PingAgentRequest(vm_id="raise:NotFound:vm_gone"), method=ping)),
            _raises(lambda: c.execute_unary(request=npb.PingAgentRequest(vm_id="boom"), method=ping)),
            _raises(
                lambda: c.execute_unary(
                    request=npb.PingAgentRequest(), method=ping, headers={"Authorization": "Bearer wrong"}
                )
            ),
            _raises(
                lambda: c.execute_unary(request=npb.CancelExecutionRequest(), method=method_info("CancelExecution"))
            ),
            _raises(lambda: c.execute_unary(request=npb.PingAgentRequest(vm_id="slow"), method=ping, timeout_ms=50)),
        ]

    not_found, internal, unauthenticated, unimplemented, deadline = await in_thread(server.url, proto_json, calls)
    assert (not_found.code, not_found.message) == (Code.NOT_FOUND, "NotFound from the handler")
    [detail] = not_found.details
    reason = apb.Error()
    assert detail.Unpack(reason) and reason.reason == "vm_gone"
    assert (internal.code, internal.message) == (Code.INTERNAL, "internal error")
    assert unauthenticated.code == Code.UNAUTHENTICATED
    assert unimplemented.code == Code.UNIMPLEMENTED
    assert deadline.code == Code.DEADLINE_EXCEEDED


@pytest.mark.trio
@pytest.mark.parametrize("proto_json", [True, False], ids=["json", "proto"])
async def test_connect_python_server_streaming(server: Server, proto_json: bool) -> None:
    def run(c: ConnectClientSync) -> tuple[list[Any], list[Any], ConnectError]:
        method = method_info("ExecuteInGuestStream")

        def request(command: str) -> npb.ExecuteInGuestRequest:
            return npb.ExecuteInGuestRequest(vm_id="vm-1", request=apb.ExecuteRequest(command=command))

        ok = list(c.execute_server_stream(request=request("big"), method=method))
        before_error: list[Any] = []

        def consume() -> None:
            for event in c.execute_server_stream(request=request("fail"), method=method):
                before_error.append(event)

        return ok, before_error, _raises(consume)

    ok, before_error, error = await in_thread(server.url, proto_json, run)
    assert [e.WhichOneof("event") for e in ok] == ["execution_id", "output", "output", "result"]
    assert ok[2].output.data == b"x" * 5000
    assert [e.WhichOneof("event") for e in before_error] == ["execution_id", "output"]
    assert (error.code, error.message) == (Code.UNAVAILABLE, "agent gone")


# ---------------------------------------------------------------- binding and registration


def test_service_lists_what_it_implements() -> None:
    service = connect.Service(SERVICE, FakeNode())
    assert f"{SERVICE.full_name}/PingAgent" in service.procedures
    assert len(service.procedures) == len(SERVICE.methods)
    assert set(service.unimplemented) == {
        f"{SERVICE.full_name}/{name}"
        for name in ("CancelExecution", "ReadGuestFile", "ReadGuestFileStream", "StatGuestFile", "ListGuestDirectory",
                     "GuestShutdown", "ResetGuestPassword", "ExecuteInGuest")
    }  # fmt: skip


def test_service_refuses_handlers_of_the_wrong_kind() -> None:
    class StreamAsCoroutine:
        async def ExecuteInGuestStream(self, request: Any, ctx: Any) -> Any:
            return None

    class UnaryAsGenerator:
        async def PingAgent(self, request: Any, ctx: Any) -> Any:
            yield None

    class NotCallable:
        PingAgent = 5

    for impl in (StreamAsCoroutine(), UnaryAsGenerator(), NotCallable()):
        with pytest.raises(TypeError):
            connect.Service(SERVICE, impl)


def test_register_raises_quarts_body_limit_and_refuses_duplicates() -> None:
    app = QuartTrio(__name__)
    router = connect.Router([connect.Service(SERVICE, FakeNode())])
    with pytest.raises(ValueError, match="already registered"):
        router.add(connect.Service(SERVICE, FakeNode()))
    router.register(app)
    assert app.config["MAX_CONTENT_LENGTH"] >= connect.MAX_MESSAGE_BYTES
    with pytest.raises(ValueError, match="already routed"):
        router.register(app)
    router.register(app, prefix="/api")  # a routing prefix is another rule
    with pytest.raises(ValueError):
        router.register(app, prefix="api/")


@pytest.mark.trio
async def test_call_context_helpers() -> None:
    ctx = connect.CallContext(
        procedure=f"{SERVICE.full_name}/PingAgent", headers=Headers({"Authorization": "bearer  tok"})
    )
    assert (ctx.service, ctx.method) == (SERVICE.full_name, "PingAgent")
    assert ctx.bearer_token == "tok"
    assert ctx.time_remaining() == math.inf
    assert connect.CallContext(procedure="a.B/C", headers=Headers({"Authorization": "Basic x"})).bearer_token is None


# ---------------------------------------------------------------- bytes in flight


def _error(r: httpx.Response) -> tuple[str, str]:
    """(code, reason) of a Connect error answer."""
    body = r.json()
    reason = ""
    for detail in body.get("details", []):
        err = apb.Error()
        err.ParseFromString(base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4)))
        reason = err.reason
    return body["code"], reason


@pytest.mark.trio
async def test_bytes_in_flight_are_bounded_per_caller_and_in_total(start_server: StartServer) -> None:
    in_flight = connect.InFlightBytes(max_total_bytes=25_000, max_bytes_per_key=15_000, key=lambda ctx: ctx.auth)
    server = await start_server(in_flight=in_flight)
    body = npb.WriteGuestFileRequest(path="hold", content=b"x" * 9000).SerializeToString()
    answers: dict[str, httpx.Response] = {}

    def as_user(who: str) -> dict[str, str]:
        return {**PROTO, "Authorization": f"Bearer {who}"}

    async def write(name: str, who: str) -> None:
        answers[name] = await server.post("WriteGuestFile", body, as_user(who))

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, "alice-1", "alice")
            while in_flight.held("alice") < len(body):
                await trio.sleep(0.01)
            # alice's second write would hold 18 KB > 15 KB: refused before its body is read.
            r = await server.post("WriteGuestFile", body, as_user("alice"))
            assert r.status_code == 429 and _error(r) == ("resource_exhausted", "caller_bytes_in_flight")
            assert "retry" in r.json()["message"]
            nursery.start_soon(write, "bob-1", "bob")
            while in_flight.total < 2 * len(body):
                await trio.sleep(0.01)
            # carol's 9 KB would take the total to 27 KB > 25 KB; a chunked body (no
            # Content-Length) is counted as it arrives.
            for content in (body, chunked()):
                r = await server.post("WriteGuestFile", content, as_user("carol"))  # type: ignore[arg-type]
                assert r.status_code == 429 and _error(r) == ("resource_exhausted", "server_bytes_in_flight")
            small = npb.WriteGuestFileRequest(content=b"y" * 100).SerializeToString()
            assert (await server.post("WriteGuestFile", small, as_user("carol"))).status_code == 200
            server.node.release.set()
    assert answers["alice-1"].status_code == answers["bob-1"].status_code == 200
    assert in_flight.total == 0 and in_flight.held("alice") == 0  # all released
    # A gzip body counts its inflated size too.
    packed = gzip.compress(npb.WriteGuestFileRequest(content=b"\0" * 20_000).SerializeToString())
    r = await server.post("WriteGuestFile", packed, {**as_user("dave"), "Content-Encoding": "gzip"})
    assert r.status_code == 429 and _error(r) == ("resource_exhausted", "caller_bytes_in_flight")
    assert in_flight.total == 0
    assert server.codes("WriteGuestFile").count("resource_exhausted") == 4


@pytest.mark.trio
async def test_bytes_in_flight_of_an_abandoned_call_are_released_when_it_is_collected() -> None:
    in_flight = connect.InFlightBytes(max_total_bytes=100, max_bytes_per_key=100)
    ctx = connect.CallContext(procedure="svc/M", headers=Headers())
    in_flight.reserve(ctx, 60)
    with pytest.raises(errors.ResourceExhausted):
        in_flight.reserve(connect.CallContext(procedure="svc/M", headers=Headers()), 50)
    assert in_flight.total == 60
    del ctx  # a call whose cleanup never ran
    gc.collect()
    assert in_flight.total == 0
    with pytest.raises(ValueError):
        connect.InFlightBytes(max_total_bytes=0, max_bytes_per_key=1)


@pytest.mark.trio
@pytest.mark.parametrize("codec", ["proto", "json"])
async def test_a_body_of_too_many_fields_is_refused_before_it_is_parsed(
    server: Server, bodies_seen: BodiesSeen, codec: str
) -> None:
    """Parsing costs per field: 16 MiB of 2-byte protobuf entries (8 million argv strings, or
    empty records: the controller took 1.3 s and 800 MB for a Heartbeat of them) or a JSON list
    of as many values, before check_message could refuse the count. Over limits.MAX_MESSAGE_FIELDS
    the body is refused from its bytes (the protobuf walked, nested messages too; JSON's
    separators counted), naming the bound; nothing reaches the handler."""
    argv_field = apb.ExecuteRequest.DESCRIPTOR.fields_by_name["argv"].number
    count = limits.MAX_MESSAGE_FIELDS + 1
    if codec == "proto":
        dense = bytes([argv_field << 3 | 2, 0]) * count  # each an empty string
        request = npb.ExecuteInGuestRequest(vm_id="vm-1").SerializeToString()
        body = request + b"\x12" + varint_bytes(len(dense)) + dense  # field 2: the ExecuteRequest
        headers = STREAM_PROTO
    else:
        body = json.dumps({"vmId": "vm-1", "request": {"argv": [""] * count}}).encode()
        headers = STREAM_JSON
    auth = {"Authorization": "Bearer operator"}
    r = await server.post("ExecuteInGuestStream", envelope(body), {**headers, **auth})
    assert r.status_code == 200, r.text  # a stream's error: in its end message
    assert b'"invalid_argument"' in r.content and f"over {limits.MAX_MESSAGE_FIELDS} fields".encode() in r.content
    assert b"exec-1" not in r.content  # the handler's first event: it never ran
    # A real request of the same RPC, under the bound, goes through.
    ok = npb.ExecuteInGuestRequest(vm_id="vm-1", request=apb.ExecuteRequest(argv=["true"] * 4096))
    r = await server.post("ExecuteInGuestStream", envelope(ok.SerializeToString()), {**STREAM_PROTO, **auth})
    assert r.status_code == 200 and b"exec-1" in r.content and b"invalid_argument" not in r.content, r.content
