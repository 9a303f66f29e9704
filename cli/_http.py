"""The command line's HTTP: HTTP/1.1 over the stdlib's sockets (``ssl`` for https), one
request per connection, bounded reads, one deadline per call.

Why not httpx (the rpc layer's client) or ``http.client``: ``limiquantix exec`` is measured
against curl, start-up included (``bench/cli_bench.py``). Importing httpx costs about 200 ms
on the project's 2-core machine, ``http.client`` about 40 ms (it loads the ``email``
package to parse headers), ``socket`` about 20 ms (it builds its enums); this module needs
``_socket`` (the C module under ``socket``) for plain HTTP, and loads ``socket`` and ``ssl``
only for https. What it has to speak is small: a POST with a known length, an answer with a
``Content-Length`` or ``chunked`` body (hypercorn streams chunked), ``Connection: close``.

What it raises, one class per outcome the caller must tell apart (the rpc client's
table, :data:`limiquantix.protocol.rpc.TRANSPORT_ERRORS`, has the same split):

* :class:`Unreachable`: nothing was sent (refused, no route, name unknown, TLS handshake
  refused); the action did not happen.
* :class:`Broken`: the connection broke after the request may have left; the outcome is
  not known.
* :class:`TimedOut`: the deadline passed (``sent`` says whether the request had left).
* :class:`BadResponse`: the peer does not speak HTTP/1.1 as expected, or an answer is
  over its bound.
"""

from __future__ import annotations

import time

from limiquantix.protocol import split_url

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

__all__ = [
    "MAX_HEADER_BYTES",
    "BadResponse",
    "Broken",
    "Endpoint",
    "HttpError",
    "Response",
    "TimedOut",
    "Unreachable",
    "open_request",
]

#: The status line and headers of an answer: a few hundred bytes in practice.
MAX_HEADER_BYTES = 64 * 1024
#: Bytes asked of the socket per read.
_RECV_BYTES = 256 * 1024


class HttpError(Exception):
    """A request that got no usable answer (the subclass says how far it went)."""


class Unreachable(HttpError):
    """Nothing was sent: the server could not be reached."""

    def __init__(self, message: str, *, tls: bool = False) -> None:
        super().__init__(message)
        self.tls = tls


class Broken(HttpError):
    """The connection broke after the request may have been sent."""


class TimedOut(HttpError):
    """The call's deadline passed."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class BadResponse(HttpError):
    """An answer that is not HTTP/1.1 as expected, or over a bound."""


class Endpoint:
    """Where a URL points: ``http(s)://host[:port][/prefix]``."""

    __slots__ = ("tls", "host", "port", "prefix")

    def __init__(self, *, tls: bool, host: str, port: int, prefix: str) -> None:
        self.tls = tls
        self.host = host
        self.port = port
        self.prefix = prefix

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """The URL read as the plain-HTTP check reads it (one reading: the token goes to the
        host that was checked), with its path as the prefix; a query or fragment is ignored.

        Raises:
            ValueError: not an http(s) URL with a host, or one :func:`split_url` refuses.
        """
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        scheme, host, port_text, rest = split_url(url)
        if not host:
            raise ValueError(f"no host in {url!r}")
        tls = scheme == "https"
        try:
            port = int(port_text) if port_text else (443 if tls else 80)
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad port in {url!r}")
        path = rest.partition("?")[0].partition("#")[0].strip("/")
        return cls(tls=tls, host=host, port=port, prefix=f"/{path}" if path else "")

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def _remaining(deadline: float, sent: bool) -> float:
    """Raises: TimedOut: the deadline has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimedOut("no answer in time", sent=sent)
    return left


def _connect(endpoint: Endpoint, deadline: float, tls_context: Any) -> Any:
    """A connected socket (wrapped in TLS for https).

    Raises:
        Unreachable: refused, no route, unknown name, a failed handshake.
        TimedOut: the deadline passed while connecting (nothing was sent).
    """
    # An ASCII name as bytes: a str is IDNA-encoded first (by getaddrinfo and by ssl for the
    # server's name), which loads encodings.idna, stringprep and unicodedata (about 10 ms here).
    host = endpoint.host.encode("ascii") if endpoint.host.isascii() else endpoint.host
    if endpoint.tls:
        import socket
        import ssl

        try:
            # arg-type: typeshed says str; getaddrinfo, which it calls, takes bytes as well (above).
            raw = socket.create_connection((host, endpoint.port), timeout=_remaining(deadline, False))  # type: ignore[arg-type]
        except TimeoutError:
            raise TimedOut("connecting took too long", sent=False) from None
        except OSError as exc:
            raise Unreachable(exc.strerror or type(exc).__name__) from exc
        try:
            raw.settimeout(_remaining(deadline, False))
            return tls_context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLError as exc:
            raw.close()
            raise Unreachable("TLS handshake failed", tls=True) from exc
        except TimeoutError:
            raw.close()
            raise TimedOut("the TLS handshake took too long", sent=False) from None
        except OSError as exc:
            raw.close()
            raise Unreachable(exc.strerror or type(exc).__name__, tls=True) from exc
    import _socket

    try:
        infos = _socket.getaddrinfo(host, endpoint.port, 0, _socket.SOCK_STREAM)
    except OSError as exc:
        raise Unreachable(f"cannot resolve {endpoint.host}: {exc.strerror or exc}") from exc
    last: OSError | None = None
    for family, kind, proto, _name, address in infos:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(_remaining(deadline, False))
            sock.connect(address)
            return sock
        except TimeoutError:
            sock.close()
            raise TimedOut("connecting took too long", sent=False) from None
        except OSError as exc:
            sock.close()
            last = exc
    raise Unreachable((last.strerror if last else None) or "no address to connect to") from last


class _Reader:
    """Buffered reads from a socket against the call's deadline."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buf = bytearray()

    def _fill(self) -> bool:
        """Read more; False at the end of the stream.

        Raises:
            TimedOut, Broken: the deadline passed, or the connection broke.
        """
        self._sock.settimeout(_remaining(self._deadline, True))
        try:
            data = self._sock.recv(_RECV_BYTES)
        except TimeoutError:
            raise TimedOut("no answer in time", sent=True) from None
        except OSError as exc:
            raise Broken(exc.strerror or type(exc).__name__) from exc
        if not data:
            return False
        self._buf += data
        return True

    def head(self) -> bytes:
        """Everything up to the blank line ending the headers (excluded).

        Raises:
            BadResponse: over :data:`MAX_HEADER_BYTES`, or the connection closed first.
        """
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._buf[:end])
                del self._buf[: end + 4]
                return head
            if len(self._buf) > MAX_HEADER_BYTES:
                raise BadResponse(f"answer headers longer than {MAX_HEADER_BYTES} bytes")
            if not self._fill():
                raise (
                    Broken("the connection closed before an answer")
                    if not self._buf
                    else BadResponse("the answer ended inside its headers")
                )

    def line(self) -> bytes:
        """One CRLF-terminated line (a chunk size), without the CRLF.

        Raises:
            BadResponse: a line over 1 KiB, or the stream ended first.
        """
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > 1024:
                raise BadResponse("a chunk-size line longer than 1 KiB")
            if not self._fill():
                raise Broken("the answer broke off inside its body")

    def some(self, most: int) -> bytes:
        """At most ``most`` bytes (at least one); b"" at the end of the stream."""
        if not self._buf and not self._fill():
            return b""
        piece = bytes(self._buf[:most])
        del self._buf[:most]
        return piece

    def exactly(self, n: int) -> Iterator[bytes]:
        """``n`` bytes, in pieces as they arrive.

        Raises:
            Broken: the stream ended first.
        """
        while n > 0:
            piece = self.some(min(n, _RECV_BYTES))
            if not piece:
                raise Broken("the answer broke off inside its body")
            n -= len(piece)
            yield piece


class Response:
    """An answer's status and headers; its body read with :meth:`chunks` or :meth:`read`."""

    def __init__(self, sock: Any, reader: _Reader, status: int, headers: dict[str, str]) -> None:
        self._sock = sock
        self._reader = reader
        self.status = status
        self.headers = headers

    def chunks(self) -> Iterator[bytes]:
        """The body (de-chunked) as it arrives.

        Raises:
            Broken, TimedOut, BadResponse: as the connection goes.
        """
        encoding = self.headers.get("transfer-encoding", "").lower()
        if "chunked" in encoding:
            while True:
                size_text = self._reader.line().split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    return  # trailers, if any, are not needed: the connection is closed after
                yield from self._reader.exactly(size)
                if self._reader.line():
                    raise BadResponse("a chunk not followed by CRLF")
        elif "content-length" in self.headers:
            try:
                length = int(self.headers["content-length"])
            except ValueError:
                raise BadResponse("bad Content-Length") from None
            yield from self._reader.exactly(length)
        else:
            while piece := self._reader.some(_RECV_BYTES):
                yield piece

    def read(self, limit: int) -> bytes:
        """The whole body.

        Raises:
            BadResponse: more than ``limit`` bytes.
        """
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BadResponse(f"an answer larger than {limit} bytes")
        out = bytearray()
        for piece in self.chunks():
            out += piece
            if len(out) > limit:
                raise BadResponse(f"an answer larger than {limit} bytes")
        return bytes(out)

    def close(self) -> None:
        """Close the connection (a stream closed early: the server sees the client leave)."""
        try:
            self._sock.close()
        except OSError:  # already broken: nothing left to release
            pass


def open_request(
    endpoint: Endpoint,
    path: str,
    headers: dict[str, str],
    body: bytes | Iterable[bytes],
    *,
    length: int,
    deadline: float,
    tls_context: Any = None,
) -> Response:
    """POST ``body`` (``length`` bytes, or its pieces) to ``path``; the answer's head read.

    The caller closes the :class:`Response` (``try``/``finally``).

    Args:
        deadline: on ``time.monotonic()``: every socket operation waits at most until then.
        tls_context: an ``ssl.SSLContext`` for https endpoints.

    Raises:
        Unreachable, TimedOut, Broken, BadResponse: see the module's docstring.
    """
    sock = _connect(endpoint, deadline, tls_context)
    lines = [
        f"POST {endpoint.prefix}{path} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        f"Content-Length: {length}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        sock.settimeout(_remaining(deadline, False))
        sock.sendall(head + body if isinstance(body, bytes) else head)
        if not isinstance(body, bytes):
            for piece in body:
                sock.settimeout(_remaining(deadline, True))
                sock.sendall(piece)
        reader = _Reader(sock, deadline)
        status, fields = _parse_head(reader.head())
        return Response(sock, reader, status, fields)
    except TimeoutError:
        sock.close()
        raise TimedOut("no answer in time", sent=True) from None
    except OSError as exc:
        sock.close()
        # A server that answers early (an error before the whole upload) may reset the
        # connection while we still write: its answer is lost; the outcome is not known.
        raise Broken(exc.strerror or type(exc).__name__) from exc
    except BaseException:
        sock.close()
        raise


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Raises: BadResponse: not an HTTP/1.x status line."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise BadResponse(f"not an HTTP/1.1 answer: {status_line[:60]!r}")
    fields: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return int(code), fields
