"""gRPC, gRPC-Web, server reflection and Connect GET, end to end, with clients nobody here wrote:
grpcio's (unary and server streaming over h2c) and the buf CLI (npm's @bufbuild/buf, installed by
scripts/install_buf.sh into .venv/node: ``buf curl --protocol connect|grpc|grpcweb`` and
``--list-methods``, which works from reflection alone), against a real controller and a real hostd
on loopback (test_controller_api's stack: simulated VMs with the real agent).

grpcio's client is blocking: it runs in a worker thread (trio.to_thread), the servers in trio.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import struct
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
import pytest
import trio
from conftest import wait_gone
from google.protobuf.message import Message
from test_controller_api import HOSTD_TOKEN, Stack, _audit
from test_controller_api import stack as stack  # the fixture

from limiquantix.controller._models import AuditAction
from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as agent_pb
from limiquantix.protocol._gen import grpc_reflection_v1_pb2 as refl_pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol.rpc._deadline import parse_grpc_timeout
from limiquantix.protocol.rpc.server._grpc import StatusDetail

ROOT: Final = Path(__file__).resolve().parent.parent
BUF: Final = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "buf"
VM: Final = "limiquantix.compute.v1.VMService"
NODE: Final = "limiquantix.node.v1.NodeDaemonService"
CALL_S: Final = 30.0

_M = TypeVar("_M", bound=Message)


@pytest.fixture(scope="session")
def buf() -> Path:
    """The buf CLI, installed on first use when make venv has not (fails, never skips).

    npm's ``bin/buf`` is a node script that runs the platform package's binary
    (``@bufbuild/buf-linux-x64/bin/buf``); the binary is taken directly when it is there, which
    saves a node start (~0.1 s of CPU) per call.
    """
    if not BUF.exists():
        subprocess.run([str(ROOT / "scripts" / "install_buf.sh")], check=True, env={**os.environ, "VENV": ".venv"})
    native = sorted(BUF.resolve().parents[2].glob("buf-*/bin/buf"))
    return native[0] if len(native) == 1 else BUF


def _target(url: str) -> str:
    return url.removeprefix("http://")


def _meta(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


async def _unary(url: str, method: str, request: Message, response_cls: type[_M], token: str | None, **kw: Any) -> _M:
    """One grpcio unary call (in a thread), with ``kw`` passed to the stub call."""

    def run() -> _M:
        with grpc.insecure_channel(_target(url)) as channel:
            call = channel.unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            return call(request, metadata=_meta(token), timeout=kw.pop("timeout", CALL_S), **kw)

    return await trio.to_thread.run_sync(run)


async def _stream(
    url: str, method: str, request: Message, response_cls: type[_M], token: str | None, **kw: Any
) -> list[_M]:
    def run() -> list[_M]:
        with grpc.insecure_channel(_target(url)) as channel:
            call = channel.unary_stream(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            return list(call(request, metadata=_meta(token), timeout=kw.pop("timeout", CALL_S), **kw))

    return await trio.to_thread.run_sync(run)


async def _rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await fn()
    return info.value


# ---------------------------------------------------------------- grpcio


@pytest.mark.trio
async def test_grpcio_unary_streaming_errors_deadline_and_gzip(stack: Stack) -> None:
    admin = stack.tokens["admin"]
    vms = await _unary(stack.url, f"/{VM}/ListVMs", api_pb.ListVMsRequest(), api_pb.ListVMsResponse, admin)
    assert sorted(v.vm_id for v in vms.vms) == ["vm0", "vm1"]
    # gzip both ways: the request compressed by grpcio, the answer because it accepts gzip.
    vm = await _unary(
        stack.url, f"/{VM}/GetVM", api_pb.GetVMRequest(vm_id="vm0"), api_pb.VM, admin, compression=grpc.Compression.Gzip
    )
    assert vm.vm_id == "vm0" and vm.labels["env"] == "prod"

    events = await _stream(
        stack.url,
        f"/{VM}/ExecuteScriptStream",
        api_pb.ExecuteScriptRequest(vm_id="vm1", command="echo out; echo err >&2; exit 3"),
        api_pb.ExecuteScriptEvent,
        admin,
    )
    assert events[0].execution_id
    assert events[-1].result.exit_code == 3
    assert "".join(e.output.text for e in events if e.HasField("output") and e.output.stream == "stdout") == "out\n"

    # Errors: the code, and the message percent-decoded by the client.
    err = await _rpc_error(
        lambda: _unary(stack.url, f"/{VM}/ListVMs", api_pb.ListVMsRequest(), api_pb.ListVMsResponse, None)
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = await _rpc_error(
        lambda: _unary(stack.url, f"/{VM}/GetVM", api_pb.GetVMRequest(vm_id="ghöst"), api_pb.VM, admin)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and "ghöst" in err.details()
    err = await _rpc_error(lambda: _unary(stack.url, f"/{VM}/NoSuchMethod", api_pb.GetVMRequest(), api_pb.VM, admin))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED

    # grpc-timeout is the call's deadline: the command is cut and the answer says so.
    err = await _rpc_error(
        lambda: _unary(
            stack.url,
            f"/{VM}/ExecuteScript",
            api_pb.ExecuteScriptRequest(vm_id="vm0", command="sleep 20"),
            api_pb.ExecuteScriptResponse,
            admin,
            timeout=0.3,
        )
    )
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.trio
async def test_grpcio_cancelling_a_stream_kills_the_guest_command(stack: Stack) -> None:
    request = api_pb.ExecuteScriptRequest(vm_id="vm0", command="echo pid $$; exec sleep 31.4159")

    def first_pid_then_cancel() -> int:
        with grpc.insecure_channel(_target(stack.url)) as channel:
            call = channel.unary_stream(
                f"/{VM}/ExecuteScriptStream",
                request_serializer=api_pb.ExecuteScriptRequest.SerializeToString,
                response_deserializer=api_pb.ExecuteScriptEvent.FromString,
            )(request, metadata=_meta(stack.tokens["operator"]), timeout=CALL_S)
            for event in call:
                if event.HasField("output"):
                    call.cancel()  # RST_STREAM: hypercorn tells the app http.disconnect
                    return int(event.output.text.split()[1])
        raise AssertionError("no output")

    pid = await trio.to_thread.run_sync(first_pid_then_cancel)
    await wait_gone(pid, within=CALL_S)


@pytest.mark.trio
async def test_grpcio_reads_a_file_over_4_mib_by_stream_and_straight_from_hostd(stack: Stack) -> None:
    admin = stack.tokens["admin"]
    data = os.urandom(4 * 1024 * 1024 + 7)  # over grpcio's limit: five chunks of a stream
    path = stack.short_tmp / "big.bin"
    path.write_bytes(data)  # the simulated guests share this file system
    request = api_pb.ReadGuestFileRequest(vm_id="vm0", path=str(path))
    # The unary read's default is below grpcio's 4 MiB limit: refused saying what to do.
    err = await _rpc_error(
        lambda: _unary(stack.url, f"/{VM}/ReadGuestFile", request, api_pb.ReadGuestFileResponse, admin)
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "ReadGuestFileStream" in err.details()
    # The reason, as gRPC clients read details: google.rpc.Status in grpc-status-details-bin.
    status = StatusDetail.FromString(dict(err.trailing_metadata())["grpc-status-details-bin"])
    reason = agent_pb.Error()
    assert status.code == 8 and status.details[0].Unpack(reason) and reason.reason == "too_large"
    chunks = await _stream(stack.url, f"/{VM}/ReadGuestFileStream", request, api_pb.ReadGuestFileChunk, admin)
    assert b"".join(c.content for c in chunks) == data
    assert max(len(c.content) for c in chunks) <= 1024 * 1024
    assert chunks[-1].eof and chunks[-1].sha256 == hashlib.sha256(data).hexdigest()

    # Who may read, and the audit row: as for ReadGuestFile (flag "stream").
    err = await _rpc_error(
        lambda: _stream(
            stack.url, f"/{VM}/ReadGuestFileStream", request, api_pb.ReadGuestFileChunk, stack.tokens["viewer"]
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    outside = api_pb.ReadGuestFileRequest(vm_id="vm1", path=str(path))  # env=dev: outside the scope
    err = await _rpc_error(
        lambda: _stream(
            stack.url, f"/{VM}/ReadGuestFileStream", outside, api_pb.ReadGuestFileChunk, stack.tokens["scoped"]
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    rows = [r for r in await _audit(stack, AuditAction.FILE_READ) if "stream" in r.detail.flags]
    assert [(r.user, r.vm_id, r.detail.path, r.outcome.value) for r in rows] == [  # newest first
        ("scoped", "vm1", str(path), "denied"),
        ("viewer", "vm0", str(path), "denied"),
        ("admin", "vm0", str(path), "success"),
    ]

    # hostd speaks gRPC too, with its own token.
    node_chunks = await _stream(
        stack.hostd_url,
        f"/{NODE}/ReadGuestFileStream",
        node_pb.ReadGuestFileRequest(vm_id="vm1", path=str(path), offset=5, length=1024 * 1024 + 3),
        node_pb.ReadGuestFileChunk,
        HOSTD_TOKEN,
    )
    assert b"".join(c.data for c in node_chunks) == data[5 : 5 + 1024 * 1024 + 3]
    err = await _rpc_error(
        lambda: _unary(stack.hostd_url, f"/{NODE}/ListVMs", node_pb.ListVMsRequest(), node_pb.ListVMsResponse, "wrong")
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- buf curl


async def _buf(buf: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp / "buf-cache"), "HOME": str(tmp)}
    with trio.fail_after(CALL_S * 2):
        return await trio.run_process([str(buf), *args], capture_stdout=True, capture_stderr=True, check=False, env=env)


@pytest.mark.trio
async def test_buf_curl_each_protocol_from_reflection(stack: Stack, buf: Path) -> None:
    # One stack for the three protocols (a stack per protocol was most of their time).
    for protocol in ("connect", "grpc", "grpcweb"):
        h2 = ["--http2-prior-knowledge"] if protocol == "grpc" else []
        auth = ["-H", f"Authorization: Bearer {stack.tokens['admin']}"]
        base = ["curl", "--protocol", protocol, *h2, *auth]
        r = await _buf(buf, stack.short_tmp, *base, "--data", '{"vmId": "vm0"}', f"{stack.url}/{VM}/GetVM")
        assert r.returncode == 0, (protocol, r.stderr.decode())
        assert json.loads(r.stdout)["vmId"] == "vm0"
        # A stream: every event as its own JSON document.
        r = await _buf(
            buf,
            stack.short_tmp,
            *base,
            "--data",
            '{"vmId": "vm1", "command": "echo hi"}',
            f"{stack.url}/{VM}/ExecuteScriptStream",
        )
        assert r.returncode == 0, (protocol, r.stderr.decode())
        assert '"exitCode": 0' in r.stdout.decode() or '"result"' in r.stdout.decode(), protocol
        # An error: buf prints the code and exits non-zero.
        r = await _buf(buf, stack.short_tmp, *base, "--data", '{"vmId": "ghost"}', f"{stack.url}/{VM}/GetVM")
        assert r.returncode != 0 and b"not_found" in r.stderr.replace(b" ", b"_").lower(), (protocol, r.stderr.decode())


@pytest.mark.trio
async def test_buf_curl_lists_methods_of_both_daemons(stack: Stack, buf: Path) -> None:
    r = await _buf(buf, stack.short_tmp, "curl", "--http2-prior-knowledge", "--list-methods", stack.url)
    assert r.returncode == 0, r.stderr.decode()
    methods = set(r.stdout.decode().split())
    assert {f"{VM}/ListVMs", f"{VM}/ReadGuestFileStream", "limiquantix.compute.v1.AdminService/WhoAmI"} <= methods
    r = await _buf(buf, stack.short_tmp, "curl", "--protocol", "grpcweb", "--list-methods", stack.hostd_url)
    assert r.returncode == 0, r.stderr.decode()
    assert f"{NODE}/ReadGuestFileStream" in r.stdout.decode().split()


# ---------------------------------------------------------------- raw protocol edges


def _frame(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _web_frames(body: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(body):
        flags, n = struct.unpack(">BI", body[i : i + 5])
        out.append((flags, body[i + 5 : i + 5 + n]))
        i += 5 + n
    return out


@pytest.mark.trio
async def test_grpc_web_over_http1_and_bad_input(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.tokens['admin']}", "Content-Type": "application/grpc-web+proto"}
    url = f"{stack.url}/{VM}/GetVM"
    r = await stack.client.post(
        url, content=_frame(0, api_pb.GetVMRequest(vm_id="vm0").SerializeToString()), headers=headers
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/grpc-web+proto"
    frames = _web_frames(r.content)
    assert api_pb.VM.FromString(frames[0][1]).vm_id == "vm0"
    assert frames[-1][0] == 0x80 and b"grpc-status: 0" in frames[-1][1]

    async def status(content: bytes, **extra: str) -> bytes:
        r = await stack.client.post(url, content=content, headers={**headers, **extra})
        assert r.status_code == 200, r.text
        return _web_frames(r.content)[-1][1]

    # No message, two messages, a message cut short, a compressed one without grpc-encoding,
    # an unknown encoding, a bad grpc-timeout, a length over the limit: each a clear status.
    msg = api_pb.GetVMRequest(vm_id="vm0").SerializeToString()
    assert b"grpc-status: 3" in await status(b"")
    assert b"grpc-status: 12" in await status(_frame(0, msg) * 2)
    assert b"grpc-status: 3" in await status(_frame(0, msg)[:-2])
    assert b"grpc-status: 3" in await status(_frame(1, gzip.compress(msg)))
    assert b"grpc-status: 0" in await status(_frame(1, gzip.compress(msg)), **{"grpc-encoding": "gzip"})
    assert b"grpc-status: 12" in await status(_frame(0, msg), **{"grpc-encoding": "br"})
    assert b"grpc-status: 3" in await status(_frame(0, msg), **{"grpc-timeout": "forever"})
    assert b"grpc-status: 8" in await status(struct.pack(">BI", 0, 2**31))
    assert b"grpc-status: 3" in await status(_frame(0, b"\xff\xff\xff"))

    # grpc-timeout is the server's deadline too (not only the client's): status 4 in time.
    run = api_pb.ExecuteScriptRequest(vm_id="vm0", command="sleep 20").SerializeToString()
    with trio.fail_after(10):
        r = await stack.client.post(
            f"{stack.url}/{VM}/ExecuteScript", content=_frame(0, run), headers={**headers, "grpc-timeout": "500m"}
        )
    assert b"grpc-status: 4" in _web_frames(r.content)[-1][1]

    # A streamed answer is gzipped message by message when the client accepts it.
    data = os.urandom(100) * 1000
    (stack.short_tmp / "text.bin").write_bytes(data)
    read = api_pb.ReadGuestFileRequest(vm_id="vm0", path=str(stack.short_tmp / "text.bin")).SerializeToString()
    r = await stack.client.post(
        f"{stack.url}/{VM}/ReadGuestFileStream",
        content=_frame(0, read),
        headers={**headers, "grpc-accept-encoding": "gzip"},
    )
    frames = _web_frames(r.content)
    assert r.headers["grpc-encoding"] == "gzip" and frames[0][0] == 1
    chunks = [api_pb.ReadGuestFileChunk.FromString(gzip.decompress(d) if f == 1 else d) for f, d in frames[:-1]]
    assert b"".join(c.content for c in chunks) == data and b"grpc-status: 0" in frames[-1][1]

    # gRPC proper needs HTTP/2; an unknown gRPC type is 415; other verbs 405.
    r = await stack.client.post(url, content=_frame(0, msg), headers={**headers, "Content-Type": "application/grpc"})
    assert r.status_code == 505
    r = await stack.client.post(url, content=b"", headers={**headers, "Content-Type": "application/grpc-web-text"})
    assert r.status_code == 415
    r = await stack.client.put(url, content=b"", headers=headers)
    assert r.status_code == 405


def test_grpc_timeout_units() -> None:
    assert parse_grpc_timeout("250m") == 0.25
    assert parse_grpc_timeout("2H") == 7200
    assert parse_grpc_timeout("99999999n") == pytest.approx(0.099999999)
    for bad in ("", "1", "123456789S", "1s", "-1S", "1.5S"):
        with pytest.raises(errors.InvalidArgument):
            parse_grpc_timeout(bad)


def test_reflection_answers_from_the_generated_code() -> None:
    from limiquantix.protocol.rpc.server._reflection import Reflection

    reflection = Reflection([VM])
    answer = refl_pb.ServerReflectionResponse.FromString(
        reflection.answer(refl_pb.ServerReflectionRequest(list_services="").SerializeToString(), alpha=False)
    )
    assert [s.name for s in answer.list_services_response.service] == [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        VM,
    ]
    for symbol in (VM, f"{VM}.ListVMs", "limiquantix.compute.v1.VM"):
        req = refl_pb.ServerReflectionRequest(file_containing_symbol=symbol)
        answer = refl_pb.ServerReflectionResponse.FromString(reflection.answer(req.SerializeToString(), alpha=False))
        files = answer.file_descriptor_response.file_descriptor_proto
        assert len(files) == 4, symbol  # vm_service.proto, agent.proto, node_daemon.proto, timestamp.proto
    for req in (
        refl_pb.ServerReflectionRequest(file_containing_symbol=f"{VM}.Nope"),
        refl_pb.ServerReflectionRequest(file_by_filename="nope.proto"),
        refl_pb.ServerReflectionRequest(),
    ):
        answer = refl_pb.ServerReflectionResponse.FromString(reflection.answer(req.SerializeToString(), alpha=False))
        assert answer.HasField("error_response")
    garbage = refl_pb.ServerReflectionResponse.FromString(reflection.answer(b"\xff\xff", alpha=False))
    assert garbage.error_response.error_code == 3


# ---------------------------------------------------------------- Connect GET


@pytest.mark.trio
async def test_connect_get_for_methods_without_side_effects(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {stack.tokens['admin']}"}
    query = urllib.parse.urlencode({"message": json.dumps({"vmId": "vm0"}), "encoding": "json"})
    r = await stack.client.get(f"{stack.url}/{VM}/GetVM?{query}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["vmId"] == "vm0"
    # proto, base64 (unpadded URL-safe), gzip.
    raw = gzip.compress(api_pb.GetVMRequest(vm_id="vm1").SerializeToString())
    b64 = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = await stack.client.get(
        f"{stack.url}/{VM}/GetVM",
        params={"message": b64, "encoding": "proto", "base64": "1", "compression": "gzip"},
        headers=auth,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/proto", r.text
    assert api_pb.VM.FromString(r.content).vm_id == "vm1"
    # A method with side effects is POST only.
    r = await stack.client.get(f"{stack.url}/{VM}/ExecuteScript?{query}", headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # Bad query strings: a clear invalid_argument each.
    for params in (
        {"encoding": "json"},
        {"message": "{}", "encoding": "yaml"},
        {"message": "%%", "encoding": "proto", "base64": "1"},
    ):
        r = await stack.client.get(f"{stack.url}/{VM}/GetVM", params=params, headers=auth)
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument", (params, r.text)
    r = await stack.client.get(
        f"{stack.url}/{VM}/GetVM", params={"message": "{}", "encoding": "json", "compression": "br"}, headers=auth
    )
    assert r.status_code == 501 and r.json()["code"] == "unimplemented"


# ---------------------------------------------------------------- TLS (ALPN h2)


def _openssl_ca_and_server_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, its key), made with the openssl CLI.

    Once the TLS work's test PKI (cryptography) is on main, this can use it instead.
    """
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [
        ["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=lqx test CA"],
        ["openssl", "req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "srv.pem", "-days", "1", "-extfile", "san.cnf"],
    ]  # fmt: skip
    (tmp / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for argv in run:
        subprocess.run(argv, cwd=tmp, check=True, capture_output=True)
    return tmp / "ca.pem", tmp / "srv.pem", tmp / "srv.key"


@pytest.mark.trio
async def test_grpcio_over_tls_with_alpn_h2_metadata_and_errors(nursery: trio.Nursery, short_tmp: Path) -> None:
    """The Connect router's gRPC side on hypercorn with a certificate (ALPN h2), the test
    service of test_connect: headers and trailers reach grpcio as metadata, a handler's crash
    is ``internal`` without its text, and a stream is read to its end."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio
    from test_connect import SECRET, SERVICE, FakeNode, authenticate

    from limiquantix.protocol.rpc import server as rpc_server

    ca, cert, key = _openssl_ca_and_server_cert(short_tmp)
    app = QuartTrio(__name__)
    rpc_server.Router([rpc_server.Service(SERVICE, FakeNode())], authenticate=authenticate).register(app)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = str(cert), str(key)
    config.accesslog = None
    binds = await nursery.start(serve, app, config)
    target = binds[0].removeprefix("https://")
    node = "/limiquantix.node.v1.NodeDaemonService"

    def calls() -> tuple[Any, ...]:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with grpc.secure_channel(target, credentials) as channel:
            ping = channel.unary_unary(
                f"{node}/PingAgent",
                request_serializer=node_pb.PingAgentRequest.SerializeToString,
                response_deserializer=node_pb.AgentPingResponse.FromString,
            )
            answer, call = ping.with_call(node_pb.PingAgentRequest(vm_id="vm-1"), timeout=CALL_S)
            try:
                ping(node_pb.PingAgentRequest(vm_id="boom"), timeout=CALL_S)
            except grpc.RpcError as exc:
                crash = exc
            events = list(
                channel.unary_stream(
                    f"{node}/ExecuteInGuestStream",
                    request_serializer=node_pb.ExecuteInGuestRequest.SerializeToString,
                    response_deserializer=node_pb.ExecuteInGuestEvent.FromString,
                )(node_pb.ExecuteInGuestRequest(vm_id="vm-1"), timeout=CALL_S)
            )
            return answer, dict(call.initial_metadata()), dict(call.trailing_metadata()), crash, events

    answer, headers, trailers, crash, events = await trio.to_thread.run_sync(calls)
    assert answer.connected and answer.version == "1.2.3"
    assert headers["x-served-by"] == "fake" and trailers["acme-cost"] == "7"
    assert crash.code() == grpc.StatusCode.INTERNAL and SECRET not in crash.details()
    assert [e.WhichOneof("event") for e in events] == ["execution_id", "output", "result"]


def test_http_config_lifts_hypercorns_limit_on_requests_per_connection() -> None:
    """The fast twin of test_grpcio_channel_outlives_a_thousand_calls (slow: 1,100 calls on one
    connection): the configuration that test serves with lifts hypercorn's keep_alive_max_requests
    (1000 by default) beyond what a connection will ever send."""
    from hypercorn.config import Config

    from limiquantix.protocol.rpc import server as rpc_server

    assert Config().keep_alive_max_requests <= 1000  # hypercorn's default, which the slow test exceeds
    assert rpc_server.http_config(["127.0.0.1:0"], graceful_timeout_s=1.0).keep_alive_max_requests >= 2**62


@pytest.mark.slow
@pytest.mark.trio
async def test_grpcio_channel_outlives_a_thousand_calls(nursery: trio.Nursery) -> None:
    """One grpcio channel (one HTTP/2 connection), more calls than hypercorn's default
    keep_alive_max_requests (1000): its GOAWAY after the 1000th stream cut the next call short
    (``unavailable`` "Stream removed"); serving.http_config lifts the limit. Slow (1,100 calls:
    seconds of CPU); test_http_config_lifts_hypercorns_limit_on_requests_per_connection is its
    fast twin."""
    from quart_trio import QuartTrio
    from test_connect import SERVICE, FakeNode, authenticate

    from limiquantix.protocol.rpc import server as rpc_server

    node = FakeNode()
    app = QuartTrio(__name__)
    rpc_server.Router([rpc_server.Service(SERVICE, node)], authenticate=authenticate).register(app)
    config = rpc_server.http_config(["127.0.0.1:0"], graceful_timeout_s=1.0)
    binds = await nursery.start(rpc_server.serve_http, app, config, trio.Event())
    calls = 1100

    def run() -> int:
        with grpc.insecure_channel(_target(binds[0])) as channel:
            ping = channel.unary_unary(
                "/limiquantix.node.v1.NodeDaemonService/PingAgent",
                request_serializer=node_pb.PingAgentRequest.SerializeToString,
                response_deserializer=node_pb.AgentPingResponse.FromString,
            )
            return sum(ping(node_pb.PingAgentRequest(vm_id="vm-1"), timeout=CALL_S).connected for _ in range(calls))

    with trio.fail_after(120):
        assert await trio.to_thread.run_sync(run) == calls
    assert node.calls == calls
