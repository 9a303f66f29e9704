"""A pytest run that is killed leaves no process behind (tests/reaper.py).

Each test runs a small pytest of its own in a subprocess (this suite's conftest as a plugin):
its one test borrows a simulated VM from the session pool (a simvm process and its agent, in
a session of its own) and starts an agent process (``spawn_agent``), then waits to be killed.
The run is killed one way or another, and every process it started must be gone: found by an
environment variable the run is started with, which all of them inherit (psutil).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Set in the small run's environment: every process it starts carries it.
PROBE_ENV = "LIMIQUANTIX_REAPER_PROBE"
WAIT_S = 60.0

INNER_TEST = """
import os
import time
from pathlib import Path

from conftest import QUIET_AGENT


def test_holds_processes_until_killed(simvm_pool, spawn_agent, short_tmp):
    with simvm_pool.lend({"vm": short_tmp / "vm.sock"}, agent_args=QUIET_AGENT) as lent:
        spawn_agent()
        vm = lent["vm"]
        while not vm.socket_path or not os.path.exists(vm.socket_path):
            time.sleep(0.05)
        Path(os.environ["READY_FILE"]).write_text("ready")
        time.sleep(600)
"""


def probed(probe: str) -> list[psutil.Process]:
    """The processes whose environment holds ``PROBE_ENV=probe``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(PROBE_ENV) == probe:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_for(what: str, condition: Callable[[], bool], run: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``condition`` until it holds (at most WAIT_S; ``run`` must not end first)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if run is not None and run.poll() is not None:
            pytest.fail(f"the small run ended ({run.returncode}) before {what}: {run.stdout.read()!r}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        time.sleep(0.05)


def kill(run: subprocess.Popen[bytes], how: str) -> None:
    if how == "SIGINT twice":  # a developer's impatient Ctrl-C: the second stops the teardown
        run.send_signal(signal.SIGINT)
        time.sleep(0.3)
        run.send_signal(signal.SIGINT)
    else:
        run.send_signal(signal.Signals[how.split()[0]])


@pytest.mark.parametrize(
    ("how", "xdist"),
    [
        ("SIGKILL", False),
        pytest.param("SIGTERM", False, marks=pytest.mark.slow),
        pytest.param("SIGINT twice", False, marks=pytest.mark.slow),
        pytest.param("SIGKILL", True, id="SIGKILL-xdist-controller", marks=pytest.mark.slow),
    ],
)
def test_a_killed_run_leaves_no_process_it_started(tmp_path: Path, how: str, xdist: bool) -> None:
    inner = tmp_path / "test_inner.py"
    inner.write_text(INNER_TEST)
    ready = tmp_path / "ready"
    probe = uuid.uuid4().hex
    env = {**os.environ, PROBE_ENV: probe, "READY_FILE": str(ready), "PYTHONPATH": str(ROOT / "tests")}
    argv = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
        "--rootdir", str(tmp_path), "-c", str(ROOT / "pyproject.toml"), str(inner),
        *(["-n", "1"] if xdist else []),
    ]  # fmt: skip
    run = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for("the small run's test is ready", ready.exists, run)
        started = {p.pid: " ".join(p.cmdline()) for p in probed(probe)}
        commands = list(started.values())
        # The pool's simulated VM and its agent, the spawned agent, the reaper (of each pytest process).
        assert sum("limiquantix.hostd.simvm" in c for c in commands) == 1, commands
        assert sum("limiquantix.agent" in c for c in commands) == 2, commands
        assert sum("reaper.py" in c for c in commands) == (2 if xdist else 1), commands
        kill(run, how)
        run.wait(WAIT_S)
        wait_for("every process the run started is gone", lambda: not probed(probe))
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if run.stdout is not None:
            run.stdout.close()
