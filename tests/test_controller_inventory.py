"""The inventory keeps every VM it has seen (issue 13, bug 8), end to end: a real controller
(in-process, SQLite file), a real hostd discovering real simulated VMs (limiquantix-simvm
processes with the real agent) in a socket directory, HTTP on loopback.

A VM is powered off by stopping its simulated VM (its socket goes, as QEMU's does): hostd
shows it ``no_socket`` (state ``off``), forgets it after ``forget_after_s`` (shortened here
from 300 s), and the controller keeps listing it, ``gone``, with when it was last reported.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import SimVMPool
from test_controller_api import DEADLINE_S, Stack, running_controller

from limiquantix.controller._models import AuditAction, AuditOutcome, AuditQuery
from limiquantix.controller.store import SQLiteStore
from limiquantix.hostd import DiscoveryConfig
from limiquantix.hostd.simvm import SimVMProcess

ADMIN = "/limiquantix.compute.v1.AdminService"
FLEET = "/limiquantix.compute.v1.FleetService"
#: hostd forgets a discovered VM this long after its socket went (300 s in production).
FORGET_AFTER_S = 1.0
FINAL = ("success", "failed", "cancelled")


def _time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _wait_state(st: Stack, vm_id: str, state: str, agent_state: str | None = None) -> dict[str, Any]:
    """Poll ListVMs until ``vm_id`` is in ``state`` (hostd and its heartbeats are other tasks)."""
    with trio.fail_after(DEADLINE_S):
        while True:
            vm = next((v for v in (await st.ok("ListVMs", {}))["vms"] if v["vmId"] == vm_id), None)
            if vm and vm["state"] == state and vm["nodeReachable"] and agent_state in (None, vm["agentState"]):
                return vm
            await trio.sleep(0.05)


@pytest.fixture
async def inventory(
    nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool
) -> AsyncIterator[tuple[Stack, SimVMProcess]]:
    """A stack whose hostd discovers ``keep`` and ``web-2`` in a socket directory; yields it
    and web-2's simulated VM (stop it to power the VM off: its own; ``keep``, which only
    answers, is lent by conftest.SimVMPool)."""
    sockets = short_tmp / "vms"
    sockets.mkdir()
    web2 = SimVMProcess.start(
        str(sockets / "web-2.agent.sock"), state_dir=short_tmp / "state-web-2", name="web-2",
        agent_args=["--telemetry-interval-s=0"],
    )  # fmt: skip
    try:
        with simvm_pool.lend({"keep": sockets / "keep.agent.sock"}, agent_args=["--telemetry-interval-s=0"]) as lent:
            sims = {**lent, "web-2": web2}
            async with running_controller(nursery, short_tmp, sims) as st:
                discovery = DiscoveryConfig(
                    socket_dir=str(sockets), libvirt_channel_root="", rescan_interval_s=0.1,
                    forget_after_s=FORGET_AFTER_S,
                )  # fmt: skip
                await st.start_hostd({}, discovery=discovery)
                for vm_id in sims:
                    await _wait_state(st, vm_id, "running", "connected")
                yield st, web2
    finally:
        web2.stop()


@pytest.mark.trio
async def test_a_vm_no_longer_reported_is_kept_gone_until_an_admin_removes_it(
    inventory: tuple[Stack, SimVMProcess],
) -> None:
    st, web2 = inventory
    running = await _wait_state(st, "web-2", "running", "connected")
    assert "lastReported" in running

    # Powered off: hostd still reports it, without its socket.
    web2.stop()
    off = await _wait_state(st, "web-2", "off")
    assert off["agentState"] == "no_socket"
    # Forgotten by hostd: the controller keeps it, gone, as last reported.
    gone = await _wait_state(st, "web-2", "gone")
    last = gone["lastReported"]
    assert (
        gone["nodeId"] == "host-a" and gone["agentState"] == "no_socket" and _time(last) >= _time(off["lastReported"])
    )
    assert (await st.ok("ListVMs", {"state": "gone"}))["vms"] == [gone]
    assert [v["vmId"] for v in (await st.ok("ListVMs", {"state": "no_socket"}))["vms"]] == []  # history, not state
    assert [v["vmId"] for v in (await st.ok("ListVMs", {"state": "running"}))["vms"]] == ["keep"]
    got = await st.ok("GetVM", {"vmId": "web-2"}, who="viewer")
    assert (got["state"], got["lastReported"], got["nodeReachable"]) == ("gone", last, True)
    nodes = (await st.ok("ListNodes", {}, service="/limiquantix.compute.v1.NodeRegistryService"))["nodes"]
    assert [(n["nodeId"], n["vmCount"]) for n in nodes] == [("host-a", 1)]
    # Calls for it say it is gone (not "not found": the controller knows it).
    r = await st.call("ExecuteScript", {"vmId": "web-2", "command": "true"}, who="operator")
    assert r.status_code == 503 and r.json()["code"] == "unavailable" and "is gone" in r.json()["message"]

    # A fleet run over it: undeliverable, nothing ran.
    cid = (await st.ok("RunCommand", {"vmIds": ["web-2", "keep"], "command": "true"}, who="operator", service=FLEET))[
        "commandId"
    ]
    with trio.fail_after(DEADLINE_S):
        while (run := await st.ok("GetCommand", {"commandId": cid}, service=FLEET))["status"] not in FINAL:
            await trio.sleep(0.05)
    targets = {t["vmId"]: t for t in run["targets"]}
    assert (targets["web-2"]["status"], targets["keep"]["status"]) == ("undeliverable", "success"), run
    assert "is gone" in targets["web-2"]["error"] and "startedAt" not in targets["web-2"]
    assert run["status"] == "failed" and run["counts"]["undeliverable"] == 1  # not every target succeeded

    # A controller restart (same SQLite file, same port: hostd finds it again) keeps it.
    port = st.port
    await st.stop_controller()
    await st.start_controller(port=port)
    await _wait_state(st, "keep", "running")
    again = await st.ok("GetVM", {"vmId": "web-2"})
    assert (again["state"], again["lastReported"]) == ("gone", last)

    # Removing it is an admin's, audited; viewer and operator are refused (and recorded).
    for who in ("viewer", "operator", "scoped"):
        r = await st.call("RemoveVM", {"vmId": "web-2"}, who=who, service=ADMIN)
        assert r.status_code == 403 and r.json()["code"] == "permission_denied", (who, r.text)
    r = await st.call("RemoveVM", {"vmId": "keep"}, service=ADMIN)  # still reported: it would come back
    assert r.status_code == 400 and r.json()["code"] == "failed_precondition" and "still reports" in r.text
    for bad in ({}, {"vmId": "x" * 256}):
        r = await st.call("RemoveVM", bad, service=ADMIN)
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument", r.text
    assert await st.ok("RemoveVM", {"vmId": "web-2"}, service=ADMIN) == {}
    assert [v["vmId"] for v in (await st.ok("ListVMs", {}))["vms"]] == ["keep"]
    r = await st.call("GetVM", {"vmId": "web-2"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = await st.call("RemoveVM", {"vmId": "web-2"}, service=ADMIN)
    assert r.status_code == 404 and r.json()["code"] == "not_found"

    async with await SQLiteStore.open(st.db) as store:
        rows = (await store.query_audit(AuditQuery(action=AuditAction.VM_REMOVE))).records
    assert [(r.user, r.vm_id, r.node_id, r.outcome) for r in reversed(rows)] == [
        ("viewer", "web-2", "", AuditOutcome.DENIED),
        ("operator", "web-2", "", AuditOutcome.DENIED),
        ("scoped", "web-2", "", AuditOutcome.DENIED),
        ("admin", "keep", "host-a", AuditOutcome.ERROR),
        ("admin", "web-2", "host-a", AuditOutcome.SUCCESS),
    ]
    assert rows[1].error.startswith("failed_precondition: node host-a still reports VM keep")
