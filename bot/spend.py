"""What a party's turns cost, and who spent it.

A turn's cost (as the agent reports it) is split across the batch's parts, equally: each
part of the merged prompt (a merge group) gets the same share, and a part's share is split
equally among the distinct authors of the prompts merged into it. A batch without groups is
one part made of all its prompts; a prompt in no group (a "+1") costs its author nothing.
Periods are the host's local calendar: today, this week (from Monday), this month.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.agent import Usage
from bot.model import Author, Batch, CostShare
from bot.store import Store

__all__ = ["PERIODS", "SpendBook", "SpendReport", "period_starts", "split_cost"]

log = logging.getLogger(__name__)

PERIODS = ("today", "this week", "this month")


def split_cost(batch: Batch, cost_usd: float) -> list[CostShare]:
    """Each author's share of ``cost_usd`` (see the module docstring); the shares add up."""
    by_id = {s.prompt_id: s for s in batch.sources}
    ids = [g.prompt_ids for g in batch.groups] or [tuple(by_id)]
    parts = [[by_id[i] for i in part if i in by_id] for part in ids]
    parts = [part for part in parts if part]
    if not parts or cost_usd <= 0:
        return []
    owed: dict[tuple[str, str], float] = defaultdict(float)
    names: dict[tuple[str, str], str] = {}
    for part in parts:
        authors = {(s.platform, s.user_id or s.author): s.author for s in part}
        for key, name in authors.items():
            owed[key] += cost_usd / len(parts) / len(authors)
            names[key] = name
    return [CostShare(p, u, names[(p, u)], cost) for (p, u), cost in owed.items()]


def period_starts(now: datetime) -> dict[str, datetime]:
    """When each of `PERIODS` began, in ``now``'s time zone (local when naive)."""
    now = now.astimezone()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "today": day,
        "this week": day - timedelta(days=day.weekday()),
        "this month": day.replace(day=1),
    }


@dataclass(frozen=True, slots=True)
class SpendReport:
    """Spend per period: the asker's own, and (for the host) everyone's and the party's."""

    mine: dict[str, float]
    members: dict[str, Sequence[CostShare]]  # empty unless asked for everyone
    party: dict[str, float]


class SpendBook:
    """A party's spend in the store: each turn's cost recorded with its authors' shares."""

    def __init__(self, store: Store, party: str):
        self._store = store
        self._party = party

    async def record(self, batch: Batch, usage: Usage) -> None:
        """Keep one turn's cost; a turn the agent put no price on is not recorded."""
        if usage.cost_usd is None:
            return
        shares = split_cost(batch, usage.cost_usd)
        await self._store.record_cost(self._party, batch, usage, shares)
        log.info(
            "batch %d cost $%.4f",
            batch.batch_id,
            usage.cost_usd,
            extra={"party": self._party, "batch_id": batch.batch_id},
        )

    async def today(self, now: datetime | None = None) -> float:
        """What the party's turns cost today."""
        start = period_starts(now or datetime.now())["today"]
        return await self._store.party_spend_since(self._party, start)

    async def report(
        self, member: Author, *, everyone: bool, now: datetime | None = None
    ) -> SpendReport:
        mine: dict[str, float] = {}
        members: dict[str, Sequence[CostShare]] = {}
        party: dict[str, float] = {}
        for period, start in period_starts(now or datetime.now()).items():
            shares = await self._store.spend_since(self._party, start)
            mine[period] = sum(
                s.cost_usd
                for s in shares
                if (s.platform, s.user_id) == (member.platform, member.user_id)
            )
            if everyone:
                members[period] = shares
                party[period] = await self._store.party_spend_since(self._party, start)
        return SpendReport(mine, members, party)
