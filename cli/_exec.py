"""``exec`` and ``sh``: one command in one VM, its output streamed live, its exit code ours.

This module and what it imports are the path whose start-up ``bench/cli_bench.py``
measures against curl: no click, no rich, no protobuf, no httpx (see :mod:`._fast`).
"""

from __future__ import annotations

import sys

from limiquantix.protocol import command_budget_s, describe_exit

from . import _exitcodes as ec
from ._client import VM, Client, given
from ._output import GuestWriter, warn

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = ["exec_body", "exec_command", "exit_status", "run_exec", "shell_quote"]

#: What a word may hold and need no quotes in a POSIX shell (shlex.quote's set: ``\w``
#: in ASCII, and ``@%+=:,./-``).
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """``shlex.quote(word)``: the word as a POSIX shell reads it back. Not shlex's own: its
    module imports ``re``, which ``exec PROG``'s start-up does not otherwise pay for."""
    if word and _SHELL_SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def exec_body(
    vm: str,
    command: str,
    args: Sequence[str],
    *,
    timeout_s: int,
    user: str = "",
    cwd: str = "",
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An ExecuteScriptRequest in proto3 JSON: ``command`` + ``args`` is an argv, ``command``
    alone a shell script."""
    return {
        "vmId": vm,
        "command": command,
        **given(
            args=list(args),
            timeoutSeconds=timeout_s,
            runAsUser=user,
            workingDirectory=cwd,
            environment=dict(env or {}),
        ),
    }


def ending(result: Mapping[str, Any]) -> str:
    """How a command ended, in words (:func:`~limiquantix.protocol.describe_exit`), from
    its result's JSON: an ExecuteScriptResponse or a fleet run's target, which carry the same
    exitCode, exitReason and signal; empty when it does not say (a target never run)."""
    reason = str(result.get("exitReason") or ("timed_out" if result.get("timedOut") else ""))
    code = result.get("exitCode")
    if code is None and not reason:
        return ""
    return describe_exit(code, reason, int(result.get("signal") or 0), int(result.get("durationMs") or 0))


def exit_status(result: Mapping[str, Any]) -> int:
    """Our exit code for a command's result (:mod:`._exitcodes`), its reason said on stderr
    when it did not simply exit."""
    reason = result.get("exitReason", "")
    error = result.get("error", "")
    if "exitCode" in result and reason in ("exited", ""):
        return int(result["exitCode"]) & 0xFF
    if result.get("timedOut") or reason == "timed_out":
        warn(ending(result) + (f" ({error})" if error else ""))
        return ec.EXEC_TIMED_OUT
    if reason == "failed_to_start":
        warn(f"the command could not be started: {error or 'no reason given'}")
        return ec.EXEC_NOT_STARTED
    signal = int(result.get("signal") or 0)
    if signal:
        warn(ending(result))
        return ec.SIGNALED_BASE + signal
    warn(f"no exit status ({reason or 'unknown reason'}{': ' + error if error else ''})")
    return ec.EXEC_CLI_ERROR


def run_exec(client: Client, body: Mapping[str, Any]) -> int:
    """Run ``body`` (:func:`exec_body`) through ExecuteScriptStream, output to our stdout and
    stderr as it comes; the exit code (:func:`exit_status`).

    Ctrl-C closes the stream, which cancels the command in the guest (130).

    Raises:
        ApiError: the call failed (the caller exits 125).
    """
    out, err = GuestWriter(sys.stdout), GuestWriter(sys.stderr)
    result: Mapping[str, Any] | None = None
    events = client.stream(VM, "ExecuteScriptStream", body, timeout_s=command_budget_s(body.get("timeoutSeconds", 0)))
    try:
        for event in events:
            output = event.get("output")
            if output is not None:
                (err if output.get("stream") == "stderr" else out).write(output.get("text", ""))
            elif "result" in event:
                result = event["result"]
    except KeyboardInterrupt:
        events.close()  # the controller sees the client leave: the guest command is cancelled
        warn("interrupted: the command was cancelled in the guest")
        return ec.INTERRUPTED
    if result is None:
        warn("the stream ended without the command's result")
        return ec.EXEC_CLI_ERROR
    for stream in ("stdout", "stderr"):
        if result.get(f"{stream}Truncated"):
            warn(f"{stream} was cut at the guest's output limit (exec_output_limit_bytes)")
    return exit_status(result)


def exec_command(
    options: Mapping[str, Any],
    command: str,
    vm: str,
    argv: Sequence[str],
    *,
    timeout_s: int = 0,
    user: str = "",
    cwd: str = "",
    env: Mapping[str, str] | None = None,
) -> int:
    """``exec`` (``argv`` is the command) or ``sh`` (``argv[0]`` is the script, ``-``: read
    from stdin) with the global ``options``: the exit code, every failure of ours said on
    stderr and exited 125 (the guest's codes are the command's)."""
    from limiquantix.protocol import ConfigError

    from ._client import ApiError
    from ._output import error_line

    try:
        client = Client.from_options(**options)
        if command == "sh":
            script = sys.stdin.read() if argv[0] == "-" else argv[0]
            body = exec_body(vm, script, (), timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        elif len(argv) == 1:
            # The API runs an argv only when it has arguments (``command`` alone is a shell
            # script), so a lone program goes through the guest's shell, which execs it.
            body = exec_body(vm, f"exec {shell_quote(argv[0])}", (), timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        else:
            body = exec_body(vm, argv[0], argv[1:], timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        return run_exec(client, body)
    except ConfigError as exc:
        error_line(str(exc))
    except ApiError as exc:
        error_line(exc.message, code=exc.code)
    return ec.EXEC_CLI_ERROR
