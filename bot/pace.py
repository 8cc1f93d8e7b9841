"""Pacing: one exponential backoff for every retry, and the two limiters that slow people down.

Invariant: every backoff in the core is a `Backoff` (base, cap, jitter, reset), so a retry
schedule is set in one place and never grows without bound; the limiters answer how long to
wait, and the caller decides whether to wait or refuse.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import assert_never

from bot.agent import Outage

__all__ = ["AttemptThrottle", "Backoff", "Jitter", "MemberPace", "OutageHold"]


class Jitter(enum.StrEnum):
    """How much of the exponential ceiling a wait takes."""

    NONE = "none"  # the ceiling itself: base, 2·base, 4·base … cap
    FULL = "full"  # anywhere in [0, ceiling] (discord.py's ExponentialBackoff)
    EQUAL = "equal"  # half the ceiling, plus anywhere in [0, ceiling/2]


class Backoff:
    """Exponential backoff: the n-th consecutive wait has the ceiling ``base_s·2^(n-1)``,
    capped at ``cap_s``, and is jittered as ``jitter`` says.

    Shaped like discord.py's ``ExponentialBackoff``: `delay` gives the next wait and counts
    it; `reset` starts again from ``base_s``. With ``reset_after_s``, `delay` also starts
    again by itself when that long has passed since its previous call (a process that lived
    that long before dying again is a new failure, not the next of a series). `delay_for` is
    the same schedule without the count, for callers that keep their own (one count per
    source, per message). ``uniform`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        *,
        jitter: Jitter = Jitter.NONE,
        reset_after_s: float | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"a backoff needs 0 < base_s <= cap_s, got {base_s} and {cap_s}")
        if reset_after_s is not None and reset_after_s <= 0:
            raise ValueError(f"reset_after_s must be > 0 or None, got {reset_after_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter = jitter
        self.reset_after_s = reset_after_s
        self._uniform = uniform
        self._clock = clock
        # Past this exponent the ceiling is the cap; stopping there keeps 2^n finite (the old
        # hand-written throttle overflowed after about a thousand failures in a row).
        self._max_exponent = math.ceil(math.log2(cap_s / base_s)) + 1
        self._attempt = 0
        self._last_s: float | None = None

    @property
    def attempt(self) -> int:
        """How many waits `delay` has given since the last reset."""
        return self._attempt

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        exponent = min(attempt - 1, self._max_exponent)
        ceiling = min(self.cap_s, self.base_s * 2.0**exponent)
        match self.jitter:
            case Jitter.NONE:
                return ceiling
            case Jitter.FULL:
                return self._uniform(0, ceiling)
            case Jitter.EQUAL:
                return ceiling / 2 + self._uniform(0, ceiling / 2)
            case _:
                assert_never(self.jitter)

    def delay(self) -> float:
        """The next wait of the series, in seconds; counts it."""
        now = self._clock()
        if (
            self.reset_after_s is not None
            and self._last_s is not None
            and now - self._last_s > self.reset_after_s
        ):
            self._attempt = 0
        self._last_s = now
        self._attempt += 1
        return self.delay_for(self._attempt)

    def reset(self) -> None:
        """Start the series again: the next `delay` is the first. Idempotent."""
        self._attempt = 0
        self._last_s = None


class MemberPace:
    """A token bucket per member: ``burst`` prompts at once, refilled at ``per_minute``.

    Hand-written rather than a library's: the ones at hand keep timer threads per hit.
    """

    def __init__(self, *, burst: int, per_minute: float) -> None:
        self.burst = burst
        self.per_minute = per_minute
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, at

    def take(self, member: tuple[str, str]) -> float:
        """Spend one token; 0.0 if there was one, else the seconds until there is."""
        now = time.monotonic()
        tokens, at = self._buckets.get(member, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[member] = (tokens, now)
            return (1.0 - tokens) * 60.0 / self.per_minute
        self._buckets[member] = (tokens - 1.0, now)
        return 0.0


class AttemptThrottle:
    """Slows down repeated bad tokens from one source: 0 s, then doubling up to a cap.

    Guessing a 256-bit token is hopeless anyway; this keeps a misbehaving client from
    hammering the store and the log. No jitter: it paces one source, it does not spread
    many clients apart, and a steady schedule is what a caller can be told.
    """

    # Bounds memory under a spray of sources: past this, the stalest source is forgotten.
    _MAX_SOURCES = 10_000

    def __init__(
        self,
        *,
        first_delay_s: float = 0.25,
        max_delay_s: float = 10.0,
        forget_after_s: float = 600.0,
    ):
        self._backoff = Backoff(first_delay_s, max_delay_s)
        self._forget = forget_after_s
        self._failures: dict[str, tuple[int, float]] = {}  # failures in a row, last at

    def delay_s(self, source: str) -> float:
        """How long to hold ``source``'s next attempt: 0.0 unless its last ones failed."""
        count, last = self._failures.get(source, (0, 0.0))
        if not count or time.monotonic() - last > self._forget:
            return 0.0
        return self._backoff.delay_for(count)

    def failed(self, source: str) -> None:
        count, _ = self._failures.get(source, (0, 0.0))
        self._failures[source] = (count + 1, time.monotonic())
        if len(self._failures) > self._MAX_SOURCES:
            oldest = min(self._failures, key=lambda s: self._failures[s][1])
            del self._failures[oldest]

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)


class OutageHold:
    """How long the runner holds the queue after the API refused a turn (usage limit, 429,
    529): until the reset time the API gave (a little after, so the limit has lifted), else
    the backoff's next wait. `clear` after a turn the API answered."""

    # The API's clock and ours differ a little; a turn sent on the second would be refused.
    _AFTER_RESET_S = 5.0

    def __init__(self, backoff: Backoff, *, clock: Callable[[], datetime] = datetime.now):
        self._backoff = backoff
        self._clock = clock
        self.until: datetime | None = None  # while held: when the queue goes on

    def hold_for(self, outage: Outage) -> float:
        """Seconds to hold for ``outage``; sets `until`."""
        now = self._clock().astimezone()
        if outage.resets_at is not None and outage.resets_at > now:
            seconds = (outage.resets_at - now).total_seconds() + self._AFTER_RESET_S
        else:
            seconds = self._backoff.delay()
        self.until = now + timedelta(seconds=seconds)
        return seconds

    def clear(self) -> None:
        self._backoff.reset()
        self.until = None
