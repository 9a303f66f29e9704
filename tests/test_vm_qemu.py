"""The agent's .deb in a real Debian guest under QEMU, driven through hostd and the controller.

scripts/guest_image.py builds (or takes from its cache) a debootstrap'ed bookworm image with
this checkout's package installed by ``dpkg -i`` in a chroot; scripts/qemu_guest.py boots it
with ``qemu-system-x86_64 -accel tcg`` and the virtio-serial port ``org.limiquantix.agent.0``
on a Unix socket. A real ``limiquantix-controller serve`` and a real ``limiquantix-hostd``
(processes, OS-chosen ports, temp dirs) are started, hostd watching the socket's directory,
and everything below goes through the controller's HTTP API:

PingAgent and the guest's kernel, ExecuteScript ``uname -r``, WriteGuestFile + ReadGuestFile of
a few MiB (SHA-256 equal), telemetry with the guest's memory and address, hostd restarted while
the guest runs (reconnects), the guest rebooted (the agent comes back by itself), and
GuestShutdown (QEMU exits on its own).

Cold (no cached rootfs): debootstrap and the image take about 1.5-2 minutes, the whole test about
3; warm, about 60-75 s (the image is rebuilt, about 15 s, when the package's contents changed). The
boots take 15-30 s each under TCG. Needs root (debootstrap, chroot); installs its apt packages itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import guest_image  # noqa: E402 - scripts/ is not a package
from qemu_guest import QemuGuest  # noqa: E402

pytestmark = pytest.mark.slow

VM_ID = "deb-guest"
VM = "limiquantix.compute.v1.VMService"
#: A TCG boot takes about 30 s here; leave room for a loaded machine.
BOOT_TIMEOUT_S = 240
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], T | None], timeout: float, guest: QemuGuest | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if guest is not None and not guest.running():
            raise AssertionError(f"QEMU exited while waiting for {what}")
        try:
            value = check()
        except (httpx.TransportError, AssertionError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:.0f} s (last error: {last})")


class Stack:
    """The controller and hostd as real processes, hostd watching ``vms_dir``."""

    def __init__(self, tmp: Path, vms_dir: Path) -> None:
        self.tmp, self.vms_dir = tmp, vms_dir
        self.admin_token = secrets.token_urlsafe(24)
        self.hostd_token = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.hostd_listen = f"127.0.0.1:{free_port()}"
        self.db = tmp / "controller.db"
        self.client = httpx.Client(timeout=120)
        self.controller: subprocess.Popen[bytes] | None = None
        self.hostd: subprocess.Popen[bytes] | None = None
        self.node_token = ""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        try:
            return subprocess.Popen([sys.executable, *argv], stdout=log, stderr=log, env=env)
        finally:
            log.close()

    def _wait_healthy(self, url: str, proc: subprocess.Popen[bytes], name: str) -> None:
        def healthy() -> bool:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}: {self.log(name)}"
            return self.client.get(f"{url}/healthz").status_code == 200

        wait_for(f"{name} healthy", healthy, 60)

    def start_controller(self) -> None:
        self.controller = self._spawn(
            "controller",
            ["-m", "limiquantix.controller", "serve", "--db", str(self.db), "--listen", self.url.removeprefix("http://")],
            env={**os.environ, "LQX_ADMIN_TOKEN": self.admin_token},
        )
        self._wait_healthy(self.url, self.controller, "controller")
        self.node_token = subprocess.run(
            [sys.executable, "-m", "limiquantix.controller", "--db", str(self.db), "token", "create",
             "--user", "hostd", "--role", "node"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        token_file = self.tmp / "hostd.token"
        token_file.write_text(self.hostd_token + "\n")
        token_file.chmod(0o600)

    def start_hostd(self) -> None:
        self.hostd = self._spawn(
            "hostd",
            ["-m", "limiquantix.hostd", "--listen", self.hostd_listen, "--token-file", str(self.tmp / "hostd.token"),
             "--node-id", "node-qemu", "--socket-dir", str(self.vms_dir), "--libvirt-channel-root", "",
             "--controller-url", self.url, "--controller-token", self.node_token, "--heartbeat-interval-s", "1"],
        )  # fmt: skip
        self._wait_healthy(f"http://{self.hostd_listen}", self.hostd, "hostd")

    def stop_hostd(self) -> int:
        assert self.hostd is not None
        self.hostd.terminate()
        return self.hostd.wait(30)

    def close(self) -> None:
        for proc in (self.hostd, self.controller):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.client.close()

    def log(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def call(self, method: str, body: dict[str, Any], *, timeout: float = 120) -> dict[str, Any]:
        r = self.client.post(
            f"{self.url}/{VM}/{method}", json=body, headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=timeout,
        )  # fmt: skip
        assert r.status_code == 200, f"{method}: {r.status_code} {r.text}"
        return r.json()

    def vm(self) -> dict[str, Any] | None:
        vms = self.call("ListVMs", {}).get("vms", [])
        return next((v for v in vms if v["vmId"] == VM_ID), None)

    def wait_connected(self, timeout: float, guest: QemuGuest) -> dict[str, Any]:
        def connected() -> dict[str, Any] | None:
            vm = self.vm()
            return vm if vm and vm.get("agentState") == "connected" and vm.get("nodeReachable") else None

        return wait_for(f"{VM_ID} connected through the controller", connected, timeout, guest)


@pytest.fixture(scope="module")
def image() -> guest_image.GuestImage:
    if os.geteuid() != 0:
        pytest.skip("building the guest image needs root (debootstrap, chroot)")
    t0 = time.monotonic()
    built = guest_image.image_for_checkout()
    print(f"guest image ready in {time.monotonic() - t0:.0f} s: {built.disk}")
    return built


@pytest.fixture
def vm_stack(image: guest_image.GuestImage) -> Iterator[tuple[QemuGuest, Stack]]:
    with tempfile.TemporaryDirectory(prefix="lqx-vm-") as d:
        tmp = Path(d)
        vms_dir = tmp / "vms"
        vms_dir.mkdir()
        guest = QemuGuest.start(image, tmp / "qemu", agent_socket=vms_dir / f"{VM_ID}.agent.sock")
        stack = Stack(tmp, vms_dir)
        try:
            stack.start_controller()
            stack.start_hostd()
            yield guest, stack
        finally:
            # Captured: pytest shows it only when the test failed.
            print(guest.diagnostics())
            print(f"--- hostd log:\n{stack.log('hostd')}\n--- controller log:\n{stack.log('controller')}")
            guest.stop()
            stack.close()


def test_agent_in_a_real_qemu_guest(vm_stack: tuple[QemuGuest, Stack], image: guest_image.GuestImage) -> None:
    guest, stack = vm_stack
    t0 = time.monotonic()
    vm = stack.wait_connected(BOOT_TIMEOUT_S, guest)
    print(f"booted and connected in {time.monotonic() - t0:.1f} s")

    # PingAgent, the guest's kernel (from the agent's identity) and ExecuteScript uname -r.
    ping = stack.call("PingAgent", {"vmId": VM_ID})
    assert ping["connected"] is True and ping["version"], ping
    assert vm["kernel"] == image.kernel_release, vm
    assert "Debian GNU/Linux 12" in vm["os"], vm
    assert vm["hostname"] == guest_image.HOSTNAME
    run = stack.call("ExecuteScript", {"vmId": VM_ID, "command": "uname -r", "timeoutSeconds": 60})
    assert run.get("exitCode", 0) == 0 and run["stdout"].strip() == image.kernel_release, run
    run = stack.call("ExecuteScript", {"vmId": VM_ID, "command": "dpkg-query -W -f '${Status}' limiquantix-agent"})
    assert run["stdout"] == "install ok installed", run

    # WriteGuestFile then ReadGuestFile of a few MiB: SHA-256 equal.
    data = os.urandom(4 * 1024 * 1024 + 123)
    digest = hashlib.sha256(data).hexdigest()
    path = "/var/tmp/lqx-e2e/blob.bin"
    w = stack.call(
        "WriteGuestFile", {"vmId": VM_ID, "path": path, "content": base64.b64encode(data).decode(), "createParents": True}
    )
    assert w["sha256"] == digest and int(w["bytesWritten"]) == len(data), w
    r = stack.call("ReadGuestFile", {"vmId": VM_ID, "path": path})
    assert hashlib.sha256(base64.b64decode(r["content"])).hexdigest() == digest
    assert r["sha256"] == digest
    run = stack.call("ExecuteScript", {"vmId": VM_ID, "command": f"sha256sum {path}"})
    assert run["stdout"].split()[0] == digest, run

    # Telemetry: the guest's memory (QEMU gave it 1 GiB) and its address on QEMU's user network.
    def telemetry() -> dict[str, Any] | None:
        got = stack.call("GetVM", {"vmId": VM_ID})
        memory = got.get("telemetry", {}).get("memory", {})
        ok = int(memory.get("totalBytes", 0)) > 0 and "10.0.2.15" in got.get("ipAddresses", [])
        return got if ok else None

    got = wait_for("telemetry with memory and 10.0.2.15", telemetry, 60, guest)
    total = int(got["telemetry"]["memory"]["totalBytes"])
    assert 700 * 2**20 < total <= 1024 * 2**20, got["telemetry"]["memory"]
    assert got["memoryPercent"] > 0

    # hostd restarted while the guest runs: it reconnects (a new hello on QEMU's socket).
    assert stack.stop_hostd() == 0, stack.log("hostd")
    stack.start_hostd()
    # The controller's list may still show the old hostd's last heartbeat: ask the new one.
    wait_for("PingAgent connected through the new hostd", lambda: stack.call("PingAgent", {"vmId": VM_ID})["connected"],
             60, guest)  # fmt: skip
    stack.wait_connected(60, guest)

    # Reboot the guest: the agent comes back by itself (a new boot id), QEMU keeps running.
    def boot_id() -> str:
        return stack.call("ExecuteScript", {"vmId": VM_ID, "command": "cat /proc/sys/kernel/random/boot_id"})[
            "stdout"
        ].strip()

    first_boot = boot_id()
    assert stack.call("GuestShutdown", {"vmId": VM_ID, "reboot": True})["accepted"] is True
    t0 = time.monotonic()

    def rebooted() -> str | None:
        vm = stack.vm()
        if not vm or vm.get("agentState") != "connected":
            return None
        current = boot_id()
        return current if current and current != first_boot else None

    wait_for("the agent back after the reboot", rebooted, BOOT_TIMEOUT_S, guest)
    print(f"rebooted and reconnected in {time.monotonic() - t0:.1f} s")
    assert guest.running()

    # GuestShutdown (poweroff): QEMU exits on its own.
    assert stack.call("GuestShutdown", {"vmId": VM_ID})["accepted"] is True
    code = guest.wait_exit(120)
    assert code == 0, f"QEMU did not exit by itself after the poweroff (code {code})"
