"""A command's process group: started in a session of its own, killed whole, reaped.

The one way the agent runs a program (execute's commands, lifecycle's shutdown and
password commands):

* The child starts in a new session (``start_new_session``), so its pid is the id
  of its process group and one ``killpg`` reaches everything it started that did
  not leave the group.
* Where the kernel has pidfds (Linux >= 5.3: every supported guest), the leader's
  exit is awaited on its pidfd *without reaping it*, and the group is signalled
  before the reap: while the leader is a zombie its pid, which is the group id,
  cannot be reused, so the signal cannot reach an unrelated process.
* :meth:`ProcessGroup.finish` is the end of every run: optionally SIGTERM (and
  SIGCONT) with a grace period, then SIGKILL to the group, then reap. Callers run it
  in a shielded scope when the run is cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any, Final, final

import trio

__all__ = ["REAP_TIMEOUT_S", "ProcessGroup"]

log = logging.getLogger(__name__)

#: After SIGKILL the leader is reaped within milliseconds, unless it is stuck in
#: uninterruptible sleep (a dead NFS server) where nothing can kill it. The
#: answer, and the agent's shutdown, wait no longer than this; Python's
#: subprocess module reaps it later (``subprocess._cleanup``).
REAP_TIMEOUT_S: Final = 5.0


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid``, or None where the kernel or Python lacks them."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # pragma: no cover - old kernel or Python
        return None


@final
class ProcessGroup:
    """One started command and its process group.

    Use :meth:`start`, then :meth:`wait_leader` and :meth:`finish`, and always
    :meth:`aclose` (it closes the pipes and the pidfd).
    """

    def __init__(self, proc: trio.Process, what: str) -> None:
        self.proc = proc
        #: Names the command in logs ("execute <id>", "shutdown").
        self.what = what
        self._pidfd = _pidfd_open(proc.pid)
        self.leader_exited = False
        #: time.monotonic() when the leader was first seen gone.
        self.ended_at: float | None = None

    @classmethod
    async def start(cls, argv: Sequence[str], *, what: str, **options: Any) -> ProcessGroup:
        """Start ``argv`` in a session of its own (``options``: open_process's, pipes included).

        Raises:
            OSError: the command could not be started (not found, not executable, bad cwd).
        """
        proc = await trio.lowlevel.open_process(list(argv), start_new_session=True, **options)
        return cls(proc, what)

    def _leader_gone(self) -> None:
        self.leader_exited = True
        if self.ended_at is None:
            self.ended_at = time.monotonic()

    async def wait_leader(self) -> None:
        """Return once the leader has exited (still unreaped when we have a pidfd)."""
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
        else:  # pragma: no cover - no pidfds: reaps, leaving a tiny pid-reuse window
            await self.proc.wait()
        self._leader_gone()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the whole group (nothing when it is empty)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass  # the group is empty
        except PermissionError as exc:  # pragma: no cover - a setuid member, agent not root
            log.warning("%s: cannot send %s to group %d: %s", self.what, sig.name, self.proc.pid, exc)

    async def finish(self, *, grace_s: float | None) -> None:
        """Kill what is left of the group and reap the leader.

        Args:
            grace_s: if given and the leader still runs, SIGTERM the group and give
                it this long before SIGKILL; None: SIGKILL at once.
        """
        if grace_s is not None and not self.leader_exited:
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
            with trio.move_on_after(grace_s):
                await self.wait_leader()
        self.signal(signal.SIGKILL)
        with trio.move_on_after(REAP_TIMEOUT_S):
            await self.proc.wait()
            self._leader_gone()
        if self.proc.returncode is None:  # pragma: no cover - uninterruptible sleep
            log.error("%s: pid %d survived SIGKILL for %s s", self.what, self.proc.pid, REAP_TIMEOUT_S)

    async def aclose(self) -> None:
        """Close the pipes and the pidfd."""
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                await stream.aclose()
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
