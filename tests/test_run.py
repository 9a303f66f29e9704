"""`make run` works: the controller, hostd and three simulated VMs start, connect, answer, and stop cleanly."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from limiquantix.protocol.rpc import RpcClient

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_run_once(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}  # where the TUI's config is written
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), "--once",
         "--listen", f"127.0.0.1:{free_port()}", "--hostd-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "registered with the controller as node-1" in text
    # TLS end to end: the controller on https, hostd with mutual TLS, curl lines with the CA.
    assert "limiquantix-controller on https://127.0.0.1:" in text and "(mutual TLS)" in text
    assert "curl -s --cacert " in text and "http://" not in text
    assert "every agent connected" in text
    assert text.count(" connected ") >= 3
    assert "ExecuteScript web-1 uname -a → exit code 0" in text
    assert "ListVMs role=web → web-1, web-2" in text  # labelled: the README's --label examples find VMs
    assert "#3 line 3" in text
    assert "SHA-256 equal" in text
    assert "/etc/../etc/shadow → ReadGuestFile: invalid_argument" in text
    assert "exited with [0, 0]" in text
    assert "Traceback" not in out.stderr
    # The curl lines are in a file the output names (and the TUI's help shows), mode 0600.
    examples = tmp_path / "limiquantix" / "api-examples.sh"
    assert (
        str(examples) in text and "ExecuteScript" in examples.read_text() and examples.stat().st_mode & 0o777 == 0o600
    )
    tui = (tmp_path / "limiquantix" / "tui.toml").read_text()
    assert 'url = "https://' in tui and "token = " in tui and "ca_file = " in tui
    # The TUI reads it: the CA file it names is the one make run made (gone with its temp dir now).
    from limiquantix.protocol import ConfigError
    from limiquantix.tui import parse_args

    with pytest.raises(ConfigError, match="cannot read the CA file .*/pki/ca.pem"):
        parse_args(["--config", str(tmp_path / "limiquantix" / "tui.toml")], env={})
    assert (tmp_path / "limiquantix" / "tui.toml").stat().st_mode & 0o777 == 0o600


def test_the_vm_table_shows_guest_text_escaped() -> None:
    spec = importlib.util.spec_from_file_location("lqx_run_script", ROOT / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    evil = {"vmId": "evil", "nodeId": "n\x9b1m", "agentState": "connected", "agentVersion": "1\x1b[2J",
            "os": "\x1b]0;pwned\x07\u202eexe", "ipAddresses": ["10.0.0.1\x1b]52;c;eA==\x07"]}  # fmt: skip
    table = run.vm_table([evil])
    assert not any(raw in table for raw in ("\x1b]", "\x07", "\x9b", "\u202e", "\x1b[2J"))
    assert "\\x1b]0;pwned\\x07\\u202eexe" in table and "1\\x1b[2J" in table and "n\\x9b1m" in table


def _load_run() -> Any:
    spec = importlib.util.spec_from_file_location("lqx_run_script", ROOT / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_the_headless_view_redraws_in_place() -> None:
    """On a terminal each refresh goes up over the last table and clears it (it scrolled)."""
    run = _load_run()
    first, shown = run.redraw("12:00:00\nweb-1 connected\nweb-2 connected", 0)
    assert first == "12:00:00\nweb-1 connected\nweb-2 connected" and shown == 3
    second, shown = run.redraw("12:00:05\nweb-1 connected", shown)
    assert second == "\x1b[3F\x1b[J12:00:05\nweb-1 connected" and shown == 2


@pytest.mark.trio
async def test_the_headless_view_survives_a_controller_that_does_not_answer(autojump_clock: trio.abc.Clock) -> None:
    """A controller that accepts and never answers (like one stopped by SIGSTOP): one line says
    so and the next refresh is tried; nothing is raised (it ended the whole stack)."""
    run = _load_run()
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    async with RpcClient() as rpc:
        line = await run.live_update(run.Api(rpc, url, "token"))
        assert "did not answer within 10 s: not answering, retrying" in line
        # A refused connection (the controller gone): one line too.
        listener.close()
        line = await run.live_update(run.Api(rpc, url, "token"))
        assert "cannot refresh (" in line and "retrying" in line
