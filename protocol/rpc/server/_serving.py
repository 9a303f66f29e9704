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
cancellation, for at most ``FINAL_SEND_TIMEOUT_S`` (over HTTP/1.1 it does not wait on the client:
hypercorn shields its socket writes itself; over HTTP/2 it waits for the stream's last buffered
bytes to go out, which a client can hold back with its flow-control window), and
counts the requests being answered. :func:`serve_http` uses the count to end the server, once
told to stop, as soon as no request is left (at the latest after ``graceful_timeout``), whatever
hypercorn does with its connections.

One connection must never stop the server. Under hypercorn's trio worker, an exception from one
connection's handling (a protocol library's, hypercorn's own, one leaking from the app's tasks)
leaves the connection's task, then hypercorn's ``serve``, and the whole daemon exits: one HTTP/2
request did that (see :class:`_H2Protocol`). :class:`_ContainedTCPServer` contains it per
connection: the error is logged, that connection closed, the server keeps serving. The two
classes are installed into hypercorn once, when this module is imported
(:func:`_install_hypercorn_fixes`).
"""

from __future__ import annotations

import builtins
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, final

import h2.events
import hypercorn.protocol
import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer

if sys.version_info >= (3, 11):  # novermin
    _BaseExceptionGroup = builtins.BaseExceptionGroup
else:  # pragma: no cover - Python 3.10: trio depends on the backport there
    from exceptiongroup import BaseExceptionGroup as _BaseExceptionGroup

__all__ = [
    "FINAL_SEND_TIMEOUT_S",
    "H2_MAX_CONCURRENT_STREAMS",
    "H2_MAX_HEADER_LIST_BYTES",
    "H2_MAX_INBOUND_FRAME_BYTES",
    "KEEP_ALIVE_TIMEOUT_S",
    "LISTEN_BACKLOG",
    "MAX_REQUEST_HEAD_BYTES",
    "ServedApp",
    "http_config",
    "serve_http",
]

#: How long the servers keep an idle connection: longer than clients keep theirs (httpx: 5 s),
#: so that a client never sends a request on a connection the server is closing that instant
#: (hypercorn's default is 5 s too: the two would race). nginx uses 75 s.
KEEP_ALIVE_TIMEOUT_S: Final = 75.0
#: Pending connections the kernel queues: hypercorn's default of 100 overflowed
#: when a client opened 500 at once (bench/hostd_bench.py), resetting calls.
LISTEN_BACKLOG: Final = 1024
#: hypercorn's buffer for an HTTP/1.1 request line and headers not yet complete (beyond it: an
#: error answer and the connection closed). A bearer token and the Connect headers take well
#: under 1 KiB. hypercorn's default is the same: set here so that it is a decision, as below.
MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
#: HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE (hypercorn's default: 64 KiB): the bound HTTP/1.1 has,
#: which gRPC's metadata fits (8 KiB by default in gRPC's C core, 16 KiB in grpc-go).
H2_MAX_HEADER_LIST_BYTES: Final = 16 * 1024
#: Streams one HTTP/2 connection may have open at once, each a task of the app: hypercorn's
#: default, the least RFC 9113 recommends (Go serves 250, nginx 128).
H2_MAX_CONCURRENT_STREAMS: Final = 100
#: The largest HTTP/2 frame accepted: the RFC's default and least value. h2 joins at most 64
#: CONTINUATION frames into one header block, so this bounds a header block's bytes (1 MiB)
#: before it is decoded; bodies come in more frames, not bigger ones.
H2_MAX_INBOUND_FRAME_BYTES: Final = 16 * 1024

#: How long the final empty body send is shielded from cancellation (see the module docstring):
#: it does bookkeeping and hands the last bytes to the socket unless the client stalls them. A
#: stalled client then has that send cancelled as with hypercorn alone (the response still ends:
#: hypercorn keeps sending what was buffered), and cannot hold a stop longer than this.
FINAL_SEND_TIMEOUT_S: Final = 5.0

log = logging.getLogger(__name__)

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
                with trio.move_on_after(FINAL_SEND_TIMEOUT_S) as bound:
                    bound.shield = True
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


# ---------------------------------------------------------------- containment, fixes to hypercorn

@final
class _ContainedTCPServer(TCPServer):
    """hypercorn's per-connection server (trio worker) with whatever escapes one connection's
    handling contained: logged, the connection closed, the server serving on.

    hypercorn 0.18's ``TCPServer.run`` lets every exception but ``OSError`` propagate into the
    nursery all connections share, whose failure ends ``serve``. Only an ``Exception`` is caught:
    ``Cancelled`` (the server stopping), ``KeyboardInterrupt`` and ``SystemExit`` go through.
    """

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as exc:  # an ExceptionGroup of Exceptions too
            await self._contain(exc)
        except _BaseExceptionGroup as group:
            errors, rest = group.split(Exception)
            if errors is not None:
                await self._contain(errors)
            if rest is not None:
                raise rest from None

    async def _contain(self, exc: BaseException) -> None:
        protocol = getattr(self, "protocol", None)  # absent when the error came before it was made
        client = getattr(protocol, "client", None)
        # The traceback goes through the formatter's exception rendering, which shows control
        # characters escaped (protocol/logs.py): an exception's message may carry a client's bytes.
        log.error("closed the HTTP connection from %s after an error in its handling (serving on)", client, exc_info=exc)
        # run()'s own cleanup closes the stream unless the error came from that cleanup.
        await trio.aclose_forcefully(self.stream)


class _H2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol, without the ``KeyError`` on DATA for a stream it has closed,
    and without connections that never end once closed.

    A server may answer before the request's body has arrived (a 401, 404, 415: any early answer),
    and the client goes on sending it: stock gRPC clients do. hypercorn forgets a stream once it
    has answered, and its ``_handle_events`` then looks DATA's stream up unguarded (``KeyError``).
    Upstream: pgjones/hypercorn issue 329 (open, fixes in pull requests 312, 334 and 365 not
    merged); hypercorn 0.18 (the newest release) needs this. The data is dropped, its
    bytes handed back to the flow-control windows as hypercorn does for data it takes (else the
    connection's window would shrink with each such request until the client stalls).

    When the connection closes (the client's EOF, a protocol error, a GOAWAY), hypercorn stops its
    send task but leaves the streams' send buffers open: an app's final send waiting for its
    stream's buffer to drain then waits until it is cancelled. :class:`ServedApp` shields that
    send, so the connection's tasks and socket stayed for good (one per HTTP/2 client that sent a
    request and its EOF before reading the answer), and still would for FINAL_SEND_TIMEOUT_S.
    :meth:`handle` closes those buffers. Not reported upstream as far as known.

    tests/test_serving.py fails when hypercorn's methods change or no longer need this.
    """

    async def handle(self, event: Event) -> None:
        await super().handle(event)
        if isinstance(event, Closed):
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()  # wakes a drain() (and a push() above the high water mark)

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time: a stream can be closed while an earlier event of the same batch
        # is handled (the app answers meanwhile), so it is looked up only just before use.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                await super()._handle_events([event])
        await self._flush()


def _install_hypercorn_fixes() -> None:
    """Make hypercorn build its connections from :class:`_ContainedTCPServer` and
    :class:`_H2Protocol` (the names its trio worker and its ProtocolWrapper look up when called)."""
    hypercorn.trio.run.TCPServer = _ContainedTCPServer  # type: ignore[misc]
    hypercorn.protocol.H2Protocol = _H2Protocol  # type: ignore[misc]


_install_hypercorn_fixes()


def http_config(bind: list[str], *, graceful_timeout_s: float) -> Config:
    """hypercorn's configuration for hostd and the controller: ``bind`` (``host:port`` or
    ``unix:path``), requests in flight get ``graceful_timeout_s`` at a stop, idle connections
    are kept ``KEEP_ALIVE_TIMEOUT_S``; no access log, errors to the ``hypercorn.error`` logger."""
    config = Config()
    config.bind = bind
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    config.backlog = LISTEN_BACKLOG
    # No read_timeout (hypercorn's bound on every wait for the client's bytes): a request may be
    # answered for as long as its command runs (ExecuteScript's timeoutSeconds), the client
    # sending nothing meanwhile. A client slow with its request head is bounded by the keep-alive
    # time: hypercorn counts a connection idle until a request's head is complete (HTTP/1.1: test
    # in tests/test_serving.py). A request body sent slowly is not bounded here.
    config.h11_max_incomplete_size = MAX_REQUEST_HEAD_BYTES
    config.h2_max_header_list_size = H2_MAX_HEADER_LIST_BYTES
    config.h2_max_concurrent_streams = H2_MAX_CONCURRENT_STREAMS
    config.h2_max_inbound_frame_size = H2_MAX_INBOUND_FRAME_BYTES
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
