"""The committed generated code matches the .proto files; the schema keeps its contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from limiquantix.protocol._gen import agent_pb2, node_daemon_pb2, vm_service_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerate into a temp dir with the pinned protoc; any difference fails.

    Fix: `make proto` and commit the result.
    """
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True)
    committed = ROOT / "protocol" / "_gen"
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    current = {p.name: p.read_text() for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
    assert sorted(fresh) == sorted(current), "generated file set differs: run `make proto`"
    stale = [name for name in fresh if fresh[name] != current[name]]
    assert not stale, f"stale generated code in protocol/_gen: {stale}; run `make proto`"


def test_packages_are_the_designed_ones() -> None:
    assert agent_pb2.DESCRIPTOR.package == "limiquantix.agent.v1"
    assert node_daemon_pb2.DESCRIPTOR.package == "limiquantix.node.v1"
    assert vm_service_pb2.DESCRIPTOR.package == "limiquantix.compute.v1"


def test_reference_rpc_names_and_json_fields() -> None:
    """Names from the reference document (section 3 and the curl examples) are a contract."""
    vm = vm_service_pb2.DESCRIPTOR.services_by_name["VMService"]
    assert {"PingAgent", "ExecuteScript", "ReadGuestFile", "WriteGuestFile", "GuestShutdown"} <= set(vm.methods_by_name)
    node = node_daemon_pb2.DESCRIPTOR.services_by_name["NodeDaemonService"]
    assert {"PingAgent", "ExecuteInGuest", "ReadGuestFile", "WriteGuestFile", "GuestShutdown"} <= set(
        node.methods_by_name
    )
    req = vm_service_pb2.ExecuteScriptRequest.DESCRIPTOR
    assert {f.json_name for f in req.fields} >= {"vmId", "command", "timeoutSeconds"}
    resp = vm_service_pb2.ExecuteScriptResponse.DESCRIPTOR
    assert {f.json_name for f in resp.fields} >= {"exitCode", "stdout", "stderr", "timedOut", "durationMs"}
    ping = vm_service_pb2.PingAgentResponse.DESCRIPTOR
    assert {f.json_name for f in ping.fields} >= {"connected", "version"}


def test_agent_message_has_the_reference_oneof_numbers() -> None:
    """The reference's AgentMessage field numbers are kept (section 4.1)."""
    fields = agent_pb2.AgentMessage.DESCRIPTOR.fields_by_name
    expected = {
        "ping": 10, "execute": 11, "file_write": 12, "file_read": 13, "shutdown": 14,
        "pong": 50, "execute_response": 51, "telemetry": 100, "agent_ready": 101,
    }  # fmt: skip
    assert {name: fields[name].number for name in expected} == expected
