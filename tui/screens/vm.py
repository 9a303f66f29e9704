"""One VM: identity, interfaces, CPU / memory / network sparklines, filesystems,
capabilities; the script runner, files, power and password from here."""

from __future__ import annotations

import datetime
from collections import deque
from typing import Final

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.message import Message
from textual.widgets import Header, Static

from limiquantix.protocol import safe_text, uptime_text
from limiquantix.protocol._gen.vm_service_pb2 import VM

from .._client import ApiError
from .._format import age, bar, guest, human_bytes, state_text
from .._workers import run_async
from ..widgets.footer import KeysFooter
from ..widgets.graphs import Graphs
from .base import LqxScreen
from .dialogs import ConfirmDialog, PasswordDialog
from .files import FilesScreen
from .runner import RunnerScreen

__all__ = ["VMScreen"]

_NET_POINTS: Final = 150


def _kernel(release: str, arch: str) -> str:
    """The kernel release and architecture, once (RHEL's releases end with it already)."""
    return release if not arch or release.endswith(arch) else f"{release} {arch}"


class VMScreen(LqxScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("x", "run", "Script"),
        Binding("f", "files", "Files"),
        Binding("p", "power('poweroff')", "Off"),
        Binding("r", "power('reboot')", "Reboot"),
        Binding("w", "password", "Passwd"),
        Binding("g", "ping", "Ping"),
    ]
    ACTION_PERMISSIONS = {"run": "vm.exec", "files": "file.read", "power": "vm.power", "password": "vm.password_reset"}

    def __init__(self, vm_id: str) -> None:
        super().__init__()
        self.vm_id = vm_id
        self.detail: VM | None = None
        """The last GetVM answer shown."""
        self.rx: deque[float] = deque(maxlen=_NET_POINTS)
        self.tx: deque[float] = deque(maxlen=_NET_POINTS)
        self._last_counters: tuple[int, int, int] | None = None
        self._load_error = ""
        """The code of the last GetVM failure ("" after a success)."""

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="vm-body"):
            yield Static(id="vm-title")
            with Grid(id="vm-grid"):
                yield Static(id="vm-identity", classes="panel")
                yield Graphs(refresh_s=self.lqx.config.refresh_s, id="vm-graphs", classes="panel")
            yield Static(id="vm-filesystems", classes="panel")
            yield Static(id="vm-interfaces", classes="panel")
            yield Static(id="vm-capabilities", classes="panel")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.sub_title = self.vm_id
        self.fleet_updated()
        if self.lqx.poll:
            run_async(self, self.load, group="vm", exclusive=True)
            self.set_interval(self.lqx.config.refresh_s, lambda: run_async(self, self.load, group="vm", exclusive=True))

    class Loaded(Message, bubble=False):
        """A GetVM answer, drawn in the screen's message loop (a screen that is closing
        gets none: an answer landing while the app quits has nothing to draw into)."""

        def __init__(self, detail: VM) -> None:
            super().__init__()
            self.detail = detail

    def on_vmscreen_loaded(self, message: Loaded) -> None:
        self.show(message.detail)

    async def load(self) -> None:
        """GetVM: the live identity and telemetry from the VM's node."""
        try:
            detail = await self.lqx.client.get_vm(self.vm_id)
        except ApiError as exc:
            # Once per kind of failure, not at every refresh (the fleet poll reports
            # the controller itself being down).
            if exc.code != self._load_error and self.lqx.controller_ok is not False:
                if exc.code == "not_found":
                    self.notify(f"{self.vm_id} is gone from the inventory.", severity="warning")
                else:
                    self.lqx.report(exc, f"GetVM {self.vm_id}")
            self._load_error = exc.code
            if exc.code == "not_found" and self.app.screen is self:
                self.app.pop_screen()
            return
        self._load_error = ""
        self.post_message(self.Loaded(detail))

    # -- drawing ---------------------------------------------------------------------

    def fleet_updated(self) -> None:
        """Sparklines from the app's history (kept for every VM by the fleet poll)."""
        self._draw_graphs()
        if self.detail is None and self.vm_id in self.lqx.fleet.vms:
            self._draw_title(self.lqx.fleet.vms[self.vm_id])

    def _draw_graphs(self) -> None:
        """CPU and memory (0-100 %) from the app's history; network rates from GetVM."""
        hist = self.lqx.fleet.history.get(self.vm_id)
        self.query_one("#vm-graphs", Graphs).show(
            cpu=list(hist.cpu) if hist else [], memory=list(hist.memory) if hist else [], rx=self.rx, tx=self.tx
        )

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.lqx.clock(), datetime.timezone.utc)

    def _draw_title(self, vm: VM) -> None:
        title = guest(vm.name or self.vm_id, "bold")
        title.append(f"  ({safe_text(self.vm_id)})  ", style="dim")
        title.append_text(state_text(vm))
        node = safe_text(vm.node_id or "-")
        seen = age(vm.last_seen if vm.HasField("last_seen") else None, self._now())
        title.append(f"   node {node}   last seen {seen}", style="dim")
        if vm.state in ("off", "gone") and vm.HasField("last_reported"):
            title.append(f"\nlast reported by its node {age(vm.last_reported, self._now())}", style="dim")
        if vm.last_disconnect_reason and vm.agent_state != "connected":
            title.append(f"\nlast disconnect: {safe_text(vm.last_disconnect_reason)}", style="yellow")
        self.query_one("#vm-title", Static).update(title)

    def show(self, detail: VM) -> None:
        """Draw one GetVM answer (public so that tests can feed fixed data)."""
        self.detail = detail
        self._draw_title(detail)
        identity, telemetry = detail.identity, detail.telemetry
        live = detail.HasField("telemetry")
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        memory = telemetry.memory
        rows = [
            ("OS", identity.os.pretty_name or detail.os or "-"),
            ("Kernel", _kernel(identity.kernel or detail.kernel or "-", identity.architecture)),
            ("Hostname", identity.hostname or detail.hostname or "-"),
            ("Agent", f"{detail.agent_version or '-'} (Python {identity.python_version or '?'})"),
            ("Uptime", uptime_text(telemetry.uptime_seconds or detail.uptime_seconds)),
            ("Boot time", identity.boot_time.ToJsonString() if identity.HasField("boot_time") else "-"),
            ("CPUs", str(telemetry.cpu_count) if live else "-"),
            (
                "Memory",
                f"{human_bytes(memory.used_bytes)} of {human_bytes(memory.total_bytes)}"
                if telemetry.HasField("memory")
                else "-",
            ),
            ("Load", f"{telemetry.load1:.2f} {telemetry.load5:.2f} {telemetry.load15:.2f}" if live else "-"),
            ("Processes", str(telemetry.process_count) if live else "-"),
            ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(detail.labels.items())) or "-"),
        ]
        for key, value in rows:
            table.add_row(key, guest(value))  # never markup, controls shown: most values are the guest's
        self.query_one("#vm-identity", Static).update(table)

        fs = Table(title="Filesystems", title_justify="left", expand=True, box=None)
        for column in ("Mount", "Type", "Usage", "", "Size"):
            fs.add_column(column)
        for f in telemetry.filesystems:
            fs.add_row(
                guest(f.mountpoint),
                guest(f.fstype),
                bar(f.percent / 100),
                f"{f.percent:.0f}%",
                human_bytes(f.total_bytes),
            )
        if not telemetry.filesystems:
            fs.add_row("-", "", Text("no telemetry yet", style="dim"), "", "")
        self.query_one("#vm-filesystems", Static).update(fs)

        interfaces = telemetry.interfaces or identity.interfaces
        nics = Table(title="Interfaces", title_justify="left", expand=True, box=None)
        for column in ("Name", "MAC", "Addresses", "State", "RX", "TX"):
            nics.add_column(column)
        rx_total = tx_total = 0
        for nic in interfaces:
            addresses = [f"{a.address}/{a.prefix_length}" for a in [*nic.ipv4, *nic.ipv6]]
            rx, tx = nic.rx_bytes, nic.tx_bytes
            rx_total, tx_total = rx_total + rx, tx_total + tx
            nics.add_row(
                guest(nic.name),
                guest(nic.mac or "-"),
                Text("\n".join(map(safe_text, addresses)) or "-"),
                Text("up", style="green") if nic.up else Text("down", style="red"),
                human_bytes(rx),
                human_bytes(tx),
            )
        self.query_one("#vm-interfaces", Static).update(nics)
        if telemetry.HasField("collected_at"):
            self._network_rates(telemetry.collected_at.ToNanoseconds(), rx_total, tx_total)

        caps = identity.capabilities
        disabled = set(identity.disabled_capabilities)
        text = Text("Capabilities  ", style="bold cyan")
        for cap in caps:
            text.append(safe_text(cap) + " ", style="strike dim" if cap in disabled else "")
        if disabled:
            shown = ", ".join(map(safe_text, sorted(disabled)))
            text.append(f"\n(struck out: disabled by the agent's config: {shown})", style="dim")
        self.query_one("#vm-capabilities", Static).update(text)

    def _network_rates(self, collected_ns: int, rx: int, tx: int) -> None:
        """RX / TX bytes per second between two telemetry reports (``collected_ns``: when this one was)."""
        if self._last_counters is not None and self._last_counters[0] != collected_ns:
            seconds = (collected_ns - self._last_counters[0]) / 1e9
            if seconds > 0:
                self.rx.append(max(0.0, (rx - self._last_counters[1]) / seconds))
                self.tx.append(max(0.0, (tx - self._last_counters[2]) / seconds))
                self._draw_graphs()
        if self._last_counters is None or self._last_counters[0] != collected_ns:
            self._last_counters = (collected_ns, rx, tx)

    # -- actions ---------------------------------------------------------------------

    def action_run(self) -> None:
        self.app.push_screen(RunnerScreen([self.vm_id]))

    def action_files(self) -> None:
        self.app.push_screen(FilesScreen(self.vm_id))

    def action_power(self, mode: str) -> None:
        reboot = mode == "reboot"
        vm = self.lqx.fleet.vms.get(self.vm_id)
        name = (vm.name if vm else "") or self.vm_id

        async def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                await self.lqx.client.shutdown(self.vm_id, reboot=reboot)
            except ApiError as exc:
                self.lqx.report(exc, "Reboot" if reboot else "Shutdown")
                return
            self.notify(f"{name}: {'reboot' if reboot else 'shutdown'} accepted by the guest.", title="Power")

        self.app.push_screen(
            ConfirmDialog(
                f"{'Reboot' if reboot else 'Shut down'} {name}?",
                "The guest's agent runs the OS's own "
                + ("reboot" if reboot else "poweroff")
                + "; running programs are stopped.",
                confirm="Reboot" if reboot else "Shut down",
            ),
            confirmed,
        )

    def action_password(self) -> None:
        async def done(answer: tuple[str, str, bool] | None) -> None:
            if answer is None:
                return
            user, password, expire = answer
            try:
                await self.lqx.client.reset_password(self.vm_id, user, password, expire=expire)
            except ApiError as exc:
                self.lqx.report(exc, "Password reset")
                return
            self.notify(f"Password of {user} on {self.vm_id} changed.", title="Password")

        self.app.push_screen(PasswordDialog(self.vm_id), done)

    async def action_ping(self) -> None:
        try:
            pong = await self.lqx.client.ping(self.vm_id)
        except ApiError as exc:
            self.lqx.report(exc, "Ping")
            return
        if pong.connected:
            self.notify(f"pong in {pong.latency_ms:.1f} ms, agent {pong.version or '?'}", title="Ping")
        else:
            self.notify(f"agent not connected: {pong.error}", severity="warning", title="Ping")
