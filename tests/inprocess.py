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
from typing import TextIO

__all__ = ["run_main", "run_main_bytes"]


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
    ran = run_main_bytes(main, *argv, env=env)
    return subprocess.CompletedProcess(ran.args, ran.returncode, ran.stdout.decode(), ran.stderr.decode())


def _captured() -> io.TextIOWrapper:
    """A text stream with a ``buffer``, as ``sys.stdout`` has (guest bytes are written to it)."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)


def run_main_bytes(
    main: Callable[[Sequence[str]], int],
    *argv: str,
    env: Mapping[str, str | None] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """:func:`run_main` with stdout and stderr as bytes; ``stdout``/``stderr`` given (e.g. a
    terminal): written there instead, and returned empty."""
    out, err = _captured(), _captured()
    with _environment(env or {}), _loggers_kept(), redirect_stdout(stdout or out), redirect_stderr(stderr or err):
        try:
            code: int | str | None = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        (stderr or err).write(code + "\n")
        code = 1
    out_bytes, err_bytes = (stream.buffer.getvalue() for stream in (out, err))  # type: ignore[attr-defined]
    return subprocess.CompletedProcess(list(argv), code or 0, out_bytes, err_bytes)
