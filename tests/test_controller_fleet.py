"""Fleet runs end to end: a real controller, a real hostd, real simulated VMs, HTTP on loopback.

Which simulated VM a command runs in is told apart by a marker file in the VM's
state directory: the command finds its agent's ``--config`` (in the state
directory) through ``/proc/$PPID/cmdline`` and fails when ``fail`` is there.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import QUIET_AGENT, SimVMPool, loopback_client
from test_controller_api import DEADLINE_S, HOSTD_TOKEN, Stack, _envelopes, running_controller

from limiquantix.controller._models import AuditAction, AuditOutcome, AuditQuery
from limiquantix.controller.store import SQLiteStore

FLEET = "/limiquantix.compute.v1.FleetService"
NODES = "/limiquantix.compute.v1.NodeRegistryService"
#: Fails in the VMs whose state directory holds a file named ``fail``.
FAIL_IF_MARKED = (
    "d=$(dirname \"$(tr '\\0' '\\n' < /proc/$PPID/cmdline | grep 'agent.toml$')\"); "
    'if [ -e "$d/fail" ]; then echo marked >&2; exit 3; fi; sleep "${PAUSE:-0}"; echo "ok $GREETING"'
)
FINAL = {"success", "failed", "cancelled"}
ENV_SECRET = "env-value-Qk4-never-stored"


def labels_of(i: int) -> dict[str, str]:
    return {"fleet": "yes", "env": "prod" if i % 2 == 0 else "dev"}


@asynccontextmanager
async def fleet_stack(
    nursery: trio.Nursery,
    short_tmp: Path,
    pool: SimVMPool,
    n: int,
    *,
    no_agent: Collection[int] = (),
    failing: Collection[int] = (),
    db_dir: Path | None = None,
) -> AsyncIterator[Stack]:
    """Controller + hostd + ``n`` simulated VMs ``vm0..`` (the session's, conftest.SimVMPool: each
    would cost two Python starts); ``no_agent`` ones never connect (undeliverable), ``failing``
    ones get the marker file (taken away after); the database in ``db_dir`` when given (it
    outlives the stack), else one gone with it."""
    names = [f"vm{i}" for i in range(n)]
    links = {name: short_tmp / f"{name}.sock" for i, name in enumerate(names) if i not in no_agent}
    silent = {name: short_tmp / f"{name}.sock" for i, name in enumerate(names) if i in no_agent}
    with (
        pool.lend(links, agent_args=QUIET_AGENT) as sims,
        pool.lend(silent, agent_args=QUIET_AGENT, no_agent=True) as silent_sims,
    ):
        markers = [sims[names[i]].state_dir / "fail" for i in failing]
        try:
            for marker in markers:
                marker.write_text("")
            async with running_controller(nursery, short_tmp, {**sims, **silent_sims}, db_dir=db_dir) as st:
                await st.start_hostd({name: labels_of(i) for i, name in enumerate(names)})
                with trio.fail_after(DEADLINE_S * 2):
                    while True:
                        r = await st.call("ListVMs", {})
                        vms = r.json().get("vms", []) if r.status_code == 200 else []
                        connected = {v["vmId"] for v in vms if v["agentState"] == "connected" and v["nodeReachable"]}
                        if connected == set(links):
                            break
                        await trio.sleep(0.05)
                yield st
        finally:
            for marker in markers:
                marker.unlink(missing_ok=True)


async def run(st: Stack, body: dict[str, Any], *, who: str = "operator") -> str:
    answer = await st.ok("RunCommand", body, who=who, service=FLEET)
    assert answer["commandId"] and answer["status"] in ("pending", "success")
    return str(answer["commandId"])


async def wait_done(st: Stack, command_id: str, *, who: str = "viewer") -> dict[str, Any]:
    with trio.fail_after(DEADLINE_S):
        while True:
            command = await st.ok("GetCommand", {"commandId": command_id}, who=who, service=FLEET)
            if command["status"] in FINAL:
                return command
            await trio.sleep(0.05)


def statuses(command: dict[str, Any]) -> dict[str, str]:
    return {t["vmId"]: t["status"] for t in command.get("targets", [])}


def parse_ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def max_overlap(command: dict[str, Any]) -> int:
    """Most targets running at one instant, from their stored start and end times."""
    events = []
    for t in command["targets"]:
        if "startedAt" in t:
            events += [(parse_ts(t["startedAt"]), 1), (parse_ts(t["completedAt"]), -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


async def watch(st: Stack, command_id: str, *, who: str = "viewer") -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """WatchCommand's envelopes as they arrive (flags, message)."""
    data = json.dumps({"commandId": command_id}).encode()
    headers = {"Authorization": f"Bearer {st.tokens[who]}", "Content-Type": "application/connect+json"}
    url = f"{st.url}{FLEET}/WatchCommand"
    async with st.client.stream("POST", url, content=struct.pack(">BI", 0, len(data)) + data, headers=headers) as r:
        assert r.status_code == 200
        buf = b""
        async for chunk in r.aiter_raw():
            buf += chunk
            messages, used = _envelopes(buf)
            buf = buf[used:]
            for message in messages:
                yield message


# ---------------------------------------------------------------- six VMs (fast)


@pytest.mark.trio
async def test_fleet_runs_on_six_vms(
    nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool, db_tmp: Path
) -> None:
    async with fleet_stack(nursery, short_tmp, simvm_pool, 6, no_agent={5}, failing={0, 1}, db_dir=db_tmp) as st:
        # 1. Everything delivered succeeds; the VM without an agent is undeliverable and is
        #    not an error (maxErrors 0 does not stop the run); at most 2 at once. The client
        #    that started it goes away at once: the run carries on.
        async with loopback_client(timeout=DEADLINE_S) as gone:
            r = await gone.post(
                f"{st.url}{FLEET}/RunCommand",
                json={"vmIds": ["vm2", "vm3", "vm5", "vm4"], "command": FAIL_IF_MARKED, "maxConcurrency": 2,
                      "environment": {"GREETING": "hi", "PAUSE": "0.3", "API_KEY": ENV_SECRET}},
                headers={"Authorization": f"Bearer {st.tokens['operator']}"},
            )  # fmt: skip
        assert r.status_code == 200, r.text
        done = await wait_done(st, r.json()["commandId"])
        assert statuses(done) == {"vm2": "success", "vm3": "success", "vm5": "undeliverable", "vm4": "success"}
        assert done["status"] == "failed" and done["counts"]["success"] == 3 and done["counts"]["undeliverable"] == 1
        ok = next(t for t in done["targets"] if t["vmId"] == "vm2")
        assert ok["stdout"] == "ok hi\n" and ok["exitCode"] == 0 and ok["nodeId"] == "host-a"
        assert ok["stdoutTruncated"] is False and int(ok["durationMs"]) >= 300
        assert "not connected" in next(t for t in done["targets"] if t["vmId"] == "vm5")["error"]
        assert max_overlap(done) == 2
        assert done["environmentKeys"] == ["API_KEY", "GREETING", "PAUSE"] and done["maxConcurrency"] == 2

        # 2. maxConcurrency 1, maxErrors 1: vm0 fails (1 error, tolerated), vm1 fails (2 > 1):
        #    the rest is skipped.
        cid = await run(st, {"vmIds": [f"vm{i}" for i in range(5)], "command": FAIL_IF_MARKED,
                             "maxConcurrency": 1, "maxErrors": "1"})  # fmt: skip
        done = await wait_done(st, cid)
        assert statuses(done) == {
            "vm0": "failed",
            "vm1": "failed",
            "vm2": "skipped",
            "vm3": "skipped",
            "vm4": "skipped",
        }
        failed = done["targets"][0]
        assert failed["exitCode"] == 3 and failed["stderr"] == "marked\n" and done["status"] == "failed"
        assert all("startedAt" not in t for t in done["targets"][2:])

        # 3. Cancel a run of `sleep 30`: running targets are cancelled in the guest, pending ones at once.
        cid = await run(st, {"labels": {"fleet": "yes"}, "command": "sleep 30", "maxConcurrency": 2}, who="admin")
        with trio.fail_after(DEADLINE_S):
            while (
                list(statuses(await st.ok("GetCommand", {"commandId": cid}, service=FLEET)).values()).count(
                    "in_progress"
                )
                < 2
            ):
                await trio.sleep(0.05)
            started = trio.current_time()
            r = await st.call("CancelCommand", {"commandId": cid}, who="viewer", service=FLEET)
            assert r.status_code == 403 and r.json()["code"] == "permission_denied"
            cancel = await st.ok("CancelCommand", {"commandId": cid}, service=FLEET, who="operator")
            assert cancel["status"] == "cancelling"
            done = await wait_done(st, cid)
            assert trio.current_time() - started < 5
        assert (
            done["status"] == "cancelled"
            and set(statuses(done).values()) == {"cancelled"}
            and len(done["targets"]) == 6
        )
        assert sum("startedAt" in t for t in done["targets"]) == 2
        r = await st.call("CancelCommand", {"commandId": "no-such-run"}, service=FLEET)
        assert r.status_code == 404

        # 4. Roles and scopes: a viewer reads but may not run; the env=prod token reaches vm0, vm2, vm4 only.
        r = await st.call("RunCommand", {"vmIds": ["vm2"], "command": "true"}, who="viewer", service=FLEET)
        assert r.status_code == 403 and r.json()["code"] == "permission_denied"
        r = await st.call("RunCommand", {"vmIds": ["vm1"], "command": "true"}, who="scoped", service=FLEET)
        assert r.status_code == 403 and r.json()["code"] == "permission_denied"
        r = await st.call("RunCommand", {"vmIds": ["ghost"], "command": "true"}, service=FLEET)
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        r = await st.call("RunCommand", {"command": "true"}, service=FLEET)
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        # maxErrors as the command line checks it (protocol.parse_max_errors): ASCII digits only
        # ("٣" is a digit to \d and to int()), a percentage up to 100; maxConcurrency up to 1000.
        for wrong in ({"maxErrors": "x"}, {"maxErrors": "\u0663"}, {"maxErrors": "101%"}, {"maxConcurrency": 1001}):
            r = await st.call("RunCommand", {"vmIds": ["vm2"], "command": "true", **wrong}, service=FLEET)
            assert r.status_code == 400 and r.json()["code"] == "invalid_argument", wrong
        cid = await run(st, {"labels": {"fleet": "yes"}, "command": FAIL_IF_MARKED, "maxErrors": "50%"}, who="scoped")
        done = await wait_done(st, cid, who="scoped")
        assert statuses(done) == {"vm0": "failed", "vm2": "success", "vm4": "success"}
        assert done["status"] == "failed" and done["maxErrors"] == "50%"
        # The scoped token sees only its part of other runs, and lists its own runs only.
        mine = await st.ok("ListCommands", {}, who="scoped", service=FLEET)
        assert [c["commandId"] for c in mine["commands"]] == [cid]
        everything = await st.ok("GetCommand", {"commandId": cid}, who="viewer", service=FLEET)
        assert everything["targetCount"] == 3
        listed = await st.ok("ListCommands", {"pageSize": 2}, who="viewer", service=FLEET)
        assert len(listed["commands"]) == 2 and listed["nextPageToken"] and not listed["commands"][0].get("targets")
        rest = await st.ok(
            "ListCommands", {"pageSize": 2, "pageToken": listed["nextPageToken"]}, who="viewer", service=FLEET
        )
        assert len(rest["commands"]) == 2 and rest["nextPageToken"] == ""
        cancelled = await st.ok("ListCommands", {"status": "cancelled"}, who="viewer", service=FLEET)
        assert len(cancelled["commands"]) == 1 and cancelled["commands"][0]["counts"]["cancelled"] == 6
        by_admin = await st.ok("ListCommands", {"user": "admin"}, who="viewer", service=FLEET)
        assert len(by_admin["commands"]) == 1
        r = await st.call("ListCommands", {"status": "bogus"}, who="viewer", service=FLEET)
        assert r.status_code == 400
        # A run over one VM is that VM's audit row.
        single = await wait_done(st, await run(st, {"vmIds": ["vm3"], "command": "true"}))
        assert single["status"] == "success"
        found = await st.ok("QueryAudit", {"filter": {"action": "command.run", "vmId": "vm3"}},
                            service="/limiquantix.compute.v1.AdminService")  # fmt: skip
        assert [rec["detail"]["vmIds"] for rec in found["records"]] == [["vm3"]]

    # Audit: one command.run row per accepted run (command text, run id, completed with the
    # counts); refusals recorded as denied; cancel recorded.
    async with await SQLiteStore.open(st.db) as store:
        runs = (await store.query_audit(AuditQuery(action=AuditAction.FLEET_RUN, limit=100))).records
        cancels = (await store.query_audit(AuditQuery(action=AuditAction.FLEET_CANCEL))).records
    accepted = [r for r in runs if r.outcome is not AuditOutcome.DENIED]
    assert len(accepted) == 5 and all(r.detail.target and r.completed_at for r in accepted)
    assert {r.outcome for r in accepted} == {AuditOutcome.ERROR, AuditOutcome.CANCELLED, AuditOutcome.SUCCESS}
    # Every row names its targets: the VM ids (and the selector and the count).
    first_run, single_run = accepted[-1], accepted[0]
    assert (
        first_run.detail.vm_ids == ("vm2", "vm3", "vm5", "vm4")
        and first_run.detail.count == 4
        and first_run.vm_id == ""
    )
    assert (single_run.vm_id, single_run.detail.vm_ids, single_run.detail.count) == ("vm3", ("vm3",), 1)
    by_label = next(r for r in accepted if r.detail.command == "sleep 30")
    assert dict(by_label.detail.labels) == {"fleet": "yes"} and by_label.detail.vm_ids == tuple(
        f"vm{i}" for i in range(6)
    )
    denied = {r.user: r for r in runs if r.outcome is AuditOutcome.DENIED}
    assert (denied["viewer"].vm_id, denied["viewer"].detail.vm_ids) == ("vm2", ("vm2",))
    assert (denied["scoped"].vm_id, denied["scoped"].detail.vm_ids) == ("vm1", ("vm1",))
    assert "VM vm1" in denied["scoped"].error
    assert any(r.detail.command == "sleep 30" and r.outcome is AuditOutcome.CANCELLED for r in accepted)
    assert {(r.user, r.outcome) for r in runs if r.outcome is AuditOutcome.DENIED} == {
        ("viewer", AuditOutcome.DENIED),
        ("scoped", AuditOutcome.DENIED),
    }
    assert any(r.user == "operator" and r.outcome is AuditOutcome.SUCCESS for r in cancels)
    assert any(r.user == "viewer" and r.outcome is AuditOutcome.DENIED for r in cancels)
    assert accepted[-1].detail.env_keys == ("API_KEY", "GREETING", "PAUSE")
    # Environment values stay in memory: not in the database (the WAL included).
    for db_file in st.db.parent.iterdir():
        assert ENV_SECRET.encode() not in db_file.read_bytes(), db_file.name


# ---------------------------------------------------------------- twenty VMs (slow)


@pytest.mark.slow
@pytest.mark.trio
async def test_fleet_run_over_twenty_vms(nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool) -> None:
    """maxConcurrency 5, maxErrors 2; vm0-2 fail at once, vm3 has no agent (undeliverable, not
    an error), the rest take 0.5 s: after the third failure nothing new starts."""
    async with fleet_stack(nursery, short_tmp, simvm_pool, 20, no_agent={3}, failing={0, 1, 2}) as st:
        # Named in numeric order (a label selector orders targets by VM id: vm0, vm1, vm10 ...).
        cid = await run(st, {"vmIds": [f"vm{i}" for i in range(20)], "command": FAIL_IF_MARKED, "maxConcurrency": 5,
                             "maxErrors": "2", "environment": {"PAUSE": "0.5"}})  # fmt: skip
        done = await wait_done(st, cid)
        by_vm = statuses(done)
        assert len(by_vm) == 20 and done["status"] == "failed"
        assert [by_vm[f"vm{i}"] for i in range(5)] == ["failed", "failed", "failed", "undeliverable", "success"]
        started = [t for t in done["targets"] if "startedAt" in t]
        skipped = [t for t in done["targets"] if t["status"] == "skipped"]
        assert skipped and len(started) + len(skipped) == 20
        order = [t["vmId"] for t in done["targets"]]
        assert max(order.index(t["vmId"]) for t in started) < min(order.index(t["vmId"]) for t in skipped)
        third_error = max(parse_ts(t["completedAt"]) for t in done["targets"] if t["status"] == "failed")
        # A target wrongly started after the threshold would start when a slot frees, i.e. when one of
        # the 0.5 s targets ends; a target decided before the third error may stamp its start a moment
        # after it (one scheduling hop, which took over 10 ms under load): 0.25 s tells the two apart.
        assert all(parse_ts(t["startedAt"]) <= third_error + 0.25 for t in started)
        assert done["counts"]["failed"] == 3 and max_overlap(done) <= 5
        assert all(t["error"].startswith("not started") for t in skipped)

        # All succeed: 20 targets, 5 at a time, never more.
        cid = await run(
            st, {"labels": {"fleet": "yes"}, "command": "sleep 0.3", "maxConcurrency": 5, "maxErrors": "10%"}
        )
        done = await wait_done(st, cid)
        assert done["counts"]["success"] == 19 and done["counts"]["undeliverable"] == 1
        assert max_overlap(done) == 5


@pytest.mark.trio
async def test_a_vm_its_node_no_longer_has_is_undeliverable(
    nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool
) -> None:
    """A VM the controller still lists but whose node answers not_found (hostd forgot it, e.g.
    powered off for minutes): refused before anything ran, so `undeliverable` as the README
    promises, not `failed`. Node host-b is the real hostd registered a second time (by the
    admin) with a heartbeat that still names the VM: no race with host-a's own heartbeats."""
    async with fleet_stack(nursery, short_tmp, simvm_pool, 1) as st:
        node = {
            "nodeId": "host-b",
            "url": st.hostd_url,
            "token": HOSTD_TOKEN,
            "vms": [{"vmId": "ghost", "agent": {"state": "AGENT_STATE_CONNECTED"}}],
        }
        await st.ok("RegisterNode", node, who="admin", service=NODES)
        await st.ok("Heartbeat", {"nodeId": "host-b", "vms": node["vms"]}, who="admin", service=NODES)
        done = await wait_done(st, await run(st, {"vmIds": ["ghost", "vm0"], "command": "true"}))
        assert statuses(done) == {"ghost": "undeliverable", "vm0": "success"}, done
        ghost = next(t for t in done["targets"] if t["vmId"] == "ghost")
        assert "no VM 'ghost' on this host" in ghost["error"] and "exitCode" not in ghost


#: In the marked VM the shell kills itself with SIGKILL; elsewhere it outlives its timeout.
KILLED_IF_MARKED = FAIL_IF_MARKED.replace("echo marked >&2; exit 3", "kill -9 $$").replace('"${PAUSE:-0}"', "30")


@pytest.mark.trio
async def test_a_target_that_timed_out_or_was_killed_says_how_instead_of_an_exit_code(
    nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool
) -> None:
    """A fleet target carries the exit reason and signal as ExecuteScript's answer does (issue
    13): no exitCode unless the command exited, in GetCommand and in WatchCommand."""
    async with fleet_stack(nursery, short_tmp, simvm_pool, 2, failing={0}) as st:
        cid = await run(st, {"vmIds": ["vm0", "vm1"], "command": KILLED_IF_MARKED, "timeoutSeconds": 1})
        done = await wait_done(st, cid)
        assert statuses(done) == {"vm0": "failed", "vm1": "timed_out"}, done
        killed, timed = done["targets"]
        assert "exitCode" not in killed and (killed["exitReason"], killed["signal"]) == ("signaled", 9)
        assert "exitCode" not in timed and timed["exitReason"] == "timed_out" and timed["signal"] == 15
        # WatchCommand of the ended run renders its targets the same way.
        watched = {m["target"]["vmId"]: m["target"] async for _, m in watch(st, cid) if "target" in m}
        assert (watched["vm0"]["exitReason"], watched["vm0"]["signal"]) == ("signaled", 9)
        assert watched["vm1"]["exitReason"] == "timed_out" and "exitCode" not in watched["vm1"]
        # An exited one keeps its code beside the reason.
        ok = await wait_done(st, await run(st, {"vmIds": ["vm1"], "command": "exit 4"}))
        assert (ok["targets"][0]["exitCode"], ok["targets"][0]["exitReason"]) == (4, "exited")
        assert ok["targets"][0]["signal"] == 0


# ---------------------------------------------------------------- WatchCommand


#: Prints, then waits for a file the test creates (no timing: the file is the signal).
PRINT_THEN_WAIT = 'echo "start $$"; echo warn >&2; while [ ! -e "$GO" ]; do sleep 0.02; done; echo end'


@pytest.mark.trio
async def test_watch_streams_each_vms_output_before_it_finishes(
    nursery: trio.Nursery, short_tmp: Path, simvm_pool: SimVMPool
) -> None:
    async with fleet_stack(nursery, short_tmp, simvm_pool, 3, no_agent={2}) as st:
        go = short_tmp / "go"
        cid = await run(
            st, {"vmIds": ["vm0", "vm1", "vm2"], "command": PRINT_THEN_WAIT, "environment": {"GO": str(go)}}
        )
        output: dict[tuple[str, str], str] = {}
        status: dict[str, str] = {}
        order: list[str] = []
        end: dict[str, Any] = {}
        with trio.fail_after(DEADLINE_S):
            async for flags, message in watch(st, cid):
                if flags & 2:
                    end = message
                    break
                if "output" in message:
                    o = message["output"]
                    assert status.get(o["vmId"]) == "in_progress"  # output of a running target
                    output[o["vmId"], o["stream"]] = output.get((o["vmId"], o["stream"]), "") + o["text"]
                    order.append(f"output {o['vmId']}")
                elif "target" in message:
                    t = message["target"]
                    assert not t.get("stdout") and not t.get("stderr")  # output comes as output events
                    status[t["vmId"]] = t["status"]
                    order.append(f"{t['status']} {t['vmId']}")
                else:
                    assert message["command"]["status"] == "failed"  # vm2 was undeliverable
                    assert message["command"]["counts"]["success"] == 2
                    order.append("command")
                # Both VMs printed and wait for the file: their output is here before they end.
                if all(output.get((vm, "stderr")) == "warn\n" for vm in ("vm0", "vm1")) and not go.exists():
                    assert status["vm0"] == status["vm1"] == "in_progress"
                    go.write_text("")
        assert "error" not in end, end
        assert status == {"vm0": "success", "vm1": "success", "vm2": "undeliverable"}
        for vm in ("vm0", "vm1"):
            assert output[vm, "stdout"].startswith("start ") and output[vm, "stdout"].endswith("\nend\n")
            # Each VM's final status comes after its last output.
            assert order.index(f"success {vm}") > max(i for i, e in enumerate(order) if e == f"output {vm}")
        assert order[-1] == "command"

        # Watched once it has ended: what is stored (the same output), then the run.
        stored = [m async for _, m in watch(st, cid)]
        assert stored[-1] == {}  # end of stream, no error
        texts = {(m["output"]["vmId"], m["output"]["stream"]): m["output"]["text"] for m in stored if "output" in m}
        assert texts == output
        assert stored[-2]["command"]["status"] == "failed"

        # No such run: an error ends the stream.
        [(flags, missing)] = [m async for m in watch(st, "cmd-nope")]
        assert flags & 2 and missing["error"]["code"] == "not_found"
