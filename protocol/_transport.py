"""trio plumbing shared by both ends of an agent connection.

:class:`MessageWriter` is the single writer of a byte stream: callers queue
messages, one task writes whole frames in order. A caller that is cancelled
while waiting for queue space has queued nothing, and a caller is never
cancelled in the middle of a frame, because callers never write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Final, final, overload

import trio

from ._framing import MAX_FRAME_BYTES, Frame, FrameDecoder
from ._gen import agent_pb2 as pb
from ._wire import encode_message

__all__ = [
    "DECODE_SLICE_WORK",
    "STALL_RECOVERY_S",
    "WRITE_QUEUE_BYTES",
    "WRITE_QUEUE_FRAMES",
    "MessageWriter",
    "ReadBuffer",
    "direct_reader",
    "direct_writer",
    "receive_frames",
]

log = logging.getLogger(__name__)

#: A partial frame with no new bytes for this long may be a departed peer's
#: leftover: the decoder then looks for a SYNC frame after it (framing.py).
#: Short enough that a reconnecting peer is answered well within its hello
#: resend interval; long enough never to fire inside a flowing frame.
STALL_RECOVERY_S: Final = 0.5
#: First size of a connection's read buffer; it doubles, up to the reader's
#: maximum, each time a read fills it.
READ_BUFFER_INITIAL: Final = 8 * 1024
#: Frames queued before senders wait. Small: each may be up to a 1 MiB chunk,
#: and a slow reader should push back on producers (file reads, output streams).
WRITE_QUEUE_FRAMES: Final = 32
#: Bytes queued before senders wait (a frame larger than this still goes, alone).
#: Without it 32 frames of up to 16 MiB each could wait for a peer that does not
#: read: half a GiB per connection. 8 MiB keeps two 4 MiB file chunks in flight.
WRITE_QUEUE_BYTES: Final = 8 * 1024 * 1024
#: Decoder work (framing.py's units, ~bytes hashed) between two yields of a
#: reader: well under a millisecond, whatever the peer sends (magic spam costs a
#: header check per 4 bytes, a frame flood a parse per frame downstream).
DECODE_SLICE_WORK: Final = 256 * 1024


@final
class MessageWriter:
    """Serializes messages onto a byte stream from one task.

    When nothing is queued, :meth:`send` first offers the frame to
    ``try_write`` (a non-blocking write) so a small answer leaves without a task
    switch; whatever the stream does not take at once is queued, so frames
    still never interleave and a cancelled caller never leaves half a frame.

    Args:
        send_all: writes bytes completely (a trio stream's ``send_all``).
        try_write: optional non-blocking write returning the bytes taken
            (raising ``BlockingIOError`` or returning 0 when none).
        max_frame_bytes: frame limit enforced on encode.
        queue_frames: frames queued before senders wait.
        queue_bytes: bytes queued before senders wait (one frame may exceed it
            when the queue holds nothing else).
    """

    def __init__(
        self,
        send_all: Callable[[bytes], Awaitable[None]],
        *,
        try_write: Callable[[bytes], int] | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        queue_frames: int = WRITE_QUEUE_FRAMES,
        queue_bytes: int = WRITE_QUEUE_BYTES,
    ) -> None:
        self._send_all = send_all
        self._try_write = try_write
        self.max_frame_bytes = max_frame_bytes
        self._tx, self._rx = trio.open_memory_channel[bytes](queue_frames)
        # Frames handed to the queue and not yet fully written. Counted here,
        # not read from the channel: a frame passed straight to a waiting
        # writer task leaves the channel's buffer before it is written.
        self._unwritten = 0
        self.queue_bytes = queue_bytes
        #: Bytes of the frames counted in _unwritten.
        self.queued_bytes = 0
        #: Set when queued_bytes falls below queue_bytes (or the writer stops).
        self._room = trio.Event()
        self._stopped = False
        self._closed = False
        self.dropped = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        #: Set once :meth:`run` has written everything queued before :meth:`close`.
        self.drained = trio.Event()

    def _write_now(self, frame: bytes) -> bytes | None:
        """Write what the stream takes without waiting; return the rest, or None."""
        if self._try_write is None or self._unwritten or self._closed:
            return frame
        try:
            n = self._try_write(frame)
        except OSError:
            return frame  # the writer task meets the error and reports it
        self.bytes_sent += n
        if n == len(frame):
            self.frames_sent += 1
            return None
        return frame[n:]

    def _enqueue(self, frame: bytes) -> None:
        self._tx.send_nowait(frame)
        self._unwritten += 1
        self.queued_bytes += len(frame)

    def _full(self) -> bool:
        return self.queued_bytes >= self.queue_bytes and not self._stopped

    async def _wait_for_room(self) -> None:
        while self._full():
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()

    async def send(self, msg: pb.AgentMessage) -> None:
        """Send ``msg``; waits while the queue is full.

        Raises:
            FrameTooLarge: the message does not fit in one frame.
            trio.ClosedResourceError / trio.BrokenResourceError: the writer stopped.
        """
        frame = encode_message(msg, max_frame_bytes=self.max_frame_bytes)
        rest = self._write_now(frame)
        if rest is None:
            await trio.lowlevel.checkpoint()
            return
        if rest is not frame:
            # Part of the frame is on the wire: the rest must follow, now.
            # The queue is empty (checked in _write_now), so this cannot block.
            self._enqueue(rest)
            await trio.lowlevel.checkpoint()
            return
        # While bytes are queued no direct write happens (_unwritten > 0).
        await self._wait_for_room()
        # Count it before waiting, so no direct write overtakes it meanwhile.
        self._unwritten += 1
        self.queued_bytes += len(frame)
        try:
            await self._tx.send(frame)
        except BaseException:
            self._unwritten -= 1  # not sent (trio guarantees it on cancel)
            self.queued_bytes -= len(frame)
            raise

    def try_send(self, msg: pb.AgentMessage) -> bool:
        """Send ``msg`` unless the queue is full or closed (for droppable events)."""
        frame = encode_message(msg, max_frame_bytes=self.max_frame_bytes)
        try:
            rest = self._write_now(frame)
            if rest is frame and self._full():
                raise trio.WouldBlock
            if rest is not None:
                self._enqueue(rest)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        """Stop accepting messages; :meth:`run` returns once the queue is written."""
        self._closed = True
        self._tx.close()

    async def run(self) -> None:
        """Write queued frames until closed. Errors from ``send_all`` propagate."""
        try:
            async with self._rx:
                async for frame in self._rx:
                    await self._send_all(frame)
                    self._unwritten -= 1
                    self.queued_bytes -= len(frame)
                    self.frames_sent += 1
                    self.bytes_sent += len(frame)
                    if not self._full():
                        self._room.set()
        finally:
            # Senders waiting for room now meet the closed queue instead.
            self._stopped = True
            self._room.set()
        self.drained.set()


@overload
def direct_writer(stream: trio.SocketStream | trio.lowlevel.FdStream) -> Callable[[bytes], int]: ...
@overload
def direct_writer(stream: trio.abc.Stream) -> Callable[[bytes], int] | None: ...


def direct_writer(stream: trio.abc.Stream) -> Callable[[bytes], int] | None:
    """A non-blocking write into ``stream``'s fd, for :class:`MessageWriter` (None: it has none).

    Looks the fd up on every call: once the stream is closed it is -1 and the
    write fails with EBADF instead of hitting a reused descriptor.
    """
    if isinstance(stream, trio.SocketStream):
        sock = stream.socket
        return lambda data: os.write(sock.fileno(), data)
    if isinstance(stream, trio.lowlevel.FdStream):
        return lambda data: os.write(stream.fileno(), data)
    return None


async def receive_frames(
    receive_some: Callable[[], Awaitable[bytes | bytearray]], decoder: FrameDecoder
) -> list[Frame] | None:
    """The next frames from a stream (None at its end); possibly none yet.

    Decodes at most :data:`DECODE_SLICE_WORK` per call, and yields to the
    scheduler before going on with what is left: a peer's dense or hostile
    stream then delays the rest of the process by one slice at a time. While
    a partial frame is buffered, waits at most :data:`STALL_RECOVERY_S` for
    more bytes before asking the decoder to recover from a stale frame.
    """
    if decoder.backlog:
        await trio.lowlevel.checkpoint()
        return decoder.feed(b"", max_work=DECODE_SLICE_WORK)
    while True:
        if not decoder.buffered:
            data = await receive_some()
            return decoder.feed(data, max_work=DECODE_SLICE_WORK) if data else None
        with trio.move_on_after(STALL_RECOVERY_S):
            data = await receive_some()
            return decoder.feed(data, max_work=DECODE_SLICE_WORK) if data else None
        frames = decoder.recover_stalled()
        if frames:
            return frames


def direct_reader(stream: trio.abc.Stream, max_bytes: int) -> Callable[[], Awaitable[bytes | bytearray]]:
    """A ``receive_some`` for ``stream`` that waits for readiness first.

    trio's socket ``recv`` tries the read first and waits only on EAGAIN: for
    request/answer traffic that is a wasted syscall per message. This one
    waits first unless the previous read filled its buffer (more is likely
    queued). Streams other than sockets and fds get their own ``receive_some``.

    The returned coroutine function raises ``trio.BrokenResourceError`` on a
    read error and returns ``b""`` at end of stream, like ``receive_some`` (whose
    bytes may be a ``bytearray``, hence the return type).
    """
    if isinstance(stream, trio.SocketStream):
        sock = stream.socket

        def fileno() -> int:
            return sock.fileno()

    elif isinstance(stream, trio.lowlevel.FdStream):
        fileno = stream.fileno
    else:
        return lambda: stream.receive_some(max_bytes)
    more = False
    read = ReadBuffer(max_bytes)

    async def receive_some() -> bytes:
        nonlocal more
        if more:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.wait_readable(fileno())
        while True:
            try:
                data = read(fileno())
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fileno())
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            more = len(data) == max_bytes
            return data

    return receive_some


@final
class ReadBuffer:
    """``os.read`` without a fresh ``max_bytes`` allocation per call.

    ``os.read(fd, 1 MiB)`` allocates 1 MiB and shrinks it to what arrived; for a
    60-byte answer glibc then grows and trims its heap around it, which costs
    more than the whole rest of a round trip's read path. Reading into one
    reused buffer and copying out what arrived does not.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # Start small and grow while reads fill the buffer: hostd holds one per
        # VM, and most connections never carry more than small answers.
        self._buf = bytearray(min(max_bytes, READ_BUFFER_INITIAL))
        self._view = memoryview(self._buf)

    def __call__(self, fd: int) -> bytes:
        """Read once from ``fd`` (non-blocking fds raise ``BlockingIOError``)."""
        n = os.readv(fd, (self._buf,))
        data = bytes(self._view[:n])
        if n == len(self._buf) < self.max_bytes:
            self._view.release()
            self._buf = bytearray(min(self.max_bytes, 2 * n))
            self._view = memoryview(self._buf)
        return data
