"""A verifying client SSL context from files, importing nothing but ``ssl``.

:func:`limiquantix.protocol.client_ssl_context` (every client's context) is built on
:func:`verifying_context`; the command line calls this module itself: ``limiquantix exec`` over
https is measured against curl, start-up included (``bench/cli_bench.py``), and :mod:`._tls`
loads ``typing`` and ``dataclasses`` (which loads ``inspect``), about as much CPU again as
``ssl`` itself. Hence no imports here beyond ``ssl`` (tests/test_cli_http.py checks it).
"""

from __future__ import annotations

import ssl

__all__ = ["TLSConfigError", "load_cert_chain", "load_verify_locations", "ssl_reason", "verifying_context"]


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used (the message names it and says why)."""


def verifying_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """A client's SSL context: the server's certificate verified against ``ca_file`` (the
    system's CAs when empty) and its host name checked, TLS 1.2 at least, and the client
    certificate ``cert_file`` with ``key_file`` presented when named.

    Raises:
        TLSConfigError: a file is missing, unreadable or not a certificate/key (named).
    """
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the CA file {ca_file}: {ssl_reason(exc)}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        load_cert_chain(ctx, cert_file, key_file, what="the client certificate")
    return ctx


def load_cert_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str, *, what: str = "the certificate") -> None:
    """``ctx.load_cert_chain`` with an error that names the files and says why in words.

    Raises:
        TLSConfigError: a file is missing, unreadable, or not a certificate or its key.
    """
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load {what} {cert_file} with key {key_file}: {ssl_reason(exc)}") from exc


def load_verify_locations(ctx: ssl.SSLContext, ca_file: str, *, what: str = "the CA file") -> None:
    """``ctx.load_verify_locations`` with an error that names the file and says why in words.

    Raises:
        TLSConfigError: the file is missing, unreadable, or holds no certificate.
    """
    try:
        ctx.load_verify_locations(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load {what} {ca_file}: {ssl_reason(exc)}") from exc


def ssl_reason(exc: BaseException) -> str:
    """An OpenSSL error's reason in words (``CERTIFICATE_VERIFY_FAILED`` → ``certificate verify failed``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
