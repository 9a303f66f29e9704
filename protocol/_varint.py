"""Protocol buffers' base-128 varints on raw bytes: the one reader under the two walks of the
wire format that run before anything is parsed (:mod:`._wire`'s peek at an agent message's top
level, :mod:`.limits`' field count of a request body), and the one writer for bytes built by
hand (the TUI's upload body written field by field, hostd.rawguest's crafted frames).

Pure and tiny (no protobuf import): each reader says in its own words what a bad varint means
for its input.
"""

__all__ = ["read_varint", "varint_bytes"]

#: The most bytes a varint of 64 bits takes.
MAX_VARINT_BYTES = 10


def read_varint(data: "bytes | bytearray | memoryview", pos: int) -> tuple[int, int]:
    """The varint at ``pos`` of ``data`` and the position after it.

    Raises:
        ValueError: it runs past the end of ``data`` or over :data:`MAX_VARINT_BYTES` bytes.
    """
    value = shift = 0
    for i in range(pos, min(pos + MAX_VARINT_BYTES, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("a truncated varint")


def varint_bytes(value: int) -> bytes:
    """``value`` (≥ 0) as a varint: a length or a field's key on the wire."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
