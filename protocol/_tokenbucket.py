"""A token bucket on the trio clock: how fast a peer may make something happen, with bursts
(a guest's events and its reader's share of decoding work in :mod:`._agentclient`; an HTTP/2
client's stream resets in :mod:`.rpc.server._serving`).
"""

from __future__ import annotations

import math
from typing import final

import trio

__all__ = ["TokenBucket"]


@final
class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s`` on the trio clock."""

    __slots__ = ("_at", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = -math.inf

    def _refill(self) -> None:
        now = trio.current_time()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now

    def take(self) -> bool:
        """Take a token if one is there."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def charge(self, n: float) -> float:
        """Take ``n`` tokens, into debt if need be; return the seconds until the debt is paid."""
        self._refill()
        self._tokens -= n
        return max(0.0, -self._tokens / self.rate_per_s)

    def wait_s(self) -> float:
        """Seconds until a token is there (0 if one is)."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate_per_s)
