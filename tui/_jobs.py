"""Runs started from the TUI, as jobs: they belong to the app, not to the screen that started them.

A job runs in an app worker and writes its output into its own
:class:`~.widgets.output.OutputBuffer` (one per VM for a fleet run), so the operator can leave
the runner, look at other VMs, and come back (``j``: the jobs list) to a run still going, or
finished, with all its output. One VM: ``ExecuteScriptStream``. Several: ``RunCommand``, then
``WatchCommand`` (each VM's output live as it comes; a controller without it: ``GetCommand``
polled, each VM's output when it ends).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Final

from limiquantix.protocol import command_budget_s
from limiquantix.protocol._gen import fleet_pb2 as fleet_pb
from limiquantix.protocol._gen import vm_service_pb2 as vm_pb

from ._client import ApiError
from ._format import exit_summary
from ._workers import run_async
from .state import RunRecord
from .widgets.output import OutputBuffer

if TYPE_CHECKING:
    from textual.worker import Worker

    from ._app import LimiQuantixApp

__all__ = ["FLEET_POLL_S", "JOBS_KEPT", "STATE_STYLES", "Job", "JobList", "cancel_job", "mark_truncated", "start_job"]

#: Seconds between GetCommand polls of a fleet run (a controller without WatchCommand).
FLEET_POLL_S: Final = 1.0
#: Finished jobs kept (the oldest go first); running ones always stay.
JOBS_KEPT: Final = 20
#: Characters of output all finished jobs keep together (beyond, the oldest finished go first):
#: a job's own output is bounded (MAX_OUTPUT_CHARS), twenty of them need not all be kept.
JOBS_KEPT_CHARS: Final = 64 * 1024 * 1024
#: Times a broken WatchCommand stream is opened again before the job gives up.
WATCH_RETRIES: Final = 3
#: Targets a fleet run starts at once when the request names none (the controller's default):
#: how many timeouts in a row the watch may have to wait through.
_DEFAULT_CONCURRENCY: Final = 50
#: Job states and fleet target statuses → their style.
STATE_STYLES: Final = {
    "success": "green",
    "failed": "red",
    "timed_out": "red",
    "error": "red",
    "undeliverable": "magenta",
    "cancelled": "yellow",
    "skipped": "dim",
    "in_progress": "cyan",
    "running": "cyan",
    "pending": "dim",
}
_FINAL_TARGET: Final = frozenset({"success", "failed", "timed_out", "cancelled", "undeliverable", "skipped"})


@dataclass(eq=False)
class Job:
    """One run: its request, its state, its output."""

    id: int
    vm_ids: tuple[str, ...]
    script: str
    timeout_s: int
    run_as: str
    started: float = field(default_factory=time.time)
    ended: float | None = None
    state: str = "running"
    """``running``, then ``success``, ``failed``, ``timed_out``, ``cancelled`` or ``error``
    (the API refused or failed: nothing or not everything ran)."""
    summary: str = "running…"
    """How it ended, one line (``exit code 0``, ``timed out after 5.0 s``, a fleet's counts)."""
    result: vm_pb.ExecuteScriptResponse | fleet_pb.FleetCommand | None = None
    """The ExecuteScriptResponse (one VM) or the ended FleetCommand."""
    execution_id: str = ""
    command_id: str = ""
    output: OutputBuffer = field(default_factory=OutputBuffer)
    """One VM's output (a fleet run: see :meth:`buffer_for`)."""
    outputs: dict[str, OutputBuffer] = field(default_factory=dict)
    targets: dict[str, fleet_pb.FleetTarget] = field(default_factory=dict)
    """A fleet run's targets as last heard of (without their output)."""
    listeners: list[Callable[[Job], None]] = field(default_factory=list)
    """Called after each change of state (screens showing the job)."""
    worker: Worker[None] | None = None

    @property
    def fleet(self) -> bool:
        return len(self.vm_ids) > 1

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def first_line(self) -> str:
        return (self.script.strip().splitlines() or [""])[0][:60]

    @property
    def duration_s(self) -> float:
        return (self.ended or time.time()) - self.started

    def buffer_for(self, vm_id: str) -> OutputBuffer:
        """The output of ``vm_id`` (one VM: the job's only buffer)."""
        if not self.fleet:
            return self.output
        buffer = self.outputs.get(vm_id)
        if buffer is None:
            buffer = self.outputs[vm_id] = OutputBuffer()
        return buffer

    @property
    def chars(self) -> int:
        return self.output.store.chars + sum(b.store.chars for b in self.outputs.values())

    def changed(self) -> None:
        for listener in list(self.listeners):
            listener(self)

    def finish(self, state: str, summary: str) -> None:
        self.state, self.summary, self.ended = state, summary, time.time()
        self.changed()


class JobList:
    """The app's jobs, newest last; finished ones beyond JOBS_KEPT (or JOBS_KEPT_CHARS of
    output) are forgotten, oldest first."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.listeners: list[Callable[[], None]] = []
        self._next_id = 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def new(self, vm_ids: list[str], script: str, timeout_s: int, run_as: str) -> Job:
        job = Job(self._next_id, tuple(vm_ids), script, timeout_s, run_as)
        self._next_id += 1
        self.jobs.append(job)
        job.listeners.append(lambda _job: self._changed())
        self._trim()
        self._changed()
        return job

    @property
    def running(self) -> list[Job]:
        return [job for job in self.jobs if job.running]

    def _trim(self) -> None:
        finished = [job for job in self.jobs if not job.running]
        kept_chars = sum(job.chars for job in finished)
        for job in finished:
            if len(finished) <= JOBS_KEPT and kept_chars <= JOBS_KEPT_CHARS:
                break
            self.jobs.remove(job)
            finished = finished[1:]
            kept_chars -= job.chars

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()


def start_job(app: LimiQuantixApp, vm_ids: list[str], script: str, *, timeout_s: int, run_as: str) -> Job:
    """A new job, running in an app worker (it outlives the screen that started it)."""
    job = app.jobs.new(vm_ids, script, timeout_s, run_as)
    # The function, not a coroutine object: a worker cancelled before it starts (the app quitting)
    # would leave the coroutine never awaited.
    runner = partial(_run_fleet if job.fleet else _run_script, app, job)
    job.worker = run_async(app, runner, group="jobs", name=f"job {job.id}")
    return job


async def cancel_job(app: LimiQuantixApp, job: Job) -> None:
    """Cancel ``job`` in the guest(s): CancelCommand / CancelExecution; before the controller
    gave an id, the stream is closed (which cancels the command in the guest)."""
    if not job.running:
        app.notify("It has already ended.", timeout=2)
        return
    try:
        if job.fleet and job.command_id:
            await app.client.cancel_command(job.command_id)
            app.notify("Fleet run cancelled.", timeout=3)
        elif job.execution_id:
            found = await app.client.cancel_execution(job.vm_ids[0], job.execution_id)
            app.notify("Cancelled." if found else "It had already ended.", timeout=3)
        elif job.worker is not None:
            job.worker.cancel()
    except ApiError as exc:
        app.report(exc, "Cancel")
        if job.worker is not None and not job.fleet:
            job.worker.cancel()  # closing the stream cancels the command in the guest


# -- one VM ---------------------------------------------------------------------------


def _state_of(result: vm_pb.ExecuteScriptResponse) -> str:
    """A command's result as a job state (the fleet target statuses' names)."""
    reason = result.exit_reason or ("timed_out" if result.timed_out else "exited")
    if reason == "exited":
        return "success" if result.HasField("exit_code") and result.exit_code == 0 else "failed"
    return reason if reason in ("timed_out", "cancelled") else "failed"


def mark_truncated(
    buffer: OutputBuffer, result: vm_pb.ExecuteScriptResponse | fleet_pb.FleetTarget, limit: str
) -> None:
    """Say in the output where a cap cut it (it was silently shorter)."""
    cut = [name for name, was in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)) if was]
    if cut:
        buffer.note(f"── {' and '.join(cut)} cut here: more than {limit}; the rest was not kept", "warning")


async def _run_script(app: LimiQuantixApp, job: Job) -> None:
    vm_id = job.vm_ids[0]
    record = RunRecord(script=job.script, started=job.started, timeout_s=job.timeout_s, run_as=job.run_as)
    result: vm_pb.ExecuteScriptResponse | None = None
    state, summary = "error", "the stream ended without a result"
    try:
        async for event in app.client.execute_stream(vm_id, job.script, timeout_s=job.timeout_s, run_as=job.run_as):
            kind = event.WhichOneof("event")
            if kind == "execution_id":
                job.execution_id = event.execution_id
                job.changed()
            elif kind == "output":
                job.output.write(event.output.text, event.output.stream or "stdout")
            elif kind == "result":
                result = event.result
    except ApiError as exc:
        record.reason = exc.code
        state, summary = "error", f"failed: {exc.summary}"
        app.report(exc, "Run")
    except asyncio.CancelledError:
        record.reason = "cancelled"
        state, summary = "cancelled", "cancelled (the stream was closed)"
        raise
    else:
        if result is not None:
            record.exit_code = result.exit_code if result.HasField("exit_code") else None  # only if it exited
            record.reason = result.exit_reason or ("timed_out" if result.timed_out else "exited")
            record.duration_ms = result.duration_ms
            job.result = result
            state, summary = _state_of(result), exit_summary(result)
    finally:
        job.output.end_output()
        if result is not None:
            mark_truncated(job.output, result, "the guest's 1 MiB cap")
        job.execution_id = ""
        app.fleet.record_run(vm_id, record)  # before the screens hear of the end: they list it
        job.finish(state, summary)


# -- a fleet run ------------------------------------------------------------------------


def _target_changed(job: Job, target: fleet_pb.FleetTarget) -> None:
    """A target's new state; once final, its output ends with how it ended."""
    vm_id = target.vm_id
    if vm_id not in job.vm_ids:
        return
    before = job.targets[vm_id].status if vm_id in job.targets else ""
    job.targets[vm_id] = target
    status = target.status or "pending"
    if status in _FINAL_TARGET and before not in _FINAL_TARGET:
        buffer = job.buffer_for(vm_id)
        buffer.end_output()
        mark_truncated(buffer, target, "64 KiB per VM kept by the controller")
        if target.error:
            buffer.note(target.error, "error")
        duration = f", {target.duration_ms} ms" if target.duration_ms else ""
        # How it ended when its agent said (exit code, or the reason and signal), else its status.
        ended = exit_summary(target) if target.HasField("exit_code") or target.exit_reason else status
        buffer.note(f"── {vm_id}: {ended}{duration}", "heading")
    job.changed()


def _command_ended(job: Job, command: fleet_pb.FleetCommand) -> None:
    summary = "  ".join(f"{k} {v}" for k, v in sorted(command.counts.items()) if v)
    job.result = command
    status = command.status or "failed"
    job.finish(status if status in ("success", "failed", "cancelled") else "failed", summary or status)


async def _run_fleet(app: LimiQuantixApp, job: Job) -> None:
    client = app.client
    try:
        job.command_id = await client.run_command(
            list(job.vm_ids), job.script, timeout_s=job.timeout_s, run_as=job.run_as
        )
        job.changed()
        for attempt in range(WATCH_RETRIES + 1):
            try:
                await _watch(app, job)
                return
            except ApiError as exc:
                if exc.code == "unimplemented":
                    await _poll(app, job)  # an older controller
                    return
                if exc.code not in ("unavailable", "deadline_exceeded") or attempt == WATCH_RETRIES:
                    raise
                await asyncio.sleep(FLEET_POLL_S)  # the stream broke: opened again, from the start
    except ApiError as exc:
        for vm_id in job.vm_ids:
            job.buffer_for(vm_id).end_output()
        job.finish("error", f"failed: {exc.summary}")
        app.report(exc, "Fleet run")


async def _watch(app: LimiQuantixApp, job: Job) -> None:
    """WatchCommand until the run ends. The stream starts with everything so far, so the
    buffers start afresh (a stream opened again repeats what the first one gave).

    Raises:
        ApiError: the stream failed (``unimplemented``: the controller has no WatchCommand).
    """
    waves = math.ceil(len(job.vm_ids) / _DEFAULT_CONCURRENCY)
    budget = command_budget_s(job.timeout_s) * waves + 60.0
    fresh = True
    async for event in app.client.watch_command(job.command_id, budget_s=budget):
        if fresh:
            fresh = False
            job.targets.clear()
            for buffer in job.outputs.values():
                buffer.clear()
        kind = event.WhichOneof("event")
        if kind == "output":
            if event.output.vm_id in job.vm_ids:
                job.buffer_for(event.output.vm_id).write(event.output.text, event.output.stream or "stdout")
        elif kind == "target":
            _target_changed(job, event.target)
        elif kind == "command":
            _command_ended(job, event.command)
            return
    raise ApiError("unavailable", "the controller's stream ended before the run did")


async def _poll(app: LimiQuantixApp, job: Job) -> None:
    """GetCommand every FLEET_POLL_S until the run ends; each VM's output once it has ended."""
    while True:
        command = await app.client.get_command(job.command_id)
        for target in command.targets:
            vm_id = target.vm_id
            was_final = vm_id in job.targets and job.targets[vm_id].status in _FINAL_TARGET
            if target.status in _FINAL_TARGET and not was_final and vm_id in job.vm_ids:
                buffer = job.buffer_for(vm_id)
                for stream, text in (("stdout", target.stdout), ("stderr", target.stderr)):
                    if text:
                        buffer.write(text, stream)
                        buffer.end_output()
            bare = fleet_pb.FleetTarget()
            bare.CopyFrom(target)
            bare.ClearField("stdout")
            bare.ClearField("stderr")
            _target_changed(job, bare)
        if command.status not in ("pending", "in_progress", "cancelling"):
            _command_ended(job, command)
            return
        await asyncio.sleep(FLEET_POLL_S)
