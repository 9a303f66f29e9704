"""Wire protocol shared by the agent and hostd: schema, frame codec, errors.

Layers, bottom up: :mod:`.framing` (bytes <-> frames, pure), :mod:`.wire`
(frames <-> AgentMessage), :mod:`.transport` (one trio writer per stream),
:mod:`.client` (the host side of a connection: hello/sync and request
correlation), :mod:`.errors` (the error hierarchy and its Connect mapping).

``agent_pb2`` is loaded on first use (PEP 562): importing any ``limiquantix.protocol.*``
module runs this file first, and the pure ones (:mod:`.safetext`, :mod:`.deadlines`,
:mod:`.exits`, :mod:`.clientconfig`) must stay cheap for ``limiquantix exec``, whose start-up time is
measured (protobuf alone costs tens of milliseconds).
"""

from __future__ import annotations

from ._lazy import import_lazily
from ._version import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._version import __version__ as __version__

__all__ = ["PROTOCOL_VERSION", "__version__", "agent_pb2"]


def __getattr__(name: str) -> object:
    return import_lazily(__name__, {"agent_pb2": "._gen"}, name)
