"""The Textual app: the controller connection, the fleet poll, and the screens' shared state.

The app polls ListVMs every ``refresh_s`` into its :class:`~limiquantix.tui.state.FleetState`
(per VM the latest record and a few minutes of CPU / memory history, what the detail
screen's sparklines draw) and posts :class:`~limiquantix.tui.messages.FleetUpdated` to the
screens. Errors never end the app: the first failure of a kind is notified, the poll goes
on, and the return of the controller is notified too.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import App
from textual.binding import Binding
from textual.notifications import SeverityLevel

from limiquantix.protocol import safe_text
from limiquantix.protocol._gen.vm_service_pb2 import VM

from ._client import ApiError, ControllerClient, WhoAmI
from ._config import TuiConfig
from ._jobs import JobList
from ._workers import run_async
from .messages import FleetUpdated
from .screens.fleet import FleetScreen
from .state import FleetState

if TYPE_CHECKING:
    from ._start import FirstPoll

__all__ = ["LimiQuantixApp"]


def _freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()
    # The process's start (._start) pauses the collector until here: the start-up objects
    # live as long as the app, and collecting them while they are made (~10 % of the start's
    # CPU) found nothing to free.
    gc.enable()


class LimiQuantixApp(App[None]):
    """``limiquantix-tui``."""

    TITLE = "LimiQuantix"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("j", "jobs", "Jobs"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        config: TuiConfig,
        *,
        client: ControllerClient | None = None,
        poll: bool = True,
        clock: Callable[[], float] = time.time,
        first_poll: FirstPoll | None = None,
    ) -> None:
        """``poll=False`` and a fixed ``clock`` give a still app for snapshots and
        benchmarks, fed through :meth:`apply_fleet`. ``first_poll``: the calls the process's
        start sent (:mod:`._start`), whose answers the first poll takes."""
        super().__init__()
        self.config = config
        self.clock = clock
        self.client = client or ControllerClient(
            config.url,
            config.token,
            timeout_s=config.request_timeout_s,
            ca_file=config.ca_file,
            insecure=config.insecure,
        )
        self.poll = poll
        self._first_poll = first_poll
        self.me: WhoAmI | None = None
        self.fleet = FleetState()
        self.jobs = JobList()
        """Runs started here, running or recently ended (they outlive the screens that started them)."""
        self.controller_ok: bool | None = None
        self.last_error: ApiError | None = None
        self.last_refresh: float = 0.0
        self.poll_started: float | None = None
        """clock() when the poll still waiting for its answer began (None: none is)."""
        self.refresh_cpu_s: float = 0.0
        """CPU time the last fleet update took in this process: the ListVMs answer into the
        state, plus the fleet screen's table updated (before Textual's layout and render)."""

    # -- lifecycle -------------------------------------------------------------------

    def on_mount(self) -> None:
        self.sub_title = self.config.url
        self.push_screen(FleetScreen())
        # Textual's and the app's start-up objects live as long as the app: move them out
        # of the collector's reach, so that full collections (which walk every tracked
        # object) stop costing tens of ms in the middle of a 500-VM refresh.
        self.call_after_refresh(_freeze_startup_objects)
        if self.poll:
            run_async(self, self.refresh_fleet, group="fleet", exclusive=True)
            self.set_interval(self.config.refresh_s, self._tick)

    async def on_unmount(self) -> None:
        if self._first_poll is not None:  # quit before the first poll ran
            self._first_poll.close()
        await self.client.aclose()

    def _tick(self) -> None:
        if self.poll_started is None:
            run_async(self, self.refresh_fleet, group="fleet", exclusive=True)
            return
        # The last poll has not been answered. It is left to run to its deadline (the
        # client's timeout): replacing it at every tick meant no poll ever timed out, and a
        # hung controller (SIGSTOP) stayed "connected" with a frozen time. Late: said now.
        waited = self.clock() - self.poll_started
        if waited > self.config.refresh_s and self.controller_ok is not False:
            self._controller_failed(ApiError("not_answering", f"the controller has not answered for {waited:.0f} s"))
        else:
            self._tell_screens()  # the header's age of the data

    # Screens other than the fleet are imported when first shown: not on the start's path.

    def action_help(self) -> None:
        from .screens.dialogs import HelpScreen

        self.push_screen(HelpScreen())

    def action_jobs(self) -> None:
        from .screens.jobs import JobsScreen

        if not isinstance(self.screen, JobsScreen):
            self.push_screen(JobsScreen())

    # -- errors ----------------------------------------------------------------------

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every notification (screens' included) as plain text with controls shown:
        they quote API errors and guest names. ``markup`` is accepted and ignored."""
        super().notify(
            safe_text(message, multiline=True), title=safe_text(title), severity=severity, timeout=timeout, markup=False
        )

    def report(self, exc: ApiError, what: str) -> None:
        """A notification an operator can act on."""
        hint = ""
        if exc.code == "unauthenticated":
            hint = f" — check the token from {self.config.source}"
        elif exc.code == "permission_denied" and self.me:
            hint = f" — you are {self.me.user} ({self.me.role})"
        self.notify(f"{what}: {exc.summary}{hint}", severity="error", timeout=8)

    # -- the fleet poll ----------------------------------------------------------------

    async def refresh_fleet(self) -> None:
        """One poll: WhoAmI while unknown, then ListVMs; screens are told. The first one
        takes the answers to the calls the start sent, if it did (``first_poll``)."""
        first, self._first_poll = self._first_poll, None
        calls: ControllerClient | FirstPoll = first or self.client
        self.poll_started = self.clock()
        try:
            if self.me is None:
                self.me = await calls.whoami()
                self.sub_title = f"{self.me.user} ({self.me.role}) @ {self.config.url}"
                for screen in self.screen_stack:
                    screen.refresh_bindings()  # the footer shows only what this token may do
            vms = await calls.list_vms()
        except ApiError as exc:
            self._controller_failed(exc)
            return
        finally:
            self.poll_started = None
            if first is not None:
                first.close()
        if self.controller_ok is False:
            self.notify("Controller reachable again.", title="Recovered", timeout=4)
        self.controller_ok, self.last_error = True, None
        self.apply_fleet(vms)

    def _controller_failed(self, exc: ApiError) -> None:
        first = self.controller_ok is not False or (self.last_error and self.last_error.code != exc.code)
        self.controller_ok, self.last_error = False, exc
        if exc.code == "unauthenticated":
            self.me = None
        if first:
            self.report(exc, "Controller")
        self._tell_screens()

    def apply_fleet(self, vms: list[VM]) -> None:
        """Take one ListVMs answer (also used by tests and the benchmark to feed data)."""
        started = time.process_time()
        self.fleet.apply(vms)
        self.last_refresh = self.clock()
        self._tell_screens()
        self.refresh_cpu_s = time.process_time() - started

    def _tell_screens(self) -> None:
        for screen in self.screen_stack:
            screen.post_message(FleetUpdated())

    # -- helpers for screens -------------------------------------------------------------

    def may(self, permission: str) -> bool:
        """Whether the token holds ``permission`` (True while unknown: the controller decides)."""
        return self.me is None or self.me.may(permission)
