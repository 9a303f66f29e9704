"""limiquantix-agent-cli against a real agent process (or a hostile guest's socket).

The command line runs in the test's process (tests/inprocess.py: its ``main``, as its process
runs it); test_cli_unreachable_socket runs it as a real process."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import hostile_guest
from inprocess import run_main, run_main_bytes

from limiquantix.agent.cli import main


def cli(sock: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_main_bytes(main, "-s", sock, *args)


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
    out = subprocess.run(
        [sys.executable, "-m", "limiquantix.agent.cli", "-s", str(tmp_path / "nothing.sock"), "ping"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert b"unavailable: cannot connect" in out.stderr


def _on_a_terminal(sock: str, *args: str) -> bytes:
    """The CLI's stdout and stderr when both are a terminal (a pty), as the terminal receives them."""
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as terminal:  # what the process's stdout and stderr would be
            assert run_main_bytes(main, "-s", sock, *args, stdout=terminal, stderr=terminal).returncode == 0
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the writers are gone and the buffer is drained
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_guest_text_is_escaped_on_a_terminal_and_raw_in_a_pipe(short_tmp: Path) -> None:
    """A simulated guest (tests/hostile_guest.py) whose output, file and file names carry
    terminal attacks: escaped on a terminal, byte for byte into a pipe; names always escaped."""
    sock = str(short_tmp / "evil.sock")
    guest = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hostile_guest.py")), "--socket", sock])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert guest.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert cli(sock, "sh", "x").stdout == hostile_guest.TERMINAL_OUTPUT
        assert cli(sock, "cat", "/x").stdout == hostile_guest.TERMINAL_OUTPUT
        for args in (("sh", "x"), ("cat", "/x"), ("ls", "/x"), ("info",)):
            shown = _on_a_terminal(sock, *args).decode()
            assert not any(c in shown for c in "\x1b\x07\x9b\u202e\u2066"), (args, shown)
            if args[0] in ("sh", "cat"):
                assert "line 0: \\x1b]0;pwned\\x07" in shown and "line 5: \\u202e" in shown
            elif args[0] == "ls":
                assert "a\\x1b]0;pwned\\x07" in shown and "b\\u202etxt.exe" in shown
            else:
                assert "\\u001b]0;pwned\\u0007" in shown  # JSON's own escape
        listed = cli(sock, "ls", "/x").stdout.decode()
        assert "a\\x1b]0;pwned\\x07" in listed and "\x1b" not in listed
        failed = cli(sock, "stat", "/x")
        assert failed.returncode == 1 and b"\\x1b[2J" in failed.stderr and b"\x1b" not in failed.stderr
    finally:
        guest.terminate()
        guest.wait(30)


def test_help_has_no_rest_markup() -> None:
    """``literal`` quotes belong to docstrings, not to a terminal."""
    for args in (["exec", "--help"], ["sh", "--help"], ["--help"]):
        out = run_main(main, *args)
        assert out.returncode == 0 and out.stdout and "``" not in out.stdout, out.stdout
    assert "limiquantix-agent-cli: talk to one agent directly, like virsh" in " ".join(out.stdout.split())
