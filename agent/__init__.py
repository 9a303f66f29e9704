"""The LimiQuantix guest agent: the daemon inside each VM.

``channel`` owns the port, ``session`` serves one link, ``dispatch`` routes
requests to the modules in ``handlers``, ``daemon`` ties them together.
"""

from .config import AgentConfig as AgentConfig
from .daemon import Agent as Agent
from .daemon import serve as serve

__all__ = ["Agent", "AgentConfig", "serve"]
