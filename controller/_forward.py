"""The controller's client for the hostd node API (``limiquantix.node.v1.NodeDaemonService``).

One :class:`NodeClient` per controller, over the rpc layer's client
(:class:`limiquantix.protocol.rpc.RpcClient`: a pooled ``httpx.AsyncClient``, plus
one per Unix-socket node, and its one exception mapping): one for ``http://`` nodes, one for
``https://`` nodes, the latter built when the first https node is called (or at start when
the configuration names a CA or a client certificate). Calls go out as Connect ``application/proto``
(unary) or ``application/connect+proto`` (server streaming) with the node's
bearer token. What crosses back:

* A Connect error body (``{"code", "message", "details"}``) becomes the
  :mod:`limiquantix.protocol.errors` class of its ``code``
  (:func:`errors.from_connect_code`), with the reason of a
  ``limiquantix.agent.v1.Error`` detail, so codes survive controller → hostd →
  agent → back.
* A node that cannot be reached (refused, DNS, no pooled connection in time)
  is ``unavailable`` at once, reason ``node_unreachable``: nothing was sent, so
  nothing ran. Connecting is bounded by :data:`~limiquantix.protocol.rpc.CONNECT_TIMEOUT_S`, and a
  refused connection on a LAN fails in microseconds.
* Once the request is on its way the node may act on it: a connection that
  then breaks (hostd killed mid-command) is :class:`OutcomeUnknown`
  (``unavailable``, reason ``outcome_unknown``), and a budget that runs out is
  :class:`OutcomeUnknownDeadline` (``deadline_exceeded``, same reason). Both
  say that the action may have happened, so a caller must not retry it blindly,
  and :func:`outcome_unknown` tells the audit log to record ``unknown``.
* Time budgets come from the caller (derived from the Connect deadline and the
  command's own timeout) and are sent on as ``Connect-Timeout-Ms`` so hostd
  stops at the same moment. A budget that runs out is ``deadline_exceeded``.

TLS (``https://`` nodes): hostd's certificate is verified against the configured CA (the
system's when none is named) and the controller presents its client certificate (mutual TLS).
The system's CAs cost tens of milliseconds of CPU to load, at every controller start where
every hostd is plain HTTP (development, every test): they are loaded at the first https call. A handshake that fails (an unknown
CA, an expired certificate, another host's name) is ``unavailable``, reason ``node_tls``,
saying why: hostd reads no request before its handshake completes, so nothing ran. A node
token is never sent over plain ``http://`` to another machine unless the controller is
configured ``insecure_nodes`` (reason ``insecure_transport``).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, Sequence
from typing import Final, TypeVar, final

import trio
from google.protobuf.message import Message

from limiquantix.protocol import TLSFiles, client_ssl_context
from limiquantix.protocol.rpc import (
    OUTCOME_UNKNOWN,
    ClientTLS,
    OutcomeUnknown,
    OutcomeUnknownDeadline,
    RpcClient,
    Target,
    outcome_unknown,
)

from ._models import NodeInfo

__all__ = [
    "CLOSE_TIMEOUT_S",
    "NODE_SERVICE",
    "OUTCOME_UNKNOWN",
    "NodeClient",
    "OutcomeUnknown",
    "OutcomeUnknownDeadline",
    "bytes_field_header",
    "outcome_unknown",
]

_M = TypeVar("_M", bound=Message)

#: The node API's Connect service path.
NODE_SERVICE: Final = "limiquantix.node.v1.NodeDaemonService"
#: Closing an upstream stream when our own client went away (shielded).
CLOSE_TIMEOUT_S: Final = 2.0
#: Keep-alive connections kept per controller: one per busy node is plenty.
_MAX_KEEPALIVE: Final = 200
#: Concurrent connections in total (the fleet runner will fan out to many nodes).
_MAX_CONNECTIONS: Final = 2000


def _target(node: NodeInfo) -> Target:
    return Target(
        url=node.url,
        token=node.token,
        name=f"node {node.node_id}",
        unreachable_reason="node_unreachable",
        tls_reason="node_tls",
    )


def bytes_field_header(number: int, length: int) -> bytes:
    """The protobuf wire-format key and length that precede a bytes field of ``length``.

    ``message_without_the_field.SerializeToString() + header + data`` is the
    message with the field: a large field can be sent from where it already is,
    without a second message holding a copy and a third serialized one.
    """
    out = bytearray()
    for value in ((number << 3) | 2, length):  # wire type 2: length-delimited
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


@final
class NodeClient:
    """Calls into hostd node APIs over one :class:`~limiquantix.protocol.rpc.RpcClient`.
    Use as an async context manager (closes the pools)."""

    def __init__(self, *, tls: TLSFiles | None = None, insecure: bool = False) -> None:
        """``tls``: the CA hostd certificates chain to and our client certificate (mutual TLS);
        ``insecure``: allow node tokens over plain HTTP to other machines.

        Raises:
            TLSConfigError: a file of ``tls`` cannot be used (a named file is loaded here, so
                that a bad one stops the controller at start).
        """
        # httpx here, not at the top: limiquantix.protocol.rpc (imported above) imported it
        # without its command-line client (limiquantix.protocol.import_http_stack), which a plain
        # ``import httpx`` sorted first would load (~0.1 s of every controller start).
        import httpx

        self._limits = httpx.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_KEEPALIVE)
        self._tls_files = tls or TLSFiles()
        self._insecure = insecure
        # The plain-HTTP nodes' pool never completes a TLS handshake: its context trusts no
        # CA, so an https URL that reached it would fail verification, never go unverified.
        self._plain = self._client(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        self._tls: RpcClient | None = None
        if self._tls_files.ca_file or self._tls_files.cert_file:
            self._tls = self._client(client_ssl_context(self._tls_files))

    def _client(self, verify: ssl.SSLContext) -> RpcClient:
        return RpcClient(limits=self._limits, tls=ClientTLS(verify=verify), insecure=self._insecure)

    def _rpc(self, node: NodeInfo) -> RpcClient:
        """The pool for ``node``'s scheme; the https one built at the first https node, once."""
        # (No URL parsing: a URL it would misread reaches the plain pool, which refuses TLS.)
        if not node.url.lower().startswith("https://"):
            return self._plain
        if self._tls is None:
            self._tls = self._client(client_ssl_context(self._tls_files))
        return self._tls

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        with trio.CancelScope(shield=True):
            await self._plain.aclose()
            if self._tls is not None:
                await self._tls.aclose()

    async def call(
        self, node: NodeInfo, method: str, request: Message, response_cls: type[_M], *, budget_s: float
    ) -> _M:
        """One unary call. Raises: as :meth:`call_parts`."""
        return await self.call_parts(node, method, (request.SerializeToString(),), response_cls, budget_s=budget_s)

    async def call_parts(
        self, node: NodeInfo, method: str, parts: Sequence[bytes], response_cls: type[_M], *, budget_s: float
    ) -> _M:
        """One unary call whose request is the concatenation of ``parts`` (serialized
        protobuf; see :func:`bytes_field_header`), sent as they are, with a Content-Length.
        The deadline sent on is ``budget_s`` from now, or the caller's own when earlier.

        Raises:
            errors.Unavailable: the node cannot be reached (reason ``node_unreachable``; nothing was sent).
            OutcomeUnknown: the connection broke after the request was sent.
            OutcomeUnknownDeadline: no answer within ``budget_s``.
            errors.AgentError: the error the node answered, code kept.
        """
        return await self._rpc(node).unary_message(
            _target(node), f"{NODE_SERVICE}/{method}", parts, response_cls, deadline=trio.current_time() + budget_s
        )

    async def stream(
        self, node: NodeInfo, method: str, request: Message, event_cls: type[_M], *, budget_s: float
    ) -> AsyncGenerator[_M, None]:
        """A server-streaming call: the node's messages as they arrive.

        Closing the generator early closes the upstream HTTP response, which
        hostd sees as a client disconnect (for ExecuteInGuestStream: the command
        is cancelled in the guest).

        Raises:
            errors.Unavailable: the node cannot be reached (nothing was sent).
            OutcomeUnknown: the stream broke off after the request was sent.
            OutcomeUnknownDeadline: nothing arrived within ``budget_s``.
            errors.AgentError: the error in the node's end-of-stream message.
        """
        messages = self._rpc(node).stream(
            _target(node),
            f"{NODE_SERVICE}/{method}",
            request.SerializeToString(),
            deadline=trio.current_time() + budget_s,
        )
        try:
            async for data in messages:
                yield event_cls.FromString(data)
        finally:
            # Shielded: this runs when our own client went away (the request
            # task is cancelled), and it is what tells hostd to stop the command.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT_S):
                await messages.aclose()
