"""`make run`: start the whole stack on this machine and show it working.

Starts the controller (``limiquantix-controller serve``, SQLite in a temp dir),
over HTTPS with a throwaway CA in the temp dir (``limiquantix-controller pki``'s
code: the controller's and hostd's certificates, and the client certificates of
mutual TLS between them), three simulated VMs (``limiquantix-simvm``: a pty standing for each VM's
virtio-serial port, the real ``limiquantix-agent`` on it, a Unix socket playing
QEMU's chardev) and ``limiquantix-hostd``, which registers with the controller
and heartbeats its VMs. It waits until every agent is connected, exercises the
controller's public API (the reference document's curl examples among it),
writes the controller URL, admin token and CA to ``~/.config/limiquantix/tui.toml``
(where ``limiquantix-tui`` will look), prints curl lines (``--cacert``) to try the API by hand,
and then runs ``limiquantix-tui`` connected to it; quitting the TUI stops the
stack (headless: a live VM table until Ctrl-C).

    python scripts/run.py [--once]

Environment: ``LQX_LISTEN`` (controller, default 127.0.0.1:8080),
``LQX_HOSTD_LISTEN`` (hostd, default 127.0.0.1:8081), ``LQX_ADMIN_TOKEN`` (the
admin token to create; default: a new one), ``LQX_HEADLESS=1`` (no TUI: a live
text table instead; also when the terminal is not interactive), ``VM=qemu`` (instead of the
simulated VMs, one real Debian guest under QEMU TCG with this checkout's .deb installed:
scripts/qemu_guest.py; the image is built on first use, about 2 minutes, then cached).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import trio
from google.protobuf import json_format

from limiquantix.controller import pki
from limiquantix.hostd.simvm import SimVMProcess
from limiquantix.protocol import TLSFiles, client_ssl_context, default_config_path, die_with_parent, errors, safe_text
from limiquantix.protocol._gen.vm_service_pb2 import ExecuteScriptResponse
from limiquantix.protocol.rpc import JSON, ClientTLS, RpcClient, Target
from limiquantix.tui import api_examples_path, exit_summary

#: VM=qemu: one real QEMU guest (scripts/qemu_guest.py) instead of three simulated VMs.
QEMU = os.environ.get("VM", "") == "qemu"
VMS = ("qemu-1",) if QEMU else ("web-1", "web-2", "db-1")
#: Each VM's labels (hostd's [[vm]] entries): the README's examples target VMs by label
#: (``limiquantix run --label role=web ...``, ListVMs ``{"labels": ...}``) and found none here.
LABELS: Final = {
    "web-1": {"role": "web", "env": "dev"},
    "web-2": {"role": "web", "env": "dev"},
    "db-1": {"role": "db", "env": "dev"},
    "qemu-1": {"role": "web", "env": "dev"},
}
VM_SERVICE = "limiquantix.compute.v1.VMService"
TTY = sys.stdout.isatty()
BOLD, DIM, GREEN, RED, YELLOW, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m") if TTY else ("",) * 6
)
#: Built packages (packaging/build-packages.sh), served by the controller under /downloads/.
DIST = Path(__file__).resolve().parent.parent / "dist"
#: Where limiquantix-tui looks for the controller's URL and token by default.
TUI_CONFIG = default_config_path()
#: Seconds between refreshes of the headless VM table, and the time one refresh may take.
LIVE_REFRESH_S = 5.0
LIVE_DEADLINE_S = 10.0


def say(title: str, text: str = "") -> None:
    print(f"{BOLD}{title}{RESET} {text}".rstrip(), flush=True)


def _exit_summary(result: dict[str, Any]) -> str:
    """The TUI's words for how a command ended, from an ExecuteScriptResponse in JSON."""
    return exit_summary(json_format.ParseDict(result, ExecuteScriptResponse(), ignore_unknown_fields=True))


class Api:
    """The controller's API through the rpc layer's one client (Connect JSON)."""

    def __init__(self, rpc: RpcClient, url: str, token: str) -> None:
        self.rpc = rpc
        self.target = Target(url=url, token=token, name="the controller")

    async def call(self, method: str, body: dict[str, Any], service: str = VM_SERVICE) -> dict[str, Any]:
        try:
            with trio.fail_after(60):
                data = await self.rpc.unary(self.target, f"{service}/{method}", json.dumps(body).encode(), codec=JSON)
        except errors.AgentError as exc:
            raise RuntimeError(f"{method}: {exc.connect_code}: {exc.message}") from None
        return json.loads(data)

    async def stream(
        self, method: str, body: dict[str, Any], service: str = VM_SERVICE
    ) -> AsyncIterator[dict[str, Any]]:
        """A server-streaming call's messages. Raises: RuntimeError: its error."""
        try:
            async for data in self.rpc.stream(
                self.target, f"{service}/{method}", json.dumps(body).encode(), codec=JSON
            ):
                yield json.loads(data)
        except errors.AgentError as exc:
            raise RuntimeError(f"{method}: {exc.connect_code}: {exc.message}") from None


def hostd_config(vms_dir: Path) -> str:
    """hostd's config file: one [[vm]] per VM, its socket in ``vms_dir`` and its labels."""
    lines = []
    for vm in VMS:
        labels = ", ".join(f"{key} = {json.dumps(value)}" for key, value in LABELS[vm].items())
        socket = json.dumps(str(vms_dir / f"{vm}.agent.sock"))  # a JSON string is a TOML basic string
        lines += ["[[vm]]", f'id = "{vm}"', f"socket = {socket}", f"labels = {{ {labels} }}", ""]
    return "\n".join(lines)


def vm_table(vms: list[dict[str, Any]]) -> str:
    """The VMs as a table; every value from the API through safe_text (a guest's OS name is data)."""
    lines = [f"  {'VM':<8} {'NODE':<10} {'AGENT STATE':<18} {'VERSION':<8} {'OS':<32} ADDRESSES"]
    for vm in vms:
        state = safe_text(vm.get("agentState", ""))
        colour = GREEN if state == "connected" else YELLOW
        addrs = safe_text(", ".join(vm.get("ipAddresses", [])[:2]) or "-")
        vm_id, node, version = (safe_text(vm.get(k) or "-") for k in ("vmId", "nodeId", "agentVersion"))
        lines.append(
            f"  {vm_id:<8} {node:<10} {colour}{state:<18}{RESET} {version:<8} "
            f"{safe_text(vm.get('os') or '-')[:32]:<32} {addrs}"
        )
    return "\n".join(lines)


def redraw(text: str, shown: int) -> tuple[str, int]:
    """What to print for the next headless view ``text`` when the last one took ``shown``
    lines (0: nothing to replace, as when stdout is not a terminal), and how many lines this
    one takes: on a terminal the table is redrawn in place (cursor up over the last one, the
    rest cleared), not scrolled."""
    return (f"\x1b[{shown}F\x1b[J" if shown else "") + text, text.count("\n") + 1


async def live_vms(api: Api) -> list[dict[str, Any]]:
    listed = (await api.call("ListVMs", {}))["vms"]
    return [await api.call("GetVM", {"vmId": vm["vmId"]}) for vm in listed]


async def live_update(api: Api) -> str:
    """The headless view's VM table, or one line saying why not: a slow or failed answer
    never ends the loop (it ended the whole stack with an ExceptionGroup traceback)."""
    try:
        with trio.fail_after(LIVE_DEADLINE_S):
            return vm_table(await live_vms(api))
    except trio.TooSlowError:
        return f"  {YELLOW}the controller did not answer within {LIVE_DEADLINE_S:g} s: not answering, retrying{RESET}"
    except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
        return f"  {YELLOW}cannot refresh ({safe_text(str(exc) or type(exc).__name__)}): retrying{RESET}"


async def demo(api: Api, workdir: Path) -> None:
    ping = await api.call("PingAgent", {"vmId": VMS[0]})
    say(
        f"PingAgent {VMS[0]}",
        f"→ connected={ping['connected']} version={safe_text(ping['version'])} in {ping['latencyMs']:.2f} ms",
    )

    r = await api.call("ExecuteScript", {"vmId": VMS[0], "command": "uname -a", "timeoutSeconds": 30})
    say(
        f"ExecuteScript {VMS[0]} uname -a",
        f"→ {_exit_summary(r)} in {r['durationMs']} ms: {safe_text(r['stdout'].strip(), multiline=True)}",
    )

    web = [vm["vmId"] for vm in (await api.call("ListVMs", {"labels": {"role": "web"}}))["vms"]]
    say("ListVMs role=web", f"→ {safe_text(', '.join(web) or 'none')}  {DIM}(labels: hostd's [[vm]] entries){RESET}")

    say(f"ExecuteScriptStream {VMS[-1]}", "for i in 1 2 3; do echo line $i; sleep 0.2; done")
    script = "for i in 1 2 3; do echo line $i; sleep 0.2; done"
    try:
        async for msg in api.stream("ExecuteScriptStream", {"vmId": VMS[-1], "command": script}):
            if "output" in msg:
                print(
                    f"   {DIM}#{msg['output']['seq']}{RESET} {safe_text(msg['output']['text'].rstrip(), multiline=True)}",
                    flush=True,
                )
            elif "result" in msg:
                say("   result", _exit_summary(msg["result"]))
    except RuntimeError as exc:
        say("   error", safe_text(str(exc)))

    data = os.urandom(3 * 1024 * 1024 + 17)
    target = str(workdir / "demo.bin")
    vm = VMS[1 % len(VMS)]
    w = await api.call(
        "WriteGuestFile",
        {"vmId": vm, "path": target, "content": base64.b64encode(data).decode(), "createParents": True},
    )  # the host's temp dir is new in a real guest
    r = await api.call("ReadGuestFile", {"vmId": vm, "path": target})
    ok = base64.b64decode(r["content"]) == data and w["sha256"] == hashlib.sha256(data).hexdigest()
    verdict = f"{GREEN}SHA-256 equal{RESET}" if ok else f"{RED}SHA-256 MISMATCH{RESET}"
    say(f"WriteGuestFile + ReadGuestFile {vm}", f"{len(data)} bytes: {verdict}")

    try:
        await api.call("ReadGuestFile", {"vmId": vm, "path": "/etc/../etc/shadow"})
        say("path check", f"{RED}/etc/../etc/shadow was read{RESET}")
    except RuntimeError as exc:
        say("path check", f"/etc/../etc/shadow → {safe_text(str(exc))}")


def _daemon_session() -> None:
    """In the controller, hostd and the simulated VMs before exec: a session of their own, so
    that Ctrl-C in the terminal (or a signal to make's process group) reaches only this script,
    which stops the stack in order (before, they got it too, and this script's SIGTERM then found
    them mid-shutdown and killed them); and SIGTERM if this script dies without stopping them."""
    os.setsid()
    die_with_parent(signal.SIGTERM)


async def wait_healthy(client: httpx.AsyncClient, url: str, proc: subprocess.Popen[bytes], name: str) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} (is its address in use?)")
        try:
            if (await client.get(f"{url}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await trio.sleep(0.1)


def start_qemu_guest(tmp: Path, agent_socket: Path) -> Any:
    """VM=qemu: build (or take from the cache) the guest image and boot it; see scripts/qemu_guest.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from guest_image import image_for_checkout
    from qemu_guest import QemuGuest

    say("building", "this checkout's .deb and its Debian guest image (cached; the first time takes about 2 minutes)")
    guest = QemuGuest.start(image_for_checkout(), tmp / "qemu", agent_socket=agent_socket)
    say("started", f"QEMU guest {VMS[0]} (pid {guest.pid}, TCG)  {DIM}(console {guest.console_log}){RESET}")
    return guest


def _write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, mode 0600 from the start (it holds the admin token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def write_tui_config(url: str, token: str, ca_file: Path) -> None:
    _write_private(
        TUI_CONFIG,
        f"# Written by make run: the stack it started (its CA is deleted when it stops).\n"
        f"url = {json.dumps(url)}\ntoken = {json.dumps(token)}\nca_file = {json.dumps(str(ca_file))}\n",
    )


def write_api_examples(url: str, token: str, ca: Path) -> Path:
    """curl lines to try the API by hand, in a file (mode 0600: it holds the admin token)
    the TUI's help names: printed under the TUI, they scrolled away unseen."""
    lines = ["# Written by make run: curl lines for the stack it started (the reference document's examples)."]
    for body in (f'{{"vmId": "{VMS[0]}"}}', f'{{"vmId": "{VMS[0]}", "command": "uname -a", "timeoutSeconds": 30}}'):
        method = "PingAgent" if "command" not in body else "ExecuteScript"
        lines.append(f"curl -s --cacert {ca} -X POST {url}/{VM_SERVICE}/{method} \\\n"
                     f"     -H 'Authorization: Bearer {token}' \\\n"
                     f"     -H 'Content-Type: application/json' -d '{body}'")  # fmt: skip
    lines.append(f"curl -s --cacert {ca} {url}/metrics -H 'Authorization: Bearer {token}' | grep lqx_controller")
    path = api_examples_path()
    _write_private(path, "\n".join(lines) + "\n")
    return path


def make_pki(directory: Path, *addresses: str) -> Path:
    """A throwaway CA and every certificate the stack needs; returns the directory.

    Server certificates name this host, localhost, 127.0.0.1, ::1 and the hosts of ``addresses``
    (``host:port``), so that the printed curl lines verify whichever the stack listens on.
    """
    dns, ips = pki.default_server_names()
    for address in addresses:
        host = address.rpartition(":")[0].strip("[]")
        if not host or host in ("0.0.0.0", "::"):
            continue
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            dns.append(host)
    names = {"dns_names": list(dict.fromkeys(dns)), "ip_addresses": list(dict.fromkeys(ips))}
    pki.create_ca(directory, common_name="LimiQuantix make run CA")
    pki.issue(directory, "controller", pki.CertKind.SERVER, **names)
    pki.issue(directory, "hostd", pki.CertKind.SERVER, **names)
    pki.issue(directory, "controller-client", pki.CertKind.CLIENT)
    pki.issue(directory, "node-1-client", pki.CertKind.CLIENT, common_name="node-1")
    return directory


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    admin_token = os.environ.get("LQX_ADMIN_TOKEN") or secrets.token_urlsafe(32)
    db = tmp / "controller.db"
    certs = make_pki(tmp / "pki", args.listen, args.hostd_listen)
    ca = certs / "ca.pem"
    controller = subprocess.Popen(
        [sys.executable, "-m", "limiquantix.controller", "serve", "--db", str(db), "--listen", args.listen,
         "--log-level", "warning", "--downloads-dir", str(DIST),
         "--tls-cert-file", str(certs / "controller.pem"), "--tls-key-file", str(certs / "controller.key"),
         "--tls-client-ca-file", str(ca), "--node-ca-file", str(ca), "--node-cert-file", str(certs / "controller-client.pem"),
         "--node-key-file", str(certs / "controller-client.key")],
        env={**os.environ, "LQX_ADMIN_TOKEN": admin_token}, stdout=subprocess.DEVNULL, preexec_fn=_daemon_session,
    )  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = [controller]
    sims: list[Any] = []  # SimVMProcess, or VM=qemu's QemuGuest: both have stop()
    url = f"https://{args.listen}"
    # This script checks hostd's /healthz too: hostd requires a client certificate (mutual TLS).
    verify = client_ssl_context(
        TLSFiles(
            ca_file=str(ca),
            cert_file=str(certs / "controller-client.pem"),
            key_file=str(certs / "controller-client.key"),
        )
    )
    try:
        async with (
            httpx.AsyncClient(timeout=60, verify=verify) as client,
            RpcClient(tls=ClientTLS(verify=verify)) as rpc,
        ):
            with trio.fail_after(60):
                await wait_healthy(client, url, controller, "the controller")
            say(
                "started",
                f"limiquantix-controller on {url}  {DIM}(database {db}; TLS with the throwaway CA {ca}){RESET}",
            )
            node_token = subprocess.run(
                [sys.executable, "-m", "limiquantix.controller", "--db", str(db), "token", "create",
                 "--user", "hostd", "--role", "node", "--description", "make run's hostd"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            hostd_token = secrets.token_urlsafe(24)
            for name, secret in (("hostd.token", hostd_token), ("node.token", node_token)):
                # Tokens go to hostd in files: a command line is visible to every user in ps.
                (tmp / name).write_text(secret + "\n")
                (tmp / name).chmod(0o600)
            vms_dir = tmp / "vms"
            vms_dir.mkdir()
            (tmp / "hostd.toml").write_text(hostd_config(vms_dir))
            if QEMU:
                sims.append(start_qemu_guest(tmp, vms_dir / f"{VMS[0]}.agent.sock"))
            else:
                for vm in VMS:
                    state = tmp / "state" / vm
                    sims.append(SimVMProcess.start(str(vms_dir / f"{vm}.agent.sock"), state_dir=state, name=vm,
                                                   log_level="warning", preexec_fn=_daemon_session))  # fmt: skip
                say("started", f"{len(sims)} simulated VMs: {', '.join(VMS)}  {DIM}(state in {tmp}/state){RESET}")
            hostd = subprocess.Popen(
                [sys.executable, "-m", "limiquantix.hostd", "--config", str(tmp / "hostd.toml"), "--listen", args.hostd_listen,
                 "--token-file", str(tmp / "hostd.token"), "--node-id", "node-1",
                 "--socket-dir", str(vms_dir), "--libvirt-channel-root", "", "--log-level", "warning",
                 "--controller-url", url, "--controller-token-file", str(tmp / "node.token"), "--heartbeat-interval-s", "2",
                 "--tls-cert-file", str(certs / "hostd.pem"), "--tls-key-file", str(certs / "hostd.key"),
                 "--tls-client-ca-file", str(ca), "--controller-ca-file", str(ca),
                 "--controller-cert-file", str(certs / "node-1-client.pem"),
                 "--controller-key-file", str(certs / "node-1-client.key")],
                preexec_fn=_daemon_session,
            )  # fmt: skip
            procs.append(hostd)
            api = Api(rpc, url, admin_token)
            with trio.fail_after(300 if QEMU else 90):  # a TCG boot takes about 30 s
                await wait_healthy(client, f"https://{args.hostd_listen}", hostd, "hostd")
                say(
                    "started",
                    f"limiquantix-hostd on https://{args.hostd_listen} (mutual TLS), registered with the controller as node-1",
                )
                while True:
                    vms = (await api.call("ListVMs", {}))["vms"]
                    if len(vms) == len(VMS) and all(v.get("agentState") == "connected" for v in vms):
                        break
                    await trio.sleep(0.2)
            write_tui_config(url, admin_token, ca)
            say("controller", f"{url}   admin token {BOLD}{admin_token}{RESET}   {DIM}(also in {TUI_CONFIG}){RESET}")
            say("VMs", "every agent connected:")
            print(vm_table(await live_vms(api)), flush=True)
            await demo(api, tmp)
            print()
            examples = write_api_examples(url, admin_token, ca)
            say(
                "try the API yourself",
                f"(in another terminal, while this runs; the reference document's examples): {examples}",
            )
            print(examples.read_text(), end="", flush=True)
            if args.once:
                return
            if TTY and sys.stdin.isatty() and not os.environ.get("LQX_HEADLESS"):
                say("tui", f"starting limiquantix-tui {DIM}(q or ctrl+q quits it and stops the stack; "
                    f"LQX_HEADLESS=1 make run keeps this text view){RESET}")  # fmt: skip
                await trio.run_process(
                    [sys.executable, "-m", "limiquantix.tui", "--config", str(TUI_CONFIG)], stdin=None, check=False
                )
                return
            print()
            say("live", f"{DIM}(refreshed every {LIVE_REFRESH_S:g} s; Ctrl-C to stop){RESET}")
            shown = 0
            while True:
                await trio.sleep(LIVE_REFRESH_S)
                text = f"{DIM}{time.strftime('%H:%M:%S')}{RESET}\n{await live_update(api)}"
                out, shown = redraw(text, shown if TTY else 0)
                print(out, flush=True)
    finally:
        # hostd first (its last heartbeat still finds the controller), then the VMs, then the controller.
        codes = []
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                codes.append(proc.wait(15))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
            if proc is procs[-1]:
                for sim in sims:
                    sim.stop()
        say("stopped", f"hostd and the controller exited with {codes}; simulated VMs stopped")


async def until_terminated(args: argparse.Namespace, tmp: Path) -> None:
    """main_async, ended by SIGTERM or SIGHUP like by Ctrl-C: the stack it started is stopped."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        async def run() -> None:
            await main_async(args, tmp)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="show the demo and exit")
    parser.add_argument(
        "--listen", default=os.environ.get("LQX_LISTEN", "127.0.0.1:8080"), help="the controller's address"
    )
    parser.add_argument("--hostd-listen", default=os.environ.get("LQX_HOSTD_LISTEN", "127.0.0.1:8081"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lqx-run-") as tmp:
        try:
            trio.run(until_terminated, args, Path(tmp))
        except RuntimeError as exc:
            print(f"{RED}make run: {safe_text(str(exc))}{RESET}", file=sys.stderr)
            return 1
        except BaseException as exc:  # Ctrl-C arrives inside the nursery's exception group
            if not all(isinstance(leaf, KeyboardInterrupt) for leaf in errors.leaves(exc)):
                raise
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
