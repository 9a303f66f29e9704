"""`make run`: start the product on this machine and show it working.

Today the product that exists is the guest agent: this starts the real
``limiquantix-agent`` process on a local Unix socket (standing for the VM's
virtio-serial port), talks to it as hostd will (hello/sync, then requests),
shows its answers, and then follows its telemetry until Ctrl-C. It grows into
the whole stack (hostd, controller, TUI) as those are built.

    python scripts/run.py [--once] [--socket PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol.client import AgentClient

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5


# This agent runs on the machine itself, not in a VM: power and password
# requests go to stand-ins that only say what they would have done.
DEMO_CONFIG = """\
transport = "unix-listen"
log_level = "warning"
poweroff_command = ["echo", "[demo agent] would power off now:", "{message}"]
reboot_command = ["echo", "[demo agent] would reboot now:", "{message}"]
halt_command = ["echo", "[demo agent] would halt now:", "{message}"]
password_command = ["sh", "-c", "cut -d: -f1 | sed 's/^/[demo agent] would set the password of /'"]
password_expire_command = ["echo", "[demo agent] would expire the password of", "{user}"]
"""


def say(title: str, text: str = "") -> None:
    print(f"{BOLD}{title}{RESET} {text}".rstrip(), flush=True)


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


async def show(client: AgentClient, workdir: Path) -> None:
    ident = client.identity
    assert ident is not None
    say("agent", f"{ident.agent_version} (protocol {ident.protocol_version}, pid {ident.pid})")
    say("guest", f"{ident.os.pretty_name or ident.os.name}, kernel {ident.kernel} {ident.architecture}, host {ident.hostname}")
    addrs = [f"{n.name} {a.address}/{a.prefix_length}" for n in ident.interfaces for a in (*n.ipv4, *n.ipv6)]
    say("addresses", ", ".join(addrs) or "none")
    say("capabilities", " ".join(ident.capabilities))

    t0 = time.perf_counter()
    for _ in range(100):
        await client.ping()
    say("ping", f"{(time.perf_counter() - t0) * 1e4:.0f} µs per round trip (100 pings)")

    async def attempt(title: str, coro) -> None:  # type: ignore[no-untyped-def]
        try:
            await coro
        except errors.AgentError as exc:
            say(title, f"{RED}{exc.connect_code}{RESET}: {exc.message}")

    async def run_uname() -> None:
        r = (await client.request(execute=pb.ExecuteRequest(argv=["uname", "-a"]))).execute_response
        say("exec uname -a", f"→ exit {r.exit_code} in {r.duration_ms} ms: {r.stdout.decode().strip()}")

    async def run_stream() -> None:
        say("exec (streamed)", "for i in 1 2 3; do echo line $i; sleep 0.2; done")
        req = pb.ExecuteRequest(command="for i in 1 2 3; do echo line $i; sleep 0.2; done", stream=True)
        async for msg in client.stream(execute=req):
            if msg.HasField("execute_output"):
                print(f"   {DIM}#{msg.execute_output.seq}{RESET} {msg.execute_output.data.decode().rstrip()}", flush=True)
            else:
                say("   result", f"exit {msg.execute_response.exit_code}")

    async def files() -> None:
        data = os.urandom(3 * 1024 * 1024 + 17)
        target = str(workdir / "demo.bin")
        w = (await client.request(file_write=pb.FileWriteRequest(path=target, data=data, last=True))).file_write_response
        h = hashlib.sha256()
        async for msg in client.stream(file_read=pb.FileReadRequest(path=target)):
            h.update(msg.file_read_chunk.data)
            last = msg.file_read_chunk
        ok = w.sha256 == last.sha256 == h.digest() == hashlib.sha256(data).digest()
        verdict = f"{GREEN}SHA-256 equal{RESET}" if ok else f"{RED}SHA-256 MISMATCH{RESET}"
        say("files", f"wrote and read back {len(data)} bytes at {target}: {verdict} ({h.hexdigest()[:16]}…)")

    async def bad_path() -> None:
        await client.request(file_read=pb.FileReadRequest(path="/etc/../etc/shadow"))

    await attempt("exec uname -a", run_uname())
    await attempt("exec (streamed)", run_stream())
    await attempt("files", files())
    try:
        await bad_path()
        say("path check", f"{RED}/etc/../etc/shadow was read{RESET}")
    except errors.AgentError as exc:
        say("path check", f"/etc/../etc/shadow → {exc.connect_code}: {exc.message}")

    tel = (await client.request(get_telemetry=pb.TelemetryRequest())).telemetry_response
    say(
        "telemetry",
        f"cpu {tel.cpu_percent:.1f}% of {tel.cpu_count}, memory {gib(tel.memory.used_bytes)}/{gib(tel.memory.total_bytes)}, "
        f"load {tel.load1:.2f}, {tel.process_count} processes, {len(tel.filesystems)} filesystems",
    )


async def follow(client: AgentClient) -> None:
    say("following events", f"{DIM}(Ctrl-C to stop){RESET}")
    async for event in client.events:
        kind = event.WhichOneof("payload")
        if kind == "telemetry":
            t = event.telemetry
            print(
                f"  {time.strftime('%H:%M:%S')} telemetry: cpu {t.cpu_percent:5.1f}%  "
                f"mem {t.memory.percent:4.1f}%  load {t.load1:.2f}  procs {t.process_count}",
                flush=True,
            )
        else:
            print(f"  {time.strftime('%H:%M:%S')} {kind}", flush=True)


async def main_async(args: argparse.Namespace, socket: str, workdir: Path) -> None:
    with trio.fail_after(20):  # the agent process creates its socket when ready
        while not os.path.exists(socket):
            await trio.sleep(0.05)
    async with AgentClient.connect_unix(socket) as client:
        await show(client, workdir)
        if not args.once:
            print()
            say("try it yourself", f"limiquantix-agent-cli -s {socket} sh 'uptime'   (in another terminal)")
            await follow(client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="show the demo and exit (no event following)")
    parser.add_argument("--socket", help="socket path (default: in a temp dir)")
    parser.add_argument("--telemetry-interval-s", default="2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lqx-run-") as tmp:
        socket = args.socket or os.path.join(tmp, "agent.sock")
        config = Path(tmp) / "agent.toml"
        config.write_text(DEMO_CONFIG)
        say("starting", f"limiquantix-agent on {socket}")
        agent = subprocess.Popen(
            [sys.executable, "-m", "limiquantix.agent", "--config", str(config), "--socket", socket,
             "--telemetry-interval-s", args.telemetry_interval_s],
        )  # fmt: skip
        try:
            trio.run(main_async, args, socket, Path(tmp))
        except KeyboardInterrupt:
            print()
        finally:
            agent.send_signal(signal.SIGTERM)
            rc = agent.wait(10)
            say("stopped", f"agent exited with {rc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
