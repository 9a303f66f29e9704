"""The start of ``limiquantix-tui``: the first poll is asked for before Textual is imported.

A start is mostly imports (bench/tui_bench.py, "first screen with VM rows"; the shared 2-CPU
machine): Textual and the fleet screen ~0.3 s of CPU, httpx, httpcore, the rpc client and the
protobuf messages ~0.25 s, then Textual's first frame ~0.15 s. The first poll
(WhoAmI, then ListVMs of every VM) was sent only once the app had mounted, and its answers
(the controller's time, on another core) were waited for after all of that. Here the client
comes first: WhoAmI and ListVMs go out together (:class:`FirstPoll`), and the app's modules
are imported in a thread while the loop sends them and takes the answers; the app's first
poll takes those answers (usually there before it mounts, so its first frame has the rows).

httpx and httpcore are imported without what they import when installed and the TUI never
uses (trio, httpx's command-line client: :func:`import_http_stack`), and the garbage
collector is paused until the first frame (the start's objects live as long as the app: the
app then freezes them, see ``_freeze_startup_objects``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from limiquantix.protocol._gen.vm_service_pb2 import VM

    from ._client import ControllerClient, WhoAmI
    from ._config import TuiConfig

__all__ = ["FirstPoll", "import_http_stack", "run"]


#: What httpx and httpcore import when it is installed and this process never uses: trio
#: (httpcore's locks and backend for callers on trio; ~0.1 s) and httpx's command-line client
#: (``httpx._main``: click, pygments, rich's progress bars and syntax; ~40 ms).
_UNUSED_HERE: Final = ("trio", "httpx._main")


def import_http_stack() -> None:
    """Import httpx and httpcore without the optional modules the TUI never uses (:data:`_UNUSED_HERE`).

    Both import them only if they are installed (``try: import ... except ImportError``), and
    this distribution installs them for other programs (hostd and the controller run on trio,
    ``limiquantix`` on click). They are hidden the import system's way
    (``sys.modules[name] = None``: importing it raises ImportError, as for a module not
    installed) while httpx is imported, then the marks are removed: a later import of them in
    this process works. What is given up is only what this process never does: httpcore then
    refuses to run under trio (the TUI's calls run on Textual's asyncio loop), and
    ``httpx.main`` says its dependencies are missing. Nothing is done when httpx or httpcore
    is already imported (a test process).
    """
    if "httpx" in sys.modules or "httpcore" in sys.modules:
        return
    hidden = [name for name in _UNUSED_HERE if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not installed"
    try:
        import httpcore  # noqa: F401  (httpx imports it only when a client is made)
        import httpx  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


@final
class FirstPoll:
    """The app's first poll, asked for as the process starts: WhoAmI and ListVMs at once.

    Each call is a task of the running loop; the app awaits them through :meth:`whoami` and
    :meth:`list_vms` (the client's two methods, answered by these tasks), once.
    """

    def __init__(self, client: ControllerClient) -> None:
        """Start both calls (call it in a running loop)."""
        self._whoami = asyncio.ensure_future(client.whoami())
        self._list_vms = asyncio.ensure_future(client.list_vms())

    async def whoami(self) -> WhoAmI:
        """WhoAmI's answer.

        Raises:
            ApiError: as :meth:`ControllerClient.whoami`.
        """
        return await self._whoami

    async def list_vms(self) -> list[VM]:
        """ListVMs' answer.

        Raises:
            ApiError: as :meth:`ControllerClient.list_vms`.
        """
        return await self._list_vms

    def close(self) -> None:
        """Cancel a call still unanswered and drop an answer not taken (ListVMs' after
        WhoAmI failed): its error is retrieved, not logged by asyncio as never retrieved."""
        for task in (self._whoami, self._list_vms):
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()


def run(config: TuiConfig) -> None:
    """Run the app until it quits.

    Raises:
        TLSConfigError: ``config.ca_file`` cannot be loaded (before the terminal is taken).
    """
    # Collections while the modules and the app are made free nothing (their objects live as
    # long as the app) and cost ~10 % of the start: paused until the app's first frame is drawn,
    # when the app collects once, freezes what the start made, and resumes them.
    gc.disable()
    import_http_stack()
    asyncio.run(_run(config))


async def _run(config: TuiConfig) -> None:
    from ._client import ControllerClient

    # The app's modules in a thread: meanwhile the client loads its CAs (for https; OpenSSL
    # lets the GIL go while it reads them) and the loop sends the calls and reads the answers.
    app_module = asyncio.get_running_loop().run_in_executor(None, importlib.import_module, f"{__package__}._app")
    client = ControllerClient(config.url, config.token, ca_file=config.ca_file, insecure=config.insecure)
    first = FirstPoll(client)
    try:
        app = (await app_module).LimiQuantixApp(config, client=client, first_poll=first)
    except BaseException:
        first.close()
        await client.aclose()
        raise
    # The app owns the client and the first poll from here (it closes them when it unmounts).
    await app.run_async()
