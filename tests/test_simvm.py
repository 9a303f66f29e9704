"""``limiquantix-simvm``: real simulated VMs (processes) with real agents on real ptys.

The tests that power off or signal a simulated VM start ``python -m limiquantix.hostd.simvm``
on a socket in a short temp dir; those whose VM lives on (hello, reboot, password) borrow
one of the session's (``lent_vm``, conftest.SimVMPool: the same command, started once);
the two about the port alone (one host client at a time, bytes held for the next client)
serve :class:`SimulatedPort`, the bridge the command runs, in the test's trio loop. Each
talks to it as hostd does (:class:`AgentClient` over the socket). Nothing here touches the
machine's power or accounts: the simulated VM's stand-ins record what they were asked in
its state directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
import trio
from conftest import StartSimVM, next_event
from trio.testing import wait_all_tasks_blocked

from limiquantix.agent import Agent, AgentConfig
from limiquantix.hostd import simvm
from limiquantix.hostd.simvm import SimulatedPort, SimVMProcess
from limiquantix.protocol import AgentClient
from limiquantix.protocol._gen import agent_pb2 as pb

#: Upper bound on anything a test waits for; a healthy run needs a fraction.
WAIT_S = 10.0
#: No telemetry unless a test asks: quieter streams, less CPU.


def agent_pids(vm: SimVMProcess) -> list[int]:
    """The simulated VM's agent process(es) (its direct children)."""
    return [p.pid for p in psutil.Process(vm.proc.pid).children()]


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def wait_file_lines(path: Path, n: int) -> list[dict[str, object]]:
    while len(found := records(path)) < n:
        await trio.sleep(0.01)
    return found


@asynccontextmanager
async def connected(vm: SimVMProcess) -> AsyncIterator[AgentClient]:
    """Once ``vm``'s socket is up: a client connected to it as hostd connects (hello answered)."""
    await vm.wait_ready()
    async with AgentClient.connect_unix(vm.socket_path) as client:
        yield client


@pytest.mark.trio
async def test_serves_hello_and_ping_through_its_socket(lent_vm: SimVMProcess) -> None:
    vm = lent_vm
    with trio.fail_after(WAIT_S):
        async with connected(vm) as client:
            assert client.identity is not None
            assert (await client.ping(b"\x00\xff" * 100)).payload == b"\x00\xff" * 100
            assert agent_pids(vm) == [client.identity.pid]
    # The guest's device is a udev-style link to the pty slave, in the state dir.
    link = vm.state_dir / simvm.DEVICE_NAME
    assert os.readlink(link).startswith("/dev/pts/")
    assert (vm.state_dir / simvm.AGENT_CONFIG_FILE).exists()
    assert oct(os.stat(vm.socket_path).st_mode & 0o777) == oct(0o600)


async def serve_port(nursery: trio.Nursery, socket_path: str, *, agent: bool) -> SimulatedPort:
    """The simulated VM's port (:class:`SimulatedPort`) served in this trio loop, with the
    real agent on its pty in this process too unless ``agent=False``."""
    port = SimulatedPort(socket_path)
    await nursery.start(port.serve)
    if agent:
        config = AgentConfig(transport="virtio", device=port.device_path, telemetry_interval_s=0)
        await nursery.start(Agent(config).run)
    return port


@pytest.mark.trio
async def test_one_host_client_at_a_time(nursery: trio.Nursery, short_tmp: Path) -> None:
    """Like QEMU: a second client connects but is served only once the first leaves."""
    port = await serve_port(nursery, str(short_tmp / "vm.sock"), agent=True)
    second_synced = trio.Event()

    async def second() -> None:
        async with AgentClient.connect_unix(port.socket_path) as client:
            second_synced.set()
            assert (await client.ping(b"2")).payload == b"2"

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as clients:
            async with AgentClient.connect_unix(port.socket_path) as first:
                clients.start_soon(second)
                # Port, agent and both clients run in this loop: once every task waits, the
                # second has connected and sent its hello, and nothing is serving it.
                await wait_all_tasks_blocked(0.05)
                assert not second_synced.is_set() and port.clients_served == 1
                assert (await first.ping(b"1")).payload == b"1"
            # The first left: the second is accepted and answered.
            await second_synced.wait()
            assert port.clients_served == 2


@pytest.mark.trio
@pytest.mark.parametrize("mode", ["poweroff", pytest.param("halt", marks=pytest.mark.slow)])
async def test_guest_poweroff_stops_the_vm_and_removes_the_socket(start_simvm: StartSimVM, mode: str) -> None:
    """Both modes take the same way through the simulated VM (the stand-in's SIGUSR1): halt, a
    process of its own, is the slow tier's; that the agent runs halt_command for a halt is
    test_lifecycle's (test_scheduled_shutdown_outlives_the_session)."""
    vm = start_simvm()
    with trio.fail_after(WAIT_S):
        async with connected(vm) as client:
            (agent_pid,) = agent_pids(vm)
            answer = await client.request(
                shutdown=pb.ShutdownRequest(mode=f"SHUTDOWN_MODE_{mode.upper()}", message="bye")
            )
            assert answer.shutdown_response.accepted
            # The port closes under the host: the connection ends.
            async for _ in client.events:
                pass
        assert await vm.wait_exit() == 0
    assert not os.path.exists(vm.socket_path)
    assert not psutil.pid_exists(agent_pid) or psutil.Process(agent_pid).status() == psutil.STATUS_ZOMBIE
    (record,) = records(vm.state_dir / simvm.POWER_LOG_FILE)
    assert record["action"] == mode and record["message"] == "bye"
    assert "powered off by the guest" in vm.output()


@pytest.mark.trio
async def test_reboot_restarts_the_agent_on_the_same_connection(lent_vm: SimVMProcess) -> None:
    vm = lent_vm
    power_log = vm.state_dir / simvm.POWER_LOG_FILE
    earlier = len(records(power_log))  # a borrowed VM may have rebooted for an earlier test
    with trio.fail_after(WAIT_S):
        async with connected(vm) as client:
            assert client.identity is not None
            old_pid = client.identity.pid
            answer = await client.request(shutdown=pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_REBOOT))
            assert answer.shutdown_response.accepted
            ready = await next_event(client, "agent_ready")
            assert ready.agent_ready.identity.pid != old_pid
            # Same host connection, new agent behind it.
            assert (await client.ping(b"after")).payload == b"after"
            assert agent_pids(vm) == [ready.agent_ready.identity.pid]
    assert vm.proc.poll() is None and os.path.exists(vm.socket_path)
    assert [r["action"] for r in records(power_log)[earlier:]] == ["reboot"]


def _fingerprint(path: str) -> tuple[float, int, str]:
    st = os.stat(path)
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except PermissionError:  # not root: the metadata still tells
        digest = ""
    return (st.st_mtime, st.st_size, digest)


@pytest.mark.trio
async def test_password_reset_goes_to_the_stand_in_never_to_the_host(lent_vm: SimVMProcess) -> None:
    password = "Tr0ub4dor&3 with: colon"
    shadow_before = _fingerprint("/etc/shadow")
    vm = lent_vm
    password_log = vm.state_dir / simvm.PASSWORD_LOG_FILE
    earlier = len(records(password_log))  # a borrowed VM: earlier tests' resets are there too
    with trio.fail_after(WAIT_S):
        async with connected(vm) as client:
            answer = await client.request(
                reset_password=pb.ResetPasswordRequest(username="root", password=password, expire=True)
            )
            assert answer.reset_password_response.expired
    assert _fingerprint("/etc/shadow") == shadow_before
    log_text = password_log.read_text()
    assert password not in log_text
    changed, expired = records(password_log)[earlier:]
    assert changed["user"] == "root"
    assert changed["password_sha256"] == hashlib.sha256(password.encode()).hexdigest()
    assert expired == {"user": "root", "expire": True, "time": expired["time"]}
    assert password not in (vm.state_dir / simvm.AGENT_LOG_FILE).read_text()


@pytest.mark.trio
async def test_sigterm_stops_the_agent_removes_the_socket_and_exits_0(start_simvm: StartSimVM) -> None:
    vm = start_simvm()
    with trio.fail_after(WAIT_S):
        async with connected(vm) as client:
            assert client.identity is not None
            agent_pid = client.identity.pid
            vm.proc.send_signal(signal.SIGTERM)
            async for _ in client.events:
                pass  # the connection ends
        assert await vm.wait_exit() == 0
    assert not os.path.exists(vm.socket_path)
    assert not os.path.lexists(vm.state_dir / simvm.DEVICE_NAME)
    assert not psutil.pid_exists(agent_pid) or psutil.Process(agent_pid).status() == psutil.STATUS_ZOMBIE
    assert "received SIGTERM" in (vm.state_dir / simvm.AGENT_LOG_FILE).read_text()


@pytest.mark.trio
async def test_guest_bytes_wait_for_a_host_client_and_host_bytes_reach_the_guest(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """The QEMU imitation, byte for byte, with no agent in the way.

    What the guest writes while no host client is attached is held and handed to
    the next client; what a host client sends reaches the guest's device.
    """
    port = await serve_port(nursery, str(short_tmp / "vm.sock"), agent=False)
    with trio.fail_after(WAIT_S):
        guest = os.open(port.device_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            os.write(guest, b"written before any host\x00\r\n\x03")
            sock = await trio.open_unix_socket(port.socket_path)
            async with sock:
                got = b""
                while len(got) < 27:
                    got += await sock.receive_some(1024)
                assert got == b"written before any host\x00\r\n\x03"  # raw: no CR/LF mapping, no ^C
                await sock.send_all(b"\x00from the host\r\n")
                heard = b""
                while len(heard) < 16:
                    await trio.lowlevel.wait_readable(guest)
                    heard += os.read(guest, 1024)
                assert heard == b"\x00from the host\r\n"
        finally:
            os.close(guest)


def test_rejects_a_socket_path_too_long_for_af_unix(short_tmp: Path) -> None:
    rc = simvm.main(["--socket", str(short_tmp / ("x" * 120)), "--state-dir", str(short_tmp / "s"), "--no-agent"])
    assert rc == 1
