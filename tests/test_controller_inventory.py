"""The inventory keeps every VM it has seen (issue 13, bug 8), end to end: a real controller
(in-process, SQLite file), a real hostd discovering real simulated VMs (limiquantix-simvm
processes with the real agent) in a socket directory, HTTP on loopback.

A VM is powered off by stopping its simulated VM (its socket goes, as QEMU's does): hostd
shows it ``no_socket`` (state ``off``); once hostd no longer reports it (here: hostd restarted,
which forgets it as ``forget_after_s`` does, tests/test_hostd_vm.py tests that), the controller
keeps listing it, ``gone``, with when it was last reported. (With hostd forgetting it after a
second, the test had to see ``off`` within that second: under load, it could miss it.)
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import QUIET_AGENT, SimVMPool
from test_controller_api import DEADLINE_S, Stack, running_controller

from limiquantix.controller._models import AuditAction, AuditOutcome, AuditQuery
from limiquantix.controller.store import SQLiteStore
from limiquantix.hostd import DiscoveryConfig

ADMIN = "/limiquantix.compute.v1.AdminService"
FLEET = "/limiquantix.compute.v1.FleetService"
#: hostd's scan of the socket directory, and forget_after_s: never within a test (the restarted
#: hostd does not report the VM that went).
DISCOVERY = DiscoveryConfig(socket_dir="", libvirt_channel_root="", rescan_interval_s=0.1, forget_after_s=300.0)
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
) -> AsyncIterator[tuple[Stack, Callable[[], None]]]:
    """A stack whose hostd discovers ``keep`` and ``web-2`` in a socket directory; yields it
    and what powers web-2 off: its simulated VM stopped, its socket gone (the link to it: both
    are lent by conftest.SimVMPool, which lends no stopped VM again)."""
    sockets = short_tmp / "vms"
    sockets.mkdir()
    links = {vm_id: sockets / f"{vm_id}.agent.sock" for vm_id in ("keep", "web-2")}
    with simvm_pool.lend(links, agent_args=QUIET_AGENT) as sims:
        # No node falls silent here: a heartbeat late under load must not make host-a unreachable.
        async with running_controller(nursery, short_tmp, sims, heartbeat_timeout_s=DEADLINE_S) as st:
            await st.start_hostd({}, discovery=dataclasses.replace(DISCOVERY, socket_dir=str(sockets)))
            for vm_id in sims:
                await _wait_state(st, vm_id, "running", "connected")

            def power_off() -> None:
                sims["web-2"].stop()
                links["web-2"].unlink()

            yield st, power_off


@pytest.mark.trio
async def test_a_vm_no_longer_reported_is_kept_gone_until_an_admin_removes_it(
    inventory: tuple[Stack, Callable[[], None]],
) -> None:
    st, power_off = inventory
    running = await _wait_state(st, "web-2", "running", "connected")
    assert "lastReported" in running

    # Powered off: hostd still reports it, without its socket.
    power_off()
    off = await _wait_state(st, "web-2", "off")
    assert off["agentState"] == "no_socket"
    # Forgotten by hostd (restarted: it no longer finds web-2): the controller keeps it, gone, as last reported.
    st.hostd_scope.cancel()
    st.hostd_scope = trio.CancelScope()
    await st.start_hostd({}, discovery=dataclasses.replace(DISCOVERY, socket_dir=str(st.short_tmp / "vms")))
    gone = await _wait_state(st, "web-2", "gone")
    await _wait_state(st, "keep", "running", "connected")
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
