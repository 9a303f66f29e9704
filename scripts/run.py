"""`make run`: start the product on this machine and show it working.

Starts three simulated VMs (``limiquantix-simvm``: a pty standing for each VM's
virtio-serial port, the real ``limiquantix-agent`` on it, a Unix socket server
playing QEMU's chardev) and ``limiquantix-hostd`` serving the node API over
them; waits until every VM's agent is connected, exercises the API as the
controller will, prints the curl lines to try it by hand, and then keeps a live
VM table on screen until Ctrl-C. It grows into the whole stack (controller,
TUI) as those are built.

    python scripts/run.py [--once] [--listen HOST:PORT]

``LQX_HOSTD_LISTEN`` sets the node API's address (default 127.0.0.1:8081).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from limiquantix.hostd.simvm import SimVMProcess

VMS = ("web-1", "web-2", "db-1")
SERVICE = "limiquantix.node.v1.NodeDaemonService"
TTY = sys.stdout.isatty()
BOLD, DIM, GREEN, RED, YELLOW, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m") if TTY else ("",) * 6
)


def say(title: str, text: str = "") -> None:
    print(f"{BOLD}{title}{RESET} {text}".rstrip(), flush=True)


class Api:
    def __init__(self, client: httpx.AsyncClient, url: str, token: str) -> None:
        self.client, self.url, self.token = client, url, token

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.post(
            f"{self.url}/{SERVICE}/{method}", json=body, headers={"Authorization": f"Bearer {self.token}"}
        )
        data = r.json()
        if r.status_code != 200:
            raise RuntimeError(f"{method}: {data.get('code')}: {data.get('message')}")
        return data


def state_name(vm: dict[str, Any]) -> str:
    return vm["agent"]["state"].removeprefix("AGENT_STATE_").lower()


def vm_table(vms: list[dict[str, Any]]) -> str:
    lines = [f"  {'VM':<8} {'STATE':<18} {'AGENT':<7} {'OS':<30} {'CPU':>6} {'MEM':>6}  ADDRESSES"]
    for vm in vms:
        agent = vm["agent"]
        ident = agent.get("identity") or {}
        tel = (vm.get("resourceUsage") or {}).get("telemetry") or {}
        state = state_name(vm)
        colour = GREEN if state == "connected" else YELLOW
        cpu = f"{tel['cpuPercent']:.1f}%" if tel.get("cpuPercent") is not None and tel else "-"
        mem = f"{tel['memory']['percent']:.1f}%" if tel.get("memory") else "-"
        os_name = (ident.get("os") or {}).get("prettyName", "-")
        addrs = ", ".join(agent.get("ipAddresses", [])[:2]) or "-"
        lines.append(
            f"  {vm['vmId']:<8} {colour}{state:<18}{RESET} {agent.get('version') or '-':<7} {os_name[:30]:<30} {cpu:>6} {mem:>6}  {addrs}"
        )
    return "\n".join(lines)


async def demo(api: Api, workdir: Path) -> None:
    ping = await api.call("PingAgent", {"vmId": "web-1"})
    say("PingAgent web-1", f"→ connected={ping['connected']} version={ping['version']} in {ping['latencyMs']:.2f} ms")

    r = await api.call("ExecuteInGuest", {"vmId": "web-1", "request": {"argv": ["uname", "-sr"]}})
    out = base64.b64decode(r["result"]["stdout"]).decode().strip()
    say("ExecuteInGuest web-1 uname -sr", f"→ exit {r['result']['exitCode']} in {r['result']['durationMs']} ms: {out}")

    say("ExecuteInGuestStream db-1", "for i in 1 2 3; do echo line $i; sleep 0.2; done")
    body = json.dumps({"vmId": "db-1", "request": {"command": "for i in 1 2 3; do echo line $i; sleep 0.2; done"}}).encode()
    async with api.client.stream(
        "POST",
        f"{api.url}/{SERVICE}/ExecuteInGuestStream",
        content=b"\x00" + len(body).to_bytes(4, "big") + body,  # one Connect envelope
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/connect+json"},
    ) as resp:
        buf = b""
        async for chunk in resp.aiter_raw():
            buf += chunk
            while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "big"):
                n = int.from_bytes(buf[1:5], "big")
                msg = json.loads(buf[5 : 5 + n])
                buf = buf[5 + n :]
                if "output" in msg:
                    text = base64.b64decode(msg["output"]["data"]).decode().rstrip()
                    print(f"   {DIM}#{msg['output']['seq']}{RESET} {text}", flush=True)
                elif "result" in msg:
                    say("   result", f"exit {msg['result'].get('exitCode', 0)}")

    data = os.urandom(3 * 1024 * 1024 + 17)
    target = str(workdir / "demo.bin")
    w = await api.call("WriteGuestFile", {"vmId": "web-2", "path": target, "content": base64.b64encode(data).decode()})
    r = await api.call("ReadGuestFile", {"vmId": "web-2", "path": target})
    ok = base64.b64decode(r["content"]) == data and base64.b64decode(w["sha256"]) == hashlib.sha256(data).digest()
    verdict = f"{GREEN}SHA-256 equal{RESET}" if ok else f"{RED}SHA-256 MISMATCH{RESET}"
    say("WriteGuestFile + ReadGuestFile web-2", f"{len(data)} bytes: {verdict}")

    try:
        await api.call("ReadGuestFile", {"vmId": "web-2", "path": "/etc/../etc/shadow"})
        say("path check", f"{RED}/etc/../etc/shadow was read{RESET}")
    except RuntimeError as exc:
        say("path check", f"/etc/../etc/shadow → {exc}")


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    token = secrets.token_urlsafe(24)
    token_file = tmp / "hostd.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    vms_dir = tmp / "vms"
    vms_dir.mkdir()
    sims = [
        SimVMProcess.start(str(vms_dir / f"{vm}.agent.sock"), state_dir=tmp / "state" / vm, name=vm, log_level="warning")
        for vm in VMS
    ]
    say("started", f"{len(sims)} simulated VMs: {', '.join(VMS)}  {DIM}(state in {tmp}/state){RESET}")
    hostd = subprocess.Popen(
        [sys.executable, "-m", "limiquantix.hostd", "--listen", args.listen, "--token-file", str(token_file),
         "--socket-dir", str(vms_dir), "--libvirt-channel-root", "", "--log-level", "warning"],
    )  # fmt: skip
    url = f"http://{args.listen}"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            api = Api(client, url, token)
            with trio.fail_after(60):
                while True:
                    if hostd.poll() is not None:
                        raise RuntimeError(f"hostd exited with {hostd.returncode} (is {args.listen} in use?)")
                    try:
                        if (await client.get(f"{url}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
                say("started", f"limiquantix-hostd on {url}")
                while True:
                    vms = (await api.call("ListVMs", {}))["vms"]
                    if len(vms) == len(VMS) and all(state_name(v) == "connected" for v in vms):
                        break
                    await trio.sleep(0.1)
            say("VMs", "every agent connected:")
            print(vm_table(vms), flush=True)
            await demo(api, tmp)
            print()
            say("try the node API yourself", "(in another terminal, while this runs):")
            print(f"  curl -s -X POST {url}/{SERVICE}/ListVMs -H 'Authorization: Bearer {token}' \\\n"
                  f"       -H 'Content-Type: application/json' -d '{{}}'")  # fmt: skip
            print(f"  curl -s -X POST {url}/{SERVICE}/ExecuteInGuest -H 'Authorization: Bearer {token}' \\\n"
                  f"       -H 'Content-Type: application/json' -d '{{\"vmId\": \"web-1\", \"request\": {{\"command\": \"uptime\"}}}}'")  # fmt: skip
            print(f"  curl -s {url}/metrics | grep lqx_hostd_vms")
            if args.once:
                return
            print()
            say("live", f"{DIM}(refreshed every 5 s; Ctrl-C to stop){RESET}")
            while True:
                await trio.sleep(5)
                vms = (await api.call("ListVMs", {}))["vms"]
                print(f"{DIM}{time.strftime('%H:%M:%S')}{RESET}\n{vm_table(vms)}", flush=True)
    finally:
        hostd.send_signal(signal.SIGTERM)
        for sim in sims:
            sim.stop()
        try:
            rc = hostd.wait(15)
        except subprocess.TimeoutExpired:
            hostd.kill()
            rc = hostd.wait()
        say("stopped", f"hostd exited with {rc}; simulated VMs stopped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="show the demo and exit")
    parser.add_argument("--listen", default=os.environ.get("LQX_HOSTD_LISTEN", "127.0.0.1:8081"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lqx-run-") as tmp:
        try:
            trio.run(main_async, args, Path(tmp))
        except KeyboardInterrupt:
            print()
        except RuntimeError as exc:
            print(f"{RED}make run: {exc}{RESET}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
