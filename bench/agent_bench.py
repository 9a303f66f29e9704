#!/usr/bin/env python3
"""Benchmark the LimiQuantix agent beside qemu-guest-agent, from one run.

Both agents run on this machine, each on its own Unix socket in a temp dir,
started and stopped by this script:

* ours: ``python -m limiquantix.agent --transport unix-listen --socket SOCK
  --telemetry-interval-s 5 --log-level warning``, driven with
  :class:`~limiquantix.protocol.AgentClient` (trio);
* baseline: ``qemu-ga -m unix-listen -p SOCK -f PIDFILE -t STATEDIR`` (Debian's
  package; ``QGA_CONF`` points at an empty file so no system config applies),
  driven with a minimal blocking QMP-over-JSON-lines client (the cheapest client
  there is, so the baseline is qemu-ga at its best).

Figures (targets from issue 2, "Targets"):

* ping round trip, median and p99: ours <= qemu-ga ``guest-ping``;
* read a file (64 MiB): ours (``file_read``, default 1 MiB chunks) >= 4x the
  best ``guest-file-open/read/close`` over several ``count`` sizes;
* write it: ours (a ``file_write`` transfer, 1 MiB pieces, atomic commit with
  fsync) >= 4x the best ``guest-file-open/write/close``;
* run ``/bin/true``: ours (``execute``) <= ``guest-exec`` + ``guest-exec-status``
  polled back to back until exited;
* idle agent over 60 s with 5 s telemetry and a connected client: RSS <= 35 MiB,
  CPU <= 0.2 % of one core (qemu-ga's measured beside it, for reference).

Ours and qemu-ga's figures are taken in alternating blocks, so background load
on a shared machine hits both alike. Pings are taken with the clients and the
agents pinned to one CPU (a round trip is mostly two wake-ups, and where the
scheduler put them, which differed between processes and runs, moved the
figures by up to 2x), then, for information, with the clients on another CPU. Informational rows (no target) help find
where time goes: ping to our agent from a raw blocking client speaking our
framing (no trio on the client side), guest-ping from a trio client, and our
agent's RSS after the transfers. See bench/README.md.

Prints a table and writes ``bench/results/agent.json``: a list of
``{name, ours, baseline, unit, target, ratio, met}`` (plus ``note``: how a
figure was taken, or why it could not be). Exits non-zero only on errors: missed targets
are reported, not fatal. ``--quick`` shortens the idle window and the sizes for
development; ``make bench`` runs the full figures.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio
from benchlib import (  # noqa: E402 - bench/ is not a package: found by file name
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

from limiquantix.protocol import AgentClient, FrameDecoder, encode_message, errors, new_message, parse_frame
from limiquantix.protocol import __version__ as AGENT_VERSION
from limiquantix.protocol._gen import agent_pb2 as pb

MiB: Final = 1024 * 1024
#: How long an agent may take to create its socket and answer.
START_TIMEOUT_S: Final = 20.0
#: Per-figure safety net, so a wedged agent fails the run instead of hanging it.
FIGURE_TIMEOUT_S: Final = 600.0
#: qemu-ga ``count`` sizes tried for guest-file-read / guest-file-write; the best is the baseline.
QGA_COUNTS: Final = (64 * 1024, 256 * 1024, 1 * MiB, 4 * MiB)
#: Our write transfer's piece size (the read uses the agent's default chunk, 1 MiB).
OURS_WRITE_PIECE: Final = 1 * MiB


# --------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    quick: bool
    ping_count: int
    ping_warmup: int
    ping_blocks: int
    file_bytes: int
    file_reps: int
    exec_count: int
    exec_warmup: int
    exec_blocks: int
    idle_s: float
    telemetry_interval_s: float
    output: Path
    workdir: Path | None

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        parser = bench_parser(
            __doc__, "agent", "short idle window (10 s), 16 MiB files, fewer samples", keep_workdir=False
        )
        parser.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="directory for sockets and test files (default: a fresh temp dir, removed afterwards)",
        )
        parser.add_argument("--ping-count", type=int, help="pings per agent (default 5000, quick 1000)")
        parser.add_argument("--file-mib", type=int, help="size of the transferred file (default 64, quick 16)")
        parser.add_argument(
            "--file-reps", type=int, help="repetitions of each transfer, best kept (default 5, quick 1)"
        )
        parser.add_argument("--exec-count", type=int, help="runs of /bin/true per agent (default 300, quick 50)")
        parser.add_argument("--idle-s", type=float, help="idle window in seconds (default 60, quick 10)")
        ns = parser.parse_args(argv)
        q = ns.quick
        return cls(
            quick=q,
            ping_count=ns.ping_count or (1000 if q else 5000),
            ping_warmup=100 if q else 500,
            ping_blocks=10,
            file_bytes=(ns.file_mib or (16 if q else 64)) * MiB,
            file_reps=ns.file_reps or (1 if q else 5),
            exec_count=ns.exec_count or (50 if q else 300),
            exec_warmup=5 if q else 20,
            exec_blocks=5,
            idle_s=ns.idle_s or (10.0 if q else 60.0),
            telemetry_interval_s=5.0,
            output=output_path("agent", ns),
            workdir=ns.workdir,
        )


# ---------------------------------------------------------------------- figures


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


# ------------------------------------------------------------------- processes


@dataclass
class Proc(Child):
    """An agent under test: a Child serving ``socket_path``."""

    socket_path: Path


def wait_for_socket(proc: Proc) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        proc.check_alive()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(proc.socket_path))
            except OSError:
                time.sleep(0.05)
                continue
        # Our agent serves every connection, so a probe costs nothing. qemu-ga
        # serves one client at a time and accepts the next once this one closed.
        return
    raise BenchError(
        f"{proc.name} did not create {proc.socket_path} within {START_TIMEOUT_S:.0f} s:\n{proc.log_tail()}"
    )


def find_qemu_ga() -> str:
    path = shutil.which("qemu-ga") or shutil.which("qemu-ga", path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        raise BenchError("qemu-ga not found: run bench/setup.sh (apt-get install qemu-guest-agent)")
    return path


def start_qemu_ga(work: Path) -> Proc:
    qga_dir = work / "qga"
    (qga_dir / "state").mkdir(parents=True)
    conf = qga_dir / "qemu-ga.conf"
    conf.write_text("")  # no system-wide /etc/qemu/qemu-ga.conf applies to the baseline
    sock = qga_dir / "qga.sock"
    log_path = qga_dir / "qemu-ga.log"
    argv = [
        find_qemu_ga(),
        "-m", "unix-listen",
        "-p", str(sock),
        "-f", str(qga_dir / "qemu-ga.pid"),
        "-t", str(qga_dir / "state"),
    ]  # fmt: skip
    env = {**os.environ, "QGA_CONF": str(conf)}
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=qga_dir, preexec_fn=_die_with_parent
        )
    proc = Proc("qemu-ga", popen, log_path, sock)
    wait_for_socket(proc)
    return proc


def start_ours(work: Path, settings: Settings) -> Proc:
    ours_dir = work / "ours"
    ours_dir.mkdir()
    sock = ours_dir / "agent.sock"
    log_path = ours_dir / "agent.log"
    argv = [
        sys.executable, "-m", "limiquantix.agent",
        "--transport", "unix-listen",
        "--socket", str(sock),
        "--telemetry-interval-s", f"{settings.telemetry_interval_s:g}",
        "--log-level", "warning",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ours_dir, preexec_fn=_die_with_parent
        )
    proc = Proc("limiquantix-agent", popen, log_path, sock)
    wait_for_socket(proc)
    return proc


# ------------------------------------------------------------- qemu-ga client


class QgaError(Exception):
    pass


class QgaClient:
    """Blocking QMP client for qemu-ga: one JSON object per line, each way.

    Connection start follows qemu-ga's documented protocol: the host sends a
    0xFF byte (flushes the agent's JSON parser; qemu-ga answers it with a parse
    error, which is discarded) then ``guest-sync-delimited``; the agent puts
    0xFF before its answer, so the client skips everything up to that byte.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("rb", buffering=1 * MiB)

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def sync(self) -> None:
        sync_id = secrets.randbits(31)
        cmd = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
        self.sock.sendall(b"\xff" + json.dumps(cmd).encode() + b"\n")
        while True:
            byte = self.rfile.read(1)
            if not byte:
                raise QgaError("qemu-ga closed the connection during sync")
            if byte != b"\xff":
                continue
            answer = json.loads(self.rfile.readline())
            if answer.get("return") == sync_id:
                return

    def send_raw(self, line: bytes) -> Any:
        self.sock.sendall(line)
        answer = json.loads(self.rfile.readline())
        if "error" in answer:
            raise QgaError(answer["error"].get("desc", str(answer["error"])))
        return answer["return"]

    def call(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        return self.send_raw(json.dumps(msg).encode() + b"\n")


QGA_PING: Final = b'{"execute":"guest-ping"}\n'


def qga_ping(client: QgaClient, count: int) -> list[float]:
    """Sequential guest-ping round trips, in microseconds."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        client.send_raw(QGA_PING)
        samples.append((clock() - t0) / 1e3)
    return samples


def qga_read(client: QgaClient, path: Path, count: int, expect: bytes) -> float:
    """Read the whole file with guest-file-read of ``count``; returns seconds."""
    t0 = time.perf_counter()
    handle = client.call("guest-file-open", path=str(path), mode="r")
    parts = []
    try:
        while True:
            ret = client.call("guest-file-read", handle=handle, count=count)
            parts.append(base64.b64decode(ret["buf-b64"]))
            if ret["eof"] or ret["count"] == 0:
                break
    finally:
        client.call("guest-file-close", handle=handle)
    elapsed = time.perf_counter() - t0
    if sha256(b"".join(parts)) != expect:
        raise BenchError(f"qemu-ga read of {path} returned different bytes (count {count})")
    return elapsed


def qga_write(client: QgaClient, path: Path, data: bytes, count: int) -> float:
    """Write ``data`` to ``path`` with guest-file-write pieces of ``count``; returns seconds."""
    view = memoryview(data)
    t0 = time.perf_counter()
    handle = client.call("guest-file-open", path=str(path), mode="w")
    try:
        for off in range(0, len(data), count):
            piece = view[off : off + count]
            ret = client.call("guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(piece).decode()})
            if ret["count"] != len(piece):
                raise BenchError(f"qemu-ga wrote {ret['count']} of {len(piece)} bytes")
    finally:
        client.call("guest-file-close", handle=handle)
    return time.perf_counter() - t0


def qga_exec_true(client: QgaClient, count: int) -> tuple[list[float], int]:
    """guest-exec /bin/true, then guest-exec-status back to back until exited.

    Returns the round trips in microseconds and the number of status polls.
    """
    samples = []
    polls = 0
    for _ in range(count):
        t0 = time.perf_counter_ns()
        pid = client.call("guest-exec", path="/bin/true")["pid"]
        status_line = json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}}).encode() + b"\n"
        while True:
            status = client.send_raw(status_line)
            polls += 1
            if status["exited"]:
                break
        samples.append((time.perf_counter_ns() - t0) / 1e3)
        if status.get("exitcode") != 0:
            raise BenchError(f"qemu-ga guest-exec /bin/true: {status}")
    return samples, polls


async def qga_ping_trio(path: Path, count: int, warmup: int) -> list[float]:
    """guest-ping from a trio stream (send_all / receive_some, no tasks), in microseconds."""
    async with await trio.open_unix_socket(str(path)) as stream:
        buf = bytearray()

        async def fill() -> None:
            data = await stream.receive_some(64 * 1024)
            if not data:
                raise QgaError("qemu-ga closed the connection")
            buf.extend(data)

        async def line() -> bytes:
            while (nl := buf.find(b"\n")) < 0:
                await fill()
            out = bytes(buf[: nl + 1])
            del buf[: nl + 1]
            return out

        sync_id = secrets.randbits(31)
        sync = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
        await stream.send_all(b"\xff" + json.dumps(sync).encode() + b"\n")
        while True:  # skip to the 0xFF that precedes the sync answer (see QgaClient)
            while (ff := buf.find(b"\xff")) < 0:
                buf.clear()
                await fill()
            del buf[: ff + 1]
            if json.loads(await line()).get("return") == sync_id:
                break
        samples = []
        clock = time.perf_counter_ns
        for i in range(warmup + count):
            t0 = clock()
            await stream.send_all(QGA_PING)
            answer = json.loads(await line())
            if i >= warmup:
                samples.append((clock() - t0) / 1e3)
            if "return" not in answer:
                raise QgaError(f"guest-ping: {answer}")
        return samples


# ------------------------------------------------------------- our raw client


class RawAgentClient:
    """Blocking client speaking our framing directly: no trio, no tasks.

    Only for the informational "raw client" ping row: the gap between it and
    :class:`AgentClient` is client-side overhead, the rest is the agent's.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder()
        self._frames: list[pb.AgentMessage] = []
        sync_id = secrets.randbits(63) + 1
        self.sock.sendall(encode_message(new_message(hello=pb.HelloRequest(sync_id=sync_id))))
        while True:
            msg = self._next()
            if msg.WhichOneof("payload") == "hello_response" and msg.hello_response.sync_id == sync_id:
                return

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> pb.AgentMessage:
        while not self._frames:
            data = self.sock.recv(256 * 1024)
            if not data:
                raise BenchError("agent closed the raw connection")
            self._frames.extend(parse_frame(f) for f in self.decoder.feed(data))
        return self._frames.pop(0)

    def ping(self) -> None:
        msg = new_message(ping=pb.PingRequest())
        self.sock.sendall(encode_message(msg))
        while True:  # events (telemetry) may come first
            answer = self._next()
            if answer.message_id == msg.message_id:
                if answer.WhichOneof("payload") != "pong":
                    raise BenchError(f"raw ping answered with {answer.WhichOneof('payload')}")
                return


#: The least a Python agent can do per ping: a blocking loop in its own process
#: (no trio, no tasks, no queues) decoding our frames and answering with a pong.
#: Run beside the real agent and driven by the same raw client, it is the floor
#: for any Python implementation of our protocol on this machine.
FLOOR_LOOP = """
decoder, started = FrameDecoder(), time.monotonic()
while True:
    data = os.read(fd, 65536)
    if not data:
        if not WAIT_FOR_HOST:
            break
        time.sleep(0.05)  # a virtio-serial port with no host attached reads 0 bytes
        continue
    for frame in decoder.feed(data):
        msg = parse_frame(frame)
        if msg.WhichOneof("payload") == "hello":
            out = new_message(msg.message_id, hello_response=pb.HelloResponse(sync_id=msg.hello.sync_id))
        else:
            out = new_message(msg.message_id, pong=pb.PongResponse(
                payload=msg.ping.payload, agent_uptime_seconds=time.monotonic() - started))
        os.write(fd, encode_message(out))
"""
FLOOR_IMPORTS = """
import os, socket, sys, time
from limiquantix.protocol import agent_pb2 as pb
from limiquantix.protocol._framing import FrameDecoder
from limiquantix.protocol._wire import encode_message, new_message, parse_frame
"""
FLOOR_RESPONDER = (
    FLOOR_IMPORTS
    + """
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
fd, WAIT_FOR_HOST = conn.fileno(), False
"""
    + FLOOR_LOOP
)


@contextlib.contextmanager
def floor_responder(work: Path) -> Iterator[tuple[RawAgentClient, int]]:
    """:data:`FLOOR_RESPONDER` started, with a raw client connected to it; and its pid."""
    path = work / "floor.sock"
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_RESPONDER, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise BenchError("the floor responder did not start")
        client = RawAgentClient(path)
        try:
            yield client, proc.pid
        finally:
            client.close()
    finally:
        proc.kill()
        proc.wait()


def pin(pids: list[int], cpus: set[int]) -> None:
    """Restrict every thread of each process to ``cpus`` (threads started later inherit it)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def placement(servers: list[int], server_cpu: int, client_cpu: int) -> Iterator[None]:
    """The agents on ``server_cpu``, this process (the clients) on ``client_cpu``; then all
    back on every CPU. A ping's round trip is mostly two wake-ups, and a wake-up on the same
    CPU costs a fraction of one on another: unpinned, the scheduler's choice (which differs
    between processes and between runs) decided the figures, by up to 2x."""
    every = os.sched_getaffinity(0)
    pin(servers, {server_cpu})
    pin([os.getpid()], {client_cpu})
    try:
        yield
    finally:
        pin([*servers, os.getpid()], every)


def raw_ping(client: RawAgentClient, count: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        client.ping()
        samples.append((clock() - t0) / 1e3)
    return samples


# ----------------------------------------------------------------- our client


class NotAvailable(Exception):
    """Our agent does not implement the request yet (it answered unimplemented)."""


async def ours_ping(client: AgentClient, count: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        await client.ping()
        samples.append((clock() - t0) / 1e3)
    return samples


async def ours_read(client: AgentClient, path: Path, expect: bytes, chunk_size: int = 0) -> float:
    """file_read of the whole file in ``chunk_size`` chunks (0: the agent's default); returns seconds."""
    t0 = time.perf_counter()
    parts = []
    last: pb.FileReadChunk | None = None
    request = pb.FileReadRequest(path=str(path), chunk_size=chunk_size)
    try:
        async with contextlib.aclosing(client.stream(file_read=request)) as it:
            async for msg in it:
                chunk = msg.file_read_chunk
                parts.append(chunk.data)
                last = chunk
    except errors.Unimplemented as exc:
        raise NotAvailable(str(exc)) from exc
    elapsed = time.perf_counter() - t0
    if last is None or not last.eof:
        raise BenchError("file_read ended without an eof chunk")
    data = b"".join(parts)
    if sha256(data) != expect:
        raise BenchError(f"file_read of {path} returned different bytes ({len(data)} bytes)")
    if last.sha256 and last.sha256 != expect:
        raise BenchError("file_read's final sha256 does not match the bytes sent")
    return elapsed


async def ours_write(client: AgentClient, path: Path, data: bytes, piece: int) -> float:
    """A file_write transfer of ``data`` in pieces of ``piece`` bytes; returns seconds."""
    view = memoryview(data)
    offsets = list(range(0, len(data), piece)) or [0]
    t0 = time.perf_counter()
    write_id = ""
    resp: pb.FileWriteResponse | None = None
    try:
        for i, off in enumerate(offsets):
            req = pb.FileWriteRequest(data=bytes(view[off : off + piece]), last=i == len(offsets) - 1)
            if i == 0:
                req.path = str(path)
                req.mode = pb.WRITE_MODE_TRUNCATE
            else:
                req.write_id = write_id
            resp = (await client.request(file_write=req)).file_write_response
            write_id = resp.write_id or write_id
    except errors.Unimplemented as exc:
        raise NotAvailable(str(exc)) from exc
    elapsed = time.perf_counter() - t0
    assert resp is not None
    if not resp.committed:
        raise BenchError("file_write's last piece did not commit")
    if resp.sha256 and resp.sha256 != sha256(data):
        raise BenchError("file_write's commit sha256 differs from the data sent")
    return elapsed


async def ours_exec_true(client: AgentClient, count: int) -> list[float]:
    req = pb.ExecuteRequest(argv=["/bin/true"])
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        try:
            resp = (await client.request(execute=req)).execute_response
        except errors.Unimplemented as exc:
            raise NotAvailable(str(exc)) from exc
        samples.append((time.perf_counter_ns() - t0) / 1e3)
        if resp.exit_reason != pb.EXIT_REASON_EXITED or resp.exit_code != 0:
            raise BenchError(f"execute /bin/true: {resp}")
    return samples


# ---------------------------------------------------------------- measurements


@dataclass
class Results:
    """Raw measurements of one run."""

    idle_s: float = 0.0
    idle_cpu: tuple[float, float] = (0.0, 0.0)  #: % of a core: ours, qemu-ga
    idle_rss: tuple[float, float] = (0.0, 0.0)  #: MiB: ours, qemu-ga
    telemetry_reports: int = 0
    ping: tuple[list[float], list[float]] = ([], [])
    raw_ping: list[float] = field(default_factory=list)
    floor_ping: list[float] = field(default_factory=list)
    #: Raw-client pings with the clients on another CPU than the agents: ours, qemu-ga, floor.
    cross_ping: tuple[list[float], list[float], list[float]] = field(default_factory=lambda: ([], [], []))
    qga_trio_ping: list[float] = field(default_factory=list)
    read_s: float | None = None
    write_s: float | None = None
    qga_read_s: dict[int, float] = field(default_factory=dict)
    qga_write_s: dict[int, float] = field(default_factory=dict)
    exec_us: list[float] | None = None
    qga_exec_us: list[float] = field(default_factory=list)
    qga_exec_polls: int = 0
    notes: dict[str, str] = field(default_factory=dict)
    rss_after: tuple[float, float] = (0.0, 0.0)


async def measure(ours: Proc, qga: Proc, work: Path, settings: Settings) -> Results:
    """Every figure, ours and qemu-ga's interleaved block by block.

    The machine may be shared (tests, builds): measuring both agents in
    alternating blocks exposes them to the same background load, so the ratios
    stay meaningful even when the absolute figures wobble. qemu-ga's blocking
    client runs in a worker thread so this event loop stays free meanwhile.
    """
    r = Results()
    in_thread = trio.to_thread.run_sync
    qclient = QgaClient(qga.socket_path)
    try:
        await in_thread(qclient.sync)
        qga_version = (await in_thread(qclient.call, "guest-info"))["version"]
        say(f"qemu-ga {qga_version} (pid {qga.pid}), limiquantix-agent {AGENT_VERSION} (pid {ours.pid})")
        async with AgentClient.connect_unix(str(ours.socket_path)) as client, trio.open_nursery() as nursery:
            reports = 0

            async def drain_events() -> None:
                nonlocal reports
                async for msg in client.events:
                    reports += msg.WhichOneof("payload") == "telemetry"

            nursery.start_soon(drain_events)
            await client.ping()

            # -- idle: first, on freshly started agents, one connected client each --
            say(f"idle: {settings.idle_s:g} s, telemetry every {settings.telemetry_interval_s:g} s")
            await trio.sleep(1.0)  # let the connection's start-up work settle
            reports = 0
            t0 = time.monotonic()
            cpu0 = cpu_seconds(ours.pid), cpu_seconds(qga.pid)
            rss = [0.0, 0.0]
            end = t0 + settings.idle_s
            while True:
                rss = [max(rss[0], rss_mib(ours.pid)), max(rss[1], rss_mib(qga.pid))]
                now = time.monotonic()
                if now >= end:
                    break
                await trio.sleep(min(1.0, end - now))
            cpu1 = cpu_seconds(ours.pid), cpu_seconds(qga.pid)
            r.idle_s = time.monotonic() - t0
            r.idle_cpu = ((cpu1[0] - cpu0[0]) / r.idle_s * 100, (cpu1[1] - cpu0[1]) / r.idle_s * 100)
            r.idle_rss = (rss[0], rss[1])
            r.telemetry_reports = reports
            say(
                f"  ours {r.idle_cpu[0]:.3f} % CPU, {rss[0]:.1f} MiB, {reports} telemetry reports;"
                f" qemu-ga {r.idle_cpu[1]:.3f} % CPU, {rss[1]:.1f} MiB"
            )

            # -- ping --------------------------------------------------------------
            cpus = sorted(os.sched_getaffinity(0))
            raw = RawAgentClient(ours.socket_path)
            try:
                with floor_responder(work) as (floor, floor_pid):
                    servers = [ours.pid, qga.pid, floor_pid]
                    say(f"ping: {settings.ping_count} each, in {settings.ping_blocks} interleaved blocks,"
                        f" clients and agents on CPU {cpus[-1]}")  # fmt: skip
                    with placement(servers, cpus[-1], cpus[-1]):
                        await ours_ping(client, settings.ping_warmup)
                        await in_thread(qga_ping, qclient, settings.ping_warmup)
                        await in_thread(raw_ping, raw, settings.ping_warmup)
                        await in_thread(raw_ping, floor, settings.ping_warmup)
                        ping_ours: list[float] = []
                        ping_qga: list[float] = []
                        for n in blocks(settings.ping_count, settings.ping_blocks):
                            with trio.fail_after(FIGURE_TIMEOUT_S):
                                ping_ours += await ours_ping(client, n)
                            ping_qga += await in_thread(qga_ping, qclient, n)
                            r.raw_ping += await in_thread(raw_ping, raw, n)
                            r.floor_ping += await in_thread(raw_ping, floor, n)
                    if len(cpus) > 1:
                        say(f"ping: again with the clients on CPU {cpus[0]}")
                        with placement(servers, cpus[-1], cpus[0]):
                            for n in blocks(settings.ping_count // 2, settings.ping_blocks):
                                r.cross_ping[0].extend(await in_thread(raw_ping, raw, n))
                                r.cross_ping[1].extend(await in_thread(qga_ping, qclient, n))
                                r.cross_ping[2].extend(await in_thread(raw_ping, floor, n))
                r.ping = (ping_ours, ping_qga)
            finally:
                raw.close()
            say(
                f"  median: ours {median(ping_ours):.1f} us, qemu-ga {median(ping_qga):.1f} us,"
                f" ours from a raw blocking client {median(r.raw_ping):.1f} us,"
                f" a minimal Python responder from it {median(r.floor_ping):.1f} us"
            )
            if r.cross_ping[0]:
                say(
                    f"  clients on another CPU: ours {median(r.cross_ping[0]):.1f} us,"
                    f" qemu-ga {median(r.cross_ping[1]):.1f} us, the Python floor {median(r.cross_ping[2]):.1f} us"
                )

            # -- files -------------------------------------------------------------
            data = os.urandom(settings.file_bytes)
            src = work / "source.bin"
            src.write_bytes(data)
            src_sha = sha256(data)
            say(f"files: {settings.file_bytes // MiB} MiB, {settings.file_reps} rounds, best of each kept")
            for rnd in range(settings.file_reps):
                if "read" not in r.notes:
                    try:
                        with trio.fail_after(FIGURE_TIMEOUT_S):
                            t = await ours_read(client, src, src_sha)
                        r.read_s = t if r.read_s is None else min(r.read_s, t)
                    except NotAvailable as exc:
                        r.notes["read"] = f"not available: {exc}"
                for count in QGA_COUNTS:
                    t = await in_thread(qga_read, qclient, src, count, src_sha)
                    r.qga_read_s[count] = min(r.qga_read_s.get(count, t), t)
                if "write" not in r.notes:
                    dst = work / "ours-written.bin"
                    try:
                        with trio.fail_after(FIGURE_TIMEOUT_S):
                            t = await ours_write(client, dst, data, OURS_WRITE_PIECE)
                        if sha256(dst.read_bytes()) != src_sha:
                            raise BenchError("file_write left different bytes on disk")
                        dst.unlink()
                        r.write_s = t if r.write_s is None else min(r.write_s, t)
                    except NotAvailable as exc:
                        r.notes["write"] = f"not available: {exc}"
                for count in QGA_COUNTS:
                    dst = work / "qga-written.bin"
                    t = await in_thread(qga_write, qclient, dst, data, count)
                    if sha256(dst.read_bytes()) != src_sha:
                        raise BenchError("qemu-ga guest-file-write left different bytes on disk")
                    dst.unlink()
                    r.qga_write_s[count] = min(r.qga_write_s.get(count, t), t)
                say(f"  round {rnd + 1} done")
            mb = settings.file_bytes
            say(
                "  read: ours "
                + (f"{mb_per_s(mb, r.read_s):.0f}" if r.read_s else r.notes.get("read", "-"))
                + " MB/s; qemu-ga "
                + ", ".join(f"{c // 1024} KiB {mb_per_s(mb, t):.0f}" for c, t in r.qga_read_s.items())
            )
            say(
                "  write: ours "
                + (f"{mb_per_s(mb, r.write_s):.0f}" if r.write_s else r.notes.get("write", "-"))
                + " MB/s; qemu-ga "
                + ", ".join(f"{c // 1024} KiB {mb_per_s(mb, t):.0f}" for c, t in r.qga_write_s.items())
            )
            del data

            # -- run /bin/true -------------------------------------------------------
            say(f"run /bin/true: {settings.exec_count} each, in {settings.exec_blocks} interleaved blocks")
            exec_ours: list[float] | None = []
            try:
                await ours_exec_true(client, settings.exec_warmup)
            except NotAvailable as exc:
                r.notes["exec"] = f"not available: {exc}"
                exec_ours = None
            await in_thread(qga_exec_true, qclient, settings.exec_warmup)
            for n in blocks(settings.exec_count, settings.exec_blocks):
                if exec_ours is not None:
                    with trio.fail_after(FIGURE_TIMEOUT_S):
                        exec_ours += await ours_exec_true(client, n)
                samples, polls = await in_thread(qga_exec_true, qclient, n)
                r.qga_exec_us += samples
                r.qga_exec_polls += polls
            r.exec_us = exec_ours
            say(
                "  median: ours "
                + (f"{median(exec_ours):.0f} us" if exec_ours else r.notes.get("exec", "-"))
                + f", qemu-ga {median(r.qga_exec_us):.0f} us"
            )
            r.rss_after = (rss_mib(ours.pid), rss_mib(qga.pid))
            nursery.cancel_scope.cancel()
    finally:
        qclient.close()

    # qemu-ga serves one client at a time: the trio client's turn comes last.
    cpu = sorted(os.sched_getaffinity(0))[-1]
    with placement([qga.pid], cpu, cpu):  # as the other trio client's pings were taken
        r.qga_trio_ping = await qga_ping_trio(qga.socket_path, settings.ping_count, settings.ping_warmup)
    ours.check_alive()
    qga.check_alive()
    return r


async def measure_until_terminated(ours: Proc, qga: Proc, work: Path, settings: Settings) -> Results:
    """:func:`measure`, unwound like Ctrl-C on SIGTERM (so the agents are stopped and the temp dir removed)."""
    results: list[Results] = []
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    raise KeyboardInterrupt

            async def run_measure() -> None:
                results.append(await measure(ours, qga, work, settings))
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(run_measure)
    return results[0]


def figures_from(r: Results, settings: Settings) -> list[Figure]:
    size = f"{settings.file_bytes // MiB} MiB"
    nbytes = settings.file_bytes
    best_read = min(r.qga_read_s, key=r.qga_read_s.__getitem__)
    best_write = min(r.qga_write_s, key=r.qga_write_s.__getitem__)
    polls = r.qga_exec_polls / max(1, len(r.qga_exec_us))
    ping_ours, ping_qga = r.ping
    figures = [
        # Like for like: both agents driven by the same kind of client (a plain
        # blocking socket), so the figure compares the agents, not the clients.
        Figure(
            "ping round trip, median",
            median(r.raw_ping),
            median(ping_qga),
            "us",
            "ratio <= 1",
            note="both from a plain blocking client: ours our framing, qemu-ga guest-ping as JSON lines;"
            " clients and agents pinned to one CPU (all ping rows but the next-to-last)",
        ),
        Figure("ping round trip, p99", percentile(r.raw_ping, 99), percentile(ping_qga, 99), "us", "ratio <= 1"),
        Figure(
            f"read {size} file",
            mb_per_s(nbytes, r.read_s) if r.read_s else None,
            mb_per_s(nbytes, r.qga_read_s[best_read]),
            "MB/s",
            "ratio >= 4",
            note=r.notes.get("read")
            or f"ours: file_read, 1 MiB chunks (agent default); qemu-ga: best guest-file-read count ({best_read // 1024} KiB)",
        ),
        Figure(
            f"write {size} file",
            mb_per_s(nbytes, r.write_s) if r.write_s else None,
            mb_per_s(nbytes, r.qga_write_s[best_write]),
            "MB/s",
            "ratio >= 4",
            note=r.notes.get("write")
            or (
                "ours: file_write transfer, 1 MiB pieces, atomic commit (fsync + rename);"
                f" qemu-ga: best guest-file-write count ({best_write // 1024} KiB), no fsync"
            ),
        ),
        Figure(
            "run /bin/true, median",
            median(r.exec_us) if r.exec_us else None,
            median(r.qga_exec_us),
            "us",
            "ratio <= 1",
            note=r.notes.get("exec")
            or f"ours: execute argv; qemu-ga: guest-exec + {polls:.1f} guest-exec-status polls per run (mean)",
        ),
        Figure(
            "run /bin/true, p99",
            percentile(r.exec_us, 99) if r.exec_us else None,
            percentile(r.qga_exec_us, 99),
            "us",
            None,
            note=r.notes.get("exec"),
        ),
        Figure(
            "idle RSS",
            r.idle_rss[0],
            r.idle_rss[1],
            "MiB",
            "<= 35",
            note="max VmRSS over the idle window; baseline: qemu-ga's, for reference",
        ),  # fmt: skip
        Figure(
            "idle CPU",
            r.idle_cpu[0],
            r.idle_cpu[1],
            "% of a core",
            "<= 0.2",
            note=(
                f"{r.idle_s:.0f} s with a client connected, telemetry every {settings.telemetry_interval_s:g} s"
                f" ({r.telemetry_reports} reports received); baseline: qemu-ga's, for reference"
            ),
        ),
        Figure(
            "ping median, both from trio clients (info)",
            median(ping_ours),
            median(r.qga_trio_ping),
            "us",
            None,
            note="ours: AgentClient.ping (what hostd uses); qemu-ga: guest-ping over a trio stream, measured after the rest",
        ),
        Figure(
            "ping median, a minimal Python responder (info)",
            median(r.floor_ping),
            median(ping_qga),
            "us",
            None,
            note=(
                "the floor for Python: a blocking loop in its own process decoding our frames and answering"
                " pongs (no trio, no tasks), driven by the same raw client as the ping row; baseline: qemu-ga"
            ),
        ),
        Figure(
            "ping median, clients on another CPU (info)",
            median(r.cross_ping[0]) if r.cross_ping[0] else None,
            median(r.cross_ping[1]) if r.cross_ping[1] else None,
            "us",
            None,
            note=(
                f"the same raw clients pinned to another CPU than the agents (as a host's client and a guest's agent"
                f" always are); the Python floor {median(r.cross_ping[2]):.1f} us"
                if r.cross_ping[2]
                else "one CPU only: not measured"
            ),
        ),
        Figure(
            "RSS after the transfers (info)",
            r.rss_after[0],
            r.rss_after[1],
            "MiB",
            None,
            note="after the file and exec figures",
        ),  # fmt: skip
    ]
    expected = int(r.idle_s // settings.telemetry_interval_s)
    if r.telemetry_reports < max(1, expected - 1):
        idle_cpu = next(f for f in figures if f.name == "idle CPU")
        idle_cpu.note = f"only {r.telemetry_reports} telemetry reports received in {r.idle_s:.0f} s; {idle_cpu.note}"
    return [f.evaluate() for f in figures]


def run(settings: Settings) -> tuple[list[Figure], str]:
    """Start both agents, measure, stop them; returns the figures and a context line."""
    load0 = os.getloadavg()[0]
    with workdir("lqx-bench-", under=settings.workdir) as work, contextlib.ExitStack() as stack:
        say(f"work dir {work}")
        qga = start_qemu_ga(work)
        stack.callback(qga.stop)
        ours = start_ours(work, settings)
        stack.callback(ours.stop)
        results = trio.run(measure_until_terminated, ours, qga, work, settings)
    load1 = os.getloadavg()[0]
    context = (
        f"{os.cpu_count()} CPUs, load average {load0:.2f} at start, {load1:.2f} at end"
        " (other work on the machine adds noise; ours and qemu-ga's figures are taken in alternating blocks)"
    )
    return figures_from(results, settings), context


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_args(argv)
    # Outside trio.run (start-up, shutdown): SIGTERM unwinds like Ctrl-C, so both agents
    # are stopped and the temp dir removed. Inside, measure_until_terminated does it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        figures, context = run(settings)
    except BaseException as exc:  # noqa: BLE001 - reported, then the exit status says it
        return report_failure("agent_bench", exc, (BenchError, QgaError, errors.AgentError, OSError, trio.TooSlowError))
    print_table(
        figures,
        f"limiquantix-agent {AGENT_VERSION} vs qemu-ga" + (" (--quick)" if settings.quick else ""),
        context,
        baseline="qemu-ga",
    )
    write_figures(figures, settings.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
