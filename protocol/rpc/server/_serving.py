"""Serving an ASGI app with hypercorn: idle connections closed, and a shutdown that waits for
requests, not connections.

With Quart-Trio on hypercorn's trio worker (hypercorn 0.18, quart-trio 0.12), an HTTP/1.1
connection that has served a request is never closed by the server when idle: not after
``keep_alive_timeout``, and not at shutdown, which then waits the whole ``graceful_timeout``
(the controller always holds a connection to each hostd, the TUI one to the controller: every
stop took 5 s). The cause: the app's final ``send`` (the empty last body) is where hypercorn
finishes the request, tells the app ``http.disconnect`` and starts the connection's idle timer;
Quart-Trio cancels the request's tasks on that disconnect, in the middle of that ``send``, so
the idle timer is cancelled as it starts.

:class:`ServedApp` wraps the app: it shields that final, empty send from the app's own
cancellation (it does not wait on the client: hypercorn already shields its socket writes), and
counts the requests being answered. :func:`serve_http` uses the count to end the server, once
told to stop, as soon as no request is left (at the latest after ``graceful_timeout``), whatever
hypercorn does with its connections.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

__all__ = ["KEEP_ALIVE_TIMEOUT_S", "LISTEN_BACKLOG", "ServedApp", "http_config", "serve_http"]

#: How long the servers keep an idle connection: longer than clients keep theirs (httpx: 5 s),
#: so that a client never sends a request on a connection the server is closing that instant
#: (hypercorn's default is 5 s too: the two would race). nginx uses 75 s.
KEEP_ALIVE_TIMEOUT_S: Final = 75.0
#: Pending connections the kernel queues: hypercorn's default of 100 overflowed
#: when a client opened 500 at once (bench/hostd_bench.py), resetting calls.
LISTEN_BACKLOG: Final = 1024

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@final
class ServedApp:
    """An ASGI app around ``app``: the final empty body send shielded, HTTP requests counted."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (websockets are not used)
            await self.app(scope, receive, send)
            return

        async def send_final_shielded(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body") and not message.get("body"):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        if self.count == 0:
            self._idle = trio.Event()
        self.count += 1
        try:
            # Returns once the response's last bytes are handed to the socket.
            await self.app(scope, receive, send_final_shielded)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return when no request is being answered."""
        while self.count:
            await self._idle.wait()


def http_config(bind: list[str], *, graceful_timeout_s: float) -> Config:
    """hypercorn's configuration for hostd and the controller: ``bind`` (``host:port`` or
    ``unix:path``), requests in flight get ``graceful_timeout_s`` at a stop, idle connections
    are kept ``KEEP_ALIVE_TIMEOUT_S``; no access log, errors to the ``hypercorn.error`` logger."""
    config = Config()
    config.bind = bind
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    config.backlog = LISTEN_BACKLOG
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


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
    tracked = ServedApp(app)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn_serve(tracked, config, shutdown_trigger=stop.wait, task_status=task_status)
        )
        task_status.started(binds)
        await stop.wait()  # hypercorn stops accepting connections
        with trio.move_on_after(config.graceful_timeout):
            await tracked.wait_idle()
        nursery.cancel_scope.cancel()
