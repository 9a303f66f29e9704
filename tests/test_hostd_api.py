"""The node API end to end: real hostd over real HTTP on loopback, real simulated VMs
(limiquantix-simvm processes: a pty standing for the virtio port, the real agent on it).

The two tests that move files of several MiB reach an agent in this process on its own
Unix socket instead (``unix_stack``): a pty carries ~6 MB/s, so their 10 MiB took seconds
there; hostd reads and writes a chardev socket the same either way."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio
from conftest import QUIET_AGENT, SimVMPool, wait_gone
from test_connect import BIG_JSON, BodiesSeen, method_info
from test_connect import _bodies_seen as _bodies_seen  # the fixture

from limiquantix.agent import Agent, AgentConfig
from limiquantix.hostd import DiscoveryConfig, HostdConfig, serve
from limiquantix.hostd._api import DEFAULT_READ_BYTES, STREAM_CHUNK_BYTES
from limiquantix.hostd.simvm import SimVMProcess
from limiquantix.protocol.rpc.server import _serving as serving

TOKEN = "test-token-0123456789"
SERVICE = "/limiquantix.node.v1.NodeDaemonService"
DEADLINE_S = 30


@dataclass
class Stack:
    url: str
    sims: dict[str, SimVMProcess]
    client: httpx.AsyncClient

    async def call(self, method: str, body: dict[str, Any], *, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return await self.client.post(f"{self.url}{SERVICE}/{method}", json=body, headers=headers)

    async def ok(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.call(method, body)
        assert r.status_code == 200, r.text
        return r.json()

    async def wait_state(self, vm_id: str, *states: str) -> dict[str, Any]:
        while True:
            vm = await self.ok("GetVM", {"vmId": vm_id})
            if vm["agent"]["state"] in states:
                return vm
            await trio.sleep(0.05)


@asynccontextmanager
async def serving_hostd(nursery: trio.Nursery, vms: Path, sims: dict[str, SimVMProcess]) -> AsyncIterator[Stack]:
    """A new hostd finding the VMs in ``vms``, once each of them is connected."""
    config = HostdConfig(
        listen="127.0.0.1:0",
        token=TOKEN,
        discovery=DiscoveryConfig(socket_dir=str(vms), libvirt_channel_root=""),
    )
    stop = trio.Event()
    binds = await nursery.start(partial(serve, config, shutdown=stop))
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        st = Stack(binds[0], sims, client)
        with trio.fail_after(DEADLINE_S):
            for found in vms.iterdir():
                await st.wait_state(found.name.removesuffix(".agent.sock"), "AGENT_STATE_CONNECTED")
        yield st
    stop.set()


@pytest.fixture
async def stack(nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool) -> AsyncIterator[Stack]:
    """A new hostd finding two simulated VMs in its socket directory; the VMs, whose guests
    only answer calls (test_guest_shutdown_stops_the_simulated_vm's is not lent again), are
    the session's (conftest.SimVMPool), quiet ones as test_hostd_vm's and the controller's
    inventory tests borrow (no test here reads telemetry): one start serves them all."""
    vms = short_tmp / "vms"
    vms.mkdir()
    with simvm_pool.lend({f"vm{i}": vms / f"vm{i}.agent.sock" for i in range(2)}, agent_args=QUIET_AGENT) as sims:
        with trio.fail_after(DEADLINE_S):
            for sim in sims.values():
                await sim.wait_ready()
        async with serving_hostd(nursery, vms, sims) as st:
            yield st


@pytest.fixture
async def unix_stack(nursery: trio.Nursery, short_tmp: Path) -> AsyncIterator[Stack]:
    """A new hostd finding one VM, ``vm0``, whose socket is an agent's own (``unix-listen``, in
    this process, on this file system), not a simulated VM's pty: for the tests that move MiBs."""
    vms = short_tmp / "vms"
    vms.mkdir()
    agent = Agent(AgentConfig(transport="unix-listen", socket=str(vms / "vm0.agent.sock"), telemetry_interval_s=0))
    await nursery.start(agent.run)
    async with serving_hostd(nursery, vms, {}) as st:
        yield st


def envelopes(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    out, i = [], 0
    while i < len(data):
        flags, n = struct.unpack(">BI", data[i : i + 5])
        out.append((flags, json.loads(data[i + 5 : i + 5 + n])))
        i += 5 + n
    return out


@pytest.mark.trio
async def test_list_get_ping(stack: Stack) -> None:
    listed = await stack.ok("ListVMs", {})
    assert sorted(v["vmId"] for v in listed["vms"]) == ["vm0", "vm1"]
    vm = await stack.ok("GetVM", {"vmId": "vm0"})
    assert vm["agent"]["connected"] is True
    assert vm["agent"]["identity"]["kernel"]
    ping = await stack.ok("PingAgent", {"vmId": "vm0"})
    assert ping["connected"] is True and ping["version"] and ping["latencyMs"] > 0


@pytest.mark.trio
async def test_a_refused_token_is_answered_before_a_large_body_is_read_or_decoded(
    nursery: trio.Nursery, short_tmp: Path, bodies_seen: BodiesSeen
) -> None:
    """hostd's node API: a wrong or missing token is refused from the headers (the router's
    authenticate hook), before the body is read or parsed (tests/test_connect.py has the
    same for each protocol); a hostd of its own, without VMs, in this process."""
    vms = short_tmp / "vms"
    vms.mkdir()
    async with serving_hostd(nursery, vms, {}) as st:
        url = f"{st.url}{SERVICE}/WriteGuestFile"
        for auth in ({}, {"Authorization": "Bearer wrong"}):
            r = await st.client.post(url, content=BIG_JSON, headers={"Content-Type": "application/json", **auth})
            assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
        assert bodies_seen == []
        r = await st.client.post(
            url, content=BIG_JSON, headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        )
        # Read, decoded, then refused by the field limits (which run on the decoded message).
        assert r.json()["message"] == "path is 4194304 bytes; the limit is 4096", r.text
        assert bodies_seen == ["read", "decode"]


@pytest.mark.trio
async def test_auth_and_bad_input(stack: Stack) -> None:
    for token in (None, "wrong", TOKEN + "x"):
        r = await stack.call("ListVMs", {}, token=token)
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
        # The controller's details: the reason as a typed Connect error detail.
        [detail] = r.json()["details"]
        assert detail["type"] == "limiquantix.agent.v1.Error"
        assert detail["debug"]["reason"] == ("missing_token" if token is None else "invalid_token")
    r = await stack.client.post(
        f"{stack.url}{SERVICE}/ListVMs",
        content=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = await stack.call("NoSuchMethod", {})
    assert r.json()["code"] == "unimplemented"
    r = await stack.call("GetVM", {"vmId": "nope"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    health = await stack.client.get(f"{stack.url}/healthz")
    assert health.status_code == 200 and health.json()["vms"] == 2


@pytest.mark.trio
@pytest.mark.parametrize("huge_mib", [1, pytest.param(16, marks=pytest.mark.slow)])
async def test_oversized_ids_and_fields_are_refused_before_reaching_the_agent(stack: Stack, huge_mib: int) -> None:
    """hostd names its own fields (an agent would name ``message_id``, ``execute.argv``).

    The executionId limit is 128 bytes: 1 MiB is as far over it as the 16 MiB id that once
    reached the agent and crashed it (the slow tier sends that one; ~2 CPU-s of JSON)."""
    huge = "x" * (huge_mib * 1024 * 1024)
    cases = [
        ("ExecuteInGuest", {"vmId": "vm0", "executionId": huge, "request": {"argv": ["true"]}}, "execution_id"),
        ("ExecuteInGuest", {"vmId": "vm0", "request": {"argv": ["a"] * 5000}}, "request.argv"),
        ("CancelExecution", {"vmId": "vm0", "executionId": "c" * 200}, "execution_id"),
        ("GetVM", {"vmId": "v" * 1000}, "vm_id"),
        ("StatGuestFile", {"vmId": "vm0", "path": "/" + "p" * 5000}, "path"),
        ("ResetGuestPassword", {"vmId": "vm0", "username": "u" * 300, "password": "x"}, "username"),
    ]
    for method, body, name in cases:
        r = await stack.call(method, body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "invalid_argument"
        message = r.json()["message"]
        assert message.startswith(f"{name} is ") and "the limit is" in message, message
        assert len(message) < 200  # the value itself is never echoed
    text = (await stack.client.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
    assert 'lqx_hostd_rpcs_total{code="invalid_argument",method="ExecuteInGuest"} 2.0' in text
    # The VM and its agent are served as before.
    done = await stack.ok("ExecuteInGuest", {"vmId": "vm0", "request": {"argv": ["sh", "-c", "echo ok"]}})
    assert base64.b64decode(done["result"]["stdout"]) == b"ok\n"
    vm = await stack.ok("GetVM", {"vmId": "vm0"})
    assert vm["agent"]["state"] == "AGENT_STATE_CONNECTED"


@pytest.mark.trio
async def test_execute_and_cancel(stack: Stack) -> None:
    done = await stack.ok("ExecuteInGuest", {"vmId": "vm0", "request": {"argv": ["sh", "-c", "echo hi; exit 3"]}})
    assert done["result"]["exitCode"] == 3
    assert base64.b64decode(done["result"]["stdout"]) == b"hi\n"
    assert done["executionId"]

    async def long_run(task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        result["r"] = await stack.ok(
            "ExecuteInGuest", {"vmId": "vm1", "executionId": "exec-cancel-1", "request": {"command": "sleep 30"}}
        )

    result: dict[str, Any] = {}
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(long_run)
            while True:
                found = await stack.ok("CancelExecution", {"vmId": "vm1", "executionId": "exec-cancel-1"})
                if found["found"]:
                    break
                await trio.sleep(0.02)  # the request may not have reached the agent yet
    assert result["r"]["result"]["exitReason"] == "EXIT_REASON_CANCELLED"


@pytest.mark.trio
async def test_stream_output_and_client_disconnect_kills_the_command(stack: Stack) -> None:
    body = json.dumps({"vmId": "vm0", "request": {"command": "echo pid $$; exec sleep 300"}}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/connect+json"}
    envelope = struct.pack(">BI", 0, len(body)) + body
    with trio.fail_after(DEADLINE_S):
        async with stack.client.stream(
            "POST", f"{stack.url}{SERVICE}/ExecuteInGuestStream", content=envelope, headers=headers
        ) as resp:
            assert resp.status_code == 200
            buf = b""
            pid = None
            async for chunk in resp.aiter_raw():
                buf += chunk
                for _, msg in envelopes(buf[: _complete(buf)]):
                    if "output" in msg:
                        pid = int(base64.b64decode(msg["output"]["data"]).split()[1])
                if pid:
                    break
        # The client is gone: the command must be killed in the guest.
        assert pid is not None and psutil.pid_exists(pid)
        await wait_gone(pid, within=DEADLINE_S)


def _complete(buf: bytes) -> int:
    """Length of the whole envelopes at the start of ``buf``."""
    i = 0
    while i + 5 <= len(buf):
        (n,) = struct.unpack(">I", buf[i + 1 : i + 5])
        if i + 5 + n > len(buf):
            break
        i += 5 + n
    return i


@pytest.mark.trio
async def test_stream_to_the_end(stack: Stack) -> None:
    body = json.dumps({"vmId": "vm1", "request": {"command": "echo a; echo b >&2; exit 2"}}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/connect+json"}
    r = await stack.client.post(
        f"{stack.url}{SERVICE}/ExecuteInGuestStream", content=struct.pack(">BI", 0, len(body)) + body, headers=headers
    )
    msgs = envelopes(r.content)
    assert msgs[0][1]["executionId"]
    outputs = [m["output"] for _, m in msgs if "output" in m]
    assert sorted(base64.b64decode(o["data"]) for o in outputs) == [b"a\n", b"b\n"]
    results = [m["result"] for _, m in msgs if "result" in m]
    assert results[0]["exitCode"] == 2
    assert msgs[-1][0] == 0x02 and "error" not in msgs[-1][1]


@pytest.mark.trio
async def test_a_command_that_ends_at_once_streams_in_one_write(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """ExecuteInGuestStream of ``true``: the head, the execution id, the result, the end-of-stream
    message and the chunked end leave hostd in one write, as a unary answer does (the id waits
    with the head for the next message, and nothing between the result and the end lets the
    result go alone: protocol/rpc/server/_serving.py, protocol/_agentclient.py). Every write
    hostd's server makes is seen (trio.SocketStream.send_all, on hostd's port); the head's
    limit is set beyond the test's deadline, so that a slow machine cannot split them."""
    monkeypatch.setattr(serving, "STREAM_HEAD_HOLD_S", 3600.0)
    port = int(stack.url.rsplit(":", 1)[1])
    writes: list[bytes] = []
    send_all = trio.SocketStream.send_all

    async def seen(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        if self.socket.getsockname()[1] == port:
            writes.append(bytes(data))
        await send_all(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", seen)
    body = json.dumps({"vmId": "vm0", "request": {"command": "true"}}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/connect+json"}
    with trio.fail_after(DEADLINE_S):
        r = await stack.client.post(
            f"{stack.url}{SERVICE}/ExecuteInGuestStream",
            content=struct.pack(">BI", 0, len(body)) + body,
            headers=headers,
        )
    msgs = envelopes(r.content)
    assert [next(iter(m)) if m else "" for _, m in msgs] == ["executionId", "result", ""]
    assert msgs[1][1]["result"]["exitCode"] == 0 and msgs[-1][0] == 0x02
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"\r\n0\r\n\r\n")


@pytest.mark.trio
async def test_files_round_trip_with_sha256(unix_stack: Stack, short_tmp: Path) -> None:
    stack = unix_stack
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = str(short_tmp / "guest-file.bin")
    w = await stack.ok(
        "WriteGuestFile", {"vmId": "vm0", "path": path, "content": base64.b64encode(data).decode(), "mode": 0o600}
    )
    assert int(w["bytesWritten"]) == len(data)
    assert base64.b64decode(w["sha256"]) == hashlib.sha256(data).digest()
    r = await stack.ok("ReadGuestFile", {"vmId": "vm0", "path": path})
    assert base64.b64decode(r["content"]) == data
    ranged = await stack.ok("ReadGuestFile", {"vmId": "vm0", "path": path, "offset": 10, "length": 100})
    assert base64.b64decode(ranged["content"]) == data[10:110]
    st = await stack.ok("StatGuestFile", {"vmId": "vm0", "path": path})
    assert int(st["size"]) == len(data) and st["mode"] == 0o600
    listing = await stack.ok("ListGuestDirectory", {"vmId": "vm0", "path": str(short_tmp)})
    assert "guest-file.bin" in [e["name"] for e in listing["entries"]]
    bad = await stack.call("ReadGuestFile", {"vmId": "vm0", "path": "/etc/../etc/shadow"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_argument"


@pytest.mark.trio
async def test_a_file_over_the_default_read_length_is_refused_and_streams_in_1_mib_chunks(
    unix_stack: Stack, short_tmp: Path
) -> None:
    stack = unix_stack
    data = os.urandom(DEFAULT_READ_BYTES + 1)
    path = short_tmp / "big.bin"
    path.write_bytes(data)  # the simulated guest shares this file system
    r = await stack.call("ReadGuestFile", {"vmId": "vm0", "path": str(path)})
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted", r.text
    assert "ReadGuestFileStream" in r.json()["message"]
    whole = await stack.ok("ReadGuestFile", {"vmId": "vm0", "path": str(path), "length": len(data)})
    assert base64.b64decode(whole["content"]) == data

    body = json.dumps({"vmId": "vm0", "path": str(path)}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/connect+json"}
    r = await stack.client.post(
        f"{stack.url}{SERVICE}/ReadGuestFileStream", content=struct.pack(">BI", 0, len(body)) + body, headers=headers
    )
    msgs = envelopes(r.content)
    assert msgs[-1] == (0x02, {})
    chunks = [m for _, m in msgs[:-1]]
    pieces = [base64.b64decode(c.get("data", "")) for c in chunks]
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= STREAM_CHUNK_BYTES and len(pieces) == 4
    assert [c.get("eof", False) for c in chunks] == [False] * 3 + [True]
    assert base64.b64decode(chunks[-1]["sha256"]) == hashlib.sha256(data).digest()
    assert {int(c["fileSize"]) for c in chunks} == {len(data)}


@pytest.mark.trio
async def test_password_reset_goes_to_the_stand_in(stack: Stack) -> None:
    shadow_before = Path("/etc/shadow").read_bytes() if Path("/etc/shadow").exists() else b""
    r = await stack.ok("ResetGuestPassword", {"vmId": "vm0", "username": "alice", "password": "s3cret!"})
    assert r == {"expired": False}
    if shadow_before:
        assert Path("/etc/shadow").read_bytes() == shadow_before


@pytest.mark.trio
async def test_metrics(stack: Stack) -> None:
    await stack.ok("PingAgent", {"vmId": "vm0"})
    # The per-method counts are not for anyone who can reach the port: the node API's token.
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = await stack.client.get(f"{stack.url}/metrics", headers=headers)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"
        assert refused.json()["details"][0]["debug"]["reason"] in {"missing_token", "invalid_token"}
        assert "lqx_hostd" not in refused.text
    text = (await stack.client.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
    assert 'lqx_hostd_vms{state="connected"} 2.0' in text
    assert 'lqx_hostd_rpcs_total{code="ok",method="PingAgent"}' in text
    assert "lqx_hostd_rpc_seconds_bucket" in text
    # What a hostile guest costs shows here (test_hostd_vm makes them non-zero).
    assert "lqx_hostd_agent_rate_limited_events_total 0.0" in text
    assert "lqx_hostd_agent_unverified_headers_total 0.0" in text


# --------------------------------------------------------- connect-python as oracle


@pytest.mark.trio
@pytest.mark.parametrize("proto_json", [True, False], ids=["json", "proto"])
async def test_connect_python_client(stack: Stack, proto_json: bool) -> None:
    """A real Connect client nobody here wrote, against the real node API."""
    from connectrpc.client import ConnectClientSync
    from connectrpc.code import Code
    from connectrpc.errors import ConnectError

    from limiquantix.protocol._gen import agent_pb2 as apb
    from limiquantix.protocol._gen import node_daemon_pb2 as npb

    auth = {"Authorization": f"Bearer {TOKEN}"}

    def calls() -> tuple[Any, Any, list[Any], Any]:
        with ConnectClientSync(stack.url, proto_json=proto_json) as c:
            vms = c.execute_unary(request=npb.ListVMsRequest(), method=method_info("ListVMs"), headers=auth)
            run = c.execute_unary(
                request=npb.ExecuteInGuestRequest(vm_id="vm0", request=apb.ExecuteRequest(argv=["echo", "oracle"])),
                method=method_info("ExecuteInGuest"),
                headers=auth,
            )
            events = list(
                c.execute_server_stream(
                    request=npb.ExecuteInGuestRequest(vm_id="vm1", request=apb.ExecuteRequest(command="echo s")),
                    method=method_info("ExecuteInGuestStream"),
                    headers=auth,
                )
            )
            try:
                c.execute_unary(
                    request=npb.ListVMsRequest(), method=method_info("ListVMs"), headers={"Authorization": "Bearer no"}
                )
            except ConnectError as exc:
                refused = exc
            return vms, run, events, refused

    with trio.fail_after(DEADLINE_S):
        vms, run, events, refused = await trio.to_thread.run_sync(calls)
    assert sorted(v.vm_id for v in vms.vms) == ["vm0", "vm1"]
    assert run.result.stdout == b"oracle\n" and run.result.exit_reason == apb.EXIT_REASON_EXITED
    assert [e.WhichOneof("event") for e in events] == ["execution_id", "output", "result"]
    assert events[1].output.data == b"s\n"
    assert refused.code == Code.UNAUTHENTICATED


# ------------------------------------------------------------------ power


@pytest.mark.trio
async def test_guest_shutdown_stops_the_simulated_vm(stack: Stack) -> None:
    """Last in the module: the VM it powers off is the pool's, which starts another (two
    processes) only for a later test that needs one."""
    r = await stack.ok("GuestShutdown", {"vmId": "vm1", "message": "bye"})
    assert r["accepted"] is True
    with trio.fail_after(DEADLINE_S):
        assert await stack.sims["vm1"].wait_exit() == 0
        vm = await stack.wait_state("vm1", "AGENT_STATE_NO_SOCKET")
    assert vm["agent"]["connected"] is False
    ping = await stack.ok("PingAgent", {"vmId": "vm1"})
    assert ping["connected"] is False and ping["error"]
