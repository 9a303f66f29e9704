"""One protobuf service bound to the object that implements it: the handler table."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, final

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from ._context import CallContext

__all__ = ["Last", "Route", "Service"]


@final
class Last:
    """A server-streaming handler's last message: ``yield Last(message)``.

    The handler ends there (it is closed at that ``yield``: what follows it does not run, its
    ``finally`` does) and the message leaves together with the end of the stream: Connect, one
    body chunk holding the message's envelope and the end-of-stream message; gRPC, the message
    and then the status. A plain last ``yield`` costs the server another pass through the
    protocol and HTTP layers for the end alone, on every hop a stream crosses (ExecuteScriptStream
    crosses hostd and the controller: bench/cli_bench.py). For a message nothing may follow.
    """

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message


@final
@dataclass(frozen=True)
class Route:
    """One procedure of the handler table (every protocol serves the same ones)."""

    procedure: str  # "limiquantix.node.v1.NodeDaemonService/PingAgent"
    descriptor: MethodDescriptor
    input_type: type[Message]
    output_type: type[Message]
    streaming: bool  # uses the streaming content types (any streaming kind)
    handler: Callable[[Message, CallContext], Any] | None  # None: answers unimplemented
    why_unimplemented: str


@final
class Service:
    """One protobuf service bound to the object that implements it.

    Args:
        descriptor: e.g. ``node_daemon_pb2.DESCRIPTOR.services_by_name["NodeDaemonService"]``.
        impl: an object with one method per RPC, named like the RPC. A unary
            RPC is ``async def Method(self, request, ctx) -> response``. A
            server-streaming RPC is an async generator ``async def Method(self,
            request, ctx)`` that yields responses. RPCs the object lacks answer
            ``unimplemented``.

    Raises:
        TypeError: an RPC's attribute is not callable, or a unary RPC is an
            async generator, or a streaming RPC is a plain coroutine function
            (mistakes that would otherwise only show up as ``internal`` at call time).
    """

    def __init__(self, descriptor: ServiceDescriptor, impl: object) -> None:
        self.name: str = descriptor.full_name
        self.impl = impl
        routes: dict[str, Route] = {}
        for method in descriptor.methods:
            procedure = f"{descriptor.full_name}/{method.name}"
            handler = getattr(impl, method.name, None)
            why = ""
            if handler is not None and not callable(handler):
                raise TypeError(f"{type(impl).__name__}.{method.name} is not callable")
            if method.client_streaming:
                why = f"{procedure} is client or bidi streaming, which this server does not support"
                handler = None
            elif handler is None:
                why = f"{procedure} is not implemented"
            elif method.server_streaming and inspect.iscoroutinefunction(handler):
                raise TypeError(f"{procedure} is server streaming: {method.name} must be an async generator")
            elif not method.server_streaming and inspect.isasyncgenfunction(handler):
                raise TypeError(f"{procedure} is unary: {method.name} must return one message, not yield")
            routes[procedure] = Route(
                procedure=procedure,
                descriptor=method,
                input_type=message_factory.GetMessageClass(method.input_type),
                output_type=message_factory.GetMessageClass(method.output_type),
                streaming=method.client_streaming or method.server_streaming,
                handler=handler,
                why_unimplemented=why,
            )
        self.routes = routes

    @property
    def procedures(self) -> tuple[str, ...]:
        """Every procedure of the service (``"<package>.<Service>/<Method>"``)."""
        return tuple(self.routes)

    @property
    def unimplemented(self) -> tuple[str, ...]:
        """The procedures that answer ``unimplemented``."""
        return tuple(p for p, r in self.routes.items() if r.handler is None)
