"""When a bearer token may cross plain HTTP: only to this machine (loopback or a Unix socket),
unless the caller said ``insecure``.

Apart from :mod:`.tls` (which re-exports these names) because it needs no ``ssl``: the
``limiquantix`` command line checks every URL before its first call, and its start-up
time is measured (``bench/cli_bench.py``); a plain-HTTP call to loopback loads no TLS.
"""

from __future__ import annotations

__all__ = ["InsecureTransportError", "check_token_transport", "is_loopback_url"]

#: Host names that always mean this machine (another IP literal is checked by value), with
#: the usual loopback literals (their check needs no ipaddress module).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "::1"})


class InsecureTransportError(ValueError):
    """A token would cross the network in clear: refused (the message says how to fix it)."""


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (a loopback address or ``localhost``), or a Unix socket."""
    if url.startswith("unix:"):
        return True
    # Imported here (like ipaddress below): the command line checks every URL at start.
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(url: str, *, insecure: bool, what: str = "the API token", flag: str = "--insecure") -> None:
    """Refuse to send ``what`` over plain HTTP to a host other than this one.

    Raises:
        InsecureTransportError: ``url`` is ``http://`` to a non-loopback host and ``insecure`` is
            false (the message says why, and names ``flag``).
    """
    if insecure or not url.startswith("http://") or is_loopback_url(url):
        return
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or url
    raise InsecureTransportError(
        f"refusing to send {what} over plain HTTP to {host}: anyone on the network path could read it "
        f"(use https:// with the server's CA, or {flag} to send it anyway)"
    )
