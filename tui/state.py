"""The TUI's state: plain data, no Textual (what the screens show, kept between polls)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from limiquantix.protocol._gen.vm_service_pb2 import VM

__all__ = ["HISTORY_POINTS", "RECENT_RUNS", "FleetState", "RunRecord", "VMHistory"]

#: Points of history kept per VM (at the default 2 s refresh: 5 minutes).
HISTORY_POINTS: Final = 150
#: Recent script runs kept per VM.
RECENT_RUNS: Final = 20


@dataclass
class RunRecord:
    """A script run started from this TUI."""

    script: str
    started: float
    exit_code: int | None = None
    reason: str = ""
    duration_ms: int = 0
    timeout_s: int = 60
    run_as: str = ""

    @property
    def first_line(self) -> str:
        return (self.script.strip().splitlines() or [""])[0][:60]


@dataclass
class VMHistory:
    cpu: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    memory: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))


@dataclass
class FleetState:
    """What the TUI knows of the fleet: the last ListVMs answer, each VM's history of
    CPU and memory (the VM screen's sparklines), the runs started here, the selection."""

    vms: dict[str, VM] = field(default_factory=dict)
    """The last ListVMs answer by VM id."""
    history: dict[str, VMHistory] = field(default_factory=dict)
    recent_runs: dict[str, deque[RunRecord]] = field(default_factory=dict)
    """The runs started from this TUI per VM, newest first (at most RECENT_RUNS)."""
    selected: set[str] = field(default_factory=set)
    """The VMs selected for a fleet run."""

    def apply(self, vms: list[VM]) -> None:
        """Take one ListVMs answer: VMs gone from it leave the history and the selection."""
        fresh = {vm.vm_id: vm for vm in vms}
        history = self.history
        for vm_id, vm in fresh.items():  # 5,000 VMs at every poll: no more than this per VM
            hist = history.get(vm_id)
            if hist is None:
                hist = history[vm_id] = VMHistory()
            if vm.agent_state == "connected":
                hist.cpu.append(vm.cpu_percent)
                hist.memory.append(vm.memory_percent)
        for gone in history.keys() - fresh.keys():
            del history[gone]
        self.selected &= fresh.keys()
        self.vms = fresh

    def record_run(self, vm_id: str, record: RunRecord) -> None:
        runs = self.recent_runs.setdefault(vm_id, deque(maxlen=RECENT_RUNS))
        runs.appendleft(record)
