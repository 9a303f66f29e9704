#!/usr/bin/env python3
"""Benchmark limiquantix-controller: the hop controller → hostd → agent, and sustained load.

Everything runs on this machine, started and stopped by this script in a fresh
temp dir:

* the **controller** as a real process (``python -m limiquantix.controller serve``,
  port chosen by the OS and read from its "serving" log line, a fresh SQLite
  database, the admin token from ``LQX_ADMIN_TOKEN``); hostd's ``node`` token is
  made through the new ``AdminService/CreateToken``;
* **hostd** as a real process registering with it (heartbeats every
  ``HEARTBEAT_INTERVAL_S``), discovering VMs in a socket directory;
* **two simulated VMs** (``SimVMProcess``: the real agent on a pty): VM A behind
  hostd, VM B called straight with ``AgentClient`` (as hostd_bench does);
* when the controller serves ``FleetService``: **500 fake agents**, the process
  of ``bench/hostd_bench.py _fake-agents`` (imported, not copied), put in
  hostd's socket directory.

Figures (targets from issue 4, "Targets"):

1. ExecuteScript ``/bin/true`` through controller → hostd → agent: median
   <= 10 ms, beside the same ``execute`` (``command: "/bin/true"``, what the
   controller sends for a command without args) straight to VM B's socket, in
   interleaved blocks;
2. PingAgent at 200 calls/s for 30 s (``--quick``: 10 s), p99 <= 50 ms. Open
   loop: call *i* is started at ``t0 + i / rate`` whether or not earlier ones
   have finished, and its latency is measured from that scheduled time (so a
   stall is not hidden by the generator waiting for it). The client is a
   minimal HTTP/1.1 keep-alive client (hostd_bench's ``RawHttp``) over a pool
   that grows when every connection is busy;
3. RunCommand ``true`` over 500 VMs with maxConcurrency 100 done within 5 s,
   when fleet runs exist; otherwise the row says "not measured";
4. three concurrent 45 MiB WriteGuestFile calls (base64 JSON, three users so
   that the per-user bound of bytes in flight admits all three) to VM A: the
   peak RSS of the controller and of hostd while they run (issue 10 measured
   796 and 612 MiB before the bytes-in-flight bound and the copies cut), polled
   every 10 ms, for information.

Prints a table and writes ``bench/results/controller.json`` (``--quick``:
``controller-quick.json``) in agent.json's format. Exits non-zero only on
errors; missed targets are reported, not fatal. See bench/README.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

BENCH_DIR: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import benchlib as bl  # noqa: E402 - bench/ is not a package
import hostd_bench as hb  # noqa: E402

from limiquantix.protocol import __version__ as VERSION  # noqa: E402
from limiquantix.protocol import errors  # noqa: E402
from limiquantix.protocol._gen import agent_pb2 as pb  # noqa: E402

__all__ = ["Settings", "main", "measure"]

VM_SERVICE: Final = "/limiquantix.compute.v1.VMService"
ADMIN_SERVICE: Final = "/limiquantix.compute.v1.AdminService"
FLEET_SERVICE: Final = "/limiquantix.compute.v1.FleetService"
#: hostd's heartbeat (the controller learns of new VMs at the next one).
HEARTBEAT_INTERVAL_S: Final = 2.0
START_TIMEOUT_S: Final = 90.0
FIGURE_TIMEOUT_S: Final = 180.0
#: Targets (issue 4).
EXEC_TARGET_MS: Final = 10.0
PING_RATE: Final = 200
PING_TARGET_P99_MS: Final = 50.0
FLEET_VMS: Final = 500
FLEET_CONCURRENCY: Final = 100
FLEET_TARGET_MS: Final = 5000.0
#: GetCommand polling while a fleet run is in progress.
FLEET_POLL_S: Final = 0.05
_FLEET_DONE: Final = frozenset({"success", "failed", "cancelled"})
_VM_A: Final = "sim-a"


@dataclass(frozen=True)
class Settings:
    """What one run measures (``--quick`` shortens it)."""

    quick: bool
    exec_count: int
    exec_warmup: int
    exec_blocks: int
    ping_seconds: float
    output: Path
    keep_workdir: bool
    agents: int = FLEET_VMS
    """For hostd_bench.FleetProcess."""
    telemetry_interval_s: float = 5.0
    """For hostd_bench.FleetProcess."""

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        """Raises: SystemExit: bad flags (argparse)."""
        parser = bl.bench_parser(__doc__, "controller", "10 s of pings, 60 executes")
        ns = parser.parse_args(argv)
        return cls(
            quick=ns.quick,
            exec_count=60 if ns.quick else 300,
            exec_warmup=10 if ns.quick else 30,
            exec_blocks=3 if ns.quick else 5,
            ping_seconds=10.0 if ns.quick else 30.0,
            output=bl.output_path("controller", ns),
            keep_workdir=ns.keep_workdir,
        )


@dataclass
class Results:
    exec_api: list[float] = field(default_factory=list)
    exec_raw: list[float] = field(default_factory=list)
    exec_direct: list[float] = field(default_factory=list)
    ping_latencies: list[float] = field(default_factory=list)
    ping_failures: list[str] = field(default_factory=list)
    ping_timeline: list[tuple[float, float]] = field(default_factory=list)
    """(scheduled time, latency ms) of each answered call: where the slow ones cluster."""
    ping_wall_s: float = 0.0
    ping_connections: int = 0
    ping_cpu: dict[str, float] = field(default_factory=dict)
    fleet_ms: float | None = None
    fleet_note: str = ""
    write_peak_mib: dict[str, float] = field(default_factory=dict)
    write_note: str = ""


#: The large-write figure: three writes of this many bytes at once.
WRITE_BYTES: Final = 45 * 1024 * 1024
WRITERS: Final = 3


async def concurrent_writes(
    client: Any, url: str, headers: dict[str, str], work: Path, pids: dict[str, int], r: Results
) -> None:
    """Three 45 MiB WriteGuestFile calls at once (one user each); peak RSS of each process meanwhile.

    Raises:
        hb.BenchError: a write or a token creation failed.
    """
    import base64
    import hashlib

    content = os.urandom(WRITE_BYTES)
    encoded = base64.b64encode(content).decode()
    writers = []
    for i in range(WRITERS):
        made = await client.post(
            f"{url}{ADMIN_SERVICE}/CreateToken", json={"user": f"writer-{i}", "role": "operator"}, headers=headers
        )
        if made.status_code != 200:
            raise hb.BenchError(f"CreateToken: {made.status_code} {made.text}")
        writers.append(made.json()["token"])
    before = {name: hb.rss_mib(pid) for name, pid in pids.items()}
    peak = dict(before)
    answers: list[Any] = []

    async def write(i: int) -> None:
        body = json.dumps({"vmId": _VM_A, "path": str(work / f"written-{i}"), "content": encoded}).encode()
        answers.append(await client.post(f"{url}{VM_SERVICE}/WriteGuestFile", content=body,
                                         headers={**headers, "Authorization": f"Bearer {writers[i]}"}))  # fmt: skip

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(WRITERS):
            nursery.start_soon(write, i)
        while len(answers) < WRITERS:
            for name, pid in pids.items():
                peak[name] = max(peak[name], hb.rss_mib(pid))
            await trio.sleep(0.01)
    wall = time.perf_counter() - started
    bad = [a for a in answers if a.status_code != 200]
    if bad:
        raise hb.BenchError(f"WriteGuestFile: {bad[0].status_code} {bad[0].text[:300]}")
    digest = hashlib.sha256(content).hexdigest()
    if any(a.json()["sha256"] != digest for a in answers):
        raise hb.BenchError("WriteGuestFile: a SHA-256 differs")
    r.write_peak_mib = peak
    r.write_note = (
        f"{WRITERS} x {WRITE_BYTES // (1024 * 1024)} MiB ({len(encoded) / 1048576:.0f} MiB of base64 JSON each) in"
        f" {wall:.1f} s; RSS before: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in before.items())
    )


# ============================================================================= processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(name: str, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> hb.Child:
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=cwd,
            env=env,
            preexec_fn=hb._die_with_parent,  # noqa: PLW1509 - children die with the benchmark
        )
    return hb.Child(name, popen, log_path)


def _percentile(values: list[float], pct: float) -> float:
    return hb.percentile(values, pct)


# ============================================================================= figures


async def exec_api(client: Any, url: str, headers: dict[str, str], count: int) -> list[float]:
    """ExecuteScript /bin/true through the controller with httpx; ms each.

    Raises:
        hb.BenchError: a call failed.
    """
    body = json.dumps({"vmId": _VM_A, "command": "/bin/true"}).encode()
    out = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        r = await client.post(f"{url}{VM_SERVICE}/ExecuteScript", content=body, headers=headers)
        out.append((time.perf_counter_ns() - t0) / 1e6)
        if r.status_code != 200 or r.json().get("exitCode", 0) != 0:
            raise hb.BenchError(f"ExecuteScript through the controller: {r.status_code} {r.text[:300]}")
    return out


def _raw_request(conn: hb.RawHttp, method: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return conn.head.format(path=f"{VM_SERVICE}/{method}", n=len(data)).encode() + data


async def exec_raw(conn: hb.RawHttp, count: int) -> list[float]:
    """The same with a minimal HTTP client (what the controller costs without httpx's share).

    Raises:
        hb.BenchError: a call failed.
    """
    req = _raw_request(conn, "ExecuteScript", {"vmId": _VM_A, "command": "/bin/true"})
    out = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        status, data = await conn.call(req)
        out.append((time.perf_counter_ns() - t0) / 1e6)
        if status != 200:
            raise hb.BenchError(f"ExecuteScript (raw client): {status} {data[:300]!r}")
    return out


async def exec_direct(client: Any, count: int) -> list[float]:
    """``execute`` of ``/bin/true`` as a shell command (what the controller sends) straight to VM B.

    Raises:
        hb.BenchError: a call failed.
    """
    req = pb.ExecuteRequest(command="/bin/true")
    out = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        resp = (await client.request(execute=req)).execute_response
        out.append((time.perf_counter_ns() - t0) / 1e6)
        if resp.exit_reason != pb.EXIT_REASON_EXITED or resp.exit_code != 0:
            raise hb.BenchError(f"execute /bin/true (direct): {resp}")
    return out


async def ping_open_loop(url: str, token: str, rate: int, seconds: float, r: Results) -> None:
    """PingAgent at ``rate``/s for ``seconds``, open loop; latency from each call's scheduled time."""
    free: list[hb.RawHttp] = []
    opened: list[hb.RawHttp] = []
    template = hb.RawHttp(url, token)
    request = _raw_request(template, "PingAgent", {"vmId": _VM_A})
    total = round(rate * seconds)

    async def one(scheduled: float) -> None:
        conn = free.pop() if free else None
        try:
            if conn is None:
                conn = await hb.RawHttp.connect(url, token)
                opened.append(conn)
            status, data = await conn.call(request)
        except (OSError, trio.BrokenResourceError, hb.BenchError) as exc:
            r.ping_failures.append(f"{type(exc).__name__}: {exc}")
            return
        r.ping_latencies.append((trio.current_time() - scheduled) * 1000)
        r.ping_timeline.append((scheduled, r.ping_latencies[-1]))
        free.append(conn)
        if status != 200 or b'"connected":true' not in data:
            r.ping_failures.append(f"{status} {data[:200]!r}")

    t0 = trio.current_time() + 0.1
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(total):
            scheduled = t0 + i / rate
            await trio.sleep_until(scheduled)
            nursery.start_soon(one, scheduled)
    r.ping_wall_s = time.monotonic() - started
    r.ping_connections = len(opened)
    for conn in opened:
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await conn.aclose()


async def fleet_run(client: Any, url: str, headers: dict[str, str], vm_ids: list[str]) -> tuple[float, str]:
    """RunCommand ``true`` over ``vm_ids``; (ms until GetCommand says done, note).

    Raises:
        hb.BenchError: the call failed.
    """
    body = {"vmIds": vm_ids, "command": "true", "maxConcurrency": FLEET_CONCURRENCY, "maxErrors": str(len(vm_ids))}
    t0 = time.perf_counter()
    r = await client.post(f"{url}{FLEET_SERVICE}/RunCommand", json=body, headers=headers)
    if r.status_code != 200:
        raise hb.BenchError(f"RunCommand: {r.status_code} {r.text[:300]}")
    command_id = r.json()["commandId"]
    while True:
        g = await client.post(f"{url}{FLEET_SERVICE}/GetCommand", json={"commandId": command_id}, headers=headers)
        if g.status_code != 200:
            raise hb.BenchError(f"GetCommand: {g.status_code} {g.text[:300]}")
        cmd = g.json()
        if cmd["status"] in _FLEET_DONE:
            wall_ms = (time.perf_counter() - t0) * 1000
            return wall_ms, f"status {cmd['status']}, counts {cmd.get('counts')}"
        await trio.sleep(FLEET_POLL_S)


async def _wait_connected(client: Any, url: str, headers: dict[str, str], want: int, proc: list[hb.Child]) -> list[str]:
    """VM ids the controller lists as connected, once there are ``want``.

    Raises:
        trio.TooSlowError: not within START_TIMEOUT_S.
    """
    with trio.fail_after(START_TIMEOUT_S):
        while True:
            for child in proc:
                child.check_alive()
            r = await client.post(f"{url}{VM_SERVICE}/ListVMs", json={"pageSize": 1000}, headers=headers)
            if r.status_code == 200:
                vms = [
                    v["vmId"] for v in r.json().get("vms", []) if v["agentState"] == "connected" and v["nodeReachable"]
                ]
                if len(vms) >= want:
                    return vms
            await trio.sleep(0.2)


async def measure(work: Path, settings: Settings) -> Results:
    """Start everything, take the figures, stop everything.

    Raises:
        hb.BenchError, OSError, trio.TooSlowError: the run cannot give figures.
    """
    import httpx

    from limiquantix.protocol import AgentClient

    r = Results()
    admin_token = "lqx-bench-" + secrets.token_urlsafe(24)
    sockdir = work / "vms"
    simdir = work / "sim"
    sockdir.mkdir()
    simdir.mkdir()
    empty = work / "empty.toml"
    empty.write_text("")
    async with contextlib.AsyncExitStack() as stack:
        controller = _spawn(
            "limiquantix-controller",
            [sys.executable, "-m", "limiquantix.controller", "serve", "--config", str(empty),
             "--listen", "127.0.0.1:0", "--db", str(work / "controller.db"), "--log-level", "info"],
            work / "controller.log", work, env={**os.environ, "LQX_ADMIN_TOKEN": admin_token},
        )  # fmt: skip
        stack.callback(controller.stop)
        url = await controller.serving_url(bl.CONTROLLER_SERVING_RE, START_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=FIGURE_TIMEOUT_S))
        made = await client.post(
            f"{url}{ADMIN_SERVICE}/CreateToken", json={"user": "bench-host", "role": "node"}, headers=headers
        )
        if made.status_code != 200:
            raise hb.BenchError(f"CreateToken: {made.status_code} {made.text}")
        node_token = made.json()["token"]

        sims = await hb.start_simvms(stack, (_VM_A, "sim-b"), simdir, work)
        os.symlink(sims[_VM_A].socket_path, sockdir / f"{_VM_A}.agent.sock")

        hostd_token = work / "hostd.token"
        hostd_token.write_text(secrets.token_urlsafe(24) + "\n")
        node_token_file = work / "node.token"
        node_token_file.write_text(node_token + "\n")
        hostd = _spawn(
            "limiquantix-hostd",
            [sys.executable, "-m", "limiquantix.hostd", "--config", str(empty),
             "--listen", f"127.0.0.1:{_free_port()}", "--token-file", str(hostd_token),
             "--socket-dir", str(sockdir), "--libvirt-channel-root", "", "--node-id", "bench-host",
             "--controller-url", url, "--controller-token-file", str(node_token_file),
             "--heartbeat-interval-s", f"{HEARTBEAT_INTERVAL_S:g}", "--log-level", "warning"],
            work / "hostd.log", work,
        )  # fmt: skip
        stack.callback(hostd.stop)
        await _wait_connected(client, url, headers, 1, [controller, hostd])
        hb.say(f"controller pid {controller.popen.pid} at {url}; hostd pid {hostd.popen.pid}; {_VM_A} connected")

        # -- 1. ExecuteScript through the controller vs straight to an agent ---------------
        direct = await stack.enter_async_context(AgentClient.connect_unix(sims["sim-b"].socket_path))
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(hb.drain_events, direct)
        raw = await hb.RawHttp.connect(url, admin_token)
        stack.push_async_callback(raw.aclose)
        with trio.fail_after(FIGURE_TIMEOUT_S):
            await exec_api(client, url, headers, settings.exec_warmup)
            await exec_raw(raw, settings.exec_warmup)
            await exec_direct(direct, settings.exec_warmup)
            for n in hb.blocks(settings.exec_count, settings.exec_blocks):
                r.exec_api += await exec_api(client, url, headers, n)
                r.exec_direct += await exec_direct(direct, n)
                r.exec_raw += await exec_raw(raw, n)
        hb.say(
            f"ExecuteScript /bin/true: controller {hb.median(r.exec_api):.2f} ms (raw client"
            f" {hb.median(r.exec_raw):.2f}), direct {hb.median(r.exec_direct):.2f} ms"
        )

        # -- 2. PingAgent, open loop -----------------------------------------------------
        hb.say(f"PingAgent {PING_RATE}/s for {settings.ping_seconds:g} s (open loop)")
        cpu0 = {c.name: hb.cpu_seconds(c.popen.pid) for c in (controller, hostd)}
        p0 = time.process_time()
        with trio.fail_after(settings.ping_seconds + FIGURE_TIMEOUT_S):
            await ping_open_loop(url, admin_token, PING_RATE, settings.ping_seconds, r)
        r.ping_cpu = {name: (hb.cpu_seconds(c.popen.pid) - cpu0[name]) / r.ping_wall_s * 100 for name, c in
                      (("limiquantix-controller", controller), ("limiquantix-hostd", hostd))}  # fmt: skip
        r.ping_cpu["client"] = (time.process_time() - p0) / r.ping_wall_s * 100
        hb.say(
            f"  p50 {hb.median(r.ping_latencies):.2f} ms, p99 {_percentile(r.ping_latencies, 99):.2f} ms,"
            f" {len(r.ping_failures)} failed, {r.ping_connections} connections, CPU {r.ping_cpu}"
        )

        # -- 4 (first: before the 500 fake agents grow hostd). Three large writes at once --
        hb.say(f"WriteGuestFile: {WRITERS} x {WRITE_BYTES // (1024 * 1024)} MiB at once")
        with trio.fail_after(FIGURE_TIMEOUT_S):
            await concurrent_writes(
                client, url, headers, work,
                {"limiquantix-controller": controller.popen.pid, "limiquantix-hostd": hostd.popen.pid}, r,
            )  # fmt: skip
        hb.say(f"  peak RSS {r.write_peak_mib}; {r.write_note}")

        # -- 3. RunCommand over 500 VMs, when fleet runs exist ----------------------------
        probe = await client.post(f"{url}{FLEET_SERVICE}/ListCommands", json={}, headers=headers)
        if probe.status_code != 200:
            r.fleet_note = (
                f"not measured: the controller does not serve FleetService yet (ListCommands answered"
                f" {probe.status_code} {probe.json().get('code', '') if probe.content else ''})"
            )
            hb.say(f"RunCommand: {r.fleet_note}")
        else:
            hb.say(f"RunCommand: {FLEET_VMS} fake agents (hostd_bench's) in hostd's socket directory")
            fleet = hb.FleetProcess(work, sockdir, settings)  # type: ignore[arg-type]  # duck-typed settings
            stack.callback(fleet.child.stop)
            stack.push_async_callback(fleet.close)
            with trio.fail_after(START_TIMEOUT_S):
                await fleet.wait_ready()
            vms = await _wait_connected(client, url, headers, FLEET_VMS + 1, [controller, hostd, fleet.child])
            fake = sorted(v for v in vms if v.startswith("vm-"))[:FLEET_VMS]
            with trio.fail_after(FIGURE_TIMEOUT_S):
                r.fleet_ms, r.fleet_note = await fleet_run(client, url, headers, fake)
            hb.say(f"  {r.fleet_ms:.0f} ms; {r.fleet_note}")
        controller.check_alive()
        hostd.check_alive()
        nursery.cancel_scope.cancel()
    return r


def figures_from(r: Results, s: Settings) -> list[hb.Figure]:
    """The table's rows."""
    ping = r.ping_latencies
    expected = round(PING_RATE * s.ping_seconds)
    return [
        hb.Figure(
            "ExecuteScript /bin/true via controller, median", hb.median(r.exec_api), hb.median(r.exec_direct), "ms",
            f"<= {EXEC_TARGET_MS:g}",
            note=f"{len(r.exec_api)} calls with httpx through controller -> hostd -> agent (VM A), interleaved in"
            f" {s.exec_blocks} blocks with the same execute sent straight to VM B's socket (baseline, AgentClient);"
            " command without args = shell script, both ways",
        ),
        hb.Figure("ExecuteScript via controller, p99 (info)", hb.percentile(r.exec_api, 99), hb.percentile(r.exec_direct, 99), "ms", None),
        hb.Figure(
            "ExecuteScript via controller, raw HTTP client, median (info)", hb.median(r.exec_raw), hb.median(r.exec_direct), "ms", None,
            note="the same calls from a minimal HTTP/1.1 client: the controller's own cost without httpx's",
        ),
        hb.Figure(
            f"PingAgent {PING_RATE}/s for {s.ping_seconds:g} s, p99", hb.percentile(ping, 99) if ping else None, None, "ms",
            f"<= {PING_TARGET_P99_MS:g}",
            note=f"open loop, latency from each call's scheduled time; {len(ping)} of {expected} answered connected"
            f" in {r.ping_wall_s:.1f} s, {len(r.ping_failures)} failed"
            f"{' (first: ' + r.ping_failures[0] + ')' if r.ping_failures else ''}; {r.ping_connections} keep-alive"
            f" connections; CPU % of a core: " + ", ".join(f"{k} {v:.0f}" for k, v in r.ping_cpu.items()),
        ),
        hb.Figure(f"PingAgent {PING_RATE}/s, p50 (info)", hb.median(ping) if ping else None, None, "ms", None),
        hb.Figure(f"PingAgent {PING_RATE}/s, max (info)", max(ping) if ping else None, None, "ms", None),
        hb.Figure(
            f"RunCommand true x{FLEET_VMS}, maxConcurrency {FLEET_CONCURRENCY}", r.fleet_ms, None, "ms",
            f"<= {FLEET_TARGET_MS:g}",
            note=(f"wall time from RunCommand to GetCommand reporting done (polled every {FLEET_POLL_S * 1000:g} ms),"
                  f" {FLEET_VMS} fake agents (hostd_bench.py's: execute answered without running a process); "
                  if r.fleet_ms is not None else "") + r.fleet_note,
        ),
        *(
            hb.Figure(f"{WRITERS} concurrent 45 MiB WriteGuestFile: {name} peak RSS (info)", mib, None, "MiB", None,
                      note=r.write_note)
            for name, mib in r.write_peak_mib.items()
        ),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with figures (targets met or not), 1 on errors, 130 when interrupted."""
    settings = Settings.from_args(argv)
    load0 = os.getloadavg()[0]
    try:
        with hb.workdir("lqx-cb-", keep=settings.keep_workdir) as work:
            hb.say(f"work dir {work}")
            results = trio.run(measure, work, settings)
    except BaseException as exc:  # noqa: BLE001 - reported, then the exit status says it
        return hb.report_failure(
            "controller_bench", exc, (hb.BenchError, errors.AgentError, OSError, trio.TooSlowError)
        )
    context = (
        f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; controller,"
        " hostd, the simulated VMs and the client share these CPUs"
    )
    figures = [f.evaluate() for f in figures_from(results, settings)]
    hb.print_table(figures, f"limiquantix-controller {VERSION}" + (" (--quick)" if settings.quick else ""), context)
    hb.write_figures(figures, settings.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
