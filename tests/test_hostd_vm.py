"""hostd's per-VM connection and VM discovery, against simulated VMs.

A simulated VM is the bridge limiquantix-simvm runs (:class:`SimulatedPort`: a Unix socket
served to one host client at a time, bridged to a pty standing for the guest's port) with
the real agent on the pty. Most tests here serve it in the test's own trio loop
(:func:`start_port`), with the agent in process too where the test is about what hostd sees
of a guest, not about a process (an agent process and a simvm process cost ~0.8 CPU-s to
start on the 2-core test machine); those that kill, stop, SIGTERM or reboot the agent run
:class:`SimulatedVM` in process (:func:`start_simulated_vm`: the real agent as its own
process, supervised and restarted as limiquantix-simvm does). tests/test_simvm.py runs the
simvm command itself. Intervals are shortened through :class:`ConnectionConfig`; every wait
is bounded by ``trio.fail_after`` and waits on the connection's change events. Tests whose
guest only answers calls borrow a simulated VM from the session's pool (``lent_vm``).
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import os
import random
import signal
import struct
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any, Protocol, final

import psutil
import pytest
import trio
from conftest import QUIET_AGENT, StartSimVM

from limiquantix.agent import Agent, AgentConfig
from limiquantix.hostd import ConfigError, ConnectionConfig, DiscoveryConfig, VMEntry, rawguest
from limiquantix.hostd import _config as hostd_config
from limiquantix.hostd._api import heartbeat_status, vm_status
from limiquantix.hostd._discovery import FoundSocket, VMRegistry, scan_sockets
from limiquantix.hostd._vmconn import VMConnection, VMState
from limiquantix.hostd.simvm import DEVICE_NAME, SimulatedPort, SimulatedVM, SimVMProcess
from limiquantix.protocol import MAGIC, MAX_FRAME_BYTES, Frame, encode_frame, enum_name, errors, guestcaps, limits
from limiquantix.protocol import _agentclient as agentclient
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb

WAIT_S = 10.0
#: Short intervals so that state changes show within a fraction of a second.
FAST = ConnectionConfig(
    ping_interval_s=0.2,
    ping_timeout_s=0.2,
    unresponsive_after_misses=2,
    connect_grace_s=0.2,
    backoff_initial_s=0.05,
    backoff_max_s=0.5,
    socket_poll_s=0.05,
    deadline_margin_s=0.5,
)


async def started_conn(nursery: trio.Nursery, path: str, **kwargs: object) -> VMConnection:
    kwargs.setdefault("config", FAST)
    conn = VMConnection("vm-1", path, **kwargs)  # type: ignore[arg-type]
    await nursery.start(conn.run)
    return conn


class VMLike(Protocol):
    """What the tests need of a simulated VM, wherever it runs."""

    @property
    def socket_path(self) -> str: ...

    async def wait_ready(self) -> None: ...


@final
class PortVM:
    """A simulated VM served in the test's trio loop: a :class:`SimulatedPort` (the bridge
    limiquantix-simvm runs) with, unless ``agent=False``, the real :class:`Agent` on its pty,
    in process too (:func:`start_port`)."""

    def __init__(self, socket_path: str) -> None:
        self.port = SimulatedPort(socket_path)
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._agent_config: AgentConfig | None = None
        self._agent_scope = trio.CancelScope()
        self._agent: Agent | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def socket_path(self) -> str:
        return self.port.socket_path

    async def wait_ready(self) -> None:
        """The socket accepts connections once :func:`start_port` returned: nothing to wait for."""

    async def run(
        self, agent: AgentConfig | None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the port (and run ``agent`` on its pty, its ``device`` set here) until :meth:`stop`."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.port.serve)
                    if agent is not None:
                        self._agent_config = dataclasses.replace(agent, device=self.port.device_path)
                        await self.start_agent()
                    task_status.started()
        finally:
            self._stopped.set()

    async def start_agent(self) -> None:
        """Start another agent on the port (the config :meth:`run` was given); returns once it serves."""
        assert self._nursery is not None and self._agent_config is not None, "not running with an agent"
        agent, scope = Agent(self._agent_config), trio.CancelScope()

        async def run_agent(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await agent.run(task_status=task_status)

        await self._nursery.start(run_agent)
        self._agent, self._agent_scope = agent, scope

    async def stop_agent(self, reason: str) -> None:
        """The agent stops as on SIGTERM (``reason``, e.g. "SIGTERM"): what its signal handler
        does, called directly (running commands killed, agent_stopping to the host, flushed)."""
        assert self._agent is not None, "no agent running"
        await self._agent._stop(reason)
        self._agent_scope.cancel()

    def kill_agent(self) -> None:
        """The agent stops dead, as on SIGKILL: no agent_stopping, nothing more written (its
        commands are killed as it goes); the port, and the host's connection to it, stay."""
        self._agent_scope.cancel()

    async def stop(self) -> None:
        """The VM goes away: its agent stops, its port closes and its socket is removed
        (returns once they have)."""
        self._scope.cancel()
        await self._stopped.wait()


async def start_port(nursery: trio.Nursery, socket_path: str, *, agent: bool = True, **config: Any) -> PortVM:
    """A :class:`PortVM` at ``socket_path``, serving once this returns; its agent's
    :class:`AgentConfig` is ``config`` (telemetry off unless given)."""
    vm = PortVM(socket_path)
    agent_config = AgentConfig(**{"transport": "virtio", "telemetry_interval_s": 0, **config}) if agent else None
    await nursery.start(vm.run, agent_config)
    return vm


@final
class VMRun:
    """:class:`SimulatedVM` (limiquantix-simvm's core) run in the test's trio loop: the real
    agent as its own process, restarted when it dies, stopped and started again on reboot.
    Its power stand-in signals this process (SIGUSR1, SIGUSR2), which ``SimulatedVM.run``
    receives while it runs, as the simvm process does; so at most one per test."""

    def __init__(self, vm: SimulatedVM) -> None:
        self.vm = vm
        #: Why ``SimulatedVM.run`` returned ("powered off by the guest"), once :attr:`done`.
        self.reason = ""
        self.done = trio.Event()

    @property
    def socket_path(self) -> str:
        return self.vm.port.socket_path

    async def wait_ready(self) -> None:
        """The socket accepts connections once :func:`start_simulated_vm` returned."""

    def agent_pid(self) -> int:
        assert self.vm.agent is not None, "no agent running"
        return self.vm.agent.pid

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            self.reason = await self.vm.run(task_status=task_status)
        finally:
            self.done.set()


async def start_simulated_vm(nursery: trio.Nursery, short_tmp: Path) -> VMRun:
    """A :class:`VMRun` in ``short_tmp`` (quiet agent), its socket accepting once this returns."""
    vm = SimulatedVM(
        str(short_tmp / "vm.sock"), state_dir=short_tmp / "state", agent_args=QUIET_AGENT, agent_log_level="debug"
    )
    run = VMRun(vm)
    await nursery.start(run.run)
    return run


async def connected(nursery: trio.Nursery, vm: VMLike) -> VMConnection:
    """A connection to ``vm``, once connected (within WAIT_S)."""
    with trio.fail_after(WAIT_S):
        await vm.wait_ready()
        conn = await started_conn(nursery, vm.socket_path)
        await conn.wait_for_state(VMState.CONNECTED)
    return conn


def kill_marked(mark: str) -> None:
    """Kill the guest commands a test started with LQX_TEST_MARK=mark (orphans of a killed agent)."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LQX_TEST_MARK") == mark:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass


# --------------------------------------------------------------- connection


@pytest.mark.trio
async def test_connects_and_reports_status(nursery: trio.Nursery, short_tmp: Path) -> None:
    vm = await start_port(nursery, str(short_tmp / "vm.sock"), telemetry_interval_s=0.2)
    with trio.fail_after(WAIT_S):
        conn = await started_conn(nursery, vm.socket_path, name="web", labels={"tier": "front"})
        await conn.wait_for_state(VMState.CONNECTED)
        await conn.wait_until(lambda c: c.telemetry is not None)
        assert (await conn.ping(b"hi")).payload == b"hi"

    status = vm_status(conn)
    assert status.vm_id == "vm-1" and status.name == "web" and dict(status.labels) == {"tier": "front"}
    assert status.socket_path == vm.socket_path
    agent = status.agent
    assert agent.state == node_pb.AGENT_STATE_CONNECTED and agent.connected
    assert conn.identity is not None and agent.identity.pid == conn.identity.pid
    assert agent.version == conn.identity.agent_version != ""
    expected_ips = [a.address for i in conn.identity.interfaces for a in (*i.ipv4, *i.ipv6)]
    assert list(agent.ip_addresses) == expected_ips
    assert agent.last_seen.seconds > 0
    assert status.resource_usage.telemetry.cpu_count > 0
    counters = conn.counters()
    assert counters.connects == 1 and counters.reconnects == 0


@pytest.mark.trio
async def test_calls_fail_at_once_while_not_connected(nursery: trio.Nursery, short_tmp: Path) -> None:
    conn = await started_conn(nursery, str(short_tmp / "absent.sock"))
    with trio.fail_after(WAIT_S):
        await conn.wait_for_state(VMState.NO_SOCKET)
    with trio.fail_after(0.1):  # at once: no waiting out a deadline
        with pytest.raises(errors.Unavailable) as info:
            await conn.request(ping=pb.PingRequest())
        assert info.value.reason == "no_socket"
        with pytest.raises(errors.Unavailable):
            async with aclosing(conn.stream(execute=pb.ExecuteRequest(argv=["true"]))) as stream:
                async for _ in stream:
                    pass
    assert vm_status(conn).agent.state == node_pb.AGENT_STATE_NO_SOCKET


async def agent_signalled_mid_command(
    nursery: trio.Nursery, conn: VMConnection, sig: signal.Signals | Callable[[], Awaitable[None]]
) -> tuple[int, list[BaseException]]:
    """Start a 30 s command through ``conn``, send ``sig`` to the agent once the command runs
    (or, for an agent in this process, await ``sig()``), and return (the agent's pid, what the
    call raised) once the call has failed."""
    assert conn.identity is not None
    pid = conn.identity.pid
    mark = uuid.uuid4().hex
    failed = trio.Event()
    outcome: list[BaseException] = []

    async def pending_command() -> None:
        try:
            await conn.request(
                deadline_s=60,
                execute=pb.ExecuteRequest(argv=["sleep", "30"], env={"LQX_TEST_MARK": mark}, timeout_seconds=60),
            )
        except errors.AgentError as exc:
            outcome.append(exc)
        failed.set()

    try:
        nursery.start_soon(pending_command)
        # The command is running in the guest once its process exists.
        while not any(p.environ().get("LQX_TEST_MARK") == mark for p in psutil.Process(pid).children()):
            await trio.sleep(0.01)
        if isinstance(sig, signal.Signals):
            os.kill(pid, sig)
        else:
            await sig()
        with trio.fail_after(1.0):
            await failed.wait()
    finally:
        kill_marked(mark)
    return pid, outcome


@pytest.mark.trio
async def test_agent_gone_mid_command_fails_the_call_and_the_next_agent_is_connected(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """The in-process twin of the SIGKILL test below: the agent on the port stops dead mid-command
    (no agent_stopping) and another opens the port, as the simulated VM's restart would; the call
    fails with Unavailable and hostd reports the new agent on the same connection."""
    vm = await start_port(nursery, str(short_tmp / "vm.sock"))
    conn = await connected(nursery, vm)
    assert conn.identity is not None
    first_started = conn.identity.agent_started_at.ToNanoseconds()

    async def kill_and_restart() -> None:
        vm.kill_agent()
        await vm.start_agent()

    with trio.fail_after(WAIT_S):
        _, outcome = await agent_signalled_mid_command(nursery, conn, kill_and_restart)
        assert len(outcome) == 1 and isinstance(outcome[0], errors.Unavailable), outcome
        await conn.wait_until(
            lambda c: (
                c.connected and c.identity is not None and c.identity.agent_started_at.ToNanoseconds() > first_started
            )
        )
    counters = conn.counters()
    assert counters.agent_restarts == 1 and counters.connects == 1, counters
    assert (await conn.ping(b"again")).payload == b"again"


@pytest.mark.trio
@pytest.mark.slow
async def test_agent_killed_mid_command_fails_the_call_within_1s_and_reconnects_as_a_new_agent(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """A real agent process SIGKILLed and restarted by the simulated VM (two agent starts: the
    slow tier; the in-process twin above is the fast one)."""
    vm = await start_simulated_vm(nursery, short_tmp)
    conn = await connected(nursery, vm)
    with trio.fail_after(WAIT_S):
        old_pid, outcome = await agent_signalled_mid_command(nursery, conn, signal.SIGKILL)
        assert len(outcome) == 1 and isinstance(outcome[0], errors.Unavailable), outcome
        # The simulated VM starts the agent again; hostd reports the new one.
        await conn.wait_until(lambda c: c.identity is not None and c.identity.pid != old_pid and c.connected)
    assert vm_status(conn).agent.identity.pid == vm.agent_pid()
    assert conn.counters().agent_restarts == 1
    assert (await conn.ping(b"again")).payload == b"again"


@pytest.mark.trio
async def stopped_cleanly_then_back(
    nursery: trio.Nursery,
    conn: VMConnection,
    stop: signal.Signals | Callable[[], Awaitable[None]],
    restart: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """SIGTERM (a service stop, an upgrade, the guest shutting down): the agent's last frame is
    agent_stopping, so hostd fails what is pending and waits for an agent at once, without
    counting missed pings; the restarted agent's announce makes it connected again.

    ``stop`` stops the agent mid-command (see :func:`agent_signalled_mid_command`); ``restart``,
    when given, starts the next one (else the simulated VM does, as systemd's Restart=always)."""
    assert conn.identity is not None
    first_started = conn.identity.agent_started_at.ToNanoseconds()
    _, outcome = await agent_signalled_mid_command(nursery, conn, stop)
    # Waiting for an agent (told), not unresponsive (missed pings would say that).
    await conn.wait_for_state(VMState.WAITING_FOR_AGENT)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.Unavailable), outcome
    assert vm_status(conn).agent.state == node_pb.AGENT_STATE_WAITING_FOR_AGENT
    assert conn.last_disconnect_reason == "agent stopped (SIGTERM)"
    with pytest.raises(errors.Unavailable) as info:
        await conn.ping()
    assert info.value.reason == "waiting_for_agent"
    if restart is not None:
        await restart()
    await conn.wait_until(
        lambda c: c.connected and c.identity is not None and c.identity.agent_started_at.ToNanoseconds() > first_started
    )
    assert (await conn.ping(b"back")).payload == b"back"


@pytest.mark.trio
async def test_agent_stopped_cleanly_in_process_is_waited_for_at_once_then_connected_again(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """The in-process twin of the SIGTERM test below: the agent runs its SIGTERM path
    (PortVM.stop_agent), then the next one opens the port."""
    vm = await start_port(nursery, str(short_tmp / "vm.sock"))
    conn = await connected(nursery, vm)
    with trio.fail_after(WAIT_S):
        await stopped_cleanly_then_back(nursery, conn, partial(vm.stop_agent, "SIGTERM"), vm.start_agent)


@pytest.mark.trio
@pytest.mark.slow
async def test_agent_stopped_cleanly_is_waited_for_at_once_then_connected_again(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """A real agent process SIGTERMed, restarted by the simulated VM (two agent starts: the slow
    tier; the in-process twin above is the fast one)."""
    await start_simulated_vm(nursery, short_tmp)
    conn = await started_conn(nursery, str(short_tmp / "vm.sock"))
    with trio.fail_after(WAIT_S):
        await conn.wait_for_state(VMState.CONNECTED)
        await stopped_cleanly_then_back(nursery, conn, signal.SIGTERM)


def agent_pid(vm: SimVMProcess) -> int:
    (child,) = psutil.Process(vm.proc.pid).children()
    return child.pid


def stale_half_frame() -> bytes:
    """A valid frame header announcing 4000 bytes, followed by only 10: what a
    peer that died mid-frame leaves in the stream."""
    payload = b"x" * 4000
    frame = encode_frame(payload)
    return frame[:28]


def junk() -> bytes:
    # Random bytes with stray magics in them, then a magic with a bad header CRC.
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(3000))
    return noise[:1000] + MAGIC + noise[1000:2000] + MAGIC + b"\x01\x00" + struct.pack(">I", 50) + noise[2000:]


@pytest.mark.trio
@pytest.mark.parametrize("side", ["guest", "host"])
async def test_garbage_in_the_stream_before_hello_is_discarded(
    nursery: trio.Nursery, short_tmp: Path, side: str
) -> None:
    """Stale bytes sit in the stream before the host's hello: discarded, the connection succeeds.

    guest: written into the guest's device (as a dead agent would leave them)
    while no host is attached; hostd reads them first.
    host: sent by an earlier host client that died mid-frame; the agent reads them first.
    """
    vm = await start_port(nursery, str(short_tmp / "vm.sock"))
    with trio.fail_after(WAIT_S):
        if side == "guest":
            # Non-blocking: the bridge that empties the pty runs in this thread (it fits
            # in the pty's buffer; a short write would fail the test, not hang it).
            fd = os.open(vm.port.device_path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                stale = junk() + stale_half_frame()
                assert os.write(fd, stale) == len(stale)
            finally:
                os.close(fd)
        else:
            earlier = await trio.open_unix_socket(vm.socket_path)
            async with earlier:
                await earlier.send_all(junk() + stale_half_frame())
        conn = await started_conn(nursery, vm.socket_path)
        await conn.wait_for_state(VMState.CONNECTED)
        assert (await conn.ping(b"ok")).payload == b"ok"
    if side == "guest":
        counters = conn.counters()
        assert counters.dropped_bytes > 0, counters


@pytest.mark.trio
async def test_no_agent_means_waiting_for_agent(nursery: trio.Nursery, short_tmp: Path) -> None:
    vm = await start_port(nursery, str(short_tmp / "vm.sock"), agent=False)
    with trio.fail_after(WAIT_S):
        conn = await started_conn(nursery, vm.socket_path)
        await conn.wait_for_state(VMState.WAITING_FOR_AGENT)
    with pytest.raises(errors.Unavailable) as info:
        await conn.request(ping=pb.PingRequest())
    assert info.value.reason == "waiting_for_agent"
    assert vm_status(conn).agent.state == node_pb.AGENT_STATE_WAITING_FOR_AGENT


@pytest.mark.trio
async def test_socket_removed_and_readded_state_follows(nursery: trio.Nursery, short_tmp: Path) -> None:
    path = str(short_tmp / "vm.sock")
    first = await start_port(nursery, path)
    with trio.fail_after(WAIT_S):
        conn = await started_conn(nursery, path)
        await conn.wait_for_state(VMState.CONNECTED)
        assert conn.identity is not None
        first_started = conn.identity.agent_started_at.ToNanoseconds()
        await first.stop()  # the VM goes away with its socket
        await conn.wait_for_state(VMState.NO_SOCKET)
        assert conn.last_disconnect_reason
        assert not vm_status(conn).agent.connected
        await start_port(nursery, path)
        # Both agents run in this process (one pid): the second started later.
        await conn.wait_until(
            lambda c: (
                c.connected and c.identity is not None and c.identity.agent_started_at.ToNanoseconds() > first_started
            )
        )
    counters = conn.counters()
    assert counters.connects == 2 and counters.reconnects == 1


@pytest.mark.trio
async def test_guest_shutdown_stops_the_vm_and_the_connection_goes_no_socket(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    vm = await start_simulated_vm(nursery, short_tmp)
    conn = await connected(nursery, vm)
    with trio.fail_after(WAIT_S):
        answer = await conn.request(shutdown=pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_POWEROFF))
        assert answer.shutdown_response.accepted
        await conn.wait_for_state(VMState.NO_SOCKET)
        await vm.done.wait()
    assert vm.reason == "powered off by the guest"
    assert not os.path.exists(vm.socket_path)
    assert conn.shutdown_started is not None and conn.shutdown_started.mode == pb.SHUTDOWN_MODE_POWEROFF


@pytest.mark.trio
async def test_guest_reboot_and_the_connection_follows(nursery: trio.Nursery, short_tmp: Path) -> None:
    vm = await start_simulated_vm(nursery, short_tmp)
    conn = await connected(nursery, vm)
    with trio.fail_after(WAIT_S):
        assert conn.identity is not None
        old_pid = conn.identity.pid
        await conn.request(shutdown=pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_REBOOT))
        await conn.wait_until(lambda c: c.identity is not None and c.identity.pid != old_pid)
        assert conn.state is VMState.CONNECTED
        assert (await conn.ping(b"rebooted")).payload == b"rebooted"
    counters = conn.counters()
    assert counters.connects == 1 and counters.agent_restarts == 1  # same socket connection


@pytest.mark.trio
async def unresponsive_then_back(conn: VMConnection, pause: Callable[[], None], resume: Callable[[], None]) -> None:
    """``pause()`` silences the agent (SIGSTOP, or its answers held back): missed pings mark it
    unresponsive and fail pending calls; after ``resume()`` it is connected again and the
    answers it owed arrive late, dropped and counted."""
    pause()
    try:
        # A call that would wait 60 s fails as soon as the agent is marked unresponsive.
        with pytest.raises(errors.Unavailable, match="unresponsive"):
            await conn.request(deadline_s=60, get_telemetry=pb.TelemetryRequest())
        assert conn.state is VMState.UNRESPONSIVE
        assert vm_status(conn).agent.state == node_pb.AGENT_STATE_UNRESPONSIVE
        with pytest.raises(errors.Unavailable):
            await conn.request(ping=pb.PingRequest())
    finally:
        resume()
    await conn.wait_for_state(VMState.CONNECTED)
    # The answers the stopped agent owed arrive now, after their callers gave up.
    while conn.counters().late_replies == 0:
        await trio.sleep(0.01)
    assert conn.counters().ping_misses >= 2


@final
class HoldingRelay:
    """A Unix socket between hostd and a VM's socket that can hold back what the guest sends
    (:meth:`hold`) and pass it on later (:meth:`release`): to hostd, an agent that stopped
    answering, as a SIGSTOPped one, and the answers it owed arriving late."""

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.target = target
        self._flowing = trio.Event()
        self._flowing.set()

    def hold(self) -> None:
        self._flowing = trio.Event()

    def release(self) -> None:
        self._flowing.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay one host client (hostd's connection) to the target until either side closes."""
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        with sock:
            await sock.bind(self.path)
            sock.listen(1)
            task_status.started()
            client_sock, _ = await sock.accept()
        async with (
            trio.SocketStream(client_sock) as host,
            await trio.open_unix_socket(self.target) as guest,
            trio.open_nursery() as nursery,
        ):

            async def to_guest() -> None:
                async for data in host:
                    await guest.send_all(data)
                nursery.cancel_scope.cancel()

            async def to_host() -> None:
                async for data in guest:
                    await self._flowing.wait()
                    await host.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(to_guest)
            nursery.start_soon(to_host)


@pytest.mark.trio
async def test_an_agent_that_stops_answering_is_unresponsive_and_pending_calls_fail(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """The in-process twin of the SIGSTOP test below: hostd reaches the in-process agent
    through a HoldingRelay, which holds back its answers as a stopped agent would not send them."""
    vm = await start_port(nursery, str(short_tmp / "vm.sock"))
    relay = HoldingRelay(str(short_tmp / "relay.sock"), vm.socket_path)
    await nursery.start(relay.serve)
    conn = await started_conn(nursery, relay.path)
    with trio.fail_after(WAIT_S):
        await conn.wait_for_state(VMState.CONNECTED)
        await unresponsive_then_back(conn, relay.hold, relay.release)


@pytest.mark.trio
@pytest.mark.slow
async def test_missed_pings_mark_unresponsive_and_fail_pending_calls(nursery: trio.Nursery, short_tmp: Path) -> None:
    """A real agent process SIGSTOPped (an agent process to start: the slow tier; the
    in-process twin above is the fast one)."""
    vm = await start_simulated_vm(nursery, short_tmp)
    conn = await connected(nursery, vm)
    with trio.fail_after(WAIT_S):
        pid = vm.agent_pid()
        await unresponsive_then_back(conn, partial(os.kill, pid, signal.SIGSTOP), partial(os.kill, pid, signal.SIGCONT))


@pytest.mark.trio
async def test_deadline_exceeded_then_the_late_reply_is_dropped_and_counted(
    nursery: trio.Nursery, lent_vm: SimVMProcess
) -> None:
    vm = lent_vm
    await vm.wait_ready()
    # A short margin: the calls below fail after their budget (0) plus it.
    conn = await started_conn(nursery, vm.socket_path, config=dataclasses.replace(FAST, deadline_margin_s=0.1))
    with trio.fail_after(WAIT_S):
        await conn.wait_for_state(VMState.CONNECTED)
        with trio.fail_after(2):  # budget 0 + margin 0.1 s
            with pytest.raises(errors.DeadlineExceeded):
                await conn.request(deadline_s=0, execute=pb.ExecuteRequest(argv=["sleep", "5"]))
        # hostd told the agent to cancel; its (cancelled) answer arrives late.
        while conn.counters().late_replies == 0:
            await trio.sleep(0.01)
        # A stream runs under the same kind of deadline.
        with pytest.raises(errors.DeadlineExceeded):
            async with aclosing(
                conn.stream(deadline_s=0, execute=pb.ExecuteRequest(command="echo one; sleep 5", stream=True))
            ) as stream:
                async for _ in stream:
                    pass
    assert conn.counters().deadline_exceeded == 2
    assert conn.state is VMState.CONNECTED


@pytest.mark.trio
async def test_streamed_command_through_the_connection(nursery: trio.Nursery, lent_vm: SimVMProcess) -> None:
    vm = lent_vm
    conn = await connected(nursery, vm)
    with trio.fail_after(WAIT_S):
        kinds, output = [], b""
        request = pb.ExecuteRequest(command="echo one; echo two", stream=True)
        async for msg in conn.stream(deadline_s=5, execute=request):
            kinds.append(msg.WhichOneof("payload"))
            output += msg.execute_output.data
    assert kinds[-1] == "execute_response" and set(kinds[:-1]) == {"execute_output"}
    assert output == b"one\ntwo\n"


@pytest.mark.trio
async def test_a_named_call_can_be_cancelled_from_another_call(nursery: trio.Nursery, lent_vm: SimVMProcess) -> None:
    """CancelExecution's path: the execute is sent under a chosen id, a cancel names it."""
    vm = lent_vm
    conn = await connected(nursery, vm)
    mark = uuid.uuid4().hex
    with trio.fail_after(WAIT_S):
        outcome: list[object] = []
        done = trio.Event()

        async def command() -> None:
            request = pb.ExecuteRequest(argv=["sleep", "30"], env={"LQX_TEST_MARK": mark})
            try:
                outcome.append(await conn.request(deadline_s=60, message_id="exec-1", execute=request))
            except errors.AgentError as exc:
                outcome.append(exc)
            done.set()

        try:
            nursery.start_soon(command)
            while not any(p.environ().get("LQX_TEST_MARK") == mark for p in psutil.Process(agent_pid(vm)).children()):
                await trio.sleep(0.01)
            with pytest.raises(errors.AlreadyExists):
                await conn.request(message_id="exec-1", ping=pb.PingRequest())
            answer = await conn.request(cancel=pb.CancelRequest(target_message_id="exec-1"))
            assert answer.cancel_response.found
            await done.wait()
        finally:
            kill_marked(mark)
    (answer,) = outcome
    assert isinstance(answer, pb.AgentMessage), answer
    assert answer.execute_response.exit_reason == pb.EXIT_REASON_CANCELLED


@pytest.mark.trio
async def test_disable_drops_the_connection_and_enable_restores_it(
    nursery: trio.Nursery, lent_vm: SimVMProcess
) -> None:
    vm = lent_vm
    conn = await connected(nursery, vm)
    with trio.fail_after(WAIT_S):
        outcome: list[BaseException] = []
        done = trio.Event()

        async def pending() -> None:
            try:
                await conn.request(deadline_s=30, execute=pb.ExecuteRequest(argv=["sleep", "5"]))
            except errors.AgentError as exc:
                outcome.append(exc)
            done.set()

        nursery.start_soon(pending)
        while not conn._calls:  # the call is in flight
            await trio.sleep(0.01)
        conn.disable("maintenance")
        await done.wait()
        assert isinstance(outcome[0], errors.Unavailable)
        await conn.wait_for_state(VMState.DISABLED)
        assert vm_status(conn).agent.state == node_pb.AGENT_STATE_DISABLED
        assert conn.last_disconnect_reason == "maintenance"
        conn.enable()
        await conn.wait_for_state(VMState.CONNECTED)


@pytest.mark.trio
async def test_a_configured_disabled_vm_never_connects(nursery: trio.Nursery, lent_vm: SimVMProcess) -> None:
    vm = lent_vm
    with trio.fail_after(WAIT_S):
        await vm.wait_ready()
        conn = await started_conn(nursery, vm.socket_path, enabled=False)
    assert conn.state is VMState.DISABLED
    with pytest.raises(errors.Unavailable):
        await conn.request(ping=pb.PingRequest())


def test_backoff_is_capped_exponential_with_jitter() -> None:
    cfg = ConnectionConfig(backoff_initial_s=0.2, backoff_max_s=5.0, backoff_jitter=0.5)
    conn = VMConnection("v", "/nonexistent", config=cfg, rng=random.Random(1))
    for _ in range(20):
        conn._backoff.reset()  # what a connection that succeeded does
        for failures in range(40):
            full = min(5.0, 0.2 * 2**failures)
            assert full * 0.5 <= conn._backoff.next() <= full


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        ConnectionConfig(ping_interval_s=0)
    with pytest.raises(ConfigError):
        ConnectionConfig(backoff_initial_s=2, backoff_max_s=1)
    with pytest.raises(ConfigError):
        ConnectionConfig(backoff_jitter=1.5)
    with pytest.raises(ConfigError):
        DiscoveryConfig(channel_name="a/b")
    with pytest.raises(ConfigError):
        VMEntry(id="-bad", socket="/run/x.sock")
    with pytest.raises(ConfigError):
        VMEntry(id="ok", socket="relative.sock")
    entry = VMEntry(id="ok", socket="/run/x.sock", labels={"a": "b"})
    with pytest.raises(TypeError):
        entry.labels["a"] = "c"  # type: ignore[index]


@pytest.mark.parametrize("module", ["_config", "_discovery", "rawguest", "simvm", "_vmconn"])
def test_hostd_modules_export_what_exists(module: str) -> None:
    mod = importlib.import_module(f"limiquantix.hostd.{module}")
    assert all(hasattr(mod, name) for name in mod.__all__)
    assert len(set(mod.__all__)) == len(mod.__all__)
    assert hostd_config.CHANNEL_NAME == DEVICE_NAME


# --------------------------------------------------------------- discovery


def libvirt_socket(root: Path, domain_id: int, name: str) -> str:
    directory = root / f"domain-{domain_id}-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / hostd_config.CHANNEL_NAME)


def test_scan_finds_both_layouts_with_precedence(short_tmp: Path) -> None:
    libvirt, plain = short_tmp / "lv", short_tmp / "vms"
    plain.mkdir()
    for path in (
        libvirt_socket(libvirt, 3, "web"),
        libvirt_socket(libvirt, 7, "web"),  # a newer run of the same domain
        libvirt_socket(libvirt, 4, "db"),
        str(plain / "db.agent.sock"),  # shadowed by libvirt's db
        str(plain / "cache-1.agent.sock"),
        str(plain / "notes.txt"),
    ):
        Path(path).touch()
    (libvirt / "domain-9-nosocket").mkdir()
    (libvirt / "unrelated").mkdir()
    found = scan_sockets(DiscoveryConfig(libvirt_channel_root=str(libvirt), socket_dir=str(plain)))
    assert found == {
        "web": FoundSocket("web", "web", libvirt_socket(libvirt, 7, "web"), "libvirt", 7),
        "db": FoundSocket("db", "db", libvirt_socket(libvirt, 4, "db"), "libvirt", 4),
        "cache-1": FoundSocket("cache-1", "cache-1", str(plain / "cache-1.agent.sock"), "directory", 0),
    }
    assert scan_sockets(DiscoveryConfig(libvirt_channel_root="", socket_dir=str(short_tmp / "missing"))) == {}


def test_scan_refuses_names_that_are_no_vm_id_and_says_why(short_tmp: Path) -> None:
    """A VM whose id no request could name (over MAX_ID_BYTES, odd characters) is not listed:
    the scan says which path and why, instead of a VM shown but un-addressable."""
    libvirt, plain = short_tmp / "lv", short_tmp / "vms"
    plain.mkdir()
    longest, too_long = "v" * limits.MAX_ID_BYTES, "v" * (limits.MAX_ID_BYTES + 1)
    for path in (
        str(plain / f"{longest}.agent.sock"),
        str(plain / f"{too_long}.agent.sock"),
        str(plain / "caf\u00e9.agent.sock"),  # libvirt and file names allow it; URLs and labels would not
        libvirt_socket(libvirt, 5, "web 1"),
        libvirt_socket(libvirt, 6, "ok-1"),
    ):
        Path(path).touch()
    refused: dict[str, str] = {}
    found = scan_sockets(DiscoveryConfig(libvirt_channel_root=str(libvirt), socket_dir=str(plain)), refused)
    assert sorted(found) == sorted([longest, "ok-1"])
    assert refused == {
        str(plain / f"{too_long}.agent.sock"): f"vm id 'v{'v' * 31}'... is 129 bytes; the limit is 128",
        str(plain / "caf\u00e9.agent.sock"): f"vm id 'caf\u00e9' must be {limits.PLAIN_ID_RULE}",
        str(libvirt / "domain-5-web 1"): f"vm id 'web 1' must be {limits.PLAIN_ID_RULE}",
    }


@pytest.mark.trio
async def test_registry_warns_once_of_a_socket_it_cannot_list(
    nursery: trio.Nursery, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = short_tmp / "vms"
    plain.mkdir()
    odd = plain / "web\x1b[2J.agent.sock"  # a control in a name: escaped in the log line
    odd.touch()
    # Scans only when the test asks (the first is the registry's own, at start).
    discovery = DiscoveryConfig(libvirt_channel_root="", socket_dir=str(plain), rescan_interval_s=3600)
    with trio.fail_after(WAIT_S):
        async with VMRegistry.open(discovery=discovery, connection=FAST) as registry:
            await registry.rescan()
            await registry.rescan()
            assert len(registry) == 0 and list(registry.refused) == [str(odd)]
            warnings = [r.getMessage() for r in caplog.records if "not listed" in r.getMessage()]
            assert warnings == [
                f"VM socket {str(odd)!r} not listed: vm id 'web\\x1b[2J' must be {limits.PLAIN_ID_RULE}"
            ]
            assert "\x1b" not in warnings[0]
            # Gone and back: warned again (the set follows the directory, it does not grow).
            odd.unlink()
            await registry.rescan()
            assert registry.refused == {}
            odd.touch()
            await registry.rescan()
            assert len([r for r in caplog.records if "not listed" in r.getMessage()]) == 2


@pytest.mark.trio
async def test_registry_finds_configured_libvirt_and_plain_dir_vms_as_they_come_and_go(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    libvirt, plain = short_tmp / "lv", short_tmp / "vms"
    plain.mkdir()
    web = await start_port(nursery, libvirt_socket(libvirt, 3, "web"))
    await start_port(nursery, str(plain / "db.agent.sock"))
    configured = VMEntry(id="cfg", name="Configured", labels={"env": "test"}, socket=str(short_tmp / "cfg.sock"))
    discovery = DiscoveryConfig(
        libvirt_channel_root=str(libvirt), socket_dir=str(plain), rescan_interval_s=0.05, forget_after_s=0.3
    )
    # Pings that may wait: this test is about sockets coming and going, and a loaded machine
    # missing FAST's 0.2 s ping timeouts would make a VM unresponsive (not connected) by luck.
    connection = dataclasses.replace(FAST, ping_timeout_s=WAIT_S)
    with trio.fail_after(WAIT_S):
        async with VMRegistry.open(entries=[configured], discovery=discovery, connection=connection) as registry:

            def states(reg: VMRegistry) -> dict[str, VMState]:
                return {c.vm_id: c.state for c in reg.connections()}

            await registry.wait_until(
                lambda r: states(r) == {"cfg": VMState.NO_SOCKET, "db": VMState.CONNECTED, "web": VMState.CONNECTED}
            )
            assert registry.get("web").source == "libvirt" and registry.get("db").source == "directory"
            assert vm_status(registry.get("cfg")).name == "Configured"
            assert [vm_status(c).vm_id for c in registry.connections()] == ["cfg", "db", "web"]
            with pytest.raises(errors.NotFound):
                registry.get("nope")

            # One appears later, in the plain directory; the configured one comes up too.
            late = await start_port(nursery, str(plain / "late.agent.sock"))
            cfg_vm = await start_port(nursery, configured.socket)
            await registry.wait_until(lambda r: "late" in r and r.get("late").connected)
            await registry.wait_until(lambda r: r.get("cfg").connected)

            # The libvirt domain restarts under a new domain id: same VM, new path. (A restart
            # slower than forget_after_s may forget "web" in between and find it again.)
            await web.stop()
            web2 = await start_port(nursery, libvirt_socket(libvirt, 4, "web"))
            os.rmdir(libvirt / "domain-3-web")  # libvirt removes the old run's directory
            await registry.wait_until(
                lambda r: "web" in r and r.get("web").socket_path == web2.socket_path and r.get("web").connected
            )

            # A discovered VM whose socket goes away: no_socket, then forgotten.
            await late.stop()
            await registry.wait_until(lambda r: "late" not in r)
            # A configured one stays listed as no_socket.
            await cfg_vm.stop()
            await registry.wait_until(lambda r: r.get("cfg").state is VMState.NO_SOCKET)
            assert sorted(c.vm_id for c in registry.connections()) == ["cfg", "db", "web"]


async def wait_all_connected(registry: VMRegistry, count: int, seconds: float) -> None:
    """Wait until ``count`` VMs are connected; on timeout, say which are not and why."""
    with trio.move_on_after(seconds):
        await registry.wait_until(lambda r: len(r) == count and all(c.connected for c in r.connections()))
        return
    lagging = [
        f"{c.vm_id}: {c.state.value} for {trio.current_time() - c.state_since:.1f} s ({c.last_disconnect_reason!r})"
        for c in registry.connections()
        if not c.connected
    ]
    raise AssertionError(f"{len(registry)} VMs found, not connected after {seconds} s: {lagging}")


async def ping_all(registry: VMRegistry) -> dict[str, bytes]:
    """Ping every VM at once; each answers with its own id."""
    pongs: dict[str, bytes] = {}

    async def ping(conn: VMConnection) -> None:
        pongs[conn.vm_id] = (await conn.ping(conn.vm_id.encode())).payload

    async with trio.open_nursery() as nursery:
        for conn in registry.connections():
            nursery.start_soon(ping, conn)
    return pongs


@pytest.mark.trio
async def test_fifty_vms_at_once_through_one_registry(nursery: trio.Nursery, short_tmp: Path) -> None:
    """50 simulated ports, each with an in-process agent on its pty, found and connected by one registry.

    The ports are SimulatedPort, the bridge limiquantix-simvm runs; the agents
    are the real Agent on the pty slaves, in this process (fast enough to run
    always; the slow test below does the same with 50 simvm processes).
    """
    count = 50
    plain = short_tmp / "vms"
    plain.mkdir()
    for n in range(count):
        port = SimulatedPort(str(plain / f"vm{n:02d}.agent.sock"), device_link=str(short_tmp / f"dev{n:02d}"))
        await nursery.start(port.serve)
        agent = Agent(AgentConfig(transport="virtio", device=port.device_path, telemetry_interval_s=0))
        await nursery.start(agent.run)
    discovery = DiscoveryConfig(libvirt_channel_root="", socket_dir=str(plain), rescan_interval_s=0.2)
    config = ConnectionConfig(connect_grace_s=5, backoff_initial_s=0.05, socket_poll_s=0.1)
    async with VMRegistry.open(discovery=discovery, connection=config) as registry:
        await wait_all_connected(registry, count, 30)
        with trio.fail_after(10):
            pongs = await ping_all(registry)
    assert pongs == {f"vm{n:02d}": f"vm{n:02d}".encode() for n in range(count)}


@pytest.mark.trio
@pytest.mark.slow
async def test_fifty_simvm_processes_at_once_through_one_registry(start_simvm: StartSimVM, short_tmp: Path) -> None:
    """The same with 50 real limiquantix-simvm processes, each running its agent process
    (100 processes, ~3 GB RSS, ~10 s on 2 cores)."""
    count = 50
    plain = short_tmp / "vms"
    plain.mkdir()
    for n in range(count):
        start_simvm(socket=str(plain / f"vm{n:02d}.agent.sock"))
    discovery = DiscoveryConfig(libvirt_channel_root="", socket_dir=str(plain), rescan_interval_s=0.2)
    # A generous grace: 100 Python processes start at once on a small machine.
    config = ConnectionConfig(connect_grace_s=30, backoff_initial_s=0.1, socket_poll_s=0.2)
    async with VMRegistry.open(discovery=discovery, connection=config) as registry:
        await wait_all_connected(registry, count, 90)
        with trio.fail_after(10):
            pongs = await ping_all(registry)
    assert pongs == {f"vm{n:02d}": f"vm{n:02d}".encode() for n in range(count)}


# ------------------------------------------------------------ hostile guests


async def hostile_conn(
    nursery: trio.Nursery, short_tmp: Path, attack: str, *, once: bool = False, **config: object
) -> VMConnection:
    """A VMConnection to a raw guest (a fake chardev socket: no QEMU, no agent) running ``attack``
    (``once``: its first frame or dense answer only)."""
    path = str(short_tmp / f"{attack}.sock")
    await nursery.start(partial(rawguest.serve, path, attack, once=once))
    conn = await started_conn(nursery, path, config=dataclasses.replace(FAST, **config))
    with trio.fail_after(WAIT_S):
        await conn.wait_for_state(VMState.CONNECTED)
    return conn


@pytest.mark.trio
async def test_an_enum_value_outside_the_schema_is_kept_and_the_link_stays(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """proto3 enums are open: shutdown_started with mode 99 put the VM in a
    reconnect loop (ShutdownMode.Name raised). The number is kept, the link stays."""
    conn = await hostile_conn(nursery, short_tmp, "enum")
    with trio.fail_after(WAIT_S):
        await conn.wait_until(lambda c: c.shutdown_started is not None)
        assert conn.shutdown_started is not None and conn.shutdown_started.mode == 99
        assert (await conn.ping(b"still")).payload == b"still"
    assert conn.state is VMState.CONNECTED
    assert conn.counters().connects == 1
    assert conn.last_disconnect_reason == ""
    # What hostd reports on: the heartbeat's VM list and the API's status.
    assert heartbeat_status(vm_status(conn)).agent.state == node_pb.AGENT_STATE_CONNECTED
    assert vm_status(conn).agent.state == node_pb.AGENT_STATE_CONNECTED


@pytest.mark.parametrize("attack", sorted(rawguest.ATTACKS))
def test_every_raw_guest_attack_builds_within_the_frame_limit(attack: str) -> None:
    """bench/hostile_bench.py runs them all: each must at least start."""
    for chunk in itertools.islice(rawguest.ATTACKS[attack](), 3):
        assert isinstance(chunk, bytes)


def test_the_raw_guests_huge_identity_fits_in_a_frame() -> None:
    """Once, not once per attack above (it takes ~0.2 CPU-s to build)."""
    assert rawguest.huge_identity().ByteSize() < MAX_FRAME_BYTES


def test_enum_names_keep_numbers_outside_the_schema() -> None:
    assert enum_name(pb.ShutdownMode, pb.SHUTDOWN_MODE_REBOOT) == "reboot"
    assert enum_name(pb.ShutdownMode, 99) == "99"
    assert enum_name(pb.ExitReason, pb.EXIT_REASON_TIMED_OUT) == "timed_out"
    assert enum_name(node_pb.AgentState, node_pb.AGENT_STATE_WAITING_FOR_AGENT) == "waiting_for_agent"
    assert enum_name(pb.FileType, -7) == "-7"


@pytest.mark.trio
@pytest.mark.parametrize("events", [2_000, pytest.param(10_000, marks=pytest.mark.slow)])
async def test_an_event_flood_is_rate_limited_and_its_reader_paused(
    nursery: trio.Nursery, short_tmp: Path, events: int
) -> None:
    """Events over the rate are dropped (telemetry kept newest), and over its share
    of decoding work the flooding VM's reader pauses: its own pongs wait behind
    its flood (it may turn unresponsive), a bystander's do not.

    The paused reader takes ~1,000 events a second (reader_work_per_s): 2,000 dropped
    events (the rate lets ~10 a second through) take a fraction of a second, 10,000
    (the slow tier) several seconds of the flood held back."""
    bystander = await hostile_conn(nursery, short_tmp, "idle")
    conn = await hostile_conn(nursery, short_tmp, "event_flood", reader_work_per_s=20_000_000)
    with trio.fail_after(WAIT_S * events / 2_000):
        i = 0
        while conn.counters().rate_limited_events < events or conn.counters().reader_pauses < 3:
            assert (await bystander.ping(b"%d" % i)).payload == b"%d" % i
            i += 1
    counters = conn.counters()
    assert counters.connects == 1 and counters.connect_failures == 0, counters
    assert conn.telemetry is not None


@pytest.mark.trio
async def test_a_guests_events_make_one_log_line_per_kind_a_minute(
    nursery: trio.Nursery, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ip_changed with new addresses at the rate hostd lets events through (10 a second, bursts
    of 20) was one INFO line each: ~500 MB of log a day from one guest. Now one line per kind
    of event a minute per VM (agent_ready, agent_stopping, shutdown_started likewise)."""
    caplog.set_level(logging.INFO, logger="limiquantix.hostd")
    conn = await hostile_conn(nursery, short_tmp, "event_flood")
    with trio.fail_after(WAIT_S):
        # 100 over the rate: the burst of 20 (half of them ip_changed) went through first.
        while conn.counters().rate_limited_events < 100:
            await conn.ping()
    lines = [r.getMessage() for r in caplog.records if "addresses now" in r.getMessage()]
    assert len(lines) == 1, lines
    assert conn.ip_addresses  # the newest addresses are kept, logged or not


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the payloads hosts' agent readers parse (protocol._agentclient's
    parse_frame, wrapped to count: a spy, the real parse still runs)."""
    sizes: list[int] = []
    real = agentclient.parse_frame

    def counting(frame: Frame) -> pb.AgentMessage:
        sizes.append(len(frame.payload))
        return real(frame)

    monkeypatch.setattr(agentclient, "parse_frame", counting)
    return sizes


@pytest.mark.trio
@pytest.mark.parametrize(
    ("attack", "counter", "count"),
    [
        ("dense_unsolicited", "late_replies", 3),
        ("bad_frames", "bad_messages", 20_000),
        # One frame each, then a quiet guest: its own pings must go through after it.
        ("dense_telemetry", "bad_messages", 1),
        ("dense_identity", "bad_messages", 1),
        ("dense_ip_changed", "bad_messages", 1),
    ],
)
async def test_dense_or_unwanted_guest_messages_are_dropped_unparsed(
    nursery: trio.Nursery,
    short_tmp: Path,
    caplog: pytest.LogCaptureFixture,
    parsed: list[int],
    attack: str,
    counter: str,
    count: int,
) -> None:
    """A frame's cost to parse is per list entry, not per byte: answers to ids never asked for
    (16 MiB of 8 million empty listing entries: 3-5 s of CPU, no other VM served meanwhile, and
    1 GiB) were parsed whole before being found late, and each frame without an id was a log
    line; reports (telemetry, an agent_ready's identity, ip_changed) of 8 million empty
    interfaces were parsed whole to keep a capped copy. Now each is dropped unparsed, from its
    top level or once a walk of its wire format passed its kind's bound of fields, and its
    reason logged once: the bystander's pings go on, the hostile VM keeps no report, hostd
    keeps its link."""
    bystander = await hostile_conn(nursery, short_tmp, "idle")
    once = count == 1
    hostile = await hostile_conn(nursery, short_tmp, attack, once=once)
    with trio.fail_after(WAIT_S):
        i = 0
        while getattr(hostile.counters(), counter) < count or i < 20:
            assert (await bystander.ping(b"%d" % i)).payload == b"%d" % i
            i += 1
    assert hostile.telemetry is None and not hostile.ip_addresses
    assert hostile.identity is not None and hostile.identity.agent_version == "rawguest"  # its hello's
    assert hostile.counters().connects == 1
    if once:
        assert getattr(hostile.counters(), counter) == 1
        assert (await hostile.ping(b"still")).payload == b"still"
    assert max(parsed) < 4096, max(parsed)  # hellos and pongs only
    dropped = [r.getMessage() for r in caplog.records if "dropped frame from agent" in r.getMessage()]
    assert len(dropped) <= 1, dropped  # one line per reason a minute, however many frames


@pytest.mark.trio
async def test_a_dense_hello_is_dropped_and_the_next_one_connects(
    nursery: trio.Nursery, short_tmp: Path, parsed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hello's answer carries the guest's identity: one of 8 million empty interfaces is
    dropped unparsed like any dense report; the VM is not connected on it, and the next hello
    (resent until answered) with a usable answer connects it."""
    monkeypatch.setattr(agentclient, "HELLO_RESEND_S", 0.05)
    bystander = await hostile_conn(nursery, short_tmp, "idle")
    hostile = await hostile_conn(nursery, short_tmp, "dense_hello", once=True)
    assert (await bystander.ping(b"b")).payload == b"b"
    assert hostile.counters().bad_messages == 1  # the dense hello: counted by the client now attached
    assert hostile.identity is not None and hostile.identity.agent_version == "rawguest"
    assert max(parsed) < 4096, max(parsed)
    assert (await hostile.ping(b"h")).payload == b"h"


#: A request of each kind rawguest's dense_answers answers.
_DENSE_ANSWERED: dict[str, Any] = {
    "list_directory": pb.ListDirectoryRequest(path="/"),
    "info": pb.InfoRequest(),
    "get_telemetry": pb.TelemetryRequest(),
    "execute": pb.ExecuteRequest(argv=["true"]),
    "file_read": pb.FileReadRequest(path="/etc/hostname"),
}


@pytest.mark.trio
async def test_a_guest_whose_every_hello_is_dense_is_never_connected_and_its_drops_are_counted(
    nursery: trio.Nursery, short_tmp: Path, parsed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every hello answered with 8 million empty interfaces: each answer is dropped unparsed,
    the VM waits for an agent, its drops show in its counters (those of a connection whose
    hello was never answered were lost), and a bystander is served meanwhile."""
    monkeypatch.setattr(agentclient, "HELLO_RESEND_S", 0.05)
    bystander = await hostile_conn(nursery, short_tmp, "idle")
    path = str(short_tmp / "dense_hello.sock")
    await nursery.start(rawguest.serve, path, "dense_hello")
    hostile = await started_conn(nursery, path, config=FAST)
    with trio.fail_after(WAIT_S):
        i = 0
        while hostile.counters().bad_messages < 3:
            assert (await bystander.ping(b"%d" % i)).payload == b"%d" % i
            i += 1
        await hostile.wait_for_state(VMState.WAITING_FOR_AGENT)
    assert hostile.counters().connects == 0 and hostile.identity is None
    assert max(parsed) < 4096, max(parsed)
    hostile.disable()  # the session ends: what it counted stays counted
    with trio.fail_after(WAIT_S):
        await hostile.wait_for_state(VMState.DISABLED)
    assert hostile.counters().bad_messages >= 3


@pytest.mark.trio
@pytest.mark.parametrize("request_kind", sorted(rawguest.DENSE_ANSWERS))
async def test_a_dense_answer_fails_its_call_at_once_unparsed(
    nursery: trio.Nursery, short_tmp: Path, parsed: list[int], request_kind: str
) -> None:
    """An answer of 8 million fields (listing entries, an identity's or a report's interfaces,
    an execute's or a file chunk's repeated number) is refused unparsed; its call fails at once
    with resource_exhausted, not at its deadline, and the link stays."""
    bystander = await hostile_conn(nursery, short_tmp, "idle")
    hostile = await hostile_conn(nursery, short_tmp, "dense_answers")
    request = _DENSE_ANSWERED[request_kind]
    with trio.fail_after(WAIT_S):
        with pytest.raises(errors.ResourceExhausted) as caught:
            # A deadline far beyond the test's bound: the call fails at once or the test does.
            await hostile.request(deadline_s=WAIT_S * 10, **{request_kind: request})
        assert caught.value.reason == "bad_answer" and "fields" in caught.value.message
        assert (await bystander.ping(b"b")).payload == b"b"
        assert (await hostile.ping(b"h")).payload == b"h"
    assert hostile.counters().bad_messages == 1 and hostile.counters().connects == 1
    assert max(parsed) < 4096, max(parsed)


@pytest.mark.trio
async def test_parsing_a_guests_reports_is_charged_to_its_readers_share(
    nursery: trio.Nursery, short_tmp: Path, parsed: list[int]
) -> None:
    """Reports are parsed (hostd keeps a capped copy); 128 KiB of 65,500 empty interfaces (as
    many fields as hostd parses of a report) costs the parser ~5-10 ms. That time is charged to
    the VM's share of reading work like decoding: its reader pauses after a few, where their
    bytes alone (~0.13 M units each, a 50 M burst) would have let ~380 through first. Each
    report is kept capped."""
    bystander = await hostile_conn(nursery, short_tmp, "idle")
    hostile = await hostile_conn(nursery, short_tmp, "dense_reports", reader_work_per_s=20_000_000)
    with trio.fail_after(WAIT_S * 2):
        i = 0
        while hostile.counters().reader_pauses < 2:
            assert (await bystander.ping(b"%d" % i)).payload == b"%d" % i
            i += 1
        reports = sum(size > 4096 for size in parsed)
        assert reports < 50, reports  # without the parse's cost charged: ~380 before the first pause
        await hostile.wait_until(lambda c: c.telemetry is not None)
    assert hostile.telemetry is not None and hostile.telemetry.truncated
    assert len(hostile.telemetry.interfaces) == guestcaps.MAX_INTERFACES
    assert hostile.counters().bad_messages == 0


@pytest.mark.trio
@pytest.mark.parametrize(
    ("attack", "mib"),
    [
        ("garbage", 1),
        ("magic_spam", 0.25),
        pytest.param("magic_spam", 1, marks=pytest.mark.slow),
        ("dense_headers", 0.25),
        pytest.param("dense_headers", 1, marks=pytest.mark.slow),
    ],
)
async def test_a_bystander_vm_stays_usable_while_another_guest_attacks(
    nursery: trio.Nursery, short_tmp: Path, attack: str, mib: float
) -> None:
    """One process, two VMs: the hostile one's reader decodes its stream in
    slices, so the other's calls go through meanwhile (no wall-time assertion:
    that is bench/hostile_bench.py's job).

    A quarter MiB of magic spam is ~65,000 header checks (~800 of the bystander's pings
    between slices, ~0.6 CPU-s); the slow tier runs the full MiB (~2.5 CPU-s)."""
    bystander = await hostile_conn(nursery, short_tmp, "idle")
    hostile = await hostile_conn(nursery, short_tmp, attack)
    with trio.fail_after(WAIT_S * max(mib * 4, 1)):
        # Counters do not wake wait_until: the pings themselves pace the polling.
        i = 0
        while hostile.counters().dropped_bytes < mib * 1024 * 1024 or i < 20:
            assert (await bystander.ping(b"%d" % i)).payload == b"%d" % i
            i += 1
    counters = hostile.counters()
    # Its own pongs wait behind its spam, so it may well be unresponsive; but the
    # link stays (no reconnect loop), whatever it sends.
    assert hostile.state in (VMState.CONNECTED, VMState.UNRESPONSIVE), hostile.state
    assert counters.connects == 1 and counters.connect_failures == 0, counters
    if attack == "dense_headers":
        assert counters.unverified_headers > 0, counters
