"""``limiquantix`` (and ``python -m limiquantix.cli``): exec/sh by the fast path when it can,
everything else through click."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command line; its exit code.

    Output to a closed pipe (``limiquantix vms | head -1``) ends quietly, like other tools.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        from . import _fast

        code = _fast.run(args)
        if code is None:
            from ._app import run_click

            code = run_click(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again while flushing stdout at exit: point it at /dev/null.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())
