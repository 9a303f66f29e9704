"""``limiquantix`` (and ``python -m limiquantix.cli``): exec/sh by the fast path when it can,
everything else through click."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # for type checkers only: typing costs start-up time (bench/cli_bench.py)
    from typing import NoReturn

__all__ = ["entry", "main"]

#: Our exit code when stdout is a closed pipe (a shell's for SIGPIPE: 128 + 13).
_BROKEN_PIPE = 141


def _run(argv: list[str]) -> tuple[int, bool]:
    """Run one command line: its exit code, and whether the fast path (exec/sh) ran it.

    Output to a closed pipe (``limiquantix vms | head -1``) ends quietly, like other tools.
    """
    fast = False
    try:
        from . import _fast

        code = _fast.run(argv)
        fast = code is not None
        if code is None:
            from ._app import run_click

            code = run_click(argv)
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        # Python would complain again while flushing stdout at exit: point it at /dev/null.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _BROKEN_PIPE, fast
    return code, fast


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` by default); its exit code."""
    return _run(sys.argv[1:] if argv is None else argv)[0]


def entry() -> NoReturn:
    """The ``limiquantix`` program: run ``sys.argv[1:]`` and exit with its code.

    After exec/sh the process ends at once (``os._exit``, stdout and stderr flushed): the
    interpreter's teardown (module cleanup, the garbage collector's last passes) costs about
    3 ms, a tenth of what that command may spend beyond the interpreter's own start
    (bench/cli_bench.py), and nothing on that path needs it: no thread, no atexit handler, no
    file left open for writing. Click's commands exit normally (rich, progress threads,
    files written by ``cp``).
    """
    code, fast = _run(sys.argv[1:])
    if fast:
        import os

        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
