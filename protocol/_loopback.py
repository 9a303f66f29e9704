"""When a bearer token may cross plain HTTP: only to this machine (loopback or a Unix socket),
unless the caller said ``insecure``.

Apart from :mod:`._tls` (which re-exports these names) because it needs no ``ssl``: the
``limiquantix`` command line checks every URL before its first call, and its start-up
time is measured (``bench/cli_bench.py``); a plain-HTTP call to loopback loads no TLS.
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

__all__ = ["InsecureTransportError", "check_token_transport", "is_loopback_url", "split_url"]

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
