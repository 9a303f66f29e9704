#!/usr/bin/env python3
"""Benchmark limiquantix-tui: the fleet screen's refresh with 500 VMs, and its start.

Targets (issue 5): "Fleet screen with 500 VMs: refresh cycle <= 100 ms of TUI CPU
time per update; first screen drawn <= 1 s after start."

Figures:

1. **refresh, in process** (no controller): ``LimiQuantixApp`` still
   (``poll=False``) in ``run_test(size=(120, 40))``, fleet screen sorted by CPU
   (highest first), fed 500 VMs of ``limiquantix.tui.demo_data`` by
   ``app.apply_fleet`` with realistic changes between updates (CPU, memory and
   uptime of every VM, 5 agent state changes, one VM swapped for another every
   5 updates; the CPU sort reorders rows every time). Each update's CPU time is
   ``time.process_time()`` around ``apply_fleet`` + ``await pilot.pause()`` (the
   layout and the render of the screen that follow). Baseline, interleaved in
   blocks: the same updates drawn naively (a ``DataTable`` mounted beside the
   fleet table, shown instead of it: ``clear()`` + ``add_row`` for all 500 every
   time). Informational: the same with the name sort (row order stable). Then
   the table is checked: every VM in the screen's order, the right names on screen.
2. **poll cycle, end to end**: a real controller (``python -m
   limiquantix.controller serve``, fresh SQLite) knows 500 VMs through its real
   NodeRegistryService: another process registers the fake nodes (13-14) with a
   ``node`` token and heartbeats their VMs (hostd's VMStatus in brief) every
   second, with the same changes. The app (in this process, ``poll=False``) then runs
   ``refresh_fleet()`` (ListVMs over HTTP, JSON, apply) + ``pilot.pause()`` once
   a second; CPU time of this process per cycle.
3. **first screen drawn, real process**: ``python -m limiquantix.tui --url …
   --token-file …`` started under a pty (120x40, ``TERM=xterm-256color``); time from
   the fork to the first output that contains a VM row's name (the first poll
   answered and drawn; the empty frame before it does not count). Median of 5
   starts, and the process's CPU time to that output. The last one stays up for a window (``--refresh-s 1``, sorted by CPU
   with key presses through the pty) and its CPU time over the window is
   divided by its polls: the real process's CPU per cycle, terminal output
   included (headless ``run_test`` renders but writes no escape sequences).

4. **fleet refresh, 5,000 VMs** (issue 13): figure 1's updates with 5,000 VMs
   (fewer of them; no naive baseline: it takes seconds per update), then the
   same check of the table, at the top and two pages down.
5. **output in the runner** (issue 13: "1 MiB of command output (300,000
   lines) fully shown in the runner <= 1 s after the command ends; TUI RSS <=
   150 MiB after it. 10 MiB streamed at the guest's speed without the TUI
   falling behind by more than 1 s"), in a fresh process (``tui_bench.py
   _output``, so that its RSS is the TUI's alone): the runner of a still app
   runs a script whose ExecuteScriptStream is played by an
   ``httpx.MockTransport`` (the client's real decoding, the job, the output
   view): 1 MiB in 300,000 lines in 16 KiB output events (what the agent's pipe
   reads give), then the result; wall time from the result's arrival (the
   command ended) to the runner showing the result with every line stored and
   the screen drawn (and from the first output); RSS then. Then 10 MiB of
   60-character lines produced at 10 MiB/s in 16 KiB chunks by a task on the
   same loop (the guest does not wait for the TUI); every 20 ms the lag is
   sampled: how long the oldest chunk not yet in the view has been waiting.

Prints a table and writes ``bench/results/tui.json`` (``--quick``:
``tui-quick.json``) in agent.json's format. ``--first-screen``: figure 3's starts alone (9,
no window), their figures printed and no file written: a start-up change measured in a minute. Exits non-zero only on errors.
See bench/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import pty
import random
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

BENCH_DIR: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import benchlib as bl  # noqa: E402 - bench/ is not a package
from benchlib import Figure  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from limiquantix.protocol import __version__ as VERSION  # noqa: E402
from limiquantix.protocol._gen.vm_service_pb2 import VM  # noqa: E402
from limiquantix.tui import demo_data  # noqa: E402
from limiquantix.tui.widgets.fleet_table import COLUMNS  # noqa: E402

__all__ = ["Settings", "churned_fleet", "main"]

VM_SERVICE: Final = "/limiquantix.compute.v1.VMService"
ADMIN_SERVICE: Final = "/limiquantix.compute.v1.AdminService"
NODES_SERVICE: Final = "/limiquantix.compute.v1.NodeRegistryService"
VMS: Final = 500
#: The large fleet (issue 13).
VMS_LARGE: Final = 5000
SIZE: Final = (120, 40)
#: Targets (issue 5).
REFRESH_TARGET_MS: Final = 100.0
FIRST_FRAME_TARGET_MS: Final = 1000.0
#: Targets (issue 13): the runner's output.
SHOWN_TARGET_MS: Final = 1000.0
RSS_TARGET_MIB: Final = 150.0
LAG_TARGET_MS: Final = 1000.0
OUTPUT_LINES: Final = 300_000
OUTPUT_BYTES: Final = 1024 * 1024
STREAM_BYTES: Final = 10 * 1024 * 1024
#: The guest's speed for the streamed figure (bytes/s) and its chunk (an agent pipe read).
STREAM_RATE: Final = 10 * 1024 * 1024
OUTPUT_CHUNK: Final = 16 * 1024
#: The fleet screen's CPU column (FleetScreen.sort_column).
CPU_COLUMN: Final = 6
HEARTBEAT_S: Final = 1.0
START_TIMEOUT_S: Final = 60.0
#: The first row's name, sorted by name (what the first frame with data shows).
FIRST_ROW: Final = b"batch-01"


@dataclass(frozen=True)
class Settings:
    quick: bool
    updates: int
    blocks: int
    polls: int
    starts: int
    window_s: float
    output: Path
    first_screen: bool = False

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        """Raises: SystemExit: bad flags (argparse)."""
        parser = bl.bench_parser(__doc__, "tui", "20 updates, 10 polls, 3 starts, 10 s window", keep_workdir=False)
        parser.add_argument(
            "--first-screen", action="store_true", help="figure 3's starts alone (9, no window; no results file)"
        )
        ns = parser.parse_args(argv)
        return cls(
            quick=ns.quick,
            updates=20 if ns.quick else 50,
            blocks=2 if ns.quick else 5,
            polls=10 if ns.quick else 30,
            starts=9 if ns.first_screen else 3 if ns.quick else 5,
            window_s=10.0 if ns.quick else 30.0,
            output=bl.output_path("tui", ns),
            first_screen=ns.first_screen,
        )


@dataclass
class Results:
    refresh_ms: list[float] = field(default_factory=list)
    naive_ms: list[float] = field(default_factory=list)
    stable_ms: list[float] = field(default_factory=list)
    apply_only_ms: list[float] = field(default_factory=list)
    refresh_gc_ms: list[float] = field(default_factory=list)
    """CPU of full garbage collections within each measured update (0: none)."""
    live_objects: int = 0
    rebuilds: int = 0
    poll_ms: list[float] = field(default_factory=list)
    poll_wall_ms: list[float] = field(default_factory=list)
    poll_vms: int = 0
    poll_failures: list[str] = field(default_factory=list)
    poll_gc_ms: list[float] = field(default_factory=list)
    first_frame_ms: list[float] = field(default_factory=list)
    first_frame_cpu_ms: list[float] = field(default_factory=list)
    """The TUI process's CPU time from its start to the first row (a shared machine's load
    stretches the wall time; less so the CPU a start needs)."""
    window_cpu_ms_per_poll: float | None = None
    window_note: str = ""
    large_ms: list[float] = field(default_factory=list)
    large_apply_ms: list[float] = field(default_factory=list)
    load: dict[str, tuple[float, float]] = field(default_factory=dict)
    """The 1-minute load average before and after figures 1 and 4 (the machine is shared)."""
    output: dict[str, float] = field(default_factory=dict)
    """Figure 5, from the ``_output`` process."""


# ============================================================================= data


def churned_fleet(count: int, step: int) -> list[VM]:
    """ListVMs of ``count`` VMs at ``step``: every VM's CPU / memory / uptime moves
    (demo_data), 5 VMs are unresponsive (different ones each step), and one VM is
    swapped for another every 5 steps."""
    pool = demo_data.fleet(count + 10, step)
    swap = count - 1 + (step // 5) % 11
    vms = pool[: count - 1] + [pool[swap]]
    flip = random.Random(f"churn/{step}").sample(range(12, count - 1), 5)
    for i in flip:
        vm = vms[i]
        demo_data.set_unresponsive(vm)
    return vms


def node_vms(vms: list[VM]) -> dict[str, list[dict[str, Any]]]:
    """The ListVMs answer → each node's Heartbeat ``vms`` (hostd's VMStatus in brief, in JSON)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for vm in vms:
        agent: dict[str, Any] = {
            "state": f"AGENT_STATE_{vm.agent_state.upper()}",
            "version": vm.agent_version,
            "identity": {"os": {"prettyName": vm.os}, "hostname": vm.hostname, "kernel": vm.kernel},
            "ipAddresses": list(vm.ip_addresses),
            "lastDisconnectReason": vm.last_disconnect_reason,
        }
        if vm.HasField("last_seen"):
            agent["lastSeen"] = json_format.MessageToJson(vm.last_seen).strip('"')
        telemetry = {
            "cpuPercent": vm.cpu_percent,
            "memory": {"percent": vm.memory_percent},
            "uptimeSeconds": str(vm.uptime_seconds),
        }
        node = {
            "vmId": vm.vm_id,
            "name": vm.name,
            "labels": dict(vm.labels),
            "agent": agent,
            "resourceUsage": {"telemetry": telemetry},
        }
        out.setdefault(vm.node_id, []).append(node)
    return out


# ============================================================================= garbage collection


class GcWatch:
    """CPU time of CPython's full (generation 2) collections, which make the slow tail:
    their cost grows with every live object (Textual's render caches included)."""

    def __init__(self) -> None:
        self.full_ms = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        elif info["generation"] == 2:
            self.full_ms += (time.process_time() - self._t0) * 1000

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


# ============================================================================= 1. in process


def _naive(screen: Any) -> Callable[[], None]:
    """FleetScreen.fleet_updated as a first version would write it: a ``DataTable`` (the
    ``#naive`` one :func:`refresh_in_process` mounts) rebuilt with every row at every update."""
    from textual.widgets import DataTable

    from limiquantix.tui.widgets.fleet_table import row_cells

    def fleet_updated() -> None:
        if not screen.is_mounted:
            return
        screen._update_status()
        table = screen.query_one("#naive", DataTable)
        visible = screen._visible()
        selected = screen.lqx.fleet.selected
        table.clear()
        for vm in visible:
            table.add_row(*row_cells(vm, vm.vm_id in selected, screen.tier), key=vm.vm_id)

    return fleet_updated


def check_table(app: Any, screen: Any, count: int) -> None:
    """The fleet table holds ``count`` VMs in the screen's order, and the rows on screen are
    the right ones: each drawn line starts with the name of the VM at its place.

    Raises:
        bl.BenchError: it does not.
    """
    table = screen.table
    visible = screen._visible()
    if table.row_count != count or table.order != [vm.vm_id for vm in visible]:
        raise bl.BenchError(f"the fleet table holds {table.row_count} VMs, not the {count} of the screen's order")
    lines = [strip.text for strip in app.screen._compositor.render_strips()]
    region = table.region
    drawn = lines[region.y + 1 : region.bottom]  # below the header
    first = table.scroll_offset.y
    want = [vm.name for vm in visible[first : first + len(drawn)]]
    got = [line.split()[0] if line.split() else "" for line in drawn]
    if not drawn or got != want:
        raise bl.BenchError(f"the rows on screen are {got[:5]}..., not {want[:5]}...")


async def _fleet_by_cpu(app: Any, pilot: Any) -> Any:
    """The fleet screen once the app started, sorted by CPU, highest first (the column a
    refresh reorders most: every VM's CPU changes)."""
    from limiquantix.tui.screens.fleet import FleetScreen

    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, FleetScreen)
    screen.sort_column, screen.sort_reverse = CPU_COLUMN, True
    return screen


async def refresh_large(s: Settings, r: Results) -> None:
    """Figure 4: the same churn with VMS_LARGE VMs, the real fleet_updated only."""
    app, _ = demo_data.demo_app(history=0)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _fleet_by_cpu(app, pilot)
        for step in range(3 + (5 if s.quick else 10)):
            data = churned_fleet(VMS_LARGE, step)
            t0 = time.process_time()
            app.apply_fleet(data)
            await pilot.pause()
            if step >= 3:  # the first ones build the caches
                r.large_ms.append((time.process_time() - t0) * 1000)
                r.large_apply_ms.append(app.refresh_cpu_s * 1000)
        check_table(app, screen, VMS_LARGE)
        await pilot.press("pagedown", "pagedown")  # further down the 5,000: the rows there too
        await pilot.pause()
        check_table(app, screen, VMS_LARGE)


async def refresh_in_process(s: Settings, r: Results) -> None:
    from textual.widgets import DataTable

    app, _ = demo_data.demo_app(history=0)
    watch = GcWatch()
    async with app.run_test(size=SIZE) as pilot:
        screen = await _fleet_by_cpu(app, pilot)
        naive_table: DataTable[Any] = DataTable(id="naive", cursor_type="row", zebra_stripes=True)
        await screen.mount(naive_table, after=screen.table)
        naive_table.add_column(" ", key="sel", width=1)
        for column in COLUMNS:
            if screen.tier <= column.narrowest:
                naive_table.add_column(column.label, key=column.key)
        real = screen.fleet_updated
        naive = _naive(screen)
        step = 0

        def use(fleet_updated: Callable[[], None]) -> None:
            """Draw with ``fleet_updated``; only its table is shown (and the other one is empty)."""
            screen.fleet_updated = fleet_updated  # type: ignore[method-assign]
            naive_table.display = fleet_updated is naive
            screen.table.display = fleet_updated is real
            if fleet_updated is real:
                naive_table.clear()

        async def update(into: list[float]) -> None:
            nonlocal step
            data = churned_fleet(VMS, step)  # made here, not in advance: the heap stays as the TUI's own
            step += 1
            gc0, t0 = watch.full_ms, time.process_time()
            app.apply_fleet(data)
            await pilot.pause()
            into.append((time.process_time() - t0) * 1000)
            if into is r.refresh_ms:
                r.apply_only_ms.append(app.refresh_cpu_s * 1000)
                r.refresh_gc_ms.append(watch.full_ms - gc0)

        use(real)
        for _ in range(5):  # warm-up: caches, the first layout
            await update([])
        for n in bl.blocks(s.updates, s.blocks):
            use(real)
            await update([])  # the table shown again: a new layout, not counted
            for _ in range(n):
                await update(r.refresh_ms)
            use(naive)
            for _ in range(n):
                await update(r.naive_ms)
        use(real)
        screen.sort_column, screen.sort_reverse = 0, False
        await update([])
        for _ in range(s.updates // 2):
            await update(r.stable_ms)
        watch.close()
        r.live_objects = len(gc.get_objects())
        check_table(app, screen, VMS)


# ============================================================================= 5. output in the runner


def megabyte_of_lines() -> str:
    """OUTPUT_LINES lines in exactly OUTPUT_BYTES: 148,576 of 3 digits and the rest of 2."""
    long = OUTPUT_BYTES - 3 * OUTPUT_LINES
    return "".join(f"{i % 1000:03d}\n" if i < long else f"{i % 100:02d}\n" for i in range(OUTPUT_LINES))


def _event(message: dict[str, Any], request: Any) -> bytes:
    """One Connect envelope of an ExecuteScriptEvent, in the codec the client asked for."""
    if "proto" in request.headers.get("content-type", ""):
        from google.protobuf import json_format

        from limiquantix.protocol._gen import vm_service_pb2 as vm_pb

        data = json_format.ParseDict(message, vm_pb.ExecuteScriptEvent()).SerializeToString()
    else:
        import json

        data = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(data)) + data


async def output_in_process() -> dict[str, float]:
    """Figure 5 (see the module's docstring); in the ``_output`` process."""
    import httpx
    import psutil
    from textual.widgets import TextArea

    from limiquantix.tui import ControllerClient
    from limiquantix.tui.screens.runner import RunnerScreen

    body: list[Callable[[Any], Any]] = []
    """What the next ExecuteScriptStream streams (an async generator function of the request)."""

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ExecuteScriptStream"):
            return httpx.Response(
                200, content=body.pop(0)(request), headers={"Content-Type": request.headers["content-type"]}
            )
        return httpx.Response(501, json={"code": "unimplemented", "message": "not in this benchmark"})

    client = ControllerClient(demo_data.CONTROLLER_URL, "bench-token", transport=httpx.MockTransport(answer),
                              insecure=True)  # fmt: skip
    result = {"exitReason": "exited", "exitCode": 0, "durationMs": "15"}
    out: dict[str, float] = {}
    data = megabyte_of_lines()
    times: dict[str, float] = {}

    async def megabyte(request: httpx.Request) -> AsyncIterator[bytes]:
        yield _event({"executionId": "exec-bench"}, request)
        times["first"] = time.perf_counter()
        for i in range(0, len(data), OUTPUT_CHUNK):
            yield _event({"output": {"stream": "stdout", "text": data[i : i + OUTPUT_CHUNK]}}, request)
        times["end"] = time.perf_counter()  # the command ended: its result is on its way
        yield _event({"result": result}, request) + struct.pack(">BI", 2, 2) + b"{}"

    produced: list[tuple[float, int]] = []
    """(when the guest wrote it, lines so far) of each chunk of the stream: the time it was due, so
    that a loop too busy to run the writer on time counts as lag, not as a slower guest."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    line = "".join(chr(ord("a") + i % 26) for i in range(59)) + "\n"  # 60 characters
    chunk = line * (OUTPUT_CHUNK // len(line))
    chunks = STREAM_BYTES // len(chunk)

    async def guest(request: httpx.Request) -> None:
        start, lines = time.perf_counter(), 0
        for i in range(chunks):
            due = start + i * len(chunk) / STREAM_RATE
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            lines += chunk.count("\n")
            produced.append((due, lines))
            queue.put_nowait(_event({"output": {"stream": "stdout", "text": chunk}}, request))
        queue.put_nowait(_event({"result": result}, request) + struct.pack(">BI", 2, 2) + b"{}")
        queue.put_nowait(None)

    async def streamed(request: httpx.Request) -> AsyncIterator[bytes]:
        yield _event({"executionId": "exec-stream"}, request)
        asyncio.get_running_loop().create_task(guest(request))
        while (item := await queue.get()) is not None:
            yield item

    app, _ = demo_data.demo_app(history=0, client=client)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        runner = RunnerScreen(["vm-bench"])
        await app.push_screen(runner)
        await pilot.pause()
        runner.query_one("#script", TextArea).load_text("seq ...")
        # -- 1 MiB, 300,000 lines
        body.append(megabyte)
        runner.action_run()
        job = runner.job
        assert job is not None
        while job.running or runner.view.line_count < OUTPUT_LINES:
            await pilot.pause()
        await pilot.pause()  # drawn
        shown = time.perf_counter()
        if runner.view.line_count != OUTPUT_LINES or job.state != "success":
            raise bl.BenchError(f"the runner shows {runner.view.line_count} lines, {job.state}")
        out["shown_after_end_ms"] = (shown - times["end"]) * 1000
        out["shown_after_first_ms"] = (shown - times["first"]) * 1000
        gc.collect()
        out["rss_after_mib"] = psutil.Process().memory_info().rss / 2**20
        # -- 10 MiB at the guest's speed
        body.append(streamed)
        runner.action_run()
        job = runner.job
        lag = 0.0
        while job.running or not produced or runner.view.line_count < produced[-1][1]:
            now, have = time.perf_counter(), runner.view.line_count
            waiting = next((t for t, lines in produced if lines > have), None)
            if waiting is not None:
                lag = max(lag, now - waiting)
            await asyncio.sleep(0.02)
        await pilot.pause()
        out["stream_lag_ms"] = max(lag, time.perf_counter() - produced[-1][0]) * 1000
        out["stream_s"] = produced[-1][0] - produced[0][0]
        out["stream_shown_s"] = time.perf_counter() - produced[0][0]
        out["stream_lines"] = produced[-1][1]
        gc.collect()
        out["rss_after_stream_mib"] = psutil.Process().memory_info().rss / 2**20
    return out


def output_main() -> int:
    """``tui_bench.py _output``: figure 5 in this fresh process; its numbers as JSON on stdout."""
    import json

    print(json.dumps(asyncio.run(output_in_process())))
    return 0


def output_figures(r: Results) -> None:
    """Figure 5 in a process of its own (its RSS is the TUI's, not this benchmark's)."""
    import json

    done = subprocess.run([sys.executable, __file__, "_output"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise bl.BenchError(f"the output benchmark failed: {done.stderr[-2000:]}")
    r.output = json.loads(done.stdout.strip().splitlines()[-1])


# ============================================================================= processes


def spawn(name: str, argv: list[str], work: Path, env: dict[str, str] | None = None) -> bl.Child:
    log_path = work / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=work, env=env,
            preexec_fn=bl._die_with_parent,  # noqa: PLW1509 - children die with the benchmark
        )  # fmt: skip
    return bl.Child(name, popen, log_path)


def post(url: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    r = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    if r.status_code != 200:
        raise bl.BenchError(f"{path}: {r.status_code} {r.text[:300]}")
    return r.json()


def heartbeat_main(argv: list[str]) -> int:
    """``tui_bench.py _heartbeat URL TOKEN``: register the fake nodes, then heartbeat
    their VMs every HEARTBEAT_S with the next step's changes, until killed."""
    import httpx

    url, token = argv
    known: set[str] = set()
    step = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:

        def register(node: str, vms: list[dict[str, Any]]) -> None:
            body = {"nodeId": node, "url": "http://127.0.0.1:9", "token": "unused", "vms": vms}
            client.post(f"{NODES_SERVICE}/RegisterNode", json=body).raise_for_status()
            known.add(node)

        for node, vms in node_vms(churned_fleet(VMS, step)).items():
            register(node, vms)
        print(f"registered {len(known)} nodes", flush=True)
        while True:
            time.sleep(HEARTBEAT_S)
            step += 1
            by_node = node_vms(churned_fleet(VMS, step))
            # A node whose VMs all moved away heartbeats an empty list; a new node registers (as hostd).
            for node in sorted(known | set(by_node)):
                vms = by_node.get(node, [])
                if node not in known:
                    register(node, vms)
                    continue
                client.post(f"{NODES_SERVICE}/Heartbeat", json={"nodeId": node, "vms": vms}).raise_for_status()


def start_controller(work: Path) -> tuple[bl.Child, bl.Child, str, str]:
    """The controller and the heartbeating fake nodes; (controller, nodes, url, admin token)."""
    admin = "lqx-bench-" + secrets.token_urlsafe(24)
    empty = work / "empty.toml"
    empty.write_text("")
    controller = spawn(
        "limiquantix-controller",
        [sys.executable, "-m", "limiquantix.controller", "serve", "--config", str(empty), "--listen", "127.0.0.1:0",
         "--db", str(work / "controller.db"), "--log-level", "info"],
        work, env={**os.environ, "LQX_ADMIN_TOKEN": admin},
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (match := controller.logged(bl.CONTROLLER_SERVING_RE)):
        if time.monotonic() > deadline:
            raise bl.BenchError(f"no 'serving' line from the controller:\n{controller.log_tail()}")
        time.sleep(0.05)
    url = match.group(1)
    node_token = post(url, admin, f"{ADMIN_SERVICE}/CreateToken", {"user": "bench-nodes", "role": "node"})["token"]
    nodes = spawn("fake-nodes", [sys.executable, str(Path(__file__).resolve()), "_heartbeat", url, node_token], work)
    while True:
        nodes.check_alive()
        controller.check_alive()
        listed = post(url, admin, f"{VM_SERVICE}/ListVMs", {"pageSize": 1000}).get("vms", [])
        if len(listed) >= VMS:
            return controller, nodes, url, admin
        if time.monotonic() > deadline:
            raise bl.BenchError(f"the controller lists {len(listed)} VMs, not {VMS}")
        time.sleep(0.2)


# ============================================================================= 2. poll cycle


async def poll_cycle(url: str, token: str, s: Settings, r: Results) -> None:
    from limiquantix.tui import LimiQuantixApp, TuiConfig

    app = LimiQuantixApp(TuiConfig(url=url, token=token), poll=False)
    watch = GcWatch()
    async with app.run_test(size=SIZE) as pilot:
        await _fleet_by_cpu(app, pilot)
        for i in range(s.polls + 2):
            gc0, w0, t0 = watch.full_ms, time.perf_counter(), time.process_time()
            await app.refresh_fleet()
            await pilot.pause()
            cpu, wall = (time.process_time() - t0) * 1000, (time.perf_counter() - w0) * 1000
            if app.controller_ok is not True:  # the TUI notifies and polls on: count it, go on
                r.poll_failures.append(f"poll {i}: {app.last_error}")
                if len(r.poll_failures) > 3:
                    raise bl.BenchError(f"ListVMs failed: {r.poll_failures}")
            elif i >= 2:  # the first polls: WhoAmI, the first 500 rows
                r.poll_ms.append(cpu)
                r.poll_gc_ms.append(watch.full_ms - gc0)
                r.poll_wall_ms.append(wall)
            await asyncio.sleep(max(0.0, HEARTBEAT_S - wall / 1000))
        r.poll_vms = len(app.fleet.vms)
        watch.close()


# ============================================================================= 3. the real process


def _pty_child(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Fork ``argv`` on a new pty of SIZE; (pid, master fd)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    return pid, fd


def _read_until(fd: int, needle: bytes, timeout: float) -> float | None:
    """perf_counter when ``needle`` appears in the output (None: not in time)."""
    seen = b""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return None
        if not chunk:
            return None
        seen = seen[-len(needle) :] + chunk
        if needle in seen:
            return time.perf_counter()
    return None


def _drain(fd: int, seconds: float, keys: bytes = b"") -> None:
    end = time.perf_counter() + seconds
    if keys:
        os.write(fd, keys)
    while time.perf_counter() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            with contextlib.suppress(OSError):
                os.read(fd, 65536)


def _stop_pty(pid: int, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"q")
    for _ in range(100):
        _drain(fd, 0.02)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    else:
        os.kill(pid, signal.SIGTERM)
        _drain(fd, 0.5)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    os.close(fd)


def real_process(url: str, token: str, work: Path, s: Settings, r: Results) -> None:
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
        "LANG": "C.UTF-8",
    }
    # The token goes in a file: the TUI refuses one in argv (visible to every user in ps).
    token_file = work / "tui.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    argv = [
        sys.executable,
        "-m",
        "limiquantix.tui",
        "--url",
        url,
        "--token-file",
        str(token_file),
        "--refresh-s",
        f"{HEARTBEAT_S:g}",
    ]
    for n in range(s.starts):
        t0 = time.perf_counter()
        pid, fd = _pty_child(argv, env)
        seen = _read_until(fd, FIRST_ROW, 30.0)
        if seen is None:
            _stop_pty(pid, fd)
            raise bl.BenchError(f"limiquantix-tui showed no {FIRST_ROW.decode()} row within 30 s")
        r.first_frame_ms.append((seen - t0) * 1000)
        r.first_frame_cpu_ms.append(bl.cpu_seconds(pid) * 1000)
        if n < s.starts - 1 or s.first_screen:
            _stop_pty(pid, fd)
            continue
        # The last one stays: sorted by CPU (six times `s`, then `S`), then a window.
        _drain(fd, 2.0, b"ssssss")
        _drain(fd, 1.0, b"S")
        c0, w0 = bl.cpu_seconds(pid), time.perf_counter()
        _drain(fd, s.window_s)
        cpu, wall = bl.cpu_seconds(pid) - c0, time.perf_counter() - w0
        polls = wall / HEARTBEAT_S
        r.window_cpu_ms_per_poll = cpu * 1000 / polls
        r.window_note = (
            f"{cpu:.2f} s of CPU over {wall:.1f} s ({cpu / wall * 100:.1f} % of a core) at --refresh-s"
            f" {HEARTBEAT_S:g}: ~{polls:.0f} polls, sorted by CPU, output drained from a {SIZE[0]}x{SIZE[1]} pty"
        )
        _stop_pty(pid, fd)


# ============================================================================= table


def _load(r: Results, figure: str) -> str:
    start, end = r.load.get(figure, (0.0, 0.0))
    return f"{start:.1f} before, {end:.1f} after ({os.cpu_count()} CPUs)"


def figures_from(r: Results, s: Settings) -> list[Figure]:
    med = bl.median
    p95 = lambda v: bl.percentile(v, 95) if v else None  # noqa: E731
    churn = (
        f"{VMS} VMs at {SIZE[0]}x{SIZE[1]}, sorted by CPU (order changes every update); per update every VM's"
        " CPU/memory/uptime change, 5 agent states change, one VM swapped every 5 updates"
    )
    return [
        Figure(
            f"fleet refresh, {VMS} VMs, CPU per update, median", med(r.refresh_ms), med(r.naive_ms), "ms",
            f"<= {REFRESH_TARGET_MS:g}",
            note=f"{churn}; process_time around apply_fleet + pilot.pause() (layout + render); {len(r.refresh_ms)}"
            f" updates interleaved in {s.blocks} blocks with the baseline: the naive redraw (a DataTable:"
            f" clear() + add_row x{VMS} every update); load average {_load(r, '1')}",
        ),
        Figure(f"fleet refresh, {VMS} VMs, CPU per update, p95", p95(r.refresh_ms), p95(r.naive_ms), "ms",
               f"<= {REFRESH_TARGET_MS:g}"),
        Figure(
            "fleet refresh, updates without a full GC, p95 (info)",
            p95([t for t, g in zip(r.refresh_ms, r.refresh_gc_ms, strict=False) if not g]), None, "ms", None,
            note=f"{sum(1 for g in r.refresh_gc_ms if g)} of {len(r.refresh_ms)} updates ran a full (generation 2)"
            f" garbage collection, {med([g for g in r.refresh_gc_ms if g]) if any(r.refresh_gc_ms) else 0:.0f} ms"
            f" each (median); {r.live_objects:,} objects tracked by the collector at the end, most of them"
            " Textual's (the process at start, its render caches)",
        ),
        Figure("fleet refresh: apply_fleet alone, median (info)", med(r.apply_only_ms), None, "ms", None,
               note="app.refresh_cpu_s: the VMs sorted and handed to the fleet table, before Textual's layout"
               " and render (which draw the rows on screen)"),
        Figure("fleet refresh, name sort (row order stable), median (info)", med(r.stable_ms) if r.stable_ms else None,
               None, "ms", None, note="the same changes with the default sort"),
        Figure(
            f"poll cycle via a real controller, {VMS} VMs, CPU median", med(r.poll_ms) if r.poll_ms else None, None,
            "ms", f"<= {REFRESH_TARGET_MS:g}",
            note=f"refresh_fleet() (ListVMs over HTTP with httpx, JSON decoding, apply) + pilot.pause(), in this"
            f" process; {len(r.poll_ms)} polls 1 s apart while fake nodes heartbeat {r.poll_vms} VMs every"
            f" {HEARTBEAT_S:g} s through NodeRegistryService; wall time median"
            f" {med(r.poll_wall_ms) if r.poll_wall_ms else 0:.0f} ms; {sum(1 for g in r.poll_gc_ms if g)} polls"
            f" ran a full garbage collection; {len(r.poll_failures)} failed polls"
            + (f" ({'; '.join(r.poll_failures)})" if r.poll_failures else ""),
        ),
        Figure("poll cycle via a real controller, CPU p95", p95(r.poll_ms), None, "ms", f"<= {REFRESH_TARGET_MS:g}"),
        Figure(
            "first screen with VM rows, real process, median", med(r.first_frame_ms) if r.first_frame_ms else None,
            None, "ms", f"<= {FIRST_FRAME_TARGET_MS:g}",
            note=f"fork of `python -m limiquantix.tui --url ... --token-file ...` on a {SIZE[0]}x{SIZE[1]} pty to the"
            f" first output containing the first row's name (WhoAmI + ListVMs of {VMS} answered and drawn);"
            f" {len(r.first_frame_ms)} starts: " + ", ".join(f"{v:.0f}" for v in r.first_frame_ms) + " ms; the"
            f" process's CPU to then: median {med(r.first_frame_cpu_ms) if r.first_frame_cpu_ms else 0:.0f} ms; load"
            f" average {_load(r, '3')}",
        ),
        Figure("real process, CPU per poll cycle over a window (info)", r.window_cpu_ms_per_poll, None, "ms", None,
               note=r.window_note),
        Figure(
            f"fleet refresh, {VMS_LARGE:,} VMs, CPU per update, median", med(r.large_ms) if r.large_ms else None,
            None, "ms", f"<= {REFRESH_TARGET_MS:g}",
            note=f"figure 1's churn with {VMS_LARGE:,} VMs, {len(r.large_ms)} updates after 3 not counted; apply_fleet"
            f" alone (sorted, handed to the table) median {med(r.large_apply_ms) if r.large_apply_ms else 0:.0f} ms;"
            " then the table checked: 5,000 VMs in the screen's order, the names on screen the right ones (at the"
            f" top and two pages down); load average {_load(r, '4')}",
        ),
        Figure(f"fleet refresh, {VMS_LARGE:,} VMs, CPU per update, p95", p95(r.large_ms), None, "ms",
               f"<= {REFRESH_TARGET_MS:g}"),
        Figure(
            "runner: 1 MiB (300,000 lines) fully shown after the command ended", r.output.get("shown_after_end_ms"),
            None, "ms", f"<= {SHOWN_TARGET_MS:g}",
            note=f"wall time from the result's arrival to the result shown, all {OUTPUT_LINES:,} lines stored and the"
            f" screen drawn at the tail; from the first output byte: {r.output.get('shown_after_first_ms', 0):.0f} ms;"
            f" {OUTPUT_CHUNK // 1024} KiB output events (ExecuteScriptStream played by a MockTransport, the client's"
            " decoding, the job, the output view); issue 13's first measure: ~44 s",
        ),
        Figure("runner: TUI RSS after 1 MiB of output", r.output.get("rss_after_mib"), None, "MiB",
               f"<= {RSS_TARGET_MIB:g}", note="the whole process (Python, Textual, the app) after gc.collect(); issue 13's"
               f" first measure: 310 MB; after the 10 MiB stream too: {r.output.get('rss_after_stream_mib', 0):.0f} MiB"),
        Figure(
            "runner: 10 MiB streamed at the guest's speed, largest lag", r.output.get("stream_lag_ms"), None, "ms",
            f"<= {LAG_TARGET_MS:g}",
            note=f"{STREAM_BYTES // 2**20} MiB of 60-character lines ({r.output.get('stream_lines', 0):,.0f} lines)"
            f" written at {STREAM_RATE // 2**20} MiB/s in {OUTPUT_CHUNK // 1024} KiB chunks by a task on the TUI's loop"
            f" (written in {r.output.get('stream_s', 0):.1f} s, shown {r.output.get('stream_shown_s', 0):.1f} s after the"
            " first chunk was due); every 20 ms: how long ago the oldest chunk not yet in the view was due",
        ),
    ]  # fmt: skip


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    import shutil

    path = Path(tempfile.mkdtemp(prefix="lqx-tb-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure(s: Settings) -> Results:
    """Raises: bl.BenchError, OSError: the run cannot give figures."""
    r = Results()
    if not s.first_screen:
        in_process(s, r)
    with workdir() as work:
        controller, nodes, url, admin = start_controller(work)
        try:
            if not s.first_screen:
                bl.say(f"2. controller pid {controller.popen.pid} at {url} lists {VMS} VMs; {s.polls} poll cycles")
                asyncio.run(poll_cycle(url, admin, s, r))
                bl.say(f"   median {bl.median(r.poll_ms):.1f} ms CPU, {bl.median(r.poll_wall_ms):.1f} ms wall")
            window = "" if s.first_screen else f", then a {s.window_s:g} s window"
            bl.say(f"3. limiquantix-tui under a pty: {s.starts} starts{window}")
            load0 = os.getloadavg()[0]
            real_process(url, admin, work, s, r)
            r.load["3"] = (load0, os.getloadavg()[0])
            bl.say(f"   first screen with rows: median {bl.median(r.first_frame_ms):.0f} ms")
            controller.check_alive()
            nodes.check_alive()
        finally:
            nodes.stop()
            controller.stop()
    return r


def in_process(s: Settings, r: Results) -> None:
    """Figures 1, 4 and 5 (no controller)."""
    bl.say(f"1. fleet refresh in process: {VMS} VMs, {s.updates} updates + {s.updates} naive")
    load0 = os.getloadavg()[0]
    asyncio.run(refresh_in_process(s, r))
    r.load["1"] = (load0, os.getloadavg()[0])
    bl.say(f"   median {bl.median(r.refresh_ms):.1f} ms, naive {bl.median(r.naive_ms):.1f} ms")
    bl.say(f"4. fleet refresh in process: {VMS_LARGE} VMs")
    load0 = os.getloadavg()[0]
    asyncio.run(refresh_large(s, r))
    r.load["4"] = (load0, os.getloadavg()[0])
    bl.say(f"   median {bl.median(r.large_ms):.1f} ms")
    bl.say("5. the runner's output: 1 MiB in 300,000 lines, then 10 MiB streamed (own process)")
    output_figures(r)
    bl.say(
        f"   1 MiB shown {r.output['shown_after_end_ms']:.0f} ms after the end; lag {r.output['stream_lag_ms']:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with figures (targets met or not), 1 on errors, 130 when interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_heartbeat"]:
        return heartbeat_main(argv[1:])
    if argv[:1] == ["_output"]:
        return output_main()
    settings = Settings.from_args(argv)
    load0 = os.getloadavg()[0]
    try:
        results = measure(settings)
    except KeyboardInterrupt:
        print("tui_bench: interrupted", file=sys.stderr)
        return 130
    except (bl.BenchError, OSError, AssertionError) as exc:
        traceback.print_exc()
        print(f"tui_bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if settings.first_screen:
        wall, cpu = results.first_frame_ms, results.first_frame_cpu_ms
        print(
            f"first screen with VM rows, real process: median {bl.median(wall):.0f} ms"
            f" ({', '.join(f'{v:.0f}' for v in wall)}); CPU to then: median {bl.median(cpu):.0f} ms"
            f" ({', '.join(f'{v:.0f}' for v in cpu)}); load average {_load(results, '3')}"
        )
        return 0
    context = (
        f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; Textual"
        f" {_textual_version()}; the controller and the fake nodes share these CPUs with the TUI"
    )
    figures = [f.evaluate() for f in figures_from(results, settings)]
    bl.print_table(figures, f"limiquantix-tui {VERSION}" + (" (--quick)" if settings.quick else ""), context)
    bl.write_figures(figures, settings.output)
    return 0


def _textual_version() -> str:
    from importlib.metadata import version

    return version("textual")


if __name__ == "__main__":
    sys.exit(main())
