"""Wire protocol shared by the agent and hostd: schema, frame codec, errors.

Layers, bottom up: :mod:`.framing` (bytes <-> frames, pure), :mod:`.wire`
(frames <-> AgentMessage), :mod:`.transport` (one trio writer per stream),
:mod:`.client` (the host side of a connection: hello/sync and request
correlation), :mod:`.errors` (the error hierarchy and its Connect mapping).
"""

from ._gen import agent_pb2 as agent_pb2
from ._version import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._version import __version__ as __version__

__all__ = ["PROTOCOL_VERSION", "__version__", "agent_pb2"]
