"""A real Debian guest under QEMU (TCG) with the agent's .deb installed: boot, inspect, stop.

Used by ``make run VM=qemu`` (scripts/run.py), the end-to-end test (tests/test_vm_qemu.py) and
the VM benchmark (bench/vm_bench.py)::

    image = guest_image.image_for_checkout()          # built or taken from the cache
    guest = QemuGuest.start(image, workdir, agent_socket=vms_dir / "vm-1.agent.sock")
    ...                                                # hostd connects to agent_socket
    guest.stop()

The guest gets two virtio-serial ports, each on a Unix socket where QEMU listens
(``server=on,wait=off``, the way hostd expects it): ``org.limiquantix.agent.0`` on
``agent_socket`` and ``org.qemu.guest_agent.0`` on ``<workdir>/qga.sock`` (Debian's
qemu-guest-agent, the benchmarks' baseline). Also a QMP socket (``<workdir>/qmp.sock``), the
serial console in ``<workdir>/console.log`` and user networking (the guest gets 10.0.2.15 by
DHCP). The disk is a qcow2 overlay in ``workdir`` on the cached raw image, so the cache is never
written to. Reboots stay inside QEMU (no ``-no-reboot``); a poweroff in the guest makes QEMU exit.

Run alone, it boots the checkout's image and waits for Ctrl-C::

    python scripts/qemu_guest.py [--socket PATH] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import guest_image  # noqa: E402 - a sibling script, found by file name
from guest_image import GuestImage  # noqa: E402

from limiquantix.protocol import die_with_parent  # noqa: E402

AGENT_PORT = "org.limiquantix.agent.0"
QGA_PORT = "org.qemu.guest_agent.0"
#: Kernel command line: root on the virtio disk, console on the first serial port.
CMDLINE = "root=/dev/vda rw console=ttyS0,115200 mitigations=off quiet loglevel=4 systemd.show_status=1"


class QemuError(Exception):
    """QEMU could not be started, or exited when it should not have."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL QEMU if whoever started it dies without stopping it."""
    die_with_parent(signal.SIGKILL)


class QemuGuest:
    """One running ``qemu-system-x86_64 -accel tcg`` guest (see the module docstring)."""

    def __init__(self, image: GuestImage, workdir: Path, agent_socket: Path, popen: subprocess.Popen[bytes]) -> None:
        self.image = image
        self.workdir = workdir
        self.agent_socket = agent_socket
        self.qga_socket = workdir / "qga.sock"
        self.qmp_socket = workdir / "qmp.sock"
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        self.popen = popen
        self.started_at = time.monotonic()

    @classmethod
    def start(
        cls,
        image: GuestImage,
        workdir: Path,
        *,
        agent_socket: Path | None = None,
        memory_mib: int = 1024,
        cpus: int = 2,
        extra_args: tuple[str, ...] = (),
    ) -> QemuGuest:
        """Create the overlay disk and start QEMU; returns once its sockets exist."""
        guest_image.ensure_tools(("qemu-system-x86_64", "qemu-img"))
        workdir.mkdir(parents=True, exist_ok=True)
        agent_socket = agent_socket or workdir / "agent.sock"
        for path in (workdir / "qga.sock", workdir / "qmp.sock", agent_socket):
            path.unlink(missing_ok=True)
            if len(os.fsencode(path)) > 107:
                raise QemuError(f"socket path too long for AF_UNIX (max 107 bytes): {path}")
        overlay = workdir / "disk.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(overlay)],
            check=True, capture_output=True,
        )  # fmt: skip
        argv = [
            guest_image.which("qemu-system-x86_64") or "qemu-system-x86_64",
            "-accel", "tcg", "-m", str(memory_mib), "-smp", str(cpus),
            "-display", "none", "-monitor", "none", "-nodefaults",
            "-serial", f"file:{workdir / 'console.log'}",
            "-qmp", f"unix:{workdir / 'qmp.sock'},server=on,wait=off",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", CMDLINE,
            "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
            "-device", "virtio-serial",
            "-chardev", f"socket,id=lqx,path={agent_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=lqx,name={AGENT_PORT}",
            "-chardev", f"socket,id=qga,path={workdir / 'qga.sock'},server=on,wait=off",
            "-device", f"virtserialport,chardev=qga,name={QGA_PORT}",
            *extra_args,
        ]  # fmt: skip
        with open(workdir / "qemu.log", "wb") as log:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent
            )
        guest = cls(image, workdir, agent_socket, popen)
        deadline = time.monotonic() + 30
        while not (agent_socket.exists() and guest.qga_socket.exists() and guest.qmp_socket.exists()):
            if popen.poll() is not None:
                raise QemuError(f"QEMU exited with {popen.returncode} at start:\n{guest.qemu_log_text()}")
            if time.monotonic() > deadline:
                guest.stop()
                raise QemuError(f"QEMU did not create its sockets within 30 s:\n{guest.qemu_log_text()}")
            time.sleep(0.02)
        return guest

    # ---------------------------------------------------------------- state

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """QEMU's exit code once it exits on its own within ``timeout`` seconds, else None."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def qemu_log_text(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace")
        except OSError:
            return ""

    def console_tail(self, lines: int = 60) -> str:
        """The end of the guest's serial console (boot messages, logins)."""
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        state = "running" if self.running() else f"exited with {self.popen.returncode}"
        return (
            f"QEMU {state}; console {self.console_log}:\n{self.console_tail()}\n"
            f"--- qemu.log:\n{self.qemu_log_text()[-2000:]}"
        )

    # ------------------------------------------------------------------ QMP

    def qmp(self, command: str, timeout: float = 10, **arguments: object) -> object:
        """One QMP command over the QMP socket (capabilities negotiated per call)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.qmp_socket))
            rfile = s.makefile("rb")
            json.loads(rfile.readline())  # greeting
            for cmd in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                s.sendall(json.dumps(cmd).encode() + b"\n")
                while True:
                    answer = json.loads(rfile.readline() or b"{}")
                    if "event" not in answer:
                        break
                if "error" in answer:
                    raise QemuError(f"QMP {cmd['execute']}: {answer['error']}")
            return answer.get("return")

    # ----------------------------------------------------------------- stop

    def stop(self, timeout: float = 10) -> int:
        """Stop QEMU at once (no guest shutdown): QMP ``quit``, then SIGTERM, then SIGKILL."""
        if self.running():
            with contextlib.suppress(OSError, QemuError, ValueError):
                self.qmp("quit", timeout=2)
            if self.wait_exit(timeout) is None:
                self.popen.terminate()
                if self.wait_exit(timeout) is None:
                    self.popen.kill()
        code = self.popen.wait()
        for path in (self.agent_socket, self.qga_socket, self.qmp_socket):
            path.unlink(missing_ok=True)
        (self.workdir / "disk.qcow2").unlink(missing_ok=True)
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, help="the agent port's socket (default: WORKDIR/agent.sock)")
    parser.add_argument("--workdir", type=Path, help="QEMU's files: overlay disk, sockets, console log")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop QEMU cleanly on SIGTERM too
    image = guest_image.image_for_checkout()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lqx-qemu-"))
    guest = QemuGuest.start(image, workdir, agent_socket=args.socket)
    print(f"QEMU pid {guest.pid}: agent port {guest.agent_socket}, qemu-ga {guest.qga_socket}, "
          f"QMP {guest.qmp_socket}, console {guest.console_log}; Ctrl-C stops it", flush=True)  # fmt: skip
    try:
        code = guest.popen.wait()
        print(f"QEMU exited with {code}")
    except KeyboardInterrupt:
        guest.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
