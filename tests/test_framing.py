"""The frame codec: round trips, damage recovery, bounds. Property tests with hypothesis."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from conftest import example_tiers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from limiquantix.protocol import PROTOCOL_VERSION
from limiquantix.protocol._framing import (
    CANDIDATE_WORK,
    CRC_CREDIT_PER_BYTE,
    FLAG_SYNC,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_BYTES,
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
)

payloads = st.binary(min_size=1, max_size=300)
# Garbage that contains no magic: a magic inside random garbage followed by a
# valid header CRC is a 2**-64 event, but hypothesis likes to build the magic
# from the examples it has seen, and then the decoder rightly treats it as real.
garbage = st.binary(min_size=1, max_size=200).filter(lambda g: MAGIC not in g)


def decode_all(chunks: list[bytes], **kw: int) -> tuple[list[bytes], FrameDecoder]:
    dec = FrameDecoder(**kw)
    out: list[bytes] = []
    for c in chunks:
        out.extend(f.payload for f in dec.feed(c))
    return out, dec


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in points:
        pieces.append(data[prev:p])
        prev = p
    pieces.append(data[prev:])
    return pieces


def raw_header(length: int, *, crc: int = 0, version: int = PROTOCOL_VERSION, flags: int = 0) -> bytes:
    head = struct.pack(">4sBBII", MAGIC, version, flags, length, crc)
    return head + struct.pack(">I", zlib.crc32(head))


def test_layout() -> None:
    frame = encode_frame(b"hello", flags=FLAG_SYNC)
    assert frame[:4] == MAGIC
    assert frame[4] == PROTOCOL_VERSION
    assert frame[5] == FLAG_SYNC
    assert struct.unpack(">I", frame[6:10])[0] == 5
    assert len(frame) == HEADER_SIZE + 5
    [f] = FrameDecoder().feed(frame)
    assert f.payload == b"hello" and f.sync


def test_encode_rejects_empty_and_oversized() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"")
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 11, max_frame_bytes=10)


def _prove(examples: int, prop: Callable[..., None], *strategies: st.SearchStrategy[Any]) -> None:
    """``prop`` checked by hypothesis over ``strategies`` for ``examples`` examples."""
    checks = settings(max_examples=examples, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    checks(given(*strategies)(prop))()


# The property tests: 40 examples each in the fast tier, 160 in the slow one (make test runs
# both). Hypothesis starts from the simplest values (empty and one-byte payloads, no cuts, the
# shortest garbage) and spreads out from there, and tries the failures it has kept
# (.hypothesis/) first; the 160 are the wide search. What a random search would seldom build
# (dense fake headers, magic spam, nested candidates) has its own tests below.
tiers = example_tiers(40, 160)


@tiers
def test_any_cut_decodes_the_same(examples: int) -> None:
    _prove(
        examples,
        _any_cut_decodes_the_same,
        st.lists(payloads, min_size=1, max_size=20),
        st.lists(st.integers(min_value=0), max_size=30),
    )


def _any_cut_decodes_the_same(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    out, dec = decode_all(split_at(stream, cuts))
    assert out == frames
    assert dec.stats.dropped_bytes == 0 and dec.stats.bad_frames == 0
    assert dec.buffered == 0


@tiers
def test_byte_by_byte(examples: int) -> None:
    _prove(examples, _byte_by_byte, st.lists(payloads, min_size=1, max_size=10))


def _byte_by_byte(frames: list[bytes]) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    out, _ = decode_all([stream[i : i + 1] for i in range(len(stream))])
    assert out == frames


@tiers
def test_garbage_between_frames_is_skipped(examples: int) -> None:
    _prove(
        examples,
        _garbage_between_frames_is_skipped,
        st.lists(st.tuples(garbage | st.just(b""), payloads), min_size=1, max_size=10),
        garbage | st.just(b""),
        st.lists(st.integers(min_value=0), max_size=20),
    )


def _garbage_between_frames_is_skipped(pieces: list[tuple[bytes, bytes]], tail: bytes, cuts: list[int]) -> None:
    stream = b"".join(g + encode_frame(p) for g, p in pieces) + tail
    out, dec = decode_all(split_at(stream, cuts))
    assert out == [p for _, p in pieces]
    assert dec.stats.dropped_bytes >= sum(len(g) for g, _ in pieces)
    # Bounded memory: what is left is at most a partial magic of the tail.
    assert dec.buffered <= len(MAGIC) - 1


@tiers
def test_garbage_inside_a_frame_recovers_the_next_frame(examples: int) -> None:
    """Garbage overwriting or inserted into a frame loses that frame only (below)."""
    _prove(
        examples,
        _garbage_inside_a_frame_recovers_the_next_frame,
        payloads,
        st.data(),
        garbage,
        st.lists(payloads, min_size=1, max_size=5),
        st.lists(st.integers(min_value=0), max_size=20),
    )


def _garbage_inside_a_frame_recovers_the_next_frame(
    damaged: bytes, data: st.DataObject, junk: bytes, after: list[bytes], cuts: list[int]
) -> None:
    """Garbage overwriting or inserted into a frame loses that frame only.

    The frames after it must come out; filler is sent after them, as a live
    stream would carry more traffic, so a damaged header's claimed length
    (at most the real one here) can be filled.
    """
    frame = encode_frame(damaged)
    pos = data.draw(st.integers(min_value=1, max_value=len(frame) - 1), label="pos")
    mode = data.draw(st.sampled_from(["insert", "overwrite", "truncate"]), label="mode")
    if mode == "insert":
        broken = frame[:pos] + junk + frame[pos:]
    elif mode == "overwrite":
        broken = frame[:pos] + junk + frame[pos + len(junk) :]
        if broken[: len(frame)] == frame:  # the junk happened to equal the bytes it replaced
            return
    else:
        broken = frame[:pos]
    good = b"".join(encode_frame(p) for p in after)
    # Cut short, a frame can be completed by the bytes that follow when they are what was cut (a
    # payload b"\xf5" cut after its header takes the next frame's first magic byte, and its CRC
    # holds): then the stream holds that frame whole, and the next one is the one damaged.
    assume(not (broken + good).startswith(frame))
    filler = encode_frame(b"\x00" * (len(damaged) + HEADER_SIZE))
    out, dec = decode_all(split_at(broken + good + filler, cuts))
    assert out[-1] == b"\x00" * (len(damaged) + HEADER_SIZE)
    assert out[:-1][-len(after) :] == after
    if frame not in broken + good:  # (junk at its edge can leave the frame whole)
        assert damaged not in out[:-1] or damaged in after


@tiers
def test_random_bytes_never_crash_and_memory_stays_bounded(examples: int) -> None:
    _prove(examples, _random_bytes_never_crash_and_memory_stays_bounded, st.binary(max_size=2000))


def _random_bytes_never_crash_and_memory_stays_bounded(blob: bytes) -> None:
    dec = FrameDecoder(max_frame_bytes=1024)
    for i in range(0, len(blob), 7):
        dec.feed(blob[i : i + 7])
    assert dec.buffered <= HEADER_SIZE + 1024


def test_huge_length_is_rejected_from_the_header() -> None:
    """0xFFFFFFFF and max+1 are refused at once; the next frame follows."""
    dec = FrameDecoder(max_frame_bytes=4096)
    for bad in (0xFFFFFFFF, 4097, 0):
        out = dec.feed(raw_header(bad) + encode_frame(b"next"))
        assert [f.payload for f in out] == [b"next"]
    assert dec.buffered == 0
    assert dec.stats.resyncs == 3


def test_bad_header_crc_and_unknown_version_are_garbage() -> None:
    head = bytearray(raw_header(10))
    head[-1] ^= 0xFF
    dec = FrameDecoder()
    assert [f.payload for f in dec.feed(bytes(head) + encode_frame(b"ok"))] == [b"ok"]
    v2 = raw_header(2, crc=zlib.crc32(b"hi"), version=PROTOCOL_VERSION + 1) + b"hi"
    assert [f.payload for f in dec.feed(v2 + encode_frame(b"ok2"))] == [b"ok2"]


def test_payload_crc_mismatch_counts_a_bad_frame() -> None:
    frame = bytearray(encode_frame(b"abcdef"))
    frame[-1] ^= 1
    dec = FrameDecoder()
    assert [f.payload for f in dec.feed(bytes(frame) + encode_frame(b"next"))] == [b"next"]
    assert dec.stats.bad_frames == 1


def test_never_waits_for_a_claimed_length_beyond_what_arrived() -> None:
    """A valid header claiming MAX bytes holds only what was actually sent."""
    dec = FrameDecoder()
    dec.feed(raw_header(MAX_FRAME_BYTES, crc=0) + b"x" * 100)
    assert dec.buffered == HEADER_SIZE + 100


def test_stale_half_frame_is_abandoned_for_a_sync_frame() -> None:
    """A departed peer's half-frame must not swallow the next connection's hello."""
    stale = encode_frame(b"y" * 100_000)[:5000]
    hello = encode_frame(b"hello", flags=FLAG_SYNC)
    dec = FrameDecoder()
    assert dec.feed(stale + hello) == []  # still inside the stale frame's claimed length
    out = dec.recover_stalled()  # the reader saw the stream go quiet
    assert [f.payload for f in out] == [b"hello"]
    assert dec.stats.bad_frames == 1
    # ...and the stream continues normally after it.
    assert [f.payload for f in dec.feed(encode_frame(b"more"))] == [b"more"]


def test_sync_frame_split_across_feeds_inside_a_pending_frame() -> None:
    stale = encode_frame(b"y" * 100_000)[:3000]
    hello = encode_frame(b"hello", flags=FLAG_SYNC)
    dec = FrameDecoder()
    out = []
    *first, last = split_at(stale + hello, [3001, 3010, 3020])
    for piece in first:
        out += dec.feed(piece)
        assert dec.recover_stalled() == []  # the hello is not complete yet: keep waiting
    out += dec.feed(last)
    out += dec.recover_stalled()
    assert [f.payload for f in out] == [b"hello"]


def test_non_sync_frame_inside_a_pending_frame_is_payload() -> None:
    """Only SYNC frames interrupt: a frame nested in a payload is just data."""
    inner = encode_frame(b"inner")
    outer = encode_frame(b"a" * 10 + inner + b"b" * 10)
    dec = FrameDecoder()
    assert dec.feed(outer[:-5]) == []
    assert dec.recover_stalled() == []
    assert [f.payload for f in dec.feed(outer[-5:])] == [b"a" * 10 + inner + b"b" * 10]


def test_a_busy_stream_recovers_from_a_stale_frame_without_help() -> None:
    """Once later frames fill the stale frame's claimed length, its CRC fails and
    the decoder rescans from inside it: nothing after the hello is lost."""
    stale = encode_frame(b"y" * 1000)[:300]
    later = [encode_frame(b"hello", flags=FLAG_SYNC)] + [encode_frame(bytes([i]) * 50) for i in range(1, 30)]
    out = FrameDecoder().feed(stale + b"".join(later))
    assert [f.payload for f in out] == [b"hello"] + [bytes([i]) * 50 for i in range(1, 30)]


def test_reset_drops_partial_state() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(b"z" * 50)[:30])
    dec.reset()
    assert dec.buffered == 0
    assert [f.payload for f in dec.feed(encode_frame(b"fresh"))] == [b"fresh"]


def test_large_frames_round_trip() -> None:
    big = bytes(range(256)) * 4096 * 4  # 4 MiB
    stream = encode_frame(big) + encode_frame(b"small")
    out, _ = decode_all([stream[i : i + 65536] for i in range(0, len(stream), 65536)])
    assert out == [big, b"small"]


# ----------------------------------------------- hostile input: cost and slices


def dense_headers(total: int, claim: int, *, flags: int = 0) -> bytes:
    """Valid headers back to back, each claiming ``claim`` payload bytes: every
    one is a candidate whose payload covers the headers after it."""
    head = raw_header(claim, crc=0x12345678, flags=flags)
    return head * (total // len(head))


def feed_chunks(dec: FrameDecoder, data: bytes, chunk: int = 64 * 1024) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        out.extend(f.payload for f in dec.feed(data[i : i + chunk]))
    return out


@pytest.mark.parametrize("flags", [0, FLAG_SYNC])
@pytest.mark.parametrize("claim_kib", [256, pytest.param(1024, marks=pytest.mark.slow)])
def test_dense_claimed_headers_cost_hashing_bounded_by_the_bytes_received(flags: int, claim_kib: int) -> None:
    """The issue's 17 MB of dense 16 MiB headers froze hostd for 12 s: each
    candidate's payload was hashed again. Here, scaled down (claims of 256 KiB, or
    1 MiB in the slow tier, and six claims' worth of headers), the bytes hashed stay
    within the credit per byte received (at ~90 % of it at either size), where
    rehashing per candidate would be ~20,000 MiB (~350,000 MiB); then the stream
    recovers."""
    max_frame = claim_kib * 1024
    dec = FrameDecoder(max_frame_bytes=max_frame)
    attack = dense_headers(6 * max_frame, max_frame, flags=flags)
    tail = b"\0" * (max_frame + 100) + encode_frame(b"after") + encode_frame(b"the attack")
    out = feed_chunks(dec, attack + tail)
    # The stall path, as a reader calls it on a quiet stream, is bounded too.
    out += [f.payload for f in dec.recover_stalled()]
    fed = len(attack) + len(tail)
    assert dec.stats.hashed_bytes <= CRC_CREDIT_PER_BYTE * fed + 256 * 1024, dec.stats
    assert dec.stats.unverified > 0
    assert out == [b"after", b"the attack"]
    assert dec.buffered == 0


def test_nested_candidates_ending_together_are_bounded_too() -> None:
    """Headers whose claims all end at the same byte: each fits inside the one
    before it, so a rule about overlapping claims would not bound them."""
    n, step = 20_000, HEADER_SIZE
    span = n * step + 1000
    attack = b"".join(raw_header(span - i * step - HEADER_SIZE) for i in range(n)) + b"\0" * 1000
    dec = FrameDecoder()
    out = feed_chunks(dec, attack + encode_frame(b"ok"))
    assert out == [b"ok"]
    assert dec.stats.hashed_bytes <= CRC_CREDIT_PER_BYTE * (len(attack) + 20) + 256 * 1024


def test_legitimate_recovery_hashes_at_most_twice_per_byte() -> None:
    """A stale half-frame swallowing real frames: its payload is hashed over
    them, then they are hashed as themselves; nothing is left unverified."""
    real = b"".join(encode_frame(bytes([i]) * 3000) for i in range(1, 40))
    stale = encode_frame(b"x" * 50_000)[:30]
    dec = FrameDecoder()
    out = feed_chunks(dec, stale + real + b"".join(encode_frame(b"y" * 3000) for _ in range(30)), chunk=4096)
    assert len(out) >= 39 + 30 - 17  # the frames inside the stale claim after the first are recovered
    assert dec.stats.unverified == 0
    assert dec.stats.hashed_bytes <= 2 * (len(stale) + len(real) + 30 * 3018)


@pytest.mark.parametrize("magics", [64 * 1024, pytest.param(256 * 1024, marks=pytest.mark.slow)])
def test_magic_spam_is_decoded_in_bounded_slices(magics: int) -> None:
    """Every 4 bytes a magic (with a bad header): each costs a header check. With
    max_work, one call examines a bounded number of them and reports a backlog
    (over a thousand calls for 256 KiB of spam; four thousand in the slow tier's MiB)."""
    spam = MAGIC * magics
    dec = FrameDecoder()
    budget = 64 * CANDIDATE_WORK
    assert dec.feed(spam, max_work=budget) == []
    calls = 1
    while dec.backlog:
        before = dec.stats.dropped_bytes
        dec.feed(b"", max_work=budget)
        # Each candidate examined advances the scan by one magic (4 bytes).
        assert dec.stats.dropped_bytes - before <= (budget // CANDIDATE_WORK + 1) * len(MAGIC)
        calls += 1
    assert calls >= len(spam) // ((budget // CANDIDATE_WORK + 1) * len(MAGIC))
    assert dec.buffered < HEADER_SIZE
    [frame] = dec.feed(encode_frame(b"still works"))
    assert frame.payload == b"still works"


def test_a_big_frame_is_hashed_across_slices_and_delivered_whole() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    dec = FrameDecoder()
    frames = dec.feed(encode_frame(payload) + encode_frame(b"next"), max_work=100_000)
    slices = 1
    while dec.backlog:
        frames += dec.feed(b"", max_work=100_000)
        slices += 1
    assert [f.payload for f in frames] == [payload, b"next"]
    assert slices >= len(payload) // 100_000
    assert dec.stats.hashed_bytes == len(payload) + 4


# ---------------------------------------------------------------- peek_message: an envelope's top level


def _peek_cases() -> list[bytes]:
    from limiquantix.protocol import new_message
    from limiquantix.protocol._gen import agent_pb2 as pb

    one = new_message("m1", telemetry=pb.TelemetryReport(cpu_percent=1)).SerializeToString()
    other = new_message("m2", pong=pb.PongResponse(payload=b"p")).SerializeToString()
    return [
        one,
        other,
        one + other,  # the last id and the last oneof member win, as in a parse
        other + one,
        new_message("m3").SerializeToString(),  # no payload
        new_message("é-id", error=pb.Error(message="x")).SerializeToString(),
        one + b"\xf8\x3e\x05" + b"\x85\x3f\x01\x02\x03\x04" + b"\x81\x3f" + b"\x00" * 8,  # unknown fields
    ]


# Named, not identified by their bytes: new_message stamps the time, so each pytest process
# (xdist's workers) would collect different ids and xdist refuses to run at all.
@pytest.mark.parametrize(
    "payload",
    _peek_cases(),
    ids=["telemetry", "pong", "telemetry+pong", "pong+telemetry", "no-payload", "non-ascii-id", "unknown-fields"],
)
def test_peek_message_reads_what_a_parse_reads(payload: bytes) -> None:
    from limiquantix.protocol._gen import agent_pb2 as pb
    from limiquantix.protocol._wire import peek_message

    msg = pb.AgentMessage.FromString(payload)
    assert peek_message(payload) == (msg.message_id, msg.WhichOneof("payload"))
    assert peek_message(memoryview(bytearray(payload))) == peek_message(payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x0a\x05ab", "runs past its end"),
        (b"\x08\x01" * 17, "over 16 top-level fields"),  # millions of them are not read one by one
        (b"\x0b\x0c", "wire type 3"),
        (b"\x0a\x02\xff\xfe", "not UTF-8"),
        (b"\x08" + b"\xff" * 10, "truncated varint"),
    ],
)
def test_peek_message_refuses_what_is_no_message(payload: bytes, reason: str) -> None:
    from limiquantix.protocol._wire import BadMessage, peek_message

    with pytest.raises(BadMessage, match=reason):
        peek_message(payload)
