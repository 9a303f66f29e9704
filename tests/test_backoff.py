"""protocol.Backoff: the one capped exponential backoff of every retry loop."""

from __future__ import annotations

import math
import random

import pytest

from limiquantix.protocol import Backoff


def test_delays_double_from_initial_up_to_the_cap() -> None:
    backoff = Backoff(0.02, 0.5)
    assert [backoff.next() for _ in range(8)] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.5]


def test_reset_starts_again_from_initial() -> None:
    backoff = Backoff(1.0, 8.0)
    assert [backoff.next() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.reset()
    assert [backoff.next() for _ in range(3)] == [1.0, 2.0, 4.0]


def test_a_long_outage_never_overflows() -> None:
    backoff = Backoff(0.2, 15.0)
    for _ in range(5000):  # 2.0 ** 5000 would overflow a float
        delay = backoff.next()
    assert delay == 15.0


def test_jitter_draws_each_delay_within_its_share() -> None:
    backoff = Backoff(0.2, 5.0, jitter=0.5, rng=random.Random(1))
    drawn = []
    for step in range(40):
        full = min(5.0, 0.2 * 2**step)
        delay = backoff.next()
        assert full * 0.5 <= delay <= full
        drawn.append(delay / full)
    # The draws spread over the share, not one fixed fraction.
    assert min(drawn) < 0.6 and max(drawn) > 0.9


def test_a_seeded_rng_gives_the_same_delays() -> None:
    def delays(seed: int) -> list[float]:
        backoff = Backoff(0.5, 30.0, jitter=0.3, rng=random.Random(seed))
        return [backoff.next() for _ in range(10)]

    assert delays(7) == delays(7)
    assert delays(7) != delays(8)


def test_an_rng_is_drawn_once_per_delay_even_without_jitter() -> None:
    # hostd shares its rng with the ping spread: the draws must not depend on the jitter.
    rng = random.Random(3)
    backoff = Backoff(1.0, 4.0, jitter=0.0, rng=rng)
    assert [backoff.next() for _ in range(3)] == [1.0, 2.0, 4.0]
    expected = random.Random(3)
    for _ in range(3):
        expected.random()
    assert rng.random() == expected.random()


def test_full_jitter_may_reach_zero_but_never_below() -> None:
    backoff = Backoff(1.0, 1.0, jitter=1.0, rng=random.Random(5))
    assert all(0.0 <= backoff.next() <= 1.0 for _ in range(200))


@pytest.mark.parametrize(
    ("initial", "maximum", "jitter"),
    [(-1.0, 1.0, 0.0), (2.0, 1.0, 0.0), (0.1, 1.0, -0.1), (0.1, 1.0, 1.5), (math.nan, 1.0, 0.0), (0.1, 1.0, math.nan)],
)
def test_bad_parameters_are_refused(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum, jitter=jitter)
