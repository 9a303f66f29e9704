"""``limiquantix-agent``: parse configuration, set up logging, serve."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

import trio

from .config import AgentConfig, ConfigError, dump_toml, parse_command_line

__all__ = ["main"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line (for journald's MESSAGE or a log shipper)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(config: AgentConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # Under systemd, journald adds its own timestamp.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, print_config = parse_command_line(argv)
    except ConfigError as exc:
        print(f"limiquantix-agent: {exc}", file=sys.stderr)
        return 2
    if print_config:
        print(dump_toml(config))
        return 0
    setup_logging(config)
    from .daemon import serve

    trio.run(serve, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
