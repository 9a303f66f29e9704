"""``limiquantix-hostd``."""

from __future__ import annotations

import sys

from ._daemon import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
