"""The controller end to end: a real controller (in-process, temp SQLite) and a real hostd that
registers with it, real simulated VMs (limiquantix-simvm processes with the real agent), real
HTTP on loopback, ports chosen by the OS. The simulated VMs are the session's (lent by
conftest.SimVMPool to each test: starting two per test was most of these tests' CPU time)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import psutil
import pytest
import trio
from conftest import SimVMPool, db_tempdir, loopback_client, wait_gone
from test_connect import BIG_JSON, BodiesSeen
from test_connect import _bodies_seen as _bodies_seen  # the fixture

from limiquantix.controller._auth import Role
from limiquantix.controller._daemon import ControllerConfig
from limiquantix.controller._daemon import serve as controller_serve
from limiquantix.controller._models import AuditAction, AuditOutcome, AuditQuery
from limiquantix.controller.store import SQLiteStore
from limiquantix.hostd import TOKEN_ENV, DiscoveryConfig, HostdConfig, VMEntry
from limiquantix.hostd import serve as hostd_serve
from limiquantix.hostd.simvm import SimVMProcess
from limiquantix.protocol._gen import vm_service_pb2 as api_pb

VM = "/limiquantix.compute.v1.VMService"
FLEET = "/limiquantix.compute.v1.FleetService"
NODES = "/limiquantix.compute.v1.NodeRegistryService"
HOSTD_TOKEN = "hostd-token-0123456789abcdef"
DEADLINE_S = 30
#: Short, so the tests see registration, heartbeats and their absence quickly; not shorter: a
#: heartbeat costs ~6 ms of CPU here (hostd's call, the controller's answer), so a stack that
#: sits for 10 s takes 1.3 CPU-s at 0.05 s, 0.76 at 0.1 (a stack's first wait: 0.05 s longer).
HEARTBEAT_INTERVAL_S = 0.1
HEARTBEAT_TIMEOUT_S = 1.5
LABELS = {"vm0": {"env": "prod"}, "vm1": {"env": "dev"}}


@dataclass
class Stack:
    short_tmp: Path
    db: Path
    tokens: dict[str, str]
    client: httpx.AsyncClient
    nursery: trio.Nursery
    url: str = ""
    port: int = 0
    hostd_url: str = ""
    controller_stop: trio.Event = field(default_factory=trio.Event)
    controller_done: trio.Event = field(default_factory=trio.Event)
    hostd_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: The controllers' heartbeat_timeout_s.
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S

    async def start_controller(self, *, port: int = 0, admin_token: str | None = None, **settings: Any) -> None:
        """The controller on this stack's database; ``settings``: more ControllerConfig fields."""
        self.controller_stop, self.controller_done = trio.Event(), trio.Event()
        config = ControllerConfig(
            listen=f"127.0.0.1:{port}", db=str(self.db), heartbeat_timeout_s=self.heartbeat_timeout_s, **settings
        )
        done = self.controller_done

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await controller_serve(
                    config, admin_token=admin_token, shutdown=self.controller_stop, task_status=task_status
                )
            finally:
                done.set()

        binds = await self.nursery.start(run)
        self.url = binds[0]
        self.port = int(self.url.rpartition(":")[2])

    async def start_hostd(
        self,
        vms: dict[str, dict[str, str]],
        *,
        node_id: str = "host-a",
        who: str = "node",
        scope: trio.CancelScope | None = None,
        discovery: DiscoveryConfig | None = None,
    ) -> None:
        """hostd as node ``node_id`` of this controller (with ``who``'s node token), serving
        ``vms`` (id -> labels) at ``short_tmp/<id>.sock`` and those ``discovery`` finds (default:
        none); cancelling ``scope`` (default ``hostd_scope``) kills it abruptly."""
        config = HostdConfig(
            listen="127.0.0.1:0",
            token=HOSTD_TOKEN,
            node_id=node_id,
            controller_url=self.url,
            controller_token=self.tokens[who],
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            discovery=discovery or DiscoveryConfig(socket_dir="", libvirt_channel_root=""),
            vms=tuple(
                VMEntry(id=vm_id, socket=str(self.short_tmp / f"{vm_id}.sock"), labels=labels)
                for vm_id, labels in vms.items()
            ),
        )

        async def run_hostd(task_status: trio.TaskStatus[list[str]]) -> None:
            with scope or self.hostd_scope:
                await hostd_serve(config, shutdown=trio.Event(), task_status=task_status)

        self.hostd_url = (await self.nursery.start(run_hostd))[0]

    async def stop_controller(self) -> None:
        # A fresh client for the next controller (this one's connections die with this one).
        await self.client.aclose()
        self.client = loopback_client(timeout=DEADLINE_S)
        self.controller_stop.set()
        with trio.fail_after(DEADLINE_S):
            await self.controller_done.wait()

    async def call(
        self, method: str, body: dict[str, Any], *, who: str | None = "admin", service: str = VM
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who is not None else {}
        return await self.client.post(f"{self.url}{service}/{method}", json=body, headers=headers)

    async def ok(self, method: str, body: dict[str, Any], *, who: str = "admin", service: str = VM) -> dict[str, Any]:
        r = await self.call(method, body, who=who, service=service)
        assert r.status_code == 200, r.text
        return r.json()

    async def wait_vms(self, state: str = "connected") -> list[dict[str, Any]]:
        with trio.fail_after(DEADLINE_S):
            while True:
                r = await self.call("ListVMs", {})
                vms = r.json().get("vms", []) if r.status_code == 200 else []
                if len(vms) == len(LABELS) and all(v["agentState"] == state and v["nodeReachable"] for v in vms):
                    return vms
                await trio.sleep(0.05)


#: The users _make_tokens creates by default: (name, role, label scope).
TOKEN_USERS: Final = (
    ("admin", Role.ADMIN, None),
    ("operator", Role.OPERATOR, None),
    ("viewer", Role.VIEWER, None),
    ("scoped", Role.OPERATOR, {"env": "prod"}),
    ("node", Role.NODE, None),
)


async def _make_tokens(
    db: Path, users: tuple[tuple[str, Role, dict[str, str] | None], ...] = TOKEN_USERS
) -> dict[str, str]:
    """A token for each user, by name."""
    async with await SQLiteStore.open(db) as store:
        tokens = {}
        for who, role, scope in users:
            await store.ensure_user(who)
            _, tokens[who] = await store.create_token(user=who, role=role, label_scope=scope)
        return tokens


@pytest.fixture
async def stack(nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool) -> AsyncIterator[Stack]:
    """A new controller (new database) and hostd; the simulated VMs, whose guests only answer
    calls here, are the session's (conftest.SimVMPool), at ``short_tmp/<vm id>.sock``."""
    links = {vm_id: short_tmp / f"{vm_id}.sock" for vm_id in LABELS}
    with simvm_pool.lend(links, agent_args=["--telemetry-interval-s=0.5"]) as sims:
        async with running_controller(nursery, short_tmp, sims) as st:
            await st.start_hostd(LABELS)
            await st.wait_vms()
            yield st


@asynccontextmanager
async def running_controller(
    nursery: trio.Nursery,
    short_tmp: Path,
    sims: Mapping[str, SimVMProcess],
    *,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    db_dir: Path | None = None,
) -> AsyncIterator[Stack]:
    """A controller on a new database in ``db_dir`` (default: a conftest.db_tempdir, gone
    after; a token for each of TOKEN_USERS), once ``sims`` accept connections; the hostd the
    test starts is killed, the controller stopped, after."""
    with contextlib.nullcontext(db_dir) if db_dir else db_tempdir() as db_dir:
        db = db_dir / "controller.db"
        tokens = await _make_tokens(db)
        with trio.fail_after(DEADLINE_S):
            for sim in sims.values():
                await sim.wait_ready()
        async with loopback_client(timeout=DEADLINE_S) as client:
            st = Stack(short_tmp, db, tokens, client, nursery, heartbeat_timeout_s=heartbeat_timeout_s)
            await st.start_controller()
            try:
                yield st
            finally:  # stopped before its database goes, the test failed or not
                st.hostd_scope.cancel()
                with trio.CancelScope(shield=True):
                    await st.stop_controller()
                    await st.client.aclose()


def _envelopes(buf: bytes) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The whole envelopes at the start of ``buf``, and how many bytes they take."""
    out, i = [], 0
    while i + 5 <= len(buf):
        flags, n = struct.unpack(">BI", buf[i : i + 5])
        if i + 5 + n > len(buf):
            break
        out.append((flags, json.loads(buf[i + 5 : i + 5 + n])))
        i += 5 + n
    return out, i


# ---------------------------------------------------------------- the reference's examples


@pytest.mark.trio
async def test_reference_curl_examples(stack: Stack) -> None:
    """Section 8 of the reference, as written plus an Authorization header (httpx and real curl)."""
    ping = await stack.ok("PingAgent", {"vmId": "vm0"})
    assert ping["connected"] is True and ping["version"]
    done = await stack.ok("ExecuteScript", {"vmId": "vm0", "command": "uname -a", "timeoutSeconds": 30})
    assert done["exitCode"] == 0 and "Linux" in done["stdout"]
    assert (
        done["timedOut"] is False
        and isinstance(done["durationMs"], int)
        and done["durationMs"] >= 0
        and done["exitReason"] == "exited"
    )
    curl = shutil.which("curl")
    if curl is None:  # pragma: no cover - curl is on every CI image we use
        pytest.skip("curl not installed")
    auth = f"Authorization: Bearer {stack.tokens['operator']}"
    for method, body in (
        ("PingAgent", '{"vmId": "vm0"}'),
        ("ExecuteScript", '{\n    "vmId": "vm0",\n    "command": "uname -a",\n    "timeoutSeconds": 30\n  }'),
    ):
        argv = [curl, "-sS", "-X", "POST", f"{stack.url}{VM}/{method}", "-H", "Content-Type: application/json",
                "-H", auth, "-d", body]  # fmt: skip
        proc = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
        answer = json.loads(proc.stdout)
        if method == "PingAgent":
            assert answer["connected"] is True and answer["version"] == ping["version"]
        else:
            assert answer["exitCode"] == 0 and "Linux" in answer["stdout"] and "timedOut" in answer


# ---------------------------------------------------------------- nodes and inventory


@pytest.mark.trio
async def test_registration_heartbeats_and_inventory(stack: Stack) -> None:
    nodes = (await stack.ok("ListNodes", {}, service=NODES, who="viewer"))["nodes"]
    assert [(n["nodeId"], n["reachable"], n["vmCount"]) for n in nodes] == [("host-a", True, 2)]
    assert "token" not in nodes[0] and nodes[0]["url"].startswith("http://127.0.0.1:")
    first = nodes[0]["lastHeartbeat"]
    with trio.fail_after(DEADLINE_S):
        while (await stack.ok("ListNodes", {}, service=NODES))["nodes"][0]["lastHeartbeat"] == first:
            await trio.sleep(0.05)
    vms = (await stack.ok("ListVMs", {}, who="viewer"))["vms"]
    assert [(v["vmId"], v["nodeId"], v["labels"], v["agentState"]) for v in vms] == [
        ("vm0", "host-a", {"env": "prod"}, "connected"),
        ("vm1", "host-a", {"env": "dev"}, "connected"),
    ]
    by_label = await stack.ok("ListVMs", {"labels": {"env": "dev"}})
    assert [v["vmId"] for v in by_label["vms"]] == ["vm1"]
    assert (await stack.ok("ListVMs", {"state": "no_socket"}))["vms"] == []
    assert (await stack.ok("ListVMs", {"nodeId": "other"}))["vms"] == []
    page1 = await stack.ok("ListVMs", {"pageSize": 1})
    page2 = await stack.ok("ListVMs", {"pageSize": 1, "pageToken": page1["nextPageToken"]})
    assert [v["vmId"] for v in page1["vms"] + page2["vms"]] == ["vm0", "vm1"] and page2["nextPageToken"] == ""
    # A label-scoped token lists only what it may reach.
    assert [v["vmId"] for v in (await stack.ok("ListVMs", {}, who="scoped"))["vms"]] == ["vm0"]
    # ListVMs carries each agent in brief from the heartbeats (a fleet view needs no call per VM).
    for v in vms:
        assert v["agentVersion"] and v["kernel"] and v["hostname"] and v["os"] and v["ipAddresses"], v
        assert "lastSeen" in v
    with trio.fail_after(DEADLINE_S):  # telemetry follows within its interval
        while not all(v.get("memoryPercent") for v in (await stack.ok("ListVMs", {}))["vms"]):
            await trio.sleep(0.05)
    brief = (await stack.ok("ListVMs", {}))["vms"][0]
    assert 0 < brief["memoryPercent"] <= 100 and brief["uptimeSeconds"] > 0 and brief["cpuPercent"] >= 0
    vm = await stack.ok("GetVM", {"vmId": "vm0"}, who="viewer")
    assert vm["agentVersion"] and vm["kernel"] and vm["hostname"] and vm["nodeReachable"] is True
    # GetVM adds the whole identity and the latest telemetry report.
    assert "ping" in vm["identity"]["capabilities"] and vm["identity"]["interfaces"]
    assert vm["telemetry"]["memory"]["totalBytes"] and vm["telemetry"]["filesystems"]
    assert vm["memoryPercent"] == vm["telemetry"]["memory"]["percent"]
    r = await stack.call("GetVM", {"vmId": "ghost"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    health = await stack.client.get(f"{stack.url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # Every endpoint but /healthz needs a token: /metrics too (any role).
    refused = await stack.client.get(f"{stack.url}/metrics")
    assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"
    metrics = await stack.client.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.tokens['viewer']}"}
    )
    assert 'lqx_controller_rpcs_total{code="ok",method="ListVMs"}' in metrics.text


# ---------------------------------------------------------------- authorization

#: RPC → (service, body aimed at a VM or node that does not exist, who may call it).
#: Callers allowed past the permission check then get not_found / invalid_argument
#: (so the matrix never touches a real VM); the others 403; no token 401.
_V, _O, _A, _N = "viewer", "operator", "admin", "node"
MATRIX: dict[str, tuple[str, dict[str, Any], set[str]]] = {
    "ListVMs": (VM, {}, {_V, _O, _A, "scoped"}),
    "GetVM": (VM, {"vmId": "ghost"}, {_V, _O, _A, "scoped"}),
    "PingAgent": (VM, {"vmId": "ghost"}, {_V, _O, _A, "scoped"}),
    "ExecuteScript": (VM, {"vmId": "ghost", "command": "true"}, {_O, _A, "scoped"}),
    "CancelExecution": (VM, {"vmId": "ghost", "executionId": "x1"}, {_O, _A, "scoped"}),
    "ReadGuestFile": (VM, {"vmId": "ghost", "path": "/etc/hostname"}, {_O, _A, "scoped"}),
    "WriteGuestFile": (VM, {"vmId": "ghost", "path": "/tmp/x", "content": ""}, {_O, _A, "scoped"}),
    "StatGuestFile": (VM, {"vmId": "ghost", "path": "/"}, {_O, _A, "scoped"}),
    "ListGuestDirectory": (VM, {"vmId": "ghost", "path": "/"}, {_O, _A, "scoped"}),
    "GuestShutdown": (VM, {"vmId": "ghost"}, {_O, _A, "scoped"}),
    "ResetGuestPassword": (VM, {"vmId": "ghost", "username": "u", "password": "p"}, {_A}),
    "ListNodes": (NODES, {}, {_V, _O, _A, "scoped"}),
    "Heartbeat": (NODES, {"nodeId": "ghost-node"}, {_A, _N}),
    "RegisterNode": (NODES, {"nodeId": "ghost-node", "url": "ftp://x", "token": "t"}, {_A, _N}),
}


@pytest.mark.trio
async def test_auth_matrix(stack: Stack) -> None:
    failures = []
    for method, (service, body, allowed) in MATRIX.items():
        for who in (None, _V, _O, _A, "scoped", _N):
            r = await stack.call(method, body, who=who, service=service)
            code = r.json().get("code", "ok")
            if who is None:
                expected = {"unauthenticated"}
            elif who in allowed:
                expected = {"ok", "not_found", "invalid_argument"}
            else:
                expected = {"permission_denied"}
            if code not in expected:
                failures.append((method, who, r.status_code, code))
            assert r.status_code in {200, 400, 401, 403, 404}
    assert failures == []
    r = await stack.client.post(f"{stack.url}{VM}/ListVMs", json={}, headers={"Authorization": "Bearer lqx_nope"})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    # The label scope on real VMs: vm0 is env=prod (in scope), vm1 env=dev (outside).
    assert (await stack.ok("PingAgent", {"vmId": "vm0"}, who="scoped"))["connected"] is True
    assert (await stack.ok("ExecuteScript", {"vmId": "vm0", "command": "true"}, who="scoped"))["exitCode"] == 0
    for method, body in (("PingAgent", {"vmId": "vm1"}), ("ExecuteScript", {"vmId": "vm1", "command": "true"})):
        r = await stack.call(method, body, who="scoped")
        assert r.status_code == 403 and r.json()["code"] == "permission_denied"


# ---------------------------------------------------------------- commands, files, audit


@pytest.mark.trio
async def test_exec_options_and_error_codes(stack: Stack) -> None:
    done = await stack.ok(
        "ExecuteScript",
        {"vmId": "vm0", "command": "sh", "args": ["-c", 'printf "%s:%s:" "$GREETING" "$(pwd)"; cat; exit 3'],
         "environment": {"GREETING": "hi"}, "workingDirectory": "/", "stdin": "aW5wdXQ="},
    )  # fmt: skip
    assert done["exitCode"] == 3 and done["stdout"] == "hi:/:input" and done["executionId"]
    # The two timeouts (a second each, the least timeoutSeconds says) run at once.
    answers: dict[str, dict[str, Any]] = {}

    async def run_to_timeout(name: str, command: str) -> None:
        answers[name] = await stack.ok("ExecuteScript", {"vmId": "vm0", "command": command, "timeoutSeconds": 1})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_to_timeout, "timed", "sleep 5")
        nursery.start_soon(run_to_timeout, "trapped", "trap 'exit 0' TERM; sleep 30 & wait")
    timed, trapped = answers["timed"], answers["trapped"]
    assert timed["timedOut"] is True and timed["exitReason"] == "timed_out"
    # No exit code unless it exited: a script checking exitCode == 0 must not count a timeout as success.
    assert "exitCode" not in timed, timed
    # Even when the command exits 0 on the SIGTERM of its timeout.
    assert trapped["exitReason"] == "timed_out" and "exitCode" not in trapped, trapped
    zero = await stack.ok("ExecuteScript", {"vmId": "vm0", "command": "true"})
    assert zero["exitCode"] == 0 and zero["exitReason"] == "exited"  # present when it exited, 0 included
    async with await SQLiteStore.open(stack.db) as store:
        rows = (await store.query_audit(AuditQuery(action=AuditAction.EXEC, limit=10))).records
    by_command = {r.detail.command: r for r in rows}
    # Exited 3: outcome "failure" with the code, not plain "success"; a timeout has no code.
    assert (by_command["sh"].outcome, by_command["sh"].exit_code) == (AuditOutcome.FAILURE, 3)
    assert (by_command["sleep 5"].outcome, by_command["sleep 5"].exit_code) == (AuditOutcome.ERROR, None)
    assert (by_command["true"].outcome, by_command["true"].exit_code) == (AuditOutcome.SUCCESS, 0)
    # Codes survive agent → hostd → controller.
    r = await stack.call("ReadGuestFile", {"vmId": "vm0", "path": str(stack.short_tmp / "missing")})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = await stack.call("ExecuteScript", {"vmId": "vm0"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"


@pytest.mark.trio
async def test_oversized_ids_and_fields_are_refused_before_forwarding(stack: Stack) -> None:
    # The id that crashed the agent: as large as its largest frame (MAX_FRAME_BYTES). In proto:
    # protobuf's JSON parser spends seconds of CPU on a 16 MiB string (a regular expression looking
    # for lone surrogates), before the limits are checked; the JSON cases refuse the same fields.
    huge = api_pb.ExecuteScriptRequest(vm_id="vm0", command="true", execution_id="x" * (16 * 1024 * 1024))
    r = await stack.client.post(
        f"{stack.url}{VM}/ExecuteScript",
        content=huge.SerializeToString(),
        headers={"Authorization": f"Bearer {stack.tokens['admin']}", "Content-Type": "application/proto"},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
    assert r.json()["message"].startswith("execution_id is ") and "the limit is" in r.json()["message"]
    cases = [
        ("ExecuteScript", {"vmId": "vm0", "command": "true", "executionId": "e" * 200}, VM, "execution_id"),
        ("ExecuteScriptStream", {"vmId": "vm0", "command": "true", "executionId": "e" * 200}, VM, "execution_id"),
        ("ExecuteScript", {"vmId": "vm0", "command": "true", "args": ["a"] * 5000}, VM, "args"),
        ("CancelExecution", {"vmId": "vm0", "executionId": "c" * 200}, VM, "execution_id"),
        ("GetVM", {"vmId": "v" * 1000}, VM, "vm_id"),
        ("WriteGuestFile", {"vmId": "vm0", "path": "/" + "p" * 5000, "content": ""}, VM, "path"),
        ("RunCommand", {"vmIds": ["vm0"], "command": "c" * 200_000}, FLEET, "command"),
        ("GetCommand", {"commandId": "c" * 200}, FLEET, "command_id"),
    ]
    for method, body, service, name in cases:
        if method.endswith("Stream"):
            data = json.dumps(body).encode()
            r = await stack.client.post(
                f"{stack.url}{service}/{method}",
                content=struct.pack(">BI", 0, len(data)) + data,
                headers={
                    "Authorization": f"Bearer {stack.tokens['admin']}",
                    "Content-Type": "application/connect+json",
                },
            )
            messages, _ = _envelopes(r.content)
            flags, end = messages[-1]
            assert flags == 2
            error = end["error"]
        else:
            r = await stack.call(method, body, service=service)
            assert r.status_code == 400, r.text
            error = r.json()
        assert error["code"] == "invalid_argument"
        assert error["message"].startswith(f"{name} is ") and "the limit is" in error["message"], error
    # Nothing reached hostd: it counted no call but what the controller itself made.
    metrics = (
        await stack.client.get(f"{stack.hostd_url}/metrics", headers={"Authorization": f"Bearer {HOSTD_TOKEN}"})
    ).text
    assert "lqx_hostd_vms" in metrics  # the answer to the token, not a 401
    assert "ExecuteInGuest" not in metrics and "CancelExecution" not in metrics
    done = await stack.ok("ExecuteScript", {"vmId": "vm0", "command": "echo ok"})
    assert done["stdout"] == "ok\n"


@pytest.mark.trio
async def test_stream_relays_output_and_disconnect_cancels(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.tokens['operator']}", "Content-Type": "application/connect+json"}

    def envelope(body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return struct.pack(">BI", 0, len(data)) + data

    url = f"{stack.url}{VM}/ExecuteScriptStream"
    with trio.fail_after(DEADLINE_S):
        r = await stack.client.post(
            url, content=envelope({"vmId": "vm0", "command": "echo a; echo é >&2"}), headers=headers
        )
        messages, _ = _envelopes(r.content)
        assert "executionId" in messages[0][1]
        outputs = [m["output"] for _, m in messages if "output" in m]
        assert {(o["stream"], o["text"]) for o in outputs} == {("stdout", "a\n"), ("stderr", "é\n")}
        flags, end = messages[-1]
        assert flags == 2 and "error" not in end
        assert messages[-2][1]["result"]["exitCode"] == 0

        # A command's result comes once its audit row is complete (as ExecuteScript's answer).
        body = envelope({"vmId": "vm0", "command": "exit 4"})
        async with stack.client.stream("POST", url, content=body, headers=headers) as resp:
            buf, result = b"", None
            async for chunk in resp.aiter_raw():
                buf += chunk
                result = next((m["result"] for _, m in _envelopes(buf)[0] if "result" in m), None)
                if result is not None:
                    rows = await _audit(stack, AuditAction.EXEC_STREAM)
                    break
        assert result is not None and result["exitCode"] == 4
        row = next(r for r in rows if r.detail.command == "exit 4")
        assert (row.outcome, row.exit_code) == (AuditOutcome.FAILURE, 4)

        # The client goes away mid-command: the guest command must be killed.
        body = envelope({"vmId": "vm0", "command": "echo pid $$; exec sleep 31.4159"})
        async with stack.client.stream("POST", url, content=body, headers=headers) as resp:
            buf, pid = b"", None
            async for chunk in resp.aiter_raw():
                buf += chunk
                for _, msg in _envelopes(buf)[0]:
                    if "output" in msg:
                        pid = int(msg["output"]["text"].split()[1])
                if pid:
                    break
        assert pid is not None and psutil.pid_exists(pid)
        await wait_gone(pid, within=DEADLINE_S)


@pytest.mark.trio
async def test_cancel_execution(stack: Stack) -> None:
    result: dict[str, Any] = {}

    async def long_run() -> None:
        result["r"] = await stack.ok("ExecuteScript", {"vmId": "vm1", "command": "sleep 30", "executionId": "cx-1"})

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_run)
            while True:
                found = await stack.ok("CancelExecution", {"vmId": "vm1", "executionId": "cx-1"})
                if found["found"]:
                    break
                await trio.sleep(0.05)
    assert result["r"]["exitReason"] == "cancelled"


@pytest.mark.trio
async def test_files_and_audit_rows(stack: Stack) -> None:
    secret_body = "file-body-Zq8-never-audited"
    password = "pw-Xy7-never-audited"
    path = str(stack.short_tmp / "out" / "note.txt")
    content = secret_body.encode()
    # Not base64 (spaces, a newline): refused naming the field, nothing written, nothing forwarded.
    r = await stack.call(
        "WriteGuestFile",
        {"vmId": "vm0", "path": path, "content": "hello world\n", "createParents": True},
        who="operator",
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
    assert "content" in r.json()["message"] and "base64" in r.json()["message"]
    assert not Path(path).exists()
    wrote = await stack.ok(
        "WriteGuestFile",
        {"vmId": "vm0", "path": path, "content": base64.b64encode(content).decode(), "createParents": True},
        who="operator",
    )
    assert wrote["sha256"] == hashlib.sha256(content).hexdigest() and int(wrote["bytesWritten"]) == len(content)
    read = await stack.ok("ReadGuestFile", {"vmId": "vm0", "path": path}, who="operator")
    assert base64.b64decode(read["content"]) == content and read["sha256"] == wrote["sha256"]
    stat = await stack.ok("StatGuestFile", {"vmId": "vm0", "path": path}, who="operator")
    assert int(stat["stat"]["size"]) == len(content)
    listing = await stack.ok("ListGuestDirectory", {"vmId": "vm0", "path": str(Path(path).parent)}, who="operator")
    assert [e["name"] for e in listing["entries"]] == ["note.txt"]
    await stack.ok(
        "ExecuteScript", {"vmId": "vm0", "command": "exit 7", "environment": {"API_KEY": "v-secret"}}, who="operator"
    )
    assert await stack.ok("ResetGuestPassword", {"vmId": "vm0", "username": "alice", "password": password}) == {
        "expired": False
    }
    denied = await stack.call("ExecuteScript", {"vmId": "vm1", "command": "id"}, who="scoped")
    assert denied.status_code == 403
    # A reboot is audited as vm.reboot, not vm.shutdown (refused here: it would restart the VM).
    r = await stack.call("GuestShutdown", {"vmId": "vm1", "reboot": True}, who="scoped")
    assert r.status_code == 403

    async with await SQLiteStore.open(stack.db) as store:
        rows = {r.action: r for r in (await store.query_audit(AuditQuery(limit=100))).records}
        denied_rows = (await store.query_audit(AuditQuery(outcome=AuditOutcome.DENIED))).records
    write = rows[AuditAction.FILE_WRITE]
    assert (write.user, write.token_id, write.vm_id, write.node_id) == (
        "operator",
        stack.tokens["operator"][4:16],
        "vm0",
        "host-a",
    )
    assert write.detail.path == path and write.detail.size == len(content) and write.detail.sha256 == wrote["sha256"]
    assert write.outcome is AuditOutcome.SUCCESS and write.duration_ms is not None and write.source_address
    exec_row = rows[AuditAction.EXEC]
    assert exec_row.detail.command == "exit 7" and exec_row.exit_code == 7 and exec_row.detail.env_keys == ("API_KEY",)
    assert exec_row.outcome is AuditOutcome.FAILURE
    reset = rows[AuditAction.PASSWORD_RESET]
    assert (reset.user, reset.detail.username, reset.outcome) == ("admin", "alice", AuditOutcome.SUCCESS)
    assert rows[AuditAction.FILE_READ].detail.path == path
    assert any(r.vm_id == "vm1" and r.user == "scoped" and r.action is AuditAction.EXEC for r in denied_rows)
    assert any(
        r.vm_id == "vm1" and r.action is AuditAction.REBOOT and r.detail.flags == ("reboot",) for r in denied_rows
    )
    # Nothing secret anywhere in the database files (the WAL included).
    for db_file in stack.db.parent.iterdir():
        data = db_file.read_bytes()
        for secret in (secret_body, password, "v-secret"):
            assert secret.encode() not in data, (db_file.name, secret)


# ---------------------------------------------------------------- failures and restarts


@pytest.mark.slow
@pytest.mark.trio
async def test_hostd_killed_calls_answer_unavailable_fast(stack: Stack) -> None:
    stack.hostd_scope.cancel()
    await trio.sleep(0.1)  # let hypercorn close its listener
    for method, body in (("PingAgent", {"vmId": "vm0"}), ("ExecuteScript", {"vmId": "vm0", "command": "true"})):
        started = trio.current_time()
        r = await stack.call(method, body)
        assert r.status_code == 503 and r.json()["code"] == "unavailable", r.text
        assert trio.current_time() - started < 1.0
    # Once heartbeats are overdue the node is unreachable: refused without trying.
    with trio.fail_after(DEADLINE_S):
        while (await stack.ok("ListNodes", {}, service=NODES))["nodes"][0]["reachable"]:
            await trio.sleep(0.1)
    started = trio.current_time()
    r = await stack.call("ExecuteScript", {"vmId": "vm0", "command": "true"})
    assert r.status_code == 503 and "heartbeat" in r.json()["message"]
    assert trio.current_time() - started < 1.0
    listed = (await stack.ok("ListVMs", {}))["vms"]
    assert [v["nodeReachable"] for v in listed] == [False, False]
    assert (await stack.ok("GetVM", {"vmId": "vm0"}))["nodeReachable"] is False


@pytest.mark.slow
@pytest.mark.trio
async def test_controller_restart_keeps_tokens_and_audit(stack: Stack) -> None:
    await stack.ok("ExecuteScript", {"vmId": "vm0", "command": "echo before-restart"}, who="operator")
    port = stack.port
    await stack.stop_controller()
    r = None
    with pytest.raises(httpx.ConnectError):
        r = await stack.call("ListNodes", {}, service=NODES)
    assert r is None
    await stack.start_controller(port=port)
    # Same tokens; hostd's heartbeats (retried with backoff) find the controller again.
    await stack.wait_vms()
    done = await stack.ok("ExecuteScript", {"vmId": "vm0", "command": "echo after-restart"}, who="operator")
    assert done["stdout"] == "after-restart\n"
    async with await SQLiteStore.open(stack.db) as store:
        commands = [r.detail.command for r in (await store.query_audit(AuditQuery(action=AuditAction.EXEC))).records]
    assert commands[:2] == ["echo after-restart", "echo before-restart"]


@pytest.mark.trio
async def test_first_start_bootstraps_an_admin_token(
    short_tmp: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    async with loopback_client(timeout=DEADLINE_S) as client:
        st = Stack(short_tmp, short_tmp / "empty" / "controller.db", {}, client, nursery)
        await st.start_controller()
        token = capsys.readouterr().out.strip().splitlines()[-1]
        st.tokens["printed"] = token
        assert (await st.ok("ListNodes", {}, service=NODES, who="printed")) == {"nodes": []}
        await st.stop_controller()
        await st.start_controller()
        assert capsys.readouterr().out == ""  # shown once
        await st.stop_controller()
        # LQX_ADMIN_TOKEN on an empty database: that token, not printed.
        st.db = short_tmp / "env" / "controller.db"
        st.tokens["env"] = "env-admin-token-0123456789abcdef"
        await st.start_controller(admin_token=st.tokens["env"])
        assert capsys.readouterr().out == ""
        assert (await st.ok("ListNodes", {}, service=NODES, who="env")) == {"nodes": []}
        await st.stop_controller()
        await st.client.aclose()


# ---------------------------------------------------------------- VM ownership, outcome unknown


async def _add_token(stack: Stack, who: str, role: Role) -> None:
    async with await SQLiteStore.open(stack.db) as store:
        await store.ensure_user(who)
        _, stack.tokens[who] = await store.create_token(user=who, role=role)


async def _audit(stack: Stack, action: AuditAction) -> list[Any]:
    async with await SQLiteStore.open(stack.db) as store:
        return list((await store.query_audit(AuditQuery(action=action, limit=100))).records)


@pytest.mark.trio
async def test_another_node_token_cannot_take_a_vm_over(stack: Stack) -> None:
    """host-b's token heartbeats host-a's vm0: refused and audited; the password reset and the
    secret environment still go to host-a (host-b's "hostd" is a listener counting connections)."""
    await _add_token(stack, "intruder", Role.NODE)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def accept(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with listener:
                while True:
                    accepted.append(await listener.accept())

    accepting = await stack.nursery.start(accept)
    claim = {"vmId": "vm0", "labels": {"env": "dev"}}
    await stack.ok("RegisterNode", {"nodeId": "host-b", "url": f"http://127.0.0.1:{port}", "token": "t", "vms": [claim]},
                   who="intruder", service=NODES)  # fmt: skip
    for _ in range(3):
        await stack.ok("Heartbeat", {"nodeId": "host-b", "vms": [claim]}, who="intruder", service=NODES)
    reset = await stack.ok("ResetGuestPassword", {"vmId": "vm0", "username": "alice", "password": "pw-not-for-b"})
    assert reset == {"expired": False}
    done = await stack.ok("ExecuteScript", {"vmId": "vm0", "command": 'printf %s "$K"', "environment": {"K": "v"}})
    assert done["stdout"] == "v"
    accepting.cancel()
    assert accepted == []
    vm0 = next(v for v in (await stack.ok("ListVMs", {}))["vms"] if v["vmId"] == "vm0")
    assert (vm0["nodeId"], vm0["labels"]) == ("host-a", {"env": "prod"})
    nodes = {n["nodeId"]: n["vmCount"] for n in (await stack.ok("ListNodes", {}, service=NODES))["nodes"]}
    assert nodes == {"host-a": 2, "host-b": 0}
    # Four claims, one row (rate-limited), naming who claimed what from whom.
    [row] = await _audit(stack, AuditAction.VM_CLAIM)
    assert (row.user, row.vm_id, row.node_id, row.outcome) == ("intruder", "vm0", "host-b", AuditOutcome.DENIED)
    assert row.error.startswith("vm_owned") and row.detail.target == "host-a" and row.detail.count == 1
    assert [r.node_id for r in await _audit(stack, AuditAction.PASSWORD_RESET)] == ["host-a"]


@pytest.mark.slow
@pytest.mark.trio
async def test_a_vm_restarted_on_another_node_is_followed(stack: Stack) -> None:
    """host-a dies; vm0 comes up under host-b (another node token): once host-a is past the
    heartbeat timeout the move is accepted, audited vm.moved, and calls go to host-b."""
    await _add_token(stack, "host-b", Role.NODE)
    stack.hostd_scope.cancel()  # host-a's last heartbeat still lists vm0
    await stack.start_hostd({"vm0": LABELS["vm0"]}, node_id="host-b", who="host-b", scope=trio.CancelScope())
    with trio.fail_after(DEADLINE_S):
        while True:
            vm0 = await stack.ok("GetVM", {"vmId": "vm0"})
            if vm0["nodeId"] == "host-b" and vm0["agentState"] == "connected":
                break
            await trio.sleep(0.05)
    assert (await stack.ok("PingAgent", {"vmId": "vm0"}))["connected"] is True
    await stack.ok("ExecuteScript", {"vmId": "vm0", "command": "true"})
    [moved] = await _audit(stack, AuditAction.VM_MOVED)
    assert (moved.user, moved.vm_id, moved.node_id, moved.outcome) == ("host-b", "vm0", "host-b", AuditOutcome.SUCCESS)
    assert moved.detail.target == "host-a" and moved.detail.flags == ("reason=owner_unreachable",)
    assert [r.node_id for r in await _audit(stack, AuditAction.EXEC)] == ["host-b"]
    # vm1 stays host-a's (unreachable): nobody else claimed it.
    r = await stack.call("PingAgent", {"vmId": "vm1"})
    assert r.status_code == 503 and "heartbeat" in r.json()["message"]


@pytest.mark.trio
async def test_hostd_killed_mid_command_is_audited_unknown(stack: Stack) -> None:
    """A real hostd process (tokens from a file and the environment) killed while the guest runs
    a command: the answer and the audit row say the outcome is unknown, not that it failed."""
    before = (await stack.ok("ListNodes", {}, service=NODES))["nodes"][0]["url"]
    stack.hostd_scope.cancel()
    node_token, empty = stack.short_tmp / "node.token", stack.short_tmp / "hostd.toml"
    node_token.write_text(stack.tokens["node"] + "\n")
    empty.write_text("")
    argv = [sys.executable, "-m", "limiquantix.hostd", "--config", str(empty), "--listen", "127.0.0.1:0",
            "--node-id", "host-a", "--controller-url", stack.url, "--controller-token-file", str(node_token),
            "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S), "--socket-dir", "", "--libvirt-channel-root", "",
            *(f"--vm={vm}={stack.short_tmp / f'{vm}.sock'}" for vm in LABELS)]  # fmt: skip
    with (stack.short_tmp / "hostd.log").open("wb") as log:
        hostd = subprocess.Popen(argv, env={**os.environ, TOKEN_ENV: HOSTD_TOKEN}, stdout=log, stderr=log)
    try:
        with trio.fail_after(DEADLINE_S):
            while True:
                vm0 = await stack.ok("GetVM", {"vmId": "vm0"})
                node = (await stack.ok("ListNodes", {}, service=NODES))["nodes"][0]
                if node["url"] != before and vm0["agentState"] == "connected":
                    break
                await trio.sleep(0.05)
        mark, fleet_mark = stack.short_tmp / "started", stack.short_tmp / "fleet-started"
        answer: dict[str, httpx.Response] = {}

        async def run() -> None:
            answer["r"] = await stack.call("ExecuteScript", {"vmId": "vm0", "command": f"touch {mark}; sleep 30"})

        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                fleet = await stack.ok("RunCommand", {"vmIds": ["vm1"], "command": f"touch {fleet_mark}; sleep 30"},
                                       service="/limiquantix.compute.v1.FleetService")  # fmt: skip
                while not (mark.exists() and fleet_mark.exists()):  # the guests are running them
                    await trio.sleep(0.02)
                hostd.kill()
        r = answer["r"]
        assert r.status_code == 503 and r.json()["code"] == "unavailable", r.text
        assert "outcome is not known" in r.json()["message"]
        # Nothing sent now (the port is closed): a plain error, the command did not run.
        refused = await stack.call("ExecuteScript", {"vmId": "vm0", "command": "true"})
        assert refused.status_code == 503 and "unreachable" in refused.json()["message"]
        # The fleet run's target may have run too: failed, not undeliverable.
        with trio.fail_after(DEADLINE_S):
            while True:
                run_state = await stack.ok("GetCommand", {"commandId": fleet["commandId"]},
                                           service="/limiquantix.compute.v1.FleetService")  # fmt: skip
                if run_state["status"] not in ("pending", "in_progress"):
                    break
                await trio.sleep(0.05)
        [target] = run_state["targets"]
        assert target["status"] == "failed" and "outcome is not known" in target["error"], target
    finally:
        hostd.kill()
        hostd.wait()
    rows = await _audit(stack, AuditAction.EXEC)
    assert [(r.detail.command, r.outcome) for r in rows[:2]] == [
        ("true", AuditOutcome.ERROR),
        (f"touch {mark}; sleep 30", AuditOutcome.UNKNOWN),
    ]
    assert "outcome is not known" in rows[1].error


@pytest.mark.trio
async def test_a_refused_token_is_answered_before_a_large_body_is_read_or_decoded(
    nursery: trio.Nursery, short_tmp: Path, bodies_seen: BodiesSeen
) -> None:
    """The controller's authenticate hook (controller._authn) runs on the headers: a missing,
    unknown or malformed token gets its 401 before the body is read or parsed (a controller
    of its own, no hostd, in this process)."""
    async with running_controller(nursery, short_tmp, {}) as st:
        url = f"{st.url}{VM}/WriteGuestFile"
        unknown = "lqx_0123456789ab_" + "S" * 43
        for auth in ({}, {"Authorization": f"Bearer {unknown}"}, {"Authorization": "Bearer x"}):
            r = await st.client.post(url, content=BIG_JSON, headers={"Content-Type": "application/json", **auth})
            assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
        assert bodies_seen == []
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {st.tokens['admin']}"}
        r = await st.client.post(url, content=BIG_JSON, headers=headers)
        assert r.json()["code"] == "invalid_argument", r.text  # read, decoded, refused by the path's limit
        assert bodies_seen == ["read", "decode"]


@pytest.mark.trio
async def test_failed_authentications_are_counted_and_audited_per_address(stack: Stack) -> None:
    unknown = "lqx_0123456789ab_" + "S" * 43  # well-formed, in no database
    for _ in range(5):
        r = await stack.client.post(f"{stack.url}{VM}/ListVMs", json={}, headers={"Authorization": f"Bearer {unknown}"})
        assert r.status_code == 401
    for _ in range(2):
        assert (await stack.call("ListVMs", {}, who=None)).status_code == 401
    assert (await stack.client.get(f"{stack.url}/metrics")).status_code == 401  # plain routes count too
    # Another source address is another row.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=transport) as other:
        assert (await other.post(f"{stack.url}{VM}/ListVMs", json={})).status_code == 401
    text = (
        await stack.client.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.tokens['viewer']}"})
    ).text
    assert 'lqx_controller_auth_failures_total{reason="invalid_token"} 5.0' in text
    assert 'lqx_controller_auth_failures_total{reason="missing_token"} 4.0' in text
    assert 'lqx_controller_auth_failures_total{reason="revoked_token"} 0.0' in text
    rows = sorted(await _audit(stack, AuditAction.AUTH_FAILED), key=lambda r: r.id)
    assert [(r.source_address.rpartition(":")[0], r.detail.count) for r in rows] == [("127.0.0.1", 1), ("127.0.0.2", 1)]
    first = rows[0]
    assert (first.user, first.token_id, first.role, first.outcome) == ("", "", "", AuditOutcome.DENIED)
    assert first.detail.target == "0123456789ab" and first.detail.path == f"{VM}/ListVMs"
    assert first.detail.flags == ("reason=invalid_token",) and first.error.startswith("invalid_token")
    for db_file in stack.db.parent.iterdir():
        assert b"S" * 43 not in db_file.read_bytes()  # the secret part never


@pytest.mark.trio
async def test_concurrent_large_writes_are_bounded_per_user_and_in_total(stack: Stack) -> None:
    """Bytes in flight: writes held half-sent (a Content-Length counts at once) from two users,
    a second write of the first user (over its bound), writes of a third user that fit and
    then do not (over the total): each refusal is resource_exhausted and loses nothing."""
    mib = 1024 * 1024
    await stack.stop_controller()
    await stack.start_controller(port=stack.port, max_request_bytes_in_flight=mib * 7 // 2,
                                 max_request_bytes_in_flight_per_user=mib * 5 // 2)  # fmt: skip
    await stack.wait_vms()
    content = bytes(range(256)) * (mib // 256)  # 1 MiB: 1.33 MiB of base64 JSON
    url = f"{stack.url}{VM}/WriteGuestFile"

    def body(name: str) -> bytes:
        path = str(stack.short_tmp / name)
        return json.dumps({"vmId": "vm0", "path": path, "content": base64.b64encode(content).decode()}).encode()

    def headers(who: str, size: int) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {stack.tokens[who]}",
            "Content-Type": "application/json",
            "Content-Length": str(size),
        }

    async def in_flight() -> float:
        text = (await stack.client.get(f"{stack.url}/metrics", headers=headers("viewer", 0))).text
        return float(
            next(
                line.split()[1]
                for line in text.splitlines()
                if line.startswith("lqx_controller_request_bytes_in_flight ")
            )
        )

    async def write(name: str, who: str) -> httpx.Response:
        data = body(name)
        return await stack.client.post(url, content=data, headers=headers(who, len(data)))

    go_on = trio.Event()
    answers: dict[str, httpx.Response] = {}

    async def held_write(name: str, who: str) -> None:
        data = body(name)

        async def half_then_rest() -> AsyncIterator[bytes]:
            yield data[:1000]
            await go_on.wait()
            yield data[1000:]

        answers[name] = await stack.client.post(url, content=half_then_rest(), headers=headers(who, len(data)))

    size = len(body("x"))
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(held_write, "held-1", "operator")
            while await in_flight() < size:
                await trio.sleep(0.02)
            r = await write("second", "operator")  # 2.67 MiB for this user > 2.5
            assert r.status_code == 429 and r.json()["code"] == "resource_exhausted", r.text
            assert "this caller" in r.json()["message"]
            assert (await write("fits", "admin")).status_code == 200  # 2.67 MiB in total <= 3.5
            nursery.start_soon(held_write, "held-2", "scoped")
            while await in_flight() < 2 * size:
                await trio.sleep(0.02)
            r = await write("over", "admin")  # 4 MiB in total > 3.5
            assert r.status_code == 429 and r.json()["code"] == "resource_exhausted", r.text
            assert "retry later" in r.json()["message"]
            go_on.set()
    assert answers["held-1"].status_code == answers["held-2"].status_code == 200
    for name in ("held-1", "held-2", "fits"):
        assert (stack.short_tmp / name).read_bytes() == content
    assert not (stack.short_tmp / "second").exists() and not (stack.short_tmp / "over").exists()
    # Every reservation is released: after its answer has left, so poll (bounded) rather than read once.
    with trio.fail_after(DEADLINE_S):
        while await in_flight() != 0:
            await trio.sleep(0.02)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_383, 16_384, 5_000_000])
def test_a_forwarded_bytes_field_is_the_message_hostd_would_decode(size: int) -> None:
    from limiquantix.controller._forward import bytes_field_header
    from limiquantix.protocol._gen import node_daemon_pb2 as node_pb

    content = (bytes(range(251)) * (size // 251 + 1))[:size]  # byte i is i % 251
    head = node_pb.WriteGuestFileRequest(vm_id="vm0", path="/p", create_parents=True)
    number = node_pb.WriteGuestFileRequest.DESCRIPTOR.fields_by_name["content"].number
    parsed = node_pb.WriteGuestFileRequest()
    parsed.ParseFromString(head.SerializeToString() + bytes_field_header(number, size) + content)
    assert parsed == node_pb.WriteGuestFileRequest(vm_id="vm0", path="/p", create_parents=True, content=content)
