"""What a party's turns cost, and who spent it.

A turn's cost (as the agent reports it) is split across the batch's parts, equally: each
part of the merged prompt (a merge group) gets the same share, and a part's share is split
equally among the distinct authors of the prompts merged into it. A batch without groups is
one part made of all its prompts; a prompt in no group (a "+1") costs its author nothing.
Periods are the host's local calendar: today, this week (from Monday), this month.

Budgets (`[budget]`, per local day): a member over theirs is refused at intake with when it
resets; a party over its own keeps accepting prompts but its runner holds the queue until
midnight, or until the host lifts the limit for the day.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from bot.agent import Usage
from bot.config import BudgetSettings
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


def _midnight_after(now: datetime) -> datetime:
    return period_starts(now)["today"] + timedelta(days=1)


def _until(moment: datetime, now: datetime) -> str:
    """ "in 3 h 20 min" for a reader."""
    minutes = max(1, round((moment - now).total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    return f"in {hours} h {minutes} min" if hours else f"in {minutes} min"


class SpendBook:
    """A party's spend in the store, each turn's cost recorded with its authors' shares, and
    its daily budgets. The runner alone waits in `hold_while_over`; `lift` may come from any
    command."""

    def __init__(
        self,
        store: Store,
        party: str,
        budget: BudgetSettings | None = None,
        *,
        clock: Callable[[], datetime] = datetime.now,
    ):
        self._store = store
        self._party = party
        self._budget = budget or BudgetSettings()
        self._clock = clock
        self._lifted_on: date | None = None
        self._lifted = asyncio.Event()

    async def member_refusal(self, member: Author) -> str | None:
        """Why ``member`` may not prompt today (over `budget.member_daily_usd`), or None."""
        limit = self._budget.member_daily_usd
        if not limit:
            return None
        now = self._clock().astimezone()
        shares = await self._store.spend_since(self._party, period_starts(now)["today"])
        spent = sum(
            s.cost_usd
            for s in shares
            if (s.platform, s.user_id) == (member.platform, member.user_id)
        )
        if spent < limit:
            return None
        return (
            f"you have spent ${spent:.2f} of your ${limit:.2f} daily budget "
            f"(budget.member_daily_usd); it resets at midnight, {_until(_midnight_after(now), now)}"
        )

    async def hold_while_over(self, say: Callable[[str], None]) -> None:
        """Return once the party may run a turn: under `budget.party_daily_usd`, lifted for
        today, or a new day. Says once why it holds; the queue is kept meanwhile."""
        limit = self._budget.party_daily_usd
        has_said = False
        while limit:
            now = self._clock().astimezone()
            today = period_starts(now)["today"]
            if self._lifted_on == today.date():
                return
            spent = await self._store.party_spend_since(self._party, today)
            if spent < limit:
                return
            if not has_said:
                has_said = True
                say(
                    f"the party has spent ${spent:.2f} of its ${limit:.2f} daily budget "
                    "(budget.party_daily_usd): prompts are kept, and the queue waits until "
                    f"midnight ({_until(_midnight_after(now), now)}) or until the host says "
                    "`budget lift`"
                )
            self._lifted.clear()
            try:
                seconds = (_midnight_after(now) - now).total_seconds()
                async with asyncio.timeout(seconds):
                    await self._lifted.wait()
            except TimeoutError:
                pass  # a new day: look again

    def lift(self) -> None:
        """Let the party spend past its daily budget for the rest of today."""
        self._lifted_on = self._clock().astimezone().date()
        self._lifted.set()

    async def describe_budget(self) -> str:
        """The budgets and where today's spend stands, for `budget`."""
        budget = self._budget
        if not (budget.party_daily_usd or budget.member_daily_usd):
            return "no budget is set (budget.party_daily_usd, budget.member_daily_usd)"
        spent = await self.today()
        lines = []
        if budget.party_daily_usd:
            lifted = " (lifted for today)" if self._lifted_on == self._clock().date() else ""
            lines.append(f"party: ${spent:.2f} of ${budget.party_daily_usd:.2f} today{lifted}")
        if budget.member_daily_usd:
            lines.append(f"each member: ${budget.member_daily_usd:.2f} a day")
        return "\n".join(lines)

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

    async def today(self) -> float:
        """What the party's turns cost today."""
        start = period_starts(self._clock())["today"]
        return await self._store.party_spend_since(self._party, start)

    async def report(self, member: Author, *, everyone: bool) -> SpendReport:
        mine: dict[str, float] = {}
        members: dict[str, Sequence[CostShare]] = {}
        party: dict[str, float] = {}
        for period, start in period_starts(self._clock()).items():
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
