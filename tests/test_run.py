"""`make run` works: the demo starts a real agent, exercises it and stops it cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_demo_once() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), "--once"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "exec uname -a → exit 0" in text
    assert "SHA-256 equal" in text
    assert "/etc/../etc/shadow → invalid_argument" in text
    assert "agent exited with 0" in text
    assert "Traceback" not in out.stderr
