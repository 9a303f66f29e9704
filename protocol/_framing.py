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

Cost bounded by the bytes received, whatever they are (the peer may be hostile):
    A header that passes its own CRC is only a candidate until its payload CRC
    matches. Rescanning from one byte after a failed candidate means that dense
    valid headers, each claiming ``max_frame_bytes``, would each have the same
    megabytes hashed again: O(candidates x claimed length). So payload hashing
    draws on a credit of :data:`CRC_CREDIT_PER_BYTE` per byte received (capped):
    a candidate whose payload the credit cannot pay for (counting what its
    missing bytes will bring) is not verified but skipped as garbage (counted
    in ``unverified``), and so is one whose hashing exhausts the credit. Legitimate streams need at
    most two hashes per byte (a stale frame's payload over the frames that
    followed it, then those frames), well within the credit. The pending
    candidate's CRC is computed incrementally as its bytes arrive, so each byte
    is hashed once per candidate covering it and a big frame is never hashed in
    one go.

Work in slices:
    ``feed(data, max_work=N)`` stops after about N units of work (a unit is one
    byte hashed; a header examined counts :data:`CANDIDATE_WORK`, a frame
    returned :data:`FRAME_WORK`, a byte searched for a magic 1/16) and sets
    :attr:`FrameDecoder.backlog`; ``feed(b"", max_work=N)`` resumes. A reader
    yields to its scheduler between slices, so that one peer's stream, however
    dense, cannot hold up everything else in the process.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final, final

from ._version import PROTOCOL_VERSION

__all__ = [
    "CANDIDATE_WORK",
    "CRC_CREDIT_PER_BYTE",
    "FLAG_SYNC",
    "FRAME_HEADROOM_BYTES",
    "FRAME_WORK",
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
#: Room an answer keeps in a frame beside its bulk data (command output, a file
#: chunk, a listing's entries): message id, timestamp, offsets, sizes, SHA-256 and
#: field tags take ~200 bytes; the rest is margin. Small enough that a chunk still
#: fits the smallest frame allowed (1 KiB).
FRAME_HEADROOM_BYTES: Final = 512
FLAG_SYNC: Final = 0x01

_HEAD = struct.Struct(">4sBBII")  # magic, version, flags, length, payload crc
_U32 = struct.Struct(">I")
_KNOWN_FLAGS: Final = FLAG_SYNC
# Keep this many bytes of unmatched garbage: a magic may straddle two reads.
_KEEP_TAIL: Final = len(MAGIC) - 1
# Compact the buffer once this many consumed bytes sit in front of it.
_COMPACT_AT: Final = 256 * 1024
#: Payload bytes the decoder may hash per byte received. Legitimate streams use
#: at most 2 (a stale frame's payload, then the frames inside it); the rest is
#: margin for a stale frame inside a stale frame.
CRC_CREDIT_PER_BYTE: Final = 4
#: Credit a new decoder starts with: garbage in front of the first frames of a
#: connection (stale bytes, see above) must not leave it short.
_CRC_CREDIT_INITIAL: Final = 256 * 1024
#: Work units one header examination stands for. A unit is about a nanosecond
#: (zlib hashes ~2 bytes per ns; one unit per byte is on the safe side); parsing
#: and checking a header in Python takes ~3 us.
CANDIDATE_WORK: Final = 3072
#: Work units one returned frame stands for: ~10 us to decode it, and its
#: consumer parses and routes it.
FRAME_WORK: Final = 16384
# A byte searched for a magic costs this fraction of a unit (bytes.find is fast).
_SCAN_WORK_SHIFT: Final = 4
# "No limit" for feed() without max_work.
_UNLIMITED: Final = 1 << 62


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
    #: Payload bytes hashed (each byte once per candidate frame covering it).
    hashed_bytes: int = 0
    #: Valid headers skipped unverified: the hashing credit could not pay for
    #: their payload (dense fake headers; see the module docstring).
    unverified: int = 0
    #: Work units spent decoding (see the module docstring), for a reader's
    #: budget of CPU per connection.
    work: int = 0


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
    ``max_frame_bytes + HEADER_SIZE`` plus one fed chunk; payload hashing by
    :data:`CRC_CREDIT_PER_BYTE` per byte fed (plus a fixed start credit).
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
        # The valid header at _pos whose payload is being hashed, and how far.
        self._head: _Header | None = None
        self._crc = 0
        self._hashed = 0
        # Banked credit is capped: enough for the legitimate worst case around
        # one maximal frame, so quiet garbage cannot save up for a burst.
        self._credit_cap = CRC_CREDIT_PER_BYTE * (max_frame_bytes + HEADER_SIZE) + _CRC_CREDIT_INITIAL
        self._credit = _CRC_CREDIT_INITIAL
        self._work_left = _UNLIMITED
        self._backlog = False

    def reset(self) -> None:
        """Forget buffered bytes (the peer went away)."""
        self.stats.dropped_bytes += len(self._buf) - self._pos
        self._buf.clear()
        self._pos = 0
        self._scanning = False
        self._nested_from = 0
        self._head = None
        self._credit = _CRC_CREDIT_INITIAL
        self._backlog = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (or, with :attr:`backlog`, to be decoded)."""
        return len(self._buf) - self._pos

    @property
    def backlog(self) -> bool:
        """The last :meth:`feed` ran out of ``max_work`` with bytes left to decode."""
        return self._backlog

    def feed(self, data: bytes | bytearray | memoryview, *, max_work: int | None = None) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order.

        With ``max_work``, decoding stops after about that many work units (see
        the module docstring) and :attr:`backlog` tells whether bytes are left
        undecoded: call ``feed(b"", max_work=...)`` again to go on. At least one
        step is made per call, so a loop of calls always finishes.
        """
        if data:
            self._buf += data
            self._credit = min(self._credit + CRC_CREDIT_PER_BYTE * len(data), self._credit_cap)
        self._work_left = start = _UNLIMITED if max_work is None else max(max_work, 1)
        self._backlog = False
        out: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                break
            out.append(frame)
            self._work_left -= FRAME_WORK
        self.stats.work += start - self._work_left
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
            self._work_left -= (keep_from - self._pos) >> _SCAN_WORK_SHIFT
            self.stats.dropped_bytes += keep_from - self._pos
            self._pos = keep_from
            return False
        self._work_left -= (idx - self._pos) >> _SCAN_WORK_SHIFT
        self.stats.dropped_bytes += idx - self._pos
        self._pos = idx
        return True

    def _resync(self, from_: int) -> None:
        if not self._scanning:
            self._scanning = True
            self.stats.resyncs += 1
        self._nested_from = 0
        self._head = None
        self._skip_to_magic(from_)

    def _hash(self, start: int, n: int, crc: int) -> int:
        """CRC ``n`` buffered bytes from ``start`` onto ``crc``, paid from the credit."""
        self._credit -= n
        self._work_left -= n
        self.stats.hashed_bytes += n
        return zlib.crc32(memoryview(self._buf)[start : start + n], crc)

    def _next(self) -> Frame | None:
        buf = self._buf
        while True:
            if self._work_left <= 0:
                self._backlog = len(buf) > self._pos
                return None
            avail = len(buf) - self._pos
            head = self._head
            if head is None:
                if avail < HEADER_SIZE:
                    k = min(avail, len(MAGIC))
                    if k and buf[self._pos : self._pos + k] != MAGIC[:k]:
                        # Not even the start of a magic: garbage. Progress is
                        # guaranteed: _resync always moves past self._pos.
                        self._resync(self._pos + 1)
                        continue
                    return None
                self._work_left -= CANDIDATE_WORK
                head = self._parse_header(self._pos)
                if head is None:
                    self._resync(self._pos + 1)
                    continue
                self._scanning = False
                missing = head.length - min(avail - HEADER_SIZE, head.length)
                if self._credit + CRC_CREDIT_PER_BYTE * missing < head.length:
                    # Not affordable even once the rest arrives: skip it now rather
                    # than spend the credit a real frame behind it will need.
                    self.stats.unverified += 1
                    self._resync(self._pos + 1)
                    continue
                self._head, self._crc, self._hashed = head, 0, 0
            start = self._pos + HEADER_SIZE
            have = min(avail - HEADER_SIZE, head.length)
            n = min(have - self._hashed, self._work_left, self._credit)
            if n > 0:
                self._crc = self._hash(start + self._hashed, n, self._crc)
                self._hashed += n
            if self._hashed < head.length:
                if self._hashed < have and self._credit <= 0:
                    # The credit cannot pay for the rest: not a frame we verify.
                    self.stats.unverified += 1
                    self._resync(self._pos + 1)
                    continue
                if self._hashed < have:
                    continue  # out of work: the loop's top reports the backlog
                return None  # wait for the rest of the payload
            self._head = None
            end = start + head.length
            if self._crc != head.crc:
                # Cut-off frame: a later frame may start inside it.
                self.stats.bad_frames += 1
                self._resync(self._pos + 1)
                continue
            payload = bytes(memoryview(buf)[start:end])
            self._pos = end
            self._nested_from = 0
            self.stats.frames += 1
            return Frame(payload, head.flags)

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
            if header.length > self._credit:
                self.stats.unverified += 1
                search = idx + 1
                continue
            if self._hash(idx + HEADER_SIZE, header.length, 0) != header.crc:
                search = idx + 1
                continue
            self.stats.bad_frames += 1
            self.stats.dropped_bytes += idx - self._pos
            self._pos = idx
            self._head = None
            self._nested_from = 0
            return True
