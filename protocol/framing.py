"""Frame codec shared by the agent and hostd. Pure: no I/O, no trio.

A frame on the wire::

    offset size  field
    0      4     MAGIC            b"\\xf5LQX" (0xF5 never occurs in UTF-8 text)
    4      1     version          PROTOCOL_VERSION
    5      1     flags            bit 0: SYNC (hello / hello echo / announce)
    6      4     length           payload bytes, big-endian, 1..max_frame_bytes
    10     4     payload CRC-32   big-endian, zlib.crc32 of the payload
    14     4     header CRC-32    big-endian, zlib.crc32 of bytes 0..13
    18     len   payload          one serialized AgentMessage

Why two checksums: virtio-serial is a byte stream that outlives the host's
connection, so a reader can start in the middle of a frame or find stale
half-frames (see DESIGN.md). The header CRC rejects garbage that happens to
contain the magic before the decoder trusts its length, so a bogus length never
makes the decoder wait for bytes that will not come. The payload CRC catches a
frame whose tail was cut off and replaced by the start of a later frame; the
decoder then resumes scanning one byte after the bad frame's magic, so the later
frame is recovered.

A stale *valid* header whose payload will never be completed (the sender died
mid-frame) swallows the frames after it until its claimed length is filled; once
it is, its CRC fails and the decoder rescans from inside it, so a busy stream
recovers by itself. A quiet one would not: the new peer sends its hello and waits
for the answer. Every new connection therefore starts with a SYNC frame (hello,
hello echo, agent announce), and a reader whose stream has stalled on a partial
frame calls :meth:`FrameDecoder.recover_stalled`, which abandons the partial
frame if a complete, valid SYNC frame follows it. (Looking for one on every
read instead would scan every byte of bulk transfers a second time.)

The decoder never allocates a claimed length: it only buffers bytes that
arrived, and a length above ``max_frame_bytes`` is rejected from the header alone.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final, final

from ._version import PROTOCOL_VERSION

__all__ = [
    "FLAG_SYNC",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_FRAME_BYTES",
    "DecoderStats",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "encode_frame",
]

MAGIC: Final = b"\xf5LQX"
HEADER_SIZE: Final = 18
#: Largest payload accepted by default. File chunks are 1 MiB, so this leaves
#: ample room; it bounds the memory one peer can make the other buffer.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
FLAG_SYNC: Final = 0x01

_HEAD = struct.Struct(">4sBBII")  # magic, version, flags, length, payload crc
_U32 = struct.Struct(">I")
_KNOWN_FLAGS: Final = FLAG_SYNC
# Keep this many bytes of unmatched garbage: a magic may straddle two reads.
_KEEP_TAIL: Final = len(MAGIC) - 1
# Compact the buffer once this many consumed bytes sit in front of it.
_COMPACT_AT: Final = 256 * 1024


class FrameTooLarge(ValueError):
    """A payload is larger than the frame limit (or empty)."""


def encode_frame(payload: bytes, *, flags: int = 0, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Return ``payload`` wrapped in one frame.

    Raises:
        FrameTooLarge: the payload is empty or longer than ``max_frame_bytes``.
    """
    n = len(payload)
    if n == 0 or n > max_frame_bytes:
        raise FrameTooLarge(f"frame payload of {n} bytes (allowed 1..{max_frame_bytes})")
    head = _HEAD.pack(MAGIC, PROTOCOL_VERSION, flags, n, zlib.crc32(payload))
    return b"".join((head, _U32.pack(zlib.crc32(head)), payload))


@final
@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame."""

    payload: bytes
    flags: int = 0

    @property
    def sync(self) -> bool:
        return bool(self.flags & FLAG_SYNC)


@final
@dataclass(slots=True)
class DecoderStats:
    """Counters a decoder keeps; exported by hostd as metrics."""

    frames: int = 0
    #: Frames whose header was valid but whose payload failed its CRC, or that
    #: were abandoned for a SYNC frame found inside them.
    bad_frames: int = 0
    #: Bytes skipped while looking for the next valid header.
    dropped_bytes: int = 0
    #: Times the decoder had to search for a magic (garbage seen).
    resyncs: int = 0


@final
@dataclass(slots=True)
class _Header:
    flags: int
    length: int
    crc: int


@final
class FrameDecoder:
    """Incremental decoder: feed bytes, get whole frames.

    Never raises on bad input; damage is counted in :attr:`stats` and the decoder
    scans forward to the next valid header. Memory held is bounded by
    ``max_frame_bytes + HEADER_SIZE`` plus one fed chunk.
    """

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if not 1 <= max_frame_bytes <= 0xFFFFFFFF:
            raise ValueError("max_frame_bytes must be within 1..2**32-1")
        self.max_frame_bytes = max_frame_bytes
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed data in _buf
        self._scanning = False  # inside garbage, looking for a magic
        self._nested_from = 0  # where the SYNC search in a pending payload resumes

    def reset(self) -> None:
        """Forget buffered bytes (the peer went away)."""
        self.stats.dropped_bytes += len(self._buf) - self._pos
        self._buf.clear()
        self._pos = 0
        self._scanning = False
        self._nested_from = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order."""
        if data:
            self._buf += data
        out: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                break
            out.append(frame)
        if self._pos >= _COMPACT_AT or self._pos == len(self._buf):
            del self._buf[: self._pos]
            self._nested_from = max(0, self._nested_from - self._pos)
            self._pos = 0
        return out

    # -- internals ---------------------------------------------------------

    def _parse_header(self, at: int) -> _Header | None:
        """Return the header at ``at`` if it is entirely valid, else None."""
        buf = self._buf
        magic, version, flags, length, crc = _HEAD.unpack_from(buf, at)
        if magic != MAGIC:
            return None
        (head_crc,) = _U32.unpack_from(buf, at + 14)
        if head_crc != zlib.crc32(memoryview(buf)[at : at + 14]):
            return None
        if version != PROTOCOL_VERSION or flags & ~_KNOWN_FLAGS:
            return None
        if length == 0 or length > self.max_frame_bytes:
            return None
        return _Header(flags, length, crc)

    def _skip_to_magic(self, start: int) -> bool:
        """Drop bytes before the next magic at or after ``start``.

        Returns True when a magic is now at the front, False when the buffer
        holds no magic (all but a possible partial magic is dropped).
        """
        idx = self._buf.find(MAGIC, start)
        if idx < 0:
            keep_from = max(start, len(self._buf) - _KEEP_TAIL)
            self.stats.dropped_bytes += keep_from - self._pos
            self._pos = keep_from
            return False
        self.stats.dropped_bytes += idx - self._pos
        self._pos = idx
        return True

    def _resync(self, from_: int) -> None:
        if not self._scanning:
            self._scanning = True
            self.stats.resyncs += 1
        self._nested_from = 0
        self._skip_to_magic(from_)

    def _next(self) -> Frame | None:
        while True:
            avail = len(self._buf) - self._pos
            if avail < HEADER_SIZE:
                k = min(avail, len(MAGIC))
                if k and self._buf[self._pos : self._pos + k] != MAGIC[:k]:
                    # Not even the start of a magic: garbage. Progress is
                    # guaranteed: _resync always moves past self._pos.
                    self._resync(self._pos + 1)
                    continue
                return None
            header = self._parse_header(self._pos)
            if header is None:
                self._resync(self._pos + 1)
                continue
            self._scanning = False
            end = self._pos + HEADER_SIZE + header.length
            if len(self._buf) < end:
                return None
            payload = bytes(memoryview(self._buf)[self._pos + HEADER_SIZE : end])
            if zlib.crc32(payload) != header.crc:
                # Cut-off frame: a later frame may start inside it.
                self.stats.bad_frames += 1
                self._resync(self._pos + 1)
                continue
            self._pos = end
            self._nested_from = 0
            self.stats.frames += 1
            return Frame(payload, header.flags)

    def recover_stalled(self) -> list[Frame]:
        """For a reader whose stream went quiet with a partial frame buffered.

        If a complete, valid SYNC frame follows the partial frame's header, the
        partial frame is abandoned (counted in ``bad_frames``) and the frames
        from the SYNC frame on are returned. Otherwise nothing changes.
        """
        if self.buffered < HEADER_SIZE or not self._abandon_for_nested_sync():
            return []
        return self.feed(b"")

    def _abandon_for_nested_sync(self) -> bool:
        """Abandon the pending frame if a complete valid SYNC frame follows it."""
        buf = self._buf
        search = max(self._nested_from, self._pos + 1)
        while True:
            idx = buf.find(MAGIC, search)
            if idx < 0 or len(buf) - idx < HEADER_SIZE:
                # Resume where a magic could still begin.
                self._nested_from = max(self._pos + 1, len(buf) - _KEEP_TAIL) if idx < 0 else idx
                return False
            header = self._parse_header(idx)
            if header is None or not header.flags & FLAG_SYNC:
                search = idx + 1
                continue
            end = idx + HEADER_SIZE + header.length
            if len(buf) < end:
                self._nested_from = idx  # decide when the rest arrives
                return False
            if zlib.crc32(memoryview(buf)[idx + HEADER_SIZE : end]) != header.crc:
                search = idx + 1
                continue
            self.stats.bad_frames += 1
            self.stats.dropped_bytes += idx - self._pos
            self._pos = idx
            self._nested_from = 0
            return True
