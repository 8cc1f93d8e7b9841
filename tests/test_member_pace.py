"""MemberPace: a token bucket per member, checked against a controlled clock."""

from __future__ import annotations

import pytest

from bot import pace
from bot.pace import MemberPace


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(pace.time, "monotonic", lambda: now[0])
    return now


def test_burst_then_refill_per_member(clock: list[float]) -> None:
    pace = MemberPace(burst=3, per_minute=6)  # one token every 10 s
    alice, bob = ("ws", "alice"), ("ws", "bob")
    assert [pace.take(alice) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert pace.take(alice) == pytest.approx(10.0)
    assert pace.take(bob) == 0.0, "another member is not slowed"
    clock[0] += 5
    assert pace.take(alice) == pytest.approx(5.0), "a refused prompt spends nothing"
    clock[0] += 5
    assert pace.take(alice) == 0.0
    clock[0] += 3600
    assert [pace.take(alice) for _ in range(4)][-1] > 0, "refill stops at the burst"
