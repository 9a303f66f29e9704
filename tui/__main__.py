"""``limiquantix-tui [--url URL] [--token-file FILE] [--config FILE]``."""

from __future__ import annotations

import sys

from limiquantix.protocol import ConfigError

from ._app import LimiQuantixApp
from ._config import parse_args

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"limiquantix-tui: {exc}", file=sys.stderr)
        return 2
    LimiQuantixApp(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
