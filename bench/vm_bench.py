#!/usr/bin/env python3
"""Benchmark the agent's .deb in a real Debian guest under QEMU TCG, beside qemu-guest-agent.

One guest (scripts/guest_image.py's bookworm image with this checkout's package installed by
``dpkg -i``, and Debian's qemu-guest-agent; booted by scripts/qemu_guest.py with
``-accel tcg``, 2 vCPUs, 1 GiB) carries both agents, each on its own virtio-serial port whose
host side is a Unix socket. Figures (targets from the packaging issue):

* installed size: ``dpkg-query``'s Installed-Size of limiquantix-agent (``du`` of
  /usr/lib/limiquantix-agent beside it), target <= 25 MiB;
* announce latency: from the agent service's start in the guest (systemd's
  ``ExecMainStartTimestampMonotonic``, turned into the guest's wall clock in the guest) to the
  moment its ``agent_ready`` frame arrives on the host socket, where hostd reads it. The guest's
  clock is related to the host's with qemu-ga's ``guest-get-time`` (the sample with the shortest
  round trip of 20; error at most half of it, about 1 ms). Taken at the first boot (the agent's
  first start since ``dpkg -i`` in the image's chroot) and at ``--reboots`` reboots of the same
  guest: one boot is a noisy sample (the agent's start overlaps the rest of the boot on two
  emulated CPUs; single boots here range over about a second), so the figure is the median of
  all, target <= 3 s, with the slowest beside it; and after ``systemctl restart`` (median of
  ``--restarts``, for information);
* file read: one ``--file-mib`` MiB file of random bytes in the guest, read whole by our
  ``file_read`` (AgentClient, the client hostd uses, in the 4 MiB chunks hostd's ReadGuestFile
  asks for) and by qemu-ga's
  ``guest-file-open``/``guest-file-read`` (``count`` 1 MiB, as the issue measured)/``-close``
  (JSON + base64), alternating, best of ``--reps``; SHA-256 checked. Target ours >= 2x;
* ping median: our framing from a plain blocking client vs qemu-ga's ``guest-ping`` from the
  same kind of client (bench/agent_bench.py's clients), alternating blocks. Target ours <= qemu-ga.
  Our ping through AgentClient is shown for information.

Prints the table and writes ``bench/results/vm.json`` (bench/agent_bench.py's format: a list of
``{name, ours, baseline, unit, target, ratio, met}``). Missed targets are reported, not fatal;
errors exit 1. Needs root the first time (the image is built with debootstrap; about 2 minutes,
then cached).
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import trio
from agent_bench import (  # noqa: E402 - bench/ is not a package: found by file name
    FLOOR_IMPORTS,
    FLOOR_LOOP,
    QgaClient,
    QgaError,
    RawAgentClient,
    mb_per_s,
    ours_read,
    qga_ping,
    qga_read,
    qga_write,
    raw_ping,
)
from benchlib import BenchError, Figure, blocks, median, print_table, say, write_figures  # noqa: E402

from limiquantix.hostd._api import READ_CHUNK_BYTES
from limiquantix.protocol import AgentClient, FrameDecoder, errors, parse_frame
from limiquantix.protocol import __version__ as AGENT_VERSION
from limiquantix.protocol._gen import agent_pb2 as pb

REPO: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import guest_image  # noqa: E402 - scripts/ is not a package
from qemu_guest import QemuGuest  # noqa: E402

MiB: Final = 1024 * 1024
DEFAULT_OUTPUT: Final = REPO / "bench" / "results" / "vm.json"
BOOT_TIMEOUT_S: Final = 240.0
#: qemu-ga's guest-file-read count, as the issue measured its baseline.
QGA_COUNT: Final = 1 * MiB
GUEST_FILE: Final = "/var/tmp/lqx-bench.bin"
#: Run in the guest: the agent service's start as the guest's wall-clock time (seconds).
SERVICE_START_PY: Final = (
    "import subprocess,time;"
    "m=int(subprocess.check_output(['systemctl','show','-p','ExecMainStartTimestampMonotonic','--value',"
    "'limiquantix-agent']));"
    "print(repr(time.clock_gettime(time.CLOCK_REALTIME)-time.clock_gettime(time.CLOCK_MONOTONIC)+m/1e6))"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file-mib", type=int, default=32, help="size of the file read (default 32 MiB)")
    p.add_argument("--reps", type=int, default=5, help="file reads per agent, best kept (default 5)")
    p.add_argument("--pings", type=int, default=2000, help="pings per agent (default 2000)")
    p.add_argument("--restarts", type=int, default=3, help="service restarts timed (default 3)")
    p.add_argument("--reboots", type=int, default=6, help="reboots timed after the first boot (default 6)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return p.parse_args(argv)


# ------------------------------------------------------------------ qemu-ga helpers


def qga_connect(guest: QemuGuest, timeout: float) -> QgaClient:
    """A synced QgaClient once qemu-ga answers in the guest (it starts with the boot)."""
    deadline = time.monotonic() + timeout
    while True:
        client = QgaClient(guest.qga_socket)
        client.sock.settimeout(5)
        try:
            client.sync()
            client.sock.settimeout(120)
            return client
        except (OSError, QgaError, ValueError):
            client.close()
            if not guest.running() or time.monotonic() > deadline:
                raise BenchError(f"qemu-ga did not answer within {timeout:.0f} s:\n{guest.diagnostics()}") from None


def qga_sh(client: QgaClient, command: str, timeout: float = 60) -> str:
    """Run ``sh -c command`` with guest-exec; its stdout (fails on a non-zero exit)."""
    pid = client.call("guest-exec", path="/bin/sh", arg=["-c", command], **{"capture-output": True})["pid"]
    deadline = time.monotonic() + timeout
    while True:
        status = client.call("guest-exec-status", pid=pid)
        if status["exited"]:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"guest-exec {command!r} still running after {timeout:.0f} s")
        time.sleep(0.02)
    out = base64.b64decode(status.get("out-data", "")).decode()
    if status.get("exitcode") != 0:
        err = base64.b64decode(status.get("err-data", "")).decode()
        raise BenchError(f"guest-exec {command!r} exited {status.get('exitcode')}: {err}")
    return out


def guest_clock_offset(client: QgaClient, samples: int = 20) -> float:
    """Guest wall clock minus host wall clock (seconds), from the shortest guest-get-time round trip."""
    best: tuple[int, float] | None = None
    for _ in range(samples):
        t0 = time.time_ns()
        guest_ns = client.call("guest-get-time")
        t1 = time.time_ns()
        sample = (t1 - t0, (guest_ns - (t0 + t1) / 2) / 1e9)
        if best is None or sample[0] < best[0]:
            best = sample
    assert best is not None
    return best[1]


def service_started_host_time(client: QgaClient) -> float:
    """When the agent service (its current process) started, on the host's wall clock."""
    guest_start = float(qga_sh(client, f'python3 -c "{SERVICE_START_PY}"').strip())
    return guest_start - guest_clock_offset(client)


# -------------------------------------------------------------- announce timing


class AnnounceWatcher:
    """A raw connection to the agent's port that timestamps each ``agent_ready`` on arrival."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder()

    def close(self) -> None:
        self.sock.close()

    def next_ready(self, timeout: float) -> float:
        """Host wall-clock time at which the next agent_ready frame arrived."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no agent_ready within {timeout:.0f} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(256 * 1024)
            except TimeoutError:
                continue
            arrived = time.time()
            if not data:
                raise BenchError("QEMU closed the agent's socket")
            for frame in self.decoder.feed(data):
                try:
                    msg = parse_frame(frame)
                except errors.AgentError:
                    continue
                if msg.WhichOneof("payload") == "agent_ready":
                    return arrived


#: bench/agent_bench.py's floor responder on the guest's port, in the guest: the least a Python
#: agent can do per ping there (a blocking loop, no trio), with the packaged modules.
GUEST_FLOOR_PATH: Final = "/var/tmp/lqx-floor.py"
GUEST_FLOOR_READY: Final = "/run/lqx-floor.ready"
GUEST_FLOOR: Final = (
    "import sys\nsys.path.insert(0, '/usr/lib/limiquantix-agent')\n"
    + FLOOR_IMPORTS
    + f"fd = os.open('/dev/virtio-ports/org.limiquantix.agent.0', os.O_RDWR | os.O_NOCTTY)\n"
    f"open('{GUEST_FLOOR_READY}', 'w').close()\nWAIT_FOR_HOST = True\n" + FLOOR_LOOP
)


# ------------------------------------------------------------------ measurements


def measure_announce(guest: QemuGuest, restarts: int, reboots: int) -> tuple[list[float], list[float], QgaClient]:
    """Announce latencies at each boot (the first, then ``reboots`` reboots) and after
    ``restarts`` service restarts; and a qemu-ga client.

    The first boot is the first start of the agent after ``dpkg -i`` in the image's chroot;
    the others are later boots of the same guest. One boot is a noisy sample (our start-up
    overlaps the rest of the guest's boot on two emulated CPUs): the figure is their median.
    """
    watcher = AnnounceWatcher(guest.agent_socket)  # attached before the guest's agent starts
    try:
        boots = []
        ready = watcher.next_ready(BOOT_TIMEOUT_S)
        qga = qga_connect(guest, BOOT_TIMEOUT_S)
        boots.append(ready - service_started_host_time(qga))
        say(f"vm_bench: guest up {time.monotonic() - guest.started_at:.1f} s after QEMU started; "
            f"agent announced {boots[0]:.2f} s after its service started")  # fmt: skip
        samples = []
        for _ in range(restarts):
            qga.call("guest-exec", path="/bin/systemctl", arg=["restart", "limiquantix-agent.service"])
            ready = watcher.next_ready(60)
            samples.append(ready - service_started_host_time(qga))
        for n in range(1, reboots + 1):
            # guest-shutdown sends no answer on success: send it and reconnect after the reboot.
            qga.sock.sendall(b'{"execute": "guest-shutdown", "arguments": {"mode": "reboot"}}\n')
            qga.close()
            t0 = time.monotonic()
            ready = watcher.next_ready(BOOT_TIMEOUT_S)
            qga = qga_connect(guest, BOOT_TIMEOUT_S)
            boots.append(ready - service_started_host_time(qga))
            say(f"vm_bench: reboot {n} took {time.monotonic() - t0:.1f} s; "
                f"agent announced {boots[-1]:.2f} s after its service started")  # fmt: skip
        return boots, samples, qga
    finally:
        watcher.close()


async def measure_agent_client(guest: QemuGuest, qga: QgaClient, args: argparse.Namespace) -> dict[str, object]:
    """Installed size, file reads (alternating with qemu-ga's) and AgentClient pings."""
    out: dict[str, object] = {}
    with trio.fail_after(600):
        async with AgentClient.connect_unix(str(guest.agent_socket)) as client:

            async def sh(command: str) -> str:
                r = (
                    await client.request(execute=pb.ExecuteRequest(command=command, timeout_seconds=120))
                ).execute_response
                if r.exit_code != 0:
                    raise BenchError(f"{command!r} exited {r.exit_code}: {r.stderr.decode(errors='replace')}")
                return r.stdout.decode()

            out["installed_kib"] = int(await sh("dpkg-query -W -f '${Installed-Size}' limiquantix-agent"))
            out["du_kib"] = int((await sh("du -sk /usr/lib/limiquantix-agent")).split()[0])
            size = args.file_mib * MiB
            digest = await sh(f"head -c {size} /dev/urandom > {GUEST_FILE} && sha256sum {GUEST_FILE}")
            expect = bytes.fromhex(digest.split()[0])
            ours, theirs = [], []
            for _ in range(args.reps):
                ours.append(await ours_read(client, Path(GUEST_FILE), expect, READ_CHUNK_BYTES))
                theirs.append(await trio.to_thread.run_sync(qga_read, qga, Path(GUEST_FILE), QGA_COUNT, expect))
            out["read_ours"] = mb_per_s(size, min(ours))
            out["read_qga"] = mb_per_s(size, min(theirs))
            pings = []
            for _ in range(args.pings // 4):
                t0 = time.perf_counter_ns()
                await client.ping()
                pings.append((time.perf_counter_ns() - t0) / 1e3)
            out["ping_agentclient_us"] = median(pings)
            await sh(f"rm -f {GUEST_FILE}")
    return out


def measure_ping(guest: QemuGuest, qga: QgaClient, count: int) -> tuple[float, float]:
    """Median ping round trips (µs): our raw blocking client, qemu-ga's guest-ping; alternating."""
    raw = RawAgentClient(guest.agent_socket)
    try:
        raw.sock.settimeout(60)
        raw_ping(raw, 50)  # warm-up
        qga_ping(qga, 50)
        ours: list[float] = []
        theirs: list[float] = []
        for n in blocks(count, 10):
            ours += raw_ping(raw, n)
            theirs += qga_ping(qga, n)
        return median(ours), median(theirs)
    finally:
        raw.close()


def measure_floor_ping(guest: QemuGuest, qga: QgaClient, count: int) -> tuple[float, float]:
    """Median ping round trips (µs) of the Python floor responder in the guest, in place of our
    agent on its port (stopped meanwhile, started again after), and of qemu-ga; alternating."""
    qga_write(qga, Path(GUEST_FLOOR_PATH), GUEST_FLOOR.encode(), 1 * MiB)
    qga_sh(qga, f"systemctl stop limiquantix-agent.service; rm -f {GUEST_FLOOR_READY}")
    pid = qga.call("guest-exec", path="/usr/bin/python3", arg=["-I", "-S", GUEST_FLOOR_PATH])["pid"]
    try:
        qga_sh(qga, f"for i in $(seq 600); do [ -e {GUEST_FLOOR_READY} ] && exit 0; sleep 0.1; done; exit 1")
        return measure_ping(guest, qga, count)  # the floor answers on our port
    finally:
        qga_sh(qga, f"kill {pid} 2>/dev/null; systemctl start limiquantix-agent.service")


def run(args: argparse.Namespace) -> tuple[list[Figure], str]:
    image = guest_image.image_for_checkout()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lqx-vmb-") as tmp:
        guest = QemuGuest.start(image, Path(tmp) / "qemu")
        try:
            boots, restarts, qga = measure_announce(guest, args.restarts, args.reboots)
            try:
                r = trio.run(measure_agent_client, guest, qga, args)
                ping_ours, ping_qga = measure_ping(guest, qga, args.pings)
                ping_floor, ping_qga_floor = measure_floor_ping(guest, qga, args.pings // 2)
                qga_version = qga.call("guest-info")["version"]
            finally:
                qga.close()
        except BaseException:
            say(guest.diagnostics())
            raise
        finally:
            guest.stop()
    figures = [
        Figure("installed size (dpkg Installed-Size)", r["installed_kib"] / 1024, None, "MiB", "<= 25",  # type: ignore[operator]
               note=f"du -sk /usr/lib/limiquantix-agent: {r['du_kib'] / 1024:.1f} MiB"),  # type: ignore[operator]
        Figure(f"agent announced after its service started at boot, median of {len(boots)}", median(boots), None,
               "s", "<= 3", note="systemd's ExecMainStartTimestamp to agent_ready on the host socket; samples "
               + ", ".join(f"{b:.2f}" for b in boots) + " (the first: the first start after dpkg -i in the image's "
               "chroot, postinst byte-compiled the modules there; then reboots)"),
        Figure("agent announced at boot, slowest", max(boots), None, "s", None),
        Figure("agent announced after systemctl restart, median", median(restarts), None, "s", None,
               note="samples " + ", ".join(f"{s:.2f}" for s in restarts)),
        Figure(f"read a {args.file_mib} MiB file", r["read_ours"], r["read_qga"], "MB/s", "ratio >= 2",  # type: ignore[arg-type]
               note=f"qemu-ga guest-file-read count {QGA_COUNT // MiB} MiB; best of {args.reps}"),
        Figure("ping round trip, median (blocking clients)", ping_ours / 1e3, ping_qga / 1e3, "ms", "ratio <= 1"),
        Figure("ping through AgentClient (hostd's client), median", r["ping_agentclient_us"] / 1e3, None, "ms", None),  # type: ignore[operator]
        Figure("ping, the Python floor in the guest (blocking clients), median", ping_floor / 1e3,
               ping_qga_floor / 1e3, "ms", None,
               note="bench/agent_bench.py's floor responder (a blocking loop, no trio) on our port in place of the agent: "
                    "no Python implementation of our protocol answers faster"),
    ]  # fmt: skip
    context = (
        f"in one Debian 12 guest under qemu-system-x86_64 -accel tcg (2 vCPUs, 1 GiB), kernel "
        f"{image.kernel_release}; qemu-ga {qga_version}; each agent on its own virtio-serial port; "
        f"host load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end ({os.cpu_count()} CPUs)"
    )
    return [f.evaluate() for f in figures], context


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: QEMU stopped, temp dir removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        figures, context = run(args)
    except KeyboardInterrupt:
        print("vm_bench: interrupted", file=sys.stderr)
        return 130
    except (BenchError, QgaError, errors.AgentError, OSError, trio.TooSlowError, guest_image.GuestImageError) as exc:
        print(f"vm_bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print_table(figures, f"limiquantix-agent {AGENT_VERSION} vs qemu-ga", context, baseline="qemu-ga")
    write_figures(figures, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
