#!/usr/bin/env python3
"""Benchmark the transports between clients, the controller and hostd (issue 11, "Benchmarks").

Two stacks run side by side on this machine, started and stopped by this script in a fresh
temp dir, each a real controller process and a real hostd process registered with it, serving
two VMs:

* ``vm-<stack>``: a simulated VM (``limiquantix-simvm``: the real agent on a pty, the port
  bridged to a Unix socket the way QEMU exposes a chardev), for the PingAgent figures;
* ``vm-<stack>-direct``: the real agent serving its Unix socket itself (``--transport
  unix-listen``, as bench/agent_bench.py runs it), for the file read (see 3. below).

The stacks:

* **plain**: Connect over HTTP/1.1 everywhere (today's development path);
* **tls**: the same over TLS with a throwaway CA made by ``limiquantix-controller pki``'s code:
  the client → controller on HTTPS, controller ↔ hostd with mutual TLS.

The Connect client is one ``httpx.AsyncClient`` per stack (HTTP/1.1, keep-alive), calls one at
a time. Figures:

1. PingAgent through the controller, median and p99: Connect/HTTP 1.1 plain (baseline) vs
   Connect over TLS (keep-alive); target: TLS adds at most 15 % to the median;
2. PingAgent with a new TLS connection per call (handshake included: ECDSA P-256 and
   mutual TLS behind it reuse their pooled connection), median, for the record;
3. a 64 MiB file (random bytes, in the page cache) read through the controller, plain vs
   TLS, as two ranged ``ReadGuestFile`` calls of 32 MiB in ``application/proto`` (hostd
   reads at most 48 MiB per call) by the rpc layer's client (``RpcClient``, the TUI's and the
   CLI's, which reads several TLS records at a time): MiB/s, target TLS ≥ 80 % of plain. The file comes from
   ``vm-<stack>-direct``: through a simulated VM's pty both stacks moved 5-7 MiB/s (a pty's
   line discipline hands over a few KiB per read), so the figure measured the pty, not TLS.
   A real virtio-serial port is not a pty either; with the agent on a Unix socket (about
   700 MiB/s in agent_bench), and random bytes no longer gzipped at each hop for a client that
   accepts gzip (``rpc._codec.compressible``), the time goes to the two HTTP hops, which is
   where TLS is;
4. PingAgent over gRPC (HTTP/2: h2c on the plain stack, ALPN h2 on the TLS one), median and
   p99, beside Connect on the same stack: target gRPC ≤ Connect. The gRPC client is grpcio
   (the stock C-core client, one channel per stack, metadata ``authorization``), the client
   stock gRPC users have; its calls run in a worker thread, each timed there, while the trio
   loop waits (no thread hop inside a measurement). Informational rows give the controller's
   CPU time per call for each protocol (from ``/proc/<pid>/stat``): the server-side cost of
   the gRPC path (HTTP/2, :mod:`limiquantix.protocol.rpc.server._grpc`) vs the Connect path
   (HTTP/1.1, Quart), independent of how fast each client is.

Every pair is measured in interleaved blocks (plain and TLS, Connect and gRPC, their order
alternating from block to block) so that background load hits both alike.

Prints a table and writes ``bench/results/rpc.json`` (``--quick``: ``rpc-quick.json``).
Exits non-zero only on errors; missed targets are reported, not fatal. See bench/README.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

BENCH_DIR: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import benchlib as bl  # noqa: E402 - bench/ is not a package: found by file name
import controller_bench as cb  # noqa: E402
import hostd_bench as hb  # noqa: E402

from limiquantix.controller import pki  # noqa: E402
from limiquantix.protocol import (  # noqa: E402
    TLSFiles,
    client_ssl_context,
    errors,  # noqa: E402
)
from limiquantix.protocol import __version__ as VERSION  # noqa: E402
from limiquantix.protocol._gen import vm_service_pb2 as api_pb  # noqa: E402

__all__ = ["Settings", "grpc_figures", "main", "measure"]

VM_SERVICE: Final = "/limiquantix.compute.v1.VMService"
ADMIN_SERVICE: Final = "/limiquantix.compute.v1.AdminService"
#: Targets (issue 11).
TLS_MEDIAN_RATIO_TARGET: Final = 1.15
TLS_READ_RATIO_TARGET: Final = 0.8
FILE_BYTES: Final = 64 * 1024 * 1024
#: Each ReadGuestFile reads this much (hostd's limit per call is 48 MiB).
READ_RANGE_BYTES: Final = 32 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """What one run measures (``--quick`` shortens it)."""

    quick: bool
    pings: int
    ping_blocks: int
    handshakes: int
    reads: int
    output: Path
    keep_workdir: bool

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        """Raises: SystemExit: bad flags (argparse)."""
        parser = bl.bench_parser(__doc__, "rpc", "fewer calls, one file read per stack")
        ns = parser.parse_args(argv)
        return cls(
            quick=ns.quick,
            pings=300 if ns.quick else 2000,
            ping_blocks=3 if ns.quick else 10,
            handshakes=50 if ns.quick else 300,
            reads=1 if ns.quick else 3,
            output=bl.output_path("rpc", ns),
            keep_workdir=ns.keep_workdir,
        )


@dataclass
class Stack:
    """One controller + hostd + two VMs, and the clients that call it."""

    name: str
    url: str
    vm: str  # the simulated VM (pings)
    direct_vm: str  # the agent on its own Unix socket (the file read)
    client: Any  # httpx.AsyncClient (Connect, HTTP/1.1)
    grpc_channel: Any  # grpc.Channel (h2c on plain, h2 on TLS)
    headers: dict[str, str]
    children: list[bl.Child]
    verify: Any = None  # the client's SSL context (TLS) or True

    @property
    def controller_pid(self) -> int:
        return self.children[0].pid


def _by_stack() -> dict[str, list[float]]:
    return {"plain": [], "tls": []}


@dataclass
class Results:
    ping: dict[str, list[float]] = field(default_factory=_by_stack)
    grpc_ping: dict[str, list[float]] = field(default_factory=_by_stack)
    handshake_ping: list[float] = field(default_factory=list)
    read_mib_s: dict[str, list[float]] = field(default_factory=_by_stack)
    #: The controller's CPU seconds over the Connect and the gRPC ping blocks, per stack.
    cpu_s: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"connect": {"plain": 0.0, "tls": 0.0}, "grpc": {"plain": 0.0, "tls": 0.0}}
    )


def make_pki(directory: Path) -> Path:
    """A throwaway CA, server certificates for 127.0.0.1 and the mutual-TLS client certificates."""
    local = {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]}
    pki.create_ca(directory)
    pki.issue(directory, "controller", pki.CertKind.SERVER, **local)
    pki.issue(directory, "hostd", pki.CertKind.SERVER, **local)
    pki.issue(directory, "controller-client", pki.CertKind.CLIENT)
    pki.issue(directory, "node-client", pki.CertKind.CLIENT, common_name="bench-tls")
    return directory


def _cpu_s(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used, in seconds.

    Raises:
        OSError: no such process.
    """
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_direct_agent(stack: contextlib.AsyncExitStack, d: Path, name: str) -> Path:
    """The real agent serving a Unix socket itself (no pty in its data path); its socket path."""
    sock = d / "direct" / "agent.sock"
    sock.parent.mkdir()
    agent = cb._spawn(
        f"agent ({name}, direct)",
        [sys.executable, "-m", "limiquantix.agent", "--transport", "unix-listen", "--socket", str(sock),
         "--telemetry-interval-s", "5", "--log-level", "warning"],
        d / "direct" / "agent.log", sock.parent,
    )  # fmt: skip
    stack.callback(agent.stop)
    return sock


async def _wait_for_socket(path: Path, child_name: str) -> None:
    """Raises: bl.BenchError: ``path`` did not appear in time."""
    with trio.move_on_after(cb.START_TIMEOUT_S):
        while not path.exists():
            await trio.sleep(0.05)
        return
    raise bl.BenchError(f"{child_name}: no socket {path}")


def _grpc_channel(stack: contextlib.AsyncExitStack, url: str, certs: Path | None) -> Any:
    """A grpcio channel to the controller at ``url`` (closed by ``stack``)."""
    import grpc

    target = url.split("://", 1)[1]
    if certs is None:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
        channel = grpc.secure_channel(target, credentials)
    stack.callback(channel.close)
    return channel


async def start_stack(stack: contextlib.AsyncExitStack, work: Path, name: str, certs: Path | None) -> Stack:
    """A controller, a hostd, a simulated VM ``vm-<name>`` and a direct agent
    ``vm-<name>-direct``; TLS when ``certs``.

    Raises:
        bl.BenchError, trio.TooSlowError: a process did not start.
    """
    import httpx

    d = work / name
    (d / "vms").mkdir(parents=True)
    (d / "sim").mkdir()
    empty = d / "empty.toml"
    empty.write_text("")
    admin_token = "lqx-bench-" + secrets.token_urlsafe(24)
    tls_controller: list[str] = []
    tls_hostd: list[str] = []
    verify: Any = True
    if certs is not None:
        ca = str(certs / "ca.pem")
        tls_controller = [
            "--tls-cert-file", str(certs / "controller.pem"), "--tls-key-file", str(certs / "controller.key"),
            "--tls-client-ca-file", ca, "--node-ca-file", ca, "--node-cert-file", str(certs / "controller-client.pem"),
            "--node-key-file", str(certs / "controller-client.key"),
        ]  # fmt: skip
        tls_hostd = [
            "--tls-cert-file", str(certs / "hostd.pem"), "--tls-key-file", str(certs / "hostd.key"),
            "--tls-client-ca-file", ca, "--controller-ca-file", ca,
            "--controller-cert-file", str(certs / "node-client.pem"), "--controller-key-file", str(certs / "node-client.key"),
        ]  # fmt: skip
        verify = client_ssl_context(TLSFiles(ca_file=ca))
    controller = cb._spawn(
        f"controller ({name})",
        [sys.executable, "-m", "limiquantix.controller", "serve", "--config", str(empty), "--listen", "127.0.0.1:0",
         "--db", str(d / "controller.db"), "--log-level", "info", *tls_controller],
        d / "controller.log", d, env={**os.environ, "LQX_ADMIN_TOKEN": admin_token},
    )  # fmt: skip
    stack.callback(controller.stop)
    url = await controller.serving_url(bl.CONTROLLER_SERVING_RE, cb.START_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {admin_token}"}
    client = await stack.enter_async_context(httpx.AsyncClient(timeout=cb.FIGURE_TIMEOUT_S, verify=verify))
    made = await client.post(
        f"{url}{ADMIN_SERVICE}/CreateToken", json={"user": f"bench-{name}", "role": "node"}, headers=headers
    )
    if made.status_code != 200:
        raise bl.BenchError(f"CreateToken: {made.status_code} {made.text}")
    (d / "node.token").write_text(made.json()["token"] + "\n")
    (d / "hostd.token").write_text(secrets.token_urlsafe(24) + "\n")
    vm = f"vm-{name}"
    sims = await hb.start_simvms(stack, (vm,), d / "sim", d)
    os.symlink(sims[vm].socket_path, d / "vms" / f"{vm}.agent.sock")
    direct_vm = f"vm-{name}-direct"
    direct_sock = _start_direct_agent(stack, d, name)
    await _wait_for_socket(direct_sock, f"agent ({name}, direct)")
    os.symlink(direct_sock, d / "vms" / f"{direct_vm}.agent.sock")
    hostd = cb._spawn(
        f"hostd ({name})",
        [sys.executable, "-m", "limiquantix.hostd", "--config", str(empty), "--listen", f"127.0.0.1:{cb._free_port()}",
         "--token-file", str(d / "hostd.token"), "--socket-dir", str(d / "vms"), "--libvirt-channel-root", "",
         "--node-id", f"bench-{name}", "--controller-url", url, "--controller-token-file", str(d / "node.token"),
         "--heartbeat-interval-s", f"{cb.HEARTBEAT_INTERVAL_S:g}", "--log-level", "warning", *tls_hostd],
        d / "hostd.log", d,
    )  # fmt: skip
    stack.callback(hostd.stop)
    await cb._wait_connected(client, url, headers, 2, [controller, hostd])
    bl.say(f"{name}: controller pid {controller.pid} at {url}, hostd pid {hostd.pid}, {vm} and {direct_vm} connected")
    channel = _grpc_channel(stack, url, certs)
    return Stack(name, url, vm, direct_vm, client, channel, headers, [controller, hostd], verify)


async def ping(s: Stack, count: int, client: Any = None) -> list[float]:
    """``count`` PingAgent calls one after the other (Connect JSON), latencies in ms.

    Raises:
        bl.BenchError: a call failed.
    """
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        r = await (client or s.client).post(f"{s.url}{VM_SERVICE}/PingAgent", json={"vmId": s.vm}, headers=s.headers)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200 or not r.json().get("connected"):
            raise bl.BenchError(f"PingAgent ({s.name}): {r.status_code} {r.text[:200]}")
    return out


async def grpc_ping(s: Stack, count: int) -> list[float]:
    """``count`` PingAgent calls over gRPC with grpcio (one channel), latencies in ms.

    The calls run one after the other in one worker thread (grpcio's client blocks), each timed
    there: the trio loop only waits for the block, so no thread hop is inside a measurement.

    Raises:
        bl.BenchError: a call failed (its gRPC status and message).
    """
    import grpc

    call = s.grpc_channel.unary_unary(
        f"{VM_SERVICE}/PingAgent",
        request_serializer=api_pb.PingAgentRequest.SerializeToString,
        response_deserializer=api_pb.PingAgentResponse.FromString,
    )
    request = api_pb.PingAgentRequest(vm_id=s.vm)
    metadata = (("authorization", s.headers["Authorization"]),)

    def run() -> list[float]:
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            answer = call(request, metadata=metadata, timeout=cb.FIGURE_TIMEOUT_S)
            out.append((time.perf_counter() - t0) * 1000)
            if not answer.connected:
                raise bl.BenchError(f"gRPC PingAgent ({s.name}): not connected: {answer.error}")
        return out

    try:
        return await trio.to_thread.run_sync(run)
    except grpc.RpcError as exc:
        raise bl.BenchError(f"gRPC PingAgent ({s.name}): {exc.code().name}: {exc.details()}") from None


async def ping_new_connections(s: Stack, count: int) -> list[float]:
    """PingAgent with a new connection (TLS handshake included) per call."""
    import httpx

    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=cb.FIGURE_TIMEOUT_S, verify=s.verify, limits=limits) as fresh:
        return await ping(s, count, fresh)


async def read_file(s: Stack, path: Path) -> float:
    """The whole file at ``path`` from the direct agent through the controller in ranges: MiB/s.

    The client is the rpc layer's (:class:`limiquantix.protocol.rpc.RpcClient`, what the TUI and
    the CLI read files with), one per call, its connection made before the clock starts.

    Raises:
        bl.BenchError: a call failed or the content is short.
        errors.AgentError: the controller answered an error.
    """
    from limiquantix.protocol import rpc

    size = path.stat().st_size
    target = rpc.Target(url=s.url, token=s.headers["Authorization"].removeprefix("Bearer "), name=s.name)
    tls = rpc.ClientTLS(verify=s.verify)
    got = 0
    async with rpc.RpcClient(tls=tls) as client:
        await client.unary_message(
            target, f"{VM_SERVICE[1:]}/PingAgent", api_pb.PingAgentRequest(vm_id=s.direct_vm), api_pb.PingAgentResponse
        )
        t0 = time.perf_counter()
        for offset in range(0, size, READ_RANGE_BYTES):
            req = api_pb.ReadGuestFileRequest(vm_id=s.direct_vm, path=str(path), offset=offset, length=READ_RANGE_BYTES)
            resp = await client.unary_message(
                target, f"{VM_SERVICE[1:]}/ReadGuestFile", req, api_pb.ReadGuestFileResponse
            )
            got += len(resp.content)
        elapsed = time.perf_counter() - t0
    if got != size:
        raise bl.BenchError(f"ReadGuestFile ({s.name}): {got} bytes of {size}")
    return size / 2**20 / elapsed


async def measure(work: Path, settings: Settings) -> Results:
    """Start both stacks, take the figures, stop everything.

    Raises:
        bl.BenchError, OSError, trio.TooSlowError: the run cannot give figures.
    """
    r = Results()
    certs = make_pki(work / "pki")
    big = work / "big.bin"
    with big.open("wb") as fh:
        for _ in range(FILE_BYTES // 2**20):
            fh.write(os.urandom(2**20))
    async with contextlib.AsyncExitStack() as stack:
        plain = await start_stack(stack, work, "plain", None)
        tls = await start_stack(stack, work, "tls", certs)
        with trio.fail_after(cb.FIGURE_TIMEOUT_S * 4):
            for s in (plain, tls):  # warm-up: connections, caches
                await ping(s, 20)
                await grpc_ping(s, 20)
            for i, n in enumerate(bl.blocks(settings.pings, settings.ping_blocks)):
                stacks = (plain, tls) if i % 2 == 0 else (tls, plain)
                for s in stacks:
                    kinds = ("connect", "grpc") if i % 2 == 0 else ("grpc", "connect")
                    for kind in kinds:
                        cpu0 = _cpu_s(s.controller_pid)
                        if kind == "connect":
                            r.ping[s.name] += await ping(s, n)
                        else:
                            r.grpc_ping[s.name] += await grpc_ping(s, n)
                        r.cpu_s[kind][s.name] += _cpu_s(s.controller_pid) - cpu0
            bl.say(
                f"PingAgent median: plain {bl.median(r.ping['plain']):.3f} ms, TLS {bl.median(r.ping['tls']):.3f} ms"
            )
            bl.say(
                f"gRPC PingAgent median: h2c {bl.median(r.grpc_ping['plain']):.3f} ms,"
                f" TLS {bl.median(r.grpc_ping['tls']):.3f} ms"
            )
            r.handshake_ping = await ping_new_connections(tls, settings.handshakes)
            bl.say(f"PingAgent, a new TLS connection per call: median {bl.median(r.handshake_ping):.3f} ms")
            for s in (plain, tls):
                await read_file(s, big)  # warm-up: page cache, buffers
            for i in range(settings.reads):
                for s in (plain, tls) if i % 2 == 0 else (tls, plain):
                    r.read_mib_s[s.name].append(await read_file(s, big))
            bl.say(
                f"64 MiB read: plain {bl.median(r.read_mib_s['plain']):.0f} MiB/s, TLS {bl.median(r.read_mib_s['tls']):.0f} MiB/s"
            )
    return r


def grpc_figures(r: Results) -> list[bl.Figure]:
    """PingAgent over gRPC beside Connect on the same stack (target gRPC ≤ Connect at the median),
    and the controller's CPU per call for each (informational: the servers' side of the cost)."""
    rows = []
    for name, what in (
        ("plain", "gRPC over h2c vs Connect over HTTP/1.1"),
        ("tls", "gRPC over TLS (h2) vs Connect over TLS"),
    ):
        grpc, connect = r.grpc_ping[name], r.ping[name]
        rows += [
            bl.Figure(
                f"PingAgent via controller, {what}, median", bl.median(grpc), bl.median(connect), "ms", "ratio <= 1.0"
            ),
            bl.Figure(
                f"PingAgent via controller, {what}, p99",
                bl.percentile(grpc, 99),
                bl.percentile(connect, 99),
                "ms",
                None,
            ),
            bl.Figure(
                f"PingAgent via controller, {what}, the controller's CPU per call",
                r.cpu_s["grpc"][name] * 1000 / len(grpc),
                r.cpu_s["connect"][name] * 1000 / len(connect),
                "ms",
                None,
                note="user + system time of the controller process over the blocks, per call: its server and its"
                " call to hostd (always Connect over HTTP/1.1); the clients' cost is not in it",
            ),
        ]
    return rows


def figures_from(r: Results) -> list[bl.Figure]:
    plain, tls = r.ping["plain"], r.ping["tls"]
    read_plain, read_tls = bl.median(r.read_mib_s["plain"]), bl.median(r.read_mib_s["tls"])
    return [
        bl.Figure(
            "PingAgent via controller, Connect over TLS keep-alive vs HTTP/1.1 plain, median",
            bl.median(tls),
            bl.median(plain),
            "ms",
            f"ratio <= {TLS_MEDIAN_RATIO_TARGET}",
        ),  # fmt: skip
        bl.Figure(
            "PingAgent via controller, Connect over TLS vs plain, p99",
            bl.percentile(tls, 99),
            bl.percentile(plain, 99),
            "ms",
            None,
        ),
        bl.Figure(
            "PingAgent via controller, a new TLS connection per call (handshake), median",
            bl.median(r.handshake_ping),
            bl.median(plain),
            "ms",
            None,
            note="the baseline is plain HTTP/1.1 keep-alive; controller ↔ hostd keeps its pooled mutual-TLS connection",
        ),  # fmt: skip
        bl.Figure(
            "64 MiB file read via controller (2 x 32 MiB ReadGuestFile, proto, agent on a Unix socket), TLS vs plain",
            read_tls,
            read_plain,
            "MiB/s",
            f"ratio >= {TLS_READ_RATIO_TARGET}",
        ),  # fmt: skip
        *grpc_figures(r),
    ]


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with figures (targets met or not), 1 on errors, 130 when interrupted."""
    settings = Settings.from_args(argv)
    load0 = os.getloadavg()[0]
    try:
        with bl.workdir("lqx-rpc-", keep=settings.keep_workdir) as work:
            bl.say(f"work dir {work}")
            results = trio.run(measure, work, settings)
    except BaseException as exc:  # noqa: BLE001 - reported, then the exit status says it
        return bl.report_failure("rpc_bench", exc, (bl.BenchError, errors.AgentError, OSError, trio.TooSlowError))
    context = (
        f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; two stacks"
        " (controller, hostd, a simulated VM and a direct agent each) and the clients share these CPUs"
    )
    figures = [f.evaluate() for f in figures_from(results)]
    bl.print_table(
        figures,
        f"limiquantix rpc transports {VERSION}" + (" (--quick)" if settings.quick else ""),
        context,
        baseline="plain",
    )
    bl.write_figures(figures, settings.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
