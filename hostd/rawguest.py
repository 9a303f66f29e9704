"""A hostile guest behind a fake chardev socket, for tests and ``bench/hostile_bench.py``.

The threat model (DESIGN.md): a guest's root writes anything to its port. This
plays QEMU's part of a VM (a Unix socket server, one host client at a time)
with such a guest behind it. It speaks just enough protocol to get hostd past
the hello (it echoes the host's ``sync_id``, so hostd is ``connected`` and keeps
reading) and answers pings; meanwhile it writes one attack as fast as the host
takes it:

========================  ==========================================================
``garbage``               random bytes
``magic_spam``            the frame magic, over and over (a header check per 4 bytes)
``dense_headers``         valid headers back to back, each claiming 16 MiB
``event_flood``           valid telemetry and ip_changed frames, back to back
``oversized_identity``    an identity and telemetry with huge fields (hello, then
                          ``agent_ready`` and telemetry repeated)
``dense_telemetry``       telemetry frames at the frame limit, each holding as many
                          empty interfaces as fit (8 million: 2 bytes each), back to back
``dense_identity``        the same as ``agent_ready`` announcements (the identity's interfaces)
``dense_ip_changed``      the same as ``ip_changed`` events
``dense_hello``           every hello answered with such an identity (no other frame)
``dense_answers``         every request but ping answered at the frame limit with 8 million
                          fields: listing entries, an identity's or a report's interfaces,
                          an execute's or a file chunk's repeated number
``dense_reports``         telemetry frames of 128 KiB, each 65,500 empty interfaces (just
                          within the bound of fields hostd parses), back to back: parsed,
                          at their parse's cost
``dense_unsolicited``     answers with ids never asked for, each a ``list_directory``
                          answer at the frame limit holding 8 million empty entries
``bad_frames``            small well-framed payloads without a message id, at line rate
``enum``                  ``shutdown_started`` with mode 99 (outside the schema), once
``idle``                  nothing (a well-behaved, silent guest)
========================  ==========================================================

``python -m limiquantix.hostd.rawguest --socket PATH --attack NAME`` runs it
until killed (``--once``: the attack's first frame only, then it answers pings, a well-behaved
guest otherwise); :func:`serve` runs it in a trio task.

Its attacks are on the transport: bytes, frames and rates, against hostd's reader (memory
and CPU stay bounded, other VMs stay fast). ``tests/hostile_guest.py`` is its counterpart
for content: a well-framed fake agent that answers every request a client makes (info,
telemetry, execute, file reads, listings) with guest text aimed at operators' terminals
and at the caps; it serves its socket with :func:`serve_chardev`, this module's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import random
import signal
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final

import trio
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from limiquantix.protocol import (
    MAGIC,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    BadMessage,
    FrameDecoder,
    encode_frame,
    encode_message,
    new_message,
    parse_frame,
    varint_bytes,
)
from limiquantix.protocol._gen import agent_pb2 as pb

__all__ = ["ATTACKS", "DENSE_ANSWERS", "dense_frame", "main", "serve", "serve_chardev"]

#: Bytes per write of an attack: big enough to keep the host's reads full.
CHUNK: Final = 256 * 1024
#: The size of dense_reports' frames: a report a real agent could send (a hundred KiB), holding
#: as many fields as hostd parses of one (protocol._agentclient.REPORT_FIELDS).
DENSE_REPORT_BYTES: Final = 128 * 1024
#: How often the oversized-identity guest re-announces itself.
REANNOUNCE_S: Final = 0.2


def _garbage() -> Iterator[bytes]:
    rng = random.Random(1)
    block = rng.randbytes(4 * CHUNK)
    while True:
        for i in range(0, len(block), CHUNK):
            yield block[i : i + CHUNK]


def _magic_spam() -> Iterator[bytes]:
    return itertools.repeat(MAGIC * (CHUNK // len(MAGIC)))


def _dense_headers() -> Iterator[bytes]:
    head = struct.pack(">4sBBII", MAGIC, PROTOCOL_VERSION, 0, MAX_FRAME_BYTES, 0x12345678)
    head += struct.pack(">I", zlib.crc32(head))
    return itertools.repeat(head * (CHUNK // len(head)))


def _event_flood() -> Iterator[bytes]:
    frames = []
    for i in range(200):
        frames.append(encode_message(new_message(telemetry=pb.TelemetryReport(cpu_percent=i, uptime_seconds=i))))
        iface = pb.NetworkInterface(name="eth0", ipv4=[pb.IpAddress(address=f"10.0.0.{i}", prefix_length=24)])
        frames.append(encode_message(new_message(ip_changed=pb.IpChangedEvent(interfaces=[iface]))))
    block = b"".join(frames)
    return itertools.repeat(block)


def huge_identity() -> pb.AgentIdentity:
    """An identity of 7 MiB: long strings, many interfaces and addresses (~50,000 fields: within
    what hostd parses of a report, protocol._agentclient.REPORT_FIELDS)."""
    big = "A" * (1024 * 1024)
    ifaces = [
        pb.NetworkInterface(
            name=f"eth{i}" + "x" * 1000,
            mac="02:00:00:00:00:00",
            ipv4=[pb.IpAddress(address=f"10.{i % 256}.{j}.1", prefix_length=24) for j in range(30)],
        )
        for i in range(500)
    ]
    return pb.AgentIdentity(
        agent_version=big,
        hostname=big,
        kernel=big,
        os=pb.OsInfo(name=big, pretty_name=big),
        capabilities=["c" * 1000] * 1000,
        interfaces=ifaces,
    )


def _huge_telemetry() -> pb.TelemetryReport:
    users = [pb.LoggedInUser(name="u" * 1000) for _ in range(4000)]
    return pb.TelemetryReport(per_cpu_percent=[1.0] * 100_000, users=users)


def _oversized_identity() -> Iterator[bytes]:
    announce = encode_message(new_message(agent_ready=pb.AgentReadyEvent(identity=huge_identity())))
    telemetry = encode_message(new_message(telemetry=_huge_telemetry()))
    while True:
        yield announce
        yield telemetry
        yield b""  # a pause of REANNOUNCE_S (see _write)


def dense_frame(
    kind: str,
    field: str,
    *,
    message_id: str = "",
    payload: Message | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> bytes:
    """One frame of at most ``max_frame_bytes`` whose ``kind`` payload's ``field`` (a dotted path
    through message fields: ``identity.interfaces``) is sent as many times as fit, each empty or
    zero (2 bytes each on the wire; each a list entry, or a value the parser reads and replaces).

    Repeated occurrences of a message field on the wire are merged by the parser: the payload
    (``payload``, else an empty one) is sent as a small message, then the dense entries as a
    second occurrence of the same field, nested in the path's messages.
    """
    payload_field = pb.AgentMessage.DESCRIPTOR.fields_by_name[kind]
    descriptor = payload_field.message_type
    assert descriptor is not None, kind
    if payload is None:
        payload = getattr(pb, descriptor.name)()
    head = new_message(message_id or None, **{kind: payload}).SerializeToString()
    *outer, last = field.split(".")
    keys = []  # the keys of the payload field and the path's messages, outermost first
    for name in outer:
        fd = descriptor.fields_by_name[name]
        keys.append(varint_bytes(fd.number << 3 | 2))
        descriptor = fd.message_type
        assert descriptor is not None, name
    entry_field = descriptor.fields_by_name[last]
    wire_type = 0 if entry_field.type in _VARINT_TYPES else 2
    entry = varint_bytes(entry_field.number << 3 | wire_type) + b"\x00"
    room = max_frame_bytes - len(head) - 16 * (len(keys) + 1)
    body = entry * (room // len(entry))
    for key in reversed([varint_bytes(payload_field.number << 3 | 2), *keys]):
        body = key + varint_bytes(len(body)) + body
    return encode_frame(head + body, max_frame_bytes=max_frame_bytes)


#: Field types sent as a varint (wire type 0).
_VARINT_TYPES: Final = frozenset(
    {
        FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    }
)  # fmt: skip


#: What ``dense_answers`` answers each request with: the answer's kind and its dense field, in
#: a frame as large as the kind may be.
DENSE_ANSWERS: Final = {
    "list_directory": ("list_directory_response", "entries"),
    "info": ("info_response", "interfaces"),
    "get_telemetry": ("telemetry_response", "interfaces"),
    "execute": ("execute_response", "pid"),
    "file_read": ("file_read_chunk", "offset"),
}


def _dense_telemetry() -> Iterator[bytes]:
    return itertools.repeat(dense_frame("telemetry", "interfaces"))


def _dense_identity() -> Iterator[bytes]:
    return itertools.repeat(dense_frame("agent_ready", "identity.interfaces"))


def _dense_ip_changed() -> Iterator[bytes]:
    return itertools.repeat(dense_frame("ip_changed", "interfaces"))


def _dense_reports() -> Iterator[bytes]:
    return itertools.repeat(dense_frame("telemetry", "interfaces", max_frame_bytes=DENSE_REPORT_BYTES))


def _dense_unsolicited() -> Iterator[bytes]:
    frame = dense_frame("list_directory_response", "entries", message_id="never-asked")
    return itertools.repeat(frame)


def _bad_frames() -> Iterator[bytes]:
    frame = encode_frame(pb.AgentMessage(pong=pb.PongResponse(payload=b"x")).SerializeToString())
    return itertools.repeat(frame * (CHUNK // len(frame)))


def _enum() -> Iterator[bytes]:
    yield encode_message(new_message(shutdown_started=pb.ShutdownStartedEvent(mode=99, message="mode 99")))  # type: ignore[arg-type]


#: Attack name → generator of the bytes written after the hello (b"": pause).
ATTACKS: Final[dict[str, Callable[[], Iterator[bytes]]]] = {
    "garbage": _garbage,
    "magic_spam": _magic_spam,
    "dense_headers": _dense_headers,
    "event_flood": _event_flood,
    "oversized_identity": _oversized_identity,
    "dense_telemetry": _dense_telemetry,
    "dense_identity": _dense_identity,
    "dense_ip_changed": _dense_ip_changed,
    # Its attack is in its answers (_answer_host), not in what it writes unasked.
    "dense_hello": lambda: iter(()),
    "dense_answers": lambda: iter(()),
    "dense_reports": _dense_reports,
    "dense_unsolicited": _dense_unsolicited,
    "bad_frames": _bad_frames,
    "enum": _enum,
    "idle": lambda: iter(()),
}


async def serve(
    socket_path: str,
    attack: str,
    *,
    once: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``socket_path`` and attack each host client in turn, until cancelled;
    ``once``: with the attack's first frame (or dense answer) only.

    Raises:
        KeyError: an unknown attack.
        OSError: the socket cannot be created.
    """
    make = ATTACKS[attack]

    async def attack_host(stream: trio.SocketStream) -> None:
        chunks = make()
        await _serve_host(stream, attack, itertools.islice(chunks, 1) if once else chunks, once=once)

    await serve_chardev(socket_path, attack_host, task_status=task_status)


async def serve_chardev(
    socket_path: str,
    handle_host: Callable[[trio.SocketStream], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``socket_path`` as QEMU serves a VM's chardev: one host client at a time,
    each handed to ``handle_host`` (closed after it; a host that hangs up ends it quietly),
    the next one accepted after it; the socket removed when cancelled.

    Raises:
        OSError: the socket cannot be created.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await listener.bind(socket_path)
        listener.listen(1)
        task_status.started()
        while True:
            sock, _ = await listener.accept()
            stream = trio.SocketStream(sock)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async with stream:
                    await handle_host(stream)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)


async def _serve_host(stream: trio.SocketStream, attack: str, chunks: Iterator[bytes], *, once: bool) -> None:
    answers_tx, answers_rx = trio.open_memory_channel[bytes](64)
    hello = trio.Event()
    identity = huge_identity() if attack == "oversized_identity" else pb.AgentIdentity(agent_version="rawguest")
    # dense_hello and dense_answers attack in their answers (once: in the first only).
    dense = itertools.islice(itertools.repeat(True), 1 if once else None) if attack in _DENSE_ANSWERING else iter(())
    async with trio.open_nursery() as nursery:

        async def answer() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await _answer_host(stream, answers_tx, hello, identity, attack, dense)
            # The host hung up (or reset the link): nothing more to write to it.
            nursery.cancel_scope.cancel()

        nursery.start_soon(answer)
        # A host that goes away mid-write (hostd disables the VM) ends this host's turn quietly.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await hello.wait()
            await _write(stream, answers_rx, chunks)
        nursery.cancel_scope.cancel()


async def _write(stream: trio.SocketStream, answers: trio.MemoryReceiveChannel[bytes], chunks: Iterator[bytes]) -> None:
    """Answers first whenever there are some, the attack in between; then answers only."""
    for chunk in chunks:
        while True:
            try:
                await stream.send_all(answers.receive_nowait())
            except trio.WouldBlock:
                break
        if chunk:
            await stream.send_all(chunk)
        else:
            with trio.move_on_after(REANNOUNCE_S):
                async for answer in answers:
                    await stream.send_all(answer)
    async for answer in answers:
        await stream.send_all(answer)


_DENSE_ANSWERING: Final = frozenset({"dense_hello", "dense_answers"})


async def _answer_host(
    stream: trio.SocketStream,
    answers: trio.MemorySendChannel[bytes],
    hello: trio.Event,
    identity: pb.AgentIdentity,
    attack: str,
    dense: Iterator[bool],
) -> None:
    decoder = FrameDecoder()
    while data := await stream.receive_some(65536):
        for frame in decoder.feed(data):
            try:
                msg = parse_frame(frame)
            except BadMessage:
                continue
            kind = msg.WhichOneof("payload")
            if kind == "hello":
                answer = pb.HelloResponse(sync_id=msg.hello.sync_id, identity=identity)
                if attack == "dense_hello" and next(dense, False):
                    dense_hello = dense_frame(
                        "hello_response", "identity.interfaces", message_id=msg.message_id, payload=answer
                    )
                    await answers.send(dense_hello)
                else:
                    await answers.send(encode_message(new_message(msg.message_id, hello_response=answer)))
                hello.set()
            elif attack == "dense_answers" and kind in DENSE_ANSWERS and next(dense, False):
                answer_kind, field = DENSE_ANSWERS[kind]
                # As large as its kind may be (a listing page: 4 MiB), so that its fields refuse it.
                size = MAX_PAYLOAD_BYTES.get(answer_kind, MAX_FRAME_BYTES)
                await answers.send(dense_frame(answer_kind, field, message_id=msg.message_id, max_frame_bytes=size))
            elif kind == "ping":
                await answers.send(
                    encode_message(new_message(msg.message_id, pong=pb.PongResponse(payload=msg.ping.payload)))
                )
    await answers.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rawguest", description="A hostile guest behind a fake chardev socket.")
    p.add_argument("--socket", required=True)
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    p.add_argument("--once", action="store_true", help="the attack's first frame (or dense answer) only")
    args = p.parse_args(argv)
    trio.run(_serve_until_signalled, args.socket, args.attack, args.once)
    return 0


async def _serve_until_signalled(socket_path: str, attack: str, once: bool) -> None:
    # SIGTERM or SIGINT: stop, and remove the socket (the VM "leaves").
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve, socket_path, attack, once=once))
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    raise SystemExit(main())
