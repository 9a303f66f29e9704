"""The command line's exit codes: one table, shown in ``--help`` and the README.

``exec`` and ``sh`` exit with the guest command's own code, so their own failures use the
codes ``docker run`` and coreutils' ``timeout`` use for theirs (125, 126, 124), which a
script can tell from most programs' codes; every other command uses the BSD ``sysexits``
numbers for what went wrong.
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module on every
# run, and that statement loads the __future__ module (about 0.3 ms of CPU on the project's
# machine: bench/cli_bench.py); annotations naming what only type checkers import are
# strings instead.

__all__ = [
    "AUTH",
    "CONFIG",
    "EPILOG",
    "EXEC_CLI_ERROR",
    "EXEC_EPILOG",
    "EXEC_NOT_STARTED",
    "EXEC_TIMED_OUT",
    "FAILED",
    "INTERRUPTED",
    "OK",
    "SIGNALED_BASE",
    "UNAVAILABLE",
    "USAGE",
    "for_code",
]

OK = 0
#: The operation failed: the controller refused it (not_found, invalid_argument ...), a fleet
#: run had targets that did not succeed, a copy's SHA-256 differed.
FAILED = 1
#: Bad flags or arguments (click's own code).
USAGE = 2
#: The controller cannot be reached, did not answer in time, or a node or VM is unavailable.
UNAVAILABLE = 69
#: The token was refused (unauthenticated) or may not do this (permission_denied).
AUTH = 77
#: No token, an unreadable token or CA file, a bad config file or profile, plain HTTP refused.
CONFIG = 78
#: exec/sh: the command ran out of its --timeout (coreutils' timeout says 124 too).
EXEC_TIMED_OUT = 124
#: exec/sh: the command line failed (any of 69, 77, 78, 1 above for other commands).
EXEC_CLI_ERROR = 125
#: exec/sh: the guest could not start the command (no such program, not executable).
EXEC_NOT_STARTED = 126
#: exec/sh: killed by signal N → 128 + N (as a shell reports it).
SIGNALED_BASE = 128
#: Interrupted by Ctrl-C (SIGINT): the streamed command is cancelled in the guest.
INTERRUPTED = 130

_BY_CODE = {
    "unauthenticated": AUTH,
    "permission_denied": AUTH,
    "unavailable": UNAVAILABLE,
    "deadline_exceeded": UNAVAILABLE,
}


def for_code(connect_code: str) -> int:
    """The exit code of a command (not exec/sh) that failed with ``connect_code``."""
    return _BY_CODE.get(connect_code, FAILED)


EPILOG = """\b
Exit codes: 0 success; 1 the operation failed (the controller's error, a fleet
target that did not succeed, a SHA-256 mismatch); 2 usage; 69 controller
unreachable or not answering; 77 token refused or not allowed; 78 configuration
(no token, unreadable file, unknown profile, plain HTTP refused); 130 Ctrl-C.
exec and sh: the guest command's exit code; 124 timed out; 125 the command line
failed (message on stderr); 126 the command could not be started; 128+N killed
by signal N.
"""

EXEC_EPILOG = """\b
Exit code: the guest command's own; 124 when it ran out of --timeout; 125 when
this command line failed (unreachable controller, refused token, unknown VM:
the message is on stderr); 126 when the guest could not start it; 128+N when
a signal N ended it; 130 on Ctrl-C (the command is cancelled in the guest).
"""
