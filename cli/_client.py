"""The controller's public API as the command line calls it: Connect JSON, unary and server
streaming, over :mod:`._http` (exactly what a third-party script would send; nothing here
is private to the project).

Every failure is one :class:`ApiError` with a Connect code (``unavailable``,
``unauthenticated``, ``not_found`` ...), the controller's message and its ``reason``, so that
commands have one thing to catch and :mod:`._exitcodes` one thing to map. Transport failures
get the rpc layer's codes and reasons (``unavailable`` ``unreachable`` when nothing was sent,
``outcome_unknown`` once the request may have run): see :mod:`limiquantix.protocol.rpc`.
"""

from __future__ import annotations

import os
import time

from limiquantix.protocol import ClientSettings, ConfigError, read_config, resolve

from . import _http
from ._fastjson import dumps, loads

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Mapping
    from typing import Any

__all__ = [
    "ADMIN",
    "FLEET",
    "MAX_MESSAGE_BYTES",
    "NODES",
    "VM",
    "ApiError",
    "Client",
    "given",
]

VM = "limiquantix.compute.v1.VMService"
FLEET = "limiquantix.compute.v1.FleetService"
ADMIN = "limiquantix.compute.v1.AdminService"
NODES = "limiquantix.compute.v1.NodeRegistryService"

#: The largest answer or streamed message read (the rpc client's MAX_RESPONSE_BYTES).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: A non-200 answer's body is an error object: a few KiB.
_MAX_ERROR_BYTES = 64 * 1024
#: Calls that name no budget (a listing, a ping): the controller answers within its own 30 s.
DEFAULT_TIMEOUT_S = 35.0
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


def given(**fields: Any) -> dict[str, Any]:
    """The request fields (proto3 JSON names) that have a value: an empty string, 0, an empty
    list or mapping is the field's default, so it is left out of the body."""
    return {name: value for name, value in fields.items() if value}


class ApiError(Exception):
    """A failed call: ``code`` is the Connect code, ``message`` the controller's words
    (guest text may be in it: escape before printing), ``reason`` its machine-readable why."""

    def __init__(self, code: str, message: str, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason


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


class Client:
    """One controller, one token (from :class:`~limiquantix.protocol.ClientSettings`).

    Raises (constructor):
        ConfigError: a URL this client cannot call, or a CA file that cannot be loaded.
    """

    def __init__(self, settings: ClientSettings) -> None:
        try:
            self._endpoint = _http.Endpoint.parse(settings.url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.url = settings.url
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
    ) -> Client:
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
            )
        )

    # -- plumbing --------------------------------------------------------------------

    def _open(
        self, procedure: str, body: bytes | Iterable[bytes], length: int, content_type: str, timeout_s: float
    ) -> _http.Response:
        """Send one call; its answer's head.

        Raises:
            ApiError: the controller could not be reached, or did not answer in time.
        """
        headers = {
            "Content-Type": content_type,
            "Connect-Protocol-Version": "1",
            "Connect-Timeout-Ms": str(max(1, int(timeout_s * 1000))),
            "Authorization": f"Bearer {self._token}",
        }
        try:
            return _http.open_request(
                self._endpoint,
                f"/{procedure}",
                headers,
                body,
                length=length,
                deadline=time.monotonic() + timeout_s,
                tls_context=self._tls,
            )
        except _http.HttpError as exc:
            raise self._transport_error(procedure, timeout_s, exc) from None

    def _transport_error(self, procedure: str, timeout_s: float, exc: _http.HttpError) -> ApiError:
        method = procedure.rpartition("/")[2]
        if isinstance(exc, _http.Unreachable):
            if exc.tls:
                from limiquantix.protocol import tls_failure

                why = tls_failure(exc) or str(exc)
                return ApiError(
                    "unavailable", f"the controller ({self.url}): TLS handshake failed: {why}; nothing was sent", "tls"
                )
            return ApiError(
                "unavailable", f"cannot reach the controller at {self.url}: {exc}; nothing was sent", "unreachable"
            )
        if isinstance(exc, _http.TimedOut):
            if not exc.sent:
                return ApiError(
                    "unavailable", f"cannot reach the controller at {self.url}: {exc}; nothing was sent", "unreachable"
                )
            return ApiError(
                "deadline_exceeded",
                f"the controller did not answer {method} within {timeout_s:g} s; "
                "the request was sent, so it may have run: its outcome is not known",
                "outcome_unknown",
            )
        if isinstance(exc, _http.Broken):
            return ApiError(
                "unavailable",
                f"the controller ({self.url}) broke the connection ({exc}) after {method} was sent; "
                "it may have run: its outcome is not known",
                "outcome_unknown",
            )
        return ApiError("internal", f"the controller ({self.url}): {method}: {exc}")

    def _error_answer(self, procedure: str, timeout_s: float, resp: _http.Response) -> ApiError:
        """The error a non-200 answer carries."""
        fallback = _STATUS_CODES.get(resp.status, "unknown")
        try:
            raw = resp.read(_MAX_ERROR_BYTES)
        except _http.HttpError as exc:
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
        body: bytes | Iterable[bytes],
        *,
        length: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """One unary call with an encoded JSON body (or its pieces, ``length`` bytes in all).

        Raises:
            ApiError: the controller's error, or the transport's.
        """
        if isinstance(body, bytes):
            length = len(body)
        elif length is None:
            raise TypeError("a body in pieces needs its length")
        resp = self._open(procedure, body, length, "application/json", timeout_s)
        try:
            if resp.status != 200:
                raise self._error_answer(procedure, timeout_s, resp)
            try:
                raw = resp.read(MAX_MESSAGE_BYTES)
            except _http.HttpError as exc:
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
        self, service: str, method: str, body: Mapping[str, Any] | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """One unary call: ``body`` as JSON out, the answer's object back.

        Raises:
            ApiError: the controller's error, or the transport's.
        """
        return self.call_raw(f"{service}/{method}", dumps(dict(body or {})).encode(), timeout_s=timeout_s)

    # -- server streaming -------------------------------------------------------------

    def stream(
        self, service: str, method: str, body: Mapping[str, Any], *, timeout_s: float
    ) -> Generator[dict[str, Any], None, None]:
        """A server-streaming call: each message as it arrives.

        Closing the generator early closes the connection, which the controller sees as the
        client leaving (a streamed command is then cancelled in the guest).

        Raises:
            ApiError: before or during the stream, the end message's error included.
        """
        procedure = f"{service}/{method}"
        message = dumps(dict(body)).encode()
        envelope = b"\x00" + len(message).to_bytes(4, "big") + message
        resp = self._open(procedure, envelope, len(envelope), "application/connect+json", timeout_s)
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
            except _http.HttpError as exc:
                raise self._transport_error(procedure, timeout_s, exc) from None
            raise ApiError(
                "unavailable",
                f"the controller's {method} stream ended without its end message; its outcome is not known",
                "outcome_unknown",
            )
        finally:
            resp.close()


def _decode(data: bytes) -> dict[str, Any]:
    """Raises: ApiError: not a JSON object."""
    try:
        value = loads(data or b"{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError("internal", "the controller streamed something that is not a JSON object")
    return value
