"""limiquantix-tui's start (tui/_start.py): WhoAmI and ListVMs are sent before Textual is
imported, and the app's first poll takes their answers; what the start leaves out of the
process stays out; a CA file that cannot be loaded is said before the terminal is taken; and
the real process, on a pty, shows a real controller's VMs.

The app tests run the real app and client against an ``httpx.MockTransport`` controller
(the test holds and releases its answers: nothing is timed); the last one is end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import os
import pty
import secrets
import select
import ssl
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inprocess import run_main
from procstack import DEADLINE_S, Stack, free_port

from limiquantix.protocol._gen import admin_pb2 as admin_pb
from limiquantix.protocol._gen import vm_service_pb2 as vm_pb
from limiquantix.tui import ControllerClient, LimiQuantixApp, TuiConfig, demo_data
from limiquantix.tui.__main__ import main
from limiquantix.tui._start import FirstPoll

WHOAMI = "/limiquantix.compute.v1.AdminService/WhoAmI"
LIST_VMS = "/limiquantix.compute.v1.VMService/ListVMs"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _proto(message: Any) -> httpx.Response:
    return httpx.Response(200, content=message.SerializeToString(), headers={"Content-Type": "application/proto"})


def _answer(path: str) -> httpx.Response:
    if path == WHOAMI:
        me = demo_data.ADMIN
        return _proto(admin_pb.WhoAmIResponse(user=me.user, role=me.role, permissions=sorted(me.permissions)))
    return _proto(vm_pb.ListVMsResponse(vms=demo_data.fleet(3)))


class Controller:
    """A MockTransport controller whose answers wait until the test releases them."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()
        self.refuse = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.path)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.url.path)
            raise
        if self.refuse:
            return httpx.Response(401, json={"code": "unauthenticated", "message": "token revoked"})
        return _answer(request.url.path)

    def client(self) -> ControllerClient:
        # insecure: controller.example is a MockTransport, no token leaves the process.
        return ControllerClient(demo_data.CONTROLLER_URL, "t", transport=httpx.MockTransport(self), insecure=True)


class NotedApp(LimiQuantixApp):
    """The real app; its notifications are also kept for the test to read."""

    notes: list[str]

    def notify(self, message: str, **kwargs: Any) -> None:
        self.__dict__.setdefault("notes", []).append(message)
        super().notify(message, **kwargs)


def _app(controller: Controller) -> tuple[NotedApp, FirstPoll]:
    client = controller.client()
    first = FirstPoll(client)  # as the start does, before the app exists
    # A refresh interval longer than the test: the only polls are the ones it makes.
    config = TuiConfig(url=demo_data.CONTROLLER_URL, token="t", refresh_s=3600, source="the test", insecure=True)
    return NotedApp(config, client=client, first_poll=first), first


@pytest.mark.anyio
@pytest.mark.usefixtures("quick_pilot", "shared_css")
async def test_the_first_poll_takes_the_answers_to_the_calls_sent_at_the_start() -> None:
    controller = Controller()
    app, _ = _app(controller)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        # Both calls went out at once (not WhoAmI, then ListVMs), before any answer.
        assert sorted(controller.asked) == sorted([WHOAMI, LIST_VMS])
        assert app.fleet.vms == {} and app.poll_started is not None
        controller.release.set()
        while app.poll_started is not None:  # the first poll, waiting for the held answers
            await pilot.pause()
        assert app.me is not None and app.me.user == demo_data.ADMIN.user
        assert sorted(app.fleet.vms) == sorted(vm.vm_id for vm in demo_data.fleet(3))
        assert app.controller_ok is True
        # The app's first poll asked nothing itself; the next one asks ListVMs alone.
        assert len(controller.asked) == 2
        await app.refresh_fleet()
        assert controller.asked[2:] == [LIST_VMS]


@pytest.mark.anyio
@pytest.mark.usefixtures("quick_pilot", "shared_css")
async def test_a_refused_token_at_the_start_is_reported_and_asked_again() -> None:
    controller = Controller()
    controller.refuse = True
    controller.release.set()
    app, _ = _app(controller)
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: unhandled.append(context))
    async with app.run_test(size=(120, 30)) as pilot:
        while app.controller_ok is None:
            await pilot.pause()
        assert app.controller_ok is False and app.me is None
        assert app.last_error is not None and app.last_error.code == "unauthenticated"
        assert [n for n in app.notes if "refused the token" in n and "the test" in n], app.notes
        # The next poll asks who the token is again, then the fleet.
        controller.refuse = False
        await app.refresh_fleet()
        assert controller.asked[2:] == [WHOAMI, LIST_VMS]
        assert app.controller_ok is True and len(app.fleet.vms) == 3
    # ListVMs' error, not taken once WhoAmI had failed, was retrieved (asyncio logs an
    # exception never retrieved when its task is collected).
    gc.collect()
    assert unhandled == []


@pytest.mark.anyio
@pytest.mark.usefixtures("quick_pilot", "shared_css")
async def test_quitting_before_the_first_answers_cancels_the_calls() -> None:
    controller = Controller()  # never released
    app, _ = _app(controller)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        assert sorted(controller.asked) == sorted([WHOAMI, LIST_VMS])
        await pilot.press("q")
    assert sorted(controller.cancelled) == sorted([WHOAMI, LIST_VMS])


def test_the_start_leaves_out_what_the_first_frame_does_not_need() -> None:
    """trio (httpcore's, for trio callers), httpx's command line (click, pygments) and the
    screens not shown first are not imported; trio is still importable afterwards."""
    code = (
        # The collector paused while the modules are imported, as the start does (_start.run).
        "import gc, json, sys\n"
        "gc.disable()\n"
        "from limiquantix.tui import _start\n"
        "_start.import_http_stack()\n"
        "import limiquantix.tui._app, limiquantix.tui.__main__\n"
        "loaded = sorted(sys.modules)\n"
        "import trio\n"
        "print(json.dumps([loaded, hasattr(trio, 'run')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, trio_imported_after = json.loads(out.stdout)
    loaded = set(names)
    assert {"httpx", "httpcore", "limiquantix.tui._app", "limiquantix.tui.screens.fleet"} <= loaded
    assert not {"trio", "click", "pygments", "httpx._main"} & loaded
    screens = ("vm", "runner", "audit", "files", "jobs", "dialogs")
    assert not {f"limiquantix.tui.screens.{name}" for name in screens} & loaded
    assert trio_imported_after


def test_a_plain_http_client_loads_no_ca_and_trusts_none() -> None:
    """The system's CAs are loaded for https only; the context httpx is given for plain
    http would refuse any server (verification on, nothing trusted)."""
    plain = ControllerClient("http://127.0.0.1:9", "t")
    verify = plain._rpc.tls.verify
    assert isinstance(verify, ssl.SSLContext)
    assert verify.verify_mode == ssl.CERT_REQUIRED and verify.check_hostname
    assert verify.cert_store_stats()["x509_ca"] == 0
    tls = ControllerClient("https://127.0.0.1:9", "t")._rpc.tls.verify
    assert isinstance(tls, ssl.SSLContext) and tls.verify_mode == ssl.CERT_REQUIRED


def test_a_ca_file_that_cannot_be_loaded_is_said_before_the_terminal_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``limiquantix-tui``'s main in this process (tests/inprocess.py; the process itself is
    test_the_real_process_shows_the_controllers_vms's): the app is never run, so the terminal
    is never taken (here an app run fails the test instead)."""
    token = tmp_path / "token"
    token.write_text("lqx_token\n")
    token.chmod(0o600)
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")

    async def takes_the_terminal(self: LimiQuantixApp, **_: Any) -> None:
        raise AssertionError("the app was run: the terminal would be taken")

    monkeypatch.setattr(LimiQuantixApp, "run_async", takes_the_terminal)
    collecting = gc.isenabled()
    try:
        proc = run_main(main, "--url", "https://127.0.0.1:9", "--token-file", str(token), "--ca-file", str(bad))
    finally:
        if collecting:  # the start pauses the collector until the app's first frame (never here)
            gc.enable()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"limiquantix-tui: cannot load the CA file {bad}"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# ----------------------------------------------------------------------------- the real process


@pytest.fixture
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A controller process, with a node registered through its API that reports two VMs."""
    stack = Stack(tmp=tmp_path_factory.mktemp("start"), port=free_port(), admin=secrets.token_urlsafe(32))
    try:
        stack.start_controller()
        node = stack._cli("token", "create", "--user", "node", "--role", "node")
        vms = [{"vmId": f"start-vm-{i}", "name": f"start-vm-{i}"} for i in (1, 2)]
        body = {"nodeId": "node-s", "url": "http://127.0.0.1:9", "token": "unused", "vms": vms}
        r = httpx.post(
            f"{stack.url}/limiquantix.compute.v1.NodeRegistryService/RegisterNode",
            json=body, headers={"Authorization": f"Bearer {node}"}, timeout=DEADLINE_S,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        yield stack
    finally:
        stack.stop()


def _read_until(fd: int, needle: bytes | None) -> bytes:
    """The pty's output up to ``needle`` (None: to its end, the child gone).

    Raises:
        AssertionError: not within DEADLINE_S, or the output ended first.
    """
    seen = b""
    deadline = time.monotonic() + DEADLINE_S
    while needle is None or needle not in seen:
        assert time.monotonic() < deadline, f"no {needle!r} within {DEADLINE_S} s: {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the pty
                chunk = b""
            if not chunk and needle is None:
                return seen
            assert chunk, f"the TUI ended before {needle!r}: {seen[-2000:]!r}"
            seen += chunk
    return seen


@pytest.mark.slow
def test_the_real_process_shows_the_controllers_vms(controller: Stack, tmp_path: Path) -> None:
    """``python -m limiquantix.tui`` on a 120x40 pty, as bench/tui_bench.py starts it: the
    rows come (the start's calls answered on asyncio, with trio hidden from httpcore), and
    ``q`` ends it with status 0."""
    token = tmp_path / "token"
    token.write_text(controller.admin + "\n")
    token.chmod(0o600)
    argv = [sys.executable, "-m", "limiquantix.tui", "--url", controller.url, "--token-file", str(token)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TERM": "xterm-256color",
           "LANG": "C.UTF-8", "XDG_CONFIG_HOME": str(tmp_path / "config")}  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    try:
        shown = _read_until(fd, b"start-vm-2")
        assert b"start-vm-1" in shown
        os.write(fd, b"q")
        _read_until(fd, None)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
