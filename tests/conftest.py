"""Shared fixtures: real agents on real Unix sockets in temp dirs.

* ``start_agent(**config)``: an in-process :class:`Agent` serving a Unix socket,
  run in pytest-trio's ``nursery`` (so it stops with the test).
* ``connect(agent_or_path)``: an :class:`AgentClient` (async context manager).
* ``spawn_agent(*flags)``: the real ``limiquantix-agent`` as a subprocess, for
  what only a process can show (signals, exit codes, process groups).
* ``start_simvm(...)``: a ``limiquantix-simvm`` process (a simulated VM: Unix
  socket, pty, the real agent), stopped after the test.

trio tests are marked ``@pytest.mark.trio`` one by one (trio_mode is off, see
pyproject.toml).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from limiquantix.agent import Agent, AgentConfig
from limiquantix.hostd.simvm import SimVMProcess
from limiquantix.protocol.client import AgentClient

_counter = itertools.count()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: AF_UNIX paths are limited to 107 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lqx-") as d:
        yield Path(d)


@pytest.fixture
def agent_config(short_tmp: Path) -> Callable[..., AgentConfig]:
    """Build an AgentConfig on a fresh socket path; telemetry off unless asked."""

    def make(**overrides: Any) -> AgentConfig:
        values: dict[str, Any] = {
            "transport": "unix-listen",
            "socket": str(short_tmp / f"agent{next(_counter)}.sock"),
            "telemetry_interval_s": 0,
        }
        values.update(overrides)
        return AgentConfig(**values)

    return make


@pytest.fixture
def start_agent(nursery: trio.Nursery, agent_config: Callable[..., AgentConfig]):  # type: ignore[no-untyped-def]
    """``await start_agent(**config)`` -> a running in-process Agent."""

    async def start(**overrides: Any) -> Agent:
        agent = Agent(agent_config(**overrides))
        await nursery.start(agent.run)
        return agent

    return start


@asynccontextmanager
async def _connect(target: Agent | str | os.PathLike[str]) -> AsyncIterator[AgentClient]:
    path = target.config.socket if isinstance(target, Agent) else os.fspath(target)
    with trio.fail_after(10):
        async with AgentClient.connect_unix(path) as client:
            yield client


@pytest.fixture
def connect():  # type: ignore[no-untyped-def]
    """``async with connect(agent) as client`` (agent or socket path)."""
    return _connect


class AgentProcess:
    def __init__(self, proc: subprocess.Popen[bytes], socket: str, log: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn_agent(short_tmp: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start ``limiquantix-agent`` as a real process listening on a Unix socket."""
    procs: list[AgentProcess] = []

    def spawn(*flags: str, wait: bool = True, wrapper: tuple[str, ...] = ()) -> AgentProcess:
        """``wrapper`` prefixes the command (e.g. setpriv dropping capabilities)."""
        n = next(_counter)
        sock = str(short_tmp / f"proc{n}.sock")
        log = short_tmp / f"proc{n}.log"
        args = [
            *wrapper,
            sys.executable, "-m", "limiquantix.agent",
            "--transport", "unix-listen", "--socket", sock,
            "--telemetry-interval-s", "0", "--log-level", "debug", *flags,
        ]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ap = AgentProcess(proc, sock, log)
        procs.append(ap)
        if wait:
            deadline = time.monotonic() + 20
            while not os.path.exists(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not start:\n{ap.output()}")
                time.sleep(0.01)
        return ap

    yield spawn
    for ap in procs:
        if ap.proc.poll() is None:
            ap.proc.kill()
        ap.proc.wait()


#: Agent flags for simulated VMs in tests: no telemetry traffic unless asked.
QUIET_AGENT = ("--telemetry-interval-s=0",)
StartSimVM = Callable[..., SimVMProcess]


@pytest.fixture
def start_simvm(short_tmp: Path) -> Iterator[StartSimVM]:
    """``start_simvm(socket=None, no_agent=False, agent_args=QUIET_AGENT)`` -> a started SimVMProcess.

    Stopped (SIGTERM, then SIGKILL) after the test.
    """
    procs: list[SimVMProcess] = []
    counter = itertools.count()

    def start(
        *, socket: str | None = None, no_agent: bool = False, agent_args: Sequence[str] = QUIET_AGENT
    ) -> SimVMProcess:
        n = next(counter)
        proc = SimVMProcess.start(
            socket or str(short_tmp / f"vm{n}.sock"),
            state_dir=short_tmp / f"state{n}",
            name=f"vm{n}",
            no_agent=no_agent,
            agent_args=agent_args,
            log_level="debug",
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # all at once: they stop in parallel
        if proc.proc.poll() is None:
            proc.proc.terminate()
    for proc in procs:
        proc.stop()


@pytest.fixture(autouse=True)
def _own_config_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test gets an empty ``$XDG_CONFIG_HOME``: what ``make run`` left in the user's
    ``~/.config/limiquantix/`` (tui.toml, api-examples.sh) must not change what a test sees
    (the help screen names api-examples.sh when it exists)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
