"""``limiquantix-agent-cli``: talk to one agent directly, like ``virsh qemu-agent-command``.

It connects to a Unix socket: an agent started with ``--transport unix-listen``,
or the host side of a VM's port (the QEMU chardev socket, e.g. libvirt's
``/var/lib/libvirt/qemu/channel/target/domain-*/org.limiquantix.agent.0``; stop
hostd first, since QEMU accepts one client per chardev).

    limiquantix-agent-cli -s SOCK info
    limiquantix-agent-cli -s SOCK ping -c 10
    limiquantix-agent-cli -s SOCK exec -- uname -a
    limiquantix-agent-cli -s SOCK sh 'echo hi; exit 3'
    limiquantix-agent-cli -s SOCK cat /etc/os-release
    limiquantix-agent-cli -s SOCK put ./local.txt /tmp/remote.txt
    limiquantix-agent-cli -s SOCK telemetry
    limiquantix-agent-cli -s SOCK watch

Guest text is data: on a terminal, a command's output and a file's content are
shown with their control characters escaped (``\\x1b``, see
:mod:`limiquantix.protocol._safetext`), so a guest cannot drive the terminal;
piped or redirected, they are written byte for byte (``cat`` a binary file).
Names and messages are always escaped; JSON output escapes by construction.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO

import trio
from google.protobuf.json_format import MessageToJson

from limiquantix.protocol import AgentClient, StreamEscaper, __version__, enum_name, errors, safe_text
from limiquantix.protocol._gen import agent_pb2 as pb

__all__ = ["main"]

#: Bytes per write request when uploading: big enough to amortize a round
#: trip, small enough to stay far below the frame limit.
UPLOAD_CHUNK: Final = 1024 * 1024


def _json(msg: object) -> str:
    # ensure_ascii: controls, C1 and bidi characters come out as \uXXXX, never raw.
    return MessageToJson(msg, indent=2, preserving_proto_field_name=False, ensure_ascii=True)  # type: ignore[arg-type]


class _GuestOutput:
    """A guest byte stream to one of our streams: raw when piped, escaped on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._escaper = StreamEscaper() if out.isatty() else None

    def write(self, data: bytes, *, final: bool = False) -> None:
        if self._escaper is None:
            self._out.buffer.write(data)
        else:
            self._out.write(self._escaper.feed(data, final=final))
        self._out.flush()


async def _exec(client: AgentClient, req: pb.ExecuteRequest) -> int:
    req.stream = True
    result: pb.ExecuteResponse | None = None
    stdout, stderr = _GuestOutput(sys.stdout), _GuestOutput(sys.stderr)
    async for msg in client.stream(execute=req):
        if msg.HasField("execute_output"):
            out = stdout if msg.execute_output.stream == pb.OUTPUT_STREAM_STDOUT else stderr
            out.write(msg.execute_output.data)
        else:
            result = msg.execute_response
    stdout.write(b"", final=True)
    stderr.write(b"", final=True)
    assert result is not None
    reason = enum_name(pb.ExitReason, result.exit_reason)
    if result.exit_reason == pb.EXIT_REASON_EXITED and result.HasField("exit_code"):
        return result.exit_code
    detail = safe_text(result.error) or (f"signal {result.signal}" if result.signal else "")
    print(f"limiquantix-agent-cli: command {reason} {detail}".rstrip(), file=sys.stderr)
    return 128 + result.signal if result.signal else 125


async def _cat(client: AgentClient, path: str) -> int:
    h = hashlib.sha256()
    last = None
    out = _GuestOutput(sys.stdout)
    async for msg in client.stream(file_read=pb.FileReadRequest(path=path)):
        chunk = msg.file_read_chunk
        h.update(chunk.data)
        out.write(chunk.data)
        last = chunk
    out.write(b"", final=True)
    assert last is not None
    if last.sha256 != h.digest():
        print("limiquantix-agent-cli: SHA-256 mismatch", file=sys.stderr)
        return 1
    print(f"sha256 {h.hexdigest()}  {last.total_bytes} bytes", file=sys.stderr)
    return 0


async def _put(client: AgentClient, local: Path, remote: str, mode: int | None) -> int:
    h = hashlib.sha256()
    write_id = ""
    offset = 0
    with local.open("rb") as fh:
        chunk = fh.read(UPLOAD_CHUNK)
        while True:
            nxt = fh.read(UPLOAD_CHUNK)
            h.update(chunk)
            req = pb.FileWriteRequest(path=remote, write_id=write_id, data=chunk, last=not nxt, offset=offset)
            offset += len(chunk)
            if not write_id and mode is not None:
                req.file_mode = mode
            if not nxt:
                req.expected_sha256 = h.digest()
            resp = (await client.request(file_write=req)).file_write_response
            write_id = resp.write_id
            if not nxt:
                break
            chunk = nxt
    print(f"sha256 {resp.sha256.hex()}  {resp.size} bytes -> {remote}", file=sys.stderr)
    return 0


async def _ping(client: AgentClient, count: int) -> int:
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        await client.ping()
        rtts.append((time.perf_counter() - t0) * 1e6)
    print(f"{count} pings: median {statistics.median(rtts):.0f} µs, min {min(rtts):.0f} µs, max {max(rtts):.0f} µs")
    return 0


async def _run(args: argparse.Namespace) -> int:
    # The deadline covers connecting and the hello only; the command itself
    # may take as long as it takes (exec has its own timeout in the agent).
    with trio.CancelScope(deadline=trio.current_time() + args.connect_timeout) as scope:
        async with AgentClient.connect_unix(args.socket) as client:
            scope.deadline = math.inf
            return await _command(client, args)
    raise trio.TooSlowError


async def _command(client: AgentClient, args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "info":
        print(_json(client.identity))
    elif cmd == "ping":
        return await _ping(client, args.count)
    elif cmd == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return await _exec(client, pb.ExecuteRequest(argv=argv, timeout_seconds=args.timeout))
    elif cmd == "sh":
        return await _exec(client, pb.ExecuteRequest(command=args.script, timeout_seconds=args.timeout))
    elif cmd == "cat":
        return await _cat(client, args.path)
    elif cmd == "put":
        return await _put(client, Path(args.local), args.remote, int(args.mode, 8) if args.mode else None)
    elif cmd == "stat":
        print(_json((await client.request(file_stat=pb.FileStatRequest(path=args.path))).file_stat_response))
    elif cmd == "ls":
        await _ls(client, args.path)
    elif cmd == "telemetry":
        print(_json((await client.request(get_telemetry=pb.TelemetryRequest())).telemetry_response))
    elif cmd == "shutdown":
        req = pb.ShutdownRequest(mode=_SHUTDOWN_MODES[args.mode], delay_seconds=args.delay, message=args.message)
        print(_json((await client.request(shutdown=req)).shutdown_response))
    elif cmd == "watch":
        async for event in client.events:
            print(_json(event), flush=True)
    return 0


_SHUTDOWN_MODES: Final = {
    "poweroff": pb.SHUTDOWN_MODE_POWEROFF,
    "reboot": pb.SHUTDOWN_MODE_REBOOT,
    "halt": pb.SHUTDOWN_MODE_HALT,
}


async def _ls(client: AgentClient, path: str) -> None:
    token = ""
    while True:
        req = pb.ListDirectoryRequest(path=path, page_token=token)
        page = (await client.request(list_directory=req)).list_directory_response
        for e in page.entries:
            kind = enum_name(pb.FileType, e.type)
            print(f"{e.mode:04o} {safe_text(e.owner) or e.uid:>8} {e.size:>12} {kind:<9} {safe_text(e.name)}")
        token = page.next_page_token
        if not token:
            return


def build_parser() -> argparse.ArgumentParser:
    # The docstring's first line without reST's ``literal`` quotes (shown raw in a terminal).
    p = argparse.ArgumentParser(prog="limiquantix-agent-cli", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--version", action="version", version=f"limiquantix-agent-cli {__version__}")
    p.add_argument("-s", "--socket", required=True, help="Unix socket of the agent or of the VM's chardev")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the agent's hello")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="the agent's identity (OS, kernel, addresses, capabilities)")
    sp = sub.add_parser("ping", help="round trips")
    sp.add_argument("-c", "--count", type=int, default=5)
    sp = sub.add_parser("exec", help="run a program (argv after --); exit status is the command's")
    sp.add_argument("--timeout", type=int, default=0, help="seconds (0: the agent's default)")
    sp.add_argument("argv", nargs=argparse.REMAINDER)
    sp = sub.add_parser("sh", help="run a shell script")
    sp.add_argument("--timeout", type=int, default=0)
    sp.add_argument("script")
    sp = sub.add_parser("cat", help="print a guest file")
    sp.add_argument("path")
    sp = sub.add_parser("put", help="upload a local file to a guest path (atomic)")
    sp.add_argument("local")
    sp.add_argument("remote")
    sp.add_argument("--mode", help="octal permission bits, e.g. 0644")
    sp = sub.add_parser("stat", help="stat a guest path")
    sp.add_argument("path")
    sp = sub.add_parser("ls", help="list a guest directory")
    sp.add_argument("path")
    sub.add_parser("telemetry", help="one telemetry report")
    sp = sub.add_parser("shutdown", help="power the guest off, reboot or halt it")
    sp.add_argument("mode", choices=["poweroff", "reboot", "halt"])
    sp.add_argument("--delay", type=int, default=0)
    sp.add_argument("--message", default="")
    sub.add_parser("watch", help="print events (telemetry, ip changes) as they come")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return trio.run(_run, args)
    except errors.AgentError as exc:
        print(f"limiquantix-agent-cli: {exc.connect_code}: {safe_text(exc.message)}", file=sys.stderr)
        return 1
    except trio.TooSlowError:
        print(f"limiquantix-agent-cli: no answer from {args.socket}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (`... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
