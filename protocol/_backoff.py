"""Capped exponential backoff: the one rule for how long to wait before trying again.

Every retry loop of the stack draws its delays from a :class:`Backoff`: the agent
reopening a virtio port no host holds and reconnecting to a Unix socket, hostd
reconnecting to a VM's chardev socket and registering with its controller, the
simulated VM restarting its agent. Pure (no clock, no sleeping): the caller sleeps
the way its loop needs (hostd's VM connection wakes early when its socket changes).

The agent ships this module; every caller imports it from the package
(``from limiquantix.protocol import Backoff``).
"""

from __future__ import annotations

from typing import final

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random

__all__ = ["Backoff"]


@final
class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each less a random share.

    ``next()`` returns ``initial`` first, then twice the previous delay, never more
    than ``maximum``; ``reset()`` (after a success) starts again from ``initial``.
    With ``jitter`` j, each delay ``d`` is drawn uniformly from ``[d * (1 - j), d]``,
    so that many peers failing together (the VMs of one host, the hostds of one
    controller) do not retry in step; the doubling itself is not jittered.

    Args:
        initial: the first delay, in seconds (>= 0).
        maximum: the cap, in seconds (>= ``initial``).
        jitter: the fraction of each delay drawn at random (0..1; 0: none).
        rng: the randomness for the jitter (tests pass a seeded ``random.Random``);
            a fresh ``random.Random()`` when omitted.

    Raises:
        ValueError: ``initial`` is negative, ``maximum`` below it, or ``jitter``
            outside 0..1 (NaN fails every one of these checks).
    """

    __slots__ = ("_delay", "_initial", "_jitter", "_maximum", "_rng")

    def __init__(
        self, initial: float, maximum: float, *, jitter: float = 0.0, rng: random.Random | None = None
    ) -> None:
        if not 0 <= initial <= maximum:
            raise ValueError(f"a backoff needs 0 <= initial <= maximum, not {initial} and {maximum}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"a backoff's jitter must be within 0..1, not {jitter}")
        if rng is None and jitter:
            # Imported here: the agent's channels have no jitter and need not load it.
            import random

            rng = random.Random()
        self._initial = initial
        self._maximum = maximum
        self._jitter = jitter
        self._rng = rng
        self._delay = initial

    def next(self) -> float:
        """The delay to wait now, in seconds; the one after it doubles (up to the cap)."""
        delay = self._delay
        # Doubling the capped value, not initial * 2 ** n: it never overflows however
        # long the failures last.
        self._delay = min(delay * 2, self._maximum)
        if self._rng is None:
            return delay
        # Drawn even with jitter 0 when the caller passed an rng: a seeded rng shared
        # with other draws (hostd's ping spread) then yields the same sequence whatever
        # the jitter.
        return delay * (1 - self._jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from ``initial`` (the thing retried succeeded)."""
        self._delay = self._initial
