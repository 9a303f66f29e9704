"""``limiquantix.compute.v1.FleetService``: one command over many VMs (like AWS SSM Run Command).

RunCommand resolves its targets, stores the run (:meth:`Store.create_command`,
every target ``pending``), writes its audit row (``command.run``, with the
command text) and answers with the run's id. The run itself proceeds in the
app's background nursery (``app.add_background_task``), so a client that hangs
up does not stop it. The runner:

* starts targets in their order, at most ``maxConcurrency`` at once (a
  :class:`trio.CapacityLimiter`; a slot is held from the moment the target is
  marked ``in_progress`` until its result is stored, so the stored
  ``started_at``/``completed_at`` intervals never overlap more than that);
* for each target: node unreachable, VM no longer reported, or agent not
  connected → ``undeliverable``; else ExecuteInGuestStream through the node's
  hostd (as VMService's ExecuteScriptStream) with execution id
  ``fleet-<command id>``, its output kept as it comes (at most
  TARGET_OUTPUT_MAX_BYTES per stream, what is stored) for WatchCommand:
  exit 0 → ``success``, nonzero / signal / failed to
  start → ``failed``, the command's timeout → ``timed_out``, cancelled →
  ``cancelled``; the agent's exit reason and signal kept beside the exit code
  (set only when it exited), as ExecuteScript answers them;
* counts ``failed`` and ``timed_out`` as errors (as SSM's ErrorCount does; an
  ``undeliverable`` target is not an error: maxErrors guards against a bad
  command, not against VMs that are down). Once errors exceed the limit
  (:func:`~._models.max_errors_limit`), no new target starts and the ones not
  started are marked ``skipped``; those already running finish;
* ends the run ``cancelled`` (CancelCommand), ``success`` (every target
  succeeded) or ``failed`` (anything else: a failure, a timeout, an
  undeliverable or skipped target), and completes the audit row with the
  per-status counts.

CancelCommand marks the run (:meth:`Store.cancel_command`: pending targets →
``cancelled``), sends CancelExecution for every running target to its hostd and
gives each :data:`CANCEL_GRACE_S` to come back ``cancelled`` before its call is
abandoned (``cancelled``, "cancel not confirmed by the guest").

Permissions: RunCommand and CancelCommand need ``command.run`` on every target
(VM ids named outside a label-scoped token's scope are refused; label selectors
are narrowed to the scope); GetCommand and ListCommands need ``command.read``.
A scoped token sees only the targets within its scope, and lists only its own
user's runs.

A controller that stops while runs are in progress leaves them to
:meth:`Store.recover_interrupted_commands` at its next start (running targets →
``failed``, "outcome unknown").
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final, final

import trio

from limiquantix.protocol import command_budget_s, errors
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import fleet_pb2 as fleet_pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol.limits import check_message
from limiquantix.protocol.rpc.server import CallContext

from ._audit import AuditTrail
from ._auth import Permission, Principal, require
from ._context import principal_of, source_of, timestamp
from ._exec import (
    DEFAULT_CALL_BUDGET_S,
    STREAM_NAMES,
    OutputDecoder,
    exec_detail,
    execute_request,
    exit_code,
    exit_reason_name,
)
from ._forward import NodeClient, OutcomeUnknown, outcome_unknown
from ._models import (
    MAX_PAGE_SIZE,
    TARGET_OUTPUT_MAX_BYTES,
    AuditAction,
    AuditDetail,
    AuditOutcome,
    Command,
    CommandSpec,
    CommandStatus,
    NodeInfo,
    TargetResult,
    TargetSpec,
    TargetStatus,
    cap_output,
    max_errors_limit,
    parse_max_errors,
)
from .store import Store

__all__ = [
    "CANCEL_GRACE_S",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_PAGE_SIZE",
    "ERROR_STATUSES",
    "EXECUTION_ID_PREFIX",
    "FLEET_SERVICE",
    "WATCH_POLL_S",
    "FleetAPI",
    "Spawn",
]

log = logging.getLogger(__name__)

FLEET_SERVICE: Final = fleet_pb.DESCRIPTOR.services_by_name["FleetService"]

#: maxConcurrency when the caller names none (SSM's default).
DEFAULT_MAX_CONCURRENCY: Final = 50
#: maxErrors when the caller names none (SSM's default: stop at the first error).
DEFAULT_MAX_ERRORS: Final = "0"
#: ListCommands page size when the caller names none.
DEFAULT_PAGE_SIZE: Final = 50
#: After CancelCommand, how long a running target's guest gets to report ``cancelled``
#: before the controller abandons its call.
CANCEL_GRACE_S: Final = 5.0
#: Target statuses that count towards maxErrors (SSM's ErrorCount: Failed, Execution Timed Out).
ERROR_STATUSES: Final = frozenset({TargetStatus.FAILED, TargetStatus.TIMED_OUT})
#: Execution ids the runner gives its commands: ``fleet-<command id>`` (one per VM per run).
EXECUTION_ID_PREFIX: Final = "fleet-"
#: hostd's reason when the agent connection broke while the command ran (it was delivered).
_ABORTED_REASON: Final = "aborted"
#: WatchCommand on a run another replica runs: seconds between reads of the store.
WATCH_POLL_S: Final = 1.0
_FINAL_TARGET: Final = frozenset(TargetStatus) - {TargetStatus.PENDING, TargetStatus.IN_PROGRESS}
_FINAL_COMMAND: Final = frozenset({CommandStatus.SUCCESS, CommandStatus.FAILED, CommandStatus.CANCELLED})
#: A maxErrors value that can be recorded as an audit flag.
_MAX_ERRORS_FLAG_RE: Final = re.compile(r"[0-9]{1,6}%?")

#: ``spawn(async_fn, *args)`` starts a task in the app's background nursery
#: (``QuartTrio.add_background_task``: it must be given the coroutine function itself).
Spawn = Callable[..., None]


@final
class _InFlight:
    """A target whose command is running: what CancelCommand needs to stop it."""

    __slots__ = ("node", "scope")

    def __init__(self, node: NodeInfo, scope: trio.CancelScope) -> None:
        self.node = node
        self.scope = scope


@final
class _Watcher:
    """One WatchCommand stream of a run in progress: what it has yet to send."""

    __slots__ = ("sent", "statuses", "visible")

    def __init__(self, visible: frozenset[str] | None) -> None:
        self.visible = visible
        """The VMs the caller may see (None: all)."""
        self.sent: dict[tuple[str, str], int] = {}
        """(VM, stream) → bytes of its live output already sent."""
        self.statuses = 0
        """Entries of the run's ``statuses`` already sent."""


@final
class _Run:
    """A run in progress in this process (the store holds its record)."""

    def __init__(
        self, command: Command, template: api_pb.ExecuteScriptRequest, audit_id: int, *, error_limit: int
    ) -> None:
        self.command_id = command.id
        self.vm_ids = tuple(t.vm_id for t in command.targets)
        self.max_concurrency = command.max_concurrency
        self.template = template
        """The request as ExecuteScript takes it (environment values live only here, in memory)."""
        self.audit_id = audit_id
        self.error_limit = error_limit
        self.errors = 0
        self.cancel_requested = False
        self.in_flight: dict[str, _InFlight] = {}
        self.started = trio.current_time()
        # What WatchCommand streams. Each is bounded whatever the guests print: a target's
        # output is kept up to TARGET_OUTPUT_MAX_BYTES per stream (what is stored anyway) in
        # one bytearray; statuses grow by at most two per target (running, final). A watcher
        # keeps only offsets into them, so a slow one costs the run nothing.
        self.targets: dict[str, TargetResult | None] = dict.fromkeys(self.vm_ids)
        """The latest stored state of each target (None: pending, not touched yet)."""
        self.output: dict[tuple[str, str], bytearray] = {}
        """(VM, stream) → the output of a running or finished target, as stored (capped)."""
        self.output_cut: set[tuple[str, str]] = set()
        self.statuses: list[str] = []
        """VM ids in the order their targets changed status."""
        self.watchers: set[_Watcher] = set()
        self.changed = trio.Event()
        self.ended = False

    def wake(self) -> None:
        """Tell the watchers there is something new."""
        self.changed.set()
        self.changed = trio.Event()

    def target_changed(self, result: TargetResult) -> None:
        self.targets[result.vm_id] = result
        self.statuses.append(result.vm_id)
        self.wake()

    def add_output(self, vm_id: str, stream: str, text: str) -> None:
        """A running target's output: kept (and streamed) up to the per-target cap."""
        key = (vm_id, stream)
        kept = self.output.setdefault(key, bytearray())
        room = TARGET_OUTPUT_MAX_BYTES - len(kept)
        if room <= 0 or not text:
            if text:
                self.output_cut.add(key)
            return
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > room:
            data = cap_output(text, room)[0].encode("utf-8", "surrogatepass")
            self.output_cut.add(key)
        kept += data
        for watcher in self.watchers:
            watcher.sent.setdefault(key, 0)
        self.wake()

    def text(self, vm_id: str, stream: str) -> str:
        return self.output.get((vm_id, stream), bytearray()).decode("utf-8", "surrogatepass")

    @property
    def execution_id(self) -> str:
        return EXECUTION_ID_PREFIX + self.command_id

    @property
    def stop_starting(self) -> bool:
        return self.cancel_requested or self.errors > self.error_limit


def _command_status(value: str) -> CommandStatus:
    """Raises: errors.InvalidArgument: not a command status."""
    try:
        return CommandStatus(value)
    except ValueError:
        raise errors.InvalidArgument(f"unknown status {value[:32]!r}") from None


def _target_status(result: pb.ExecuteResponse) -> TargetStatus:
    if result.exit_reason == pb.EXIT_REASON_EXITED:
        return TargetStatus.SUCCESS if result.exit_code == 0 else TargetStatus.FAILED
    if result.exit_reason == pb.EXIT_REASON_TIMED_OUT or result.timed_out:
        return TargetStatus.TIMED_OUT
    if result.exit_reason == pb.EXIT_REASON_CANCELLED:
        return TargetStatus.CANCELLED
    return TargetStatus.FAILED  # signaled, failed to start


@final
class FleetAPI:
    """``limiquantix.compute.v1.FleetService`` and the runner behind it."""

    def __init__(self, store: Store, nodes: NodeClient, *, heartbeat_timeout_s: float, spawn: Spawn) -> None:
        self.store = store
        self.audit = AuditTrail(store)
        self.nodes = nodes
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._spawn = spawn
        self._runs: dict[str, _Run] = {}

    # -- RunCommand -------------------------------------------------------------------

    async def RunCommand(self, request: fleet_pb.RunCommandRequest, ctx: CallContext) -> fleet_pb.RunCommandResponse:
        """Store the run and its audit row, start it in the background, answer its id.

        Raises:
            errors.PermissionDenied: role, or a named VM outside the token's label scope
                (recorded as ``denied``).
            errors.InvalidArgument: no targets, no command, bad maxConcurrency / maxErrors.
            errors.NotFound: a named VM that no node reports (nothing runs anywhere).
            AuditWriteFailed: the audit row could not be written (the run is cancelled
                before anything starts).
        """
        check_message(request)
        principal = principal_of(ctx)
        template = api_pb.ExecuteScriptRequest(
            command=request.command,
            args=request.args,
            timeout_seconds=request.timeout_seconds,
            working_directory=request.working_directory,
            environment=request.environment,
            run_as_user=request.run_as_user,
        )
        max_errors = (request.max_errors or DEFAULT_MAX_ERRORS).strip()
        base = exec_detail(template)
        flags = [*base.flags, f"max_concurrency={request.max_concurrency or DEFAULT_MAX_CONCURRENCY}"]
        if _MAX_ERRORS_FLAG_RE.fullmatch(max_errors):  # flags allow no "%": "10%" is recorded as "10pct"
            flags.append(f"max_errors={max_errors.replace('%', 'pct')}")
        # A refusal names what was asked for: the VM ids and the label selector.
        detail = AuditDetail(
            command=base.command,
            args=base.args,
            working_directory=base.working_directory,
            run_as_user=base.run_as_user,
            env_keys=base.env_keys,
            labels=dict(request.labels),
            flags=tuple(flags),
            vm_ids=tuple(request.vm_ids),
        )
        named_vm = request.vm_ids[0] if len(request.vm_ids) == 1 and not request.labels else ""
        try:
            require(principal, Permission.COMMAND_RUN)
        except errors.PermissionDenied as exc:
            await self.audit.denied(
                principal, source_of(ctx), AuditAction.FLEET_RUN, exc, vm_id=named_vm, detail=detail
            )
            raise
        execute_request(template)  # invalid_argument before anything is stored
        spec = CommandSpec(
            command=request.command,
            args=tuple(request.args),
            timeout_seconds=request.timeout_seconds,
            working_directory=request.working_directory,
            run_as_user=request.run_as_user,
            env_keys=tuple(sorted(request.environment)),
        )
        target_spec = TargetSpec(vm_ids=tuple(request.vm_ids), labels=dict(request.labels))
        parse_max_errors(max_errors)
        try:
            vm_ids = await self._resolve(principal, target_spec)
        except errors.PermissionDenied as exc:
            await self.audit.denied(
                principal, source_of(ctx), AuditAction.FLEET_RUN, exc, vm_id=named_vm, detail=detail
            )
            raise
        command = await self.store.create_command(
            principal,
            spec=spec,
            target_spec=target_spec,
            vm_ids=vm_ids,
            max_concurrency=request.max_concurrency or DEFAULT_MAX_CONCURRENCY,
            max_errors=max_errors,
        )
        targets = tuple(t.vm_id for t in command.targets)
        try:
            audit_id = await self.audit.begin(
                principal,
                source_of(ctx),
                AuditAction.FLEET_RUN,
                # A run over one VM is that VM's row (found by a vmId filter); any run lists its targets.
                vm_id=targets[0] if len(targets) == 1 else "",
                detail=AuditDetail(
                    command=detail.command, args=detail.args, working_directory=detail.working_directory,
                    run_as_user=detail.run_as_user, env_keys=detail.env_keys, labels=detail.labels,
                    flags=detail.flags, target=command.id, count=len(targets), vm_ids=targets,
                ),
            )  # fmt: skip
        except errors.AgentError:
            if command.targets:
                await self.store.cancel_command(command.id)
            raise
        log.info("fleet run %s by %s: %d targets", command.id, principal.user, len(command.targets))
        if not command.targets:  # created success at once
            await self.audit.complete(audit_id, AuditOutcome.SUCCESS, started=trio.current_time(), error="no targets")
            return fleet_pb.RunCommandResponse(command_id=command.id, target_count=0, status=command.status.value)
        run = _Run(command, template, audit_id, error_limit=max_errors_limit(max_errors, len(command.targets)))
        self._runs[run.command_id] = run
        self._spawn(self._execute, run)
        return fleet_pb.RunCommandResponse(
            command_id=command.id, target_count=len(command.targets), status=command.status.value
        )

    async def _resolve(self, principal: Principal, target_spec: TargetSpec) -> list[str]:
        """VM ids named (each must exist and be in scope), then label matches within the scope.

        Raises:
            errors.PermissionDenied: a named VM is outside the token's label scope.
            errors.NotFound: a named VM that no node ever reported (one that is gone is a
                target, and ends ``undeliverable``).
        """
        out: dict[str, None] = {}
        unknown: list[str] = []
        for vm_id in target_spec.vm_ids:
            try:
                route = await self.store.node_for_vm(vm_id, heartbeat_timeout_s=self.heartbeat_timeout_s)
            except errors.NotFound:
                unknown.append(vm_id)
                continue
            try:
                require(principal, Permission.COMMAND_RUN, vm_labels=route.vm.labels)
            except errors.PermissionDenied as exc:
                raise errors.PermissionDenied(f"VM {vm_id}: {exc.message}", reason=exc.reason) from exc
            out.setdefault(vm_id)
        if unknown:
            shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise errors.NotFound(f"no node has reported VMs: {shown}", reason="unknown_vm")
        if target_spec.labels:
            for _, vm in await self.store.list_vms(labels=target_spec.labels):
                if principal.may_access(vm.labels):
                    out.setdefault(vm.vm_id)
        return list(out)

    # -- the runner -------------------------------------------------------------------

    async def _execute(self, run: _Run) -> None:
        """Run every target (at most ``max_concurrency`` at once), then end the run."""
        try:
            limiter = trio.CapacityLimiter(run.max_concurrency)
            not_started: list[str] = []
            async with trio.open_nursery() as nursery:
                for i, vm_id in enumerate(run.vm_ids):
                    # A slot first, then the decision: a target that waited for
                    # its slot sees the errors of the ones that freed it.
                    await limiter.acquire_on_behalf_of(vm_id)
                    if run.stop_starting:
                        limiter.release_on_behalf_of(vm_id)
                        not_started = list(run.vm_ids[i:])
                        break
                    nursery.start_soon(self._target, run, vm_id, limiter)
                if not run.cancel_requested:
                    for vm_id in not_started:
                        await self._finish_target(run, vm_id, TargetStatus.SKIPPED, error=(
                            f"not started: {run.errors} errors exceeded maxErrors ({run.error_limit})"))  # fmt: skip
            await self._end(run)
        except Exception:
            log.exception("fleet run %s: the runner failed; the run is left to recovery", run.command_id)
        finally:
            self._runs.pop(run.command_id, None)
            run.ended = True
            run.wake()

    async def _finish_target(self, run: _Run, vm_id: str, status: TargetStatus, **result: object) -> bool:
        """Store a target's final status; False when it was already final (cancelled meanwhile)."""
        if status in ERROR_STATUSES:
            run.errors += 1  # before the write: targets waiting for a slot see it at once
        try:
            stored = await self.store.update_target(run.command_id, vm_id, status=status, **result)  # type: ignore[arg-type]
        except errors.FailedPrecondition:
            return False
        run.target_changed(stored)
        return True

    async def _target(self, run: _Run, vm_id: str, limiter: trio.CapacityLimiter) -> None:
        try:
            await self._deliver(run, vm_id)
        except errors.AgentError as exc:  # the store failed: leave the target to recovery
            log.error("fleet run %s, VM %s: %s", run.command_id, vm_id, exc)
        finally:
            run.in_flight.pop(vm_id, None)
            limiter.release_on_behalf_of(vm_id)

    async def _deliver(self, run: _Run, vm_id: str) -> None:
        """One target: route, mark running, execute, store the result."""
        try:
            route = await self.store.node_for_vm(vm_id, heartbeat_timeout_s=self.heartbeat_timeout_s)
        except errors.NotFound:
            await self._finish_target(run, vm_id, TargetStatus.UNDELIVERABLE, error="an admin removed this VM")
            return
        node = route.node
        if node is None or route.gone:
            # Its node no longer reports it (powered off long enough for hostd to forget it, or moved away).
            await self._finish_target(
                run, vm_id, TargetStatus.UNDELIVERABLE, node_id=route.node_id, error=route.gone_error().message
            )
            return
        if not node.reachable:
            await self._finish_target(
                run, vm_id, TargetStatus.UNDELIVERABLE, node_id=node.node_id,
                error=f"node {node.node_id} has sent no heartbeat for {self.heartbeat_timeout_s:g} s",
            )  # fmt: skip
            return
        try:
            stored = await self.store.update_target(
                run.command_id, vm_id, status=TargetStatus.IN_PROGRESS, node_id=node.node_id
            )
        except errors.FailedPrecondition:
            return  # cancelled before it started
        run.target_changed(stored)
        scope = trio.CancelScope()
        run.in_flight[vm_id] = _InFlight(node, scope)
        if run.cancel_requested:  # cancelled while we were marking it
            scope.deadline = trio.current_time() + CANCEL_GRACE_S
        result: pb.ExecuteResponse | None = None
        failure: tuple[TargetStatus, str] | None = None
        with scope:
            try:
                result = await self._execute_streamed(run, node, vm_id)
            except errors.Unavailable as exc:
                # Sent and then lost (outcome unknown) may have run: not "undeliverable".
                ran = exc.reason == _ABORTED_REASON or outcome_unknown(exc)
                status = TargetStatus.FAILED if ran else TargetStatus.UNDELIVERABLE
                failure = (status, f"{exc.connect_code}: {exc.message}")
            except errors.NotFound as exc:
                # The node no longer has the VM (powered off long enough for hostd to forget
                # it): refused before anything ran, like a VM that is not connected.
                failure = (TargetStatus.UNDELIVERABLE, f"{exc.connect_code}: {exc.message}")
            except errors.DeadlineExceeded as exc:
                failure = (TargetStatus.TIMED_OUT, exc.message)
            except errors.AgentError as exc:
                failure = (TargetStatus.FAILED, f"{exc.connect_code}: {exc.message}")
        if scope.cancelled_caught:
            failure = (TargetStatus.CANCELLED, "cancel not confirmed by the guest: call abandoned")
        if failure is not None:
            await self._finish_target(
                run, vm_id, failure[0], node_id=node.node_id, error=failure[1],
                stdout=run.text(vm_id, "stdout"), stderr=run.text(vm_id, "stderr"),
            )  # fmt: skip
            return
        assert result is not None
        await self._finish_target(
            run,
            vm_id,
            _target_status(result),
            node_id=node.node_id,
            exit_code=exit_code(result),
            exit_reason=exit_reason_name(result),
            signal=result.signal,
            stdout=run.text(vm_id, "stdout"),
            stderr=run.text(vm_id, "stderr"),
            stdout_truncated=result.stdout_truncated or (vm_id, "stdout") in run.output_cut,
            stderr_truncated=result.stderr_truncated or (vm_id, "stderr") in run.output_cut,
            error=result.error,
        )

    async def _execute_streamed(self, run: _Run, node: NodeInfo, vm_id: str) -> pb.ExecuteResponse:
        """ExecuteInGuestStream through the node's hostd: output kept in ``run`` (and seen by
        its watchers) as it comes; returns the result (its stdout/stderr are empty: streamed).

        Raises:
            errors.Unavailable: the node or the agent cannot be reached, or the stream broke
                off (outcome unknown).
            errors.DeadlineExceeded: the command's budget ran out.
            errors.AgentError: any other error hostd answered, code kept.
        """
        decoder = OutputDecoder()
        upstream = self.nodes.stream(
            node,
            "ExecuteInGuestStream",
            node_pb.ExecuteInGuestRequest(
                vm_id=vm_id, request=execute_request(run.template), execution_id=run.execution_id
            ),
            node_pb.ExecuteInGuestEvent,
            budget_s=command_budget_s(run.template.timeout_seconds),
        )
        try:
            async for event in upstream:
                kind = event.WhichOneof("event")
                if kind == "output":
                    run.add_output(vm_id, *decoder.decode(event.output))
                elif kind == "result":
                    for name in STREAM_NAMES.values():
                        run.add_output(vm_id, name, decoder.flush(name))
                    return event.result
        finally:
            await upstream.aclose()  # closing it is what cancels the command in the guest
        raise OutcomeUnknown("the node's stream ended without a result", reason="outcome_unknown")

    async def _end(self, run: _Run) -> None:
        """The run's final status, stored; the audit row completed with the counts."""
        command = await self.store.get_command(run.command_id)
        counts = {s: n for s, n in command.counts.items() if n}
        if run.cancel_requested or command.status in (CommandStatus.CANCELLING, CommandStatus.CANCELLED):
            status, outcome = CommandStatus.CANCELLED, AuditOutcome.CANCELLED
        elif set(counts) == {TargetStatus.SUCCESS}:
            status, outcome = CommandStatus.SUCCESS, AuditOutcome.SUCCESS
        else:
            status, outcome = CommandStatus.FAILED, AuditOutcome.ERROR
        if command.status not in (CommandStatus.CANCELLED, CommandStatus.SUCCESS, CommandStatus.FAILED):
            try:
                await self.store.finish_command(run.command_id, status)
            except errors.FailedPrecondition:  # a cancel ended it first
                status = (await self.store.get_command(run.command_id)).status
        summary = ", ".join(f"{n} {s.value}" for s, n in counts.items())
        log.info("fleet run %s ended %s: %s", run.command_id, status.value, summary)
        await self.audit.complete(run.audit_id, outcome, started=run.started, error=summary)

    # -- CancelCommand ----------------------------------------------------------------

    async def CancelCommand(
        self, request: fleet_pb.CancelCommandRequest, ctx: CallContext
    ) -> fleet_pb.CancelCommandResponse:
        """Cancel a run: pending targets at once, running ones in their guests.

        Raises:
            errors.InvalidArgument: no commandId.
            errors.PermissionDenied: role, or a target outside the token's label scope.
            errors.NotFound: no such run.
            errors.FailedPrecondition: the run already ended in success or failure.
        """
        check_message(request)
        principal = principal_of(ctx)
        if not request.command_id:
            raise errors.InvalidArgument("commandId is required")
        detail = AuditDetail.naming(request.command_id)
        try:
            require(principal, Permission.COMMAND_RUN)
            command = await self.store.get_command(request.command_id)
            if principal.scoped:
                visible = await self._visible(principal)
                if not any(t.vm_id in visible for t in command.targets):
                    raise errors.NotFound(f"no command {request.command_id!r}")
                outside = [t.vm_id for t in command.targets if t.vm_id not in visible]
                if outside:
                    # The row names the targets refused (the caller sees only that some are).
                    detail = AuditDetail(target=detail.target, vm_ids=tuple(outside), count=len(command.targets))
                    raise errors.PermissionDenied(
                        "the run has targets outside this token's label scope", reason="outside_label_scope"
                    )
        except errors.PermissionDenied as exc:
            await self.audit.denied(principal, source_of(ctx), AuditAction.FLEET_CANCEL, exc, detail=detail)
            raise
        async with self.audit.action(principal, source_of(ctx), AuditAction.FLEET_CANCEL, detail=detail):
            updated = await self.store.cancel_command(request.command_id)
            run = self._runs.get(request.command_id)
            if run is not None and not run.cancel_requested:
                run.cancel_requested = True
                self._spawn(self._cancel_in_flight, run)
            return fleet_pb.CancelCommandResponse(status=updated.status.value)

    async def _cancel_in_flight(self, run: _Run) -> None:
        """CancelExecution for every running target; abandon those that do not stop in time."""
        deadline = trio.current_time() + CANCEL_GRACE_S
        async with trio.open_nursery() as nursery:
            for vm_id, flight in list(run.in_flight.items()):
                flight.scope.deadline = min(flight.scope.deadline, deadline)
                nursery.start_soon(self._cancel_one, run, vm_id, flight)

    async def _cancel_one(self, run: _Run, vm_id: str, flight: _InFlight) -> None:
        try:
            await self.nodes.call(
                flight.node,
                "CancelExecution",
                node_pb.CancelExecutionRequest(vm_id=vm_id, execution_id=run.execution_id),
                node_pb.CancelExecutionResponse,
                budget_s=min(CANCEL_GRACE_S, DEFAULT_CALL_BUDGET_S),
            )
        except errors.AgentError as exc:
            log.warning("fleet run %s: cancelling on VM %s failed: %s", run.command_id, vm_id, exc)

    # -- GetCommand, ListCommands -------------------------------------------------------

    async def _visible(self, principal: Principal) -> set[str]:
        """The VMs a scoped token may see (by their current labels)."""
        return {vm.vm_id for _, vm in await self.store.list_vms(labels=principal.label_scope)}

    async def _readable_command(
        self, request: fleet_pb.GetCommandRequest | fleet_pb.WatchCommandRequest, ctx: CallContext
    ) -> tuple[Principal, Command, tuple[TargetResult, ...]]:
        """The caller, the run ``request`` names and its targets the caller may see.

        Raises:
            errors.InvalidArgument: no commandId.
            errors.PermissionDenied: the role may not read runs.
            errors.NotFound: no such run (or none of its targets is visible).
        """
        check_message(request)
        principal = principal_of(ctx)
        require(principal, Permission.COMMAND_READ)
        if not request.command_id:
            raise errors.InvalidArgument("commandId is required")
        command = await self.store.get_command(request.command_id)
        return principal, command, await self._visible_targets(principal, command)

    async def GetCommand(self, request: fleet_pb.GetCommandRequest, ctx: CallContext) -> fleet_pb.FleetCommand:
        """A run with its targets (a scoped token: only those within its scope).

        Raises:
            errors.InvalidArgument: no commandId.
            errors.PermissionDenied: the role may not read runs.
            errors.NotFound: no such run (or none of its targets is visible).
        """
        principal, command, targets = await self._readable_command(request, ctx)
        out = self._render(command)
        if principal.scoped:
            self._scope_counts(out, targets)
        for t in targets:
            out.targets.append(self._render_target(t))
        return out

    async def _visible_targets(self, principal: Principal, command: Command) -> tuple[TargetResult, ...]:
        """The run's targets the caller may see (a scoped token: those within its scope).

        Raises:
            errors.NotFound: a scoped token sees none of a run's targets.
        """
        if not principal.scoped:
            return command.targets
        visible = await self._visible(principal)
        targets = tuple(t for t in command.targets if t.vm_id in visible)
        if command.targets and not targets:
            raise errors.NotFound(f"no command {command.id!r}")
        return targets

    @staticmethod
    def _scope_counts(out: fleet_pb.FleetCommand, targets: tuple[TargetResult, ...]) -> None:
        """A scoped caller's counts: of the targets it sees."""
        counts = dict.fromkeys(TargetStatus, 0)
        for t in targets:
            counts[t.status] += 1
        out.counts.clear()
        out.counts.update({s.value: n for s, n in counts.items()})
        out.target_count = len(targets)

    @staticmethod
    def _render_target(t: TargetResult, *, output: bool = True) -> fleet_pb.FleetTarget:
        target = fleet_pb.FleetTarget(
            vm_id=t.vm_id,
            node_id=t.node_id or "",
            status=t.status.value,
            exit_code=t.exit_code,  # absent unless it exited
            exit_reason=t.exit_reason,
            signal=t.signal,
            stdout=t.stdout if output else "",
            stderr=t.stderr if output else "",
            stdout_truncated=t.stdout_truncated,
            stderr_truncated=t.stderr_truncated,
            error=t.error,
            duration_ms=t.duration_ms or 0,
        )
        for name, ts in (("started_at", t.started_at), ("completed_at", t.completed_at)):
            stamp = timestamp(ts)
            if stamp is not None:
                getattr(target, name).CopyFrom(stamp)
        return target

    async def WatchCommand(
        self, request: fleet_pb.WatchCommandRequest, ctx: CallContext
    ) -> AsyncIterator[fleet_pb.FleetCommandEvent]:
        """A run as it happens: its targets as they stand, then each change, then the ended run.

        Raises:
            errors.InvalidArgument: no commandId.
            errors.PermissionDenied: the role may not read runs.
            errors.NotFound: no such run (or none of its targets is visible).
        """
        principal, command, targets = await self._readable_command(request, ctx)
        run = self._runs.get(command.id)
        if run is None:
            # Ended, or run by another replica (or left to recovery): what the store has, polled.
            async for event in self._poll_stored(principal, command, targets):
                yield event
        else:
            visible = frozenset(t.vm_id for t in targets) if principal.scoped else None
            async for event in self._follow(run, visible):
                yield event
        command = await self.store.get_command(command.id)
        out = self._render(command)
        if principal.scoped:
            self._scope_counts(out, await self._visible_targets(principal, command))
        yield fleet_pb.FleetCommandEvent(command=out)

    async def _poll_stored(
        self, principal: Principal, command: Command, targets: tuple[TargetResult, ...]
    ) -> AsyncIterator[fleet_pb.FleetCommandEvent]:
        """A run this process does not run: its stored targets, again every WATCH_POLL_S while
        it has not ended (a target's output comes once it is final, when it is stored)."""
        sent: dict[str, TargetResult] = {}
        while True:
            for t in targets:
                if sent.get(t.vm_id) == t:
                    continue
                sent[t.vm_id] = t
                yield fleet_pb.FleetCommandEvent(target=self._render_target(t, output=False))
                if t.status in _FINAL_TARGET:
                    for name, text in (("stdout", t.stdout), ("stderr", t.stderr)):
                        if text:
                            yield fleet_pb.FleetCommandEvent(
                                output=fleet_pb.FleetTargetOutput(vm_id=t.vm_id, stream=name, text=text)
                            )
            if command.status in _FINAL_COMMAND:
                return
            await trio.sleep(WATCH_POLL_S)
            command = await self.store.get_command(command.id)
            targets = await self._visible_targets(principal, command)

    async def _follow(self, run: _Run, visible: frozenset[str] | None) -> AsyncIterator[fleet_pb.FleetCommandEvent]:
        """A running run's targets, then their changes, until it ends."""
        watcher = _Watcher(visible)
        # Registered before anything is sent (each yield waits for the client): output that
        # arrives meanwhile is then seen. Everything kept so far is new to this watcher.
        watcher.sent = dict.fromkeys(run.output, 0)
        watcher.statuses = len(run.statuses)
        snapshot = list(run.targets.items())
        run.watchers.add(watcher)
        try:
            for vm_id, t in snapshot:
                if visible is None or vm_id in visible:
                    target = (
                        fleet_pb.FleetTarget(vm_id=vm_id, status=TargetStatus.PENDING.value)
                        if t is None
                        else self._render_target(t, output=False)
                    )
                    yield fleet_pb.FleetCommandEvent(target=target)
            while True:
                changed = run.changed
                ended = run.ended
                # Statuses recorded before this pass are sent after its output: a target's
                # final status never comes before output it printed.
                statuses = len(run.statuses)
                sent_any = False
                for key, offset in list(watcher.sent.items()):
                    kept = run.output[key]
                    if offset < len(kept) and (visible is None or key[0] in visible):
                        text = kept[offset:].decode("utf-8", "surrogatepass")
                        watcher.sent[key] = len(kept)
                        sent_any = True
                        yield fleet_pb.FleetCommandEvent(
                            output=fleet_pb.FleetTargetOutput(vm_id=key[0], stream=key[1], text=text)
                        )
                while watcher.statuses < statuses:
                    vm_id = run.statuses[watcher.statuses]
                    watcher.statuses += 1
                    result = run.targets[vm_id]
                    if result is not None and (visible is None or vm_id in visible):
                        sent_any = True
                        yield fleet_pb.FleetCommandEvent(target=self._render_target(result, output=False))
                if sent_any or watcher.statuses < len(run.statuses):
                    continue
                if ended:
                    return
                await changed.wait()
        finally:
            run.watchers.discard(watcher)

    async def ListCommands(
        self, request: fleet_pb.ListCommandsRequest, ctx: CallContext
    ) -> fleet_pb.ListCommandsResponse:
        """Runs newest first; a label-scoped token lists its own user's runs only.

        Raises:
            errors.InvalidArgument: unknown status, page size above the maximum, bad page token.
            errors.PermissionDenied: the role may not read runs.
        """
        check_message(request)
        principal = principal_of(ctx)
        require(principal, Permission.COMMAND_READ)
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument(f"pageSize must be at most {MAX_PAGE_SIZE}")
        user = request.user or None
        if principal.scoped:
            if user not in (None, principal.user):
                raise errors.PermissionDenied("a label-scoped token lists its own runs only", reason="label_scope")
            user = principal.user
        page = await self.store.list_commands(
            user=user,
            status=_command_status(request.status) if request.status else None,
            limit=page_size,
            page_token=request.page_token,
        )
        return fleet_pb.ListCommandsResponse(
            commands=[self._render(c) for c in page.commands], next_page_token=page.next_page_token
        )

    @staticmethod
    def _render(command: Command) -> fleet_pb.FleetCommand:
        counts: Mapping[TargetStatus, int] = command.counts
        return fleet_pb.FleetCommand(
            command_id=command.id,
            status=command.status.value,
            user=command.user,
            token_id=command.token_id,
            created_at=timestamp(command.created_at),
            completed_at=timestamp(command.completed_at),
            command=command.spec.command,
            args=command.spec.args,
            timeout_seconds=command.spec.timeout_seconds,
            working_directory=command.spec.working_directory,
            run_as_user=command.spec.run_as_user,
            environment_keys=command.spec.env_keys,
            target_vm_ids=command.target_spec.vm_ids,
            target_labels=dict(command.target_spec.labels),
            max_concurrency=command.max_concurrency,
            max_errors=command.max_errors,
            target_count=command.target_count,
            counts={s.value: n for s, n in counts.items()},
        )
