"""Throttle: which repeats of an event get a record, an audit row or a log line (pure, a fake clock)."""

from __future__ import annotations

import pytest

from limiquantix.protocol import LogThrottle, Throttle, _logs


def test_one_row_per_key_per_interval_counting_what_was_held_back() -> None:
    t = Throttle(60)
    assert t.hit("a", 0) == 1
    assert [t.hit("a", s) for s in (1, 2, 59)] == [None, None, None]
    assert t.hit("b", 30) == 1  # keys are independent
    assert t.hit("a", 60) == 4  # this one and the three held back
    assert t.hit("a", 61) is None and t.hit("a", 200) == 2


def test_memory_and_rows_are_bounded_whatever_the_keys() -> None:
    t = Throttle(60, max_keys=3, max_rows_per_interval=2)
    assert [t.hit(f"k{i}", 0) for i in range(5)] == [1, 1, None, None, None]  # two rows per interval overall
    assert len(t) == 3  # the oldest keys forgotten
    assert t.hit("k4", 60) == 2  # held back while rows were used up, recorded with the next window
    with pytest.raises(ValueError):
        Throttle(0)


def test_a_log_throttle_says_how_many_lines_each_line_stands_for(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(_logs.time, "monotonic", lambda: now[0])
    t = LogThrottle(60)
    assert t.due("full") == ""  # the first line: nothing held back
    assert [t.due("full") for _ in range(3)] == [None, None, None]
    assert t.due("other") == ""  # reasons are independent
    now[0] += 60
    assert t.due("full") == " (3 more since the last line)"
    now[0] += 1
    assert t.due("full") is None
