"""Reading a call's answer (:mod:`._fast` sends it): the HTTP/1.1 response (its status
line and headers, a ``Content-Length`` or ``chunked`` body, bounded reads against the call's
deadline), the JSON in it, and a Connect stream's messages.

Apart from :mod:`._fast` because ``limiquantix exec`` needs none of it before its request
has left: :mod:`._fast` imports it then, while the controller works on the request, so the
about 0.4 ms it takes to load costs the command no wall time (bench/cli_bench.py; each
module before the send costs about 0.2 ms, and this one's code about as much again).

**JSON** without importing :mod:`json`: ``import json`` loads ``re`` (json.decoder,
json.scanner and json.encoder compile patterns at import), with enum, functools and
collections under it: about 15 ms. The work is done by :mod:`json`'s own C accelerator,
``_json`` (its scanner), which imports nothing. Text the scanner refuses (or that has
something after its value) is handed to ``json.loads``, which raises its ``JSONDecodeError``
(``_json`` needs ``json.decoder`` loaded to build that error), so that every answer and every
error is exactly the standard library's. ``_json`` is loaded before an answer is awaited
(:meth:`._fast.Client._answer`).
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module on every
# run, and that statement loads the __future__ module (about 0.3 ms of CPU on the project's
# machine: bench/cli_bench.py); annotations naming what only type checkers import are
# strings instead.

from ._fast import ApiError, BadResponse, Broken, TimedOut, _remaining

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator, Iterator
    from typing import Any

    from ._fast import Sent

__all__ = ["MAX_HEADER_BYTES", "Response", "Stream", "loads"]

#: The status line and headers of an answer: a few hundred bytes in practice.
MAX_HEADER_BYTES = 64 * 1024
#: Bytes asked of the socket per read.
_RECV_BYTES = 256 * 1024


class _Reader:
    """Buffered reads from a socket against the call's deadline."""

    def __init__(self, sock: "Any", deadline: float) -> None:
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

    def _until(self, mark: bytes, most: int, too_long: str) -> "bytes | None":
        """Everything up to ``mark`` (excluded; both taken from the buffer); None if the
        stream ends first.

        Raises:
            BadResponse: ``too_long``, once over ``most`` bytes have come without ``mark``.
        """
        while True:
            end = self._buf.find(mark)
            if end >= 0:
                found = bytes(self._buf[:end])
                del self._buf[: end + len(mark)]
                return found
            if len(self._buf) > most:
                raise BadResponse(too_long)
            if not self._fill():
                return None

    def head(self, deadline: "float | None" = None) -> bytes:
        """Everything up to the blank line ending the headers (excluded); read by ``deadline``
        (on ``time.monotonic()``) when it is sooner than the call's.

        Raises:
            BadResponse: over :data:`MAX_HEADER_BYTES`, or the connection closed inside them.
            Broken: the connection closed before an answer.
            TimedOut: the deadline passed first.
        """
        call_deadline = self._deadline
        if deadline is not None:
            self._deadline = min(deadline, call_deadline)
        try:
            head = self._until(b"\r\n\r\n", MAX_HEADER_BYTES, f"answer headers longer than {MAX_HEADER_BYTES} bytes")
        finally:
            self._deadline = call_deadline
        if head is None:
            if not self._buf:
                raise Broken("the connection closed before an answer")
            raise BadResponse("the answer ended inside its headers")
        return head

    def line(self) -> bytes:
        """One CRLF-terminated line (a chunk size), without the CRLF.

        Raises:
            BadResponse: a line over 1 KiB.
            Broken: the stream ended first.
        """
        line = self._until(b"\r\n", 1024, "a chunk-size line longer than 1 KiB")
        if line is None:
            raise Broken("the answer broke off inside its body")
        return line

    def some(self, most: int) -> bytes:
        """At most ``most`` bytes (at least one); b"" at the end of the stream."""
        if not self._buf and not self._fill():
            return b""
        piece = bytes(self._buf[:most])
        del self._buf[:most]
        return piece

    def exactly(self, n: int) -> "Iterator[bytes]":
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

    def __init__(self, sock: "Any", reader: _Reader, status: int, headers: dict[str, str]) -> None:
        self._sock = sock
        self._reader = reader
        self.status = status
        self.headers = headers

    def chunks(self) -> "Iterator[bytes]":
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


# ==================================================================== JSON


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``: its defaults (``int`` and
    ``float`` are the C scanner's fast paths; ``float`` reads NaN and Infinity as json does)."""

    __slots__ = ()
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


#: JSON's whitespace (json.decoder's WHITESPACE), around a value.
_BLANKS = " \t\n\r"
#: The C scanner, made on first use (:func:`_scanner`).
_scan: "Any" = None


def _scanner() -> "Any":
    """``_json``'s scanner (``_json`` imported on the first call: see the module's docstring)."""
    global _scan
    if _scan is None:
        import _json

        # typeshed types the context as a scanner; the C code reads the attributes above.
        _scan = _json.make_scanner(_Context())  # type: ignore[arg-type]
    return _scan


def loads(data: bytes | str) -> "Any":
    """``json.loads(data)``.

    Raises:
        ValueError: not one JSON value (``json.JSONDecodeError``), or bytes in no encoding
            JSON allows (``UnicodeDecodeError``).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        stripped = text.strip(_BLANKS)
        value, end = _scanner()(stripped, 0)
        if end == len(stripped):
            return value
    except (StopIteration, SystemError, ValueError, RecursionError):
        # Not UTF-8 (json also reads UTF-16 and 32, and a BOM), no value, or an error the
        # scanner can only describe with json.decoder loaded (a SystemError on 3.11 when it
        # is not): json says what it is.
        pass
    import json

    return json.loads(data)


# ==================================================================== Connect answers


def _error_from_json(data: object, fallback: str) -> ApiError:
    """A Connect error object (``{"code", "message", "details"}``) as an :class:`ApiError`."""
    if not isinstance(data, dict) or not isinstance(data.get("code"), str):
        return ApiError(fallback, "the controller answered an error that is not a Connect error object")
    reason = ""
    for detail in data.get("details") or ():
        debug = detail.get("debug") if isinstance(detail, dict) else None
        if isinstance(debug, dict) and isinstance(debug.get("reason"), str):
            reason = debug["reason"]
            break
    return ApiError(data["code"], str(data.get("message", ""))[:4096], reason)


class Stream:
    """A server-streaming call's messages (:meth:`Client.stream`), an iterator; :meth:`close`
    ends it early (closing the connection: the controller sees the client leave)."""

    __slots__ = ("_messages", "_sent")

    def __init__(self, messages: "Generator[dict[str, Any], None, None]", sent: "Sent") -> None:
        self._messages = messages
        self._sent = sent

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> "dict[str, Any]":
        """The next message.

        Raises:
            StopIteration: after the end message.
            ApiError: the answer's errors, the end message's included.
        """
        return next(self._messages)

    def close(self) -> None:
        # The connection too: messages not yet asked for have not opened the answer.
        self._messages.close()
        self._sent.close()


def _decode(data: bytes) -> "dict[str, Any]":
    """Raises: ApiError: not a JSON object."""
    try:
        value = loads(data or b"{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError("internal", "the controller streamed something that is not a JSON object")
    return value
