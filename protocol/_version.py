"""The single source of the product version (also read by pyproject.toml)."""

__version__ = "0.1.0"

#: Version of the agent <-> host wire protocol (the frame header's version byte).
PROTOCOL_VERSION = 1
