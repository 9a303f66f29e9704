#!/usr/bin/env python3
"""Benchmark limiquantix-hostd: 500 agents, the node API's fan-out and its overhead.

Everything runs on this machine and is started and stopped by this script, in a
fresh temp dir:

* **500 fake agents**, in another process (this file, run as
  ``hostd_bench.py _fake-agents``): one trio process listening on 500 Unix
  sockets ``<dir>/vm-NNNN.agent.sock``, playing QEMU's chardev side (one client
  at a time). For each hostd connection it behaves like an agent over the real
  codec (``protocol.framing`` / ``wire`` / ``transport``): it announces
  ``agent_ready`` on connect, answers ``hello`` with an ``AgentIdentity``
  captured once from the real agent's identity builder (per-VM hostname, pid,
  machine id, addresses), ``ping`` with a ``PongResponse``, ``execute`` with a
  plausible ``ExecuteResponse`` (no process is run), and pushes a
  ``TelemetryReport`` captured once from the real ``TelemetryCollector`` (CPU
  figures varied) every 5 s per VM, each VM with its own random phase.
* **hostd** as a real process: ``python -m limiquantix.hostd --config EMPTY.toml
  --listen 127.0.0.1:0 --token-file F --socket-dir DIR --libvirt-channel-root ''``
  (the OS picks the port; it is read from hostd's "serving" log line). It
  discovers the 500 sockets itself.
* **two simulated VMs** (``limiquantix.hostd.simvm.SimVMProcess``: the real agent
  on a pty behind a chardev-like socket) for the execute figure: VM A is put
  behind hostd (a symlink into hostd's socket directory), VM B is called
  directly with ``AgentClient``.

Figures (targets from issue 3, "Targets"):

1. hostd with 500 connected agents at 5 s telemetry, over 60 s (``--quick``:
   15 s): CPU <= 15 % of one core, RSS <= 300 MiB (the fake agents' own CPU and
   RSS beside it, for reference);
2. PingAgent to all 500 at once through the API: the whole batch answered within
   2 s (median of several batches; p50/p99 per call). The calls are dealt over 10
   httpx.AsyncClients of 10 keep-alive connections each: httpcore 1.0's pool
   costs O(connections x queued requests) per request (encode/httpcore#1035),
   and hostd's listen backlog (hypercorn's default, 100) overflows when 500
   connections are opened at once (both shown in informational rows);
3. ExecuteInGuest ``/bin/true`` through hostd adds <= 2 ms median over the same
   ``execute`` sent straight to an agent's socket (interleaved blocks).

Informational rows show where time goes (a minimal HTTP/1.1 client beside
httpx, hostd's CPU per PingAgent, the two simulated VMs called directly, ...).
Prints a table and writes ``bench/results/hostd.json`` (``--quick``:
``hostd-quick.json``) in agent.json's format. Exits non-zero only on errors;
missed targets are reported, not fatal. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import heapq
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio
from benchlib import (  # noqa: E402 - bench/ is not a package: found by file name
    HOSTD_SERVING_RE,
    BenchError,
    Child,
    Figure,
    _die_with_parent,
    bench_parser,
    blocks,
    cpu_seconds,
    median,
    output_path,
    percentile,
    print_table,
    report_failure,
    rss_mib,
    say,
    workdir,
    write_figures,
)

from limiquantix.protocol import __version__ as VERSION
from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as pb

BENCH_DIR: Final = Path(__file__).resolve().parent
SERVICE: Final = "/limiquantix.node.v1.NodeDaemonService"
#: hostd's start, the fleet's start, 500 connections: each bounded by this.
START_TIMEOUT_S: Final = 90.0
#: Safety net per figure, so a wedged process fails the run instead of hanging it.
FIGURE_TIMEOUT_S: Final = 120.0
#: Pause between ping batches: well below hypercorn's 5 s keep-alive timeout,
#: so batches reuse the client's connections.
BATCH_PAUSE_S: Final = 0.5
#: New connections opened at once while filling the clients' pools: hostd
#: listens with hypercorn's default backlog (100), and more SYNs than that at
#: once overflow it (connections reset; see the "new connection per call" row).
CONNECT_AT_ONCE: Final = 50
#: hostd's log line naming its bound addresses (daemon.serve).
_CONNECTED_RE: Final = re.compile(r'^lqx_hostd_vms\{state="connected"\} (\S+)$', re.M)
_RECONNECTS_RE: Final = re.compile(r"^lqx_hostd_agent_reconnects_total (\S+)$", re.M)


# ====================================================================== the fake agents


def _capture_templates() -> tuple[pb.AgentIdentity, pb.TelemetryReport]:
    """One identity from the real agent's builder and one real telemetry sample."""
    from limiquantix.agent._config import AgentConfig
    from limiquantix.agent._daemon import Agent

    agent = Agent(AgentConfig(transport="unix-listen", socket="/nonexistent/identity-only.sock"))
    identity = agent.identity()
    agent.collector.sample()  # CPU % needs two samples
    time.sleep(0.3)
    telemetry = agent.collector.sample()
    return identity, telemetry


class FakeVM:
    """One VM's chardev socket and the fake agent behind it."""

    def __init__(self, fleet: FakeFleet, index: int, vm_id: str, path: str) -> None:
        from limiquantix.protocol import MessageWriter

        self.fleet = fleet
        self.index = index
        self.vm_id = vm_id
        self.path = path
        self.started = time.monotonic()
        rng = fleet.rng
        ident = copy.deepcopy(fleet.identity)
        ident.hostname = vm_id
        ident.pid = 400 + index
        ident.machine_id = secrets.token_hex(16)
        for n, iface in enumerate(ident.interfaces):
            iface.mac = f"52:54:00:{index >> 8:02x}:{index & 0xFF:02x}:{n:02x}"
            for addr in iface.ipv4:
                addr.address = f"10.{n}.{index >> 8}.{index & 0xFF}"
        self.identity = ident
        self.telemetry = copy.deepcopy(fleet.telemetry)
        self.telemetry.uptime_seconds = rng.uniform(600, 86400 * 30)
        self.base_cpu = rng.uniform(1, 40)
        self.writer: MessageWriter | None = None
        self.exec_pid = 10_000 + 1000 * index

    # -- serving -----------------------------------------------------------------

    async def serve(self, listener: trio.socket.SocketType) -> None:
        """Accept one host client at a time, as QEMU's chardev does."""
        while True:
            client, _ = await listener.accept()
            self.fleet.stats["connections"] += 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._serve_client(trio.SocketStream(client))

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        from limiquantix.protocol import (
            BadMessage,
            FrameDecoder,
            MessageWriter,
            direct_reader,
            direct_writer,
            new_message,
            parse_frame,
            receive_frames,
        )

        async with stream:
            writer = MessageWriter(stream.send_all, try_write=direct_writer(stream))
            decoder = FrameDecoder()
            receive_some = direct_reader(stream, 64 * 1024)
            async with trio.open_nursery() as nursery:

                async def write(coro_fn: Any, *args: Any) -> None:
                    # The host went away: the read side notices it as well.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        await coro_fn(*args)

                nursery.start_soon(write, writer.run)
                # Unprompted, as the real agent does when its port opens: a host
                # that has not synced yet discards it.
                writer.try_send(new_message(agent_ready=pb.AgentReadyEvent(identity=self.identity)))
                self.writer = writer
                try:
                    while True:
                        frames = await receive_frames(receive_some, decoder)
                        if frames is None:
                            break
                        for frame in frames:
                            try:
                                msg = parse_frame(frame)
                            except BadMessage:
                                self.fleet.stats["bad_messages"] += 1
                                continue
                            answer = self._answer(msg)
                            if answer is not None and not writer.try_send(answer):
                                nursery.start_soon(write, writer.send, answer)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                finally:
                    self.writer = None
                    nursery.cancel_scope.cancel()

    def _answer(self, msg: pb.AgentMessage) -> pb.AgentMessage | None:
        from limiquantix.protocol import new_message

        kind = msg.WhichOneof("payload")
        stats = self.fleet.stats
        stats[kind or "unknown"] += 1
        mid = msg.message_id
        if kind == "ping":
            return new_message(
                mid,
                pong=pb.PongResponse(
                    payload=msg.ping.payload,
                    agent_uptime_seconds=time.monotonic() - self.started,
                    system_uptime_seconds=self.telemetry.uptime_seconds,
                    agent_version=VERSION,
                ),
            )
        if kind == "hello":
            return new_message(mid, hello_response=pb.HelloResponse(sync_id=msg.hello.sync_id, identity=self.identity))
        if kind == "execute":
            # What the real agent answers for /bin/true, without running it.
            self.exec_pid += 1
            return new_message(
                mid,
                execute_response=pb.ExecuteResponse(
                    exit_reason=pb.EXIT_REASON_EXITED, exit_code=0, pid=self.exec_pid, duration_ms=1
                ),
            )
        if kind == "info":
            return new_message(mid, info_response=self.identity)
        if kind == "get_telemetry":
            return new_message(mid, telemetry_response=self._next_report())
        if kind == "cancel":
            return new_message(mid, cancel_response=pb.CancelResponse(found=False))
        err = errors.Unimplemented(f"{kind} is not implemented by the benchmark's fake agent")
        return new_message(mid, error=err.to_proto())

    # -- telemetry -----------------------------------------------------------------

    def _next_report(self) -> pb.TelemetryReport:
        rng = self.fleet.rng
        report = self.telemetry
        now = time.time_ns()
        report.collected_at.seconds, report.collected_at.nanos = divmod(now, 1_000_000_000)
        cpu = max(0.0, min(100.0, rng.gauss(self.base_cpu, 5.0)))
        report.cpu_percent = round(cpu, 2)
        for i in range(len(report.per_cpu_percent)):
            report.per_cpu_percent[i] = round(max(0.0, min(100.0, rng.gauss(cpu, 8.0))), 2)
        report.uptime_seconds += self.fleet.interval_s
        return report

    def push_telemetry(self) -> None:
        from limiquantix.protocol import new_message

        writer = self.writer
        if writer is None:
            return
        if writer.try_send(new_message(telemetry=self._next_report())):
            self.fleet.stats["telemetry_sent"] += 1
        else:
            self.fleet.stats["telemetry_dropped"] += 1


class FakeFleet:
    """Many fake agents in one trio process, one chardev-like socket each."""

    def __init__(self, directory: Path, count: int, *, prefix: str, interval_s: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.identity, self.telemetry = _capture_templates()
        self.interval_s = interval_s
        self.stats: Counter[str] = Counter()
        self.vms = [
            FakeVM(self, i, f"{prefix}{i:04d}", str(directory / f"{prefix}{i:04d}.agent.sock")) for i in range(count)
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = []
        try:
            for vm in self.vms:
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners.append(sock)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(vm.path)
                await sock.bind(vm.path)
                sock.listen(4)  # QEMU: one client served, a few may wait
            async with trio.open_nursery() as nursery:
                for vm, sock in zip(self.vms, listeners, strict=False):
                    nursery.start_soon(vm.serve, sock)
                nursery.start_soon(self._telemetry_loop)
                task_status.started()
        finally:
            for sock in listeners:
                sock.close()
            for vm in self.vms:
                with contextlib.suppress(OSError):
                    os.unlink(vm.path)

    async def _telemetry_loop(self) -> None:
        """Every VM every interval, each at its own random phase (one timer for all)."""
        now = trio.current_time()
        due = [(now + self.rng.uniform(0, self.interval_s), i) for i in range(len(self.vms))]
        heapq.heapify(due)
        while True:
            when, i = due[0]
            await trio.sleep_until(when)
            heapq.heapreplace(due, (when + self.interval_s, i))
            self.vms[i].push_telemetry()


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _fake_main(ns: argparse.Namespace) -> None:
    fleet = FakeFleet(Path(ns.dir), ns.count, prefix=ns.prefix, interval_s=ns.telemetry_interval_s, seed=ns.seed)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            async def control() -> None:
                # Commands on stdin, one per line; end of stdin (the benchmark
                # went away) stops the fleet.
                stdin = trio.lowlevel.FdStream(os.dup(0))
                buf = b""
                async with stdin:
                    while True:
                        data = await stdin.receive_some(4096)
                        if not data:
                            break
                        buf += data
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            if line.strip() == b"stats":
                                connected = sum(vm.writer is not None for vm in fleet.vms)
                                _emit({"stats": dict(fleet.stats), "connected": connected})
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            await nursery.start(fleet.run)
            _emit({"ready": True, "count": len(fleet.vms), "pid": os.getpid()})
            nursery.start_soon(control)


def fake_agents_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hostd_bench.py _fake-agents", description="500 fake agents (internal)")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--prefix", default="vm-")
    parser.add_argument("--telemetry-interval-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    trio.run(_fake_main, parser.parse_args(argv))
    return 0


# ============================================================================ settings


@dataclass(frozen=True)
class Settings:
    quick: bool
    agents: int
    telemetry_interval_s: float
    settle_s: float
    idle_s: float
    ping_batches: int
    http_connections: int
    http_clients: int
    exec_count: int
    exec_warmup: int
    exec_blocks: int
    output: Path
    workdir: Path | None
    hostd_log_level: str
    profile: Path | None
    profile_s: float
    keep_workdir: bool

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        parser = bench_parser(__doc__, "hostd", "15 s idle window, 3 ping batches, 60 executes")
        parser.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="directory for sockets and logs (default: a fresh temp dir, removed)",
        )
        parser.add_argument("--agents", type=int, default=500, help="fake agents (default 500)")
        parser.add_argument("--idle-s", type=float, help="idle window in seconds (default 60, quick 15)")
        parser.add_argument(
            "--ping-batches", type=int, help="PingAgent batches after a warm-up one (default 5, quick 3)"
        )
        parser.add_argument(
            "--http-connections",
            type=int,
            default=100,
            help="keep-alive connections of each API client in all (default 100)",
        )
        parser.add_argument(
            "--http-clients",
            type=int,
            default=10,
            help=(
                "httpx.AsyncClient instances the PingAgent batch is dealt over (default 10, each with its share of"
                " the connections): httpcore 1.0's pool costs O(connections x requests) per request"
            ),
        )
        parser.add_argument(
            "--exec-count", type=int, help="ExecuteInGuest /bin/true runs per path (default 300, quick 60)"
        )
        parser.add_argument("--hostd-log-level", default="info", help="hostd's --log-level (default info, its default)")
        parser.add_argument(
            "--profile",
            type=Path,
            default=None,
            help="after the idle window, record hostd with py-spy (raw collapsed stacks) into this file",
        )
        parser.add_argument("--profile-s", type=float, default=20.0, help="length of the py-spy recording (default 20)")
        ns = parser.parse_args(argv)
        q = ns.quick
        return cls(
            quick=q,
            agents=ns.agents,
            telemetry_interval_s=5.0,
            settle_s=3.0 if q else 6.0,
            idle_s=ns.idle_s or (15.0 if q else 60.0),
            ping_batches=ns.ping_batches or (3 if q else 5),
            http_connections=ns.http_connections,
            http_clients=max(1, ns.http_clients),
            exec_count=ns.exec_count or (60 if q else 300),
            exec_warmup=5 if q else 20,
            exec_blocks=6 if q else 10,
            output=output_path("hostd", ns),
            workdir=ns.workdir,
            hostd_log_level=ns.hostd_log_level,
            profile=ns.profile,
            profile_s=ns.profile_s,
            keep_workdir=ns.keep_workdir,
        )


# ============================================================================= figures


# =========================================================================== processes


class FleetProcess:
    """The fake agents' process and its stdin/stdout control channel."""

    def __init__(self, work: Path, sockdir: Path, settings: Settings) -> None:
        log_path = work / "fake-agents.log"
        argv = [
            sys.executable, str(Path(__file__).resolve()), "_fake-agents",
            "--dir", str(sockdir), "--count", str(settings.agents),
            "--telemetry-interval-s", f"{settings.telemetry_interval_s:g}",
        ]  # fmt: skip
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            with log_path.open("wb") as log:
                popen = subprocess.Popen(
                    argv, stdin=in_r, stdout=out_w, stderr=log, cwd=work, preexec_fn=_die_with_parent, close_fds=True
                )
        except BaseException:
            for fd in (in_r, in_w, out_r, out_w):
                os.close(fd)
            raise
        os.close(in_r)
        os.close(out_w)
        self.child = Child("fake agents", popen, log_path)
        self._to = trio.lowlevel.FdStream(in_w)
        self._from = trio.lowlevel.FdStream(out_r)
        self._buf = b""

    async def _line(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            data = await self._from.receive_some(65536)
            if not data:
                self.child.popen.wait()
                raise BenchError(
                    f"the fake agents' process exited ({self.child.popen.returncode}):\n{self.child.log_tail()}"
                )
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    async def wait_ready(self) -> None:
        msg = await self._line()
        if not msg.get("ready"):
            raise BenchError(f"unexpected first line from the fake agents: {msg}")

    async def stats(self) -> dict[str, Any]:
        await self._to.send_all(b"stats\n")
        return await self._line()

    async def close(self) -> None:
        with contextlib.suppress(OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            await self._to.aclose()
        with contextlib.suppress(OSError, trio.ClosedResourceError):
            await self._from.aclose()


def start_hostd(work: Path, sockdir: Path, token_file: Path, settings: Settings, *, python: str = "") -> Child:
    """hostd on port 0, serving ``sockdir``'s VMs; ``python``: another checkout's interpreter
    (its venv's, for a before/after comparison; default this one's)."""
    config = work / "hostd.toml"
    config.write_text("")  # no /etc/limiquantix/hostd.toml applies
    log_path = work / "hostd.log"
    argv = [
        python or sys.executable, "-m", "limiquantix.hostd",
        "--config", str(config),
        "--listen", "127.0.0.1:0",
        "--token-file", str(token_file),
        "--socket-dir", str(sockdir),
        "--libvirt-channel-root", "",
        "--log-level", settings.hostd_log_level,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=work, preexec_fn=_die_with_parent
        )
    return Child("limiquantix-hostd", popen, log_path)


async def hostd_url(hostd: Child) -> str:
    """The node API's URL, from hostd's "serving" log line (it binds port 0).

    Raises:
        BenchError: no such line within START_TIMEOUT_S, or hostd exited.
    """
    return await hostd.serving_url(HOSTD_SERVING_RE, START_TIMEOUT_S)


# ======================================================================= HTTP clients


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on one connection: request bytes
    built once, the response read by Content-Length. For the informational rows
    that show what hostd answers at without httpx's own cost per call.

    A response saying ``Connection: close`` (hypercorn closes a connection after
    ``keep_alive_max_requests``, 1000) makes the next call reconnect.
    """

    def __init__(self, url: str, token: str) -> None:
        self.hostport = url.removeprefix("http://")
        self.head = (
            "POST {path} HTTP/1.1\r\nHost: " + self.hostport + "\r\nAuthorization: Bearer " + token
            + "\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
        )  # fmt: skip
        self.stream: trio.SocketStream | None = None
        self._buf = bytearray()

    @classmethod
    async def connect(cls, url: str, token: str) -> RawHttp:
        conn = cls(url, token)
        await conn._connect()
        return conn

    async def _connect(self) -> None:
        host, _, port = self.hostport.rpartition(":")
        self.stream = await trio.open_tcp_stream(host, int(port))
        self.stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf.clear()

    def request_bytes(self, method: str, body: bytes) -> bytes:
        return self.head.format(path=f"{SERVICE}/{method}", n=len(body)).encode() + body

    async def _fill(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(65536)
        if not data:
            raise BenchError("hostd closed a raw HTTP connection")
        self._buf += data

    async def call(self, request: bytes) -> tuple[int, bytes]:
        if self.stream is None:
            await self._connect()
        assert self.stream is not None
        await self.stream.send_all(request)
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        status = int(lines[0].split()[1])
        length = None
        close = False
        for line in lines[1:]:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "connection":
                close = value.strip().lower() == "close"
            elif key == "transfer-encoding":
                raise BenchError(f"raw HTTP client: unexpected Transfer-Encoding {value.strip()}")
        if length is None:
            raise BenchError("raw HTTP client: response without Content-Length")
        while len(buf) < length:
            await self._fill()
        body = bytes(buf[:length])
        del buf[:length]
        if close:
            await self.aclose()
        return status, body

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            await stream.aclose()


async def metrics(client: Any, url: str, token: str) -> str:
    """hostd's /metrics (it needs the node API's token)."""
    r = await client.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    return r.text


def tcp_listen_counters() -> dict[str, int]:
    """The kernel's TcpExt counters of a listen queue overflowing (this network namespace)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for head, values in zip(lines[0::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            for key in ("ListenOverflows", "ListenDrops", "SyncookiesSent"):
                if key in table:
                    out[key] = int(table[key])
    return out


def connected_count(text: str) -> int:
    match = _CONNECTED_RE.search(text)
    return int(float(match.group(1))) if match else 0


# ========================================================================= measurements


@dataclass
class Batch:
    """One PingAgent batch."""

    wall_ms: float
    call_ms: list[float]
    agent_ms: list[float]  #: hostd's own latencyMs (hostd -> agent -> hostd)
    failures: list[str]
    client_cpu_ms: float  #: this process's CPU time during the batch
    hostd_cpu_ms: float
    tcp: dict[str, int] = field(default_factory=dict)  #: kernel listen-queue counters over the batch


@dataclass
class Results:
    vm_ids: list[str] = field(default_factory=list)
    connect_s: float = 0.0
    connect_hostd_cpu_s: float = 0.0
    idle_s: float = 0.0
    idle_cpu: float = 0.0
    idle_rss: float = 0.0
    fleet_cpu: float = 0.0
    fleet_rss: float = 0.0
    idle_stats: dict[str, int] = field(default_factory=dict)
    idle_connected_end: int = 0
    idle_reconnects: float = 0.0
    ping_batches: list[Batch] = field(default_factory=list)
    first_batch: Batch | None = None
    first_tcp: dict[str, int] = field(default_factory=dict)
    cold_batch: Batch | None = None
    exec_client_cpu_ms: tuple[float, float] = (0.0, 0.0)  #: per call: httpx, raw client
    raw_batches: list[Batch] = field(default_factory=list)
    exec_api: list[float] = field(default_factory=list)
    exec_raw: list[float] = field(default_factory=list)
    exec_direct: list[float] = field(default_factory=list)
    calib_a: list[float] = field(default_factory=list)
    calib_b: list[float] = field(default_factory=list)
    rss_after: float = 0.0
    profile_note: str | None = None


def _check_ping_body(vm_id: str, status: int, body: bytes) -> tuple[str | None, float]:
    """A PingAgent answer: (what is wrong with it or None, the agent's latency in ms)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status != 200 or not isinstance(data, dict):
        return f"{vm_id}: HTTP {status} {body[:200].decode(errors='replace')}", 0.0
    if not data.get("connected"):
        return f"{vm_id}: not connected: {data.get('error')}", 0.0
    return None, float(data.get("latencyMs", 0.0))


async def httpx_ping_batch(
    clients: list[Any], url: str, headers: dict[str, str], vm_ids: list[str], hostd: Child
) -> Batch:
    """PingAgent to every VM at once, one task per call; VM i goes through ``clients[i % len(clients)]``."""
    import httpx

    n = len(vm_ids)
    call_ms = [0.0] * n
    agent_ms = [0.0] * n
    failures: list[str] = []
    bodies = [json.dumps({"vmId": vm}).encode() for vm in vm_ids]
    endpoint = f"{url}{SERVICE}/PingAgent"

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            r = await clients[i % len(clients)].post(endpoint, content=bodies[i], headers=headers)
        except httpx.TransportError as exc:
            failures.append(f"{vm_ids[i]}: {type(exc).__name__}: {exc}")
            return
        finally:
            call_ms[i] = (time.perf_counter() - t0) * 1000
        problem, agent_ms[i] = _check_ping_body(vm_ids[i], r.status_code, r.content)
        if problem:
            failures.append(problem)

    tcp0 = tcp_listen_counters()
    cpu0, hcpu0 = time.process_time(), cpu_seconds(hostd.pid)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    wall = (time.perf_counter() - t0) * 1000
    cpu1, hcpu1 = time.process_time(), cpu_seconds(hostd.pid)
    tcp = {k: v - tcp0.get(k, 0) for k, v in tcp_listen_counters().items()}
    return Batch(wall, call_ms, agent_ms, failures, (cpu1 - cpu0) * 1000, (hcpu1 - hcpu0) * 1000, tcp)


async def raw_ping_batch(conns: list[RawHttp], vm_ids: list[str], hostd: Child) -> Batch:
    """The same batch from :class:`RawHttp` connections, the VMs dealt round-robin."""
    n = len(vm_ids)
    call_ms = [0.0] * n
    agent_ms = [0.0] * n
    failures: list[str] = []
    requests = [conns[0].request_bytes("PingAgent", json.dumps({"vmId": vm}).encode()) for vm in vm_ids]

    async def worker(k: int) -> None:
        conn = conns[k]
        for i in range(k, n, len(conns)):
            t0 = time.perf_counter()
            status, body = await conn.call(requests[i])
            call_ms[i] = (time.perf_counter() - t0) * 1000
            problem, agent_ms[i] = _check_ping_body(vm_ids[i], status, body)
            if problem:
                failures.append(problem)

    cpu0, hcpu0 = time.process_time(), cpu_seconds(hostd.pid)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(min(len(conns), n)):
            nursery.start_soon(worker, k)
    wall = (time.perf_counter() - t0) * 1000
    cpu1, hcpu1 = time.process_time(), cpu_seconds(hostd.pid)
    # The per-call times include waiting behind the earlier calls on the same
    # connection; call_ms of the first call per connection is the clean one.
    return Batch(wall, call_ms, agent_ms, failures, (cpu1 - cpu0) * 1000, (hcpu1 - hcpu0) * 1000)


async def cold_ping_batch(url: str, token: str, vm_ids: list[str], hostd: Child) -> Batch:
    """PingAgent to every VM at once, each call on a connection of its own opened for it."""
    n = len(vm_ids)
    call_ms = [0.0] * n
    agent_ms = [0.0] * n
    failures: list[str] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            conn = await RawHttp.connect(url, token)
            try:
                status, body = await conn.call(
                    conn.request_bytes("PingAgent", json.dumps({"vmId": vm_ids[i]}).encode())
                )
            finally:
                await conn.aclose()
        except (OSError, trio.BrokenResourceError, BenchError) as exc:
            failures.append(f"{vm_ids[i]}: {type(exc).__name__}: {exc}")
            return
        finally:
            call_ms[i] = (time.perf_counter() - t0) * 1000
        problem, agent_ms[i] = _check_ping_body(vm_ids[i], status, body)
        if problem:
            failures.append(problem)

    tcp0 = tcp_listen_counters()
    cpu0, hcpu0 = time.process_time(), cpu_seconds(hostd.pid)
    t0 = time.perf_counter()
    with trio.move_on_after(FIGURE_TIMEOUT_S / 2):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
    wall = (time.perf_counter() - t0) * 1000
    cpu1, hcpu1 = time.process_time(), cpu_seconds(hostd.pid)
    tcp = {k: v - tcp0.get(k, 0) for k, v in tcp_listen_counters().items()}
    return Batch(wall, call_ms, agent_ms, failures, (cpu1 - cpu0) * 1000, (hcpu1 - hcpu0) * 1000, tcp)


def _check_exec(result: dict[str, Any], where: str) -> None:
    if result.get("exitReason") != "EXIT_REASON_EXITED" or result.get("exitCode", 0) != 0:
        raise BenchError(f"{where}: /bin/true did not exit 0: {result}")


async def exec_api(client: Any, url: str, headers: dict[str, str], vm_id: str, count: int) -> list[float]:
    """ExecuteInGuest /bin/true through hostd, sequential, JSON over httpx; ms each."""
    body = json.dumps({"vmId": vm_id, "request": {"argv": ["/bin/true"]}}).encode()
    endpoint = f"{url}{SERVICE}/ExecuteInGuest"
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        r = await client.post(endpoint, content=body, headers=headers)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if r.status_code != 200:
            raise BenchError(f"ExecuteInGuest: HTTP {r.status_code}: {r.text[:300]}")
        _check_exec(r.json().get("result", {}), "ExecuteInGuest")
    return samples


async def exec_raw(conn: RawHttp, vm_id: str, count: int) -> list[float]:
    request = conn.request_bytes(
        "ExecuteInGuest", json.dumps({"vmId": vm_id, "request": {"argv": ["/bin/true"]}}).encode()
    )
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        status, body = await conn.call(request)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if status != 200:
            raise BenchError(f"ExecuteInGuest (raw client): HTTP {status}: {body[:300]!r}")
        _check_exec(json.loads(body).get("result", {}), "ExecuteInGuest (raw client)")
    return samples


async def exec_direct(client: Any, count: int) -> list[float]:
    """The same execute straight to an agent's chardev socket with AgentClient; ms each."""
    req = pb.ExecuteRequest(argv=["/bin/true"])
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        resp = (await client.request(execute=req)).execute_response
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if resp.exit_reason != pb.EXIT_REASON_EXITED or resp.exit_code != 0:
            raise BenchError(f"execute /bin/true (direct): {resp}")
    return samples


async def drain_events(client: Any) -> None:
    async for _ in client.events:
        pass


async def start_simvms(
    stack: contextlib.AsyncExitStack, names: tuple[str, ...], simdir: Path, work: Path
) -> dict[str, Any]:
    """Simulated VMs (the real agent on a pty), their sockets in ``simdir``, ready; stopped by ``stack``."""
    from limiquantix.hostd.simvm import SimVMProcess

    sims = {}
    for name in names:
        sim = SimVMProcess.start(
            str(simdir / f"{name}.agent.sock"), state_dir=work / f"state-{name}", name=name, log_level="warning"
        )
        stack.callback(sim.stop)
        sims[name] = sim
    with trio.fail_after(START_TIMEOUT_S):
        for sim in sims.values():
            await sim.wait_ready()
    return sims


async def measure(work: Path, settings: Settings) -> Results:
    import httpx

    from limiquantix.protocol import AgentClient

    r = Results()
    sockdir = work / "vms"
    sockdir.mkdir()
    token = secrets.token_urlsafe(24)
    token_file = work / "hostd.token"
    token_file.write_text(token + "\n")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async with contextlib.AsyncExitStack() as stack:
        # -- the fleet and hostd -------------------------------------------------------
        say(f"fake agents: {settings.agents} sockets in {sockdir}")
        fleet = FleetProcess(work, sockdir, settings)
        stack.callback(fleet.child.stop)
        stack.push_async_callback(fleet.close)
        with trio.fail_after(START_TIMEOUT_S):
            await fleet.wait_ready()
        r.vm_ids = [f"vm-{i:04d}" for i in range(settings.agents)]

        t_start = time.monotonic()
        hostd = start_hostd(work, sockdir, token_file, settings)
        stack.callback(hostd.stop)
        url = await hostd_url(hostd)
        say(f"hostd pid {hostd.pid} at {url}; fake agents pid {fleet.child.pid}")

        client = await stack.enter_async_context(httpx.AsyncClient(timeout=FIGURE_TIMEOUT_S))
        per_client = max(1, math.ceil(settings.http_connections / settings.http_clients))
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        ping_clients = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=FIGURE_TIMEOUT_S, limits=limits))
            for _ in range(settings.http_clients)
        ]
        with trio.fail_after(START_TIMEOUT_S):
            while connected_count(await metrics(client, url, token)) < settings.agents:
                hostd.check_alive()
                fleet.child.check_alive()
                await trio.sleep(0.1)
        r.connect_s = time.monotonic() - t_start
        r.connect_hostd_cpu_s = cpu_seconds(hostd.pid)
        say(f"  {settings.agents} agents connected {r.connect_s:.1f} s after hostd's start")

        # -- 1. idle: 500 agents, telemetry and pings only --------------------------------
        say(f"idle: settling {settings.settle_s:g} s, then {settings.idle_s:g} s measured")
        await trio.sleep(settings.settle_s)
        stats0 = (await fleet.stats())["stats"]
        t0 = time.monotonic()
        cpu0 = cpu_seconds(hostd.pid), cpu_seconds(fleet.child.pid)
        rss = [0.0, 0.0]
        end = t0 + settings.idle_s
        while True:
            rss = [max(rss[0], rss_mib(hostd.pid)), max(rss[1], rss_mib(fleet.child.pid))]
            now = time.monotonic()
            if now >= end:
                break
            await trio.sleep(min(1.0, end - now))
        cpu1 = cpu_seconds(hostd.pid), cpu_seconds(fleet.child.pid)
        r.idle_s = time.monotonic() - t0
        stats1 = await fleet.stats()
        r.idle_cpu = (cpu1[0] - cpu0[0]) / r.idle_s * 100
        r.fleet_cpu = (cpu1[1] - cpu0[1]) / r.idle_s * 100
        r.idle_rss, r.fleet_rss = rss
        r.idle_stats = {k: v - stats0.get(k, 0) for k, v in stats1["stats"].items()}
        text = await metrics(client, url, token)
        r.idle_connected_end = connected_count(text)
        m = _RECONNECTS_RE.search(text)
        r.idle_reconnects = float(m.group(1)) if m else math.nan
        say(
            f"  hostd {r.idle_cpu:.2f} % CPU, {r.idle_rss:.1f} MiB; fake agents {r.fleet_cpu:.2f} % CPU;"
            f" {r.idle_stats.get('ping', 0)} pings answered, {r.idle_stats.get('telemetry_sent', 0)} reports sent,"
            f" {r.idle_connected_end} connected at the end"
        )

        if settings.profile is not None:
            r.profile_note = await profile_hostd(hostd, settings)

        # -- 2. PingAgent to all at once ------------------------------------------------
        say(
            f"PingAgent x{settings.agents}: a first batch (connections opened), then {settings.ping_batches};"
            f" {settings.http_clients} httpx clients x {per_client} connections"
        )
        with trio.fail_after(FIGURE_TIMEOUT_S):
            tcp0 = tcp_listen_counters()
            r.first_batch = await httpx_ping_batch(ping_clients, url, headers, r.vm_ids, hostd)
            tcp1 = tcp_listen_counters()
            r.first_tcp = {k: v - tcp0.get(k, 0) for k, v in tcp1.items()}
            say(
                f"  first batch {r.first_batch.wall_ms:.0f} ms, {len(r.first_batch.failures)} failed;"
                f" listen queue: {r.first_tcp}"
            )
            # Fill every client's pool, CONNECT_AT_ONCE new connections at a time,
            # so the measured batches run on open keep-alive connections.
            for k, pc in enumerate(ping_clients):
                share = [vm for i, vm in enumerate(r.vm_ids) if i % len(ping_clients) == k]
                for j in range(0, len(share), CONNECT_AT_ONCE):
                    fill = await httpx_ping_batch([pc], url, headers, share[j : j + CONNECT_AT_ONCE], hostd)
                    if fill.failures:
                        raise BenchError(f"PingAgent while opening connections: {fill.failures[0]}")
            raw_conns = [await RawHttp.connect(url, token) for _ in range(settings.http_connections)]
            try:
                await raw_ping_batch(raw_conns, r.vm_ids, hostd)
                for _ in range(settings.ping_batches):
                    await trio.sleep(BATCH_PAUSE_S)
                    b = await httpx_ping_batch(ping_clients, url, headers, r.vm_ids, hostd)
                    r.ping_batches.append(b)
                    await trio.sleep(BATCH_PAUSE_S)
                    rb = await raw_ping_batch(raw_conns, r.vm_ids, hostd)
                    r.raw_batches.append(rb)
                    say(
                        f"  httpx {b.wall_ms:.0f} ms (client CPU {b.client_cpu_ms:.0f} ms, hostd CPU {b.hostd_cpu_ms:.0f} ms,"
                        f" {len(b.failures)} failed, listen overflows {b.tcp.get('ListenOverflows', '?')});"
                        f" raw client {rb.wall_ms:.0f} ms (hostd CPU {rb.hostd_cpu_ms:.0f} ms)"
                    )
            finally:
                for conn in raw_conns:
                    with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                        await conn.aclose()
            # Last, as it may leave resets behind: every call on a new connection, all at once.
            await trio.sleep(BATCH_PAUSE_S)
            r.cold_batch = cb = await cold_ping_batch(url, token, r.vm_ids, hostd)
            say(
                f"  {len(r.vm_ids)} new connections at once (minimal client): {cb.wall_ms:.0f} ms, {len(cb.failures)}"
                f" failed, listen queue {cb.tcp}"
            )

        # -- 3. ExecuteInGuest vs the agent's socket ------------------------------------
        simdir = work / "sim"  # not hostd's socket directory: hostd does not see them
        simdir.mkdir()
        say("ExecuteInGuest /bin/true: two simulated VMs (the real agent on a pty)")
        sims = await start_simvms(stack, ("exec-a", "exec-b"), simdir, work)
        direct_b = await stack.enter_async_context(AgentClient.connect_unix(sims["exec-b"].socket_path))
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(drain_events, direct_b)
        # Calibration: both VMs straight, so that (a) vs (b) is not a VM A vs VM B difference.
        with trio.fail_after(FIGURE_TIMEOUT_S):
            async with AgentClient.connect_unix(sims["exec-a"].socket_path) as direct_a:
                nursery.start_soon(drain_events, direct_a)
                await exec_direct(direct_a, settings.exec_warmup)
                await exec_direct(direct_b, settings.exec_warmup)
                for n in blocks(settings.exec_count // 2, settings.exec_blocks):
                    r.calib_a += await exec_direct(direct_a, n)
                    r.calib_b += await exec_direct(direct_b, n)
        # VM A goes behind hostd: a link in its socket directory (it rescans every second).
        os.symlink(sims["exec-a"].socket_path, sockdir / "exec-a.agent.sock")
        with trio.fail_after(START_TIMEOUT_S):
            while True:
                resp = await client.post(f"{url}{SERVICE}/GetVM", content=b'{"vmId": "exec-a"}', headers=headers)
                if resp.status_code == 200 and resp.json()["agent"]["state"] == "AGENT_STATE_CONNECTED":
                    break
                await trio.sleep(0.1)
        raw = await RawHttp.connect(url, token)
        stack.push_async_callback(raw.aclose)
        with trio.fail_after(FIGURE_TIMEOUT_S):
            await exec_api(client, url, headers, "exec-a", settings.exec_warmup)
            await exec_raw(raw, "exec-a", settings.exec_warmup)
            await exec_direct(direct_b, settings.exec_warmup)
            cpu_api = cpu_raw = 0.0
            for n in blocks(settings.exec_count, settings.exec_blocks):
                c0 = time.process_time()
                r.exec_api += await exec_api(client, url, headers, "exec-a", n)
                cpu_api += time.process_time() - c0
                r.exec_direct += await exec_direct(direct_b, n)
                c0 = time.process_time()
                r.exec_raw += await exec_raw(raw, "exec-a", n)
                cpu_raw += time.process_time() - c0
            r.exec_client_cpu_ms = (cpu_api * 1000 / len(r.exec_api), cpu_raw * 1000 / len(r.exec_raw))
        say(
            f"  median: through hostd {median(r.exec_api):.2f} ms (raw HTTP client {median(r.exec_raw):.2f} ms),"
            f" direct {median(r.exec_direct):.2f} ms; calibration A {median(r.calib_a):.2f} / B {median(r.calib_b):.2f} ms"
        )
        r.rss_after = rss_mib(hostd.pid)
        hostd.check_alive()
        fleet.child.check_alive()
        nursery.cancel_scope.cancel()
    return r


async def profile_hostd(hostd: Child, settings: Settings) -> str:
    """py-spy record of the idle hostd (after the measured window, so it does not perturb it)."""
    assert settings.profile is not None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(py_spy):
        return "py-spy not found"
    settings.profile.parent.mkdir(parents=True, exist_ok=True)
    say(f"profiling hostd for {settings.profile_s:g} s with py-spy into {settings.profile}")
    argv = [
        py_spy, "record", "--pid", str(hostd.pid), "--duration", f"{settings.profile_s:g}",
        "--rate", "1000", "--format", "raw", "--output", str(settings.profile), "--nonblocking",
    ]  # fmt: skip
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        return f"py-spy failed: {done.stderr.decode(errors='replace')[-300:]}"
    return f"py-spy raw stacks in {settings.profile}"


async def measure_until_terminated(work: Path, settings: Settings) -> Results:
    """:func:`measure`, unwound like Ctrl-C on SIGTERM (children stopped, temp dir removed)."""
    results: list[Results] = []
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    raise KeyboardInterrupt

            async def run_measure() -> None:
                results.append(await measure(work, settings))
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(run_measure)
    return results[0]


# ============================================================================= report


def _share(batches: list[Batch], attr: str) -> float:
    """Median over batches of a CPU time as a percentage of the batch's wall time."""
    return median([getattr(b, attr) / b.wall_ms for b in batches]) * 100 if batches else math.nan


def figures_from(r: Results, s: Settings) -> list[Figure]:
    n = s.agents
    st = r.idle_stats
    expected_pings = n * r.idle_s / 5.0  # hostd pings every ping_interval_s (5 s by default)
    expected_reports = n * r.idle_s / s.telemetry_interval_s
    idle_note = (
        f"{r.idle_s:.0f} s with {n} agents connected ({r.idle_connected_end} at the end), after {s.settle_s:g} s"
        f" settling: {st.get('ping', 0)} pings answered (~{expected_pings:.0f} expected), {st.get('telemetry_sent', 0)}"
        f" telemetry reports pushed (~{expected_reports:.0f} expected), {r.idle_reconnects:g} reconnects;"
        " CPU from the per-process CPU clock; baseline: the fake agents' process, for reference"
    )
    idle_ok = r.idle_connected_end == n and st.get("telemetry_sent", 0) >= 0.9 * expected_reports
    batches = r.ping_batches
    walls = [b.wall_ms for b in batches]
    calls = [ms for b in batches for ms in b.call_ms]
    agent = [ms for b in batches for ms in b.agent_ms if ms]
    failures = [f for b in batches for f in b.failures]
    client_share = _share(batches, "client_cpu_ms")
    hostd_share = _share(batches, "hostd_cpu_ms")
    if client_share >= 80 and client_share >= hostd_share:
        bottleneck = (
            "the client is the bottleneck (its CPU time is about the batch's wall time; the minimal-client row"
            " shows the batch without it)"
        )
    elif hostd_share >= 80:
        bottleneck = "hostd is the bottleneck, not the client"
    else:
        bottleneck = "neither is busy for the whole batch (the machine's other work, or waiting on each other)"
    per_client = max(1, math.ceil(s.http_connections / s.http_clients))
    ping_note = (
        f"median of {len(batches)} batches (max {max(walls):.0f} ms) after a first one that opens the connections;"
        f" {s.http_clients} httpx.AsyncClient x {per_client} keep-alive connections, one trio task per call;"
        f" client CPU {client_share:.0f} %, hostd CPU {hostd_share:.0f} % of the wall time:"
        f" {bottleneck}"
        + (
            f"; {len(failures)} calls failed, e.g. {failures[0]}"
            if failures
            else "; every call answered connected=true"
        )
    )
    first = r.first_batch
    first_note = None
    if first is not None:
        first_note = (
            f"{len(first.failures)} of {n} calls failed"
            + (f" (e.g. {first.failures[0]})" if first.failures else "")
            + f"; kernel TcpExt counters over it: {r.first_tcp or 'unreadable'}"
            " (hostd listens with hypercorn's default backlog of 100)"
        )
    raw = r.raw_batches
    raw_walls = [b.wall_ms for b in raw]
    raw_failures = [f for b in raw for f in b.failures]
    raw_note = (
        (
            f"median of {len(raw)} batches (max {max(raw_walls):.0f} ms), interleaved with the httpx ones;"
            f" {s.http_connections} connections, requests built once, responses read by Content-Length;"
            f" client CPU {_share(raw, 'client_cpu_ms'):.0f} %, hostd CPU {_share(raw, 'hostd_cpu_ms'):.0f} % of the wall time"
            + (f"; {len(raw_failures)} calls failed, e.g. {raw_failures[0]}" if raw_failures else "")
        )
        if raw
        else None
    )
    httpx_cpu, raw_cpu = r.exec_client_cpu_ms
    cold = r.cold_batch
    cold_note = (
        (
            f"the minimal client, each call on a TCP connection of its own, all {n} connecting at once:"
            f" {len(cold.failures)} failed"
            + (f" (e.g. {cold.failures[0]})" if cold.failures else "")
            + f"; kernel TcpExt counters over it: {cold.tcp or 'unreadable'} (hypercorn's default listen backlog is"
            " 100 and hostd has no setting for it)"
        )
        if cold
        else None
    )
    figures = [
        Figure(f"hostd CPU, {n} agents idle", r.idle_cpu, r.fleet_cpu, "% of a core", "<= 15", note=idle_note),
        Figure(
            f"hostd RSS, {n} agents idle",
            r.idle_rss,
            r.fleet_rss,
            "MiB",
            "<= 300",
            note="max VmRSS sampled every second over the idle window; baseline: the fake agents' process",
        ),  # fmt: skip
        Figure(f"PingAgent x{n} at once, batch wall time", median(walls), None, "ms", "<= 2000", note=ping_note),
        Figure(
            f"PingAgent x{n}, per call p50 (info)",
            median(calls),
            median(agent) if agent else None,
            "ms",
            None,
            note="ours: client-side, from the call's start (waiting for the client's event loop included);"
            " baseline: hostd's own latencyMs (its round trip to the agent)",
        ),  # fmt: skip
        Figure(
            f"PingAgent x{n}, per call p99 (info)",
            percentile(calls, 99),
            percentile(agent, 99) if agent else None,
            "ms",
            None,
        ),  # fmt: skip
        Figure(
            f"PingAgent x{n}, first batch (info)", first.wall_ms if first else None, None, "ms", None, note=first_note
        ),  # fmt: skip
        Figure(
            f"PingAgent x{n}, minimal HTTP/1.1 client, batch (info)",
            median(raw_walls) if raw else None,
            None,
            "ms",
            None,
            note=raw_note,
        ),  # fmt: skip
        Figure(
            f"PingAgent x{n}, a new connection per call (info)",
            cold.wall_ms if cold else None,
            None,
            "ms",
            None,
            note=cold_note,
        ),  # fmt: skip
        Figure(
            "hostd CPU per PingAgent call (info)",
            sum(b.hostd_cpu_ms for b in batches) * 1000 / (len(batches) * n) if batches else None,
            sum(b.hostd_cpu_ms for b in raw) * 1000 / (len(raw) * n) if raw else None,
            "us",
            None,
            note="hostd's CPU time over the measured batches / calls; ours: httpx batches, baseline: minimal-client batches",
        ),  # fmt: skip
        Figure(
            "ExecuteInGuest /bin/true, median",
            median(r.exec_api),
            median(r.exec_direct),
            "ms",
            "delta <= 2",
            note=(
                "ours: POST ExecuteInGuest (JSON) to hostd with httpx, keep-alive, one call at a time, hostd relaying"
                " to simulated VM A; baseline: the same execute sent with AgentClient straight to simulated VM B's"
                f" socket; {len(r.exec_api)} each in {s.exec_blocks} interleaved blocks, the {n} fake agents still"
                f" connected; met when delta = ours - baseline <= 2 ms; httpx's own CPU per call: {httpx_cpu:.2f} ms"
                f" (the minimal client's: {raw_cpu:.2f} ms)"
            ),
        ),
        Figure(
            "ExecuteInGuest /bin/true, p99 (info)",
            percentile(r.exec_api, 99),
            percentile(r.exec_direct, 99),
            "ms",
            None,
        ),  # fmt: skip
        Figure(
            "ExecuteInGuest, minimal HTTP/1.1 client, median (info)",
            median(r.exec_raw),
            median(r.exec_direct),
            "ms",
            None,
            note="the same call from the minimal client instead of httpx (a third interleaved block): hostd's own share",
        ),  # fmt: skip
        Figure(
            "execute straight to VM A vs VM B, median (info)",
            median(r.calib_a),
            median(r.calib_b),
            "ms",
            None,
            note="both called with AgentClient before A went behind hostd, interleaved: the two VMs' own difference",
        ),  # fmt: skip
        Figure(
            f"connect {n} agents (info)",
            r.connect_s,
            None,
            "s",
            None,
            note=f"from hostd's start to all connected (/metrics); hostd's CPU time by then {r.connect_hostd_cpu_s:.1f} s",
        ),  # fmt: skip
        Figure("hostd RSS after the API figures (info)", r.rss_after, None, "MiB", None),
    ]
    for f in figures:
        f.evaluate()
        timed = f.target is None and f.unit == "ms" and f.name.startswith(("ExecuteInGuest", "execute"))
        if timed and f.ours is not None and f.baseline is not None:
            f.delta = f.ours - f.baseline
    if failures:
        figures[2].met = False
    if not idle_ok:
        for f in figures[:2]:
            f.note = f"the fleet was not fully connected or telemetry fell short; {f.note}"
    if r.profile_note:
        figures[0].note = f"{figures[0].note}; {r.profile_note}"
    return figures


def run(settings: Settings) -> tuple[list[Figure], str]:
    load0 = os.getloadavg()[0]
    with workdir("lqx-hb-", keep=settings.keep_workdir, under=settings.workdir) as work:
        say(f"work dir {work}")
        results = trio.run(measure_until_terminated, work, settings)
    load1 = os.getloadavg()[0]
    context = (
        f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {load1:.2f} at end; hostd, the fake agents, the"
        " simulated VMs and the API clients share these CPUs"
    )
    return figures_from(results, settings), context


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_fake-agents"]:
        return fake_agents_main(argv[1:])
    settings = Settings.from_args(argv)
    # Outside trio.run: SIGTERM unwinds like Ctrl-C (children stopped, temp dir removed).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        figures, context = run(settings)
    except BaseException as exc:  # noqa: BLE001 - reported, then the exit status says it
        expected: tuple[type[BaseException], ...] = (BenchError, errors.AgentError, OSError, trio.TooSlowError)
        try:
            import httpx

            expected += (httpx.HTTPError,)
        except ImportError:  # pragma: no cover
            pass
        return report_failure("hostd_bench", exc, expected)
    print_table(
        figures,
        f"limiquantix-hostd {VERSION}: {settings.agents} fake agents + 2 simulated VMs"
        + (" (--quick)" if settings.quick else ""),
        context,
    )
    write_figures(figures, settings.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
