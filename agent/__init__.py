"""The LimiQuantix guest agent: the daemon inside each VM.

Implementation modules are private: ``_channel`` owns the port, ``_session``
serves one link, ``_dispatch`` routes requests to the modules in ``handlers``
(one per request type), ``_procgroup`` runs every command as a process group,
``_daemon`` ties them together. What a program embedding the agent needs is
exported here: ``Agent`` and ``serve`` (run it in a trio program), ``AgentConfig``,
``load_config`` (TOML and flags) and ``ConfigError``. ``cli`` is a tool run by
name (``limiquantix-agent-cli``: talk to an agent from the host side).
"""

from ._startup import import_trio

import_trio()  # first: before anything below imports trio (see _startup)

from ._config import AgentConfig as AgentConfig  # noqa: E402
from ._config import ConfigError as ConfigError  # noqa: E402
from ._config import load_config as load_config  # noqa: E402
from ._daemon import Agent as Agent  # noqa: E402
from ._daemon import serve as serve  # noqa: E402

__all__ = ["Agent", "AgentConfig", "ConfigError", "load_config", "serve"]
