"""The agent's .deb in a real Debian guest under QEMU, driven through hostd and the controller.

scripts/guest_image.py builds (or takes from its cache) a debootstrap'ed bookworm image with
this checkout's package installed by ``dpkg -i`` in a chroot; scripts/qemu_guest.py boots it
with ``qemu-system-x86_64 -accel tcg`` and the virtio-serial port ``org.limiquantix.agent.0``
on a Unix socket. A real ``limiquantix-controller serve`` and a real ``limiquantix-hostd``
(processes, OS-chosen ports, temp dirs) are started, hostd watching the socket's directory,
and everything below goes through the controller's HTTP API:

PingAgent and the guest's kernel, ExecuteScript ``uname -r``, WriteGuestFile + ReadGuestFile of
a few MiB (SHA-256 equal), telemetry with the guest's memory and address, the cloud-init install
path for real (below), hostd restarted while the guest runs (reconnects), the guest rebooted (the
agent comes back by itself), and GuestShutdown (QEMU exits on its own).

The cloud-init path: the controller serves the .deb the image was built from (``--downloads-dir``)
and install-agent.sh under ``/downloads/``. Through qemu-ga's guest-exec (the agent is what is
being reinstalled, so it cannot be the tool): ``dpkg --purge limiquantix-agent``, the agent gone
as the controller sees it (``waiting_for_agent``: stopped by prerm, it said ``agent_stopping``); then install-agent.yaml's runcmd as written there, pointed at the
controller as the guest reaches it (QEMU's user network: 10.0.2.2 is the host's loopback). The
script exits 0, the agent is back and connected by itself (started by postinst on the running
systemd, before dpkg returned), and a second run says "already installed" and changes nothing
(same agent process, the package not downloaded again). Then ``dpkg -i`` of the same file over
itself (an upgrade's path): postinst restarts the agent, an edited agent.toml is kept.

Cold (no cached rootfs): debootstrap and the image take about 1.5-2 minutes, the whole test about
3-3.5; warm, about 75-90 s (the image is rebuilt, about 15 s, when the package's contents changed).
The boots take 15-30 s each under TCG. Needs root (debootstrap, chroot); installs its apt packages
itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
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

sys.path.insert(0, str(ROOT / "bench"))
from agent_bench import QgaClient, QgaError  # noqa: E402 - bench/ is not a package either

pytestmark = pytest.mark.slow

VM_ID = "deb-guest"
VM = "limiquantix.compute.v1.VMService"
#: A TCG boot takes about 30 s here; leave room for a loaded machine.
BOOT_TIMEOUT_S = 240
USER_DATA = ROOT / "packaging" / "cloud-init" / "install-agent.yaml"
#: The host's loopback as the guest reaches it on QEMU's user network.
HOST_FROM_GUEST = "10.0.2.2"
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

    def __init__(self, tmp: Path, vms_dir: Path, downloads_dir: Path) -> None:
        self.tmp, self.vms_dir, self.downloads_dir = tmp, vms_dir, downloads_dir
        self.admin_token = secrets.token_urlsafe(24)
        self.hostd_token = secrets.token_urlsafe(24)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
            ["-m", "limiquantix.controller", "serve", "--db", str(self.db), "--listen", self.url.removeprefix("http://"),
             "--downloads-dir", str(self.downloads_dir)],
            env={**os.environ, "LQX_ADMIN_TOKEN": self.admin_token},
        )  # fmt: skip
        self._wait_healthy(self.url, self.controller, "controller")
        self.node_token = subprocess.run(
            [sys.executable, "-m", "limiquantix.controller", "--db", str(self.db), "token", "create",
             "--user", "hostd", "--role", "node"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        token_file = self.tmp / "hostd.token"
        token_file.write_text(self.hostd_token + "\n")
        token_file.chmod(0o600)
        (self.tmp / "node.token").write_text(self.node_token + "\n")
        (self.tmp / "node.token").chmod(0o600)

    def start_hostd(self) -> None:
        self.hostd = self._spawn(
            "hostd",
            ["-m", "limiquantix.hostd", "--listen", self.hostd_listen, "--token-file", str(self.tmp / "hostd.token"),
             "--node-id", "node-qemu", "--socket-dir", str(self.vms_dir), "--libvirt-channel-root", "",
             "--controller-url", self.url, "--controller-token-file", str(self.tmp / "node.token"),
             "--heartbeat-interval-s", "1"],
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

    def downloads_sent(self) -> dict[str, float]:
        """The controller's ``lqx_controller_downloads_total`` counters, by file name."""
        r = self.client.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.admin_token}"})
        assert r.status_code == 200, r.text
        pattern = r'^lqx_controller_downloads_total\{file="([^"]+)"\} (\S+)$'
        return {m[1]: float(m[2]) for m in re.finditer(pattern, r.text, re.MULTILINE)}

    def vm(self) -> dict[str, Any] | None:
        vms = self.call("ListVMs", {}).get("vms", [])
        return next((v for v in vms if v["vmId"] == VM_ID), None)

    def wait_connected(self, timeout: float, guest: QemuGuest) -> dict[str, Any]:
        def connected() -> dict[str, Any] | None:
            vm = self.vm()
            return vm if vm and vm.get("agentState") == "connected" and vm.get("nodeReachable") else None

        return wait_for(f"{VM_ID} connected through the controller", connected, timeout, guest)


# ------------------------------------------------------------------ qemu-ga, for the reinstall


def qga_connect(guest: QemuGuest, timeout: float) -> QgaClient:
    """A synced client of Debian's qemu-ga in the guest (started at boot, beside our agent)."""

    def synced() -> QgaClient | None:
        client = QgaClient(guest.qga_socket)
        client.sock.settimeout(5)
        try:
            client.sync()
        except (OSError, QgaError, ValueError):
            client.close()
            return None
        client.sock.settimeout(60)
        return client

    return wait_for("qemu-ga answering guest-sync", synced, timeout, guest)


def guest_sh(qga: QgaClient, command: str, timeout: float = 120) -> tuple[int, str, str]:
    """``sh -c command`` in the guest with guest-exec: (exit code, stdout, stderr)."""
    pid = qga.call("guest-exec", path="/bin/sh", arg=["-c", command], **{"capture-output": True})["pid"]
    deadline = time.monotonic() + timeout
    while not (status := qga.call("guest-exec-status", pid=pid))["exited"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"guest-exec {command!r} still running after {timeout:.0f} s")
        time.sleep(0.1)
    out, err = (base64.b64decode(status.get(k, "")).decode(errors="replace") for k in ("out-data", "err-data"))
    # A signal leaves no exitcode (qemu-ga gives "signal" instead).
    return status.get("exitcode", 128 + status.get("signal", 0)), out, err


def guest_ok(qga: QgaClient, command: str, timeout: float = 120) -> str:
    code, out, err = guest_sh(qga, command, timeout)
    assert code == 0, f"guest: {command!r} exited {code}\n--- stdout:\n{out}\n--- stderr:\n{err}"
    return out


def user_data_runcmd(controller: str) -> str:
    """install-agent.yaml's runcmd entry (``[sh, -c, '...']``), aimed at ``controller`` (host:port)."""
    found = re.findall(r"^  - \[sh, -c, '(.+)'\]$", USER_DATA.read_text(), re.MULTILINE)
    assert len(found) == 1, f"expected one uncommented runcmd entry in {USER_DATA}: {found}"
    assert found[0].count("CONTROLLER:8080") == 2, found[0]
    return found[0].replace("CONTROLLER:8080", controller)


#: The agent service as systemd has it, and whether it was started before dpkg wrote its status
#: file for the last time (dpkg rewrites /var/lib/dpkg/status when it exits, after postinst ran; the
#: script's own ``systemctl enable --now`` only runs after apt-get returned).
SERVICE_STATE_PY = """
import os, subprocess, time
show = subprocess.run(["systemctl", "show", "limiquantix-agent.service", "-p", "MainPID,ActiveState,NRestarts,"
                       "UnitFileState,ExecMainStartTimestampMonotonic"], capture_output=True, text=True).stdout
props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
offset = time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
start_us = int(props.get("ExecMainStartTimestampMonotonic") or 0)
print(props.get("MainPID"), props.get("ActiveState"), props.get("NRestarts"), props.get("UnitFileState"), start_us,
      repr(offset + start_us / 1e6), repr(os.stat("/var/lib/dpkg/status").st_mtime))
"""


def service_state(qga: QgaClient) -> dict[str, Any]:
    """MainPID, ActiveState, NRestarts, UnitFileState, the main process's start (monotonic µs, and as
    wall-clock time) and /var/lib/dpkg/status's mtime, in the guest."""
    pid, active, restarts, enabled, start_us, started, dpkg_status = guest_ok(
        qga, f"python3 -c '{SERVICE_STATE_PY}'"
    ).split()
    return {"pid": int(pid), "active": active, "restarts": int(restarts), "enabled": enabled,
            "start_us": int(start_us), "started": float(started), "dpkg_status": float(dpkg_status)}  # fmt: skip


def reinstall_through_cloud_init(guest: QemuGuest, stack: Stack, image: guest_image.GuestImage) -> None:
    """Purge the package, then install-agent.yaml's runcmd in the guest, twice (see the module docstring)."""
    assert image.deb is not None
    qga = qga_connect(guest, 60)
    try:
        t0 = time.monotonic()
        guest_ok(qga, "dpkg --purge limiquantix-agent")
        code, out, _ = guest_sh(qga, "dpkg-query -W -f '${Status}' limiquantix-agent; ls -d /etc/limiquantix; "
                                     "systemctl is-active limiquantix-agent.service")  # fmt: skip
        assert "install ok installed" not in out and "/etc/limiquantix" not in out, out
        assert out.rstrip().endswith(("inactive", "unknown", "failed")), out

        def agent_gone() -> str | None:
            state = stack.call("GetVM", {"vmId": VM_ID})["agentState"]
            return state if state != "connected" else None

        state = wait_for("the purged agent no longer connected", agent_gone, 90, guest)
        print(f"purged; the controller says {state!r} after {time.monotonic() - t0:.1f} s")
        # prerm stopped it with SIGTERM: it said agent_stopping (missed pings would say unresponsive).
        assert state == "waiting_for_agent", state

        # install-agent.yaml's runcmd, as cloud-init runs it (sh -c, as root).
        runcmd = user_data_runcmd(f"{HOST_FROM_GUEST}:{stack.port}")
        t0 = time.monotonic()
        code, out, err = guest_sh(qga, runcmd, 300)
        print(f"--- runcmd {runcmd!r}: exit {code} in {time.monotonic() - t0:.1f} s\n"
              f"--- stdout:\n{out}--- stderr:\n{err}")  # fmt: skip
        assert code == 0, "install-agent.sh failed in the guest (output above)"
        assert f"install-agent: installing limiquantix-agent {deb_version(image)}" in out, out
        assert "limiquantix-agent.service enabled and started" in out, out
        assert f"install-agent: installed limiquantix-agent {deb_version(image)} ({image.deb.name})" in out, out
        assert guest_ok(qga, "dpkg-query -W -f '${Status}' limiquantix-agent") == "install ok installed"
        vm = stack.wait_connected(120, guest)
        print(f"the agent connected again {time.monotonic() - t0:.1f} s after the runcmd started")
        assert vm["agentVersion"] == deb_version(image), vm

        # Started by postinst (before dpkg finished), not by the script's own systemctl afterwards.
        service = service_state(qga)
        assert service["active"] == "active" and service["enabled"] == "enabled", service
        assert service["restarts"] == 0, service
        assert service["started"] < service["dpkg_status"], f"not started by postinst: {service}"
        identity = stack.call("GetVM", {"vmId": VM_ID})["identity"]
        assert identity["pid"] == service["pid"], (identity, service)
        assert stack.call("PingAgent", {"vmId": VM_ID})["connected"] is True
        sent = stack.downloads_sent()
        assert sent.get(image.deb.name) == 1 and sent.get("install-agent.sh") == 1, sent

        # A second run: "already installed", nothing downloaded, the same agent process.
        code, out, err = guest_sh(qga, runcmd, 300)
        print(f"--- runcmd again: exit {code}\n--- stdout:\n{out}--- stderr:\n{err}")
        assert code == 0, "the second run of install-agent.sh failed (output above)"
        assert f"limiquantix-agent {deb_version(image)} is already installed; nothing to do" in out, out
        assert "downloading" not in out, out
        again = service_state(qga)
        assert (again["pid"], again["start_us"], again["restarts"]) == (service["pid"], service["start_us"], 0), again
        identity_again = stack.call("GetVM", {"vmId": VM_ID})["identity"]
        assert identity_again["pid"] == identity["pid"], identity_again
        assert identity_again["agentStartedAt"] == identity["agentStartedAt"], identity_again
        sent = stack.downloads_sent()
        assert sent.get(image.deb.name) == 1 and sent.get("install-agent.sh") == 2, sent

        # An upgrade-style reinstall (dpkg -i of the same file over itself): postinst restarts the
        # agent on the running systemd, and an edited agent.toml (a conffile) is kept.
        marker = "# edited by tests/test_vm_qemu.py"
        t0 = time.monotonic()
        out = guest_ok(qga, f"echo '{marker}' >> /etc/limiquantix/agent.toml && "
                            f"curl -fsS -o /var/tmp/{image.deb.name} http://{HOST_FROM_GUEST}:{stack.port}/downloads/{image.deb.name} && "
                            f"dpkg -i /var/tmp/{image.deb.name} && rm /var/tmp/{image.deb.name}")  # fmt: skip
        assert f"Unpacking limiquantix-agent ({deb_version(image)}) over ({deb_version(image)})" in out, out
        restarted = service_state(qga)
        assert restarted["active"] == "active" and restarted["pid"] != service["pid"], (restarted, service)
        assert service["start_us"] < restarted["start_us"] and restarted["started"] < restarted["dpkg_status"], (
            restarted
        )
        assert guest_ok(qga, "tail -n 1 /etc/limiquantix/agent.toml").strip() == marker

        def new_agent_connected() -> dict[str, Any] | None:
            got = stack.call("GetVM", {"vmId": VM_ID})
            return got if got["agentState"] == "connected" and got["identity"]["pid"] == restarted["pid"] else None

        wait_for("the restarted agent connected", new_agent_connected, 120, guest)
        print(f"dpkg -i over itself: the agent restarted (pid {service['pid']} -> {restarted['pid']}) and "
              f"connected {time.monotonic() - t0:.1f} s after dpkg started")  # fmt: skip
    finally:
        qga.close()


def deb_version(image: guest_image.GuestImage) -> str:
    """The package's version, from its file name (limiquantix-agent_<version>_<arch>.deb)."""
    assert image.deb is not None
    return image.deb.name.split("_")[1]


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
        assert image.deb is not None, f"no .deb kept beside the image {image.disk}"
        guest = QemuGuest.start(image, tmp / "qemu", agent_socket=vms_dir / f"{VM_ID}.agent.sock")
        # The directory holds the .deb alone: what the controller serves under /downloads/.
        stack = Stack(tmp, vms_dir, image.deb.parent)
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
        "WriteGuestFile",
        {"vmId": VM_ID, "path": path, "content": base64.b64encode(data).decode(), "createParents": True},
    )
    assert w["sha256"] == digest and int(w["bytesWritten"]) == len(data), w
    r = stack.call("ReadGuestFile", {"vmId": VM_ID, "path": path, "length": len(data)})  # over the 4 MiB default
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

    # The cloud-init install path for real: purge, then install-agent.yaml's runcmd, twice.
    reinstall_through_cloud_init(guest, stack, image)

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
