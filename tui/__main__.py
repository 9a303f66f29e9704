"""``limiquantix-tui [--url URL] [--token-file FILE] [--config FILE]``."""

from __future__ import annotations

import sys

from .app import LimiQuantixApp
from .config import TuiConfigError, parse_args

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except TuiConfigError as exc:
        print(f"limiquantix-tui: {exc}", file=sys.stderr)
        return 2
    LimiQuantixApp(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
