"""TLS for every HTTP hop (controller ↔ hostd, the TUI and scripts → controller): the client
side's one place.

* :func:`client_ssl_context`: the context every client uses: the peer's certificate verified
  against a configured CA (the system's when none is named), its host name checked, and a
  client certificate presented when one is configured (mutual TLS: controller → hostd,
  hostd → controller).
* :func:`check_token_transport` (from :mod:`._configfile`, which needs no ``ssl``): a bearer
  token never goes over plain HTTP to an address that is not loopback, unless the caller said
  ``insecure`` (plain HTTP is for development on one machine: anyone on the path between two
  machines reads the token).
* :func:`tls_failure`: the one line that says why a TLS handshake failed (wrong CA, expired,
  wrong host name, no client certificate), found in an httpx error's causes.

The server side (certificate, key, the CA for client certificates) is in
:mod:`limiquantix.protocol.rpc.server` (``_serving``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import ssl
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    # collections.abc.Buffer is 3.12+; typeshed's typing_extensions has it for the checker only.
    from typing_extensions import Buffer

# Here for the callers that import them with the rest of TLS; defined apart (no ssl needed;
# the context itself with ssl alone, for the command line's start-up).
from ._configfile import InsecureTransportError, check_token_transport, is_loopback_url
from ._sslcontext import TLSConfigError, load_cert_chain, load_verify_locations, verifying_context
from ._sslcontext import ssl_reason as _reason

__all__ = [
    "TLSFiles",
    "InsecureTransportError",
    "TLSConfigError",
    "check_token_transport",
    "client_ssl_context",
    "is_loopback_url",
    "load_cert_chain",
    "load_verify_locations",
    "refusal_message",
    "server_refusal",
    "tls_failure",
]

#: The last TLS failure seen by this task's client connections. With TLS 1.3 a server checks
#: the client's certificate after the client's side of the handshake is done: its refusal
#: (an alert) breaks the write of the request, which httpcore swallows to read a response,
#: and the read then fails with no cause left to say why. The SSL object the client's context
#: makes records it here, in the task that drives the connection (httpx runs in the caller's).
_LAST_FAILURE: contextvars.ContextVar[str | None] = contextvars.ContextVar("lqx_tls_failure", default=None)
#: The alerts a server sends when it refuses the client's certificate (or, one of them, the
#: handshake as a whole), said plainly.
_REFUSAL_ALERTS: Final = {
    "tlsv13 alert certificate required": "it requires a client certificate and none was presented",
    "sslv3 alert handshake failure": "it refused the handshake (under TLS 1.2 also its answer to a missing client certificate)",
    "tlsv1 alert unknown ca": "it does not trust the CA of this client's certificate",
    "sslv3 alert bad certificate": "it refused this client's certificate",
    "sslv3 alert certificate expired": "this client's certificate has expired",
    "sslv3 alert certificate revoked": "this client's certificate is revoked",
    "sslv3 alert certificate unknown": "it refused this client's certificate",
    "tlsv1 alert access denied": "it refused this client's certificate",
}
#: Not failures: more bytes needed, or the peer closed the connection.
_NOT_FAILURES: Final = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError, ssl.SSLEOFError)


class _RecordingSSLObject(ssl.SSLObject):
    """``SSLContext.sslobject_class`` of client contexts: remembers why TLS failed (see above)."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLError as exc:
            _record(exc)
            raise

    def read(self, len: int = 1024, buffer: Buffer | None = None) -> bytes:  # noqa: A002 - the stdlib's name
        try:
            return super().read(len, buffer)
        except ssl.SSLError as exc:
            _record(exc)
            raise

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            return super().write(data)
        except ssl.SSLError as exc:
            _record(exc)
            raise


def _record(exc: ssl.SSLError) -> None:
    if not isinstance(exc, _NOT_FAILURES):
        _LAST_FAILURE.set(_reason(exc))


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class TLSFiles:
    """How a client verifies its server and proves who it is: the files :func:`client_ssl_context`
    builds its context from (``limiquantix.protocol.rpc.ClientTLS`` takes that context as ``verify``).

    Raises:
        TLSConfigError: a client certificate without its key, or the reverse.
    """

    ca_file: str = ""
    """PEM CA bundle the server's certificate must chain to; empty: the system's CAs."""
    cert_file: str = ""
    """PEM client certificate presented to the server (mutual TLS); empty: none."""
    key_file: str = ""
    """Its private key."""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise TLSConfigError("a client certificate needs both its certificate file and its key file")


def client_ssl_context(tls: TLSFiles | None = None) -> ssl.SSLContext:
    """The SSL context for a client: verification on, TLS 1.2 at least, the client
    certificate of ``tls`` loaded.

    Raises:
        TLSConfigError: a file is missing, unreadable or not a certificate/key (named).
    """
    tls = tls or TLSFiles()
    ctx = verifying_context(tls.ca_file, tls.cert_file, tls.key_file)
    ctx.sslobject_class = _RecordingSSLObject
    return ctx


def tls_failure(exc: BaseException) -> str | None:
    """Why a TLS handshake failed, if ``exc`` (or one of its causes) says it did; else None.

    The server's certificate refused here (unknown CA, expired, another host's name) reads
    ``certificate verify failed: ...``; a refusal by the server (no or unknown client
    certificate) reads as the alert it sent (``tlsv13 alert certificate required``): our servers
    send it before closing (see ``rpc.server._serving``). Under TLS 1.3 the server checks the
    client's certificate after the client's side of the handshake is done, so the alert fails the
    first read, after the request was written. A server that closes without its alert (hypercorn
    alone does) looks like one that died mid-call: None here, and only its log says why.

    Call it in the task that made the request (it also reads, and clears, what this task's
    client connections recorded).
    """
    recorded = _LAST_FAILURE.get()
    _LAST_FAILURE.set(None)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError) and not isinstance(cur, _NOT_FAILURES):
            return _reason(cur)
        cur = cur.__cause__ or cur.__context__
    return recorded


def server_refusal(why: str) -> str | None:
    """What a server's alert in ``why`` (:func:`tls_failure`'s words) says about this client's
    certificate, plainly (``tlsv1 alert unknown ca`` → "it does not trust the CA of this client's
    certificate"); None for any other failure.

    A server sends these while its handshake fails, so it read no request: under TLS 1.3 the
    client has already sent one (its side of the handshake was done), and it was not delivered.
    """
    return _REFUSAL_ALERTS.get(why)


def refusal_message(who: str, why: str, method: str) -> str | None:
    """The one line a client says when ``who`` (``the controller (URL)``) refused its TLS
    connection with an alert (``why``: :func:`tls_failure`'s words): ``method`` was not
    delivered, so nothing ran. None when ``why`` is no such refusal."""
    refusal = server_refusal(why)
    if refusal is None:
        return None
    return f"{who} refused the TLS connection: {refusal} ({why}); {method} was not delivered"
