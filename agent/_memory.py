"""Give memory back to the OS after bulk work.

A 64 MiB file transfer passes through 1 MiB buffers; glibc keeps what it
freed (its mmap threshold adapts upwards after the first large frees, so later
buffers come from the heap), and the agent's RSS would stay tens of MiB above
its idle size for good. ``malloc_trim(0)`` returns free heap pages. It is
called from a slow loop, and only when RSS has grown, so idle costs nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["release_memory_loop", "rss_bytes", "trim"]

log = logging.getLogger(__name__)

#: How often to look at RSS.
CHECK_INTERVAL_S: Final = 10.0
#: Trim only above this RSS (an idle agent is about 33 MiB).
TRIM_ABOVE_BYTES: Final = 40 * 1024 * 1024

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _load_trim() -> Callable[[int], int] | None:
    # The C library is already loaded: look the symbol up in the process itself
    # (ctypes.util.find_library would run ldconfig in a subprocess at start-up).
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _load_trim()


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE


def trim() -> bool:
    """Return free heap memory to the OS; False where the C library cannot."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


async def release_memory_loop() -> None:
    """Trim whenever RSS has grown past :data:`TRIM_ABOVE_BYTES`."""
    if _malloc_trim is None:
        return
    while True:
        await trio.sleep(CHECK_INTERVAL_S)
        before = rss_bytes()
        if before > TRIM_ABOVE_BYTES:
            await trio.to_thread.run_sync(trim)
            log.debug("malloc_trim: RSS %d -> %d KiB", before // 1024, rss_bytes() // 1024)
