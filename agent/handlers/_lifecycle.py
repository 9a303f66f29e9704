"""Lifecycle: shutdown (poweroff, reboot, halt) and password reset.

Shutdown
    The agent answers first and acts afterwards: the handler validates the
    request, schedules the action in the agent's daemon-level nursery
    (:attr:`AgentState.background`, so it outlives the request and the session) and
    returns ``ShutdownResponse(accepted=true)``. The scheduled task waits until
    that answer is queued (:attr:`RequestContext.answered`), broadcasts a
    ``ShutdownStartedEvent`` to every connected host, sleeps out the delay and
    runs the configured command (``poweroff_command``, ``reboot_command`` or
    ``halt_command``) with ``{message}`` substituted. A failing command is
    logged; the host can ask again.

    Like ``shutdown(8)``, a new request replaces one that is still waiting out
    its delay (the last word wins, so a host can move or change a scheduled
    shutdown). Once the command has started, further requests are refused with
    ``failed_precondition`` (reason ``shutdown_in_progress``) until it ends.

Password reset
    ``password_command`` (``chpasswd`` by default) gets ``user:password\\n`` on
    stdin; with ``expire`` the ``password_expire_command`` then runs with
    ``{user}`` substituted. The password never appears in argv or in logs, and
    command output quoted in an error has every occurrence of it redacted.

Every command runs in its own session under a named time bound; when the bound
passes (or the caller is cancelled) its whole process group is killed and
reaped. The commands are configurable so that tests use harmless stand-ins.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, final

import trio

from limiquantix.protocol import errors, set_timestamp
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.limits import MAX_PASSWORD_BYTES

from .._dispatch import AgentState, RequestContext, handler
from .._procgroup import ProcessGroup

__all__ = [
    "ANSWER_WAIT_S",
    "MAX_PASSWORD_BYTES",
    "MAX_SHUTDOWN_DELAY_S",
    "MAX_SHUTDOWN_MESSAGE_CHARS",
    "MAX_USERNAME_CHARS",
    "PASSWORD_COMMAND_TIMEOUT_S",
    "POWER_COMMAND_TIMEOUT_S",
    "REDACTED",
    "ShutdownJob",
    "pending_shutdown",
    "power_argv",
    "redact",
    "reset_password",
    "shutdown",
]

log = logging.getLogger(__name__)

#: Longest delay a shutdown may ask for. Longer ones are almost certainly a unit
#: mistake (milliseconds sent as seconds); a host that plans that far ahead
#: should schedule on its own side.
MAX_SHUTDOWN_DELAY_S: Final = 24 * 3600
#: Longest shutdown message: it is shown on logged-in users' terminals.
MAX_SHUTDOWN_MESSAGE_CHARS: Final = 1024
#: How long a scheduled shutdown waits for its own answer to be queued before it
#: goes ahead anyway (the answer is queued within milliseconds unless the
#: session's write queue is full of a slow host's backlog).
ANSWER_WAIT_S: Final = 2.0
#: Bound on a power command. It normally returns at once (it asks init to go
#: down); it runs shielded from the agent's own stop, which that very command
#: triggers, so this bound is also the longest it can delay the agent's exit.
POWER_COMMAND_TIMEOUT_S: Final = 30.0
#: Bound on chpasswd and on the expire command (PAM modules may be slow, a
#: locked /etc/shadow is retried by shadow-utils for a few seconds).
PASSWORD_COMMAND_TIMEOUT_S: Final = 30.0
#: LOGIN_NAME_MAX on Linux, terminating NUL excluded.
MAX_USERNAME_CHARS: Final = 255
#: stderr kept from a command for its error message (the rest is drained, unread).
STDERR_CAPTURE_BYTES: Final = 4096
#: Characters of a command's stderr quoted in an error message or a log line.
ERROR_DETAIL_CHARS: Final = 512
#: What a secret is replaced with in command output.
REDACTED: Final = "***"

_MODE_NAMES: Final[dict[int, str]] = {
    pb.SHUTDOWN_MODE_POWEROFF: "poweroff",
    pb.SHUTDOWN_MODE_REBOOT: "reboot",
    pb.SHUTDOWN_MODE_HALT: "halt",
}
#: Portable user names (POSIX portable filename characters, optional trailing
#: '$' of Samba machine accounts). The first character may not be '-', so a
#: name substituted into argv can never be taken for an option.
_USERNAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
#: Control characters a shutdown message may not carry (tab and newline may):
#: they would reach users' terminals as escape sequences.
_MESSAGE_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# -- per-agent state -----------------------------------------------------------


@final
@dataclass(eq=False)
class ShutdownJob:
    """A shutdown accepted by the agent and not yet finished."""

    mode: int  #: pb.ShutdownMode
    mode_name: str  #: "poweroff", "reboot" or "halt"
    argv: tuple[str, ...]
    message: str
    scheduled_at: float  #: wall-clock time (time.time()) the command is due
    deadline: float  #: the same moment on trio's clock
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: The delay has passed and the command runs: the job can no longer be replaced.
    running: bool = False


@final
class _LifecycleState:
    """What one agent remembers between lifecycle requests."""

    def __init__(self) -> None:
        self.shutdown: ShutdownJob | None = None
        #: chpasswd and passwd lock /etc/shadow themselves and fail when it is
        #: busy: serialize our own resets rather than fail one of two.
        self.password_lock = trio.Lock()


def pending_shutdown(agent: AgentState) -> ShutdownJob | None:
    """The shutdown ``agent`` has accepted and not finished, if any."""
    return agent.handler_state(_LifecycleState).shutdown


# -- running commands ----------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class _Completed:
    returncode: int
    stderr: bytes  #: at most STDERR_CAPTURE_BYTES
    stderr_truncated: bool


async def _run_command(argv: Sequence[str], *, stdin: bytes = b"") -> _Completed:
    """Run ``argv`` to completion in its own process group, feeding it ``stdin``.

    stdout is discarded; stderr is kept up to :data:`STDERR_CAPTURE_BYTES` (and
    drained beyond, so a chatty command never blocks).

    Error handling:
        The caller bounds the time (``trio.fail_after``). On timeout or
        cancellation the command's whole process group is killed with SIGKILL
        and reaped, in a shielded scope, before the exception propagates.

    Raises:
        OSError: the command could not be started (not found, not executable).
    """
    group = await ProcessGroup.start(
        argv, what=argv[0], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    proc = group.proc
    captured = bytearray()
    truncated = False

    async def feed(stream: trio.abc.SendStream) -> None:
        try:
            if stdin:
                await stream.send_all(stdin)
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it exited without reading everything; its exit status tells

    async def drain(stream: trio.abc.ReceiveStream) -> None:
        nonlocal truncated
        async for chunk in stream:
            room = STDERR_CAPTURE_BYTES - len(captured)
            if len(chunk) > room:
                truncated = True
            captured.extend(chunk[: max(room, 0)])

    assert proc.stdin is not None and proc.stderr is not None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, proc.stdin)
            nursery.start_soon(drain, proc.stderr)
            await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                await group.finish(grace_s=None)
            await group.aclose()
    assert proc.returncode is not None
    return _Completed(proc.returncode, bytes(captured), truncated)


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def redact(data: bytes, secret: bytes, *, truncated: bool = False) -> bytes:
    """``data`` with every occurrence of ``secret`` replaced by :data:`REDACTED`.

    Args:
        data: command output.
        secret: what must not appear in it (empty: nothing to redact).
        truncated: ``data`` was cut short, so it may end with the beginning of
            ``secret``; such a tail is redacted as well.
    """
    if not secret:
        return data
    mark = REDACTED.encode()
    data = data.replace(secret, mark)
    if truncated:
        for n in range(min(len(secret) - 1, len(data)), 0, -1):
            if data.endswith(secret[:n]):
                return data[:-n] + mark
    return data


def _detail(result: _Completed, secret: bytes = b"") -> str:
    """A command's stderr, secret redacted, shortened for an error message."""
    text = redact(result.stderr, secret, truncated=result.stderr_truncated)
    detail = " ".join(text.decode("utf-8", errors="replace").split())
    if len(detail) > ERROR_DETAIL_CHARS:
        detail = detail[: ERROR_DETAIL_CHARS - 1] + "…"
    return detail


async def _run_checked(what: str, argv: Sequence[str], *, stdin: bytes = b"", secret: bytes = b"") -> None:
    """Run a password command within :data:`PASSWORD_COMMAND_TIMEOUT_S`.

    Args:
        what: the configuration key naming the command, for messages.
        argv: the command.
        stdin: its input.
        secret: redacted from any output quoted in the error.

    Raises:
        DeadlineExceeded: it did not finish in time (its process group was killed).
        FailedPrecondition: it could not be started, or exited unsuccessfully.
    """
    try:
        with trio.fail_after(PASSWORD_COMMAND_TIMEOUT_S):
            result = await _run_command(argv, stdin=stdin)
    except trio.TooSlowError as exc:
        raise errors.DeadlineExceeded(
            f"{what} did not finish within {PASSWORD_COMMAND_TIMEOUT_S:g} s and was killed", reason="command_timeout"
        ) from exc
    except OSError as exc:
        raise errors.FailedPrecondition(
            f"cannot run {what} ({argv[0]}): {exc.strerror or type(exc).__name__}", reason="command_failed_to_start"
        ) from exc
    if result.returncode != 0:
        detail = _detail(result, secret)
        raise errors.FailedPrecondition(
            f"{what} failed ({_describe_status(result.returncode)})" + (f": {detail}" if detail else ""),
            reason="command_failed",
        )


# -- shutdown ------------------------------------------------------------------


def power_argv(template: Sequence[str], message: str) -> tuple[str, ...]:
    """The argv of a power command: ``{message}`` replaced by ``message``.

    An element that is exactly ``{message}`` is dropped when the message is
    empty, so the command never gets an empty argument (``shutdown`` would take
    it for an empty wall message).
    """
    return tuple(arg.replace("{message}", message) for arg in template if message or arg != "{message}")


def _check_message(message: str) -> None:
    if len(message) > MAX_SHUTDOWN_MESSAGE_CHARS:
        raise errors.InvalidArgument(
            f"message is longer than {MAX_SHUTDOWN_MESSAGE_CHARS} characters", reason="invalid_message"
        )
    if _MESSAGE_FORBIDDEN_RE.search(message):
        raise errors.InvalidArgument("message must not contain control characters", reason="invalid_message")
    if message.startswith("-"):
        # It is one argv element of the power command; shutdown(8) would parse
        # "-c" or "-r" there as an option.
        raise errors.InvalidArgument("message must not start with '-'", reason="invalid_message")


@handler("shutdown", "shutdown_response")
async def shutdown(ctx: RequestContext, req: pb.ShutdownRequest) -> pb.ShutdownResponse:
    """Accept a poweroff, reboot or halt; it runs after the answer and the delay.

    Raises:
        InvalidArgument: unknown mode, delay over :data:`MAX_SHUTDOWN_DELAY_S`,
            or an unusable message.
        FailedPrecondition: the mode's command is not configured
            (``not_configured``), or a shutdown command is already running
            (``shutdown_in_progress``).
        Unavailable: the agent is stopping.
    """
    mode_name = _MODE_NAMES.get(req.mode)
    if mode_name is None:
        raise errors.InvalidArgument(f"unknown shutdown mode {req.mode}", reason="invalid_mode")
    if req.delay_seconds > MAX_SHUTDOWN_DELAY_S:
        raise errors.InvalidArgument(f"delay_seconds may be at most {MAX_SHUTDOWN_DELAY_S}", reason="invalid_delay")
    _check_message(req.message)
    template: tuple[str, ...] = getattr(ctx.config, f"{mode_name}_command")
    if not template:
        raise errors.FailedPrecondition(f"{mode_name}_command is not configured", reason="not_configured")
    agent = ctx.agent
    background = agent.background
    if background is None or agent.stopping:
        raise errors.Unavailable("the agent is stopping", reason="stopping")

    state = agent.handler_state(_LifecycleState)
    previous = state.shutdown
    if previous is not None:
        if previous.running:
            raise errors.FailedPrecondition(
                f"a {previous.mode_name} is already in progress", reason="shutdown_in_progress"
            )
        previous.cancel_scope.cancel()
        log.info("the pending %s is replaced by a %s", previous.mode_name, mode_name)

    delay = req.delay_seconds
    job = ShutdownJob(
        mode=req.mode,
        mode_name=mode_name,
        argv=power_argv(template, req.message),
        message=req.message,
        scheduled_at=time.time() + delay,
        deadline=trio.current_time() + delay,
    )
    state.shutdown = job
    background.start_soon(_carry_out, agent, job, ctx.answered, name=f"shutdown:{mode_name}:{ctx.message_id}")
    log.info("%s accepted, due in %d s (message %r)", mode_name, delay, req.message)
    response = pb.ShutdownResponse(accepted=True)
    set_timestamp(response.scheduled_at, job.scheduled_at)
    return response


async def _carry_out(agent: AgentState, job: ShutdownJob, answered: trio.Event) -> None:
    """Announce ``job``, wait out its delay, run its command (in Agent.background)."""
    state = agent.handler_state(_LifecycleState)
    try:
        with job.cancel_scope:  # cancelled when a later request replaces the job
            # The answer goes first: the command may take the link down with it.
            with trio.move_on_after(ANSWER_WAIT_S):
                await answered.wait()
            event = pb.ShutdownStartedEvent(mode=job.mode, message=job.message)  # type: ignore[arg-type]
            set_timestamp(event.scheduled_at, job.scheduled_at)
            agent.broadcast(shutdown_started=event)
            await trio.sleep_until(job.deadline)
            job.running = True
        if job.running:
            await _run_power_command(job)
    except trio.Cancelled:
        if not job.running:
            log.warning("the pending %s is abandoned: the agent is stopping", job.mode_name)
        raise
    finally:
        if state.shutdown is job:
            state.shutdown = None


async def _run_power_command(job: ShutdownJob) -> None:
    """Run the job's command; failures are logged (the answer is long gone)."""
    log.warning("%s: running %s", job.mode_name, " ".join(job.argv))
    # Shielded: the command's first effect is usually to stop this agent, and
    # killing it half-way could abort the very shutdown that was asked for.
    with trio.CancelScope(shield=True):
        try:
            with trio.fail_after(POWER_COMMAND_TIMEOUT_S):
                result = await _run_command(job.argv)
        except trio.TooSlowError:
            log.error("%s command did not finish within %g s and was killed", job.mode_name, POWER_COMMAND_TIMEOUT_S)
            return
        except OSError as exc:
            log.error("cannot run the %s command %s: %s", job.mode_name, job.argv[0], exc.strerror or exc)
            return
    if result.returncode == 0:
        log.info("%s command finished", job.mode_name)
    else:
        detail = _detail(result)
        log.error(
            "%s command failed (%s)%s",
            job.mode_name,
            _describe_status(result.returncode),
            f": {detail}" if detail else "",
        )


# -- password reset ------------------------------------------------------------


def _check_username(username: str) -> None:
    # The name is not echoed back: a caller who swapped the fields would
    # otherwise get their password quoted in the error.
    if not username:
        raise errors.InvalidArgument("username is empty", reason="invalid_username")
    if len(username) > MAX_USERNAME_CHARS:
        raise errors.InvalidArgument(
            f"username is longer than {MAX_USERNAME_CHARS} characters", reason="invalid_username"
        )
    if not _USERNAME_RE.fullmatch(username) or username.isdigit():
        raise errors.InvalidArgument(
            "username must be letters, digits, '_', '.' or '-' (not first), optionally ending in '$',"
            " and not all digits",
            reason="invalid_username",
        )


def _check_password(password: str) -> bytes:
    if not password:
        raise errors.InvalidArgument("password is empty", reason="invalid_password")
    if any(c in password for c in "\n\r\0"):
        raise errors.InvalidArgument("password must not contain line breaks or NUL", reason="invalid_password")
    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise errors.InvalidArgument(f"password is longer than {MAX_PASSWORD_BYTES} bytes", reason="invalid_password")
    return encoded


@handler("reset_password", "reset_password_response")
async def reset_password(ctx: RequestContext, req: pb.ResetPasswordRequest) -> pb.ResetPasswordResponse:
    """Set a user's password through ``password_command`` (chpasswd protocol).

    Raises:
        InvalidArgument: unusable username or password.
        FailedPrecondition: a command is not configured (``not_configured``),
            cannot start (``command_failed_to_start``) or fails
            (``command_failed``; its stderr quoted with the password redacted).
        DeadlineExceeded: a command ran longer than
            :data:`PASSWORD_COMMAND_TIMEOUT_S` and was killed.
    """
    user = req.username
    _check_username(user)
    secret = _check_password(req.password)
    config = ctx.config
    if not config.password_command:
        raise errors.FailedPrecondition("password_command is not configured", reason="not_configured")
    # Checked before anything changes, so that a request fails as a whole.
    if req.expire and not config.password_expire_command:
        raise errors.FailedPrecondition("password_expire_command is not configured", reason="not_configured")

    async with ctx.agent.handler_state(_LifecycleState).password_lock:
        try:
            await _run_checked(
                "password_command", config.password_command, stdin=user.encode() + b":" + secret + b"\n", secret=secret
            )
        except errors.AgentError as exc:
            log.warning("password reset for %s failed: %s", user, exc.message)
            raise
        log.info("password of %s reset", user)
        if req.expire:
            argv = [arg.replace("{user}", user) for arg in config.password_expire_command]
            try:
                await _run_checked("password_expire_command", argv, secret=secret)
            except errors.AgentError as exc:
                log.warning("password of %s was reset, but expiring it failed: %s", user, exc.message)
                raise type(exc)(
                    f"the password of {user} was changed, but expiring it failed: {exc.message}", reason=exc.reason
                ) from exc
            log.info("password of %s expired: to be changed at next login", user)
    return pb.ResetPasswordResponse(expired=req.expire)
