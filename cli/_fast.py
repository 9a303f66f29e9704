"""The start of the ``limiquantix`` program, ``exec``/``sh`` up to their request leaving, and
the controller's public API as the command line calls it.

Everything ``limiquantix exec VM -- true`` runs before its request is sent is here: the
program's entry (:func:`entry`), the global and exec/sh option tables (declared once: click
builds its commands from them in :mod:`._app`, and :func:`parse` reads exec/sh command lines
with them, so the two cannot drift; a test compares them on many command lines), the parse,
the request, and the call itself (:class:`Client`: Connect JSON, unary and server streaming,
over HTTP/1.1, exactly what a third-party script would send; nothing here is private to the
project). What follows the command once the request has left (its output, its exit code, the
error messages) is in :mod:`._exec`, and reading a call's answer (the HTTP response, JSON
decoding, a stream's messages) in :mod:`._answer`, both imported then: the controller needs
about 15 ms to answer, and whatever is imported or prepared meanwhile costs no wall time. That
wall time is measured against curl, start-up included (bench/cli_bench.py), and each module
on the path costs about 0.2 ms of CPU (found, read, unmarshalled, run): hence one module here
for what would otherwise be five (the entry, the options, the parse, the request, the HTTP
client). Every other command (click's, :mod:`._app`) calls the controller through the same
:class:`Client`.

A command line of the forms ``[GLOBAL OPTIONS] exec [OPTIONS] VM [--] ARGV...`` and
``[GLOBAL OPTIONS] sh [OPTIONS] VM SCRIPT`` is parsed here and run at once; anything else
(``--help``, a typo, an option spelled another way such as ``-t5``, shell completion)
returns None from :func:`run` and click handles it, errors and help included. Importing
click costs about 45 ms on the project's machine, several times what the rest of an
``exec`` takes.

The call, in three layers, one section each: the HTTP/1.1 exchange, JSON, and the Connect
calls, up to a request leaving.

**HTTP/1.1** over the stdlib's sockets (``ssl`` for https), one request per connection,
bounded reads, one deadline per call. Not httpx (the rpc layer's client: about 200 ms to
import on the project's 2-core machine) nor ``http.client`` (about 40 ms: it loads the
``email`` package to parse headers); ``socket`` alone costs about 20 ms (it builds its
enums): plain HTTP needs ``_socket`` (the C module under it), and ``socket`` and ``ssl`` load
only for https. What it has to speak is small: a POST with a known length, an answer with a
``Content-Length`` or ``chunked`` body (hypercorn streams chunked), ``Connection: close``.
A request is sent (:func:`send_request`) before its answer is awaited (:meth:`Sent.response`,
which reads it with :mod:`._answer`),
so a caller can do its other work while the server does its own. What it raises, one class
per outcome the caller must tell apart (the rpc client's table,
:data:`limiquantix.protocol.rpc.TRANSPORT_ERRORS`, has the same split):

* :class:`Unreachable`: nothing was sent (refused, no route, name unknown, TLS handshake
  refused); the action did not happen.
* :class:`Broken`: the connection broke after the request may have left; the outcome is
  not known.
* :class:`TimedOut`: the deadline passed (``sent`` says whether the request had left).
* :class:`BadResponse`: the peer does not speak HTTP/1.1 as expected, or an answer is
  over its bound.

**JSON** without importing :mod:`json`: ``import json`` loads ``re`` (json.decoder,
json.scanner and json.encoder compile patterns at import), with enum, functools and
collections under it: about 15 ms. The work is done by :mod:`json`'s own C accelerator,
``_json`` (its string encoder here, its scanner in :mod:`._answer`), which imports nothing.
Anything outside the common case goes to :mod:`json` itself, so that every request is exactly
the standard library's: a value that is not plain dicts, lists, strings, ints, bools and None
is encoded by ``json.dumps``. ``_json`` itself is loaded once a request has left, before its
answer is awaited: a request whose strings are plain printable ASCII (``limiquantix exec``'s,
as a rule) is encoded without it, so it loads while the controller works on the request, not
once the answer is there.

**Connect calls**: every failure is one :class:`ApiError` with a Connect code
(``unavailable``, ``unauthenticated``, ``not_found`` ...), the controller's message and its
``reason``, so that commands have one thing to catch and :mod:`._exitcodes` one thing to map.
Transport failures get the rpc layer's codes and reasons (``unavailable`` ``unreachable`` when
nothing was sent, ``outcome_unknown`` once the request may have run): see
:mod:`limiquantix.protocol.rpc`.
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

import os
import sys
import time

from limiquantix.protocol import (
    ClientSettings,
    ConfigError,
    command_budget_s,
    parse_request_timeout,
    read_config,
    resolve,
    split_url,
)

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Mapping, Sequence
    from typing import Any, NoReturn

    from ._answer import Response, Stream

    #: (global options, command, command options, positional arguments)
    Parsed = tuple[dict[str, Any], str, dict[str, Any], list[str]]

__all__ = [
    "ADMIN",
    "ApiError",
    "BadResponse",
    "Broken",
    "Client",
    "EXEC_OPTIONS",
    "Endpoint",
    "FLEET",
    "GLOBAL_OPTIONS",
    "HttpError",
    "MAX_MESSAGE_BYTES",
    "MAX_TIMEOUT_S",
    "NODES",
    "Opt",
    "REQUEST_TIMEOUT_HINT",
    "Sent",
    "TimedOut",
    "Unreachable",
    "VM",
    "by_name",
    "dumps",
    "entry",
    "exec_body",
    "exec_command",
    "given",
    "main",
    "parse",
    "parse_env_pair",
    "parse_timeout",
    "run",
    "send_request",
    "shell_quote",
]

#: Our exit code when stdout is a closed pipe (a shell's for SIGPIPE: 128 + 13).
_BROKEN_PIPE = 141


# ------------------------------------------------------------------------ the program


def _run(argv: list[str]) -> tuple[int, bool]:
    """Run one command line: its exit code, and whether the fast path (exec/sh) ran it.

    Output to a closed pipe (``limiquantix vms | head -1``) ends quietly, like other tools.
    """
    fast = False
    try:
        code = run(argv)
        fast = code is not None
        if code is None:
            from ._app import run_click

            code = run_click(argv)
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        # Python would complain again while flushing stdout at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _BROKEN_PIPE, fast
    return code, fast


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` by default); its exit code."""
    return _run(sys.argv[1:] if argv is None else argv)[0]


def entry() -> "NoReturn":
    """The ``limiquantix`` program: run ``sys.argv[1:]`` and exit with its code.

    After exec/sh the process ends at once (``os._exit``, stdout and stderr flushed): the
    interpreter's teardown (module cleanup, the garbage collector's last passes) costs about
    3 ms, and nothing on that path needs it: no thread, no atexit handler, no file left open
    for writing. Click's commands exit normally (rich, progress threads, files written by
    ``cp``).
    """
    code, fast = _run(sys.argv[1:])
    if fast:
        os._exit(code)
    sys.exit(code)


# ------------------------------------------------------------------------ the options


#: The agent's own ceiling for a command's timeout (exec_max_timeout_s).
MAX_TIMEOUT_S = 86400


class Opt:
    """One option: its names, the parameter it sets, whether it takes a value, its help."""

    __slots__ = ("names", "dest", "value", "multiple", "help", "metavar", "envvar")

    def __init__(
        self,
        *names: str,
        dest: str,
        value: bool = True,
        multiple: bool = False,
        help: str,  # noqa: A002 - click's name
        metavar: str = "",
        envvar: str = "",
    ) -> None:
        self.names = names
        self.dest = dest
        self.value = value
        self.multiple = multiple
        self.help = help
        self.metavar = metavar
        self.envvar = envvar


GLOBAL_OPTIONS: tuple[Opt, ...] = (
    Opt("--url", dest="url", metavar="URL", help="controller URL (env LQX_CONTROLLER_URL; else the config file)"),
    Opt(
        "--token-file",
        dest="token_file",
        metavar="FILE",
        help="read the API token from FILE (else env LQX_TOKEN, else the config file); never --token",
    ),
    Opt(
        "--ca-file",
        dest="ca_file",
        metavar="FILE",
        help="CA the controller's HTTPS certificate must chain to (env LQX_CA_FILE)",
    ),
    Opt(
        "--insecure",
        dest="insecure",
        value=False,
        help="send the token over plain http:// to another machine (anyone on the path can read it)",
    ),
    Opt("--profile", dest="profile", metavar="NAME", help="the config file's [profiles.NAME] (env LQX_PROFILE)"),
    Opt("--config", dest="config", metavar="FILE", help="config file (default ~/.config/limiquantix/tui.toml)"),
    Opt(
        "--request-timeout",
        dest="request_timeout",
        metavar="SECONDS",
        help="how long each call waits for the controller's answer, then we exit 69 (default 15; the config "
        "file's request_timeout_s); exec/sh wait for their command (its --timeout + 10 s), cp and audit "
        "exports at least 300 s, once their answer has started (within this), run and audit --follow apply "
        "it to each poll",
    ),
)

EXEC_OPTIONS: tuple[Opt, ...] = (
    Opt(
        "-t",
        "--timeout",
        dest="timeout",
        metavar="SECONDS",
        help=f"seconds the command may run, then it is killed and we exit 124 (0: the agent's default, 60; at most {MAX_TIMEOUT_S})",
    ),
    Opt("-u", "--user", dest="user", metavar="USER", help="run as this guest user (default: the agent's, root)"),
    Opt("--cwd", dest="cwd", metavar="DIR", help="working directory in the guest"),
    Opt(
        "-e",
        "--env",
        dest="env",
        multiple=True,
        metavar="NAME=VALUE",
        help="an environment variable for the command (repeatable)",
    ),
)


def parse_timeout(text: str) -> int:
    """Raises: ValueError: not an integer in 0..MAX_TIMEOUT_S."""
    value = int(text)
    if not 0 <= value <= MAX_TIMEOUT_S:
        raise ValueError(f"{value} is not in 0..{MAX_TIMEOUT_S}")
    return value


def parse_env_pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` → (name, value).

    Raises:
        ValueError: no ``=``, or an empty name.
    """
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r} is not NAME=VALUE")
    return name, value


def by_name(options: "Iterable[Opt]") -> dict[str, Opt]:
    """Every name of ``options`` → its option."""
    return {name: opt for opt in options for name in opt.names}


# ------------------------------------------------------------------------ the parse


def _option(argv: "Sequence[str]", i: int, table: dict[str, Opt], into: "dict[str, Any]") -> int | None:
    """Parse the option at ``argv[i]`` into ``into``; the next index, or None if click must."""
    token = argv[i]
    name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
    opt = table.get(name)
    if opt is None:
        return None
    if not opt.value:
        if eq:
            return None
        into[opt.dest] = True
        return i + 1
    if eq:
        i += 1
    elif i + 1 < len(argv):
        value, i = argv[i + 1], i + 2
    else:
        return None
    if opt.multiple:
        into.setdefault(opt.dest, []).append(value)
    else:
        into[opt.dest] = value
    return i


def parse(argv: "Sequence[str]") -> "Parsed | None":
    """An exec/sh command line, as click would read it; None for anything else."""
    glob: dict[str, Any] = {}
    table = by_name(GLOBAL_OPTIONS)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        nxt = _option(argv, i, table, glob)
        if nxt is None:
            return None
        i = nxt
    if i >= len(argv) or argv[i] not in ("exec", "sh"):
        return None
    if "request_timeout" in glob:
        try:
            parse_request_timeout(glob["request_timeout"])
        except ValueError:
            return None  # click says what is wrong with it
    command, i = argv[i], i + 1
    opts: dict[str, Any] = {}
    table = by_name(EXEC_OPTIONS)
    positional: list[str] = []
    while i < len(argv):
        token = argv[i]
        if token == "--":
            positional.extend(argv[i + 1 :])
            break
        if token.startswith("-") and token != "-":
            nxt = _option(argv, i, table, opts)
            if nxt is None:
                return None
            i = nxt
            continue
        positional.append(token)
        i += 1
    if len(positional) < 2 or (command == "sh" and len(positional) != 2):
        return None
    try:
        if "timeout" in opts:
            opts["timeout"] = parse_timeout(opts["timeout"])
        if "env" in opts:
            opts["env"] = [parse_env_pair(pair) for pair in opts["env"]]
    except ValueError:
        return None  # click says what is wrong with it
    return glob, command, opts, positional


# ------------------------------------------------------------------------ the request


#: What a word may hold and need no quotes in a POSIX shell (shlex.quote's set: ``\w``
#: in ASCII, and ``@%+=:,./-``).
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """``shlex.quote(word)``: the word as a POSIX shell reads it back. Not shlex's own: its
    module imports ``re``, which ``exec PROG``'s start-up does not otherwise pay for."""
    if word and _SHELL_SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def exec_body(
    vm: str,
    command: str,
    args: "Sequence[str]",
    *,
    timeout_s: int,
    user: str = "",
    cwd: str = "",
    env: "Mapping[str, str] | None" = None,
) -> "dict[str, Any]":
    """An ExecuteScriptRequest in proto3 JSON: ``command`` + ``args`` is an argv, ``command``
    alone a shell script."""
    return {
        "vmId": vm,
        "command": command,
        **given(
            args=list(args),
            timeoutSeconds=timeout_s,
            runAsUser=user,
            workingDirectory=cwd,
            environment=dict(env or {}),
        ),
    }


def exec_command(
    options: "Mapping[str, Any]",
    command: str,
    vm: str,
    argv: "Sequence[str]",
    *,
    timeout_s: int = 0,
    user: str = "",
    cwd: str = "",
    env: "Mapping[str, str] | None" = None,
) -> int:
    """``exec`` (``argv`` is the command) or ``sh`` (``argv[0]`` is the script, ``-``: read
    from stdin) with the global ``options``: the exit code, every failure of ours said on
    stderr and exited 125 (the guest's codes are the command's).

    The request leaves first; :mod:`._exec`, which follows the command, is imported after.
    """
    try:
        client = Client.from_options(**options)
        if command == "sh":
            script = sys.stdin.read() if argv[0] == "-" else argv[0]
            body = exec_body(vm, script, (), timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        elif len(argv) == 1:
            # The API runs an argv only when it has arguments (``command`` alone is a shell
            # script), so a lone program goes through the guest's shell, which execs it.
            body = exec_body(vm, f"exec {shell_quote(argv[0])}", (), timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        else:
            body = exec_body(vm, argv[0], argv[1:], timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        events = client.stream(VM, "ExecuteScriptStream", body, timeout_s=command_budget_s(timeout_s))
    except (ConfigError, ApiError) as exc:
        from ._exec import cli_error

        return cli_error(exc)
    from ._exec import follow  # while the controller works on the request

    return follow(events)


def run(argv: "Sequence[str]") -> int | None:
    """Run an exec/sh command line; its exit code, or None when click must handle it."""
    if os.environ.get("_LIMIQUANTIX_COMPLETE"):
        return None
    parsed = parse(argv)
    if parsed is None:
        return None
    glob, command, opts, positional = parsed
    return exec_command(
        glob,
        command,
        positional[0],
        positional[1:],
        timeout_s=opts.get("timeout", 0),
        user=opts.get("user", ""),
        cwd=opts.get("cwd", ""),
        env=dict(opts.get("env", ())),
    )


# ==================================================================== HTTP/1.1


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
    def parse(cls, url: str) -> "Endpoint":
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


def _connect(endpoint: Endpoint, deadline: float, tls_context: "Any") -> "Any":
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


class Sent:
    """A request that has left (:func:`send_request`): its answer is read with :meth:`response`.

    The caller closes it, or the :class:`Response` (the same connection).
    """

    __slots__ = ("_sock", "_deadline")

    def __init__(self, sock: "Any", deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def response(self, head_deadline: float | None = None) -> "Response":
        """The answer's head read (its body is read from the :class:`~._answer.Response`),
        by ``head_deadline`` (on ``time.monotonic()``) when it is sooner than the call's.

        Raises:
            TimedOut, Broken, BadResponse: see the module's docstring (the connection is
                closed).
        """
        from ._answer import Response, _parse_head, _Reader  # once the request has left

        reader = _Reader(self._sock, self._deadline)
        try:
            status, fields = _parse_head(reader.head(head_deadline))
        except BaseException:
            self.close()
            raise
        return Response(self._sock, reader, status, fields)

    def close(self) -> None:
        """Close the connection (the server sees the client leave)."""
        try:
            self._sock.close()
        except OSError:  # already broken: nothing left to release
            pass


def send_request(
    endpoint: Endpoint,
    path: str,
    headers: dict[str, str],
    body: "bytes | Iterable[bytes]",
    *,
    length: int,
    deadline: float,
    connect_deadline: float | None = None,
    tls_context: "Any" = None,
) -> Sent:
    """POST ``body`` (``length`` bytes, or its pieces) to ``path``; returns once it has left.

    Args:
        deadline: on ``time.monotonic()``: every socket operation waits at most until then.
        connect_deadline: the same for connecting (and the TLS handshake), when sooner.
        tls_context: an ``ssl.SSLContext`` for https endpoints.

    Raises:
        Unreachable, TimedOut, Broken: see the module's docstring.
    """
    sock = _connect(endpoint, deadline if connect_deadline is None else min(deadline, connect_deadline), tls_context)
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
    return Sent(sock, deadline)


# ==================================================================== JSON


def _quote(text: str) -> str:
    """``text`` as a JSON string, as ``json.dumps`` writes it (``ensure_ascii``): printable
    ASCII with no ``"`` or ``\\`` needs no escape and is quoted here; anything else goes to
    ``_json``'s encoder."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    import _json

    return _json.encode_basestring_ascii(text)


def _encode(value: "Any", out: list[str]) -> None:
    """Raises: TypeError: a value :func:`dumps` leaves to json."""
    kind = type(value)
    if kind is str:
        out.append(_quote(value))
    elif kind is dict:
        out.append("{")
        first = True
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError("a key that is not a str")
            if not first:
                out.append(", ")
            first = False
            out.append(_quote(key))
            out.append(": ")
            _encode(item, out)
        out.append("}")
    elif kind is list or kind is tuple:
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(", ")
            _encode(item, out)
        out.append("]")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif kind is int:
        out.append(int.__repr__(value))
    else:
        raise TypeError(f"{kind.__name__} is left to json")


def dumps(value: object) -> str:
    """``json.dumps(value)``: the same text (ASCII, ``", "`` and ``": "`` separators).

    Raises:
        TypeError, ValueError: what ``json.dumps`` raises for ``value``.
    """
    out: list[str] = []
    try:
        _encode(value, out)
    except (TypeError, RecursionError):
        # Floats, int keys, subclasses, a circular structure ...: json's rules, and its errors.
        import json

        return json.dumps(value)
    return "".join(out)


# ==================================================================== Connect calls

VM = "limiquantix.compute.v1.VMService"
FLEET = "limiquantix.compute.v1.FleetService"
ADMIN = "limiquantix.compute.v1.AdminService"
NODES = "limiquantix.compute.v1.NodeRegistryService"

#: The largest answer or streamed message read (the rpc client's MAX_RESPONSE_BYTES).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: A non-200 answer's body is an error object: a few KiB.
_MAX_ERROR_BYTES = 64 * 1024
#: Connect envelope flags.
_COMPRESSED, _END_STREAM = 0x01, 0x02
#: HTTP status → Connect code, for an error answer without a Connect body (a proxy's page).
_STATUS_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "unimplemented",
    408: "deadline_exceeded",
    413: "resource_exhausted",
    429: "resource_exhausted",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def given(**fields: "Any") -> "dict[str, Any]":
    """The request fields (proto3 JSON names) that have a value: an empty string, 0, an empty
    list or mapping is the field's default, so it is left out of the body."""
    return {name: value for name, value in fields.items() if value}


#: Said after a message whose wait was the request timeout (:attr:`ApiError.timed_out`).
REQUEST_TIMEOUT_HINT = "(--request-timeout or request_timeout_s in the config file sets how long to wait)"


class ApiError(Exception):
    """A failed call: ``code`` is the Connect code, ``message`` the controller's words
    (guest text may be in it: escape before printing), ``reason`` its machine-readable why;
    ``timed_out``: the request timeout passed (--request-timeout: the controller did not answer,
    or did not start answering, in time; :data:`REQUEST_TIMEOUT_HINT` says what sets it)."""

    def __init__(self, code: str, message: str, reason: str = "", *, timed_out: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.timed_out = timed_out


class Client:
    """One controller, one token (from :class:`~limiquantix.protocol.ClientSettings`).

    Raises (constructor):
        ConfigError: a URL this client cannot call, or a CA file that cannot be loaded.
    """

    def __init__(self, settings: ClientSettings) -> None:
        try:
            self._endpoint = Endpoint.parse(settings.url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.url = settings.url
        #: How long a call that names no budget of its own waits (--request-timeout).
        self.request_timeout_s = settings.request_timeout_s
        self._token = settings.token
        self._tls: Any = None
        if self._endpoint.tls:
            # ssl only for https: a plain call to loopback loads none of it, and nothing but
            # ssl for https (protocol.tls would add typing and dataclasses: start-up time).
            from limiquantix.protocol import TLSConfigError, verifying_context

            try:
                self._tls = verifying_context(settings.ca_file)
            except TLSConfigError as exc:
                raise ConfigError(str(exc)) from None

    @classmethod
    def from_options(
        cls,
        *,
        url: str | None = None,
        token_file: str | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        profile: str | None = None,
        config: str | None = None,
        request_timeout: str | None = None,
    ) -> "Client":
        """A client for the global options (``--url`` ...), the environment and the config file.

        Raises:
            ConfigError: see :func:`limiquantix.protocol.resolve`.
        """
        data = read_config(config or None)
        return cls(
            resolve(
                data,
                env=os.environ,
                url=url,
                token_file=token_file,
                ca_file=ca_file,
                insecure=insecure,
                profile=profile,
                request_timeout=request_timeout,
            )
        )

    # -- plumbing --------------------------------------------------------------------

    def _send(
        self, procedure: str, body: "bytes | Iterable[bytes]", length: int, content_type: str, timeout_s: float
    ) -> Sent:
        """Send one call; returns once it has left (the answer is read with :meth:`_answer`).

        Raises:
            ApiError: the controller could not be reached, or the request could not be sent.
        """
        headers = {
            "Content-Type": content_type,
            "Connect-Protocol-Version": "1",
            "Connect-Timeout-Ms": str(max(1, int(timeout_s * 1000))),
            "Authorization": f"Bearer {self._token}",
        }
        # Connecting (and the TLS handshake) within the request timeout: a live controller
        # accepts at once, and a command's budget (exec's 70 s) is for the command, not for a
        # controller that does not answer (one stopped with SIGSTOP: the kernel accepts, nobody
        # does the handshake).
        connect_s = min(timeout_s, self.request_timeout_s)
        now = time.monotonic()
        try:
            return send_request(
                self._endpoint,
                f"/{procedure}",
                headers,
                body,
                length=length,
                deadline=now + timeout_s,
                connect_deadline=now + connect_s,
                tls_context=self._tls,
            )
        except TimedOut as exc:
            raise self._transport_error(procedure, timeout_s if exc.sent else connect_s, exc) from None
        except HttpError as exc:
            raise self._transport_error(procedure, timeout_s, exc) from None

    def _answer(self, procedure: str, timeout_s: float, sent: Sent, *, head_s: float | None = None) -> "Response":
        """The head of a sent call's answer, within ``head_s`` when that is sooner than the
        call's ``timeout_s`` (a stream's: see :meth:`_messages`).

        Raises:
            ApiError: the connection broke, or the controller did not answer in time.
        """
        # The answer's reader and the JSON scanner (``_json``, about 0.4 ms to load) are loaded
        # while the controller works: an answer that has come is read at once (bench/cli_bench.py).
        from ._answer import _scanner

        _scanner()
        head_deadline = time.monotonic() + head_s if head_s is not None and head_s < timeout_s else None
        try:
            return sent.response(head_deadline)
        except TimedOut as exc:
            if head_deadline is None:
                raise self._transport_error(procedure, timeout_s, exc) from None
            method = procedure.rpartition("/")[2]
            raise ApiError(
                "deadline_exceeded",
                f"the controller at {self.url} did not start answering {method} within {head_s:g} s; "
                "the request was sent, so it may have run: its outcome is not known",
                "outcome_unknown",
                timed_out=True,
            ) from None
        except HttpError as exc:
            raise self._transport_error(procedure, timeout_s, exc) from None

    def _transport_error(self, procedure: str, timeout_s: float, exc: HttpError) -> ApiError:
        method = procedure.rpartition("/")[2]
        if isinstance(exc, Unreachable):
            if exc.tls:
                from limiquantix.protocol import tls_failure

                why = tls_failure(exc) or str(exc)
                return ApiError(
                    "unavailable", f"the controller ({self.url}): TLS handshake failed: {why}; nothing was sent", "tls"
                )
            return ApiError(
                "unavailable", f"cannot reach the controller at {self.url}: {exc}; nothing was sent", "unreachable"
            )
        if isinstance(exc, TimedOut):
            if not exc.sent:
                return ApiError(
                    "unavailable",
                    f"the controller at {self.url} did not answer within {timeout_s:g} s ({exc}); nothing was sent",
                    "unreachable",
                    timed_out=True,
                )
            return ApiError(
                "deadline_exceeded",
                f"the controller at {self.url} did not answer {method} within {timeout_s:g} s; "
                "the request was sent, so it may have run: its outcome is not known",
                "outcome_unknown",
                timed_out=True,
            )
        if isinstance(exc, Broken):
            if self.url.startswith("https:"):
                from limiquantix.protocol import refusal_message, tls_failure

                # The server's alert as its handshake failed (TLS 1.3: after our request was
                # written): it read nothing, so nothing ran (a hostd's URL asks for a client
                # certificate). Read before as "broke the connection ... outcome not known".
                alert = tls_failure(exc)
                refused = refusal_message(f"the controller ({self.url})", alert, method) if alert else None
                if refused is not None:
                    return ApiError("unavailable", refused, "tls")
            return ApiError(
                "unavailable",
                f"the controller ({self.url}) broke the connection ({exc}) after {method} was sent; "
                "it may have run: its outcome is not known",
                "outcome_unknown",
            )
        return ApiError("internal", f"the controller ({self.url}): {method}: {exc}")

    def _error_answer(self, procedure: str, timeout_s: float, resp: "Response") -> ApiError:
        """The error a non-200 answer carries."""
        from ._answer import _error_from_json, loads

        fallback = _STATUS_CODES.get(resp.status, "unknown")
        try:
            raw = resp.read(_MAX_ERROR_BYTES)
        except HttpError as exc:
            return self._transport_error(procedure, timeout_s, exc)
        try:
            data = loads(raw)
        except ValueError:
            return ApiError(fallback, f"HTTP {resp.status} from {self.url} (not a Connect answer)")
        return _error_from_json(data, fallback)

    # -- unary ----------------------------------------------------------------------

    def call_raw(
        self,
        procedure: str,
        body: "bytes | Iterable[bytes]",
        *,
        length: int | None = None,
        timeout_s: float | None = None,
    ) -> "dict[str, Any]":
        """One unary call with an encoded JSON body (or its pieces, ``length`` bytes in all);
        ``timeout_s`` None: the client's :attr:`request_timeout_s`.

        Raises:
            ApiError: the controller's error, or the transport's.
        """
        from ._answer import loads

        if isinstance(body, bytes):
            length = len(body)
        elif length is None:
            raise TypeError("a body in pieces needs its length")
        if timeout_s is None:
            timeout_s = self.request_timeout_s
        resp = self._answer(procedure, timeout_s, self._send(procedure, body, length, "application/json", timeout_s))
        try:
            if resp.status != 200:
                raise self._error_answer(procedure, timeout_s, resp)
            try:
                raw = resp.read(MAX_MESSAGE_BYTES)
            except HttpError as exc:
                raise self._transport_error(procedure, timeout_s, exc) from None
        finally:
            resp.close()
        try:
            answer = loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ApiError("internal", "the controller answered something that is not a JSON object")
        return answer

    def call(
        self,
        service: str,
        method: str,
        body: "Mapping[str, Any] | None" = None,
        *,
        timeout_s: float | None = None,
    ) -> "dict[str, Any]":
        """One unary call: ``body`` as JSON out, the answer's object back (``timeout_s`` None:
        the client's :attr:`request_timeout_s`).

        Raises:
            ApiError: the controller's error, or the transport's.
        """
        return self.call_raw(f"{service}/{method}", dumps(dict(body or {})).encode(), timeout_s=timeout_s)

    # -- server streaming -------------------------------------------------------------

    def stream(self, service: str, method: str, body: "Mapping[str, Any]", *, timeout_s: float) -> "Stream":
        """A server-streaming call, sent before this returns: each message as it arrives
        from the :class:`Stream` (so the caller's own preparation overlaps the server's work).

        Closing the stream early closes the connection, which the controller sees as the
        client leaving (a streamed command is then cancelled in the guest).

        Raises:
            ApiError: the call could not be sent; and from the stream, its answer's
                errors, the end message's included.
        """
        procedure = f"{service}/{method}"
        message = dumps(dict(body)).encode()
        envelope = b"\x00" + len(message).to_bytes(4, "big") + message
        sent = self._send(procedure, envelope, len(envelope), "application/connect+json", timeout_s)
        from ._answer import Stream  # once the request has left

        return Stream(self._messages(procedure, timeout_s, sent), sent)

    def _messages(self, procedure: str, timeout_s: float, sent: Sent) -> "Generator[dict[str, Any], None, None]":
        """A sent stream's messages, up to its end message.

        Raises:
            ApiError: the answer's errors, the end message's included.
        """
        from ._answer import _decode, _error_from_json

        # The head comes at once from a live controller (a stream's head leaves within the
        # server's 50 ms hold, the messages follow as the command runs): a stream whose head
        # has not come within the request timeout is a controller that is not answering, not a
        # long command (exec's budget is its command's timeout + 10 s: 70 s by default).
        resp = self._answer(procedure, timeout_s, sent, head_s=self.request_timeout_s)
        try:
            if resp.status != 200:
                raise self._error_answer(procedure, timeout_s, resp)
            buf = bytearray()
            try:
                for piece in resp.chunks():
                    buf += piece
                    while len(buf) >= 5:
                        flags, size = buf[0], int.from_bytes(buf[1:5], "big")
                        if size > MAX_MESSAGE_BYTES:
                            raise ApiError("resource_exhausted", f"a streamed message over {MAX_MESSAGE_BYTES} bytes")
                        if len(buf) < 5 + size:
                            break
                        data = bytes(buf[5 : 5 + size])
                        del buf[: 5 + size]
                        if flags & _COMPRESSED:
                            raise ApiError("internal", "the controller compressed a message that was not asked to be")
                        decoded = _decode(data)
                        if flags & _END_STREAM:
                            if decoded.get("error"):
                                raise _error_from_json(decoded["error"], "unknown")
                            return
                        yield decoded
            except HttpError as exc:
                error = self._transport_error(procedure, timeout_s, exc)
                error.timed_out = False  # the stream's own budget passed, not the request timeout
                raise error from None
            method = procedure.rpartition("/")[2]
            raise ApiError(
                "unavailable",
                f"the controller's {method} stream ended without its end message; its outcome is not known",
                "outcome_unknown",
            )
        finally:
            resp.close()
