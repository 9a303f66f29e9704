"""AuditThrottle: which repeats of an event get an audit row (pure, a fake clock)."""

from __future__ import annotations

import pytest

from limiquantix.controller._throttle import AuditThrottle


def test_one_row_per_key_per_interval_counting_what_was_held_back() -> None:
    t = AuditThrottle(60)
    assert t.hit("a", 0) == 1
    assert [t.hit("a", s) for s in (1, 2, 59)] == [None, None, None]
    assert t.hit("b", 30) == 1  # keys are independent
    assert t.hit("a", 60) == 4  # this one and the three held back
    assert t.hit("a", 61) is None and t.hit("a", 200) == 2


def test_memory_and_rows_are_bounded_whatever_the_keys() -> None:
    t = AuditThrottle(60, max_keys=3, max_rows_per_interval=2)
    assert [t.hit(f"k{i}", 0) for i in range(5)] == [1, 1, None, None, None]  # two rows per interval overall
    assert len(t) == 3  # the oldest keys forgotten
    assert t.hit("k4", 60) == 2  # held back while rows were used up, recorded with the next window
    with pytest.raises(ValueError):
        AuditThrottle(0)
