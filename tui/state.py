"""The TUI's state: plain data, no Textual (what the screens show, kept between polls)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

__all__ = ["HISTORY_POINTS", "RECENT_RUNS", "RunRecord", "VMHistory"]

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

    @property
    def first_line(self) -> str:
        return (self.script.strip().splitlines() or [""])[0][:60]


@dataclass
class VMHistory:
    cpu: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    memory: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
