"""Helpers every benchmark here shares: process CPU and memory, statistics, output.

The benchmarks are scripts (``python bench/agent_bench.py``), so this module is
imported by its file name from bench/, not as a package.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import trio

from limiquantix.protocol import die_with_parent

if sys.version_info < (3, 11):  # pragma: no cover - the benchmarks run on the developer's Python
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "BenchError",
    "Child",
    "Figure",
    "_die_with_parent",
    "_leaves",
    "_process_cpu_clock",
    "blocks",
    "cpu_seconds",
    "fmt",
    "median",
    "percentile",
    "print_table",
    "report_failure",
    "rss_mib",
    "say",
    "workdir",
    "write_figures",
]


class BenchError(Exception):
    """Something went wrong that makes the run's figures meaningless."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the benchmark dies without cleaning up."""
    die_with_parent(signal.SIGTERM)


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


@dataclass
class Figure:
    """One row of a benchmark's results (every bench/ script writes these).

    ``target`` is text: ``"<= 15"`` is an absolute bound in ``unit``;
    ``"delta <= 2"`` bounds ``delta = ours - baseline`` (in ``unit``), the one
    key this file adds to agent.json's schema, written only for such rows.
    ``ratio`` is always ours / baseline. ``met`` is None for informational rows.
    """

    name: str
    ours: float | None
    baseline: float | None
    unit: str
    target: str | None
    ratio: float | None = None
    met: bool | None = None
    note: str | None = None
    delta: float | None = None

    def evaluate(self) -> Figure:
        if self.ours is not None and self.baseline:
            self.ratio = self.ours / self.baseline
        if self.target is None or self.ours is None:
            self.met = None
            return self
        op, _, rest = self.target.partition(" ")
        if op == "delta":
            if self.baseline is None:
                self.met = None
                return self
            self.delta = self.ours - self.baseline
            cmp, _, value = rest.partition(" ")
            left = self.delta
        elif op == "ratio":
            cmp, _, value = rest.partition(" ")
            left = self.ratio  # type: ignore[assignment]
        else:
            cmp, value, left = op, rest, self.ours
        if left is None:
            self.met = None
        else:
            self.met = left <= float(value) if cmp == "<=" else left >= float(value)
        return self

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("note", "delta"):
            if out[key] is None:
                del out[key]
        for key in ("ours", "baseline", "ratio", "delta"):
            if isinstance(out.get(key), float):
                out[key] = round(out[key], 4)
        return out


def print_table(figures: list[Figure], title: str, context: str, *, baseline: str = "baseline") -> None:
    """The results as a table (a ``delta`` column when a figure has one), their notes and
    the count of targets met."""
    with_delta = any(f.delta is not None for f in figures)
    rows = [("figure", "ours", baseline, "unit", "ratio", *(("delta",) if with_delta else ()), "target", "met")]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        delta = (fmt(f.delta) if f.delta is not None else "",) if with_delta else ()
        rows.append((f.name, fmt(f.ours), fmt(f.baseline), f.unit, fmt(f.ratio), *delta, f.target or "(info)", met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    print(title)
    print(context)
    for n, row in enumerate(rows):
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)]))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for f in figures:
        if f.note:
            print(f"  * {f.name}: {f.note}")
    missed = [f.name for f in figures if f.met is False]
    print(f"\ntargets met: {sum(f.met is True for f in figures)}/{sum(f.target is not None for f in figures)}", end="")
    print(f"; missed: {', '.join(missed)}" if missed else "")


#: The line a daemon logs once it listens (the benches bind port 0): its URL is group 1.
CONTROLLER_SERVING_RE = re.compile(r"limiquantix-controller \S+ serving (https?://\S+)")
HOSTD_SERVING_RE = re.compile(r"limiquantix-hostd \S+ serving (https?://[^\s,]+)")


@dataclass
class Child:
    """A process a benchmark started, with its log (for errors) and a clean stop."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def logged(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """``pattern`` in what the process has logged so far.

        Raises:
            BenchError: the process has exited.
        """
        self.check_alive()
        return pattern.search(self.log_path.read_text(errors="replace"))

    async def serving_url(self, pattern: re.Pattern[str], timeout_s: float) -> str:
        """The URL in the daemon's "serving" line (``pattern``'s group 1), once it is logged.

        Raises:
            BenchError: no such line within ``timeout_s``, or the process exited.
        """
        with trio.move_on_after(timeout_s):
            while not (match := self.logged(pattern)):
                await trio.sleep(0.05)
            return match.group(1)
        raise BenchError(f"no 'serving' line from {self.name} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; reaped either way."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def write_figures(figures: list[Figure], path: Path) -> None:
    """The results as JSON (a list of :meth:`Figure.as_json`), and where they went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([f.as_json() for f in figures], indent=2) + "\n")
    print(f"written to {path}")


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as raised from trio nurseries."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def report_failure(prog: str, exc: BaseException, expected: tuple[type[BaseException], ...]) -> int:
    """A benchmark's exit status for what ended its run: 130 when interrupted, else 1,
    each error printed (with a traceback unless it is one of ``expected``).

    Raises:
        BaseException: ``exc`` again when it holds anything but exceptions and interrupts.
    """
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if not all(isinstance(leaf, Exception) for leaf in leaves):
        raise exc
    for leaf in leaves:
        if not isinstance(leaf, expected):
            traceback.print_exception(leaf)
        print(f"{prog}: error: {type(leaf).__name__}: {leaf}", file=sys.stderr)
    return 1


#: Where the benches write their figures (NAME.json, NAME-quick.json with --quick).
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def bench_parser(doc: str | None, name: str, quick_help: str, *, keep_workdir: bool = True) -> argparse.ArgumentParser:
    """A bench's command line with the flags they all take: ``--quick`` (``quick_help`` says
    what it shortens), ``--output`` (see :func:`output_path`) and, unless ``keep_workdir`` is
    false, ``--keep-workdir``; the description is the first paragraph of ``doc``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"JSON results (default bench/results/{name}.json; with --quick {name}-quick.json)",
    )
    if keep_workdir:
        parser.add_argument("--keep-workdir", action="store_true", help="keep the work dir and every log")
    return parser


def output_path(name: str, ns: argparse.Namespace) -> Path:
    """Where a bench parsed by :func:`bench_parser` writes its figures: ``--output``, else
    ``bench/results/NAME.json`` (``NAME-quick.json`` with ``--quick``: a quick run never
    replaces the full figures)."""
    return Path(ns.output or RESULTS_DIR / (f"{name}-quick.json" if ns.quick else f"{name}.json"))


@contextlib.contextmanager
def workdir(prefix: str, *, keep: bool = False, under: Path | None = None) -> Iterator[Path]:
    """A fresh work dir for a benchmark's sockets and logs, removed afterwards unless ``keep``.

    In ``under`` when given (named ``<prefix><pid>``), else a temp dir with a short path:
    AF_UNIX socket paths are limited to 107 bytes.
    """
    if under is not None:
        path = under / f"{prefix}{os.getpid()}"
        path.mkdir(parents=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            say(f"work dir kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
