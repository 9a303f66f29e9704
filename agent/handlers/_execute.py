"""Run commands in the guest: argv or shell script, output captured or streamed.

How a command runs (the request and response are ``ExecuteRequest`` and
``ExecuteResponse`` in ``protocol/agent.proto``):

* The child starts in a new session and is killed as a group, pidfd-safe
  (:class:`~.._procgroup.ProcessGroup`): one ``killpg`` reaches everything it
  started that did not leave the group on purpose (``setsid``).
* Three tasks run beside it: one feeds stdin and closes it, two drain stdout and
  stderr. A child that writes a lot, or never reads its input, therefore never
  blocks against us. Output beyond a stream's cap is read and discarded (but
  counted in ``*_bytes``).
* When the leader exits, the rest of its group is SIGKILLed at once, so a
  background grandchild holding the pipes (``sleep 1000 &``) neither hangs the
  call nor survives it. The pipes are then read to EOF, waiting at most
  :data:`PIPE_IDLE_AFTER_EXIT_S` for data from a process that escaped the group
  but kept them open. (To leave a daemon running, start it with ``setsid`` and
  its output redirected, or through ``systemd-run``.)
* Timeout and cancel (a ``CancelRequest`` naming this request): SIGTERM to the
  group, ``exec_kill_grace_s``, SIGKILL to the group, reap. Both answer with a
  normal ``ExecuteResponse`` (``TIMED_OUT`` / ``CANCELLED``).
* When the task itself is cancelled (the session closes, the agent stops) the
  same kill-and-reap runs in a shielded scope with its own deadlines, the way
  trio's ``run_process`` does it, and the cancellation then propagates.
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, final

import trio

from limiquantix.protocol import FRAME_HEADROOM_BYTES, errors
from limiquantix.protocol._gen import agent_pb2 as pb

from .._dispatch import AgentState, RequestContext, handler
from .._procgroup import ProcessGroup

if TYPE_CHECKING:
    from .._config import AgentConfig

__all__ = [
    "running_commands",
    "AGENT_ONLY_ENV",
    "ERROR_TEXT_MAX_BYTES",
    "PIPE_DRAIN_MAX_S",
    "PIPE_IDLE_AFTER_EXIT_S",
    "READ_BYTES",
    "ResolvedUser",
    "execute",
    "resolve_run_as",
]

log = logging.getLogger(__name__)

#: Bytes asked of a pipe per read: Linux's default pipe buffer, so one read
#: usually empties it, and a 100 MiB flood costs ~1600 reads.
READ_BYTES: Final = 64 * 1024
#: Longest error text in a response. An OS error names at most one path, and a
#: FAILED_TO_START response must fit the smallest allowed frame (1 KiB).
ERROR_TEXT_MAX_BYTES: Final = 400
#: Once the leader has exited and its group is dead, the pipes reach EOF at
#: once; only a process that left the group can keep them open. Wait this long
#: for more data from such a process before giving up on a pipe...
PIPE_IDLE_AFTER_EXIT_S: Final = 0.5
#: ...and this long in all, so one that writes forever cannot hold the call.
PIPE_DRAIN_MAX_S: Final = 5.0
#: Variables the service manager hands to the agent alone: a command that
#: inherited them could send sd_notify messages (STOPPING=1, watchdog pings) or
#: claim socket-activated fds in the agent's name.
AGENT_ONLY_ENV: Final = frozenset(
    {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"}
)


# -- who runs it --------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """The identity a command runs as (from ``RunAs``).

    ``switch`` is False when the agent already is that identity and is not
    root: the child then simply inherits it (an unprivileged process cannot
    call setgroups, even to set its own groups).
    """

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    switch: bool


def _lookup_user(run_as: pb.RunAs) -> pwd.struct_passwd:
    """The passwd entry ``run_as`` names (by name, numeric name, or uid).

    Raises:
        NotFound: no such user.
        InvalidArgument: both user and uid given and they disagree.
    """
    has_uid = run_as.HasField("uid")
    try:
        if run_as.user:
            try:
                entry = pwd.getpwnam(run_as.user)
            except KeyError:
                if not run_as.user.isdigit():
                    raise
                entry = pwd.getpwuid(int(run_as.user))
        else:
            entry = pwd.getpwuid(run_as.uid)
    except KeyError:
        who = f"user {run_as.user!r}" if run_as.user else f"uid {run_as.uid}"
        raise errors.NotFound(f"run_as: no such {who} in the guest", reason="unknown_user") from None
    if has_uid and entry.pw_uid != run_as.uid:
        raise errors.InvalidArgument(
            f"run_as: user {run_as.user!r} has uid {entry.pw_uid}, not {run_as.uid}", reason="invalid_run_as"
        )
    return entry


def resolve_run_as(run_as: pb.RunAs, *, euid: int, egid: int) -> ResolvedUser:
    """Resolve ``run_as`` against the guest's user database (may block: NSS).

    Args:
        run_as: the request's RunAs; user name (or digits) and/or uid, optional
            gid (default: the user's primary group) and groups (default: the
            user's supplementary groups).
        euid, egid: the agent's effective ids (only root may switch identity).

    Raises:
        InvalidArgument: neither user nor uid, a NUL in the name, or user and
            uid that disagree.
        NotFound: no such user.
        PermissionDenied: the agent is not root and a different identity was asked.
    """
    if not run_as.user and not run_as.HasField("uid"):
        raise errors.InvalidArgument("run_as needs a user name or a uid", reason="invalid_run_as")
    if "\0" in run_as.user:
        raise errors.InvalidArgument("run_as: user name contains NUL", reason="invalid_run_as")
    entry = _lookup_user(run_as)
    gid = run_as.gid if run_as.HasField("gid") else entry.pw_gid
    groups = tuple(run_as.groups) if run_as.groups else tuple(os.getgrouplist(entry.pw_name, gid))
    if euid == 0:
        return ResolvedUser(entry.pw_uid, gid, groups, entry.pw_name, entry.pw_dir, switch=True)
    if entry.pw_uid == euid and gid == egid and not run_as.groups:
        return ResolvedUser(entry.pw_uid, gid, groups, entry.pw_name, entry.pw_dir, switch=False)
    raise errors.PermissionDenied(
        f"run_as {entry.pw_name!r}: the agent runs as uid {euid}, not root, so it can only run commands as itself",
        reason="not_root",
    )


# -- the plan -----------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated request: everything needed to start and supervise the child."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    user: ResolvedUser | None
    stdin: bytes
    timeout_s: float
    stdout_limit: int
    stderr_limit: int
    stream: bool
    read_bytes: int

    def popen_options(self) -> dict[str, Any]:
        """Keyword arguments for ``open_process`` beyond the pipes (and its own session: ProcessGroup)."""
        options: dict[str, Any] = {"env": self.env, "cwd": self.cwd}
        if self.user is not None and self.user.switch:
            # extra_groups always: without it the child keeps root's groups.
            options.update(user=self.user.uid, group=self.user.gid, extra_groups=list(self.user.groups))
        return options


def _check_text(what: str, value: str) -> None:
    """Raises: InvalidArgument: ``value`` contains NUL (exec cannot pass it)."""
    if "\0" in value:
        raise errors.InvalidArgument(f"{what} contains a NUL character", reason="nul_character")


def _argv(config: AgentConfig, req: pb.ExecuteRequest) -> list[str]:
    """The argv to exec: the request's, or ``[shell, "-c", command]``.

    Raises:
        InvalidArgument: not exactly one of argv and command, empty argv[0],
            shell given with argv, or a NUL character.
    """
    if bool(req.argv) == bool(req.command):
        raise errors.InvalidArgument(
            "give exactly one of argv (run directly) and command (a shell script)", reason="argv_or_command"
        )
    if req.argv:
        if req.shell:
            raise errors.InvalidArgument("shell applies to the command form only", reason="shell_with_argv")
        if not req.argv[0]:
            raise errors.InvalidArgument("argv[0] is empty", reason="empty_program")
        argv = list(req.argv)
    else:
        argv = [req.shell or config.exec_shell, "-c", req.command]
    for i, arg in enumerate(argv):
        _check_text(f"argv[{i}]", arg)
    return argv


def _environment(req: pb.ExecuteRequest, user: ResolvedUser | None) -> dict[str, str]:
    """The child's environment (merge: the agent's, then the user's, then the request's).

    Raises:
        InvalidArgument: a variable name that is empty or holds '=' or NUL, or a value with NUL.
    """
    for key, value in req.env.items():
        if not key or "=" in key:
            raise errors.InvalidArgument(f"invalid environment variable name {key!r}", reason="invalid_env")
        _check_text(f"environment variable {key!r}", key + value)
    if req.env_mode == pb.ENV_MODE_REPLACE:
        return dict(req.env)
    env = {k: v for k, v in os.environ.items() if k not in AGENT_ONLY_ENV}
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    env.update(req.env)
    return env


def _fit_frame(stdout_limit: int, stderr_limit: int, budget: int) -> tuple[int, int]:
    """Shrink both caps in proportion so that together they fit ``budget``."""
    if stdout_limit + stderr_limit <= budget:
        return stdout_limit, stderr_limit
    out = budget * stdout_limit // (stdout_limit + stderr_limit)
    return out, budget - out


def _build_plan(config: AgentConfig, req: pb.ExecuteRequest, user: ResolvedUser | None) -> _Plan:
    """Validate ``req`` and apply the configured defaults and ceilings.

    Raises:
        InvalidArgument: see :func:`_argv` and :func:`_environment`; a relative
            or NUL-containing working directory.
    """
    argv = _argv(config, req)
    env = _environment(req, user)
    cwd = req.working_directory or None
    if cwd is not None:
        _check_text("working_directory", cwd)
        if not os.path.isabs(cwd):
            raise errors.InvalidArgument(f"working_directory {cwd!r} is not absolute", reason="relative_path")
    timeout_s = min(float(req.timeout_seconds or config.exec_default_timeout_s), config.exec_max_timeout_s)
    ceiling = config.exec_max_output_limit_bytes
    stdout_limit = min(req.stdout_limit_bytes or config.exec_output_limit_bytes, ceiling)
    stderr_limit = min(req.stderr_limit_bytes or config.exec_output_limit_bytes, ceiling)
    frame_room = config.max_frame_bytes - FRAME_HEADROOM_BYTES
    if req.stream:
        read_bytes = min(READ_BYTES, frame_room)  # each read becomes one frame
    else:
        stdout_limit, stderr_limit = _fit_frame(stdout_limit, stderr_limit, frame_room)
        read_bytes = READ_BYTES
    return _Plan(
        argv=argv,
        env=env,
        cwd=cwd,
        user=user,
        stdin=req.stdin,
        timeout_s=timeout_s,
        stdout_limit=stdout_limit,
        stderr_limit=stderr_limit,
        stream=req.stream,
        read_bytes=read_bytes,
    )


def _clip(text: str, max_bytes: int = ERROR_TEXT_MAX_BYTES) -> str:
    """``text`` cut to ``max_bytes`` of UTF-8 (an error must fit its frame)."""
    raw = text.encode("utf-8", "replace")
    return text if len(raw) <= max_bytes else raw[: max_bytes - 3].decode("utf-8", "ignore") + "..."


# -- running it ---------------------------------------------------------------


@final
class _Output:
    """One of the child's output pipes: drained to EOF, kept up to its cap."""

    def __init__(self, command: _Command, kind: pb.OutputStream, limit: int) -> None:
        self._command = command
        self.kind = kind
        self.limit = limit
        self.data = bytearray()  # non-stream mode only
        self.total = 0  #: bytes the child wrote, including what was cut
        self.kept = 0  #: bytes kept (or streamed)
        self.truncated = False
        #: Gave up with the pipe still open (a process that escaped the group).
        self.abandoned = False
        self.done = trio.Event()
        self._read_scope: trio.CancelScope | None = None

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        """Read until EOF, or until the post-exit deadline (see :data:`PIPE_IDLE_AFTER_EXIT_S`)."""
        try:
            while True:
                data: bytes | bytearray = b""
                with trio.CancelScope(deadline=self._command.read_deadline()) as scope:
                    self._read_scope = scope
                    data = await stream.receive_some(self._command.plan.read_bytes)
                self._read_scope = None
                if scope.cancelled_caught:
                    self.abandoned = True
                    return
                if not data:
                    return
                # trio types receive_some as bytes | bytearray; a pipe's FdStream reads bytes,
                # which bytes() returns as they are (no copy).
                await self._take(bytes(data))
        finally:
            self._read_scope = None
            self.done.set()

    def set_deadline(self, deadline: float) -> None:
        """Apply the post-exit deadline to a read already waiting."""
        if self._read_scope is not None:
            self._read_scope.deadline = deadline

    async def _take(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self.kept
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        if not data:
            return  # over the cap: keep draining so the child never blocks
        self.kept += len(data)
        if self._command.plan.stream:
            await self._command.emit(self.kind, data)
        else:
            self.data += data


@final
class _Command:
    """One execution: spawn, feed, drain, supervise, kill, reap, answer."""

    def __init__(self, ctx: RequestContext, plan: _Plan, wait_scope: trio.CancelScope) -> None:
        self.ctx = ctx
        self.plan = plan
        self.grace_s: float = ctx.agent.config.exec_kill_grace_s
        #: Waits for the leader; its deadline is the timeout and a CancelRequest cancels it.
        self.wait_scope = wait_scope
        self.stdout = _Output(self, pb.OUTPUT_STREAM_STDOUT, plan.stdout_limit)
        self.stderr = _Output(self, pb.OUTPUT_STREAM_STDERR, plan.stderr_limit)
        self.last_seq = 0
        #: Keeps seq order equal to queue order across the two pumps (trio.Lock is fair).
        self._send_lock = trio.Lock()
        self._link_gone = False
        self._group: ProcessGroup | None = None
        self._exited_at: float | None = None  # trio clock: post-exit pipe deadlines

    # -- output -----------------------------------------------------------

    def read_deadline(self) -> float:
        """Deadline for the next pipe read: none while the leader runs."""
        if self._exited_at is None:
            return math.inf
        return min(trio.current_time() + PIPE_IDLE_AFTER_EXIT_S, self._exited_at + PIPE_DRAIN_MAX_S)

    async def emit(self, kind: pb.OutputStream, data: bytes) -> None:
        """Send one ExecuteOutput chunk (streaming mode), numbered in queue order."""
        async with self._send_lock:
            if self.ctx.cancel_requested or self._link_gone:
                return  # nobody wants it: discard, keep draining
            seq = self.last_seq + 1
            try:
                await self.ctx.send(execute_output=pb.ExecuteOutput(seq=seq, stream=kind, data=data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._link_gone = True  # the session is ending; its cancellation follows
                return
            self.last_seq = seq

    async def _feed_stdin(self, stream: trio.abc.SendStream) -> None:
        try:
            if self.plan.stdin:
                await stream.send_all(self.plan.stdin)
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the child closed its stdin or exited without reading it all: its choice

    # -- the process --------------------------------------------------------

    @property
    def group(self) -> ProcessGroup:
        assert self._group is not None
        return self._group

    async def run(self) -> pb.ExecuteResponse:
        """Run the command to its end and describe it.

        Raises:
            trio.Cancelled: the task was cancelled; the group is dead and the
                leader reaped before it propagates.
        """
        started = time.monotonic()
        if self.ctx.cancel_requested:
            return pb.ExecuteResponse(exit_reason=pb.EXIT_REASON_CANCELLED)
        try:
            self._group = await ProcessGroup.start(
                self.plan.argv,
                what=f"execute {self.ctx.message_id}",
                # No stdin to give: /dev/null reads EOF just like a closed pipe,
                # without a pipe and a feeding task.
                stdin=subprocess.PIPE if self.plan.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                **self.plan.popen_options(),
            )
        except OSError as exc:
            # subprocess names the directory when chdir failed, the program otherwise.
            where = " (working_directory)" if self.plan.cwd is not None and exc.filename == self.plan.cwd else ""
            return pb.ExecuteResponse(
                exit_reason=pb.EXIT_REASON_FAILED_TO_START,
                error=_clip(f"{type(exc).__name__}: {exc}{where}"),
                duration_ms=int((time.monotonic() - started) * 1000),
            )
        group = self._group
        proc = group.proc
        log.debug("execute %s: pid %d", self.ctx.message_id, proc.pid)
        self.wait_scope.deadline = trio.current_time() + self.plan.timeout_s
        reason = pb.EXIT_REASON_UNSPECIFIED
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stdout is not None and proc.stderr is not None
                if proc.stdin is not None:
                    nursery.start_soon(self._feed_stdin, proc.stdin)
                nursery.start_soon(self.stdout.pump, proc.stdout)
                nursery.start_soon(self.stderr.pump, proc.stderr)
                with self.wait_scope:
                    await group.wait_leader()
                if group.leader_exited:
                    reason = pb.EXIT_REASON_EXITED  # or SIGNALED, decided by the status
                elif self.ctx.cancel_requested:
                    reason = pb.EXIT_REASON_CANCELLED
                else:
                    reason = pb.EXIT_REASON_TIMED_OUT
                await group.finish(grace_s=self.grace_s)
                self._exited_at = trio.current_time()
                for output in (self.stdout, self.stderr):
                    output.set_deadline(self.read_deadline())
                await self.stdout.done.wait()
                await self.stderr.done.wait()
                nursery.cancel_scope.cancel()  # stdin, if something still holds it open
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    await group.finish(grace_s=self.grace_s)
                await group.aclose()
        if self.stdout.abandoned or self.stderr.abandoned:
            log.warning(
                "execute %s: a process outside pid %d's group kept its output open", self.ctx.message_id, proc.pid
            )
        return self._response(reason, started)

    def _response(self, reason: pb.ExitReason, started: float) -> pb.ExecuteResponse:
        ended = self.group.ended_at if self.group.ended_at is not None else time.monotonic()
        resp = pb.ExecuteResponse(
            exit_reason=reason,
            pid=self.group.proc.pid,
            duration_ms=int((ended - started) * 1000),
            timed_out=reason == pb.EXIT_REASON_TIMED_OUT,
            stdout=bytes(self.stdout.data),
            stderr=bytes(self.stderr.data),
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
            stdout_bytes=self.stdout.total,
            stderr_bytes=self.stderr.total,
            last_seq=self.last_seq,
        )
        code = self.group.proc.returncode
        if code is not None and code < 0:
            resp.signal = -code
            if reason == pb.EXIT_REASON_EXITED:
                resp.exit_reason = pb.EXIT_REASON_SIGNALED
        elif code is not None and resp.exit_reason == pb.EXIT_REASON_EXITED:
            # Only a command that exited has an exit code: one that timed out or was
            # cancelled and then exited on SIGTERM keeps the field absent (HasField).
            resp.exit_code = code
        return resp


# -- the handler ----------------------------------------------------------------


@final
class _Commands:
    """The agent's commands running now (bounded by max_concurrent_commands)."""

    def __init__(self) -> None:
        self.running = 0


def running_commands(agent: AgentState) -> int:
    """How many commands ``agent`` runs now."""
    return agent.handler_state(_Commands).running


def _has_run_as(req: pb.ExecuteRequest) -> bool:
    """Whether ``run_as`` asks for anything (an empty message counts as absent)."""
    r = req.run_as
    return req.HasField("run_as") and bool(r.user or r.HasField("uid") or r.HasField("gid") or r.groups)


@handler("execute", "execute_response")
async def execute(ctx: RequestContext, req: pb.ExecuteRequest) -> pb.ExecuteResponse:
    """Run one command; see the module docstring for the whole behaviour.

    A failure to start (missing program or directory, exec permission) is an
    ``ExecuteResponse`` with ``EXIT_REASON_FAILED_TO_START`` and the OS error,
    not an error answer; so are timeout and cancellation.

    Raises:
        InvalidArgument: a malformed request (argv/command, env, cwd, run_as).
        NotFound: run_as names no user of the guest.
        PermissionDenied: run_as asks for another identity and the agent is not root.
        ResourceExhausted: ``max_concurrent_commands`` commands already run
            (reason ``too_many_commands``).
    """
    # Installed before the first checkpoint: from here on a CancelRequest is
    # answered by this handler (a CANCELLED result), not by cancelling the task.
    wait_scope = trio.CancelScope()
    ctx.on_cancel = wait_scope.cancel
    agent = ctx.agent
    config = agent.config
    user = None
    if _has_run_as(req):
        user = await trio.to_thread.run_sync(partial(resolve_run_as, req.run_as, euid=os.geteuid(), egid=os.getegid()))
    plan = _build_plan(config, req, user)
    commands = agent.handler_state(_Commands)
    if commands.running >= config.max_concurrent_commands:
        raise errors.ResourceExhausted(
            f"{commands.running} commands already running (max_concurrent_commands)",
            reason="too_many_commands",
        )
    commands.running += 1
    try:
        return await _Command(ctx, plan, wait_scope).run()
    finally:
        commands.running -= 1
