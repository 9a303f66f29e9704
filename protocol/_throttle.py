"""Records of events that repeat, one per key per interval: the controller's audit rows
(refused VM claims, failed authentications) and the daemons' log lines (:class:`._logs.LogThrottle`:
refused connections, a guest's bad frames).

A hostd claiming a VM it may not host repeats the claim every heartbeat, a client with a
wrong token may retry in a loop, a guest may send bad frames at line rate. Each deserves a
record, not one per occurrence: :class:`Throttle` lets one record per key through per
interval, and says how many occurrences that record stands for.
Its memory is bounded whatever the callers send: at most ``max_keys`` keys are
remembered (the least recently recorded is forgotten first), and at most
``max_rows_per_interval`` rows are let through per interval over all keys, so a
client rotating source addresses cannot flood the log either.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Final, final

__all__ = ["DEFAULT_MAX_KEYS", "DEFAULT_MAX_ROWS_PER_INTERVAL", "Throttle"]

#: Keys remembered at once (about 200 bytes each).
DEFAULT_MAX_KEYS: Final = 10_000
#: Rows let through per interval over every key.
DEFAULT_MAX_ROWS_PER_INTERVAL: Final = 100


@final
class Throttle:
    """Which occurrences of a repeating event get a record (an audit row, a log line).

    Args:
        interval_s: at most one row per key per this many seconds.
        max_keys: keys remembered; the least recently recorded is forgotten first.
        max_rows_per_interval: rows let through per interval over all keys.
    """

    def __init__(
        self,
        interval_s: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_rows_per_interval: int = DEFAULT_MAX_ROWS_PER_INTERVAL,
    ) -> None:
        if interval_s <= 0 or max_keys < 1 or max_rows_per_interval < 1:
            raise ValueError("interval_s, max_keys and max_rows_per_interval must be positive")
        self.interval_s = interval_s
        self.max_keys = max_keys
        self.max_rows_per_interval = max_rows_per_interval
        # key -> (time of its last row, occurrences since then not yet recorded)
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        self._window_start = float("-inf")
        self._window_rows = 0

    def __len__(self) -> int:
        return len(self._keys)

    def hit(self, key: Hashable, now: float) -> int | None:
        """Count one occurrence of ``key`` at ``now`` (seconds on any monotonic clock).

        Returns:
            None when no row is due; else how many occurrences the row records
            (this one and those held back since the key's last row).
        """
        last, held = self._keys.get(key, (float("-inf"), 0))
        held += 1
        if now - last < self.interval_s:
            self._keys[key] = (last, held)
            return None
        if now - self._window_start >= self.interval_s:
            self._window_start, self._window_rows = now, 0
        if self._window_rows >= self.max_rows_per_interval:
            self._remember(key, (last, held))
            return None
        self._window_rows += 1
        self._remember(key, (now, 0))
        return held

    def _remember(self, key: Hashable, value: tuple[float, int]) -> None:
        self._keys[key] = value
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
