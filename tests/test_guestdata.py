"""Guest data is bounded and inert: the caps hostd applies to what a guest reports
(protocol/guestcaps.py), and guest text made safe for terminals and text logs
(protocol/_safetext.py), end to end with a simulated hostile guest
(tests/hostile_guest.py) against a real hostd and a real controller."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from hostile_guest import (
    ATTACKS,
    CLIPBOARD,
    RLO,
    TITLE,
    HostileGuest,
    huge_identity,
    huge_telemetry,
    terminal_identity,
    terminal_telemetry,
)

from limiquantix.hostd import ConnectionConfig, DiscoveryConfig, VMEntry
from limiquantix.hostd._api import heartbeat_status, vm_status
from limiquantix.hostd._discovery import VMRegistry
from limiquantix.protocol import ESCAPED, StreamEscaper, guestcaps, safe_bytes, safe_text
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol._logs import JsonFormatter, TextFormatter
from limiquantix.protocol.guestcaps import (
    ADDRESS_BYTES,
    HEARTBEAT_ADDRESSES,
    MAX_ADDRESSES,
    MAX_ADDRESSES_PER_INTERFACE,
    MAX_CPUS,
    MAX_INTERFACES,
    MESSAGE_BYTES,
    NAME_BYTES,
    TEXT_BYTES,
    cap_identity,
    cap_interfaces,
    cap_message,
    cap_telemetry,
)

WAIT_S = 30.0


# The issue's guest data takes ~0.3 CPU-s to build (10k interfaces, 5k addresses): built
# once for the module's tests, which only read it (capping copies, the guest encodes; the
# first caps test checks that the original is left alone).
issue_identity = functools.cache(huge_identity)
issue_telemetry = functools.cache(huge_telemetry)
FAST = ConnectionConfig(ping_interval_s=0.2, connect_grace_s=0.2, backoff_initial_s=0.05, socket_poll_s=0.05)
#: Characters that must never reach a terminal raw: ESC, BEL, CSI (C1), bidi override and isolate.
RAW: tuple[str, ...] = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066")


# ---------------------------------------------------------------- safe_text: the table


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        ("\x1b]52;c;cHduZWQ=\x07", "\\x1b]52;c;cHduZWQ=\\x07"),
        ("\x1b[?1049l\x1b[2J", "\\x1b[?1049l\\x1b[2J"),
        ("\x00\x08\x7f", "\\x00\\x08\\x7f"),
        ("\x9b31m\x9d0;t\x9c", "\\x9b31m\\x9d0;t\\x9c"),  # C1 CSI, OSC, ST
        ("a\tb\nc\rd", "a\\tb\\nc\\rd"),
        ("exe.\u202etxt", "exe.\\u202etxt"),
        (
            "\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061c",
            "\\u202a\\u202b\\u202c\\u202d\\u2066\\u2067\\u2068\\u2069\\u200e\\u200f\\u061c",
        ),
        ("l1\u2028l2\u2029", "l1\\u2028l2\\u2029"),
        ("\udcff", "\\udcff"),
        ("plain: é ü 日本 ∑ \\x1b [bold]", "plain: é ü 日本 ∑ \\x1b [bold]"),  # kept, backslash too
    ],
)
def test_safe_text_table(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


def test_safe_text_multiline_keeps_lf_and_tab_only() -> None:
    assert safe_text("a\tb\nc\r\n\x1b[2J", multiline=True) == "a\tb\nc\\r\n\\x1b[2J"
    # Every code point of the table is replaced, and nothing replaced is printable.
    for cp, rep in ESCAPED.items():
        assert safe_text(chr(cp)) == rep and rep.isprintable() and rep.isascii()


def test_stream_escaper_joins_utf8_split_across_chunks() -> None:
    data = "é\x1b[2J日".encode()
    esc = StreamEscaper()
    assert "".join(esc.feed(data[i : i + 1]) for i in range(len(data))) + esc.feed(b"", final=True) == "é\\x1b[2J日"
    assert safe_bytes(b"\xff\x1bx\n") == "\ufffd\\x1bx\n"


def test_text_log_escapes_message_and_arguments_json_log_escapes_the_rest() -> None:
    record = logging.LogRecord(
        "lqx", logging.INFO, __file__, 1, "vm %s: host %s\x1b[2J", ("a\nb", TITLE + RLO + "\x9b"), None
    )
    line = TextFormatter().format(record)
    assert line == "INFO lqx: vm a\\nb: host \\x1b]0;pwned\\x07\\u202e\\x9b\\x1b[2J"
    assert not any(c in line for c in RAW) and "\n" not in line
    as_json = JsonFormatter().format(record)
    assert not any(c in as_json for c in RAW) and json.loads(as_json)["msg"] == record.getMessage()
    try:
        raise ValueError(f"bad {TITLE}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    tb = TextFormatter().format(record)
    assert "\n" in tb and "bad \\x1b]0;pwned\\x07" in tb and not any(c in tb for c in RAW)


# ---------------------------------------------------------------- caps: the rules


def test_the_issues_identity_is_cut_to_the_caps_and_marked() -> None:
    ident = issue_identity()
    capped, cuts = cap_identity(ident)
    assert capped.truncated and not ident.truncated
    assert len(ident.hostname) == 1 << 20 and len(ident.interfaces) == 10_000  # the original is left alone
    assert len(capped.hostname) == NAME_BYTES and len(capped.os.pretty_name) == NAME_BYTES
    assert len(capped.interfaces) <= MAX_INTERFACES
    assert len(capped.interfaces[0].ipv4) + len(capped.interfaces[0].ipv6) == MAX_ADDRESSES_PER_INTERFACE
    assert capped.ByteSize() <= MESSAGE_BYTES
    summary = cuts.summary()
    assert "hostname 1048576→255" in summary and "interfaces 10000→256" in summary
    assert len(summary) < 400 and cuts.under("interfaces") and not cuts.under("capabilities")


def test_a_normal_identity_and_report_are_kept_whole() -> None:
    for msg, cap in ((terminal_identity(), cap_identity), (terminal_telemetry(), cap_telemetry)):
        capped, cuts = cap(msg)  # type: ignore[operator]
        assert capped == msg and not cuts and not capped.truncated and capped is not msg


def test_a_report_over_its_byte_budget_keeps_its_first_entries_whole() -> None:
    capped, cuts = cap_telemetry(issue_telemetry())
    assert capped.truncated and capped.ByteSize() <= MESSAGE_BYTES
    assert len(capped.per_cpu_percent) <= MAX_CPUS
    assert all(len(nic.name) == NAME_BYTES for nic in capped.interfaces)
    assert capped.interfaces and len(capped.interfaces[0].ipv4) == MAX_ADDRESSES_PER_INTERFACE
    assert "interfaces" in cuts.fields and "filesystems.mountpoint" in cuts.fields


def test_string_bounds_by_kind() -> None:
    ident = pb.AgentIdentity(kernel_version="v" * 10_000, machine_id="m" * 300)
    ident.interfaces.add(
        name="eth0", ipv4=[pb.IpAddress(address="1" * 100)], ipv6=[pb.IpAddress(address="f") for _ in range(70)]
    )
    capped, _ = cap_identity(ident)
    assert len(capped.kernel_version) == TEXT_BYTES and len(capped.machine_id) == NAME_BYTES
    nic = capped.interfaces[0]
    assert len(nic.ipv4[0].address) == ADDRESS_BYTES and len(nic.ipv6) == MAX_ADDRESSES_PER_INTERFACE - 1
    stopping, cuts = cap_message(pb.AgentStoppingEvent(reason="r" * 5000))
    assert len(stopping.reason) == TEXT_BYTES and cuts
    interfaces, cuts = cap_interfaces([pb.NetworkInterface(name=str(i)) for i in range(1000)])
    assert len(interfaces) == MAX_INTERFACES and cuts.fields == {"interfaces": (1000, MAX_INTERFACES)}
    # Addresses: 64 per interface, and MAX_ADDRESSES in the whole message (the first interfaces keep theirs).
    many = [pb.NetworkInterface(name=str(i), ipv4=[pb.IpAddress(address="10.0.0.1")] * 64) for i in range(100)]
    interfaces, cuts = cap_interfaces(many)
    assert [len(nic.ipv4) for nic in interfaces[: MAX_ADDRESSES // 64 + 1]] == [64] * (MAX_ADDRESSES // 64) + [0]
    assert sum(len(nic.ipv4) for nic in interfaces) == MAX_ADDRESSES and len(interfaces) == 100 and cuts


# ---------------------------------------------------------------- hostd with a hostile guest


@functools.cache
def _changed_interfaces() -> list[pb.NetworkInterface]:
    """An ip_changed of 10k interfaces, the first with 10k addresses (~60,000 fields: within
    what hostd parses of a report, over every cap of what it keeps; built once, as the issue's
    identity is)."""
    nics = [
        pb.NetworkInterface(name=f"c{i}", ipv4=[pb.IpAddress(address=f"172.16.{i >> 8 & 255}.{i & 255}")])
        for i in range(10_000)
    ]
    nics[0].ipv4.extend(pb.IpAddress(address=f"172.17.{i >> 8 & 255}.{i & 255}") for i in range(10_000))
    return nics


@asynccontextmanager
async def one_vm_registry(nursery: trio.Nursery, guest: HostileGuest) -> AsyncIterator[VMRegistry]:
    """``guest`` serving its socket, and hostd's registry of that one VM (``evil``)."""
    await nursery.start(guest.serve)
    discovery = DiscoveryConfig(socket_dir="", libvirt_channel_root="")
    async with VMRegistry.open(
        entries=[VMEntry(id="evil", socket=guest.path)], discovery=discovery, connection=FAST
    ) as registry:
        yield registry


@pytest.mark.trio
async def test_hostd_keeps_serves_heartbeats_and_logs_a_huge_guest_within_the_caps(
    nursery: trio.Nursery, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="limiquantix")
    path = str(short_tmp / "evil.sock")
    guest = HostileGuest(path, issue_identity(), issue_telemetry(), pushes=5, ip_changed=_changed_interfaces())
    async with one_vm_registry(nursery, guest) as registry:
        conn = registry.get("evil")
        with trio.fail_after(WAIT_S):
            await guest.pushed.wait()
            await conn.wait_until(lambda c: c.ip_addresses[:1] == ["172.16.0.0"] and c.telemetry is not None)

        # What hostd keeps: capped copies only (the client's identity too).
        assert conn.identity is not None and conn.identity.truncated and conn.identity.ByteSize() <= MESSAGE_BYTES
        assert conn._client is not None and conn._client.identity is conn.identity
        assert conn.telemetry is not None and conn.telemetry.truncated and conn.telemetry.ByteSize() <= MESSAGE_BYTES

        # What GetVM serves: bounded, marked.
        status = vm_status(conn)
        assert status.agent.identity.truncated and status.resource_usage.telemetry.truncated
        assert status.agent.ip_addresses_truncated
        assert len(status.agent.identity.hostname) == NAME_BYTES
        assert status.ByteSize() < 4 * MESSAGE_BYTES

        # The heartbeat: a few hundred bytes of this VM, however much it sent.
        heartbeat = api_pb.HeartbeatRequest(
            node_id="host-a", vms=[heartbeat_status(vm_status(c)) for c in registry.connections()]
        )
        (vm,) = heartbeat.vms
        os = vm.agent.identity.os
        assert len(vm.agent.identity.hostname) == NAME_BYTES and len(os.pretty_name or os.name) == NAME_BYTES
        assert len(vm.agent.ip_addresses) == HEARTBEAT_ADDRESSES
        assert heartbeat.ByteSize() < 8 * 1024

    # The log: one summary line per kind of message cut, and no line carries the guest's bulk.
    cut_lines = [r.getMessage() for r in caplog.records if "over hostd's caps" in r.getMessage()]
    assert len(cut_lines) == 3, cut_lines
    assert {line.split(": ")[1].split(" ")[0] for line in cut_lines} == {"identity", "telemetry", "ip_changed"}
    assert all(len(r.getMessage()) < 2048 for r in caplog.records)
    assert any("hostname 1048576→255" in line for line in cut_lines)


@pytest.mark.trio
async def test_hostds_text_log_shows_guest_escape_sequences_visibly(
    nursery: trio.Nursery, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="limiquantix")
    path = str(short_tmp / "evil.sock")
    guest = HostileGuest(
        path, terminal_identity(), terminal_telemetry(), ip_changed=list(terminal_identity().interfaces)
    )
    async with one_vm_registry(nursery, guest) as registry:
        conn = registry.get("evil")
        with trio.fail_after(WAIT_S):
            await guest.pushed.wait()
            await conn.wait_until(lambda c: c.telemetry is not None)
        # Small guest text is kept as sent (it is data; it is rendered safe where shown).
        assert conn.identity is not None and conn.identity.hostname == TITLE and not conn.identity.truncated
    lines = [TextFormatter().format(r) for r in caplog.records]
    text = "\n".join(lines)
    assert "agent 0.1.0 connected" in text
    assert safe_text(CLIPBOARD) in text and "\\u202elmth.exe" in text  # the OS name, shown escaped
    assert "10.0.0.5\\x1b]0;pwned\\x07" in text  # an address from ip_changed
    assert not any(c in text for c in RAW), [line for line in lines if any(c in line for c in RAW)]
    assert all(a not in text for a in ATTACKS)
    assert guestcaps.brief_list([str(i) for i in range(10)], 3) == "0, 1, 2 … (+7 more)"


@pytest.mark.trio
async def test_a_huge_guest_through_a_real_controller_leaves_its_node_reachable_and_getvm_small(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """The issue's incident: the heartbeat stays far below the controller's limit (the node
    stays reachable) and one GetVM answer is bounded, marked truncated."""
    from test_controller_api import Stack, _make_tokens

    db = short_tmp / "db" / "controller.db"
    tokens = await _make_tokens(db)
    guest = HostileGuest(
        str(short_tmp / "evil.sock"), issue_identity(), issue_telemetry(), ip_changed=_changed_interfaces()
    )
    await nursery.start(guest.serve)
    async with httpx.AsyncClient(timeout=WAIT_S) as client:
        st = Stack(short_tmp, db, tokens, client, nursery)
        await st.start_controller()
        await st.start_hostd({"evil": {}})
        with trio.fail_after(WAIT_S):
            while True:
                vms = (await st.ok("ListVMs", {}))["vms"]
                if (
                    vms
                    and vms[0]["agentState"] == "connected"
                    and vms[0].get("ipAddresses", [""])[0].startswith("172.")
                ):
                    break
                await trio.sleep(0.05)
            while not (detail := await st.call("GetVM", {"vmId": "evil"})).json().get("telemetry"):
                await trio.sleep(0.05)
        (vm,) = vms
        assert vm["nodeReachable"] and len(vm["hostname"]) == NAME_BYTES and len(vm["os"]) == NAME_BYTES
        assert len(vm["ipAddresses"]) == HEARTBEAT_ADDRESSES
        assert detail.status_code == 200 and len(detail.content) < 512 * 1024
        answer = detail.json()
        assert answer["identity"]["truncated"] is True and answer["telemetry"]["truncated"] is True
        assert len(answer["identity"]["interfaces"]) == MAX_INTERFACES
        st.hostd_scope.cancel()
        await st.stop_controller()


def test_an_agents_error_text_is_cut_to_the_caps() -> None:
    from limiquantix.protocol import errors
    from limiquantix.protocol.limits import MAX_ERROR_MESSAGE_BYTES, MAX_NAME_BYTES

    exc = errors.from_proto(pb.Error(code=pb.ERROR_CODE_NOT_FOUND, message="m" * 1_000_000, reason="r" * 1000))
    assert (
        isinstance(exc, errors.NotFound)
        and len(exc.message) == MAX_ERROR_MESSAGE_BYTES
        and len(exc.reason) == MAX_NAME_BYTES
    )
