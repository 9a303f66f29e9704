"""How a guest command ended, in words, the same in every front end (the TUI, the CLI).

A command's result carries ``exit_code`` only when it exited (``exit_reason``
``exited``); a timeout, a cancel or a signal carries the reason and the signal
instead, so that nothing shows a made-up "exit code 0" (a script checking for 0 must
not count a timeout as success). ExecuteScript's result and a fleet run's target carry
the same fields.

Pure and cheap: ``limiquantix exec`` imports it when a command did not simply exit.
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module on every
# run, and that statement loads the __future__ module (about 0.3 ms of CPU on the project's
# machine: bench/cli_bench.py); annotations naming what only type checkers import are
# strings instead.

__all__ = ["describe_exit"]


def describe_exit(exit_code: int | None, exit_reason: str, signal: int = 0, duration_ms: int = 0) -> str:
    """``exit code 3``, ``timed out after 1.5 s (signal 15)``, ``cancelled (signal 15)``,
    ``killed by signal 9``, ``failed to start``; ``no exit status`` when nothing says how
    (a fleet target whose agent never answered). An empty reason with a code is an exit
    (results from before exit reasons existed)."""
    if exit_code is not None and exit_reason in ("", "exited"):
        return f"exit code {exit_code}"
    with_signal = f" (signal {signal})" if signal else ""
    if exit_reason == "timed_out":
        return f"timed out after {duration_ms / 1000:.1f} s{with_signal}"
    if exit_reason == "cancelled":
        return f"cancelled{with_signal}"
    if exit_reason == "signaled":
        return f"killed by signal {signal}" if signal else "killed by a signal"
    if exit_reason == "failed_to_start":
        return "failed to start"
    return exit_reason.replace("_", " ") if exit_reason else "no exit status"
