"""Deadlines that flow: the caller's deadline becomes the next hop's timeout header.

On trio the caller's deadline is its effective one (``trio.current_effective_deadline()``:
every enclosing ``fail_after``/``move_on_after`` counts, the handler's own call deadline
included), so a hop that forwards a call inside its cancel scope sends on what it has
left without computing anything. On asyncio (the TUI) there is no such query: the caller
passes its deadline explicitly. Which loop runs is asked of ``sniffio``.

A command's budget at every hop is :func:`limiquantix.protocol.command_budget_s`: its own
timeout plus one stated margin (the agent applies it too, so it is not this package's).
"""

from __future__ import annotations

import math
import re
import time
from typing import Final

import sniffio

from .. import errors
from ._codec import MAX_DETAIL_CHARS

__all__ = [
    "CONNECT_TIMEOUT_HEADER",
    "GRPC_TIMEOUT_HEADER",
    "deadline_after",
    "encode_grpc_timeout",
    "parse_connect_timeout_ms",
    "parse_grpc_timeout",
    "remaining_s",
    "timeout_headers",
]

CONNECT_TIMEOUT_HEADER: Final = "Connect-Timeout-Ms"
GRPC_TIMEOUT_HEADER: Final = "grpc-timeout"
# Spec: "positive integer as ASCII string of at most 10 digits".
_CONNECT_TIMEOUT_RE: Final = re.compile(r"[0-9]{1,10}")
# gRPC: at most 8 digits and a unit.
_GRPC_TIMEOUT_RE: Final = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MAX_CONNECT_TIMEOUT_MS: Final = 10**10 - 1


def parse_connect_timeout_ms(value: str) -> float:
    """Seconds a ``Connect-Timeout-Ms`` value allows.

    Raises:
        InvalidArgument: not 1 to 10 digits.
    """
    if not _CONNECT_TIMEOUT_RE.fullmatch(value.strip()):
        shown = value[:MAX_DETAIL_CHARS]
        raise errors.InvalidArgument(f"invalid Connect-Timeout-Ms {shown!r}: 1 to 10 digits expected")
    return int(value) / 1000


def parse_grpc_timeout(value: str) -> float:
    """Seconds a ``grpc-timeout`` value allows (``"250m"``: 0.25).

    Raises:
        InvalidArgument: not 1 to 8 digits and one of the units H M S m u n.
    """
    match = _GRPC_TIMEOUT_RE.fullmatch(value.strip())
    if match is None:
        raise errors.InvalidArgument(f"invalid grpc-timeout {value[:MAX_DETAIL_CHARS]!r}: 1 to 8 digits and a unit")
    return int(match.group(1)) * _GRPC_UNITS[match.group(2)]


def encode_grpc_timeout(seconds: float) -> str:
    """The ``grpc-timeout`` value for ``seconds`` (rounded down, in the finest unit that fits 8 digits)."""
    for unit, scale in (("m", 1e-3), ("S", 1.0), ("M", 60.0), ("H", 3600.0)):
        amount = int(max(seconds, 0.0) / scale)
        if amount < 10**8:
            return f"{max(amount, 1)}{unit}"
    return "99999999H"


def _on_trio() -> bool:
    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def remaining_s(deadline: float | None = None) -> float:
    """Seconds the caller has left (``math.inf``: no deadline).

    Args:
        deadline: an explicit deadline. On trio it is on trio's clock, and the
            effective deadline of the caller's cancel scopes counts too (the
            earlier wins); on any other loop it is on ``time.monotonic()``.
    """
    if _on_trio():
        import trio  # only where trio runs: the TUI's asyncio world never imports it here

        now = trio.current_time()
        effective = trio.current_effective_deadline()
        if deadline is not None:
            effective = min(effective, deadline)
        return effective - now
    if deadline is None:
        return math.inf
    return deadline - time.monotonic()


def deadline_after(seconds: float) -> float:
    """The deadline ``seconds`` from now on the running loop's clock (trio's on trio,
    ``time.monotonic()`` elsewhere): what :func:`remaining_s` and the client take."""
    if _on_trio():
        import trio

        return trio.current_time() + seconds
    return time.monotonic() + seconds


def timeout_headers(remaining: float, *, grpc: bool = False) -> dict[str, str]:
    """The header telling the next hop the time it has (none for ``math.inf``).

    Rounded down: the next hop must never outlive this one. A deadline already
    passed still sends the smallest timeout (1 ms): the server then answers
    ``deadline_exceeded`` itself, the same way whichever hop ran out.
    """
    if math.isinf(remaining):
        return {}
    if grpc:
        return {GRPC_TIMEOUT_HEADER: encode_grpc_timeout(remaining)}
    ms = min(max(1, int(remaining * 1000)), _MAX_CONNECT_TIMEOUT_MS)
    return {CONNECT_TIMEOUT_HEADER: str(ms)}
