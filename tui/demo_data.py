"""Sample data for the TUI's screenshots, snapshot tests and benchmark — not real VMs.

Everything here is deterministic: the same call gives the same answer in every
process and on every machine (no clock, no hostname, no ``hash()``), so that
SVG snapshots compare byte for byte. The answers are the controller's API
messages (the generated types), as ``ControllerClient`` returns them:

* :func:`fleet` — a ListVMs ``vms`` list (``step`` moves CPU / memory / uptime);
  built field by field, not parsed from JSON: the benchmark makes 5,000 of them per update;
* :func:`vm_detail` — a GetVM answer (identity + telemetry; ``step`` moves the
  counters, so that network rates appear after two reports);
* :func:`stream_events` — an ExecuteScriptStream's events, :func:`fleet_command`
  — a FleetService GetCommand answer, :data:`OS_RELEASE` — a file to view,
  :func:`audit_records` — QueryAudit ``records``, :data:`ADMIN` — a WhoAmI.

Nested parts are written as proto3 JSON (camelCase, what curl shows) and parsed with
``json_format.ParseDict``, which also checks them against the schema.

Addresses come from the documentation ranges (RFC 5737 / RFC 3849 / RFC 7042),
names are invented. Used by ``tests/test_tui_snapshots.py``,
``scripts/tui_screenshot.py`` and ``bench/tui_bench.py``.
"""

from __future__ import annotations

import datetime
import functools
import math
import random
from typing import Any, Final, NamedTuple

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from limiquantix.protocol._gen.admin_pb2 import AuditRecord
from limiquantix.protocol._gen.fleet_pb2 import FleetCommand, FleetCommandEvent, FleetTarget, FleetTargetOutput
from limiquantix.protocol._gen.vm_service_pb2 import VM, ExecuteScriptEvent

from ._client import WhoAmI

__all__ = [
    "ADMIN",
    "CONTROLLER_URL",
    "FIXED_TIME",
    "OS_RELEASE",
    "SCRIPT",
    "audit_records",
    "demo_app",
    "fleet",
    "fleet_command",
    "iso",
    "set_unresponsive",
    "stream_events",
    "timestamp",
    "vm_detail",
]

#: The still clock of every demo: 2026-01-15 09:30:00 UTC.
FIXED_TIME: Final = datetime.datetime(2026, 1, 15, 9, 30, 0, tzinfo=datetime.timezone.utc).timestamp()
#: Shown in the header (never contacted).
CONTROLLER_URL: Final = "http://controller.example:8080"
AGENT_VERSION: Final = "0.1.0"
#: An admin token's identity, for role-dependent UI.
ADMIN: Final = WhoAmI(
    user="alice",
    role="admin",
    token_id="tok-demo",
    # The controller's names (controller/_auth.py Permission): the footer shows a key only
    # when its permission is here.
    permissions=frozenset(
        {
            "vm.read",
            "node.read",
            "command.read",
            "vm.exec",
            "file.read",
            "file.write",
            "vm.power",
            "command.run",
            "vm.password_reset",
            "token.manage",
            "node.manage",
            "audit.read",
        }
    ),  # fmt: skip
    label_scope={},
)

_DEBIAN: Final = ("Debian GNU/Linux 12 (bookworm)", "6.1.0-28-amd64", "debian", "12")
_UBUNTU: Final = ("Ubuntu 24.04.1 LTS", "6.8.0-51-generic", "ubuntu", "24.04")
_ROCKY: Final = ("Rocky Linux 9.5 (Blue Onyx)", "5.14.0-503.14.1.el9_5.x86_64", "rocky", "9.5")
_ALPINE: Final = ("Alpine Linux v3.21", "6.12.5-0-virt", "alpine", "3.21")
#: (pretty name, kernel, id, version) of a guest's OS.
_OS = tuple[str, str, str, str]

#: The hand-made start of every fleet: (name, node, state, os, labels); every state shown.
_NAMED: Final[tuple[tuple[str, str, str, _OS | None, dict[str, str]], ...]] = (
    ("web-01", "node-a", "connected", _DEBIAN, {"env": "prod", "role": "web"}),
    ("web-02", "node-a", "connected", _DEBIAN, {"env": "prod", "role": "web"}),
    ("web-03", "node-b", "connected", _UBUNTU, {"env": "prod", "role": "web"}),
    ("db-01", "node-b", "connected", _ROCKY, {"env": "prod", "role": "db"}),
    ("db-02", "node-c", "connected", _ROCKY, {"env": "prod", "role": "db"}),
    ("cache-01", "node-a", "unresponsive", _ALPINE, {"env": "prod", "role": "cache"}),
    ("build-01", "node-b", "waiting_for_agent", None, {"env": "ci"}),
    ("build-02", "node-b", "connecting", _UBUNTU, {"env": "ci"}),
    ("batch-01", "node-c", "connected", _UBUNTU, {"env": "staging"}),
    ("mail-01", "node-c", "connected", _DEBIAN, {"env": "prod", "role": "mail"}),
    ("legacy-01", "node-a", "no_socket", None, {}),
    ("win-01", "node-a", "disabled", None, {"env": "staging"}),
)
#: A node that stopped heartbeating: its VMs show as unreachable.
UNREACHABLE_NODE: Final = "node-c"
_OSES: Final = (_DEBIAN, _UBUNTU, _ROCKY, _ALPINE)


def iso(ts: float) -> str:
    """Unix seconds as the controller writes them (RFC 3339 UTC, milliseconds)."""
    return (
        datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def timestamp(ts: float) -> Timestamp:
    """Unix seconds as the controller's Timestamps hold them (milliseconds)."""
    out = Timestamp()
    out.FromMilliseconds(round(ts * 1000))
    return out


def _rng(*key: object) -> random.Random:
    """A generator seeded from text: the same sequence in every process (str seeds are hashed with SHA-512)."""
    return random.Random("/".join(map(str, key)))


class _Drawn(NamedTuple):
    """What of a VM no step moves: drawn once per index (seeding a generator from text is
    most of what a VM costs, and the benchmark and the tests make thousands per run)."""

    name: str
    node: str
    state: str
    os_info: _OS | None
    labels: dict[str, str]
    reachable: bool
    base_cpu: float
    base_mem: float
    phase: float
    age: float
    vm_id: str


@functools.cache
def _drawn(index: int) -> _Drawn:
    if index < len(_NAMED):
        name, node, state, os_info, labels = _NAMED[index]
        reachable = node != UNREACHABLE_NODE
    else:
        r = _rng("vm", index)
        name = f"vm-{index + 1:04d}"
        node = f"node-{index // 50:02d}"
        state = "connected" if r.random() < 0.9 else r.choice(("unresponsive", "waiting_for_agent", "no_socket"))
        os_info = r.choice(_OSES)
        labels = {"env": r.choice(("prod", "staging", "ci")), "rack": f"r{index % 8}"}
        reachable = True
    r = _rng("vm", index)
    base_cpu, base_mem = r.uniform(1, 70), r.uniform(15, 85)
    phase = r.uniform(0, 2 * math.pi)
    age = r.uniform(600, 40 * 86400)
    vm_id = f"{name}-{_rng('id', index).getrandbits(32):08x}"
    return _Drawn(name, node, state, os_info, labels, reachable, base_cpu, base_mem, phase, age, vm_id)


def _vm(index: int, step: int, now: float) -> VM:
    name, node, state, os_info, labels, reachable, base_cpu, base_mem, phase, age, vm_id = _drawn(index)
    boot = now - age
    seen = os_info is not None
    connected = state == "connected"
    wave = math.sin(step / 6 + phase)
    jitter = _rng("step", index, step).uniform(-4, 4)
    vm = VM(
        vm_id=vm_id,
        name=name,
        labels=labels,
        node_id=node,
        agent_state=state,
        node_reachable=reachable,
        agent_version=AGENT_VERSION if seen else "",
        ip_addresses=[f"192.0.2.{10 + index % 240}", f"2001:db8::{index + 10:x}"] if seen else [],
        hostname=name if seen else "",
        os=os_info[0] if os_info else "",
        kernel=os_info[1] if os_info else "",
        last_disconnect_reason="" if connected or not seen else "ping timed out after 15 s",
        cpu_percent=round(min(100.0, max(0.0, base_cpu * (1 + 0.6 * wave) + jitter)), 1) if connected else 0.0,
        memory_percent=round(min(100.0, max(0.0, base_mem + 5 * wave + jitter / 4)), 1) if connected else 0.0,
        uptime_seconds=float(round(now - boot)) if connected else 0.0,
    )
    if seen:
        vm.last_seen.CopyFrom(timestamp(now - 2 - index % 5 if reachable else now - 95))
    return vm


def fleet(count: int = 12, step: int = 0, *, now: float = FIXED_TIME) -> list[VM]:
    """A ListVMs answer: ``count`` VMs, the first 12 in every agent state (node-c
    unreachable), the rest generated; ``step`` moves CPU, memory and uptime."""
    return [_vm(i, step, now + 2 * step) for i in range(count)]


def set_unresponsive(vm: VM) -> None:
    """``vm`` as ListVMs shows a VM whose agent stopped answering (figures gone)."""
    vm.agent_state = "unresponsive"
    vm.cpu_percent = vm.memory_percent = vm.uptime_seconds = 0.0
    vm.last_disconnect_reason = "ping timed out after 15 s"


def vm_detail(index: int = 0, step: int = 0, *, now: float = FIXED_TIME) -> VM:
    """A GetVM answer for the fleet's VM ``index`` (a connected one: identity and
    telemetry); ``step`` advances its counters by 5 s of traffic."""
    vm = _vm(index, step, now)
    os_info = next((o for o in _OSES if o[0] == vm.os), _DEBIAN)
    r = _rng("detail", index)
    collected = now - 5 * (30 - step)
    boot = now - vm.uptime_seconds if vm.uptime_seconds else now - 86400
    rx = 3_200_000_000 + step * r.randint(200_000, 900_000) + _rng("rx", index, step).randint(0, 400_000)
    tx = 880_000_000 + step * r.randint(50_000, 300_000) + _rng("tx", index, step).randint(0, 120_000)
    n = 10 + index % 240

    def nic(
        name: str, mac: str, v4: list[tuple[str, int]], v6: list[tuple[str, int]], up: bool, rxb: int, txb: int
    ) -> dict[str, Any]:
        return {
            "name": name,
            "mac": mac,
            "ipv4": [{"address": a, "prefixLength": p, "ipv6": False} for a, p in v4],
            "ipv6": [{"address": a, "prefixLength": p, "ipv6": True} for a, p in v6],
            "up": up,
            "mtu": 1500,
            "rxBytes": str(rxb),
            "txBytes": str(txb),
            "rxPackets": str(rxb // 900),
            "txPackets": str(txb // 700),
            "rxErrors": "0",
            "txErrors": "0",
            "speedMbps": 0,
        }

    interfaces = [
        nic("eth0", f"00:00:5e:00:53:{n:02x}", [(f"192.0.2.{n}", 24)], [(f"2001:db8::{n:x}", 64)], True, rx, tx),
        nic("eth1", f"00:00:5e:00:53:{(n + 1) % 256:02x}", [(f"198.51.100.{n}", 24)], [], True, rx // 9, tx // 14),
        nic("eth2", f"00:00:5e:00:53:{(n + 2) % 256:02x}", [], [], False, 0, 0),
    ]
    gib = 1024**3
    filesystems = []
    for mount, fstype, device, total, pct in (
        ("/", "ext4", "/dev/vda1", 32 * gib, 41.0 + index % 7),
        ("/var", "xfs", "/dev/vdb1", 100 * gib, 78.5),
        ("/srv/data", "ext4", "/dev/vdc1", 500 * gib, 93.2),
        ("/boot/efi", "vfat", "/dev/vda15", 124 * 1024**2, 5.0),
    ):
        used = int(total * pct / 100)
        filesystems.append(
            {
                "mountpoint": mount,
                "device": device,
                "fstype": fstype,
                "totalBytes": str(total),
                "usedBytes": str(used),
                "freeBytes": str(total - used),
                "percent": pct,
            }
        )
    total_mem = 8 * gib
    used_mem = int(total_mem * vm.memory_percent / 100)
    capabilities = [
        "hello", "ping", "info", "get_telemetry", "execute", "file_read", "file_write",
        "file_stat", "list_directory", "shutdown", "reset_password", "cancel",
    ]  # fmt: skip
    identity = {
        "agentVersion": AGENT_VERSION,
        "protocolVersion": 1,
        "os": {
            "name": os_info[0].split(" ")[0],
            "version": os_info[3],
            "id": os_info[2],
            "versionId": os_info[3],
            "prettyName": os_info[0],
            "family": "linux",
        },
        "kernel": os_info[1],
        "kernelVersion": "#1 SMP PREEMPT_DYNAMIC",
        "architecture": "x86_64",
        "hostname": vm.name,
        "bootTime": iso(boot),
        "agentStartedAt": iso(boot + 9),
        "interfaces": interfaces,
        "capabilities": capabilities,
        "disabledCapabilities": ["reset_password"] if index % 2 else [],
        "pid": 412,
        "maxFrameBytes": str(16 * 1024 * 1024),
        "pythonVersion": "3.11.2",
        "machineId": f"{_rng('machine', index).getrandbits(128):032x}",
    }
    telemetry = {
        "collectedAt": iso(collected),
        "cpuPercent": vm.cpu_percent,
        "cpuCount": 4,
        "perCpuPercent": [vm.cpu_percent] * 4,
        "memory": {
            "totalBytes": str(total_mem),
            "usedBytes": str(used_mem),
            "availableBytes": str(total_mem - used_mem),
            "percent": vm.memory_percent,
        },
        "swap": {"totalBytes": str(gib), "usedBytes": "0", "freeBytes": str(gib)},
        "filesystems": filesystems,
        "interfaces": interfaces,
        "load1": round(vm.cpu_percent / 25, 2),
        "load5": round(vm.cpu_percent / 30, 2),
        "load15": round(vm.cpu_percent / 35, 2),
        "processCount": 143 + index,
        "uptimeSeconds": vm.uptime_seconds,
        "users": [],
    }
    json_format.ParseDict({"identity": identity, "telemetry": telemetry}, vm)
    return vm


#: The script the runner snapshot runs.
SCRIPT: Final = "uname -a\nuptime\ndf -h /\n"


def stream_events(vm_id: str) -> list[ExecuteScriptEvent]:
    """An ExecuteScriptStream's events for :data:`SCRIPT` on the fleet's VM 0."""
    out = [
        "Linux web-01 6.1.0-28-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22) x86_64 GNU/Linux\n",
        " 09:29:58 up 12 days,  3:04,  0 users,  load average: 0.42, 0.35, 0.31\n",
        "Filesystem      Size  Used Avail Use% Mounted on\n/dev/vda1        32G   13G   19G  41% /\n",
    ]
    events: list[dict[str, Any]] = [{"executionId": f"exec-{vm_id[:6]}-0001"}]
    for text in out:
        events.append({"output": {"stream": "stdout", "text": text}})
    events.append({"output": {"stream": "stderr", "text": "df: /mnt/old: Transport endpoint is not connected\n"}})
    events.append(
        {
            "result": {
                "exitCode": 1,
                "exitReason": "exited",
                "signal": 0,
                "timedOut": False,
                "durationMs": "37",
                "stdoutTruncated": False,
                "stderrTruncated": False,
                "error": "",
            }
        }
    )
    return [json_format.ParseDict(e, ExecuteScriptEvent()) for e in events]


def fleet_watch_events(vm_ids: list[str]) -> list[FleetCommandEvent]:
    """WatchCommand's events for :func:`fleet_command`'s run as it stands (still in progress):
    each VM's output, then its target without the output."""
    events: list[FleetCommandEvent] = []
    for target in fleet_command(vm_ids).targets:
        for stream, text in (("stdout", target.stdout), ("stderr", target.stderr)):
            if text:
                events.append(FleetCommandEvent(output=FleetTargetOutput(vm_id=target.vm_id, stream=stream, text=text)))
        bare = FleetTarget()
        bare.CopyFrom(target)
        bare.ClearField("stdout")
        bare.ClearField("stderr")
        events.append(FleetCommandEvent(target=bare))
    return events


def fleet_command(vm_ids: list[str], *, command_id: str = "cmd-0001") -> FleetCommand:
    """A GetCommand answer over ``vm_ids`` in every target status (the run still in progress)."""
    statuses = ("success", "success", "failed", "undeliverable", "in_progress", "timed_out", "pending", "skipped")
    targets = []
    counts: dict[str, int] = {}
    for i, vm_id in enumerate(vm_ids):
        status = statuses[i % len(statuses)]
        counts[status] = counts.get(status, 0) + 1
        exited = status in ("success", "failed")
        targets.append(
            {
                "vmId": vm_id,
                "nodeId": "node-a",
                "status": status,
                **({"exitCode": 0 if status == "success" else 2, "exitReason": "exited"} if exited else {}),
                # The command's timeout: no exit code, the reason and the signal sent instead.
                **({"exitReason": "timed_out", "signal": 15} if status == "timed_out" else {}),
                "stdout": f"{vm_id.rsplit('-', 1)[0]}\n 09:29:58 up 12 days,  load average: 0.42\n" if exited else "",
                "stderr": "grep: /etc/app.conf: No such file or directory\n" if status == "failed" else "",
                "stdoutTruncated": False,
                "stderrTruncated": False,
                "error": "node node-c is unreachable" if status == "undeliverable" else "",
                "startedAt": iso(FIXED_TIME - 4) if status != "pending" else None,
                "completedAt": iso(FIXED_TIME - 3) if exited else None,
                "durationMs": str(120 + 37 * i) if exited else "0",
            }
        )
    for t in targets:
        for key in ("startedAt", "completedAt"):
            if t[key] is None:
                del t[key]
    command = {
        "commandId": command_id,
        "status": "in_progress",
        "user": "alice",
        "tokenId": "tok-demo",
        "createdAt": iso(FIXED_TIME - 5),
        "command": "hostname; uptime; grep -c worker /etc/app.conf",
        "args": [],
        "timeoutSeconds": 60,
        "workingDirectory": "",
        "runAsUser": "",
        "environmentKeys": [],
        "targetVmIds": list(vm_ids),
        "targetLabels": {},
        "maxConcurrency": 50,
        "maxErrors": "0",
        "targetCount": len(vm_ids),
        "counts": counts,
        "targets": targets,
    }
    return json_format.ParseDict(command, FleetCommand())


#: A guest file for the viewer.
OS_RELEASE: Final = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
    'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\nHOME_URL="https://www.debian.org/"\n'
    'SUPPORT_URL="https://www.debian.org/support"\nBUG_REPORT_URL="https://bugs.debian.org/"\n'
)


def audit_records(vm_ids: list[str]) -> list[AuditRecord]:
    """QueryAudit ``records``, newest first: runs, files, power, a denial, tokens."""
    rows: list[tuple[str, str, str, dict[str, Any], str, int | None, int]] = [
        ("alice", "fleet.run", "", {"command": "hostname; uptime", "target": "cmd-0001"}, "pending", None, 0),
        ("alice", "vm.exec", vm_ids[0], {"command": "uname -a\nuptime"}, "success", 0, 37),
        (
            "bob",
            "vm.file_write",
            vm_ids[1],
            {"path": "/etc/app.conf", "size": "812", "sha256": "9f2c" * 16},
            "success",
            None,
            64,
        ),
        ("bob", "vm.exec", vm_ids[3], {"command": "systemctl", "args": ["restart", "postgresql"]}, "error", 1, 2310),
        ("carol", "vm.password_reset", vm_ids[2], {"username": "root", "flags": ["expire"]}, "denied", None, 1),
        ("alice", "vm.power", vm_ids[5], {"flags": ["reboot"]}, "success", None, 12),
        ("alice", "vm.file_read", vm_ids[0], {"path": "/etc/os-release", "size": "267"}, "success", None, 9),
        ("alice", "admin.token_create", "", {"target": "carol", "flags": ["role=viewer"]}, "success", None, 3),
    ]
    out = []
    for i, (user, action, vm_id, detail, outcome, code, ms) in enumerate(rows):
        record: dict[str, Any] = {
            "id": str(1000 - i),
            "startedAt": iso(FIXED_TIME - 60 * (i * i + 1)),
            "user": user,
            "tokenId": f"tok-{user}",
            "role": "admin" if user == "alice" else "operator",
            "sourceAddress": "198.51.100.7",
            "action": action,
            "vmId": vm_id,
            "nodeId": "",
            "detail": detail,
            "outcome": outcome,
            "durationMs": str(ms),
            "error": "permission denied" if outcome == "denied" else "",
        }
        if code is not None:
            record["exitCode"] = code
        out.append(json_format.ParseDict(record, AuditRecord()))
    return out


def demo_app(count: int = 12, history: int = 60, **kwargs: Any) -> Any:
    """A still :class:`LimiQuantixApp` (no poll, fixed clock, admin identity) and a
    function feeding it: ``feed()`` applies ``history`` fleet steps, so that
    the app holds sparkline history; call it once the app is running."""
    from ._app import LimiQuantixApp
    from ._config import TuiConfig

    app = LimiQuantixApp(
        # insecure: the demo controller is never contacted (no poll), no token leaves the process.
        TuiConfig(url=CONTROLLER_URL, token="demo-token", source="demo", insecure=True),
        poll=False,
        clock=lambda: FIXED_TIME,
        **kwargs,
    )
    app.me = ADMIN

    def feed() -> None:
        app.sub_title = f"{ADMIN.user} ({ADMIN.role}) @ {CONTROLLER_URL}"
        for step in range(history):
            app.apply_fleet(fleet(count, step - history + 1))

    return app, feed
