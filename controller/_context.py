"""What a handler knows about the call it serves: who is calling (the authenticated
:class:`~._auth.Principal`), from where (the source address audit rows name), and the
one conversion of the store's unix times into protobuf ``Timestamp`` messages.
"""

from __future__ import annotations

import logging
from typing import overload

from google.protobuf.timestamp_pb2 import Timestamp

from limiquantix.protocol import errors, set_timestamp
from limiquantix.protocol.rpc.server import CallContext

from ._auth import Principal

__all__ = [
    "principal_of",
    "source_address",
    "source_of",
    "timestamp",
]

log = logging.getLogger(__name__)


def principal_of(ctx: CallContext) -> Principal:
    """The caller (the router authenticates every call before its handler runs)."""
    principal = ctx.auth
    if not isinstance(principal, Principal):  # pragma: no cover - the router always authenticates first
        raise errors.Unauthenticated("not authenticated")
    return principal


def source_address(peer: tuple[str, int] | None) -> str:
    """A client's address for audit rows: ``host:port``, ``[v6]:port``, or ``unix``."""
    if peer is None:
        return "unix"
    host, port = peer
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def source_of(ctx: CallContext) -> str:
    """The client's address for audit rows."""
    return source_address(ctx.peer)


@overload
def timestamp(ts: float) -> Timestamp: ...
@overload
def timestamp(ts: None) -> None: ...
@overload
def timestamp(ts: float | None) -> Timestamp | None: ...


def timestamp(ts: float | None) -> Timestamp | None:
    """Unix seconds as a ``Timestamp`` (None stays None: the field is left unset)."""
    if ts is None:
        return None
    out = Timestamp()
    set_timestamp(out, ts)
    return out
