"""trio plumbing shared by both ends of an agent connection.

:class:`MessageWriter` is the single writer of a byte stream: callers queue
messages, one task writes whole frames in order. A caller that is cancelled
while waiting for queue space has queued nothing, and a caller is never
cancelled in the middle of a frame, because callers never write.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, final

import trio

from ._gen import agent_pb2 as pb
from .framing import MAX_FRAME_BYTES
from .wire import encode_message

__all__ = ["WRITE_QUEUE_FRAMES", "MessageWriter"]

log = logging.getLogger(__name__)

#: Frames queued before senders wait. Small: each may be up to a 1 MiB chunk,
#: and a slow reader should push back on producers (file reads, output streams).
WRITE_QUEUE_FRAMES: Final = 32


@final
class MessageWriter:
    """Serializes messages onto ``send_all`` from one task.

    Args:
        send_all: writes bytes completely (a trio stream's ``send_all``).
        max_frame_bytes: frame limit enforced on encode.
    """

    def __init__(
        self,
        send_all: Callable[[bytes], Awaitable[None]],
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        queue_frames: int = WRITE_QUEUE_FRAMES,
    ) -> None:
        self._send_all = send_all
        self.max_frame_bytes = max_frame_bytes
        self._tx, self._rx = trio.open_memory_channel[bytes](queue_frames)
        self.dropped = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        #: Set once :meth:`run` has written everything queued before :meth:`close`.
        self.drained = trio.Event()

    async def send(self, msg: pb.AgentMessage) -> None:
        """Queue ``msg``; waits while the queue is full.

        Raises:
            FrameTooLarge: the message does not fit in one frame.
            trio.ClosedResourceError / trio.BrokenResourceError: the writer stopped.
        """
        await self._tx.send(encode_message(msg, max_frame_bytes=self.max_frame_bytes))

    def try_send(self, msg: pb.AgentMessage) -> bool:
        """Queue ``msg`` unless the queue is full or closed (for droppable events)."""
        try:
            self._tx.send_nowait(encode_message(msg, max_frame_bytes=self.max_frame_bytes))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        """Stop accepting messages; :meth:`run` returns once the queue is written."""
        self._tx.close()

    async def run(self) -> None:
        """Write queued frames until closed. Errors from ``send_all`` propagate."""
        async with self._rx:
            async for frame in self._rx:
                await self._send_all(frame)
                self.frames_sent += 1
                self.bytes_sent += len(frame)
        self.drained.set()
