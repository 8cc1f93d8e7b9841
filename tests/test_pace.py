"""bot.pace: the one Backoff (schedule, cap, jitter, reset) and the join AttemptThrottle."""

from __future__ import annotations

import random

import pytest

from bot import pace
from bot.pace import AttemptThrottle, Backoff, Jitter


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _top(low: float, high: float) -> float:
    return high


def _bottom(low: float, high: float) -> float:
    return low


# --------------------------------------------------------------------------- Backoff


def test_without_jitter_it_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(1.0, 30.0)
    assert [backoff.delay() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.attempt == 8


def test_delay_for_is_the_same_schedule_without_counting() -> None:
    backoff = Backoff(0.25, 10.0)
    assert [backoff.delay_for(n) for n in (1, 2, 3, 6, 7)] == [0.25, 0.5, 1.0, 8.0, 10.0]
    assert backoff.attempt == 0
    assert backoff.delay() == 0.25


def test_reset_starts_again_from_base() -> None:
    backoff = Backoff(1.0, 30.0)
    for _ in range(4):
        backoff.delay()
    backoff.reset()
    backoff.reset()  # idempotent
    assert backoff.attempt == 0
    assert [backoff.delay() for _ in range(3)] == [1, 2, 4]


def test_reset_after_a_calm_period_like_the_session_supervisor() -> None:
    # A process that keeps dying at once backs off; one that lived long enough starts over.
    clock = Clock()
    backoff = Backoff(1.0, 30.0, reset_after_s=60.0, clock=clock)
    delays = [backoff.delay()]
    for _ in range(3):
        clock.now_s += 2.0  # it died again two seconds later
        delays.append(backoff.delay())
    assert delays == [1, 2, 4, 8]
    clock.now_s += 60.0  # exactly the limit: not calm enough
    assert backoff.delay() == 16
    clock.now_s += 60.5
    assert backoff.delay() == 1
    clock.now_s += 1.0
    assert backoff.delay() == 2


def test_without_reset_after_time_alone_never_resets() -> None:
    clock = Clock()
    backoff = Backoff(1.0, 4.0, clock=clock)
    backoff.delay()
    clock.now_s += 1e6
    assert backoff.delay() == 2


def test_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high / 4

    backoff = Backoff(0.5, 3.0, jitter=Jitter.FULL, uniform=uniform)
    assert [backoff.delay() for _ in range(4)] == [0.125, 0.25, 0.5, 0.75]
    assert asked == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 3.0)]


@pytest.mark.parametrize(("uniform", "expected"), [(_bottom, [1, 2, 4, 5]), (_top, [2, 4, 8, 10])])
def test_equal_jitter_keeps_at_least_half_the_ceiling(uniform, expected) -> None:
    backoff = Backoff(2.0, 10.0, jitter=Jitter.EQUAL, uniform=uniform)
    assert [backoff.delay() for _ in range(4)] == expected


@pytest.mark.parametrize("jitter", [Jitter.FULL, Jitter.EQUAL])
def test_jittered_delays_stay_within_their_bounds(jitter: Jitter) -> None:
    rng = random.Random(11)
    backoff = Backoff(0.5, 30.0, jitter=jitter, uniform=rng.uniform)
    floor = 0.5 if jitter is Jitter.EQUAL else 0.0
    for attempt in range(1, 200):
        ceiling = min(30.0, 0.5 * 2 ** min(attempt - 1, 10))
        delay = backoff.delay()
        assert floor * ceiling <= delay <= ceiling, (attempt, delay)
    assert len({backoff.delay() for _ in range(20)}) > 1, "the jitter never varied"


def test_a_long_series_stays_at_the_cap_instead_of_overflowing() -> None:
    backoff = Backoff(0.001, 7.0)
    assert backoff.delay_for(5000) == 7.0
    for _ in range(1100):
        backoff.delay()
    assert backoff.delay() == 7.0


def test_base_equal_to_cap_is_a_constant_wait() -> None:
    backoff = Backoff(0.001, 0.001)
    assert [backoff.delay() for _ in range(3)] == [0.001, 0.001, 0.001]


@pytest.mark.parametrize(
    ("base_s", "cap_s", "reset_after_s", "message"),
    [
        (0.0, 1.0, None, "0 < base_s <= cap_s"),
        (2.0, 1.0, None, "0 < base_s <= cap_s"),
        (1.0, 2.0, 0.0, "reset_after_s"),
    ],
)
def test_a_backoff_that_cannot_work_is_refused(
    base_s: float, cap_s: float, reset_after_s: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(base_s, cap_s, reset_after_s=reset_after_s)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        Backoff(1.0, 2.0).delay_for(0)


# --------------------------------------------------------------------------- AttemptThrottle


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(pace.time, "monotonic", clock)
    return clock


def test_bad_attempts_slow_down_then_reset_on_success() -> None:
    throttle = AttemptThrottle(first_delay_s=0.25, max_delay_s=1.0)
    assert throttle.delay_s("1.2.3.4") == 0
    delays = []
    for _ in range(5):
        throttle.failed("1.2.3.4")
        delays.append(throttle.delay_s("1.2.3.4"))
    assert delays == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert throttle.delay_s("5.6.7.8") == 0, "other sources are not slowed"
    throttle.succeeded("1.2.3.4")
    assert throttle.delay_s("1.2.3.4") == 0


def test_a_source_quiet_long_enough_is_forgotten(clock: Clock) -> None:
    throttle = AttemptThrottle(first_delay_s=0.25, max_delay_s=10.0, forget_after_s=600.0)
    for _ in range(3):
        throttle.failed("1.2.3.4")
    clock.now_s += 600.0
    assert throttle.delay_s("1.2.3.4") == 1.0, "not yet: the limit itself still counts"
    clock.now_s += 0.5
    assert throttle.delay_s("1.2.3.4") == 0


def test_thousands_of_failures_stay_at_the_cap() -> None:
    throttle = AttemptThrottle(first_delay_s=0.25, max_delay_s=10.0)
    for _ in range(2000):
        throttle.failed("1.2.3.4")
    assert throttle.delay_s("1.2.3.4") == 10.0


def test_a_spray_of_sources_forgets_the_stalest(clock: Clock) -> None:
    throttle = AttemptThrottle()
    throttle.failed("first")
    for n in range(AttemptThrottle._MAX_SOURCES):
        clock.now_s += 0.001
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert throttle.delay_s("first") == 0
    assert throttle.delay_s("10.0.0.1") == 0.25
