"""``limiquantix-agent``: parse configuration, set up logging, serve."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import trio

from limiquantix.protocol import setup_logging

from ._config import ConfigError, dump_toml, parse_command_line

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, print_config = parse_command_line(argv)
    except ConfigError as exc:
        print(f"limiquantix-agent: {exc}", file=sys.stderr)
        return 2
    if print_config:
        print(dump_toml(config))
        return 0
    setup_logging(config.log_format, config.log_level)
    from ._daemon import serve

    trio.run(serve, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
