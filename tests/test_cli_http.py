"""The command line's HTTP client (cli/_http.py, cli/_client.py) against servers that answer
badly: a real socket on loopback served by a thread that sends scripted bytes (what a proxy's
error page, a port that speaks another protocol, a server that dies mid-answer or one that
floods send), and the URL parsing. Every case must end in one :class:`ApiError` with a code
and a message, never a traceback or an unbounded read."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from limiquantix.cli import _http
from limiquantix.cli._client import VM, ApiError, Client
from limiquantix.protocol.clientconfig import ClientConfigError, ClientSettings

Script = Callable[[socket.socket], None]


def _read_request(conn: socket.socket) -> bytes:
    """The request's head and body (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


class Servers:
    """One-connection servers on loopback: each reads one request (kept in :attr:`requests`),
    then runs its script on the connection."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []

    def start(self, script: Script) -> int:
        """A new server's port."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self._listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                self.requests.append(_read_request(conn))
                try:
                    script(conn)
                except OSError:  # the client left first: what some cases are about
                    pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        return int(listener.getsockname()[1])

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def servers() -> Iterator[Servers]:
    scripted = Servers()
    yield scripted
    scripted.close()


@pytest.fixture
def serve(servers: Servers) -> Callable[[Script], Client]:
    """``serve(script)``: a client of a new scripted server (:class:`Servers`)."""
    return lambda script: Client(ClientSettings(f"http://127.0.0.1:{servers.start(script)}", "t0k", "the test"))


def _send(data: bytes) -> Script:
    return lambda conn: conn.sendall(data)


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _envelope(flags: int, data: bytes) -> bytes:
    return bytes([flags]) + len(data).to_bytes(4, "big") + data


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_connect_error_keeps_its_code_message_and_reason(serve: Callable[[Script], Client]) -> None:
    body = b'{"code": "not_found", "message": "no VM \'x\'", "details": [{"debug": {"reason": "no_vm"}}]}'
    client = serve(_send(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
    with pytest.raises(ApiError) as info:
        client.call(VM, "GetVM", {"vmId": "x"})
    assert (info.value.code, info.value.message, info.value.reason) == ("not_found", "no VM 'x'", "no_vm")


def test_a_proxys_error_page_is_its_status_code(serve: Callable[[Script], Client]) -> None:
    page = b"<html><body>502 Bad Gateway</body></html>"
    client = serve(_send(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)))
    with pytest.raises(ApiError, match=r"HTTP 502 .* \(not a Connect answer\)") as info:
        client.call(VM, "ListVMs")
    assert info.value.code == "unavailable"


def test_another_protocol_on_the_port(serve: Callable[[Script], Client]) -> None:
    client = serve(_send(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n\r\n"))
    with pytest.raises(ApiError, match="not an HTTP/1.1 answer") as info:
        client.call(VM, "ListVMs")
    assert info.value.code == "internal"


def test_headers_without_end_are_bounded(serve: Callable[[Script], Client]) -> None:
    def flood(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(200):  # 200 KiB of headers, never the blank line
            conn.sendall(b"X-Junk: " + b"j" * 1024 + b"\r\n")

    with pytest.raises(ApiError, match=f"longer than {_http.MAX_HEADER_BYTES} bytes"):
        serve(flood).call(VM, "ListVMs")


def test_a_server_that_closes_after_the_request_may_have_run_it(serve: Callable[[Script], Client]) -> None:
    with pytest.raises(ApiError, match="its outcome is not known") as info:
        serve(lambda conn: None).call(VM, "ExecuteScript", {"vmId": "x", "command": "true"})
    assert (info.value.code, info.value.reason) == ("unavailable", "outcome_unknown")


def test_an_answer_cut_in_its_body(serve: Callable[[Script], Client]) -> None:
    client = serve(_send(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"vms": ['))
    with pytest.raises(ApiError, match="broke the connection") as info:
        client.call(VM, "ListVMs")
    assert info.value.reason == "outcome_unknown"


def test_a_unary_answer_that_is_not_a_json_object(serve: Callable[[Script], Client]) -> None:
    client = serve(_send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"))
    with pytest.raises(ApiError, match="not a JSON object"):
        client.call(VM, "ListVMs")


def test_a_stream_without_its_end_message(serve: Callable[[Script], Client]) -> None:
    client = serve(_send(STREAM_HEAD + _chunked(_envelope(0, b'{"executionId": "e1"}'))))
    events = client.stream(VM, "ExecuteScriptStream", {"vmId": "x", "command": "true"}, timeout_s=10)
    assert next(events) == {"executionId": "e1"}
    with pytest.raises(ApiError, match="ended without its end message") as info:
        next(events)
    assert info.value.reason == "outcome_unknown"


def test_a_streams_end_message_error_is_raised(serve: Callable[[Script], Client]) -> None:
    end = b'{"error": {"code": "unavailable", "message": "node gone"}}'
    client = serve(_send(STREAM_HEAD + _chunked(_envelope(0, b"{}")[:3], _envelope(0, b"{}")[3:], _envelope(2, end))))
    events = client.stream(VM, "ExecuteScriptStream", {"vmId": "x", "command": "true"}, timeout_s=10)
    assert next(events) == {}  # an envelope cut across chunks is read whole
    with pytest.raises(ApiError, match="node gone"):
        next(events)


def test_a_streamed_message_claiming_a_huge_size_is_refused_before_it_is_read(
    serve: Callable[[Script], Client],
) -> None:
    client = serve(_send(STREAM_HEAD + _chunked(b"\x00\xff\xff\xff\xff")))
    with pytest.raises(ApiError, match="streamed message over") as info:
        list(client.stream(VM, "ExecuteScriptStream", {"vmId": "x"}, timeout_s=10))
    assert info.value.code == "resource_exhausted"


def test_a_compressed_message_that_was_not_asked_for(serve: Callable[[Script], Client]) -> None:
    client = serve(_send(STREAM_HEAD + _chunked(_envelope(1, b"\x1f\x8b"))))
    with pytest.raises(ApiError, match="compressed"):
        list(client.stream(VM, "ExecuteScriptStream", {"vmId": "x"}, timeout_s=10))


def test_bad_chunk_sizes(serve: Callable[[Script], Client]) -> None:
    client = serve(_send(STREAM_HEAD + b"zz\r\nabc\r\n"))
    with pytest.raises(ApiError, match="bad chunk size"):
        list(client.stream(VM, "ExecuteScriptStream", {"vmId": "x"}, timeout_s=10))


def test_no_answer_within_the_deadline(serve: Callable[[Script], Client]) -> None:
    release = threading.Event()
    client = serve(lambda conn: release.wait(10))
    try:
        with pytest.raises(ApiError, match="did not answer ExecuteScript within 0.3 s") as info:
            client.call(VM, "ExecuteScript", {"vmId": "x", "command": "true"}, timeout_s=0.3)
        assert (info.value.code, info.value.reason) == ("deadline_exceeded", "outcome_unknown")
    finally:
        release.set()


def test_nothing_listening_means_nothing_was_sent() -> None:
    with socket.socket() as s:  # a port the OS picked, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(ClientSettings(f"http://127.0.0.1:{port}", "t0k", "the test"))
    with pytest.raises(ApiError, match="cannot reach the controller .* nothing was sent") as info:
        client.call(VM, "ListVMs")
    assert (info.value.code, info.value.reason) == ("unavailable", "unreachable")


@pytest.mark.parametrize(
    ("url", "parsed", "host_header"),
    [
        ("http://127.0.0.1:8080", (False, "127.0.0.1", 8080, ""), "127.0.0.1:8080"),
        ("https://ctl.example.com/api/", (True, "ctl.example.com", 443, "/api"), "ctl.example.com"),
        ("http://[::1]:9/", (False, "::1", 9, ""), "[::1]:9"),
        ("http://user@host", (False, "host", 80, ""), "host"),
        ("http://h/a/b/?x=1#f", (False, "h", 80, "/a/b"), "h"),
        # The authority ends at # or ?: the host is the one the plain-HTTP check read.
        ("http://127.0.0.1:8080#@192.0.2.1:9/", (False, "127.0.0.1", 8080, ""), "127.0.0.1:8080"),
        ("http://127.0.0.1?@192.0.2.1", (False, "127.0.0.1", 80, ""), "127.0.0.1"),
    ],
)
def test_endpoint_parse(url: str, parsed: tuple[bool, str, int, str], host_header: str) -> None:
    endpoint = _http.Endpoint.parse(url)
    assert (endpoint.tls, endpoint.host, endpoint.port, endpoint.prefix) == parsed
    assert endpoint.host_header == host_header


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x", "http://", "http://h:port", "http://h:0", "http://h:70000", "x", "http://[::1", "http://[::1]x",
        # Parsers differ on these (a backslash is a / to a browser, urllib drops tabs): refused.
        "http://127.0.0.1\\@192.0.2.1/", "http://127.0.0.1\t@192.0.2.1/", "http://a b/",
    ],
)  # fmt: skip
def test_endpoint_parse_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        _http.Endpoint.parse(url)
    with pytest.raises(ClientConfigError):
        Client(ClientSettings(url, "t0k", "the test"))


def test_the_token_goes_to_the_host_the_plain_http_check_read(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loopback check and the connection read a URL alike: before, the check read
    ``127.0.0.1`` (the authority ends at ``#``) and the connection went to the host after the
    ``@``, sending the token in clear to another machine."""
    answer = b'{"vms": []}'
    port = servers.start(_send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)))
    monkeypatch.setenv("LQX_TOKEN", "t0k")
    client = Client.from_options(url=f"http://127.0.0.1:{port}#@192.0.2.1:9/", config="/dev/null")
    assert client.call(VM, "ListVMs") == {"vms": []}
    assert b"Authorization: Bearer t0k" in servers.requests[0]
    with pytest.raises(ClientConfigError, match="refusing to send the API token over plain HTTP"):
        Client.from_options(url="http://127.0.0.1\\@192.0.2.1:9/", config="/dev/null")
