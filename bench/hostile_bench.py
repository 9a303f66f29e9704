#!/usr/bin/env python3
"""Benchmark: one hostile guest at a time must not slow, freeze or bloat hostd (issue 10, item 3).

Everything runs on this machine, started and stopped by this script in a fresh
temp dir:

* **hostd** as a real process (``hostd_bench.start_hostd``: its socket directory
  discovered, port 0);
* **20 healthy simulated VMs** (``hostd_bench.start_simvms``: the real agent on a
  pty behind a chardev-like socket), linked into hostd's socket directory;
* **one hostile guest at a time** (``python -m limiquantix.hostd.rawguest``: a
  fake chardev socket whose guest answers the hello and pings, then writes its
  attack as fast as hostd reads): ``garbage``, ``magic_spam``, ``dense_headers``
  (valid headers each claiming 16 MiB), ``event_flood`` (telemetry and
  ip_changed back to back), ``oversized_identity`` (an identity and telemetry
  near the frame limit, re-announced every 0.2 s), the dense ones (16 MiB reports
  and answers of 8 million empty entries, back to back: ``dense_telemetry``,
  ``dense_identity``, ``dense_ip_changed``, ``dense_hello``, ``dense_answers``;
  ``dense_reports`` of 128 KiB, just within the fields hostd parses), and
  ``once:`` each dense kind: one such report (or answer, to one ListGuestDirectory
  the bench makes) from a guest that is quiet otherwise, started inside the
  measured phase, so that the phase's hostd CPU and peak RSS over the no-attack
  figures are what one dense report costs.

Measured in the same run: the bystanders' PingAgent latency through hostd's API
(a closed loop of minimal HTTP/1.1 keep-alive clients, ``hostd_bench.RawHttp``,
over the 20 VMs), first without an attacker, then during each attack; hostd's
peak RSS during each attack and its RSS once the hostile VM has left; the size
of hostd's heartbeat to the controller (``hostd._api.heartbeat_status`` over ListVMs'
statuses: the bytes its heartbeat builds); and whether hostd stayed up.

Targets (the issue's): bystander p99 <= 2x its no-attack figure; hostd RSS <=
no-attack + 64 MiB during an attack and within 16 MiB of it after the VM
leaves; heartbeat <= 1 MiB per 100 VMs; hostd never exits. ``--quick`` runs 5
VMs and 3 s per phase. Prints a table and writes ``bench/results/hostile.json``
(``--quick``: ``hostile-quick.json``). Exits non-zero only on errors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import hostd_bench as hb  # noqa: E402 - bench/ is not a package: found by file name
import trio
from benchlib import (  # noqa: E402
    BenchError,
    Child,
    Figure,
    _die_with_parent,
    bench_parser,
    cpu_seconds,
    output_path,
    percentile,
    print_table,
    report_failure,
    rss_mib,
    say,
    write_figures,
)

from limiquantix.hostd._api import heartbeat_status  # noqa: E402
from limiquantix.protocol import __version__ as VERSION  # noqa: E402
from limiquantix.protocol import errors  # noqa: E402
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb  # noqa: E402
from limiquantix.protocol._gen import vm_service_pb2 as api_pb  # noqa: E402

#: A scenario named ``once:ATTACK``: the attack's first frame (or dense answer) only, sent in the phase.
ONCE: Final = "once:"
SCENARIOS: Final = (
    "garbage",
    "magic_spam",
    "dense_headers",
    "event_flood",
    "oversized_identity",
    "dense_telemetry",
    "dense_reports",
    "dense_unsolicited",
    "bad_frames",
    "dense_identity",
    "dense_ip_changed",
    "dense_hello",
    "dense_answers",
    # once:idle, a quiet guest that connects: what the once: rows' CPU holds besides their report.
    *(
        f"{ONCE}{kind}"
        for kind in ("idle", *(f"dense_{k}" for k in ("telemetry", "identity", "ip_changed", "hello", "answers")))
    ),
)
HOSTILE_ID: Final = "hostile"
#: Keep-alive connections of the bystanders' ping loop (each pings one VM after another).
PING_CONNECTIONS: Final = 4
WAIT_S: Final = 90.0
#: RSS is sampled this often during a phase.
RSS_SAMPLE_S: Final = 0.1
#: The issue's targets.
P99_RATIO: Final = 2.0
RSS_DURING_MIB: Final = 64.0
RSS_AFTER_MIB: Final = 16.0
HEARTBEAT_MIB_PER_100_VMS: Final = 1.0


@dataclass
class Settings:
    quick: bool
    vms: int
    phase_s: float
    settle_s: float
    scenarios: tuple[str, ...]
    output: Path
    workdir: Path | None
    keep_workdir: bool
    hostd_log_level: str = "info"
    """For hostd_bench.start_hostd."""
    hostd_python: str = ""
    """hostd's interpreter (another checkout's venv, for a before/after comparison); "" this one's."""

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        """Raises: SystemExit: bad flags (argparse)."""
        p = bench_parser(__doc__, "hostile", "5 VMs, 3 s per phase")
        p.add_argument("--vms", type=int, help="healthy simulated VMs (default 20, quick 5)")
        p.add_argument("--phase-s", type=float, help="seconds of pings per phase (default 10, quick 3)")
        p.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these attacks (repeatable)")
        p.add_argument(
            "--workdir", type=Path, default=None, help="directory for sockets and logs (default: a temp dir)"
        )
        p.add_argument(
            "--hostd-python",
            default="",
            help="run hostd with this Python (another checkout's .venv/bin/python: its code, this bench's guests)",
        )
        ns = p.parse_args(argv)
        q = ns.quick
        return cls(
            quick=q,
            vms=ns.vms or (5 if q else 20),
            phase_s=ns.phase_s or (3.0 if q else 10.0),
            settle_s=3.0 if q else 5.0,
            scenarios=tuple(ns.scenario or SCENARIOS),
            output=output_path("hostile", ns),
            workdir=ns.workdir,
            keep_workdir=ns.keep_workdir,
            hostd_python=ns.hostd_python,
        )


@dataclass
class Phase:
    """One measuring window: the bystanders' pings and what hostd used meanwhile."""

    ping_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss_max: float = 0.0
    cpu_s: float = 0.0
    seconds: float = 0.0
    heartbeat_bytes: int = 0


@dataclass
class Scenario:
    attack: str
    during: Phase
    rss_after: float
    counters: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    baseline: Phase = field(default_factory=Phase)
    baseline_rss: float = 0.0
    paced: Phase = field(default_factory=Phase)
    """No attack, the bystanders pinged at PACE_S (what a once: scenario is compared with)."""
    scenarios: list[Scenario] = field(default_factory=list)
    hostd_exited: bool = False


class Api:
    """hostd's node API over JSON, for the few calls besides the pings."""

    def __init__(self, client: Any, url: str, token: str) -> None:
        self.client, self.url = client, url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.post(f"{self.url}{hb.SERVICE}/{method}", json=body, headers=self.headers)
        if r.status_code != 200:
            raise BenchError(f"{method}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()  # type: ignore[no-any-return]

    async def state(self, vm_id: str) -> str:
        try:
            vm = await self.call("GetVM", {"vmId": vm_id})
        except BenchError:
            return "absent"
        return str(vm.get("agent", {}).get("state", ""))

    async def heartbeat_bytes(self) -> int:
        """The size of the heartbeat hostd would send now: heartbeat_status over ListVMs' statuses."""
        from google.protobuf import json_format

        listing = json_format.ParseDict(
            await self.call("ListVMs", {}), node_pb.ListVMsResponse(), ignore_unknown_fields=True
        )
        return api_pb.HeartbeatRequest(node_id="bench", vms=[heartbeat_status(s) for s in listing.vms]).ByteSize()


def start_attacker(work: Path, sockdir: Path, scenario: str) -> Child:
    attack = scenario.removeprefix(ONCE)
    log_path = work / f"rawguest-{scenario.replace(':', '-')}.log"
    argv = [sys.executable, "-m", "limiquantix.hostd.rawguest", "--socket", str(sockdir / f"{HOSTILE_ID}.agent.sock"),
            "--attack", attack, *(["--once"] if scenario.startswith(ONCE) else [])]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=work, preexec_fn=_die_with_parent
        )
    return Child(f"rawguest {attack}", popen, log_path)


async def measure_phase(
    hostd: Child,
    api: Api,
    url: str,
    token: str,
    vm_ids: list[str],
    seconds: float,
    attacker: Child | None,
    side: Callable[[], Awaitable[None]] | None = None,
    *,
    paced: bool = False,
) -> Phase:
    """Ping the bystanders in a closed loop for ``seconds`` (``paced``: one at a time, one every
    :data:`PACE_S`, leaving hostd's CPU mostly idle so that what an attack costs shows in its
    CPU time); sample hostd's RSS and CPU meanwhile; ``side`` runs beside them (a once:
    scenario's guest and its call)."""
    phase = Phase()
    conns = [await hb.RawHttp.connect(url, token) for _ in range(PING_CONNECTIONS)]
    requests = [conns[0].request_bytes("PingAgent", json.dumps({"vmId": vm}).encode()) for vm in vm_ids]
    end = time.monotonic() + seconds

    async def pinger(k: int) -> None:
        i = k
        while time.monotonic() < end:
            vm = vm_ids[i % len(vm_ids)]
            t0 = time.perf_counter()
            status, body = await conns[k].call(requests[i % len(vm_ids)])
            ms = (time.perf_counter() - t0) * 1000
            data = json.loads(body) if status == 200 else {}
            if data.get("connected"):
                phase.ping_ms.append(ms)
            else:
                phase.failures.append(f"{vm}: HTTP {status} {body[:200]!r}")
            i += PING_CONNECTIONS
            if paced:
                await trio.sleep(PACE_S)

    async def sampler() -> None:
        while time.monotonic() < end:
            hostd.check_alive()
            if attacker is not None:
                attacker.check_alive()
            phase.rss_max = max(phase.rss_max, rss_mib(hostd.pid))
            await trio.sleep(RSS_SAMPLE_S)

    cpu0, t0 = cpu_seconds(hostd.pid), time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            if side is not None:
                nursery.start_soon(side)
            for k in range(1 if paced else PING_CONNECTIONS):
                nursery.start_soon(pinger, k)
    finally:
        for conn in conns:
            await conn.aclose()
    phase.cpu_s, phase.seconds = cpu_seconds(hostd.pid) - cpu0, time.monotonic() - t0
    with trio.fail_after(WAIT_S):
        phase.heartbeat_bytes = await api.heartbeat_bytes()
    return phase


async def once_guest(
    work: Path, sockdir: Path, scenario: str, api: Api, hostd: Child, attackers: list[Child], notes: list[str]
) -> None:
    """A once: scenario's guest, started :data:`ONCE_START_S` into the phase; for dense_answers,
    the one call it answers densely once the VM is connected."""
    await trio.sleep(ONCE_START_S)
    attackers.append(start_attacker(work, sockdir, scenario))
    if scenario.endswith("dense_answers"):
        await wait_state(api, HOSTILE_ID, ("AGENT_STATE_CONNECTED",), hostd, *attackers)
        notes.append(await list_directory(api))


async def list_directory(api: Api) -> str:
    """One ListGuestDirectory of the hostile VM (which answers it densely): what came back, in how long."""
    t0 = time.perf_counter()
    r = await api.client.post(
        f"{api.url}{hb.SERVICE}/ListGuestDirectory", json={"vmId": HOSTILE_ID, "path": "/"}, headers=api.headers
    )
    ms = (time.perf_counter() - t0) * 1000
    return f"ListGuestDirectory: HTTP {r.status_code} in {ms:.0f} ms, {len(r.content)} bytes, {r.text[:160]!r}"


async def wait_state(api: Api, vm_id: str, states: tuple[str, ...], *children: Child) -> str:
    """Poll GetVM until the VM's state is one of ``states``; the children must stay up meanwhile."""
    with trio.fail_after(WAIT_S):
        while (state := await api.state(vm_id)) not in states:
            for child in children:
                child.check_alive()
            await trio.sleep(0.1)
    return state


_COUNTER_NAMES: Final = (
    "dropped_bytes",
    "unverified_headers",
    "bad_frames",
    "bad_messages",
    "late_replies",
    "rate_limited_events",
    "reconnects",
)
#: The hostile VM's states once its attack is underway: a dense hello keeps it from connecting.
_ATTACKED_STATES: Final = {
    "dense_hello": ("AGENT_STATE_CONNECTING", "AGENT_STATE_WAITING_FOR_AGENT"),
}
#: How long a once: scenario's phase runs before its guest starts (the phase's no-attack part).
ONCE_START_S: Final = 1.0
#: A once: scenario's bystander pings: one every 20 ms, on one connection.
PACE_S: Final = 0.02


def counters(text: str) -> dict[str, float]:
    out = {}
    for name in _COUNTER_NAMES:
        for line in text.splitlines():
            if line.startswith(f"lqx_hostd_agent_{name}_total "):
                out[name] = float(line.split()[1])
    return out


async def measure(work: Path, settings: Settings) -> Results:
    import httpx

    r = Results()
    sockdir, simdir = work / "vms", work / "sims"
    sockdir.mkdir()
    simdir.mkdir()
    token = secrets.token_urlsafe(24)
    token_file = work / "hostd.token"
    token_file.write_text(token + "\n")
    async with contextlib.AsyncExitStack() as stack:
        names = tuple(f"vm-{i:02d}" for i in range(settings.vms))
        say(f"{settings.vms} simulated VMs")
        sims = await hb.start_simvms(stack, names, simdir, work)
        for name, sim in sims.items():
            os.symlink(sim.socket_path, sockdir / f"{name}.agent.sock")
        hostd = hb.start_hostd(work, sockdir, token_file, settings, python=settings.hostd_python)  # type: ignore[arg-type]
        stack.callback(hostd.stop)
        url = await hb.hostd_url(hostd)
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=WAIT_S))
        api = Api(client, url, token)
        for name in names:
            await wait_state(api, name, ("AGENT_STATE_CONNECTED",), hostd)
        say(f"hostd pid {hostd.pid} at {url}: {settings.vms} VMs connected")
        await trio.sleep(settings.settle_s)

        say(f"no attack: {settings.phase_s:g} s of pings")
        r.baseline = await measure_phase(hostd, api, url, token, list(names), settings.phase_s, None)
        r.baseline_rss = rss_mib(hostd.pid)
        if any(attack.startswith(ONCE) for attack in settings.scenarios):
            say(f"no attack, paced pings: {settings.phase_s:g} s")
            r.paced = await measure_phase(hostd, api, url, token, list(names), settings.phase_s, None, paced=True)
        say(f"  p50 {percentile(r.baseline.ping_ms, 50):.2f} ms, p99 {percentile(r.baseline.ping_ms, 99):.2f} ms,"
            f" RSS {r.baseline_rss:.1f} MiB")  # fmt: skip

        for attack in settings.scenarios:
            say(f"{attack}: {settings.phase_s:g} s of pings with the attacker")
            before = counters(await hb.metrics(client, url, token))
            attackers: list[Child] = []
            notes: list[str] = []
            try:
                if attack.startswith(ONCE):
                    side = functools.partial(once_guest, work, sockdir, attack, api, hostd, attackers, notes)
                    during = await measure_phase(
                        hostd, api, url, token, list(names), settings.phase_s, None, side, paced=True
                    )
                else:
                    attackers.append(start_attacker(work, sockdir, attack))
                    states = _ATTACKED_STATES.get(attack, ("AGENT_STATE_CONNECTED", "AGENT_STATE_UNRESPONSIVE"))
                    await wait_state(api, HOSTILE_ID, states, hostd, *attackers)
                    if attack == "dense_answers":
                        notes.append(await list_directory(api))
                    during = await measure_phase(hostd, api, url, token, list(names), settings.phase_s, attackers[0])
            finally:
                for attacker in attackers:
                    attacker.stop()
            await wait_state(api, HOSTILE_ID, ("AGENT_STATE_NO_SOCKET",), hostd)
            await trio.sleep(settings.settle_s)
            hostd.check_alive()
            after = counters(await hb.metrics(client, url, token))
            scenario = Scenario(
                attack, during, rss_mib(hostd.pid), {k: after.get(k, 0) - before.get(k, 0) for k in after}, notes
            )
            r.scenarios.append(scenario)
            say(f"  p50 {percentile(during.ping_ms, 50):.2f} ms, p99 {percentile(during.ping_ms, 99):.2f} ms,"
                f" {len(during.failures)} failed; RSS max {during.rss_max:.1f} MiB, after {scenario.rss_after:.1f} MiB;"
                f" hostd CPU {during.cpu_s / during.seconds * 100:.0f} %; heartbeat {during.heartbeat_bytes} B;"
                f" {scenario.counters}")  # fmt: skip
        r.hostd_exited = hostd.popen.poll() is not None
    return r


def figures_from(r: Results, s: Settings) -> list[Figure]:
    base = r.baseline
    b50, b99 = percentile(base.ping_ms, 50), percentile(base.ping_ms, 99)
    heartbeat_cap_kib = HEARTBEAT_MIB_PER_100_VMS * 1024 * (s.vms + 1) / 100
    figures = [
        Figure("no attack: bystander PingAgent p50", b50, None, "ms", None, note=f"{len(base.ping_ms)} pings"),
        Figure("no attack: bystander PingAgent p99", b99, None, "ms", None),
        Figure("no attack: hostd RSS", r.baseline_rss, None, "MiB", None),
        Figure("no attack: heartbeat", base.heartbeat_bytes / 1024, None, "KiB", f"<= {heartbeat_cap_kib:g}"),
    ]
    paced = r.paced
    if paced.ping_ms:
        figures += [
            Figure("no attack, paced: bystander PingAgent p50", percentile(paced.ping_ms, 50), None, "ms", None,
                   note=f"{len(paced.ping_ms)} pings, one every {PACE_S * 1000:g} ms"),
            Figure("no attack, paced: bystander PingAgent p99", percentile(paced.ping_ms, 99), None, "ms", None),
            Figure("no attack, paced: hostd CPU", paced.cpu_s, None, "s", None, note=f"in {paced.seconds:.1f} s"),
        ]  # fmt: skip
    for sc in r.scenarios:
        d = sc.during
        a = sc.attack
        # A once: scenario's pings are paced: compared with the paced no-attack phase.
        ref = paced if a.startswith(ONCE) else base
        b50, b99 = percentile(ref.ping_ms, 50), percentile(ref.ping_ms, 99)
        cpu = d.cpu_s / d.seconds * 100 if d.seconds else 0.0
        failed = f"; {len(d.failures)} pings failed, first: {d.failures[0]}" if d.failures else ""
        notes = "".join(f"; {n}" for n in sc.notes)
        # hostd's CPU in the phase beyond what serving the pings took without an attack.
        extra_cpu = d.cpu_s - (ref.cpu_s / ref.seconds * d.seconds if ref.seconds else 0.0)
        figures += [
            Figure(f"{a}: bystander PingAgent p50", percentile(d.ping_ms, 50) if d.ping_ms else None, b50, "ms", None,
                   note=f"{len(d.ping_ms)} pings; hostd CPU {cpu:.0f} % of a core; counters {sc.counters}{failed}{notes}"),
            Figure(f"{a}: bystander PingAgent p99", percentile(d.ping_ms, 99) if d.ping_ms else None, b99, "ms",
                   f"ratio <= {P99_RATIO:g}"),
            Figure(f"{a}: bystander PingAgent max", max(d.ping_ms) if d.ping_ms else None, max(ref.ping_ms), "ms",
                   None),
            Figure(f"{a}: hostd CPU over no attack", extra_cpu, None, "s", None,
                   note=f"{d.cpu_s:.2f} CPU-s in {d.seconds:.1f} s"),
            Figure(f"{a}: hostd RSS during", d.rss_max, r.baseline_rss, "MiB", f"delta <= {RSS_DURING_MIB:g}"),
            Figure(f"{a}: hostd RSS after the VM left", sc.rss_after, r.baseline_rss, "MiB", f"delta <= {RSS_AFTER_MIB:g}"),
            Figure(f"{a}: heartbeat", d.heartbeat_bytes / 1024, None, "KiB", f"<= {heartbeat_cap_kib:g}",
                   note=f"{s.vms + 1} VMs"),
        ]  # fmt: skip
    figures.append(Figure("hostd exited", float(r.hostd_exited), None, "", "<= 0"))
    return [f.evaluate() for f in figures]


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with figures (targets met or not), 1 on errors, 130 when interrupted."""
    settings = Settings.from_args(argv)
    # Outside trio.run: SIGTERM unwinds like Ctrl-C (children stopped, temp dir removed).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load0 = os.getloadavg()[0]
    try:
        with hb.workdir("lqx-hb-", keep=settings.keep_workdir, under=settings.workdir) as work:
            say(f"work dir {work}")
            results = trio.run(measure, work, settings)
    except BaseException as exc:  # noqa: BLE001 - reported, then the exit status says it
        return report_failure("hostile_bench", exc, (BenchError, errors.AgentError, OSError, trio.TooSlowError))
    context = (
        f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; hostd, the"
        " simulated VMs, the attacker and the ping clients share these CPUs"
    )
    figures = figures_from(results, settings)
    print_table(figures, f"limiquantix-hostd {VERSION}: {settings.vms} VMs + one hostile guest at a time"
                + (" (--quick)" if settings.quick else ""), context)  # fmt: skip
    write_figures(figures, settings.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
