"""The LimiQuantix guest agent: the daemon inside each VM.

``channel`` owns the port, ``session`` serves one link, ``dispatch`` routes
requests to the modules in ``handlers``, ``daemon`` ties them together.
"""

from ._startup import import_trio

import_trio()  # first: before anything below imports trio (see _startup)

from ._config import AgentConfig as AgentConfig  # noqa: E402
from ._daemon import Agent as Agent  # noqa: E402
from ._daemon import serve as serve  # noqa: E402

__all__ = ["Agent", "AgentConfig", "serve"]
