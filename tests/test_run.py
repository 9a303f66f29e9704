"""`make run` works: hostd and three simulated VMs start, connect, answer, and stop cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_run_once() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), "--once", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "every agent connected" in text
    assert text.count("connected ") >= 3
    assert "uname -sr → exit 0" in text
    assert "#3 line 3" in text
    assert "SHA-256 equal" in text
    assert "/etc/../etc/shadow → ReadGuestFile: invalid_argument" in text
    assert "hostd exited with 0" in text
    assert "Traceback" not in out.stderr
