"""A WriteGuestFile request in Connect JSON, in pieces: what an HTTP client sends as its body
to show an upload's progress (the TUI, the ``limiquantix`` command line).

JSON carries bytes as base64 (proto3's mapping; the controller decodes it strictly); the
content is encoded once and cut into pieces, the JSON around it written once. Pure and
cheap to import.
"""

from __future__ import annotations

import base64
import json

__all__ = ["write_file_parts"]


def write_file_parts(
    vm_id: str, path: str, content: bytes, *, create_parents: bool = False, piece_bytes: int = 256 * 1024
) -> list[bytes]:
    """The body of ``WriteGuestFile`` (``{"vmId", "path", "createParents", "content"}``) as
    parts to send one after the other: the JSON head, the base64 content in pieces of
    ``piece_bytes``, the closing of the JSON."""
    head = json.dumps({"vmId": vm_id, "path": path, "createParents": create_parents})[:-1] + ', "content": "'
    encoded = base64.b64encode(content)
    pieces = [encoded[i : i + piece_bytes] for i in range(0, len(encoded), piece_bytes)]
    return [head.encode(), *pieces, b'"}']
