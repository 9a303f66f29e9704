"""``python -m limiquantix.cli``: the ``limiquantix`` program (:func:`._fast.entry`: exec/sh
by the fast path when it can, everything else through click)."""

from ._fast import entry, main

__all__ = ["entry", "main"]

if __name__ == "__main__":
    entry()
