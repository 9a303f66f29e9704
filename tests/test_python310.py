"""The agent must run on guests' stock Python 3.10 (Ubuntu 22.04), not only 3.11+."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_agent_and_protocol_need_at_most_python_310() -> None:
    """Static: vermin finds no construct newer than 3.10 in the agent's code (the ``.pyi``
    stubs, read by type checkers only, never run on a guest: not read, a sixth of the time).
    In one process: vermin's pool (a process per core) cost a fifth more CPU, each worker
    importing vermin again, and the suite's other tests keep the cores busy meanwhile."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "vermin"), "-t=3.10-", "--no-tips", "--violations", "--eval-annotations",
         "--processes=1", "--exclude-regex", r"\.pyi$", str(ROOT / "agent"), str(ROOT / "protocol")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def _python310() -> str | None:
    candidates = [*sorted(Path("/root/.pyenv/versions").glob("3.10*/bin/python3.10")), shutil.which("python3.10")]
    for candidate in candidates:
        if not candidate:
            continue
        # pyenv shims exist for versions that are not selected: try it.
        probe = subprocess.run(
            [str(candidate), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 10)":
            return str(candidate)
    return None


@pytest.mark.slow
def test_agent_runs_under_python_310(tmp_path: Path) -> None:
    """Dynamic: install the package into a 3.10 venv and talk to the agent with it."""
    py = _python310()
    if py is None:
        pytest.skip("no Python 3.10 interpreter on this machine (the static check above still ran)")
    venv = tmp_path / "venv"
    subprocess.run([py, "-m", "venv", str(venv)], check=True)
    vpy = str(venv / "bin" / "python")
    subprocess.run([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)], check=True)
    script = """
import os, subprocess, sys, tempfile, time, trio
from limiquantix.protocol._agentclient import AgentClient
sock = os.path.join(tempfile.mkdtemp(), "a.sock")
p = subprocess.Popen([sys.executable, "-m", "limiquantix.agent", "--transport", "unix-listen",
                      "--socket", sock, "--telemetry-interval-s", "0"])
async def main():
    with trio.fail_after(30):
        while not os.path.exists(sock):
            await trio.sleep(0.05)
        async with AgentClient.connect_unix(sock) as c:
            assert (await c.ping(b"310")).payload == b"310"
            print(c.identity.python_version)
try:
    trio.run(main)
finally:
    p.terminate(); p.wait()
"""
    out = subprocess.run([vpy, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("3.10")
