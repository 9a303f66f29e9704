"""Start-up without subprocesses: trio without ``ldconfig``.

trio, when imported, looks for ``pthread_setname_np`` (to name its worker
threads) with ``ctypes.util.find_library("pthread")``, which on Linux runs
``/sbin/ldconfig -p`` in a subprocess. Natively that is a few milliseconds; in
a slow guest (QEMU without KVM) a fork and exec at boot costs far more, and the
agent's announce time after its service starts is a target. This imports trio
with ``find_library`` answering ``pthread`` from the libraries the process can
already open by their ABI names (``libpthread.so.0``, or glibc 2.34+'s
``libc.so.6`` which holds the pthread functions), and restores it at once: the
rest of the process, and any other lookup, sees the standard function.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# Not typing's: this module runs first at start-up, whose imports are measured.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["import_trio"]

#: ABI names to try for a library before asking ``ldconfig``.
_SONAMES = {"pthread": ("libpthread.so.0", "libc.so.6")}


def _find_library(name: str, real: Callable[[str], str | None] = ctypes.util.find_library) -> str | None:
    for soname in _SONAMES.get(name, ()):
        try:
            ctypes.CDLL(soname)
        except OSError:
            continue
        return soname
    return real(name)


def import_trio() -> None:
    """Import trio (once) without ``find_library`` spawning ``ldconfig`` for pthread."""
    if "trio" in sys.modules or not sys.platform.startswith("linux"):
        return
    real = ctypes.util.find_library
    ctypes.util.find_library = _find_library
    try:
        import trio  # noqa: F401
    finally:
        ctypes.util.find_library = real
