"""A real stack in processes, for tests that drive it from outside as an operator would
(the TUI through Textual's Pilot, the ``limiquantix`` command line as subprocesses).

A controller process (SQLite file), a hostd process registered with it, and simulated VMs
(real agents on ptys): :data:`VMS`, or one hostile guest (tests/hostile_guest.py).
:func:`run_stack` is the body of a test module's fixture.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from limiquantix.hostd.simvm import SimVMProcess

__all__ = ["DEADLINE_S", "VMS", "Stack", "free_port", "run_stack"]

VMS = ("web-1", "web-2", "victim")
DEADLINE_S = 30.0


def free_port() -> int:
    """A port the OS picks (closed again at once: the controller binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    tmp: Path
    port: int
    admin: str
    tokens: dict[str, str] = field(default_factory=dict)
    controller: subprocess.Popen[bytes] | None = None
    hostd: subprocess.Popen[bytes] | None = None
    sims: dict[str, SimVMProcess] = field(default_factory=dict)
    hostile: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.tmp / "controller.db"

    def _cli(self, *args: str) -> str:
        argv = [sys.executable, "-m", "limiquantix.controller", "--db", str(self.db), *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    def _wait_healthy(self, proc: subprocess.Popen[bytes], url: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{url} exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{url} not healthy after {DEADLINE_S} s")

    def start_controller(self) -> None:
        with open(self.tmp / "controller.log", "ab") as log:  # the child has its own copy of the descriptor
            self.controller = subprocess.Popen(
                [sys.executable, "-m", "limiquantix.controller", "serve", "--db", str(self.db),
                 "--listen", f"127.0.0.1:{self.port}", "--heartbeat-timeout-s", "3"],
                env={**os.environ, "LQX_ADMIN_TOKEN": self.admin}, stdout=log, stderr=log,
            )  # fmt: skip
        self._wait_healthy(self.controller, self.url)

    def stop_controller(self) -> None:
        assert self.controller is not None
        self.controller.send_signal(signal.SIGTERM)
        self.controller.wait(DEADLINE_S)

    def start(self, *, hostile_guest: str = "") -> None:
        """The controller, hostd and the simulated VMs of :data:`VMS`; or, with
        ``hostile_guest``, one VM of that id whose guest is tests/hostile_guest.py."""
        self.start_controller()
        for who, role in (("viewer", "viewer"), ("operator", "operator"), ("hostd", "node")):
            self.tokens[who] = self._cli("token", "create", "--user", who, "--role", role)
        vms_dir = self.tmp / "vms"
        vms_dir.mkdir()
        if hostile_guest:
            argv = [
                sys.executable,
                str(Path(__file__).with_name("hostile_guest.py")),
                "--socket",
                str(vms_dir / f"{hostile_guest}.agent.sock"),
            ]
            self.hostile = subprocess.Popen(argv)
        for vm in () if hostile_guest else VMS:
            self.sims[vm] = SimVMProcess.start(
                str(vms_dir / f"{vm}.agent.sock"),
                state_dir=self.tmp / "state" / vm,
                name=vm,
                log_level="warning",
                agent_args=["--telemetry-interval-s=0.5"],
            )
        hostd_port = free_port()
        (self.tmp / "hostd.token").write_text(secrets.token_urlsafe(24))
        (self.tmp / "node.token").write_text(self.tokens["hostd"])
        with open(self.tmp / "hostd.log", "ab") as log:  # the child has its own copy of the descriptor
            self.hostd = subprocess.Popen(
                [sys.executable, "-m", "limiquantix.hostd", "--listen", f"127.0.0.1:{hostd_port}",
                 "--token-file", str(self.tmp / "hostd.token"), "--node-id", "node-1",
                 "--socket-dir", str(vms_dir), "--libvirt-channel-root", "",
                 "--controller-url", self.url, "--controller-token-file", str(self.tmp / "node.token"),
                 "--heartbeat-interval-s", "0.3"],
                stdout=log, stderr=log,
            )  # fmt: skip
        self._wait_healthy(self.hostd, f"http://127.0.0.1:{hostd_port}")

    def stop(self) -> None:
        # The controller first, then the hostd it calls.
        for proc in (self.controller, self.hostd, self.hostile):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for sim in self.sims.values():
            sim.stop()


def run_stack(tmp_path_factory: pytest.TempPathFactory, **start: str) -> Iterator[Stack]:
    """A started :class:`Stack` (``start``: :meth:`Stack.start`'s arguments), stopped after."""
    # A short path: the simulated VMs' Unix sockets must fit in sun_path.
    tmp = Path(tmp_path_factory.mktemp("tui", numbered=True))
    st = Stack(tmp=tmp, port=free_port(), admin=secrets.token_urlsafe(32))
    try:
        st.start(**start)
        yield st
    finally:
        st.stop()
