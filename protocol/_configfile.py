"""Configuration files, for every program: the one :class:`ConfigError` and the TOML reader
(agent, hostd, controller, the TUI and the command line); and where an operator's client
(``limiquantix-tui``, ``limiquantix``) finds its controller: flags, then environment, then the
config file and its profiles (:func:`resolve`).

Apart from :mod:`.config` (the daemons' dataclass → TOML → flags loader), which raises the
same :class:`ConfigError`, because the operators' clients read their file here too, and
``limiquantix exec`` does on every start, whose start-up time is measured: the loader's
dataclasses, typing and argparse would cost it more than the rest of its start-up. One module
for the file and the clients' settings because ``limiquantix exec`` needs both before its
request can leave, and each module on that path costs it about 0.2 ms of CPU (found, read,
unmarshalled, run: bench/cli_bench.py).

**The TOML reader.** A file of only comments, ``[table]`` headers and ``key = value`` lines
whose values are plain strings, booleans or integers (what ``make run`` writes for the TUI and
the command line, and what a profile holds) is read here without tomllib: importing it costs
about 30 ms (typing, re, string), as much as everything else ``limiquantix exec`` does to
start, and that command reads its config file on every run. Anything else, and anything this
reader is not sure of, is read by tomllib, which also says what is wrong with a broken file:
the reader returns exactly what tomllib returns or leaves the file to it
(tests/test_clientconfig.py compares the two on generated files).

**The clients' file** is ``$XDG_CONFIG_HOME/limiquantix/tui.toml`` (``~/.config`` when unset;
the one ``make run`` writes, mode 0600). Its top-level keys are the defaults; a
``[profiles.NAME]`` table holds another controller's keys, chosen with ``--profile NAME`` or
``LQX_PROFILE``::

    url = "https://127.0.0.1:8080"
    token = "..."
    ca_file = "/tmp/lqx-run/pki/ca.pem"

    [profiles.prod]
    url = "https://ctl.example.com:8443"
    token_file = "~/.config/limiquantix/prod.token"
    ca_file = "/etc/limiquantix/pki/ca.pem"

Keys: ``url``, ``token`` or ``token_file``, ``ca_file`` (the CA the controller's HTTPS
certificate must chain to; default: the system's CAs), ``insecure`` (send the token over plain
``http://`` to another machine anyway), ``request_timeout_s`` (how long a call waits for the
controller's answer: :data:`DEFAULT_REQUEST_TIMEOUT_S`; ``--request-timeout`` overrides it).
``LQX_CONTROLLER_URL``, ``LQX_TOKEN`` and ``LQX_CA_FILE`` override the file's top level (while
a profile is chosen, the first two are ignored: they would mix two controllers' URL and
token); ``--url``, ``--token-file`` and ``--ca-file`` override everything. A token is never
taken from the command line (``--token`` is refused): argv is visible to every user of the
machine (``ps``). A file of profiles (top-level keys, each ``[profiles.NAME]`` over them, the
environment only for the top level) is no dataclass's shape: another reason this is not the
daemons' loader.

**Tokens over plain HTTP**: when a bearer token may cross plain HTTP is here too
(:func:`check_token_transport`: only to this machine, loopback or a Unix socket, unless the
caller said ``insecure``), with the one reading of a URL's host (:func:`split_url`) that the
check and the command line's connection share: :mod:`._tls` re-exports them for the daemons
and the TUI. None of it needs ``ssl``, so a plain-HTTP call to loopback loads no TLS.

Pure and cheap to import (no protobuf, no ssl, no typing or dataclasses, no pathlib).
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

import os
import sys

# typing, dataclasses (inspect) and pathlib cost more to import than the rest of an
# ``exec``'s start-up: names for type checkers only, and plain classes.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

__all__ = [
    "CA_ENV",
    "CONNECTION_KEYS",
    "ClientSettings",
    "ConfigError",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_URL",
    "InsecureTransportError",
    "MAX_REQUEST_TIMEOUT_S",
    "PROFILE_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "check_token",
    "check_token_transport",
    "default_config_path",
    "is_loopback_url",
    "parse_request_timeout",
    "read_config",
    "read_toml",
    "refused_token_flag",
    "resolve",
    "secret_flag_refused",
    "split_url",
]

# ------------------------------------------------------------------ the file


class ConfigError(ValueError):
    """The configuration file, a flag or a value is invalid (the message names it and how to fix it)."""


#: What a bare key may hold (TOML: ASCII letters, digits, ``_`` and ``-``).
_BARE_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_DIGITS = frozenset("0123456789")


def _value(text: str) -> tuple[object, str] | None:
    """The value at the start of ``text`` and what follows it; None unless it is a string
    without escapes, true, false or a decimal integer."""
    if text[:1] in ('"', "'"):
        end = text.find(text[0], 1)
        if end < 0 or "\\" in text[1:end] and text[0] == '"':
            return None  # unclosed, or escapes: tomllib's
        return text[1:end], text[end + 1 :]
    token, _, rest = text.partition("#")
    token = token.rstrip(" \t")
    rest = text[len(token) :]
    if token in ("true", "false"):
        return token == "true", rest
    digits = token[1:] if token.startswith("-") else token
    if digits and _DIGITS.issuperset(digits) and (digits == "0" or not digits.startswith("0")) and len(digits) < 19:
        return int(token), rest
    return None


def _simple_toml(text: str) -> "dict[str, Any] | None":
    """``text`` as tomllib reads it, when it is simple enough (see the module's docstring);
    None otherwise (tomllib then reads it, or says what is wrong)."""
    root: dict[str, Any] = {}
    table = root
    headers: set[str] = set()
    for line in text.replace("\r\n", "\n").split("\n"):
        # Control characters (TOML allows only tab), a lone CR, a BOM, exotic spaces: tomllib's.
        if not line.replace("\t", " ").isprintable():
            return None
        line = line.strip(" \t")
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name, closed, rest = line[1:].partition("]")
            parts = name.split(".")
            if not closed or name in headers or not all(p and _BARE_KEY.issuperset(p) for p in parts):
                return None  # [[arrays]], quoted or spaced names, a table defined twice
            rest = rest.lstrip(" \t")
            if rest and not rest.startswith("#"):
                return None
            headers.add(name)
            table = root
            for part in parts:
                table = table.setdefault(part, {})
                if not isinstance(table, dict):
                    return None  # a key that is already a value
            continue
        key, eq, after = line.partition("=")
        key = key.rstrip(" \t")
        parsed = _value(after.lstrip(" \t")) if eq else None
        if parsed is None or not key or not _BARE_KEY.issuperset(key) or key in table:
            return None  # dotted or quoted keys, other values, a key given twice
        value, rest = parsed
        rest = rest.lstrip(" \t")
        if rest and not rest.startswith("#"):
            return None
        table[key] = value
    return root


def read_toml(path: str | os.PathLike[str] | None, default: str | os.PathLike[str]) -> "dict[str, Any]":
    """The parsed file at ``path``, else at ``default`` when it exists, else ``{}``.

    An explicitly named file must exist; the default one is optional.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8, or is not valid TOML (the message names it).
    """
    if path is None:
        if not os.path.exists(default):
            return {}
        path = default
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {os.fspath(path)}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: not UTF-8 text (byte {exc.start}): is it a TOML file?") from None
    simple = _simple_toml(text)
    if simple is not None:
        return simple
    if sys.version_info >= (3, 11):
        import tomllib  # novermin - the 3.11 branch of a version check
    else:  # pragma: no cover - Python 3.10 guests
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from exc


def secret_flag_refused(option: str, instead: str) -> str:
    """Why a secret's flag (``option``) is refused, and ``instead``, what to use.

    Every program refuses a token in argv the same way: a command line is visible to every
    user of the machine (``ps``, ``/proc``).
    """
    return f"{option} is refused: a token on the command line is visible to every user (ps); use {instead}"


# ------------------------------------------------------------------ tokens over plain HTTP

#: Host names that always mean this machine (another IP literal is checked by value), with
#: the usual loopback literals (their check needs no ipaddress module).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "::1"})


#: What RFC 3986 allows in an authority (``userinfo@host:port``): unreserved characters,
#: sub-delims, ``%`` escapes, ``:``, ``@`` and the brackets of an IPv6 literal. Parsers differ
#: on anything else (a backslash is a ``/`` to a browser, urllib drops tabs, others refuse
#: them), so a URL with anything else is not read at all: the host checked here must be the
#: host a client connects to.
_AUTHORITY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:@[]")


class InsecureTransportError(ValueError):
    """A token would cross the network in clear: refused (the message says how to fix it)."""


def split_url(url: str) -> tuple[str, str, str, str]:
    """``scheme://[userinfo@]host[:port]rest`` as RFC 3986 (and ``urllib.parse.urlsplit``)
    reads it: (scheme, host, port, rest). The authority ends at the first ``/``, ``?`` or
    ``#``; the host follows the last ``@``; an IPv6 literal is given without its brackets;
    ``rest`` is the path, query and fragment; nothing is lowercased or decoded.

    Not urllib: it imports ``re`` and ``ipaddress`` (the command line checks every URL at start,
    and its start-up is measured). One reading for the check and the connection: the
    command line connects to the host this returns.

    Raises:
        ValueError: no ``://``, a character an authority may not hold (space, backslash,
            control characters ...), or a malformed IPv6 literal.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a URL: {url!r}")
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop, 0, end)
        if found >= 0:
            end = found
    authority = rest[:end]
    if not _AUTHORITY_CHARS.issuperset(authority):
        raise ValueError(f"a character a URL's host part may not hold in {url!r}")
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        host, closed, after = hostport[1:].partition("]")
        if not closed or (after and not after.startswith(":")) or "[" in host:
            raise ValueError(f"a malformed IPv6 address in {url!r}")
        port = after[1:]
    else:
        host, _, port = hostport.partition(":")
        if "[" in hostport or "]" in hostport:
            raise ValueError(f"a bracket outside an IPv6 address in {url!r}")
    return scheme, host, port, rest[end:]


def _host(url: str) -> str | None:
    """The host ``url`` names, lowercased; None when it cannot be read (:func:`split_url`)."""
    try:
        return split_url(url)[1].lower()
    except ValueError:
        return None


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (a loopback address or ``localhost``), or a Unix
    socket. A URL whose host cannot be read safely (:func:`split_url`) does not."""
    if url.startswith("unix:"):
        return True
    host = _host(url)
    if host is None:
        return False
    if host in _LOOPBACK_NAMES:
        return True
    # Imported here: the usual loopback names need no ipaddress module (start-up time).
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(url: str, *, insecure: bool, what: str = "the API token", flag: str = "--insecure") -> None:
    """Refuse to send ``what`` over plain HTTP to a host other than this one.

    Raises:
        InsecureTransportError: ``url`` is ``http://`` to a non-loopback host, or one whose
            host cannot be read safely, and ``insecure`` is false (the message says why, and
            names ``flag``).
    """
    if insecure or not url.startswith("http://") or is_loopback_url(url):
        return
    raise InsecureTransportError(
        f"refusing to send {what} over plain HTTP to {_host(url) or url}: anyone on the network path could "
        f"read it (use https:// with the server's CA, or {flag} to send it anyway)"
    )


# ------------------------------------------------------------------ the client's settings

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "LQX_CONTROLLER_URL"
TOKEN_ENV = "LQX_TOKEN"
CA_ENV = "LQX_CA_FILE"
PROFILE_ENV = "LQX_PROFILE"
#: The keys of the file (top level or a profile) that say how to reach the controller.
CONNECTION_KEYS = frozenset({"url", "token", "token_file", "ca_file", "insecure", "request_timeout_s"})
#: How long a call waits for the controller's answer unless ``--request-timeout`` or the file's
#: ``request_timeout_s`` says otherwise: the TUI's polls and the command line's calls (not a
#: streamed command, which waits for its own timeout). A live controller answers a listing in
#: milliseconds and bounds its own calls to hostd by the caller's deadline (Connect-Timeout-Ms),
#: so a wait this long means a controller (or the path to it) that is not answering.
DEFAULT_REQUEST_TIMEOUT_S = 15.0
#: The longest request timeout accepted (a day: the longest a guest command may run).
MAX_REQUEST_TIMEOUT_S = 86400.0


class ClientSettings:
    """How to reach the controller, resolved.

    Attributes:
        url: the controller's URL, without a trailing ``/``.
        token: the bearer token (never shown in ``repr``).
        source: where the token came from (named when the controller refuses it).
        ca_file: CA the controller's certificate must chain to; empty: the system's CAs.
        insecure: send the token over plain http:// to another machine anyway.
        profile: the profile chosen ("" for the file's top level).
        values: the file's values for this profile (top level merged with the profile's table).
        request_timeout_s: how long a call waits for the controller's answer.
    """

    __slots__ = ("url", "token", "source", "ca_file", "insecure", "profile", "values", "request_timeout_s")

    def __init__(
        self,
        url: str,
        token: str,
        source: str,
        *,
        ca_file: str = "",
        insecure: bool = False,
        profile: str = "",
        values: "Mapping[str, Any] | None" = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.token = token
        self.source = source
        self.ca_file = ca_file
        self.insecure = insecure
        self.profile = profile
        self.values = dict(values or {})
        self.request_timeout_s = request_timeout_s

    def __repr__(self) -> str:
        return f"ClientSettings(url={self.url!r}, source={self.source!r}, profile={self.profile!r})"


def _default_config_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "limiquantix", "tui.toml")


def default_config_path() -> "Path":
    """``$XDG_CONFIG_HOME/limiquantix/tui.toml`` (``~/.config`` when unset)."""
    from pathlib import Path

    return Path(_default_config_file())


def refused_token_flag(option: str) -> str:
    """Why ``--token`` (``option``) is refused, and what to use instead."""
    return secret_flag_refused(option, f"--token-file FILE, the environment variable {TOKEN_ENV}, or the config file")


def check_token(token: str, source: str) -> None:
    """A token is one word of visible ASCII: it goes into an HTTP header as it is.

    Raises:
        ConfigError: anything else, naming where it came from (not, later, as an
            unreachable controller: an HTTP client refuses such a header before sending).
    """
    if all(33 <= ord(c) <= 126 for c in token):
        return
    if any(c.isspace() for c in token):
        what = "spaces or line breaks" + (" (a TOML file? pass it with --config)" if "=" in token else "")
    else:
        what = "characters that are not printable ASCII"
    raise ConfigError(f"{source} does not hold a token: it has {what}; a token is one line of one word")


def parse_request_timeout(value: object) -> float:
    """A request timeout in seconds (``"2.5"``, ``2``, ``2.5``): a finite number in
    0 < value <= :data:`MAX_REQUEST_TIMEOUT_S`.

    Raises:
        ValueError: anything else (a bool, 0, a negative number, NaN, text that is no number).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"not a number of seconds: {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"not a number of seconds: {value!r}") from None
    # NaN fails the comparison too.
    if not 0 < seconds <= MAX_REQUEST_TIMEOUT_S:
        raise ValueError(f"{value!r} is not within 0 < seconds <= {MAX_REQUEST_TIMEOUT_S:g}")
    return seconds


def read_config(path: str | os.PathLike[str] | None) -> "dict[str, Any]":
    """The config file (``path``, else the default one when it exists, else nothing).

    Raises:
        ConfigError: a named file that is missing, or a file that is not TOML.
    """
    return read_toml(path, _default_config_file())


def _profile_values(data: "Mapping[str, Any]", profile: str, extra_keys: frozenset[str]) -> "dict[str, Any]":
    """The top-level keys with ``profile``'s table over them.

    Raises:
        ConfigError: an unknown key, or a profile the file does not have.
    """
    allowed = CONNECTION_KEYS | extra_keys
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise ConfigError("[profiles] in the config file must hold tables: [profiles.NAME]")
    top = {k: v for k, v in data.items() if k != "profiles"}
    for where, values in (("the config file", top), *((f"profile {n!r}", p) for n, p in profiles.items())):
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {where} (known: {', '.join(sorted(allowed))})")
    if not profile:
        return top
    if profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"no profile {profile!r} in the config file (profiles: {known})")
    return {**top, **profiles[profile]}


def _read_token_file(path: str | os.PathLike[str]) -> str:
    """Raises: ConfigError: the file cannot be read."""
    path = os.path.expanduser(os.fspath(path))
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def resolve(
    data: "Mapping[str, Any]",
    *,
    env: "Mapping[str, str]",
    url: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    profile: str | None = None,
    request_timeout: "str | float | None" = None,
    extra_keys: frozenset[str] = frozenset(),
) -> ClientSettings:
    """Resolve the settings: flags (the keyword arguments) over ``env`` over the file's ``data``.

    Args:
        data: the parsed config file (:func:`read_config`).
        request_timeout: ``--request-timeout`` (over the file's ``request_timeout_s``).
        extra_keys: keys the caller reads from the file besides :data:`CONNECTION_KEYS`
            (the TUI's ``refresh_s``); any other is refused, so a typo is not ignored.

    Raises:
        ConfigError: an unknown key or profile, an unreadable token file, a value that
            is not a token, no token anywhere, a URL that is not http(s), a missing CA file, or
            plain HTTP to another machine without ``insecure``, a request timeout that is not
            seconds within 0 < s <= :data:`MAX_REQUEST_TIMEOUT_S`.
    """
    profile = profile if profile is not None else env.get(PROFILE_ENV, "")
    values = _profile_values(data, profile, extra_keys)
    where = f"profile {profile!r}" if profile else "the config file"
    target = str(values.get("url", DEFAULT_URL))
    token, source = str(values.get("token", "")), where
    if values.get("token_file"):
        token, source = _read_token_file(str(values["token_file"])), str(values["token_file"])
    if env.get(URL_ENV) and not profile:
        target = env[URL_ENV]
    if env.get(TOKEN_ENV) and not profile:
        token, source = env[TOKEN_ENV], TOKEN_ENV
    if url:
        target = url
    if token_file:
        token, source = _read_token_file(token_file), os.fspath(token_file)
    if token:
        check_token(token, source)
    else:
        raise ConfigError(
            f"no API token: pass --token-file, set {TOKEN_ENV}, or run `make run` (which writes {_default_config_file()})"
        )
    if not target.startswith(("http://", "https://")):
        raise ConfigError(f"controller URL must start with http:// or https://, not {target!r}")
    ca = os.fspath(ca_file or env.get(CA_ENV) or values.get("ca_file", ""))
    ca = os.path.expanduser(ca) if ca else ""
    # The CA is for https only: a file's CA must not stop a plain call to loopback (--url).
    if ca and target.startswith("https://") and not os.path.isfile(ca):
        raise ConfigError(f"cannot read the CA file {ca}")
    insecure = bool(insecure or values.get("insecure", False) is True)
    try:
        check_token_transport(target, insecure=insecure)
    except InsecureTransportError as exc:
        raise ConfigError(str(exc)) from None
    given = request_timeout if request_timeout is not None else values.get("request_timeout_s")
    try:
        request_timeout_s = DEFAULT_REQUEST_TIMEOUT_S if given is None else parse_request_timeout(given)
    except ValueError as exc:
        what = "--request-timeout" if request_timeout is not None else f"request_timeout_s in {where}"
        raise ConfigError(f"{what}: {exc}") from None
    return ClientSettings(
        url=target.rstrip("/"),
        token=token,
        source=source,
        ca_file=ca,
        insecure=insecure,
        profile=profile,
        values=values,
        request_timeout_s=request_timeout_s,
    )
