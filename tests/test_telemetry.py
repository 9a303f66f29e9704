"""Telemetry: the collector's figures, the periodic push, and the ip_changed event.

The ip_changed tests change addresses for real: each runs an agent process in
a network namespace of its own (``unshare --net``) and adds and removes
addresses on veth interfaces created inside it (``nsenter ... ip``), so this
machine's own interfaces are never touched and nothing outside can disturb
the test. They need root and util-linux/iproute2 and are skipped, saying why,
where a namespace cannot be made. Only failures that cannot be produced for
real (psutil raising) are simulated, and each such test says so.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from conftest import next_event, wait_for_socket

from limiquantix.agent import Agent, AgentConfig
from limiquantix.agent import _daemon as daemon_module
from limiquantix.agent._telemetry import (
    MIN_CPU_INTERVAL_S,
    PSEUDO_FSTYPES,
    TelemetryCollector,
    address_fingerprint,
    collect_interfaces,
    excluded,
    read_os_release,
)
from limiquantix.protocol import AgentClient
from limiquantix.protocol._gen import agent_pb2 as pb

#: Upper bound on anything a test waits for; a healthy run needs a fraction.
WAIT_S = 10.0
DEFAULT_EXCLUDE = ("lo", "docker*", "veth*", "virbr*", "cni*", "flannel*")


def check_report(report: pb.TelemetryReport) -> None:
    """Plausibility of one report taken on this machine."""
    assert abs(report.collected_at.ToNanoseconds() / 1e9 - time.time()) < 60
    assert report.cpu_count >= 1
    assert 0.0 <= report.cpu_percent <= 100.0
    assert all(0.0 <= p <= 100.0 for p in report.per_cpu_percent)
    mem = report.memory
    assert mem.total_bytes > 0
    assert 0 < mem.used_bytes <= mem.total_bytes
    assert mem.available_bytes <= mem.total_bytes
    assert 0.0 <= mem.percent <= 100.0
    assert report.swap.used_bytes <= report.swap.total_bytes
    assert report.process_count >= 1
    assert report.uptime_seconds > 0
    assert report.load1 >= 0 and report.load5 >= 0 and report.load15 >= 0
    for fs in report.filesystems:
        assert fs.fstype not in PSEUDO_FSTYPES
        assert fs.mountpoint.startswith("/")
        assert fs.used_bytes <= fs.total_bytes and fs.free_bytes <= fs.total_bytes
    names = [nic.name for nic in report.interfaces]
    assert names == sorted(names) and all(names)
    assert not [n for n in names if excluded(n, DEFAULT_EXCLUDE)]


# -- the collector -----------------------------------------------------------------


def test_default_exclude_patterns_are_the_documented_ones() -> None:
    assert AgentConfig().interface_exclude == DEFAULT_EXCLUDE


def test_sample_is_plausible() -> None:
    report = TelemetryCollector(DEFAULT_EXCLUDE).sample()
    check_report(report)
    assert report.cpu_count == psutil.cpu_count()
    assert "lo" not in [nic.name for nic in report.interfaces]


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def test_cpu_percent_comes_from_the_delta_between_samples() -> None:
    collector = TelemetryCollector()
    collector.sample()
    burner = threading.Thread(target=_burn, args=(MIN_CPU_INTERVAL_S + 0.2,))
    burner.start()
    burner.join()
    report = collector.sample()
    # One thread kept one CPU busy the whole interval: at least 1/cpu_count of
    # the machine, give or take the tick resolution.
    assert 100.0 / report.cpu_count * 0.5 < report.cpu_percent <= 100.0
    assert len(report.per_cpu_percent) == len(psutil.cpu_times(percpu=True))
    assert max(report.per_cpu_percent) > 40.0


def test_samples_too_close_together_repeat_the_last_cpu_figure() -> None:
    """A delta over a few 10 ms ticks is noise; over none it would read as idle."""
    collector = TelemetryCollector()
    _burn(MIN_CPU_INTERVAL_S + 0.05)
    first = collector.sample()
    second = collector.sample()
    assert first.cpu_percent > 0
    assert (second.cpu_percent, list(second.per_cpu_percent)) == (first.cpu_percent, list(first.per_cpu_percent))


def test_guest_time_is_not_counted_twice() -> None:
    """/proc/stat's user and nice already include guest and guest_nice."""
    fields = type(psutil.cpu_times())._fields
    if "guest" not in fields:  # pragma: no cover - not Linux
        pytest.skip("no guest time on this platform")
    zero = dict.fromkeys(fields, 0.0)
    old = type(psutil.cpu_times())(**zero)
    # 100 s elapsed: 50 s busy (all of it running a nested guest), 50 s idle.
    new = type(psutil.cpu_times())(**{**zero, "user": 50.0, "guest": 50.0, "idle": 50.0})
    assert TelemetryCollector._busy_fraction(old, new) == pytest.approx(50.0)
    iowait = type(psutil.cpu_times())(**{**zero, "user": 25.0, "iowait": 25.0, "idle": 50.0})
    assert TelemetryCollector._busy_fraction(old, iowait) == pytest.approx(25.0)
    assert TelemetryCollector._busy_fraction(new, old) == 0.0  # counters never run backwards here


def test_filesystems_leave_out_pseudo_filesystems() -> None:
    ours = TelemetryCollector.filesystems()
    mountpoints = [fs.mountpoint for fs in ours]
    assert len(mountpoints) == len(set(mountpoints))
    pseudo = {p.mountpoint for p in psutil.disk_partitions(all=True) if p.fstype in PSEUDO_FSTYPES}
    assert pseudo, "expected /proc, /sys and the like to be mounted"
    real = {p.mountpoint for p in psutil.disk_partitions(all=False) if p.fstype not in PSEUDO_FSTYPES}
    assert set(mountpoints) == real - pseudo
    for fs in ours:
        assert fs.fstype not in PSEUDO_FSTYPES and fs.total_bytes > 0 and fs.device


def test_interfaces_have_names_addresses_and_prefixes() -> None:
    everything = {nic.name: nic for nic in collect_interfaces(())}
    lo = everything["lo"]
    assert ("127.0.0.1", 8) in [(a.address, a.prefix_length) for a in lo.ipv4]
    assert lo.mtu > 0 and lo.up
    for nic in everything.values():
        assert nic.name
        for a in nic.ipv4:
            assert not a.ipv6 and 1 <= a.prefix_length <= 32 and a.address.count(".") == 3
        for a in nic.ipv6:
            assert a.ipv6 and 1 <= a.prefix_length <= 128 and "%" not in a.address
    # The defaults leave lo out; an empty list leaves everything in.
    assert "lo" not in [nic.name for nic in collect_interfaces(DEFAULT_EXCLUDE)]
    without_counters = collect_interfaces((), counters=False)
    assert [n.name for n in without_counters] == sorted(everything)
    assert all(n.rx_bytes == 0 and n.tx_bytes == 0 for n in without_counters)


def test_interface_exclude_patterns() -> None:
    for name in ("lo", "docker0", "veth1a2b", "virbr0-nic", "cni0", "flannel.1"):
        assert excluded(name, DEFAULT_EXCLUDE), name
    for name in ("eth0", "ens3", "lo0", "wlan0", "Docker0", "br-veth"):
        assert not excluded(name, DEFAULT_EXCLUDE), name
    assert excluded("eth0", ["e?h*"]) and not excluded("eth0", [])
    # On the real interfaces: patterns are shell-style and case-sensitive.
    assert "lo" not in [n.name for n in collect_interfaces(["l?"])]
    assert "lo" in [n.name for n in collect_interfaces(["LO", "lo?"])]


def test_address_fingerprint() -> None:
    nic = pb.NetworkInterface(name="eth0", rx_bytes=5)
    nic.ipv4.add(address="192.0.2.1", prefix_length=24)
    nic.ipv6.add(address="2001:db8::1", prefix_length=64, ipv6=True)
    assert address_fingerprint([nic]) == {("eth0", "192.0.2.1", 24), ("eth0", "2001:db8::1", 64)}
    # Counters and link state are not addresses.
    other = pb.NetworkInterface()
    other.CopyFrom(nic)
    other.rx_bytes, other.up = 10, True
    assert address_fingerprint([other]) == address_fingerprint([nic])
    other.ipv4[0].prefix_length = 25
    assert address_fingerprint([other]) != address_fingerprint([nic])


def test_read_os_release_parses_quoted_values(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text(
        "# written by a distribution\n"
        'NAME="Fedora Linux"\n'
        "VERSION='40 (Workstation Edition)'\n"
        "ID=fedora\n"
        "\n"
        "   # an indented comment=1\n"
        "VERSION_ID=40\n"
        'PRETTY_NAME="Fedora \\"Forty\\" \\$5 \\\\ done"\n'
        'BROKEN="unterminated\n'
    )
    info = read_os_release([str(path)])
    assert info.name == "Fedora Linux"
    assert info.version == "40 (Workstation Edition)"
    assert info.id == "fedora"
    assert info.version_id == "40"
    assert info.pretty_name == 'Fedora "Forty" $5 \\ done'
    assert info.family == sys.platform


def test_read_os_release_falls_back_in_order(tmp_path: Path) -> None:
    etc, usr = tmp_path / "etc-os-release", tmp_path / "usr-os-release"
    usr.write_text("NAME=Debian\nID=debian\n")
    assert read_os_release([str(etc), str(usr)]).id == "debian"  # /etc missing: /usr/lib
    etc.write_text("NAME=Custom\n")
    info = read_os_release([str(etc), str(usr)])
    assert (info.name, info.id) == ("Custom", "")  # the first file found is the whole truth
    assert read_os_release([str(tmp_path / "none")]).name == platform.system()


def test_read_os_release_of_this_machine() -> None:
    info = read_os_release()
    assert info.name and info.family == sys.platform
    if Path("/etc/os-release").exists():
        assert info.id and '"' not in info.pretty_name


# -- the agent: on demand and periodic ----------------------------------------------


@pytest.mark.trio
async def test_get_telemetry_answers(start_agent: Callable[..., Any], connect: Any) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        with trio.fail_after(WAIT_S):
            report = (await client.request(get_telemetry=pb.TelemetryRequest())).telemetry_response
    check_report(report)


@pytest.mark.trio
async def test_telemetry_is_pushed_every_interval(start_agent: Callable[..., Any], connect: Any) -> None:
    """Reports are sampled on a fixed grid from the loop's start: the k-th report a host gets
    was sampled no earlier than k intervals after the agent started. (The gap between two
    reports has no lower bound: a sample slowed by a loaded machine ends late and the next
    one, on time, ends right after it; comparing the gap with 0.1 s failed that way.)"""
    interval = 0.2
    before = time.time()
    agent = await start_agent(telemetry_interval_s=interval)
    async with connect(agent) as client:
        first = (await next_event(client, "telemetry")).telemetry
        second = (await next_event(client, "telemetry")).telemetry
    check_report(first)
    check_report(second)
    # Wall and monotonic clocks may disagree by a few ms.
    for k, report in enumerate((first, second), start=1):
        assert report.collected_at.ToNanoseconds() / 1e9 >= before + k * interval - 0.05, (k, report.collected_at)
    gap = (second.collected_at.ToNanoseconds() - first.collected_at.ToNanoseconds()) / 1e9
    assert 0 < gap < 2.0


@pytest.mark.trio
async def test_interval_zero_sends_no_telemetry(start_agent: Callable[..., Any], connect: Any) -> None:
    """Off means no loop at all; checked over a window in which a control agent pushes."""
    off = await start_agent(telemetry_interval_s=0)
    on = await start_agent(telemetry_interval_s=0.1)
    loops = lambda agent: [t for t in agent.background.child_tasks if t.name.endswith("_telemetry_loop")]  # noqa: E731
    assert loops(on) and not loops(off)
    seen: dict[str, int] = {"off": 0, "on": 0}

    async def count(name: str, client: AgentClient) -> None:
        async for msg in client.events:
            if msg.WhichOneof("payload") == "telemetry":
                seen[name] += 1

    async with connect(off) as c_off, connect(on) as c_on, trio.open_nursery() as nursery:
        nursery.start_soon(count, "off", c_off)
        nursery.start_soon(count, "on", c_on)
        with trio.fail_after(WAIT_S):
            while seen["on"] < 3:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert seen["off"] == 0


@pytest.mark.trio
async def test_telemetry_loop_survives_a_failed_sample(
    start_agent: Callable[..., Any], connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Simulated: psutil cannot be made to fail for real, so one sample raises."""
    agent: Agent = await start_agent(telemetry_interval_s=0.1)
    real = agent.collector.sample
    calls = 0

    def flaky() -> pb.TelemetryReport:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("simulated psutil failure")
        return real()

    agent.collector.sample = flaky  # type: ignore[method-assign]
    async with connect(agent) as client:
        check_report((await next_event(client, "telemetry")).telemetry)
        assert (await client.ping(b"up")).payload == b"up"
    assert calls >= 2
    assert "telemetry sample failed" in caplog.text


# -- ip_changed ---------------------------------------------------------------------


@pytest.mark.trio
async def test_identity_interfaces_follow_interface_exclude(start_agent: Callable[..., Any], connect: Any) -> None:
    default = await start_agent()
    everything = await start_agent(interface_exclude=())
    async with connect(default) as c1, connect(everything) as c2:
        assert c1.identity is not None and c2.identity is not None
        assert "lo" not in [n.name for n in c1.identity.interfaces]
        assert "lo" in [n.name for n in c2.identity.interfaces]


@pytest.mark.trio
async def test_ip_watch_survives_a_failing_interface_source(
    start_agent: Callable[..., Any], connect: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Simulated: reading interfaces cannot be made to fail for real, so the
    interface source is a fake that, once the host is attached, fails once and
    then reports a changed address; the watch loop must log, go on and report it."""
    nic = pb.NetworkInterface(name="eth0")
    nic.ipv4.add(address="192.0.2.1", prefix_length=24)
    changed = pb.NetworkInterface(name="eth0")
    changed.ipv4.add(address="192.0.2.2", prefix_length=24)
    script: list[Any] = []
    current = [nic]

    def fake(exclude: Any = (), *, counters: bool = True) -> list[pb.NetworkInterface]:
        nonlocal current
        if script:
            item = script.pop(0)
            if isinstance(item, Exception):
                raise item
            current = item
        return current

    monkeypatch.setattr(daemon_module, "collect_interfaces", fake)
    agent = await start_agent(ip_check_interval_s=0.05)
    async with connect(agent) as client:
        # From here on only the watch loop reads interfaces.
        script.extend([OSError("simulated getifaddrs failure"), [nic], [changed]])
        event = (await next_event(client, "ip_changed")).ip_changed
        assert not script
    assert [(n.name, [a.address for a in n.ipv4]) for n in event.interfaces] == [("eth0", ["192.0.2.2"])]
    assert "reading network interfaces failed" in caplog.text
    assert "simulated getifaddrs failure" in caplog.text


@pytest.mark.trio
async def test_identity_without_interfaces_when_they_cannot_be_read(
    start_agent: Callable[..., Any], connect: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Simulated as above: a host attaching must get an identity (without
    addresses), not bring the agent down."""

    def failing(exclude: Any = (), *, counters: bool = True) -> list[pb.NetworkInterface]:
        raise OSError("simulated getifaddrs failure")

    monkeypatch.setattr(daemon_module, "collect_interfaces", failing)
    agent = await start_agent()
    async with connect(agent) as client:
        assert client.identity is not None and client.identity.hostname
        assert list(client.identity.interfaces) == []
        assert (await client.ping(b"up")).payload == b"up"
    assert "reading network interfaces for the identity failed" in caplog.text


@functools.cache
def _netns_unavailable() -> str:
    """Why a network namespace with veth interfaces cannot be made here ("" if it can)."""
    if os.geteuid() != 0:
        return "needs root"
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (util-linux, iproute2)"
    probe = subprocess.run(
        ["unshare", "--net", "--", "ip", "link", "add", "lqxprobe0", "type", "veth", "peer", "name", "lqxprobe1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace with veth interfaces: {probe.stderr.strip()}"
    return ""


@dataclass
class NetnsAgent:
    """An agent process alone in a network namespace."""

    proc: subprocess.Popen[bytes]
    socket: str
    log: Path

    async def ip(self, *args: str) -> None:
        """Run ``ip ARGS`` inside the agent's namespace."""
        cmd = ["nsenter", f"--target={self.proc.pid}", "--net", "--", "ip", *args]
        result = await trio.run_process(cmd, capture_stderr=True, check=False)
        assert result.returncode == 0, f"{' '.join(cmd)}: {result.stderr.decode()}"


@pytest.fixture
def netns_agent(short_tmp: Path) -> Iterator[Callable[..., NetnsAgent]]:
    """``spawn(*flags)``: a ``limiquantix-agent`` in a fresh network namespace."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    procs: list[NetnsAgent] = []

    def spawn(*flags: str) -> NetnsAgent:
        n = len(procs)
        sock, log = str(short_tmp / f"ns{n}.sock"), short_tmp / f"ns{n}.log"
        args = [
            "unshare", "--net", "--",  # execs the agent: same pid, new namespace
            sys.executable, "-m", "limiquantix.agent", "--transport", "unix-listen", "--socket", sock,
            "--telemetry-interval-s", "0", "--ip-check-interval-s", "0.05", "--log-level", "debug", *flags,
        ]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        agent = NetnsAgent(proc, sock, log)
        procs.append(agent)
        wait_for_socket(proc, sock, log)
        return agent

    yield spawn
    for agent in procs:  # the namespace and its interfaces go with the process
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.proc.wait()


@asynccontextmanager
async def _client(agent: NetnsAgent) -> AsyncIterator[AgentClient]:
    with trio.fail_after(WAIT_S):
        async with AgentClient.connect_unix(agent.socket) as client:
            yield client


def _addresses(event: pb.IpChangedEvent) -> dict[str, list[tuple[str, int]]]:
    return {n.name: [(a.address, a.prefix_length) for a in (*n.ipv4, *n.ipv6)] for n in event.interfaces}


async def wait_for_address_checks(agent: NetnsAgent) -> None:
    """Until the agent has run an address check that began after this call.

    The check running at the call may have read the interfaces before a change
    just made: the second one to finish after the call began after it. Its
    debug line is the signal (the agent runs with --log-level debug), so a
    "no event" assertion cannot pass merely because no check ran.
    """
    start = agent.log.read_text(errors="replace").count("addresses checked")
    with trio.fail_after(WAIT_S):
        while agent.log.read_text(errors="replace").count("addresses checked") < start + 2:
            await trio.sleep(0.01)


@pytest.mark.trio
async def test_ip_changed_follows_real_address_changes(netns_agent: Callable[..., NetnsAgent]) -> None:
    agent = netns_agent()
    await agent.ip("link", "add", "lqx0", "type", "veth", "peer", "name", "veth-lqx1")
    async with _client(agent) as client:
        assert client.identity is not None
        assert [n.name for n in client.identity.interfaces] == ["lqx0"]  # lo and veth* left out

        await agent.ip("addr", "add", "192.0.2.10/24", "dev", "lqx0")
        event = (await next_event(client, "ip_changed")).ip_changed
        assert _addresses(event) == {"lqx0": [("192.0.2.10", 24)]}
        [nic] = event.interfaces
        assert nic.mac.count(":") == 5 and nic.mtu == 1500 and not nic.ipv4[0].ipv6

        # An address on an excluded interface is no change at all: the next
        # event is the one for the IPv6 address added after a few checks.
        await agent.ip("addr", "add", "198.51.100.7/24", "dev", "veth-lqx1")
        await wait_for_address_checks(agent)
        await agent.ip("-6", "addr", "add", "2001:db8::5/64", "dev", "lqx0")
        event = (await next_event(client, "ip_changed")).ip_changed
        assert _addresses(event) == {"lqx0": [("192.0.2.10", 24), ("2001:db8::5", 64)]}
        assert event.interfaces[0].ipv6[0].ipv6

        # A changed prefix is a change; so is a removal.
        await agent.ip("addr", "del", "192.0.2.10/24", "dev", "lqx0")
        await agent.ip("addr", "add", "192.0.2.10/25", "dev", "lqx0")
        event = (await next_event(client, "ip_changed")).ip_changed
        if ("192.0.2.10", 25) not in _addresses(event)["lqx0"]:  # the checker saw the gap between the two
            event = (await next_event(client, "ip_changed")).ip_changed
        assert _addresses(event) == {"lqx0": [("192.0.2.10", 25), ("2001:db8::5", 64)]}
        await agent.ip("addr", "flush", "dev", "lqx0")
        event = (await next_event(client, "ip_changed")).ip_changed
        assert _addresses(event) == {"lqx0": []}


@pytest.mark.trio
async def test_interface_exclude_replaces_the_default_patterns(netns_agent: Callable[..., NetnsAgent]) -> None:
    agent = netns_agent("--interface-exclude", "lqx*,lo")
    await agent.ip("link", "add", "lqx0", "type", "veth", "peer", "name", "veth-lqx1")
    async with _client(agent) as client:
        # Excluded by the configured pattern: no event (the positive control follows).
        await agent.ip("addr", "add", "192.0.2.10/24", "dev", "lqx0")
        await wait_for_address_checks(agent)
        # veth* is a default pattern, not a configured one: reported.
        await agent.ip("addr", "add", "198.51.100.7/24", "dev", "veth-lqx1")
        event = (await next_event(client, "ip_changed")).ip_changed
    assert _addresses(event) == {"veth-lqx1": [("198.51.100.7", 24)]}


def test_memory_trim_and_rss() -> None:
    """malloc_trim is reachable on glibc and RSS reads from /proc."""
    from limiquantix.agent import _memory as memory

    assert memory.rss_bytes() > 1024 * 1024
    assert memory.trim() is True  # Debian is glibc
