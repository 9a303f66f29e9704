"""Sparklines of a VM's CPU, memory and network rates, as wide as the panel showing them."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from .._format import human_bytes, spark

__all__ = ["Graphs"]


class Graphs(Widget):
    """CPU and memory (0-100 %), network RX / TX (scaled to their maximum).

    Drawn at render time at the widget's own width: a resize (or a scrollbar appearing
    beside it) redraws them at the new width, with nothing to call.
    """

    def __init__(self, *, refresh_s: float, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.refresh_s = refresh_s
        self.cpu: Sequence[float] = ()
        self.memory: Sequence[float] = ()
        self.rx: Sequence[float] = ()
        self.tx: Sequence[float] = ()

    def show(
        self,
        *,
        cpu: Sequence[float] | None = None,
        memory: Sequence[float] | None = None,
        rx: Sequence[float] | None = None,
        tx: Sequence[float] | None = None,
    ) -> None:
        """New figures (those not given stay), drawn at the next refresh."""
        if cpu is not None:
            self.cpu = cpu
        if memory is not None:
            self.memory = memory
        if rx is not None:
            self.rx = rx
        if tx is not None:
            self.tx = tx
        self.refresh(layout=True)

    def render(self) -> Text:
        width = max(10, self.content_size.width or 40)
        cpu, mem = self.cpu, self.memory
        text = Text()
        text.append(f"CPU {cpu[-1]:.1f} %\n" if cpu else "CPU -\n", style="bold cyan")
        text.append(spark(cpu, width, top=100.0) + "\n", style="green")
        text.append(f"Memory {mem[-1]:.1f} %\n" if mem else "Memory -\n", style="bold cyan")
        text.append(spark(mem, width, top=100.0) + "\n", style="yellow")
        if self.rx:
            text.append(f"Net rx {human_bytes(self.rx[-1])}/s\n", style="bold cyan")
            text.append(spark(self.rx, width) + "\n", style="blue")
            text.append(f"Net tx {human_bytes(self.tx[-1])}/s\n", style="bold cyan")
            text.append(spark(self.tx, width), style="magenta")
        else:
            text.append("Network: rates after two telemetry reports", style="dim")
        text.append(f"\n{len(cpu)} samples, every {self.refresh_s:g} s", style="dim")
        return text
