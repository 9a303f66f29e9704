"""limiquantix-agent-cli against a real agent process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def cli(sock: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "limiquantix.agent.cli", "-s", sock, *args],
        capture_output=True, input=stdin, timeout=60,
    )  # fmt: skip


def test_cli_round_trip(spawn_agent, tmp_path: Path) -> None:
    sock = spawn_agent().socket
    info = cli(sock, "info")
    assert info.returncode == 0
    assert json.loads(info.stdout)["agentVersion"]

    run = cli(sock, "sh", "echo out; echo err >&2; exit 7")
    assert (run.returncode, run.stdout, run.stderr) == (7, b"out\n", b"err\n")
    assert cli(sock, "exec", "--", "printf", "%s", "a b").stdout == b"a b"

    data = os.urandom(2_500_000)
    (tmp_path / "up").write_bytes(data)
    put = cli(sock, "put", str(tmp_path / "up"), str(tmp_path / "down"), "--mode", "0600")
    assert put.returncode == 0, put.stderr
    assert (tmp_path / "down").read_bytes() == data
    assert (tmp_path / "down").stat().st_mode & 0o777 == 0o600
    assert cli(sock, "cat", str(tmp_path / "down")).stdout == data
    assert b"down" in cli(sock, "ls", str(tmp_path)).stdout

    bad = cli(sock, "cat", "/etc/../etc/shadow")
    assert bad.returncode == 1
    assert b"invalid_argument" in bad.stderr and b"Traceback" not in bad.stderr


def test_cli_unreachable_socket(tmp_path: Path) -> None:
    out = cli(str(tmp_path / "nothing.sock"), "ping")
    assert out.returncode == 1
    assert b"unavailable: cannot connect" in out.stderr
