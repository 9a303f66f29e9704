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

File descriptors (each connection holds one; the daemon needs its own for hostd's VM sockets,
its calls to the controller, the controller's database and its calls to each hostd):

- a connection whose client has closed its side is closed at once (:class:`_ContainedTCPServer`).
  hypercorn 0.18 let it sit (its socket in CLOSE-WAIT, its task) until ``keep_alive_timeout``
  (75 s) ran out: a client that connected and closed 14 times a second held 1,024 descriptors,
  and the daemon, out of them, could neither serve nor call anyone (``EMFILE``);
- at most :func:`max_connections` connections are served at once (three quarters of the
  descriptors, the rest kept for the daemon's own work), and one source address holds at most
  :data:`CONNECTIONS_SHARE_PER_SOURCE` of them (an IPv6 source: its /64; loopback excepted: the
  machine's own clients),
  so that one host holding idle connections up to the limit cannot lock every other client out
  for the keep-alive time (75 s); one more is closed unread, logged at most once per reason
  per :data:`REFUSAL_LOG_INTERVAL_S`;
- when ``accept`` fails anyway (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``), trio's
  ``serve_listeners`` retries every 0.1 s and logged each retry at ERROR with a traceback (90
  lines a second, formatting them the CPU's main load); :class:`_AcceptErrorLog` makes that one
  line per :data:`REFUSAL_LOG_INTERVAL_S` with how many it stands for.

TLS: :func:`http_config` with a :class:`ServerTLS` serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN);
with a CA for client certificates, a client must present one it signed (mutual TLS:
``ssl.CERT_REQUIRED``) or the handshake is refused, before any request is read. hypercorn drops
a failed handshake without a word; here each refusal is logged (at most once per reason per
:data:`TLS_REFUSAL_LOG_INTERVAL_S`, with how many it stands for), so that the side that refused
says why. Without a certificate the servers speak plain HTTP, which :func:`transport_summary`
says is for loopback development.
"""

from __future__ import annotations

import builtins
import contextvars
import dataclasses
import enum
import errno
import ipaddress
import logging
import os
import resource
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, final

import h2.errors
import h2.events
import hypercorn.protocol
import hypercorn.trio.run
import trio
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import EndBody as StreamEndBody
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response as StreamResponse
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import wrap_app

from ... import errors
from .._errors import error_body

if sys.version_info >= (3, 11):  # novermin
    _BaseExceptionGroup = builtins.BaseExceptionGroup
else:  # pragma: no cover - Python 3.10: trio depends on the backport there
    from exceptiongroup import BaseExceptionGroup as _BaseExceptionGroup

from ..._logs import LogThrottle
from ..._tls import TLSConfigError, load_cert_chain, load_verify_locations
from ..._tokenbucket import TokenBucket

__all__ = [
    "ALERT_LINGER_BYTES",
    "ALERT_LINGER_S",
    "COALESCE_MAX_BYTES",
    "FINAL_SEND_TIMEOUT_S",
    "H2_MAX_CONCURRENT_STREAMS",
    "H2_MAX_HEADER_LIST_BYTES",
    "H2_MAX_INBOUND_FRAME_BYTES",
    "H2_RESETS_BURST",
    "H2_RESETS_PER_S",
    "KEEP_ALIVE_MAX_REQUESTS",
    "KEEP_ALIVE_TIMEOUT_S",
    "CONNECTIONS_SHARE_OF_FDS",
    "CONNECTIONS_SHARE_PER_SOURCE",
    "LISTEN_BACKLOG",
    "MAX_REQUEST_HEAD_BYTES",
    "REFUSAL_LOG_INTERVAL_S",
    "STREAM_HEAD_HOLD_S",
    "ServedApp",
    "ServerTLS",
    "TLS_REFUSAL_LOG_INTERVAL_S",
    "bind_sockets",
    "http_config",
    "max_connections",
    "peer_common_name",
    "serve_http",
    "server_ssl_context",
    "transport_summary",
]

#: How long the servers keep an idle connection: longer than clients keep theirs (httpx: 5 s),
#: so that a client never sends a request on a connection the server is closing that instant
#: (hypercorn's default is 5 s too: the two would race). nginx uses 75 s.
KEEP_ALIVE_TIMEOUT_S: Final = 75.0
#: Requests one connection may carry: no limit in practice. hypercorn's default (1000) ends an
#: HTTP/2 connection after its 1000th stream with a GOAWAY that also cuts that stream short (h2
#: closes the connection before the stream is answered): grpcio's channel then failed one call in
#: a thousand with ``unavailable`` "Stream removed" (bench/rpc_bench.py, a long-lived channel), as
#: any HTTP/2 client would. Go's HTTP/2 server sets no such limit either.
KEEP_ALIVE_MAX_REQUESTS: Final = 2**62
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

#: The share of the process's file descriptors (RLIMIT_NOFILE) that connections may hold; the
#: rest is the daemon's own (VM sockets, the database, outgoing calls, a log file).
CONNECTIONS_SHARE_OF_FDS: Final = 0.75
#: The share of those connections one source address may hold (loopback excepted). HTTP/2 (TLS)
#: carries a client's calls on one connection; over plain HTTP/1.1 the controller holds one per
#: concurrent call to a hostd (its pool: 2,000 at most).
CONNECTIONS_SHARE_PER_SOURCE: Final = 0.5
#: Connections over the limit, failed accepts: one log line per reason per this many seconds.
REFUSAL_LOG_INTERVAL_S: Final = 60.0

#: Streams an HTTP/2 client may reset (RST_STREAM) at once, and per second after: beyond, its
#: connection is closed (GOAWAY ENHANCE_YOUR_CALM). Each request is handed to the app as its
#: HEADERS arrive (a task started, the request's work begun) and a reset that follows at once
#: undoes none of that: "rapid reset" (CVE-2023-44487) made hostd do it as fast as a client's
#: bandwidth allowed, ~60 bytes a request. A gRPC client resets a call when its deadline passes or
#: its user gives up: far fewer. (Go's and nginx's servers bound the same.)
H2_RESETS_BURST: Final = 200
H2_RESETS_PER_S: Final = 50.0

#: How long the final empty body send is shielded from cancellation (see the module docstring):
#: it does bookkeeping and hands the last bytes to the socket unless the client stalls them. A
#: stalled client then has that send cancelled as with hypercorn alone (the response still ends:
#: hypercorn keeps sending what was buffered), and cannot hold a stop longer than this.
FINAL_SEND_TIMEOUT_S: Final = 5.0

log = logging.getLogger(__name__)

#: A client that keeps failing its handshake (a hostd with the wrong certificate retries every
#: few seconds; a scanner tries thousands): one log line per reason per this many seconds.
TLS_REFUSAL_LOG_INTERVAL_S: Final = 60.0
#: After a refused handshake's alert (see _ContainedTCPServer._handshake): how long the connection
#: lingers for the client to read it, and how much of what the client still sends is read and dropped.
ALERT_LINGER_S: Final = 1.0
ALERT_LINGER_BYTES: Final = 256 * 1024
#: A held response head is joined to body bytes up to this size (one write); a larger body goes in
#: a write of its own after the head (joining would copy it, and one more segment is nothing there).
COALESCE_MAX_BYTES: Final = 64 * 1024
#: How long a streamed response's head (chunked: Connect server streaming) waits for its first
#: body bytes to leave in one write with them, and with them for the next (see _H11Protocol).
#: hostd's first event (the execution id) comes as the command starts; the controller's is that
#: event relayed, after its own work (the token, the audit row, the call to hostd): 14 to 19 ms
#: median at load 4 on the 2-core machine, so 20 ms missed it often. A stream with nothing to say yet (a command that prints late, a watch) still
#: shows its client the 200 and the headers this soon, which no client or person can tell from
#: at once; the headers carry nothing a client can act on before the first event anyway. The
#: first event, held with them, is an acknowledgement (ExecuteInGuestStream's and
#: ExecuteScriptStream's execution id) or a first snapshot: no later than this either.
STREAM_HEAD_HOLD_S: Final = 0.05
#: ALPN: HTTP/2 first (gRPC needs it), HTTP/1.1 for every other client.
ALPN_PROTOCOLS: Final = ("h2", "http/1.1")

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
        limit = getattr(self.config, "connections", None)
        source = _peer_address(self.stream) if limit is not None else None
        if limit is not None and not limit.admit(source):
            await trio.aclose_forcefully(self.stream)  # unread: it costs one accept and one close
            return
        try:
            await self._run()
        finally:
            if limit is not None:
                limit.release(source)

    async def _run(self) -> None:
        try:
            if isinstance(self.stream, trio.SSLStream) and not await self._handshake():
                await trio.aclose_forcefully(self.stream)
                return
            await super().run()
        except Exception as exc:  # an ExceptionGroup of Exceptions too
            await self._contain(exc)
        except _BaseExceptionGroup as group:
            failures, rest = group.split(Exception)
            if failures is not None:
                await self._contain(failures)
            if rest is not None:
                raise rest from None

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client closed its side (or the connection broke): nothing more can arrive, and the
        # requests in flight have been told (hypercorn's Closed). hypercorn 0.18 kept the idle
        # timer running, and with it the connection (its task, its socket in CLOSE-WAIT) for the
        # whole keep-alive time when no request was in flight. Stopped, the connection ends
        # once its requests have.
        await self.idle_task.stop()

    async def _handshake(self) -> bool:
        """The TLS handshake (hypercorn's run() then finds it done); False when it failed.

        A refused handshake's alert (``certificate required``, ``unknown ca``, ``bad
        certificate``) is sent before the connection closes: trio's SSLStream leaves it in its
        outgoing buffer when OpenSSL raises, and hypercorn closes without it, so a client saw a
        reset. Under TLS 1.3 the client's side of the handshake is done by then and its request
        sent: without the alert the client cannot tell a refusal (nothing delivered) from a server
        that died mid-call (outcome unknown); with it, its read fails naming the alert.
        """
        stream = self.stream
        try:
            with trio.fail_after(self.config.ssl_handshake_timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            return False
        except trio.BrokenResourceError as exc:
            # A plain-HTTP request (an http:// URL) at this HTTPS port: OpenSSL refuses it
            # without a word, which curl reports as "Empty reply from server" and clients as a
            # connection broken after the call was sent; answered in HTTP instead, naming https.
            answer = PLAIN_HTTP_ANSWER if _is_plain_http(exc) else _pending_tls_output(stream)
            if answer:
                with trio.move_on_after(ALERT_LINGER_S):
                    await _send_and_linger(stream.transport_stream, answer)
            return False
        return True

    async def _contain(self, exc: BaseException) -> None:
        protocol = getattr(self, "protocol", None)  # absent when the error came before it was made
        client = getattr(protocol, "client", None)
        # The traceback goes through the formatter's exception rendering, which shows control
        # characters escaped (protocol/_logs.py): an exception's message may carry a client's bytes.
        log.error(
            "closed the HTTP connection from %s after an error in its handling (serving on)", client, exc_info=exc
        )
        # run()'s own cleanup closes the stream unless the error came from that cleanup.
        await trio.aclose_forcefully(self.stream)


def max_connections(fd_limit: int | None = None) -> int:
    """Connections a server may hold at once: :data:`CONNECTIONS_SHARE_OF_FDS` of ``fd_limit``
    (default: this process's RLIMIT_NOFILE soft limit, which run_daemon raises to the hard one;
    no limit when the system sets none)."""
    if fd_limit is None:
        soft = _fd_limit()
        fd_limit = soft if soft != resource.RLIM_INFINITY else 2**20
    return max(1, int(fd_limit * CONNECTIONS_SHARE_OF_FDS))


def _peer_address(stream: trio.abc.Stream) -> str | None:
    """The address a TCP connection comes from (an SSL stream's underlying one); None for
    another kind of stream (a Unix socket's)."""
    raw = getattr(stream, "transport_stream", stream)
    sock = getattr(raw, "socket", None)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        address: str = sock.getpeername()[0]
    except OSError:  # already gone
        return None
    return address


@final
class _ConnectionLimit:
    """The connections one server is serving, and how many it may: in all, and from one source
    address (loopback excepted unless ``exempt_loopback`` is false)."""

    def __init__(self, maximum: int, *, per_source: int | None = None, exempt_loopback: bool = True) -> None:
        self.maximum = maximum
        self.per_source = per_source or max(1, int(maximum * CONNECTIONS_SHARE_PER_SOURCE))
        self.exempt_loopback = exempt_loopback
        self.open = 0
        self._by_source: dict[str, int] = {}
        self._log = LogThrottle(REFUSAL_LOG_INTERVAL_S)

    def _counted(self, source: str | None) -> str | None:
        """The key ``source`` is counted under (None: not counted per source): an IPv4 address
        (an IPv4-mapped IPv6 one as its IPv4 address), an IPv6 one's /64 (one host holds a whole
        /64 and picks its address in it: counted per address, it would count as millions of
        sources)."""
        if source is None:
            return None
        try:
            ip = ipaddress.ip_address(source.partition("%")[0])
        except ValueError:
            return source
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.exempt_loopback and ip.is_loopback:
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    def admit(self, source: str | None = None) -> bool:
        """Count a new connection from ``source`` (its address) in; False (logged) when the
        server is full, or that source holds its share."""
        key = self._counted(source)
        if key is not None and self._by_source.get(key, 0) >= self.per_source:
            more = self._log.due("source")
            if more is not None:
                log.warning(
                    "closed a new connection from %s unread: it holds %d connections, the most one "
                    "address may (%d%% of the %d this server serves at once)%s",
                    key,
                    self._by_source[key],
                    round(CONNECTIONS_SHARE_PER_SOURCE * 100),
                    self.maximum,
                    more,
                )
            return False
        if self.open >= self.maximum:
            more = self._log.due("full")
            if more is not None:
                log.warning(
                    "closed a new connection unread: %d connections open, the limit (%d%% of the %d file "
                    "descriptors RLIMIT_NOFILE allows; the rest are kept for the daemon's own work)%s",
                    self.open,
                    round(CONNECTIONS_SHARE_OF_FDS * 100),
                    _fd_limit(),
                    more,
                )
            return False
        self.open += 1
        if key is not None:
            self._by_source[key] = self._by_source.get(key, 0) + 1
        return True

    def release(self, source: str | None = None) -> None:
        """Count a connection :meth:`admit` let in (from ``source``) out."""
        self.open -= 1
        key = self._counted(source)
        if key is not None:
            left = self._by_source[key] - 1
            if left:
                self._by_source[key] = left
            else:
                del self._by_source[key]


def _fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


#: accept()'s errors that say the process or the system is out of a resource (trio retries them).
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@final
class _AcceptErrorLog(logging.Filter):
    """On ``trio.serve_listeners``: its "accept returned EMFILE ...; retrying" record (ERROR, with a
    traceback, every 0.1 s while it lasts) becomes one line per reason per
    :data:`REFUSAL_LOG_INTERVAL_S`, without the traceback, saying what to do."""

    def __init__(self) -> None:
        super().__init__()
        self._log = LogThrottle(REFUSAL_LOG_INTERVAL_S)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, OSError) or exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
            return True
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        more = self._log.due(name)
        if more is None:
            return False
        record.msg = (
            "cannot accept connections: %s (%s; %d file descriptors allowed): new clients wait until "
            "connections close; retrying every 0.1 s%s"
        )
        record.args = (os.strerror(exc.errno or 0), name, _fd_limit(), more)
        record.exc_info = None
        record.exc_text = None
        return True


async def _send_and_linger(transport: trio.abc.Stream, data: bytes) -> None:
    """Send ``data`` and end our side, then read and drop what the client still sends (at most
    :data:`ALERT_LINGER_BYTES`) until it closes. Closed at once instead, a socket with the
    client's unread request in it answers with a reset, which can reach the client before it
    reads ``data`` and breaks its connection without a word. The caller bounds the time."""
    try:
        await transport.send_all(data)
        if isinstance(transport, trio.SocketStream):
            await transport.send_eof()
        dropped = 0
        while dropped < ALERT_LINGER_BYTES:
            chunk = await transport.receive_some(64 * 1024)
            if not chunk:
                return
            dropped += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client is gone already


def _is_plain_http(exc: trio.BrokenResourceError) -> bool:
    """Whether a handshake failed because the client spoke plain HTTP (OpenSSL's ``HTTP_REQUEST``:
    the first bytes were ``GET ``, ``POST``, ``HEAD`` or ``PUT ``, not a TLS record)."""
    cause = exc.__cause__
    return isinstance(cause, ssl.SSLError) and cause.reason == "HTTP_REQUEST"


def _plain_http_answer() -> bytes:
    """A whole HTTP/1.1 400 response: Connect's JSON error (``invalid_argument``, reason
    ``plain_http``), then the connection closes."""
    body = error_body(
        errors.InvalidArgument(
            "this port serves HTTPS, not plain HTTP: use an https:// URL (with curl, add --cacert CA_FILE"
            " when the server's CA is a private one, as make run's is)",
            reason="plain_http",
        )
    )
    head = (
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


#: What a plain-HTTP request to an HTTPS port is answered (see _ContainedTCPServer._handshake).
PLAIN_HTTP_ANSWER: Final = _plain_http_answer()


def _pending_tls_output(stream: trio.SSLStream[Any]) -> bytes:
    """What OpenSSL wrote for the peer and trio did not send (a failed handshake's alert): trio
    keeps it in the SSLStream's outgoing MemoryBIO, ``_outgoing`` (tests/test_serving.py fails
    when trio renames it)."""
    outgoing = getattr(stream, "_outgoing", None)
    return outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""


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

    A client that resets streams faster than :data:`H2_RESETS_PER_S` (after a burst of
    :data:`H2_RESETS_BURST`) has its connection closed: see there.

    tests/test_serving.py fails when hypercorn's methods change or no longer need this.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resets = TokenBucket(H2_RESETS_PER_S, H2_RESETS_BURST)

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
            elif isinstance(event, h2.events.StreamReset) and not self._resets.take():
                more = _RAPID_RESETS.due("rapid reset")
                if more is not None:
                    log.warning(
                        "closed the HTTP/2 connection from %s: it reset streams faster than %g a second%s",
                        self.client,
                        H2_RESETS_PER_S,
                        more,
                    )
                self.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                await self._flush()
                await self.send(Closed())
                return
            else:
                await super()._handle_events([event])
        await self._flush()


#: Connections closed for rapid resets: one log line a minute (a client can open many).
_RAPID_RESETS: Final = LogThrottle(REFUSAL_LOG_INTERVAL_S)


class _H11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, writing what an answer sends at once in one piece.

    hypercorn writes the status line and headers as soon as the app starts its answer, then each
    body chunk as it comes, then the end: a write (a TCP segment, TCP_NODELAY being on) and a
    wake-up of the client for each (httpcore reads the head, then waits again for the body). Here:

    - the head is held and goes out with the first body bytes when they are at most
      :data:`COALESCE_MAX_BYTES` (else just before them), with the end of the message, or before
      anything else this connection sends. A sized answer's body (``Content-Length``) is already
      in the app's hands (Quart sends it right after the head), so its head waits for nothing
      else. A streamed answer's (chunked: Connect streaming, ExecuteScriptStream) first bytes may
      be a long time coming (a command with no output yet), and a client may wait on the head
      meanwhile, so that head waits at most :data:`STREAM_HEAD_HOLD_S`; then a task in the
      connection's nursery sends it alone;
    - a streamed answer's first chunk (a message: ExecuteScriptStream's execution id, which
      hostd sends before the command has even left for the guest) waits with the head for the
      next chunk, within the same :data:`STREAM_HEAD_HOLD_S` from the head: a command that ends
      in that time (``true``) leaves in one write, head, id, result, end-of-stream message and
      chunked end, at each hop, as a unary answer does (one wake-up of the controller and of
      the client where there were two, and hostd's write of the id no longer before the
      command's own). A command's output is never held by it: output comes after the id, and
      the id's chunk leaves with the first output's;
    - a streamed answer's chunks are held until the app's task gives way (a task in the
      connection's nursery, started with the first held chunk, runs in trio's next round of
      tasks and sends what is held): what the app sends in one go goes in one write (a
      command's result, the end-of-stream message and the chunked end, which hostd and the
      controller send one after another), and a chunk waits for nothing the app has not
      already got. Held bytes never pass :data:`COALESCE_MAX_BYTES`.

    Measured on PingAgent and on curl of ExecuteScriptStream through the controller (two hops):
    see bench/rpc_bench.py and bench/cli_bench.py.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_now = self.send
        self.send = self._send_coalesced
        self._hold_head: _HeadHold | None = None
        self._streaming = False  # a streamed answer's body is being sent: its chunks are held
        self._held = b""
        # The streamed head's timer (see _release_head_later); None when no head is held.
        self._head_timer: trio.CancelScope | None = None
        # A streamed head is held and no body chunk has come yet: the first waits with it.
        self._opening = False
        self._flush_pending = False  # a _flush_soon task has been started and has not run yet

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed):
            # The client is gone (or the connection broke): held bytes have nobody to go to.
            self._take_held()
        await super().handle(event)

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, StreamResponse) and event.status_code >= 200:
            sized = any(name.lower() == b"content-length" for name, _ in event.headers)
            self._hold_head = _HeadHold.SIZED if sized else _HeadHold.STREAMED
            self._streaming = not sized
        elif isinstance(event, (StreamEndBody, StreamClosed)):
            self._streaming = False  # the end goes now, with what is held
        try:
            await super().stream_send(event)
        finally:
            self._hold_head = None  # whatever the head's write did, only that write is held

    async def _send_coalesced(self, event: Event) -> None:
        if not isinstance(event, RawData):  # Closed, Updated: what is held goes first
            if self._held:
                await self._send_now(RawData(data=self._take_held()))
            await self._send_now(event)
            return
        if self._hold_head is not None:
            hold, self._hold_head = self._hold_head, None
            self._held = event.data
            self._opening = hold is _HeadHold.STREAMED
            if self._opening:
                timer = self._head_timer = trio.CancelScope(deadline=trio.current_time() + STREAM_HEAD_HOLD_S)
                self.task_group.spawn(self._release_head_later, timer)
            return
        data = event.data
        if self._opening:  # the first chunk after a streamed head: it waits with the head
            self._opening = False
            fits = len(self._held) + len(data) <= COALESCE_MAX_BYTES
            if self._streaming and self._head_timer is not None and fits:
                self._held += data
                return
        if self._held:
            if len(self._held) + len(data) <= COALESCE_MAX_BYTES:
                data = self._take_held() + data
            else:  # not copied to join them; one more segment is nothing at this size
                await self._send_now(RawData(data=self._take_held()))
        if self._streaming and len(data) < COALESCE_MAX_BYTES:
            self._held = data
            if not self._flush_pending:
                self._flush_pending = True
                self.task_group.spawn(self._flush_soon)
            return
        await self._send_now(RawData(data=data, address=event.address))

    def _take_held(self) -> bytes:
        """The held bytes, no longer held (the head's timer, if any, stopped)."""
        held, self._held = self._held, b""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        return held

    async def _flush_soon(self) -> None:
        """Send the held chunks: this task's first step comes in trio's next round of tasks, after
        the app's task has given way (at its next checkpoint: it waits for something it has not
        got, or lets others run)."""
        self._flush_pending = False
        if self._held and self._head_timer is None:  # (a held head waits for its own timer)
            # Through the same send as the app's (hypercorn's lock, in call order): a write
            # the app makes meanwhile is queued behind this one.
            await self._send_now(RawData(data=self._take_held()))

    async def _release_head_later(self, timer: trio.CancelScope) -> None:
        """Send the held head (with the first chunk, if it came) once ``timer``'s deadline passes,
        unless it left before (``timer`` cancelled). Runs in the connection's nursery: it ends
        with the connection."""
        with timer:
            await trio.sleep_forever()
        if self._head_timer is timer:  # the deadline passed with the head still held
            self._head_timer = None
            held, self._held = self._held, b""
            await self._send_now(RawData(data=held))


@final
class _HeadHold(enum.Enum):
    """How a response head is held (see :class:`_H11Protocol`)."""

    SIZED = enum.auto()
    """Until the first body bytes, which the app already has."""
    STREAMED = enum.auto()
    """Until the first body bytes, at most :data:`STREAM_HEAD_HOLD_S`."""


def _install_hypercorn_fixes() -> None:
    """Make hypercorn build its connections from :class:`_ContainedTCPServer`, :class:`_H11Protocol`
    and :class:`_H2Protocol` (the names its trio worker and its ProtocolWrapper look up when called)."""
    # Names those modules import but do not export: replaced on purpose.
    hypercorn.trio.run.TCPServer = _ContainedTCPServer  # type: ignore[attr-defined]
    hypercorn.protocol.H11Protocol = _H11Protocol  # type: ignore[attr-defined]
    hypercorn.protocol.H2Protocol = _H2Protocol  # type: ignore[attr-defined]
    logging.getLogger("trio.serve_listeners").addFilter(_AcceptErrorLog())


_install_hypercorn_fixes()


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerTLS:
    """A server's certificate, and who may connect.

    Raises:
        TLSConfigError: the certificate or the key is not named.
    """

    cert_file: str
    """PEM certificate chain the server presents (its SANs name the host as clients call it)."""
    key_file: str
    """Its private key (PEM)."""
    client_ca_file: str = ""
    """PEM CA that signs client certificates; empty: clients are not asked for one."""
    require_client_cert: bool = True
    """With ``client_ca_file``: true refuses a client without a certificate from it (mutual TLS,
    ``ssl.CERT_REQUIRED``); false asks for one and verifies any presented (``CERT_OPTIONAL``)."""

    def __post_init__(self) -> None:
        if not self.cert_file or not self.key_file:
            raise TLSConfigError("TLS needs both a certificate file and its key file")


@final
class _RefusalLog:
    """Failed handshakes, logged at most once per reason per :data:`TLS_REFUSAL_LOG_INTERVAL_S`
    (OpenSSL's reasons are a fixed set of words)."""

    def __init__(self) -> None:
        self._log = LogThrottle(TLS_REFUSAL_LOG_INTERVAL_S)

    def refused(self, reason: str) -> None:
        more = self._log.due(reason)
        if more is not None:
            log.warning("TLS handshake refused: %s%s", reason, more)


#: OpenSSL's words for the refusals an operator meets, said plainly.
_PLAIN_REASONS: Final = {
    "peer did not return a certificate": "the client presented no certificate (mutual TLS is on)",
    "unexpected eof while reading": "the client closed the connection in the handshake (does it trust this server's CA?)",
    "tlsv1 alert unknown ca": "the client does not trust this server's CA",
    "sslv3 alert certificate expired": "the client says this server's certificate has expired",
    "sslv3 alert bad certificate": "the client refused this server's certificate",
    "http request": "a plain-HTTP request (an http:// URL) to this HTTPS port; answered 400, naming https",
}


#: The verified client certificate of the connection a request came on (``getpeercert()``), if any.
_PEER_CERT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("lqx_peer_cert", default=None)


def peer_common_name() -> str | None:
    """The common name of the verified client certificate of the connection the current
    request came on; None without one (plain HTTP, none presented, no client CA configured).

    Relies on hypercorn completing the TLS handshake in the connection's task and starting
    each request's task from it (tests/test_tls.py checks it): a server that does otherwise
    makes this None, which refuses, never admits.
    """
    cert = _PEER_CERT.get()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _logging_ssl_object(refusals: _RefusalLog) -> type[ssl.SSLObject]:
    """An SSLObject class that logs why a handshake failed (``SSLContext.sslobject_class``:
    trio's SSLStream calls ``do_handshake`` on it; hypercorn drops the error silently)."""

    class LoggingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
                # In the connection's task (hypercorn's TCPServer drives the handshake there and
                # spawns each request's task from it): every request on this connection sees it.
                _PEER_CERT.set(self.getpeercert() or None)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # more bytes needed: not a failure
            except ssl.SSLCertVerificationError as exc:
                refusals.refused(f"client certificate not accepted: {exc.verify_message}")
                raise
            except ssl.SSLError as exc:
                reason = (exc.reason or type(exc).__name__).lower().replace("_", " ")
                reason = _PLAIN_REASONS.get(reason, reason)
                refusals.refused(reason)
                raise

    return LoggingSSLObject


def server_ssl_context(tls: ServerTLS) -> ssl.SSLContext:
    """The server's SSL context: TLS 1.2 at least, ALPN h2 and http/1.1, the client CA and
    ``CERT_REQUIRED`` (or ``CERT_OPTIONAL``) when ``tls.client_ca_file`` is set, and every
    refused handshake logged.

    Raises:
        TLSConfigError: a file is missing, unreadable or not a certificate/key (named).
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9113 9.2: HTTP/2 needs TLS 1.2 or later
    ctx.options |= ssl.OP_NO_COMPRESSION  # RFC 9113 9.2.1, and CRIME
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    load_cert_chain(ctx, tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        load_verify_locations(ctx, tls.client_ca_file, what="the client CA file")
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    ctx.sslobject_class = _logging_ssl_object(_RefusalLog())
    return ctx


class _ServerConfig(Config):
    """hypercorn's Config with the connection limit :class:`_ContainedTCPServer` applies."""

    def __init__(self) -> None:
        super().__init__()
        self.connections = _ConnectionLimit(max_connections())


@final
class _TLSConfig(_ServerConfig):
    """hypercorn's Config with our SSL context (built once, at start: a bad file fails there)."""

    def __init__(self, context: ssl.SSLContext, tls: ServerTLS) -> None:
        super().__init__()
        self._context = context
        # hypercorn serves TLS when both are set (Config.ssl_enabled); the context is ours.
        self.certfile = tls.cert_file
        self.keyfile = tls.key_file

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._context


def transport_summary(tls: ServerTLS | None) -> str:
    """The start-up log's words for how the server is reached."""
    if tls is None:
        return (
            "plain HTTP (no certificate configured: for loopback development only; tokens cross the network in clear)"
        )
    if not tls.client_ca_file:
        return "HTTPS (HTTP/2 and HTTP/1.1; no client certificates asked)"
    mode = "required (mutual TLS)" if tls.require_client_cert else "verified when presented"
    return f"HTTPS (HTTP/2 and HTTP/1.1; client certificates from {tls.client_ca_file} {mode})"


def bind_sockets(config: Config) -> Sockets:
    """Bind and listen on every address of ``config.bind`` (and ``insecure_bind`` with TLS),
    one address at a time, so that a failure names its address.

    Raises:
        errors.Unavailable: one cannot be bound (reason ``cannot_listen``); the message names
            it and the OS's reason ("address already in use"); nothing stays bound.
    """
    ssl = config.ssl_enabled
    secure: list[socket.socket] = []
    insecure: list[socket.socket] = []
    for binds, into in ((config.bind, secure if ssl else insecure), (config.insecure_bind if ssl else [], insecure)):
        for bind in binds:
            try:
                into.extend(config._create_sockets([bind]))  # noqa: SLF001 - hypercorn's own binder, one address
            except OSError as exc:
                for sock in (*secure, *insecure):
                    sock.close()
                raise errors.Unavailable(
                    f"cannot listen on {bind}: {exc.strerror or exc}", reason="cannot_listen"
                ) from None
    for sock in (*secure, *insecure):
        sock.listen(config.backlog)
    return Sockets(secure, insecure, [])


def http_config(bind: list[str], *, graceful_timeout_s: float, tls: ServerTLS | None = None) -> Config:
    """hypercorn's configuration for hostd and the controller: ``bind`` (``host:port`` or
    ``unix:path``), requests in flight get ``graceful_timeout_s`` at a stop, idle connections
    are kept ``KEEP_ALIVE_TIMEOUT_S``, at most :func:`max_connections` are served at once; no access log, errors to the ``hypercorn.error`` logger.
    With ``tls`` every TCP bind serves HTTPS (see :func:`server_ssl_context`).

    Raises:
        TLSConfigError: ``tls`` names files that cannot be used.
    """
    config = _ServerConfig() if tls is None else _TLSConfig(server_ssl_context(tls), tls)
    if tls is None:
        config.bind = bind
    else:
        # A Unix socket is this machine's own (mode 0600): plain HTTP there, TLS on TCP.
        config.bind = [b for b in bind if not b.startswith("unix:")]
        config.insecure_bind = [b for b in bind if b.startswith("unix:")]
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
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

    Raises:
        errors.Unavailable: an address cannot be bound (in use, not allowed), before
            anything runs (reason ``cannot_listen``; the message names the address).
    """
    sockets = bind_sockets(config)
    tracked = ServedApp(app)
    async with trio.open_nursery() as nursery:
        # hypercorn.trio.serve, with the sockets bound above (it would bind them inside
        # its nurseries, where a port in use became a 70-line exception group).
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.run.worker_serve(
                # arg-type: our ASGI aliases are plain mappings, hypercorn's are TypedDicts of the same dicts.
                wrap_app(tracked, config.wsgi_max_body_size, None),  # type: ignore[arg-type]
                config,
                sockets=sockets,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        task_status.started(binds)
        await stop.wait()  # hypercorn stops accepting connections
        with trio.move_on_after(config.graceful_timeout):
            await tracked.wait_idle()
        nursery.cancel_scope.cancel()
