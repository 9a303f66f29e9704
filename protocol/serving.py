"""Serving an ASGI app with hypercorn, with a shutdown that waits for requests, not connections.

hypercorn's trio worker means to close idle keep-alive connections at once on shutdown (a
per-connection idle task waits for it), but after a request that task ends as soon as it starts
(traced with hypercorn 0.18: it is started from the request's task, which is being cancelled), so
an idle keep-alive connection holds the shutdown for the whole ``graceful_timeout``. A controller always keeps one
open to each hostd, and the TUI one to the controller: every stop took the full timeout.

:func:`serve_http` counts the HTTP requests being answered (an ASGI wrapper) and, once told to
stop, ends the server as soon as none is left (at the latest after ``graceful_timeout``). Idle
connections are then closed: between requests nothing is lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

__all__ = ["InFlightRequests", "serve_http"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@final
class InFlightRequests:
    """An ASGI app that counts the HTTP requests ``app`` is answering."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (websockets are not used)
            await self.app(scope, receive, send)
            return
        if self.count == 0:
            self._idle = trio.Event()
        self.count += 1
        try:
            # Returns once the response's last bytes are handed to the socket.
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return when no request is being answered."""
        while self.count:
            await self._idle.wait()


async def serve_http(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    config: Config,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``stop`` is set; then let the requests in flight finish (for at most
    ``config.graceful_timeout``) and return.

    ``task_status.started()`` gets the bound addresses, as from hypercorn's ``serve``.
    """
    tracked = InFlightRequests(app)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn_serve(tracked, config, shutdown_trigger=stop.wait, task_status=task_status)
        )
        task_status.started(binds)
        await stop.wait()  # hypercorn stops accepting connections
        with trio.move_on_after(config.graceful_timeout):
            await tracked.wait_idle()
        nursery.cancel_scope.cancel()
