"""A simulated hostile guest: an agent whose root reports whatever it likes.

It listens on a Unix socket the way QEMU exposes a VM's chardev (one host
client at a time), speaks the real frame codec and messages, and answers
hello, ping, info, telemetry, execute (streamed or not), file_read and
list_directory with the guest data it was given. The real agent reports the
machine's real hostname and os-release, so a test that needs a guest to *say*
``"\\x1b]0;pwned\\x07"`` or a 1 MiB hostname uses this instead.

Used in-process by trio tests (:class:`HostileGuest`), and as a process by
the TUI tests (``python tests/hostile_guest.py --socket PATH --kind terminal``).

Its attacks are on content, through a well-framed conversation: what reaches the
operator's screen, the logs and the caps. The product's
:mod:`limiquantix.hostd.rawguest` attacks the transport instead (garbage, magic spam,
dense headers, event floods, against hostd's reader); this guest serves its socket
with that module's :func:`~limiquantix.hostd.rawguest.serve_chardev`.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable

import trio

from limiquantix.hostd.rawguest import serve_chardev
from limiquantix.protocol import BadMessage, FrameDecoder, encode_message, errors, new_message, parse_frame
from limiquantix.protocol._gen import agent_pb2 as pb

# ------------------------------------------------------------ what it reports

#: Terminal attacks, one per kind the issue saw: window title, clipboard (OSC 52),
#: leaving the alternate screen, clearing it; C1 CSI; bidi overrides and isolates.
TITLE = "\x1b]0;pwned\x07"
CLIPBOARD = "\x1b]52;c;cHduZWQ=\x07"
LEAVE_ALT = "\x1b[?1049l"
CLEAR = "\x1b[2J"
C1_CSI = "\x9b31m"
RLO = "\u202e"
ISOLATE = "\u2066"
MARKUP = "[bold red]markup[/]"
#: Every one of the above, so a test can check none reaches the screen raw.
ATTACKS = (TITLE, CLIPBOARD, LEAVE_ALT, CLEAR, C1_CSI, RLO, ISOLATE)


def terminal_identity() -> pb.AgentIdentity:
    """An identity whose every visible string tries to drive the operator's terminal."""
    return pb.AgentIdentity(
        agent_version="0.1.0",
        protocol_version=1,
        os=pb.OsInfo(name="Evil", pretty_name=f"Evil{CLIPBOARD}OS {RLO}lmth.exe{ISOLATE} {MARKUP}", family="linux"),
        kernel=f"6.1{LEAVE_ALT}",
        kernel_version=f"#1 {CLEAR}",
        architecture="x86_64",
        hostname=TITLE,
        interfaces=[
            pb.NetworkInterface(
                name=f"eth{CLEAR}0{RLO}",
                mac="52:54:00:00:00:01",
                up=True,
                ipv4=[pb.IpAddress(address=f"10.0.0.5{TITLE}", prefix_length=24)],
            )
        ],
        capabilities=["ping", "execute", "file_read", f"evil{C1_CSI}"],
        pid=4242,
        python_version="3.11",
    )


def terminal_telemetry() -> pb.TelemetryReport:
    report = pb.TelemetryReport(cpu_percent=5.0, cpu_count=2, process_count=7, uptime_seconds=100.0)
    report.memory.total_bytes, report.memory.used_bytes, report.memory.percent = 2 << 30, 1 << 30, 50.0
    report.filesystems.add(mountpoint=f"/mnt{CLIPBOARD}", fstype=f"ext4{CLEAR}", total_bytes=1 << 30, percent=10.0)
    report.interfaces.extend(terminal_identity().interfaces)
    report.collected_at.GetCurrentTime()
    return report


#: Command output and file content: every attack, on lines of their own, and text around them.
TERMINAL_OUTPUT = (
    "out-start\n" + "\n".join(f"line {i}: {a}" for i, a in enumerate(ATTACKS)) + f"\n{MARKUP}\nout-end\n"
).encode()


def huge_identity(
    *, hostname_chars: int = 1 << 20, interfaces: int = 10_000, addresses: int = 5_000
) -> pb.AgentIdentity:
    """The issue's identity: a 1 MiB hostname, 5k addresses of each family on the first of 10k
    interfaces, ~55,000 fields: within what hostd parses of a report
    (protocol._agentclient.REPORT_FIELDS), over every cap of what it keeps. (The issue's 100k
    interfaces and 10k addresses, 270,000 fields, are over that bound: refused, as
    tests/test_hostd_vm's dense reports are.)"""
    ident = pb.AgentIdentity(agent_version="0.1.0", protocol_version=1, hostname="h" * hostname_chars, pid=1)
    ident.os.pretty_name = "o" * hostname_chars
    ident.interfaces.extend(pb.NetworkInterface(name=f"veth{i}") for i in range(interfaces))
    first = ident.interfaces[0]
    first.ipv4.extend(
        pb.IpAddress(address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", prefix_length=8) for i in range(addresses)
    )
    first.ipv6.extend(pb.IpAddress(address=f"fd00::{i:x}", prefix_length=64, ipv6=True) for i in range(addresses))
    return ident


def huge_telemetry() -> pb.TelemetryReport:
    """A report far over 64 KiB even after the per-field caps: 256 interfaces of 64 addresses, long names."""
    report = pb.TelemetryReport(cpu_percent=1.0, uptime_seconds=1.0)
    report.per_cpu_percent.extend([1.0] * 100_000)
    for i in range(2000):
        nic = report.interfaces.add(name=f"n{i}" + "x" * 300)
        nic.ipv4.extend(pb.IpAddress(address=f"10.0.{i & 255}.{j}") for j in range(70 if i < 300 else 1))
    report.filesystems.extend(pb.FilesystemUsage(mountpoint="/" + "m" * 1000) for _ in range(1000))
    return report


# ------------------------------------------------------------ the guest


class HostileGuest:
    """A fake agent on a chardev-like Unix socket (QEMU listening, hostd connecting).

    Args:
        path: the socket to listen on.
        identity: what hello and info answer.
        telemetry: pushed as an event after the hello (``pushes`` times), and answered to get_telemetry.
        ip_changed: pushed once after the hello when given.
        output: command output (streamed in two chunks, or whole) and file content.
    """

    def __init__(
        self,
        path: str,
        identity: pb.AgentIdentity,
        telemetry: pb.TelemetryReport,
        *,
        pushes: int = 1,
        ip_changed: list[pb.NetworkInterface] | None = None,
        output: bytes = TERMINAL_OUTPUT,
        file_names: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.identity = identity
        self.telemetry = telemetry
        self.pushes = pushes
        self.ip_changed = ip_changed
        self.output = output
        self.file_names = file_names
        #: Set once a host has synced and every event was pushed.
        self.pushed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_chardev(self.path, self._session, task_status=task_status)

    async def _session(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        while data := await stream.receive_some(1 << 16):
            for frame in decoder.feed(data):
                try:
                    msg = parse_frame(frame)
                except BadMessage:
                    continue
                for answer in self._answer(msg):
                    await stream.send_all(encode_message(answer))
                if msg.WhichOneof("payload") == "hello":
                    await self._push(stream)

    async def _push(self, stream: trio.SocketStream) -> None:
        for _ in range(self.pushes):
            await stream.send_all(encode_message(new_message(telemetry=self.telemetry)))
        if self.ip_changed is not None:
            await stream.send_all(encode_message(new_message(ip_changed=pb.IpChangedEvent(interfaces=self.ip_changed))))
        self.pushed.set()

    def _answer(self, msg: pb.AgentMessage) -> list[pb.AgentMessage]:
        mid, kind = msg.message_id, msg.WhichOneof("payload")
        reply: Callable[..., pb.AgentMessage] = lambda **kw: new_message(mid, **kw)  # noqa: E731
        if kind == "hello":
            return [reply(hello_response=pb.HelloResponse(sync_id=msg.hello.sync_id, identity=self.identity))]
        if kind == "ping":
            return [reply(pong=pb.PongResponse(payload=msg.ping.payload, agent_version=self.identity.agent_version))]
        if kind == "info":
            return [reply(info_response=self.identity)]
        if kind == "get_telemetry":
            return [reply(telemetry_response=self.telemetry)]
        if kind == "execute":
            done = pb.ExecuteResponse(exit_reason=pb.EXIT_REASON_EXITED, exit_code=0, pid=7, error=TITLE)
            if not msg.execute.stream:
                done.stdout = self.output
                return [reply(execute_response=done)]
            half = len(self.output) // 2
            chunks = [self.output[:half], self.output[half:]]
            out = [
                reply(execute_output=pb.ExecuteOutput(seq=i + 1, stream=pb.OUTPUT_STREAM_STDOUT, data=c))
                for i, c in enumerate(chunks)
            ]
            done.last_seq = len(chunks)
            return [*out, reply(execute_response=done)]
        if kind == "file_read":
            data = self.output
            chunk = pb.FileReadChunk(
                data=data, eof=True, sha256=hashlib.sha256(data).digest(), file_size=len(data), total_bytes=len(data)
            )
            return [reply(file_read_chunk=chunk)]
        if kind == "list_directory":
            entries = [
                pb.FileStat(name=n, path=f"/x/{n}", type=pb.FILE_TYPE_REGULAR, owner=TITLE, mode=0o644)
                for n in self.file_names
            ]
            return [reply(list_directory_response=pb.ListDirectoryResponse(entries=entries))]
        if kind == "cancel":
            return [reply(cancel_response=pb.CancelResponse(found=False))]
        return [reply(error=errors.Unimplemented(f"{kind}{CLEAR}").to_proto())]


def main() -> None:
    parser = argparse.ArgumentParser(description="a simulated hostile guest on a chardev-like socket")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--kind", choices=("terminal", "huge"), default="terminal")
    args = parser.parse_args()
    if args.kind == "huge":
        guest = HostileGuest(args.socket, huge_identity(), huge_telemetry())
    else:
        guest = HostileGuest(
            args.socket, terminal_identity(), terminal_telemetry(), file_names=(f"a{TITLE}", f"b{RLO}txt.exe")
        )
    trio.run(guest.serve)


if __name__ == "__main__":
    main()
