"""A console script's ``main(argv)`` run in the test's process, as its process would run it.

Starting ``python -m limiquantix.<daemon>`` costs a Python start and the package's imports
(most of a CPU-second each on the 2-core test machine); a test about what a command says
and its exit status, not about the process, calls the same ``main`` here. Each command
keeps one test that runs it as a real process (its ``__main__`` and entry point).

What the call changes in the process is put back after it: ``sys.stdout``/``sys.stderr``
(captured), the environment variables given, and the root logger (the daemons' ``main``
installs its own handler writing to the captured stderr).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout

__all__ = ["run_main"]


def _set_environment(env: Mapping[str, str | None]) -> None:
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def _environment(env: Mapping[str, str | None]) -> Iterator[None]:
    """``env`` set (a None value: unset) for the block, then the environment as it was."""
    saved = {name: os.environ.get(name) for name in env}
    try:
        _set_environment(env)
        yield
    finally:
        _set_environment(saved)


@contextmanager
def _loggers_kept() -> Iterator[None]:
    """The root logger's handlers and levels (``setup_logging`` replaces them) put back after."""
    root, httpx_log = logging.getLogger(), logging.getLogger("httpx")
    handlers, level, httpx_level = root.handlers[:], root.level, httpx_log.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        httpx_log.setLevel(httpx_level)


def run_main(
    main: Callable[[Sequence[str]], int], *argv: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``main(argv)``'s exit status (``SystemExit`` from argparse: its code), stdout and stderr,
    as ``subprocess.run(..., capture_output=True, text=True)`` returns them for the process."""
    out, err = io.StringIO(), io.StringIO()
    with _environment(env or {}), _loggers_kept(), redirect_stdout(out), redirect_stderr(err):
        try:
            code: int | str | None = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(list(argv), code or 0, out.getvalue(), err.getvalue())
