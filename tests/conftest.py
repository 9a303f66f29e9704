"""Shared fixtures: real agents on real Unix sockets in temp dirs.

* ``start_agent(**config)``: an in-process :class:`Agent` serving a Unix socket,
  run in pytest-trio's ``nursery`` (so it stops with the test).
* ``connect(agent_or_path)``: an :class:`AgentClient` (async context manager).
* ``wait_until(condition)``, ``next_event(client, kind)``, ``wait_gone(*pids)``: bounded waits.
* ``spawn_agent(*flags)``: the real ``limiquantix-agent`` as a subprocess, for
  what only a process can show (signals, exit codes, process groups).
* ``start_simvm(...)``: a ``limiquantix-simvm`` process (a simulated VM: Unix
  socket, pty, the real agent), stopped after the test.
* ``simvm_pool``: simulated VMs kept for the session and lent to the tests whose
  guests only answer calls (:class:`SimVMPool`); ``lent_vm``: one quiet one of them.
* ``loopback_client(**kwargs)``: an ``httpx.AsyncClient`` for the tests' servers, all
  sharing one SSL context.
* ``db_tempdir()``, ``db_tmp``: a temp dir in memory (tmpfs) where the machine has one, for databases.

Every process the run starts (these fixtures', a test's own) is killed when the pytest process
that started it ends, whichever way it ends (tests/reaper.py: SIGTERM, SIGKILL, a second Ctrl-C
included); a test that gives a process an environment of its own passes it through
``reaper.marked``.

trio tests are marked ``@pytest.mark.trio`` one by one (trio_mode is off, see
pyproject.toml).
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import psutil
import pytest
import reaper
import trio
from hypothesis import settings

from limiquantix.agent import Agent, AgentConfig
from limiquantix.hostd.simvm import SimVMProcess
from limiquantix.protocol import AgentClient
from limiquantix.protocol._gen import agent_pb2 as pb

_counter = itertools.count()
#: Upper bound on what the helpers below wait for; a healthy run needs a fraction.
WAIT_S = 10.0

# No per-example deadline for hypothesis (its default is 200 ms): a timing assertion, which a
# loaded machine fails (test_framing's examples took 250 ms beside other engineers' suites).
# Bounds on work are asserted by counting it (test_framing's hashing, test_json_decode's scans).
settings.register_profile("limiquantix", deadline=None)
settings.load_profile("limiquantix")


def example_tiers(quick: int, thorough: int) -> pytest.MarkDecorator:
    """A property test's ``examples`` parameter: ``quick`` in the fast tier ([quick]), ``thorough``
    in the slow one ([thorough]); ``make test`` runs both, ``make test-fast`` the first."""
    return pytest.mark.parametrize(
        "examples",
        [pytest.param(quick, id="quick"), pytest.param(thorough, id="thorough", marks=pytest.mark.slow)],
    )


def pytest_configure(config: pytest.Config) -> None:
    """Every process this pytest process starts dies with it, however it ends (tests/reaper.py)."""
    reaper.start()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection built (every test module and all it imports: trio, hypothesis, Textual,
    httpx, the product), moved out of the cyclic garbage collector's sight (``gc.freeze``).

    Each full collection otherwise walks those objects again, and there are many: an xdist
    worker collects every module (~2.5 CPU-s of its run went to the collector, ~0.5 s of it to
    pytest's five collections at exit). Nothing of it becomes garbage while tests run; what the
    tests create is collected as before (a coroutine never awaited is still found and reported).
    """
    gc.collect()
    gc.freeze()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` (agent-side state with no event to wait on), within WAIT_S."""
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.01)


async def next_event(client: AgentClient, kind: str) -> pb.AgentMessage:
    """The next event of ``kind`` on ``client`` (others are skipped), within WAIT_S.

    Raises:
        AssertionError: the connection closed first.
    """
    with trio.fail_after(WAIT_S):
        async for msg in client.events:
            if msg.WhichOneof("payload") == kind:
                return msg
    raise AssertionError(f"connection closed before {kind}")


def gone(pid: int) -> bool:
    """Whether ``pid`` is dead (a zombie awaiting its new parent counts as dead; a process that
    exits between two looks at it is dead, not an error)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(*pids: int, within: float = 5.0) -> None:
    """Wait (at most ``within`` seconds) for real processes to finish dying."""
    with trio.fail_after(within):
        while not all(gone(p) for p in pids):
            await trio.sleep(0.01)


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    # Verifying (certificates required, host names checked) against no CA at all: the tests'
    # clients speak plain HTTP, and one pointed at TLS by mistake fails verification rather
    # than going unverified. certifi's bundle, which httpx's default context loads, cost
    # ~0.3 s of CPU in every pytest process.
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def loopback_client(**kwargs: Any) -> httpx.AsyncClient:
    """``httpx.AsyncClient(**kwargs)`` for the tests' plain-HTTP servers, with an SSL context
    made once for the session that trusts no CA: httpx builds one per client (certifi's
    bundle, ~25 ms of CPU, more than a test's call to a server on loopback)."""
    return httpx.AsyncClient(verify=_shared_ssl_context(), **kwargs)


#: Where :func:`db_tempdir` makes its directories: tmpfs, where a durable SQLite commit's fsync
#: costs nothing (~6 ms each on the test machine's disk: what a controller test mostly waited for).
_TMPFS: Final = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextmanager
def db_tempdir() -> Iterator[Path]:
    """A temp dir for a test's databases, removed after: in memory where the machine has a
    tmpfs (none of these tests is about what a power cut leaves on disk), else in ``$TMPDIR``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lqx-db-", dir=_TMPFS) as d:
        yield Path(d)


@pytest.fixture
def db_tmp() -> Iterator[Path]:
    """:func:`db_tempdir` for the test, removed once its trio run has ended (its servers with it)."""
    with db_tempdir() as d:
        yield d


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


def wait_for_socket(proc: subprocess.Popen[bytes], sock: str, log: Path) -> None:
    """Until the agent process has made its socket (at most 20 s).

    Raises:
        RuntimeError: it exited or timed out first (with its log).
    """
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.01)


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
            wait_for_socket(proc, sock, log)
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
    stop_all(procs)


def stop_all(vms: Sequence[SimVMProcess]) -> None:
    """SIGTERM to every one at once (they stop in parallel), then wait for each."""
    for vm in vms:
        if vm.proc.poll() is None:
            vm.proc.terminate()
    for vm in vms:
        vm.stop()


class SimVMPool:
    """Simulated VMs kept running for the session (one pytest process), lent to tests.

    A simulated VM costs two Python processes to start (simvm and the agent: ~0.8 CPU-s on
    the 2-core test machine); tests that only call their guests through hostd borrow one
    instead. :meth:`lend` links each VM at the socket path the test names (a symlink: hostd
    connects through it as to the VM's own socket, and a VM that exits leaves it dangling,
    as its socket goes) and takes the VMs back afterwards; one that exited (powered off,
    killed) is not lent again. A borrowed VM is one whose previous host client (the last
    test's hostd) went away: what the guest wrote meanwhile waits in its port, which hostd's
    hello sync discards, as after a hostd restart on a real QEMU chardev.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._idle: dict[tuple[tuple[str, ...], bool], list[SimVMProcess]] = {}
        self._all: list[SimVMProcess] = []

    def _start(self, agent_args: tuple[str, ...], no_agent: bool) -> SimVMProcess:
        n = len(self._all)
        vm = SimVMProcess.start(
            str(self._root / f"vm{n}.sock"),
            state_dir=self._root / f"state{n}",
            name=f"pooled{n}",
            no_agent=no_agent,
            agent_args=agent_args,
            log_level="debug",
        )
        self._all.append(vm)
        return vm

    @contextmanager
    def lend(
        self, links: Mapping[str, Path], *, agent_args: Sequence[str], no_agent: bool = False
    ) -> Iterator[dict[str, SimVMProcess]]:
        """A running VM (started with ``agent_args``; ``no_agent``: a port no agent ever opens)
        linked at each path of ``links`` (by name), for the block; wait for each with
        ``wait_ready`` as for a new one."""
        idle = self._idle.setdefault((tuple(agent_args), no_agent), [])
        lent: dict[str, SimVMProcess] = {}
        try:
            for name, link in links.items():
                while idle and idle[-1].proc.poll() is not None:
                    idle.pop()
                lent[name] = idle.pop() if idle else self._start(tuple(agent_args), no_agent)
                link.symlink_to(lent[name].socket_path)
            yield lent
        finally:
            for name, vm in lent.items():
                links[name].unlink(missing_ok=True)
                if vm.proc.poll() is None:
                    idle.append(vm)

    def close(self) -> None:
        """Stop every VM the pool started."""
        stop_all(self._all)


@pytest.fixture(scope="session")
def simvm_pool() -> Iterator[SimVMPool]:
    """The session's :class:`SimVMPool` (short paths: sockets must fit in sun_path)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lqx-pool-") as d:
        pool = SimVMPool(Path(d))
        try:
            yield pool
        finally:
            pool.close()


@pytest.fixture
def lent_vm(simvm_pool: SimVMPool, short_tmp: Path) -> Iterator[SimVMProcess]:
    """A quiet simulated VM (QUIET_AGENT) of the session's pool, linked at a path in
    ``short_tmp``, for a test whose guest only answers calls or reboots (one that kills,
    stops or powers off its VM starts its own)."""
    with simvm_pool.lend({"vm": short_tmp / "lent.sock"}, agent_args=QUIET_AGENT) as lent:
        yield lent["vm"]


@pytest.fixture(scope="session")
def _config_homes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config-homes")


@pytest.fixture(autouse=True)
def _own_config_home(monkeypatch: pytest.MonkeyPatch, _config_homes: Path) -> None:
    """Every test gets an empty ``$XDG_CONFIG_HOME``: what ``make run`` left in the user's
    ``~/.config/limiquantix/`` (tui.toml, api-examples.sh) must not change what a test sees
    (the help screen names api-examples.sh when it exists). A new directory of one made for
    the session: ``tmp_path_factory.mktemp`` lists every directory it made before to number
    the next (400 calls: 0.34 s of CPU, growing with the square of the count)."""
    import tempfile

    monkeypatch.setenv("XDG_CONFIG_HOME", tempfile.mkdtemp(dir=_config_homes))


def quicken_pilot(monkeypatch: pytest.MonkeyPatch) -> None:
    """What :func:`quick_pilot` does, for a fixture of a wider scope (``pytest.MonkeyPatch.context()``)."""
    import textual._wait
    import textual.screen

    monkeypatch.setattr(textual._wait, "SLEEP_GRANULARITY", 0.005)
    monkeypatch.setattr(textual._wait, "SLEEP_IDLE", 0.005 / 20)
    monkeypatch.setattr(textual.screen, "UPDATE_PERIOD", 0.004)


@pytest.fixture
def quick_pilot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Textual's Pilot waits for an idle app in 5 ms slices instead of 20 ms (Textual tests).

    ``pilot.press`` waits twice per key and ``pilot.pause`` once for the app to go idle:
    sleeps of ``SLEEP_GRANULARITY`` (20 ms) until one passes with under 5 % of it in CPU, so
    at least 20 ms per wait whatever the app does; the TUI tests make ~800 such waits, which
    were most of their time. What the wait is for is kept: the slice stays longer than the
    screen's refresh period (4 ms here, 1/60 s by default: 20 ms > 16.7 ms is Textual's own
    margin), so a refresh that a key scheduled (layout, repaint, ``call_after_refresh``
    callbacks) is done within each wait, as with the defaults; idle is still under 5 %.
    Textual is pinned (pyproject.toml); a renamed constant fails here, loudly.
    """
    quicken_pilot(monkeypatch)


#: Textual's parsed stylesheets, by what :func:`share_parsed_css` keys them on.
_PARSED_CSS: dict[tuple[Any, ...], Any] = {}


def share_parsed_css(monkeypatch: pytest.MonkeyPatch) -> None:
    """Textual's CSS parsed once per process, not once per app (Textual tests).

    Each app parses every stylesheet it meets (its own, each widget class's DEFAULT_CSS)
    into rule sets: ~0.03 s of CPU at its start, more for each screen of new widgets; the
    TUI tests start ~40 apps. The rule sets depend on the text and where it was read from
    (Textual's own cache key) and on the CSS variables (the theme), so they are shared when
    all of these are equal, as Textual shares them within one stylesheet (it never changes a
    parsed rule set). CSS with errors gives the same rule sets, whose errors Textual raises
    as before.
    """
    from textual.css.stylesheet import Stylesheet

    parse = Stylesheet._parse_rules

    def parse_once(
        self: Stylesheet,
        css: str,
        read_from: Any,
        is_default_rules: bool = False,
        tie_breaker: int = 0,
        scope: str = "",
    ) -> Any:
        key = (css, read_from, is_default_rules, tie_breaker, scope, tuple(self._variables.items()))
        try:
            return _PARSED_CSS[key]
        except KeyError:
            rules = _PARSED_CSS[key] = parse(self, css, read_from, is_default_rules, tie_breaker, scope)
            return rules

    monkeypatch.setattr(Stylesheet, "_parse_rules", parse_once)


@pytest.fixture
def shared_css(monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`share_parsed_css` for the test."""
    share_parsed_css(monkeypatch)
