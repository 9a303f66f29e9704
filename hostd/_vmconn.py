"""One VM's agent connection: the task tree that owns that VM's chardev socket.

A :class:`VMConnection` connects to the socket QEMU (or libvirt, or
``limiquantix-simvm``) listens on, runs an :class:`~limiquantix.protocol.AgentClient`
over it (hello/sync: everything before the echo of its random id is discarded),
and keeps it: pings every ``ping_interval_s``, marks the agent unresponsive
after ``unresponsive_after_misses`` missed pings, reconnects with capped
exponential backoff plus jitter when the connection ends, and waits (polling)
for a socket that is missing. It remembers what the API reports: state, last
time the agent was heard, its identity, latest telemetry, IP addresses, why the
last connection ended, and counters.

States (:class:`VMState`)::

    disabled ◀──── enable()/disable() ────▶ any
    no_socket ──socket appears──▶ connecting ──hello echoed──▶ connected ◀──┐
        ▲                          │  (connect_grace_s without an echo)     │ pong or
        │                          ▼                                       │ agent_ready
        └──socket gone── waiting_for_agent ──hello echoed──▶ connected ──misses──▶ unresponsive
                                   ▲                            │
                                   └────── agent_stopping ──────┘  (pong or agent_ready: back)

Calls (:meth:`request`, :meth:`stream`) go to the current AgentClient. They fail
at once with ``Unavailable`` unless the state is ``connected``, and every call in
flight fails at once with ``Unavailable`` when the connection ends (AgentClient
fails its pending calls when its reader ends), when the agent restarts (a new
``agent_ready``) or says it is stopping (``agent_stopping``), when it is marked
unresponsive, or when the connection is disabled. Each call runs under a deadline, the caller's budget plus
``deadline_margin_s``, enforced by a cancel scope and raised as
``DeadlineExceeded``; a reply that arrives later is dropped and counted
(``late_replies``), and a cancellable request (execute, file_read) is cancelled
in the agent.

Why no reconnect when unresponsive: the socket is QEMU's, not the agent's; a new
connection would reach the same silent guest. Pings go on, and the first pong
(or an ``agent_ready`` from a restarted agent) makes it ``connected`` again.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import final

import trio
from google.protobuf.message import Message

from limiquantix.protocol import AgentClient, Backoff, LogThrottle, enum_name, errors, guestcaps
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.guestcaps import Cuts

from ._config import ConnectionConfig

__all__ = ["ConnectionCounters", "VMConnection", "VMState"]

log = logging.getLogger(__name__)


class VMState(str, enum.Enum):
    """Where a VM's agent connection stands (the node API's ``AgentState``: hostd/_api.py)."""

    NO_SOCKET = "no_socket"
    """The chardev socket does not exist (VM off, or not created yet)."""
    CONNECTING = "connecting"
    """Connecting to the socket, or waiting for the hello echo within ``connect_grace_s``."""
    WAITING_FOR_AGENT = "waiting_for_agent"
    """The socket is open but the guest is silent: booting, or no agent installed."""
    CONNECTED = "connected"
    """Hello answered and pings answered: calls are accepted."""
    UNRESPONSIVE = "unresponsive"
    """Was connected; the agent has missed ``unresponsive_after_misses`` pings."""
    DISABLED = "disabled"
    """Turned off by configuration or the API: never connected."""


@final
@dataclass(frozen=True, slots=True)
class ConnectionCounters:
    """Counts over the connection's whole life (all its sockets), for /metrics."""

    connects: int = 0
    """Connections whose hello was answered."""
    reconnects: int = 0
    """Of those, the ones after the first."""
    connect_failures: int = 0
    """Socket connects that failed (refused, missing)."""
    agent_restarts: int = 0
    """New agent_ready announcements on a live connection."""
    ping_misses: int = 0
    deadline_exceeded: int = 0
    """Calls that ran out of time."""
    late_replies: int = 0
    """Replies that arrived after their caller gave up (dropped)."""
    dropped_events: int = 0
    """Events dropped because the event queue was full."""
    rate_limited_events: int = 0
    """Events over the per-VM rate: dropped, or telemetry replaced by a newer report."""
    reader_pauses: int = 0
    """Times the VM's reader paused, over its share of decoding work (a flooding guest)."""
    discarded_before_sync: int = 0
    """Messages ignored before the hello echo (stale frames)."""
    bad_messages: int = 0
    """Frames whose payload was not a usable message."""
    bad_frames: int = 0
    """Frames that failed their CRC or were abandoned for a SYNC frame."""
    dropped_bytes: int = 0
    """Garbage bytes skipped while looking for a frame."""
    unverified_headers: int = 0
    """Frame headers skipped unchecked: checking their claimed payloads would
    have cost more than the bytes received pay for (a guest faking headers)."""

    def __add__(self, other: ConnectionCounters) -> ConnectionCounters:
        return ConnectionCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _client_counters(client: AgentClient) -> ConnectionCounters:
    stats = client.decoder.stats
    return ConnectionCounters(
        late_replies=client.late_replies,
        dropped_events=client.dropped_events,
        rate_limited_events=client.rate_limited_events,
        reader_pauses=client.reader_pauses,
        discarded_before_sync=client.discarded_before_sync,
        bad_messages=client.bad_messages,
        bad_frames=stats.bad_frames,
        dropped_bytes=stats.dropped_bytes,
        unverified_headers=stats.unverified,
    )


def _closed_reason(client: AgentClient) -> str:
    return client.closed_reason or "connection closed"


def _socket_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the socket at ``path``; None when missing.

    A VM that restarts makes a new socket file: a new inode tells a retry loop
    to try at once instead of waiting out its backoff.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@final
class _Call:
    """A call in flight, so that it can be failed at once from outside."""

    __slots__ = ("abort_reason", "deadline", "scope")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.scope: trio.CancelScope | None = None
        self.abort_reason: str | None = None

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        if self.scope is not None:
            self.scope.cancel()


@final
class VMConnection:
    """The connection to one VM's agent. Run :meth:`run` in a nursery; call the rest from anywhere.

    Args:
        vm_id: the VM's id in the API.
        socket_path: the VM's chardev socket.
        name: display name (default: the id).
        labels: reported in :meth:`status`.
        config: intervals, backoff, deadlines.
        enabled: False starts it ``disabled``.
        source: where the VM was found (``config``, ``libvirt``, ``directory``).
        rng: randomness for the backoff jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        vm_id: str,
        socket_path: str,
        *,
        name: str = "",
        labels: Mapping[str, str] | None = None,
        config: ConnectionConfig | None = None,
        enabled: bool = True,
        source: str = "config",
        rng: random.Random | None = None,
    ) -> None:
        self.vm_id = vm_id
        self.name = name or vm_id
        self.labels: dict[str, str] = dict(labels or {})
        self.config = config or ConnectionConfig()
        self.source = source
        #: The agent's last known identity (kept after a disconnect, for display).
        self.identity: pb.AgentIdentity | None = None
        #: The latest telemetry report.
        self.telemetry: pb.TelemetryReport | None = None
        #: The latest shutdown the agent announced (cleared by a new agent).
        self.shutdown_started: pb.ShutdownStartedEvent | None = None
        #: Wall-clock time (time.time()) the agent was last heard from.
        self.last_seen: float | None = None
        #: Why the last connection ended or the last attempt failed ("" before any).
        self.last_disconnect_reason = ""
        self._socket_path = socket_path
        self._enabled = enabled
        self._interfaces: list[pb.NetworkInterface] = []
        self._interfaces_truncated = False
        # What the guest sent beyond the caps is logged once per kind and connection.
        self._cuts_logged: set[str] = set()
        # The lines a guest's events cause (it may send 10 a second): one per kind a minute.
        self._event_log = LogThrottle()
        self._state = VMState.CONNECTING if enabled else VMState.DISABLED
        self._state_since = -math.inf  # set when run() starts (no trio clock before)
        self._client: AgentClient | None = None
        # The session's client until its hello is answered (then _client): what it dropped so
        # far (a guest whose every hello answer is refused) is counted too.
        self._starting: AgentClient | None = None
        self._session_scope: trio.CancelScope | None = None
        self._calls: set[_Call] = set()
        self._misses = 0
        self._counts: dict[str, int] = {name: 0 for name in ("connects", "reconnects", "connect_failures",
                                                             "agent_restarts", "ping_misses", "deadline_exceeded")}  # fmt: skip
        # Counters of AgentClients already closed; the live one's are added on read.
        self._retired = ConnectionCounters()
        self._rng = rng or random.Random()
        cfg = self.config
        self._backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, jitter=cfg.backoff_jitter, rng=self._rng)
        self._changed = trio.Event()
        self._poke = trio.Event()

    # -- what the API reads ----------------------------------------------------

    @property
    def state(self) -> VMState:
        return self._state

    @property
    def state_since(self) -> float:
        """trio clock time of the last state change."""
        return self._state_since

    @property
    def socket_path(self) -> str:
        return self._socket_path

    @property
    def connected(self) -> bool:
        """Whether calls are accepted now."""
        return self._state is VMState.CONNECTED

    @property
    def ip_addresses(self) -> list[str]:
        """The guest's addresses, from its identity and later ip_changed events."""
        return [a.address for iface in self._interfaces for a in (*iface.ipv4, *iface.ipv6)]

    def counters(self) -> ConnectionCounters:
        """Totals over every connection so far, the live one included."""
        client = self._client or self._starting
        live = _client_counters(client) if client is not None else ConnectionCounters()
        return self._retired + live + ConnectionCounters(**self._counts)

    @property
    def interfaces_truncated(self) -> bool:
        """The guest reported more interfaces or addresses than are kept (protocol/guestcaps.py)."""
        return self._interfaces_truncated

    async def wait_until(self, predicate: Callable[[VMConnection], bool]) -> None:
        """Return once ``predicate(self)`` holds; re-checked at every change of
        state, identity, addresses or telemetry. Bound it with ``trio.fail_after``."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Return at the next change of state, identity, addresses or telemetry."""
        await self._changed.wait()

    @property
    def changed_event(self) -> trio.Event:
        """The event the next change sets. Take it *before* checking a condition
        so that a change in between is not missed."""
        return self._changed

    async def wait_for_state(self, *states: VMState) -> VMState:
        """Return the state once it is one of ``states`` (bounded by the caller)."""
        await self.wait_until(lambda conn: conn.state in states)
        return self._state

    # -- control -------------------------------------------------------------

    def disable(self, reason: str = "disabled") -> None:
        """Drop the connection (calls in flight fail with Unavailable) and stay disabled."""
        if not self._enabled:
            return
        self._enabled = False
        self.last_disconnect_reason = reason
        self._abort_calls(f"VM {self.vm_id} was disabled")
        self._end_session()
        self._wake()

    def enable(self) -> None:
        """Start connecting again after :meth:`disable`."""
        if not self._enabled:
            self._enabled = True
            self._wake()

    def set_socket_path(self, path: str) -> None:
        """Follow the VM to another socket (a libvirt domain restarted under a new id)."""
        if path == self._socket_path:
            return
        log.info("vm %s: socket moved from %s to %s", self.vm_id, self._socket_path, path)
        self._socket_path = path
        self._end_session()
        self._wake()

    def _wake(self) -> None:
        self._poke.set()

    def _end_session(self) -> None:
        if self._session_scope is not None:
            self._session_scope.cancel()

    # -- calls ----------------------------------------------------------------

    def _usable_client(self) -> AgentClient:
        client = self._client
        if client is None or self._state is not VMState.CONNECTED or not client.connected:
            raise errors.Unavailable(
                f"the agent of VM {self.vm_id} is not connected ({self._state.value})", reason=self._state.value
            )
        return client

    def _new_call(self, deadline_s: float | None) -> _Call:
        budget = self.config.default_deadline_s if deadline_s is None else deadline_s
        if not budget >= 0:  # also refuses NaN
            raise errors.InvalidArgument(f"deadline_s must be >= 0, not {budget}", reason="invalid_deadline")
        return _Call(trio.current_time() + budget + self.config.deadline_margin_s)

    @contextmanager
    def _step(self, call: _Call) -> Iterator[None]:
        """Run one wait of ``call`` under its deadline and abort scope; translate their cancellation.

        Raises:
            Unavailable: the call was aborted (connection gone, agent unresponsive, VM disabled).
            DeadlineExceeded: the deadline passed.
        """
        if call.abort_reason is not None:
            raise errors.Unavailable(call.abort_reason, reason="aborted")
        scope = trio.CancelScope(deadline=call.deadline)
        call.scope = scope
        try:
            with scope:
                yield
        finally:
            call.scope = None
        if scope.cancelled_caught:
            if call.abort_reason is not None:
                raise errors.Unavailable(call.abort_reason, reason="aborted")
            self._counts["deadline_exceeded"] += 1
            raise errors.DeadlineExceeded(
                f"the agent of VM {self.vm_id} did not answer in time", reason="deadline_exceeded"
            )

    def _abort_calls(self, reason: str) -> None:
        for call in list(self._calls):
            call.abort(reason)

    async def request(
        self, *, deadline_s: float | None = None, message_id: str | None = None, **payload: Message
    ) -> pb.AgentMessage:
        """Send one request to the agent; return its terminal answer.

        Args:
            deadline_s: the caller's budget in seconds (e.g. a command's own
                timeout); ``deadline_margin_s`` is added. None: ``default_deadline_s``.
            message_id: names the request, so that another call can cancel it
                (``cancel=CancelRequest(target_message_id=...)``); default: a fresh id.
            payload: one request field of ``AgentMessage`` (``ping=PingRequest()``).

        Raises:
            Unavailable: not connected, or the connection was lost, the agent
                restarted or became unresponsive while waiting.
            DeadlineExceeded: no answer within the deadline.
            InvalidArgument: a negative ``deadline_s``.
            AlreadyExists: ``message_id`` names a request still pending.
            AgentError: the agent's own error answer (NotFound, PermissionDenied, ...).
        """
        call = self._new_call(deadline_s)
        client = self._usable_client()
        self._calls.add(call)
        try:
            with self._step(call):
                answer = await client.request(message_id=message_id, **payload)
        finally:
            self._calls.discard(call)
        self._heard()
        return answer

    async def stream(
        self, *, deadline_s: float | None = None, message_id: str | None = None, **payload: Message
    ) -> AsyncGenerator[pb.AgentMessage, None]:
        """Send one request; yield every message answering it, the terminal one last.

        The deadline covers the whole stream. Leaving the iteration early (use
        ``contextlib.aclosing``) cancels the request in the agent.
        ``message_id`` as in :meth:`request`.

        Raises:
            Unavailable, DeadlineExceeded, InvalidArgument, AlreadyExists, AgentError: as :meth:`request`.
        """
        call = self._new_call(deadline_s)
        client = self._usable_client()
        self._calls.add(call)
        inner = client.stream(message_id=message_id, **payload)
        try:
            while True:
                # The deadline scope covers each wait, never a yield: a cancel
                # scope must not stay open while the consumer runs.
                with self._step(call):
                    try:
                        item = await inner.__anext__()
                    except StopAsyncIteration:
                        return
                self._heard()
                yield item
        finally:
            self._calls.discard(call)
            await inner.aclose()  # type: ignore[attr-defined]

    async def ping(self, payload: bytes = b"") -> pb.PongResponse:
        """One ping through :meth:`request` (same errors)."""
        return (await self.request(ping=pb.PingRequest(payload=payload))).pong

    # -- the task tree -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection until cancelled (never returns otherwise, never raises for I/O)."""
        self._state_since = trio.current_time()
        task_status.started()
        try:
            while True:
                if not self._enabled:
                    self._set_state(VMState.DISABLED)
                    await self._sleep_or_poke(math.inf)
                    continue
                sock_id = _socket_id(self._socket_path)
                if sock_id is None:
                    self._set_state(VMState.NO_SOCKET)
                    # A socket that appears is tried at once.
                    self._backoff.reset()
                    await self._sleep_or_poke(self.config.socket_poll_s)
                    continue
                try:
                    if await self._session():
                        self._backoff.reset()
                except Exception as exc:
                    # A bug in one VM's connection must not take down the
                    # registry and every other VM with it: log, back off, retry.
                    log.exception("vm %s: connection failed unexpectedly", self.vm_id)
                    self.last_disconnect_reason = f"internal error: {type(exc).__name__}: {exc}"
                if not self._enabled or _socket_id(self._socket_path) is None:
                    continue
                delay = self._backoff.next()
                self._set_state(VMState.CONNECTING)
                await self._backoff_wait(delay, sock_id)
        finally:
            self._abort_calls(f"the connection to VM {self.vm_id} was closed")

    async def _sleep_or_poke(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if woken early by a control call."""
        with trio.move_on_after(seconds):
            await self._poke.wait()
        poked = self._poke.is_set()
        if poked:
            self._poke = trio.Event()
        return poked

    async def _backoff_wait(self, delay: float, sock_id: tuple[int, int]) -> None:
        """Wait out ``delay``, but stop early when the socket is replaced or removed."""
        end = trio.current_time() + delay
        while (left := end - trio.current_time()) > 0:
            if await self._sleep_or_poke(min(left, self.config.socket_poll_s)):
                return
            if _socket_id(self._socket_path) != sock_id:
                return

    async def _session(self) -> bool:
        """One connection: connect, sync, serve until it ends. True if the hello was answered."""
        self._set_state(VMState.CONNECTING)
        path = self._socket_path
        try:
            stream = await trio.open_unix_socket(path)
        except OSError as exc:
            self._counts["connect_failures"] += 1
            self.last_disconnect_reason = f"cannot connect to {path}: {exc.strerror or exc}"
            log.debug("vm %s: %s", self.vm_id, self.last_disconnect_reason)
            return False
        synced = False
        reason = "closed"
        with trio.CancelScope() as scope:
            self._session_scope = scope
            try:
                async with trio.open_nursery() as nursery:
                    grace = trio.CancelScope()
                    nursery.start_soon(self._grace_timer, grace)
                    try:
                        async with AgentClient.open(
                            stream,
                            max_frame_bytes=self.config.max_frame_bytes,
                            event_rate_per_s=self.config.event_rate_per_s,
                            event_burst=self.config.event_burst,
                            reader_work_per_s=self.config.reader_work_per_s,
                            on_start=self._start_client,
                        ) as client:
                            grace.cancel()
                            synced = True
                            self._attach(client)
                            try:
                                await self._serve(client)
                            finally:
                                self._detach(client)
                        reason = _closed_reason(client)
                    except errors.Unavailable as exc:  # closed before the hello was answered
                        reason = exc.message
                    grace.cancel()
            finally:
                self._session_scope = None
                if self._starting is not None:  # never answered: its counts are kept all the same
                    self._retired = self._retired + _client_counters(self._starting)
                    self._starting = None
        if scope.cancelled_caught:
            reason = self.last_disconnect_reason if not self._enabled else "closed by hostd"
        self.last_disconnect_reason = reason
        log.info("vm %s: connection ended: %s", self.vm_id, reason)
        self._notify()
        return synced

    async def _grace_timer(self, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self.config.connect_grace_s)
            if self._state is VMState.CONNECTING:
                log.info("vm %s: socket open, no answer from an agent yet", self.vm_id)
                self._set_state(VMState.WAITING_FOR_AGENT)

    def _start_client(self, client: AgentClient) -> None:
        self._starting = client

    def _attach(self, client: AgentClient) -> None:
        self._client, self._starting = client, None
        self._misses = 0
        self._counts["connects"] += 1
        if self._counts["connects"] > 1:
            self._counts["reconnects"] += 1
        self._cuts_logged.clear()
        self._set_identity(client.identity)
        client.identity = self.identity  # the capped copy: the guest's original is not kept alive
        self._heard()
        ident = self.identity
        log.info(
            "vm %s: agent %s connected (pid %s, %s)",
            self.vm_id,
            ident.agent_version if ident else "?",
            ident.pid if ident else "?",
            ident.os.pretty_name if ident else "?",
        )
        self._set_state(VMState.CONNECTED)

    def _detach(self, client: AgentClient) -> None:
        self._client = None
        self._retired = self._retired + _client_counters(client)
        # AgentClient has failed its own pending calls; these are the ones
        # still between steps (a stream whose consumer is busy).
        self._abort_calls(f"the connection to VM {self.vm_id} was lost")

    async def _serve(self, client: AgentClient) -> None:
        """Events and pings until the client's reader ends (its event channel closes)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ping_loop, client)
            async for msg in client.events:
                self._on_event(msg)
            nursery.cancel_scope.cancel()

    async def _ping_loop(self, client: AgentClient) -> None:
        cfg = self.config
        # A random phase: VMs that connected together (a hostd restart) would
        # otherwise all be pinged in the same instant, every interval.
        await trio.sleep(self._rng.random() * cfg.ping_interval_s)
        first = True
        while True:
            if not first:
                await trio.sleep(cfg.ping_interval_s)
            first = False
            answered = False
            with trio.move_on_after(cfg.ping_timeout_s):
                try:
                    await client.ping()
                    answered = True
                except errors.Unavailable:
                    if not client.connected:
                        return  # the connection is ending; _serve notices
                    continue  # failed by an agent restart: no answer, no miss
                except errors.AgentError:
                    answered = True  # an error answer is an answer
            if answered:
                self._heard()
                self._misses = 0
                if self._state in (VMState.UNRESPONSIVE, VMState.WAITING_FOR_AGENT):
                    self._log_event("answers again", "agent answers again")
                    self._set_state(VMState.CONNECTED)
                continue
            self._misses += 1
            self._counts["ping_misses"] += 1
            if self._misses >= cfg.unresponsive_after_misses and self._state is VMState.CONNECTED:
                log.warning("vm %s: agent missed %d pings: unresponsive", self.vm_id, self._misses)
                self._set_state(VMState.UNRESPONSIVE)
                self._abort_calls(f"the agent of VM {self.vm_id} is unresponsive ({self._misses} pings missed)")

    def _on_event(self, msg: pb.AgentMessage) -> None:
        self._heard()
        kind = msg.WhichOneof("payload")
        if kind == "telemetry":
            self.telemetry, cuts = guestcaps.cap_telemetry(msg.telemetry)
            self._log_cuts("telemetry", cuts)
        elif kind == "ip_changed":
            self._interfaces, cuts = guestcaps.cap_interfaces(msg.ip_changed.interfaces)
            self._interfaces_truncated = bool(cuts)
            self._log_cuts("ip_changed", cuts)
            self._log_event("ip_changed", "addresses now %s", guestcaps.brief_list(self.ip_addresses))
        elif kind == "agent_ready":
            # The agent restarted (or the guest rebooted) under a live connection:
            # AgentClient has failed what was pending; report the new identity.
            old = self.identity.pid if self.identity is not None else 0
            self._counts["agent_restarts"] += 1
            self._set_identity(msg.agent_ready.identity)
            if self._client is not None:
                self._client.identity = self.identity  # as in _attach
            self.shutdown_started = None
            self._misses = 0
            self._log_event("agent_ready", "agent restarted (pid %d -> %d)", old, msg.agent_ready.identity.pid)
            if self._state in (VMState.UNRESPONSIVE, VMState.WAITING_FOR_AGENT):
                self._set_state(VMState.CONNECTED)
        elif kind == "agent_stopping":
            # Its last frame: nobody answers on this connection until an agent_ready. The
            # connection stays (the socket is QEMU's); pings go on and are not misses that count.
            reason = guestcaps.cut(msg.agent_stopping.reason, guestcaps.TEXT_BYTES) or "no reason given"
            self._log_event("agent_stopping", "agent stopping (%s)", reason)
            self.last_disconnect_reason = f"agent stopped ({reason})"
            self._set_state(VMState.WAITING_FOR_AGENT)
            self._abort_calls(f"the agent of VM {self.vm_id} stopped ({reason})")
        elif kind == "shutdown_started":
            self.shutdown_started = guestcaps.cap_message(msg.shutdown_started)[0]
            self._log_event(
                "shutdown_started", "guest announced %s", enum_name(pb.ShutdownMode, msg.shutdown_started.mode)
            )
        self._notify()

    # -- bookkeeping -------------------------------------------------------------

    def _set_identity(self, identity: pb.AgentIdentity | None) -> None:
        if identity is None:  # pragma: no cover - AgentClient.open sets it before yielding
            return
        self.identity, cuts = guestcaps.cap_identity(identity)
        self._interfaces = list(self.identity.interfaces)
        self._interfaces_truncated = cuts.under("interfaces")
        self._log_cuts("identity", cuts)

    def _log_event(self, kind: str, message: str, *args: object) -> None:
        """An INFO line a guest's event causes: at most one per ``kind`` a minute, with how many
        it stands for. A guest may send events at the rate AgentClient lets through (10 a
        second): alternating addresses made 10 lines a second, ~500 MB of log a day per VM."""
        more = self._event_log.due(kind)
        if more is not None:
            log.info(f"vm %s: {message}%s", self.vm_id, *args, more)

    def _log_cuts(self, kind: str, cuts: Cuts) -> None:
        """One line per kind and connection: a guest sending oversized reports every second is not a log flood."""
        if cuts and kind not in self._cuts_logged:
            self._cuts_logged.add(kind)
            log.warning("vm %s: %s over hostd's caps, kept cut (truncated): %s", self.vm_id, kind, cuts.summary())

    def _heard(self) -> None:
        self.last_seen = time.time()

    def _set_state(self, state: VMState) -> None:
        if state is self._state:
            return
        log.debug("vm %s: %s -> %s", self.vm_id, self._state.value, state.value)
        self._state = state
        self._state_since = trio.current_time()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"<VMConnection {self.vm_id} {self._state.value} {self._socket_path}>"
