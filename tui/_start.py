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
from typing import TYPE_CHECKING, Final, final

from limiquantix.protocol import HTTPX_CLI
from limiquantix.protocol import import_http_stack as _import_http_stack

if TYPE_CHECKING:
    from limiquantix.protocol._gen.vm_service_pb2 import VM

    from ._client import ControllerClient, WhoAmI
    from ._config import TuiConfig

__all__ = ["FirstPoll", "import_http_stack", "run"]


#: What httpx and httpcore import when installed and this process never uses: trio
#: (httpcore's locks and backend for callers on trio; ~0.1 s) and httpx's command-line client
#: (``httpx._main``: click, pygments, rich's progress bars and syntax; ~40 ms).
_UNUSED_HERE: Final = ("trio", HTTPX_CLI)


def import_http_stack() -> None:
    """Import httpx and httpcore without trio and httpx's command line (:data:`_UNUSED_HERE`),
    through protocol's one way (:func:`limiquantix.protocol.import_http_stack`,
    which says what is given up: here httpcore refuses to run under trio, and the TUI's calls
    run on Textual's asyncio loop).

    Raises:
        ImportError: httpx or httpcore is not installed.
    """
    _import_http_stack(_UNUSED_HERE)


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
    client = ControllerClient(
        config.url,
        config.token,
        timeout_s=config.request_timeout_s,
        ca_file=config.ca_file,
        insecure=config.insecure,
    )
    first = FirstPoll(client)
    try:
        app = (await app_module).LimiQuantixApp(config, client=client, first_poll=first)
    except BaseException:
        first.close()
        await client.aclose()
        raise
    # The app owns the client and the first poll from here (it closes them when it unmounts).
    await app.run_async()
