"""Every process a pytest run starts dies with that pytest process, however it ends.

A run killed by SIGTERM (a CI timeout, ``timeout make test``), by a second Ctrl-C during its
teardown or by SIGKILL runs no finalizer: the session pool's simulated VMs, their agents, the
hostds and controllers tests start, the commands those run, were left running. The kernel's
parent-death signal (``protocol._daemon.die_with_parent``) alone does not cover them: it fires
when the *thread* that forked exits, and trio starts its subprocesses from worker threads
(``trio.lowlevel.open_process``), which exit when idle, so it would kill children of live
tests; and it reaches only the first generation (a simulated VM's agent runs in a session of
its own, as does every command an agent runs).

So each pytest process (each pytest-xdist worker too) marks its environment at start,
``LIMIQUANTIX_TEST_RUN=<pid>-<random>`` (:func:`start`; not ``LQX_``: tests clear those for the
command line), which every process it starts inherits, and starts a reaper: a small process of its own session (a terminal's Ctrl-C does not reach it)
that waits on a pipe only the pytest process holds. When the pipe closes (the pytest process
ended, whichever way), the reaper kills every process that carries the mark and every
descendant of one (a command an agent ran with an environment of its own), in rounds until
none is left, then exits. xdist workers carry their controller's mark in the environment they
were started with: killing the controller kills its workers, and each worker's reaper its
processes. A test that runs a process with an environment built from scratch passes it
through :func:`marked`.

The reaper is this file run as a script (``python -I -S reaper.py TOKEN``): standard library
only, no import of the project; it costs one ~20 ms Python start per pytest process.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

__all__ = ["MARK_ENV", "marked", "start"]

#: The environment variable that marks a process as started by a test run (its value: the run).
MARK_ENV = "LIMIQUANTIX_TEST_RUN"
#: Kill rounds after the run ended: a process that forks while its parent is killed is found in
#: the next round; a few are plenty.
_ROUNDS = 20
_ROUND_PAUSE_S = 0.05
#: The write end of the reaper's pipe: held open for the life of this process, never inherited
#: (os.pipe's fds are not inheritable).
_held: list[int] = []


def start() -> None:
    """Mark this process's environment and start its reaper (once per process).

    Raises:
        OSError: the reaper cannot be started.
    """
    if _held:
        return
    token = f"{os.getpid()}-{secrets.token_hex(8)}"
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}  # the reaper must not reap itself
    try:
        subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), token],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    _held.append(write_end)
    os.environ[MARK_ENV] = token


def marked(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this run's mark: for a process a test starts with an environment of its own."""
    mark = os.environ.get(MARK_ENV)
    return {**env, MARK_ENV: mark} if mark else dict(env)


def _processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, environment) of every process this user may read."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or another user's
            continue
        # The command name (in parentheses) may hold spaces: fields after its ")" are fixed.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        yield int(name), ppid, environ


def _doomed(token: str) -> set[int]:
    """The marked processes and their descendants (not this process)."""
    needle = f"\0{MARK_ENV}={token}\0".encode()
    children: dict[int, list[int]] = {}
    found = []
    for pid, ppid, environ in _processes():
        children.setdefault(ppid, []).append(pid)
        if needle in b"\0" + environ:
            found.append(pid)
    doomed: set[int] = set()
    while found:
        pid = found.pop()
        if pid not in doomed:
            doomed.add(pid)
            found.extend(children.get(pid, ()))
    doomed.discard(os.getpid())
    return doomed


def _reap(token: str) -> None:
    # Its own session already; a hang-up or Ctrl-C meant for the run must not stop the cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while os.read(0, 4096):  # nothing is written: EOF is the run's end
        pass
    for _ in range(_ROUNDS):
        doomed = _doomed(token)
        if not doomed:
            return
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(_ROUND_PAUSE_S)


if __name__ == "__main__":
    _reap(sys.argv[1])
