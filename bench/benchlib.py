"""Helpers every benchmark here shares: process CPU and memory, statistics, output.

The benchmarks are scripts (``python bench/agent_bench.py``), so this module is
imported by its file name from bench/, not as a package.
"""

from __future__ import annotations

import ctypes
import math
import signal
import statistics
import sys
import time

import psutil

if sys.version_info < (3, 11):  # pragma: no cover - the benchmarks run on the developer's Python
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "BenchError",
    "_die_with_parent",
    "_leaves",
    "_process_cpu_clock",
    "blocks",
    "cpu_seconds",
    "fmt",
    "median",
    "percentile",
    "rss_mib",
    "say",
]


class BenchError(Exception):
    """Something went wrong that makes the run's figures meaningless."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the benchmark dies without cleaning up.

    Children are started from the main thread (not a trio worker thread: the
    signal fires when the *thread* that forked exits).
    """
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _process_cpu_clock(pid: int) -> int:
    """clock_getcpuclockid(pid): Linux encodes it as (~pid << 3) | CPUCLOCK_SCHED."""
    return ctypes.c_int32((~pid << 3) | 2).value


def cpu_seconds(pid: int) -> float:
    """CPU time of the whole process (every thread, exited ones too), in seconds.

    The kernel's per-process CPU clock (nanoseconds), as agent_bench reads it;
    /proc's tick counters (10 ms) where that clock is not readable.
    """
    try:
        return time.clock_gettime(_process_cpu_clock(pid))
    except OSError:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def blocks(total: int, n: int) -> list[int]:
    """Split ``total`` samples into ``n`` near-equal blocks (interleaved between the paths)."""
    n = max(1, min(n, total))
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as raised from trio nurseries."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
