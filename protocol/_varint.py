"""Protocol buffers' base-128 varints read from raw bytes: the one reader under the two walks
of the wire format that run before anything is parsed (:mod:`._wire`'s peek at an agent
message's top level, :mod:`.limits`' field count of a request body).

Pure and tiny (no protobuf import): each caller says in its own words what a bad varint means
for its input.
"""

__all__ = ["read_varint"]

#: The most bytes a varint of 64 bits takes.
MAX_VARINT_BYTES = 10


def read_varint(data: "bytes | memoryview", pos: int) -> tuple[int, int]:
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
