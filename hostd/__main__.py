"""``limiquantix-hostd``."""

from __future__ import annotations

import sys

from .daemon import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
