"""The agent process: owns the channel, the sessions and the periodic loops."""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import time
from typing import Final, TypeVar, final

import trio

from limiquantix.protocol import PROTOCOL_VERSION, FrameTooLarge, __version__, new_message, set_timestamp
from limiquantix.protocol._gen import agent_pb2 as pb

from . import handlers as _handlers  # noqa: F401  (registers every handler)
from ._channel import Channel, Link, make_channel
from ._config import AgentConfig
from ._dispatch import HANDLERS
from ._memory import release_memory_loop
from ._session import Session
from ._telemetry import (
    TelemetryCollector,
    address_fingerprint,
    boot_time,
    collect_interfaces,
    read_machine_id,
    read_os_release,
)

__all__ = ["Agent", "serve"]

log = logging.getLogger(__name__)
S = TypeVar("S")

#: Requests handled by the session itself rather than a handler module.
_BUILTIN_CAPABILITIES: Final = ("cancel",)
#: On SIGTERM: how long queued answers may take to drain before exit.
FLUSH_TIMEOUT_S: Final = 2.0


@final
class Agent:
    """State shared by every session of one agent process."""

    def __init__(self, config: AgentConfig, channel: Channel | None = None) -> None:
        self.config = config
        self.channel = channel or make_channel(
            config.transport, device=config.device, socket=config.socket, max_connections=config.max_connections
        )
        self.started_monotonic = time.monotonic()
        self.started_at = time.time()
        self.sessions: set[Session] = set()
        #: What handler modules keep between requests, one instance per class (handler_state).
        self._handler_states: dict[type, object] = {}
        #: Bytes of partial frames buffered by every session together (see
        #: Session; bounded by config.max_buffered_bytes).
        self.buffered_bytes = 0
        #: Bytes of the requests being handled by every session together
        #: (bounded by config.max_request_bytes).
        self.request_bytes = 0
        self.collector = TelemetryCollector(config.interface_exclude)
        self._os = read_os_release()
        self._machine_id = read_machine_id()
        #: Work that must outlive the session that asked for it (a delayed
        #: shutdown). Set while :meth:`run` runs.
        self.background: trio.Nursery | None = None
        self.stopping = False

    def handler_state(self, cls: type[S]) -> S:
        """This agent's one ``cls()``: what a handler module keeps between requests
        (execute's running commands, lifecycle's pending shutdown), made on first use."""
        state = self._handler_states.get(cls)
        if state is None:
            state = self._handler_states[cls] = cls()
        return state  # type: ignore[return-value]

    # -- identity ----------------------------------------------------------

    def capabilities(self) -> list[str]:
        return sorted({*HANDLERS, *_BUILTIN_CAPABILITIES})

    def identity(self) -> pb.AgentIdentity:
        uname = platform.uname()
        ident = pb.AgentIdentity(
            agent_version=__version__,
            protocol_version=PROTOCOL_VERSION,
            os=self._os,
            kernel=uname.release,
            kernel_version=uname.version,
            architecture=uname.machine,
            hostname=socket.gethostname(),
            interfaces=self._identity_interfaces(),
            capabilities=self.capabilities(),
            disabled_capabilities=sorted(set(self.config.disable) & set(self.capabilities())),
            pid=os.getpid(),
            max_frame_bytes=self.config.max_frame_bytes,
            python_version=platform.python_version(),
            machine_id=self._machine_id,
        )
        set_timestamp(ident.boot_time, boot_time())
        set_timestamp(ident.agent_started_at, self.started_at)
        return ident

    def _identity_interfaces(self) -> list[pb.NetworkInterface]:
        try:
            return collect_interfaces(self.config.interface_exclude, counters=False)
        except Exception:
            # An identity without addresses beats no identity: this runs as a
            # host attaches, and raising here would end the whole agent.
            log.exception("reading network interfaces for the identity failed")
            return []

    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    # -- events ------------------------------------------------------------

    def broadcast(self, **payload: object) -> None:
        """Send an event to every connected host; dropped where a queue is full."""
        msg = new_message(**payload)  # type: ignore[arg-type]
        for session in list(self.sessions):
            try:
                session.writer.try_send(msg)
            except FrameTooLarge as exc:
                # A guest with more interfaces or mounts than a frame holds: its
                # reports are lost, not the agent.
                log.warning("%s event not sent: %s", msg.WhichOneof("payload"), exc)
                return

    async def _telemetry_loop(self) -> None:
        """Push a telemetry report every ``telemetry_interval_s`` (0: never)."""
        interval = self.config.telemetry_interval_s
        if interval <= 0:
            return
        # Scheduled on a fixed grid so that sampling time does not add drift.
        due = trio.current_time()
        while True:
            due = max(due + interval, trio.current_time())
            await trio.sleep_until(due)
            if not self.sessions:
                continue
            try:
                report = await trio.to_thread.run_sync(self.collector.sample)
            except Exception:
                # One failed sample (a filesystem gone mid-read, a psutil
                # error) must not end the loop, nor the agent with it.
                log.exception("telemetry sample failed")
                continue
            self.broadcast(telemetry=report)

    async def _ip_watch_loop(self) -> None:
        """Broadcast ip_changed whenever the set of addresses changes."""
        exclude = self.config.interface_exclude

        def collect() -> list[pb.NetworkInterface]:
            return collect_interfaces(exclude, counters=False)

        known: frozenset[tuple[str, str, int]] | None = None
        while True:
            try:
                interfaces = await trio.to_thread.run_sync(collect)
            except Exception:
                log.exception("reading network interfaces failed")  # retried at the next check
            else:
                current = address_fingerprint(interfaces)
                if known is None:
                    known = current  # the baseline: hosts get it in hello
                elif current != known:
                    log.info("addresses changed: %s", sorted(a for _, a, _ in current))
                    known = current
                    self.broadcast(ip_changed=pb.IpChangedEvent(interfaces=interfaces))
                # Tests wait for this line to know a check saw a change that must not be reported.
                log.debug("addresses checked")
            await trio.sleep(self.config.ip_check_interval_s)

    # -- serving -----------------------------------------------------------

    async def _handle_link(self, link: Link) -> None:
        if self.stopping:
            return
        session = Session(self, link)
        self.sessions.add(session)
        log.info("serving %s", link.description)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or until SIGTERM/SIGINT (then exit cleanly)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                self.background = nursery
                nursery.start_soon(self._telemetry_loop)
                nursery.start_soon(self._ip_watch_loop)
                nursery.start_soon(release_memory_loop)
                await nursery.start(self.channel.serve, self._handle_link)
                log.info("limiquantix-agent %s ready (%s, pid %d)", __version__, self.config.transport, os.getpid())
                task_status.started()
                async for signum in signals:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    await self._stop(signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    async def _stop(self, reason: str) -> None:
        """Stop taking requests, kill running commands, tell the hosts, flush."""
        self.stopping = True
        with trio.move_on_after(FLUSH_TIMEOUT_S) as scope:
            scope.shield = True
            for session in list(self.sessions):
                for ctx in list(session.inflight.values()):
                    ctx.cancel_scope.cancel()  # execute's cleanup kills the process group
            # Let cancelled handlers finish their cleanup, then drain the writers.
            while any(s.inflight for s in self.sessions):
                await trio.sleep(0.01)
            # After what the handlers still answered: the host stops waiting for this agent now.
            self.broadcast(agent_stopping=pb.AgentStoppingEvent(reason=reason))
            for session in list(self.sessions):
                session.writer.close()
            for session in list(self.sessions):
                await session.writer.drained.wait()


async def serve(config: AgentConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run an agent with ``config`` (the programmatic entry point)."""
    await Agent(config).run(task_status=task_status)
