"""``limiquantix-tui [--url URL] [--token-file FILE] [--config FILE]``."""

from __future__ import annotations

import sys

from limiquantix.protocol import ConfigError, TLSConfigError

from ._config import parse_args
from ._start import run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"limiquantix-tui: {exc}", file=sys.stderr)
        return 2
    try:
        run(config)
    except TLSConfigError as exc:  # the CA file: said before the terminal is taken
        print(f"limiquantix-tui: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
