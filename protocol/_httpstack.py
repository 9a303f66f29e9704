"""httpx and httpcore imported without what they import when installed and no process here uses.

httpx imports its command-line client (``httpx._main``: click, pygments, rich's progress bars
and syntax highlighting; ~0.1 s of CPU, a fifth of the controller's start) whenever click is
installed, and this distribution installs click for ``limiquantix``. httpcore imports trio
when it is installed, for its trio backend: the daemons on trio need it, the TUI (asyncio)
does not. :func:`import_http_stack` is the one way a process here imports them: the rpc
client (:mod:`limiquantix.protocol.rpc`, which the daemons' other httpx users import first)
takes them from ``protocol.rpc._httpx``, which calls it; the TUI calls it with trio hidden too,
before anything imports httpx.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["HTTPX_CLI", "import_http_stack"]

#: httpx's command-line client: imported by ``import httpx`` when click is installed, used by
#: no process here (``limiquantix`` is its own click program).
HTTPX_CLI: Final = "httpx._main"


def import_http_stack(unused: Sequence[str] = (HTTPX_CLI,)) -> None:
    """Import httpx and httpcore without the modules ``unused`` names.

    httpx and httpcore import them only if they are installed (``try: import ... except
    ImportError``). They are hidden the import system's way (``sys.modules[name] = None``:
    importing one raises ImportError, as for a module not installed) while httpx is imported,
    then the marks are removed: a later import of them in this process works. What is given up
    is only what the caller never does: ``httpx.main`` says its dependencies are missing, and
    with trio hidden httpcore refuses to run under trio. A module already imported is not
    hidden (it is there for whoever asks), and nothing is done when httpx or httpcore is
    already imported (a test process, or a second caller).

    Raises:
        ImportError: httpx or httpcore is not installed.
    """
    if "httpx" in sys.modules or "httpcore" in sys.modules:
        return
    hidden = [name for name in unused if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not installed"
    try:
        import httpcore  # noqa: F401  (httpx imports it only when a client is made)
        import httpx  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]
