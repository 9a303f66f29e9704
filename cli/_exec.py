"""``exec`` and ``sh`` once their request has left (:func:`._fast.exec_command` sends it):
the command's output streamed live to our stdout and stderr, its exit code ours.

Imported only after the request is sent, while the controller works on it: nothing here
delays the request (bench/cli_bench.py measures ``limiquantix exec`` against curl). No click,
no rich, no protobuf, no httpx.
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module on every
# run, and that statement loads the __future__ module (about 0.3 ms of CPU on the project's
# machine: bench/cli_bench.py); annotations naming what only type checkers import are
# strings instead.

import sys

from limiquantix.protocol import ConfigError

from . import _exitcodes as ec
from ._fast import REQUEST_TIMEOUT_HINT, ApiError
from ._output import GuestWriter, error_line, warn

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ._answer import Stream

__all__ = ["cli_error", "ending", "exit_status", "follow"]


def ending(result: "Mapping[str, Any]") -> str:
    """How a command ended, in words (:func:`~limiquantix.protocol.describe_exit`), from
    its result's JSON: an ExecuteScriptResponse or a fleet run's target, which carry the same
    exitCode, exitReason and signal; empty when it does not say (a target never run)."""
    reason = str(result.get("exitReason") or ("timed_out" if result.get("timedOut") else ""))
    code = result.get("exitCode")
    if code is None and not reason:
        return ""
    from limiquantix.protocol import describe_exit  # here: a command that simply exited needs none

    return describe_exit(code, reason, int(result.get("signal") or 0), int(result.get("durationMs") or 0))


def exit_status(result: "Mapping[str, Any]") -> int:
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


def follow(events: "Stream") -> int:
    """Follow a sent ExecuteScriptStream (:meth:`._fast.Client.stream`): output to our stdout
    and stderr as it comes; the exit code (:func:`exit_status`; 125 when the call failed, said
    on stderr).

    Ctrl-C closes the stream, which cancels the command in the guest (130).
    """
    out, err = GuestWriter(sys.stdout), GuestWriter(sys.stderr)
    result: Mapping[str, Any] | None = None
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
    except ApiError as exc:
        return cli_error(exc)
    if result is None:
        warn("the stream ended without the command's result")
        return ec.EXEC_CLI_ERROR
    for stream in ("stdout", "stderr"):
        if result.get(f"{stream}Truncated"):
            warn(f"{stream} was cut at the guest's output limit (exec_output_limit_bytes)")
    return exit_status(result)


def cli_error(exc: ConfigError | ApiError) -> int:
    """A failure of the command line's own (not the guest command's), said on stderr: 125."""
    if isinstance(exc, ApiError):
        error_line(f"{exc.message} {REQUEST_TIMEOUT_HINT}" if exc.timed_out else exc.message, code=exc.code)
    else:
        error_line(str(exc))
    return ec.EXEC_CLI_ERROR
