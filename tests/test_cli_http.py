"""The command line's HTTP client (cli/_fast.py) against servers that answer
badly: a real socket on loopback served by a thread that sends scripted bytes (what a proxy's
error page, a port that speaks another protocol, a server that dies mid-answer or one that
floods send), and the URL parsing. Every case must end in one :class:`ApiError` with a code
and a message, never a traceback or an unbounded read.

Also what ``limiquantix exec`` loads to start (the structure behind bench/cli_bench.py's
target) and its JSON codec (cli/_fast.py's dumps and loads), which must answer exactly as :mod:`json`."""

from __future__ import annotations

import ast
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import reaper

from limiquantix.cli._answer import MAX_HEADER_BYTES, loads
from limiquantix.cli._fast import VM, ApiError, Client, Endpoint, dumps
from limiquantix.protocol import ClientSettings, ConfigError

ROOT = Path(__file__).resolve().parent.parent

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

    def start(self, script: Script, tls: ssl.SSLContext | None = None) -> int:
        """A new server's port (HTTPS with ``tls``, a server context)."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self._listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
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

    with pytest.raises(ApiError, match=f"longer than {MAX_HEADER_BYTES} bytes"):
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


def test_a_stream_is_sent_before_its_answer_is_read(serve: Callable[[Script], Client]) -> None:
    """stream() returns once the request has left: the caller prepares while the server works."""
    arrived, release = threading.Event(), threading.Event()

    def script(conn: socket.socket) -> None:
        arrived.set()  # the whole request has been read by now
        release.wait(10)
        conn.sendall(STREAM_HEAD + _chunked(_envelope(0, b'{"executionId": "e1"}'), _envelope(2, b"{}")))

    client = serve(script)
    events = client.stream(VM, "ExecuteScriptStream", {"vmId": "x", "command": "true"}, timeout_s=10)
    try:
        assert arrived.wait(10), "the request did not leave before its answer was asked for"
    finally:
        release.set()
    assert list(events) == [{"executionId": "e1"}]


def test_a_stream_closed_before_it_is_read_closes_its_connection(serve: Callable[[Script], Client]) -> None:
    left: list[bytes] = []
    gone = threading.Event()

    def script(conn: socket.socket) -> None:
        left.append(conn.recv(1))  # b"": the client closed the connection
        gone.set()

    client = serve(script)
    client.stream(VM, "ExecuteScriptStream", {"vmId": "x", "command": "true"}, timeout_s=10).close()
    assert gone.wait(10)
    assert left == [b""]


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
    endpoint = Endpoint.parse(url)
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
        Endpoint.parse(url)
    with pytest.raises(ConfigError):
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
    with pytest.raises(ConfigError, match="refusing to send the API token over plain HTTP"):
        Client.from_options(url="http://127.0.0.1\\@192.0.2.1:9/", config="/dev/null")


# ------------------------------------------------------------ what exec loads to start

#: What ``limiquantix exec`` may import beyond a bare interpreter's (``python -S -c pass``)
#: and its own modules: what ``site`` imports in any environment (os and its helpers), the
#: ``__future__`` module behind ``from __future__ import annotations``, and the C modules
#: under json and socket. Not re, enum, typing, json, socket, click, rich, httpx, protobuf
#: (bench/cli_bench.py: each costs a good part of what the whole command may take).
STARTUP_EXTRAS = frozenset(
    {"os", "stat", "_stat", "posixpath", "genericpath", "_collections_abc", "__future__", "_json", "_socket"}
)


def _bare_env(tmp_path: Path) -> dict[str, str]:
    """An environment for ``python -S`` that finds the command line's sources (a tree of links,
    ``limiquantix/{cli,protocol}``, on PYTHONPATH): no site, so no editable-install finder
    (which loads pathlib, re and __future__) hides what the command imports; no config file."""
    tree = tmp_path / "src" / "limiquantix"
    tree.mkdir(parents=True)
    for package in ("cli", "protocol"):
        (tree / package).symlink_to(ROOT / package)
    return reaper.marked(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(tree.parent),
            "XDG_CONFIG_HOME": str(tmp_path),
        }
    )


def _imported(importtime: str) -> set[str]:
    """The modules a ``python -X importtime`` run's stderr names."""
    names = set()
    for line in importtime.splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            names.add(line.rpartition("|")[2].strip())
    return names


@pytest.mark.parametrize(
    ("launcher", "floor", "argv", "request_body", "config_file", "https"),
    [
        ("script", ["-c", "pass"], ["exec", "vm-1", "--", "true"], {"vmId": "vm-1", "command": "exec true"}, False, False),
        ("script", ["-c", "pass"], ["exec", "-t", "5", "vm-1", "--", "printf", "%s"],
         {"vmId": "vm-1", "command": "printf", "args": ["%s"], "timeoutSeconds": 5}, False, False),
        ("script", ["-c", "pass"], ["sh", "vm-1", "echo hi"], {"vmId": "vm-1", "command": "echo hi"}, False, False),
        # The URL and token from the config file make run writes (read without tomllib).
        ("script", ["-c", "pass"], ["exec", "vm-1", "--", "true"], {"vmId": "vm-1", "command": "exec true"}, True, False),
        ("-m", ["-m", "__hello__"], ["exec", "vm-1", "--", "true"], {"vmId": "vm-1", "command": "exec true"}, False, False),
        # https with a CA file, as make run configures it: ssl's own modules, nothing more.
        ("script", ["-c", "import ssl"], ["exec", "vm-1", "--", "true"],
         {"vmId": "vm-1", "command": "exec true"}, False, True),
    ],
)  # fmt: skip
def test_exec_starts_without_loading_what_it_does_not_need(
    servers: Servers,
    tmp_path: Path,
    launcher: str,
    floor: list[str],
    argv: list[str],
    request_body: object,
    config_file: bool,
    https: bool,
) -> None:
    """A structural guard of exec's start-up (timings belong to bench/cli_bench.py): the
    installed ``limiquantix`` (the script pip copies from cli/limiquantix, not a console-script
    wrapper, which imports re) and ``python -m limiquantix.cli`` run a whole exec against a
    server, output and exit code as always, importing nothing beyond :data:`STARTUP_EXTRAS`
    and our own modules, also when the config file names the controller; over https (a CA file,
    the certificate verified) nothing beyond what ``import ssl`` loads. ``python -S`` with the
    sources on PYTHONPATH: no site, so no editable-install finder (which loads pathlib and re)
    hides what the command imports."""
    events = (
        _envelope(0, b'{"executionId": "e1"}'),
        _envelope(0, b'{"output": {"seq": 1, "stream": "stdout", "text": "out\\n"}}'),
        _envelope(0, b'{"output": {"seq": 2, "stream": "stderr", "text": "err\\n"}}'),
        _envelope(0, b'{"result": {"exitCode": 3, "exitReason": "exited", "executionId": "e1"}}'),
        _envelope(2, b"{}"),
    )
    scheme, server_tls, ca_env = "http", None, {}
    if https:
        from limiquantix.controller import pki

        pki.create_ca(tmp_path)
        pki.issue(tmp_path, "srv", pki.CertKind.SERVER, ip_addresses=["127.0.0.1"])
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
        scheme, ca_env = "https", {"LQX_CA_FILE": str(tmp_path / "ca.pem")}
    port = servers.start(_send(STREAM_HEAD + _chunked(*events)), server_tls)
    env = _bare_env(tmp_path)
    if config_file:
        (tmp_path / "limiquantix").mkdir()
        (tmp_path / "limiquantix" / "tui.toml").write_text(
            f'# Written by make run\nurl = "http://127.0.0.1:{port}"\ntoken = "t0k"\n[profiles.other]\nurl = "https://x"\n'
        )
    else:
        env.update(LQX_CONTROLLER_URL=f"{scheme}://127.0.0.1:{port}", LQX_TOKEN="t0k", **ca_env)
    program = (
        [str(Path(sys.executable).with_name("limiquantix"))] if launcher == "script" else ["-m", "limiquantix.cli"]
    )
    python = [sys.executable, "-S", "-X", "importtime"]
    done = subprocess.run([*python, *program, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (3, "out\n"), done.stderr
    assert "err\n" in done.stderr.splitlines(keepends=True)
    head, _, body = servers.requests[0].partition(b"\r\n\r\n")
    assert b"Content-Type: application/connect+json" in head and b"Authorization: Bearer t0k" in head
    assert json.loads(body[5:]) == request_body
    bare = subprocess.run([*python, *floor], env=env, capture_output=True, text=True, timeout=60, check=True)
    extra = _imported(done.stderr) - _imported(bare.stderr) - STARTUP_EXTRAS
    assert {name for name in extra if name.partition(".")[0] != "limiquantix"} == set()
    assert not {name for name in extra if name.startswith(("limiquantix.protocol._gen", "limiquantix.protocol.rpc"))}


#: What follows a command once its request has left (its output, exit code and messages)
#: and what reads the answer (cli/_answer.py, and the C scanner under it): loaded while the
#: controller works, never before the request is sent.
AFTER_THE_SEND = frozenset(
    {
        "limiquantix.cli._answer",
        "limiquantix.cli._exec",
        "limiquantix.cli._output",
        "limiquantix.cli._exitcodes",
        "_json",
    }
)
#: Our modules loaded before the request leaves, and no others: each costs the measured start-up
#: about 0.2 ms (bench/cli_bench.py), so one more is a choice to make, not an accident.
BEFORE_THE_SEND = frozenset(
    {
        "limiquantix",
        "limiquantix.cli",
        "limiquantix.cli._fast",
        "limiquantix.protocol",
        "limiquantix.protocol._configfile",
    }
)
#: Loaded by none of exec's modules when the command simply exited: the module behind ``from
#: __future__ import annotations``, and the words for a command that did not exit.
NEVER_FOR_AN_EXIT = frozenset({"__future__", "limiquantix.protocol._exits"})


def test_exec_sends_its_request_before_loading_what_follows_the_command(servers: Servers, tmp_path: Path) -> None:
    """The modules loaded when the request leaves and when the answer is first read (a socket
    whose sendall and recv note them), and at the end: what only follows the command
    (:data:`AFTER_THE_SEND`) is loaded after the send and before the answer is awaited, so it
    costs no wall time (bench/cli_bench.py), and :data:`NEVER_FOR_AN_EXIT` not at all; of ours,
    only :data:`BEFORE_THE_SEND` before the send; the program works as always."""
    events = (
        _envelope(0, b'{"output": {"seq": 1, "stream": "stdout", "text": "out\\n"}}'),
        _envelope(0, b'{"result": {"exitCode": 3, "exitReason": "exited"}}'),
        _envelope(2, b"{}"),
    )
    port = servers.start(_send(STREAM_HEAD + _chunked(*events)))
    code = (
        "import _socket, os, sys\n"
        "seen, awaited = [], []\n"
        "class Noting(_socket.socket):\n"
        "    def sendall(self, *args):\n"
        "        seen.append(sorted(sys.modules))\n"
        "        return super().sendall(*args)\n"
        "    def recv(self, *args):\n"
        "        if not awaited:\n"
        "            awaited.append(sorted(sys.modules))\n"
        "        return super().recv(*args)\n"
        "_socket.socket = Noting\n"
        "from limiquantix.cli._fast import main\n"
        "code = main(['exec', 'vm-1', '--', 'true'])\n"
        "print(repr((code, seen, awaited, sorted(sys.modules))), file=sys.stderr)\n"
    )
    env = {**_bare_env(tmp_path), "LQX_CONTROLLER_URL": f"http://127.0.0.1:{port}", "LQX_TOKEN": "t0k"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "out\n"
    exit_code, seen, awaited, at_exit = ast.literal_eval(done.stderr.splitlines()[-1])
    assert exit_code == 3
    assert len(seen) == 1, "one request, sent in one piece"
    assert AFTER_THE_SEND.isdisjoint(seen[0]), "loaded before the request left"
    assert {name for name in seen[0] if name.partition(".")[0] == "limiquantix"} == BEFORE_THE_SEND
    assert AFTER_THE_SEND.issubset(awaited[0]), "loaded once the answer was there"
    assert AFTER_THE_SEND.issubset(at_exit)
    assert NEVER_FOR_AN_EXIT.isdisjoint(at_exit)


# ------------------------------------------------------------------ cli/_fast.py's JSON

JSON_VALUES = [
    {},
    [],
    "",
    "printable ASCII ~!@#$%^&*()_+`-={}|[]:;'<>?,./ as it is",
    "\x7f",  # ASCII, not printable: left to _json (which writes it as it is)
    "a \\ backslash",
    'a " quote',
    "a\ttab",
    'é \x00 \x1f \u2028 \U0001f600 \\ "',
    "\ud800",  # a lone surrogate (what a \\ud800 escape reads as)
    {"vmId": "web-1", "command": "printf", "args": ["%s|", "a b"], "timeoutSeconds": 5, "environment": {"A": "1"}},
    {"a": [1, -2, 10**30, True, False, None, {"b": ("c", [])}]},
    (1, 2),
]
#: Values dumps() leaves to json.dumps (same text, or json's error).
JSON_LEFT_TO_JSON = [1.5, float("nan"), {1: "an int key"}, {"f": -0.0}, {None: 1}, True.__class__(1)]


@pytest.mark.parametrize("value", JSON_VALUES + JSON_LEFT_TO_JSON)
def test_fastjson_dumps_as_json_does(value: object) -> None:
    assert dumps(value) == json.dumps(value)


def test_fastjson_refuses_to_dump_what_json_refuses() -> None:
    circular: list[object] = []
    circular.append(circular)
    for value in (object(), {(1,): 2}, circular, b"bytes"):
        with pytest.raises((TypeError, ValueError)) as ours:
            dumps(value)
        with pytest.raises((TypeError, ValueError)) as theirs:
            json.dumps(value)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


JSON_DOCS = [
    b'{"a": 1}',
    b' \t\r\n[1, -2.5e3, "x", true, false, null] \n',
    b'"\\ud800\\u00e9\\n"',
    b"-0",
    b"1e400",
    b"NaN",
    b"[-Infinity, Infinity]",
    '{"é": "ü 😀"}'.encode(),
    b'\xef\xbb\xbf{"bom": 1}',  # json reads a UTF-8 BOM in bytes
    '{"utf16": 1}'.encode("utf-16"),
    '{"text": 1}',
]
JSON_BAD_DOCS = [
    b"",
    b" ",
    b"{",
    b'{"a": }',
    b"[1,]",
    b'{"a": 1} x',
    b"[1] [2]",
    b'["\x01"]',  # a control character in a string
    b"\xff\xfe\xfd",
    b"[" * 100_000,
    b"1" * 5_000,  # over the int digits limit
    b"tru",
    b'"\\ud800',
]


@pytest.mark.parametrize("doc", JSON_DOCS)
def test_fastjson_loads_as_json_does(doc: bytes | str) -> None:
    assert repr(loads(doc)) == repr(json.loads(doc))  # repr: NaN == NaN


@pytest.mark.parametrize("doc", JSON_BAD_DOCS, ids=lambda doc: repr(doc[:12]))
def test_fastjson_refuses_what_json_refuses_with_its_error(doc: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as ours:
        loads(doc)
    with pytest.raises((ValueError, RecursionError)) as theirs:
        json.loads(doc)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_fastjson_errors_before_json_is_loaded(tmp_path: Path) -> None:
    """In a fresh process (json not loaded: the C scanner cannot build its error then)."""
    code = (
        "import sys\n"
        "from limiquantix.cli._answer import loads\n"
        "assert loads(b'{\"a\": [1]}') == {'a': [1]} and 'json' not in sys.modules\n"
        "for bad in (b'[\"\\x01\"]', b'{\"a\": }', b'[1] x'):\n"
        "    try:\n"
        "        loads(bad)\n"
        "    except ValueError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == [
        "JSONDecodeError Invalid control character at: line 1 column 3 (char 2)",
        "JSONDecodeError Expecting value: line 1 column 7 (char 6)",
        "JSONDecodeError Extra data: line 1 column 5 (char 4)",
    ]
